//! The controllers' decisions as pure functions of the objects they read and
//! `now` (no I/O, no clock): the reconcilers fetch, call these, and write what
//! they return. Everything here is unit-tested with plain `#[test]`s.
//!
//! - [`plan_configuration`]: should a `BackupConfiguration` start a session
//!   now, and what its status says (last session, outcome, next tick, why
//!   nothing runs);
//! - [`session_name`]: `<configuration>-<tick unix seconds>`, so the same tick
//!   always yields the same name and a retried create is a harmless conflict;
//! - [`total_hosts`] / [`TargetHosts`]: how many hosts a target has;
//! - [`roll_up_session`]: a session's phase, `hostsDone`, `sessionDuration`
//!   from the hosts' entries the agents wrote, failing hosts that never
//!   reported before the session's deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use api::common::{Phase, TargetRef};
use api::host::{WorkloadKind, host_for_ordinal};
use api::keys;
use api::phase::{format_go_duration, roll_up, session_duration};
use api::{
    BackupConfiguration, BackupConfigurationStatus, BackupSession, BackupSessionSpec,
    BackupSessionStatus, HostBackupStats, HostRestoreStats, InvokerRef, LastSession,
    RestoreSessionStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::cron::{Schedule, plan_tick, until};

/// Condition on a `BackupConfiguration`: is it creating sessions on schedule?
pub const CONDITION_SCHEDULED: &str = "Scheduled";
/// Condition on a `BackupSession`: set when it finished (its
/// `lastTransitionTime` is the completion time).
pub const CONDITION_COMPLETED: &str = "Completed";

/// Longest object name (DNS subdomain).
const MAX_NAME_LEN: usize = 253;

/// Longest wait before a configuration is looked at again even when no
/// event arrives: bounds the damage of a clock jump on the node.
pub const MAX_REQUEUE: Duration = Duration::from_secs(60 * 60);

/// Name of the session started for `tick`: `<configuration>-<unix seconds>`
/// (Stash names sessions the same way), the configuration part shortened so
/// the whole stays a valid object name.
pub fn session_name(configuration: &str, tick: Timestamp) -> String {
    let suffix = format!("-{}", tick.as_second());
    let mut prefix = configuration.to_string();
    prefix.truncate(MAX_NAME_LEN - suffix.len());
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}{suffix}")
}

/// `true` while a session may still do work (not Succeeded/Failed/Skipped).
pub fn is_active(session: &BackupSession) -> bool {
    !session
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(Phase::is_finished)
}

/// A user-visible event the reconciler should publish on the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// What the scheduler does for one configuration.
#[derive(Debug, Clone)]
pub struct ConfigurationPlan {
    /// A session to create (absent: none is due, or it may not start).
    pub create: Option<BackupSession>,
    /// The configuration's status as it should be.
    pub status: BackupConfigurationStatus,
    pub notice: Option<Notice>,
    /// When to look again (the next tick); `None`: only on a change.
    pub requeue: Option<Duration>,
    /// Finished sessions beyond `backupHistoryLimit`, to delete.
    pub delete: Vec<String>,
}

/// Decides for `config` at `now`, given the sessions it invoked (any order).
///
/// - `paused` → no session; `Scheduled=False/Paused`; no next tick.
/// - no `schedule` → instant backups only; `Scheduled=False/NoSchedule`.
/// - invalid schedule (bypassing the CRD's CEL) → `Scheduled=False/InvalidSchedule`.
/// - a tick due ([`plan_tick`]) while a session of this configuration is still
///   active → skipped, visibly: a warning event and
///   `Scheduled=True/TickSkipped` naming the running session.
/// - a tick due otherwise → one session named by [`session_name`].
pub fn plan_configuration(
    config: &BackupConfiguration,
    sessions: &[BackupSession],
    now: Timestamp,
) -> ConfigurationPlan {
    let name = config.name_any();
    let old = config.status.clone().unwrap_or_default();
    let generation = config.metadata.generation;
    let mut last_session = newest_session(sessions);
    let mut create = None;
    let mut notice = None;
    let mut next = None;

    let (status, reason, message) = if config.spec.is_paused() {
        (
            "False",
            "Paused",
            "spec.paused is true: no new sessions start (running ones finish); set it to false to resume".to_string(),
        )
    } else if let Some(line) = config.spec.schedule.as_deref() {
        match Schedule::parse(line) {
            Err(e) => ("False", "InvalidSchedule", e.to_string()),
            Ok(schedule) => {
                let anchor = config
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(now, |t| t.0);
                // A stored tick is only trusted when it was computed from the
                // current spec (same generation); otherwise start afresh.
                let stored = old
                    .next_schedule_time
                    .as_ref()
                    .filter(|_| old.observed_generation == generation)
                    .map(|t| t.0);
                let tick = plan_tick(&schedule, anchor, stored, now);
                next = tick.next;
                match tick.due {
                    None => keep_reason(
                        &old,
                        "True",
                        "Active",
                        format!("next session at {}", fmt_next(next)),
                    ),
                    Some(due) => match sessions.iter().find(|s| is_active(s)) {
                        Some(running) => {
                            let note = format!(
                                "the tick at {due} was skipped: BackupSession {} of this configuration is still running; next tick at {}",
                                running.name_any(),
                                fmt_next(next)
                            );
                            notice = Some(Notice {
                                warning: true,
                                reason: "BackupSkipped",
                                action: "Schedule",
                                note: note.clone(),
                            });
                            ("True", "TickSkipped", note)
                        }
                        None => {
                            let session = new_session(config, &session_name(&name, due));
                            notice = Some(Notice {
                                warning: false,
                                reason: "BackupSessionCreated",
                                action: "Schedule",
                                note: format!(
                                    "created BackupSession {} for the tick at {due}",
                                    session.name_any()
                                ),
                            });
                            last_session = Some(LastSession {
                                name: session.name_any(),
                                phase: Some(Phase::Pending),
                                start_time: Some(Time(now)),
                                completion_time: None,
                            });
                            create = Some(session);
                            (
                                "True",
                                "Active",
                                format!("next session at {}", fmt_next(next)),
                            )
                        }
                    },
                }
            }
        }
    } else {
        (
            "False",
            "NoSchedule",
            "spec.schedule is not set: only instant backups run (create a BackupSession that names this configuration)".to_string(),
        )
    };

    if notice.is_none() {
        notice = schedule_transition(&old, reason, &message);
    }
    let condition = condition(
        &old.conditions,
        CONDITION_SCHEDULED,
        status,
        reason,
        message,
        generation,
        now,
    );
    let status = BackupConfigurationStatus {
        observed_generation: generation,
        conditions: Some(vec![condition]),
        last_session,
        next_schedule_time: next.map(Time),
    };
    ConfigurationPlan {
        create,
        status,
        notice,
        requeue: next.map(|n| until(now, n).min(MAX_REQUEUE)),
        delete: expired_sessions(sessions, config.spec.history_limit()),
    }
}

/// The event for a change of the `Scheduled` condition's reason that the
/// user caused (pausing, resuming, a schedule that cannot run), once, when
/// it happens; ticks have their own events.
fn schedule_transition(
    old: &BackupConfigurationStatus,
    reason: &str,
    message: &str,
) -> Option<Notice> {
    let was = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_SCHEDULED)
        .map(|c| c.reason.as_str());
    if was == Some(reason) {
        return None;
    }
    let (warning, reason) = match (was, reason) {
        (_, "Paused") => (false, "BackupPaused"),
        (_, "InvalidSchedule") => (true, "InvalidSchedule"),
        (_, "NoSchedule") => (false, "NoSchedule"),
        (Some("Paused"), _) => (false, "BackupResumed"),
        (Some("InvalidSchedule" | "NoSchedule"), "Active") => (false, "Scheduled"),
        _ => return None,
    };
    Some(Notice {
        warning,
        reason,
        action: "Schedule",
        note: message.to_string(),
    })
}

/// The finished sessions beyond the newest `limit` finished ones (Stash's
/// `backupHistoryLimit`). Active sessions are never deleted.
pub fn expired_sessions(sessions: &[BackupSession], limit: u32) -> Vec<String> {
    let mut finished: Vec<&BackupSession> = sessions.iter().filter(|s| !is_active(s)).collect();
    finished.sort_by(|a, b| {
        (b.metadata.creation_timestamp.as_ref(), b.name_any())
            .cmp(&(a.metadata.creation_timestamp.as_ref(), a.name_any()))
    });
    finished
        .into_iter()
        .skip(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(ResourceExt::name_any)
        .collect()
}

/// While a tick was skipped, the condition keeps saying so until the next
/// tick is handled, instead of flipping back at the next reconcile.
fn keep_reason(
    old: &BackupConfigurationStatus,
    status: &'static str,
    reason: &'static str,
    message: String,
) -> (&'static str, &'static str, String) {
    let skipped = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_SCHEDULED && c.reason == "TickSkipped");
    match skipped {
        Some(c) => ("True", "TickSkipped", c.message.clone()),
        None => (status, reason, message),
    }
}

fn fmt_next(next: Option<Timestamp>) -> String {
    next.map_or_else(
        || "never (the schedule has no future tick)".into(),
        |t| t.to_string(),
    )
}

/// A condition that keeps its `lastTransitionTime` while its status stays the
/// same, so an unchanged state writes an unchanged status.
fn condition(
    old: &Option<Vec<Condition>>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = old
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn newest_session(sessions: &[BackupSession]) -> Option<LastSession> {
    let s = sessions.iter().max_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref(), a.name_any())
            .cmp(&(b.metadata.creation_timestamp.as_ref(), b.name_any()))
    })?;
    let status = s.status.clone().unwrap_or_default();
    Some(LastSession {
        name: s.name_any(),
        phase: Some(status.phase.unwrap_or_default()),
        start_time: s.metadata.creation_timestamp.clone(),
        completion_time: status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == CONDITION_COMPLETED && c.status == "True")
            .map(|c| c.last_transition_time.clone()),
    })
}

/// A scheduled session of `config`, owned by it (deleted with it).
pub fn new_session(config: &BackupConfiguration, name: &str) -> BackupSession {
    let config_name = config.name_any();
    let mut labels = BTreeMap::new();
    // Names may be longer than a label value allows; the invoker field
    // (selectable) is the reliable link, the label a convenience.
    if api::host::is_valid_label_value(&config_name) {
        labels.insert(
            keys::LABEL_BACKUP_CONFIGURATION.to_string(),
            config_name.clone(),
        );
    }
    BackupSession {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: config.namespace(),
            labels: Some(labels),
            owner_references: config.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: BackupSessionSpec {
            invoker: InvokerRef {
                api_group: Some(keys::GROUP.into()),
                kind: BackupConfiguration::kind(&()).into_owned(),
                name: config_name,
            },
        },
        status: None,
    }
}

/// What the controller knows of a target's workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `spec.replicas` (absent means 1).
    StatefulSet { replicas: Option<i32> },
    /// `status.desiredNumberScheduled`: the nodes that should run its pod.
    DaemonSet { desired_scheduled: i32 },
    /// Deployment, ReplicaSet, ReplicationController, PVC, bare pod.
    Single,
}

/// `totalHosts` of one target: StatefulSet replicas, the DaemonSet's
/// scheduled pods, 1 for everything else (seed 001).
pub fn total_hosts(workload: Workload) -> u32 {
    match workload {
        Workload::StatefulSet { replicas } => u32::try_from(replicas.unwrap_or(1)).unwrap_or(0),
        Workload::DaemonSet { desired_scheduled } => u32::try_from(desired_scheduled).unwrap_or(0),
        Workload::Single => 1,
    }
}

/// The hosts of one target a session expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHosts {
    /// The target as written in host entries: `None` for a configuration with
    /// a single `target` (the agents leave it out then), the target in a batch.
    pub target: Option<TargetRef>,
    pub total: u32,
    /// Host names known in advance (`host-<i>`, `host-0`); empty for a
    /// DaemonSet, whose hosts are node names.
    pub names: Vec<String>,
}

impl TargetHosts {
    pub fn new(kind: WorkloadKind, target: Option<TargetRef>, workload: Workload) -> Self {
        let total = total_hosts(workload);
        let names = match kind {
            WorkloadKind::DaemonSet => Vec::new(),
            WorkloadKind::StatefulSet => (0..total).map(host_for_ordinal).collect(),
            _ => vec![api::host::HOST_0.to_string()],
        };
        Self {
            target,
            total,
            names,
        }
    }
}

/// Rolls a session up from its hosts' entries.
///
/// `started` is the session's creation time, `timeout` the configuration's
/// `timeOut`. Until `started + timeout` the phase follows [`roll_up`]. After
/// it, every host that has not finished is failed with a reason — those that
/// reported and those that never did — so no session stays `Running` forever.
/// A finished session is returned unchanged.
pub fn roll_up_session<S: SessionStatus>(
    old: &S,
    targets: &[TargetHosts],
    started: Timestamp,
    timeout: Duration,
    now: Timestamp,
) -> (S, Option<Duration>) {
    let old_status = old;
    let old = old.clone().into_parts();
    if old.phase.is_some_and(Phase::is_finished) {
        return (old_status.clone(), None);
    }
    let total: u32 = targets.iter().map(|t| t.total).sum();
    let mut stats = old.stats.clone().unwrap_or_default();
    let deadline = started
        .checked_add(k8s_openapi::jiff::SignedDuration::try_from(timeout).unwrap_or_default())
        .unwrap_or(Timestamp::MAX);
    let timed_out = now >= deadline;
    let mut message = old.message.clone();
    if timed_out {
        let limit = format_go_duration(timeout);
        for s in &mut stats {
            if !s.phase().is_some_and(Phase::is_finished) {
                s.fail(format!(
                    "did not finish within the session's timeOut ({limit}); check the hoard agent on the host's node (kubectl -n {} logs)",
                    keys::NAMESPACE
                ));
            }
        }
        for t in targets {
            for host in &t.names {
                if !stats
                    .iter()
                    .any(|s| s.hostname() == host && s.target() == t.target.as_ref())
                {
                    stats.push(S::Host::never_reported(
                        host.clone(),
                        t.target.clone(),
                        format!(
                            "never reported within the session's timeOut ({limit}); is the hoard agent running on the host's node?"
                        ),
                    ));
                }
            }
        }
        let reported = u32::try_from(stats.len()).unwrap_or(u32::MAX);
        if reported < total {
            message = Some(format!(
                "{} of {total} hosts never reported within the session's timeOut ({limit})",
                total - reported
            ));
        }
    }
    let mut r = roll_up(
        Some(total),
        stats.iter().map(|s| s.phase().unwrap_or_default()),
    );
    if timed_out && !r.phase.is_finished() {
        // Hosts whose names are unknown (DaemonSet nodes) never reported.
        r.phase = Phase::Failed;
    }
    if total == 0 && stats.is_empty() {
        // Nothing to back up (StatefulSet scaled to zero, DaemonSet on no
        // node): the session did not run, and says why.
        r.phase = Phase::Skipped;
        message = Some(
            "the target has no hosts (0 replicas, or no node runs the DaemonSet's pod): nothing to back up"
                .into(),
        );
    }
    let duration = session_duration(stats.iter().filter_map(|s| s.duration()))
        .unwrap_or_else(|_| old.session_duration.clone().unwrap_or_default());
    let mut conditions = old.conditions.clone().unwrap_or_default();
    if r.phase.is_finished() && !conditions.iter().any(|c| c.type_ == CONDITION_COMPLETED) {
        conditions.push(Condition {
            type_: CONDITION_COMPLETED.into(),
            status: "True".into(),
            reason: format!("{:?}", r.phase),
            message: format!("{} of {total} hosts finished", r.hosts_done),
            observed_generation: None,
            last_transition_time: Time(now),
        });
    }
    let status = S::from_parts(SessionParts {
        phase: Some(r.phase),
        total_hosts: Some(i32::try_from(total).unwrap_or(i32::MAX)),
        hosts_done: Some(i32::try_from(r.hosts_done).unwrap_or(i32::MAX)),
        session_duration: (!stats.is_empty()).then_some(duration),
        stats: (!stats.is_empty()).then_some(stats),
        message,
        conditions: (!conditions.is_empty()).then_some(conditions),
    });
    let requeue = (!r.phase.is_finished()).then(|| until(now, deadline));
    (status, requeue)
}

/// A session that cannot run at all (its configuration or target is
/// missing), failed with `message` saying what to fix.
pub fn failed_status<S: SessionStatus>(old: &S, message: String, now: Timestamp) -> S {
    let old = old.clone().into_parts();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    if !conditions.iter().any(|c| c.type_ == CONDITION_COMPLETED) {
        conditions.push(Condition {
            type_: CONDITION_COMPLETED.into(),
            status: "True".into(),
            reason: "Failed".into(),
            message: message.clone(),
            observed_generation: None,
            last_transition_time: Time(now),
        });
    }
    S::from_parts(SessionParts {
        phase: Some(Phase::Failed),
        message: Some(message),
        conditions: Some(conditions),
        ..old
    })
}

/// A host's entry in a session's `status.stats`, backup or restore: the
/// roll-up reads and fails entries through this, so one piece of code rolls
/// up both kinds of session.
pub trait HostEntry: Clone {
    fn hostname(&self) -> &str;
    /// The batch target the entry belongs to (restores have none).
    fn target(&self) -> Option<&TargetRef>;
    fn phase(&self) -> Option<Phase>;
    fn duration(&self) -> Option<&str>;
    /// Marks the host failed with `error` (progress cleared).
    fn fail(&mut self, error: String);
    /// The entry of a host that never reported.
    fn never_reported(hostname: String, target: Option<TargetRef>, error: String) -> Self;
}

impl HostEntry for HostBackupStats {
    fn hostname(&self) -> &str {
        &self.hostname
    }
    fn target(&self) -> Option<&TargetRef> {
        self.target.as_ref()
    }
    fn phase(&self) -> Option<Phase> {
        self.phase
    }
    fn duration(&self) -> Option<&str> {
        self.duration.as_deref()
    }
    fn fail(&mut self, error: String) {
        self.phase = Some(Phase::Failed);
        self.progress = None;
        self.error = Some(error);
    }
    fn never_reported(hostname: String, target: Option<TargetRef>, error: String) -> Self {
        Self {
            hostname,
            target,
            phase: Some(Phase::Failed),
            error: Some(error),
            ..Default::default()
        }
    }
}

impl HostEntry for HostRestoreStats {
    fn hostname(&self) -> &str {
        &self.hostname
    }
    fn target(&self) -> Option<&TargetRef> {
        None
    }
    fn phase(&self) -> Option<Phase> {
        self.phase
    }
    fn duration(&self) -> Option<&str> {
        self.duration.as_deref()
    }
    fn fail(&mut self, error: String) {
        self.phase = Some(Phase::Failed);
        self.progress = None;
        self.error = Some(error);
    }
    fn never_reported(hostname: String, _target: Option<TargetRef>, error: String) -> Self {
        Self {
            hostname,
            phase: Some(Phase::Failed),
            error: Some(error),
            ..Default::default()
        }
    }
}

/// The fields a session status shares, backup or restore (seed 001 gives
/// both the same shape).
#[derive(Debug, Clone, Default)]
pub struct SessionParts<H> {
    pub phase: Option<Phase>,
    pub total_hosts: Option<i32>,
    pub hosts_done: Option<i32>,
    pub session_duration: Option<String>,
    pub stats: Option<Vec<H>>,
    pub message: Option<String>,
    pub conditions: Option<Vec<Condition>>,
}

/// A session's status as [`SessionParts`]: what [`roll_up_session`] and
/// [`failed_status`] work on.
pub trait SessionStatus: Clone {
    type Host: HostEntry;
    fn into_parts(self) -> SessionParts<Self::Host>;
    fn from_parts(p: SessionParts<Self::Host>) -> Self;
}

macro_rules! session_status {
    ($status:ty, $host:ty) => {
        impl SessionStatus for $status {
            type Host = $host;
            fn into_parts(self) -> SessionParts<$host> {
                SessionParts {
                    phase: self.phase,
                    total_hosts: self.total_hosts,
                    hosts_done: self.hosts_done,
                    session_duration: self.session_duration,
                    stats: self.stats,
                    message: self.message,
                    conditions: self.conditions,
                }
            }
            // Restore sessions have no agent-only fields: the update is a no-op there.
            #[allow(clippy::needless_update)]
            fn from_parts(p: SessionParts<$host>) -> Self {
                Self {
                    phase: p.phase,
                    total_hosts: p.total_hosts,
                    hosts_done: p.hosts_done,
                    session_duration: p.session_duration,
                    stats: p.stats,
                    message: p.message,
                    conditions: p.conditions,
                    // Fields only the agents write (retention) are not
                    // part of the roll-up; its merge patch omits them.
                    ..Default::default()
                }
            }
        }
    };
}
session_status!(BackupSessionStatus, HostBackupStats);
session_status!(RestoreSessionStatus, HostRestoreStats);

#[cfg(test)]
mod tests {
    use super::*;
    use api::{BackupConfigurationSpec, BackupTarget};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn config(schedule: Option<&str>, paused: bool) -> BackupConfiguration {
        let mut c = BackupConfiguration::new(
            "db",
            BackupConfigurationSpec {
                schedule: schedule.map(Into::into),
                paused: paused.then_some(true),
                target: Some(BackupTarget {
                    target_ref: sts_ref(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("demo".into());
        c.metadata.uid = Some("uid-db".into());
        c.metadata.generation = Some(1);
        c.metadata.creation_timestamp = Some(Time(ts("2026-01-01T00:00:00Z")));
        c
    }

    fn with_next(mut c: BackupConfiguration, next: &str) -> BackupConfiguration {
        c.status = Some(BackupConfigurationStatus {
            observed_generation: Some(1),
            next_schedule_time: Some(Time(ts(next))),
            ..Default::default()
        });
        c
    }

    fn sts_ref() -> TargetRef {
        TargetRef {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "db".into(),
        }
    }

    fn session(name: &str, created: &str, phase: Option<Phase>) -> BackupSession {
        let mut s = BackupSession::new(
            name,
            BackupSessionSpec {
                invoker: InvokerRef {
                    api_group: None,
                    kind: "BackupConfiguration".into(),
                    name: "db".into(),
                },
            },
        );
        s.metadata.creation_timestamp = Some(Time(ts(created)));
        s.status = phase.map(|p| BackupSessionStatus {
            phase: Some(p),
            ..Default::default()
        });
        s
    }

    fn reason(plan: &ConfigurationPlan) -> (&str, &str) {
        let c = &plan.status.conditions.as_ref().unwrap()[0];
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn session_names_are_per_tick_and_valid() {
        let t = ts("2026-03-10T11:00:00Z");
        assert_eq!(session_name("db", t), "db-1773140400");
        let long = format!("{}-x", "a".repeat(252));
        let n = session_name(&long, t);
        assert_eq!(n.len(), 253);
        assert!(n.ends_with("a-1773140400"), "{n}");
        // a cut that would end in '-' is trimmed
        let dashy = format!("{}-{}", "a".repeat(241), "b".repeat(20));
        assert_eq!(
            session_name(&dashy, t),
            format!("{}-1773140400", "a".repeat(241))
        );
    }

    #[test]
    fn a_due_tick_creates_one_owned_session() {
        let c = with_next(config(Some("@hourly"), false), "2026-03-10T11:00:00Z");
        let now = ts("2026-03-10T11:00:02Z");
        let plan = plan_configuration(&c, &[], now);
        let s = plan.create.clone().expect("a session");
        assert_eq!(s.name_any(), "db-1773140400");
        assert_eq!(s.namespace().as_deref(), Some("demo"));
        assert_eq!(s.spec.invoker.name, "db");
        assert_eq!(s.spec.invoker.api_group.as_deref(), Some("hoard.dev"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-db", Some(true))
        );
        assert_eq!(s.labels()[keys::LABEL_BACKUP_CONFIGURATION], "db");
        assert_eq!(reason(&plan), ("True", "Active"));
        assert_eq!(
            plan.status.next_schedule_time,
            Some(Time(ts("2026-03-10T12:00:00Z")))
        );
        assert_eq!(
            plan.status.last_session.as_ref().unwrap().name,
            "db-1773140400"
        );
        assert_eq!(plan.requeue, Some(Duration::from_secs(3598)));
        assert_eq!(plan.notice.unwrap().reason, "BackupSessionCreated");
    }

    #[test]
    fn not_due_creates_nothing_and_waits_for_the_tick() {
        let c = with_next(config(Some("@hourly"), false), "2026-03-10T12:00:00Z");
        let plan = plan_configuration(&c, &[], ts("2026-03-10T11:30:00Z"));
        assert!(plan.create.is_none());
        assert_eq!(plan.notice, None);
        assert_eq!(plan.requeue, Some(Duration::from_secs(1800)));
    }

    #[test]
    fn a_changed_spec_recomputes_the_next_tick_without_running() {
        let mut c = with_next(config(Some("*/10 * * * *"), false), "2026-03-10T11:00:00Z");
        c.metadata.generation = Some(2);
        let plan = plan_configuration(&c, &[], ts("2026-03-10T11:03:00Z"));
        assert!(plan.create.is_none());
        assert_eq!(
            plan.status.next_schedule_time,
            Some(Time(ts("2026-03-10T11:10:00Z")))
        );
        assert_eq!(plan.status.observed_generation, Some(2));
    }

    #[test]
    fn paused_creates_nothing_and_says_so() {
        let c = with_next(config(Some("@hourly"), true), "2026-03-10T11:00:00Z");
        let plan = plan_configuration(&c, &[], ts("2026-03-10T11:00:02Z"));
        assert!(plan.create.is_none());
        assert_eq!(reason(&plan), ("False", "Paused"));
        assert!(
            plan.status.conditions.unwrap()[0]
                .message
                .contains("spec.paused")
        );
        assert_eq!(plan.status.next_schedule_time, None);
        assert_eq!(plan.requeue, None);
    }

    #[test]
    fn no_schedule_means_instant_backups_only() {
        let plan = plan_configuration(&config(None, false), &[], ts("2026-03-10T11:00:00Z"));
        assert!(plan.create.is_none());
        assert_eq!(reason(&plan), ("False", "NoSchedule"));
    }

    #[test]
    fn invalid_schedule_is_reported() {
        let plan = plan_configuration(
            &config(Some("every hour"), false),
            &[],
            ts("2026-03-10T11:00:00Z"),
        );
        assert!(plan.create.is_none());
        assert_eq!(reason(&plan), ("False", "InvalidSchedule"));
    }

    /// Pausing, resuming and a schedule that cannot run are events once,
    /// when they happen (`kubectl describe bc`), not only a condition.
    #[test]
    fn pause_resume_and_schedule_problems_are_events_once() {
        let at = ts("2026-03-10T11:30:00Z");
        let step = |c: &mut BackupConfiguration| {
            let plan = plan_configuration(c, &[], at);
            c.status = Some(plan.status.clone());
            plan.notice.map(|n| (n.reason, n.warning))
        };
        let mut c = with_next(config(Some("@hourly"), false), "2026-03-10T12:00:00Z");
        assert_eq!(step(&mut c), None, "first look at an active schedule");
        c.spec.paused = Some(true);
        assert_eq!(step(&mut c), Some(("BackupPaused", false)));
        assert_eq!(step(&mut c), None, "still paused: no repeat");
        c.spec.paused = None;
        assert_eq!(step(&mut c), Some(("BackupResumed", false)));
        assert_eq!(step(&mut c), None);
        c.spec.schedule = Some("every hour".into());
        assert_eq!(step(&mut c), Some(("InvalidSchedule", true)));
        assert_eq!(step(&mut c), None);
        c.spec.schedule = Some("@hourly".into());
        assert_eq!(step(&mut c), Some(("Scheduled", false)));
        c.spec.schedule = None;
        assert_eq!(step(&mut c), Some(("NoSchedule", false)));
    }

    #[test]
    fn a_running_session_blocks_the_next_visibly() {
        let c = with_next(config(Some("@hourly"), false), "2026-03-10T11:00:00Z");
        let sessions = [
            session("db-1", "2026-03-10T09:00:00Z", Some(Phase::Succeeded)),
            session("db-2", "2026-03-10T10:00:00Z", Some(Phase::Running)),
        ];
        let plan = plan_configuration(&c, &sessions, ts("2026-03-10T11:00:01Z"));
        assert!(plan.create.is_none());
        assert_eq!(reason(&plan), ("True", "TickSkipped"));
        let n = plan.notice.unwrap();
        assert!(n.warning);
        assert!(n.note.contains("BackupSession db-2"), "{}", n.note);
        // the skipped tick still advances the schedule
        assert_eq!(
            plan.status.next_schedule_time,
            Some(Time(ts("2026-03-10T12:00:00Z")))
        );
        // a session without any status yet counts as running, too
        let fresh = [session("db-3", "2026-03-10T10:00:00Z", None)];
        assert!(
            plan_configuration(&c, &fresh, ts("2026-03-10T11:00:01Z"))
                .create
                .is_none()
        );
    }

    #[test]
    fn status_reports_the_newest_session_and_its_outcome() {
        let c = with_next(config(Some("@hourly"), false), "2026-03-10T12:00:00Z");
        let mut done = session("db-2", "2026-03-10T10:00:00Z", Some(Phase::Failed));
        done.status.as_mut().unwrap().conditions = Some(vec![Condition {
            type_: CONDITION_COMPLETED.into(),
            status: "True".into(),
            reason: "Failed".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(ts("2026-03-10T10:05:00Z")),
        }]);
        let sessions = [
            session("db-1", "2026-03-10T09:00:00Z", Some(Phase::Succeeded)),
            done,
        ];
        let plan = plan_configuration(&c, &sessions, ts("2026-03-10T11:00:00Z"));
        let last = plan.status.last_session.unwrap();
        assert_eq!(last.name, "db-2");
        assert_eq!(last.phase, Some(Phase::Failed));
        assert_eq!(last.start_time, Some(Time(ts("2026-03-10T10:00:00Z"))));
        assert_eq!(last.completion_time, Some(Time(ts("2026-03-10T10:05:00Z"))));
    }

    #[test]
    fn an_unchanged_state_yields_an_unchanged_status() {
        let c = with_next(config(Some("@hourly"), false), "2026-03-10T12:00:00Z");
        let first = plan_configuration(&c, &[], ts("2026-03-10T11:00:00Z"));
        let mut c2 = c.clone();
        c2.status = Some(first.status.clone());
        let second = plan_configuration(&c2, &[], ts("2026-03-10T11:30:00Z"));
        assert_eq!(first.status, second.status);
    }

    #[test]
    fn history_limit_keeps_the_newest_finished_sessions() {
        let sessions = [
            session("db-1", "2026-03-10T08:00:00Z", Some(Phase::Succeeded)),
            session("db-3", "2026-03-10T10:00:00Z", Some(Phase::Failed)),
            session("db-2", "2026-03-10T09:00:00Z", Some(Phase::Skipped)),
            session("db-4", "2026-03-10T11:00:00Z", Some(Phase::Running)),
        ];
        // default limit 1: keep db-3, never touch the running db-4
        assert_eq!(expired_sessions(&sessions, 1), ["db-2", "db-1"]);
        assert_eq!(expired_sessions(&sessions, 0), ["db-3", "db-2", "db-1"]);
        assert!(expired_sessions(&sessions, 5).is_empty());
        let c = with_next(config(Some("@hourly"), false), "2026-03-10T12:00:00Z");
        let plan = plan_configuration(&c, &sessions, ts("2026-03-10T11:30:00Z"));
        assert_eq!(plan.delete, ["db-2", "db-1"]);
    }

    #[test]
    fn total_hosts_table() {
        let cases = [
            (Workload::StatefulSet { replicas: Some(3) }, 3),
            (Workload::StatefulSet { replicas: None }, 1),
            (Workload::StatefulSet { replicas: Some(0) }, 0),
            (
                Workload::DaemonSet {
                    desired_scheduled: 5,
                },
                5,
            ),
            (Workload::Single, 1),
        ];
        for (w, want) in cases {
            assert_eq!(total_hosts(w), want, "{w:?}");
        }
        let sts = TargetHosts::new(
            WorkloadKind::StatefulSet,
            None,
            Workload::StatefulSet { replicas: Some(2) },
        );
        assert_eq!(sts.names, ["host-0", "host-1"]);
        let dep = TargetHosts::new(WorkloadKind::Deployment, None, Workload::Single);
        assert_eq!(dep.names, ["host-0"]);
        let ds = TargetHosts::new(
            WorkloadKind::DaemonSet,
            None,
            Workload::DaemonSet {
                desired_scheduled: 4,
            },
        );
        assert!(ds.names.is_empty());
    }

    fn host(name: &str, phase: Phase, duration: Option<&str>) -> HostBackupStats {
        HostBackupStats {
            hostname: name.into(),
            phase: Some(phase),
            duration: duration.map(Into::into),
            ..Default::default()
        }
    }

    fn sts(n: i32) -> Vec<TargetHosts> {
        vec![TargetHosts::new(
            WorkloadKind::StatefulSet,
            None,
            Workload::StatefulSet { replicas: Some(n) },
        )]
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn roll_up_of_the_seed_001_hosts() {
        use Phase::*;
        let start = ts("2026-03-10T11:00:00Z");
        let now = ts("2026-03-10T11:10:00Z");
        let seed = [
            ("host-0", "884.431745ms"),
            ("host-1", "769.924342ms"),
            ("host-2", "868.694738ms"),
            ("host-3", "792.097784ms"),
            ("host-4", "833.139795ms"),
        ];
        let all_ok = BackupSessionStatus {
            stats: Some(
                seed.iter()
                    .map(|(h, d)| host(h, Succeeded, Some(d)))
                    .collect(),
            ),
            ..Default::default()
        };
        let (st, requeue) = roll_up_session(&all_ok, &sts(5), start, HOUR, now);
        assert_eq!(st.phase, Some(Succeeded));
        assert_eq!((st.total_hosts, st.hosts_done), (Some(5), Some(5)));
        assert_eq!(st.session_duration.as_deref(), Some("4.148288404s"));
        assert_eq!(requeue, None);
        let done = st.conditions.unwrap();
        assert_eq!(done[0].type_, CONDITION_COMPLETED);
        assert_eq!(done[0].last_transition_time, Time(now));
    }

    #[test]
    fn roll_up_phase_table() {
        use Phase::*;
        let start = ts("2026-03-10T11:00:00Z");
        let now = ts("2026-03-10T11:10:00Z");
        let cases: &[(&[Phase], Phase, i32)] = &[
            (&[], Pending, 0),
            (&[Running], Running, 0),
            (&[Succeeded, Running, Pending], Running, 1),
            // a failure waits for the others to finish
            (&[Failed, Running, Succeeded], Running, 2),
            (&[Failed, Succeeded, Succeeded], Failed, 3),
            (&[Succeeded, Succeeded, Succeeded], Succeeded, 3),
        ];
        for (phases, want, done) in cases {
            let old = BackupSessionStatus {
                stats: Some(
                    phases
                        .iter()
                        .enumerate()
                        .map(|(i, p)| host(&format!("host-{i}"), *p, None))
                        .collect(),
                ),
                ..Default::default()
            };
            let (st, requeue) = roll_up_session(&old, &sts(3), start, HOUR, now);
            assert_eq!(
                (st.phase, st.hosts_done),
                (Some(*want), Some(*done)),
                "{phases:?}"
            );
            // while running, look again at the deadline
            if !want.is_finished() {
                assert_eq!(requeue, Some(Duration::from_secs(50 * 60)));
            }
        }
    }

    #[test]
    fn hosts_that_never_report_fail_at_the_deadline() {
        use Phase::*;
        let start = ts("2026-03-10T11:00:00Z");
        let old = BackupSessionStatus {
            stats: Some(vec![
                host("host-0", Succeeded, Some("1s")),
                host("host-1", Running, None),
            ]),
            ..Default::default()
        };
        // Before the deadline: still running.
        let (st, _) = roll_up_session(&old, &sts(3), start, HOUR, ts("2026-03-10T11:59:59Z"));
        assert_eq!(st.phase, Some(Running));
        // At the deadline: host-1 (running) and host-2 (silent) fail.
        let (st, requeue) = roll_up_session(&old, &sts(3), start, HOUR, ts("2026-03-10T12:00:00Z"));
        assert_eq!(st.phase, Some(Failed));
        assert_eq!(requeue, None);
        let stats = st.stats.unwrap();
        let by = |h: &str| stats.iter().find(|s| s.hostname == h).unwrap();
        assert_eq!(by("host-0").phase, Some(Succeeded));
        assert_eq!(by("host-1").phase, Some(Failed));
        assert!(
            by("host-1")
                .error
                .as_ref()
                .unwrap()
                .contains("timeOut (1h0m0s)")
        );
        assert_eq!(by("host-2").phase, Some(Failed));
        assert!(
            by("host-2")
                .error
                .as_ref()
                .unwrap()
                .contains("never reported")
        );
        assert_eq!(st.hosts_done, Some(3));
    }

    #[test]
    fn daemonset_hosts_that_never_report_fail_the_session_with_a_message() {
        let ds = vec![TargetHosts::new(
            WorkloadKind::DaemonSet,
            None,
            Workload::DaemonSet {
                desired_scheduled: 3,
            },
        )];
        let old = BackupSessionStatus {
            stats: Some(vec![host("node-a", Phase::Succeeded, Some("2s"))]),
            ..Default::default()
        };
        let start = ts("2026-03-10T11:00:00Z");
        let (st, _) = roll_up_session(&old, &ds, start, HOUR, ts("2026-03-10T13:00:00Z"));
        assert_eq!(st.phase, Some(Phase::Failed));
        assert_eq!(
            st.message.as_deref(),
            Some("2 of 3 hosts never reported within the session's timeOut (1h0m0s)")
        );
    }

    #[test]
    fn an_empty_target_skips_the_session() {
        let (st, requeue) = roll_up_session(
            &BackupSessionStatus::default(),
            &sts(0),
            ts("2026-03-10T11:00:00Z"),
            HOUR,
            ts("2026-03-10T11:00:01Z"),
        );
        assert_eq!(st.phase, Some(Phase::Skipped));
        assert!(st.message.unwrap().contains("no hosts"));
        assert_eq!(requeue, None);
    }

    #[test]
    fn a_finished_session_is_left_alone() {
        let old = BackupSessionStatus {
            phase: Some(Phase::Skipped),
            message: Some("x".into()),
            ..Default::default()
        };
        let (st, requeue) = roll_up_session(
            &old,
            &sts(3),
            ts("2026-03-10T11:00:00Z"),
            HOUR,
            ts("2026-03-11T11:00:00Z"),
        );
        assert_eq!((st, requeue), (old, None));
    }
}
