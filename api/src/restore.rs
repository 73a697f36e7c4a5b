//! `RestoreSession` (v1beta1), field for field as Stash 0.8.3 (seed `001`),
//! plus live progress per host. The controllers roll the target so that its
//! new pods pass the webhook, which holds them with an init-container; the
//! agent on each pod's node restores by the session's rules (see
//! [`crate::rules`]) and writes the completion marker the init-container
//! waits for.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::phase::GO_DURATION_CEL;

use crate::common::{
    Driver, EmptyDirSettings, Phase, Progress, RepositoryRef, RuntimeSettings, TargetRef, TaskRef,
};

/// Spec of a `RestoreSession`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hoard.dev",
    version = "v1beta1",
    kind = "RestoreSession",
    namespaced,
    status = "RestoreSessionStatus",
    shortname = "restore",
    category = "hoard",
    doc = "Restore a Repository's snapshots into a workload's volumes (or new PVCs), host by host according to rules.",
    // `kubectl get restore --field-selector spec.target.ref.name=<workload>`
    selectable = ".spec.target.ref.name",
    printcolumn(
        name = "Repository",
        type_ = "string",
        json_path = ".spec.repository.name"
    ),
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
pub struct RestoreSessionSpec {
    /// `Restic` (default) or `VolumeSnapshotter` (accepted, reported as not
    /// yet supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Restic"))]
    pub driver: Option<Driver>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryRef>,
    /// Not needed for workload or PVC data; kept for Stash YAML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRef>,
    pub target: RestoreTarget,
    /// Which data goes into which host; the first matching rule wins. Absent
    /// or empty: every host gets the latest snapshots of its own paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RestoreRule>>,
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

impl RestoreSessionSpec {
    /// `timeOut`, or the default when absent.
    pub fn timeout(&self) -> Result<std::time::Duration, crate::phase::DurationError> {
        self.time_out.as_deref().map_or(
            Ok(crate::phase::DEFAULT_SESSION_TIMEOUT),
            crate::phase::parse_go_duration,
        )
    }
    /// `driver`, `Restic` when absent.
    pub fn driver(&self) -> Driver {
        self.driver.unwrap_or_default()
    }
}

/// Where data is restored.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.replicas) || has(self.volumeClaimTemplates)")
    .message("`replicas` only applies together with `volumeClaimTemplates`"))]
pub struct RestoreTarget {
    #[serde(rename = "ref")]
    pub target_ref: TargetRef,
    /// The volumes to restore into and where they are mounted (in the
    /// init-container or the job pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// PVCs to create and restore into; `metadata.name` may contain
    /// `${POD_ORDINAL}`, replaced by 0, 1, ... up to `replicas`.
    // Rust: crate::pvc::pvc_names()
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_templates: Option<Vec<PersistentVolumeClaim>>,
    /// How many ordinals of `volumeClaimTemplates` to create (StatefulSet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
}

/// A restore rule (seed 001, `spec.rules`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.paths) && size(self.paths) > 0) || (has(self.snapshots) && size(self.snapshots) > 0)"
).message(
    "a rule needs `paths` (restore the latest snapshot of each path) or `snapshots` (restore exactly these; each snapshot holds one path, so `paths` is then optional and, if given, must lie inside the snapshots)"
))]
pub struct RestoreRule {
    /// Hosts this rule applies to. Empty: every host that no other rule names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hosts: Option<Vec<String>>,
    /// Host whose backup is restored. Empty: the target host itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_host: Option<String>,
    /// Paths to restore (latest snapshot of each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Snapshot IDs to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<String>>,
}

/// Status of a `RestoreSession`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSessionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_hosts: Option<i32>,
    /// Hosts that finished (succeeded or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_done: Option<i32>,
    /// Sum of the hosts' restore durations (seed 001), Go duration syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_duration: Option<String>,
    /// One entry per host, keyed by `hostname` (`x-kubernetes-list-type:
    /// map`): with server-side apply, each agent owns its hosts' entries
    /// (field manager `hoard/<host>`) and never overwrites another's.
    // Rust: crate::keys::host_field_manager()
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["hostname".into()]))]
    pub stats: Option<Vec<HostRestoreStats>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

/// Restore statistics of one host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostRestoreStats {
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Go duration syntax, e.g. `884.431745ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Live progress while the host is `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// Replaces the entry of the same host in `stats`, or appends it.
pub fn upsert_host_stats(stats: &mut Vec<HostRestoreStats>, entry: HostRestoreStats) {
    match stats.iter_mut().find(|s| s.hostname == entry.hostname) {
        Some(slot) => *slot = entry,
        None => stats.push(entry),
    }
}
