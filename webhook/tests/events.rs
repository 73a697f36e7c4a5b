//! Warning Events about malformed annotations: recorded by the background
//! task against a mocked API server (`tower_test`, the controller-rs
//! `ApiServerVerifier` way), deduplicated per object, never on the
//! admission path.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use webhook::events::{self, EventSink, Problem};
use webhook::metrics::{EventResult, Metrics};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/demo/events";
/// Bound on every awaited request; the paused clock makes it instant when
/// nothing is left to run.
const STEP: Duration = Duration::from_secs(10);

struct ApiServer(Handle);

impl ApiServer {
    /// Awaits the next request, asserts method and path (without query),
    /// answers `status` with `body` and returns the request's JSON body.
    async fn expect(&mut self, method: Method, path: &str, status: u16, body: Value) -> Value {
        let (req, send) = tokio::time::timeout(STEP, self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
            .unwrap_or_else(|| panic!("client dropped before {method} {path}"));
        assert_eq!(req.method(), method, "method of {}", req.uri());
        assert_eq!(req.uri().path(), path, "path of the {method} request");
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let sent = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        // The API server echoes a created event.
        let reply = if body.is_null() { sent.clone() } else { body };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        sent
    }

    /// Asserts that the client made no further request and went away.
    async fn done(mut self) {
        let next = tokio::time::timeout(STEP, self.0.next_request())
            .await
            .expect("the event task did not end after its sinks were dropped");
        if let Some((req, _)) = next {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

fn problem(kind: &str, name: &str, uid: Option<&str>, note: &str) -> Problem {
    Problem {
        regarding: ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(kind.into()),
            name: Some(name.into()),
            namespace: Some("demo".into()),
            uid: uid.map(Into::into),
            ..Default::default()
        },
        note: note.into(),
    }
}

fn start() -> (
    EventSink,
    Arc<Metrics>,
    ApiServer,
    tokio::task::JoinHandle<()>,
) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let metrics = Arc::new(Metrics::new());
    let (sink, rx) = EventSink::channel(events::CHANNEL_CAPACITY);
    let reporter = kube::runtime::events::Reporter {
        controller: events::REPORTER.into(),
        instance: Some("hoard-webhook-0".into()),
    };
    let task = tokio::spawn(events::run(client, reporter, rx, metrics.clone()));
    (sink, metrics, ApiServer(handle), task)
}

#[tokio::test(start_paused = true)]
async fn a_crash_looping_workload_gets_one_event_not_one_per_pod() {
    let (sink, metrics, mut api, task) = start();
    let bad = "hoard: hoard.dev/schedule \"every day\" is not a cron schedule";

    // The first pod of a broken StatefulSet: one Warning Event on it.
    sink.send(
        problem("StatefulSet", "web", Some("sts-uid"), bad),
        &metrics,
    );
    let ev = api.expect(Method::POST, EVENTS, 201, Value::Null).await;
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], events::REASON_INVALID_ANNOTATIONS);
    assert_eq!(ev["action"], events::ACTION_ADMIT);
    assert_eq!(ev["note"], bad);
    assert_eq!(ev["reportingController"], "hoard.dev/webhook");
    assert_eq!(ev["reportingInstance"], "hoard-webhook-0");
    assert_eq!(
        ev["regarding"],
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
               "namespace": "demo", "uid": "sts-uid"})
    );

    // Its replacements, one after another: nothing more is written.
    for _ in 0..20 {
        sink.send(
            problem("StatefulSet", "web", Some("sts-uid"), bad),
            &metrics,
        );
    }
    // A Deployment's uid is not on its pods: read it (off the admission
    // path) so `kubectl describe deployment` lists the event. This request
    // coming next also proves the repeats above wrote nothing.
    sink.send(problem("Deployment", "app", None, bad), &metrics);
    api.expect(
        Method::GET,
        "/apis/apps/v1/namespaces/demo/deployments/app",
        200,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": "app", "namespace": "demo", "uid": "dep-uid"}}),
    )
    .await;
    let ev = api.expect(Method::POST, EVENTS, 201, Value::Null).await;
    assert_eq!(ev["regarding"]["kind"], "Deployment");
    assert_eq!(ev["regarding"]["uid"], "dep-uid");

    // After the window the still-broken StatefulSet is reported again (the
    // recorder turns the repeat into a series on the same event).
    tokio::time::advance(events::DEDUP_WINDOW + Duration::from_secs(1)).await;
    sink.send(
        problem("StatefulSet", "web", Some("sts-uid"), bad),
        &metrics,
    );
    let (req, send) = tokio::time::timeout(STEP, api.0.next_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(req.method(), Method::PATCH);
    assert!(req.uri().path().starts_with(&format!("{EVENTS}/web.")));
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(b"{}".to_vec()))
            .unwrap(),
    );

    // An event the API server refuses is counted, not retried forever.
    sink.send(problem("DaemonSet", "agent", Some("ds-uid"), bad), &metrics);
    api.expect(
        Method::POST,
        EVENTS,
        403,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "forbidden", "reason": "Forbidden", "code": 403}),
    )
    .await;

    drop(sink);
    api.done().await;
    task.await.unwrap();
    assert_eq!(metrics.events(EventResult::Published), 3);
    assert_eq!(metrics.events(EventResult::Deduplicated), 20);
    assert_eq!(metrics.events(EventResult::Failed), 1);
    assert_eq!(metrics.events(EventResult::Dropped), 0);
}

#[tokio::test(start_paused = true)]
async fn a_deployment_that_cannot_be_read_still_gets_its_event() {
    let (sink, metrics, mut api, task) = start();
    sink.send(problem("Deployment", "gone", None, "hoard: bad"), &metrics);
    api.expect(
        Method::GET,
        "/apis/apps/v1/namespaces/demo/deployments/gone",
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
    .await;
    let ev = api.expect(Method::POST, EVENTS, 201, Value::Null).await;
    assert_eq!(ev["regarding"]["name"], "gone");
    assert!(ev["regarding"].get("uid").is_none());
    drop(sink);
    api.done().await;
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stuck_api_server_delays_events_but_never_stalls_them() {
    let (sink, metrics, mut api, task) = start();
    sink.send(
        problem("StatefulSet", "a", Some("a-uid"), "hoard: bad"),
        &metrics,
    );
    sink.send(
        problem("StatefulSet", "b", Some("b-uid"), "hoard: bad"),
        &metrics,
    );
    // The API server takes the first event and never answers.
    let (req, _never_answered) = tokio::time::timeout(STEP, api.0.next_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(req.method(), Method::POST);
    // After the timeout (the paused clock jumps there) the next one goes out.
    let (req, send) = tokio::time::timeout(events::API_TIMEOUT * 2, api.0.next_request())
        .await
        .expect("the second event is sent after the first timed out")
        .unwrap();
    assert_eq!(req.method(), Method::POST);
    let body = req.into_body().collect_bytes().await.unwrap();
    let ev: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ev["regarding"]["name"], "b");
    send.send_response(
        Response::builder()
            .status(201)
            .body(Body::from(body.to_vec()))
            .unwrap(),
    );
    drop(sink);
    api.done().await;
    task.await.unwrap();
    assert_eq!(metrics.events(EventResult::Failed), 1);
    assert_eq!(metrics.events(EventResult::Published), 1);
}
