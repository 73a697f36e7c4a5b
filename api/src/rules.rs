//! Restore-rule matching (seed 001, `spec.rules`): which data a host gets.
//!
//! - Rules are tried in order; the **first** matching rule is applied and no
//!   further rule is checked.
//! - A rule with hosts in `targetHosts` matches exactly those hosts. A rule
//!   with empty `targetHosts` matches every host that **no other rule names**.
//! - An empty `sourceHost` means the host itself (`host-0` ← `host-0`, ...).
//! - If no rule matches, nothing is restored on that host.
//! - No rules at all: every host gets the latest snapshot of each of its own
//!   paths (a plan with empty `paths` and `snapshots`).

use std::collections::BTreeSet;

use crate::restore::RestoreRule;

/// What to restore into one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan {
    /// The backed-up host whose data is restored.
    pub source_host: String,
    /// Paths whose latest snapshot (of `source_host`) is restored. When
    /// `snapshots` is non-empty these restrict what is taken from them.
    pub paths: Vec<String>,
    /// Snapshot IDs to restore exactly.
    pub snapshots: Vec<String>,
    /// Index of the rule that matched (`None` when the session has no rules).
    pub rule_index: Option<usize>,
}

impl RestorePlan {
    /// `true` when the plan restores the latest snapshot of every path of
    /// `source_host` (the session had no rules).
    pub fn restores_everything(&self) -> bool {
        self.paths.is_empty() && self.snapshots.is_empty()
    }
}

fn non_empty(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or_default()
}

/// The plan for `host` under `rules`, or `None` when no rule matches (then
/// nothing is restored on that host).
pub fn plan_for_host(host: &str, rules: Option<&[RestoreRule]>) -> Option<RestorePlan> {
    let rules = rules.unwrap_or_default();
    if rules.is_empty() {
        return Some(RestorePlan {
            source_host: host.to_string(),
            paths: vec![],
            snapshots: vec![],
            rule_index: None,
        });
    }
    let named: BTreeSet<&str> = rules
        .iter()
        .flat_map(|r| non_empty(&r.target_hosts))
        .map(String::as_str)
        .collect();
    let (index, rule) = rules.iter().enumerate().find(|(_, r)| {
        let targets = non_empty(&r.target_hosts);
        if targets.is_empty() {
            !named.contains(host)
        } else {
            targets.iter().any(|t| t == host)
        }
    })?;
    let source_host = match rule.source_host.as_deref() {
        None | Some("") => host.to_string(),
        Some(s) => s.to_string(),
    };
    Some(RestorePlan {
        source_host,
        paths: non_empty(&rule.paths).to_vec(),
        snapshots: non_empty(&rule.snapshots).to_vec(),
        rule_index: Some(index),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(targets: &[&str], source: &str, paths: &[&str], snaps: &[&str]) -> RestoreRule {
        let v = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        RestoreRule {
            target_hosts: v(targets),
            source_host: Some(source.to_string()),
            paths: v(paths),
            snapshots: v(snaps),
        }
    }

    fn plan(source: &str, paths: &[&str], snaps: &[&str], idx: usize) -> Option<RestorePlan> {
        Some(RestorePlan {
            source_host: source.into(),
            paths: paths.iter().map(|x| x.to_string()).collect(),
            snapshots: snaps.iter().map(|x| x.to_string()).collect(),
            rule_index: Some(idx),
        })
    }

    /// Seed 001's example: `host-3` and `host-4` get `host-1`'s data, every
    /// other host its own.
    #[test]
    fn seed_001_example() {
        let rules = vec![
            rule(&["host-3", "host-4"], "host-1", &["/source/data"], &[]),
            rule(&[], "", &["/source/data"], &[]),
        ];
        for (host, source, idx) in [
            ("host-0", "host-0", 1),
            ("host-1", "host-1", 1),
            ("host-2", "host-2", 1),
            ("host-3", "host-1", 0),
            ("host-4", "host-1", 0),
        ] {
            assert_eq!(
                plan_for_host(host, Some(&rules)),
                plan(source, &["/source/data"], &[], idx),
                "{host}"
            );
        }
    }

    #[test]
    fn empty_target_hosts_skips_hosts_named_by_a_later_rule() {
        // The catch-all comes first, but host-3 is named by the second rule,
        // so the catch-all does not apply to it.
        let rules = vec![
            rule(&[], "", &["/data"], &[]),
            rule(&["host-3"], "host-9", &["/data"], &[]),
        ];
        assert_eq!(
            plan_for_host("host-3", Some(&rules)),
            plan("host-9", &["/data"], &[], 1)
        );
        assert_eq!(
            plan_for_host("host-0", Some(&rules)),
            plan("host-0", &["/data"], &[], 0)
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            rule(&["host-1"], "host-0", &["/a"], &[]),
            rule(&["host-1"], "host-2", &["/b"], &[]),
        ];
        assert_eq!(
            plan_for_host("host-1", Some(&rules)),
            plan("host-0", &["/a"], &[], 0)
        );
    }

    #[test]
    fn no_matching_rule_restores_nothing() {
        let rules = vec![rule(
            &["host-3", "host-4"],
            "host-1",
            &["/source/data"],
            &[],
        )];
        assert_eq!(plan_for_host("host-0", Some(&rules)), None);
        assert_eq!(plan_for_host("node-a", Some(&rules)), None);
    }

    #[test]
    fn absent_source_host_is_the_host_itself() {
        let rules = vec![RestoreRule {
            target_hosts: None,
            source_host: None,
            paths: None,
            snapshots: Some(vec!["4bd8a2f1".into()]),
        }];
        assert_eq!(
            plan_for_host("node-a", Some(&rules)),
            plan("node-a", &[], &["4bd8a2f1"], 0)
        );
    }

    #[test]
    fn snapshots_and_paths_are_passed_through() {
        let rules = vec![rule(&["host-0"], "host-1", &["/data/sub"], &["abc", "def"])];
        assert_eq!(
            plan_for_host("host-0", Some(&rules)),
            plan("host-1", &["/data/sub"], &["abc", "def"], 0)
        );
    }

    #[test]
    fn no_rules_restores_everything_from_the_host_itself() {
        for rules in [None, Some(&[][..])] {
            let p = plan_for_host("host-2", rules).expect("a plan");
            assert_eq!(p.source_host, "host-2");
            assert!(p.restores_everything());
            assert_eq!(p.rule_index, None);
        }
    }
}
