//! The plain-HTTP admin port: `/live`, `/ready` and `/metrics`.
//!
//! Kept apart from the TLS port so probes and scrapes need no certificate
//! and an overloaded admission port does not fail liveness.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

use crate::metrics::Metrics;
use crate::state::State;

/// Answers one admin request.
pub fn respond<B>(req: &Request<B>, state: &State, metrics: &Metrics) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, ctype: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, http::HeaderValue::from_static(ctype));
        r
    };
    let plain = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into(), plain);
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into(), plain),
        "/ready" if state.all_synced() => text(StatusCode::OK, "ready\n".into(), plain),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: caches are still syncing\n".into(),
            plain,
        ),
        "/metrics" => text(
            StatusCode::OK,
            metrics.render(state),
            "text/plain; version=0.0.4",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /live, /ready, /metrics\n".into(),
            plain,
        ),
    }
}

/// Serves the admin endpoints until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (state, metrics) = (state.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = respond(&req, &state, &metrics);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn ready_only_after_every_cache_synced() {
        let (state, metrics) = (State::new(), Metrics::new());
        assert_eq!(
            respond(&get("/live"), &state, &metrics).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&get("/ready"), &state, &metrics).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.set_synced(crate::state::CacheKind::ReplicaSets);
        assert_eq!(
            respond(&get("/ready"), &state, &metrics).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.mark_all_synced();
        assert_eq!(
            respond(&get("/ready"), &state, &metrics).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&get("/nope"), &state, &metrics).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn metrics_expose_outcomes_cache_sizes_and_sync_state() {
        use http_body_util::BodyExt;
        let (state, metrics) = (State::new(), Metrics::new());
        state.apply_replicaset("demo", "rs", crate::workload::ReplicaSetOwner::None);
        state.set_synced(crate::state::CacheKind::ReplicaSets);
        metrics.observe(crate::mutate::Outcome::PatchedRestore, 0.0002, 1);
        let body = respond(&get("/metrics"), &state, &metrics).into_body();
        let body = futures::executor::block_on(body.collect())
            .unwrap()
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        for line in [
            "hoard_webhook_reviews_total{outcome=\"patched-restore\"} 1",
            "hoard_webhook_reviews_total{outcome=\"skipped\"} 0",
            "hoard_webhook_cache_objects{cache=\"replicasets\"} 1",
            "hoard_webhook_cache_synced{cache=\"replicasets\"} 1",
            "hoard_webhook_cache_synced{cache=\"restoresessions\"} 0",
            "hoard_webhook_review_duration_seconds_bucket{le=\"0.00025\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
