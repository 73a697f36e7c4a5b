//! Runs the real `restore-wait` binary the way the kubelet does and checks
//! exit codes, stderr and the termination log.

use std::fs;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_restore-wait");
const UID: &str = "0b6f3f6e-5a56-4a8e-b0f5-54b1b1f0c0de";

fn command(dir: &std::path::Path, deadline: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--session-uid", UID, "--poll-interval-ms", "5"])
        .arg("--status-dir")
        .arg(dir.join("status"))
        .arg("--termination-log")
        .arg(dir.join("termination-log"))
        .args(["--deadline-seconds", deadline])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn exits_zero_when_the_agent_writes_done_while_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("status")).unwrap();
    // The deadline only bounds the test if the binary never sees the marker.
    let child = command(dir.path(), "60").spawn().unwrap();
    fs::create_dir(dir.path().join("status").join(UID)).unwrap();
    fs::write(dir.path().join("status").join(UID).join("done"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("finished"));
    assert!(!dir.path().join("termination-log").exists());
}

#[test]
fn prints_the_failure_reason_and_writes_the_termination_log() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("status").join(UID)).unwrap();
    fs::write(
        dir.path().join("status").join(UID).join("failed"),
        "no snapshot for host-1 in repository gcs-repo",
    )
    .unwrap();
    let out = command(dir.path(), "60").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no snapshot for host-1"), "{stderr}");
    let log = fs::read_to_string(dir.path().join("termination-log")).unwrap();
    assert_eq!(log.trim(), stderr.trim());
}

#[test]
fn exits_two_with_a_message_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("status")).unwrap();
    let out = command(dir.path(), "0").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gave up"), "{stderr}");
    assert!(
        fs::read_to_string(dir.path().join("termination-log"))
            .unwrap()
            .contains("gave up")
    );
}

#[test]
fn usage_errors_exit_three() {
    let out = Command::new(BIN)
        .arg("--session-uid=../x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}
