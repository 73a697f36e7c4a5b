//! The admission decision: a pure function from a pod CREATE review and the
//! in-memory [`State`] to an `AdmissionResponse`.
//!
//! Data flow: resolve the pod's workload ([`crate::workload`]) → look up the
//! `BackupConfiguration`s and unfinished `RestoreSession`s targeting it in
//! [`State`] → if the workload is backed up or a session still owes this
//! host a restore, build a JSON patch of typed ops: host/target labels and
//! annotations, and for a restore the `hoard-restore-wait` init-container
//! (first) with its status volume. Everything else is allowed unchanged.
//!
//! Hoard never blocks an application: every problem it finds in a pod
//! (malformed `hoard.dev/*` annotations, a host it cannot name) becomes a
//! `warning` on an allowed response. No I/O happens here, so a dry run gets
//! exactly the same answer as a real request and has no side effects.

use std::collections::BTreeMap;
use std::time::Duration;

use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, Pod, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::TypeMeta;
use kube::core::admission::{AdmissionResponse, Operation};
use serde_json::Value;

use crate::events::Problem;
use crate::request::PodRequest;
use crate::state::{RestoreSummary, State};
use crate::workload::{self, Owner};
use api::keys;

/// What the webhook injects, from its command line.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    /// Image holding the `restore-wait` binary.
    pub image: String,
    /// How long the init-container waits when the session does not say.
    pub default_deadline: Duration,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: "ghcr.io/hoard/hoard:latest".to_owned(),
            default_deadline: Duration::from_secs(DEFAULT_DEADLINE_SECS),
        }
    }
}

/// One hour: long enough for a restore of tens of GiB over a slow link; a
/// session with more data sets its own deadline.
pub const DEFAULT_DEADLINE_SECS: u64 = 3600;

/// How a review ended; also the `outcome` label of the reviews metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    PatchedBackup,
    PatchedRestore,
    Skipped,
    Invalid,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::PatchedBackup,
        Outcome::PatchedRestore,
        Outcome::Skipped,
        Outcome::Invalid,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::PatchedBackup => "patched-backup",
            Outcome::PatchedRestore => "patched-restore",
            Outcome::Skipped => "skipped",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The answer to one review.
#[derive(Debug)]
pub struct Mutation {
    pub response: AdmissionResponse,
    pub outcome: Outcome,
    /// Malformed annotations, to be recorded as a Warning Event on the
    /// workload (never for a dry run).
    pub event: Option<Problem>,
}

/// Decides what a pod gets. Pure: reads `state`, calls nothing; the
/// returned [`Mutation::event`] is for the caller to record.
pub fn mutate(req: &PodRequest<'_>, state: &State, cfg: &InjectConfig) -> Mutation {
    let mut event = None;
    let mut m = decide(req, state, cfg, &mut event);
    // Dry runs have no side effects (`sideEffects: None`): no event.
    if !req.dry_run {
        m.event = event;
    }
    m
}

fn decide(
    req: &PodRequest<'_>,
    state: &State,
    cfg: &InjectConfig,
    event: &mut Option<Problem>,
) -> Mutation {
    let resp = allowed(req);
    let skip = |resp: AdmissionResponse| Mutation {
        response: resp,
        outcome: Outcome::Skipped,
        event: None,
    };
    if req.operation != Operation::Create || req.sub_resource.is_some() {
        return skip(resp);
    }
    let Some(pod) = req.object.as_ref() else {
        return Mutation {
            response: with_warnings(
                resp,
                vec!["hoard: the review carried no pod object; nothing was changed".into()],
            ),
            outcome: Outcome::Invalid,
            event: None,
        };
    };
    if label(pod, keys::LABEL_PART_OF) == Some(keys::PART_OF_HOARD) {
        return skip(resp);
    }
    let Some(ns) = req
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
    else {
        return skip(resp);
    };

    let mut warnings = Vec::new();
    let auto_backup = check_auto_backup(pod, &mut warnings);
    let owner = workload::resolve_owner(pod, &req.name, ns, state);
    match &owner {
        Owner::Workload { .. } => {}
        Owner::UnnamedPod if auto_backup => warnings.push(format!(
            "hoard: {} is ignored on a bare pod created with only generateName; \
             put it on a Deployment or StatefulSet pod template instead",
            keys::ANNOTATION_BACKUP
        )),
        Owner::Unsupported { kind, name } if auto_backup => warnings.push(format!(
            "hoard: {} is ignored on pods of {kind} {name}; Hoard backs up \
             Deployments, StatefulSets, DaemonSets, ReplicaSets, \
             ReplicationControllers and bare pods",
            keys::ANNOTATION_BACKUP
        )),
        Owner::UnnamedPod | Owner::Unsupported { .. } => {}
    }
    // Everything warned about so far is about the annotations the user
    // wrote on the pod template: worth an event on that workload, which
    // outlives this pod and is where `kubectl describe` is pointed.
    if !warnings.is_empty() {
        *event = workload::regarding(&owner, pod, ns).map(|regarding| Problem {
            regarding,
            note: warnings.join("; "),
        });
    }
    // The target annotation names the Deployment, not the ReplicaSet in
    // between: that changes with every rollout, the Deployment does not.
    let Owner::Workload { top, .. } = &owner else {
        return skip(with_warnings(resp, warnings));
    };

    let configs = state.backups_for(ns, owner.workloads());
    let restores = state.restores_for(ns, owner.workloads());
    let backed_up = auto_backup || !configs.is_empty();
    if !backed_up && restores.is_empty() {
        return skip(with_warnings(resp, warnings));
    }

    let host = match workload::host_name(pod, &req.name, top.kind) {
        Ok(h) => h,
        Err(e) => {
            warnings.push(format!(
                "hoard: {e}; this pod is neither backed up nor restored"
            ));
            return skip(with_warnings(resp, warnings));
        }
    };

    let mut owed = restores.iter().filter(|r| r.owes(&host));
    let restore = owed.next();
    if let Some(r) = restore {
        let later: Vec<_> = owed.map(|o| o.name.as_str()).collect();
        if !later.is_empty() {
            warnings.push(format!(
                "hoard: RestoreSession {} is restored first; {} wait for the next pod",
                r.name,
                later.join(", ")
            ));
        }
    }
    if restore.is_none() && !backed_up {
        return skip(with_warnings(resp, warnings));
    }
    let restore = restore.filter(|r| {
        // Container names are unique across containers and init-containers.
        if has_container(pod, keys::RESTORE_WAIT_CONTAINER) {
            warnings.push(format!(
                "hoard: the pod already has a container named {}; no restore was injected",
                keys::RESTORE_WAIT_CONTAINER
            ));
            return false;
        }
        // The API server refuses the Linux security settings restore-wait
        // runs with (capabilities, seccompProfile, runAsUser, ...) on a
        // Windows pod: injecting it would make the pod invalid.
        if is_windows(pod) {
            warnings.push(format!(
                "hoard: RestoreSession {} cannot hold a pod with spec.os.name: windows \
                 (restore-wait runs with Linux security settings the API server forbids \
                 there); the pod starts without waiting for its restore",
                r.name
            ));
            return false;
        }
        true
    });

    let mut patch = PatchBuilder::default();
    let mut labels = BTreeMap::new();
    if workload::is_label_value(&host) {
        labels.insert(keys::HOST, host.clone());
    }
    let mut annotations = BTreeMap::from([
        (keys::HOST, host.clone()),
        (keys::ANNOTATION_TARGET, top.to_string()),
    ]);
    if !configs.is_empty() {
        let names: Vec<_> = configs.into_iter().collect();
        annotations.insert(keys::ANNOTATION_BACKUP_CONFIGURATION, names.join(","));
    }
    if let Some(r) = restore {
        annotations.insert(keys::ANNOTATION_RESTORE_SESSION, r.name.clone());
    }
    patch.add_map_entries(pod.metadata.labels.is_some(), "labels", &labels);
    patch.add_map_entries(
        pod.metadata.annotations.is_some(),
        "annotations",
        &annotations,
    );

    let outcome = match restore {
        Some(r) => {
            add_restore_wait(&mut patch, pod, r, cfg, &mut warnings);
            Outcome::PatchedRestore
        }
        None => Outcome::PatchedBackup,
    };
    let response = match resp.clone().with_patch(Patch(patch.ops)) {
        Ok(r) => r,
        // Serialising a Vec of ops with string keys cannot fail; if it ever
        // did, the application still starts.
        Err(e) => {
            warnings.push(format!(
                "hoard: could not encode the patch ({e}); pod left unchanged"
            ));
            return skip(with_warnings(resp, warnings));
        }
    };
    Mutation {
        response: with_warnings(response, warnings),
        outcome,
        event: None,
    }
}

/// An allowed answer to `req` with nothing in it yet.
fn allowed(req: &PodRequest<'_>) -> AdmissionResponse {
    let mut resp = AdmissionResponse::invalid("");
    resp.types = TypeMeta {
        api_version: req.api_version.as_ref().to_owned(),
        kind: "AdmissionReview".to_owned(),
    };
    resp.uid = req.uid.as_ref().to_owned();
    resp.allowed = true;
    resp.result = kube::core::Status::default();
    resp
}

fn with_warnings(mut resp: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        resp.warnings = Some(warnings);
    }
    resp
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Whether any container, init-container or ephemeral container of the pod
/// is named `name`.
fn has_container(pod: &Pod, name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == name)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
}

fn is_windows(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.os.as_ref())
        .is_some_and(|os| os.name == "windows")
}

fn pod_volume_names(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|v| v.name.as_str())
}

/// Reads the auto-backup annotations with the `api` crate's parser (the
/// controllers use the same one); returns whether auto-backup is on.
/// Anything malformed becomes a warning, never a denial.
fn check_auto_backup(pod: &Pod, warnings: &mut Vec<String>) -> bool {
    match api::auto_backup::parse_auto_backup(pod.metadata.annotations.as_ref()) {
        Ok(Some(_)) => {}
        Ok(None) => {
            let stray: Vec<_> = [
                keys::ANNOTATION_REPOSITORY,
                keys::ANNOTATION_VOLUMES,
                keys::ANNOTATION_PATHS,
                keys::ANNOTATION_SCHEDULE,
                keys::ANNOTATION_RETENTION,
            ]
            .into_iter()
            .filter(|k| annotation(pod, k).is_some())
            .collect();
            if !stray.is_empty() {
                warnings.push(format!(
                    "hoard: {} has no effect without {}: \"true\"",
                    stray.join(", "),
                    keys::ANNOTATION_BACKUP
                ));
            }
            return false;
        }
        Err(e) => warnings.extend(e.problems.iter().map(|p| format!("hoard: {p}"))),
    }
    // `hoard.dev/backup: "true"` with, say, a bad schedule still marks the
    // pod as backed up: its identity labels are right either way, and the
    // controllers report the schedule problem on the configuration.
    let enabled = annotation(pod, keys::ANNOTATION_BACKUP).is_some_and(|v| v.trim() == "true");
    if enabled && let Some(v) = annotation(pod, keys::ANNOTATION_VOLUMES) {
        let known: Vec<_> = pod_volume_names(pod).collect();
        let missing: Vec<_> = split_list(v).filter(|n| !known.contains(n)).collect();
        if !missing.is_empty() {
            warnings.push(format!(
                "hoard: {} names volumes the pod does not have: {}",
                keys::ANNOTATION_VOLUMES,
                missing.join(", ")
            ));
        }
    }
    enabled
}

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Collects typed JSON-patch ops; adds a missing parent before its children.
#[derive(Default)]
struct PatchBuilder {
    ops: Vec<PatchOperation>,
}

impl PatchBuilder {
    fn add(&mut self, tokens: &[&str], value: Value) {
        self.ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value,
        }));
    }

    /// `/metadata/<field>/<key>` for each entry (keys escaped: `hoard.dev/host`
    /// becomes `hoard.dev~1host`), or the whole map when the field is absent.
    fn add_map_entries(&mut self, exists: bool, field: &str, entries: &BTreeMap<&str, String>) {
        if entries.is_empty() {
            return;
        }
        if exists {
            for (k, v) in entries {
                self.add(&["metadata", field, k], Value::String(v.clone()));
            }
        } else {
            let map = entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
                .collect();
            self.add(&["metadata", field], Value::Object(map));
        }
    }
}

/// A user or group id the API server accepts (0..=2147483647) other than
/// root.
fn usable_id(id: i64) -> bool {
    (1..=i64::from(i32::MAX)).contains(&id)
}

/// Restricted-profile security context for the init-container; a session
/// may choose the user/group ids (never root).
fn restricted_security_context(r: &RestoreSummary) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(r.run_as_user.filter(|u| usable_id(*u)).unwrap_or(65532)),
        run_as_group: Some(r.run_as_group.filter(|g| usable_id(*g)).unwrap_or(65532)),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// A process that polls a file once a second: 10m CPU and 16Mi are generous
/// and never dominate the pod's effective requests. Limits are set so
/// namespaces whose quota demands them still admit the pod.
fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q("10m")),
            ("memory".to_owned(), q("16Mi")),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_owned(), q("100m")),
            ("memory".to_owned(), q("16Mi")),
        ])),
        ..Default::default()
    }
}

/// Builds the `hoard-restore-wait` init-container for session `r`.
pub fn restore_wait_container(
    r: &RestoreSummary,
    mounts: Vec<VolumeMount>,
    cfg: &InjectConfig,
) -> Container {
    let deadline = r.deadline_seconds.unwrap_or(cfg.default_deadline.as_secs());
    let mut volume_mounts = vec![VolumeMount {
        name: keys::RESTORE_STATUS_VOLUME.to_owned(),
        mount_path: keys::RESTORE_STATUS_MOUNT_PATH.to_owned(),
        ..Default::default()
    }];
    volume_mounts.extend(mounts);
    Container {
        name: keys::RESTORE_WAIT_CONTAINER.to_owned(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec![keys::RESTORE_WAIT_BINARY.to_owned()]),
        args: Some(vec![
            "--session-uid".to_owned(),
            r.uid.clone(),
            "--status-dir".to_owned(),
            keys::RESTORE_STATUS_MOUNT_PATH.to_owned(),
            "--deadline-seconds".to_owned(),
            deadline.to_string(),
        ]),
        // What pod validation would refuse falls back to the defaults
        // (add_restore_wait warns about it).
        resources: Some(
            r.resources
                .clone()
                .filter(|res| crate::resources::problems(res).is_empty())
                .unwrap_or_else(default_resources),
        ),
        security_context: Some(restricted_security_context(r)),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        volume_mounts: Some(volume_mounts),
        ..Default::default()
    }
}

fn add_restore_wait(
    patch: &mut PatchBuilder,
    pod: &Pod,
    r: &RestoreSummary,
    cfg: &InjectConfig,
    warnings: &mut Vec<String>,
) {
    // A pod without a spec cannot be held (and the API server rejects it
    // anyway); a patch under /spec would not apply to it.
    if pod.spec.is_none() {
        warnings.push(format!(
            "hoard: RestoreSession {} cannot hold a pod that has no spec",
            r.name
        ));
        return;
    }
    if let Some(res) = &r.resources {
        let problems = crate::resources::problems(res);
        if !problems.is_empty() {
            warnings.push(format!(
                "hoard: RestoreSession {}'s runtimeSettings.container.resources would make \
                 the pod invalid ({}); {} uses its default resources",
                r.name,
                problems.join("; "),
                keys::RESTORE_WAIT_CONTAINER
            ));
        }
    }
    for (field, id) in [("runAsUser", r.run_as_user), ("runAsGroup", r.run_as_group)] {
        if let Some(id) = id.filter(|id| *id > i64::from(i32::MAX)) {
            warnings.push(format!(
                "hoard: RestoreSession {}'s runtimeSettings.container.securityContext.{field} \
                 {id} is above 2147483647, which the API server refuses; {} runs as 65532",
                r.name,
                keys::RESTORE_WAIT_CONTAINER
            ));
        }
    }
    let known: Vec<_> = pod_volume_names(pod).collect();
    let mut mounts: Vec<VolumeMount> = Vec::new();
    for m in &r.volume_mounts {
        if m.mount_path.is_empty() {
            warnings.push(format!(
                "hoard: RestoreSession {} mounts {:?} at an empty path; \
                 that volume is not mounted in the init-container",
                r.name, m.name
            ));
        } else if let Some(first) = mounts.iter().find(|o| o.mount_path == m.mount_path) {
            // A container's mount paths are unique.
            warnings.push(format!(
                "hoard: RestoreSession {} mounts {:?} at {}, where {:?} is already mounted; \
                 only the first is mounted in the init-container",
                r.name, m.name, m.mount_path, first.name
            ));
        } else if !known.contains(&m.name.as_str()) {
            warnings.push(format!(
                "hoard: RestoreSession {} restores volume {:?}, which this pod does not have",
                r.name, m.name
            ));
        } else if m.mount_path == keys::RESTORE_STATUS_MOUNT_PATH
            || m.mount_path
                .starts_with(&format!("{}/", keys::RESTORE_STATUS_MOUNT_PATH))
        {
            warnings.push(format!(
                "hoard: RestoreSession {} mounts {:?} at {}, which Hoard reserves; \
                 that volume is not mounted in the init-container",
                r.name,
                m.name,
                keys::RESTORE_STATUS_MOUNT_PATH
            ));
        } else {
            mounts.push(VolumeMount {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    let spec = pod.spec.as_ref();
    let mut container = restore_wait_container(r, mounts, cfg);
    // With pod-level resources the API server wants every container's
    // limits within the pod's and their requests to add up within it: the
    // defaults could break a small pod's budget, while a container without
    // resources simply runs within it. A session's own (valid) resources
    // are the user's choice and kept.
    let session_resources = r
        .resources
        .as_ref()
        .is_some_and(|res| crate::resources::problems(res).is_empty());
    let pod_level = spec
        .and_then(|s| s.resources.as_ref())
        .is_some_and(|res| res.limits.is_some() || res.requests.is_some());
    if pod_level && !session_resources {
        container.resources = None;
    }
    let container = serde_json::to_value(container).unwrap_or(Value::Null);
    if spec.and_then(|s| s.init_containers.as_ref()).is_some() {
        // Index 0: before the application's own init-containers, which may
        // read the restored data.
        patch.add(&["spec", "initContainers", "0"], container);
    } else {
        patch.add(&["spec", "initContainers"], Value::Array(vec![container]));
    }

    if known.contains(&keys::RESTORE_STATUS_VOLUME) {
        return;
    }
    let volume = Volume {
        name: keys::RESTORE_STATUS_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            // Markers are a few bytes; the limit keeps a confused writer
            // from filling the node's disk through this volume.
            size_limit: Some(Quantity("1Mi".to_owned())),
        }),
        ..Default::default()
    };
    let volume = serde_json::to_value(volume).unwrap_or(Value::Null);
    if spec.and_then(|s| s.volumes.as_ref()).is_some() {
        patch.add(&["spec", "volumes", "-"], volume);
    } else {
        patch.add(&["spec", "volumes"], Value::Array(vec![volume]));
    }
}
