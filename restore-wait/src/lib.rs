//! `restore-wait`: the init-container the Hoard webhook places first in a pod
//! that a `RestoreSession` still owes a restore.
//!
//! Data flow: the webhook injects an `emptyDir` (`hoard-restore-status`) that
//! only this container mounts, at `/hoard/status`. The node agent, which sees
//! the pod's volumes through the kubelet's pods directory, restores the data
//! and then writes `<session-uid>/done` (or `<session-uid>/failed` with the
//! reason as its content) into that directory. This process polls for those
//! markers and exits:
//!
//! * `0` when `done` appears: the application containers may start;
//! * `1` when `failed` appears: the reason goes to stderr and to the
//!   termination log, so `kubectl describe pod` shows why;
//! * `2` when the deadline passes first, with a message saying what to check;
//! * `3` when it was started wrongly (bad arguments, no status directory).
//!
//! It needs no API access, no credentials and nothing but `std`, so the image
//! that carries it stays tiny. Polling a local file once a second is cheaper
//! and simpler than inotify for a process that lives a few minutes at most.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the node agent's markers are mounted unless `--status-dir` says otherwise.
pub const DEFAULT_STATUS_DIR: &str = "/hoard/status";
/// Marker file the node agent writes when the restore for this pod finished.
pub const DONE_MARKER: &str = "done";
/// Marker file the node agent writes when the restore failed; content = reason.
pub const FAILED_MARKER: &str = "failed";
/// Kubernetes reads a container's last words from here (`terminationMessagePath`).
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// The kubelet keeps at most 4096 bytes of a termination message; reading more
/// of a failure reason would only be thrown away.
pub const MAX_REASON_BYTES: u64 = 4096;

/// Exit code when the restore finished.
pub const EXIT_DONE: i32 = 0;
/// Exit code when the node agent reported a failed restore.
pub const EXIT_FAILED: i32 = 1;
/// Exit code when the deadline passed without a marker.
pub const EXIT_DEADLINE: i32 = 2;
/// Exit code for a usage or configuration error.
pub const EXIT_USAGE: i32 = 3;

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub session_uid: String,
    pub status_dir: PathBuf,
    pub deadline: Duration,
    pub poll_interval: Duration,
    pub termination_log: PathBuf,
}

/// A command line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n\n{USAGE}", self.0)
    }
}

pub const USAGE: &str = "usage: restore-wait --session-uid <uid> [--status-dir /hoard/status] \
[--deadline-seconds 3600] [--poll-interval-ms 1000] [--termination-log /dev/termination-log]";

impl Options {
    /// Parses `args` (without the program name). Values may follow as the next
    /// argument or after `=`.
    pub fn parse<I, S>(args: I) -> Result<Options, UsageError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut session_uid = None;
        let mut status_dir = PathBuf::from(DEFAULT_STATUS_DIR);
        let mut deadline = Duration::from_secs(3600);
        let mut poll_interval = Duration::from_secs(1);
        let mut termination_log = PathBuf::from(DEFAULT_TERMINATION_LOG);

        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Err(UsageError("help requested".into()));
            }
            let mut value = || -> Result<String, UsageError> {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| UsageError(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--session-uid" => session_uid = Some(value()?),
                "--status-dir" => status_dir = PathBuf::from(value()?),
                "--deadline-seconds" => deadline = Duration::from_secs(number(&flag, &value()?)?),
                "--poll-interval-ms" => {
                    poll_interval = Duration::from_millis(number(&flag, &value()?)?.max(1))
                }
                "--termination-log" => termination_log = PathBuf::from(value()?),
                other => return Err(UsageError(format!("unknown argument {other:?}"))),
            }
        }
        let session_uid =
            session_uid.ok_or_else(|| UsageError("--session-uid is required".into()))?;
        validate_uid(&session_uid)?;
        Ok(Options {
            session_uid,
            status_dir,
            deadline,
            poll_interval,
            termination_log,
        })
    }
}

fn number(flag: &str, v: &str) -> Result<u64, UsageError> {
    v.parse()
        .map_err(|_| UsageError(format!("{flag} wants a whole number, got {v:?}")))
}

/// The uid becomes a path component; anything that could climb out of the
/// status directory is refused rather than sanitised.
fn validate_uid(uid: &str) -> Result<(), UsageError> {
    let ok = !uid.is_empty()
        && uid.len() <= 128
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && uid != "."
        && uid != "..";
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "--session-uid {uid:?} is not a Kubernetes uid (letters, digits and '-' only)"
        )))
    }
}

/// What the status directory says right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pending,
    Done,
    Failed(String),
}

/// Looks for the markers of `uid` under `status_dir`. A failure marker wins
/// over a done marker: starting an application on top of a restore that also
/// reported failure is the worse mistake.
pub fn check(status_dir: &Path, uid: &str) -> io::Result<Status> {
    let dir = status_dir.join(uid);
    match fs::File::open(dir.join(FAILED_MARKER)) {
        Ok(f) => {
            let mut raw = Vec::new();
            f.take(MAX_REASON_BYTES).read_to_end(&mut raw)?;
            let reason = String::from_utf8_lossy(&raw).trim().to_owned();
            let reason = if reason.is_empty() {
                "the node agent gave no reason".to_owned()
            } else {
                reason
            };
            return Ok(Status::Failed(reason));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match fs::metadata(dir.join(DONE_MARKER)) {
        Ok(_) => Ok(Status::Done),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Status::Pending),
        Err(e) => Err(e),
    }
}

/// How waiting ended, with the exit code and the message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub message: String,
}

/// Polls until a marker appears or the deadline passes. `sleep` is injected
/// so unit tests can run the loop without waiting on the wall clock.
pub fn wait(opts: &Options, mut sleep: impl FnMut(Duration)) -> Outcome {
    let start = Instant::now();
    let uid = &opts.session_uid;
    if !opts.status_dir.is_dir() {
        return Outcome {
            code: EXIT_USAGE,
            message: format!(
                "hoard restore-wait: status directory {} does not exist; the pod was not \
                 patched by the Hoard webhook as expected (the hoard-restore-status volume \
                 must be mounted there)",
                opts.status_dir.display()
            ),
        };
    }
    loop {
        match check(&opts.status_dir, uid) {
            Ok(Status::Done) => {
                return Outcome {
                    code: EXIT_DONE,
                    message: format!("hoard restore-wait: restore session {uid} finished"),
                };
            }
            Ok(Status::Failed(reason)) => {
                return Outcome {
                    code: EXIT_FAILED,
                    message: format!("hoard: restore session {uid} failed for this pod: {reason}"),
                };
            }
            Ok(Status::Pending) => {}
            // A transient read error (the agent is mid-write) is retried until
            // the deadline; the last one is reported if it comes to that.
            Err(e) => eprintln!("hoard restore-wait: reading markers: {e}"),
        }
        let elapsed = start.elapsed();
        if elapsed >= opts.deadline {
            return Outcome {
                code: EXIT_DEADLINE,
                message: format!(
                    "hoard: gave up after {}s waiting for restore session {uid}: the node \
                     agent wrote no marker into {}. Check `kubectl describe restoresession` \
                     and the hoard node agent's logs on this node",
                    opts.deadline.as_secs(),
                    opts.status_dir.join(uid).display()
                ),
            };
        }
        sleep(opts.poll_interval.min(opts.deadline - elapsed));
    }
}

/// Writes `message` to the termination log (best effort: outside Kubernetes
/// the file may not be writable, which must not change the exit code).
pub fn write_termination_log(path: &Path, message: &str) {
    let _ = fs::write(path, message.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f1c9a52-8d0e-4b7a-9c1e-2f5d6a7b8c9d";

    fn opts(dir: &Path, deadline: u64) -> Options {
        Options::parse([
            "--session-uid",
            UID,
            &format!("--status-dir={}", dir.display()),
            "--deadline-seconds",
            &deadline.to_string(),
        ])
        .unwrap()
    }

    #[test]
    fn parse_defaults_and_both_value_forms() {
        let o = Options::parse(["--session-uid", UID]).unwrap();
        assert_eq!(o.status_dir, PathBuf::from("/hoard/status"));
        assert_eq!(o.deadline, Duration::from_secs(3600));
        assert_eq!(o.poll_interval, Duration::from_secs(1));
        let o = Options::parse([&format!("--session-uid={UID}"), "--deadline-seconds=5"]).unwrap();
        assert_eq!(o.session_uid, UID);
        assert_eq!(o.deadline, Duration::from_secs(5));
    }

    #[test]
    fn parse_rejects_missing_unknown_and_bad_values() {
        assert!(
            Options::parse(Vec::<String>::new())
                .unwrap_err()
                .0
                .contains("required")
        );
        assert!(
            Options::parse(["--session-uid"])
                .unwrap_err()
                .0
                .contains("needs a value")
        );
        assert!(
            Options::parse(["--session-uid", UID, "--bogus"])
                .unwrap_err()
                .0
                .contains("unknown")
        );
        assert!(
            Options::parse(["--session-uid", UID, "--deadline-seconds", "soon"])
                .unwrap_err()
                .0
                .contains("whole number")
        );
    }

    #[test]
    fn parse_refuses_uids_that_could_escape_the_status_dir() {
        for bad in ["..", ".", "../etc", "a/b", "", "a\0b"] {
            assert!(
                Options::parse(["--session-uid", bad]).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn check_reports_pending_done_and_failed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path(), UID).unwrap(), Status::Pending);
        fs::create_dir(dir.path().join(UID)).unwrap();
        assert_eq!(check(dir.path(), UID).unwrap(), Status::Pending);
        fs::write(dir.path().join(UID).join("done"), "").unwrap();
        assert_eq!(check(dir.path(), UID).unwrap(), Status::Done);
        fs::write(dir.path().join(UID).join("failed"), "snapshot not found\n").unwrap();
        assert_eq!(
            check(dir.path(), UID).unwrap(),
            Status::Failed("snapshot not found".into()),
            "failed wins over done"
        );
    }

    #[test]
    fn check_ignores_markers_of_other_sessions() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("other")).unwrap();
        fs::write(dir.path().join("other").join("done"), "").unwrap();
        assert_eq!(check(dir.path(), UID).unwrap(), Status::Pending);
    }

    #[test]
    fn failure_reason_is_bounded_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(UID)).unwrap();
        fs::write(dir.path().join(UID).join("failed"), "x".repeat(10_000)).unwrap();
        let Status::Failed(r) = check(dir.path(), UID).unwrap() else {
            panic!("expected failure")
        };
        assert_eq!(r.len(), MAX_REASON_BYTES as usize);
        fs::write(dir.path().join(UID).join("failed"), "").unwrap();
        assert_eq!(
            check(dir.path(), UID).unwrap(),
            Status::Failed("the node agent gave no reason".into())
        );
    }

    #[test]
    fn wait_returns_done_once_the_marker_appears() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path(), 3600);
        let mut polls = 0;
        let out = wait(&o, |_| {
            polls += 1;
            if polls == 3 {
                fs::create_dir_all(dir.path().join(UID)).unwrap();
                fs::write(dir.path().join(UID).join("done"), "").unwrap();
            }
        });
        assert_eq!(out.code, EXIT_DONE);
        assert_eq!(polls, 3);
    }

    #[test]
    fn wait_reports_the_agents_reason() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(UID)).unwrap();
        fs::write(dir.path().join(UID).join("failed"), "repository locked").unwrap();
        let out = wait(&opts(dir.path(), 3600), |_| panic!("must not wait"));
        assert_eq!(out.code, EXIT_FAILED);
        assert!(out.message.contains("repository locked"), "{}", out.message);
        assert!(out.message.contains(UID));
    }

    #[test]
    fn wait_gives_up_at_the_deadline_with_guidance() {
        let dir = tempfile::tempdir().unwrap();
        let out = wait(&opts(dir.path(), 0), |_| panic!("deadline 0 must not wait"));
        assert_eq!(out.code, EXIT_DEADLINE);
        assert!(out.message.contains("gave up after 0s"), "{}", out.message);
        assert!(out.message.contains("kubectl describe restoresession"));
    }

    #[test]
    fn wait_refuses_a_missing_status_dir() {
        let dir = tempfile::tempdir().unwrap();
        let out = wait(&opts(&dir.path().join("absent"), 3600), |_| {
            panic!("no wait")
        });
        assert_eq!(out.code, EXIT_USAGE);
        assert!(out.message.contains("hoard-restore-status"));
    }
}
