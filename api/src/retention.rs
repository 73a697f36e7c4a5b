//! The `hoard.dev/retention` annotation value, parsed into a
//! [`RetentionPolicy`].
//!
//! Syntax: comma-separated `key=value` pairs, spaces around them ignored:
//!
//! ```text
//! keepLast=5,keepDaily=7,keepWeekly=4,keepTags=release|golden,prune=true
//! ```
//!
//! - `keepLast`, `keepHourly`, `keepDaily`, `keepWeekly`, `keepMonthly`,
//!   `keepYearly`: a non-negative integer;
//! - `keepTags`: tags separated by `|`;
//! - `prune`, `dryRun`: `true` or `false`.
//!
//! Keys are the field names of `spec.retentionPolicy`, so what a user writes
//! in the annotation is what they would write in a `BackupConfiguration`.

use crate::common::RetentionPolicy;

/// Keys accepted in the retention annotation.
pub const RETENTION_KEYS: &[&str] = &[
    "keepLast",
    "keepHourly",
    "keepDaily",
    "keepWeekly",
    "keepMonthly",
    "keepYearly",
    "keepTags",
    "prune",
    "dryRun",
];

/// A retention annotation that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "retention {value:?} is invalid: {reason}. Write comma-separated key=value pairs, e.g. \"keepLast=5,keepDaily=7,prune=true\"; keys: keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly (numbers), keepTags (tags separated by |), prune, dryRun (true/false)"
)]
pub struct RetentionError {
    pub value: String,
    pub reason: String,
}

/// Parses a `hoard.dev/retention` value (syntax in the module docs).
pub fn parse_retention(value: &str) -> Result<RetentionPolicy, RetentionError> {
    let fail = |reason: String| RetentionError {
        value: value.to_string(),
        reason,
    };
    let mut policy = RetentionPolicy::default();
    let mut seen: Vec<&str> = Vec::new();
    if value.trim().is_empty() {
        return Err(fail("it is empty".into()));
    }
    for pair in value.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            return Err(fail("it has an empty entry (two commas in a row?)".into()));
        }
        let Some((key, val)) = pair.split_once('=') else {
            return Err(fail(format!("{pair:?} has no `=`")));
        };
        let (key, val) = (key.trim(), val.trim());
        if seen.contains(&key) {
            return Err(fail(format!("{key} is given twice")));
        }
        seen.push(key);
        let number = || -> Result<Option<i64>, RetentionError> {
            match val.parse::<u32>() {
                Ok(n) => Ok(Some(i64::from(n))),
                Err(_) => Err(fail(format!(
                    "{key}={val:?}: expected a non-negative number"
                ))),
            }
        };
        let flag = || -> Result<Option<bool>, RetentionError> {
            match val {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(fail(format!("{key}={val:?}: expected true or false"))),
            }
        };
        match key {
            "keepLast" => policy.keep_last = number()?,
            "keepHourly" => policy.keep_hourly = number()?,
            "keepDaily" => policy.keep_daily = number()?,
            "keepWeekly" => policy.keep_weekly = number()?,
            "keepMonthly" => policy.keep_monthly = number()?,
            "keepYearly" => policy.keep_yearly = number()?,
            "keepTags" => {
                let tags: Vec<String> = val.split('|').map(|t| t.trim().to_string()).collect();
                if tags.iter().any(String::is_empty) {
                    return Err(fail(format!("keepTags={val:?}: a tag is empty")));
                }
                policy.keep_tags = Some(tags);
            }
            "prune" => policy.prune = flag()?,
            "dryRun" => policy.dry_run = flag()?,
            other => return Err(fail(format!("unknown key {other:?}"))),
        }
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let p = parse_retention(
            "keepLast=5, keepHourly=1,keepDaily=7,keepWeekly=4,keepMonthly=12,keepYearly=3,keepTags=release|golden,prune=true,dryRun=false",
        )
        .unwrap();
        assert_eq!(
            p,
            RetentionPolicy {
                name: None,
                keep_last: Some(5),
                keep_hourly: Some(1),
                keep_daily: Some(7),
                keep_weekly: Some(4),
                keep_monthly: Some(12),
                keep_yearly: Some(3),
                keep_tags: Some(vec!["release".into(), "golden".into()]),
                prune: Some(true),
                dry_run: Some(false),
            }
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        for (bad, reason) in [
            ("", "it is empty"),
            ("keepLast=5,,keepDaily=1", "empty entry"),
            ("keepLast", "has no `=`"),
            ("keepLast=-1", "non-negative number"),
            ("keepLast=five", "non-negative number"),
            ("prune=yes", "true or false"),
            ("keepLast=1,keepLast=2", "given twice"),
            ("keep_last=1", "unknown key"),
            ("keepTags=a||b", "a tag is empty"),
        ] {
            let e = parse_retention(bad).unwrap_err();
            assert!(e.reason.contains(reason), "{bad}: {e}");
            assert!(e.to_string().contains("e.g. \"keepLast=5"), "{e}");
        }
    }
}
