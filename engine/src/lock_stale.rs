//! Stale-lock detection and removal with restic's rules, for locks written
//! by hoard or by restic (same `locks/<id>` format, see [`crate::lock`]).
//!
//! A lock is stale (restic 0.14 `Lock.Stale`) when it was not refreshed for
//! 30 minutes, or when it was written on this host by a process that no
//! longer exists. A lock from another host that is younger than 30 minutes
//! is live: its process cannot be checked from here. Hostnames are what the
//! lock records; in Kubernetes a pod's hostname is its own name, so the
//! process check only applies to locks from this very pod (or node, for a
//! host-network agent), where PIDs are comparable.
//!
//! Data flow: [`scan_locks`] reads and classifies every lock file;
//! [`remove_stale_locks`] deletes the stale ones with a log line each and
//! bumps [`stale_locks_removed_total`] (a counter for metrics);
//! [`remove_all_locks`] is `unlock --remove-all`.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, FixedOffset, Local};

use crate::backend::{Backend, FileType};
use crate::crypto::Key;
use crate::error::Result;
use crate::id::Id;
use crate::lock::{LockFile, STALE_AFTER};

static STALE_REMOVED: AtomicU64 = AtomicU64::new(0);

/// Stale locks this process has removed (for a Prometheus counter).
pub fn stale_locks_removed_total() -> u64 {
    STALE_REMOVED.load(Ordering::Relaxed)
}

/// Why a lock is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// Not refreshed for longer than [`STALE_AFTER`].
    Expired,
    /// Written on this host by a process that is gone.
    ProcessGone,
}

impl std::fmt::Display for Staleness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Staleness::Expired => "not refreshed for 30 minutes",
            Staleness::ProcessGone => "its process on this host no longer exists",
        })
    }
}

/// restic's rule, with the clock, host and process check passed in.
pub fn staleness(
    lock: &LockFile,
    now: DateTime<FixedOffset>,
    this_host: &str,
    process_exists: impl Fn(i64) -> bool,
) -> Option<Staleness> {
    let age = now.signed_duration_since(lock.time);
    if age.to_std().is_ok_and(|a| a > STALE_AFTER) {
        return Some(Staleness::Expired);
    }
    if lock.hostname == this_host && !process_exists(lock.pid) {
        return Some(Staleness::ProcessGone);
    }
    None
}

/// Does `pid` exist on this host? (signal 0, as restic does; EPERM means it
/// exists but belongs to someone else). Unknown PIDs count as alive.
pub fn process_exists(pid: i64) -> bool {
    // Lock files are untrusted input: Pid::from_raw asserts on negatives.
    let Some(pid) = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .and_then(rustix::process::Pid::from_raw)
    else {
        return true;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// One lock file as found.
#[derive(Debug, Clone)]
pub struct FoundLock {
    pub id: Id,
    /// `None` if it could not be read with this key (another repository
    /// key, or a lock being removed right now).
    pub lock: Option<LockFile>,
    pub stale: Option<Staleness>,
}

fn read_lock(backend: &dyn Backend, key: &Key, name: &str) -> Option<LockFile> {
    let raw = backend.read_full(FileType::Lock, name).ok()?;
    let pt = key.decrypt(&raw).ok()?;
    let json = crate::repository::unpack_unpacked(&pt, name).ok()?;
    serde_json::from_slice(&json).ok()
}

/// Reads and classifies every lock in the repository.
pub fn scan_locks(backend: &dyn Backend, key: &Key) -> Result<Vec<FoundLock>> {
    let host = crate::keyfile::current_host();
    let now = Local::now().fixed_offset();
    let mut out = Vec::new();
    for (name, _) in backend.list(FileType::Lock)? {
        let Ok(id) = name.parse::<Id>() else { continue };
        let lock = read_lock(backend, key, &name);
        let stale = lock
            .as_ref()
            .and_then(|l| staleness(l, now, &host, process_exists));
        out.push(FoundLock { id, lock, stale });
    }
    Ok(out)
}

/// Removes every stale lock (each logged, counted); returns what was removed.
/// Live locks and unreadable ones are left alone.
pub fn remove_stale_locks(backend: &dyn Backend, key: &Key) -> Result<Vec<FoundLock>> {
    let mut removed = Vec::new();
    for f in scan_locks(backend, key)? {
        let (Some(lock), Some(why)) = (&f.lock, f.stale) else {
            continue;
        };
        match backend.remove(FileType::Lock, &f.id.to_hex()) {
            Ok(()) | Err(crate::error::Error::NotFound { .. }) => {
                STALE_REMOVED.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    lock = %f.id.short(),
                    host = %lock.hostname,
                    pid = lock.pid,
                    since = %lock.time.to_rfc3339(),
                    reason = %why,
                    "removed stale repository lock"
                );
                removed.push(f);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// `unlock --remove-all`: deletes every lock file, live or not.
pub fn remove_all_locks(backend: &dyn Backend) -> Result<usize> {
    let mut n = 0;
    for (name, _) in backend.list(FileType::Lock)? {
        match backend.remove(FileType::Lock, &name) {
            Ok(()) => n += 1,
            Err(crate::error::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn lock(host: &str, pid: i64, age_min: i64) -> LockFile {
        let mut l = LockFile::new(false);
        l.hostname = host.into();
        l.pid = pid;
        l.time = Local::now().fixed_offset() - chrono::Duration::minutes(age_min);
        l
    }

    #[test]
    fn restic_rules() {
        let now = Local::now().fixed_offset();
        let alive = |_| true;
        let dead = |_| false;
        assert_eq!(
            staleness(&lock("other", 1, 31), now, "me", alive),
            Some(Staleness::Expired)
        );
        assert_eq!(staleness(&lock("other", 1, 29), now, "me", dead), None);
        assert_eq!(staleness(&lock("me", 1, 5), now, "me", alive), None);
        assert_eq!(
            staleness(&lock("me", 1, 5), now, "me", dead),
            Some(Staleness::ProcessGone)
        );
    }

    #[test]
    fn process_check() {
        assert!(process_exists(i64::from(std::process::id())));
        assert!(process_exists(1), "init exists (EPERM or not)");
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(!process_exists(i64::from(pid)), "reaped child is gone");
        assert!(process_exists(-5), "unknown pids count as alive");
        assert!(process_exists(i64::MAX) && process_exists(0));
    }

    fn write(be: &dyn Backend, key: &Key, l: &LockFile) -> Id {
        let json = serde_json::to_vec(l).unwrap();
        let data = key.encrypt(&crate::repository::pack_unpacked(&json, true).unwrap());
        let id = Id::hash(&data);
        be.write(FileType::Lock, &id.to_hex(), &data).unwrap();
        id
    }

    #[test]
    fn stale_ones_go_live_ones_stay() {
        let be = crate::MemoryBackend::new();
        let key = Key::random();
        let host = crate::keyfile::current_host();
        let mut child = Command::new("true").spawn().unwrap();
        let dead_pid = i64::from(child.id());
        child.wait().unwrap();
        let killed = write(&be, &key, &lock(&host, dead_pid, 1));
        let expired = write(&be, &key, &lock("elsewhere", 7, 45));
        let live = write(&be, &key, &lock(&host, i64::from(std::process::id()), 1));
        let remote = write(&be, &key, &lock("elsewhere", 7, 10));
        be.write(FileType::Lock, &"ee".repeat(32), b"not decryptable")
            .unwrap();
        let before = stale_locks_removed_total();
        let mut gone: Vec<Id> = remove_stale_locks(&be, &key)
            .unwrap()
            .iter()
            .map(|f| f.id)
            .collect();
        gone.sort();
        let mut want = vec![killed, expired];
        want.sort();
        assert_eq!(gone, want);
        assert!(stale_locks_removed_total() >= before + 2);
        let mut left: Vec<String> = be
            .list(FileType::Lock)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        left.sort();
        let mut want: Vec<String> = vec![live.to_hex(), remote.to_hex(), "ee".repeat(32)];
        want.sort();
        assert_eq!(left, want);
        assert_eq!(remove_all_locks(&be).unwrap(), 3);
        assert!(be.list(FileType::Lock).unwrap().is_empty());
    }

    /// A lock written by the real restic: respected while restic runs,
    /// removed once restic is killed (SIGKILL leaves its lock behind).
    #[test]
    fn restic_lock_live_then_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let be: Arc<dyn Backend> = Arc::new(crate::LocalBackend::new(&path));
        let repo = crate::Repository::init(
            be.clone(),
            "pw",
            crate::InitOptions {
                kdf: crate::KdfParams::insecure_fast(),
                ..Default::default()
            },
        )
        .unwrap();
        // `backup --stdin` holds its lock while it waits for input.
        let mut restic = Command::new("restic")
            .arg("-r")
            .arg(&path)
            .args(["--no-cache", "backup", "--stdin"])
            .env("RESTIC_PASSWORD", "pw")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run restic (scripts/install-deps installs it)");
        let deadline = Instant::now() + Duration::from_secs(60);
        let found = loop {
            let locks = scan_locks(&*be, repo.key()).unwrap();
            if !locks.is_empty() {
                break locks;
            }
            assert!(Instant::now() < deadline, "restic wrote no lock in 60 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let l = found[0].lock.as_ref().expect("restic's lock is readable");
        assert_eq!(i64::from(restic.id()), l.pid);
        assert_eq!(found[0].stale, None, "a running restic's lock is live");
        assert!(remove_stale_locks(&*be, repo.key()).unwrap().is_empty());
        assert!(
            repo.lock(true).is_err(),
            "exclusive lock refused while restic holds one"
        );

        restic.kill().unwrap();
        restic.wait().unwrap();
        let removed = remove_stale_locks(&*be, repo.key()).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].stale, Some(Staleness::ProcessGone));
        assert!(be.list(FileType::Lock).unwrap().is_empty());
        drop(repo.lock(true).unwrap());
    }
}
