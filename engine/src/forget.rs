//! Retention (`forget`) with restic 0.14's semantics, so that a policy keeps
//! exactly the snapshots `restic forget` would keep on the same repository.
//!
//! Data flow: the caller loads snapshots ([`Repository::snapshots`]) and
//! filters them (`--host/--tag/--path`); [`plan_forget`] — pure, no I/O —
//! groups them ([`GroupBy`], restic's default `host,paths`) and applies the
//! [`RetentionPolicy`] to each group, recording why each kept snapshot is
//! kept (restic's reason strings: "last snapshot", "daily snapshot", ...), so
//! a dry run can print the plan; [`forget`] then deletes the snapshot files of
//! the plan under an exclusive lock. Unreferenced data stays until `prune`.
//!
//! Bucket rules, as in restic's `ApplyPolicy`: snapshots are walked newest
//! first; each `keep_*` count has a bucket function (hour, day, ISO week,
//! month, year of the snapshot's time) and a snapshot is kept when its bucket
//! value differs from the previous kept one's while the count lasts — so the
//! *newest* snapshot of each hour/day/... is kept. Calendar values use the
//! wall clock of the offset recorded in the snapshot (Go parses restic's
//! RFC 3339 times into that offset), not the zone of the machine running
//! `forget`. restic ≥ 0.15 additionally keeps the oldest snapshot when a
//! count is not used up; restic 0.14 (the version this is tested against)
//! does not, and neither do we.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, Timelike, Utc};
use serde::Serialize;

use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::Repository;
use crate::snapshot::Snapshot;

/// A restic duration (`--keep-within 1y5m7d2h`): calendar years, months,
/// days and hours, applied to the newest snapshot's wall clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeepDuration {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl KeepDuration {
    pub fn is_zero(&self) -> bool {
        *self == KeepDuration::default()
    }

    /// `t` minus this duration with Go's `AddDate` normalisation
    /// (2024-03-31 minus 1 month is 2024-03-02, not 2024-02-29).
    fn before(&self, t: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
        let wall = t.naive_local();
        let month0 = i64::from(wall.year()) * 12 + i64::from(wall.month0())
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let (y, m0) = (month0.div_euclid(12), month0.rem_euclid(12));
        let first = NaiveDate::from_ymd_opt(y as i32, m0 as u32 + 1, 1);
        let Some(first) = first else {
            return DateTime::<Utc>::MIN_UTC.fixed_offset();
        };
        let day = first + Duration::days(i64::from(wall.day()) - 1 - i64::from(self.days));
        let naive = day.and_time(wall.time()) - Duration::hours(i64::from(self.hours));
        naive
            .and_local_timezone(*t.offset())
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC.fixed_offset())
    }
}

impl fmt::Display for KeepDuration {
    /// restic's spelling, zero parts left out (`1y2d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (v, u) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if v != 0 {
                write!(f, "{v}{u}")?;
            }
        }
        Ok(())
    }
}

/// A `--keep-within` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {text:?}: expected numbers with units y, m, d, h such as 1y5m7d2h (weeks are written as 7d)"
)]
pub struct InvalidDuration {
    pub text: String,
}

impl FromStr for KeepDuration {
    type Err = InvalidDuration;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidDuration { text: s.into() };
        let mut d = KeepDuration::default();
        let mut num = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let v: u32 = num.parse().map_err(|_| bad())?;
            num.clear();
            match c {
                'y' => d.years = v,
                'm' => d.months = v,
                'd' => d.days = v,
                'h' => d.hours = v,
                _ => return Err(bad()),
            }
        }
        if !num.is_empty() || s.trim().is_empty() {
            return Err(bad());
        }
        Ok(d)
    }
}

/// What to keep. Counts of 0 and `None` durations are off; a snapshot is
/// kept when any rule keeps it. An empty policy keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionPolicy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    /// Keep every snapshot newer than the newest one minus this.
    pub keep_within: Option<KeepDuration>,
    pub keep_within_hourly: Option<KeepDuration>,
    pub keep_within_daily: Option<KeepDuration>,
    pub keep_within_weekly: Option<KeepDuration>,
    pub keep_within_monthly: Option<KeepDuration>,
    pub keep_within_yearly: Option<KeepDuration>,
    /// Tag lists (`"a,b"`: must have both a and b); a snapshot matching any
    /// list is kept, whatever the counts say.
    pub keep_tags: Vec<String>,
}

impl RetentionPolicy {
    /// restic refuses to forget anything with an empty policy.
    pub fn is_empty(&self) -> bool {
        let within = |d: &Option<KeepDuration>| d.is_none_or(|d| d.is_zero());
        self.keep_tags.is_empty()
            && [
                self.keep_last,
                self.keep_hourly,
                self.keep_daily,
                self.keep_weekly,
                self.keep_monthly,
                self.keep_yearly,
            ]
            .iter()
            .all(|&c| c == 0)
            && within(&self.keep_within)
            && within(&self.keep_within_hourly)
            && within(&self.keep_within_daily)
            && within(&self.keep_within_weekly)
            && within(&self.keep_within_monthly)
            && within(&self.keep_within_yearly)
    }
}

/// Which snapshot fields form a group (restic's `--group-by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    /// restic's default, `host,paths`.
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

/// A `--group-by` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --group-by {text:?}: expected a comma-separated list of host, paths, tags (or '' for no grouping)"
)]
pub struct InvalidGroupBy {
    pub text: String,
}

impl FromStr for GroupBy {
    type Err = InvalidGroupBy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                _ => return Err(InvalidGroupBy { text: s.into() }),
            }
        }
        Ok(g)
    }
}

/// The fields a group shares; fields not grouped by are empty. Paths and
/// tags are sorted, as restic sorts them for the key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
pub struct GroupKey {
    pub hostname: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
}

impl GroupKey {
    fn of(s: &Snapshot, by: GroupBy) -> GroupKey {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        GroupKey {
            hostname: if by.host {
                s.hostname.clone()
            } else {
                String::new()
            },
            paths: if by.paths { sorted(&s.paths) } else { vec![] },
            tags: if by.tags { sorted(&s.tags) } else { vec![] },
        }
    }
}

/// A snapshot the policy keeps, and every rule that keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    pub id: Id,
    pub time: DateTime<FixedOffset>,
    /// restic's wording: "last snapshot", "daily snapshot", "has tags [a, b]",
    /// "within 7d", "daily within 1m", "policy is empty".
    pub reasons: Vec<String>,
}

/// The outcome for one group, newest snapshot first in both lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPlan {
    pub key: GroupKey,
    pub keep: Vec<Kept>,
    pub remove: Vec<Id>,
}

/// Groups `snapshots` and applies `policy` to each group, judging
/// `keep_within*` against the newest snapshot not in the future.
pub fn plan_forget(
    snapshots: &[(Id, Snapshot)],
    policy: &RetentionPolicy,
    group_by: GroupBy,
) -> Vec<GroupPlan> {
    plan_forget_at(snapshots, policy, group_by, Utc::now())
}

/// [`plan_forget`] with an explicit "now" (for tests).
pub fn plan_forget_at(
    snapshots: &[(Id, Snapshot)],
    policy: &RetentionPolicy,
    group_by: GroupBy,
    now: DateTime<Utc>,
) -> Vec<GroupPlan> {
    let mut groups: BTreeMap<GroupKey, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for s in snapshots {
        groups
            .entry(GroupKey::of(&s.1, group_by))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|(key, list)| {
            let (keep, remove) = apply_policy(list, policy, now);
            GroupPlan { key, keep, remove }
        })
        .collect()
}

type Bucker = fn(DateTime<FixedOffset>, usize) -> i64;

fn ymdh(t: DateTime<FixedOffset>, _: usize) -> i64 {
    ymd(t, 0) * 100 + i64::from(t.hour())
}
fn ymd(t: DateTime<FixedOffset>, _: usize) -> i64 {
    ym(t, 0) * 100 + i64::from(t.day())
}
fn yw(t: DateTime<FixedOffset>, _: usize) -> i64 {
    let w = t.iso_week();
    i64::from(w.year()) * 100 + i64::from(w.week())
}
fn ym(t: DateTime<FixedOffset>, _: usize) -> i64 {
    y(t, 0) * 100 + i64::from(t.month())
}
fn y(t: DateTime<FixedOffset>, _: usize) -> i64 {
    i64::from(t.year())
}
fn always(_: DateTime<FixedOffset>, nr: usize) -> i64 {
    nr as i64
}

/// restic's `ApplyPolicy` on one group.
fn apply_policy(
    mut list: Vec<&(Id, Snapshot)>,
    p: &RetentionPolicy,
    now: DateTime<Utc>,
) -> (Vec<Kept>, Vec<Id>) {
    // Newest first; equal times in id order, as the repository lists them.
    list.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(a.0.cmp(&b.0)));
    let kept = |s: &(Id, Snapshot), reasons: Vec<String>| Kept {
        id: s.0,
        time: s.1.time,
        reasons,
    };
    if p.is_empty() {
        let keep = list
            .iter()
            .map(|s| kept(s, vec!["policy is empty".into()]))
            .collect();
        return (keep, vec![]);
    }

    struct Bucket {
        count: u32,
        bucker: Bucker,
        last: Option<i64>,
        reason: &'static str,
    }
    let mut buckets = [
        (p.keep_last, always as Bucker, "last snapshot"),
        (p.keep_hourly, ymdh, "hourly snapshot"),
        (p.keep_daily, ymd, "daily snapshot"),
        (p.keep_weekly, yw, "weekly snapshot"),
        (p.keep_monthly, ym, "monthly snapshot"),
        (p.keep_yearly, y, "yearly snapshot"),
    ]
    .map(|(count, bucker, reason)| Bucket {
        count,
        bucker,
        last: None,
        reason,
    });
    struct WithinBucket {
        within: Option<KeepDuration>,
        bucker: Bucker,
        last: Option<i64>,
        reason: &'static str,
    }
    let mut within_buckets = [
        (p.keep_within_hourly, ymdh as Bucker, "hourly within"),
        (p.keep_within_daily, ymd, "daily within"),
        (p.keep_within_weekly, yw, "weekly within"),
        (p.keep_within_monthly, ym, "monthly within"),
        (p.keep_within_yearly, y, "yearly within"),
    ]
    .map(|(within, bucker, reason)| WithinBucket {
        within: within.filter(|d| !d.is_zero()),
        bucker,
        last: None,
        reason,
    });

    // The newest snapshot that is not in the future; a group with only
    // future snapshots has none, and then every time is "within".
    let latest = list.iter().map(|s| s.1.time).filter(|t| *t < now).max();
    let is_within = |d: &KeepDuration, t: DateTime<FixedOffset>| match latest {
        Some(l) => t > d.before(l),
        None => true,
    };

    let (mut keep, mut remove) = (Vec::new(), Vec::new());
    for (nr, cur) in list.iter().enumerate() {
        let t = cur.1.time;
        let mut reasons = Vec::new();
        for tl in &p.keep_tags {
            let tags: Vec<String> = tl
                .split(',')
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect();
            if tags.iter().all(|t| cur.1.tags.contains(t)) {
                // restic's TagList.String().
                reasons.push(format!("has tags [{}]", tags.join(", ")));
            }
        }
        if let Some(d) = p.keep_within.filter(|d| !d.is_zero())
            && is_within(&d, t)
        {
            reasons.push(format!("within {d}"));
        }
        for b in buckets.iter_mut().filter(|b| b.count > 0) {
            let val = (b.bucker)(t, nr);
            if b.last != Some(val) {
                b.last = Some(val);
                b.count -= 1;
                reasons.push(b.reason.to_string());
            }
        }
        for b in &mut within_buckets {
            let Some(d) = b.within else { continue };
            if is_within(&d, t) {
                let val = (b.bucker)(t, nr);
                if b.last != Some(val) {
                    b.last = Some(val);
                    reasons.push(format!("{} {d}", b.reason));
                }
            }
        }
        if reasons.is_empty() {
            remove.push(cur.0);
        } else {
            keep.push(kept(cur, reasons));
        }
    }
    (keep, remove)
}

/// What [`forget`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ForgetStats {
    /// Snapshot files deleted.
    pub removed: usize,
    /// Planned for removal but already gone (another client removed them).
    pub already_gone: usize,
}

/// Deletes the snapshot files the plans remove, holding an exclusive lock
/// (as `restic forget` does) so no prune or other forget runs meanwhile.
/// The data they reference is freed by a later prune.
pub fn forget(repo: &Repository, plans: &[GroupPlan]) -> Result<ForgetStats> {
    let _lock = repo.lock(true)?;
    let mut stats = ForgetStats::default();
    for id in plans.iter().flat_map(|p| &p.remove) {
        match repo.backend().remove(FileType::Snapshot, &id.to_hex()) {
            Ok(()) => {
                stats.removed += 1;
                tracing::info!(snapshot = %id.short(), "removed snapshot");
            }
            Err(Error::NotFound { .. }) => stats.already_gone += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(time: &str, host: &str, paths: &[&str], tags: &[&str]) -> (Id, Snapshot) {
        let mut s = Snapshot::new(
            Id::default(),
            paths.iter().map(|p| p.to_string()).collect(),
            host,
        );
        s.time = DateTime::parse_from_rfc3339(time).unwrap();
        s.tags = tags.iter().map(|t| t.to_string()).collect();
        (Id::hash(time.as_bytes()), s)
    }

    fn times(v: &[&str]) -> Vec<(Id, Snapshot)> {
        v.iter().map(|t| snap(t, "h", &["/data"], &[])).collect()
    }

    fn kept_times(plans: &[GroupPlan]) -> Vec<String> {
        plans
            .iter()
            .flat_map(|p| &p.keep)
            .map(|k| k.time.to_rfc3339())
            .collect()
    }

    fn now() -> DateTime<Utc> {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn duration_parse_and_display() {
        let d: KeepDuration = "1y5m7d2h".parse().unwrap();
        assert_eq!((d.years, d.months, d.days, d.hours), (1, 5, 7, 2));
        assert_eq!(d.to_string(), "1y5m7d2h");
        assert_eq!("2d".parse::<KeepDuration>().unwrap().to_string(), "2d");
        for bad in ["", "1w", "5", "y", "1d2"] {
            assert!(bad.parse::<KeepDuration>().is_err(), "{bad}");
        }
        let e = "1w".parse::<KeepDuration>().unwrap_err().to_string();
        assert!(e.contains("7d"), "{e}");
    }

    #[test]
    fn go_add_date_normalisation() {
        let t = DateTime::parse_from_rfc3339("2024-03-31T10:00:00+02:00").unwrap();
        let m1 = KeepDuration {
            months: 1,
            ..Default::default()
        };
        // Feb 31 normalises to Mar 2, as Go's AddDate does.
        assert_eq!(m1.before(t).to_rfc3339(), "2024-03-02T10:00:00+02:00");
        let h = KeepDuration {
            days: 1,
            hours: 11,
            ..Default::default()
        };
        assert_eq!(h.before(t).to_rfc3339(), "2024-03-29T23:00:00+02:00");
    }

    #[test]
    fn group_by_parse() {
        assert_eq!("host,paths".parse::<GroupBy>().unwrap(), GroupBy::default());
        let none: GroupBy = "".parse().unwrap();
        assert!(!none.host && !none.paths && !none.tags);
        assert!("host,color".parse::<GroupBy>().is_err());
    }

    /// restic's doc/060_forget.rst: one backup every Sunday for 12 weeks,
    /// `--keep-daily 4` keeps the last four Sundays.
    #[test]
    fn doc_example_twelve_sundays() {
        let days = [
            "2019-09-01",
            "2019-09-08",
            "2019-09-15",
            "2019-09-22",
            "2019-09-29",
            "2019-10-06",
            "2019-10-13",
            "2019-10-20",
            "2019-10-27",
            "2019-11-03",
            "2019-11-10",
            "2019-11-17",
        ];
        let t: Vec<String> = days.iter().map(|d| format!("{d}T11:00:00+00:00")).collect();
        let snaps = times(&t.iter().map(String::as_str).collect::<Vec<_>>());
        let p = RetentionPolicy {
            keep_daily: 4,
            ..Default::default()
        };
        let plan = plan_forget_at(&snaps, &p, GroupBy::default(), now());
        assert_eq!(plan.len(), 1);
        assert_eq!(
            kept_times(&plan),
            [&t[11], &t[10], &t[9], &t[8]].map(|s| s.clone())
        );
        assert_eq!(plan[0].remove.len(), 8);
        assert!(plan[0].keep.iter().all(|k| k.reasons == ["daily snapshot"]));
        // keep-weekly 4 is the same here; keep-monthly 3 keeps the last
        // Sunday of Nov, Oct and Sep.
        let p = RetentionPolicy {
            keep_monthly: 3,
            ..Default::default()
        };
        let plan = plan_forget_at(&snaps, &p, GroupBy::default(), now());
        assert_eq!(kept_times(&plan), [&t[11], &t[8], &t[4]].map(|s| s.clone()));
    }

    #[test]
    fn newest_of_each_bucket_and_reasons_combine() {
        let snaps = times(&[
            "2024-01-01T10:00:00+00:00",
            "2024-01-02T10:00:00+00:00",
            "2024-01-02T11:00:00+00:00",
            "2024-01-03T10:00:00+00:00",
            "2024-02-10T10:00:00+00:00",
        ]);
        let p = RetentionPolicy {
            keep_last: 1,
            keep_daily: 3,
            keep_monthly: 2,
            ..Default::default()
        };
        let plan = plan_forget_at(&snaps, &p, GroupBy::default(), now());
        let keep: Vec<(String, Vec<String>)> = plan[0]
            .keep
            .iter()
            .map(|k| (k.time.format("%m-%d %H").to_string(), k.reasons.clone()))
            .collect();
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            keep,
            vec![
                (
                    "02-10 10".into(),
                    r(&["last snapshot", "daily snapshot", "monthly snapshot"])
                ),
                (
                    "01-03 10".into(),
                    r(&["daily snapshot", "monthly snapshot"])
                ),
                ("01-02 11".into(), r(&["daily snapshot"])),
            ]
        );
        // 01-02 10:00 is not the newest of its day; 01-01 is beyond every
        // count (restic 0.14 does not keep the oldest).
        assert_eq!(plan[0].remove.len(), 2);
    }

    #[test]
    fn buckets_use_the_recorded_offset() {
        // 23:30 at -05:00 is Jan 3 in UTC but Jan 2 on the recorded clock.
        let snaps = times(&["2024-01-02T23:30:00-05:00", "2024-01-03T01:00:00+00:00"]);
        let p = RetentionPolicy {
            keep_daily: 5,
            ..Default::default()
        };
        let plan = plan_forget_at(&snaps, &p, GroupBy::default(), now());
        assert_eq!(plan[0].keep.len(), 2, "different days on their own clocks");
    }

    #[test]
    fn tags_within_and_groups() {
        let snaps = vec![
            snap("2024-01-01T00:00:00Z", "a", &["/x"], &["keep", "y"]),
            snap("2024-01-05T00:00:00Z", "a", &["/x"], &[]),
            snap("2024-01-09T00:00:00Z", "a", &["/x"], &[]),
            snap("2024-01-10T00:00:00Z", "a", &["/x"], &[]),
            snap("2024-01-01T00:00:00Z", "b", &["/x"], &[]),
            snap("2024-01-02T00:00:00Z", "a", &["/z", "/x"], &[]),
        ];
        let p = RetentionPolicy {
            keep_within: Some("2d".parse().unwrap()),
            keep_tags: vec!["keep,y".into(), "nope".into()],
            ..Default::default()
        };
        let plan = plan_forget_at(&snaps, &p, GroupBy::default(), now());
        let keys: Vec<_> = plan
            .iter()
            .map(|p| (p.key.hostname.as_str(), p.key.paths.join(":")))
            .collect();
        assert_eq!(
            keys,
            [
                ("a", "/x".into()),
                ("a", "/x:/z".into()),
                ("b", "/x".into())
            ]
        );
        let a = &plan[0];
        let reasons: Vec<_> = a.keep.iter().map(|k| k.reasons.join("+")).collect();
        // 01-09 is exactly 1 day before: within; 01-05 is not.
        assert_eq!(reasons, ["within 2d", "within 2d", "has tags [keep, y]"]);
        assert_eq!(a.remove.len(), 1);
        // Single-snapshot groups keep their snapshot by keep-within.
        assert_eq!(plan[1].keep.len(), 1);
        assert_eq!(plan[2].keep.len(), 1);
    }

    #[test]
    fn future_snapshots_do_not_anchor_within() {
        let snaps = times(&[
            "2024-01-01T00:00:00Z",
            "2024-01-10T00:00:00Z",
            "2031-01-01T00:00:00Z",
        ]);
        let p = RetentionPolicy {
            keep_within: Some("1d".parse().unwrap()),
            ..Default::default()
        };
        let plan = plan_forget_at(&snaps, &p, GroupBy::default(), now());
        assert_eq!(plan[0].keep.len(), 2, "the future one and 01-10");
        assert_eq!(plan[0].remove.len(), 1);
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let snaps = times(&["2024-01-01T00:00:00Z", "2024-01-10T00:00:00Z"]);
        let plan = plan_forget_at(
            &snaps,
            &RetentionPolicy::default(),
            GroupBy::default(),
            now(),
        );
        assert!(plan[0].remove.is_empty());
        assert_eq!(plan[0].keep[0].reasons, ["policy is empty"]);
    }

    #[test]
    fn within_buckets() {
        let snaps = times(&[
            "2024-01-01T08:00:00Z",
            "2024-01-01T09:00:00Z",
            "2024-01-02T08:00:00Z",
            "2024-01-03T08:00:00Z",
            "2024-01-03T09:00:00Z",
        ]);
        let p = RetentionPolicy {
            keep_within_daily: Some("1d".parse().unwrap()),
            ..Default::default()
        };
        let plan = plan_forget_at(&snaps, &p, GroupBy::default(), now());
        // Within 1 day of 01-03 09:00: 01-03 09 (new day), 01-03 08 (same
        // day: no), 01-02 08 (01-02 09:00 is the limit: too old).
        assert_eq!(kept_times(&plan), ["2024-01-03T09:00:00+00:00"]);
        assert_eq!(plan[0].keep[0].reasons, ["daily within 1d"]);
    }

    #[test]
    fn forget_removes_planned_snapshots_under_an_exclusive_lock() {
        let be: std::sync::Arc<dyn crate::Backend> =
            std::sync::Arc::new(crate::MemoryBackend::new());
        let repo = Repository::init(
            be,
            "pw",
            crate::InitOptions {
                kdf: crate::KdfParams::insecure_fast(),
                ..Default::default()
            },
        )
        .unwrap();
        for (_, s) in times(&[
            "2024-01-01T00:00:00Z",
            "2024-01-02T00:00:00Z",
            "2024-01-03T00:00:00Z",
        ]) {
            repo.save_snapshot(&s).unwrap();
        }
        let snaps = repo.snapshots().unwrap();
        let p = RetentionPolicy {
            keep_last: 1,
            ..Default::default()
        };
        let plans = plan_forget(&snaps, &p, GroupBy::default());
        // A backup in progress (shared lock) blocks forget.
        let backup_lock = repo.lock(false).unwrap();
        assert!(matches!(forget(&repo, &plans), Err(Error::Locked { .. })));
        assert_eq!(repo.snapshots().unwrap().len(), 3);
        drop(backup_lock);
        let stats = forget(&repo, &plans).unwrap();
        assert_eq!(stats.removed, 2);
        let left = repo.snapshots().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.time, snaps[2].1.time, "the newest stays");
        assert!(repo.backend().list(FileType::Lock).unwrap().is_empty());
    }

    /// restic's doc/060_forget.rst: a backup every day for 100 years and
    /// `--keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75`
    /// keeps 7 dailies, weeklies/monthlies/yearlies partly overlapping
    /// them: every count is used up, and each period's *last* snapshot is
    /// the one kept.
    #[test]
    fn doc_example_hundred_years_of_dailies() {
        let start = NaiveDate::from_ymd_opt(1925, 1, 1).unwrap();
        let end = NaiveDate::from_ymd_opt(2024, 12, 31).unwrap();
        let template = snap("2000-01-01T00:00:00Z", "h", &["/data"], &[]).1;
        let snaps: Vec<(Id, Snapshot)> = start
            .iter_days()
            .take_while(|d| *d <= end)
            .map(|d| {
                let mut s = template.clone();
                s.time = d.and_hms_opt(12, 0, 0).unwrap().and_utc().fixed_offset();
                (Id::hash(d.to_string().as_bytes()), s)
            })
            .collect();
        let p = RetentionPolicy {
            keep_daily: 7,
            keep_weekly: 5,
            keep_monthly: 12,
            keep_yearly: 75,
            ..Default::default()
        };
        let plan = plan_forget_at(&snaps, &p, GroupBy::default(), now());
        let keep = &plan[0].keep;
        let count = |r: &str| {
            keep.iter()
                .filter(|k| k.reasons.iter().any(|x| x == r))
                .count()
        };
        assert_eq!(count("daily snapshot"), 7);
        assert_eq!(count("weekly snapshot"), 5);
        assert_eq!(count("monthly snapshot"), 12);
        assert_eq!(count("yearly snapshot"), 75);
        assert_eq!(keep.len() + plan[0].remove.len(), snaps.len());
        // 2024-12-31 is a Tuesday: its week, Sunday the 29th, Dec 31 (month
        // and year) overlap with the dailies, as the doc describes.
        assert!((95..=99).contains(&keep.len()), "{}", keep.len());
        for k in keep
            .iter()
            .filter(|k| k.reasons.iter().any(|x| x == "monthly snapshot"))
        {
            let next = k.time.date_naive().succ_opt().unwrap();
            assert_eq!(
                next.day(),
                1,
                "monthly keeps the month's last day: {}",
                k.time
            );
        }
        for k in keep
            .iter()
            .filter(|k| k.reasons.iter().any(|x| x == "yearly snapshot"))
        {
            assert_eq!((k.time.month(), k.time.day()), (12, 31), "{}", k.time);
        }
        let oldest_yearly = keep
            .iter()
            .rev()
            .find(|k| k.reasons.iter().any(|x| x == "yearly snapshot"));
        assert_eq!(oldest_yearly.unwrap().time.year(), 1950);
    }
}
