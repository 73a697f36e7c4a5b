//! Which workload a pod belongs to, and which backup "host" it is.
//!
//! Data flow: a pod at CREATE carries its controller's `ownerReference`
//! (ReplicaSet, StatefulSet, DaemonSet, ReplicationController) or none. A
//! ReplicaSet is resolved one step further to its Deployment through the
//! [`ReplicaSetOwners`] view of the reflector caches. Host naming follows the
//! Stash docs (seed 001): `host-<ordinal>` for StatefulSet pods, the node name
//! for DaemonSet pods, `host-0` for everything else.
//!
//! Everything here is pure: no API calls, no clocks.

use std::fmt;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

pub use api::host::{HostError, WorkloadKind};

/// Maps an object reference (`apiVersion` + `kind`) to a workload kind whose
/// pods Hoard patches. The group must match too: a custom `StatefulSet` kind
/// of another group is not ours.
pub fn kind_from_ref(api_version: &str, kind: &str) -> Option<WorkloadKind> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("apps" | "extensions", "Deployment") => Some(WorkloadKind::Deployment),
        ("apps" | "extensions", "ReplicaSet") => Some(WorkloadKind::ReplicaSet),
        ("apps", "StatefulSet") => Some(WorkloadKind::StatefulSet),
        ("apps" | "extensions", "DaemonSet") => Some(WorkloadKind::DaemonSet),
        ("", "ReplicationController") => Some(WorkloadKind::ReplicationController),
        ("", "Pod") => Some(WorkloadKind::Pod),
        _ => None,
    }
}

/// A workload within a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

impl Workload {
    pub fn new(kind: WorkloadKind, name: impl Into<String>) -> Self {
        Workload {
            kind,
            name: name.into(),
        }
    }
}

/// `Kind/name`, the value of the `hoard.dev/target` annotation.
impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&api::host::target_annotation(self.kind, &self.name))
    }
}

/// What the caches know about a ReplicaSet's controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaSetOwner {
    /// Managed by this Deployment.
    Deployment(String),
    /// No controller we know (standalone, or e.g. an Argo Rollout): the
    /// ReplicaSet itself is the workload.
    None,
}

/// The slice of cluster state owner resolution needs.
pub trait ReplicaSetOwners {
    /// `None` when the ReplicaSet is not (yet) in the cache.
    fn replicaset_owner(&self, namespace: &str, name: &str) -> Option<ReplicaSetOwner>;
}

/// How a pod's owner was resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A workload Hoard understands. `via` is the ReplicaSet between a
    /// Deployment and its pod, so a configuration naming the ReplicaSet
    /// directly still matches.
    Workload {
        top: Workload,
        via: Option<Workload>,
    },
    /// A bare pod whose name is not known yet (only `generateName`).
    UnnamedPod,
    /// Controlled by something Hoard does not back up (a Job, an operator's
    /// custom resource, ...).
    Unsupported { kind: String, name: String },
}

impl Owner {
    /// The workload and, for Deployment pods, the ReplicaSet in between.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        let (a, b) = match self {
            Owner::Workload { top, via } => (Some(top), via.as_ref()),
            _ => (None, None),
        };
        a.into_iter().chain(b)
    }
}

fn controller_ref(pod: &Pod) -> Option<&OwnerReference> {
    let refs = pod.metadata.owner_references.as_deref()?;
    refs.iter().find(|r| r.controller == Some(true))
}

/// The object a user should look at for a problem with this pod's
/// annotations: the workload whose pod template carries them, with the uid
/// when the pod's owner reference gives it (a Deployment's uid is not on the
/// pod; [`crate::events`] looks it up off the admission path). `None` for a
/// bare pod without a name.
pub fn regarding(owner: &Owner, pod: &Pod, namespace: &str) -> Option<ObjectReference> {
    let cref = controller_ref(pod);
    let nonempty = |u: &String| (!u.is_empty()).then(|| u.clone());
    let (api_version, kind, name, uid) = match owner {
        Owner::Workload { top, .. } => {
            let api_version = match top.kind {
                WorkloadKind::Pod
                | WorkloadKind::ReplicationController
                | WorkloadKind::PersistentVolumeClaim => "v1",
                WorkloadKind::Deployment
                | WorkloadKind::ReplicaSet
                | WorkloadKind::StatefulSet
                | WorkloadKind::DaemonSet => "apps/v1",
            };
            let uid = cref
                .filter(|r| r.kind == top.kind.as_str() && r.name == top.name)
                .and_then(|r| nonempty(&r.uid));
            (
                api_version.to_owned(),
                top.kind.as_str().to_owned(),
                top.name.clone(),
                uid,
            )
        }
        Owner::Unsupported { .. } => {
            let r = cref?;
            (
                r.api_version.clone(),
                r.kind.clone(),
                r.name.clone(),
                nonempty(&r.uid),
            )
        }
        Owner::UnnamedPod => return None,
    };
    Some(ObjectReference {
        api_version: Some(api_version),
        kind: Some(kind),
        name: Some(name),
        namespace: Some(namespace.to_owned()),
        uid,
        ..Default::default()
    })
}

/// The pod's name: `metadata.name`, else `request.name`; empty for pods that
/// only have a `generateName` (the API server names them after admission).
pub fn pod_name<'a>(pod: &'a Pod, request_name: &'a str) -> &'a str {
    match pod.metadata.name.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => request_name,
    }
}

/// Resolves the workload that owns `pod`.
pub fn resolve_owner(
    pod: &Pod,
    request_name: &str,
    namespace: &str,
    replicasets: &dyn ReplicaSetOwners,
) -> Owner {
    let Some(owner) = controller_ref(pod) else {
        let name = pod_name(pod, request_name);
        return if name.is_empty() {
            Owner::UnnamedPod
        } else {
            Owner::Workload {
                top: Workload::new(WorkloadKind::Pod, name),
                via: None,
            }
        };
    };
    let Some(kind) = kind_from_ref(&owner.api_version, &owner.kind) else {
        return Owner::Unsupported {
            kind: owner.kind.clone(),
            name: owner.name.clone(),
        };
    };
    if kind != WorkloadKind::ReplicaSet {
        return Owner::Workload {
            top: Workload::new(kind, &owner.name),
            via: None,
        };
    }
    let rs = Workload::new(WorkloadKind::ReplicaSet, &owner.name);
    let deployment = match replicasets.replicaset_owner(namespace, &owner.name) {
        Some(ReplicaSetOwner::Deployment(d)) => Some(d),
        Some(ReplicaSetOwner::None) => None,
        None => deployment_from_hash(pod, &owner.name),
    };
    match deployment {
        Some(d) => Owner::Workload {
            top: Workload::new(WorkloadKind::Deployment, d),
            via: Some(rs),
        },
        None => Owner::Workload { top: rs, via: None },
    }
}

/// Set by the Deployment controller on ReplicaSets and their pods; the
/// ReplicaSet is named `<deployment>-<hash>`. A Kubernetes label, so not in
/// `api::keys` (Hoard's own names).
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The ReplicaSet controller creates pods right after the Deployment
/// controller created the ReplicaSet, so the watch may not have delivered it
/// yet. A Deployment names its ReplicaSets `<deployment>-<pod-template-hash>`
/// and stamps that hash on the pods, which identifies the Deployment without
/// the cache.
fn deployment_from_hash(pod: &Pod, rs_name: &str) -> Option<String> {
    let hash = pod.metadata.labels.as_ref()?.get(POD_TEMPLATE_HASH)?;
    let prefix = rs_name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    (!prefix.is_empty()).then(|| prefix.to_owned())
}

/// The backup host of a pod of `kind`, by the `api` crate's rules (which the
/// node agent shares). `request_name` stands in for a missing
/// `metadata.name`.
pub fn host_name(pod: &Pod, request_name: &str, kind: WorkloadKind) -> Result<String, HostError> {
    let name = pod_name(pod, request_name);
    match kind {
        WorkloadKind::StatefulSet => {
            api::host::statefulset_ordinal(name, pod.metadata.labels.as_ref())
                .map(api::host::host_for_ordinal)
                .ok_or_else(|| HostError::NoOrdinal {
                    pod: name.to_owned(),
                })
        }
        WorkloadKind::DaemonSet => {
            api::host::daemonset_node_name(pod).ok_or_else(|| HostError::NoNode {
                pod: pod_name_or_generate(pod, request_name),
            })
        }
        _ => Ok(api::host::HOST_0.to_owned()),
    }
}

fn pod_name_or_generate(pod: &Pod, request_name: &str) -> String {
    let n = pod_name(pod, request_name);
    if n.is_empty() {
        pod.metadata.generate_name.clone().unwrap_or_default()
    } else {
        n.to_owned()
    }
}

/// Whether `v` may be used as a label value (≤ 63 characters, ...).
pub fn is_label_value(v: &str) -> bool {
    api::host::is_valid_label_value(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Rs(HashMap<(String, String), ReplicaSetOwner>);
    impl ReplicaSetOwners for Rs {
        fn replicaset_owner(&self, ns: &str, name: &str) -> Option<ReplicaSetOwner> {
            self.0.get(&(ns.to_owned(), name.to_owned())).cloned()
        }
    }
    fn rs(entries: &[(&str, ReplicaSetOwner)]) -> Rs {
        Rs(entries
            .iter()
            .map(|(n, o)| (("demo".to_owned(), (*n).to_owned()), o.clone()))
            .collect())
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }
    fn owned(kind: &str, api_version: &str, name: &str, extra: serde_json::Value) -> Pod {
        let mut meta = serde_json::json!({
            "generateName": format!("{name}-"),
            "ownerReferences": [{"apiVersion": api_version, "kind": kind, "name": name,
                                 "uid": "u", "controller": true}],
        });
        if let serde_json::Value::Object(m) = extra {
            for (k, v) in m {
                meta[k] = v;
            }
        }
        pod(serde_json::json!({"metadata": meta}))
    }
    fn wl(kind: WorkloadKind, name: &str) -> Owner {
        Owner::Workload {
            top: Workload::new(kind, name),
            via: None,
        }
    }

    #[test]
    fn owner_resolution_table() {
        let caches = rs(&[
            ("app-7df4659c59", ReplicaSetOwner::Deployment("app".into())),
            ("standalone", ReplicaSetOwner::None),
        ]);
        let via_rs = |d: &str, r: &str| Owner::Workload {
            top: Workload::new(WorkloadKind::Deployment, d),
            via: Some(Workload::new(WorkloadKind::ReplicaSet, r)),
        };
        let hash = |h: &str| serde_json::json!({"labels": {"pod-template-hash": h}});
        let none = serde_json::json!({});
        let cases: Vec<(&str, Pod, &str, Owner)> = vec![
            (
                "Deployment pod through the cached ReplicaSet",
                owned(
                    "ReplicaSet",
                    "apps/v1",
                    "app-7df4659c59",
                    hash("7df4659c59"),
                ),
                "",
                via_rs("app", "app-7df4659c59"),
            ),
            (
                "ReplicaSet not cached yet: Deployment from pod-template-hash",
                owned(
                    "ReplicaSet",
                    "apps/v1",
                    "my-app-6b4888b6bd",
                    hash("6b4888b6bd"),
                ),
                "",
                via_rs("my-app", "my-app-6b4888b6bd"),
            ),
            (
                "ReplicaSet not cached and no hash label: the ReplicaSet is the workload",
                owned("ReplicaSet", "apps/v1", "rs-x", none.clone()),
                "",
                wl(WorkloadKind::ReplicaSet, "rs-x"),
            ),
            (
                "hash label that is not the name's suffix is not trusted",
                owned("ReplicaSet", "apps/v1", "rs-abc", hash("zzz")),
                "",
                wl(WorkloadKind::ReplicaSet, "rs-abc"),
            ),
            (
                "cached standalone ReplicaSet wins over the hash heuristic",
                owned("ReplicaSet", "apps/v1", "standalone", hash("alone")),
                "",
                wl(WorkloadKind::ReplicaSet, "standalone"),
            ),
            (
                "StatefulSet",
                owned("StatefulSet", "apps/v1", "web", none.clone()),
                "web-0",
                wl(WorkloadKind::StatefulSet, "web"),
            ),
            (
                "DaemonSet",
                owned("DaemonSet", "apps/v1", "agent", none.clone()),
                "",
                wl(WorkloadKind::DaemonSet, "agent"),
            ),
            (
                "ReplicationController",
                owned("ReplicationController", "v1", "legacy", none.clone()),
                "",
                wl(WorkloadKind::ReplicationController, "legacy"),
            ),
            (
                "bare pod named by the request",
                pod(serde_json::json!({"metadata": {}})),
                "bare",
                wl(WorkloadKind::Pod, "bare"),
            ),
            (
                "bare pod with only generateName",
                pod(serde_json::json!({"metadata": {"generateName": "x-"}})),
                "",
                Owner::UnnamedPod,
            ),
            (
                "Job pods are not ours",
                owned("Job", "batch/v1", "migrate", none.clone()),
                "",
                Owner::Unsupported {
                    kind: "Job".into(),
                    name: "migrate".into(),
                },
            ),
            (
                "a StatefulSet kind of another group is not ours",
                owned("StatefulSet", "apps.kruise.io/v1beta1", "web", none.clone()),
                "",
                Owner::Unsupported {
                    kind: "StatefulSet".into(),
                    name: "web".into(),
                },
            ),
            (
                "non-controller owner references are ignored",
                pod(
                    serde_json::json!({"metadata": {"name": "p", "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u"}]}}),
                ),
                "",
                wl(WorkloadKind::Pod, "p"),
            ),
        ];
        for (what, p, req_name, want) in cases {
            assert_eq!(resolve_owner(&p, req_name, "demo", &caches), want, "{what}");
        }
    }

    #[test]
    fn host_naming_table() {
        let long_sts = format!("{}-17", "a".repeat(240));
        type Case<'a> = (
            &'a str,
            Pod,
            &'a str,
            WorkloadKind,
            Result<&'a str, HostError>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "StatefulSet ordinal from the pod-index label",
                pod(serde_json::json!({"metadata": {"name": "web-0",
                    "labels": {"apps.kubernetes.io/pod-index": "3"}}})),
                "",
                WorkloadKind::StatefulSet,
                Ok("host-3"),
            ),
            (
                "StatefulSet ordinal from the name when the label is missing",
                pod(serde_json::json!({"metadata": {"name": "web-12"}})),
                "",
                WorkloadKind::StatefulSet,
                Ok("host-12"),
            ),
            (
                "StatefulSet pod with a long name, named only by the request",
                pod(serde_json::json!({"metadata": {}})),
                long_sts.as_str(),
                WorkloadKind::StatefulSet,
                Ok("host-17"),
            ),
            (
                "StatefulSet whose own name ends in digits",
                pod(serde_json::json!({"metadata": {"name": "db-2024-1"}})),
                "",
                WorkloadKind::StatefulSet,
                Ok("host-1"),
            ),
            (
                "StatefulSet pod without ordinal",
                pod(serde_json::json!({"metadata": {"name": "web-x",
                    "labels": {"apps.kubernetes.io/pod-index": "one"}}})),
                "",
                WorkloadKind::StatefulSet,
                Err(HostError::NoOrdinal {
                    pod: "web-x".into(),
                }),
            ),
            (
                "DaemonSet pod without nodeName: node from affinity",
                pod(serde_json::json!({"metadata": {"generateName": "agent-"},
                    "spec": {"containers": [], "affinity": {"nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                            {"matchFields": [{"key": "metadata.name", "operator": "In",
                                              "values": ["node-a"]}]}]}}}}})),
                "",
                WorkloadKind::DaemonSet,
                Ok("node-a"),
            ),
            (
                "DaemonSet pod already bound",
                pod(serde_json::json!({"metadata": {},
                    "spec": {"containers": [], "nodeName": "node-b"}})),
                "",
                WorkloadKind::DaemonSet,
                Ok("node-b"),
            ),
            (
                "DaemonSet pod with ambiguous affinity",
                pod(serde_json::json!({"metadata": {"generateName": "agent-"},
                    "spec": {"containers": [], "affinity": {"nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                            {"matchFields": [{"key": "metadata.name", "operator": "In",
                                              "values": ["a", "b"]}]}]}}}}})),
                "",
                WorkloadKind::DaemonSet,
                Err(HostError::NoNode {
                    pod: "agent-".into(),
                }),
            ),
            (
                "Deployment",
                pod(serde_json::json!({"metadata": {"generateName": "app-"}})),
                "",
                WorkloadKind::Deployment,
                Ok("host-0"),
            ),
            (
                "ReplicationController",
                pod(serde_json::json!({"metadata": {"generateName": "rc-"}})),
                "",
                WorkloadKind::ReplicationController,
                Ok("host-0"),
            ),
            (
                "bare pod",
                pod(serde_json::json!({"metadata": {"name": "bare-7"}})),
                "",
                WorkloadKind::Pod,
                Ok("host-0"),
            ),
        ];
        for (what, p, req_name, kind, want) in cases {
            let got = host_name(&p, req_name, kind);
            assert_eq!(got.as_deref().map_err(Clone::clone), want, "{what}");
        }
    }

    #[test]
    fn label_values() {
        assert!(is_label_value("host-0"));
        assert!(is_label_value("ip-10-0-0-1.ec2.internal"));
        assert!(is_label_value(""));
        assert!(!is_label_value(&"n".repeat(64)));
        assert!(!is_label_value("-node"));
        assert!(!is_label_value("node/a"));
    }

    #[test]
    fn workload_kinds_need_the_right_group() {
        assert_eq!(
            kind_from_ref("apps/v1", "StatefulSet"),
            Some(WorkloadKind::StatefulSet)
        );
        assert_eq!(
            kind_from_ref("v1", "ReplicationController"),
            Some(WorkloadKind::ReplicationController)
        );
        assert_eq!(kind_from_ref("v1", "Deployment"), None);
        assert_eq!(
            Workload::new(WorkloadKind::StatefulSet, "web").to_string(),
            "StatefulSet/web"
        );
    }
}
