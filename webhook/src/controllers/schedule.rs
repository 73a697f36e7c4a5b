//! The `BackupConfiguration` reconciler: lists the configuration's sessions,
//! asks [`plan_configuration`] what to do at `now`, creates the due session,
//! writes the status, deletes finished sessions beyond `backupHistoryLimit`,
//! publishes the event, and sleeps until the next tick.

use std::sync::Arc;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::info;

use api::keys::FIELD_MANAGER;
use api::{BackupConfiguration, BackupSession};

use super::plan::plan_configuration;
use super::{Context, Error};

pub async fn reconcile(
    config: Arc<BackupConfiguration>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = config.name_any();
    let ns = config.namespace().ok_or_else(|| Error::NotNamespaced {
        kind: "BackupConfiguration",
        name: name.clone(),
    })?;
    let now = (ctx.now)();
    let sessions_api: Api<BackupSession> = Api::namespaced(ctx.client.clone(), &ns);
    // `spec.invoker.name` is a selectable field of the CRD, so user-created
    // (instant) sessions are found as well as scheduled ones.
    let lp = ListParams::default().fields(&format!("spec.invoker.name={name}"));
    let sessions = sessions_api.list(&lp).await?.items;

    let plan = plan_configuration(&config, &sessions, now);

    if let Some(session) = &plan.create {
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match sessions_api.create(&pp, session).await {
            Ok(_) => {
                info!(%ns, configuration = %name, session = %session.name_any(), "backup session created")
            }
            // Same tick, created by an earlier attempt whose status write
            // failed: the session exists, which is what we wanted.
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }

    if config.status.as_ref() != Some(&plan.status) {
        // Server-side apply: fields this manager stops sending (e.g. the next
        // tick once paused) are removed.
        let body = json!({
            "apiVersion": "hoard.dev/v1beta1",
            "kind": "BackupConfiguration",
            "status": plan.status,
        });
        Api::<BackupConfiguration>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
    }

    for old in &plan.delete {
        match sessions_api.delete(old, &DeleteParams::background()).await {
            Ok(_) => {
                info!(%ns, configuration = %name, session = %old, "old backup session deleted (backupHistoryLimit)")
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }

    if let Some(notice) = &plan.notice {
        ctx.publish(config.as_ref(), notice).await;
    }
    ctx.succeeded(config.as_ref());
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}
