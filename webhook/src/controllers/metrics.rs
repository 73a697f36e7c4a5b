//! Controller metrics (Prometheus). Labels are bounded: the object kind, a
//! phase, or an error class — never an object name or error text.
//!
//! - `hoard_controller_reconciles_total{kind}` and
//!   `hoard_controller_reconcile_failures_total{kind,reason}`;
//! - `hoard_controller_reconcile_duration_seconds{kind}`;
//! - `hoard_backup_sessions{phase}`: sessions in the cache by phase;
//! - `hoard_backup_oldest_running_session_age_seconds`: how long the oldest
//!   unfinished session has been running (a stuck agent shows here first);
//! - `hoard_restore_sessions{phase}` and
//!   `hoard_restore_oldest_running_session_age_seconds`: the same for
//!   RestoreSessions (a pod held by an unfinished restore shows here).

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use api::common::Phase;
use api::{BackupSession, RestoreSession};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Error;

/// Every phase a session can be in, so each gauge series exists from the start.
const PHASES: [Phase; 6] = [
    Phase::Pending,
    Phase::Running,
    Phase::Succeeded,
    Phase::Failed,
    Phase::Skipped,
    Phase::Unknown,
];

/// Clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: IntCounterVec,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub sessions: IntGaugeVec,
    pub oldest_running: Gauge,
    pub restore_sessions: IntGaugeVec,
    pub restore_oldest_running: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Unregistered metrics (see [`Metrics::register`]).
    pub fn new() -> Self {
        // The metric definitions are constant and valid; failing here would
        // be a programming error caught by every test.
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        Self {
            reconciles: counter(
                "hoard_controller_reconciles_total",
                "Reconciles run, by object kind.",
                &["kind"],
            ),
            failures: counter(
                "hoard_controller_reconcile_failures_total",
                "Reconciles that failed and will be retried, by object kind and error class.",
                &["kind", "reason"],
            ),
            // Reconciles are a few API round trips: 5 ms .. 10 s.
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "hoard_controller_reconcile_duration_seconds",
                    "Time a reconcile took, by object kind.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["kind"],
            )
            .expect("valid metric"),
            sessions: IntGaugeVec::new(
                Opts::new("hoard_backup_sessions", "BackupSessions by phase."),
                &["phase"],
            )
            .expect("valid metric"),
            oldest_running: Gauge::new(
                "hoard_backup_oldest_running_session_age_seconds",
                "Age of the oldest BackupSession that has not finished (0: none).",
            )
            .expect("valid metric"),
            restore_sessions: IntGaugeVec::new(
                Opts::new("hoard_restore_sessions", "RestoreSessions by phase."),
                &["phase"],
            )
            .expect("valid metric"),
            restore_oldest_running: Gauge::new(
                "hoard_restore_oldest_running_session_age_seconds",
                "Age of the oldest RestoreSession that has not finished (0: none).",
            )
            .expect("valid metric"),
        }
    }

    /// The process's metrics, registered in the default registry (which the
    /// webhook's admin port serves) on first use, so a leadership change that
    /// restarts the controllers keeps counting into the same series.
    pub fn global() -> Metrics {
        static GLOBAL: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let m = Metrics::new();
                if let Err(e) = m.register(prometheus::default_registry()) {
                    tracing::warn!(error = %e, "controller metrics not registered");
                }
                m
            })
            .clone()
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.reconciles.clone()))?;
        registry.register(Box::new(self.failures.clone()))?;
        registry.register(Box::new(self.duration.clone()))?;
        registry.register(Box::new(self.sessions.clone()))?;
        registry.register(Box::new(self.oldest_running.clone()))?;
        registry.register(Box::new(self.restore_sessions.clone()))?;
        registry.register(Box::new(self.restore_oldest_running.clone()))?;
        Ok(())
    }

    /// Sets the session gauges from the roll-up controller's cache.
    pub fn observe_sessions<'a>(
        &self,
        sessions: impl IntoIterator<Item = &'a BackupSession>,
        now: Timestamp,
    ) {
        let (by_phase, oldest) = session_gauges(sessions, now);
        for (phase, n) in by_phase {
            self.sessions.with_label_values(&[phase]).set(n);
        }
        self.oldest_running.set(oldest);
    }

    /// Sets the restore session gauges from the restore controller's cache.
    pub fn observe_restore_sessions<'a>(
        &self,
        sessions: impl IntoIterator<Item = &'a RestoreSession>,
        now: Timestamp,
    ) {
        let (by_phase, oldest) = session_gauges(sessions, now);
        for (phase, n) in by_phase {
            self.restore_sessions.with_label_values(&[phase]).set(n);
        }
        self.restore_oldest_running.set(oldest);
    }
}

/// What the session gauges read of a backup or restore session.
pub trait PhasedSession {
    fn phase(&self) -> Option<Phase>;
    fn created(&self) -> Option<&Time>;
}

impl PhasedSession for BackupSession {
    fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
    fn created(&self) -> Option<&Time> {
        self.metadata.creation_timestamp.as_ref()
    }
}

impl PhasedSession for RestoreSession {
    fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
    fn created(&self) -> Option<&Time> {
        self.metadata.creation_timestamp.as_ref()
    }
}

/// Sessions per phase (every phase present) and the age in seconds of the
/// oldest unfinished one. A session without a phase yet counts as Pending.
pub fn session_gauges<'a, S: PhasedSession + 'a>(
    sessions: impl IntoIterator<Item = &'a S>,
    now: Timestamp,
) -> (BTreeMap<&'static str, i64>, f64) {
    let mut by_phase: BTreeMap<&'static str, i64> =
        PHASES.iter().map(|p| (phase_label(*p), 0)).collect();
    let mut oldest = 0f64;
    for s in sessions {
        let phase = s.phase().unwrap_or_default();
        *by_phase.entry(phase_label(phase)).or_default() += 1;
        if !phase.is_finished()
            && let Some(created) = s.created()
        {
            oldest = oldest.max(now.duration_since(created.0).as_secs_f64().max(0.0));
        }
    }
    (by_phase, oldest)
}

fn phase_label(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
        Phase::Skipped => "Skipped",
        Phase::Unknown => "Unknown",
    }
}

impl Error {
    /// A bounded label for the failure metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.is_conflict() => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.is_not_found() => "not_found",
            Error::Kube(kube::Error::Api(s)) if s.is_forbidden() => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.is_invalid() => "invalid",
            Error::Kube(kube::Error::Api(_)) => "api_other",
            Error::Kube(_) => "transport",
            Error::NotNamespaced { .. } => "not_namespaced",
            Error::CrdMissing { .. } => "crd_missing",
            Error::Lease { .. } | Error::LeaderElectionStopped => "lease",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{BackupSessionStatus, InvokerRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn s(created: &str, phase: Option<Phase>) -> BackupSession {
        let mut s = BackupSession::new(
            "x",
            api::BackupSessionSpec {
                invoker: InvokerRef::default(),
            },
        );
        s.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        s.status = phase.map(|p| BackupSessionStatus {
            phase: Some(p),
            ..Default::default()
        });
        s
    }

    #[test]
    fn session_gauges_count_phases_and_the_oldest_running() {
        let now: Timestamp = "2026-03-10T12:00:00Z".parse().unwrap();
        let sessions = [
            s("2026-03-10T08:00:00Z", Some(Phase::Succeeded)),
            s("2026-03-10T11:00:00Z", Some(Phase::Running)),
            s("2026-03-10T11:30:00Z", None),
            s("2026-03-10T09:00:00Z", Some(Phase::Failed)),
        ];
        let (by, oldest) = session_gauges(&sessions, now);
        assert_eq!(by["Succeeded"], 1);
        assert_eq!(by["Running"], 1);
        assert_eq!(by["Pending"], 1);
        assert_eq!(by["Failed"], 1);
        assert_eq!(by["Skipped"], 0);
        assert_eq!(oldest, 3600.0);
        assert_eq!(
            session_gauges::<BackupSession>(&[], now),
            (by.keys().map(|k| (*k, 0)).collect(), 0.0)
        );
    }

    #[test]
    fn restore_session_gauges_count_phases_and_the_oldest_running() {
        let now: Timestamp = "2026-03-10T12:00:00Z".parse().unwrap();
        let r = |created: &str, phase: Option<Phase>| {
            let mut r = RestoreSession::new("r", api::RestoreSessionSpec::default());
            r.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
            r.status = phase.map(|p| api::RestoreSessionStatus {
                phase: Some(p),
                ..Default::default()
            });
            r
        };
        let sessions = [
            r("2026-03-10T10:00:00Z", Some(Phase::Running)),
            r("2026-03-10T11:00:00Z", Some(Phase::Succeeded)),
            r("2026-03-10T11:50:00Z", None),
        ];
        let m = Metrics::new();
        m.observe_restore_sessions(&sessions, now);
        let phase = |p: &str| m.restore_sessions.with_label_values(&[p]).get();
        assert_eq!(
            (phase("Running"), phase("Succeeded"), phase("Pending")),
            (1, 1, 1)
        );
        assert_eq!(phase("Failed"), 0);
        assert_eq!(m.restore_oldest_running.get(), 7200.0);
        // the backup gauges are untouched
        assert_eq!(m.sessions.with_label_values(&["Running"]).get(), 0);
    }

    #[test]
    fn metrics_register_once_and_render() {
        let r = Registry::new();
        let m = Metrics::new();
        m.register(&r).unwrap();
        m.reconciles.with_label_values(&["BackupSession"]).inc();
        m.observe_sessions(&[], "2026-03-10T12:00:00Z".parse().unwrap());
        m.observe_restore_sessions(&[], "2026-03-10T12:00:00Z".parse().unwrap());
        let names: Vec<String> = r.gather().iter().map(|f| f.name().to_string()).collect();
        assert!(
            names.contains(&"hoard_controller_reconciles_total".to_string()),
            "{names:?}"
        );
        for name in [
            "hoard_backup_sessions",
            "hoard_restore_sessions",
            "hoard_restore_oldest_running_session_age_seconds",
        ] {
            assert!(names.contains(&name.to_string()), "{name}: {names:?}");
        }
        // registering twice is refused, not silently duplicated
        assert!(m.register(&r).is_err());
    }
}
