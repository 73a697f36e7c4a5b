//! `BackupConfiguration` (what to back up, where, when, how long to keep it)
//! and `BackupSession` (one run of it). The controllers create a session at
//! each `schedule` tick (or a user does, for an instant backup); the agents on
//! the target's nodes fill in the per-host `status.stats`; the controllers
//! roll them up into `status.phase` (see [`crate::phase`]). A configuration
//! runs one session at a time: a younger one waits ([`session_to_wait_for`]).

use k8s_openapi::api::core::v1::VolumeMount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::phase::GO_DURATION_CEL;

use crate::common::{
    Driver, EmptyDirSettings, Phase, Progress, RepositoryRef, RetentionPolicy, RuntimeSettings,
    TargetRef, TaskRef,
};
use crate::schedule::SCHEDULE_CEL;

/// Finished `BackupSession`s kept per configuration when
/// `backupHistoryLimit` is not set (Stash's default).
pub const DEFAULT_BACKUP_HISTORY_LIMIT: u32 = 1;

/// Spec of a `BackupConfiguration`.
///
/// **Batch backup**: besides Stash's single `target`, `targets` lists several
/// co-related targets that are backed up together in one `BackupSession`
/// (seed 004, "Batch Backup").
// Rust: `all_targets()` iterates over both.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hoard.dev",
    version = "v1beta1",
    kind = "BackupConfiguration",
    namespaced,
    status = "BackupConfigurationStatus",
    shortname = "bc",
    category = "hoard",
    doc = "What to back up (a workload's volumes or a PVC), into which Repository, on which schedule, and how long to keep the snapshots.",
    printcolumn(
        name = "Repository",
        type_ = "string",
        json_path = ".spec.repository.name"
    ),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(
        name = "Last-Session",
        type_ = "string",
        json_path = ".status.lastSession.phase"
    ),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextScheduleTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.target) || (has(self.targets) && size(self.targets) > 0)")
    .message("set `target`, or list one or more targets in `targets` (batch backup)"))]
pub struct BackupConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    pub repository: RepositoryRef,
    /// The single target (Stash's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<BackupTarget>,
    /// Batch backup: more targets backed up in the same session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<BackupTarget>>,
    /// Cron schedule: 5 fields (`min hour day-of-month month day-of-week`) or
    /// `@hourly`, `@daily`, `@every 6h`... Without it, only instant backups
    /// (a user-created `BackupSession`) run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(SCHEDULE_CEL).message(
        "schedule must be 5 cron fields (e.g. \"0 */6 * * *\") or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, @every <duration>"
    ))]
    // A bound keeps the API server's CEL cost estimate of `matches` low.
    #[schemars(length(max = 128))]
    pub schedule: Option<String>,
    /// Stop creating new sessions (running ones finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// How many finished `BackupSession`s of this configuration to keep
    /// (Stash's `backupHistoryLimit`); older ones are deleted. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backup_history_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<RetentionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_settings: Option<RuntimeSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_dir: Option<EmptyDirSettings>,
    /// Deadline of each session (Go duration, e.g. `30m`, `2h`; Stash's
    /// `timeOut`). Hosts that have not finished by then are marked failed and
    /// held pods stop waiting. Default: 1h.
    // = crate::phase::DEFAULT_SESSION_TIMEOUT
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(GO_DURATION_CEL).message("timeOut must be a Go duration such as 30m, 2h or 1h30m"))]
    #[schemars(length(max = 64))]
    pub time_out: Option<String>,
}

impl BackupConfigurationSpec {
    /// `timeOut`, or the default when absent.
    pub fn timeout(&self) -> Result<std::time::Duration, crate::phase::DurationError> {
        self.time_out.as_deref().map_or(
            Ok(crate::phase::DEFAULT_SESSION_TIMEOUT),
            crate::phase::parse_go_duration,
        )
    }
    /// `target` followed by every entry of `targets`.
    pub fn all_targets(&self) -> impl Iterator<Item = &BackupTarget> {
        self.target.iter().chain(self.targets.iter().flatten())
    }

    /// `backupHistoryLimit`, [`DEFAULT_BACKUP_HISTORY_LIMIT`] when absent.
    pub fn history_limit(&self) -> u32 {
        self.backup_history_limit
            .map_or(DEFAULT_BACKUP_HISTORY_LIMIT, |n| {
                u32::try_from(n).unwrap_or(0)
            })
    }

    /// `paused`, `false` when absent.
    pub fn is_paused(&self) -> bool {
        self.paused.unwrap_or(false)
    }
}

/// One thing to back up.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTarget {
    #[serde(rename = "ref")]
    pub target_ref: TargetRef,
    /// Absolute paths (as seen in the application container) to back up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// The pod volumes holding `paths`, and where they are mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Glob patterns (restic `--exclude` syntax) not to back up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
}

/// Status of a `BackupConfiguration`, written by the controllers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupConfigurationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Paused`, `ScheduleValid`, `RepositoryFound`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_session: Option<LastSession>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
}

/// The most recent `BackupSession` of a configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastSession {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Spec of a `BackupSession`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hoard.dev",
    version = "v1beta1",
    kind = "BackupSession",
    namespaced,
    status = "BackupSessionStatus",
    shortname = "bs",
    category = "hoard",
    doc = "One run of a BackupConfiguration: created at each schedule tick, or by a user for an instant backup.",
    // `kubectl get bs --field-selector spec.invoker.name=<config>`
    selectable = ".spec.invoker.name",
    printcolumn(name = "Invoker", type_ = "string", json_path = ".spec.invoker.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Hosts-Done",
        type_ = "integer",
        json_path = ".status.hostsDone"
    ),
    printcolumn(name = "Hosts", type_ = "integer", json_path = ".status.totalHosts"),
    printcolumn(
        name = "Duration",
        type_ = "string",
        json_path = ".status.sessionDuration"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSessionSpec {
    /// The `BackupConfiguration` this session runs. Immutable: a session is
    /// one run of one configuration.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.invoker is immutable; create a new BackupSession instead"))]
    pub invoker: InvokerRef,
}

/// What invoked a `BackupSession`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'BackupConfiguration' && (!has(self.apiGroup) || self.apiGroup == 'hoard.dev')")
    .message("invoker must be a BackupConfiguration (apiGroup hoard.dev)"))]
pub struct InvokerRef {
    /// `hoard.dev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// `BackupConfiguration`.
    pub kind: String,
    pub name: String,
}

/// Status of a `BackupSession`. Each host's entry in `stats` is written by the
/// agent that owns the host; `phase`, `totalHosts`, `hostsDone` and
/// `sessionDuration` by the controllers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSessionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_hosts: Option<i32>,
    /// Hosts that finished (succeeded or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_done: Option<i32>,
    /// Sum of the hosts' durations, Go duration syntax (`4.148288404s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_duration: Option<String>,
    /// One entry per host (and target, in a batch backup). An atomic list,
    /// because host names repeat across batch targets (`host-0`): writers
    /// read, update their own entry and write back with the read
    /// `resourceVersion` (retrying on a conflict), so concurrent agents never
    /// overwrite each other's entries.
    // Rust: `upsert_host_stats()` updates the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Vec<HostBackupStats>>,
    /// Why the session is `Skipped`/`Failed` as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// What the configuration's `retentionPolicy` did after the session
    /// succeeded. Written once, by the one node agent that applies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionStatus>,
}

/// The outcome of applying a `retentionPolicy` (forget, then prune if asked)
/// after a successful `BackupSession`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionStatus {
    /// `Running`, then `Succeeded` or `Failed`; `Skipped` when the
    /// configuration has no policy (nothing is forgotten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `true`: the policy was only evaluated; `snapshotsRemoved` says what
    /// would have been removed, nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Snapshots of this configuration the policy keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots_kept: Option<i64>,
    /// Snapshots of this configuration removed (or, in a dry run, that
    /// would be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots_removed: Option<i64>,
    /// `true` when unreferenced data was pruned afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<bool>,
    /// Bytes of repository storage freed by the prune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_freed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node whose agent applied the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Backup statistics of one host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostBackupStats {
    pub hostname: String,
    /// Batch backup: the target this host belongs to (absent for `spec.target`
    /// alone, since host names repeat across targets, e.g. `host-0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Go duration syntax, e.g. `884.431745ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<SnapshotStats>>,
    /// Live progress while the host is `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// One snapshot taken for a host (one per path).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStats {
    /// Snapshot ID (short or full hex).
    pub name: String,
    pub path: String,
    /// Human-readable total size of the path, e.g. `1.2 GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<String>,
    /// Human-readable size added to the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_stats: Option<FileStats>,
}

/// File counts of one snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmodified: Option<i64>,
}

/// Replaces the entry of the same host and target in `stats`, or appends it.
pub fn upsert_host_stats(stats: &mut Vec<HostBackupStats>, entry: HostBackupStats) {
    match stats
        .iter_mut()
        .find(|s| s.hostname == entry.hostname && s.target == entry.target)
    {
        Some(slot) => *slot = entry,
        None => stats.push(entry),
    }
}

/// Condition type on a `BackupSession` that waits for an older session of
/// its configuration: `True` while it waits (the message names the older
/// session), `False` from the moment it may run (its `timeOut` counts from
/// then).
pub const CONDITION_WAITING: &str = "Waiting";

/// One configuration runs one session at a time: the `BackupSession` that
/// `session` must wait for, or `None` when it may run.
///
/// Among the unfinished sessions of one configuration (`siblings`: the
/// namespace's sessions, any invoker; `session` itself may be among them),
/// only the first may run, in this order: a session some host already
/// reported on (it was allowed to start) before one nobody started, then the
/// older `creationTimestamp`, then the smaller name. The agents (before
/// starting a host) and the roll-up controller (to show the wait) evaluate
/// this same rule on the same objects, so they agree without a lock; and
/// once a session may run it stays so, because sessions created later sort
/// after it and a finished one never runs again.
pub fn session_to_wait_for<'a>(
    session: &BackupSession,
    siblings: &'a [BackupSession],
) -> Option<&'a BackupSession> {
    fn key(s: &BackupSession) -> (bool, Option<&Time>, &str) {
        let started = s
            .status
            .as_ref()
            .and_then(|st| st.stats.as_ref())
            .is_some_and(|v| !v.is_empty());
        (
            !started,
            s.metadata.creation_timestamp.as_ref(),
            s.metadata.name.as_deref().unwrap_or(""),
        )
    }
    let unfinished = |s: &BackupSession| {
        !s.status
            .as_ref()
            .and_then(|st| st.phase)
            .is_some_and(Phase::is_finished)
    };
    if !unfinished(session) {
        return None;
    }
    let own = key(session);
    siblings
        .iter()
        .filter(|s| {
            s.metadata.namespace == session.metadata.namespace
                && s.spec.invoker.name == session.spec.invoker.name
                && s.spec.invoker.kind == session.spec.invoker.kind
                && s.metadata.name != session.metadata.name
                && unfinished(s)
        })
        .filter(|s| key(s) < own)
        .min_by(|a, b| key(a).cmp(&key(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str, target: Option<&str>, phase: Phase) -> HostBackupStats {
        HostBackupStats {
            hostname: host.into(),
            target: target.map(|n| TargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: n.into(),
            }),
            phase: Some(phase),
            ..Default::default()
        }
    }

    #[test]
    fn upsert_replaces_only_the_same_host_of_the_same_target() {
        let mut stats = vec![
            entry("host-0", Some("a"), Phase::Running),
            entry("host-0", Some("b"), Phase::Running),
        ];
        upsert_host_stats(&mut stats, entry("host-0", Some("b"), Phase::Succeeded));
        upsert_host_stats(&mut stats, entry("host-1", None, Phase::Running));
        assert_eq!(
            stats
                .iter()
                .map(|s| (s.hostname.as_str(), s.phase.unwrap()))
                .collect::<Vec<_>>(),
            [
                ("host-0", Phase::Running),
                ("host-0", Phase::Succeeded),
                ("host-1", Phase::Running)
            ]
        );
    }

    #[test]
    fn all_targets_lists_target_then_targets() {
        let t = |n: &str| BackupTarget {
            target_ref: TargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: n.into(),
            },
            ..Default::default()
        };
        let spec = BackupConfigurationSpec {
            target: Some(t("a")),
            targets: Some(vec![t("b"), t("c")]),
            ..Default::default()
        };
        let names: Vec<&str> = spec
            .all_targets()
            .map(|t| t.target_ref.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    fn sess(
        name: &str,
        invoker: &str,
        created: &str,
        status: Option<BackupSessionStatus>,
    ) -> BackupSession {
        let mut s = BackupSession::new(
            name,
            BackupSessionSpec {
                invoker: InvokerRef {
                    api_group: Some("hoard.dev".into()),
                    kind: "BackupConfiguration".into(),
                    name: invoker.into(),
                },
            },
        );
        s.metadata.namespace = Some("demo".into());
        s.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        s.status = status;
        s
    }

    fn phase(p: Phase) -> Option<BackupSessionStatus> {
        Some(BackupSessionStatus {
            phase: Some(p),
            ..Default::default()
        })
    }

    fn started() -> Option<BackupSessionStatus> {
        Some(BackupSessionStatus {
            phase: Some(Phase::Running),
            stats: Some(vec![entry("host-0", None, Phase::Running)]),
            ..Default::default()
        })
    }

    #[test]
    fn only_the_first_unfinished_session_of_a_configuration_runs() {
        const T0: &str = "2026-03-10T11:00:00Z";
        const T1: &str = "2026-03-10T11:00:05Z";
        let name = |s: Option<&BackupSession>| s.map(|s| s.metadata.name.clone().unwrap());
        // (case, siblings, session, waits for)
        let cases: Vec<(&str, Vec<BackupSession>, BackupSession, Option<&str>)> = vec![
            (
                "an older running session blocks a younger one",
                vec![sess("old", "cfg", T0, phase(Phase::Running))],
                sess("new", "cfg", T1, None),
                Some("old"),
            ),
            (
                "the older one does not wait for the younger",
                vec![sess("new", "cfg", T1, None)],
                sess("old", "cfg", T0, phase(Phase::Running)),
                None,
            ),
            (
                "a finished older session blocks nothing",
                vec![
                    sess("a", "cfg", T0, phase(Phase::Succeeded)),
                    sess("b", "cfg", T0, phase(Phase::Failed)),
                    sess("c", "cfg", T0, phase(Phase::Skipped)),
                ],
                sess("new", "cfg", T1, None),
                None,
            ),
            (
                "another configuration's session blocks nothing",
                vec![sess("other", "cfg-2", T0, phase(Phase::Running))],
                sess("new", "cfg", T1, None),
                None,
            ),
            (
                "the same second: the smaller name first",
                vec![sess("a", "cfg", T1, None)],
                sess("b", "cfg", T1, None),
                Some("a"),
            ),
            (
                "a started session goes first, even if created later or named after",
                vec![sess("z", "cfg", T1, started())],
                sess("a", "cfg", T0, None),
                Some("z"),
            ),
            (
                "of several blockers, the first is named",
                vec![
                    sess("second", "cfg", T1, None),
                    sess("first", "cfg", T0, None),
                ],
                sess("third", "cfg", "2026-03-10T11:01:00Z", None),
                Some("first"),
            ),
            (
                "the session itself in the list is not its own blocker",
                vec![sess("only", "cfg", T0, None)],
                sess("only", "cfg", T0, None),
                None,
            ),
            (
                "a finished session waits for nothing",
                vec![sess("old", "cfg", T0, phase(Phase::Running))],
                sess("new", "cfg", T1, phase(Phase::Failed)),
                None,
            ),
        ];
        for (case, siblings, s, want) in cases {
            assert_eq!(
                name(session_to_wait_for(&s, &siblings)).as_deref(),
                want,
                "{case}"
            );
        }
    }
}
