//! The running agent: watches, decides, transfers, reports.
//!
//! Data flow:
//!
//! ```text
//! watch BackupSessions ─┐                ┌─ owner::owned_hosts (pure)
//! watch RestoreSessions ├─> handle_*  ───┤  per owned host: status Running + event
//! watch Pods (my node) ─┘   (dedup by    └─ Transfers::run(thread, nice/ionice):
//!                            session,host)    open repo → open volumes → engine
//!                                             → status Succeeded/Failed (+progress
//!                                               every few seconds), event, metrics,
//!                                               restore marker
//! ```
//!
//! A session's per-host entry is written only by the agent that owns the
//! host ([`crate::status`] merges by hostname). An entry found `Running`
//! that this process is not running was left by a previous agent process
//! (restarted mid-transfer): it is marked failed rather than left running.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use api::host::WorkloadKind;
use api::keys;
use api::{BackupConfiguration, BackupSession, Phase, RestoreSession, TargetRef};
use engine::backup::CancelToken;
use engine::priority::Priority;

use crate::hold::{Outcome, write_marker};
use crate::metrics::Metrics;
use crate::owner::{Op, belongs_to, eligible, owned_hosts};
use crate::repo::{RepoAccess, RepoError};
use crate::transfers::Transfers;
use crate::volumes::{Kubelet, VolumeError, classify};
use crate::work::{
    HostProgress, HostVolume, TransferError, TransferSettings, run_backup_host, run_restore_host,
};

mod recovery;
mod retention;

/// Errors that stop a session's handling on this node.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
    #[error(
        "the hoard.dev custom resources are not installed ({kind} not served by the API server); install them with `kubectl apply -f manifests/install.yaml`"
    )]
    CrdMissing { kind: &'static str },
    #[error("invalid session: {0}")]
    Invalid(String),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Kube { what, source }
}

/// Shared state of the agent.
pub struct Agent {
    pub client: Client,
    pub node: String,
    pub namespace: String,
    pub kubelet: Kubelet,
    pub transfers: Transfers,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub progress_interval: Duration,
    /// (session UID, host) pairs running in this process.
    inflight: Mutex<HashSet<(String, String)>>,
    /// (session UID, host) pairs this process finished. A late watch event
    /// still showing `Running` for one of them is not mistaken for a
    /// transfer left behind by a previous agent process.
    finished: Mutex<HashSet<(String, String)>>,
    /// (session UID, host, target kind, target name) this process backed up
    /// successfully: the agent that ran a succeeded session's first host
    /// applies its retention policy ([`crate::retention::retention_owner`]).
    backed_up: Mutex<HashSet<(String, String, String, String)>>,
    /// Session UIDs whose retention this process started.
    retention_started: Mutex<HashSet<String>>,
    /// Running transfers by (pod UID, session UID, host): cancelled when
    /// the pod is deleted, so the host fails at once with that reason and
    /// the agent's open directories do not hold up the kubelet's unmount.
    pod_transfers: Mutex<HashMap<(String, String, String), CancelToken>>,
    /// One writer at a time per session UID among this agent's hosts: they
    /// would otherwise reject each other's optimistic status patches (20
    /// hosts queued at once exhausted [`crate::status::MAX_ATTEMPTS`]), so
    /// only other nodes' agents can make a write retry.
    status_writers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// (namespace, name) of `Recovery`s waiting for their host's pod to run
    /// on some node: handled again when a pod of that namespace starts
    /// running here.
    waiting_recoveries: Mutex<HashSet<(String, String)>>,
}

/// The repository as the previous host of the same session on this node
/// opened it: the next host reuses it (its index re-read, as other nodes
/// may have written since) instead of deriving the key again — with the
/// real KDF parameters that was most of the agent's CPU overhead over the
/// engine alone for 20 small hosts (bench/agent.sh). Dropped with the last
/// host of the session started together.
#[derive(Clone, Default)]
pub struct SharedRepo(Arc<Mutex<Option<Arc<engine::Repository>>>>);

impl SharedRepo {
    /// Blocking (key derivation, index load): call it on a transfer thread.
    pub fn open(&self, access: &RepoAccess) -> Result<Arc<engine::Repository>, RepoError> {
        let cached = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Reused only when no other transfer holds it (the index must not
        // be reloaded under a running backup: --max-transfers > 1).
        if let Some(repo) = cached.filter(|r| Arc::strong_count(r) == 2) {
            match repo.reload_index() {
                Ok(()) => return Ok(repo),
                Err(e) => tracing::debug!(error = %e, "re-reading the index; opening again"),
            }
        }
        let repo = access.open()?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(repo.clone());
        Ok(repo)
    }
}

/// The session's `nice`/`ionice`.
pub fn priority_of(rs: Option<&api::RuntimeSettings>) -> Priority {
    let c = rs.and_then(|r| r.container.as_ref());
    let nice = c.and_then(|c| c.nice.as_ref()).and_then(|n| n.adjustment);
    let io = c.and_then(|c| c.ionice.as_ref());
    Priority {
        nice,
        ionice_class: io
            .and_then(|i| i.class)
            .filter(|c| *c > 0)
            .and_then(|c| u8::try_from(c).ok()),
        ionice_class_data: io
            .and_then(|i| i.class_data)
            .and_then(|c| u8::try_from(c).ok()),
    }
}

/// `(volume name, snapshot path)` pairs to transfer for `pod`: the target's
/// `volumeMounts`, or else every emptyDir/PVC/in-tree volume at the path
/// where the pod's first container mounts it.
pub fn mounts_for(
    pod: &Pod,
    volume_mounts: Option<&Vec<k8s_openapi::api::core::v1::VolumeMount>>,
) -> Vec<(String, String)> {
    if let Some(vm) = volume_mounts.filter(|v| !v.is_empty()) {
        return vm
            .iter()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect();
    }
    let Some(spec) = pod.spec.as_ref() else {
        return vec![];
    };
    let podname = pod.metadata.name.as_deref().unwrap_or("");
    let mut out: Vec<(String, String)> = Vec::new();
    for v in spec.volumes.iter().flatten() {
        if v.name == keys::RESTORE_STATUS_VOLUME {
            continue;
        }
        match classify(podname, v) {
            crate::volumes::VolumeKind::Never { .. }
            | crate::volumes::VolumeKind::HostPath { .. } => continue,
            _ => {}
        }
        let path = spec
            .containers
            .iter()
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .find(|m| m.name == v.name)
            .map(|m| m.mount_path.clone());
        if let Some(p) = path {
            out.push((v.name.clone(), p));
        }
    }
    out
}

fn object_ref<K: Resource<DynamicType = ()>>(o: &K) -> ObjectReference {
    o.object_ref(&())
}

fn target_kind(t: &TargetRef) -> Result<WorkloadKind, AgentError> {
    WorkloadKind::parse(&t.kind).ok_or_else(|| {
        AgentError::Invalid(format!(
            "target kind {:?} is not supported; use Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController or PersistentVolumeClaim",
            t.kind
        ))
    })
}

/// Reason strings for events (CamelCase, bounded).
mod reason {
    pub const BACKUP_STARTED: &str = "HostBackupStarted";
    pub const BACKUP_SUCCEEDED: &str = "HostBackupSucceeded";
    pub const BACKUP_FAILED: &str = "HostBackupFailed";
    pub const RESTORE_STARTED: &str = "HostRestoreStarted";
    pub const RESTORE_SUCCEEDED: &str = "HostRestoreSucceeded";
    pub const RESTORE_FAILED: &str = "HostRestoreFailed";
}

/// Why a host failed, before or during the transfer.
#[derive(Debug, thiserror::Error)]
enum HostFailure {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("{0}")]
    Kube(String),
    #[error(
        "pod {pod} was deleted while its volumes were being {op}; the transfer of this host was stopped (the repository stays valid)"
    )]
    PodDeleted { pod: String, op: &'static str },
}

impl HostFailure {
    fn reason(&self) -> &'static str {
        match self {
            HostFailure::Repo(e) => e.reason(),
            HostFailure::Transfer(e) => e.reason(),
            HostFailure::Volume(e) => e.reason(),
            HostFailure::Kube(_) => "kubernetes_api",
            HostFailure::PodDeleted { .. } => "pod_deleted",
        }
    }
}

impl Agent {
    pub fn new(
        client: Client,
        node: String,
        namespace: String,
        kubelet: Kubelet,
        max_transfers: usize,
        metrics: Metrics,
        progress_interval: Duration,
    ) -> Arc<Agent> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "hoard-agent".into(),
                instance: Some(node.clone()),
            },
        );
        Arc::new(Agent {
            transfers: Transfers::new(max_transfers, Some(metrics.clone())),
            client,
            node,
            namespace,
            kubelet,
            metrics,
            recorder,
            progress_interval,
            inflight: Mutex::new(HashSet::new()),
            finished: Mutex::new(HashSet::new()),
            backed_up: Mutex::new(HashSet::new()),
            retention_started: Mutex::new(HashSet::new()),
            pod_transfers: Mutex::new(HashMap::new()),
            status_writers: Mutex::new(HashMap::new()),
            waiting_recoveries: Mutex::new(HashSet::new()),
        })
    }

    /// Fails with one clear line when our CRDs are not installed.
    pub async fn check_crds(&self) -> Result<(), AgentError> {
        async fn probe<K>(c: &Client, kind: &'static str) -> Result<(), AgentError>
        where
            K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        {
            match Api::<K>::all(c.clone())
                .list_metadata(&ListParams::default().limit(1))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Err(AgentError::CrdMissing { kind }),
                Err(e) => Err(kube_err(format!("listing {kind}s"))(e)),
            }
        }
        probe::<BackupSession>(&self.client, "BackupSession").await?;
        probe::<RestoreSession>(&self.client, "RestoreSession").await?;
        probe::<api::Repository>(&self.client, "Repository").await?;
        probe::<api::Recovery>(&self.client, "Recovery").await?;
        Ok(())
    }

    fn claim(&self, session_uid: &str, host: &str) -> bool {
        let key = (session_uid.to_string(), host.to_string());
        let finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        !finished.contains(&key)
            && self
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key)
    }

    fn release(&self, session_uid: &str, host: &str) {
        let key = (session_uid.to_string(), host.to_string());
        let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        finished.insert(key);
    }

    /// A cancel token for a transfer from `pod`'s volumes, registered until
    /// [`Agent::pod_transfer_done`].
    fn pod_transfer(&self, pod: &Pod, session_uid: &str, host: &str) -> CancelToken {
        let t = CancelToken::new();
        let key = (
            pod.uid().unwrap_or_default(),
            session_uid.to_string(),
            host.to_string(),
        );
        let mut m = self.pod_transfers.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(key, t.clone());
        t
    }

    fn pod_transfer_done(&self, pod: &Pod, session_uid: &str, host: &str) {
        let key = (
            pod.uid().unwrap_or_default(),
            session_uid.to_string(),
            host.to_string(),
        );
        self.pod_transfers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// The pod with `uid` is being deleted: stop its transfers.
    pub fn pod_gone(&self, uid: &str) {
        let m = self.pod_transfers.lock().unwrap_or_else(|e| e.into_inner());
        for ((pod, _, host), t) in m.iter().filter(|((p, _, _), _)| p == uid) {
            if !t.is_cancelled() {
                tracing::warn!(pod_uid = %pod, host, "pod deleted: stopping its transfer");
                t.cancel();
            }
        }
    }

    /// Writes `host`'s entry in the session's `status.stats`, after this
    /// agent's other writes to the same session.
    async fn write_host_entry<K, E>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        session: &str,
        session_uid: &str,
        host: &str,
        entry: &E,
    ) -> Result<(), crate::status::StatusError>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
        E: serde::Serialize,
    {
        let turn = {
            let mut m = self
                .status_writers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // sessions this agent no longer writes to: drop their locks
            m.retain(|_, l| Arc::strong_count(l) > 1);
            m.entry(session_uid.to_string()).or_default().clone()
        };
        let _turn = turn.lock().await;
        crate::status::upsert_host_entry(api, kind, session, host, entry).await
    }

    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: if reason.contains("Restore") {
                "Restore".into()
            } else if reason.starts_with("Retention") {
                "Retention".into()
            } else if reason.starts_with("Integrity") {
                "Check".into()
            } else if reason.starts_with("Recovery") {
                "Recovery".into()
            } else {
                "Backup".into()
            },
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &object_ref(obj)).await {
            tracing::warn!(error = %e, reason, "publishing event failed");
        }
    }

    /// The target's pods this agent may need: on this node for multi-host
    /// kinds, the namespace's for single-host kinds (all agents must see
    /// the same candidates to agree on `host-0`).
    async fn pods_for(&self, ns: &str, kind: WorkloadKind) -> Result<Vec<Pod>, AgentError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let lp = if kind.is_multi_host() {
            ListParams::default().fields(&format!("spec.nodeName={}", self.node))
        } else {
            ListParams::default()
        };
        Ok(api
            .list(&lp)
            .await
            .map_err(kube_err(format!("listing pods in {ns}")))?
            .items)
    }

    async fn claims_to_pvs(&self, ns: &str, pod: &Pod) -> BTreeMap<String, String> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let podname = pod.metadata.name.as_deref().unwrap_or("");
        let mut out = BTreeMap::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let crate::volumes::VolumeKind::Claim { claim } = classify(podname, v)
                && let Ok(pvc) = api.get(&claim).await
                && let Some(pv) = pvc.spec.and_then(|s| s.volume_name)
            {
                out.insert(claim, pv);
            }
        }
        out
    }

    async fn repo_access(&self, ns: &str, repo_name: &str) -> Result<RepoAccess, HostFailure> {
        let repo: api::Repository = Api::namespaced(self.client.clone(), ns)
            .get(repo_name)
            .await
            .map_err(|e| HostFailure::Kube(format!("reading Repository {ns}/{repo_name}: {e}")))?;
        let mut a = crate::repo::access(
            &self.client,
            &self.namespace,
            &repo,
            self.kubelet.host_root.as_deref(),
        )
        .await?;
        a.node = self.node.clone();
        Ok(a)
    }

    /// Handles one observed `BackupSession`. A finished one may free the
    /// next session of its configuration, which waited for it (one session
    /// per configuration at a time): that one is started here, because its
    /// own object does not change when it may run.
    pub async fn handle_backup_session(
        self: &Arc<Self>,
        bs: BackupSession,
    ) -> Result<(), AgentError> {
        match bs.status.as_ref().and_then(|s| s.phase) {
            Some(Phase::Succeeded) => self.maybe_apply_retention(&bs),
            Some(Phase::Failed | Phase::Skipped) => {
                self.forget_backed_up(&bs.uid().unwrap_or_default());
            }
            _ => return self.start_backup_hosts(bs).await,
        }
        for next in self.sessions_freed_by(&bs).await? {
            self.start_backup_hosts(next).await?;
        }
        Ok(())
    }

    /// The configuration's sessions, read from the API server (not the
    /// watch), so that every agent and the controller judge the same
    /// objects.
    async fn sibling_sessions(&self, bs: &BackupSession) -> Result<Vec<BackupSession>, AgentError> {
        let ns = bs.namespace().unwrap_or_default();
        let invoker = &bs.spec.invoker.name;
        // `spec.invoker.name` is a selectable field of the CRD
        let lp = ListParams::default().fields(&format!("spec.invoker.name={invoker}"));
        Ok(Api::<BackupSession>::namespaced(self.client.clone(), &ns)
            .list(&lp)
            .await
            .map_err(kube_err(format!(
                "listing the BackupSessions of BackupConfiguration {ns}/{invoker}"
            )))?
            .items)
    }

    /// The unfinished sessions of `finished`'s configuration that may run
    /// now ([`api::backup::session_to_wait_for`]).
    async fn sessions_freed_by(
        &self,
        finished: &BackupSession,
    ) -> Result<Vec<BackupSession>, AgentError> {
        let siblings = self.sibling_sessions(finished).await?;
        Ok(siblings
            .iter()
            .filter(|s| s.uid() != finished.uid())
            .filter(|s| {
                !s.status
                    .as_ref()
                    .and_then(|st| st.phase)
                    .is_some_and(Phase::is_finished)
            })
            .filter(|s| api::backup::session_to_wait_for(s, &siblings).is_none())
            .cloned()
            .collect())
    }

    /// The older session of the configuration that `bs` waits for, if any.
    async fn waits_for(&self, bs: &BackupSession) -> Result<Option<String>, AgentError> {
        let siblings = self.sibling_sessions(bs).await?;
        // the listed copy is newer than the watched one
        let me = siblings.iter().find(|s| s.uid() == bs.uid()).unwrap_or(bs);
        Ok(api::backup::session_to_wait_for(me, &siblings).map(ResourceExt::name_any))
    }

    /// Starts this node's hosts of an unfinished session, unless an older
    /// session of its configuration has not finished yet.
    async fn start_backup_hosts(self: &Arc<Self>, bs: BackupSession) -> Result<(), AgentError> {
        let ns = bs.namespace().unwrap_or_default();
        let inv = &bs.spec.invoker;
        if inv.kind != "BackupConfiguration" {
            return Err(AgentError::Invalid(format!(
                "BackupSession {ns}/{} is invoked by a {}; only BackupConfiguration is supported",
                bs.name_any(),
                inv.kind
            )));
        }
        let cfg: BackupConfiguration = Api::namespaced(self.client.clone(), &ns)
            .get(&inv.name)
            .await
            .map_err(kube_err(format!(
                "reading BackupConfiguration {ns}/{}",
                inv.name
            )))?;
        let stats = serde_json::to_value(&bs).unwrap_or_default();
        // the hosts started here back up one after another into one repository
        let shared = SharedRepo::default();
        // read once, when a first host would start
        let mut waiting: Option<Option<String>> = None;
        for target in cfg.spec.all_targets() {
            let kind = target_kind(&target.target_ref)?;
            let pods = self.pods_for(&ns, kind).await?;
            let owned: Vec<(String, Pod)> =
                owned_hosts(&self.node, kind, &target.target_ref.name, Op::Backup, &pods)
                    .into_iter()
                    .map(|o| (o.host, o.pod.clone()))
                    .collect();
            for (host, pod) in owned {
                let uid = bs.uid().unwrap_or_default();
                let tjson = serde_json::to_value(&target.target_ref).unwrap_or_default();
                let prior = crate::status::target_host_phase(&stats, &host, &tjson);
                // batch targets may share a host name: claim per target
                let claim = format!(
                    "{}/{}/{host}",
                    target.target_ref.kind, target.target_ref.name
                );
                if matches!(prior.as_deref(), Some("Succeeded" | "Failed")) {
                    continue;
                }
                // A host left Running was allowed to start; a new one only
                // when no older session of the configuration is unfinished.
                if prior.as_deref() != Some("Running") {
                    if waiting.is_none() {
                        waiting = Some(self.waits_for(&bs).await?);
                    }
                    if let Some(Some(older)) = &waiting {
                        tracing::info!(%ns, session = %bs.name_any(), %older, host, "waiting for the older BackupSession of the configuration to finish");
                        continue;
                    }
                }
                if !self.claim(&uid, &claim) {
                    continue;
                }
                let agent = self.clone();
                let (bs, cfg, target) = (bs.clone(), cfg.clone(), target.clone());
                let shared = shared.clone();
                tokio::spawn(async move {
                    if prior.as_deref() == Some("Running") {
                        agent
                            .fail_stale_backup(&bs, &host, &target.target_ref)
                            .await;
                    } else {
                        agent
                            .backup_host(&bs, &cfg, &target, &host, &pod, &shared)
                            .await;
                    }
                    agent.release(&uid, &claim);
                });
            }
        }
        Ok(())
    }

    async fn fail_stale_backup(&self, bs: &BackupSession, host: &str, target: &TargetRef) {
        let msg = "the node agent restarted while this host was being backed up; no snapshot was written (the repository stays valid); create a new BackupSession to retry".to_string();
        let entry = api::HostBackupStats {
            hostname: host.into(),
            target: Some(target.clone()),
            phase: Some(Phase::Failed),
            error: Some(msg.clone()),
            ..Default::default()
        };
        let api: Api<BackupSession> =
            Api::namespaced(self.client.clone(), &bs.namespace().unwrap_or_default());
        if let Err(e) = self
            .write_host_entry(
                &api,
                "BackupSession",
                &bs.name_any(),
                &bs.uid().unwrap_or_default(),
                host,
                &entry,
            )
            .await
        {
            tracing::warn!(error = %e, host, "status write failed");
        }
        self.metrics.record_failure("backup", "agent_restarted");
        self.event(bs, true, reason::BACKUP_FAILED, format!("{host}: {msg}"))
            .await;
    }

    async fn backup_host(
        self: &Arc<Self>,
        bs: &BackupSession,
        cfg: &BackupConfiguration,
        target: &api::BackupTarget,
        host: &str,
        pod: &Pod,
        shared: &SharedRepo,
    ) {
        let ns = bs.namespace().unwrap_or_default();
        let name = bs.name_any();
        let api: Api<BackupSession> = Api::namespaced(self.client.clone(), &ns);
        let tref = target.target_ref.clone();
        let target_label = format!("{}/{}", tref.kind, tref.name);
        // From here on, deleting the pod stops this host's backup.
        let uid = bs.uid().unwrap_or_default();
        let cancel = self.pod_transfer(pod, &uid, host);
        let running = api::HostBackupStats {
            hostname: host.into(),
            target: Some(tref.clone()),
            phase: Some(Phase::Running),
            ..Default::default()
        };
        if let Err(e) = self
            .write_host_entry(&api, "BackupSession", &name, &uid, host, &running)
            .await
        {
            tracing::warn!(error = %e, host, "status write failed");
        }
        self.event(
            bs,
            false,
            reason::BACKUP_STARTED,
            format!(
                "{host} of {target_label}: backing up pod {} on node {}",
                pod.name_any(),
                self.node
            ),
        )
        .await;
        tracing::info!(%ns, session = %name, host, pod = %pod.name_any(), "backup started");

        let progress = HostProgress::default();
        let mut result = self
            .run_backup_transfer(
                &ns,
                cfg,
                target,
                host,
                pod,
                &progress,
                &api,
                bs,
                &tref,
                cancel.clone(),
                shared,
            )
            .await;
        self.pod_transfer_done(pod, &uid, host);
        if cancel.is_cancelled() {
            result = Err(HostFailure::PodDeleted {
                pod: format!("{ns}/{}", pod.name_any()),
                op: "backed up",
            });
        }
        let (entry, failure) = match result {
            Ok(report) => {
                self.metrics.record_backup(&ns, &target_label, &report);
                let mut e = report.to_status();
                e.target = Some(tref.clone());
                let f = report.error.as_ref().map(|e| e.to_string());
                (e, f)
            }
            Err(f) => {
                self.metrics.record_failure("backup", f.reason());
                (
                    api::HostBackupStats {
                        hostname: host.into(),
                        target: Some(tref.clone()),
                        phase: Some(Phase::Failed),
                        error: Some(f.to_string()),
                        ..Default::default()
                    },
                    Some(f.to_string()),
                )
            }
        };
        if failure.is_none() {
            // Before the status write: the session can turn Succeeded
            // (and its retention be due) as soon as the entry is written.
            self.backed_up
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((
                    bs.uid().unwrap_or_default(),
                    host.to_string(),
                    tref.kind.clone(),
                    tref.name.clone(),
                ));
        }
        if let Err(e) = self
            .write_host_entry(&api, "BackupSession", &name, &uid, host, &entry)
            .await
        {
            tracing::warn!(error = %e, host, "final status write failed");
        }
        match failure {
            None => {
                tracing::info!(%ns, session = %name, host, "backup succeeded");
                self.event(
                    bs,
                    false,
                    reason::BACKUP_SUCCEEDED,
                    format!("{host} of {target_label}: backup succeeded"),
                )
                .await
            }
            Some(msg) => {
                tracing::warn!(%ns, session = %name, host, error = %msg, "backup failed");
                self.event(
                    bs,
                    true,
                    reason::BACKUP_FAILED,
                    format!("{host} of {target_label}: {msg}"),
                )
                .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_backup_transfer(
        self: &Arc<Self>,
        ns: &str,
        cfg: &BackupConfiguration,
        target: &api::BackupTarget,
        host: &str,
        pod: &Pod,
        progress: &HostProgress,
        api: &Api<BackupSession>,
        bs: &BackupSession,
        tref: &TargetRef,
        cancel: CancelToken,
        shared: &SharedRepo,
    ) -> Result<crate::work::HostBackupReport, HostFailure> {
        let name = bs.name_any();
        let access = self.repo_access(ns, &cfg.spec.repository.name).await?;
        let pvs = self.claims_to_pvs(ns, pod).await;
        if cancel.is_cancelled() {
            // the caller reports the deletion; do not touch the volumes
            return Err(HostFailure::Kube("cancelled".into()));
        }
        let mounts = mounts_for(pod, target.volume_mounts.as_ref());
        let priority = priority_of(cfg.spec.runtime_settings.as_ref());
        let settings = TransferSettings {
            priority,
            tags: vec![
                format!("backupconfiguration={}", cfg.name_any()),
                format!("target={}/{}", tref.kind, tref.name),
            ],
            excludes: target.exclude.clone().unwrap_or_default(),
            threads: 0,
            cancel,
        };
        self.metrics.nice.set(priority.nice.unwrap_or(0).into());
        self.metrics
            .ionice_class
            .set(priority.ionice_class.unwrap_or(0).into());
        let kubelet = self.kubelet.clone();
        let (pod2, host2, progress2) = (pod.clone(), host.to_string(), progress.clone());
        let shared = shared.clone();
        let transfer = self.transfers.run("hoard-backup", priority, move || {
            let repo = shared.open(&access)?;
            let mut vols = Vec::new();
            for (vol, path) in mounts {
                let dir = kubelet.open_volume(&pod2, &vol, false, &|c| pvs.get(c).cloned())?;
                vols.push(HostVolume {
                    volume: vol,
                    snapshot_path: path,
                    dir,
                });
            }
            Ok::<_, HostFailure>(run_backup_host(&repo, &host2, &vols, &settings, &progress2))
        });
        self.with_progress(transfer, progress, || {
            let api = api.clone();
            let entry = api::HostBackupStats {
                hostname: host.into(),
                target: Some(tref.clone()),
                phase: Some(Phase::Running),
                progress: Some(progress.to_api()),
                ..Default::default()
            };
            let (name, host) = (name.clone(), host.to_string());
            let uid = bs.uid().unwrap_or_default();
            async move {
                self.write_host_entry(&api, "BackupSession", &name, &uid, &host, &entry)
                    .await
            }
        })
        .await?
    }

    /// Awaits `transfer`, writing live progress every `progress_interval`.
    async fn with_progress<T, F, Fut>(
        &self,
        transfer: impl std::future::Future<Output = Result<T, TransferError>>,
        progress: &HostProgress,
        write: F,
    ) -> Result<T, HostFailure>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), crate::status::StatusError>>,
    {
        tokio::pin!(transfer);
        let mut tick = tokio::time::interval(self.progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                r = &mut transfer => return r.map_err(HostFailure::from),
                _ = tick.tick() => {
                    self.metrics.bytes_per_second.set(progress.bytes_per_sec() as i64);
                    if let Err(e) = write().await {
                        tracing::debug!(error = %e, "progress write failed");
                    }
                }
            }
        }
    }

    /// Handles one observed `RestoreSession` (also called when a held pod
    /// of it appears on this node).
    pub async fn handle_restore_session(
        self: &Arc<Self>,
        rs: RestoreSession,
    ) -> Result<(), AgentError> {
        if matches!(
            rs.status.as_ref().and_then(|s| s.phase),
            Some(Phase::Succeeded | Phase::Failed | Phase::Skipped)
        ) {
            return Ok(());
        }
        let ns = rs.namespace().unwrap_or_default();
        let session = rs.name_any();
        let uid = rs.uid().unwrap_or_default();
        let tref = rs.spec.target.target_ref.clone();
        let kind = target_kind(&tref)?;
        let pods = self.pods_for(&ns, kind).await?;
        let op = Op::Restore { session: &session };
        let owned: Vec<(String, Pod)> = owned_hosts(&self.node, kind, &tref.name, op, &pods)
            .into_iter()
            .map(|o| (o.host, o.pod.clone()))
            .collect();
        let obj = serde_json::to_value(&rs).unwrap_or_default();
        for (host, pod) in &owned {
            let prior = crate::status::host_phase(&obj, host);
            if matches!(prior.as_deref(), Some("Succeeded" | "Failed")) {
                continue;
            }
            if !self.claim(&uid, host) {
                continue;
            }
            let agent = self.clone();
            let (rs, host, pod, uid) = (rs.clone(), host.clone(), pod.clone(), uid.clone());
            tokio::spawn(async move {
                agent
                    .restore_host(&rs, &host, &pod, prior.as_deref() == Some("Running"))
                    .await;
                agent.release(&uid, &host);
            });
        }
        // Other held replicas of a single-host target on this node follow host-0.
        if !kind.is_multi_host()
            && let Some(phase) = crate::status::host_phase(&obj, api::host::HOST_0)
            && (phase == "Succeeded" || phase == "Failed")
        {
            for p in pods.iter().filter(|p| {
                belongs_to(p, kind, &tref.name)
                    && eligible(p, op)
                    && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&self.node)
                    && !owned.iter().any(|(_, o)| o.metadata.uid == p.metadata.uid)
            }) {
                let outcome = if phase == "Succeeded" {
                    Outcome::Done
                } else {
                    Outcome::Failed("the restore of host-0 (another replica) failed; see the RestoreSession status".into())
                };
                if let Err(e) = write_marker(&self.kubelet, p, &uid, &outcome) {
                    tracing::warn!(error = %e, pod = %p.name_any(), "restore marker");
                }
            }
        }
        Ok(())
    }

    async fn restore_host(
        self: &Arc<Self>,
        rs: &RestoreSession,
        host: &str,
        pod: &Pod,
        stale: bool,
    ) {
        let ns = rs.namespace().unwrap_or_default();
        let name = rs.name_any();
        let uid = rs.uid().unwrap_or_default();
        let api: Api<RestoreSession> = Api::namespaced(self.client.clone(), &ns);
        let tref = &rs.spec.target.target_ref;
        let target_label = format!("{}/{}", tref.kind, tref.name);
        let write = |entry: api::HostRestoreStats| {
            let api = api.clone();
            let (name, uid, host) = (name.clone(), uid.clone(), host.to_string());
            async move {
                if let Err(e) = self
                    .write_host_entry(&api, "RestoreSession", &name, &uid, &host, &entry)
                    .await
                {
                    tracing::warn!(error = %e, host, "status write failed");
                }
            }
        };
        let plan = api::rules::plan_for_host(host, rs.spec.rules.as_deref());
        let result: Result<crate::work::HostRestoreReport, HostFailure> = if stale {
            Err(HostFailure::Kube("the node agent restarted while this host was being restored; the volume may hold a partial restore; delete the pod to retry".into()))
        } else if let Some(plan) = plan {
            write(api::HostRestoreStats {
                hostname: host.into(),
                phase: Some(Phase::Running),
                ..Default::default()
            })
            .await;
            self.event(
                rs,
                false,
                reason::RESTORE_STARTED,
                format!(
                    "{host}: restoring {}'s data into pod {}",
                    plan.source_host,
                    pod.name_any()
                ),
            )
            .await;
            let cancel = self.pod_transfer(pod, &uid, host);
            let r = self
                .run_restore_transfer(rs, host, pod, plan, cancel.clone())
                .await;
            self.pod_transfer_done(pod, &uid, host);
            if cancel.is_cancelled() {
                Err(HostFailure::PodDeleted {
                    pod: format!("{ns}/{}", pod.name_any()),
                    op: "restored",
                })
            } else {
                r
            }
        } else {
            // no rule matches: nothing is restored, the pod may start
            Ok(crate::work::HostRestoreReport {
                host: host.into(),
                source_host: String::new(),
                restored: vec![],
                duration: Duration::ZERO,
                error: None,
            })
        };
        let (entry, failure) = match &result {
            Ok(r) => {
                self.metrics.record_restore(&ns, &target_label, r);
                (r.to_status(), r.error.as_ref().map(|e| e.to_string()))
            }
            Err(f) => {
                self.metrics.record_failure("restore", f.reason());
                (
                    api::HostRestoreStats {
                        hostname: host.into(),
                        phase: Some(Phase::Failed),
                        error: Some(f.to_string()),
                        ..Default::default()
                    },
                    Some(f.to_string()),
                )
            }
        };
        // The marker first: the pod must not wait on a status write.
        let outcome = match &failure {
            None => Outcome::Done,
            Some(m) => Outcome::Failed(m.clone()),
        };
        if let Err(e) = write_marker(&self.kubelet, pod, &uid, &outcome) {
            tracing::warn!(error = %e, host, "restore marker could not be written");
        }
        write(entry).await;
        match failure {
            None => {
                self.event(
                    rs,
                    false,
                    reason::RESTORE_SUCCEEDED,
                    format!("{host}: restore succeeded"),
                )
                .await
            }
            Some(m) => {
                self.event(rs, true, reason::RESTORE_FAILED, format!("{host}: {m}"))
                    .await
            }
        }
    }

    async fn run_restore_transfer(
        self: &Arc<Self>,
        rs: &RestoreSession,
        host: &str,
        pod: &Pod,
        plan: api::rules::RestorePlan,
        cancel: CancelToken,
    ) -> Result<crate::work::HostRestoreReport, HostFailure> {
        let ns = rs.namespace().unwrap_or_default();
        let repo_name = rs
            .spec
            .repository
            .as_ref()
            .map(|r| r.name.clone())
            .ok_or_else(|| {
                HostFailure::Kube("the RestoreSession names no spec.repository".into())
            })?;
        let access = self.repo_access(&ns, &repo_name).await?;
        let pvs = self.claims_to_pvs(&ns, pod).await;
        let mounts = mounts_for(pod, rs.spec.target.volume_mounts.as_ref());
        let priority = priority_of(rs.spec.runtime_settings.as_ref());
        let settings = TransferSettings {
            priority,
            threads: 0,
            cancel,
            ..Default::default()
        };
        let kubelet = self.kubelet.clone();
        let progress = HostProgress::default();
        let (pod2, host2, progress2) = (pod.clone(), host.to_string(), progress.clone());
        let transfer = self.transfers.run("hoard-restore", priority, move || {
            let repo = access.open()?;
            let mut vols = Vec::new();
            for (vol, path) in mounts {
                let dir = kubelet.open_volume(&pod2, &vol, false, &|c| pvs.get(c).cloned())?;
                vols.push(HostVolume {
                    volume: vol,
                    snapshot_path: path,
                    dir,
                });
            }
            Ok::<_, HostFailure>(run_restore_host(
                &repo, &host2, &plan, &vols, &settings, &progress2,
            ))
        });
        let api: Api<RestoreSession> = Api::namespaced(self.client.clone(), &ns);
        let name = rs.name_any();
        self.with_progress(transfer, &progress, || {
            let api = api.clone();
            let entry = api::HostRestoreStats {
                hostname: host.into(),
                phase: Some(Phase::Running),
                progress: Some(progress.to_api()),
                ..Default::default()
            };
            let (name, host) = (name.clone(), host.to_string());
            let uid = rs.uid().unwrap_or_default();
            async move {
                self.write_host_entry(&api, "RestoreSession", &name, &uid, &host, &entry)
                    .await
            }
        })
        .await?
    }

    /// What the pod watch does with a pod of this node that was added or
    /// changed: held for a restore → handle its session; running → handle
    /// the `Recovery`s of its namespace that waited for a pod.
    pub fn on_pod(self: Arc<Self>, p: Pod) {
        let ns = p.namespace().unwrap_or_default();
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            let waiting: Vec<String> = self
                .waiting_recoveries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(n, _)| *n == ns)
                .map(|(_, name)| name.clone())
                .collect();
            if !waiting.is_empty() {
                let agent = self.clone();
                let ns = ns.clone();
                tokio::spawn(async move {
                    let api: Api<api::Recovery> = Api::namespaced(agent.client.clone(), &ns);
                    for name in waiting {
                        match api.get_opt(&name).await {
                            Ok(Some(rec)) => {
                                if let Err(e) = agent.handle_recovery(rec).await {
                                    tracing::warn!(error = %e, "recovery");
                                }
                            }
                            Ok(None) => {
                                agent
                                    .waiting_recoveries
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&(ns.clone(), name));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, recovery = %name, "reading Recovery")
                            }
                        }
                    }
                });
            }
        }
        let Some(session) = p
            .annotations()
            .get(keys::ANNOTATION_RESTORE_SESSION)
            .cloned()
        else {
            return;
        };
        tokio::spawn(async move {
            let api: Api<RestoreSession> = Api::namespaced(self.client.clone(), &ns);
            match api.get_opt(&session).await {
                Ok(Some(rs)) => {
                    if let Err(e) = self.handle_restore_session(rs).await {
                        tracing::warn!(error = %e, "restore session");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, %session, "reading RestoreSession"),
            }
        });
    }

    /// Runs the watches until one of them ends (which is an error).
    pub async fn watch(
        self: Arc<Self>,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<()> {
        let cfg = watcher::Config::default();
        let bs = watcher(Api::<BackupSession>::all(self.client.clone()), cfg.clone());
        let rs = watcher(Api::<RestoreSession>::all(self.client.clone()), cfg.clone());
        let rec = watcher(Api::<api::Recovery>::all(self.client.clone()), cfg.clone());
        let pods = watcher(
            Api::<Pod>::all(self.client.clone()),
            cfg.fields(&format!("spec.nodeName={}", self.node)),
        );
        enum Ev {
            Backup(Box<watcher::Event<BackupSession>>),
            Restore(Box<watcher::Event<RestoreSession>>),
            Pod(Box<watcher::Event<Pod>>),
            Recovery(Box<watcher::Event<api::Recovery>>),
        }
        let mut all = futures::stream::select(
            futures::stream::select(
                bs.map_ok(|e| Ev::Backup(Box::new(e))),
                rs.map_ok(|e| Ev::Restore(Box::new(e))),
            ),
            futures::stream::select(
                pods.map_ok(|e| Ev::Pod(Box::new(e))),
                rec.map_ok(|e| Ev::Recovery(Box::new(e))),
            ),
        )
        .boxed();
        let mut synced = 0u8;
        while let Some(ev) = all.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    // the watcher retries by itself; say so and continue
                    tracing::warn!(error = %e, "watch error");
                    continue;
                }
            };
            match ev {
                Ev::Backup(e) => match *e {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                        let a = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = a.handle_backup_session(o).await {
                                tracing::warn!(error = %e, "backup session");
                            }
                        });
                    }
                    watcher::Event::InitDone => synced += 1,
                    _ => {}
                },
                Ev::Restore(e) => match *e {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                        let a = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = a.handle_restore_session(o).await {
                                tracing::warn!(error = %e, "restore session");
                            }
                        });
                    }
                    watcher::Event::InitDone => synced += 1,
                    _ => {}
                },
                Ev::Recovery(e) => match *e {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                        let a = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = a.handle_recovery(o).await {
                                tracing::warn!(error = %e, "recovery");
                            }
                        });
                    }
                    watcher::Event::InitDone => synced += 1,
                    _ => {}
                },
                Ev::Pod(e) => match *e {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        if p.metadata.deletion_timestamp.is_some() {
                            self.pod_gone(&p.uid().unwrap_or_default());
                        }
                        self.clone().on_pod(p);
                    }
                    watcher::Event::Delete(p) => self.pod_gone(&p.uid().unwrap_or_default()),
                    watcher::Event::InitDone => synced += 1,
                    _ => {}
                },
            }
            if synced >= 4 && !ready.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(node = %self.node, "watches synced; agent ready");
            }
        }
        anyhow::bail!("the watch streams ended")
    }
}
