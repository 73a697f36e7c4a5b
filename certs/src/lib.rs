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
//! signed by it.

mod bundle;
mod cluster;
mod config;
mod error;
mod files;
mod plan;

pub use bundle::Bundle;
pub use cluster::{ensure, ensure_at, run_renewal_loop};
pub use config::{
    BACKDATE, CertsConfig, DEFAULT_CA_LIFETIME, DEFAULT_RENEW_FRACTION, DEFAULT_SERVING_LIFETIME,
    FIELD_MANAGER,
};
pub use error::Error;
pub use files::{CA_CERT_FILE, CERT_FILE, KEY_FILE, write_files};
pub use plan::{Decision, plan};
