//! Snapshot files (`snapshots/<id>`), field for field as restic 0.14 writes
//! them, and restic's filters (`--host`, `--tag`, `--path`, `latest`).

use chrono::{DateTime, FixedOffset, Local};
use serde::{Deserialize, Serialize};

use crate::id::Id;

/// A snapshot: what was backed up, when, from where.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub time: DateTime<FixedOffset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub tree: Id,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub program_version: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Snapshot {
    /// A snapshot of `tree` taken now, with this process's user and program
    /// version; the caller sets hostname, paths, tags and parent.
    pub fn new(tree: Id, paths: Vec<String>, hostname: impl Into<String>) -> Snapshot {
        Snapshot {
            time: Local::now().fixed_offset(),
            parent: None,
            tree,
            paths,
            hostname: hostname.into(),
            username: crate::keyfile::current_user(),
            uid: own_uid(),
            gid: own_gid(),
            excludes: vec![],
            tags: vec![],
            original: None,
            program_version: format!("hoard {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// restic's `--tag a,b` semantics: each group is a comma-separated list
    /// that must all be present; any group matching is enough.
    pub fn has_tag_group(&self, groups: &[String]) -> bool {
        groups.is_empty()
            || groups.iter().any(|g| {
                g.split(',')
                    .filter(|t| !t.is_empty())
                    .all(|t| self.tags.iter().any(|have| have == t))
            })
    }

    /// restic's `--path`: the snapshot must contain all given paths.
    pub fn has_paths(&self, paths: &[String]) -> bool {
        paths
            .iter()
            .all(|p| self.paths.iter().any(|have| have == p))
    }
}

fn own_uid() -> u32 {
    uid_gid().0
}

fn own_gid() -> u32 {
    uid_gid().1
}

fn uid_gid() -> (u32, u32) {
    // /proc/self/status avoids an unsafe libc call.
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Uid:"), field("Gid:"))
}

/// Which snapshots to consider (restic's `--host`, `--tag`, `--path`).
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Any of these hosts (empty: all).
    pub hosts: Vec<String>,
    /// Tag groups, see [`Snapshot::has_tag_group`].
    pub tags: Vec<String>,
    /// All of these paths.
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && s.has_tag_group(&self.tags)
            && s.has_paths(&self.paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESTIC_JSON: &str = r#"{"time":"2022-10-04T13:32:56.123456789+02:00","parent":"2da81727b6585232894cfbb8f8bdab8d1eccd3d8f7c92bc934d62e62e618ffdf","tree":"b26e315b0988ddcd1cee64c351d13a100fedbc9fdbb144a67d1b765ab280b4dc","paths":["/data"],"hostname":"host-2","username":"fd0","uid":1000,"gid":100,"tags":["a","b"],"program_version":"restic 0.14.0"}"#;

    #[test]
    fn restic_json_roundtrip() {
        let s: Snapshot = serde_json::from_str(RESTIC_JSON).unwrap();
        assert_eq!(s.time.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(s.hostname, "host-2");
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&j).unwrap(), s);
        assert!(
            j.contains(r#""time":"2022-10-04T13:32:56.123456789+02:00""#),
            "{j}"
        );
        assert!(!j.contains("excludes") && !j.contains("original"));
    }

    #[test]
    fn filters() {
        let s: Snapshot = serde_json::from_str(RESTIC_JSON).unwrap();
        let f = |hosts: &[&str], tags: &[&str], paths: &[&str]| SnapshotFilter {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
        };
        assert!(f(&[], &[], &[]).matches(&s));
        assert!(f(&["x", "host-2"], &["a,b"], &["/data"]).matches(&s));
        assert!(!f(&["x"], &[], &[]).matches(&s));
        assert!(!f(&[], &["a,c"], &[]).matches(&s));
        assert!(f(&[], &["a,c", "b"], &[]).matches(&s));
        assert!(!f(&[], &[], &["/data", "/other"]).matches(&s));
    }
}
