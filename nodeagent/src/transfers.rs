//! At most `--max-transfers` backups/restores at once on this node, each on
//! its own OS thread with the session's `nice`/`ionice`.
//!
//! Data flow: an async task calls [`Transfers::run`] → waits for a permit of
//! the per-node semaphore (counted as *queued*) → a fresh, named thread
//! applies the priority to itself only (never to a tokio worker or a reused
//! pool thread, which would carry the lowered priority into unrelated work)
//! and runs the engine (*running*) → the result comes back over a oneshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use engine::priority::Priority;
use tokio::sync::Semaphore;

use crate::work::TransferError;

/// The node's transfer slots and their gauges.
#[derive(Debug, Clone)]
pub struct Transfers {
    sem: Arc<Semaphore>,
    running: Arc<AtomicI64>,
    queued: Arc<AtomicI64>,
    metrics: Option<crate::metrics::Metrics>,
}

struct Count<'a>(&'a AtomicI64, Option<&'a prometheus::IntGauge>);

impl<'a> Count<'a> {
    fn new(c: &'a AtomicI64, g: Option<&'a prometheus::IntGauge>) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = g {
            g.inc();
        }
        Count(c, g)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        if let Some(g) = self.1 {
            g.dec();
        }
    }
}

impl Transfers {
    pub fn new(max: usize, metrics: Option<crate::metrics::Metrics>) -> Self {
        Transfers {
            sem: Arc::new(Semaphore::new(max.max(1))),
            running: Arc::default(),
            queued: Arc::default(),
            metrics,
        }
    }

    pub fn running(&self) -> i64 {
        self.running.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> i64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Runs `f` on a new thread named `name` with `priority`, once a slot is free.
    pub async fn run<T, F>(&self, name: &str, priority: Priority, f: F) -> Result<T, TransferError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let m = self.metrics.as_ref();
        let permit = {
            let _q = Count::new(&self.queued, m.map(|m| &m.transfers_queued));
            self.sem
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| TransferError::Thread("the transfer pool was closed".into()))?
        };
        let _r = Count::new(&self.running, m.map(|m| &m.transfers_running));
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                let r = engine::priority::apply_to_current_thread(&priority)
                    .map_err(TransferError::from)
                    .map(|()| f());
                let _ = tx.send(r);
            })
            .map_err(|e| TransferError::Thread(e.to_string()))?;
        let r = rx
            .await
            .map_err(|_| TransferError::Thread("the transfer thread panicked".into()))?;
        drop(permit);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_nice_and_ioprio() -> (i64, (u8, u8)) {
        // read back through procfs, as an operator would
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let stat = procfs::process::Process::myself()
            .unwrap()
            .task_from_tid(tid)
            .unwrap()
            .stat()
            .unwrap();
        (
            stat.nice,
            engine::priority::current_thread_ioprio().unwrap(),
        )
    }

    #[tokio::test]
    async fn the_transfer_thread_runs_with_the_sessions_nice_and_ionice_only() {
        let t = Transfers::new(1, None);
        let (base_nice, base_io) = thread_nice_and_ioprio();
        let p = Priority {
            nice: Some(base_nice.max(0) as i32 + 5),
            ionice_class: Some(2),
            ionice_class_data: Some(6),
        };
        let got = t.run("t-prio", p, thread_nice_and_ioprio).await.unwrap();
        assert_eq!(got, (base_nice.max(0) + 5, (2, 6)));
        assert_eq!(thread_nice_and_ioprio(), (base_nice, base_io));
    }

    #[tokio::test]
    async fn at_most_max_transfers_run_at_once() {
        let t = Transfers::new(1, None);
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let t1 = t.clone();
        let s1 = started_tx.clone();
        let first = tokio::spawn(async move {
            t1.run("t-a", Priority::default(), move || {
                s1.send(1).unwrap();
                release_rx.recv().unwrap();
                1
            })
            .await
        });
        assert_eq!(started_rx.recv().await, Some(1));
        let t2 = t.clone();
        let second = tokio::spawn(async move {
            t2.run("t-b", Priority::default(), move || {
                started_tx.send(2).unwrap();
                2
            })
            .await
        });
        // wait until the second is queued, without sleeping on the clock
        while t.queued() != 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(t.running(), 1);
        assert!(started_rx.try_recv().is_err(), "second must wait");
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
        assert_eq!(started_rx.recv().await, Some(2));
        assert_eq!((t.running(), t.queued()), (0, 0));
    }

    #[tokio::test]
    async fn an_invalid_priority_fails_the_transfer_with_a_clear_error() {
        let t = Transfers::new(1, None);
        let p = Priority {
            nice: Some(40),
            ..Default::default()
        };
        let e = t.run("t-bad", p, || ()).await.unwrap_err();
        assert!(e.to_string().contains("nice adjustment 40"), "{e}");
    }
}
