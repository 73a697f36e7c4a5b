//! Auto-backup: a workload whose pod template carries `hoard.dev/backup: "true"`
//! gets a generated `BackupConfiguration`. This module reads those
//! annotations; the controllers generate the object, and the webhook labels
//! the pods.
//!
//! | annotation | value |
//! |---|---|
//! | `hoard.dev/backup` | `"true"` turns it on (`"false"` or absent: off) |
//! | `hoard.dev/repository` | `Repository` name; absent: one generated from the cluster-wide `RepositoryTemplate` ([`crate::template`]) |
//! | `hoard.dev/volumes` | comma-separated pod volume names; absent: every data volume |
//! | `hoard.dev/paths` | comma-separated absolute paths |
//! | `hoard.dev/schedule` | cron schedule ([`crate::schedule`]); absent: the default |
//! | `hoard.dev/retention` | `keepLast=5,keepDaily=7` ([`crate::retention`]) |

use std::collections::BTreeMap;

use crate::common::RetentionPolicy;
use crate::keys::{
    ANNOTATION_BACKUP, ANNOTATION_PATHS, ANNOTATION_REPOSITORY, ANNOTATION_RETENTION,
    ANNOTATION_SCHEDULE, ANNOTATION_VOLUMES,
};
use crate::retention::parse_retention;
use crate::schedule::validate_schedule;

/// Auto-backup settings read from pod-template annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoBackup {
    pub repository: Option<String>,
    /// Empty: every data volume of the pod.
    pub volumes: Vec<String>,
    pub paths: Vec<String>,
    pub schedule: Option<String>,
    pub retention: Option<RetentionPolicy>,
}

/// Malformed auto-backup annotations; each problem is one readable sentence
/// (the webhook returns them as admission warnings).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auto-backup annotations are invalid: {}", problems.join("; "))]
pub struct AutoBackupError {
    pub problems: Vec<String>,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads the auto-backup annotations. `Ok(None)`: auto-backup is off.
pub fn parse_auto_backup(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<AutoBackup>, AutoBackupError> {
    let Some(a) = annotations else {
        return Ok(None);
    };
    match a.get(ANNOTATION_BACKUP).map(|v| v.trim()) {
        None | Some("false") => return Ok(None),
        Some("true") => {}
        Some(other) => {
            return Err(AutoBackupError {
                problems: vec![format!(
                    "{ANNOTATION_BACKUP}={other:?}: use \"true\" or \"false\""
                )],
            });
        }
    }
    let mut problems = Vec::new();
    let mut out = AutoBackup {
        repository: a
            .get(ANNOTATION_REPOSITORY)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        volumes: a
            .get(ANNOTATION_VOLUMES)
            .map(|v| list(v))
            .unwrap_or_default(),
        paths: a.get(ANNOTATION_PATHS).map(|v| list(v)).unwrap_or_default(),
        ..Default::default()
    };
    for p in &out.paths {
        if !p.starts_with('/') {
            problems.push(format!("{ANNOTATION_PATHS}: {p:?} is not an absolute path"));
        }
    }
    if let Some(s) = a.get(ANNOTATION_SCHEDULE) {
        let s = s.trim();
        match validate_schedule(s) {
            Ok(()) => out.schedule = Some(s.to_string()),
            Err(e) => problems.push(format!("{ANNOTATION_SCHEDULE}: {e}")),
        }
    }
    if let Some(r) = a.get(ANNOTATION_RETENTION) {
        match parse_retention(r) {
            Ok(p) => out.retention = Some(p),
            Err(e) => problems.push(format!("{ANNOTATION_RETENTION}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(Some(out))
    } else {
        Err(AutoBackupError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn off_unless_true() {
        assert_eq!(parse_auto_backup(None), Ok(None));
        assert_eq!(parse_auto_backup(Some(&ann(&[]))), Ok(None));
        assert_eq!(
            parse_auto_backup(Some(&ann(&[(ANNOTATION_BACKUP, "false")]))),
            Ok(None)
        );
        let e = parse_auto_backup(Some(&ann(&[(ANNOTATION_BACKUP, "yes")]))).unwrap_err();
        assert!(e.to_string().contains("use \"true\" or \"false\""), "{e}");
    }

    #[test]
    fn reads_every_annotation() {
        let got = parse_auto_backup(Some(&ann(&[
            (ANNOTATION_BACKUP, "true"),
            (ANNOTATION_REPOSITORY, "s3-repo"),
            (ANNOTATION_VOLUMES, "data, logs"),
            (ANNOTATION_PATHS, "/var/lib/data"),
            (ANNOTATION_SCHEDULE, "0 */6 * * *"),
            (ANNOTATION_RETENTION, "keepLast=5,prune=true"),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(got.repository.as_deref(), Some("s3-repo"));
        assert_eq!(got.volumes, vec!["data", "logs"]);
        assert_eq!(got.paths, vec!["/var/lib/data"]);
        assert_eq!(got.schedule.as_deref(), Some("0 */6 * * *"));
        let r = got.retention.unwrap();
        assert_eq!((r.keep_last, r.prune), (Some(5), Some(true)));
    }

    #[test]
    fn minimal_annotation_means_defaults() {
        let got = parse_auto_backup(Some(&ann(&[(ANNOTATION_BACKUP, "true")])))
            .unwrap()
            .unwrap();
        assert_eq!(got, AutoBackup::default());
    }

    #[test]
    fn every_problem_is_reported() {
        let e = parse_auto_backup(Some(&ann(&[
            (ANNOTATION_BACKUP, "true"),
            (ANNOTATION_PATHS, "data"),
            (ANNOTATION_SCHEDULE, "every day"),
            (ANNOTATION_RETENTION, "keepLast=x"),
        ])))
        .unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert!(e.problems[0].contains("not an absolute path"));
        assert!(e.problems[1].starts_with("hoard.dev/schedule: "));
        assert!(e.problems[2].starts_with("hoard.dev/retention: "));
    }
}
