//! The HTTPS admission endpoint: a hand-written hyper service in front of
//! [`review::answer`].
//!
//! Data flow: TCP accept → TLS handshake (bounded in time; the certificate
//! comes from [`crate::tls::CertStore`] per handshake) → HTTP/1.1 or HTTP/2
//! (header reads time out) → [`Admission`]: route, method, content type and
//! size checks → body read (bounded in size and time) → decode + mutate →
//! JSON answer. Only `POST /mutate/pods` reaches the decision; anything else
//! gets a plain status code. A review that cannot be read still gets a valid
//! `AdmissionReview` so the API server logs a reason, not a broken webhook.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::events::EventSink;
use crate::metrics::Metrics;
use crate::mutate::{InjectConfig, Outcome};
use crate::review;
use crate::state::State;

/// The only path that answers reviews.
pub const MUTATE_PODS_PATH: &str = "/mutate/pods";

/// Bounds on what a client may make the server hold or wait for.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The API server caps requests at 3 MiB; a review of a Pod is far
    /// smaller, so anything above is not a genuine review.
    pub max_body: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub handshake_timeout: Duration,
    /// How long open connections may finish after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // The API server gives a webhook at most `timeoutSeconds` (≤ 30 s,
        // 10 s in our manifests); nothing legitimate is slower than that.
        Limits {
            max_body: 3 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// How often an idle HTTP/2 connection is pinged.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

/// The admission service. Cheap to clone: one per connection.
#[derive(Clone, Debug)]
pub struct Admission {
    pub state: Arc<State>,
    pub inject: Arc<InjectConfig>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Where Warning Events about malformed annotations go (never waits).
    pub events: EventSink,
}

type Reply = Response<Full<Bytes>>;

fn plain(status: StatusCode, text: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn is_json(req: &http::request::Parts) -> bool {
    req.headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The decision from a complete body: [`review::answer`], or a stand-in in
/// tests.
type Decide = fn(&[u8], &State, &InjectConfig) -> review::Answer;

impl Admission {
    /// Answers one HTTP request.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.handle_with(req, review::answer).await
    }

    async fn handle_with<B>(&self, req: Request<B>, decide: Decide) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = req.into_parts();
        if parts.uri.path() != MUTATE_PODS_PATH {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: the admission endpoint is POST /mutate/pods\n",
            );
        }
        if parts.method != Method::POST {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: send AdmissionReviews with POST\n",
            );
            r.headers_mut()
                .insert(ALLOW, http::HeaderValue::from_static("POST"));
            return r;
        }
        let reject = |status, reason: &str| {
            self.metrics.count(Outcome::Invalid);
            json(status, review::rejection(reason))
        };
        if !is_json(&parts) {
            return reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "hoard-webhook expects Content-Type: application/json (an AdmissionReview)",
            );
        }
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = "the AdmissionReview is larger than hoard-webhook accepts (3 MiB)";
        if declared.is_some_and(|n| n > self.limits.max_body as u64) {
            return reject(StatusCode::PAYLOAD_TOO_LARGE, too_large);
        }
        let read = tokio::time::timeout(
            self.limits.body_read_timeout,
            Limited::new(body, self.limits.max_body).collect(),
        )
        .await;
        let bytes = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return reject(StatusCode::PAYLOAD_TOO_LARGE, too_large);
            }
            Ok(Err(e)) => {
                debug!(error = %e, "reading a review body failed");
                return reject(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                );
            }
            Err(_) => {
                return reject(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                );
            }
        };
        let start = Instant::now();
        // A panic here is a bug in Hoard; it must not become a dropped
        // connection (the API server would log a failing webhook for every
        // pod) nor take the connection's other requests with it. The state
        // is only read, so nothing is left half-changed.
        let decided = std::panic::catch_unwind(AssertUnwindSafe(|| {
            decide(&bytes, &self.state, &self.inject)
        }));
        let mut answer = decided.unwrap_or_else(|_| {
            self.metrics.panicked();
            error!("the admission decision panicked; the pod was allowed unchanged");
            review::after_panic(&bytes)
        });
        if let Some(p) = answer.event.take() {
            self.events.send(p, &self.metrics);
        }
        self.metrics.observe(
            answer.outcome,
            start.elapsed().as_secs_f64(),
            answer.warnings,
        );
        debug!(outcome = answer.outcome.as_str(), "review answered");
        json(StatusCode::OK, answer.body)
    }
}

impl<B> hyper::service::Service<Request<B>> for Admission
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// Notes that a connection delivered a request (its headers were read).
#[derive(Clone)]
struct FirstRequest {
    inner: Admission,
    seen: Arc<AtomicBool>,
}

impl<B> hyper::service::Service<Request<B>> for FirstRequest
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = <Admission as hyper::service::Service<Request<B>>>::Future;

    fn call(&self, req: Request<B>) -> Self::Future {
        self.seen.store(true, Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// Serves `svc` over TLS on `listener` until `shutdown` completes, then lets
/// open connections finish for up to `limits.drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    svc: Admission,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let limits = svc.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // The API server keeps its HTTP/2 connection open between reviews; a
    // peer that vanished without a FIN is found by an unanswered ping.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the
                    // connections we have, try again shortly.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let svc = svc.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            // hyper's header read timeout covers HTTP/1 requests once bytes
            // arrive, but neither the HTTP/1-or-2 detection nor the HTTP/2
            // preface is bounded: a client that completes the handshake and
            // sends nothing would hold the connection forever.
            let seen = Arc::new(AtomicBool::new(false));
            let svc = FirstRequest {
                inner: svc,
                seen: seen.clone(),
            };
            let conn = watcher.watch(
                builder
                    .serve_connection(TokioIo::new(tls), svc)
                    .into_owned(),
            );
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = &mut conn => ended,
                () = tokio::time::sleep(limits.header_read_timeout) => {
                    if !seen.load(Ordering::Relaxed) {
                        debug!(%peer, "no request within the header read timeout; closing");
                        return;
                    }
                    conn.await
                }
            };
            if let Err(e) = ended {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("admission server draining connections");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after the drain timeout; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Admission {
        Admission {
            state: Arc::new(State::new()),
            inject: Arc::new(InjectConfig::default()),
            metrics: Arc::new(Metrics::new()),
            limits: Limits::default(),
            events: EventSink::disabled(),
        }
    }

    fn post(body: &'static str) -> Request<Full<Bytes>> {
        Request::post(MUTATE_PODS_PATH)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    const REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
        "request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},
        "resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE",
        "namespace":"demo","userInfo":{},"object":{"metadata":{"name":"p"},"spec":{"containers":[]}}}}"#;

    #[tokio::test]
    async fn a_panicking_decision_still_allows_the_pod_with_a_warning() {
        let svc = admission();
        let reply = svc
            .handle_with(post(REVIEW), |_, _, _| panic!("injected bug"))
            .await;
        assert_eq!(reply.status(), StatusCode::OK);
        let body = reply.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none());
        let warning = v["response"]["warnings"][0].as_str().unwrap();
        assert!(warning.contains("a bug"), "{warning}");
        assert_eq!(svc.metrics.panics(), 1);
        assert_eq!(svc.metrics.reviews(Outcome::Skipped), 1);

        // The same service keeps answering.
        let reply = svc.handle(post(REVIEW)).await;
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(svc.metrics.panics(), 1);
        assert_eq!(svc.metrics.reviews(Outcome::Skipped), 2);
    }
}
