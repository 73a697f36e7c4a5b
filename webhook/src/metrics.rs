//! Prometheus metrics of the admission server, served on the admin port.
//!
//! Label values are bounded: outcomes, cache kinds and reload results are
//! fixed sets; no object names or error texts become labels.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::mutate::Outcome;
use crate::state::{CacheKind, State};

#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: IntCounterVec,
    latency: Histogram,
    warnings: IntCounterVec,
    cache_objects: IntGaugeVec,
    cache_synced: IntGaugeVec,
    cert_reloads: IntCounterVec,
    events: IntCounterVec,
    panics: IntCounter,
}

/// What became of a Warning Event the admission path asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventResult {
    Published,
    /// The same problem on the same object was reported recently.
    Deduplicated,
    /// The queue to the background task was full.
    Dropped,
    /// The API server refused it.
    Failed,
}

impl EventResult {
    pub const ALL: [EventResult; 4] = [
        EventResult::Published,
        EventResult::Deduplicated,
        EventResult::Dropped,
        EventResult::Failed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventResult::Published => "published",
            EventResult::Deduplicated => "deduplicated",
            EventResult::Dropped => "dropped",
            EventResult::Failed => "failed",
        }
    }
}

/// Buckets from 50µs to 1s: the target is p99 ≤ 1 ms, the API server's
/// timeout is 10 s, and anything above a second is an incident.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("hoard_webhook".to_owned()), None)
            .expect("a constant prefix is a valid metric prefix");
        let reviews = IntCounterVec::new(
            Opts::new("reviews_total", "Admission reviews answered, by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "review_duration_seconds",
                "Time from a complete request body to the encoded answer",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let warnings = IntCounterVec::new(
            Opts::new(
                "review_warnings_total",
                "Warnings returned to API clients, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let cache_objects = IntGaugeVec::new(
            Opts::new("cache_objects", "Objects held in each in-memory cache"),
            &["cache"],
        )
        .expect("valid metric");
        let cache_synced = IntGaugeVec::new(
            Opts::new("cache_synced", "1 once a cache completed its first list"),
            &["cache"],
        )
        .expect("valid metric");
        let cert_reloads = IntCounterVec::new(
            Opts::new(
                "certificate_reloads_total",
                "Serving certificate reloads, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new(
                "events_total",
                "Warning Events about workload annotations, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let panics = IntCounter::with_opts(Opts::new(
            "review_panics_total",
            "Reviews whose decision panicked (a bug); the pod was allowed unchanged",
        ))
        .expect("valid metric");
        for m in [
            Box::new(reviews.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(warnings.clone()),
            Box::new(cache_objects.clone()),
            Box::new(cache_synced.clone()),
            Box::new(cert_reloads.clone()),
            Box::new(events.clone()),
            Box::new(panics.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        // RSS, CPU and open fds of the webhook itself.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        // Pre-create every series so dashboards see zeros, not gaps.
        for o in Outcome::ALL {
            reviews.with_label_values(&[o.as_str()]);
        }
        for r in ["ok", "rejected"] {
            cert_reloads.with_label_values(&[r]);
        }
        for r in EventResult::ALL {
            events.with_label_values(&[r.as_str()]);
        }
        Metrics {
            registry,
            reviews,
            latency,
            warnings,
            cache_objects,
            cache_synced,
            cert_reloads,
            events,
            panics,
        }
    }

    pub fn observe(&self, outcome: Outcome, seconds: f64, warnings: usize) {
        self.reviews.with_label_values(&[outcome.as_str()]).inc();
        self.latency.observe(seconds);
        if warnings > 0 {
            self.warnings
                .with_label_values(&[outcome.as_str()])
                .inc_by(warnings as u64);
        }
    }

    /// Counts a request refused before it reached the decision (too large,
    /// wrong content type, ...); it has no decision latency to record.
    pub fn count(&self, outcome: Outcome) {
        self.reviews.with_label_values(&[outcome.as_str()]).inc();
    }

    pub fn cert_reload(&self, ok: bool) {
        self.cert_reloads
            .with_label_values(&[if ok { "ok" } else { "rejected" }])
            .inc();
    }

    pub fn event(&self, result: EventResult) {
        self.events.with_label_values(&[result.as_str()]).inc();
    }

    pub fn events(&self, result: EventResult) -> u64 {
        self.events.with_label_values(&[result.as_str()]).get()
    }

    /// Counts a decision that panicked (the review was still answered).
    pub fn panicked(&self) {
        self.panics.inc();
    }

    pub fn panics(&self) -> u64 {
        self.panics.get()
    }

    pub fn reviews(&self, outcome: Outcome) -> u64 {
        self.reviews.with_label_values(&[outcome.as_str()]).get()
    }

    /// Text exposition, with cache gauges read from `state` at scrape time.
    pub fn render(&self, state: &State) -> String {
        for k in CacheKind::ALL {
            self.cache_objects
                .with_label_values(&[k.as_str()])
                .set(state.len(k) as i64);
            self.cache_synced
                .with_label_values(&[k.as_str()])
                .set(i64::from(state.is_synced(k)));
        }
        let mut buf = Vec::new();
        // Encoding into a Vec fails only on invalid metric families, which
        // the registry already rejected at registration.
        // The controllers register in the process-wide default registry.
        let mut families = self.registry.gather();
        families.extend(prometheus::gather());
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
