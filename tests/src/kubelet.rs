//! The suite's stand-in for the scheduler and the kubelet, for clusters that
//! have neither (an API server and a controller manager only), the way kwok
//! does it, for the pods of one test namespace only.
//!
//! Data flow per pod of the namespace:
//!
//! ```text
//! watch pods ─> unbound, schedulerName hoard-e2e: wait until its claims are
//!   │           Bound (kube-controller-manager's PV binder) → pick a test node
//!   │           (a DaemonSet pod's node affinity, a local PV's node, else
//!   │           round robin) → create its volume directories → POST
//!   │           pods/<name>/binding
//!   ├─> bound to a test node, first seen: create
//!   │   <kubelet-root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<vol>,
//!   │   kubernetes.io~local-volume/<pv> for a claim bound to a local PV
//!   │   (filled from the PV's path on the node: the "mount"),
//!   │   kubernetes.io~csi/<pv>/mount for any other PV →
//!   │   hoard-restore-wait first? status: init running; run the real
//!   │     restore-wait with --status-dir = its emptyDir on the node; record
//!   │     what the data volumes held when it exited; status: init
//!   │     terminated(exit code), then Running when it was 0 (Failed when it
//!   │     was not and the pod does not restart)
//!   │   else status: Running, Ready
//!   └─> deletionTimestamp set (bound to a test node): stop its containers
//!       (restore-wait is killed), write local volumes back to their PV's
//!       path (the "unmount"), DELETE with gracePeriodSeconds=0 and the
//!       pod's UID as precondition (what the kubelet does once the
//!       containers are gone), remove its directory.
//! ```
//!
//! Without the last step a pod with a grace period (Hoard's worker pods have
//! 5 s) would stay `Terminating` forever: the API server removes a bound pod
//! only when its kubelet confirms with a zero grace period; pods with
//! `terminationGracePeriodSeconds: 0` (the suite's workloads) are removed at
//! once. A PVC stays Pending without a provisioner, so the suite creates
//! each PV itself, pre-bound (`claimRef` on the PV, `volumeName` on the
//! claim), and the controller manager's PV binder binds the pair.
//!
//! The Node objects' Lease and Ready condition are renewed meanwhile, so the
//! node lifecycle controller never marks them unreachable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Container, Node, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::FIELD_MANAGER;
use crate::env::Env;
use crate::workloads::SCHEDULER;

/// How often the fake nodes' Lease and Ready condition are renewed; the node
/// lifecycle controller's grace period is 40 s (50 s since v1.32).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long a pod waits for its claims to be bound before it is scheduled;
/// the PV binder binds a pre-bound pair within a second or two.
const CLAIM_BOUND: Duration = Duration::from_secs(60);

/// What a held pod's volumes contained when its `restore-wait` exited.
#[derive(Debug, Clone)]
pub struct HoldRecord {
    /// `--session-uid` of the pod's `restore-wait`.
    pub session_uid: String,
    pub exit_code: i32,
    /// volume name → (relative file path → content), read at exit time.
    pub volumes: BTreeMap<String, BTreeMap<String, String>>,
}

/// A running fake kubelet (one per test namespace).
pub struct FakeKubelet {
    kubelet: Arc<Kubelet>,
    task: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
}

impl FakeKubelet {
    pub fn start(client: Client, env: Arc<Env>, ns: String) -> FakeKubelet {
        let k = Arc::new(Kubelet {
            client: client.clone(),
            env: env.clone(),
            ns,
            next: AtomicUsize::new(0),
            bound: Mutex::new(HashSet::new()),
            running: Mutex::new(HashMap::new()),
            stopped: Mutex::new(HashSet::new()),
            holds: Mutex::new(BTreeMap::new()),
        });
        let task = tokio::spawn(k.clone().run());
        let nodes: Vec<String> = env.nodes.iter().map(|n| n.name.clone()).collect();
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                for n in &nodes {
                    if let Err(e) = heartbeat(&client, n).await {
                        eprintln!("fake kubelet: heartbeat of node {n} failed: {e:#}");
                    }
                }
            }
        });
        FakeKubelet {
            kubelet: k,
            task,
            heartbeat,
        }
    }

    /// What pod `name`'s `restore-wait` saw, once it has exited.
    pub fn hold_record(&self, pod: &str) -> Option<HoldRecord> {
        self.kubelet.holds.lock().ok()?.get(pod).cloned()
    }

    /// The pods (name, record) whose `restore-wait` waited for session `uid`
    /// and has exited.
    pub fn hold_records_of(&self, session_uid: &str) -> Vec<(String, HoldRecord)> {
        let Ok(holds) = self.kubelet.holds.lock() else {
            return Vec::new();
        };
        holds
            .iter()
            .filter(|(_, r)| r.session_uid == session_uid)
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect()
    }

    /// Stops watching and kills what runs (restore-wait processes).
    pub fn stop(&self) {
        self.task.abort();
        self.heartbeat.abort();
        if let Ok(mut running) = self.kubelet.running.lock() {
            for (_, t) in running.drain() {
                t.abort();
            }
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Renews node `name`'s Lease in `kube-node-lease` and its Ready condition.
pub async fn heartbeat(client: &Client, name: &str) -> anyhow::Result<()> {
    let now = Timestamp::now();
    Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease_body(name, now)),
        )
        .await
        .with_context(|| format!("cannot renew the Lease of node {name}"))?;
    Api::<Node>::all(client.clone())
        .patch_status(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&node_status_body(now)),
        )
        .await
        .with_context(|| format!("cannot report node {name} Ready"))?;
    Ok(())
}

/// The node's Lease in `kube-node-lease`, renewed at `now`.
fn lease_body(name: &str, now: Timestamp) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": name, "namespace": "kube-node-lease" },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": MicroTime(now),
        },
    })
}

/// A Ready node's status, as a kubelet reports it (merge patch of
/// `nodes/status`).
fn node_status_body(now: Timestamp) -> Value {
    let cond = |t: &str, s: &str, reason: &str| {
        json!({
            "type": t, "status": s, "reason": reason,
            "lastHeartbeatTime": Time(now), "lastTransitionTime": Time(now),
            "message": "hoard e2e fake kubelet",
        })
    };
    json!({
        "status": {
            "capacity": { "cpu": "32", "memory": "64Gi", "pods": "250" },
            "allocatable": { "cpu": "32", "memory": "64Gi", "pods": "250" },
            "conditions": [
                cond("Ready", "True", "KubeletReady"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [{ "type": "InternalIP", "address": "127.0.0.1" }],
        }
    })
}

/// The body of `POST pods/<name>/binding`: the API server requires
/// `metadata.name` to be the pod's name.
fn binding_body(ns: &str, pod: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": { "name": pod, "namespace": ns },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node },
    })
}

/// `<kubelet-root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<volume>` of
/// `pod` on the test node it is bound to.
pub fn volume_dir(env: &Env, pod: &Pod, volume: &str) -> anyhow::Result<PathBuf> {
    Ok(pod_dir(env, pod)?
        .join("volumes/kubernetes.io~empty-dir")
        .join(volume))
}

fn pod_dir(env: &Env, pod: &Pod) -> anyhow::Result<PathBuf> {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .with_context(|| format!("pod {} is not bound to a node", pod.name_any()))?;
    let root = &env
        .nodes
        .iter()
        .find(|n| n.name == node)
        .with_context(|| format!("pod {} runs on {node}, not a test node", pod.name_any()))?
        .kubelet_root;
    let uid = pod.uid().context("pod without uid")?;
    Ok(root.join("pods").join(uid))
}

/// Every regular file below `dir`: relative path → content (lossy UTF-8).
pub fn read_tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(base, &p, out);
            } else if ft.is_file() {
                let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
                let content = std::fs::read(&p).unwrap_or_default();
                out.insert(rel, String::from_utf8_lossy(&content).into_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Makes `to` hold exactly what `from` holds: directories, regular files
/// (with their permissions) and symbolic links (as links).
fn mirror(from: &Path, to: &Path) -> std::io::Result<()> {
    fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(from)? {
            let e = e?;
            let ft = e.file_type()?;
            let dst = to.join(e.file_name());
            if ft.is_dir() {
                std::fs::create_dir(&dst)?;
                copy_tree(&e.path(), &dst)?;
            } else if ft.is_file() {
                std::fs::copy(e.path(), &dst)?;
            } else if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dst)?;
            }
        }
        Ok(())
    }
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(to)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    copy_tree(from, to)
}

async fn mirror_async(from: PathBuf, to: PathBuf) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        mirror(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
    })
    .await?
}

fn lock<T>(m: &Mutex<T>) -> anyhow::Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| anyhow::anyhow!("fake kubelet state poisoned by a panic"))
}

/// A pod volume backed by a claim, resolved to its PersistentVolume.
struct ClaimVolume {
    /// The pod's volume name.
    volume: String,
    pv: PersistentVolume,
}

impl ClaimVolume {
    /// Where the kubelet mounts the PV, relative to the pod's directory
    /// (kubelet `pkg/volume` layout, as the agent looks it up).
    fn rel_dir(&self) -> anyhow::Result<String> {
        let name = self.pv.name_any();
        let spec = self.pv.spec.as_ref();
        if spec.and_then(|s| s.local.as_ref()).is_some() {
            Ok(format!("volumes/kubernetes.io~local-volume/{name}"))
        } else if spec.and_then(|s| s.host_path.as_ref()).is_some() {
            anyhow::bail!(
                "PV {name} is a hostPath PV: a kubelet mounts those straight from the host path, \
                 with no directory under the pod's volumes; use a local PV (spec.local) in tests"
            )
        } else {
            Ok(format!("volumes/kubernetes.io~csi/{name}/mount"))
        }
    }

    /// A local PV's directory on the node (`spec.local.path`).
    fn backing(&self) -> Option<PathBuf> {
        self.pv
            .spec
            .as_ref()?
            .local
            .as_ref()
            .map(|l| PathBuf::from(&l.path))
    }

    /// The node a local PV is pinned to (`kubernetes.io/hostname In [x]`).
    fn pinned_node(&self) -> Option<String> {
        let terms = &self
            .pv
            .spec
            .as_ref()?
            .node_affinity
            .as_ref()?
            .required
            .as_ref()?
            .node_selector_terms;
        terms.iter().find_map(|t| {
            t.match_expressions.as_ref()?.iter().find_map(|e| {
                (e.key == "kubernetes.io/hostname" && e.operator == "In")
                    .then(|| e.values.as_ref()?.first().cloned())
                    .flatten()
            })
        })
    }
}

struct Kubelet {
    client: Client,
    env: Arc<Env>,
    ns: String,
    next: AtomicUsize,
    /// Pods (UIDs) being scheduled or bound by this kubelet.
    bound: Mutex<HashSet<String>>,
    /// Pods (UIDs) started, with the task that runs them.
    running: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Pods (UIDs) whose deletion this kubelet completes.
    stopped: Mutex<HashSet<String>>,
    holds: Mutex<BTreeMap<String, HoldRecord>>,
}

impl Kubelet {
    async fn run(self: Arc<Self>) {
        let api = Api::<Pod>::namespaced(self.client.clone(), &self.ns);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        loop {
            let r = match events.try_next().await {
                Ok(Some(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                    self.on_pod(pod)
                }
                Ok(Some(watcher::Event::Delete(pod))) => self.on_gone(&pod),
                Ok(Some(watcher::Event::Init | watcher::Event::InitDone)) => Ok(()),
                Ok(None) => return,
                Err(e) => Err(anyhow::anyhow!("watch error: {e}")),
            };
            if let Err(e) = r {
                eprintln!("fake kubelet ({}): {e:#}", self.ns);
            }
        }
    }

    /// A pod removed from the API server without this kubelet (deleted
    /// before it was bound, or force-deleted): what still runs for it is
    /// killed, so it never reports on a pod of the same name created later.
    fn on_gone(&self, pod: &Pod) -> anyhow::Result<()> {
        let uid = pod.uid().context("pod without uid")?;
        if let Some(task) = lock(&self.running)?.remove(&uid) {
            task.abort();
        }
        Ok(())
    }

    fn is_test_node(&self, node: &str) -> bool {
        self.env.nodes.iter().any(|n| n.name == node)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn on_pod(self: &Arc<Self>, pod: Pod) -> anyhow::Result<()> {
        let uid = pod.uid().context("pod without uid")?;
        let name = pod.name_any();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let on_test_node = node.as_deref().is_some_and(|n| self.is_test_node(n));
        if pod.metadata.deletion_timestamp.is_some() {
            if on_test_node && lock(&self.stopped)?.insert(uid) {
                let k = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = k.stop_pod(&pod).await {
                        eprintln!("fake kubelet: cannot finish deleting pod {name}: {e:#}");
                    }
                });
            }
            return Ok(());
        }
        match node {
            None => {
                // Only pods that asked for this scheduler: a cluster's own
                // scheduler (if any) keeps the others.
                let ours =
                    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(SCHEDULER);
                if ours && lock(&self.bound)?.insert(uid.clone()) {
                    let k = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = k.schedule(&pod).await {
                            eprintln!("fake kubelet: cannot schedule pod {name}: {e:#}");
                            // The pod's next event tries again.
                            if let Ok(mut b) = lock(&k.bound) {
                                b.remove(&uid);
                            }
                        }
                    });
                }
            }
            Some(_) if on_test_node => {
                let mut running = lock(&self.running)?;
                if !running.contains_key(&uid) {
                    let k = self.clone();
                    let task = tokio::spawn(async move {
                        if let Err(e) = k.start_pod(pod).await {
                            eprintln!("fake kubelet: pod {name}: {e:#}");
                        }
                    });
                    running.insert(uid, task);
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The pod's claims, resolved to their PVs. `wait`: until each claim is
    /// Bound (as the scheduler waits before it places a pod).
    async fn claims(&self, pod: &Pod, wait: bool) -> anyhow::Result<Vec<ClaimVolume>> {
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &self.ns);
        let pvs = Api::<PersistentVolume>::all(self.client.clone());
        let mut out = Vec::new();
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone());
        for v in volumes.into_iter().flatten() {
            let Some(c) = &v.persistent_volume_claim else {
                continue;
            };
            let claim = &c.claim_name;
            let pvc = if wait {
                crate::wait::object(
                    pvcs.clone(),
                    claim,
                    &format!(
                        "claim {claim} of pod {} to be Bound (kube-controller-manager's PV binder binds a claim to the PV its spec.volumeName names)",
                        pod.name_any()
                    ),
                    CLAIM_BOUND,
                    |c: &PersistentVolumeClaim| {
                        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                    },
                )
                .await?
            } else {
                pvcs.get(claim)
                    .await
                    .with_context(|| format!("claim {claim} of pod {}", pod.name_any()))?
            };
            let pv_name = pvc
                .spec
                .and_then(|s| s.volume_name)
                .with_context(|| format!("claim {claim} is not bound to a PV"))?;
            let pv = pvs
                .get(&pv_name)
                .await
                .with_context(|| format!("PV {pv_name} of claim {claim}"))?;
            out.push(ClaimVolume {
                volume: v.name.clone(),
                pv,
            });
        }
        Ok(out)
    }

    /// Plays the scheduler for one pod: claims bound, a node chosen, the
    /// volume directories made, then the binding.
    async fn schedule(&self, pod: &Pod) -> anyhow::Result<()> {
        let name = pod.name_any();
        let claims = self.claims(pod, true).await?;
        let node = self.choose_node(pod, &claims);
        anyhow::ensure!(
            self.is_test_node(&node),
            "pod {name} is pinned to {node}, which is not a test node"
        );
        // The volume directories exist before the pod is bound, so an agent
        // that reacts to the binding never finds them missing.
        self.prepare_volumes(pod, &node, &claims).await?;
        // The API server sets the PodScheduled condition itself.
        let binding = binding_body(&self.ns, &name, &node);
        self.pods()
            .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding)
            .await
            .with_context(|| format!("POST pods/{name}/binding to {node}"))?;
        Ok(())
    }

    fn choose_node(&self, pod: &Pod, claims: &[ClaimVolume]) -> String {
        let spec = pod.spec.as_ref();
        // DaemonSet pods name their node in a required node affinity.
        let pinned = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .and_then(|r| {
                r.node_selector_terms.iter().find_map(|t| {
                    t.match_fields.as_ref()?.iter().find_map(|f| {
                        (f.key == "metadata.name")
                            .then(|| f.values.as_ref()?.first().cloned())
                            .flatten()
                    })
                })
            })
            .or_else(|| {
                spec.and_then(|s| s.node_selector.as_ref())
                    .and_then(|s| s.get("kubernetes.io/hostname").cloned())
            })
            // A local PV is on one node; the pod goes there (the fake
            // nodes' hostname label is their name).
            .or_else(|| claims.iter().find_map(ClaimVolume::pinned_node));
        pinned.unwrap_or_else(|| {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.env.nodes.len().max(1);
            self.env
                .nodes
                .get(i)
                .map(|n| n.name.clone())
                .unwrap_or_default()
        })
    }

    /// Creates the pod's volume directories under `node`'s kubelet root, as
    /// the kubelet lays them out; a local PV's directory is filled from the
    /// PV's path when it is created (the mount). Returns the data volumes
    /// (all but Hoard's status volume) and their directories.
    async fn prepare_volumes(
        &self,
        pod: &Pod,
        node: &str,
        claims: &[ClaimVolume],
    ) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let root = &self
            .env
            .nodes
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("{node} is not a test node"))?
            .kubelet_root;
        let dir = root
            .join("pods")
            .join(pod.uid().context("pod without uid")?);
        let spec = pod.spec.clone().unwrap_or_default();
        let mut data_volumes = Vec::new();
        for v in spec.volumes.iter().flatten() {
            let (rel, backing) = if v.empty_dir.is_some() {
                (format!("volumes/kubernetes.io~empty-dir/{}", v.name), None)
            } else if v.persistent_volume_claim.is_some() {
                let c = claims
                    .iter()
                    .find(|c| c.volume == v.name)
                    .with_context(|| {
                        format!(
                            "volume {} of pod {} has no bound claim",
                            v.name,
                            pod.name_any()
                        )
                    })?;
                (c.rel_dir()?, c.backing())
            } else {
                continue;
            };
            let path = dir.join(&rel);
            if !path.exists() {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                if let Some(from) = backing.filter(|b| b.is_dir()) {
                    mirror_async(from, path.clone()).await?;
                }
            }
            if v.name != api::keys::RESTORE_STATUS_VOLUME {
                data_volumes.push((v.name.clone(), path));
            }
        }
        Ok(data_volumes)
    }

    async fn start_pod(self: Arc<Self>, pod: Pod) -> anyhow::Result<()> {
        let dir = pod_dir(&self.env, &pod)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let node = spec.node_name.clone().unwrap_or_default();
        let claims = self.claims(&pod, true).await?;
        let data_volumes = self.prepare_volumes(&pod, &node, &claims).await?;
        let inits = spec.init_containers.clone().unwrap_or_default();
        let held = inits
            .first()
            .filter(|c| c.name == api::keys::RESTORE_WAIT_CONTAINER)
            .cloned();
        if let Some(init) = held {
            self.report(&pod, Stage::InitRunning).await?;
            let (session_uid, code) = self.run_restore_wait(&pod, &init, &dir).await?;
            let volumes = data_volumes
                .iter()
                .map(|(n, p)| (n.clone(), read_tree(p)))
                .collect();
            lock(&self.holds)?.insert(
                pod.name_any(),
                HoldRecord {
                    session_uid,
                    exit_code: code,
                    volumes,
                },
            );
            if code != 0 {
                return self.report(&pod, Stage::InitFailed(code)).await;
            }
        }
        self.report(&pod, Stage::Running).await
    }

    /// Completes the deletion of a pod bound to a test node: what runs is
    /// killed, local volumes are written back to their PV's path, and the
    /// pod is deleted with a zero grace period, as a kubelet confirms it.
    async fn stop_pod(&self, pod: &Pod) -> anyhow::Result<()> {
        let name = pod.name_any();
        let uid = pod.uid().context("pod without uid")?;
        if let Some(task) = lock(&self.running)?.remove(&uid) {
            task.abort();
        }
        let dir = pod_dir(&self.env, pod)?;
        match self.claims(pod, false).await {
            Ok(claims) => {
                for c in claims {
                    let (Some(to), Ok(rel)) = (c.backing(), c.rel_dir()) else {
                        continue;
                    };
                    let from = dir.join(rel);
                    if from.is_dir() {
                        mirror_async(from, to).await?;
                    }
                }
            }
            Err(e) => {
                eprintln!("fake kubelet: pod {name}: {e:#}; its local volumes are not written back")
            }
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.pods().delete(&name, &dp).await {
            Ok(_) => {}
            // Gone already, or a new pod of the same name.
            Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => {}
            Err(e) => {
                return Err(e).with_context(|| format!("DELETE pod {name} gracePeriodSeconds=0"));
            }
        }
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        Ok(())
    }

    /// Runs the real `restore-wait` with the init-container's arguments, its
    /// status directory being the emptyDir on the node. Returns its session
    /// UID and exit code.
    async fn run_restore_wait(
        &self,
        pod: &Pod,
        c: &Container,
        dir: &Path,
    ) -> anyhow::Result<(String, i32)> {
        let args = c.args.clone().unwrap_or_default();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let uid = value("--session-uid").with_context(|| {
            format!(
                "the {} init-container of pod {} has no --session-uid: {args:?}",
                c.name,
                pod.name_any()
            )
        })?;
        let deadline = value("--deadline-seconds").unwrap_or_else(|| "600".into());
        let status_dir = dir.join(api::keys::RESTORE_STATUS_POD_SUBDIR);
        std::fs::create_dir_all(&status_dir)?;
        let st = tokio::process::Command::new(self.env.bin("restore-wait"))
            .arg("--session-uid")
            .arg(&uid)
            .arg("--status-dir")
            .arg(&status_dir)
            .arg("--deadline-seconds")
            .arg(&deadline)
            .arg("--poll-interval-ms")
            .arg("200")
            .arg("--termination-log")
            .arg(dir.join("restore-wait.termination-log"))
            .kill_on_drop(true)
            .status()
            .await
            .context("cannot run restore-wait")?;
        Ok((uid, st.code().unwrap_or(-1)))
    }

    /// Reports the pod's containers through the status subresource.
    async fn report(&self, pod: &Pod, stage: Stage) -> anyhow::Result<()> {
        let spec = pod.spec.clone().unwrap_or_default();
        let patch = pod_status_body(&spec, stage, Timestamp::now());
        self.pods()
            .patch_status(
                &pod.name_any(),
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("cannot report the status of pod {}", pod.name_any()))?;
        Ok(())
    }
}

/// The merge patch of `pods/status` for a pod of `spec` at `stage`, with the
/// fields a kubelet sets. Validation of `pods/status` only forbids a
/// terminated container of a pod that does not restart to run again, which
/// the stages never do (init running → terminated; app waiting → running).
fn pod_status_body(spec: &PodSpec, stage: Stage, now: Timestamp) -> Value {
    let now = json!(Time(now));
    let status = |c: &Container, state: Value, ready: bool| {
        json!({
            "name": c.name,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": "",
            "ready": ready,
            "started": state.get("running").is_some(),
            "restartCount": 0,
            "state": state,
        })
    };
    let running = json!({ "running": { "startedAt": now } });
    let done = |code: i32| {
        json!({ "terminated": {
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": now, "finishedAt": now,
        } })
    };
    let waiting = |reason: &str| json!({ "waiting": { "reason": reason } });
    let inits = spec.init_containers.clone().unwrap_or_default();
    let first_init = |st: Value| -> Vec<Value> {
        inits
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = if i == 0 {
                    st.clone()
                } else {
                    waiting("PodInitializing")
                };
                status(c, s, false)
            })
            .collect()
    };
    // A pod that does not restart its containers fails with its first
    // failed init-container; others would retry it (CrashLoopBackOff) and
    // stay Pending.
    let restarts = spec.restart_policy.as_deref() != Some("Never");
    let (phase, init_states, app_state, ready): (&str, Vec<Value>, Value, bool) = match stage {
        Stage::InitRunning => (
            "Pending",
            first_init(running.clone()),
            waiting("PodInitializing"),
            false,
        ),
        Stage::InitFailed(code) => (
            if restarts { "Pending" } else { "Failed" },
            first_init(done(code)),
            waiting("PodInitializing"),
            false,
        ),
        Stage::Running => (
            "Running",
            inits.iter().map(|c| status(c, done(0), false)).collect(),
            running.clone(),
            true,
        ),
    };
    let cond = |t: &str, ok: bool| json!({ "type": t, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now });
    json!({ "status": {
        "phase": phase,
        "startTime": now,
        "conditions": [
            cond("PodScheduled", true),
            cond("Initialized", matches!(stage, Stage::Running)),
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ],
        "initContainerStatuses": init_states,
        "containerStatuses": spec.containers.iter().map(|c| status(c, app_state.clone(), ready)).collect::<Vec<_>>(),
    } })
}

#[derive(Clone, Copy)]
enum Stage {
    InitRunning,
    InitFailed(i32),
    Running,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unmount writes a restore back to the PV's path: files the pod's
    /// view lost must go, links stay links.
    #[test]
    fn mirror_makes_the_target_hold_exactly_the_source() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("from"), d.path().join("to"));
        std::fs::create_dir_all(from.join("a/b")).unwrap();
        std::fs::write(from.join("a/b/f.txt"), "new").unwrap();
        std::os::unix::fs::symlink("a/b/f.txt", from.join("link")).unwrap();
        std::fs::create_dir_all(to.join("stale/dir")).unwrap();
        std::fs::write(to.join("stale/dir/old.txt"), "old").unwrap();
        std::fs::write(to.join("top.txt"), "old").unwrap();
        mirror(&from, &to).unwrap();
        assert_eq!(
            read_tree(&to),
            BTreeMap::from([("a/b/f.txt".to_string(), "new".to_string())])
        );
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            PathBuf::from("a/b/f.txt")
        );
    }

    fn pv(spec: Value) -> ClaimVolume {
        ClaimVolume {
            volume: "data".into(),
            pv: serde_json::from_value(json!({ "metadata": { "name": "pv-1" }, "spec": spec }))
                .unwrap(),
        }
    }

    /// The directories must be where the agent looks up a claim's PV
    /// (nodeagent volumes.rs): local `<plugin>/<pv>`, CSI `<plugin>/<pv>/mount`.
    #[test]
    fn claims_are_laid_out_as_the_kubelet_does_and_local_pvs_pin_their_node() {
        let local = pv(json!({
            "local": { "path": "/srv/pv-1" },
            "nodeAffinity": { "required": { "nodeSelectorTerms": [{ "matchExpressions": [
                { "key": "kubernetes.io/hostname", "operator": "In", "values": ["node-b"] },
            ] }] } },
        }));
        assert_eq!(
            local.rel_dir().unwrap(),
            "volumes/kubernetes.io~local-volume/pv-1"
        );
        assert_eq!(local.backing(), Some(PathBuf::from("/srv/pv-1")));
        assert_eq!(local.pinned_node().as_deref(), Some("node-b"));
        let csi = pv(json!({ "csi": { "driver": "d", "volumeHandle": "h" } }));
        assert_eq!(
            csi.rel_dir().unwrap(),
            "volumes/kubernetes.io~csi/pv-1/mount"
        );
        assert_eq!((csi.backing(), csi.pinned_node()), (None, None));
        let host = pv(json!({ "hostPath": { "path": "/srv" } }));
        assert!(host.rel_dir().unwrap_err().to_string().contains("local PV"));
    }
}

#[cfg(test)]
mod body_tests {
    use k8s_openapi::api::core::v1::Binding;
    use k8s_openapi::api::core::v1::{NodeStatus, PodStatus};

    use super::*;
    use crate::check_schema;

    fn now() -> Timestamp {
        "2026-11-30T09:00:00Z".parse().unwrap()
    }

    #[test]
    fn heartbeat_and_binding_bodies_are_what_the_schema_reads() {
        check_schema::<Lease>(&lease_body("node-a", now())).unwrap();
        check_schema::<NodeStatus>(&node_status_body(now())["status"]).unwrap();
        let b = binding_body("ns1", "web-0", "node-a");
        check_schema::<Binding>(&b).unwrap();
        assert_eq!(
            b["metadata"]["name"], "web-0",
            "the API server wants the pod's name"
        );
    }

    fn worker_spec(restart: &str) -> PodSpec {
        serde_json::from_value(json!({
            "restartPolicy": restart,
            "initContainers": [
                { "name": api::keys::RESTORE_WAIT_CONTAINER, "image": "hoard:1" },
                { "name": "second", "image": "busybox" },
            ],
            "containers": [{ "name": "app", "image": "busybox" }],
        }))
        .unwrap()
    }

    #[test]
    fn pod_statuses_are_what_the_schema_reads_and_a_kubelet_reports() {
        let phase_ready = |v: &Value| {
            let st: PodStatus = serde_json::from_value(v["status"].clone()).unwrap();
            let ready = st
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status);
            (st.phase.unwrap_or_default(), ready.unwrap_or_default())
        };
        for restart in ["Always", "Never"] {
            let spec = worker_spec(restart);
            for stage in [Stage::InitRunning, Stage::InitFailed(3), Stage::Running] {
                let body = pod_status_body(&spec, stage, now());
                check_schema::<PodStatus>(&body["status"]).unwrap();
            }
        }
        let never = worker_spec("Never");
        let always = worker_spec("Always");
        assert_eq!(
            phase_ready(&pod_status_body(&never, Stage::InitRunning, now())),
            ("Pending".into(), "False".into())
        );
        assert_eq!(
            phase_ready(&pod_status_body(&never, Stage::InitFailed(3), now())),
            ("Failed".into(), "False".into()),
            "a pod that does not restart fails with its init-container"
        );
        assert_eq!(
            phase_ready(&pod_status_body(&always, Stage::InitFailed(3), now())),
            ("Pending".into(), "False".into()),
            "a restarting pod retries its init-container"
        );
        let running = pod_status_body(&never, Stage::Running, now());
        assert_eq!(phase_ready(&running), ("Running".into(), "True".into()));
        // once terminated, an init-container of a Never pod stays terminated
        let inits = running["status"]["initContainerStatuses"]
            .as_array()
            .unwrap();
        assert!(
            inits
                .iter()
                .all(|c| c["state"]["terminated"]["exitCode"] == 0)
        );
    }
}
