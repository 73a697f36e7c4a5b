//! Retention after a `BackupSession` succeeded, and the `Repository` status.
//!
//! Data flow: the session turns `Succeeded` (the controllers roll it up) →
//! every agent sees it; only the one that owns its first host
//! ([`retention_owner`]) goes on: the process that backed it up, or (after
//! a restart, or when the pod moved) the agent whose node's pods make the
//! host its own → it claims the run by writing `status.retention` = Running
//! where there is none, guarded by resourceVersion → on a transfer thread: open the repository,
//! [`apply_retention`] (forget under the engine's exclusive lock, prune if
//! asked), [`summarize`], [`check_integrity`] (structure only, shared lock)
//! → `status.retention` = outcome, an event, and the `Repository`'s status
//! (snapshot count, size, first/last backup, `integrity` with a one-line
//! message and the check time; a Warning event on the `Repository` when the
//! check found errors).
//!
//! Exactly once: the owner host is computed from the session's status, the
//! same on every node, and the claim is a compare-and-swap on the session,
//! so a restarted process or a second candidate finds it taken. A claim
//! left `Running` by a process that died is taken over by the next agent
//! process on the node that claimed it (forget and prune are safe to run
//! again: a half-done prune leaves a valid repository). Never two
//! at once on a repository: forget holds the exclusive repository lock (as restic's
//! does), so a concurrent forget/prune — or a backup, which holds a shared
//! lock — makes it wait and retry ([`LOCK_RETRIES`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use api::host::WorkloadKind;
use api::{BackupConfiguration, BackupSession, Phase, RetentionStatus, TargetRef};

use super::{Agent, HostFailure, priority_of};
use crate::owner::{Op, owned_hosts};
use crate::retention::{
    CheckFailed, Integrity, RepoSummary, RetentionError, RetentionReport, apply_retention,
    check_integrity, prune_after_forget, retention_owner, summarize,
};
use crate::work::human_bytes;

/// Attempts while the repository is locked by someone else (a backup of
/// another session holds a shared lock for its whole run).
pub const LOCK_RETRIES: u32 = 8;
/// Wait before retry n: `n × LOCK_RETRY_STEP`, at most 2 minutes (≈ 12
/// minutes in all: longer than most incremental backups).
pub const LOCK_RETRY_STEP: Duration = Duration::from_secs(30);

mod reason {
    pub const APPLIED: &str = "RetentionApplied";
    pub const DRY_RUN: &str = "RetentionDryRun";
    pub const FAILED: &str = "RetentionFailed";
    /// On the `Repository`: the check after retention found errors.
    pub const INTEGRITY_FAILED: &str = "IntegrityCheckFailed";
}

/// What a completed retention run hands on: its report (`None`: no policy
/// to apply), the repository's summary, and the structure check's outcome.
type Done = (
    Option<RetentionReport>,
    RepoSummary,
    Result<Integrity, CheckFailed>,
);

/// Why retention did not complete.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Host(#[from] HostFailure),
    #[error(transparent)]
    Retention(#[from] RetentionError),
    #[error(
        "the repository stayed locked by another operation for {LOCK_RETRIES} attempts ({holder}); the policy is applied again after the next successful session"
    )]
    Locked { holder: String },
    #[error("reading BackupConfiguration {0}")]
    Config(String),
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Host(h) => h.reason(),
            Failure::Retention(r) => crate::work::repo_reason(r.engine()),
            Failure::Locked { .. } => "repository_locked",
            Failure::Config(_) => "kubernetes_api",
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn time_of(t: chrono::DateTime<chrono::FixedOffset>) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
        .ok()
        .map(Time)
}

fn count(n: usize) -> Option<i64> {
    Some(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The status of a finished run.
fn outcome_status(
    policy: Option<&api::RetentionPolicy>,
    r: &Result<Done, Failure>,
) -> RetentionStatus {
    let mut st = RetentionStatus {
        completion_time: Some(now()),
        ..Default::default()
    };
    match r {
        Err(f) => {
            st.phase = Some(Phase::Failed);
            st.error = Some(f.to_string());
        }
        Ok((None, ..)) => {
            st.phase = Some(Phase::Skipped);
            st.message = Some(
                "the BackupConfiguration has no retentionPolicy (or none with a keep rule): every snapshot is kept".into(),
            );
        }
        Ok((Some(rep), ..)) => {
            st.phase = Some(Phase::Succeeded);
            st.dry_run = Some(rep.dry_run);
            st.snapshots_kept = count(rep.kept);
            st.snapshots_removed = count(rep.removed);
            st.pruned = Some(rep.pruned_bytes.is_some());
            st.bytes_freed = rep
                .pruned_bytes
                .map(|b| i64::try_from(b).unwrap_or(i64::MAX));
            st.message = Some(if rep.dry_run {
                format!(
                    "dry run: {} snapshots would be removed, {} kept; nothing was changed",
                    rep.removed, rep.kept
                )
            } else {
                let mut m = format!("{} snapshots removed, {} kept", rep.removed, rep.kept);
                if let Some(b) = rep.pruned_bytes {
                    m.push_str(&format!("; prune freed {}", human_bytes(b)));
                } else if policy.is_some_and(|p| p.prune.unwrap_or(false)) {
                    m.push_str("; nothing to prune");
                }
                m
            });
        }
    }
    st
}

impl Agent {
    /// Starts retention for a `Succeeded` session if this agent owns it
    /// (see the module docs). Returns at once; the work runs in a task.
    pub(super) fn maybe_apply_retention(self: &Arc<Self>, bs: &BackupSession) {
        let Some(status) = bs.status.as_ref() else {
            return;
        };
        // A run this node claimed but no process of it is doing (the agent
        // died or restarted mid-run) is taken over; any other claim is final.
        let takeover = match status.retention.as_ref() {
            None => false,
            Some(r) if self.left_running_here(r) => true,
            Some(_) => return,
        };
        let Some((host, target)) = retention_owner(status.stats.as_deref().unwrap_or_default())
        else {
            return;
        };
        let uid = bs.uid().unwrap_or_default();
        let (kind, name) = target.clone().map(|t| (t.kind, t.name)).unwrap_or_default();
        let ran_it = self
            .backed_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(uid.clone(), host.clone(), kind, name));
        // decided once: the session's entries are not needed any more
        self.forget_backed_up(&uid);
        if self
            .retention_started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&uid)
        {
            return;
        }
        let (agent, bs) = (self.clone(), bs.clone());
        tokio::spawn(async move {
            // A process that did not run the host (it restarted since, or
            // the pod moved) asks its node's pods whose the host is now.
            let mine = ran_it || takeover || agent.owns_host(&bs, &host, target.as_ref()).await;
            if mine
                && agent
                    .retention_started
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(uid)
            {
                if takeover {
                    tracing::info!(session = %bs.name_any(), "retention was left Running by an earlier agent process on this node: taking it over");
                }
                agent.run_retention(&bs, takeover).await;
            }
        });
    }

    /// Whether `r` is a run this node's agent claimed and left `Running`.
    /// Called only where this process has not started the session's run,
    /// so a process of this node that did is gone.
    fn left_running_here(&self, r: &RetentionStatus) -> bool {
        r.phase == Some(Phase::Running) && r.node.as_deref() == Some(self.node.as_str())
    }

    /// Whether this node owns `host` of `target` for backups now.
    async fn owns_host(&self, bs: &BackupSession, host: &str, target: Option<&TargetRef>) -> bool {
        let Some(t) = target else {
            return false;
        };
        let Some(kind) = WorkloadKind::parse(&t.kind) else {
            return false;
        };
        let ns = bs.namespace().unwrap_or_default();
        match self.pods_for(&ns, kind).await {
            Ok(pods) => owned_hosts(&self.node, kind, &t.name, Op::Backup, &pods)
                .iter()
                .any(|o| o.host == host),
            Err(e) => {
                tracing::warn!(error = %e, session = %bs.name_any(), "retention owner: listing pods");
                false
            }
        }
    }

    /// Claims the session's retention by writing `status.retention`
    /// (Running) only where there is none — or, with `takeover`, where this
    /// node's dead process left its claim `Running` — guarded by
    /// resourceVersion: however many agents or restarted processes try, one
    /// succeeds.
    async fn claim_retention(
        &self,
        bs: &BackupSession,
        st: &RetentionStatus,
        takeover: bool,
    ) -> bool {
        let api: Api<BackupSession> =
            Api::namespaced(self.client.clone(), &bs.namespace().unwrap_or_default());
        let name = bs.name_any();
        for _ in 0..crate::status::MAX_ATTEMPTS {
            let cur = match api.get_status(&name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, session = %name, "reading the session before retention");
                    return false;
                }
            };
            let Some(cur_status) = cur.status.as_ref() else {
                return false;
            };
            match &cur_status.retention {
                None => {}
                Some(r) if takeover && self.left_running_here(r) => {}
                Some(_) => return false,
            }
            let patch = json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": cur.resource_version()},
                {"op": "add", "path": "/status/retention", "value": st},
            ]);
            let patch = match serde_json::from_value(patch) {
                Ok(p) => Patch::<()>::Json(p),
                Err(e) => {
                    tracing::warn!(error = %e, "encoding status.retention");
                    return false;
                }
            };
            match api
                .patch_status(&name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => return true,
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => continue,
                Err(e) => {
                    tracing::warn!(error = %e, session = %name, "claiming retention failed");
                    return false;
                }
            }
        }
        false
    }

    /// Drops what this process remembers about the hosts it backed up in
    /// session `uid` (the session finished; the set must not grow forever).
    pub(super) fn forget_backed_up(&self, uid: &str) {
        self.backed_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(u, ..)| u != uid);
    }

    async fn write_retention(&self, bs: &BackupSession, st: &RetentionStatus) {
        let api: Api<BackupSession> =
            Api::namespaced(self.client.clone(), &bs.namespace().unwrap_or_default());
        let body = json!({"status": {"retention": st}});
        if let Err(e) = api
            .patch_status(
                &bs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            tracing::warn!(error = %e, session = %bs.name_any(), "writing status.retention failed");
        }
    }

    async fn run_retention(self: &Arc<Self>, bs: &BackupSession, takeover: bool) {
        let ns = bs.namespace().unwrap_or_default();
        let session = bs.name_any();
        let cfg_name = bs.spec.invoker.name.clone();
        let cfg = Api::<BackupConfiguration>::namespaced(self.client.clone(), &ns)
            .get(&cfg_name)
            .await
            .map_err(|e| Failure::Config(format!("{ns}/{cfg_name}: {e}")));
        let policy = cfg
            .as_ref()
            .ok()
            .and_then(|c| c.spec.retention_policy.clone());
        let claimed = self
            .claim_retention(
                bs,
                &RetentionStatus {
                    phase: Some(Phase::Running),
                    dry_run: policy.as_ref().and_then(|p| p.dry_run),
                    node: Some(self.node.clone()),
                    start_time: Some(now()),
                    ..Default::default()
                },
                takeover,
            )
            .await;
        if !claimed {
            tracing::debug!(%ns, %session, "retention already claimed");
            return;
        }
        tracing::info!(%ns, %session, config = %cfg_name, "applying retention");
        let repo_name = cfg.as_ref().ok().map(|c| c.spec.repository.name.clone());
        let result = match cfg {
            Ok(cfg) => self.retention_transfer(&ns, &cfg).await,
            Err(e) => Err(e),
        };
        let mut st = outcome_status(policy.as_ref(), &result);
        st.node = Some(self.node.clone());
        // `write_retention` is a merge patch: start_time stays.
        self.write_retention(bs, &st).await;
        match &result {
            Ok((report, summary, integrity)) => {
                // The Repository first, the event last: a watcher that
                // saw the event finds the status already written.
                let removed = report.as_ref().filter(|r| !r.dry_run).map(|r| r.removed);
                let integrity = match integrity {
                    Ok(i) => {
                        tracing::info!(%ns, repository = ?repo_name, ok = i.ok, errors = i.errors, hints = i.hints, message = %i.message, "repository checked");
                        Some(i)
                    }
                    Err(e) => {
                        tracing::warn!(%ns, repository = ?repo_name, error = %e, "the integrity check after retention could not run; status.integrity is left as it was");
                        self.metrics.record_failure("check", e.reason);
                        None
                    }
                };
                if let Some(repo) = &repo_name {
                    let written = self
                        .write_repository_status(&ns, repo, summary, removed, integrity)
                        .await;
                    if let (Some(obj), Some(i)) = (written, integrity.filter(|i| !i.ok)) {
                        self.event(&obj, true, reason::INTEGRITY_FAILED, i.message.clone())
                            .await;
                    }
                }
                if let Some(rep) = report {
                    let r = if rep.dry_run {
                        reason::DRY_RUN
                    } else {
                        reason::APPLIED
                    };
                    let note = st.message.clone().unwrap_or_default();
                    self.event(bs, false, r, note).await;
                }
            }
            Err(f) => {
                tracing::warn!(%ns, %session, error = %f, "retention failed");
                self.metrics.record_failure("retention", f.reason());
                self.event(bs, true, reason::FAILED, f.to_string()).await;
            }
        }
    }

    /// Opens the repository and applies the policy on a transfer thread,
    /// retrying while another operation holds the repository lock.
    async fn retention_transfer(
        self: &Arc<Self>,
        ns: &str,
        cfg: &BackupConfiguration,
    ) -> Result<Done, Failure> {
        let access = self
            .repo_access(ns, &cfg.spec.repository.name)
            .await
            .map_err(Failure::Host)?;
        let priority = priority_of(cfg.spec.runtime_settings.as_ref());
        let policy = cfg.spec.retention_policy.clone();
        let applies = policy
            .as_ref()
            .is_some_and(|p| crate::retention::engine_policy(p).is_some());
        let config = cfg.name_any();
        // A forget that succeeded is not repeated when only its prune
        // found the repository locked.
        let mut forgotten: Option<RetentionReport> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (access, policy, config) = (access.clone(), policy.clone(), config.clone());
            let prior = forgotten.clone();
            let (report, r) = self
                .transfers
                .run("hoard-retention", priority, move || {
                    let repo = match access.open() {
                        Ok(r) => r,
                        Err(e) => return (prior, Err(Failure::Host(e.into()))),
                    };
                    let mut report = match (prior, policy.filter(|_| applies)) {
                        (Some(r), _) => Some(r),
                        (None, Some(p)) => match apply_retention(&repo, &config, &p) {
                            Ok(r) => Some(r),
                            Err(e) => return (None, Err(e.into())),
                        },
                        (None, None) => None,
                    };
                    if let Some(rep) = report.as_mut().filter(|r| r.prune_due)
                        && let Err(e) = prune_after_forget(&repo, rep)
                    {
                        return (report, Err(e.into()));
                    }
                    let summary = summarize(&repo)
                        .map(|s| (s, check_integrity(&repo)))
                        .map_err(|e| RetentionError::Snapshots(e).into());
                    (report, summary)
                })
                .await
                .map_err(|e| Failure::Host(HostFailure::from(e)))?;
            match r {
                Err(Failure::Retention(e))
                    if matches!(e.engine(), engine::Error::Locked { .. }) =>
                {
                    let holder = e.engine().to_string();
                    if attempt >= LOCK_RETRIES {
                        return Err(Failure::Locked { holder });
                    }
                    tracing::info!(attempt, %holder, "repository locked; retention retries");
                    forgotten = report;
                    tokio::time::sleep((LOCK_RETRY_STEP * attempt).min(Duration::from_secs(120)))
                        .await;
                }
                Err(f) => return Err(f),
                Ok((summary, integrity)) => return Ok((report, summary, integrity)),
            }
        }
    }

    /// The `Repository`'s status after a session: counts and sizes for
    /// `kubectl get repo`, and the check's outcome when it ran. A merge
    /// patch: the controllers' fields (conditions) are left alone. Returns
    /// the patched object (for events about it).
    async fn write_repository_status(
        &self,
        ns: &str,
        repo: &str,
        s: &RepoSummary,
        removed: Option<usize>,
        integrity: Option<&Integrity>,
    ) -> Option<api::Repository> {
        let st = api::RepositoryStatus {
            snapshot_count: count(s.snapshot_count),
            total_size: Some(human_bytes(s.total_bytes)),
            total_size_bytes: Some(i64::try_from(s.total_bytes).unwrap_or(i64::MAX)),
            first_backup_time: s.first_backup.and_then(time_of),
            last_backup_time: s.last_backup.and_then(time_of),
            snapshots_removed_on_last_cleanup: removed.and_then(count),
            integrity: integrity.map(|i| i.ok),
            integrity_message: integrity.map(|i| i.message.clone()),
            last_check_time: integrity.map(|_| now()),
            ..Default::default()
        };
        let api: Api<api::Repository> = Api::namespaced(self.client.clone(), ns);
        let body = json!({ "status": st });
        match api
            .patch_status(repo, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, repository = %repo, "writing Repository status failed");
                None
            }
        }
    }
}
