//! Reconcilers against a mocked API server (the controller-rs
//! `ApiServerVerifier` way): `tower_test::mock::pair` stands in for the API
//! server; each test names a [`Scenario`] that asserts every request's
//! method, path and body in order and answers as the API server would. Time
//! is tokio's paused clock, so the timeouts that catch a missing request
//! fire without waiting on the wall clock. After the reconcile, the client
//! is dropped and the scenario checks that no request is left over.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, Resource};
use serde_json::{Value, json};

use api::common::{Phase, TargetRef};
use api::{
    BackupConfiguration, BackupConfigurationSpec, BackupConfigurationStatus, BackupSession,
    BackupSessionSpec, BackupSessionStatus, BackupTarget, HostBackupStats, InvokerRef,
};

use super::{Context, Error};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub(super) const NS: &str = "demo";
const BS: &str = "/apis/hoard.dev/v1beta1/namespaces/demo/backupsessions";
const BC: &str = "/apis/hoard.dev/v1beta1/namespaces/demo/backupconfigurations";
pub(super) const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/demo/events";

/// Bound on every awaited request; tokio's paused clock makes it instant
/// when nothing is left to run.
pub(super) const STEP: Duration = Duration::from_secs(10);

pub(super) fn now() -> Timestamp {
    "2026-03-10T11:00:02Z".parse().unwrap()
}

thread_local! {
    static EPOCH: std::cell::OnceCell<tokio::time::Instant> = const { std::cell::OnceCell::new() };
}

/// [`now`] moved on by tokio's (paused) clock since the test first asked:
/// `tokio::time::advance` moves the reconcilers' clock too.
pub(super) fn paused_now() -> Timestamp {
    let start = EPOCH.with(|e| *e.get_or_init(tokio::time::Instant::now));
    let gone = k8s_openapi::jiff::SignedDuration::try_from(tokio::time::Instant::now() - start)
        .unwrap_or_default();
    now().checked_add(gone).unwrap()
}

pub(super) fn late() -> Timestamp {
    // An hour and a bit after the sessions below were created.
    "2026-03-10T12:00:03Z".parse().unwrap()
}

pub(super) struct ApiServer(pub(super) Handle);

impl ApiServer {
    /// Awaits the next request, asserts its method and path (with query),
    /// and answers `status` with `body`. Returns the request's JSON body.
    pub(super) async fn expect(
        &mut self,
        method: Method,
        path: &str,
        status: u16,
        body: Value,
    ) -> Value {
        let (req, send) = tokio::time::timeout(STEP, self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
            .unwrap_or_else(|| panic!("client dropped before {method} {path}"));
        assert_eq!(req.method(), method, "method of {}", req.uri());
        let got = req.uri().path_and_query().unwrap().to_string();
        assert_eq!(got, path, "path of the {method} request");
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let sent = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let resp = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        send.send_response(resp);
        sent
    }

    /// Asserts that the client made no further request.
    pub(super) async fn done(mut self) {
        let next = tokio::time::timeout(STEP, self.0.next_request())
            .await
            .expect("the client was not dropped");
        if let Some((req, _)) = next {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }

    /// Answers an event POST (echoing it, as the API server does) and
    /// returns the event.
    pub(super) async fn event(&mut self) -> Value {
        let (req, send) = tokio::time::timeout(STEP, self.0.next_request())
            .await
            .expect("timed out waiting for an event")
            .expect("client dropped before an event");
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.uri().path_and_query().unwrap().as_str(),
            format!("{EVENTS}?")
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(bytes.clone()))
                .unwrap(),
        );
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn sts_ref() -> TargetRef {
    TargetRef {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: "db".into(),
    }
}

fn config(paused: bool, next: &str) -> BackupConfiguration {
    let mut c = BackupConfiguration::new(
        "db",
        BackupConfigurationSpec {
            schedule: Some("@hourly".into()),
            paused: paused.then_some(true),
            target: Some(BackupTarget {
                target_ref: sts_ref(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    c.metadata.namespace = Some(NS.into());
    c.metadata.uid = Some("uid-db".into());
    c.metadata.generation = Some(1);
    c.metadata.resource_version = Some("100".into());
    c.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
    c.status = Some(BackupConfigurationStatus {
        observed_generation: Some(1),
        next_schedule_time: Some(Time(next.parse().unwrap())),
        ..Default::default()
    });
    c
}

fn session(name: &str, status: Option<BackupSessionStatus>) -> BackupSession {
    let mut s = BackupSession::new(
        name,
        BackupSessionSpec {
            invoker: InvokerRef {
                api_group: Some("hoard.dev".into()),
                kind: "BackupConfiguration".into(),
                name: "db".into(),
            },
        },
    );
    s.metadata.namespace = Some(NS.into());
    s.metadata.uid = Some(format!("uid-{name}"));
    s.metadata.resource_version = Some("200".into());
    s.metadata.creation_timestamp = Some(Time("2026-03-10T11:00:00Z".parse().unwrap()));
    s.status = status;
    s
}

fn list(items: Vec<BackupSession>) -> Value {
    json!({
        "apiVersion": "hoard.dev/v1beta1",
        "kind": "BackupSessionList",
        "metadata": { "resourceVersion": "300" },
        "items": items,
    })
}

fn statefulset(replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": "db", "namespace": NS },
        "spec": {
            "replicas": replicas,
            "serviceName": "db",
            "selector": { "matchLabels": { "app": "db" } },
            "template": { "metadata": { "labels": { "app": "db" } } }
        }
    })
}

fn hosts(phases: &[Phase]) -> BackupSessionStatus {
    BackupSessionStatus {
        phase: Some(Phase::Running),
        stats: Some(
            phases
                .iter()
                .enumerate()
                .map(|(i, p)| HostBackupStats {
                    hostname: format!("host-{i}"),
                    phase: Some(*p),
                    duration: p.is_finished().then(|| "1.5s".to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// One reconcile's conversation with the API server.
enum Scenario {
    /// The tick at 11:00 is due and nothing runs: one session is created.
    DueTickCreatesOneSession,
    /// Paused: no session; the status says so.
    PausedCreatesNone,
    /// The tick is due but `db-running` still runs: skipped, visibly.
    RunningSessionBlocks,
    /// All 3 hosts succeeded: the session is Succeeded.
    RollUpSucceeded,
    /// host-0 succeeded, host-1 failed, host-2 never reported, deadline passed.
    RollUpFailedAfterDeadline,
    /// The invoker does not exist: the session fails with a reason.
    RollUpConfigurationMissing,
    /// Three finished sessions, default `backupHistoryLimit` 1: the two
    /// older ones are deleted, nothing is created.
    HistoryLimitDeletesOldSessions,
}

impl Scenario {
    async fn run(self, mut api: ApiServer) {
        let list_path = format!("{BS}?&fieldSelector=spec.invoker.name%3Ddb");
        let status_path = format!("{BC}/db/status?&force=true&fieldManager=hoard");
        match self {
            Self::DueTickCreatesOneSession => {
                api.expect(Method::GET, &list_path, 200, list(vec![])).await;
                let created = session("db-1773140400", None);
                let body = api
                    .expect(
                        Method::POST,
                        &format!("{BS}?&fieldManager=hoard"),
                        201,
                        json!(created),
                    )
                    .await;
                assert_eq!(body["metadata"]["name"], "db-1773140400");
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-db");
                assert_eq!(body["spec"]["invoker"]["name"], "db");
                let body = api
                    .expect(
                        Method::PATCH,
                        &status_path,
                        200,
                        json!(config(false, "2026-03-10T12:00:00Z")),
                    )
                    .await;
                assert_eq!(body["status"]["nextScheduleTime"], "2026-03-10T12:00:00Z");
                assert_eq!(body["status"]["lastSession"]["name"], "db-1773140400");
                assert_eq!(body["status"]["conditions"][0]["reason"], "Active");
                let ev = api.event().await;
                assert_eq!(ev["reason"], "BackupSessionCreated");
                assert_eq!(ev["regarding"]["name"], "db");
            }
            Self::PausedCreatesNone => {
                api.expect(Method::GET, &list_path, 200, list(vec![])).await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &status_path,
                        200,
                        json!(config(true, "2026-03-10T11:00:00Z")),
                    )
                    .await;
                assert_eq!(body["status"]["conditions"][0]["status"], "False");
                assert_eq!(body["status"]["conditions"][0]["reason"], "Paused");
                assert!(body["status"].get("nextScheduleTime").is_none());
                let ev = api.event().await;
                assert_eq!(ev["reason"], "BackupPaused");
                assert!(ev["note"].as_str().unwrap().contains("spec.paused"));
            }
            Self::RunningSessionBlocks => {
                let running = session("db-running", Some(hosts(&[Phase::Running])));
                api.expect(Method::GET, &list_path, 200, list(vec![running]))
                    .await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &status_path,
                        200,
                        json!(config(false, "2026-03-10T12:00:00Z")),
                    )
                    .await;
                assert_eq!(body["status"]["conditions"][0]["reason"], "TickSkipped");
                assert_eq!(body["status"]["lastSession"]["name"], "db-running");
                assert_eq!(body["status"]["nextScheduleTime"], "2026-03-10T12:00:00Z");
                let ev = api.event().await;
                assert_eq!(
                    (ev["type"].as_str(), ev["reason"].as_str()),
                    (Some("Warning"), Some("BackupSkipped"))
                );
                assert!(ev["note"].as_str().unwrap().contains("db-running"));
            }
            Self::RollUpSucceeded => {
                api.expect(
                    Method::GET,
                    &format!("{BC}/db"),
                    200,
                    json!(config(false, "2026-03-10T12:00:00Z")),
                )
                .await;
                api.expect(
                    Method::GET,
                    "/apis/apps/v1/namespaces/demo/statefulsets/db",
                    200,
                    statefulset(3),
                )
                .await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &format!("{BS}/db-1/status?&fieldManager=hoard"),
                        200,
                        json!(session("db-1", None)),
                    )
                    .await;
                assert_eq!(body["metadata"]["resourceVersion"], "200");
                assert_eq!(body["status"]["phase"], "Succeeded");
                assert_eq!(body["status"]["totalHosts"], 3);
                assert_eq!(body["status"]["hostsDone"], 3);
                assert_eq!(body["status"]["sessionDuration"], "4.5s");
                let ev = api.event().await;
                assert_eq!(ev["reason"], "BackupSucceeded");
            }
            Self::RollUpFailedAfterDeadline => {
                api.expect(
                    Method::GET,
                    &format!("{BC}/db"),
                    200,
                    json!(config(false, "2026-03-10T12:00:00Z")),
                )
                .await;
                api.expect(
                    Method::GET,
                    "/apis/apps/v1/namespaces/demo/statefulsets/db",
                    200,
                    statefulset(3),
                )
                .await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &format!("{BS}/db-1/status?&fieldManager=hoard"),
                        200,
                        json!(session("db-1", None)),
                    )
                    .await;
                assert_eq!(body["status"]["phase"], "Failed");
                assert_eq!(body["status"]["hostsDone"], 3);
                let stats = body["status"]["stats"].as_array().unwrap();
                assert_eq!(stats.len(), 3);
                assert_eq!(stats[2]["hostname"], "host-2");
                assert_eq!(stats[2]["phase"], "Failed");
                assert!(
                    stats[2]["error"]
                        .as_str()
                        .unwrap()
                        .contains("never reported")
                );
                let ev = api.event().await;
                assert_eq!(ev["reason"], "BackupFailed");
                assert!(
                    ev["note"].as_str().unwrap().contains("host-1, host-2"),
                    "{ev}"
                );
            }
            Self::HistoryLimitDeletesOldSessions => {
                let done = |name: &str, created: &str| {
                    let mut s = session(name, Some(hosts(&[Phase::Succeeded])));
                    s.status.as_mut().unwrap().phase = Some(Phase::Succeeded);
                    s.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
                    s
                };
                let items = vec![
                    done("db-a", "2026-03-10T08:00:00Z"),
                    done("db-c", "2026-03-10T10:00:00Z"),
                    done("db-b", "2026-03-10T09:00:00Z"),
                ];
                api.expect(Method::GET, &list_path, 200, list(items)).await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &status_path,
                        200,
                        json!(config(false, "2026-03-10T12:00:00Z")),
                    )
                    .await;
                assert_eq!(body["status"]["lastSession"]["name"], "db-c");
                assert_eq!(body["status"]["lastSession"]["phase"], "Succeeded");
                for name in ["db-b", "db-a"] {
                    let body = api
                        .expect(
                            Method::DELETE,
                            &format!("{BS}/{name}?"),
                            200,
                            json!(session(name, None)),
                        )
                        .await;
                    assert_eq!(body["propagationPolicy"], "Background");
                }
            }
            Self::RollUpConfigurationMissing => {
                let not_found = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "backupconfigurations.hoard.dev \"db\" not found",
                    "reason": "NotFound", "code": 404
                });
                api.expect(Method::GET, &format!("{BC}/db"), 404, not_found)
                    .await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &format!("{BS}/db-1/status?&fieldManager=hoard"),
                        200,
                        json!(session("db-1", None)),
                    )
                    .await;
                assert_eq!(body["status"]["phase"], "Failed");
                assert!(
                    body["status"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("BackupConfiguration db not found")
                );
                assert_eq!(api.event().await["reason"], "BackupFailed");
            }
        }
        api.done().await;
    }
}

/// The API server's answer to a GET of something that does not exist.
pub(super) fn not_found(what: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{what} not found"), "reason": "NotFound", "code": 404
    })
}

/// A list answer.
pub(super) fn list_of(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": format!("{kind}List"),
        "metadata": { "resourceVersion": "300" },
        "items": items,
    })
}

/// Runs `reconcile` on `obj` while `scenario` plays the API server, with
/// the clock at `clock`; the scenario ends with [`ApiServer::done`].
pub(super) async fn verify_with<K, F, Fut, S, SFut>(
    clock: fn() -> Timestamp,
    obj: K,
    reconcile: F,
    scenario: S,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
    S: FnOnce(ApiServer) -> SFut,
    SFut: Future<Output = ApiServer> + Send + 'static,
{
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(Client::new(svc, "default"), clock));
    let play = scenario(ApiServer(handle));
    let server = tokio::spawn(async move { play.await.done().await });
    let result = tokio::time::timeout(STEP, reconcile(Arc::new(obj), ctx))
        .await
        .expect("reconcile finished");
    server.await.expect("scenario assertions held");
    result
}

/// Runs `reconcile` on `obj` against `scenario`, with the clock at `clock`.
async fn verify<K, F, Fut>(
    scenario: Scenario,
    clock: fn() -> Timestamp,
    obj: K,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(Client::new(svc, "default"), clock));
    let server = tokio::spawn(scenario.run(ApiServer(handle)));
    let result = tokio::time::timeout(STEP, reconcile(Arc::new(obj), ctx))
        .await
        .expect("reconcile finished");
    // The context (and with it the client) is gone: the scenario's `done`
    // sees the end of requests.
    server.await.expect("scenario assertions held");
    result
}

#[tokio::test(start_paused = true)]
async fn a_due_schedule_creates_exactly_one_backup_session() {
    let action = verify(
        Scenario::DueTickCreatesOneSession,
        now,
        config(false, "2026-03-10T11:00:00Z"),
        super::schedule::reconcile,
    )
    .await
    .unwrap();
    // sleeps until the next tick, 12:00:00
    assert_eq!(action, Action::requeue(Duration::from_secs(3598)));
}

#[tokio::test(start_paused = true)]
async fn a_paused_configuration_creates_none_and_says_so() {
    let action = verify(
        Scenario::PausedCreatesNone,
        now,
        config(true, "2026-03-10T11:00:00Z"),
        super::schedule::reconcile,
    )
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test(start_paused = true)]
async fn a_running_session_blocks_a_second_one() {
    verify(
        Scenario::RunningSessionBlocks,
        now,
        config(false, "2026-03-10T11:00:00Z"),
        super::schedule::reconcile,
    )
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn finished_sessions_beyond_the_history_limit_are_deleted() {
    let action = verify(
        Scenario::HistoryLimitDeletesOldSessions,
        now,
        config(false, "2026-03-10T12:00:00Z"),
        super::schedule::reconcile,
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(3598)));
}

#[tokio::test(start_paused = true)]
async fn roll_up_writes_succeeded() {
    use Phase::*;
    let s = session("db-1", Some(hosts(&[Succeeded, Succeeded, Succeeded])));
    let action = verify(Scenario::RollUpSucceeded, now, s, super::rollup::reconcile)
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test(start_paused = true)]
async fn roll_up_writes_failed_for_a_failed_and_a_silent_host() {
    use Phase::*;
    let s = session("db-1", Some(hosts(&[Succeeded, Failed])));
    verify(
        Scenario::RollUpFailedAfterDeadline,
        late,
        s,
        super::rollup::reconcile,
    )
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_session_without_its_configuration_fails_with_a_reason() {
    let s = session("db-1", None);
    verify(
        Scenario::RollUpConfigurationMissing,
        now,
        s,
        super::rollup::reconcile,
    )
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_finished_session_makes_no_request() {
    let s = session(
        "db-1",
        Some(BackupSessionStatus {
            phase: Some(Phase::Succeeded),
            ..Default::default()
        }),
    );
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(Client::new(svc, "default"), now));
    let action = super::rollup::reconcile(Arc::new(s), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    ApiServer(handle).done().await;
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_object_gets_an_event_not_a_stalled_watch() {
    // `spec.invoker` missing: what a session created around the schema looks like.
    let raw = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": { "name": "broken", "namespace": NS, "uid": "uid-broken" },
        "spec": {}
    });
    let guard: kube::core::DeserializeGuard<BackupSession> = serde_json::from_value(raw).unwrap();
    assert!(guard.0.is_err());
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(Client::new(svc, "default"), now));
    let server = tokio::spawn(async move {
        let mut api = ApiServer(handle);
        let ev = api.event().await;
        assert_eq!(ev["reason"], "InvalidObject");
        assert_eq!(ev["regarding"]["name"], "broken");
        // the note carries serde's reason, naming the missing field
        assert!(
            ev["note"]
                .as_str()
                .unwrap()
                .contains("Missing field invoker"),
            "{ev}"
        );
        api.done().await;
    });
    let metrics = ctx.metrics.clone();
    let action = super::guarded(Arc::new(guard), ctx, super::rollup::reconcile)
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
    let counted = |kind: &str| metrics.reconciles.with_label_values(&[kind]).get();
    assert_eq!(counted("BackupSession"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_missing_crd_is_reported_plainly() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let server = tokio::spawn(async move {
        let mut api = ApiServer(handle);
        let not_found = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404
        });
        api.expect(
            Method::GET,
            "/apis/hoard.dev/v1beta1/backupconfigurations?&limit=1",
            404,
            not_found,
        )
        .await;
        api.done().await;
    });
    let err = super::run(client, super::Settings::default(), std::future::pending())
        .await
        .unwrap_err();
    server.await.unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("BackupConfiguration CRD is not installed"),
        "{msg}"
    );
    assert!(msg.contains("manifests/install.yaml"), "{msg}");
}

/// Batch backup (seed 004): one configuration, three co-related targets,
/// one session. `totalHosts` counts every target's hosts; each agent's entry
/// names its target, so host-0 of the StatefulSet and host-0 of the
/// Deployment are different hosts; the session is Running (an event says
/// so) until every one finished, then Succeeded.
#[tokio::test(start_paused = true)]
async fn a_batch_session_rolls_up_every_target_in_one_session() {
    let target = |kind: &str, name: &str| TargetRef {
        api_version: if kind == "PersistentVolumeClaim" {
            "v1".into()
        } else {
            "apps/v1".into()
        },
        kind: kind.into(),
        name: name.into(),
    };
    let targets = [
        target("StatefulSet", "db"),
        target("Deployment", "web"),
        target("PersistentVolumeClaim", "shared"),
    ];
    let mut cfg = config(false, "2026-03-10T12:00:00Z");
    cfg.spec.target = None;
    cfg.spec.targets = Some(
        targets
            .iter()
            .map(|t| BackupTarget {
                target_ref: t.clone(),
                ..Default::default()
            })
            .collect(),
    );
    let entry = |host: &str, t: &TargetRef, phase: Phase| HostBackupStats {
        hostname: host.into(),
        target: Some(t.clone()),
        phase: Some(phase),
        duration: Some("2s".into()),
        ..Default::default()
    };
    let mut stats = vec![
        entry("host-0", &targets[0], Phase::Succeeded),
        entry("host-1", &targets[0], Phase::Running),
        entry("host-0", &targets[1], Phase::Succeeded),
    ];
    for (last, phase, event) in [
        (None, "Running", "BackupStarted"),
        (
            Some(entry("host-0", &targets[2], Phase::Succeeded)),
            "Succeeded",
            "BackupSucceeded",
        ),
    ] {
        if let Some(e) = last {
            stats[1].phase = Some(Phase::Succeeded);
            stats.push(e);
        }
        let s = session(
            "db-1",
            Some(BackupSessionStatus {
                phase: (phase == "Succeeded").then_some(Phase::Running),
                stats: Some(stats.clone()),
                ..Default::default()
            }),
        );
        let cfg = cfg.clone();
        let done = u64::from(phase == "Succeeded") * 2 + 2;
        verify_with(
            now,
            s,
            super::rollup::reconcile,
            move |mut api: ApiServer| async move {
                api.expect(Method::GET, &format!("{BC}/db"), 200, json!(cfg))
                    .await;
                // Only the StatefulSet is asked for its hosts (replicas); a
                // Deployment and a PVC are one host each.
                api.expect(
                    Method::GET,
                    "/apis/apps/v1/namespaces/demo/statefulsets/db",
                    200,
                    statefulset(2),
                )
                .await;
                let body = api
                    .expect(
                        Method::PATCH,
                        &format!("{BS}/db-1/status?&fieldManager=hoard"),
                        200,
                        json!(session("db-1", None)),
                    )
                    .await;
                assert_eq!(body["status"]["phase"], phase);
                assert_eq!(body["status"]["totalHosts"], 4);
                assert_eq!(body["status"]["hostsDone"], done);
                let ev = api.event().await;
                assert_eq!(ev["reason"], event, "{ev}");
                if phase == "Succeeded" {
                    // the sum of the hosts' durations (seed 001)
                    assert_eq!(ev["note"], "all 4 hosts backed up in 8s");
                }
                api
            },
        )
        .await
        .unwrap();
    }
}

/// One configuration runs one session at a time (issue 7): a user's
/// session created while `db-1` runs shows that it waits (phase `Pending`,
/// a `Waiting` condition and message naming `db-1`, one `BackupWaiting`
/// event) and is re-checked; once `db-1` finished the wait is lifted and
/// its `timeOut` counts from then, not from its creation.
#[tokio::test(start_paused = true)]
async fn a_session_waits_visibly_for_the_older_session_of_its_configuration() {
    let list_path = format!("{BS}?&fieldSelector=spec.invoker.name%3Ddb");
    let patch_path = format!("{BS}/db-2/status?&fieldManager=hoard");
    let older = |phase: Phase| {
        let mut st = hosts(&[phase]);
        st.phase = Some(phase);
        session("db-1", Some(st))
    };
    let mut younger = session("db-2", None);
    younger.metadata.creation_timestamp = Some(Time("2026-03-10T11:00:01Z".parse().unwrap()));
    let cfg = config(false, "2026-03-10T12:00:00Z");

    // db-1 runs: db-2 waits, says so once, and is re-checked
    let (c, y) = (cfg.clone(), younger.clone());
    let written = Arc::new(std::sync::Mutex::new(Value::Null));
    let w = written.clone();
    let action = verify_with(
        now,
        younger.clone(),
        super::rollup::reconcile,
        move |mut api: ApiServer| async move {
            api.expect(Method::GET, &format!("{BC}/db"), 200, json!(c))
                .await;
            api.expect(
                Method::GET,
                &list_path,
                200,
                list(vec![older(Phase::Running), y.clone()]),
            )
            .await;
            // a waiting session does not even read its target
            let body = api.expect(Method::PATCH, &patch_path, 200, json!(y)).await;
            assert_eq!(body["metadata"]["resourceVersion"], "200");
            let st = &body["status"];
            assert_eq!(st["phase"], "Pending", "{st}");
            let msg = "waiting for BackupSession db-1 to finish: BackupConfiguration db runs one session at a time";
            assert_eq!(st["message"], msg);
            assert_eq!(st["conditions"][0]["type"], "Waiting");
            assert_eq!(st["conditions"][0]["status"], "True");
            assert_eq!(st["conditions"][0]["message"], msg);
            assert!(st.get("stats").is_none());
            *w.lock().unwrap() = st.clone();
            let ev = api.event().await;
            assert_eq!(
                (ev["type"].as_str(), ev["reason"].as_str()),
                (Some("Normal"), Some("BackupWaiting"))
            );
            assert!(ev["note"].as_str().unwrap().contains("db-1"), "{ev}");
            api
        },
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(super::rollup::WAIT_RECHECK));
    let waiting: BackupSessionStatus =
        serde_json::from_value(written.lock().unwrap().clone()).unwrap();
    younger.status = Some(waiting);

    // re-checked while db-1 still runs, an hour after db-2 was created: no
    // write, no second event, no timeout
    let (c, y) = (cfg.clone(), younger.clone());
    let action = verify_with(
        late,
        younger.clone(),
        super::rollup::reconcile,
        move |mut api: ApiServer| async move {
            api.expect(Method::GET, &format!("{BC}/db"), 200, json!(c))
                .await;
            api.expect(
                Method::GET,
                &list_path_of("db"),
                200,
                list(vec![older(Phase::Running), y]),
            )
            .await;
            api
        },
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(super::rollup::WAIT_RECHECK));

    // db-1 finished: the wait is lifted (at `late`), without a timeout
    let (c, y) = (cfg.clone(), younger.clone());
    let patch_path = format!("{BS}/db-2/status?&fieldManager=hoard");
    verify_with(
        late,
        younger.clone(),
        super::rollup::reconcile,
        move |mut api: ApiServer| async move {
            api.expect(Method::GET, &format!("{BC}/db"), 200, json!(c))
                .await;
            api.expect(
                Method::GET,
                &list_path_of("db"),
                200,
                list(vec![older(Phase::Succeeded), y.clone()]),
            )
            .await;
            api.expect(
                Method::GET,
                "/apis/apps/v1/namespaces/demo/statefulsets/db",
                200,
                statefulset(1),
            )
            .await;
            let body = api.expect(Method::PATCH, &patch_path, 200, json!(y)).await;
            let st = &body["status"];
            assert_ne!(
                st["phase"], "Failed",
                "the hour it waited is not held against it: {st}"
            );
            assert!(st.get("message").is_none_or(Value::is_null), "{st}");
            assert_eq!(st["conditions"][0]["type"], "Waiting");
            assert_eq!(st["conditions"][0]["status"], "False");
            assert_eq!(
                st["conditions"][0]["lastTransitionTime"],
                "2026-03-10T12:00:03Z"
            );
            api
        },
    )
    .await
    .unwrap();
}

fn list_path_of(config: &str) -> String {
    format!("{BS}?&fieldSelector=spec.invoker.name%3D{config}")
}

/// A standalone-PVC session that waits for an older one creates no worker
/// pod (the older one's worker may hold a ReadWriteOnce PVC): no request.
#[tokio::test(start_paused = true)]
async fn a_waiting_session_gets_no_worker_pod() {
    let (status, _) =
        super::rollup::waiting_status(&BackupSessionStatus::default(), "db-1", "db", now());
    let s = session("db-2", Some(status));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(Client::new(svc, "default"), now));
    let action = super::standalone::reconcile(Arc::new(s), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    ApiServer(handle).done().await;
}
