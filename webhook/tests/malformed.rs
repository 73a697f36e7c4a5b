//! A corpus of bad requests, each sent over real HTTPS and each answered the
//! way the API server (or a confused client) can act on.

mod common;

use std::time::Duration;

use common::{TestServer, fixture};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webhook::mutate::Outcome;
use webhook::server::Limits;
use webhook::state::State;

fn review_of(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    v["response"].clone()
}

async fn post(server: &TestServer, body: Vec<u8>) -> (StatusCode, Value) {
    let mut c = server.client().await;
    let (status, body) = c
        .send("POST", "/mutate/pods", Some("application/json"), body)
        .await
        .unwrap();
    (status, review_of(&body))
}

#[tokio::test]
async fn truncated_json_gets_an_invalid_review() {
    let server = TestServer::start(State::new()).await;
    let full = serde_json::to_vec(&fixture("pod-create-bare.json")).unwrap();
    let (status, r) = post(&server, full[..full.len() / 2].to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        r["allowed"], false,
        "no uid could be recovered: nothing to allow"
    );
    assert_eq!(r["uid"], "");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not an AdmissionReview")
    );
    assert_eq!(server.metrics.reviews(Outcome::Invalid), 1);
    server.stop().await;
}

#[tokio::test]
async fn wrong_kind_is_allowed_with_its_uid_and_a_reason() {
    let server = TestServer::start(State::new()).await;
    let pvc = fixture("pvc-create.json");
    let (status, r) = post(&server, serde_json::to_vec(&pvc).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["uid"], pvc["request"]["uid"]);
    assert_eq!(
        r["allowed"], true,
        "Hoard never blocks what it was not meant to see"
    );
    assert!(r.get("patch").is_none());
    let w = r["warnings"][0].as_str().unwrap();
    assert!(
        w.contains("only mutates pods, got PersistentVolumeClaim"),
        "{w}"
    );
    assert!(w.contains("MutatingWebhookConfiguration"), "{w}");
    server.stop().await;
}

#[tokio::test]
async fn a_pod_that_does_not_decode_is_allowed_with_its_uid() {
    let server = TestServer::start(State::new()).await;
    let mut review = fixture("pod-create-bare.json");
    review["request"]["object"]["spec"]["containers"] = json!("not a list");
    let (status, r) = post(&server, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["uid"], review["request"]["uid"]);
    assert_eq!(r["allowed"], true);
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("could not be decoded")
    );
    server.stop().await;
}

#[tokio::test]
async fn missing_uid_missing_request_and_wrong_review_kind_are_invalid() {
    let server = TestServer::start(State::new()).await;
    let mut no_uid = fixture("pod-create-bare.json");
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut no_request = fixture("pod-create-bare.json");
    no_request.as_object_mut().unwrap().remove("request");
    let mut not_review = fixture("pod-create-bare.json");
    not_review["kind"] = json!("Pod");
    for (what, review, reason) in [
        ("no uid", no_uid, "has no uid"),
        ("no request", no_request, "has no request"),
        ("not a review", not_review, "expected kind AdmissionReview"),
    ] {
        let (status, r) = post(&server, serde_json::to_vec(&review).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{what}");
        assert_eq!(r["allowed"], false, "{what}");
        assert_eq!(r["status"]["reason"], "InvalidRequest", "{what}");
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(msg.contains(reason), "{what}: {msg}");
    }
    server.stop().await;
}

#[tokio::test]
async fn huge_bodies_are_refused_without_reading_them() {
    let server = TestServer::start(State::new()).await;
    let mut c = server.client().await;
    let (status, body) = c
        .send(
            "POST",
            "/mutate/pods",
            Some("application/json"),
            vec![b' '; 4 << 20],
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = review_of(&body);
    assert!(r["status"]["message"].as_str().unwrap().contains("3 MiB"));
    server.stop().await;
}

#[tokio::test]
async fn huge_chunked_bodies_are_cut_off_at_the_limit() {
    let limits = Limits {
        max_body: 64 * 1024,
        ..Limits::default()
    };
    let server = TestServer::start_with(State::new(), limits).await;
    // No Content-Length: the limit must hold while streaming.
    let mut tls = server.connect_tls().await;
    tls.write_all(
        b"POST /mutate/pods HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
          transfer-encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = vec![b' '; 32 * 1024];
    for _ in 0..3 {
        tls.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        tls.write_all(&chunk).await.unwrap();
        tls.write_all(b"\r\n").await.unwrap();
    }
    tls.write_all(b"0\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut head))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    server.stop().await;
}

#[tokio::test]
async fn wrong_content_type_wrong_method_and_unknown_paths() {
    let server = TestServer::start(State::new()).await;
    let body = serde_json::to_vec(&fixture("pod-create-bare.json")).unwrap();
    let mut c = server.client().await;

    let (s, b) = c
        .send("POST", "/mutate/pods", Some("text/plain"), body.clone())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        review_of(&b)["status"]["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    let (s, _) = c
        .send("POST", "/mutate/pods", None, body.clone())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, b) = c
        .send(
            "POST",
            "/mutate/pods",
            Some("application/json; charset=utf-8"),
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "parameters of the media type are fine");
    assert_eq!(review_of(&b)["allowed"], true);

    let (s, _) = c.send("GET", "/mutate/pods", None, vec![]).await.unwrap();
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = c
        .send("POST", "/mutate", Some("application/json"), body.clone())
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = c.send("GET", "/", None, vec![]).await.unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The same keep-alive connection still answers reviews after all that.
    let (s, _) = c
        .send("POST", "/mutate/pods", Some("application/json"), body)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = TestServer::start_with(State::new(), limits).await;
    let mut tls = server.connect_tls().await;
    tls.write_all(b"POST /mutate/pods HTTP/1.1\r\nhost: local")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server must end the connection on its own; the outer timeout only
    // bounds the test if it does not.
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "header read timeout did not fire");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_in_the_body_gets_408() {
    let limits = Limits {
        body_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = TestServer::start_with(State::new(), limits).await;
    let mut tls = server.connect_tls().await;
    tls.write_all(
        b"POST /mutate/pods HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"kind\":",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut head))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 408");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_sends_nothing_after_the_handshake_is_disconnected() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = TestServer::start_with(State::new(), limits).await;
    let mut tls = server.connect_tls().await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "an idle connection is held open forever");
    server.stop().await;
}
