//! `ensure` and the renewal loop against a mocked API server: scripted scenarios
//! that assert each request (tower-test), and a small stateful fake for races.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use super::*;

const NS: &str = "hoard-system";
const SECRET_PATH: &str = "/api/v1/namespaces/hoard-system/secrets/hoard-webhook-tls";
const SECRETS_PATH: &str = "/api/v1/namespaces/hoard-system/secrets";
const MWC_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/hoard-webhook";
const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Bounds every wait for a request, so a missing call fails instead of hanging.
const STEP: Duration = Duration::from_secs(10);

fn cfg() -> CertsConfig {
    CertsConfig::new(NS, "hoard-webhook-tls", "hoard-webhook", "hoard-webhook")
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn secret_json(bundle: &Bundle, rv: &str) -> Value {
    let mut s = new_secret(&cfg(), bundle);
    s.metadata.resource_version = Some(rv.into());
    serde_json::to_value(s).unwrap()
}

fn ca_bundle_json(pem: &str) -> Value {
    serde_json::to_value(ByteString(pem.as_bytes().to_vec())).unwrap()
}

fn mwc_json(rv: &str, bundles: &[Option<&str>]) -> Value {
    let webhooks: Vec<Value> = bundles
        .iter()
        .enumerate()
        .map(|(i, ca)| {
            let mut cc =
                json!({"service": {"namespace": NS, "name": "hoard-webhook", "path": "/mutate"}});
            if let Some(ca) = ca {
                cc["caBundle"] = ca_bundle_json(ca);
            }
            json!({
                "name": format!("w{i}.hoard.dev"),
                "clientConfig": cc,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
            })
        })
        .collect();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "hoard-webhook", "resourceVersion": rv},
        "webhooks": webhooks,
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "code": code, "reason": reason, "message": message})
}

fn response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn bundle_of(secret: &Value) -> Bundle {
    bundle_from_secret(&serde_json::from_value::<Secret>(secret.clone()).unwrap())
}

// ---------------------------------------------------------------- scripted

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

struct Script {
    handle: Handle,
    /// How long to wait for each request; under paused time it must exceed the
    /// loop's own timers, or the timeout fires first.
    step: Duration,
}

struct Seen {
    query: String,
    content_type: Option<String>,
    body: Option<Value>,
    reply: Reply,
}

impl Seen {
    fn answer(self, code: u16, body: &Value) {
        self.reply.send_response(response(code, body));
    }
}

fn mock() -> (Client, Script) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), Script { handle, step: STEP })
}

impl Script {
    async fn expect(&mut self, method: Method, path: &str) -> Seen {
        let (req, reply) = tokio::time::timeout(self.step, self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request arrived; expected {method} {path}"))
            .unwrap_or_else(|| panic!("client finished; expected {method} {path}"));
        assert_eq!(
            (req.method(), req.uri().path()),
            (&method, path),
            "unexpected request"
        );
        let query = req.uri().query().unwrap_or_default().to_owned();
        let content_type = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
        Seen {
            query,
            content_type,
            body,
            reply,
        }
    }

    /// The client made no further request before it finished.
    async fn done(mut self) {
        let next = tokio::time::timeout(self.step, self.handle.next_request())
            .await
            .expect("client neither finished nor sent a request");
        if let Some((req, _)) = next {
            panic!("unexpected extra request {} {}", req.method(), req.uri());
        }
    }
}

fn spawn_ensure(client: Client, now: SystemTime) -> tokio::task::JoinHandle<Result<Bundle, Error>> {
    tokio::spawn(async move { ensure_at(client, &cfg(), now).await })
}

#[tokio::test]
async fn nothing_stored_creates_the_secret_and_sets_every_ca_bundle() {
    let (client, mut api) = mock();
    let task = spawn_ensure(client, t0());

    api.expect(Method::GET, SECRET_PATH).await.answer(
        404,
        &status(404, "NotFound", "secrets \"hoard-webhook-tls\" not found"),
    );
    let create = api.expect(Method::POST, SECRETS_PATH).await;
    assert!(
        create.query.contains("fieldManager=hoard"),
        "{}",
        create.query
    );
    let mut body = create.body.clone().unwrap();
    assert_eq!(body["type"], "kubernetes.io/tls");
    assert_eq!(body["metadata"]["name"], "hoard-webhook-tls");
    let keys: Vec<&String> = body["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);
    let created = bundle_of(&body);
    assert_eq!(plan(Some(&created), t0(), &cfg()), Decision::Keep);
    body["metadata"]["resourceVersion"] = json!("1");
    create.answer(201, &body);

    api.expect(Method::GET, MWC_PATH)
        .await
        .answer(200, &mwc_json("7", &[None, None]));
    let patch = api.expect(Method::PATCH, MWC_PATH).await;
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert!(
        patch.query.contains("fieldManager=hoard"),
        "{}",
        patch.query
    );
    let ca = ca_bundle_json(&created.ca_cert_pem);
    assert_eq!(
        patch.body.clone().unwrap(),
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": ca},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": ca},
        ])
    );
    let ca_pem = created.ca_cert_pem.clone();
    patch.answer(200, &mwc_json("8", &[Some(&ca_pem), Some(&ca_pem)]));

    assert_eq!(task.await.unwrap().unwrap(), created);
    api.done().await;
}

#[tokio::test]
async fn valid_secret_and_matching_ca_bundle_write_nothing() {
    let stored = Bundle::generate(&cfg(), t0()).unwrap();
    let (client, mut api) = mock();
    let task = spawn_ensure(client, t0() + YEAR / 2);

    api.expect(Method::GET, SECRET_PATH)
        .await
        .answer(200, &secret_json(&stored, "3"));
    let ca = stored.ca_cert_pem.as_str();
    api.expect(Method::GET, MWC_PATH)
        .await
        .answer(200, &mwc_json("9", &[Some(ca), Some(ca)]));

    assert_eq!(task.await.unwrap().unwrap(), stored);
    api.done().await;
}

#[tokio::test]
async fn conflict_on_renewal_rereads_and_adopts_the_other_replicas_bundle() {
    let stored = Bundle::generate(&cfg(), t0()).unwrap();
    let now = t0() + YEAR * 8 / 10;
    let winner = stored.renew_serving(&cfg(), now).unwrap();
    let (client, mut api) = mock();
    let task = spawn_ensure(client, now);

    api.expect(Method::GET, SECRET_PATH)
        .await
        .answer(200, &secret_json(&stored, "5"));
    let put = api.expect(Method::PUT, SECRET_PATH).await;
    let sent = put.body.clone().unwrap();
    assert_eq!(
        sent["metadata"]["resourceVersion"], "5",
        "update must be conditional"
    );
    let renewed = bundle_of(&sent);
    assert_eq!(
        renewed.ca_cert_pem, stored.ca_cert_pem,
        "renewal keeps the CA"
    );
    assert_eq!(renewed.ca_key_pem, stored.ca_key_pem);
    assert_ne!(renewed.cert_pem, stored.cert_pem);
    put.answer(
        409,
        &status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"),
    );

    api.expect(Method::GET, SECRET_PATH)
        .await
        .answer(200, &secret_json(&winner, "6"));
    let ca = stored.ca_cert_pem.as_str();
    api.expect(Method::GET, MWC_PATH)
        .await
        .answer(200, &mwc_json("9", &[Some(ca)]));

    assert_eq!(task.await.unwrap().unwrap(), winner);
    api.done().await;
}

#[tokio::test]
async fn ca_bundle_is_patched_only_where_it_differs_and_a_failed_test_rereads() {
    let stored = Bundle::generate(&cfg(), t0()).unwrap();
    let stale = Bundle::generate(&cfg(), t0()).unwrap();
    let (client, mut api) = mock();
    let task = spawn_ensure(client, t0());
    let (ca, old) = (stored.ca_cert_pem.as_str(), stale.ca_cert_pem.as_str());

    api.expect(Method::GET, SECRET_PATH)
        .await
        .answer(200, &secret_json(&stored, "3"));
    api.expect(Method::GET, MWC_PATH)
        .await
        .answer(200, &mwc_json("10", &[Some(ca), Some(old), Some(ca)]));
    let patch = api.expect(Method::PATCH, MWC_PATH).await;
    assert_eq!(
        patch.body.clone().unwrap(),
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "10"},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": ca_bundle_json(ca)},
        ])
    );
    // Someone else wrote in between: the `test` op fails as the API server reports it.
    patch.answer(
        422,
        &status(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        ),
    );
    api.expect(Method::GET, MWC_PATH)
        .await
        .answer(200, &mwc_json("11", &[Some(ca), Some(ca), Some(ca)]));

    assert_eq!(task.await.unwrap().unwrap(), stored);
    api.done().await;
}

#[tokio::test]
async fn forbidden_secret_read_says_which_permission_is_missing() {
    let (client, mut api) = mock();
    let task = spawn_ensure(client, t0());
    api.expect(Method::GET, SECRET_PATH).await.answer(
        403,
        &status(403, "Forbidden", "secrets \"hoard-webhook-tls\" is forbidden: User \"system:serviceaccount:hoard-system:hoard-webhook\" cannot get resource \"secrets\""),
    );
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Forbidden {
                verb: "get",
                resource: "secrets",
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("may not get secrets \"hoard-webhook-tls\" in namespace \"hoard-system\"")
            && text.contains("grant it `get` on `secrets`"),
        "{text}"
    );
    api.done().await;
}

#[tokio::test]
async fn forbidden_ca_bundle_patch_says_which_permission_is_missing() {
    let stored = Bundle::generate(&cfg(), t0()).unwrap();
    let (client, mut api) = mock();
    let task = spawn_ensure(client, t0());
    api.expect(Method::GET, SECRET_PATH)
        .await
        .answer(200, &secret_json(&stored, "3"));
    api.expect(Method::GET, MWC_PATH)
        .await
        .answer(200, &mwc_json("4", &[None]));
    api.expect(Method::PATCH, MWC_PATH)
        .await
        .answer(403, &status(403, "Forbidden", "cannot patch resource"));
    let text = task.await.unwrap().unwrap_err().to_string();
    assert!(
        text.contains("may not patch mutatingwebhookconfigurations \"hoard-webhook\":"),
        "{text}"
    );
    api.done().await;
}

#[tokio::test]
async fn missing_webhook_configuration_is_reported_not_created() {
    let stored = Bundle::generate(&cfg(), t0()).unwrap();
    let (client, mut api) = mock();
    let task = spawn_ensure(client, t0());
    api.expect(Method::GET, SECRET_PATH)
        .await
        .answer(200, &secret_json(&stored, "3"));
    api.expect(Method::GET, MWC_PATH)
        .await
        .answer(404, &status(404, "NotFound", "not found"));
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::WebhookConfigMissing(n) if n == "hoard-webhook"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("apply manifests/install.yaml"),
        "{err}"
    );
    api.done().await;
}

#[tokio::test]
async fn secret_of_another_type_is_left_alone_with_guidance() {
    let (client, mut api) = mock();
    let task = spawn_ensure(client, t0());
    api.expect(Method::GET, SECRET_PATH).await.answer(
        200,
        &json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "hoard-webhook-tls", "namespace": NS, "resourceVersion": "2"}}),
    );
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::SecretWrongType { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("kubectl -n hoard-system delete secret hoard-webhook-tls"),
        "{err}"
    );
    api.done().await;
}

// ---------------------------------------------------------------- stateful fake

/// Just enough of an API server for the Secret and the webhook configuration:
/// resourceVersion checks on update, AlreadyExists on create, JSON patch with `test`.
#[derive(Default)]
struct FakeState {
    secret: Option<Value>,
    mwc: Value,
    rv: u64,
    secret_gets: u32,
    secret_writes: u32,
    conflicts: u32,
    patches: u32,
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<FakeState>>,
    /// Holds the first two Secret reads until both arrived, so two replicas plan
    /// from the same state and really race on the write.
    race: Option<Arc<Barrier>>,
}

impl Fake {
    fn new(secret: Option<Value>, mwc: Value) -> Fake {
        let state = FakeState {
            secret,
            mwc,
            rv: 100,
            ..FakeState::default()
        };
        Fake {
            state: Arc::new(Mutex::new(state)),
            race: None,
        }
    }

    fn client(&self) -> Client {
        let fake = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(req).await) }
        });
        Client::new(svc, "default")
    }

    fn stored(&self) -> Option<Bundle> {
        self.state.lock().unwrap().secret.as_ref().map(bundle_of)
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        if method == Method::GET && path == SECRET_PATH {
            let n = {
                let mut s = self.state.lock().unwrap();
                s.secret_gets += 1;
                s.secret_gets
            };
            if let (Some(barrier), true) = (&self.race, n <= 2) {
                barrier.wait().await;
            }
        }
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv.to_string();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        match (method, path.as_str()) {
            (Method::GET, SECRET_PATH) => match &s.secret {
                Some(secret) => response(200, secret),
                None => response(404, &status(404, "NotFound", "not found")),
            },
            (Method::POST, SECRETS_PATH) => {
                if s.secret.is_some() {
                    s.conflicts += 1;
                    return response(409, &status(409, "AlreadyExists", "already exists"));
                }
                let mut body = body;
                body["metadata"]["resourceVersion"] = json!(rv);
                s.secret = Some(body.clone());
                s.secret_writes += 1;
                response(201, &body)
            }
            (Method::PUT, SECRET_PATH) => {
                let current = s
                    .secret
                    .as_ref()
                    .map(|x| x["metadata"]["resourceVersion"].clone());
                if current != Some(body["metadata"]["resourceVersion"].clone()) {
                    s.conflicts += 1;
                    return response(
                        409,
                        &status(409, "Conflict", "the object has been modified"),
                    );
                }
                let mut body = body;
                body["metadata"]["resourceVersion"] = json!(rv);
                s.secret = Some(body.clone());
                s.secret_writes += 1;
                response(200, &body)
            }
            (Method::GET, MWC_PATH) => response(200, &s.mwc),
            (Method::PATCH, MWC_PATH) => {
                let patch: json_patch::Patch = serde_json::from_value(body).unwrap();
                let mut next = s.mwc.clone();
                if json_patch::patch(&mut next, &patch).is_err() {
                    s.conflicts += 1;
                    return response(422, &status(422, "Invalid", "test failed"));
                }
                next["metadata"]["resourceVersion"] = json!(rv);
                s.mwc = next;
                s.patches += 1;
                response(200, &s.mwc)
            }
            (m, p) => panic!("fake API server got an unexpected {m} {p}"),
        }
    }
}

fn ca_bundles(mwc: &Value) -> Vec<Value> {
    mwc["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["clientConfig"]["caBundle"].clone())
        .collect()
}

async fn two_replicas_race(fake: Fake) -> (Bundle, Bundle) {
    let (a, b) = (fake.client(), fake.client());
    let cfg = cfg();
    let (ra, rb) = tokio::time::timeout(STEP, async {
        tokio::join!(ensure_at(a, &cfg, t0()), ensure_at(b, &cfg, t0()))
    })
    .await
    .expect("both replicas finish");
    (ra.unwrap(), rb.unwrap())
}

#[tokio::test]
async fn two_replicas_creating_at_once_converge_on_one_bundle() {
    let mut fake = Fake::new(None, mwc_json("1", &[None, None]));
    fake.race = Some(Arc::new(Barrier::new(2)));
    let (a, b) = two_replicas_race(fake.clone()).await;

    assert_eq!(a, b, "both replicas serve the same bundle");
    assert_eq!(fake.stored(), Some(a.clone()));
    let s = fake.state.lock().unwrap();
    assert_eq!(s.secret_writes, 1, "the loser adopted the winner's Secret");
    assert!(s.conflicts >= 1, "the race really happened");
    assert_eq!(ca_bundles(&s.mwc), vec![ca_bundle_json(&a.ca_cert_pem); 2]);
}

#[tokio::test]
async fn two_replicas_replacing_a_broken_secret_converge_on_one_bundle() {
    let mut broken = secret_json(&Bundle::generate(&cfg(), t0()).unwrap(), "50");
    broken["data"]["ca.crt"] = json!("Z2FyYmFnZQ==");
    let mut fake = Fake::new(Some(broken), mwc_json("1", &[None]));
    fake.race = Some(Arc::new(Barrier::new(2)));
    let (a, b) = two_replicas_race(fake.clone()).await;

    assert_eq!(a, b);
    assert_eq!(fake.stored(), Some(a.clone()));
    assert_eq!(plan(Some(&a), t0(), &cfg()), Decision::Keep);
    let s = fake.state.lock().unwrap();
    assert_eq!(s.secret_writes, 1);
    assert!(s.conflicts >= 1, "the race really happened");
    assert_eq!(ca_bundles(&s.mwc), vec![ca_bundle_json(&a.ca_cert_pem)]);
}

#[tokio::test]
async fn ensure_is_idempotent() {
    let fake = Fake::new(None, mwc_json("1", &[None]));
    let first = ensure_at(fake.client(), &cfg(), t0()).await.unwrap();
    let (writes, patches) = {
        let s = fake.state.lock().unwrap();
        (s.secret_writes, s.patches)
    };
    let again = ensure_at(fake.client(), &cfg(), t0() + YEAR / 2)
        .await
        .unwrap();
    assert_eq!(first, again);
    let s = fake.state.lock().unwrap();
    assert_eq!(
        (s.secret_writes, s.patches),
        (writes, patches),
        "second run wrote nothing"
    );
}

// ---------------------------------------------------------------- renewal loop

/// Paused tokio time drives both the loop's timer and the certificates' clock.
#[tokio::test(start_paused = true)]
async fn renewal_loop_renews_under_the_same_ca_and_stops_on_shutdown() {
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    let mut cfg = cfg();
    cfg.serving_lifetime = DAY * 3; // renewed once less than a day is left
    let fake = Fake::new(None, mwc_json("1", &[None]));
    let dir = tempfile::tempdir().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let start = tokio::time::Instant::now();
    let clock = move || t0() + start.elapsed();
    let task = tokio::spawn(renewal_loop_with_clock(
        fake.client(),
        cfg.clone(),
        dir.path().to_path_buf(),
        Duration::from_secs(3600),
        async {
            let _ = stopped.await;
        },
        clock,
    ));
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).ok();

    // Polls are paused-clock sleeps: they advance virtual time, never the wall clock.
    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        panic!("timed out waiting for {what}");
    }

    wait_for("first files", || read("tls.crt").is_some()).await;
    let first = fake.stored().unwrap();
    assert_eq!(read("tls.crt").unwrap(), first.cert_pem);
    assert_eq!(read("ca.crt").unwrap(), first.ca_cert_pem);

    // 1.5 days in: still more than a third of 3 days left, hourly checks write nothing.
    tokio::time::sleep(DAY * 3 / 2).await;
    assert_eq!(fake.state.lock().unwrap().secret_writes, 1);
    let gets = fake.state.lock().unwrap().secret_gets;
    assert!((36..=38).contains(&gets), "hourly rounds, got {gets}");

    // Past two days: renewed, same CA, files follow the Secret.
    wait_for("renewed certificate", || {
        read("tls.crt").is_some_and(|c| c != first.cert_pem)
    })
    .await;
    assert!(
        start.elapsed() >= DAY * 2,
        "renewed too early: {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() <= DAY * 2 + Duration::from_secs(2 * 3600),
        "renewed late: {:?}",
        start.elapsed()
    );
    let renewed = fake.stored().unwrap();
    assert_eq!(renewed.ca_cert_pem, first.ca_cert_pem);
    assert_eq!(read("tls.crt").unwrap(), renewed.cert_pem);
    assert_eq!(read("tls.key").unwrap(), renewed.key_pem);
    assert_eq!(
        fake.state.lock().unwrap().patches,
        1,
        "caBundle untouched by renewal"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(STEP, task)
        .await
        .expect("loop stops on shutdown")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn renewal_loop_retries_a_failed_round_within_a_minute() {
    let (client, mut api) = mock();
    api.step = Duration::from_secs(2 * 3600);
    let dir = tempfile::tempdir().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(renewal_loop_with_clock(
        client,
        cfg(),
        dir.path().to_path_buf(),
        Duration::from_secs(3600),
        async {
            let _ = stopped.await;
        },
        t0,
    ));
    let start = tokio::time::Instant::now();
    api.expect(Method::GET, SECRET_PATH)
        .await
        .answer(503, &status(503, "ServiceUnavailable", "etcd down"));
    let stored = Bundle::generate(&cfg(), t0()).unwrap();
    api.expect(Method::GET, SECRET_PATH)
        .await
        .answer(200, &secret_json(&stored, "3"));
    assert_eq!(start.elapsed(), RETRY_AFTER_ERROR);
    let ca = stored.ca_cert_pem.as_str();
    api.expect(Method::GET, MWC_PATH)
        .await
        .answer(200, &mwc_json("4", &[Some(ca)]));
    // The next round comes a full interval later.
    api.expect(Method::GET, SECRET_PATH)
        .await
        .answer(200, &secret_json(&stored, "3"));
    assert_eq!(
        start.elapsed(),
        RETRY_AFTER_ERROR + Duration::from_secs(3600)
    );
    stop.send(()).unwrap();
    tokio::time::timeout(STEP, task)
        .await
        .expect("loop stops on shutdown")
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tls.crt")).unwrap(),
        stored.cert_pem
    );
}

#[tokio::test]
async fn ca_change_puts_old_and_new_ca_into_the_ca_bundle() {
    let old = Bundle::generate(&cfg(), t0()).unwrap();
    let ca = old.ca_cert_pem.as_str();
    let fake = Fake::new(
        Some(secret_json(&old, "5")),
        mwc_json("1", &[Some(ca), Some(ca)]),
    );
    let now = t0() + YEAR * 7; // the CA has less than a third of its ten years left
    let new = ensure_at(fake.client(), &cfg(), now).await.unwrap();

    assert_ne!(new.ca_key_pem, old.ca_key_pem);
    assert!(
        new.ca_cert_pem.ends_with(&old.ca_cert_pem)
            && new.ca_cert_pem.len() > old.ca_cert_pem.len(),
        "old CA still trusted next to the new one"
    );
    assert_eq!(fake.stored(), Some(new.clone()));
    let s = fake.state.lock().unwrap();
    assert_eq!(
        ca_bundles(&s.mwc),
        vec![ca_bundle_json(&new.ca_cert_pem); 2]
    );
}
