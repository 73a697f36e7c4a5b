//! Retention against the real restic (0.14): a repository holding ~90
//! snapshots spread over hours, days, ISO weeks, months and years, in three
//! time zones, two hosts, path sets in different orders and a few tags.
//! For each policy, `restic forget --dry-run --json` and hoard's
//! `plan_forget` must form the same groups, keep the same snapshots for the
//! same reasons (in restic's order) and remove the same ones. Then hoard's
//! `forget` deletes them and restic lists exactly the kept ones.
//!
//! Needs `restic` on PATH (scripts/install-deps); fails without it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Duration, FixedOffset, TimeZone};
use engine::forget::{GroupBy, RetentionPolicy, forget, plan_forget};
use engine::{Id, InitOptions, KdfParams, LocalBackend, Repository, Snapshot};

const PASSWORD: &str = "forget-test";

fn restic(repo: &Path, pwfile: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("restic")
        .arg("-r")
        .arg(repo)
        .arg("--password-file")
        .arg(pwfile)
        .arg("--no-cache")
        .args(args)
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_REPOSITORY")
        .env("TZ", "UTC")
        .output()
        .expect("run restic (install it with scripts/install-deps)");
    assert!(
        out.status.success(),
        "restic {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Deterministic spread of snapshot times: bursts within an hour, several
/// per day, gaps of days and months, across year and ISO-week boundaries.
fn snapshot_set() -> Vec<Snapshot> {
    let zones = [
        FixedOffset::east_opt(0).unwrap(),
        FixedOffset::west_opt(5 * 3600).unwrap(),
        FixedOffset::east_opt(9 * 3600 + 1800).unwrap(),
    ];
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) % n
    };
    let mut t = chrono::Utc
        .with_ymd_and_hms(2021, 12, 20, 22, 0, 0)
        .unwrap();
    let mut out = Vec::new();
    for i in 0..90 {
        let step = match next(6) {
            0 => Duration::minutes(7 + next(40) as i64),
            1 => Duration::hours(1 + next(5) as i64),
            2 => Duration::hours(20 + next(10) as i64),
            3 => Duration::days(2 + next(6) as i64),
            4 => Duration::days(20 + next(30) as i64),
            _ => Duration::hours(next(72) as i64) + Duration::seconds(1),
        };
        t += step + Duration::seconds(i);
        let tz = zones[next(3) as usize];
        let host = if next(4) == 0 { "node-b" } else { "node-a" };
        let paths = match next(5) {
            0 => vec!["/b".to_string(), "/a".to_string()],
            1 => vec!["/a".to_string(), "/b".to_string()],
            _ => vec!["/data".to_string()],
        };
        let mut s = Snapshot::new(Id::hash(format!("tree{i}").as_bytes()), paths, host);
        s.time = t.with_timezone(&tz);
        s.tags = match next(8) {
            0 => vec!["keep".into(), "x".into()],
            1 => vec!["x".into()],
            2 => vec!["monthly".into()],
            _ => vec![],
        };
        out.push(s);
    }
    // One from the future: counted by keep-last, never the anchor of keep-within.
    let mut s = Snapshot::new(Id::hash(b"future"), vec!["/data".into()], "node-a");
    s.time = DateTime::parse_from_rfc3339("2099-01-01T00:00:00+00:00").unwrap();
    out.push(s);
    out
}

type Groups =
    BTreeMap<(String, Vec<String>, Vec<String>), (Vec<(String, Vec<String>)>, Vec<String>)>;

fn restic_plan(repo: &Path, pw: &Path, flags: &[&str]) -> Groups {
    let mut args = vec!["forget", "--dry-run", "--json"];
    args.extend_from_slice(flags);
    let json: serde_json::Value = serde_json::from_slice(&restic(repo, pw, &args)).unwrap();
    let strs = |v: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = v
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut out = Groups::new();
    for g in json.as_array().unwrap() {
        let key = (
            g["host"].as_str().unwrap_or_default().to_string(),
            strs(&g["paths"]),
            strs(&g["tags"]),
        );
        let ids = |k: &str| -> Vec<String> {
            g[k].as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| s["id"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        let reasons: Vec<Vec<String>> = g["reasons"]
            .as_array()
            .map(|a| a.iter().map(|r| strs_unsorted(&r["matches"])).collect())
            .unwrap_or_default();
        let keep: Vec<(String, Vec<String>)> = ids("keep").into_iter().zip(reasons).collect();
        out.insert(key, (keep, ids("remove")));
    }
    out
}

fn strs_unsorted(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn hoard_plan(snaps: &[(Id, Snapshot)], p: &RetentionPolicy, by: GroupBy) -> Groups {
    plan_forget(snaps, p, by)
        .into_iter()
        .map(|g| {
            let keep = g
                .keep
                .iter()
                .map(|k| (k.id.to_hex(), k.reasons.clone()))
                .collect();
            let remove = g.remove.iter().map(Id::to_hex).collect();
            ((g.key.hostname, g.key.paths, g.key.tags), (keep, remove))
        })
        .collect()
}

#[test]
fn same_plan_as_restic_forget() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let repo = Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            ..Default::default()
        },
    )
    .unwrap();
    for s in snapshot_set() {
        repo.save_snapshot(&s).unwrap();
    }
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 91);

    let d = |s: &str| Some(s.parse().unwrap());
    let cases: Vec<(Vec<&str>, RetentionPolicy, GroupBy)> = vec![
        (
            vec!["--keep-last", "3"],
            RetentionPolicy {
                keep_last: 3,
                ..Default::default()
            },
            GroupBy::default(),
        ),
        (
            vec![
                "--keep-hourly",
                "5",
                "--keep-daily",
                "7",
                "--keep-weekly",
                "4",
                "--keep-monthly",
                "6",
                "--keep-yearly",
                "2",
            ],
            RetentionPolicy {
                keep_hourly: 5,
                keep_daily: 7,
                keep_weekly: 4,
                keep_monthly: 6,
                keep_yearly: 2,
                ..Default::default()
            },
            GroupBy::default(),
        ),
        (
            vec![
                "--keep-within",
                "1m15d",
                "--keep-tag",
                "keep,x",
                "--keep-tag",
                "monthly",
            ],
            RetentionPolicy {
                keep_within: d("1m15d"),
                keep_tags: vec!["keep,x".into(), "monthly".into()],
                ..Default::default()
            },
            GroupBy::default(),
        ),
        (
            vec![
                "--keep-within-hourly",
                "2d",
                "--keep-within-daily",
                "10d",
                "--keep-within-weekly",
                "2m",
                "--keep-within-monthly",
                "1y",
                "--keep-within-yearly",
                "3y",
            ],
            RetentionPolicy {
                keep_within_hourly: d("2d"),
                keep_within_daily: d("10d"),
                keep_within_weekly: d("2m"),
                keep_within_monthly: d("1y"),
                keep_within_yearly: d("3y"),
                ..Default::default()
            },
            GroupBy::default(),
        ),
        (
            vec![
                "--keep-daily",
                "3",
                "--keep-last",
                "1",
                "--group-by",
                "host,tags",
            ],
            RetentionPolicy {
                keep_daily: 3,
                keep_last: 1,
                ..Default::default()
            },
            "host,tags".parse().unwrap(),
        ),
        (
            vec![
                "--keep-weekly",
                "10",
                "--keep-hourly",
                "3",
                "--group-by",
                "",
            ],
            RetentionPolicy {
                keep_weekly: 10,
                keep_hourly: 3,
                ..Default::default()
            },
            "".parse().unwrap(),
        ),
    ];
    for (flags, policy, by) in &cases {
        let want = restic_plan(&repo_dir, &pw, flags);
        let got = hoard_plan(&snaps, policy, *by);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "groups differ for {flags:?}"
        );
        for (key, w) in &want {
            assert_eq!(&got[key], w, "group {key:?} differs for {flags:?}");
        }
        let removed: usize = want.values().map(|g| g.1.len()).sum();
        assert!(removed > 0, "policy {flags:?} should remove something");
    }

    // Act on the second policy and let restic see the result.
    let (_, policy, by) = &cases[1];
    let plans = plan_forget(&snaps, policy, *by);
    let stats = forget(&repo, &plans).unwrap();
    let kept: Vec<String> = {
        let mut v: Vec<String> = plans
            .iter()
            .flat_map(|p| p.keep.iter().map(|k| k.id.to_hex()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(stats.removed, 91 - kept.len());
    let listed: serde_json::Value =
        serde_json::from_slice(&restic(&repo_dir, &pw, &["snapshots", "--json"])).unwrap();
    let mut listed: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, kept);
    // Forgetting again finds them gone and removes nothing else.
    let again = forget(&repo, &plans).unwrap();
    assert_eq!((again.removed, again.already_gone), (0, stats.removed));
}
