//! Backups of standalone PVCs (target kind `PersistentVolumeClaim`).
//!
//! The agent backs a PVC up through a Running pod that mounts it
//! (`owner::belongs_to` in the agent). When an application pod mounts it,
//! that pod serves and nothing is created. When none does, this controller
//! creates a short-lived worker pod ([`super::pods`]) that mounts it — only
//! then, so a ReadWriteOnce volume is never wanted on two nodes at once —
//! and deletes it once the PVC's host finished, the session finished
//! (either way, a deadline included) or the session's configuration is gone.
//! Worker pods are owned by the session, so deleting the session (history
//! limit) removes any that are left.
//!
//! Data flow: read the session, its configuration and the namespace's pods;
//! [`plan_pvc_workers`] decides; create and delete pods.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, VolumeMount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use api::common::{Phase, TargetRef};
use api::host::{HOST_0, WorkloadKind, target_annotation};
use api::keys::{self, FIELD_MANAGER};
use api::{BackupConfiguration, BackupSession};

use super::plan::Notice;
use super::pods::{
    DEFAULT_MOUNT_PATH, WorkerPod, claim_users, is_terminal, target_of, worker_pod,
    worker_pod_name, workers_of,
};
use super::{Context, Error};
use crate::mutate::InjectConfig;

/// How often a session whose PVC is held by a pod that is not Running yet
/// looks again (that pod's start raises no event on the session).
pub const RECHECK: Duration = Duration::from_secs(30);

/// What to do for one session.
#[derive(Debug, Clone, Default)]
pub struct PvcPlan {
    pub create: Vec<Pod>,
    pub delete: Vec<String>,
    pub notices: Vec<Notice>,
    pub requeue: Option<Duration>,
}

fn host_finished(session: &BackupSession, target: Option<&TargetRef>) -> bool {
    session
        .status
        .as_ref()
        .and_then(|s| s.stats.as_ref())
        .into_iter()
        .flatten()
        .any(|h| {
            h.hostname == HOST_0
                && h.target.as_ref() == target
                && h.phase.is_some_and(Phase::is_finished)
        })
}

/// Decides the worker pods of `session`. `config` is its configuration
/// (`None`: gone), `pods` the namespace's pods.
pub fn plan_pvc_workers(
    session: &BackupSession,
    config: Option<&BackupConfiguration>,
    pods: &[Pod],
    cfg: &InjectConfig,
) -> PvcPlan {
    let mut plan = PvcPlan::default();
    let uid = session.uid().unwrap_or_default();
    let name = session.name_any();
    let ns = session.namespace().unwrap_or_default();
    let workers = workers_of(pods, &uid);
    let finished = session
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(Phase::is_finished);
    let live = |p: &&&Pod| p.metadata.deletion_timestamp.is_none();
    let Some(config) = config.filter(|_| !finished) else {
        plan.delete = workers.iter().filter(live).map(|p| p.name_any()).collect();
        return plan;
    };
    let batch = config.spec.targets.as_ref().is_some_and(|t| !t.is_empty());
    let timeout = config
        .spec
        .timeout()
        .unwrap_or(api::phase::DEFAULT_SESSION_TIMEOUT);
    let mut wanted = Vec::new();
    for (i, t) in config.spec.all_targets().enumerate() {
        let r = &t.target_ref;
        if WorkloadKind::parse(&r.kind) != Some(WorkloadKind::PersistentVolumeClaim) {
            continue;
        }
        let annotation = target_annotation(WorkloadKind::PersistentVolumeClaim, &r.name);
        let mine = workers
            .iter()
            .find(|p| target_of(p) == Some(annotation.as_str()));
        if host_finished(session, batch.then_some(r)) {
            continue;
        }
        if let Some(p) = mine {
            wanted.push(p.name_any());
            continue;
        }
        let users = claim_users(pods, &r.name);
        if !users.is_empty() {
            let running = users
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
            if !running {
                // Pending: it will mount the PVC; the agent uses it once it
                // runs. Look again in case it never does.
                plan.requeue = Some(RECHECK);
            }
            continue;
        }
        let given: &[VolumeMount] = t.volume_mounts.as_deref().unwrap_or_default();
        let volume = given
            .first()
            .map_or("data", |m| m.name.as_str())
            .to_string();
        let mut mounts: Vec<VolumeMount> =
            given.iter().filter(|m| m.name == volume).cloned().collect();
        if mounts.is_empty() {
            mounts.push(VolumeMount {
                name: volume.clone(),
                mount_path: DEFAULT_MOUNT_PATH.into(),
                ..Default::default()
            });
        }
        let pod = worker_pod(
            &WorkerPod {
                name: worker_pod_name(&name, &format!("pvc-{i}")),
                namespace: &ns,
                owner: session.controller_owner_ref(&()).unwrap_or_default(),
                session_uid: &uid,
                host: HOST_0.into(),
                target: annotation,
                claims: vec![(volume, r.name.clone())],
                mounts,
                restore: None,
                settings: config
                    .spec
                    .runtime_settings
                    .as_ref()
                    .and_then(|s| s.pod.as_ref()),
                deadline_seconds: timeout.as_secs().max(1),
            },
            cfg,
        );
        plan.notices.push(Notice {
            warning: false,
            reason: "WorkerPodCreated",
            action: "Backup",
            note: format!(
                "no running pod mounts PVC {}: created pod {} to mount it for the backup; it is removed when the backup finished",
                r.name,
                pod.name_any()
            ),
        });
        wanted.push(pod.name_any());
        plan.create.push(pod);
    }
    // Workers whose PVC finished, or that failed (their host then fails at
    // the deadline) and no longer serve.
    plan.delete = workers
        .iter()
        .filter(live)
        .filter(|p| !wanted.contains(&p.name_any()) || is_terminal(p))
        .map(|p| p.name_any())
        .collect();
    plan
}

/// `true` when `config` backs up a PVC.
fn has_pvc_target(config: &BackupConfiguration) -> bool {
    config.spec.all_targets().any(|t| {
        WorkloadKind::parse(&t.target_ref.kind) == Some(WorkloadKind::PersistentVolumeClaim)
    })
}

pub async fn reconcile(session: Arc<BackupSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = session.name_any();
    let ns = session.namespace().ok_or_else(|| Error::NotNamespaced {
        kind: "BackupSession",
        name: name.clone(),
    })?;
    let uid = session.uid().unwrap_or_default();
    let finished = session
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(Phase::is_finished);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = ListParams::default().labels(&format!("{}={uid}", keys::LABEL_SESSION_UID));
    let (config, pods) = if finished {
        (None, pods_api.list(&selector).await?.items)
    } else {
        let config = Api::<BackupConfiguration>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&session.spec.invoker.name)
            .await?;
        match config {
            Some(c) if has_pvc_target(&c) => {
                (Some(c), pods_api.list(&ListParams::default()).await?.items)
            }
            // Nothing to mount; leftovers of an edited configuration are
            // removed when the session finishes (or with it).
            Some(_) => {
                ctx.succeeded(session.as_ref());
                return Ok(Action::await_change());
            }
            None => (None, pods_api.list(&selector).await?.items),
        }
    };
    let plan = plan_pvc_workers(&session, config.as_ref(), &pods, &ctx.settings.inject);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    for pod in &plan.create {
        match pods_api.create(&pp, pod).await {
            Ok(_) => {
                info!(%ns, session = %name, pod = %pod.name_any(), "backup worker pod created")
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pod in &plan.delete {
        match pods_api.delete(pod, &DeleteParams::background()).await {
            Ok(_) => info!(%ns, session = %name, %pod, "backup worker pod deleted"),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    for n in &plan.notices {
        ctx.publish(session.as_ref(), n).await;
    }
    ctx.succeeded(session.as_ref());
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}
