//! Command line and process wiring of `hoard-webhook`.
//!
//! Data flow at start-up: certificates are ensured (the `certs` crate: a
//! Secret plus the configuration's `caBundle`) and written into `--tls-dir`
//! → the [`CertStore`] loads them (the process fails here, clearly, when it
//! cannot) → both ports are bound → the watch, reload, renewal, admission
//! and admin tasks run under one `select!`: if any critical task ends, the
//! process exits non-zero; SIGTERM stops accepting and drains open
//! connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args as ClapArgs, Parser, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span};

use crate::events::EventSink;
use crate::metrics::Metrics;
use crate::mutate::{DEFAULT_DEADLINE_SECS, InjectConfig};
use crate::server::{Admission, Limits};
use crate::state::State;
use crate::tls::{self, CertStore};

/// Hoard's mutating admission webhook: patches pods at creation for backup
/// identity and restore.
#[derive(Parser, Debug)]
#[command(name = "hoard-webhook", version)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub certs: CertArgs,
    #[command(flatten)]
    pub inject: InjectArgs,
    #[command(flatten)]
    pub controllers: ControllerArgs,
    /// Log format.
    #[arg(long, env = "HOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

#[derive(ClapArgs, Debug)]
pub struct ServerArgs {
    /// HTTPS address of the admission endpoint (POST /mutate/pods).
    #[arg(long, env = "HOARD_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Directory holding tls.crt and tls.key; reloaded when they change.
    #[arg(long, env = "HOARD_WEBHOOK_TLS_DIR", default_value = "/tls")]
    pub tls_dir: PathBuf,
    /// How often to look for a renewed certificate in --tls-dir.
    #[arg(long, env = "HOARD_WEBHOOK_CERT_RELOAD_SECONDS", default_value_t = 10)]
    pub cert_reload_seconds: u64,
}

#[derive(ClapArgs, Debug)]
pub struct AdminArgs {
    /// Plain-HTTP address of /live, /ready and /metrics.
    #[arg(
        long,
        env = "HOARD_WEBHOOK_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: SocketAddr,
}

#[derive(ClapArgs, Debug)]
pub struct CertArgs {
    /// Namespace Hoard runs in (holds the certificate Secret).
    #[arg(long, env = "HOARD_NAMESPACE", default_value = api::keys::NAMESPACE)]
    pub namespace: String,
    /// The webhook's Service; the serving certificate covers its DNS names.
    #[arg(long, env = "HOARD_WEBHOOK_SERVICE", default_value = api::keys::WEBHOOK_SERVICE)]
    pub service: String,
    /// The MutatingWebhookConfiguration whose caBundle trusts our CA.
    #[arg(long, env = "HOARD_WEBHOOK_CONFIG", default_value = api::keys::WEBHOOK_CONFIGURATION)]
    pub webhook_config: String,
    /// Secret storing the CA and serving certificate.
    #[arg(long, env = "HOARD_WEBHOOK_TLS_SECRET", default_value = api::keys::WEBHOOK_TLS_SECRET)]
    pub tls_secret: String,
    /// Generate, store and renew the certificates in-process. Set to false
    /// when cert-manager (or anything else) writes --tls-dir.
    #[arg(long, env = "HOARD_WEBHOOK_MANAGE_CERTS", default_value_t = true, action = ArgAction::Set)]
    pub manage_certs: bool,
}

#[derive(ClapArgs, Debug)]
pub struct InjectArgs {
    /// Image of the hoard-restore-wait init-container.
    #[arg(long, env = "HOARD_IMAGE", default_value = api::keys::DEFAULT_IMAGE)]
    pub image: String,
    /// How long a held pod waits for its restore before giving up.
    #[arg(long, env = "HOARD_RESTORE_DEADLINE_SECONDS", default_value_t = DEFAULT_DEADLINE_SECS)]
    pub restore_deadline_seconds: u64,
}

#[derive(ClapArgs, Debug)]
pub struct ControllerArgs {
    /// Cluster-wide RepositoryTemplate from which auto-backup generates a
    /// workload's own Repository (prefix per workload) when its pod template
    /// does not name one with hoard.dev/repository. Empty: none.
    #[arg(long, env = "HOARD_DEFAULT_REPOSITORY_TEMPLATE", default_value = api::keys::DEFAULT_REPOSITORY_TEMPLATE)]
    pub default_repository_template: String,
    /// Repository (in the workload's namespace) that auto-backup uses when a
    /// pod template does not name one with hoard.dev/repository and the
    /// RepositoryTemplate of --default-repository-template does not exist.
    #[arg(long, env = "HOARD_DEFAULT_REPOSITORY", default_value = crate::controllers::DEFAULT_REPOSITORY)]
    pub default_repository: String,
    /// Cron schedule of auto-backup when hoard.dev/schedule is absent.
    #[arg(long, env = "HOARD_DEFAULT_SCHEDULE", default_value = crate::controllers::DEFAULT_SCHEDULE)]
    pub default_schedule: String,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Plain,
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the webhook");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Runs the webhook until SIGTERM or a critical task fails.
pub async fn run(args: Args) -> anyhow::Result<()> {
    tls::install_default_provider();
    init_tracing(args.log_format);
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    if args.certs.manage_certs {
        let cfg = certs::CertsConfig::new(
            &args.certs.namespace,
            &args.certs.tls_secret,
            &args.certs.service,
            &args.certs.webhook_config,
        );
        let bundle = certs::ensure(client.clone(), &cfg)
            .await
            .context("cannot ensure the webhook certificate")?;
        certs::write_files(&bundle, &args.server.tls_dir).with_context(|| {
            format!(
                "cannot write certificates into {}",
                args.server.tls_dir.display()
            )
        })?;
        let (client, dir, stop) = (client.clone(), args.server.tls_dir.clone(), stop.clone());
        tasks.spawn(
            async move {
                certs::run_renewal_loop(
                    client,
                    cfg,
                    dir,
                    certs::DEFAULT_CHECK_INTERVAL,
                    stop.cancelled_owned(),
                )
                .await;
                "certificate renewal"
            }
            .instrument(info_span!("certs")),
        );
    }

    let store = Arc::new(CertStore::open(&args.server.tls_dir, tls::provider())?);
    let tls_config = store.server_config()?;
    let listener = TcpListener::bind(args.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.server.listen))?;
    let admin_listener = TcpListener::bind(args.admin.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin.admin_listen))?;

    let state = Arc::new(State::new());
    let metrics = Arc::new(Metrics::new());
    info!(listen = %args.server.listen, admin = %args.admin.admin_listen, image = %args.inject.image, "hoard-webhook starting");

    let watch_task;
    {
        let (state, client) = (state.clone(), client.clone());
        watch_task = tasks.spawn(
            async move {
                let ended = crate::watch::run(client, &state).await;
                error!(error = %ended, "watch ended");
                "watch"
            }
            .instrument(info_span!("watch")),
        );
    }
    {
        let (store, metrics, stop) = (store.clone(), metrics.clone(), stop.clone());
        let interval = Duration::from_secs(args.server.cert_reload_seconds.max(1));
        tasks.spawn(
            async move {
                tokio::select! {
                    () = store.watch(interval, move |ok| metrics.cert_reload(ok)) => {}
                    () = stop.cancelled() => {}
                }
                "certificate reload"
            }
            .instrument(info_span!("tls")),
        );
    }
    let (events, events_rx) = EventSink::channel(crate::events::CHANNEL_CAPACITY);
    {
        let (client, metrics) = (client.clone(), metrics.clone());
        tasks.spawn(
            async move {
                // Ends only when the admission server (the last sender) is
                // gone, i.e. after a shutdown.
                crate::events::run(client, crate::events::reporter(), events_rx, metrics).await;
                "event recorder"
            }
            .instrument(info_span!("events")),
        );
    }
    {
        let svc = Admission {
            state: state.clone(),
            inject: Arc::new(InjectConfig {
                image: args.inject.image.clone(),
                default_deadline: Duration::from_secs(args.inject.restore_deadline_seconds),
            }),
            metrics: metrics.clone(),
            limits: Limits::default(),
            events,
        };
        let stop = stop.clone();
        tasks.spawn(
            async move {
                crate::server::serve(listener, tls_config, svc, stop.cancelled_owned()).await;
                "admission server"
            }
            .instrument(info_span!("admission")),
        );
    }
    {
        let stop = stop.clone();
        tasks.spawn(
            async move {
                crate::admin::serve(admin_listener, state, metrics, stop.cancelled_owned()).await;
                "admin server"
            }
            .instrument(info_span!("admin")),
        );
    }

    {
        // The controllers (schedules, roll-ups, restores, standalone PVCs,
        // auto-backup) run beside the admission server; only the Lease
        // holder writes. Worker pods hold with the same restore-wait as
        // injected init-containers.
        let settings = crate::controllers::Settings {
            inject: InjectConfig {
                image: args.inject.image.clone(),
                default_deadline: Duration::from_secs(args.inject.restore_deadline_seconds),
            },
            default_repository_template: args.controllers.default_repository_template.clone(),
            default_repository: args.controllers.default_repository.clone(),
            default_schedule: args.controllers.default_schedule.clone(),
        };
        let (client, stop) = (client.clone(), stop.clone());
        tasks.spawn(
            async move {
                match crate::controllers::run(client, settings, stop.cancelled_owned()).await {
                    Ok(()) => "controllers",
                    Err(e) => {
                        error!(error = %e, "controllers stopped");
                        "controllers"
                    }
                }
            }
            .instrument(info_span!("controllers")),
        );
    }

    let failed = tokio::select! {
        () = shutdown_signal() => {
            info!("shutting down: draining connections");
            None
        }
        ended = tasks.join_next() => Some(match ended {
            Some(Ok(name)) => name,
            Some(Err(_)) => "a task panicked",
            None => "no task",
        }),
    };
    // Every task but the watch ends on `stop`; the servers drain first.
    stop.cancel();
    watch_task.abort();
    let limit = Limits::default().drain_timeout + Duration::from_secs(1);
    let drained =
        tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
    }
    if let Some(name) = failed {
        anyhow::bail!("{name} stopped unexpectedly; exiting so Kubernetes restarts the webhook");
    }
    info!("hoard-webhook stopped");
    Ok(())
}
