//! Errors a user sees, each saying what to do next.

use std::path::PathBuf;

/// Everything that can stop the webhook's certificates from being ready.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid certificate configuration: {0}")]
    InvalidConfig(String),

    #[error(
        "generating a key or certificate failed: {0}; this is a bug in hoard's certs crate, please report it"
    )]
    Generate(#[source] rcgen::Error),

    #[error(
        "subject alternative name {name:?} is {why}; fix the service name, namespace or extra SANs"
    )]
    BadSan { name: String, why: &'static str },

    #[error(
        "the stored CA cannot sign a new serving certificate: {0}; delete the Secret so a new CA is created"
    )]
    ReuseCa(#[source] rcgen::Error),

    #[error(
        "the webhook's ServiceAccount may not {verb} {resource} {name:?}{in_ns}: grant it `{verb}` on `{resource}` \
         (see manifests/ RBAC); API server said: {message}",
        in_ns = namespace.as_ref().map(|ns| format!(" in namespace {ns:?}")).unwrap_or_default()
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        name: String,
        namespace: Option<String>,
        message: String,
    },

    #[error(
        "MutatingWebhookConfiguration {0:?} does not exist; apply manifests/install.yaml or pass the right name"
    )]
    WebhookConfigMissing(String),

    #[error(
        "Secret {namespace}/{name} exists with type {found:?}, not kubernetes.io/tls, and a Secret's type cannot change; \
         delete it (`kubectl -n {namespace} delete secret {name}`) and hoard recreates it"
    )]
    SecretWrongType {
        namespace: String,
        name: String,
        found: String,
    },

    #[error(
        "{what} kept conflicting with concurrent writers after {attempts} attempts; retry, and check that no other tool manages it"
    )]
    Conflict { what: String, attempts: u32 },

    #[error("{verb} {what} failed: {source}")]
    Api {
        verb: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },

    #[error(
        "writing {path} failed: {source}; check the directory exists and is writable (an emptyDir mount)"
    )]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
