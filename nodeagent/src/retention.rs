//! Retention after a successful `BackupSession`, and the `Repository`'s
//! status, free of Kubernetes.
//!
//! Data flow: the agent that backed up the session's first host (see
//! [`retention_owner`]) calls [`apply_retention`] on a transfer thread:
//! load the snapshots of the session's configuration (tag
//! `backupconfiguration=<name>`) → [`engine::forget::plan_forget`] per
//! host + paths (+ tags, see [`GROUP_BY`]) → unless `dryRun`, delete the
//! planned snapshots with [`engine::forget::forget`] under the engine's
//! exclusive repository lock → [`prune_after_forget`] if
//! `retentionPolicy.prune` and something was removed (as `restic forget
//! --prune`) → [`summarize`] the repository for its status →
//! [`check_integrity`] (`restic check` without `--read-data`: index, pack
//! headers, trees) for its `integrity`.

use chrono::{DateTime, FixedOffset};
use engine::Repository;
use engine::forget::{GroupBy, RetentionPolicy, forget, plan_forget};

use api::{HostBackupStats, TargetRef};

/// Group snapshots by host, paths and tags. The agent tags every snapshot
/// with its configuration and target (constant per target), so grouping by
/// tags keeps two targets of a batch backup apart even when both are
/// `host-0` with the same mount path: a `keepLast: 1` must not make one
/// target's snapshot evict the other's.
pub const GROUP_BY: GroupBy = GroupBy {
    host: true,
    paths: true,
    tags: true,
};

/// Tag the agent puts on every snapshot of configuration `name`.
pub fn config_tag(name: &str) -> String {
    format!("backupconfiguration={name}")
}

/// The host entry whose agent applies retention: the first by
/// `(hostname, target kind, target name)`. Every agent computes the same
/// answer from the same status, and exactly one of them ran that host.
pub fn retention_owner(stats: &[HostBackupStats]) -> Option<(String, Option<TargetRef>)> {
    let key = |s: &HostBackupStats| {
        (
            s.hostname.clone(),
            s.target.as_ref().map(|t| (t.kind.clone(), t.name.clone())),
        )
    };
    stats
        .iter()
        .min_by(|a, b| key(a).cmp(&key(b)))
        .map(|s| (s.hostname.clone(), s.target.clone()))
}

/// The CRD's policy in the engine's terms; `None` when it keeps everything
/// (no `keep*` rule: restic refuses to forget with an empty policy).
pub fn engine_policy(p: &api::RetentionPolicy) -> Option<RetentionPolicy> {
    let n = |v: Option<i64>| v.map_or(0, |v| u32::try_from(v.max(0)).unwrap_or(u32::MAX));
    let policy = RetentionPolicy {
        keep_last: n(p.keep_last),
        keep_hourly: n(p.keep_hourly),
        keep_daily: n(p.keep_daily),
        keep_weekly: n(p.keep_weekly),
        keep_monthly: n(p.keep_monthly),
        keep_yearly: n(p.keep_yearly),
        keep_tags: p.keep_tags.clone().unwrap_or_default(),
        ..Default::default()
    };
    (!policy.is_empty()).then_some(policy)
}

/// What a retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub dry_run: bool,
    pub kept: usize,
    /// Removed, or in a dry run the number that would be.
    pub removed: usize,
    /// `Some` when a prune ran: bytes freed.
    pub pruned_bytes: Option<u64>,
    /// The policy asks for a prune and snapshots were removed (restic's
    /// `forget --prune` prunes only then): [`prune_after_forget`] is due.
    pub prune_due: bool,
}

/// Why retention failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("reading the snapshots: {0}")]
    Snapshots(#[source] engine::Error),
    #[error("forgetting snapshots: {0}")]
    Forget(#[source] engine::Error),
    #[error("pruning unreferenced data: {0}")]
    Prune(#[source] engine::Error),
}

impl RetentionError {
    /// The engine error, e.g. to retry on [`engine::Error::Locked`].
    pub fn engine(&self) -> &engine::Error {
        match self {
            RetentionError::Snapshots(e) | RetentionError::Forget(e) | RetentionError::Prune(e) => {
                e
            }
        }
    }
}

/// Applies `policy` to configuration `config`'s snapshots in `repo`
/// (blocking: call it from a transfer thread).
pub fn apply_retention(
    repo: &Repository,
    config: &str,
    policy: &api::RetentionPolicy,
) -> Result<RetentionReport, RetentionError> {
    let dry_run = policy.dry_run.unwrap_or(false);
    let tag = config_tag(config);
    let snaps: Vec<_> = repo
        .snapshots()
        .map_err(RetentionError::Snapshots)?
        .into_iter()
        .filter(|(_, s)| s.tags.contains(&tag))
        .collect();
    let Some(engine_policy) = engine_policy(policy) else {
        return Ok(RetentionReport {
            dry_run,
            kept: snaps.len(),
            ..Default::default()
        });
    };
    let plans = plan_forget(&snaps, &engine_policy, GROUP_BY);
    let kept = plans.iter().map(|p| p.keep.len()).sum();
    let planned: usize = plans.iter().map(|p| p.remove.len()).sum();
    let mut report = RetentionReport {
        dry_run,
        kept,
        removed: planned,
        ..Default::default()
    };
    if dry_run || planned == 0 {
        return Ok(report);
    }
    let stats = forget(repo, &plans).map_err(RetentionError::Forget)?;
    report.removed = stats.removed;
    report.prune_due = policy.prune.unwrap_or(false) && stats.removed > 0;
    tracing::info!(
        config,
        removed = stats.removed,
        kept,
        "retention: snapshots forgotten"
    );
    Ok(report)
}

/// The prune a forget made due (see [`RetentionReport::prune_due`]): a
/// separate step so that a prune that finds the repository locked is
/// retried without forgetting again. [`engine::prune::prune`] takes the
/// exclusive lock itself, with restic's defaults (5% unused tolerated).
pub fn prune_after_forget(
    repo: &Repository,
    report: &mut RetentionReport,
) -> Result<(), RetentionError> {
    let stats = engine::prune::prune(repo, &engine::prune::PruneOptions::default())
        .map_err(RetentionError::Prune)?;
    tracing::info!(
        bytes_freed = stats.bytes_freed,
        packs_deleted = stats.packs_deleted,
        packs_repacked = stats.packs_repacked,
        "retention: pruned"
    );
    report.prune_due = false;
    report.pruned_bytes = Some(stats.bytes_freed);
    Ok(())
}

/// What the `Repository` status shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoSummary {
    pub snapshot_count: usize,
    pub first_backup: Option<DateTime<FixedOffset>>,
    pub last_backup: Option<DateTime<FixedOffset>>,
    /// Bytes stored: packs, indexes, snapshots, keys and config.
    pub total_bytes: u64,
}

/// Counts the repository's snapshots and stored bytes (blocking).
pub fn summarize(repo: &Repository) -> Result<RepoSummary, engine::Error> {
    use engine::FileType;
    let snaps = repo.snapshots()?;
    let mut total = 0u64;
    for t in [
        FileType::Pack,
        FileType::Index,
        FileType::Snapshot,
        FileType::Key,
    ] {
        total += repo.backend().list(t)?.iter().map(|(_, n)| n).sum::<u64>();
    }
    Ok(RepoSummary {
        snapshot_count: snaps.len(),
        first_backup: snaps.first().map(|(_, s)| s.time),
        last_backup: snaps.last().map(|(_, s)| s.time),
        total_bytes: total,
    })
}

/// What the structure check after retention found, for the `Repository`
/// status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integrity {
    /// No errors (hints, such as packs no index lists, are allowed).
    pub ok: bool,
    pub errors: usize,
    pub hints: usize,
    /// One line: the counts and the first problem with the file it concerns.
    pub message: String,
}

/// The check could not run (e.g. a prune holds the exclusive lock).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CheckFailed {
    /// Bounded, for the failures metric.
    pub reason: &'static str,
    pub message: String,
}

/// The status message is one line of at most this many characters.
pub const INTEGRITY_MESSAGE_MAX: usize = 1024;

/// Checks the repository's structure (blocking; holds a shared lock, so
/// backups may run meanwhile).
pub fn check_integrity(repo: &Repository) -> Result<Integrity, CheckFailed> {
    let opts = engine::check::CheckOptions::default();
    engine::check::check(repo, &opts, &engine::progress::Progress::new())
        .map(|r| integrity_of(&r))
        .map_err(|e| CheckFailed {
            reason: crate::work::repo_reason(&e),
            message: format!("checking the repository: {e}"),
        })
}

/// [`Integrity`] of a check's report.
pub fn integrity_of(r: &engine::check::CheckReport) -> Integrity {
    let errors = r.errors().count();
    let hints = r.problems.len() - errors;
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    // errors come first in the report
    let mut message = match r.problems.first() {
        None => format!(
            "no problems: {}, {}, {} checked",
            plural(r.stats.packs as usize, "pack"),
            plural(r.stats.snapshots as usize, "snapshot"),
            plural(r.stats.trees as usize, "tree"),
        ),
        Some(first) if errors > 0 && hints == 0 => {
            format!("{}; first: {first}", plural(errors, "error"))
        }
        Some(first) if errors > 0 => format!(
            "{} and {}; first: {first}",
            plural(errors, "error"),
            plural(hints, "hint")
        ),
        Some(first) => format!("no errors, {}; first: {first}", plural(hints, "hint")),
    }
    .replace('\n', " ");
    if let Some((cut, _)) = message.char_indices().nth(INTEGRITY_MESSAGE_MAX - 1) {
        message.truncate(cut);
        message.push('…');
    }
    Integrity {
        ok: errors == 0,
        errors,
        hints,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn entry(host: &str, target: Option<&str>) -> HostBackupStats {
        HostBackupStats {
            hostname: host.into(),
            target: target.map(|n| TargetRef {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                name: n.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_host_by_name_then_target_owns_retention() {
        assert_eq!(retention_owner(&[]), None);
        let stats = [
            entry("host-2", None),
            entry("host-0", Some("web")),
            entry("host-0", Some("db")),
            entry("host-1", None),
        ];
        let (host, target) = retention_owner(&stats).unwrap();
        assert_eq!(host, "host-0");
        assert_eq!(target.unwrap().name, "db");
        // DaemonSet hosts are node names: plain string order
        let ds = [entry("worker-b", None), entry("worker-a", None)];
        assert_eq!(retention_owner(&ds).unwrap().0, "worker-a");
    }

    #[test]
    fn an_empty_policy_keeps_everything() {
        assert_eq!(engine_policy(&api::RetentionPolicy::default()), None);
        let p = api::RetentionPolicy {
            prune: Some(true),
            dry_run: Some(true),
            ..Default::default()
        };
        assert_eq!(engine_policy(&p), None, "prune/dryRun alone keep all");
        let p = api::RetentionPolicy {
            keep_last: Some(3),
            keep_daily: Some(-1),
            keep_tags: Some(vec!["golden".into()]),
            ..Default::default()
        };
        let e = engine_policy(&p).unwrap();
        assert_eq!((e.keep_last, e.keep_daily), (3, 0));
        assert_eq!(e.keep_tags, ["golden"]);
    }

    fn problem(kind: engine::check::ProblemKind, file: &str, msg: &str) -> engine::check::Problem {
        engine::check::Problem {
            kind,
            file: file.into(),
            blob: None,
            snapshot: None,
            path: None,
            message: msg.into(),
        }
    }

    /// The status line: counts, then the first problem with its file; hints
    /// alone keep the repository whole; one line, bounded.
    #[test]
    fn integrity_message_names_the_first_problem() {
        use engine::check::{CheckReport, ProblemKind::*};
        let mut r = CheckReport::default();
        r.stats.packs = 3;
        r.stats.snapshots = 1;
        r.stats.trees = 2;
        let i = integrity_of(&r);
        assert!(i.ok);
        assert_eq!(
            i.message,
            "no problems: 3 packs, 1 snapshot, 2 trees checked"
        );

        r.problems = vec![
            problem(PackMissing, "data/ab/ab12", "indexed pack is missing"),
            problem(PackSizeMismatch, "data/cd/cd34", "size 10,\nexpected 20"),
            problem(PackNotInIndex, "data/ef/ef56", "not in any index"),
        ];
        let i = integrity_of(&r);
        assert!(!i.ok);
        assert_eq!((i.errors, i.hints), (2, 1));
        assert_eq!(
            i.message,
            "2 errors and 1 hint; first: error: data/ab/ab12: indexed pack is missing"
        );

        r.problems = vec![problem(PackNotInIndex, "data/ef/ef56", &"x\n".repeat(2000))];
        let i = integrity_of(&r);
        assert!(i.ok, "hints do not fail the check");
        assert!(
            i.message
                .starts_with("no errors, 1 hint; first: hint: data/ef/ef56: x x")
        );
        assert!(!i.message.contains('\n'));
        assert_eq!(i.message.chars().count(), INTEGRITY_MESSAGE_MAX);
    }

    /// Three snapshots of two batch targets (both `host-0`, same path) and
    /// one of another configuration: `keepLast: 1` removes only the older
    /// snapshot of each target and leaves the other configuration alone;
    /// a dry run removes nothing.
    #[test]
    fn forget_per_target_group_and_only_this_configuration() {
        use engine::backup::{BackupOptions, ParentSelection, backup};
        let t = tempfile::tempdir().unwrap();
        let repo = Repository::init(
            Arc::new(engine::LocalBackend::new(t.path().join("repo"))),
            "pw",
            engine::InitOptions {
                kdf: engine::KdfParams::insecure_fast(),
                chunker_polynomial: None,
            },
        )
        .unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let snap = |tags: &[&str], content: &str| {
            std::fs::write(src.join("f"), content).unwrap();
            backup(
                &repo,
                &src,
                BackupOptions {
                    hostname: "host-0".into(),
                    paths: vec!["/data".into()],
                    tags: tags.iter().map(|s| s.to_string()).collect(),
                    parent: ParentSelection::None,
                    ..Default::default()
                },
            )
            .unwrap();
        };
        let a = ["backupconfiguration=cfg", "target=Deployment/a"];
        let b = ["backupconfiguration=cfg", "target=Deployment/b"];
        let other = ["backupconfiguration=other", "target=Deployment/a"];
        snap(&a, "a1");
        snap(&b, "b1");
        snap(&other, "o1");
        snap(&a, "a2");
        snap(&b, "b2");
        let keep1 = |dry| api::RetentionPolicy {
            keep_last: Some(1),
            dry_run: Some(dry),
            ..Default::default()
        };
        let dry = apply_retention(&repo, "cfg", &keep1(true)).unwrap();
        assert_eq!((dry.kept, dry.removed, dry.dry_run), (2, 2, true));
        assert_eq!(
            repo.snapshots().unwrap().len(),
            5,
            "a dry run removes nothing"
        );

        let r = apply_retention(&repo, "cfg", &keep1(false)).unwrap();
        assert_eq!((r.kept, r.removed), (2, 2));
        let left: Vec<Vec<String>> = repo
            .snapshots()
            .unwrap()
            .into_iter()
            .map(|(_, s)| s.tags)
            .collect();
        assert_eq!(left.len(), 3);
        assert!(left.contains(&other.iter().map(|s| s.to_string()).collect()));
        let s = summarize(&repo).unwrap();
        assert_eq!(s.snapshot_count, 3);
        assert!(s.total_bytes > 0);
        assert!(s.first_backup <= s.last_backup);
    }
}
