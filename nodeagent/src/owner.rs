//! Which hosts of a target this node's agent backs up or restores.
//!
//! Pure: (node, target, the target's pods) → the hosts this agent owns, each
//! with the pod whose volumes it reads or writes. Every agent runs the same
//! function over the same pods, so for single-host targets exactly one agent
//! acts without any coordination:
//!
//! - StatefulSet: each pod on this node is its own host, `host-<ordinal>`;
//! - DaemonSet: the pod on this node, host = the node's name;
//! - Deployment / ReplicaSet / ReplicationController / a bare pod / a
//!   standalone PVC: one host, `host-0`, served by the eligible pod with the
//!   lowest name cluster-wide; only the agent on that pod's node acts.
//!
//! Eligible: for a backup a Running pod (its volumes are mounted); for a
//! restore a pod held by the `hoard-restore-wait` init-container for that
//! session. Terminating pods never are.

use k8s_openapi::api::core::v1::Pod;

use api::host::{HOST_0, WorkloadKind, host_for_pod};
use api::keys;

/// Backup or restore (they differ in which pods are eligible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Backup,
    /// Restore for the named `RestoreSession`.
    Restore {
        session: &'a str,
    },
}

/// A host this agent owns and the pod that carries its volumes.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedHost<'a> {
    pub host: String,
    pub pod: &'a Pod,
}

fn controller_of(pod: &Pod) -> Option<(&str, &str)> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

/// `true` when `pod` belongs to target `kind`/`name`.
pub fn belongs_to(pod: &Pod, kind: WorkloadKind, name: &str) -> bool {
    let ann = pod.metadata.annotations.as_ref();
    if let Some(t) = ann.and_then(|a| a.get(keys::ANNOTATION_TARGET))
        && let Some((k, n)) = api::host::parse_target_annotation(t)
    {
        return k == kind && n == name;
    }
    let owner = controller_of(pod);
    match kind {
        WorkloadKind::StatefulSet
        | WorkloadKind::DaemonSet
        | WorkloadKind::ReplicaSet
        | WorkloadKind::ReplicationController => owner == Some((kind.as_str(), name)),
        WorkloadKind::Deployment => {
            // Pod → ReplicaSet `<deployment>-<pod-template-hash>`.
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match (owner, hash) {
                (Some(("ReplicaSet", rs)), Some(h)) => rs == format!("{name}-{h}"),
                _ => false,
            }
        }
        WorkloadKind::PersistentVolumeClaim => pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| {
                vs.iter().any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == name)
                })
            }),
        WorkloadKind::Pod => owner.is_none() && pod.metadata.name.as_deref() == Some(name),
    }
}

/// Whether `pod` can serve `op` now.
pub fn eligible(pod: &Pod, op: Op<'_>) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    match op {
        Op::Backup => phase == Some("Running"),
        Op::Restore { session } => {
            let held = pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|ics| ics.iter().any(|c| c.name == keys::RESTORE_WAIT_CONTAINER));
            let for_session = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::ANNOTATION_RESTORE_SESSION))
                .is_some_and(|s| s == session);
            held && for_session && matches!(phase, None | Some("Pending"))
        }
    }
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// The pod's host: the webhook's `hoard.dev/host` annotation, else computed.
pub fn host_of(pod: &Pod, kind: WorkloadKind) -> Option<String> {
    if let Some(h) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::ANNOTATION_HOST))
        .filter(|h| !h.is_empty())
    {
        return Some(h.clone());
    }
    host_for_pod(kind, pod).ok()
}

/// The hosts of target `kind`/`name` that the agent on `node` owns for `op`.
/// `pods` may hold any pods (they are filtered); for single-host kinds it
/// must hold all of the target's pods cluster-wide so that every agent
/// makes the same choice.
pub fn owned_hosts<'a>(
    node: &str,
    kind: WorkloadKind,
    name: &str,
    op: Op<'_>,
    pods: &'a [Pod],
) -> Vec<OwnedHost<'a>> {
    let mut candidates: Vec<&Pod> = pods
        .iter()
        .filter(|p| belongs_to(p, kind, name) && eligible(p, op))
        .collect();
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if kind.is_multi_host() {
        let mut out: Vec<OwnedHost<'a>> = Vec::new();
        for p in candidates.into_iter().filter(|p| node_of(p) == Some(node)) {
            let host = if kind == WorkloadKind::DaemonSet {
                Some(node.to_string())
            } else {
                host_of(p, kind)
            };
            if let Some(host) = host
                && !out.iter().any(|o| o.host == host)
            {
                out.push(OwnedHost { host, pod: p });
            }
        }
        out
    } else {
        candidates
            .into_iter()
            .next()
            .filter(|p| node_of(p) == Some(node))
            .map(|pod| OwnedHost {
                host: HOST_0.to_string(),
                pod,
            })
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, PersistentVolumeClaimVolumeSource, PodSpec, PodStatus, Volume,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
    use std::collections::BTreeMap;

    struct P<'a> {
        name: &'a str,
        node: &'a str,
        phase: &'a str,
        owner: Option<(&'a str, &'a str)>,
        labels: &'a [(&'a str, &'a str)],
        ann: &'a [(&'a str, &'a str)],
        claim: Option<&'a str>,
        held: bool,
        deleting: bool,
    }

    const BASE: P<'static> = P {
        name: "",
        node: "n1",
        phase: "Running",
        owner: None,
        labels: &[],
        ann: &[],
        claim: None,
        held: false,
        deleting: false,
    };

    fn map(kv: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn mk(p: P<'_>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(p.name.into()),
                namespace: Some("demo".into()),
                labels: map(p.labels),
                annotations: map(p.ann),
                owner_references: p.owner.map(|(k, n)| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: k.into(),
                        name: n.into(),
                        uid: "x".into(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]
                }),
                deletion_timestamp: p
                    .deleting
                    .then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(p.node.into()),
                init_containers: p.held.then(|| {
                    vec![Container {
                        name: keys::RESTORE_WAIT_CONTAINER.into(),
                        ..Default::default()
                    }]
                }),
                volumes: p.claim.map(|c| {
                    vec![Volume {
                        name: "data".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: c.into(),
                            read_only: None,
                        }),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(p.phase.into()),
                ..Default::default()
            }),
        }
    }

    fn hosts(
        node: &str,
        kind: WorkloadKind,
        name: &str,
        op: Op<'_>,
        pods: &[Pod],
    ) -> Vec<(String, String)> {
        owned_hosts(node, kind, name, op, pods)
            .into_iter()
            .map(|o| (o.host, o.pod.metadata.name.clone().unwrap()))
            .collect()
    }

    fn v(x: &[(&str, &str)]) -> Vec<(String, String)> {
        x.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn statefulset_pods_on_this_node_are_host_ordinal() {
        let sts = Some(("StatefulSet", "web"));
        let pods = vec![
            mk(P {
                name: "web-0",
                owner: sts,
                ..BASE
            }),
            mk(P {
                name: "web-1",
                node: "n2",
                owner: sts,
                ..BASE
            }),
            mk(P {
                name: "web-2",
                owner: sts,
                ..BASE
            }),
            mk(P {
                name: "web-3",
                owner: sts,
                phase: "Pending",
                ..BASE
            }),
            mk(P {
                name: "web-4",
                owner: sts,
                deleting: true,
                ..BASE
            }),
            mk(P {
                name: "other-5",
                owner: Some(("StatefulSet", "other")),
                ..BASE
            }),
        ];
        let s = WorkloadKind::StatefulSet;
        assert_eq!(
            hosts("n1", s, "web", Op::Backup, &pods),
            v(&[("host-0", "web-0"), ("host-2", "web-2")])
        );
        assert_eq!(
            hosts("n2", s, "web", Op::Backup, &pods),
            v(&[("host-1", "web-1")])
        );
        assert_eq!(hosts("n3", s, "web", Op::Backup, &pods), v(&[]));
    }

    #[test]
    fn daemonset_pod_is_the_node_name() {
        let ds = Some(("DaemonSet", "logs"));
        let pods = vec![
            mk(P {
                name: "logs-abcde",
                owner: ds,
                ..BASE
            }),
            mk(P {
                name: "logs-fghij",
                node: "n2",
                owner: ds,
                ..BASE
            }),
        ];
        let d = WorkloadKind::DaemonSet;
        assert_eq!(
            hosts("n1", d, "logs", Op::Backup, &pods),
            v(&[("n1", "logs-abcde")])
        );
        assert_eq!(
            hosts("n2", d, "logs", Op::Backup, &pods),
            v(&[("n2", "logs-fghij")])
        );
    }

    #[test]
    fn deployment_is_host_0_exactly_once_cluster_wide() {
        let rs = Some(("ReplicaSet", "app-7d9f"));
        let lbl: &[(&str, &str)] = &[("pod-template-hash", "7d9f")];
        let pods = vec![
            mk(P {
                name: "app-7d9f-zzz",
                owner: rs,
                labels: lbl,
                ..BASE
            }),
            mk(P {
                name: "app-7d9f-bbb",
                node: "n2",
                owner: rs,
                labels: lbl,
                ..BASE
            }),
            // lowest name, but not running: not eligible
            mk(P {
                name: "app-7d9f-aaa",
                node: "n3",
                owner: rs,
                labels: lbl,
                phase: "Pending",
                ..BASE
            }),
            // another deployment whose name is a prefix
            mk(P {
                name: "app-7d9f-000",
                owner: Some(("ReplicaSet", "app-7d9f")),
                labels: &[("pod-template-hash", "x")],
                ..BASE
            }),
        ];
        let d = WorkloadKind::Deployment;
        let all: Vec<_> = ["n1", "n2", "n3"]
            .iter()
            .flat_map(|n| hosts(n, d, "app", Op::Backup, &pods))
            .collect();
        assert_eq!(all, v(&[("host-0", "app-7d9f-bbb")]));
        // ReplicaSet and RC targets: by direct owner
        assert_eq!(
            hosts(
                "n2",
                WorkloadKind::ReplicaSet,
                "app-7d9f",
                Op::Backup,
                &pods
            ),
            v(&[])
        );
        assert_eq!(
            hosts(
                "n1",
                WorkloadKind::ReplicaSet,
                "app-7d9f",
                Op::Backup,
                &pods
            ),
            v(&[("host-0", "app-7d9f-000")])
        );
    }

    #[test]
    fn standalone_pvc_through_the_pod_that_mounts_it() {
        let pods = vec![
            mk(P {
                name: "user-b",
                claim: Some("shared"),
                node: "n2",
                ..BASE
            }),
            mk(P {
                name: "user-a",
                claim: Some("other"),
                ..BASE
            }),
        ];
        let k = WorkloadKind::PersistentVolumeClaim;
        assert_eq!(
            hosts("n2", k, "shared", Op::Backup, &pods),
            v(&[("host-0", "user-b")])
        );
        assert_eq!(hosts("n1", k, "shared", Op::Backup, &pods), v(&[]));
    }

    #[test]
    fn restore_takes_held_pods_of_the_session_and_the_webhooks_host() {
        let sts = Some(("StatefulSet", "web"));
        let held = |name, session| {
            mk(P {
                name,
                owner: sts,
                phase: "Pending",
                held: true,
                ann: if session == "rs1" {
                    &[
                        (keys::ANNOTATION_RESTORE_SESSION, "rs1"),
                        (keys::ANNOTATION_HOST, "host-7"),
                    ]
                } else {
                    &[(keys::ANNOTATION_RESTORE_SESSION, "rs0")]
                },
                ..BASE
            })
        };
        let pods = vec![
            held("web-3", "rs1"),
            held("web-4", "rs0"),
            mk(P {
                name: "web-5",
                owner: sts,
                ..BASE
            }),
        ];
        let s = WorkloadKind::StatefulSet;
        assert_eq!(
            hosts("n1", s, "web", Op::Restore { session: "rs1" }, &pods),
            v(&[("host-7", "web-3")])
        );
        assert_eq!(
            hosts("n1", s, "web", Op::Restore { session: "rs0" }, &pods),
            v(&[("host-4", "web-4")])
        );
    }

    #[test]
    fn webhook_target_annotation_decides_membership() {
        let p = mk(P {
            name: "x-0",
            ann: &[(keys::ANNOTATION_TARGET, "StatefulSet/db")],
            owner: Some(("StatefulSet", "web")),
            ..BASE
        });
        assert!(belongs_to(&p, WorkloadKind::StatefulSet, "db"));
        assert!(!belongs_to(&p, WorkloadKind::StatefulSet, "web"));
    }
}
