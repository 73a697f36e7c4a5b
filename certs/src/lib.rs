//! TLS material for Hoard's admission webhook.
//!
//! Data flow: [`ensure`] reads the Secret (`tls.crt`, `tls.key`, `ca.crt`, `ca.key`),
//! asks the pure [`plan`] whether to keep it, renew the serving certificate under
//! the same CA, or recreate everything; writes the result back with optimistic
//! concurrency (two replicas starting together converge on whichever write lands
//! first); then copies `ca.crt` into every `clientConfig.caBundle` of the
//! `MutatingWebhookConfiguration` that differs. The caller then [`write_files`]
//! into the directory the webhook's TLS reloader watches. [`run_renewal_loop`]
//! repeats this periodically, so a certificate is renewed long before it expires.
//!
//! Order matters during a CA change: the `caBundle` is updated before the files,
//! so the API server trusts the new CA before the webhook serves a certificate
//! signed by it. During a CA change `ca.crt` carries the new and the previous CA,
//! so replicas still serving the old certificate keep working until they renew.
//!
//! # Use from the webhook
//!
//! ```no_run
//! # async fn start(client: kube::Client) -> Result<(), certs::Error> {
//! use std::path::PathBuf;
//! let cfg = certs::CertsConfig::new("hoard-system", "hoard-webhook-tls", "hoard-webhook", "hoard-webhook");
//! let dir = PathBuf::from("/run/hoard/tls"); // an emptyDir the TLS reloader watches
//! // Start-up: certificates exist, are stored and trusted before the server binds.
//! let bundle = certs::ensure(client.clone(), &cfg).await?;
//! certs::write_files(&bundle, &dir)?;
//! // Then keep them fresh until shutdown.
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let renewal = tokio::spawn(certs::run_renewal_loop(
//!     client, cfg, dir, certs::DEFAULT_CHECK_INTERVAL, async { stopped.await.ok(); },
//! ));
//! # drop((stop, renewal)); Ok(()) }
//! ```
//!
//! # Permissions
//!
//! The webhook's ServiceAccount needs, in its own namespace, `get`, `create` and
//! `update` on `secrets` (a Role; `get`/`update` may be limited by `resourceNames`
//! to the Secret, `create` cannot be), and cluster-wide `get` and `patch` on
//! `mutatingwebhookconfigurations` limited by `resourceNames` to its own
//! configuration. A missing one surfaces as [`Error::Forbidden`] naming it.
//!
//! Out of the cluster (e2e), [`Bundle::generate`] with `extra_sans = ["127.0.0.1"]`
//! and [`write_files`] suffice; no Secret or webhook names are needed.

mod bundle;
mod cluster;
mod config;
mod error;
mod files;
mod plan;

pub use bundle::Bundle;
pub use cluster::{ensure, ensure_at, run_renewal_loop};
pub use config::{
    BACKDATE, CertsConfig, DEFAULT_CA_LIFETIME, DEFAULT_CHECK_INTERVAL, DEFAULT_RENEW_FRACTION,
    DEFAULT_SERVING_LIFETIME, FIELD_MANAGER,
};
pub use error::Error;
pub use files::{CA_CERT_FILE, CERT_FILE, KEY_FILE, write_files};
pub use plan::{Decision, plan};
