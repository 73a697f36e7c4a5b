//! The webhook's serving certificate, reloaded when its files change.
//!
//! Data flow: `tls.crt` + `tls.key` in `--tls-dir` (a mounted Secret, updated
//! by the kubelet through an atomic symlink swap) → [`CertStore::reload`]
//! parses and checks them (PEM decodes, the key loads, the key matches the
//! certificate) → an `Arc<CertifiedKey>` is swapped in. rustls asks
//! [`CertStore`] for the key on every handshake, so new connections get the
//! new certificate while open ones keep theirs: no restart, no failed
//! request. A bad or half-written pair is refused and the old one stays.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Why a certificate pair was not (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}; mount the webhook's TLS Secret at --tls-dir")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate: {reason}")]
    NoCertificate { path: PathBuf, reason: String },
    #[error("{path} holds no usable PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "the key in {key} does not belong to the certificate in {cert} ({source}); \
         regenerate the pair or wait for the writer to finish"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The ring provider, explicitly: rustls 0.23 refuses to guess when more than
/// one provider is compiled in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs the ring provider as the process default (for kube's client).
/// Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Parses and checks a certificate chain and key.
pub fn load_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        path: key_path.to_owned(),
        reason: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|source| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })?;
    Ok(ck)
}

/// What a reload attempt did.
#[derive(Debug)]
pub enum Reload {
    /// The files are byte-for-byte what was last seen.
    Unchanged,
    /// A new pair is being served.
    Swapped,
    /// The files changed but were refused; the previous pair stays.
    Rejected(TlsError),
}

/// The serving certificate, swappable under live connections.
pub struct CertStore {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    last_seen: Mutex<(Vec<u8>, Vec<u8>)>,
    generation: watch::Sender<u64>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .field("generation", &*self.generation.borrow())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

impl CertStore {
    /// Loads the pair in `dir`; fails (so the process does not start serving
    /// without a certificate) when it is missing or invalid.
    pub fn open(dir: impl Into<PathBuf>, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let dir = dir.into();
        let (cp, kp) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let (c, k) = (read(&cp)?, read(&kp)?);
        let ck = load_pair(&c, &k, &cp, &kp, &provider)?;
        Ok(CertStore {
            dir,
            provider,
            current: RwLock::new(Arc::new(ck)),
            last_seen: Mutex::new((c, k)),
            generation: watch::channel(0).0,
        })
    }

    /// Re-reads the files and swaps the pair in if it changed and is valid.
    pub fn reload(&self) -> Reload {
        let (cp, kp) = (self.dir.join(CERT_FILE), self.dir.join(KEY_FILE));
        let (c, k) = match (read(&cp), read(&kp)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => return Reload::Rejected(e),
        };
        let mut last = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        if last.0 == c && last.1 == k {
            return Reload::Unchanged;
        }
        match load_pair(&c, &k, &cp, &kp, &self.provider) {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
                *last = (c, k);
                self.generation.send_modify(|g| *g += 1);
                Reload::Swapped
            }
            // `last` is left alone: a half-written pair is retried on the
            // next poll, when the writer may have finished.
            Err(e) => Reload::Rejected(e),
        }
    }

    /// The certificate chain currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Increments on each swap; lets callers await a reload.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A rustls server config that asks this store on every handshake:
    /// TLS 1.3 and 1.2 only, HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Polls the files every `interval` until the task is dropped. Polling
    /// (instead of inotify) works the same for Secret volumes, whose updates
    /// are symlink swaps, and for plain files.
    pub async fn watch(self: Arc<Self>, interval: Duration, on_reload: impl Fn(bool)) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None::<String>;
        loop {
            tick.tick().await;
            let store = self.clone();
            let result = tokio::task::spawn_blocking(move || store.reload()).await;
            match result {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Swapped) => {
                    last_error = None;
                    on_reload(true);
                    tracing::info!(dir = %self.dir.display(), "serving certificate reloaded");
                }
                Ok(Reload::Rejected(e)) => {
                    let msg = e.to_string();
                    // Say it once per distinct problem, not every poll.
                    if last_error.as_deref() != Some(msg.as_str()) {
                        on_reload(false);
                        tracing::warn!(error = %msg, "new certificate refused; still serving the previous one");
                        last_error = Some(msg);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
