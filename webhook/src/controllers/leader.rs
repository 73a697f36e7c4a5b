//! Leader election: only the replica holding the `hoard-controllers` Lease
//! ([`api::keys::LEADER_LEASE`]) runs the controllers, so two webhook
//! replicas never both create sessions or write statuses. The Lease itself
//! is `kube-lease-manager`'s (server-side apply on a coordination.k8s.io
//! Lease, renewed before expiry); [`lead`] turns its "am I the leader"
//! channel into starting and stopping the controllers.

use std::future::Future;
use std::pin::Pin;

use futures::FutureExt;
use tokio::sync::watch;
use tracing::info;

use super::Error;

/// Resolves when the controllers must stop (`Sync`: kube's
/// `graceful_shutdown_on` needs it).
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Lease lifetime: after a leader dies, another replica takes over within
/// this many seconds — a scheduled backup is delayed at most that much.
pub const LEASE_DURATION_SECS: u64 = 15;
/// Renewal starts this long before expiry; also the tolerated clock skew
/// between nodes.
pub const LEASE_GRACE_SECS: u64 = 5;

/// Runs `work` while `is_leader` is true, until `shutdown` resolves.
///
/// `work` gets a future that resolves when it must stop (leadership lost or
/// shutdown) and should return once its in-flight reconciles finished. On
/// losing the lease it is started again when the lease is regained.
pub async fn lead<W, Fut>(
    mut is_leader: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    mut work: W,
) -> Result<(), Error>
where
    W: FnMut(Stop) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let shutdown = shutdown.shared();
    loop {
        tokio::select! {
            () = shutdown.clone() => return Ok(()),
            r = is_leader.wait_for(|l| *l) => {
                r.map_err(|_| Error::LeaderElectionStopped)?;
            }
        }
        info!("holding the leader lease: starting controllers");
        let mut lost = is_leader.clone();
        let stop: Stop = {
            let shutdown = shutdown.clone();
            Box::pin(async move {
                tokio::select! {
                    () = shutdown => {}
                    // A closed channel means the lease task is gone: stop too.
                    _ = lost.wait_for(|l| !*l) => {}
                }
            })
        };
        work(stop).await?;
        if shutdown.peek().is_some() {
            return Ok(());
        }
        info!("lost the leader lease: controllers stopped, waiting to regain it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[tokio::test(start_paused = true)]
    async fn controllers_run_only_while_leading() {
        let (leader_tx, leader_rx) = watch::channel(false);
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (ev_tx, mut ev) = mpsc::unbounded_channel();
        let task = tokio::spawn(lead(
            leader_rx,
            async move {
                let _ = shutdown_rx.await;
            },
            move |stop| {
                let ev_tx = ev_tx.clone();
                async move {
                    ev_tx.send("started").unwrap();
                    stop.await;
                    ev_tx.send("stopped").unwrap();
                    Ok(())
                }
            },
        ));
        // Not the leader: nothing starts.
        tokio::task::yield_now().await;
        assert!(ev.try_recv().is_err());

        leader_tx.send(true).unwrap();
        assert_eq!(ev.recv().await, Some("started"));
        leader_tx.send(false).unwrap();
        assert_eq!(ev.recv().await, Some("stopped"));
        // Regained: started again.
        leader_tx.send(true).unwrap();
        assert_eq!(ev.recv().await, Some("started"));
        // Shutdown stops the work and ends `lead`.
        shutdown_tx.send(()).unwrap();
        assert_eq!(ev.recv().await, Some("stopped"));
        task.await.unwrap().unwrap();
        assert_eq!(ev.recv().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_lease_task_is_an_error_not_a_hang() {
        let (leader_tx, leader_rx) = watch::channel(false);
        drop(leader_tx);
        let r = lead(leader_rx, std::future::pending(), |_stop| async { Ok(()) }).await;
        assert!(matches!(r, Err(Error::LeaderElectionStopped)));
    }
}
