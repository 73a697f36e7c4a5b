//! Repository locks (`locks/<id>`), restic-compatible. A lock is an encrypted
//! JSON file; a held lock is rewritten every few minutes so other clients see
//! it is alive (restic considers locks older than 30 minutes stale), and
//! removed when the guard drops.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Local};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileType};
use crate::crypto::Key;
use crate::error::{Error, Result};
use crate::id::Id;

/// Stale locks this process has removed (restic's or ours), for the agent's
/// metrics; each removal is also logged.
pub fn stale_locks_removed() -> u64 {
    crate::lock_stale::stale_locks_removed_total()
}

/// Locks older than this are stale (restic's rule).
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a held lock is refreshed (restic: every 5 minutes).
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LockFile {
    pub time: DateTime<FixedOffset>,
    pub exclusive: bool,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub pid: i64,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

impl LockFile {
    pub fn new(exclusive: bool) -> LockFile {
        let s = crate::snapshot::Snapshot::new(Id::default(), vec![], "");
        LockFile {
            time: Local::now().fixed_offset(),
            exclusive,
            hostname: crate::keyfile::current_host(),
            username: crate::keyfile::current_user(),
            pid: i64::from(std::process::id()),
            uid: s.uid,
            gid: s.gid,
        }
    }

    pub fn is_stale(&self) -> bool {
        let age = Local::now().fixed_offset().signed_duration_since(self.time);
        age.to_std().map(|a| a > STALE_AFTER).unwrap_or(false)
    }

    fn describe(&self) -> String {
        format!(
            "{} lock of {}@{} (pid {}, since {})",
            if self.exclusive {
                "an exclusive"
            } else {
                "a shared"
            },
            self.username,
            self.hostname,
            self.pid,
            self.time.to_rfc3339()
        )
    }
}

/// Writes a lock file; returns its id.
fn write_lock(backend: &dyn Backend, key: &Key, lf: &LockFile) -> Result<Id> {
    let json = serde_json::to_vec(lf).map_err(|source| Error::Encode {
        what: "lock",
        source,
    })?;
    let data = key.encrypt(&crate::repository::pack_unpacked(&json, true)?);
    let id = Id::hash(&data);
    backend.write(FileType::Lock, &id.to_hex(), &data)?;
    Ok(id)
}

/// All readable locks except `own`. Unreadable lock files are skipped: they
/// may be mid-removal, and a foreign key cannot decrypt them anyway.
fn other_locks(backend: &dyn Backend, key: &Key, own: Option<Id>) -> Result<Vec<LockFile>> {
    let mut out = Vec::new();
    for (name, _) in backend.list(FileType::Lock)? {
        if own.map(|o| o.to_hex()) == Some(name.clone()) {
            continue;
        }
        let Ok(raw) = backend.read_full(FileType::Lock, &name) else {
            continue;
        };
        let Ok(pt) = key.decrypt(&raw) else { continue };
        let Ok(json) = crate::repository::unpack_unpacked(&pt, &name) else {
            continue;
        };
        if let Ok(lf) = serde_json::from_slice::<LockFile>(&json) {
            out.push(lf);
        }
    }
    Ok(out)
}

fn conflict(locks: &[LockFile], exclusive: bool) -> Option<&LockFile> {
    locks
        .iter()
        .filter(|l| !l.is_stale())
        .find(|l| l.exclusive || exclusive)
}

/// A held lock. Dropping it stops the refresher and removes the file.
#[derive(Debug)]
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    current: Arc<Mutex<Option<Id>>>,
    /// Completed refreshes, signalled on each.
    refreshes: Arc<(Mutex<u64>, Condvar)>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// Takes a shared or exclusive lock, failing if a live conflicting lock
    /// exists (checked before and after writing ours, as restic does, to
    /// catch a racing client).
    pub fn acquire(backend: Arc<dyn Backend>, key: &Key, exclusive: bool) -> Result<LockGuard> {
        Self::acquire_with(backend, key, exclusive, REFRESH_EVERY)
    }

    /// [`LockGuard::acquire`] with another refresh interval (tests).
    pub fn acquire_with(
        backend: Arc<dyn Backend>,
        key: &Key,
        exclusive: bool,
        refresh_every: Duration,
    ) -> Result<LockGuard> {
        // A lock left by a crashed or killed process (restic's or ours) would
        // otherwise block `restic check`/`prune` until someone runs `unlock`:
        // remove the ones restic itself would call stale, each logged.
        crate::lock_stale::remove_stale_locks(&*backend, key)?;
        if let Some(l) = conflict(&other_locks(&*backend, key, None)?, exclusive) {
            return Err(Error::Locked {
                holder: l.describe(),
            });
        }
        let id = write_lock(&*backend, key, &LockFile::new(exclusive))?;
        if let Some(l) = conflict(&other_locks(&*backend, key, Some(id))?, exclusive) {
            let holder = l.describe();
            let _ = backend.remove(FileType::Lock, &id.to_hex());
            return Err(Error::Locked { holder });
        }
        let current = Arc::new(Mutex::new(Some(id)));
        let (tx, rx) = mpsc::channel::<()>();
        let refreshes = Arc::new((Mutex::new(0u64), Condvar::new()));
        let (be, cur, key, done) = (
            backend.clone(),
            current.clone(),
            key.clone(),
            refreshes.clone(),
        );
        let refresher = std::thread::Builder::new()
            .name("hoard-lock-refresh".into())
            .spawn(move || {
                // recv_timeout doubles as the wake-up timer and the stop signal.
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(refresh_every) {
                    // restic's refresh: write a new lock file, then remove
                    // the old one, so the lock never disappears meanwhile.
                    if let Ok(new) = write_lock(&*be, &key, &LockFile::new(exclusive)) {
                        let mut c = cur.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(old) = c.replace(new)
                            && old != new
                        {
                            let _ = be.remove(FileType::Lock, &old.to_hex());
                        }
                        drop(c);
                        let (n, cv) = &*done;
                        *n.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        cv.notify_all();
                        tracing::debug!(lock = %new.short(), "refreshed repository lock");
                    } else {
                        tracing::warn!("could not refresh repository lock");
                    }
                }
            })
            .map_err(|e| Error::io("spawn lock refresher", "", e))?;
        Ok(LockGuard {
            backend,
            current,
            refreshes,
            stop: Some(tx),
            refresher: Some(refresher),
        })
    }

    /// How many times the lock has been refreshed so far.
    pub fn refresh_count(&self) -> u64 {
        *self.refreshes.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the refresh count exceeds `seen`; returns the new count,
    /// or `None` after `timeout`.
    pub fn wait_refreshed(&self, seen: u64, timeout: Duration) -> Option<u64> {
        let (n, cv) = &*self.refreshes;
        let g = n.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = cv
            .wait_timeout_while(g, timeout, |c| *c <= seen)
            .unwrap_or_else(|e| e.into_inner());
        (*g > seen).then_some(*g)
    }

    /// Id of the lock file currently held.
    pub fn id(&self) -> Option<Id> {
        *self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        if let Some(id) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = self.backend.remove(FileType::Lock, &id.to_hex());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    #[test]
    fn shared_exclusive_rules_and_removal() {
        let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let key = Key::random();
        let a = LockGuard::acquire(be.clone(), &key, false).unwrap();
        let b = LockGuard::acquire(be.clone(), &key, false).unwrap();
        let e = LockGuard::acquire(be.clone(), &key, true).unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        assert_eq!(be.list(FileType::Lock).unwrap().len(), 2);
        drop(a);
        drop(b);
        assert!(be.list(FileType::Lock).unwrap().is_empty());
        let x = LockGuard::acquire(be.clone(), &key, true).unwrap();
        assert!(LockGuard::acquire(be.clone(), &key, false).is_err());
        drop(x);
    }

    #[test]
    fn stale_lock_is_ignored_and_json_is_restic_shaped() {
        let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let key = Key::random();
        let mut old = LockFile::new(true);
        old.time -= chrono::Duration::hours(1);
        write_lock(&*be, &key, &old).unwrap();
        let g = LockGuard::acquire(be.clone(), &key, false).unwrap();
        drop(g);
        let j = serde_json::to_string(&LockFile::new(false)).unwrap();
        for f in [
            "\"time\"",
            "\"exclusive\":false",
            "\"hostname\"",
            "\"username\"",
            "\"pid\"",
            "\"uid\"",
            "\"gid\"",
        ] {
            assert!(j.contains(f), "{j} lacks {f}");
        }
    }

    /// A held lock is rewritten every interval (new file, old one removed),
    /// so other clients keep seeing a fresh timestamp.
    #[test]
    fn held_lock_is_refreshed() {
        let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let key = Key::random();
        let g =
            LockGuard::acquire_with(be.clone(), &key, false, Duration::from_millis(20)).unwrap();
        // The current lock file and its time (retried if a refresh replaced
        // it between asking for the id and reading the file).
        let read = |g: &LockGuard| loop {
            let id = g.id().unwrap();
            let found = crate::lock_stale::scan_locks(&*be, &key).unwrap();
            if let Some(f) = found.iter().find(|f| f.id == id) {
                break (id, f.lock.clone().unwrap().time);
            }
        };
        let (id0, t0) = read(&g);
        let n = g.refresh_count();
        let n = g
            .wait_refreshed(n, Duration::from_secs(30))
            .expect("refreshed within 30 s");
        // Wait for one more so the file we read is a refreshed one even if
        // the first refresh raced with reading it.
        g.wait_refreshed(n, Duration::from_secs(30))
            .expect("refreshed again");
        let (id1, t1) = read(&g);
        assert_ne!(id1, id0, "a new lock file");
        assert!(t1 > t0, "a newer time: {t0} -> {t1}");
        drop(g);
        assert!(be.list(FileType::Lock).unwrap().is_empty());
    }
}
