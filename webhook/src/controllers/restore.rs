//! The `RestoreSession` controller.
//!
//! Data flow: the reconciler reads the session, its target (for `totalHosts`
//! and whether it was rolled already) and, when worker pods do the restore,
//! the namespace's pods and the PVCs it created; [`plan_restore`] decides;
//! the reconciler writes in this order: roll the target, create PVCs,
//! create/delete worker pods, then the status (guarded by the session's
//! `resourceVersion`, as the agents write `status.stats` concurrently).
//!
//! How the target produces pods the webhook can hold ([`restore_mode`]):
//!
//! - Deployment / StatefulSet / DaemonSet: the pod template gets
//!   `hoard.dev/restore-rollout: <session uid>` once, which rolls the
//!   workload. The session's `TargetRolledOut` condition records it; a
//!   re-reconcile sees the condition (or the annotation already carrying the
//!   UID) and never patches again, and deleting a finished session changes
//!   nothing on the workload, so it is not restarted again;
//! - a bare pod, ReplicaSet or ReplicationController: nothing is restarted
//!   (their pods do not follow template changes); an event tells the user
//!   to re-create the pods;
//! - `volumeClaimTemplates` (+ `replicas`), or a standalone
//!   PersistentVolumeClaim: one worker pod per host ([`super::pods`]) mounts
//!   the PVC(s), held by `restore-wait`; the agent on its node restores and
//!   releases it; the pod is deleted once its host finished, either way.
//!   PVCs from templates are created first, labelled, not owned (they
//!   outlive the session);
//! - `driver: VolumeSnapshotter`: failed, "not yet supported".
//!
//! The roll-up is the backup sessions' ([`roll_up_session`]): one piece of
//! code for both.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use api::common::{Driver, Phase};
use api::host::{WorkloadKind, host_for_ordinal, target_annotation};
use api::keys::{self, FIELD_MANAGER};
use api::{RestoreSession, RestoreSessionStatus};

use super::plan::{Notice, TargetHosts, Workload, failed_status, roll_up_session};
use super::pods::{
    self, DEFAULT_MOUNT_PATH, WorkerPod, claim_from_template, claim_users, template_volume_name,
    worker_pod, workers_of,
};
use super::rollup::{Reasons, finished_notice};
use super::{Context, Error};
use crate::mutate::InjectConfig;
use crate::state::RestoreSummary;

/// Condition on a `RestoreSession`: the target was made to produce fresh
/// pods (or the user was told to). Present: never again.
pub const CONDITION_ROLLED_OUT: &str = "TargetRolledOut";

pub(super) const RESTORE: Reasons = Reasons {
    succeeded: "RestoreSucceeded",
    failed: "RestoreFailed",
    skipped: "RestoreSkipped",
    verb: "restored",
};

/// How the target's data is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Roll the workload once (pod-template annotation).
    Rollout(WorkloadKind),
    /// Pods that do not follow a template: the user re-creates them.
    Recreate(WorkloadKind),
    /// Worker pods, one per host.
    Workers(Vec<WorkerHost>),
}

/// One worker pod's host and volumes.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerHost {
    pub host: String,
    /// `(pod volume, claim)`.
    pub claims: Vec<(String, String)>,
    pub mounts: Vec<VolumeMount>,
}

/// Decides how `rs` reaches its data; `Err`: why it cannot, for the user.
pub fn restore_mode(rs: &RestoreSession) -> Result<Mode, String> {
    if rs.spec.driver() == Driver::VolumeSnapshotter {
        return Err(
            "driver VolumeSnapshotter is not yet supported by Hoard; use driver Restic (the default)"
                .into(),
        );
    }
    let t = &rs.spec.target;
    let r = &t.target_ref;
    let kind = WorkloadKind::parse(&r.kind).ok_or_else(|| {
        format!(
            "target kind {:?} is not supported; use Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Pod or PersistentVolumeClaim",
            r.kind
        )
    })?;
    let given: &[VolumeMount] = t.volume_mounts.as_deref().unwrap_or_default();
    if let Some(templates) = t.volume_claim_templates.as_ref().filter(|v| !v.is_empty()) {
        let replicas = t
            .replicas
            .map(|n| u32::try_from(n).unwrap_or(0))
            .unwrap_or(1);
        let mut per_template = Vec::new();
        for tpl in templates {
            let names = api::pvc::pvc_names(tpl.metadata.name.as_deref(), Some(replicas))
                .map_err(|e| e.to_string())?;
            let volume = template_volume_name(tpl.metadata.name.as_deref().unwrap_or_default());
            per_template.push((volume, names));
        }
        for m in given {
            if !per_template.iter().any(|(v, _)| *v == m.name) {
                let known: Vec<&str> = per_template.iter().map(|(v, _)| v.as_str()).collect();
                return Err(format!(
                    "target.volumeMounts names volume {:?}, which no volumeClaimTemplates entry provides; use one of {} (the template name without ${{POD_ORDINAL}})",
                    m.name,
                    known.join(", ")
                ));
            }
        }
        let single = per_template.len() == 1;
        let mounts: Vec<VolumeMount> = per_template
            .iter()
            .flat_map(|(v, _)| {
                let listed: Vec<VolumeMount> =
                    given.iter().filter(|m| m.name == *v).cloned().collect();
                if listed.is_empty() {
                    let path = if single {
                        DEFAULT_MOUNT_PATH.to_string()
                    } else {
                        format!("{DEFAULT_MOUNT_PATH}/{v}")
                    };
                    vec![VolumeMount {
                        name: v.clone(),
                        mount_path: path,
                        ..Default::default()
                    }]
                } else {
                    listed
                }
            })
            .collect();
        let hosts = (0..replicas)
            .map(|i| WorkerHost {
                host: host_for_ordinal(i),
                claims: per_template
                    .iter()
                    .map(|(v, names)| (v.clone(), names[i as usize].clone()))
                    .collect(),
                mounts: mounts.clone(),
            })
            .collect();
        return Ok(Mode::Workers(hosts));
    }
    Ok(match kind {
        WorkloadKind::Deployment | WorkloadKind::StatefulSet | WorkloadKind::DaemonSet => {
            Mode::Rollout(kind)
        }
        WorkloadKind::Pod | WorkloadKind::ReplicaSet | WorkloadKind::ReplicationController => {
            Mode::Recreate(kind)
        }
        WorkloadKind::PersistentVolumeClaim => {
            let volume = given
                .first()
                .map_or("data", |m| m.name.as_str())
                .to_string();
            let mut mounts: Vec<VolumeMount> =
                given.iter().filter(|m| m.name == volume).cloned().collect();
            if let Some(other) = given.iter().find(|m| m.name != volume) {
                return Err(format!(
                    "target.volumeMounts names volumes {:?} and {:?}, but a PersistentVolumeClaim target is one volume; give every mount the same name",
                    volume, other.name
                ));
            }
            if mounts.is_empty() {
                mounts.push(VolumeMount {
                    name: volume.clone(),
                    mount_path: DEFAULT_MOUNT_PATH.into(),
                    ..Default::default()
                });
            }
            Mode::Workers(vec![WorkerHost {
                host: api::host::HOST_0.into(),
                claims: vec![(volume, r.name.clone())],
                mounts,
            }])
        }
    })
}

/// What the reconciler found.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The target's hosts (`Single` for worker and recreate modes).
    pub workload: Option<Workload>,
    /// The target's pod template already carries this session's UID.
    pub rolled: bool,
    /// The target updates pods only when they are deleted (`OnDelete`).
    pub on_delete: bool,
    /// Pods of the namespace (worker mode only).
    pub pods: Vec<Pod>,
    /// PVCs this session created earlier (by label).
    pub claims: BTreeSet<String>,
}

/// What to do for one session.
#[derive(Debug, Clone, Default)]
pub struct RestorePlan {
    pub status: RestoreSessionStatus,
    pub requeue: Option<Duration>,
    /// Patch the target's pod template with the session's UID.
    pub rollout: Option<WorkloadKind>,
    pub create_claims: Vec<PersistentVolumeClaim>,
    pub create_pods: Vec<Pod>,
    pub delete_pods: Vec<String>,
    pub notices: Vec<Notice>,
}

fn rolled_condition(reason: &str, message: String, now: Timestamp) -> Condition {
    Condition {
        type_: CONDITION_ROLLED_OUT.into(),
        status: "True".into(),
        reason: reason.into(),
        message,
        observed_generation: None,
        last_transition_time: Time(now),
    }
}

/// The summary `restore-wait` and the worker pod are built from.
fn summary(rs: &RestoreSession, timeout: Duration) -> RestoreSummary {
    let container = rs
        .spec
        .runtime_settings
        .as_ref()
        .and_then(|s| s.container.as_ref());
    let security = container.and_then(|c| c.security_context.as_ref());
    RestoreSummary {
        uid: rs.uid().unwrap_or_default(),
        name: rs.name_any(),
        resources: container.and_then(|c| c.resources.clone()),
        run_as_user: security.and_then(|s| s.run_as_user),
        run_as_group: security.and_then(|s| s.run_as_group),
        deadline_seconds: Some(timeout.as_secs().max(1)),
        ..Default::default()
    }
}

fn host_finished(status: &RestoreSessionStatus, host: &str) -> bool {
    status
        .stats
        .iter()
        .flatten()
        .any(|s| s.hostname == host && s.phase.is_some_and(Phase::is_finished))
}

/// Decides for `rs` at `now`. `mode` is [`restore_mode`]'s answer.
pub fn plan_restore(
    rs: &RestoreSession,
    mode: Result<Mode, String>,
    seen: &Observed,
    cfg: &InjectConfig,
    now: Timestamp,
) -> RestorePlan {
    let old = rs.status.clone().unwrap_or_default();
    let mut plan = RestorePlan::default();
    let uid = rs.uid().unwrap_or_default();
    let name = rs.name_any();
    let ns = rs.namespace().unwrap_or_default();
    if old.phase.is_some_and(Phase::is_finished) {
        // Finished: only leftovers are removed.
        plan.status = old;
        plan.delete_pods = live_workers(&seen.pods, &uid);
        return plan;
    }
    let started = rs.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let timeout = rs
        .spec
        .timeout()
        .unwrap_or(api::phase::DEFAULT_SESSION_TIMEOUT);
    let r = &rs.spec.target.target_ref;
    let mode = match mode {
        Ok(m) => m,
        Err(msg) => {
            plan.status = failed_status(&old, msg, now);
            plan.delete_pods = live_workers(&seen.pods, &uid);
            push_finished(&mut plan, &old);
            return plan;
        }
    };
    let Some(workload) = seen.workload else {
        let msg = format!(
            "target {}/{} not found in namespace {ns}; create it, or delete this RestoreSession",
            r.kind, r.name
        );
        plan.status = failed_status(&old, msg, now);
        push_finished(&mut plan, &old);
        return plan;
    };
    let mut status = old.clone();
    let already = old
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == CONDITION_ROLLED_OUT);
    let targets = match &mode {
        Mode::Rollout(kind) | Mode::Recreate(kind) => {
            vec![TargetHosts::new(*kind, None, workload)]
        }
        Mode::Workers(hosts) => vec![TargetHosts {
            target: None,
            total: u32::try_from(hosts.len()).unwrap_or(u32::MAX),
            names: hosts.iter().map(|h| h.host.clone()).collect(),
        }],
    };
    if !already {
        let (reason, note, warning) = match &mode {
            Mode::Rollout(kind) => {
                if !seen.rolled {
                    plan.rollout = Some(*kind);
                }
                if seen.on_delete {
                    (
                        "UserDeletesPods",
                        format!(
                            "{kind} {} updates pods only when they are deleted (updateStrategy OnDelete): delete its pods, the new ones are held for the restore",
                            r.name
                        ),
                        true,
                    )
                } else {
                    (
                        "Restarted",
                        format!(
                            "restarted {kind} {} (pod-template annotation {}); its new pods wait until their data is restored",
                            r.name,
                            keys::ANNOTATION_RESTORE_ROLLOUT
                        ),
                        false,
                    )
                }
            }
            Mode::Recreate(kind) => (
                "UserRecreatesPods",
                format!(
                    "Hoard does not restart a {kind}: delete and re-create {}; the new pods wait until their data is restored",
                    match kind {
                        WorkloadKind::Pod => format!("pod {}", r.name),
                        _ => format!("the pods of {kind} {}", r.name),
                    }
                ),
                true,
            ),
            Mode::Workers(hosts) => (
                "WorkerPods",
                format!(
                    "restoring through {} short-lived pod(s) that mount the PVC(s); they are removed when their host finished",
                    hosts.len()
                ),
                false,
            ),
        };
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(rolled_condition(reason, note.clone(), now));
        plan.notices.push(Notice {
            warning,
            reason: if warning { reason } else { "RestoreStarted" },
            action: "Restore",
            note,
        });
    }

    let (mut status, requeue) = roll_up_session(&status, &targets, started, timeout, now);
    plan.requeue = requeue;

    if let Mode::Workers(hosts) = &mode {
        let finished = status.phase.is_some_and(Phase::is_finished);
        let workers = workers_of(&seen.pods, &uid);
        let sum = summary(rs, timeout);
        let settings = rs
            .spec
            .runtime_settings
            .as_ref()
            .and_then(|s| s.pod.as_ref());
        let templates = rs
            .spec
            .target
            .volume_claim_templates
            .as_deref()
            .unwrap_or_default();
        let mut waiting = Vec::new();
        for h in hosts {
            let pod = workers
                .iter()
                .find(|p| pods::host_of(p) == Some(h.host.as_str()));
            if finished || host_finished(&status, &h.host) {
                if let Some(p) = pod.filter(|p| p.metadata.deletion_timestamp.is_none()) {
                    plan.delete_pods.push(p.name_any());
                }
                continue;
            }
            // PVCs from templates, first.
            for (i, (_, claim)) in h.claims.iter().enumerate() {
                if let Some(tpl) = templates.get(i)
                    && !seen.claims.contains(claim)
                {
                    plan.create_claims
                        .push(claim_from_template(tpl, claim, &ns, &name, &uid));
                }
            }
            if pod.is_some() {
                continue;
            }
            // A PVC in use elsewhere: a ReadWriteOnce volume may be attached
            // to another node, and a restore must not write under a running
            // application.
            let users: Vec<String> = h
                .claims
                .iter()
                .flat_map(|(_, c)| claim_users(&seen.pods, c))
                .map(ResourceExt::name_any)
                .collect();
            if !users.is_empty() {
                waiting.push(format!(
                    "{}: PVC in use by pod {}; stop it (scale the workload to 0) so the restore can mount it",
                    h.host,
                    users.join(", ")
                ));
                continue;
            }
            let owner = rs.controller_owner_ref(&()).unwrap_or_default();
            plan.create_pods.push(worker_pod(
                &WorkerPod {
                    name: pods::worker_pod_name(&name, &h.host),
                    namespace: &ns,
                    owner,
                    session_uid: &uid,
                    host: h.host.clone(),
                    target: target_annotation(
                        WorkloadKind::parse(&r.kind).unwrap_or(WorkloadKind::StatefulSet),
                        &r.name,
                    ),
                    claims: h.claims.clone(),
                    mounts: h.mounts.clone(),
                    restore: Some(&sum),
                    settings,
                    deadline_seconds: timeout.as_secs(),
                },
                cfg,
            ));
        }
        if !waiting.is_empty() && !finished {
            let msg = format!("waiting: {}", waiting.join("; "));
            if status.message.as_deref() != Some(&msg) {
                plan.notices.push(Notice {
                    warning: true,
                    reason: "RestoreWaiting",
                    action: "Restore",
                    note: msg.clone(),
                });
            }
            status.message = Some(msg);
            // Look again soon: the pod that holds the PVC may go away
            // without any event on this session.
            plan.requeue = Some(plan.requeue.map_or(WAIT_RECHECK, |r| r.min(WAIT_RECHECK)));
        } else if status
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("waiting: "))
        {
            status.message = None;
        }
    }
    plan.status = status;
    push_finished(&mut plan, &old);
    plan
}

/// How often a session waiting for a PVC to be released looks again.
pub const WAIT_RECHECK: Duration = Duration::from_secs(30);

fn push_finished(plan: &mut RestorePlan, old: &RestoreSessionStatus) {
    if let Some(n) = finished_notice(&RESTORE, old, &plan.status) {
        plan.notices.push(n);
    }
}

fn live_workers(pods: &[Pod], uid: &str) -> Vec<String> {
    workers_of(pods, uid)
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .collect()
}

/// What the target looks like: `None` when it does not exist.
async fn observe_workload(
    ctx: &Context,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    uid: &str,
) -> Result<Option<(Workload, bool, bool)>, Error> {
    let rolled = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
        t.and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(keys::ANNOTATION_RESTORE_ROLLOUT))
            .is_some_and(|v| v == uid)
    };
    let c = ctx.client.clone();
    Ok(match kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(c, ns)
            .get_opt(name)
            .await?
            .map(|d| {
                let spec = d.spec.as_ref();
                (Workload::Single, rolled(spec.map(|s| &s.template)), false)
            }),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(c, ns)
            .get_opt(name)
            .await?
            .map(|s| {
                let spec = s.spec.as_ref();
                let on_delete = spec
                    .and_then(|s| s.update_strategy.as_ref())
                    .and_then(|u| u.type_.as_deref())
                    == Some("OnDelete");
                (
                    Workload::StatefulSet {
                        replicas: spec.and_then(|s| s.replicas),
                    },
                    rolled(spec.map(|s| &s.template)),
                    on_delete,
                )
            }),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(c, ns)
            .get_opt(name)
            .await?
            .map(|d| {
                let spec = d.spec.as_ref();
                let on_delete = spec
                    .and_then(|s| s.update_strategy.as_ref())
                    .and_then(|u| u.type_.as_deref())
                    == Some("OnDelete");
                (
                    Workload::DaemonSet {
                        desired_scheduled: d.status.map_or(0, |s| s.desired_number_scheduled),
                    },
                    rolled(spec.map(|s| &s.template)),
                    on_delete,
                )
            }),
        // Pods that follow no template: the user re-creates them; one host.
        _ => Some((Workload::Single, false, false)),
    })
}

async fn roll(
    ctx: &Context,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    uid: &str,
) -> Result<(), Error> {
    let body = json!({
        "spec": { "template": { "metadata": { "annotations": {
            keys::ANNOTATION_RESTORE_ROLLOUT: uid
        } } } }
    });
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let c = ctx.client.clone();
    let p = Patch::Merge(&body);
    match kind {
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(c, ns)
                .patch(name, &pp, &p)
                .await?;
        }
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(c, ns)
                .patch(name, &pp, &p)
                .await?;
        }
        WorkloadKind::DaemonSet => {
            Api::<DaemonSet>::namespaced(c, ns)
                .patch(name, &pp, &p)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

pub async fn reconcile(rs: Arc<RestoreSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = rs.name_any();
    let ns = rs.namespace().ok_or_else(|| Error::NotNamespaced {
        kind: "RestoreSession",
        name: name.clone(),
    })?;
    let uid = rs.uid().unwrap_or_default();
    let now = (ctx.now)();
    let mode = restore_mode(&rs);
    let finished = rs
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(Phase::is_finished);
    let workers = matches!(mode, Ok(Mode::Workers(_)));
    let mut seen = Observed::default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if finished || mode.is_err() {
        if workers {
            // Leftover workers only (never any other pod).
            let lp = ListParams::default().labels(&format!("{}={uid}", keys::LABEL_SESSION_UID));
            seen.pods = pods_api.list(&lp).await?.items;
        }
    } else if let Ok(m) = &mode {
        let r = &rs.spec.target.target_ref;
        match m {
            Mode::Workers(_) => {
                seen.workload = Some(Workload::Single);
                seen.pods = pods_api.list(&ListParams::default()).await?.items;
                if rs.spec.target.volume_claim_templates.is_some() {
                    let lp =
                        ListParams::default().labels(&format!("{}={uid}", keys::LABEL_SESSION_UID));
                    seen.claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
                        .list_metadata(&lp)
                        .await?
                        .items
                        .into_iter()
                        .map(|c| c.name_any())
                        .collect();
                }
            }
            Mode::Rollout(kind) | Mode::Recreate(kind) => {
                if let Some((w, rolled, on_delete)) =
                    observe_workload(&ctx, &ns, *kind, &r.name, &uid).await?
                {
                    seen.workload = Some(w);
                    seen.rolled = rolled;
                    seen.on_delete = on_delete;
                }
            }
        }
    }

    let plan = plan_restore(&rs, mode, &seen, &ctx.settings.inject, now);

    if let Some(kind) = plan.rollout {
        let target = &rs.spec.target.target_ref.name;
        roll(&ctx, &ns, kind, target, &uid).await?;
        info!(%ns, session = %name, %kind, %target, "target rolled for restore");
    }
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    for claim in &plan.create_claims {
        match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .create(&pp, claim)
            .await
        {
            Ok(_) => {
                info!(%ns, session = %name, pvc = %claim.name_any(), "PVC created for restore")
            }
            // Created earlier (or by the user): restore into it.
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pod in &plan.create_pods {
        match pods_api.create(&pp, pod).await {
            Ok(_) => {
                info!(%ns, session = %name, pod = %pod.name_any(), "restore worker pod created")
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pod in &plan.delete_pods {
        match pods_api.delete(pod, &DeleteParams::background()).await {
            Ok(_) => info!(%ns, session = %name, %pod, "restore worker pod deleted"),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if Some(&plan.status) != rs.status.as_ref() {
        let body = json!({
            "metadata": { "resourceVersion": rs.resource_version() },
            "status": plan.status,
        });
        Api::<RestoreSession>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&body),
            )
            .await?;
    }
    for n in &plan.notices {
        ctx.publish(rs.as_ref(), n).await;
    }
    ctx.succeeded(rs.as_ref());
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}
