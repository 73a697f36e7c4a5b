//! Host naming (seed 001): the name under which a pod's data is backed up and
//! restored, stable across pod restarts so every backup after the first is
//! incremental.
//!
//! - StatefulSet: `host-<ordinal>` (pod `web-3` is `host-3`);
//! - DaemonSet: the name of the node the pod runs on;
//! - Deployment, ReplicaSet, ReplicationController, a standalone PVC (and a
//!   bare pod): `host-0`, since all replicas share the same volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::keys::{POD_INDEX_LABEL, STATEFULSET_POD_NAME_LABEL};

/// Host name of single-host targets.
pub const HOST_0: &str = "host-0";
/// Longest label value Kubernetes accepts.
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// The kinds of target Hoard knows how to name hosts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    ReplicationController,
    StatefulSet,
    DaemonSet,
    PersistentVolumeClaim,
    /// A bare pod with no controller.
    Pod,
}

impl WorkloadKind {
    /// Parses a kind case-insensitively (seed 000 writes `Statefulset`).
    pub fn parse(kind: &str) -> Option<Self> {
        let k = kind.trim().to_ascii_lowercase();
        Some(match k.as_str() {
            "deployment" => Self::Deployment,
            "replicaset" => Self::ReplicaSet,
            "replicationcontroller" => Self::ReplicationController,
            "statefulset" => Self::StatefulSet,
            "daemonset" => Self::DaemonSet,
            "persistentvolumeclaim" => Self::PersistentVolumeClaim,
            "pod" => Self::Pod,
            _ => return None,
        })
    }

    /// The canonical Kubernetes spelling, e.g. `StatefulSet`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::ReplicaSet => "ReplicaSet",
            Self::ReplicationController => "ReplicationController",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::PersistentVolumeClaim => "PersistentVolumeClaim",
            Self::Pod => "Pod",
        }
    }

    /// `true` when every pod of the target is its own host (StatefulSet,
    /// DaemonSet); `false` when the target is one host, `host-0`.
    pub fn is_multi_host(self) -> bool {
        matches!(self, Self::StatefulSet | Self::DaemonSet)
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a pod's host name cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(
        "StatefulSet pod {pod:?} has no ordinal: neither the {POD_INDEX_LABEL} label nor a trailing -<number> in its name"
    )]
    NoOrdinal { pod: String },
    #[error(
        "DaemonSet pod {pod:?} is not pinned to a node yet: no spec.nodeName and no metadata.name node affinity"
    )]
    NoNode { pod: String },
}

/// `host-<ordinal>`.
pub fn host_for_ordinal(ordinal: u32) -> String {
    format!("host-{ordinal}")
}

/// The ordinal of a StatefulSet pod: the `apps.kubernetes.io/pod-index` label
/// when present and numeric, else the number after the last `-` of the pod
/// name (StatefulSet pods are named `<set>-<ordinal>`).
pub fn statefulset_ordinal(
    pod_name: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<u32> {
    if let Some(n) = labels
        .and_then(|l| l.get(POD_INDEX_LABEL))
        .and_then(|idx| idx.parse::<u32>().ok())
    {
        return Some(n);
    }
    let (_, tail) = pod_name.rsplit_once('-')?;
    // `parse` accepts a leading `+`; an ordinal is digits only.
    if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tail.parse().ok()
}

/// The node a DaemonSet pod runs on. At CREATE time the DaemonSet controller
/// has not set `spec.nodeName` yet but pins the pod with a required node
/// affinity term `matchFields: metadata.name In [<node>]`; that is read when
/// `nodeName` is absent.
pub fn daemonset_node_name(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|req| {
            match (
                req.key.as_str(),
                req.operator.as_str(),
                req.values.as_deref(),
            ) {
                ("metadata.name", "In", Some([node])) => Some(node.clone()),
                _ => None,
            }
        })
    })
}

/// The host name of a pod of a target of `kind`.
pub fn host_for_pod(kind: WorkloadKind, pod: &Pod) -> Result<String, HostError> {
    let pod_name = || {
        pod.metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone())
            .unwrap_or_default()
    };
    match kind {
        WorkloadKind::StatefulSet => {
            let labels = pod.metadata.labels.as_ref();
            // At CREATE the name is set by the StatefulSet controller; the
            // pod-name label is a fallback for requests that lack it.
            let name = pod
                .metadata
                .name
                .clone()
                .or_else(|| labels.and_then(|l| l.get(STATEFULSET_POD_NAME_LABEL).cloned()))
                .unwrap_or_default();
            statefulset_ordinal(&name, labels)
                .map(host_for_ordinal)
                .ok_or_else(|| HostError::NoOrdinal { pod: pod_name() })
        }
        WorkloadKind::DaemonSet => {
            daemonset_node_name(pod).ok_or_else(|| HostError::NoNode { pod: pod_name() })
        }
        WorkloadKind::Deployment
        | WorkloadKind::ReplicaSet
        | WorkloadKind::ReplicationController
        | WorkloadKind::PersistentVolumeClaim
        | WorkloadKind::Pod => Ok(HOST_0.to_string()),
    }
}

/// `true` if `value` is a valid Kubernetes label value: at most 63
/// characters, alphanumerics, `-`, `_`, `.`, starting and ending with an
/// alphanumeric (or empty).
pub fn is_valid_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= MAX_LABEL_VALUE_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// The value for the `hoard.dev/host` label, or `None` when the host name
/// cannot be a label value (a node name longer than 63 characters): then only
/// the annotation carries it.
pub fn host_label_value(host: &str) -> Option<&str> {
    (!host.is_empty() && is_valid_label_value(host)).then_some(host)
}

/// Value of the `hoard.dev/target` annotation: `<Kind>/<name>`, e.g. `StatefulSet/web`.
pub fn target_annotation(kind: WorkloadKind, name: &str) -> String {
    format!("{kind}/{name}")
}

/// Parses a `hoard.dev/target` annotation value.
pub fn parse_target_annotation(value: &str) -> Option<(WorkloadKind, &str)> {
    let (kind, name) = value.split_once('/')?;
    let kind = WorkloadKind::parse(kind)?;
    (!name.is_empty() && !name.contains('/')).then_some((kind, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn mk_pod(
        name: Option<&str>,
        labels: &[(&str, &str)],
        node: Option<&str>,
        affinity_node: Option<&str>,
    ) -> Pod {
        let affinity = affinity_node.map(|n| Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: None,
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec![n.into()]),
                        }]),
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        Pod {
            metadata: ObjectMeta {
                name: name.map(str::to_string),
                generate_name: Some("gen-".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                affinity,
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn statefulset_ordinal_from_label_or_name() {
        let label = |v: &str| BTreeMap::from([(POD_INDEX_LABEL.to_string(), v.to_string())]);
        type Labels = Option<BTreeMap<String, String>>;
        let cases: &[(&str, Labels, Option<u32>)] = &[
            ("web-0", None, Some(0)),
            ("web-12", None, Some(12)),
            ("my-db-cluster-3", None, Some(3)),
            // label wins over the name
            ("web-1", Some(label("7")), Some(7)),
            // a non-numeric label falls back to the name
            ("web-4", Some(label("x")), Some(4)),
            ("web", None, None),
            ("web-", None, None),
            ("web-+1", None, None),
            ("web-a1", None, None),
            ("", None, None),
        ];
        for (name, labels, want) in cases {
            assert_eq!(statefulset_ordinal(name, labels.as_ref()), *want, "{name}");
        }
    }

    #[test]
    fn host_naming_per_kind_as_seed_001_says() {
        let long_node = format!("ip-10-0-0-1.{}.compute.internal", "x".repeat(70));
        let cases: Vec<(WorkloadKind, Pod, Result<String, HostError>)> = vec![
            (
                WorkloadKind::StatefulSet,
                mk_pod(Some("web-0"), &[], None, None),
                Ok("host-0".into()),
            ),
            (
                WorkloadKind::StatefulSet,
                mk_pod(Some("web-1"), &[(POD_INDEX_LABEL, "1")], None, None),
                Ok("host-1".into()),
            ),
            // a long StatefulSet name still ends in its ordinal
            (
                WorkloadKind::StatefulSet,
                mk_pod(Some(&format!("{}-42", "a".repeat(60))), &[], None, None),
                Ok("host-42".into()),
            ),
            (
                WorkloadKind::StatefulSet,
                mk_pod(None, &[(STATEFULSET_POD_NAME_LABEL, "web-5")], None, None),
                Ok("host-5".into()),
            ),
            (
                WorkloadKind::StatefulSet,
                mk_pod(Some("web"), &[], None, None),
                Err(HostError::NoOrdinal { pod: "web".into() }),
            ),
            // DaemonSet pod at CREATE: no nodeName yet, pinned by affinity
            (
                WorkloadKind::DaemonSet,
                mk_pod(None, &[], None, Some("node-a")),
                Ok("node-a".into()),
            ),
            (
                WorkloadKind::DaemonSet,
                mk_pod(Some("agent-x"), &[], Some("node-b"), Some("node-a")),
                Ok("node-b".into()),
            ),
            (
                WorkloadKind::DaemonSet,
                mk_pod(None, &[], None, Some(&long_node)),
                Ok(long_node.clone()),
            ),
            (
                WorkloadKind::DaemonSet,
                mk_pod(None, &[], None, None),
                Err(HostError::NoNode { pod: "gen-".into() }),
            ),
            (
                WorkloadKind::Deployment,
                mk_pod(None, &[], Some("n"), None),
                Ok("host-0".into()),
            ),
            (
                WorkloadKind::ReplicaSet,
                mk_pod(None, &[], None, None),
                Ok("host-0".into()),
            ),
            (
                WorkloadKind::ReplicationController,
                mk_pod(None, &[], None, None),
                Ok("host-0".into()),
            ),
            (
                WorkloadKind::PersistentVolumeClaim,
                mk_pod(None, &[], None, None),
                Ok("host-0".into()),
            ),
            (
                WorkloadKind::Pod,
                mk_pod(Some("bare"), &[], None, None),
                Ok("host-0".into()),
            ),
        ];
        for (kind, pod, want) in cases {
            assert_eq!(
                host_for_pod(kind, &pod),
                want,
                "{kind} {:?}",
                pod.metadata.name
            );
        }
    }

    proptest::proptest! {
        /// Any StatefulSet name, however many dashes it has, gives back the ordinal.
        #[test]
        fn ordinal_is_the_number_after_the_last_dash(base in "[a-z]([-a-z0-9]{0,40}[a-z0-9])?", n in 0u32..100_000) {
            let name = format!("{base}-{n}");
            proptest::prop_assert_eq!(statefulset_ordinal(&name, None), Some(n));
        }
    }

    #[test]
    fn host_label_only_when_a_valid_label_value() {
        assert_eq!(host_label_value("host-3"), Some("host-3"));
        assert_eq!(
            host_label_value("node-a.example.com"),
            Some("node-a.example.com")
        );
        let long = "n".repeat(64);
        assert_eq!(host_label_value(&long), None);
        assert_eq!(
            host_label_value(&"n".repeat(63)),
            Some("n".repeat(63).as_str())
        );
        assert_eq!(host_label_value(""), None);
        assert_eq!(host_label_value("-bad"), None);
        assert_eq!(host_label_value("bad."), None);
        assert_eq!(host_label_value("a b"), None);
    }

    #[test]
    fn kinds_parse_case_insensitively_and_round_trip() {
        for k in [
            WorkloadKind::Deployment,
            WorkloadKind::ReplicaSet,
            WorkloadKind::ReplicationController,
            WorkloadKind::StatefulSet,
            WorkloadKind::DaemonSet,
            WorkloadKind::PersistentVolumeClaim,
            WorkloadKind::Pod,
        ] {
            assert_eq!(WorkloadKind::parse(k.as_str()), Some(k));
            assert_eq!(WorkloadKind::parse(&k.as_str().to_uppercase()), Some(k));
        }
        assert_eq!(
            WorkloadKind::parse("Statefulset"),
            Some(WorkloadKind::StatefulSet)
        );
        assert_eq!(
            WorkloadKind::parse("Daemonset"),
            Some(WorkloadKind::DaemonSet)
        );
        assert_eq!(WorkloadKind::parse("CronJob"), None);
    }

    #[test]
    fn target_annotation_round_trips() {
        let v = target_annotation(WorkloadKind::StatefulSet, "web");
        assert_eq!(v, "StatefulSet/web");
        assert_eq!(
            parse_target_annotation(&v),
            Some((WorkloadKind::StatefulSet, "web"))
        );
        assert_eq!(parse_target_annotation("StatefulSet/"), None);
        assert_eq!(parse_target_annotation("Nope/web"), None);
        assert_eq!(parse_target_annotation("web"), None);
    }
}
