//! The S3 back end's retry rules, against a scripted HTTP server on
//! 127.0.0.1 standing in for S3: 5xx answers are retried (with backoff)
//! until a real answer comes, 403 is reported at once with what to check,
//! and a store that keeps failing gives up after the configured retries.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use engine::backend::location::{Credentials, Location};
use engine::backend::object::ObjectBackend;
use engine::backend::retry::RetryPolicy;
use engine::{Backend, FileType};

/// Answers requests with the scripted statuses in order (then 404).
struct Scripted {
    script: Mutex<VecDeque<u16>>,
    requests: AtomicU32,
    port: u16,
    _rt: tokio::runtime::Runtime,
}

fn start(script: &[u16]) -> Arc<Scripted> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = rt.handle().clone();
    let s = Arc::new(Scripted {
        script: Mutex::new(script.iter().copied().collect()),
        requests: AtomicU32::new(0),
        port,
        _rt: rt,
    });
    let st = s.clone();
    handle.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let st = st.clone();
                    async move {
                        st.requests.fetch_add(1, Ordering::SeqCst);
                        let code = st.script.lock().unwrap().pop_front().unwrap_or(404);
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::from_u16(code).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    s
}

fn backend(port: u16) -> ObjectBackend {
    let Location::Object(cfg) = format!("s3:http://127.0.0.1:{port}/bucket/p")
        .parse::<Location>()
        .unwrap()
    else {
        panic!()
    };
    let mut creds = Credentials::default();
    creds.insert("AWS_ACCESS_KEY_ID", "k");
    creds.insert("AWS_SECRET_ACCESS_KEY", "s");
    let policy = RetryPolicy {
        max_retries: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        retry_timeout: Duration::from_secs(30),
    };
    ObjectBackend::with_retry(&cfg, &creds, policy).unwrap()
}

#[test]
fn server_errors_are_retried_until_an_answer() {
    let srv = start(&[503, 500]);
    let be = backend(srv.port);
    assert!(!be.exists(FileType::Pack, &"ab".repeat(32)).unwrap());
    assert_eq!(srv.requests.load(Ordering::SeqCst), 3);
}

#[test]
fn forbidden_is_not_retried_and_says_what_to_check() {
    let srv = start(&[403, 403, 403]);
    let be = backend(srv.port);
    let e = be
        .read_full(FileType::Index, &"cd".repeat(32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("credentials"), "{e}");
    assert_eq!(srv.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn persistent_outage_gives_up_after_the_retries() {
    let srv = start(&[503; 20]);
    let be = backend(srv.port);
    assert!(be.exists(FileType::Pack, &"ef".repeat(32)).is_err());
    assert_eq!(srv.requests.load(Ordering::SeqCst), 4, "1 + 3 retries");
}
