//! The suite's stand-in for the scheduler and the kubelet, for clusters that
//! have neither (an API server and a controller manager only), the way kwok
//! does it, for the pods of one test namespace only.
//!
//! Data flow per pod of the namespace:
//!
//! ```text
//! watch pods ─> unbound: pick a test node (a DaemonSet pod's node affinity,
//!   │           else round robin) → POST pods/<name>/binding
//!   └─> bound to a test node, first seen: create
//!       <kubelet-root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<vol>
//!       (kubernetes.io~csi/<pv>/mount for a bound claim) →
//!       hoard-restore-wait first? status: init running; run the real
//!         restore-wait with --status-dir = its emptyDir on the node; record
//!         what the data volumes held when it exited; status: init
//!         terminated(exit code), then Running when it was 0
//!       else status: Running, Ready
//! ```
//!
//! The Node objects' Lease and Ready condition are renewed meanwhile, so the
//! node lifecycle controller never marks them unreachable.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::FIELD_MANAGER;
use crate::env::Env;

/// How often the fake nodes' Lease and Ready condition are renewed; the node
/// lifecycle controller's grace period is 40 s.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// What a held pod's volumes contained when its `restore-wait` exited.
#[derive(Debug, Clone)]
pub struct HoldRecord {
    pub exit_code: i32,
    /// volume name → (relative file path → content), read at exit time.
    pub volumes: BTreeMap<String, BTreeMap<String, String>>,
}

/// A running fake kubelet (one per test namespace).
pub struct FakeKubelet {
    task: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    holds: Arc<Mutex<BTreeMap<String, HoldRecord>>>,
}

impl FakeKubelet {
    pub fn start(client: Client, env: Arc<Env>, ns: String) -> FakeKubelet {
        let holds = Arc::new(Mutex::new(BTreeMap::new()));
        let k = Kubelet {
            client: client.clone(),
            env: env.clone(),
            ns,
            next: AtomicUsize::new(0),
            started: Mutex::new(HashSet::new()),
            bound: Mutex::new(HashSet::new()),
            holds: holds.clone(),
        };
        let task = tokio::spawn(Arc::new(k).run());
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
            task,
            heartbeat,
            holds,
        }
    }

    /// What pod `name`'s `restore-wait` saw, once it has exited.
    pub fn hold_record(&self, pod: &str) -> Option<HoldRecord> {
        self.holds.lock().ok()?.get(pod).cloned()
    }

    pub fn stop(&self) {
        self.task.abort();
        self.heartbeat.abort();
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
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": name, "namespace": "kube-node-lease" },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": MicroTime(now),
        },
    });
    Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .with_context(|| format!("cannot renew the Lease of node {name}"))?;
    let cond = |t: &str, s: &str, reason: &str| {
        json!({
            "type": t, "status": s, "reason": reason,
            "lastHeartbeatTime": Time(now), "lastTransitionTime": Time(now),
            "message": "hoard e2e fake kubelet",
        })
    };
    let status = json!({
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
    });
    Api::<Node>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("cannot report node {name} Ready"))?;
    Ok(())
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

struct Kubelet {
    client: Client,
    env: Arc<Env>,
    ns: String,
    next: AtomicUsize,
    started: Mutex<HashSet<String>>,
    bound: Mutex<HashSet<String>>,
    holds: Arc<Mutex<BTreeMap<String, HoldRecord>>>,
}

impl Kubelet {
    async fn run(self: Arc<Self>) {
        let api = Api::<Pod>::namespaced(self.client.clone(), &self.ns);
        let mut pods = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        loop {
            match pods.try_next().await {
                Ok(Some(pod)) => {
                    if let Err(e) = self.clone().on_pod(pod).await {
                        eprintln!("fake kubelet ({}): {e:#}", self.ns);
                    }
                }
                Ok(None) => return,
                Err(e) => eprintln!("fake kubelet ({}): watch error: {e}", self.ns),
            }
        }
    }

    async fn on_pod(self: Arc<Self>, pod: Pod) -> anyhow::Result<()> {
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let name = pod.name_any();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let Some(node) = node else {
            let uid = pod.uid().context("pod without uid")?;
            let first = self
                .bound
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(uid);
            if !first {
                return Ok(());
            }
            let node = self.choose_node(&pod);
            if !self.env.nodes.iter().any(|n| n.name == node) {
                return Ok(());
            }
            // The volume directories exist before the pod is bound, so an
            // agent that reacts to the binding never finds them missing.
            if let Err(e) = self.prepare_volumes(&pod, &node).await {
                eprintln!("fake kubelet: volumes of pod {name}: {e:#}");
            }
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": { "name": name, "namespace": self.ns },
                "target": { "apiVersion": "v1", "kind": "Node", "name": node },
            });
            let api = Api::<Pod>::namespaced(self.client.clone(), &self.ns);
            // A conflict means it was bound meanwhile; the next event says where.
            if let Err(e) = api
                .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding)
                .await
            {
                eprintln!("fake kubelet: cannot bind pod {name} to {node}: {e}");
                // Let the pod's next event try again.
                if let (Ok(mut b), Some(uid)) = (self.bound.lock(), pod.uid()) {
                    b.remove(&uid);
                }
            }
            return Ok(());
        };
        if !self.env.nodes.iter().any(|n| n.name == node) {
            return Ok(());
        }
        let uid = pod.uid().context("pod without uid")?;
        let first = self
            .started
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(uid);
        if first {
            tokio::spawn(async move {
                if let Err(e) = self.start_pod(pod).await {
                    eprintln!("fake kubelet: pod {name}: {e:#}");
                }
            });
        }
        Ok(())
    }

    fn choose_node(&self, pod: &Pod) -> String {
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
            });
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
    /// the kubelet lays them out; returns the data volumes (all but Hoard's
    /// status volume) and their directories.
    async fn prepare_volumes(
        &self,
        pod: &Pod,
        node: &str,
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
            let rel = if v.empty_dir.is_some() {
                format!("volumes/kubernetes.io~empty-dir/{}", v.name)
            } else if let Some(c) = &v.persistent_volume_claim {
                let pvc = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &self.ns)
                    .get(&c.claim_name)
                    .await
                    .with_context(|| format!("claim {} of pod {}", c.claim_name, pod.name_any()))?;
                let pv = pvc
                    .spec
                    .and_then(|s| s.volume_name)
                    .with_context(|| format!("claim {} is not bound", c.claim_name))?;
                format!("volumes/kubernetes.io~csi/{pv}/mount")
            } else {
                continue;
            };
            std::fs::create_dir_all(dir.join(&rel))?;
            if v.name != api::keys::RESTORE_STATUS_VOLUME {
                data_volumes.push((v.name.clone(), dir.join(rel)));
            }
        }
        Ok(data_volumes)
    }

    async fn start_pod(self: Arc<Self>, pod: Pod) -> anyhow::Result<()> {
        let dir = pod_dir(&self.env, &pod)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let node = spec.node_name.clone().unwrap_or_default();
        let data_volumes = self.prepare_volumes(&pod, &node).await?;
        let inits = spec.init_containers.clone().unwrap_or_default();
        let held = inits
            .first()
            .filter(|c| c.name == api::keys::RESTORE_WAIT_CONTAINER)
            .cloned();
        if let Some(init) = held {
            self.report(&pod, Stage::InitRunning).await?;
            let code = self.run_restore_wait(&pod, &init, &dir).await?;
            let volumes = data_volumes
                .iter()
                .map(|(n, p)| (n.clone(), read_tree(p)))
                .collect();
            if let Ok(mut h) = self.holds.lock() {
                h.insert(
                    pod.name_any(),
                    HoldRecord {
                        exit_code: code,
                        volumes,
                    },
                );
            }
            if code != 0 {
                return self.report(&pod, Stage::InitFailed(code)).await;
            }
        }
        self.report(&pod, Stage::Running).await
    }

    /// Runs the real `restore-wait` with the init-container's arguments, its
    /// status directory being the emptyDir on the node.
    async fn run_restore_wait(&self, pod: &Pod, c: &Container, dir: &Path) -> anyhow::Result<i32> {
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
        Ok(st.code().unwrap_or(-1))
    }

    async fn report(&self, pod: &Pod, stage: Stage) -> anyhow::Result<()> {
        let now = serde_json::to_value(Time(Timestamp::now()))?;
        let spec = pod.spec.clone().unwrap_or_default();
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
        let (phase, init_states, app_state, ready): (&str, Vec<Value>, Value, bool) = match stage {
            Stage::InitRunning => (
                "Pending",
                inits
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let st = if i == 0 {
                            running.clone()
                        } else {
                            waiting("PodInitializing")
                        };
                        status(c, st, false)
                    })
                    .collect(),
                waiting("PodInitializing"),
                false,
            ),
            Stage::InitFailed(code) => (
                "Pending",
                inits
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let st = if i == 0 {
                            done(code)
                        } else {
                            waiting("PodInitializing")
                        };
                        status(c, st, false)
                    })
                    .collect(),
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
        let patch = json!({ "status": {
            "phase": phase,
            "startTime": now,
            "conditions": [
                cond("PodScheduled", true),
                cond("Initialized", ready),
                cond("ContainersReady", ready),
                cond("Ready", ready),
            ],
            "initContainerStatuses": init_states,
            "containerStatuses": spec.containers.iter().map(|c| status(c, app_state.clone(), ready)).collect::<Vec<_>>(),
        } });
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("cannot report the status of pod {}", pod.name_any()))?;
        Ok(())
    }
}

enum Stage {
    InitRunning,
    InitFailed(i32),
    Running,
}
