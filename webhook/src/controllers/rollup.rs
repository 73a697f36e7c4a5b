//! The `BackupSession` roll-up reconciler: reads the session, its
//! configuration and the target workloads (for `totalHosts`), asks
//! [`roll_up_session`] for the status at `now`, and writes it guarded by the
//! session's `resourceVersion` — agents write `status.stats` concurrently,
//! and a stale write must fail (and retry) rather than drop their entries.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::info;

use api::backup::{CONDITION_WAITING, session_to_wait_for};
use api::common::{Phase, TargetRef};
use api::host::WorkloadKind;
use api::keys::FIELD_MANAGER;
use api::{BackupConfiguration, BackupSession, BackupSessionStatus};

use super::plan::{
    HostEntry, Notice, SessionStatus, TargetHosts, Workload, failed_status, roll_up_session,
};
use super::{Context, Error};

/// The hosts of each target, or (inner `Err`) why the session cannot run,
/// worded for the user.
async fn target_hosts(
    ctx: &Context,
    ns: &str,
    config: &BackupConfiguration,
) -> Result<Result<Vec<TargetHosts>, String>, Error> {
    let batch = config.spec.targets.as_ref().is_some_and(|t| !t.is_empty());
    let mut out = Vec::new();
    for t in config.spec.all_targets() {
        let r: &TargetRef = &t.target_ref;
        let Some(kind) = WorkloadKind::parse(&r.kind) else {
            return Ok(Err(format!(
                "target kind {:?} is not supported; use Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController or PersistentVolumeClaim",
                r.kind
            )));
        };
        let not_found = || format!("target {kind}/{} not found in namespace {ns}", r.name);
        let workload = match kind {
            WorkloadKind::StatefulSet => {
                match Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
                    .get_opt(&r.name)
                    .await?
                {
                    Some(s) => Workload::StatefulSet {
                        replicas: s.spec.and_then(|s| s.replicas),
                    },
                    None => return Ok(Err(not_found())),
                }
            }
            WorkloadKind::DaemonSet => {
                match Api::<DaemonSet>::namespaced(ctx.client.clone(), ns)
                    .get_opt(&r.name)
                    .await?
                {
                    Some(d) => Workload::DaemonSet {
                        desired_scheduled: d.status.map_or(0, |s| s.desired_number_scheduled),
                    },
                    None => return Ok(Err(not_found())),
                }
            }
            _ => Workload::Single,
        };
        out.push(TargetHosts::new(kind, batch.then(|| r.clone()), workload));
    }
    Ok(Ok(out))
}

pub async fn reconcile(session: Arc<BackupSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let old = session.status.clone().unwrap_or_default();
    if old.phase.is_some_and(Phase::is_finished) {
        return Ok(Action::await_change());
    }
    let name = session.name_any();
    let ns = session.namespace().ok_or_else(|| Error::NotNamespaced {
        kind: "BackupSession",
        name: name.clone(),
    })?;
    let now = (ctx.now)();
    let started = session
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let invoker = &session.spec.invoker.name;
    let mut waiting = None;

    let config = Api::<BackupConfiguration>::namespaced(ctx.client.clone(), &ns)
        .get_opt(invoker)
        .await?;
    let (status, requeue) = match config {
        None => (
            failed_status(
                &old,
                format!(
                    "BackupConfiguration {invoker} not found in namespace {ns}; create it, or delete this session"
                ),
                now,
            ),
            None,
        ),
        Some(config) => {
            // One session of a configuration at a time: until a host
            // reported (or the wait was lifted), ask whether an older one
            // is unfinished — the rule the agents apply before starting.
            let older = if may_wait(&old) {
                let lp = ListParams::default().fields(&format!("spec.invoker.name={invoker}"));
                let siblings = Api::<BackupSession>::namespaced(ctx.client.clone(), &ns)
                    .list(&lp)
                    .await?
                    .items;
                let me = siblings
                    .iter()
                    .find(|s| s.uid() == session.uid())
                    .unwrap_or(session.as_ref());
                Some(session_to_wait_for(me, &siblings).map(ResourceExt::name_any))
            } else {
                None
            };
            match older {
                Some(Some(older)) => {
                    let (status, notice) = waiting_status(&old, &older, invoker, now);
                    waiting = notice;
                    (status, Some(WAIT_RECHECK))
                }
                _ => {
                    let base = if older.is_some() {
                        lifted_status(&old, invoker, now)
                    } else {
                        old.clone()
                    };
                    match target_hosts(&ctx, &ns, &config).await? {
                        Err(msg) => (failed_status(&base, msg, now), None),
                        Ok(targets) => {
                            // The CRD validates timeOut; an unreadable one
                            // (schema bypassed) falls back to the default
                            // rather than never timing out.
                            let timeout = config
                                .spec
                                .timeout()
                                .unwrap_or(api::phase::DEFAULT_SESSION_TIMEOUT);
                            // A session that waited has its timeOut from
                            // when it could run.
                            let started = ran_since(&base).map_or(started, |t| t.max(started));
                            roll_up_session(&base, &targets, started, timeout, now)
                        }
                    }
                }
            }
        }
    };

    if status != old {
        let body = json!({
            "metadata": { "resourceVersion": session.resource_version() },
            "status": status,
        });
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        Api::<BackupSession>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &pp, &Patch::Merge(&body))
            .await?;
        if let Some(notice) = finished_notice(&BACKUP, &old, &status) {
            info!(%ns, session = %name, reason = notice.reason, "backup session finished");
            ctx.publish(session.as_ref(), &notice).await;
        } else if let Some(notice) = started_notice(&old, &status) {
            ctx.publish(session.as_ref(), &notice).await;
        } else if let Some(notice) = &waiting {
            info!(%ns, session = %name, "backup session waits for an older one");
            ctx.publish(session.as_ref(), notice).await;
        }
    }
    ctx.succeeded(session.as_ref());
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// How often a waiting session re-checks the older one it waits for (the
/// older one's end does not change the waiting object).
pub(super) const WAIT_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

fn waiting_condition(status: &BackupSessionStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_WAITING)
}

/// Whether the session may still have to wait: no host reported yet and
/// the wait was not lifted before (once it may run, it stays so).
fn may_wait(status: &BackupSessionStatus) -> bool {
    status.stats.as_ref().is_none_or(Vec::is_empty)
        && waiting_condition(status).is_none_or(|c| c.status == "True")
}

/// When a session that waited could run (its `Waiting` condition turned
/// `False`).
fn ran_since(status: &BackupSessionStatus) -> Option<Timestamp> {
    waiting_condition(status)
        .filter(|c| c.status == "False")
        .map(|c| c.last_transition_time.0)
}

fn set_waiting(status: &mut BackupSessionStatus, cond: Condition) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == CONDITION_WAITING) {
        Some(c) => *c = cond,
        None => conditions.push(cond),
    }
}

/// The status of a session that waits for `older`, and the event to
/// publish when it starts waiting (once, not at every re-check). Its
/// `timeOut` does not run meanwhile.
pub(super) fn waiting_status(
    old: &BackupSessionStatus,
    older: &str,
    invoker: &str,
    now: Timestamp,
) -> (BackupSessionStatus, Option<Notice>) {
    let msg = format!(
        "waiting for BackupSession {older} to finish: BackupConfiguration {invoker} runs one session at a time"
    );
    let was = waiting_condition(old).filter(|c| c.status == "True");
    let mut new = old.clone();
    new.phase = Some(Phase::Pending);
    new.message = Some(msg.clone());
    set_waiting(
        &mut new,
        Condition {
            type_: CONDITION_WAITING.into(),
            status: "True".into(),
            reason: "OlderSessionUnfinished".into(),
            message: msg.clone(),
            observed_generation: None,
            last_transition_time: was.map_or(Time(now), |c| c.last_transition_time.clone()),
        },
    );
    let notice = was.is_none().then(|| Notice {
        warning: false,
        reason: "BackupWaiting",
        action: "RollUp",
        note: format!("{msg}; this session starts when it does"),
    });
    (new, notice)
}

/// The status of a session that may run: a wait it showed is lifted
/// (`Waiting` `False` from `now`, where its `timeOut` starts).
pub(super) fn lifted_status(
    old: &BackupSessionStatus,
    invoker: &str,
    now: Timestamp,
) -> BackupSessionStatus {
    let Some(was) = waiting_condition(old) else {
        return old.clone();
    };
    let mut new = old.clone();
    if new.message.as_deref() == Some(was.message.as_str()) {
        new.message = None;
    }
    set_waiting(
        &mut new,
        Condition {
            type_: CONDITION_WAITING.into(),
            status: "False".into(),
            reason: "OlderSessionFinished".into(),
            message: format!(
                "no older session of BackupConfiguration {invoker} is unfinished; this session runs"
            ),
            observed_generation: None,
            last_transition_time: Time(now),
        },
    );
    new
}

/// Event reasons of one kind of session.
pub(super) struct Reasons {
    pub succeeded: &'static str,
    pub failed: &'static str,
    pub skipped: &'static str,
    /// "backed up", "restored"
    pub verb: &'static str,
}

pub(super) const BACKUP: Reasons = Reasons {
    succeeded: "BackupSucceeded",
    failed: "BackupFailed",
    skipped: "BackupSkipped",
    verb: "backed up",
};

/// The event for a backup session whose first host started (`Running`).
pub(super) fn started_notice(
    old: &BackupSessionStatus,
    new: &BackupSessionStatus,
) -> Option<Notice> {
    if new.phase != Some(Phase::Running) || old.phase == Some(Phase::Running) {
        return None;
    }
    let hosts = new.total_hosts.unwrap_or_default();
    Some(Notice {
        warning: false,
        reason: "BackupStarted",
        action: "RollUp",
        note: format!(
            "backing up {hosts} host(s); the session fails any host that has not finished by its timeOut"
        ),
    })
}

/// The event for a session (backup or restore) that just finished.
pub(super) fn finished_notice<S: SessionStatus>(
    reasons: &Reasons,
    old: &S,
    new: &S,
) -> Option<Notice> {
    let (old, new) = (old.clone().into_parts(), new.clone().into_parts());
    let phase = new.phase?;
    if !phase.is_finished() || old.phase == Some(phase) {
        return None;
    }
    let total = new.total_hosts.unwrap_or_default();
    let done = new.hosts_done.unwrap_or_default();
    let (warning, reason, note) = match phase {
        Phase::Succeeded => (
            false,
            reasons.succeeded,
            format!(
                "all {total} hosts {} in {}",
                reasons.verb,
                new.session_duration.as_deref().unwrap_or("0s")
            ),
        ),
        Phase::Skipped => (
            true,
            reasons.skipped,
            new.message.clone().unwrap_or_default(),
        ),
        _ => {
            let failed: Vec<&str> = new
                .stats
                .iter()
                .flatten()
                .filter(|s| s.phase() == Some(Phase::Failed))
                .map(|s| s.hostname())
                .collect();
            let note = match &new.message {
                Some(m) if failed.is_empty() => m.clone(),
                _ => format!(
                    "{} of {total} hosts failed ({}); {done} finished; see status.stats[].error",
                    failed.len(),
                    failed.join(", ")
                ),
            };
            (true, reasons.failed, note)
        }
    };
    Some(Notice {
        warning,
        reason,
        action: "RollUp",
        note,
    })
}
