//! `Recovery` (v1alpha1), the Stash 0.5 single-workload restore (seed `000`):
//! restore one host of a backed-up workload into the given volumes (usually a
//! hostPath on a chosen node). Kept so that seed's users are served; the node
//! agent does the work.

use k8s_openapi::api::core::v1::Volume;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Phase, Progress};
use crate::host::{HOST_0, WorkloadKind, host_for_ordinal};

/// Spec of a `Recovery`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hoard.dev",
    version = "v1alpha1",
    kind = "Recovery",
    namespaced,
    status = "RecoveryStatus",
    shortname = "rec",
    category = "hoard",
    doc = "Stash 0.5-style restore of one host of a workload into the given volumes.",
    printcolumn(name = "Workload", type_ = "string", json_path = ".spec.workload.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.podOrdinal) || self.workload.kind.lowerAscii() == 'statefulset'")
        .message("podOrdinal may only be set for workload kind StatefulSet"),
    validation = Rule::new("self.workload.kind.lowerAscii() != 'statefulset' || has(self.podOrdinal)")
        .message("a StatefulSet recovery needs podOrdinal (the pod index whose backup is restored)"),
    validation = Rule::new("!has(self.nodeName) || self.workload.kind.lowerAscii() == 'daemonset'")
        .message("nodeName may only be set for workload kind DaemonSet"),
    validation = Rule::new("self.workload.kind.lowerAscii() != 'daemonset' || has(self.nodeName)")
        .message("a DaemonSet recovery needs nodeName (the node whose backup is restored)")
)]
pub struct RecoverySpec {
    /// Name of the backup configuration (Stash's `Restic`) whose repository
    /// holds the data: a `BackupConfiguration` in the same namespace.
    pub restic: String,
    pub workload: WorkloadRef,
    /// StatefulSet only: the pod index whose backup is restored (`host-<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ordinal: Option<IntOrString>,
    /// DaemonSet only: the node whose backup is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Where to restore; each `name` is the workload volume that was backed up.
    pub volumes: Vec<Volume>,
}

/// The backed-up workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Case-insensitive: `Statefulset` from the seed's examples is accepted.
    #[schemars(length(max = 63))]
    pub kind: String,
    pub name: String,
}

/// Status of a `Recovery`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// One entry per path, keyed by `path` (`x-kubernetes-list-type: map`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["path".into()]))]
    pub stats: Option<Vec<RestoreStats>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Recovery of one backed-up path.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStats {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Go duration syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// Why a `Recovery` does not name a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryHostError {
    #[error(
        "workload kind {0:?} is not supported; use Deployment, StatefulSet, DaemonSet, ReplicaSet or ReplicationController"
    )]
    UnknownKind(String),
    #[error("a StatefulSet recovery needs spec.podOrdinal (the pod index, e.g. 0)")]
    MissingPodOrdinal,
    #[error("spec.podOrdinal {0:?} is not a pod index; use a non-negative integer such as 0")]
    BadPodOrdinal(String),
    #[error("a DaemonSet recovery needs spec.nodeName (the node whose backup is restored)")]
    MissingNodeName,
}

impl RecoverySpec {
    /// The backed-up host whose data is restored: `host-<podOrdinal>` for a
    /// StatefulSet, `nodeName` for a DaemonSet, `host-0` otherwise (seed 001's
    /// host naming).
    pub fn source_host(&self) -> Result<String, RecoveryHostError> {
        let kind = WorkloadKind::parse(&self.workload.kind)
            .ok_or_else(|| RecoveryHostError::UnknownKind(self.workload.kind.clone()))?;
        match kind {
            WorkloadKind::StatefulSet => {
                let ordinal = match self.pod_ordinal.as_ref() {
                    None => return Err(RecoveryHostError::MissingPodOrdinal),
                    Some(IntOrString::Int(i)) => u32::try_from(*i)
                        .map_err(|_| RecoveryHostError::BadPodOrdinal(i.to_string()))?,
                    Some(IntOrString::String(s)) => s
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| RecoveryHostError::BadPodOrdinal(s.clone()))?,
                };
                Ok(host_for_ordinal(ordinal))
            }
            WorkloadKind::DaemonSet => self
                .node_name
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or(RecoveryHostError::MissingNodeName),
            _ => Ok(HOST_0.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, ordinal: Option<IntOrString>, node: Option<&str>) -> RecoverySpec {
        RecoverySpec {
            restic: "demo".into(),
            workload: WorkloadRef {
                api_version: None,
                kind: kind.into(),
                name: "demo".into(),
            },
            pod_ordinal: ordinal,
            node_name: node.map(str::to_string),
            volumes: vec![],
        }
    }

    #[test]
    fn source_host_follows_seed_host_naming() {
        let cases: Vec<(RecoverySpec, Result<String, RecoveryHostError>)> = vec![
            (spec("Deployment", None, None), Ok("host-0".into())),
            (spec("ReplicaSet", None, None), Ok("host-0".into())),
            (
                spec("ReplicationController", None, None),
                Ok("host-0".into()),
            ),
            // seed 000 spells the kinds `Statefulset` / `Daemonset`
            (
                spec("Statefulset", Some(IntOrString::Int(0)), None),
                Ok("host-0".into()),
            ),
            (
                spec("StatefulSet", Some(IntOrString::String("2".into())), None),
                Ok("host-2".into()),
            ),
            (
                spec("Daemonset", None, Some("minikube")),
                Ok("minikube".into()),
            ),
            (
                spec("StatefulSet", None, None),
                Err(RecoveryHostError::MissingPodOrdinal),
            ),
            (
                spec("StatefulSet", Some(IntOrString::Int(-1)), None),
                Err(RecoveryHostError::BadPodOrdinal("-1".into())),
            ),
            (
                spec("DaemonSet", None, None),
                Err(RecoveryHostError::MissingNodeName),
            ),
            (
                spec("CronJob", None, None),
                Err(RecoveryHostError::UnknownKind("CronJob".into())),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.source_host(), want, "{:?}", s.workload.kind);
        }
    }
}
