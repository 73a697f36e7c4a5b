//! Shared test harness: a test CA (rcgen), the real server on 127.0.0.1:0
//! behind real TLS, and a rustls client that trusts only the test CA.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use webhook::metrics::Metrics;
use webhook::mutate::InjectConfig;
use webhook::server::{Admission, Limits};
use webhook::state::State;
use webhook::tls::CertStore;

pub const IMAGE: &str = "registry.example/hoard:test";

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/admission")
        .join(name)
}

pub fn fixture(name: &str) -> serde_json::Value {
    let raw = std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_slice(&raw).unwrap()
}

/// A CA that signs serving certificates for 127.0.0.1 / localhost.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hoard test CA");
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A fresh serving pair (cert PEM, key PEM) with `cn` as common name.
    pub fn serving_pair(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a pair the way the kubelet updates a Secret volume: each file
    /// replaced atomically by a rename.
    pub fn write_pair(&self, dir: &Path, cn: &str) -> (String, String) {
        let (c, k) = self.serving_pair(cn);
        for (name, content) in [("tls.key", &k), ("tls.crt", &c)] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, content).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
        (c, k)
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(webhook::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<CertStore>,
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    /// What the server asked to record as Warning Events.
    pub events: tokio::sync::mpsc::Receiver<webhook::events::Problem>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(state: State) -> TestServer {
        Self::start_with(state, Limits::default()).await
    }

    pub async fn start_with(state: State, limits: Limits) -> TestServer {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        pki.write_pair(dir.path(), "hoard-webhook first");
        let store = Arc::new(CertStore::open(dir.path(), webhook::tls::provider()).unwrap());
        let tls = store.server_config().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(state);
        let metrics = Arc::new(Metrics::new());
        let (sink, events) = webhook::events::EventSink::channel(16);
        let svc = Admission {
            state: state.clone(),
            inject: Arc::new(InjectConfig {
                image: IMAGE.to_owned(),
                default_deadline: Duration::from_secs(3600),
            }),
            metrics: metrics.clone(),
            limits,
            events: sink,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(webhook::server::serve(listener, tls, svc, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            store,
            state,
            metrics,
            pki,
            dir,
            events,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn connect_tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        TlsConnector::from(self.pki.client_config())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// A keep-alive HTTP/1.1 client connection.
    pub async fn client(&self) -> Client {
        let tls = self.connect_tls().await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("server stops after shutdown")
                .unwrap();
        }
    }
}

pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), hyper::Error> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        let req = b.body(Full::new(Bytes::from(body))).unwrap();
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// POSTs a review the way the API server does.
    pub async fn review(&mut self, review: &serde_json::Value) -> serde_json::Value {
        let (status, body) = self
            .send(
                "POST",
                "/mutate/pods?timeout=10s",
                Some("application/json"),
                serde_json::to_vec(review).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
}

/// The `response` of an answered review, with its patch applied to the
/// request's object and read back as a typed Pod.
pub struct Answered {
    pub response: serde_json::Value,
    pub patch: Option<json_patch::Patch>,
    pub pod: k8s_openapi::api::core::v1::Pod,
    pub original: k8s_openapi::api::core::v1::Pod,
}

pub fn apply(review: &serde_json::Value, answer: &serde_json::Value) -> Answered {
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(
        response["uid"], review["request"]["uid"],
        "uid must be echoed"
    );
    let mut object = review["request"]["object"].clone();
    let original = serde_json::from_value(object.clone()).unwrap();
    let patch = if response.get("patch").is_some() {
        assert_eq!(response["patchType"], "JSONPatch");
        // As the API server decodes it: Go's []byte is a base64 string.
        let bytes = webhook::testing::decode_patch_bytes(&response["patch"]).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut object, &patch).expect("patch applies to the original object");
        Some(patch)
    } else {
        None
    };
    Answered {
        response,
        patch,
        pod: serde_json::from_value(object).expect("patched object is a valid Pod"),
        original,
    }
}

impl TestServer {
    /// An HTTP/2 connection negotiated by ALPN, as the kube-apiserver makes.
    pub async fn h2_sender(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let mut cfg = (*self.pki.client_config()).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        sender
    }
}
