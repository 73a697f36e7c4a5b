//! Types shared by several kinds: target references, runtime settings, the
//! temporary directory, retention, per-host status with live progress.
//!
//! Field names follow the Stash v1beta1 API (seed `001`), so a Stash user's YAML
//! moves over by changing the group.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, Lifecycle, LocalObjectReference, PodReadinessGate,
    PodSecurityContext, Probe, ResourceRequirements, SecurityContext, Toleration, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How data is backed up or restored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Driver {
    /// restic-format repository (Hoard's engine). The default.
    #[default]
    Restic,
    /// Stash's CSI VolumeSnapshot driver. Accepted so Stash YAML applies, but
    /// not yet supported: sessions using it fail with a message saying so.
    VolumeSnapshotter,
}

/// Reference to the workload (or PVC) a session or configuration works on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// e.g. `apps/v1`, or `v1` for a PersistentVolumeClaim.
    pub api_version: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`,
    /// `ReplicationController`, `PersistentVolumeClaim` or `Pod`.
    pub kind: String,
    pub name: String,
}

/// Reference to a `Repository` in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryRef {
    pub name: String,
}

/// Stash's `Task` reference. Not needed for workload or PVC data (Hoard has no
/// task catalogue); kept so Stash YAML applies unchanged.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<Param>>,
}

/// One task parameter.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Param {
    pub name: String,
    pub value: String,
}

/// Runtime settings of the Hoard process that does the work.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRuntimeSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRuntimeSettings>,
}

/// Container-level runtime settings (seed 001's table). `nice` and `ionice`
/// apply to the agent's transfer for this session; the other fields apply to
/// the restore init-container or the short-lived job pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRuntimeSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<NiceSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ionice: Option<IONiceSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,
}

/// CPU scheduling priority (`nice(1)`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NiceSettings {
    /// Added to the process's niceness: -20 (highest priority) … 19 (lowest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -20, max = 19))]
    pub adjustment: Option<i32>,
}

/// I/O scheduling class and priority (`ionice(1)`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IONiceSettings {
    /// 0 none, 1 realtime, 2 best-effort, 3 idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3))]
    pub class: Option<i32>,
    /// Priority within the class: 0 (highest) … 7 (lowest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 7))]
    pub class_data: Option<i32>,
}

/// Pod-level runtime settings (seed 001's table); they apply to the
/// short-lived pods Hoard creates (standalone PVCs, volume claim templates).
/// The restore init-container runs in the application's own pod, with the
/// application's service account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRuntimeSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_gates: Option<Vec<PodReadinessGate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Option<bool>,
}

/// Temporary directory (and restic cache) settings.
///
/// Seed 001 documents `sizeLimit` and `disableCaching`, but its example YAML
/// writes `size` and `disableCache`. Both spellings are accepted so that the
/// example applies as written.
// Rust: read them through `size_limit()` and `caching_disabled()`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirSettings {
    /// `""` (node disk) or `Memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    /// Maximum size of the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
    /// Do not keep a local cache of repository metadata (slower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_caching: Option<bool>,
    /// Alias of `sizeLimit` (spelling of seed 001's example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Alias of `disableCaching` (spelling of seed 001's example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_cache: Option<bool>,
}

impl EmptyDirSettings {
    /// `sizeLimit`, or its alias `size`.
    pub fn size_limit(&self) -> Option<&Quantity> {
        self.size_limit.as_ref().or(self.size.as_ref())
    }

    /// `disableCaching`, or its alias `disableCache`; `false` by default.
    pub fn caching_disabled(&self) -> bool {
        self.disable_caching.or(self.disable_cache).unwrap_or(false)
    }
}

/// Which snapshots to keep (restic `forget` semantics, per host and path).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Free-form name (Stash compatibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_last: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_hourly: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_daily: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_weekly: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_monthly: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_yearly: Option<i64>,
    /// Keep every snapshot carrying one of these tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_tags: Option<Vec<String>>,
    /// Remove unreferenced data after forgetting snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
    /// Only report what would be forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// Phase of a session, a host or a path.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    /// The session was not run (e.g. another session of the same
    /// configuration was still running). Only used for `BackupSession`.
    Skipped,
    Unknown,
}

impl Phase {
    /// `Succeeded`, `Failed` or `Skipped`: nothing will change any more.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Skipped)
    }
}

/// Live progress of one host's transfer, written by the agent every few seconds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_done: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_total: Option<i64>,
    /// RFC 3339 time of this progress report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Volume mounts (shared alias for readability).
pub type VolumeMounts = Vec<VolumeMount>;
