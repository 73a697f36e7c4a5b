//! Certificate rotation under load: a client keeps sending reviews on fresh
//! and on kept-alive connections while the files in --tls-dir are replaced;
//! not one request may fail, and new handshakes get the new certificate.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TestServer, fixture};
use http::StatusCode;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;
use webhook::state::State;
use webhook::tls::Reload;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request() {
    let server = Arc::new(TestServer::start(State::new()).await);
    let first = server.store.current().cert[0].clone();
    let reload = tokio::spawn(
        server
            .store
            .clone()
            .watch(Duration::from_millis(20), |_| {}),
    );
    let body = serde_json::to_vec(&fixture("pod-create-bare.json")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let (seen_tx, mut seen_rx) = watch::channel((0u64, None::<CertificateDer<'static>>));
    let mut kept = server.client().await;
    let client = {
        let (server, stop, failures, body) =
            (server.clone(), stop.clone(), failures.clone(), body.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A fresh connection per request, so every request is also a
                // handshake that asks the resolver for the current cert.
                let tls = server.connect_tls().await;
                let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let req = http::Request::post("/mutate/pods")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                    .unwrap();
                match sender.send_request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
                seen_tx.send_replace((n, Some(cert)));
            }
            n
        })
    };

    let bounded = Duration::from_secs(30);
    tokio::time::timeout(bounded, seen_rx.wait_for(|(n, _)| *n >= 10))
        .await
        .expect("client made progress")
        .unwrap();

    let mut generation = server.store.subscribe();
    let (new_pem, _) = server
        .pki
        .write_pair(server.dir.path(), "hoard-webhook second");
    let new = der(&new_pem);
    assert_ne!(new, first);
    tokio::time::timeout(bounded, generation.changed())
        .await
        .expect("reload noticed the new files")
        .unwrap();
    assert_eq!(server.store.current().cert[0], new);
    tokio::time::timeout(bounded, seen_rx.wait_for(|(_, c)| c.as_ref() == Some(&new)))
        .await
        .expect("a new handshake got the new certificate")
        .unwrap();

    // The connection opened before the rotation still works.
    let (status, _) = kept
        .send("POST", "/mutate/pods", Some("application/json"), body)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    stop.store(true, Ordering::Relaxed);
    let total = client.await.unwrap();
    reload.abort();
    assert!(total >= 11, "only {total} requests were sent");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during rotation"
    );
}

#[tokio::test]
async fn bad_or_mismatched_files_are_refused_and_the_old_pair_stays() {
    let server = TestServer::start(State::new()).await;
    let before = server.store.current().cert[0].clone();
    let dir = server.dir.path();
    assert!(matches!(server.store.reload(), Reload::Unchanged));

    std::fs::write(dir.join("tls.crt"), "-----BEGIN GARBAGE-----\n").unwrap();
    match server.store.reload() {
        Reload::Rejected(e) => assert!(e.to_string().contains("tls.crt"), "{e}"),
        other => panic!("garbage accepted: {other:?}"),
    }

    // A key from another pair: what a reader sees between two renames.
    let (cert_a, _) = server.pki.serving_pair("a");
    let (_, key_b) = server.pki.serving_pair("b");
    std::fs::write(dir.join("tls.crt"), &cert_a).unwrap();
    std::fs::write(dir.join("tls.key"), &key_b).unwrap();
    match server.store.reload() {
        Reload::Rejected(e) => assert!(e.to_string().contains("does not belong"), "{e}"),
        other => panic!("mismatched pair accepted: {other:?}"),
    }
    assert_eq!(server.store.current().cert[0], before);

    // Still serving the old certificate over the wire.
    let tls = server.connect_tls().await;
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], before);

    std::fs::remove_file(dir.join("tls.key")).unwrap();
    assert!(matches!(server.store.reload(), Reload::Rejected(_)));
    server.stop().await;
}

#[test]
fn startup_refuses_a_missing_certificate_with_guidance() {
    let dir = tempfile::tempdir().unwrap();
    let err = webhook::tls::CertStore::open(dir.path(), webhook::tls::provider()).unwrap_err();
    assert!(err.to_string().contains("--tls-dir"), "{err}");
}
