//! Hoard's node agent (`hoard agent`): one per node (DaemonSet), it backs up
//! and restores the volumes of the pods on its node through the kubelet's
//! host paths, so application pods need no sidecar, no root and no
//! repository credentials.
//!
//! Data flow:
//!
//! ```text
//! watches (agent) ── sessions, pods on this node
//!   └─ owner: which hosts are mine (pure)
//!       └─ repo: Repository + Secret from hoard-system (allowed-namespaces
//!          checked) → local, S3, GCS, Azure, B2, Swift or REST repository
//!       └─ volumes: pod + volume → kubelet dir, opened beneath (beneath)
//!           └─ transfers: ≤ --max-transfers threads with nice/ionice
//!               └─ work: engine backup / restore of the host's volumes
//!                   └─ status (merge by hostname and target), events,
//!                      metrics, hold: restore marker for the waiting
//!                      init-container
//! session Succeeded ── retention: the agent that ran the first host forgets
//!                      (and prunes) per the policy, checks the repository's
//!                      structure, writes status.retention and the
//!                      Repository's status (counts, size, integrity)
//! Recovery ─────────── recovery: the host's agent restores into hostPaths
//!                      below --recovery-allowed-path (openat2 beneath)
//! ```
//!
//! `run`/`run_async` are what `hoard agent` calls with [`Args`].

pub mod agent;
pub mod args;
pub mod beneath;
pub mod hold;
pub mod metrics;
pub mod owner;
pub mod recovery;
pub mod repo;
pub mod retention;
pub mod status;
pub mod transfers;
pub mod volumes;
pub mod work;

use std::sync::Arc;
use std::time::Duration;

pub use args::Args;

/// Runs the agent on a runtime of its own (for a synchronous `main`).
pub fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hoard-agent")
        .build()?
        .block_on(run_async(args))
}

/// Runs the agent until SIGTERM/SIGINT or a fatal error. A fatal error is
/// also written to `--termination-log` so `kubectl describe pod` shows it.
pub async fn run_async(args: Args) -> anyhow::Result<()> {
    let r = serve(&args).await;
    if let Err(e) = &r {
        let msg = format!("{e:#}\n");
        if let Err(w) = std::fs::write(&args.termination_log, &msg) {
            tracing::debug!(error = %w, "termination log not writable");
        }
        tracing::error!(error = %msg.trim_end(), "agent stopped");
    }
    r
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    anyhow::ensure!(
        !args.node_name.is_empty(),
        "--node-name (NODE_NAME) is empty; set it from the downward API (spec.nodeName)"
    );
    let metrics = metrics::Metrics::new();
    let health = metrics::Health::default();
    let listener = metrics::bind_admin(args.admin_listen).await?;
    let admin = tokio::spawn(metrics::serve_admin(
        listener,
        metrics.clone(),
        health.clone(),
    ));

    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("connecting to the Kubernetes API server: {e} (in a pod, the service account token is used)")
    })?;
    let mut kubelet = volumes::Kubelet::new(&args.kubelet_root);
    kubelet.host_root = args.host_root.clone();
    kubelet.recovery_roots = args.recovery_allowed_paths.clone();
    let pods = args.kubelet_root.join("pods");
    anyhow::ensure!(
        pods.is_dir(),
        "{} is not a directory; mount the kubelet's root (--kubelet-root) into the agent with mountPropagation: HostToContainer",
        pods.display()
    );
    let agent = agent::Agent::new(
        client,
        args.node_name.clone(),
        args.namespace.clone(),
        kubelet,
        usize::from(args.max_transfers),
        metrics,
        Duration::from_secs(args.progress_interval_secs),
    );
    agent.check_crds().await?;
    tracing::info!(node = %args.node_name, kubelet_root = %args.kubelet_root.display(), max_transfers = args.max_transfers, "agent starting");

    let watch = tokio::spawn(Arc::clone(&agent).watch(health.ready.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = watch => r??,
        r = admin => { r?; anyhow::bail!("the admin server stopped") }
        _ = term.recv() => tracing::info!("SIGTERM: finishing running transfers"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing running transfers"),
    }
    health
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // Drain: running transfers finish (their status is written); queued ones
    // are dropped with the process and retried by the next agent.
    while agent.transfers.running() > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
