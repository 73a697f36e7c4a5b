//! Warning Events for problems a user has to fix in a workload (malformed
//! `hoard.dev/*` annotations), recorded off the admission path.
//!
//! Data flow: [`crate::mutate::mutate`] returns a [`Problem`] naming the
//! workload whose pod template carries the annotations → the server hands it
//! to [`EventSink::send`], a non-blocking `try_send` into a bounded channel
//! (when the channel is full the event is dropped and counted: admission
//! never waits for the API server) → [`run`], a background task, drops
//! repeats of the same problem on the same object within [`DEDUP_WINDOW`]
//! (a ReplicaSet re-creating failing pods would otherwise write an event per
//! pod), fills in the uid of a Deployment (the pod only names its
//! ReplicaSet; `kubectl describe` matches events by uid) and publishes
//! through `kube::runtime::events::Recorder`.
//!
//! Dry-run reviews never produce a [`Problem`]: the webhook declares
//! `sideEffects: None`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::metrics::{EventResult, Metrics};

/// `reportingController` of the webhook's events.
pub const REPORTER: &str = "hoard.dev/webhook";
/// `reason` of an annotation event (`kubectl describe` shows it).
pub const REASON_INVALID_ANNOTATIONS: &str = "InvalidHoardAnnotations";
/// `action` of an annotation event.
pub const ACTION_ADMIT: &str = "AdmitPod";

/// Events waiting for the background task. A burst larger than this is a
/// cluster creating hundreds of broken pods at once; one event per workload
/// is what a user needs, so dropping the rest is harmless.
pub const CHANNEL_CAPACITY: usize = 256;
/// How long the same problem on the same object is not reported again. The
/// API server keeps events for an hour; ten minutes keeps a visible,
/// refreshed event on a broken workload at ≤ 6 writes an hour.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);
/// Objects remembered for deduplication; beyond this the oldest is
/// forgotten (a few hundred bytes each: ≤ ~4 MiB).
pub const DEDUP_CAPACITY: usize = 10_000;
/// Bound on each API call of the background task: a stuck API server
/// delays events (and then drops them at the full queue), never forever.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// The Events API caps `note` at 1 kB.
const MAX_NOTE: usize = 1024;

/// Something wrong with a workload's Hoard annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The workload whose pod template carries the annotations.
    pub regarding: ObjectReference,
    /// What is wrong, as told to the API client in `warnings`.
    pub note: String,
}

/// The admission side of the channel: never blocks, never fails a review.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Problem>>,
}

impl EventSink {
    /// A sink and the receiver [`run`] consumes.
    pub fn channel(capacity: usize) -> (EventSink, mpsc::Receiver<Problem>) {
        let (tx, rx) = mpsc::channel(capacity);
        (EventSink { tx: Some(tx) }, rx)
    }

    /// A sink that records nothing (the benchmark, tools without a cluster).
    pub fn disabled() -> EventSink {
        EventSink { tx: None }
    }

    /// Queues `p` for the background task; when the queue is full (or the
    /// task is gone) the event is dropped and counted.
    pub fn send(&self, p: Problem, metrics: &Metrics) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(p) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p)) => {
                metrics.event(EventResult::Dropped);
                debug!(
                    kind = p.regarding.kind.as_deref().unwrap_or_default(),
                    name = p.regarding.name.as_deref().unwrap_or_default(),
                    "event queue full; annotation event dropped"
                );
            }
        }
    }
}

/// `(namespace, kind, name)` of an event's object.
type ObjectKey = (String, String, String);

/// Which (object, note) pairs were published recently.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashMap<ObjectKey, (String, Instant)>,
}

impl Dedup {
    /// Whether `p` should be published at `now`; remembers it if so.
    pub fn admit(&mut self, p: &Problem, now: Instant) -> bool {
        let r = &p.regarding;
        let key = (
            r.namespace.clone().unwrap_or_default(),
            r.kind.clone().unwrap_or_default(),
            r.name.clone().unwrap_or_default(),
        );
        if let Some((note, at)) = self.seen.get(&key)
            && *note == p.note
            && now.saturating_duration_since(*at) < DEDUP_WINDOW
        {
            return false;
        }
        if self.seen.len() >= DEDUP_CAPACITY && !self.seen.contains_key(&key) {
            self.seen
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < DEDUP_WINDOW);
            if self.seen.len() >= DEDUP_CAPACITY
                && let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(key, (p.note.clone(), now));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The reporter of the webhook's events (`POD_NAME` from the downward API
/// tells replicas apart).
pub fn reporter() -> Reporter {
    Reporter {
        controller: REPORTER.into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// Publishes queued problems until every [`EventSink`] is dropped.
pub async fn run(
    client: Client,
    reporter: Reporter,
    mut rx: mpsc::Receiver<Problem>,
    metrics: Arc<Metrics>,
) {
    let recorder = Recorder::new(client.clone(), reporter);
    let mut dedup = Dedup::default();
    while let Some(mut p) = rx.recv().await {
        if !dedup.admit(&p, Instant::now()) {
            metrics.event(EventResult::Deduplicated);
            continue;
        }
        // Without the uid the event is still listed by `kubectl get events`.
        let _ = tokio::time::timeout(API_TIMEOUT, fill_uid(&client, &mut p.regarding)).await;
        let ev = Event {
            type_: EventType::Warning,
            reason: REASON_INVALID_ANNOTATIONS.into(),
            note: Some(truncate(&p.note, MAX_NOTE)),
            action: ACTION_ADMIT.into(),
            secondary: None,
        };
        let published = tokio::time::timeout(API_TIMEOUT, recorder.publish(&ev, &p.regarding))
            .await
            .unwrap_or_else(|_| {
                Err(kube::Error::Service(
                    format!("no answer within {API_TIMEOUT:?}").into(),
                ))
            });
        match published {
            Ok(()) => metrics.event(EventResult::Published),
            Err(e) => {
                metrics.event(EventResult::Failed);
                warn!(
                    error = %e,
                    kind = p.regarding.kind.as_deref().unwrap_or_default(),
                    name = p.regarding.name.as_deref().unwrap_or_default(),
                    "could not record an annotation event; check that the webhook may \
                     create events.k8s.io events"
                );
            }
        }
    }
}

/// A pod names its ReplicaSet, not the Deployment the user wrote; the
/// Deployment's uid (which `kubectl describe deployment` selects events by)
/// is read here, off the admission path. Without it the event is still
/// listed by `kubectl get events`.
async fn fill_uid(client: &Client, r: &mut ObjectReference) {
    if r.uid.is_some() || r.kind.as_deref() != Some("Deployment") {
        return;
    }
    let (Some(ns), Some(name)) = (r.namespace.as_deref(), r.name.as_deref()) else {
        return;
    };
    match Api::<Deployment>::namespaced(client.clone(), ns)
        .get_metadata_opt(name)
        .await
    {
        Ok(Some(meta)) => r.uid = meta.metadata.uid,
        Ok(None) => {}
        Err(e) => debug!(error = %e, %ns, %name, "cannot read the Deployment's uid"),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - "…".len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, name: &str, note: &str) -> Problem {
        Problem {
            regarding: ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some(kind.into()),
                name: Some(name.into()),
                namespace: Some("demo".into()),
                ..Default::default()
            },
            note: note.into(),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let metrics = Metrics::new();
        let (sink, mut rx) = EventSink::channel(1);
        sink.send(problem("StatefulSet", "a", "bad"), &metrics);
        sink.send(problem("StatefulSet", "b", "bad"), &metrics);
        assert_eq!(metrics.events(EventResult::Dropped), 1);
        assert_eq!(rx.try_recv().unwrap().regarding.name.as_deref(), Some("a"));
        drop(rx);
        sink.send(problem("StatefulSet", "c", "bad"), &metrics);
        assert_eq!(
            metrics.events(EventResult::Dropped),
            2,
            "a gone task counts as dropped too"
        );
        EventSink::disabled().send(problem("StatefulSet", "d", "bad"), &metrics);
        assert_eq!(metrics.events(EventResult::Dropped), 2);
    }

    #[test]
    fn the_same_problem_on_the_same_object_is_reported_once_per_window() {
        let mut d = Dedup::default();
        let t0 = Instant::now();
        let p = problem("Deployment", "app", "hoard: bad schedule");
        assert!(d.admit(&p, t0));
        assert!(!d.admit(&p, t0 + Duration::from_secs(1)));
        assert!(!d.admit(&p, t0 + DEDUP_WINDOW - Duration::from_secs(1)));
        assert!(
            d.admit(&problem("Deployment", "other", "hoard: bad schedule"), t0),
            "another object"
        );
        assert!(
            d.admit(&problem("Deployment", "app", "hoard: bad volumes"), t0),
            "a new problem on the same object"
        );
        let later = t0 + DEDUP_WINDOW + Duration::from_secs(1);
        assert!(d.admit(&problem("Deployment", "app", "hoard: bad volumes"), later));
    }

    #[test]
    fn the_dedup_table_is_bounded() {
        let mut d = Dedup::default();
        let t0 = Instant::now();
        for i in 0..DEDUP_CAPACITY + 10 {
            let at = t0 + Duration::from_millis(i as u64);
            assert!(d.admit(&problem("StatefulSet", &format!("s{i}"), "x"), at));
        }
        assert_eq!(d.len(), DEDUP_CAPACITY);
        // The oldest were forgotten, the newest are still suppressed.
        assert!(d.admit(
            &problem("StatefulSet", "s0", "x"),
            t0 + Duration::from_secs(20)
        ));
        let newest = format!("s{}", DEDUP_CAPACITY + 9);
        assert!(!d.admit(
            &problem("StatefulSet", &newest, "x"),
            t0 + Duration::from_secs(20)
        ));
    }

    #[test]
    fn notes_are_cut_to_the_events_api_limit_on_a_char_boundary() {
        let long = "é".repeat(600);
        let t = truncate(&long, MAX_NOTE);
        assert!(t.len() <= MAX_NOTE && t.ends_with('…'));
        assert_eq!(truncate("short", MAX_NOTE), "short");
    }
}
