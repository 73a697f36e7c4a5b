//! One progress/statistics type for backup and restore.
//!
//! Data flow: the engine's worker threads bump relaxed atomic counters on a
//! shared [`Progress`] (cloning is an `Arc` clone); readers — the CLI's
//! progress bar, the agent's status updates, Prometheus — call
//! [`Progress::snapshot`] whenever they like and get a consistent-enough
//! [`ProgressSnapshot`] with rate and ETA. When the operation ends the engine
//! records the duration and snapshot id, and the same snapshot type carries
//! the final statistics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::id::Id;

#[derive(Debug, Default)]
struct Counters {
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs: AtomicU64,
    bytes_read: AtomicU64,
    bytes_added: AtomicU64,
    bytes_stored: AtomicU64,
    blobs_added: AtomicU64,
    errors: AtomicU64,
    /// Set when the walk has counted everything: totals are final.
    totals_known: AtomicBool,
    finished: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    c: Counters,
    start: Instant,
    end: Mutex<Option<(Duration, Option<Id>)>>,
}

/// Shared progress counters; clone freely.
#[derive(Debug, Clone)]
pub struct Progress(Arc<Inner>);

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// A point-in-time copy of the counters plus derived figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProgressSnapshot {
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    pub totals_known: bool,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    /// Bytes read from disk (backup) or from the repository (restore).
    pub bytes_read: u64,
    /// Plaintext bytes of new blobs (backup) / bytes written (restore).
    pub bytes_added: u64,
    /// Bytes added to the repository after compression and encryption.
    pub bytes_stored: u64,
    pub blobs_added: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Bytes done per second since the start.
    pub bytes_per_sec: f64,
    /// Remaining time at the current rate, once totals are known.
    pub eta: Option<Duration>,
    pub finished: bool,
    pub snapshot_id: Option<Id>,
}

macro_rules! adders {
    ($($name:ident => $field:ident),* $(,)?) => {
        $(pub fn $name(&self, n: u64) { self.0.c.$field.fetch_add(n, Relaxed); })*
    };
}

impl Progress {
    pub fn new() -> Progress {
        Progress(Arc::new(Inner {
            c: Counters::default(),
            start: Instant::now(),
            end: Mutex::new(None),
        }))
    }

    adders! {
        add_files_total => files_total,
        add_bytes_total => bytes_total,
        add_files_done => files_done,
        add_bytes_done => bytes_done,
        add_files_new => files_new,
        add_files_changed => files_changed,
        add_files_unmodified => files_unmodified,
        add_dirs => dirs,
        add_bytes_read => bytes_read,
        add_bytes_added => bytes_added,
        add_bytes_stored => bytes_stored,
        add_blobs_added => blobs_added,
        add_errors => errors,
    }

    /// The walk is complete: `files_total`/`bytes_total` will not grow.
    pub fn set_totals_known(&self) {
        self.0.c.totals_known.store(true, Relaxed);
    }

    /// Record the end of the operation (and the snapshot it wrote, if any).
    pub fn finish(&self, snapshot_id: Option<Id>) {
        let mut e = self.0.end.lock().unwrap_or_else(|e| e.into_inner());
        *e = Some((self.0.start.elapsed(), snapshot_id));
        self.0.c.finished.store(true, Relaxed);
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let c = &self.0.c;
        let end = *self.0.end.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = end.map(|e| e.0).unwrap_or_else(|| self.0.start.elapsed());
        let bytes_done = c.bytes_done.load(Relaxed);
        let bytes_total = c.bytes_total.load(Relaxed);
        let totals_known = c.totals_known.load(Relaxed);
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            bytes_done as f64 / secs
        } else {
            0.0
        };
        let finished = c.finished.load(Relaxed);
        let eta = if finished {
            Some(Duration::ZERO)
        } else if totals_known && rate > 0.0 {
            Some(Duration::from_secs_f64(
                bytes_total.saturating_sub(bytes_done) as f64 / rate,
            ))
        } else {
            None
        };
        ProgressSnapshot {
            files_total: c.files_total.load(Relaxed),
            bytes_total,
            files_done: c.files_done.load(Relaxed),
            bytes_done,
            totals_known,
            files_new: c.files_new.load(Relaxed),
            files_changed: c.files_changed.load(Relaxed),
            files_unmodified: c.files_unmodified.load(Relaxed),
            dirs: c.dirs.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            bytes_added: c.bytes_added.load(Relaxed),
            bytes_stored: c.bytes_stored.load(Relaxed),
            blobs_added: c.blobs_added.load(Relaxed),
            errors: c.errors.load(Relaxed),
            elapsed,
            bytes_per_sec: rate,
            eta,
            finished,
            snapshot_id: end.and_then(|e| e.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_counters_and_finish_freezes_stats() {
        let p = Progress::new();
        let q = p.clone();
        q.add_bytes_total(100);
        q.set_totals_known();
        std::thread::scope(|s| {
            s.spawn(|| q.add_bytes_done(40));
        });
        let s = p.snapshot();
        assert_eq!((s.bytes_total, s.bytes_done), (100, 40));
        assert!(!s.finished);
        let id = Id([7; 32]);
        p.finish(Some(id));
        let s = p.snapshot();
        assert!(s.finished);
        assert_eq!(s.snapshot_id, Some(id));
        assert_eq!(s.eta, Some(Duration::ZERO));
        assert_eq!(p.snapshot().elapsed, s.elapsed);
    }
}
