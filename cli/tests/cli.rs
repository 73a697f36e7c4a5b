//! Runs the real `hoard` binary: init → backup → snapshots --json → ls →
//! restore gives identical bytes; wrong password and non-empty targets fail
//! with exit 1 and a message that says what to do.

use std::path::Path;
use std::process::{Command, Output};

fn hoard(repo: &Path, password: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoard"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env("HOARD_PASSWORD", password)
        .env("HOARD_TEST_FAST_KDF", "1")
        .env_remove("HOARD_REPOSITORY")
        .env_remove("HOARD_PASSWORD_FILE")
        .output()
        .expect("run hoard")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "hoard failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn assert_same_tree(a: &Path, b: &Path) {
    let mut names_a: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names_b: Vec<_> = std::fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "{} vs {}", a.display(), b.display());
    for n in names_a {
        let (pa, pb) = (a.join(&n), b.join(&n));
        let ma = std::fs::symlink_metadata(&pa).unwrap();
        if ma.is_dir() {
            assert_same_tree(&pa, &pb);
        } else if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&pa).unwrap(),
                std::fs::read_link(&pb).unwrap()
            );
        } else {
            assert_eq!(
                std::fs::read(&pa).unwrap(),
                std::fs::read(&pb).unwrap(),
                "{}",
                pa.display()
            );
        }
    }
}

#[test]
fn init_backup_snapshots_ls_restore_roundtrip() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), b"hello\n").unwrap();
    std::fs::write(src.join("sub/log.txt"), b"a log line\n".repeat(50_000)).unwrap();
    let rnd: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    std::fs::write(src.join("sub/deeper/big.bin"), &rnd).unwrap();
    std::os::unix::fs::symlink("../a.txt", src.join("sub/link")).unwrap();

    let out = ok(&hoard(&repo, "pw", &["init", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["message_type"], "initialized");

    let out = ok(&hoard(
        &repo,
        "pw",
        &[
            "backup",
            src.to_str().unwrap(),
            "--host",
            "host-2",
            "--path",
            "/data",
            "--tag",
            "t1",
            "--json",
        ],
    ));
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["files_new"], 3, "{summary}");
    assert_eq!(summary["incomplete"], false);
    let snap_id = summary["snapshot_id"].as_str().unwrap().to_string();

    let out = ok(&hoard(
        &repo,
        "pw",
        &[
            "snapshots",
            "--json",
            "--host",
            "host-2",
            "--tag",
            "t1",
            "--path",
            "/data",
        ],
    ));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], snap_id);
    assert_eq!(list[0]["hostname"], "host-2");
    assert_eq!(list[0]["paths"][0], "/data");
    let out = ok(&hoard(
        &repo,
        "pw",
        &["snapshots", "--json", "--host", "other"],
    ));
    assert_eq!(out.trim(), "[]");

    let out = ok(&hoard(&repo, "pw", &["ls", &snap_id[..8]]));
    assert!(
        out.lines().any(|l| l == "/data/sub/deeper/big.bin"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "/data/sub/link"), "{out}");

    let target = tmp.path().join("restored");
    ok(&hoard(
        &repo,
        "pw",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    ));
    assert_same_tree(&src, &target.join("data"));

    // A second backup of unchanged data reads nothing new.
    let out = ok(&hoard(
        &repo,
        "pw",
        &[
            "backup",
            src.to_str().unwrap(),
            "--host",
            "host-2",
            "--path",
            "/data",
            "--json",
        ],
    ));
    let s2: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s2["files_unmodified"], 3, "{s2}");
    assert_eq!(s2["parent"], snap_id.as_str());

    // Refuses a non-empty target unless asked.
    let o = hoard(
        &repo,
        "pw",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    ok(&hoard(
        &repo,
        "pw",
        &[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
        ],
    ));
}

#[test]
fn wrong_password_and_missing_repo_fail_with_guidance() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let o = hoard(&repo, "pw", &["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hoard init"), "{err}");

    ok(&hoard(&repo, "pw", &["init"]));
    let o = hoard(&repo, "nope", &["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("wrong password") && err.contains("--password-file"),
        "{err}"
    );
}

#[test]
fn password_file_and_key_add() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&hoard(&repo, "first", &["init"]));
    let newpw = tmp.path().join("new");
    std::fs::write(&newpw, "second\n").unwrap();
    ok(&hoard(
        &repo,
        "first",
        &["key", "add", "--new-password-file", newpw.to_str().unwrap()],
    ));
    // The password file (trailing newline stripped, as restic does) opens it.
    let o = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args([
            "--repo",
            repo.to_str().unwrap(),
            "--password-file",
            newpw.to_str().unwrap(),
            "key",
            "list",
            "--json",
        ])
        .env_remove("HOARD_PASSWORD")
        .output()
        .unwrap();
    let keys: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    // No password source and no terminal: a clear error, not a hang.
    let o = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["--repo", repo.to_str().unwrap(), "snapshots"])
        .env_remove("HOARD_PASSWORD")
        .env_remove("HOARD_PASSWORD_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HOARD_PASSWORD"));
}

/// Ctrl-C during a backup: exit 130, no snapshot, the repository stays
/// valid for restic and the next backup succeeds.
#[test]
fn sigint_cancels_backup_with_exit_130() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // A large sparse file keeps the backup busy long enough to be interrupted.
    let f = std::fs::File::create(src.join("sparse.img")).unwrap();
    f.set_len(64 << 30).unwrap();
    ok(&hoard(&repo, "pw", &["init"]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args([
            "--repo",
            repo.to_str().unwrap(),
            "backup",
            src.to_str().unwrap(),
            "--path",
            "/data",
        ])
        .env("HOARD_PASSWORD", "pw")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The backup holds a lock file while it runs: wait for that condition.
    let locks = repo.join("locks");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&locks).unwrap().next().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "backup never took its lock"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before it could be interrupted"
        );
        std::thread::yield_now();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ok(&hoard(&repo, "pw", &["snapshots", "--json"]));
    assert_eq!(out.trim(), "[]", "a cancelled backup writes no snapshot");
    assert!(
        std::fs::read_dir(&locks).unwrap().next().is_none(),
        "lock removed"
    );
    std::fs::remove_file(src.join("sparse.img")).unwrap();
    std::fs::write(src.join("small"), b"x").unwrap();
    ok(&hoard(
        &repo,
        "pw",
        &["backup", src.to_str().unwrap(), "--path", "/data"],
    ));
}

#[test]
fn missing_source_is_named_once() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&hoard(&repo, "pw", &["init"]));
    let missing = tmp.path().join("nope");
    let o = hoard(
        &repo,
        "pw",
        &["backup", missing.to_str().unwrap(), "--path", "/data"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

/// Bytes that neither compress nor deduplicate (xorshift), so a backup
/// writes packs at a steady pace.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn sigkill_mid_backup_leaves_a_repository_restic_accepts_and_the_next_backup_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4u64 {
        std::fs::write(src.join(format!("f{i}")), noise(24 << 20, i + 1)).unwrap();
    }
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    ok(&hoard(&repo, "pw", &["init"]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["--repo", repo.to_str().unwrap(), "-q", "backup"])
        .arg(&src)
        .args(["--host", "h", "--path", "/data"])
        .env("HOARD_PASSWORD", "pw")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it holds its lock and has uploaded at least one pack.
    let packs = |repo: &Path| -> usize {
        std::fs::read_dir(repo.join("data"))
            .unwrap()
            .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while packs(&repo) == 0 || std::fs::read_dir(repo.join("locks")).unwrap().count() == 0 {
        assert!(std::time::Instant::now() < deadline, "backup wrote no pack");
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        std::fs::read_dir(repo.join("locks")).unwrap().count() > 0,
        "the killed backup left its lock behind"
    );

    // The next backup clears the dead process's lock and succeeds.
    ok(&hoard(
        &repo,
        "pw",
        &[
            "backup",
            src.to_str().unwrap(),
            "--host",
            "h",
            "--path",
            "/data",
        ],
    ));
    assert_eq!(
        std::fs::read_dir(repo.join("locks")).unwrap().count(),
        0,
        "no lock left after a clean backup"
    );
    let check = Command::new("restic")
        .args(["-r", repo.to_str().unwrap(), "--password-file"])
        .arg(&pw)
        .args(["--no-cache", "check", "--read-data"])
        .output()
        .expect("restic is installed by scripts/install-deps");
    assert!(
        check.status.success(),
        "restic check failed:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let target = tmp.path().join("out");
    ok(&hoard(
        &repo,
        "pw",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    ));
    assert_same_tree(&src, &target.join("data"));
}

fn restic_ok(repo: &Path, pw: &Path, args: &[&str]) -> String {
    let out = Command::new("restic")
        .args(["-r", repo.to_str().unwrap(), "--password-file"])
        .arg(pw)
        .arg("--no-cache")
        .args(args)
        .output()
        .expect("restic is installed by scripts/install-deps");
    assert!(
        out.status.success(),
        "restic {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Backs up `src` four times, each time with one file kept for good
/// (`keep{k}`, 10 MiB) and one that only this snapshot has (`drop{k}`), so
/// forgetting all but the last snapshot leaves partly used packs.
fn four_backups(tmp: &Path, repo: &Path, src: &Path, mib: usize) {
    std::fs::create_dir_all(src).unwrap();
    ok(&hoard(repo, "pw", &["init"]));
    for k in 0..4u64 {
        if k > 0 {
            std::fs::remove_file(src.join(format!("drop{}", k - 1))).unwrap();
        }
        std::fs::write(src.join(format!("keep{k}")), noise(mib << 20, 100 + k)).unwrap();
        std::fs::write(src.join(format!("drop{k}")), noise(mib << 20, 200 + k)).unwrap();
        ok(&hoard(
            repo,
            "pw",
            &[
                "-q",
                "backup",
                src.to_str().unwrap(),
                "--host",
                "h",
                "--path",
                "/data",
            ],
        ));
    }
    let _ = tmp;
}

#[test]
fn forget_dry_run_shows_reasons_then_forget_prune_frees_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    four_backups(tmp.path(), &repo, &src, 2);
    let snaps = |repo: &Path| -> Vec<serde_json::Value> {
        serde_json::from_str(&ok(&hoard(repo, "pw", &["--json", "snapshots"]))).unwrap()
    };
    assert_eq!(snaps(&repo).len(), 4);

    // Dry run: what goes, what stays and why; nothing changes.
    let out = ok(&hoard(
        &repo,
        "pw",
        &[
            "forget",
            "--keep-last",
            "1",
            "--keep-daily",
            "1",
            "--dry-run",
        ],
    ));
    assert!(
        out.contains("snapshots for host [h], paths [/data]"),
        "{out}"
    );
    assert!(out.contains("keep 1 snapshots"), "{out}");
    assert!(out.contains("last snapshot, daily snapshot"), "{out}");
    assert!(out.contains("remove 3 snapshots"), "{out}");
    assert!(out.contains("would remove 3 snapshots"), "{out}");
    assert_eq!(snaps(&repo).len(), 4, "a dry run removes nothing");
    let j: serde_json::Value = serde_json::from_str(&ok(&hoard(
        &repo,
        "pw",
        &["--json", "forget", "--keep-last", "1", "--dry-run"],
    )))
    .unwrap();
    assert_eq!(j[0]["keep"].as_array().unwrap().len(), 1);
    assert_eq!(j[0]["remove"].as_array().unwrap().len(), 3);
    assert_eq!(j[0]["reasons"][0]["matches"][0], "last snapshot");

    // No policy: refused with guidance.
    let o = hoard(&repo, "pw", &["forget"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--keep-last"));
    let o = hoard(&repo, "pw", &["prune", "--max-unused", "lots"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("percentage"));

    // prune --dry-run, then forget --prune for real.
    let out = ok(&hoard(&repo, "pw", &["prune", "--dry-run"]));
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    let out = ok(&hoard(
        &repo,
        "pw",
        &["forget", "--keep-last", "1", "--prune"],
    ));
    assert!(out.contains("removed 3 snapshots"), "{out}");
    assert!(out.contains("index: wrote"), "{out}");
    assert_eq!(snaps(&repo).len(), 1);
    // Three 2 MiB files that only the forgotten snapshots had are gone.
    let j: serde_json::Value =
        serde_json::from_str(&ok(&hoard(&repo, "pw", &["--json", "prune", "--dry-run"]))).unwrap();
    assert_eq!(j["blobs_unused"], 0, "{j}");
    let used = j["bytes_used"].as_u64().unwrap();
    assert!(
        used > 4 * (2 << 20) + (2 << 20) - 1 && used < 6 * (2 << 20),
        "{j}"
    );
    restic_ok(&repo, &pw, &["check", "--read-data"]);
    let target = tmp.path().join("out");
    ok(&hoard(
        &repo,
        "pw",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    ));
    assert_same_tree(&src, &target.join("data"));
}

#[test]
fn sigkill_mid_prune_leaves_a_repository_restic_accepts_and_the_next_prune_completes() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    four_backups(tmp.path(), &repo, &src, 10);
    ok(&hoard(&repo, "pw", &["forget", "--keep-last", "1"]));
    let plan: serde_json::Value =
        serde_json::from_str(&ok(&hoard(&repo, "pw", &["--json", "prune", "--dry-run"]))).unwrap();
    assert!(plan["packs_repacked"].as_u64().unwrap() >= 2, "{plan}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["--repo", repo.to_str().unwrap(), "prune"])
        .env("HOARD_PASSWORD", "pw")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once it has repacked one pack and has more to do.
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let hit = line.starts_with("prune: repacking packs: 1/");
        seen.push(line);
        if hit {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "prune was not killed mid-way ({status}); it printed {seen:?}"
    );

    // restic accepts what is left (the dead process's lock is stale).
    restic_ok(&repo, &pw, &["unlock"]);
    restic_ok(&repo, &pw, &["check"]);
    // The next prune clears the dead lock itself and completes.
    let out = ok(&hoard(&repo, "pw", &["prune"]));
    assert!(out.contains("index: wrote"), "{out}");
    let j: serde_json::Value =
        serde_json::from_str(&ok(&hoard(&repo, "pw", &["--json", "prune", "--dry-run"]))).unwrap();
    assert_eq!(
        (j["packs_deleted"].as_u64(), j["packs_repacked"].as_u64()),
        (Some(0), Some(0)),
        "{j}"
    );
    restic_ok(&repo, &pw, &["check", "--read-data"]);
    let target = tmp.path().join("out");
    ok(&hoard(
        &repo,
        "pw",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    ));
    assert_same_tree(&src, &target.join("data"));
}
