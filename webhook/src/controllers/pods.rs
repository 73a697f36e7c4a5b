//! Short-lived worker pods and restored PVCs, as pure builders.
//!
//! A volume that no application pod can offer the node agent — a standalone
//! PVC to back up or restore, or a PVC created from a `RestoreSession`'s
//! `volumeClaimTemplates` — is mounted by a minimal pod the controllers
//! create. The agent finds it exactly like an application pod: by the
//! `hoard.dev/target` and `hoard.dev/host` annotations (`owner::belongs_to`,
//! `owner::host_of` in the agent), and for a restore by the
//! `hoard-restore-wait` init-container plus the `hoard.dev/restore-session`
//! annotation. The pod runs only `restore-wait` (no shell, no API access),
//! meets the Pod Security Standards "restricted" level, and is owned by its
//! session, so deleting the session removes it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, SeccompProfile, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use api::common::PodRuntimeSettings;
use api::keys;

use crate::mutate::{InjectConfig, restore_wait_container};
use crate::state::RestoreSummary;

/// `app.kubernetes.io/component` of worker pods.
pub const COMPONENT_WORKER: &str = "worker";

/// Where a worker pod mounts a volume when the session names no mount path.
/// Backed-up paths are the mount paths, so this is what snapshots of a
/// standalone PVC are recorded under.
pub const DEFAULT_MOUNT_PATH: &str = "/data";

/// Longest pod name the controllers generate: the name also becomes the
/// pod's default hostname elsewhere, which is a DNS label.
const MAX_POD_NAME: usize = 63;

/// One worker pod to create.
#[derive(Debug, Clone)]
pub struct WorkerPod<'a> {
    /// The pod's name ([`worker_pod_name`]).
    pub name: String,
    pub namespace: &'a str,
    /// The session that owns the pod (controller reference).
    pub owner: OwnerReference,
    /// UID of that session (label [`keys::LABEL_SESSION_UID`]).
    pub session_uid: &'a str,
    /// `host-<ordinal>`: the pod's hostname and `hoard.dev/host`.
    pub host: String,
    /// `hoard.dev/target` value, `<Kind>/<name>` of the session's target.
    pub target: String,
    /// `(pod volume name, claim name)` pairs.
    pub claims: Vec<(String, String)>,
    /// Where each volume is mounted (by volume name).
    pub mounts: Vec<VolumeMount>,
    /// For a restore: the session the init-container holds the pod for.
    pub restore: Option<&'a RestoreSummary>,
    /// `runtimeSettings.pod` of the session.
    pub settings: Option<&'a PodRuntimeSettings>,
    /// How long `restore-wait` waits (the session's `timeOut`).
    pub deadline_seconds: u64,
    /// Which attempt this pod is (1 for the first; see [`retry`]).
    pub attempt: u32,
}

/// `<session>-<part>`, shortened to a DNS label that stays unique per
/// `part` (the host, or the target's index in a batch).
pub fn worker_pod_name(session: &str, part: &str) -> String {
    let suffix = format!("-{part}");
    let mut prefix: String = session
        .chars()
        .take(MAX_POD_NAME.saturating_sub(suffix.len()))
        .collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}{suffix}")
}

/// The pod volume name of a claim template: its name without the ordinal
/// placeholder (`data-web-${POD_ORDINAL}` → `data-web`), which is what
/// `target.volumeMounts[].name` refers to.
pub fn template_volume_name(template: &str) -> String {
    let v = template.replace(api::pvc::POD_ORDINAL_PLACEHOLDER, "");
    let v = v.trim_matches(['-', '.']);
    if v.is_empty() {
        "data".into()
    } else {
        v.to_string()
    }
}

/// Labels of everything the controllers create for session `uid`.
pub fn worker_labels(uid: &str, host: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            keys::LABEL_PART_OF.to_string(),
            keys::PART_OF_HOARD.to_string(),
        ),
        (
            keys::LABEL_COMPONENT.to_string(),
            COMPONENT_WORKER.to_string(),
        ),
        (keys::LABEL_SESSION_UID.to_string(), uid.to_string()),
    ]);
    if let Some(h) = api::host::host_label_value(host) {
        l.insert(keys::LABEL_HOST.to_string(), h.to_string());
    }
    l
}

/// The restricted-level pod security context, with what the session's
/// `runtimeSettings.pod.securityContext` sets taking precedence.
fn pod_security(settings: Option<&PodRuntimeSettings>) -> PodSecurityContext {
    let mut sc = settings
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    sc.run_as_non_root.get_or_insert(true);
    sc.seccomp_profile.get_or_insert_with(|| SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    });
    sc
}

/// Builds the worker pod.
pub fn worker_pod(w: &WorkerPod<'_>, cfg: &InjectConfig) -> Pod {
    let s = w.settings;
    // `restore-wait` needs a summary; a backup pod waits for a marker nobody
    // writes, which keeps it Running (so the agent backs it up) until the
    // controller deletes it or the deadline passes.
    let own_summary;
    let summary = match w.restore {
        Some(r) => r,
        None => {
            own_summary = RestoreSummary {
                uid: w.session_uid.to_string(),
                deadline_seconds: Some(w.deadline_seconds),
                ..Default::default()
            };
            &own_summary
        }
    };
    let mounts: Vec<VolumeMount> = w
        .mounts
        .iter()
        .map(|m| VolumeMount {
            name: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: Some(true),
            ..Default::default()
        })
        .collect();
    let mut main = restore_wait_container(summary, mounts.clone(), cfg);
    main.name = "hoard-worker".into();
    let init: Option<Vec<Container>> = w
        .restore
        .map(|r| vec![restore_wait_container(r, mounts, cfg)]);

    let mut volumes: Vec<Volume> = w
        .claims
        .iter()
        .map(|(vol, claim)| Volume {
            name: vol.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: None,
            }),
            ..Default::default()
        })
        .collect();
    volumes.push(Volume {
        name: keys::RESTORE_STATUS_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity("1Mi".into())),
        }),
        ..Default::default()
    });

    let mut annotations = BTreeMap::from([
        (keys::ANNOTATION_HOST.to_string(), w.host.clone()),
        (keys::ANNOTATION_TARGET.to_string(), w.target.clone()),
        (
            keys::ANNOTATION_WORKER_ATTEMPT.to_string(),
            w.attempt.max(1).to_string(),
        ),
    ]);
    if let Some(r) = w.restore {
        annotations.insert(keys::ANNOTATION_RESTORE_SESSION.to_string(), r.name.clone());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(w.name.clone()),
            namespace: Some(w.namespace.to_string()),
            labels: Some(worker_labels(w.session_uid, &w.host)),
            annotations: Some(annotations),
            owner_references: Some(vec![w.owner.clone()]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            hostname: Some(w.host.clone()),
            restart_policy: Some("Never".into()),
            // The pod needs no API access: the agent does the I/O.
            automount_service_account_token: Some(
                s.and_then(|s| s.automount_service_account_token)
                    .unwrap_or(false),
            ),
            service_account_name: s.and_then(|s| s.service_account_name.clone()),
            node_selector: s.and_then(|s| s.node_selector.clone()),
            node_name: s.and_then(|s| s.node_name.clone()),
            image_pull_secrets: s.and_then(|s| s.image_pull_secrets.clone()),
            affinity: s.and_then(|s| s.affinity.clone()),
            scheduler_name: s.and_then(|s| s.scheduler_name.clone()),
            tolerations: s.and_then(|s| s.tolerations.clone()),
            priority_class_name: s.and_then(|s| s.priority_class_name.clone()),
            priority: s.and_then(|s| s.priority),
            readiness_gates: s.and_then(|s| s.readiness_gates.clone()),
            runtime_class_name: s.and_then(|s| s.runtime_class_name.clone()),
            enable_service_links: Some(s.and_then(|s| s.enable_service_links).unwrap_or(false)),
            security_context: Some(pod_security(s)),
            termination_grace_period_seconds: Some(5),
            init_containers: init,
            containers: vec![main],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

/// The PVC of `ordinal` from a claim template: the template with its name
/// resolved, in `namespace`, labelled as restored by the session. Not owned
/// by the session: the restored data must outlive it.
pub fn claim_from_template(
    template: &PersistentVolumeClaim,
    name: &str,
    namespace: &str,
    session: &str,
    session_uid: &str,
) -> PersistentVolumeClaim {
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    labels.insert(keys::LABEL_SESSION_UID.into(), session_uid.into());
    if api::host::is_valid_label_value(session) {
        labels.insert(keys::LABEL_RESTORED_BY.into(), session.into());
    }
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            annotations: template.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// `true` when the pod is gone or going (its volumes are released).
pub fn is_terminal(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// The pods, other than Hoard's workers, that mount claim `claim` and still
/// hold it (not finished, not terminating). A ReadWriteOnce volume is
/// attached to one node at a time, and a restore must not write under a
/// running application, so a worker pod starts only when this is empty.
pub fn claim_users<'a>(pods: &'a [Pod], claim: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| !is_worker(p) && !is_terminal(p))
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == claim)
                    })
                })
        })
        .collect()
}

/// `true` for a pod the controllers created.
pub fn is_worker(pod: &Pod) -> bool {
    pod.metadata.labels.as_ref().is_some_and(|l| {
        l.get(keys::LABEL_COMPONENT).map(String::as_str) == Some(COMPONENT_WORKER)
            && l.contains_key(keys::LABEL_SESSION_UID)
    })
}

/// The worker pods of session `uid`.
pub fn workers_of<'a>(pods: &'a [Pod], uid: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| {
            is_worker(p)
                && p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(keys::LABEL_SESSION_UID))
                    .is_some_and(|v| v == uid)
        })
        .collect()
}

/// Attempts a worker gets before its host is failed. A pod that failed
/// this often (image, node, quota, eviction) is not going to work by itself;
/// the session says so instead of waiting for its deadline.
pub const WORKER_ATTEMPTS: u32 = 5;
/// Wait after a worker's first failure, doubled per failure: 10, 20, 40 and
/// 80 s, so all attempts fit well within the default 1 h session timeout
/// while a flapping node or registry is not hammered.
pub const WORKER_BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest wait between two attempts.
pub const WORKER_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Wait after attempt `attempt` failed (1 → 10 s, 2 → 20 s, … ≤ 5 min).
pub fn worker_backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    WORKER_BACKOFF_BASE
        .saturating_mul(1 << exp)
        .min(WORKER_BACKOFF_MAX)
}

/// Name of attempt `attempt` of the worker `<session>-<part>`: the first
/// keeps the plain name, later ones end in `-<attempt>`. Names differ per
/// attempt, so the next pod can be created while the failed one goes.
pub fn attempt_pod_name(session: &str, part: &str, attempt: u32) -> String {
    if attempt <= 1 {
        worker_pod_name(session, part)
    } else {
        worker_pod_name(session, &format!("{part}-{attempt}"))
    }
}

/// Which attempt a worker pod is (its `hoard.dev/worker-attempt`; 1 when absent).
pub fn attempt_of(pod: &Pod) -> u32 {
    annotation(pod, keys::ANNOTATION_WORKER_ATTEMPT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// `true` for a pod that failed and is not being deleted.
pub fn has_failed(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

/// When a failed pod failed: its last container's end, else its last
/// condition change, else its start or creation.
pub fn failed_at(pod: &Pod) -> Option<Timestamp> {
    let st = pod.status.as_ref();
    let ended = st
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    ended
        .or_else(|| {
            st.into_iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                .max()
        })
        .or_else(|| st.and_then(|s| s.start_time.as_ref()).map(|t| t.0))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Why a failed pod failed, in one line: the pod's reason (`Evicted`) or
/// the first container that ended badly, with its exit code.
pub fn failure_reason(pod: &Pod) -> String {
    let st = pod.status.as_ref();
    if let Some(s) = st
        && let Some(r) = s.reason.as_deref()
    {
        return match s.message.as_deref() {
            Some(m) => format!("{r}: {m}"),
            None => r.to_string(),
        };
    }
    let bad = st
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .find_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            (t.exit_code != 0).then(|| {
                let mut m = format!("container {} exited with code {}", c.name, t.exit_code);
                if let Some(r) = &t.reason {
                    m.push_str(&format!(" ({r})"));
                }
                if let Some(msg) = t.message.as_deref().filter(|m| !m.is_empty()) {
                    m.push_str(&format!(": {}", msg.lines().next().unwrap_or_default()));
                }
                m
            })
        });
    bad.unwrap_or_else(|| "the pod failed".into())
}

/// What to do about a failed worker at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Keep the failed pod until `at`, then create attempt `next`.
    Wait { at: Timestamp, next: u32 },
    /// Replace it by attempt `next` now.
    Now { next: u32 },
    /// [`WORKER_ATTEMPTS`] pods failed: fail the host.
    GiveUp { attempts: u32 },
}

/// Decides about failed worker `pod`: exponential backoff from the time it
/// failed, at most [`WORKER_ATTEMPTS`] attempts. The count is the pod's own
/// (the newest attempt is kept until it is replaced), so a restarted
/// controller continues where the last one left off.
pub fn retry(pod: &Pod, now: Timestamp) -> Retry {
    let attempt = attempt_of(pod);
    if attempt >= WORKER_ATTEMPTS {
        return Retry::GiveUp { attempts: attempt };
    }
    let next = attempt + 1;
    let wait = SignedDuration::try_from(worker_backoff(attempt)).unwrap_or(SignedDuration::MAX);
    // A failure without a time counts from now: never a burst.
    let at = failed_at(pod)
        .unwrap_or(now)
        .checked_add(wait)
        .unwrap_or(Timestamp::MAX);
    if now >= at {
        Retry::Now { next }
    } else {
        Retry::Wait { at, next }
    }
}

/// How long from `now` until `at` (zero when past), for a requeue.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// The current worker among `workers` of one host or target: the newest
/// attempt that is not being deleted, else any.
pub fn current_worker<'a>(workers: impl IntoIterator<Item = &'a Pod>) -> Option<&'a Pod> {
    let all: Vec<&Pod> = workers.into_iter().collect();
    all.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .max_by_key(|p| attempt_of(p))
        .or_else(|| all.first())
        .copied()
}

/// The `hoard.dev/host` of a worker pod.
pub fn host_of(pod: &Pod) -> Option<&str> {
    annotation(pod, keys::ANNOTATION_HOST)
}

/// The `hoard.dev/target` of a worker pod.
pub fn target_of(pod: &Pod) -> Option<&str> {
    annotation(pod, keys::ANNOTATION_TARGET)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "hoard.dev/v1beta1".into(),
            kind: "RestoreSession".into(),
            name: "restore-demo".into(),
            uid: "uid-r".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn worker(restore: Option<&RestoreSummary>) -> Pod {
        let w = WorkerPod {
            name: worker_pod_name("restore-demo", "host-1"),
            namespace: "demo",
            owner: owner(),
            session_uid: "uid-r",
            host: "host-1".into(),
            target: "StatefulSet/web".into(),
            claims: vec![("data".into(), "data-web-1".into())],
            mounts: vec![VolumeMount {
                name: "data".into(),
                mount_path: "/var/lib/data".into(),
                ..Default::default()
            }],
            restore,
            settings: None,
            deadline_seconds: 600,
            attempt: 1,
        };
        worker_pod(&w, &InjectConfig::default())
    }

    #[test]
    fn a_restore_worker_is_what_the_agent_looks_for_and_restricted() {
        let r = RestoreSummary {
            uid: "uid-r".into(),
            name: "restore-demo".into(),
            ..Default::default()
        };
        let pod = worker(Some(&r));
        let ann = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[keys::ANNOTATION_HOST], "host-1");
        assert_eq!(ann[keys::ANNOTATION_TARGET], "StatefulSet/web");
        assert_eq!(ann[keys::ANNOTATION_RESTORE_SESSION], "restore-demo");
        // the agent reads the target the way api::host writes it
        assert_eq!(
            api::host::parse_target_annotation(&ann[keys::ANNOTATION_TARGET]),
            Some((api::host::WorkloadKind::StatefulSet, "web"))
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("host-1"));
        let init = spec.init_containers.as_ref().unwrap();
        assert_eq!(init[0].name, keys::RESTORE_WAIT_CONTAINER);
        assert!(
            init[0]
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "data" && m.mount_path == "/var/lib/data")
        );
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("restore-demo-host-1"),
            "one pod per host"
        );
        assert!(is_worker(&pod));
        assert_eq!(workers_of(std::slice::from_ref(&pod), "uid-r").len(), 1);
        assert_eq!(
            api::pod_security::restricted_violations(spec),
            Vec::<String>::new()
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn a_backup_worker_has_no_init_container_and_mounts_the_claim() {
        let pod = worker(None);
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.init_containers.is_none());
        assert!(
            !pod.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(keys::ANNOTATION_RESTORE_SESSION)
        );
        let vols = spec.volumes.as_ref().unwrap();
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-web-1"
        );
        assert_eq!(
            api::pod_security::restricted_violations(spec),
            Vec::<String>::new()
        );
    }

    #[test]
    fn names_stay_dns_labels() {
        assert_eq!(worker_pod_name("r", "host-0"), "r-host-0");
        let long = "a".repeat(80);
        let n = worker_pod_name(&long, "host-12");
        assert!(n.len() <= 63 && n.ends_with("-host-12"), "{n}");
        assert_eq!(template_volume_name("data-web-${POD_ORDINAL}"), "data-web");
        assert_eq!(template_volume_name("${POD_ORDINAL}"), "data");
        assert_eq!(template_volume_name("single"), "single");
    }

    #[test]
    fn claim_users_ignore_workers_and_finished_pods() {
        let mk = |name: &str, phase: &str, worker: bool| {
            let mut p = Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    volumes: Some(vec![Volume {
                        name: "v".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: "pvc".into(),
                            read_only: None,
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                status: Some(k8s_openapi::api::core::v1::PodStatus {
                    phase: Some(phase.into()),
                    ..Default::default()
                }),
            };
            if worker {
                p.metadata.labels = Some(worker_labels("u", "host-0"));
            }
            p
        };
        let pods = [
            mk("app", "Running", false),
            mk("done", "Succeeded", false),
            mk("w", "Running", true),
        ];
        let users: Vec<_> = claim_users(&pods, "pvc")
            .into_iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(users, ["app"]);
        assert!(claim_users(&pods, "other").is_empty());
    }

    #[test]
    fn worker_backoff_doubles_up_to_a_cap_and_attempts_are_bounded() {
        let got: Vec<u64> = [1, 2, 3, 4, 6, 40]
            .map(|n| worker_backoff(n).as_secs())
            .to_vec();
        assert_eq!(got, [10, 20, 40, 80, 300, 300]);
        // all retries fit well within the default session timeout
        let total: Duration = (1..WORKER_ATTEMPTS).map(worker_backoff).sum();
        assert!(
            total < api::phase::DEFAULT_SESSION_TIMEOUT / 10,
            "{total:?}"
        );
        assert_eq!(attempt_pod_name("s", "pvc-0", 1), "s-pvc-0");
        assert_eq!(attempt_pod_name("s", "pvc-0", 3), "s-pvc-0-3");
        assert!(attempt_pod_name(&"x".repeat(80), "host-12", 5).len() <= MAX_POD_NAME);
    }

    #[test]
    fn an_evicted_pod_says_so_and_an_unknown_failure_is_not_retried_at_once() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "w", "annotations": { keys::ANNOTATION_WORKER_ATTEMPT: "2" } },
            "status": { "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: ephemeral-storage." }
        }))
        .unwrap();
        assert!(has_failed(&pod));
        assert_eq!(attempt_of(&pod), 2);
        assert_eq!(
            failure_reason(&pod),
            "Evicted: The node was low on resource: ephemeral-storage."
        );
        // no time recorded: the backoff counts from now
        let now: Timestamp = "2026-03-10T11:00:00Z".parse().unwrap();
        assert_eq!(
            retry(&pod, now),
            Retry::Wait {
                at: "2026-03-10T11:00:20Z".parse().unwrap(),
                next: 3
            }
        );
    }
}
