//! `hoard check`, `hoard unlock` and the priority flags, run as the real
//! binary: check exits 1 and names the damaged pack; unlock removes the lock
//! of a SIGKILLed hoard but leaves a running restic's lock (until
//! `--remove-all`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn hoard(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoard"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env("HOARD_PASSWORD", "pw")
        .env("HOARD_TEST_FAST_KDF", "1")
        .env_remove("HOARD_REPOSITORY")
        .env_remove("HOARD_PASSWORD_FILE")
        .output()
        .expect("run hoard")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "hoard failed: {}", text(o));
    String::from_utf8(o.stdout.clone()).unwrap()
}

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

fn lock_names(repo: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo.join("locks"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                // restic writes `<id>-tmp-<n>` first, then renames it
                .filter(|n| n.len() == 64)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(repo.join("data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            v.push(f.unwrap().path());
        }
    }
    v.sort();
    v
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn check_exits_1_and_names_the_damaged_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), noise(400_000, 3)).unwrap();
    ok(&hoard(&repo, &["init"]));
    ok(&hoard(
        &repo,
        &[
            "backup",
            src.to_str().unwrap(),
            "--nice",
            "5",
            "--ionice-class",
            "2",
            "--ionice-level",
            "7",
        ],
    ));
    let out = ok(&hoard(&repo, &["check", "--read-data"]));
    assert!(out.contains("no errors were found"), "{out}");

    // Flip a byte inside the first blob of the data pack (the biggest pack).
    let data_pack = packs(&repo)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut b = std::fs::read(&data_pack).unwrap();
    b[100] ^= 1;
    std::fs::write(&data_pack, &b).unwrap();
    let name = data_pack
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    ok(&hoard(&repo, &["check"]));
    let o = hoard(&repo, &["check", "--read-data"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("error: data/") && l.contains(&name)),
        "{out}"
    );
    // Exactly one half of a 1/2 + 2/2 split reads (and reports) it.
    let failed: Vec<bool> = ["1/2", "2/2"]
        .iter()
        .map(|s| {
            !hoard(&repo, &["check", "--read-data-subset", s])
                .status
                .success()
        })
        .collect();
    assert_eq!(failed.iter().filter(|f| **f).count(), 1, "{failed:?}");
    let o = hoard(&repo, &["check", "--json", "--read-data-subset", "100%"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["problems"][0]["kind"], "pack_hash_mismatch", "{v}");

    let o = hoard(&repo, &["check", "--read-data-subset", "0/3"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("n/t"),
        "{}",
        text(&o)
    );
    let o = hoard(&repo, &["backup", src.to_str().unwrap(), "--nice", "40"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("-20..=19"),
        "{}",
        text(&o)
    );
}

/// The issue's lock test: a lock left by a SIGKILLed hoard and one written by
/// a running restic are both recognised; the stale one is cleared, the live
/// one respected (until --remove-all).
#[test]
fn unlock_clears_a_killed_hoards_lock_and_respects_a_running_restics() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3u64 {
        std::fs::write(src.join(format!("f{i}")), noise(24 << 20, i + 1)).unwrap();
    }
    ok(&hoard(&repo, &["init"]));

    let mut backup = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["--repo", repo.to_str().unwrap(), "-q", "backup"])
        .arg(&src)
        .env("HOARD_PASSWORD", "pw")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the backup's lock", || {
        assert!(
            backup.try_wait().unwrap().is_none(),
            "backup ended before it could be killed"
        );
        !lock_names(&repo).is_empty()
    });
    backup.kill().unwrap(); // SIGKILL: no chance to remove its lock
    backup.wait().unwrap();
    let hoard_lock = lock_names(&repo);
    assert_eq!(hoard_lock.len(), 1, "the killed backup left its lock");

    // restic's `backup --stdin` holds its lock while it waits for input.
    let mut restic = Command::new("/usr/bin/restic")
        .arg("-r")
        .arg(&repo)
        .args(["--no-cache", "backup", "--stdin"])
        .env("RESTIC_PASSWORD", "pw")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("restic at /usr/bin/restic (scripts/install-deps installs it)");
    wait_for("restic's lock", || lock_names(&repo).len() == 2);
    let restic_lock: Vec<String> = lock_names(&repo)
        .into_iter()
        .filter(|n| !hoard_lock.contains(n))
        .collect();

    let o = hoard(&repo, &["unlock", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["removed"], serde_json::json!(hoard_lock), "{v}");
    assert_eq!(v["live"], serde_json::json!(restic_lock), "{v}");
    assert_eq!(lock_names(&repo), restic_lock);
    let out = ok(&hoard(&repo, &["unlock"]));
    assert!(
        out.contains("is live") && out.contains("removed 0 stale"),
        "{out}"
    );

    // A shared lock beside restic's: check runs (the killed backup's packs
    // are hints, not errors).
    let out = ok(&hoard(&repo, &["check"]));
    assert!(out.contains("no errors were found"), "{out}");

    let out = ok(&hoard(&repo, &["unlock", "--remove-all"]));
    assert!(out.contains("removed 1 lock"), "{out}");
    assert!(lock_names(&repo).is_empty());
    restic.kill().unwrap();
    restic.wait().unwrap();
}
