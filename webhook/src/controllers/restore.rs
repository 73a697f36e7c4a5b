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
//!   nothing on the workload, so it is not restarted again. A workload that
//!   does not exist yet is waited for (until the deadline); one created
//!   after the session starts with held pods and is not restarted;
//! - a bare pod, ReplicaSet or ReplicationController: nothing is restarted
//!   (their pods do not follow template changes); an event tells the user
//!   to re-create the pods;
//! - `volumeClaimTemplates` (+ `replicas`), or a standalone
//!   PersistentVolumeClaim: one worker pod per host ([`super::pods`]) mounts
//!   the PVC(s), held by `restore-wait`; the agent on its node restores and
//!   releases it; the pod is deleted once its host finished, either way.
//!   A failed worker is replaced after an exponential backoff (the status
//!   message says which attempt starts when); after the last attempt its
//!   host fails with the pod's reason ([`super::pods::retry`]).
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
use api::{HostRestoreStats, RestoreSession, RestoreSessionStatus};

use super::plan::{HostEntry, Notice, TargetHosts, Workload, failed_status, roll_up_session};
use super::pods::{
    self, DEFAULT_MOUNT_PATH, Retry, WORKER_ATTEMPTS, WorkerPod, claim_from_template, claim_users,
    current_worker, failure_reason, has_failed, retry, template_volume_name, until, worker_pod,
    workers_of,
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
        // Worker hosts are `host-<ordinal>`: the agent reads them so for a
        // StatefulSet target; single-host kinds have only host-0 and a
        // DaemonSet's hosts are node names.
        if kind == WorkloadKind::DaemonSet || (kind != WorkloadKind::StatefulSet && replicas > 1) {
            return Err(format!(
                "volumeClaimTemplates with replicas {replicas} need target.ref kind StatefulSet (one host per ordinal), not {kind}"
            ));
        }
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
    /// When the target was created: one created after the session already
    /// starts with fresh pods the webhook holds, and needs no roll.
    pub created: Option<Timestamp>,
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
        // Restoring into a workload that is created next is the usual
        // order (its first pods are then held); wait for it until the
        // deadline, which fails the session with a reason.
        let deadline = started
            .checked_add(k8s_openapi::jiff::SignedDuration::try_from(timeout).unwrap_or_default())
            .unwrap_or(Timestamp::MAX);
        let msg = format!(
            "{WAITING}target {}/{} not found in namespace {ns}; create it (its new pods wait for the restore), or delete this RestoreSession",
            r.kind, r.name
        );
        if now >= deadline {
            let msg = msg.trim_start_matches(WAITING).to_string();
            plan.status = failed_status(&old, msg, now);
            push_finished(&mut plan, &old);
        } else {
            if old.message.as_deref() != Some(msg.as_str()) {
                plan.notices.push(Notice {
                    warning: true,
                    reason: "RestoreWaiting",
                    action: "Restore",
                    note: msg.clone(),
                });
            }
            plan.status = RestoreSessionStatus {
                phase: Some(old.phase.unwrap_or(Phase::Pending)),
                message: Some(msg),
                ..old
            };
            plan.requeue = Some(WAIT_RECHECK);
        }
        return plan;
    };
    let mut status = old.clone();
    if status
        .message
        .as_deref()
        .is_some_and(|m| m.starts_with(WAITING))
    {
        // Re-set below while still waiting.
        status.message = None;
    }
    let already = old
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == CONDITION_ROLLED_OUT);
    // Hosts no rule selects get no restore (seed 001: rules name their
    // targetHosts); only the others are waited for.
    let rules = rs.spec.rules.as_deref();
    let selected = |h: &str| api::rules::plan_for_host(h, rules).is_some();
    let mode = match mode {
        Mode::Workers(hosts) => {
            Mode::Workers(hosts.into_iter().filter(|h| selected(&h.host)).collect())
        }
        m => m,
    };
    let mut targets = match &mode {
        Mode::Rollout(kind) | Mode::Recreate(kind) => {
            vec![TargetHosts::new(*kind, None, workload)]
        }
        Mode::Workers(hosts) => vec![TargetHosts {
            target: None,
            total: u32::try_from(hosts.len()).unwrap_or(u32::MAX),
            names: hosts.iter().map(|h| h.host.clone()).collect(),
        }],
    };
    for t in &mut targets {
        // Names are known for all but DaemonSets (node names).
        if !t.names.is_empty() {
            t.names.retain(|h| selected(h));
            t.total = u32::try_from(t.names.len()).unwrap_or(u32::MAX);
        }
    }
    if !already {
        let (reason, note, warning) = match &mode {
            Mode::Rollout(kind) => {
                let created_after = seen.created.is_some_and(|c| c >= started);
                if !seen.rolled && !created_after {
                    plan.rollout = Some(*kind);
                }
                if created_after {
                    (
                        "NewWorkload",
                        format!(
                            "{kind} {} was created after this RestoreSession: its pods wait until their data is restored, no restart needed",
                            r.name
                        ),
                        false,
                    )
                } else if seen.on_delete {
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

    // A host whose worker failed every attempt is failed now, with the
    // reason, rather than at the deadline.
    if let Mode::Workers(hosts) = &mode {
        let workers = workers_of(&seen.pods, &uid);
        for h in hosts {
            if host_finished(&status, &h.host) {
                continue;
            }
            let Some(p) = current_worker(
                workers
                    .iter()
                    .copied()
                    .filter(|p| pods::host_of(p) == Some(h.host.as_str())),
            )
            .filter(|p| has_failed(p)) else {
                continue;
            };
            if let Retry::GiveUp { attempts } = retry(p, now) {
                let pod = p.name_any();
                let msg = format!(
                    "the worker pod of {} failed {attempts} times (the last, {pod}: {}); see kubectl -n {ns} describe pod {pod}, fix the cause (image, node, PVC) and create a new RestoreSession",
                    h.host,
                    failure_reason(p)
                );
                let stats = status.stats.get_or_insert_with(Vec::new);
                match stats.iter_mut().find(|s| s.hostname == h.host) {
                    Some(s) => s.fail(msg.clone()),
                    None => stats.push(HostRestoreStats::never_reported(
                        h.host.clone(),
                        None,
                        msg.clone(),
                    )),
                }
                plan.notices.push(Notice {
                    warning: true,
                    reason: "WorkerPodGaveUp",
                    action: "Restore",
                    note: msg,
                });
            }
        }
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
            let pod = current_worker(
                workers
                    .iter()
                    .copied()
                    .filter(|p| pods::host_of(p) == Some(h.host.as_str())),
            );
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
            let mut attempt = 1;
            match pod {
                Some(p) if has_failed(p) => match retry(p, now) {
                    // The failed pod stays until replaced: it holds the count.
                    Retry::Wait { at, next } => {
                        waiting.push(format!(
                            "{}: worker pod {} failed: {}; attempt {next} of {WORKER_ATTEMPTS} starts at {at}",
                            h.host,
                            p.name_any(),
                            failure_reason(p)
                        ));
                        let wait = until(now, at);
                        plan.requeue = Some(plan.requeue.map_or(wait, |r| r.min(wait)));
                        continue;
                    }
                    Retry::Now { next } => {
                        plan.delete_pods.push(p.name_any());
                        attempt = next;
                    }
                    // Failed above: the host is finished.
                    Retry::GiveUp { .. } => continue,
                },
                Some(_) => continue,
                None => {}
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
                    name: pods::attempt_pod_name(&name, &h.host, attempt),
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
                    attempt,
                },
                cfg,
            ));
        }
        if !waiting.is_empty() && !finished {
            let msg = format!("{WAITING}{}", waiting.join("; "));
            if old.message.as_deref() != Some(&msg) {
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
        }
    }
    plan.status = status;
    push_finished(&mut plan, &old);
    plan
}

/// Prefix of a status message that says what the session waits for.
const WAITING: &str = "waiting: ";

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
) -> Result<Option<Observed>, Error> {
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let seen = |meta: &ObjectMeta,
                template: Option<&PodTemplateSpec>,
                workload: Workload,
                strategy: Option<&str>| Observed {
        workload: Some(workload),
        rolled: template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(keys::ANNOTATION_RESTORE_ROLLOUT))
            .is_some_and(|v| v == uid),
        on_delete: strategy == Some("OnDelete"),
        created: meta.creation_timestamp.as_ref().map(|t| t.0),
        ..Default::default()
    };
    let c = ctx.client.clone();
    Ok(match kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(c, ns)
            .get_opt(name)
            .await?
            .map(|d| {
                let spec = d.spec.as_ref();
                seen(
                    &d.metadata,
                    spec.map(|s| &s.template),
                    Workload::Single,
                    None,
                )
            }),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(c, ns)
            .get_opt(name)
            .await?
            .map(|s| {
                let spec = s.spec.as_ref();
                seen(
                    &s.metadata,
                    spec.map(|s| &s.template),
                    Workload::StatefulSet {
                        replicas: spec.and_then(|s| s.replicas),
                    },
                    spec.and_then(|s| s.update_strategy.as_ref())
                        .and_then(|u| u.type_.as_deref()),
                )
            }),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(c, ns)
            .get_opt(name)
            .await?
            .map(|d| {
                let spec = d.spec.as_ref();
                seen(
                    &d.metadata,
                    spec.map(|s| &s.template),
                    Workload::DaemonSet {
                        desired_scheduled: d
                            .status
                            .as_ref()
                            .map_or(0, |s| s.desired_number_scheduled),
                    },
                    spec.and_then(|s| s.update_strategy.as_ref())
                        .and_then(|u| u.type_.as_deref()),
                )
            }),
        // Pods that follow no template: the user re-creates them; one host.
        _ => Some(Observed {
            workload: Some(Workload::Single),
            ..Default::default()
        }),
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
                if let Some(o) = observe_workload(&ctx, &ns, *kind, &r.name, &uid).await? {
                    seen = o;
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

#[cfg(test)]
mod tests {
    use http::Method;
    use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
    use serde_json::{Value, json};

    use api::common::TargetRef;
    use api::{HostRestoreStats, RepositoryRef, RestoreSessionSpec, RestoreTarget};

    use super::super::mock::{ApiServer, NS, late, list_of, not_found, now, verify_with};
    use super::*;

    const RS: &str = "/apis/hoard.dev/v1beta1/namespaces/demo/restoresessions";
    const PODS: &str = "/api/v1/namespaces/demo/pods";
    const PVCS: &str = "/api/v1/namespaces/demo/persistentvolumeclaims";
    const DEPLOY: &str = "/apis/apps/v1/namespaces/demo/deployments/web";

    fn status_path() -> String {
        format!("{RS}/r/status?&fieldManager=hoard")
    }
    fn by_uid() -> String {
        format!("{PODS}?&labelSelector=hoard.dev%2Fsession-uid%3Duid-r")
    }

    fn session(kind: &str, name: &str) -> RestoreSession {
        let mut rs = RestoreSession::new(
            "r",
            RestoreSessionSpec {
                repository: Some(RepositoryRef {
                    name: "repo".into(),
                }),
                target: RestoreTarget {
                    target_ref: TargetRef {
                        api_version: "apps/v1".into(),
                        kind: kind.into(),
                        name: name.into(),
                    },
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        rs.metadata.namespace = Some(NS.into());
        rs.metadata.uid = Some("uid-r".into());
        rs.metadata.resource_version = Some("7".into());
        rs.metadata.creation_timestamp = Some(Time("2026-03-10T11:00:00Z".parse().unwrap()));
        rs
    }

    /// Seed 001's volumeClaimTemplates example, two replicas.
    fn vct_session(replicas: i32) -> RestoreSession {
        let mut rs = session("StatefulSet", "restore-demo");
        rs.spec.target.replicas = Some(replicas);
        rs.spec.target.volume_mounts = Some(vec![VolumeMount {
            name: "restore-data-restore-demo".into(),
            mount_path: "/restore/data".into(),
            ..Default::default()
        }]);
        rs.spec.target.volume_claim_templates = Some(vec![PersistentVolumeClaim {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("restore-data-restore-demo-${POD_ORDINAL}".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                ..Default::default()
            }),
            status: None,
        }]);
        rs
    }

    fn rolled(reason: &str) -> Condition {
        rolled_condition(reason, "x".into(), "2026-03-10T11:00:01Z".parse().unwrap())
    }

    fn with_hosts(mut rs: RestoreSession, hosts: &[(&str, Phase)]) -> RestoreSession {
        rs.status = Some(RestoreSessionStatus {
            phase: Some(Phase::Running),
            stats: Some(
                hosts
                    .iter()
                    .map(|(h, p)| HostRestoreStats {
                        hostname: (*h).into(),
                        phase: Some(*p),
                        duration: p.is_finished().then(|| "2s".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            conditions: Some(vec![rolled("WorkerPods")]),
            ..Default::default()
        });
        rs
    }

    fn deployment(annotation: Option<&str>) -> Value {
        let ann = annotation.map_or(
            json!({}),
            |v| json!({ keys::ANNOTATION_RESTORE_ROLLOUT: v }),
        );
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": NS },
            "spec": {
                "selector": { "matchLabels": { "app": "web" } },
                "template": { "metadata": { "labels": { "app": "web" }, "annotations": ann } }
            }
        })
    }

    fn worker(rs: &RestoreSession, host: &str) -> Value {
        let h = match restore_mode(rs).unwrap() {
            Mode::Workers(hs) => hs.into_iter().find(|h| h.host == host).unwrap(),
            m => panic!("{m:?}"),
        };
        let sum = summary(rs, Duration::from_secs(3600));
        let mut pod = worker_pod(
            &WorkerPod {
                name: pods::worker_pod_name("r", host),
                namespace: NS,
                owner: rs.controller_owner_ref(&()).unwrap(),
                session_uid: "uid-r",
                host: host.into(),
                target: "StatefulSet/restore-demo".into(),
                claims: h.claims,
                mounts: h.mounts,
                restore: Some(&sum),
                settings: None,
                deadline_seconds: 3600,
                attempt: 1,
            },
            &InjectConfig::default(),
        );
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
        json!(pod)
    }

    // ----- pure decisions -------------------------------------------------

    #[test]
    fn modes_follow_the_target() {
        let m = |kind: &str| restore_mode(&session(kind, "web"));
        assert_eq!(m("Deployment"), Ok(Mode::Rollout(WorkloadKind::Deployment)));
        assert_eq!(
            m("StatefulSet"),
            Ok(Mode::Rollout(WorkloadKind::StatefulSet))
        );
        assert_eq!(m("DaemonSet"), Ok(Mode::Rollout(WorkloadKind::DaemonSet)));
        assert_eq!(m("Pod"), Ok(Mode::Recreate(WorkloadKind::Pod)));
        assert_eq!(
            m("ReplicaSet"),
            Ok(Mode::Recreate(WorkloadKind::ReplicaSet))
        );
        assert!(m("CronJob").unwrap_err().contains("not supported"));
        let Ok(Mode::Workers(hosts)) = m("PersistentVolumeClaim") else {
            panic!()
        };
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].claims, [("data".to_string(), "web".to_string())]);
        assert_eq!(hosts[0].mounts[0].mount_path, DEFAULT_MOUNT_PATH);
        let mut snap = session("Deployment", "web");
        snap.spec.driver = Some(Driver::VolumeSnapshotter);
        assert!(
            restore_mode(&snap)
                .unwrap_err()
                .contains("not yet supported")
        );
    }

    #[test]
    fn claim_templates_give_one_host_per_ordinal_with_seed_names() {
        let Ok(Mode::Workers(hosts)) = restore_mode(&vct_session(3)) else {
            panic!()
        };
        let got: Vec<(&str, &str)> = hosts
            .iter()
            .map(|h| (h.host.as_str(), h.claims[0].1.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("host-0", "restore-data-restore-demo-0"),
                ("host-1", "restore-data-restore-demo-1"),
                ("host-2", "restore-data-restore-demo-2"),
            ]
        );
        assert_eq!(hosts[0].claims[0].0, "restore-data-restore-demo");
        assert_eq!(hosts[0].mounts[0].mount_path, "/restore/data");
        // a mount naming no template is an error that says what to use
        let mut bad = vct_session(1);
        bad.spec.target.volume_mounts.as_mut().unwrap()[0].name = "data".into();
        let e = restore_mode(&bad).unwrap_err();
        assert!(e.contains("restore-data-restore-demo"), "{e}");
        // ordinals are StatefulSet hosts
        let mut dep = vct_session(2);
        dep.spec.target.target_ref.kind = "Deployment".into();
        assert!(restore_mode(&dep).unwrap_err().contains("kind StatefulSet"));
        dep.spec.target.replicas = Some(1);
        assert!(restore_mode(&dep).is_ok());
        // several replicas need the placeholder
        let mut flat = vct_session(2);
        flat.spec.target.volume_claim_templates.as_mut().unwrap()[0]
            .metadata
            .name = Some("data".into());
        assert!(restore_mode(&flat).unwrap_err().contains("${POD_ORDINAL}"));
    }

    #[test]
    fn a_rollout_happens_once() {
        let rs = session("Deployment", "web");
        let seen = Observed {
            workload: Some(Workload::Single),
            ..Default::default()
        };
        let cfg = InjectConfig::default();
        let first = plan_restore(&rs, restore_mode(&rs), &seen, &cfg, now());
        assert_eq!(first.rollout, Some(WorkloadKind::Deployment));
        assert_eq!(first.status.total_hosts, Some(1));
        // recorded: the next reconcile does not roll again
        let mut again = rs.clone();
        again.status = Some(first.status.clone());
        let second = plan_restore(&again, restore_mode(&again), &seen, &cfg, now());
        assert_eq!(second.rollout, None);
        assert!(second.notices.is_empty());
        // already carrying the UID (the status write was lost): no second patch
        let carried = Observed {
            rolled: true,
            ..seen
        };
        let third = plan_restore(&rs, restore_mode(&rs), &carried, &cfg, now());
        assert_eq!(third.rollout, None);
        assert!(
            third
                .status
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == CONDITION_ROLLED_OUT)
        );
    }

    #[test]
    fn only_hosts_a_rule_selects_are_waited_for() {
        use api::RestoreRule;
        // seed 001: a rule for host-3 and host-4 only
        let mut rs = session("StatefulSet", "db");
        rs.spec.rules = Some(vec![RestoreRule {
            target_hosts: Some(vec!["host-3".into(), "host-4".into()]),
            source_host: Some("host-1".into()),
            paths: Some(vec!["/source/data".into()]),
            snapshots: None,
        }]);
        let seen = Observed {
            workload: Some(Workload::StatefulSet { replicas: Some(5) }),
            rolled: true,
            ..Default::default()
        };
        let cfg = InjectConfig::default();
        let plan = plan_restore(&rs, restore_mode(&rs), &seen, &cfg, now());
        assert_eq!(plan.status.total_hosts, Some(2));
        rs.status = Some(RestoreSessionStatus {
            stats: Some(
                ["host-3", "host-4"]
                    .map(|h| HostRestoreStats {
                        hostname: h.into(),
                        phase: Some(Phase::Succeeded),
                        duration: Some("1s".into()),
                        ..Default::default()
                    })
                    .to_vec(),
            ),
            conditions: Some(vec![rolled("Restarted")]),
            ..Default::default()
        });
        let plan = plan_restore(&rs, restore_mode(&rs), &seen, &cfg, now());
        assert_eq!(plan.status.phase, Some(Phase::Succeeded));
        // worker pods likewise: one claim template, 3 ordinals, rule for host-1
        let mut vct = vct_session(3);
        vct.spec.rules = Some(vec![RestoreRule {
            target_hosts: Some(vec!["host-1".into()]),
            paths: Some(vec!["/restore/data".into()]),
            ..Default::default()
        }]);
        let seen = Observed {
            workload: Some(Workload::Single),
            ..Default::default()
        };
        let plan = plan_restore(&vct, restore_mode(&vct), &seen, &cfg, now());
        let pods: Vec<String> = plan.create_pods.iter().map(ResourceExt::name_any).collect();
        assert_eq!(pods, ["r-host-1"]);
        assert_eq!(plan.status.total_hosts, Some(1));
    }

    /// Attempt `attempt` of host-0's worker, its restore-wait failed at `at`.
    fn failed_worker(rs: &RestoreSession, attempt: u32, at: Timestamp) -> Pod {
        let mut pod: Pod = serde_json::from_value(worker(rs, "host-0")).unwrap();
        pod.metadata.name = Some(pods::attempt_pod_name("r", "host-0", attempt));
        pod.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys::ANNOTATION_WORKER_ATTEMPT.into(), attempt.to_string());
        pod.status = Some(
            serde_json::from_value(json!({
                "phase": "Failed",
                "initContainerStatuses": [{
                    "name": "hoard-restore-wait", "image": "hoard", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": { "terminated": {
                        "exitCode": 2, "reason": "Error", "finishedAt": Time(at),
                        "message": "deadline passed"
                    } }
                }]
            }))
            .unwrap(),
        );
        pod
    }

    /// Regression: a failed restore worker was kept without a retry until the
    /// session's deadline; now it is replaced after a backoff, and after the
    /// last attempt its host fails at once, with the reason.
    #[test]
    fn a_failed_restore_worker_is_retried_with_backoff_then_fails_its_host() {
        let rs = vct_session(1);
        let cfg = InjectConfig::default();
        let at = |secs: i64| now() + k8s_openapi::jiff::SignedDuration::from_secs(secs);
        let seen = |pod: Pod| Observed {
            workload: Some(Workload::Single),
            pods: vec![pod],
            claims: BTreeSet::from(["restore-data-restore-demo-0".to_string()]),
            ..Default::default()
        };
        let waiting = plan_restore(
            &rs,
            restore_mode(&rs),
            &seen(failed_worker(&rs, 2, now())),
            &cfg,
            at(15),
        );
        assert!(waiting.create_pods.is_empty() && waiting.delete_pods.is_empty());
        assert_eq!(waiting.requeue, Some(Duration::from_secs(5)));
        let msg = waiting.status.message.unwrap();
        assert!(
            msg.starts_with("waiting: host-0: worker pod r-host-0-2 failed: container hoard-restore-wait exited with code 2 (Error): deadline passed; attempt 3 of 5 starts at "),
            "{msg}"
        );
        assert!(waiting.notices.iter().any(|n| n.reason == "RestoreWaiting"));

        let due = plan_restore(
            &rs,
            restore_mode(&rs),
            &seen(failed_worker(&rs, 2, now())),
            &cfg,
            at(20),
        );
        assert_eq!(due.delete_pods, ["r-host-0-2"]);
        let names: Vec<String> = due.create_pods.iter().map(ResourceExt::name_any).collect();
        assert_eq!(names, ["r-host-0-3"]);
        assert_eq!(
            due.create_pods[0].annotations()[keys::ANNOTATION_WORKER_ATTEMPT],
            "3"
        );

        let last = plan_restore(
            &rs,
            restore_mode(&rs),
            &seen(failed_worker(&rs, 5, now())),
            &cfg,
            at(600),
        );
        assert!(last.create_pods.is_empty());
        assert_eq!(last.delete_pods, ["r-host-0-5"]);
        assert_eq!(last.status.phase, Some(Phase::Failed));
        let err = last.status.stats.unwrap()[0].error.clone().unwrap();
        assert!(
            err.contains("failed 5 times") && err.contains("RestoreSession"),
            "{err}"
        );
        assert!(last.notices.iter().any(|n| n.reason == "WorkerPodGaveUp"));
    }

    // ----- reconciler against the mocked API server -------------------------

    #[tokio::test(start_paused = true)]
    async fn a_new_restore_rolls_the_deployment_once_and_records_it() {
        let rs = session("Deployment", "web");
        let action = verify_with(now, rs, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, DEPLOY, 200, deployment(None)).await;
            let body = api
                .expect(
                    Method::PATCH,
                    &format!("{DEPLOY}?&fieldManager=hoard"),
                    200,
                    deployment(Some("uid-r")),
                )
                .await;
            assert_eq!(
                body["spec"]["template"]["metadata"]["annotations"]
                    [keys::ANNOTATION_RESTORE_ROLLOUT],
                "uid-r"
            );
            let body = api
                .expect(
                    Method::PATCH,
                    &status_path(),
                    200,
                    json!(session("Deployment", "web")),
                )
                .await;
            assert_eq!(body["metadata"]["resourceVersion"], "7");
            assert_eq!(body["status"]["totalHosts"], 1);
            assert_eq!(body["status"]["phase"], "Pending");
            assert_eq!(
                body["status"]["conditions"][0]["type"],
                CONDITION_ROLLED_OUT
            );
            assert_eq!(body["status"]["conditions"][0]["reason"], "Restarted");
            let ev = api.event().await;
            assert_eq!(ev["reason"], "RestoreStarted");
            assert!(
                ev["note"]
                    .as_str()
                    .unwrap()
                    .contains("restarted Deployment web")
            );
            api
        })
        .await
        .unwrap();
        // looks again at the deadline (1h after creation)
        assert_eq!(action, Action::requeue(Duration::from_secs(3598)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rolled_restore_never_patches_the_workload_again_and_rolls_up() {
        let mut rs = session("Deployment", "web");
        rs.status = Some(RestoreSessionStatus {
            phase: Some(Phase::Running),
            stats: Some(vec![HostRestoreStats {
                hostname: "host-0".into(),
                phase: Some(Phase::Succeeded),
                duration: Some("884.431745ms".into()),
                ..Default::default()
            }]),
            conditions: Some(vec![rolled("Restarted")]),
            ..Default::default()
        });
        verify_with(now, rs, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, DEPLOY, 200, deployment(Some("uid-r")))
                .await;
            let body = api
                .expect(
                    Method::PATCH,
                    &status_path(),
                    200,
                    json!(session("Deployment", "web")),
                )
                .await;
            assert_eq!(body["status"]["phase"], "Succeeded");
            assert_eq!(body["status"]["hostsDone"], 1);
            assert_eq!(body["status"]["sessionDuration"], "884.431745ms");
            assert_eq!(api.event().await["reason"], "RestoreSucceeded");
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_rollout_restore_makes_no_request() {
        let mut rs = session("Deployment", "web");
        rs.status = Some(RestoreSessionStatus {
            phase: Some(Phase::Succeeded),
            conditions: Some(vec![rolled("Restarted")]),
            ..Default::default()
        });
        let action = verify_with(now, rs, reconcile, |api: ApiServer| async move { api })
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_target_is_waited_for_until_the_deadline() {
        const STS: &str = "/apis/apps/v1/namespaces/demo/statefulsets/db";
        let action = verify_with(
            now,
            session("StatefulSet", "db"),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, STS, 404, not_found("statefulsets \"db\""))
                    .await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &status_path(),
                        200,
                        json!(session("StatefulSet", "db")),
                    )
                    .await;
                assert_eq!(body["status"]["phase"], "Pending");
                let msg = body["status"]["message"].as_str().unwrap();
                assert!(msg.contains("target StatefulSet/db not found"), "{msg}");
                let ev = api.event().await;
                assert_eq!(
                    (ev["type"].as_str(), ev["reason"].as_str()),
                    (Some("Warning"), Some("RestoreWaiting"))
                );
                api
            },
        )
        .await
        .unwrap();
        assert_eq!(action, Action::requeue(WAIT_RECHECK));
        // at the deadline: failed, with the reason
        verify_with(
            late,
            session("StatefulSet", "db"),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, STS, 404, not_found("statefulsets \"db\""))
                    .await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &status_path(),
                        200,
                        json!(session("StatefulSet", "db")),
                    )
                    .await;
                assert_eq!(body["status"]["phase"], "Failed");
                let msg = body["status"]["message"].as_str().unwrap();
                assert!(msg.starts_with("target StatefulSet/db not found"), "{msg}");
                assert_eq!(api.event().await["reason"], "RestoreFailed");
                api
            },
        )
        .await
        .unwrap();
    }

    #[test]
    fn a_workload_created_after_the_session_is_not_restarted() {
        let mut rs = session("Deployment", "web");
        rs.status = Some(RestoreSessionStatus {
            message: Some(format!("{WAITING}target Deployment/web not found")),
            ..Default::default()
        });
        let seen = Observed {
            workload: Some(Workload::Single),
            created: Some("2026-03-10T11:00:30Z".parse().unwrap()),
            ..Default::default()
        };
        let plan = plan_restore(
            &rs,
            restore_mode(&rs),
            &seen,
            &InjectConfig::default(),
            now(),
        );
        assert_eq!(plan.rollout, None);
        let c = &plan.status.conditions.as_ref().unwrap()[0];
        assert_eq!(c.reason, "NewWorkload");
        assert_eq!(plan.status.message, None, "the waiting message is cleared");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bare_pod_is_not_touched_and_the_user_is_told() {
        let rs = session("Pod", "web-0");
        verify_with(now, rs, reconcile, |mut api: ApiServer| async move {
            let body = api
                .expect(
                    Method::PATCH,
                    &status_path(),
                    200,
                    json!(session("Pod", "web-0")),
                )
                .await;
            assert_eq!(
                body["status"]["conditions"][0]["reason"],
                "UserRecreatesPods"
            );
            let ev = api.event().await;
            assert_eq!(ev["type"], "Warning");
            assert!(
                ev["note"]
                    .as_str()
                    .unwrap()
                    .contains("delete and re-create pod web-0"),
                "{ev}"
            );
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn volume_snapshotter_fails_as_not_yet_supported() {
        let mut rs = session("StatefulSet", "db");
        rs.spec.driver = Some(Driver::VolumeSnapshotter);
        verify_with(now, rs, reconcile, |mut api: ApiServer| async move {
            let body = api
                .expect(
                    Method::PATCH,
                    &status_path(),
                    200,
                    json!(session("StatefulSet", "db")),
                )
                .await;
            assert_eq!(body["status"]["phase"], "Failed");
            assert!(
                body["status"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("VolumeSnapshotter is not yet supported")
            );
            let ev = api.event().await;
            assert_eq!(
                (ev["type"].as_str(), ev["reason"].as_str()),
                (Some("Warning"), Some("RestoreFailed"))
            );
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn claim_templates_create_pvcs_then_one_worker_per_ordinal() {
        let rs = vct_session(2);
        verify_with(now, rs, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, &format!("{PODS}?"), 200, list_of("Pod", vec![]))
                .await;
            api.expect(
                Method::GET,
                &format!("{PVCS}?&labelSelector=hoard.dev%2Fsession-uid%3Duid-r"),
                200,
                list_of("PersistentVolumeClaim", vec![]),
            )
            .await;
            for i in 0..2 {
                let body = api
                    .expect(
                        Method::POST,
                        &format!("{PVCS}?&fieldManager=hoard"),
                        201,
                        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"}}),
                    )
                    .await;
                assert_eq!(
                    body["metadata"]["name"],
                    format!("restore-data-restore-demo-{i}")
                );
                assert_eq!(body["metadata"]["labels"][keys::LABEL_SESSION_UID], "uid-r");
                assert_eq!(body["metadata"]["labels"][keys::LABEL_RESTORED_BY], "r");
                assert!(body["metadata"].get("ownerReferences").is_none(), "PVCs outlive the session");
                assert_eq!(body["spec"]["accessModes"][0], "ReadWriteOnce");
            }
            for i in 0..2 {
                let body = api
                    .expect(
                        Method::POST,
                        &format!("{PODS}?&fieldManager=hoard"),
                        201,
                        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
                    )
                    .await;
                assert_eq!(body["metadata"]["name"], format!("r-host-{i}"));
                assert_eq!(body["spec"]["hostname"], format!("host-{i}"));
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-r");
                let ann = &body["metadata"]["annotations"];
                assert_eq!(ann[keys::ANNOTATION_HOST], format!("host-{i}"));
                assert_eq!(ann[keys::ANNOTATION_TARGET], "StatefulSet/restore-demo");
                assert_eq!(ann[keys::ANNOTATION_RESTORE_SESSION], "r");
                assert_eq!(
                    body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
                    format!("restore-data-restore-demo-{i}")
                );
                assert_eq!(
                    body["spec"]["initContainers"][0]["name"],
                    keys::RESTORE_WAIT_CONTAINER
                );
                let pod: Pod = serde_json::from_value(body).unwrap();
                assert_eq!(
                    api::pod_security::restricted_violations(pod.spec.as_ref().unwrap()),
                    Vec::<String>::new()
                );
            }
            let body = api
                .expect(Method::PATCH, &status_path(), 200, json!(vct_session(2)))
                .await;
            assert_eq!(body["status"]["totalHosts"], 2);
            assert_eq!(body["status"]["conditions"][0]["reason"], "WorkerPods");
            assert_eq!(api.event().await["reason"], "RestoreStarted");
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_host_loses_its_worker_and_existing_pvcs_are_kept() {
        let rs = with_hosts(
            vct_session(2),
            &[("host-0", Phase::Succeeded), ("host-1", Phase::Running)],
        );
        let pods = vec![worker(&rs, "host-0"), worker(&rs, "host-1")];
        verify_with(now, rs, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, &format!("{PODS}?"), 200, list_of("Pod", pods))
                .await;
            let claims = (0..2)
                .map(|i| json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": format!("restore-data-restore-demo-{i}")}}))
                .collect();
            api.expect(
                Method::GET,
                &format!("{PVCS}?&labelSelector=hoard.dev%2Fsession-uid%3Duid-r"),
                200,
                list_of("PersistentVolumeClaim", claims),
            )
            .await;
            api.expect(
                Method::DELETE,
                &format!("{PODS}/r-host-0?"),
                200,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "r-host-0"}}),
            )
            .await;
            let body = api
                .expect(Method::PATCH, &status_path(), 200, json!(vct_session(2)))
                .await;
            assert_eq!(body["status"]["phase"], "Running");
            assert_eq!(body["status"]["hostsDone"], 1);
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_deadline_silent_hosts_fail_and_every_worker_is_removed() {
        let rs = with_hosts(vct_session(2), &[("host-0", Phase::Succeeded)]);
        let pods = vec![worker(&rs, "host-1")];
        verify_with(late, rs, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, &format!("{PODS}?"), 200, list_of("Pod", pods))
                .await;
            api.expect(
                Method::GET,
                &format!("{PVCS}?&labelSelector=hoard.dev%2Fsession-uid%3Duid-r"),
                200,
                list_of("PersistentVolumeClaim", vec![]),
            )
            .await;
            api.expect(
                Method::DELETE,
                &format!("{PODS}/r-host-1?"),
                200,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "r-host-1"}}),
            )
            .await;
            let body = api
                .expect(Method::PATCH, &status_path(), 200, json!(vct_session(2)))
                .await;
            assert_eq!(body["status"]["phase"], "Failed");
            let stats = body["status"]["stats"].as_array().unwrap();
            assert!(
                stats[1]["error"]
                    .as_str()
                    .unwrap()
                    .contains("never reported")
            );
            let ev = api.event().await;
            assert_eq!(ev["reason"], "RestoreFailed");
            assert!(ev["note"].as_str().unwrap().contains("host-1"));
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_restore_removes_leftover_workers() {
        let mut rs = with_hosts(vct_session(1), &[("host-0", Phase::Failed)]);
        rs.status.as_mut().unwrap().phase = Some(Phase::Failed);
        let pods = vec![worker(&rs, "host-0")];
        verify_with(now, rs, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, &by_uid(), 200, list_of("Pod", pods))
                .await;
            api.expect(
                Method::DELETE,
                &format!("{PODS}/r-host-0?"),
                200,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "r-host-0"}}),
            )
            .await;
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_standalone_pvc_in_use_waits_and_says_by_whom() {
        let rs = session("PersistentVolumeClaim", "data");
        let app = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "app-0", "namespace": NS },
            "spec": {
                "containers": [{ "name": "app", "image": "app" }],
                "volumes": [{ "name": "d", "persistentVolumeClaim": { "claimName": "data" } }]
            },
            "status": { "phase": "Running" }
        });
        let action = verify_with(now, rs, reconcile, |mut api: ApiServer| async move {
            api.expect(
                Method::GET,
                &format!("{PODS}?"),
                200,
                list_of("Pod", vec![app]),
            )
            .await;
            let body = api
                .expect(
                    Method::PATCH,
                    &status_path(),
                    200,
                    json!(session("PersistentVolumeClaim", "data")),
                )
                .await;
            assert!(
                body["status"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("PVC in use by pod app-0")
            );
            assert_eq!(api.event().await["reason"], "RestoreStarted");
            let ev = api.event().await;
            assert_eq!(
                (ev["type"].as_str(), ev["reason"].as_str()),
                (Some("Warning"), Some("RestoreWaiting"))
            );
            api
        })
        .await
        .unwrap();
        assert_eq!(action, Action::requeue(WAIT_RECHECK));
    }
}
