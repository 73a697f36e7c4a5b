//! Node-level Prometheus metrics and the admin HTTP server (`/live`,
//! `/ready`, `/metrics`).
//!
//! Data flow: transfers update the gauges as they queue and run
//! ([`crate::transfers`]); a finished host calls [`Metrics::record_backup`] /
//! [`Metrics::record_restore`]; the admin server encodes the registry on each
//! scrape. Label values are bounded: namespace, target (`<Kind>/<name>` of a
//! configured workload) and host come from objects the user configured for
//! backup, and failure reasons are the fixed set of
//! [`crate::work::TransferError::reason`] — never error text.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::work::{HostBackupReport, HostRestoreReport};

/// `stale_locks_removed_total`: [`engine::lock::stale_locks_removed`] (a
/// process-wide count the engine keeps), read at each scrape.
struct StaleLocks {
    counter: IntCounter,
    /// Serializes scrapes so that two never add the same delta.
    sync: Mutex<()>,
}

impl StaleLocks {
    fn new() -> StaleLocks {
        StaleLocks {
            counter: must(IntCounter::new(
                "stale_locks_removed_total",
                "Stale repository locks (restic's or hoard's, left by a crashed or killed process) this agent removed automatically",
            )),
            sync: Mutex::new(()),
        }
    }
}

impl Collector for StaleLocks {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _g = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        let now = engine::lock::stale_locks_removed();
        let seen = self.counter.get();
        if now > seen {
            self.counter.inc_by(now - seen);
        }
        self.counter.collect()
    }
}

/// Every metric the agent exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub last_success: IntGaugeVec,
    pub duration: HistogramVec,
    pub bytes_read: IntCounterVec,
    pub bytes_added: IntCounterVec,
    pub files: IntCounterVec,
    pub failures: IntCounterVec,
    pub transfers_running: IntGauge,
    pub transfers_queued: IntGauge,
    pub bytes_per_second: IntGauge,
    pub nice: IntGauge,
    pub ionice_class: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure is a programming error that
    // the unit tests catch.
    r.expect("static metric definition")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("hoard_agent".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let host_labels = &["namespace", "target", "host"];
        let last_success = must(IntGaugeVec::new(
            Opts::new(
                "last_success_timestamp_seconds",
                "Unix time of the last successful backup or restore of a host",
            ),
            &["op", "namespace", "target", "host"],
        ));
        // Buckets from 1 s to ~4.5 h: volume backups range from seconds
        // (small, unchanged) to hours (first backup of a large volume).
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "transfer_duration_seconds",
                "Duration of a host's backup or restore",
            )
            .buckets(must(prometheus::exponential_buckets(1.0, 2.0, 15))),
            &["op", "namespace", "target", "host"],
        ));
        let bytes_read = must(IntCounterVec::new(
            Opts::new("bytes_read_total", "Bytes read from volumes by backups"),
            host_labels,
        ));
        let bytes_added = must(IntCounterVec::new(
            Opts::new(
                "bytes_added_total",
                "Bytes of new data added to the repository by backups",
            ),
            host_labels,
        ));
        let files = must(IntCounterVec::new(
            Opts::new("files_total", "Files seen by backups, by state"),
            &["namespace", "target", "host", "state"],
        ));
        let failures = must(IntCounterVec::new(
            Opts::new("failures_total", "Failed host transfers, by bounded reason"),
            &["op", "reason"],
        ));
        let transfers_running = must(IntGauge::new(
            "transfers_running",
            "Transfers running on this node",
        ));
        let transfers_queued = must(IntGauge::new(
            "transfers_queued",
            "Transfers waiting for a slot (--max-transfers)",
        ));
        let bytes_per_second = must(IntGauge::new(
            "bytes_per_second",
            "Throughput of the running transfers",
        ));
        let nice = must(IntGauge::new(
            "transfer_nice",
            "nice value of the most recently started transfer",
        ));
        let ionice_class = must(IntGauge::new(
            "transfer_ionice_class",
            "ionice class of the most recently started transfer (0 = default)",
        ));
        let m = Metrics {
            registry,
            last_success,
            duration,
            bytes_read,
            bytes_added,
            files,
            failures,
            transfers_running,
            transfers_queued,
            bytes_per_second,
            nice,
            ionice_class,
        };
        let r = &m.registry;
        must(r.register(Box::new(m.last_success.clone())));
        must(r.register(Box::new(m.duration.clone())));
        must(r.register(Box::new(m.bytes_read.clone())));
        must(r.register(Box::new(m.bytes_added.clone())));
        must(r.register(Box::new(m.files.clone())));
        must(r.register(Box::new(m.failures.clone())));
        must(r.register(Box::new(m.transfers_running.clone())));
        must(r.register(Box::new(m.transfers_queued.clone())));
        must(r.register(Box::new(m.bytes_per_second.clone())));
        must(r.register(Box::new(m.nice.clone())));
        must(r.register(Box::new(m.ionice_class.clone())));
        must(r.register(Box::new(StaleLocks::new())));
        // RSS, CPU seconds, open fds (procfs)
        let _ = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m
    }

    pub fn record_backup(&self, namespace: &str, target: &str, r: &HostBackupReport) {
        let l = [namespace, target, r.host.as_str()];
        self.duration
            .with_label_values(&["backup", namespace, target, &r.host])
            .observe(r.duration.as_secs_f64());
        for v in &r.volumes {
            let s = &v.summary.stats;
            self.bytes_read.with_label_values(&l).inc_by(s.bytes_read);
            self.bytes_added.with_label_values(&l).inc_by(s.bytes_added);
            for (state, n) in [
                ("new", s.files_new),
                ("changed", s.files_changed),
                ("unmodified", s.files_unmodified),
            ] {
                self.files
                    .with_label_values(&[namespace, target, &r.host, state])
                    .inc_by(n);
            }
        }
        match &r.error {
            None => self
                .last_success
                .with_label_values(&["backup", namespace, target, &r.host])
                .set(chrono::Utc::now().timestamp()),
            Some(e) => self
                .failures
                .with_label_values(&["backup", e.reason()])
                .inc(),
        }
    }

    pub fn record_restore(&self, namespace: &str, target: &str, r: &HostRestoreReport) {
        self.duration
            .with_label_values(&["restore", namespace, target, &r.host])
            .observe(r.duration.as_secs_f64());
        match &r.error {
            None => self
                .last_success
                .with_label_values(&["restore", namespace, target, &r.host])
                .set(chrono::Utc::now().timestamp()),
            Some(e) => self
                .failures
                .with_label_values(&["restore", e.reason()])
                .inc(),
        }
    }

    /// A failure before any transfer started (e.g. the repository could not
    /// be opened), by bounded reason.
    pub fn record_failure(&self, op: &str, reason: &str) {
        self.failures.with_label_values(&[op, reason]).inc();
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// State the admin endpoints report.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Set once the watches have synced.
    pub ready: Arc<AtomicBool>,
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Answers one admin request.
pub fn admin_response(
    req: &Request<hyper::body::Incoming>,
    metrics: &Metrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "ok\n".into()),
        "/ready" if health.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ok\n".into()),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "watches not synced yet\n".into(),
        ),
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.encode());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve_admin(listener: tokio::net::TcpListener, metrics: Metrics, health: Health) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = admin_response(&req, &metrics, &health);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(5))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection");
            }
        });
    }
}

/// Binds the admin address (fails early with the address in the message).
pub async fn bind_admin(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding the admin port {addr}: {e}")))
}
