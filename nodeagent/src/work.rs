//! The data work of one host, free of Kubernetes: back up a host's volumes,
//! or restore them by a rule's plan.
//!
//! Data flow: the caller opens each volume's directory ([`crate::volumes`]),
//! labels it with the path the snapshot records (the volume's `mountPath` in
//! the target, e.g. `/source/data`) and calls [`run_backup_host`] or
//! [`run_restore_host`] on a transfer thread ([`crate::transfers`]). Snapshots
//! are named by host and path only, never by where the data sits on this
//! node, so a re-created pod (new UID, new directory) backs up incrementally.
//!
//! Restore puts a snapshot's content at the volume's root. The engine restores
//! a snapshot as restic does (`<target>/source/data/...`), so the agent
//! restores into a staging directory inside the volume and then moves the
//! entries below the snapshot path up to the volume root (renames on one
//! filesystem; all beneath the volume's fd, nothing outside it is touched).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::Repository;
use engine::backup::{BackupError, BackupOptions, BackupSummary, CancelToken, ParentSelection};
use engine::priority::{Priority, PriorityError};
use engine::progress::{Progress, ProgressSnapshot};
use engine::restore::{RestoreError, RestoreOptions, RestoreSummary};
use engine::{Id, SnapshotFilter};

use api::phase::format_go_duration;
use api::rules::RestorePlan;
use api::{FileStats, HostBackupStats, HostRestoreStats, Phase, SnapshotStats};

use crate::beneath::SecureDir;
use crate::volumes::VolumeError;

/// One volume of a host, opened, with the path its snapshots record.
#[derive(Debug)]
pub struct HostVolume {
    /// The pod's volume name (for messages).
    pub volume: String,
    /// Snapshot path, e.g. `/source/data`.
    pub snapshot_path: String,
    pub dir: SecureDir,
}

/// How a session wants its transfers run.
#[derive(Debug, Clone, Default)]
pub struct TransferSettings {
    /// `runtimeSettings.container.{nice, ionice}`.
    pub priority: Priority,
    /// Tags every snapshot gets (e.g. the configuration and workload).
    pub tags: Vec<String>,
    pub excludes: Vec<String>,
    /// Engine reader/writer threads per transfer; 0 = one per CPU.
    pub threads: usize,
    pub cancel: CancelToken,
}

/// Live progress of one host: the sum over its volumes.
#[derive(Debug, Clone, Default)]
pub struct HostProgress(Arc<Mutex<HostProgressInner>>);

#[derive(Debug, Default)]
struct HostProgressInner {
    done: Vec<ProgressSnapshot>,
    current: Option<Progress>,
}

/// Bytes and files done of total for a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_read: u64,
}

impl HostProgress {
    fn start_volume(&self) -> Progress {
        let p = Progress::new();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).current = Some(p.clone());
        p
    }

    fn end_volume(&self) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = g.current.take() {
            g.done.push(p.snapshot());
        }
    }

    pub fn totals(&self) -> Totals {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let cur = g.current.as_ref().map(|p| p.snapshot());
        g.done
            .iter()
            .chain(cur.iter())
            .fold(Totals::default(), |t, s| Totals {
                bytes_done: t.bytes_done + s.bytes_done,
                bytes_total: t.bytes_total + s.bytes_total,
                files_done: t.files_done + s.files_done,
                files_total: t.files_total + s.files_total,
                bytes_read: t.bytes_read + s.bytes_read,
            })
    }

    /// Current throughput of the volume being transferred (bytes/s).
    pub fn bytes_per_sec(&self) -> f64 {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.current
            .as_ref()
            .map(|p| p.snapshot().bytes_per_sec)
            .unwrap_or(0.0)
    }

    /// The status form (`status.stats[].progress`).
    pub fn to_api(&self) -> api::Progress {
        let t = self.totals();
        let i = |v: u64| Some(i64::try_from(v).unwrap_or(i64::MAX));
        api::Progress {
            bytes_done: i(t.bytes_done),
            bytes_total: i(t.bytes_total),
            files_done: i(t.files_done),
            files_total: i(t.files_total),
            updated_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            )),
        }
    }
}

/// Why a host's backup or restore failed. Each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("backing up volume {volume:?} ({path}): {source}")]
    Backup {
        volume: String,
        path: String,
        #[source]
        source: BackupError,
    },
    #[error(
        "snapshot {snapshot} of {path} is incomplete: {count} entries could not be read (first: {first}); fix the permissions or exclude them"
    )]
    Incomplete {
        snapshot: String,
        path: String,
        count: usize,
        first: String,
    },
    #[error("restoring {path} into volume {volume:?}: {source}")]
    Restore {
        volume: String,
        path: String,
        #[source]
        source: RestoreError,
    },
    #[error(
        "restore of {path} is incomplete: {count} entries could not be written (first: {first})"
    )]
    RestoreIncomplete {
        path: String,
        count: usize,
        first: String,
    },
    #[error(
        "no snapshot of host {host:?} with path {path} in the repository; back it up first or fix sourceHost/paths of the restore rule"
    )]
    NoSnapshot { host: String, path: String },
    #[error("snapshot {query:?}: {source}")]
    Snapshot {
        query: String,
        #[source]
        source: engine::Error,
    },
    #[error(
        "path {path} is not inside any volume mounted by the target (mount paths: {mounts}); use one of them in the rule's paths"
    )]
    PathNotMounted { path: String, mounts: String },
    #[error("moving restored data into volume {volume:?}: {source}")]
    Staging {
        volume: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Priority(#[from] PriorityError),
    #[error("the transfer thread stopped unexpectedly: {0}")]
    Thread(String),
}

impl TransferError {
    /// A bounded metrics label (never the message).
    pub fn reason(&self) -> &'static str {
        match self {
            TransferError::Volume(v) => v.reason(),
            TransferError::Backup { source, .. } => match source {
                BackupError::Repository(e) => repo_reason(e),
                BackupError::Source { .. } => "source_unreadable",
                BackupError::Options(_) => "invalid_options",
                BackupError::Priority(_) => "priority",
                BackupError::Cancelled => "cancelled",
            },
            TransferError::Incomplete { .. } => "incomplete",
            TransferError::Restore { source, .. } => match source {
                RestoreError::Repository(e) => repo_reason(e),
                RestoreError::Cancelled => "cancelled",
                _ => "target_unwritable",
            },
            TransferError::RestoreIncomplete { .. } => "incomplete",
            TransferError::NoSnapshot { .. } | TransferError::Snapshot { .. } => "no_snapshot",
            TransferError::PathNotMounted { .. } => "path_not_mounted",
            TransferError::Staging { .. } => "target_unwritable",
            TransferError::Priority(_) => "priority",
            TransferError::Thread(_) => "internal",
        }
    }
}

/// Bounded label for a repository-level error.
pub fn repo_reason(e: &engine::Error) -> &'static str {
    match e {
        engine::Error::WrongPassword { .. } => "wrong_password",
        engine::Error::NoRepository { .. } => "no_repository",
        engine::Error::Locked { .. } => "repository_locked",
        engine::Error::MacMismatch { .. } | engine::Error::Corrupted { .. } => {
            "repository_corrupted"
        }
        engine::Error::Backend { .. } | engine::Error::Io { .. } => "repository_unreachable",
        engine::Error::Cancelled => "cancelled",
        _ => "repository",
    }
}

/// One volume's finished backup.
#[derive(Debug, Clone)]
pub struct VolumeBackup {
    pub volume: String,
    pub path: String,
    pub summary: BackupSummary,
}

/// Outcome of backing up one host.
#[derive(Debug)]
pub struct HostBackupReport {
    pub host: String,
    pub volumes: Vec<VolumeBackup>,
    pub duration: Duration,
    /// The first failure; volumes after it were still attempted.
    pub error: Option<TransferError>,
}

/// Bytes as Stash shows them (`12.5 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.3} {}", UNITS[u])
    }
}

fn i64_of(v: u64) -> Option<i64> {
    Some(i64::try_from(v).unwrap_or(i64::MAX))
}

impl HostBackupReport {
    pub fn phase(&self) -> Phase {
        if self.error.is_some() {
            Phase::Failed
        } else {
            Phase::Succeeded
        }
    }

    /// The host's entry in `BackupSession.status.stats`.
    pub fn to_status(&self) -> HostBackupStats {
        HostBackupStats {
            hostname: self.host.clone(),
            target: None,
            phase: Some(self.phase()),
            duration: Some(format_go_duration(self.duration)),
            error: self.error.as_ref().map(|e| e.to_string()),
            snapshots: Some(
                self.volumes
                    .iter()
                    .map(|v| {
                        let s = &v.summary.stats;
                        SnapshotStats {
                            name: v.summary.snapshot_id.short(),
                            path: v.path.clone(),
                            total_size: Some(human_bytes(s.bytes_total)),
                            uploaded: Some(human_bytes(s.bytes_stored)),
                            processing_time: Some(format_go_duration(s.elapsed)),
                            file_stats: Some(FileStats {
                                total: i64_of(s.files_total),
                                new: i64_of(s.files_new),
                                modified: i64_of(s.files_changed),
                                unmodified: i64_of(s.files_unmodified),
                            }),
                        }
                    })
                    .collect(),
            ),
            progress: None,
        }
    }
}

/// Backs up every volume of `host` on the calling thread (a transfer thread).
pub fn run_backup_host(
    repo: &Repository,
    host: &str,
    volumes: &[HostVolume],
    settings: &TransferSettings,
    progress: &HostProgress,
) -> HostBackupReport {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut error = None;
    for v in volumes {
        let p = progress.start_volume();
        let r = engine::backup::backup(
            repo,
            &v.dir.proc_path(),
            BackupOptions {
                hostname: host.to_string(),
                paths: vec![v.snapshot_path.clone()],
                tags: settings.tags.clone(),
                parent: ParentSelection::Auto,
                excludes: settings.excludes.clone(),
                cancel: settings.cancel.clone(),
                progress: p,
                priority: settings.priority,
                threads: settings.threads,
                walk_hook: None,
            },
        );
        progress.end_volume();
        match r {
            Ok(summary) => {
                if summary.is_incomplete() && error.is_none() {
                    let first = &summary.errors[0];
                    error = Some(TransferError::Incomplete {
                        snapshot: summary.snapshot_id.short(),
                        path: v.snapshot_path.clone(),
                        count: summary.errors.len(),
                        first: format!("{}: {}", first.path, first.reason),
                    });
                }
                tracing::info!(
                    host,
                    path = %v.snapshot_path,
                    snapshot = %summary.snapshot_id.short(),
                    files_new = summary.stats.files_new,
                    files_unmodified = summary.stats.files_unmodified,
                    "volume backed up"
                );
                out.push(VolumeBackup {
                    volume: v.volume.clone(),
                    path: v.snapshot_path.clone(),
                    summary,
                });
            }
            Err(source) => {
                let cancelled = matches!(source, BackupError::Cancelled);
                if error.is_none() {
                    error = Some(TransferError::Backup {
                        volume: v.volume.clone(),
                        path: v.snapshot_path.clone(),
                        source,
                    });
                }
                if cancelled {
                    break;
                }
            }
        }
    }
    HostBackupReport {
        host: host.to_string(),
        volumes: out,
        duration: start.elapsed(),
        error,
    }
}

/// One snapshot to restore into one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreItem {
    /// Index into the host's volumes.
    pub volume: usize,
    pub snapshot: Id,
    /// The snapshot's path (where its content sits in its tree).
    pub snapshot_path: String,
    /// Sub-paths to restore; empty = all of it.
    pub include: Vec<String>,
}

fn under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}

/// Decides which snapshot goes into which volume for `plan`.
pub fn plan_restore(
    repo: &Repository,
    plan: &RestorePlan,
    volumes: &[HostVolume],
) -> Result<Vec<RestoreItem>, TransferError> {
    let mounts = || {
        volumes
            .iter()
            .map(|v| v.snapshot_path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // the volume whose path is the longest prefix of `path`
    let volume_of = |path: &str| {
        volumes
            .iter()
            .enumerate()
            .filter(|(_, v)| under(path, &v.snapshot_path))
            .max_by_key(|(_, v)| v.snapshot_path.len())
            .map(|(i, _)| i)
            .ok_or_else(|| TransferError::PathNotMounted {
                path: path.to_string(),
                mounts: mounts(),
            })
    };
    let mut items: Vec<RestoreItem> = Vec::new();
    if !plan.snapshots.is_empty() {
        for q in &plan.snapshots {
            let (id, snap) =
                repo.find_snapshot(q, &SnapshotFilter::default())
                    .map_err(|source| TransferError::Snapshot {
                        query: q.clone(),
                        source,
                    })?;
            let spath = snap.paths.first().cloned().unwrap_or_default();
            let vol = volume_of(&spath)?;
            if volumes[vol].snapshot_path != spath {
                return Err(TransferError::PathNotMounted {
                    path: spath,
                    mounts: mounts(),
                });
            }
            let include = plan
                .paths
                .iter()
                .filter(|p| under(p, &spath) && p.trim_end_matches('/') != spath)
                .cloned()
                .collect();
            items.push(RestoreItem {
                volume: vol,
                snapshot: id,
                snapshot_path: spath,
                include,
            });
        }
        return Ok(items);
    }
    let paths: Vec<String> = if plan.paths.is_empty() {
        volumes.iter().map(|v| v.snapshot_path.clone()).collect()
    } else {
        plan.paths.clone()
    };
    for p in paths {
        let vol = volume_of(&p)?;
        let vpath = volumes[vol].snapshot_path.clone();
        let sub = (p.trim_end_matches('/') != vpath.trim_end_matches('/')).then(|| p.clone());
        if let Some(it) = items.iter_mut().find(|i| i.volume == vol) {
            match sub {
                // an earlier path already restores the whole volume
                Some(s) if !it.include.is_empty() => it.include.push(s),
                Some(_) => {}
                None => it.include.clear(),
            }
            continue;
        }
        let filter = SnapshotFilter {
            hosts: vec![plan.source_host.clone()],
            ..Default::default()
        };
        let latest = repo
            .find_snapshots(&filter)
            .map_err(|source| TransferError::Snapshot {
                query: format!("latest of {} {vpath}", plan.source_host),
                source,
            })?
            .into_iter()
            .filter(|(_, s)| s.paths == [vpath.clone()])
            .max_by_key(|(_, s)| s.time)
            .ok_or_else(|| TransferError::NoSnapshot {
                host: plan.source_host.clone(),
                path: vpath.clone(),
            })?;
        items.push(RestoreItem {
            volume: vol,
            snapshot: latest.0,
            snapshot_path: vpath,
            include: sub.into_iter().collect(),
        });
    }
    Ok(items)
}

/// Outcome of restoring one host.
#[derive(Debug)]
pub struct HostRestoreReport {
    pub host: String,
    pub source_host: String,
    pub restored: Vec<(RestoreItem, RestoreSummary)>,
    pub duration: Duration,
    pub error: Option<TransferError>,
}

impl HostRestoreReport {
    pub fn phase(&self) -> Phase {
        if self.error.is_some() {
            Phase::Failed
        } else {
            Phase::Succeeded
        }
    }

    /// The host's entry in `RestoreSession.status.stats`.
    pub fn to_status(&self) -> HostRestoreStats {
        HostRestoreStats {
            hostname: self.host.clone(),
            phase: Some(self.phase()),
            duration: Some(format_go_duration(self.duration)),
            error: self.error.as_ref().map(|e| e.to_string()),
            progress: None,
        }
    }
}

/// Restores `plan` into `volumes` of `host` on the calling thread.
pub fn run_restore_host(
    repo: &Repository,
    host: &str,
    plan: &RestorePlan,
    volumes: &[HostVolume],
    settings: &TransferSettings,
    progress: &HostProgress,
) -> HostRestoreReport {
    let start = Instant::now();
    let mut report = HostRestoreReport {
        host: host.to_string(),
        source_host: plan.source_host.clone(),
        restored: Vec::new(),
        duration: Duration::ZERO,
        error: None,
    };
    match plan_restore(repo, plan, volumes) {
        Err(e) => report.error = Some(e),
        Ok(items) => {
            for it in items {
                let p = progress.start_volume();
                let r = restore_item(repo, &volumes[it.volume], &it, settings, p);
                progress.end_volume();
                match r {
                    Ok(summary) => {
                        if summary.is_incomplete() {
                            let first = &summary.errors[0];
                            report.error = Some(TransferError::RestoreIncomplete {
                                path: it.snapshot_path.clone(),
                                count: summary.errors.len(),
                                first: format!("{}: {}", first.path, first.reason),
                            });
                        }
                        report.restored.push((it, summary));
                        if report.error.is_some() {
                            break;
                        }
                    }
                    Err(e) => {
                        report.error = Some(e);
                        break;
                    }
                }
            }
        }
    }
    report.duration = start.elapsed();
    report
}

/// Name of the staging directory inside a volume during a restore.
const STAGING: &str = ".hoard-restore-staging";

fn restore_item(
    repo: &Repository,
    vol: &HostVolume,
    it: &RestoreItem,
    settings: &TransferSettings,
    progress: Progress,
) -> Result<RestoreSummary, TransferError> {
    let staging_err = |source| TransferError::Staging {
        volume: vol.volume.clone(),
        source,
    };
    // A staging dir left by an interrupted restore is discarded.
    vol.dir.remove_all(STAGING).map_err(staging_err)?;
    let staging = vol.dir.create_dir(STAGING).map_err(staging_err)?;
    let result = (|| {
        let summary = engine::restore::restore(
            repo,
            &it.snapshot,
            &staging.proc_path(),
            RestoreOptions {
                include: it.include.clone(),
                overwrite: false,
                cancel: settings.cancel.clone(),
                progress,
                sparse: true,
                priority: settings.priority,
                threads: settings.threads,
            },
        )
        .map_err(|source| TransferError::Restore {
            volume: vol.volume.clone(),
            path: it.snapshot_path.clone(),
            source,
        })?;
        // The snapshot's content sits at staging/<snapshot path>; a
        // component that is a symlink in a hostile snapshot fails to open.
        let rel = it.snapshot_path.trim_matches('/');
        let content = if rel.is_empty() {
            staging.open_dir(".")
        } else {
            staging.open_dir(rel)
        };
        match content {
            Ok(content) => {
                for name in content.entries().map_err(staging_err)? {
                    content.move_entry(&name, &vol.dir).map_err(staging_err)?;
                }
                if it.include.is_empty() {
                    vol.dir.copy_owner_and_mode(&content).map_err(staging_err)?;
                }
            }
            // nothing matched the include paths: nothing to move
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(staging_err(e)),
        }
        Ok(summary)
    })();
    drop(staging);
    let cleanup = vol.dir.remove_all(STAGING);
    let summary = result?;
    cleanup.map_err(staging_err)?;
    Ok(summary)
}
