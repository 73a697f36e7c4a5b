//! `Recovery` (v1alpha1, seed 000): restore one backed-up host of a
//! workload into hostPath volumes on one node.
//!
//! Data flow: a `Recovery` is seen → the source host from the spec
//! (`host-<podOrdinal>`, the DaemonSet's `nodeName`, or `host-0`) → this
//! agent goes on only if it is the one for that host: the agent on
//! `nodeName` for a DaemonSet, else the agent that owns the host for backups
//! (the node of the StatefulSet pod with that ordinal, or of the pod chosen
//! as `host-0`) → status `Running` + event → the backed-up path of each
//! `spec.volumes[].name` from the `BackupConfiguration` (`spec.restic`)
//! target's `volumeMounts` (else the pod's mounts) → on a transfer thread:
//! open the repository, and per volume open its hostPath safely
//! ([`crate::recovery::open_recovery_dir`]) and restore the source host's
//! latest snapshot of that path into it → status per path + phase, event.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use api::host::WorkloadKind;
use api::phase::format_go_duration;
use api::{BackupConfiguration, Phase, Recovery, RecoveryStatus, RestoreStats};

use std::collections::BTreeSet;

use kube::api::ListParams;

use super::{Agent, AgentError, HostFailure, mounts_for};
use crate::owner::{Op, owned_hosts};
use crate::recovery::open_recovery_dir;
use crate::work::{HostProgress, HostVolume, TransferSettings, run_restore_host};

mod reason {
    pub const STARTED: &str = "RecoveryStarted";
    pub const SUCCEEDED: &str = "RecoverySucceeded";
    pub const FAILED: &str = "RecoveryFailed";
}

/// Key under which a Recovery is claimed in the agent's in-flight set.
const CLAIM: &str = "recovery";

/// One volume to recover: name, backed-up path, host path.
struct Item {
    volume: String,
    path: String,
    host_path: Option<String>,
}

impl Agent {
    /// Handles one observed `Recovery`.
    pub async fn handle_recovery(self: &Arc<Self>, rec: Recovery) -> Result<(), AgentError> {
        let prior = rec.status.as_ref().and_then(|s| s.phase);
        if prior.is_some_and(Phase::is_finished) {
            self.recovery_waits(&rec, false);
            return Ok(());
        }
        let ns = rec.namespace().unwrap_or_default();
        let host = rec
            .spec
            .source_host()
            .map_err(|e| AgentError::Invalid(format!("Recovery {ns}/{}: {e}", rec.name_any())))?;
        let kind = WorkloadKind::parse(&rec.spec.workload.kind).ok_or_else(|| {
            AgentError::Invalid(format!(
                "Recovery {ns}/{}: unknown workload kind {:?}",
                rec.name_any(),
                rec.spec.workload.kind
            ))
        })?;
        let pods = self.pods_for(&ns, kind).await?;
        let owned = owned_hosts(&self.node, kind, &rec.spec.workload.name, Op::Backup, &pods);
        let pod = owned.iter().find(|o| o.host == host).map(|o| o.pod.clone());
        let mine = match kind {
            // the node's own data, restored on that node even if the
            // DaemonSet's pod no longer runs there
            WorkloadKind::DaemonSet => rec.spec.node_name.as_deref() == Some(self.node.as_str()),
            _ => pod.is_some(),
        };
        if !mine {
            if kind != WorkloadKind::DaemonSet && prior.is_none_or(|p| p == Phase::Pending) {
                self.note_recovery_waiting(&rec, kind, &host, &pods).await;
            }
            return Ok(());
        }
        self.recovery_waits(&rec, false);
        let uid = rec.uid().unwrap_or_default();
        if !self.claim(&uid, CLAIM) {
            return Ok(());
        }
        let agent = self.clone();
        tokio::spawn(async move {
            if prior == Some(Phase::Running) {
                let msg = "the node agent restarted while this Recovery was running; the hostPath may hold a partial restore; delete and re-create the Recovery to retry";
                agent
                    .finish_recovery(&rec, Phase::Failed, vec![], Some(msg.into()))
                    .await;
            } else {
                agent.run_recovery(&rec, &host, pod.as_ref()).await;
            }
            agent.release(&uid, CLAIM);
        });
        Ok(())
    }

    /// Marks `rec` as waiting for a pod (or not): a waiting Recovery is
    /// handled again when a pod of its namespace starts running here.
    fn recovery_waits(&self, rec: &Recovery, waits: bool) {
        let key = (rec.namespace().unwrap_or_default(), rec.name_any());
        let mut w = self
            .waiting_recoveries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if waits {
            w.insert(key);
        } else {
            w.remove(&key);
        }
    }

    /// No agent can start `rec` when no node runs the pod of its host: the
    /// status says what it waits for (once; guarded by resourceVersion, as
    /// the agent of a node where the pod just started may be writing).
    async fn note_recovery_waiting(
        &self,
        rec: &Recovery,
        kind: WorkloadKind,
        host: &str,
        pods_here: &[Pod],
    ) {
        let ns = rec.namespace().unwrap_or_default();
        let w = &rec.spec.workload;
        // multi-host kinds were listed for this node only
        let all = if kind.is_multi_host() {
            match Api::<Pod>::namespaced(self.client.clone(), &ns)
                .list(&ListParams::default())
                .await
            {
                Ok(l) => l.items,
                Err(e) => {
                    tracing::warn!(error = %e, %ns, "listing pods for a Recovery");
                    return;
                }
            }
        } else {
            pods_here.to_vec()
        };
        let nodes: BTreeSet<&str> = all
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
            .collect();
        if nodes.iter().any(|n| {
            owned_hosts(n, kind, &w.name, Op::Backup, &all)
                .iter()
                .any(|o| o.host == host)
        }) {
            return; // that node's agent runs it
        }
        self.recovery_waits(rec, true);
        let msg = waiting_message(kind, &ns, &w.kind, &w.name, host, &all);
        if rec.status.as_ref().and_then(|s| s.message.as_deref()) == Some(msg.as_str()) {
            return;
        }
        let api: Api<Recovery> = Api::namespaced(self.client.clone(), &ns);
        let name = rec.name_any();
        for _ in 0..crate::status::MAX_ATTEMPTS {
            let cur = match api.get_status(&name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, recovery = %name, "reading Recovery status");
                    return;
                }
            };
            let st = cur.status.clone().unwrap_or_default();
            if st.phase.is_some_and(|p| p != Phase::Pending)
                || st.message.as_deref() == Some(msg.as_str())
            {
                return;
            }
            let patch = json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": cur.resource_version()},
                {"op": "add", "path": "/status", "value": {"phase": "Pending", "message": msg}},
            ]);
            let patch = match serde_json::from_value(patch) {
                Ok(p) => Patch::<()>::Json(p),
                Err(e) => {
                    tracing::warn!(error = %e, "encoding Recovery status");
                    return;
                }
            };
            match api
                .patch_status(&name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => continue,
                Err(e) => {
                    tracing::warn!(error = %e, recovery = %name, "writing Recovery status failed");
                    return;
                }
            }
        }
    }

    async fn write_recovery_status(&self, rec: &Recovery, st: &RecoveryStatus) {
        let api: Api<Recovery> =
            Api::namespaced(self.client.clone(), &rec.namespace().unwrap_or_default());
        let body = json!({ "status": st });
        if let Err(e) = api
            .patch_status(
                &rec.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            tracing::warn!(error = %e, recovery = %rec.name_any(), "writing Recovery status failed");
        }
    }

    async fn finish_recovery(
        &self,
        rec: &Recovery,
        phase: Phase,
        stats: Vec<RestoreStats>,
        message: Option<String>,
    ) {
        let st = RecoveryStatus {
            phase: Some(phase),
            stats: (!stats.is_empty()).then_some(stats),
            message: message.clone(),
        };
        self.write_recovery_status(rec, &st).await;
        if phase == Phase::Succeeded {
            let note = message.unwrap_or_else(|| "recovery succeeded".into());
            self.event(rec, false, reason::SUCCEEDED, note).await;
        } else {
            self.metrics.record_failure("recovery", "failed");
            let note = message.unwrap_or_else(|| "recovery failed".into());
            self.event(rec, true, reason::FAILED, note).await;
        }
    }

    async fn run_recovery(self: &Arc<Self>, rec: &Recovery, host: &str, pod: Option<&Pod>) {
        let ns = rec.namespace().unwrap_or_default();
        self.write_recovery_status(
            rec,
            &RecoveryStatus {
                phase: Some(Phase::Running),
                stats: None,
                message: Some(format!("restoring {host}'s data on node {}", self.node)),
            },
        )
        .await;
        self.event(
            rec,
            false,
            reason::STARTED,
            format!(
                "restoring {host}'s backup into {} volume(s) on node {}",
                rec.spec.volumes.len(),
                self.node
            ),
        )
        .await;
        tracing::info!(%ns, recovery = %rec.name_any(), host, node = %self.node, "recovery started");
        match self.recover(rec, host, pod).await {
            Ok(stats) => {
                let failed: Vec<&RestoreStats> = stats
                    .iter()
                    .filter(|s| s.phase != Some(Phase::Succeeded))
                    .collect();
                let (phase, msg) = if failed.is_empty() {
                    (
                        Phase::Succeeded,
                        format!(
                            "restored {host}'s latest snapshot of {} path(s) on node {}",
                            stats.len(),
                            self.node
                        ),
                    )
                } else {
                    (
                        Phase::Failed,
                        format!(
                            "{} of {} path(s) failed; first: {}: {}",
                            failed.len(),
                            stats.len(),
                            failed[0].path,
                            failed[0].error.as_deref().unwrap_or("unknown error")
                        ),
                    )
                };
                self.finish_recovery(rec, phase, stats, Some(msg)).await;
            }
            Err(f) => {
                self.finish_recovery(rec, Phase::Failed, vec![], Some(f.to_string()))
                    .await;
            }
        }
    }

    /// The volumes to recover, with the paths they were backed up from.
    fn recovery_items(
        rec: &Recovery,
        cfg: &BackupConfiguration,
        pod: Option<&Pod>,
    ) -> Result<Vec<Item>, HostFailure> {
        let kind = WorkloadKind::parse(&rec.spec.workload.kind);
        let w = &rec.spec.workload;
        let target = cfg
            .spec
            .all_targets()
            .find(|t| WorkloadKind::parse(&t.target_ref.kind) == kind && t.target_ref.name == w.name)
            .ok_or_else(|| {
                HostFailure::Kube(format!(
                    "BackupConfiguration {:?} (spec.restic) does not back up {} {:?}; name the configuration that does",
                    cfg.name_any(),
                    w.kind,
                    w.name
                ))
            })?;
        let mounts: Vec<(String, String)> = match target.volume_mounts.as_ref() {
            Some(vm) if !vm.is_empty() => vm
                .iter()
                .map(|m| (m.name.clone(), m.mount_path.clone()))
                .collect(),
            _ => pod.map(|p| mounts_for(p, None)).unwrap_or_default(),
        };
        if rec.spec.volumes.is_empty() {
            return Err(HostFailure::Kube(
                "spec.volumes is empty; list the hostPath volumes to restore into".into(),
            ));
        }
        rec.spec
            .volumes
            .iter()
            .map(|v| {
                let path = mounts
                    .iter()
                    .find(|(n, _)| *n == v.name)
                    .map(|(_, p)| p.clone())
                    .ok_or_else(|| {
                        HostFailure::Kube(format!(
                            "volume {:?} is not one the BackupConfiguration backs up for {} {:?} (backed-up volumes: {}); name spec.volumes after the workload's volumes",
                            v.name,
                            w.kind,
                            w.name,
                            if mounts.is_empty() {
                                "unknown: list volumeMounts in the configuration's target".to_string()
                            } else {
                                mounts.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                            }
                        ))
                    })?;
                Ok(Item {
                    volume: v.name.clone(),
                    path,
                    host_path: v.host_path.as_ref().map(|h| h.path.clone()),
                })
            })
            .collect()
    }

    async fn recover(
        self: &Arc<Self>,
        rec: &Recovery,
        host: &str,
        pod: Option<&Pod>,
    ) -> Result<Vec<RestoreStats>, HostFailure> {
        let ns = rec.namespace().unwrap_or_default();
        let cfg: BackupConfiguration = Api::namespaced(self.client.clone(), &ns)
            .get(&rec.spec.restic)
            .await
            .map_err(|e| {
                HostFailure::Kube(format!(
                    "reading BackupConfiguration {ns}/{} (spec.restic): {e}",
                    rec.spec.restic
                ))
            })?;
        let items = Self::recovery_items(rec, &cfg, pod)?;
        let access = self.repo_access(&ns, &cfg.spec.repository.name).await?;
        let kubelet = self.kubelet.clone();
        let host = host.to_string();
        let settings = TransferSettings {
            threads: 0,
            ..Default::default()
        };
        let priority = settings.priority;
        let stats = self
            .transfers
            .run("hoard-recovery", priority, move || {
                let repo = access.open()?;
                let mut out = Vec::new();
                for it in items {
                    let start = Instant::now();
                    let failed = |e: String| RestoreStats {
                        path: it.path.clone(),
                        phase: Some(Phase::Failed),
                        duration: Some(format_go_duration(start.elapsed())),
                        error: Some(e),
                        progress: None,
                    };
                    let dir = match it.host_path.as_deref() {
                        None => Err(crate::recovery::RecoveryPathError::NotHostPath {
                            volume: it.volume.clone(),
                        }),
                        Some(hp) => open_recovery_dir(
                            &it.volume,
                            hp,
                            kubelet.host_root.as_deref(),
                            &kubelet.recovery_roots,
                        ),
                    };
                    let dir = match dir {
                        Ok(d) => d,
                        Err(e) => {
                            out.push(failed(e.to_string()));
                            continue;
                        }
                    };
                    let plan = api::rules::RestorePlan {
                        source_host: host.clone(),
                        paths: vec![it.path.clone()],
                        snapshots: vec![],
                        rule_index: None,
                    };
                    let report = run_restore_host(
                        &repo,
                        &host,
                        &plan,
                        &[HostVolume {
                            volume: it.volume.clone(),
                            snapshot_path: it.path.clone(),
                            dir,
                        }],
                        &settings,
                        &HostProgress::default(),
                    );
                    out.push(match &report.error {
                        Some(e) => failed(e.to_string()),
                        None => RestoreStats {
                            path: it.path.clone(),
                            phase: Some(Phase::Succeeded),
                            duration: Some(format_go_duration(report.duration)),
                            error: None,
                            progress: None,
                        },
                    });
                }
                Ok::<_, HostFailure>(out)
            })
            .await??;
        Ok(stats)
    }
}

/// What a Recovery no agent can start waits for, in words.
fn waiting_message(
    kind: WorkloadKind,
    ns: &str,
    kind_name: &str,
    name: &str,
    host: &str,
    pods: &[Pod],
) -> String {
    let state = |p: &Pod| {
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        match (
            p.metadata.deletion_timestamp.is_some(),
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        ) {
            (true, _) => "being deleted".to_string(),
            (false, Some(node)) => format!("{phase} on {node}"),
            (false, None) => format!("{phase}, not scheduled to a node yet"),
        }
    };
    let ordinal = host.strip_prefix("host-");
    match (kind, ordinal) {
        (WorkloadKind::StatefulSet, Some(n)) => {
            let pod = format!("{name}-{n}");
            let now = match pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&pod))
            {
                Some(p) => format!("it is {}", state(p)),
                None => "it does not exist".to_string(),
            };
            format!(
                "waiting for pod {pod} ({host}) of {kind_name} {ns}/{name} to be Running on some node ({now}); the agent on that node starts the recovery then"
            )
        }
        _ => {
            let mine: Vec<&Pod> = pods
                .iter()
                .filter(|p| crate::owner::belongs_to(p, kind, name))
                .collect();
            format!(
                "waiting for a Running pod of {kind_name} {ns}/{name} ({host}) on some node ({} of its pods exist, none Running); the agent on that node starts the recovery then",
                mine.len()
            )
        }
    }
}
