//! Opening a session's `Repository` with credentials that stay in Hoard's
//! namespace.
//!
//! Data flow: `Repository` object (tenant namespace) → its
//! `storageSecretName` Secret read from the agent's own namespace only
//! (`--namespace`, `hoard-system`), and only if the Secret's
//! `hoard.dev/allowed-namespaces` annotation lists the Repository's
//! namespace: tenants never see or supply credentials, and cannot borrow
//! another tenant's → the backend section mapped onto the engine's typed
//! [`Location`] (local hostPath, S3, GCS, Azure, B2, Swift, REST) plus a
//! [`Credentials`] map built from the Secret (Stash's key names accepted)
//! → [`engine::Repository::open`] on the transfer thread (key derivation,
//! index loading and every object-store request are blocking work).
//!
//! Credentials never reach a log line or a status message: [`RepoAccess`]
//! and [`Credentials`] print key names only, and errors name the Secret and
//! the missing key, never a value.

use std::path::PathBuf;
use std::sync::Arc;

use api::BackendKind;
use engine::backend::location::{
    CREDENTIAL_NAMES, Credentials, Location, ObjectStoreConfig, ObjectStoreKind,
};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

/// Key of the repository password in the Secret (as in Stash and restic).
pub const PASSWORD_KEY: &str = "RESTIC_PASSWORD";

/// Stash's Secret keys that the engine knows under another name
/// (`Stash name → engine name`). The engine's own names
/// ([`CREDENTIAL_NAMES`]) are accepted as they are and win over an alias.
pub const STASH_KEY_ALIASES: &[(&str, &str)] = &[
    // GCS: Stash stores the service account key file's content here.
    (
        "GOOGLE_SERVICE_ACCOUNT_JSON_KEY",
        "GOOGLE_SERVICE_ACCOUNT_JSON",
    ),
    // REST server basic auth (Stash's names).
    ("REST_SERVER_USERNAME", "RESTIC_REST_USERNAME"),
    ("REST_SERVER_PASSWORD", "RESTIC_REST_PASSWORD"),
];

/// Keys of a custom CA bundle (PEM) for the store's TLS certificate.
pub const CA_CERT_KEY: &str = "CA_CERT_DATA";

/// Swift's native (Keystone / TempAuth) keys. Hoard talks to Swift through
/// its S3 API instead; their presence alone gets a message saying so.
const SWIFT_NATIVE_KEYS: &[&str] = &["OS_AUTH_URL", "OS_USERNAME", "ST_AUTH", "ST_USER"];

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(
        "Repository {name:?} has no backend.storageSecretName; create a Secret with {PASSWORD_KEY} in namespace {namespace} and name it there"
    )]
    NoSecretName { name: String, namespace: String },
    #[error(
        "Secret {namespace}/{secret} (storageSecretName of Repository {name:?}) cannot be read: {source}; repository Secrets live in Hoard's namespace {namespace}"
    )]
    Secret {
        name: String,
        secret: String,
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "Secret {namespace}/{secret} may not be used by Repository {name:?} in namespace {repo_namespace}: add {repo_namespace} to the Secret's hoard.dev/allowed-namespaces annotation (comma-separated, or *)"
    )]
    NotAllowed {
        name: String,
        repo_namespace: String,
        secret: String,
        namespace: String,
    },
    #[error("Secret {namespace}/{secret} has no {PASSWORD_KEY} key (or it is not UTF-8)")]
    NoPassword { secret: String, namespace: String },
    #[error(
        "Repository {name:?} uses the {backend} backend, which this agent does not support: {what}"
    )]
    Unsupported {
        name: String,
        backend: String,
        what: String,
    },
    #[error(
        "Repository {name:?} is a hostPath repository but the agent has no host root (--host-root); mount the host's / into the agent"
    )]
    NoHostRoot { name: String },
    #[error("Repository {name:?}: invalid backend: {reason}")]
    Invalid { name: String, reason: String },
    #[error(
        "Repository {name:?} at {location}: {message}; fix the backend section or the keys of Secret {namespace}/{secret}"
    )]
    BackendConfig {
        name: String,
        location: String,
        secret: String,
        namespace: String,
        message: String,
    },
    #[error(
        "the password in Secret {namespace}/{secret} does not open Repository {name:?} at {location}; put the repository's password under {PASSWORD_KEY} in that Secret"
    )]
    WrongPassword {
        name: String,
        secret: String,
        namespace: String,
        location: String,
    },
    #[error("Repository {name:?}: no repository at {location}{on}; {fix}")]
    Missing {
        name: String,
        location: String,
        /// ` on node <node>` for a local repository, else empty.
        on: String,
        fix: String,
    },
    #[error("Repository {name:?} at {location} is unreachable or damaged: {source}")]
    Open {
        location: String,
        name: String,
        #[source]
        source: engine::Error,
    },
}

impl RepoError {
    pub fn reason(&self) -> &'static str {
        match self {
            RepoError::NoSecretName { .. }
            | RepoError::Secret { .. }
            | RepoError::NotAllowed { .. }
            | RepoError::NoPassword { .. } => "credentials",
            RepoError::Unsupported { .. }
            | RepoError::NoHostRoot { .. }
            | RepoError::Invalid { .. }
            | RepoError::BackendConfig { .. } => "repository_config",
            RepoError::WrongPassword { .. } => "wrong_password",
            RepoError::Missing { .. } => "no_repository",
            RepoError::Open { source, .. } => crate::work::repo_reason(source),
        }
    }
}

/// Everything needed to open a repository on a transfer thread.
#[derive(Clone)]
pub struct RepoAccess {
    pub name: String,
    pub location: Location,
    /// `namespace/name` of the Secret the password came from (for messages).
    pub secret: (String, String),
    /// This node (for messages).
    pub node: String,
    creds: Credentials,
    /// `CA_CERT_DATA`: PEM bundle trusted for the store's TLS (S3 only).
    ca_cert: Option<String>,
    password: String,
}

impl std::fmt::Debug for RepoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoAccess")
            .field("name", &self.name)
            .field("location", &self.location.display())
            .field("credentials", &self.creds)
            .finish_non_exhaustive()
    }
}

impl RepoAccess {
    /// A local repository at `location` (as seen from the agent).
    pub fn new(name: String, location: PathBuf, password: String) -> Self {
        Self::with_location(
            name,
            Location::Local(location),
            Credentials::default(),
            password,
        )
    }

    pub fn with_location(
        name: String,
        location: Location,
        creds: Credentials,
        password: String,
    ) -> Self {
        RepoAccess {
            name,
            location,
            secret: Default::default(),
            node: String::new(),
            creds,
            ca_cert: None,
            password,
        }
    }

    /// Trusts `pem` (a certificate bundle) for the store's TLS connections.
    pub fn with_ca_cert(mut self, pem: Option<String>) -> Self {
        self.ca_cert = pem;
        self
    }

    /// Opens the repository (blocking: key derivation, index load, and for
    /// object stores the requests; call it from a transfer thread or
    /// `spawn_blocking`, never from an async task).
    pub fn open(&self) -> Result<Arc<engine::Repository>, RepoError> {
        let location = self.location.display();
        let backend = match (&self.location, &self.ca_cert) {
            (Location::Object(c), Some(pem)) => s3_with_ca(c, &self.creds, pem),
            _ => engine::backend::location::open_backend(&self.location, &self.creds),
        }
        .map_err(|e| RepoError::BackendConfig {
            name: self.name.clone(),
            location: location.clone(),
            namespace: self.secret.0.clone(),
            secret: self.secret.1.clone(),
            message: match e {
                engine::Error::Backend { message, .. } => message,
                e => e.to_string(),
            },
        })?;
        engine::Repository::open(backend, &self.password)
            .map(Arc::new)
            .map_err(|source| match source {
                engine::Error::WrongPassword { .. } => RepoError::WrongPassword {
                    name: self.name.clone(),
                    namespace: self.secret.0.clone(),
                    secret: self.secret.1.clone(),
                    location,
                },
                engine::Error::NoRepository { .. } => {
                    let local = matches!(self.location, Location::Local(_));
                    RepoError::Missing {
                        name: self.name.clone(),
                        on: if local {
                            format!(" on node {}", self.node)
                        } else {
                            String::new()
                        },
                        fix: if local {
                            format!(
                                "initialize it (`hoard init --repo {location}`) or fix backend.local.hostPath"
                            )
                        } else {
                            format!(
                                "initialize it (`hoard init --repo {location}` with the Secret's credentials) or fix the bucket/prefix in the Repository's backend"
                            )
                        },
                        location,
                    }
                }
                source => RepoError::Open {
                    name: self.name.clone(),
                    location,
                    source,
                },
            })
    }
}

/// Where a local hostPath repository is, seen from the agent.
pub fn local_location(
    repo: &api::Repository,
    host_root: Option<&std::path::Path>,
) -> Result<PathBuf, RepoError> {
    let name = repo.metadata.name.clone().unwrap_or_default();
    let b = &repo.spec.backend;
    let local = b.local.as_ref().ok_or_else(|| RepoError::Invalid {
        name: name.clone(),
        reason: "no local backend".into(),
    })?;
    let Some(hp) = &local.host_path else {
        return Err(RepoError::Unsupported {
            name,
            backend: "local persistentVolumeClaim".into(),
            what: "use a hostPath, or an object store (s3, gcs, azure, b2, swift) or a rest server"
                .into(),
        });
    };
    let root = host_root.ok_or_else(|| RepoError::NoHostRoot { name: name.clone() })?;
    let mut rel = PathBuf::from(hp.path.trim_start_matches('/'));
    if let Some(sub) = local.sub_path.as_deref().filter(|s| !s.is_empty()) {
        rel.push(sub.trim_start_matches('/'));
    }
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(RepoError::Invalid {
            name,
            reason: format!("path {} must not contain '..'", rel.display()),
        });
    }
    Ok(root.join(rel))
}

/// `prefix` without empty, `.` or leading/trailing `/` parts; `..` refused
/// (object stores have no parent directories, and a tenant must not reach
/// outside the prefix the administrator expects).
fn clean_prefix(prefix: Option<&str>) -> Result<String, String> {
    let mut parts = Vec::new();
    for p in prefix.unwrap_or("").split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(format!("prefix {prefix:?} must not contain '..'")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// `(endpoint, region)` for the S3 client from the CRD's `endpoint`: AWS's
/// own endpoints (`s3.amazonaws.com`, `s3.<region>.amazonaws.com`) leave
/// the endpoint to the SDK (virtual-hosted requests, the region from the
/// host name); anything else is an S3-compatible service reached
/// path-style, over HTTPS unless the endpoint says `http://`.
fn s3_endpoint(raw: &str) -> Result<(Option<String>, Option<String>), String> {
    let raw = raw.trim().trim_end_matches('/');
    let (scheme, host) = match raw.split_once("://") {
        Some((s @ ("http" | "https"), h)) => (s, h),
        Some((s, _)) => {
            return Err(format!(
                "s3.endpoint {raw:?} has scheme {s:?}; use http://, https:// or a bare host name"
            ));
        }
        None => ("https", raw),
    };
    if host.contains('/') {
        return Err(format!(
            "s3.endpoint {raw:?} has a path; give only [scheme://]host[:port] and put the path into s3.prefix"
        ));
    }
    if host.is_empty() || host == "s3.amazonaws.com" {
        return Ok((None, None));
    }
    let aws_region = host
        .strip_suffix(".amazonaws.com")
        .and_then(|h| h.strip_prefix("s3.").or_else(|| h.strip_prefix("s3-")))
        .filter(|r| !r.is_empty() && !r.contains('.'));
    if let Some(region) = aws_region
        && scheme == "https"
    {
        return Ok((None, Some(region.to_string())));
    }
    Ok((Some(format!("{scheme}://{host}")), None))
}

/// The engine location of `repo`'s backend, and a password found in a
/// `rest` URL (kept out of the location so it is never displayed).
pub fn location_of(
    repo: &api::Repository,
    host_root: Option<&std::path::Path>,
) -> Result<(Location, Option<String>), RepoError> {
    let name = repo.metadata.name.clone().unwrap_or_default();
    let invalid = |reason: String| RepoError::Invalid {
        name: name.clone(),
        reason,
    };
    let b = &repo.spec.backend;
    let Some(kind) = b.kind() else {
        return Err(invalid(
            "set exactly one of local, s3, gcs, azure, swift, b2, rest".into(),
        ));
    };
    let object = |kind: ObjectStoreKind,
                  field: &str,
                  bucket: &str,
                  prefix: Option<&str>,
                  endpoint: Option<String>,
                  region: Option<String>| {
        let bucket = bucket.trim();
        if bucket.is_empty() || bucket.contains('/') {
            return Err(invalid(format!(
                "{field} {bucket:?} must be a non-empty name without '/' (put paths into prefix)"
            )));
        }
        Ok((
            Location::Object(ObjectStoreConfig {
                kind,
                bucket: bucket.to_string(),
                prefix: clean_prefix(prefix).map_err(&invalid)?,
                endpoint,
                region,
            }),
            None,
        ))
    };
    let missing = || invalid(format!("{kind:?} backend section is empty"));
    match kind {
        BackendKind::Local => Ok((Location::Local(local_location(repo, host_root)?), None)),
        BackendKind::S3 => {
            let s3 = b.s3.as_ref().ok_or_else(missing)?;
            let (endpoint, host_region) = s3_endpoint(&s3.endpoint).map_err(&invalid)?;
            let region = s3
                .region
                .clone()
                .filter(|r| !r.trim().is_empty())
                .or(host_region);
            object(
                ObjectStoreKind::S3,
                "s3.bucket",
                &s3.bucket,
                s3.prefix.as_deref(),
                endpoint,
                region,
            )
        }
        BackendKind::Gcs => {
            let g = b.gcs.as_ref().ok_or_else(missing)?;
            object(
                ObjectStoreKind::Gcs,
                "gcs.bucket",
                &g.bucket,
                g.prefix.as_deref(),
                None,
                None,
            )
        }
        BackendKind::B2 => {
            let g = b.b2.as_ref().ok_or_else(missing)?;
            object(
                ObjectStoreKind::B2,
                "b2.bucket",
                &g.bucket,
                g.prefix.as_deref(),
                None,
                None,
            )
        }
        BackendKind::Azure => {
            let c = b.azure.as_ref().ok_or_else(missing)?;
            object(
                ObjectStoreKind::Azure,
                "azure.container",
                &c.container,
                c.prefix.as_deref(),
                None,
                None,
            )
        }
        BackendKind::Swift => {
            let c = b.swift.as_ref().ok_or_else(missing)?;
            object(
                ObjectStoreKind::Swift,
                "swift.container",
                &c.container,
                c.prefix.as_deref(),
                None,
                None,
            )
        }
        BackendKind::Rest => {
            let r = b.rest.as_ref().ok_or_else(missing)?;
            match Location::parse_with_secret(&format!("rest:{}", r.url.trim())) {
                Ok((loc @ Location::Rest(_), pw)) => Ok((loc, pw)),
                Ok(_) => Err(invalid("rest.url must be an http(s) URL".into())),
                Err(e) => Err(invalid(e.reason)),
            }
        }
    }
}

/// A Secret value by key (`data`, else `stringData`), trailing newlines
/// removed (`echo secret > file` adds one).
fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key).cloned()))
        .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
        .filter(|v| !v.is_empty())
}

/// The backend credentials in a repository Secret: the engine's names
/// ([`CREDENTIAL_NAMES`]) and Stash's ([`STASH_KEY_ALIASES`]). Anything else
/// in the Secret is ignored.
pub fn credentials_from_secret(s: &Secret) -> Credentials {
    let mut c = Credentials::default();
    for (stash, ours) in STASH_KEY_ALIASES {
        if let Some(v) = secret_value(s, stash) {
            c.insert(*ours, v);
        }
    }
    for k in CREDENTIAL_NAMES {
        if let Some(v) = secret_value(s, k) {
            c.insert(*k, v);
        }
    }
    c
}

/// Checks what the engine cannot do with this Secret, before any request.
fn check_supported(
    name: &str,
    location: &Location,
    s: &Secret,
    creds: &Credentials,
) -> Result<(), RepoError> {
    let unsupported = |backend: &str, what: String| RepoError::Unsupported {
        name: name.to_string(),
        backend: backend.to_string(),
        what,
    };
    let s3 = matches!(location, Location::Object(c) if c.kind == ObjectStoreKind::S3);
    if secret_value(s, CA_CERT_KEY).is_some() && !s3 {
        return Err(unsupported(
            &location_kind(location),
            format!(
                "{CA_CERT_KEY} (a private certificate authority) is supported for s3 repositories only; serve this store with a certificate from a public CA, or reach it over plain http inside the cluster, and remove {CA_CERT_KEY} from the Secret"
            ),
        ));
    }
    if let Location::Object(c) = location
        && c.kind == ObjectStoreKind::Swift
        && creds.get("SWIFT_S3_ENDPOINT").is_none()
        && SWIFT_NATIVE_KEYS
            .iter()
            .any(|k| secret_value(s, k).is_some())
    {
        return Err(unsupported(
            "swift",
            "Hoard reaches Swift through its S3 API (the s3api middleware), not Keystone/TempAuth: set SWIFT_S3_ENDPOINT and EC2 credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, from `openstack ec2 credentials create`) in the Secret; OS_*/ST_* keys are not used".into(),
        ));
    }
    Ok(())
}

/// An S3 repository whose endpoint presents a certificate from a private
/// CA (`CA_CERT_DATA`, e.g. an in-cluster MinIO): the same client the
/// engine builds for `s3:` (path-style for custom endpoints, the same
/// timeouts and retry numbers), with the bundle added to the trusted roots,
/// wrapped in the engine's [`engine::backend::object::ObjectBackend`]
/// (upload verification, restic's layout).
pub fn s3_with_ca(
    c: &ObjectStoreConfig,
    creds: &Credentials,
    pem: &str,
) -> engine::Result<Arc<dyn engine::Backend>> {
    use object_store::aws::AmazonS3Builder;
    use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};
    use std::time::Duration;
    let location = c.display();
    let bad = |message: String| engine::Error::Backend {
        file: location.clone(),
        message,
    };
    let certs = Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
        bad(format!(
            "{CA_CERT_KEY} is not a PEM certificate bundle: {e}"
        ))
    })?;
    if certs.is_empty() {
        return Err(bad(format!("{CA_CERT_KEY} holds no PEM certificate")));
    }
    let http = c
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let mut opts = ClientOptions::new()
        .with_allow_http(http)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(300));
    for cert in certs {
        opts = opts.with_root_certificate(cert);
    }
    // engine::backend::retry::RetryPolicy::default(), as object_store takes it
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 3.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(180),
    };
    let key_id = creds.get("AWS_ACCESS_KEY_ID");
    let secret = creds.get("AWS_SECRET_ACCESS_KEY");
    let region = c
        .region
        .clone()
        .or_else(|| creds.get("AWS_DEFAULT_REGION").map(String::from))
        .or_else(|| creds.get("AWS_REGION").map(String::from))
        .unwrap_or_else(|| "us-east-1".into());
    let mut b = if key_id.is_some() {
        AmazonS3Builder::new()
    } else {
        AmazonS3Builder::from_env()
    };
    b = b
        .with_bucket_name(&c.bucket)
        .with_region(region)
        .with_retry(retry)
        .with_client_options(opts);
    if let Some(ep) = &c.endpoint {
        b = b
            .with_endpoint(ep)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(http);
    }
    match (key_id, secret) {
        (Some(k), Some(sec)) => {
            b = b.with_access_key_id(k).with_secret_access_key(sec);
            if let Some(t) = creds.get("AWS_SESSION_TOKEN") {
                b = b.with_token(t);
            }
        }
        (None, None) => {}
        _ => {
            return Err(bad(
                "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both".into(),
            ));
        }
    }
    let store = b
        .build()
        .map_err(|e| bad(format!("configuring the S3 client: {e}")))?;
    Ok(Arc::new(
        engine::backend::object::ObjectBackend::from_store(
            Arc::new(store),
            &c.prefix,
            location.clone(),
        )?,
    ))
}

fn location_kind(l: &Location) -> String {
    match l {
        Location::Local(_) => "local".into(),
        Location::Object(c) => format!("{:?}", c.kind).to_lowercase(),
        Location::Rest(_) => "rest".into(),
    }
}

/// Reads the credentials for `repo` from the agent's namespace and maps its
/// backend onto the engine's.
pub async fn access(
    client: &kube::Client,
    agent_namespace: &str,
    repo: &api::Repository,
    host_root: Option<&std::path::Path>,
) -> Result<RepoAccess, RepoError> {
    let name = repo.metadata.name.clone().unwrap_or_default();
    let repo_ns = repo.namespace().unwrap_or_default();
    let (location, url_password) = location_of(repo, host_root)?;
    let secret = repo
        .spec
        .backend
        .storage_secret_name
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| RepoError::NoSecretName {
            name: name.clone(),
            namespace: agent_namespace.into(),
        })?;
    let s: Secret = Api::namespaced(client.clone(), agent_namespace)
        .get(&secret)
        .await
        .map_err(|source| RepoError::Secret {
            name: name.clone(),
            secret: secret.clone(),
            namespace: agent_namespace.into(),
            source: Box::new(source),
        })?;
    // A Repository in Hoard's own namespace may use its Secrets; any other
    // namespace must be listed on the Secret.
    if repo_ns != agent_namespace
        && !api::repository::secret_allows_namespace(s.metadata.annotations.as_ref(), &repo_ns)
    {
        return Err(RepoError::NotAllowed {
            name,
            repo_namespace: repo_ns,
            secret,
            namespace: agent_namespace.into(),
        });
    }
    let password = secret_value(&s, PASSWORD_KEY).ok_or_else(|| RepoError::NoPassword {
        secret: secret.clone(),
        namespace: agent_namespace.into(),
    })?;
    let mut creds = credentials_from_secret(&s);
    if let Some(pw) = url_password
        && creds.get("RESTIC_REST_PASSWORD").is_none()
    {
        creds.insert("RESTIC_REST_PASSWORD", pw);
    }
    check_supported(&name, &location, &s, &creds)?;
    let mut a = RepoAccess::with_location(name, location, creds, password)
        .with_ca_cert(secret_value(&s, CA_CERT_KEY));
    a.secret = (agent_namespace.to_string(), secret);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn init(dir: &std::path::Path) {
        engine::Repository::init(
            Arc::new(engine::LocalBackend::new(dir)),
            "right",
            engine::InitOptions {
                kdf: engine::KdfParams::insecure_fast(),
                chunker_polynomial: None,
            },
        )
        .unwrap();
    }

    fn repo(backend: api::Backend) -> api::Repository {
        api::Repository {
            metadata: kube::api::ObjectMeta {
                name: Some("r".into()),
                namespace: Some("demo".into()),
                ..Default::default()
            },
            spec: api::RepositorySpec {
                backend,
                wipe_out: None,
            },
            status: None,
        }
    }

    fn object(b: api::Backend) -> ObjectStoreConfig {
        match location_of(&repo(b), None).unwrap() {
            (Location::Object(c), None) => c,
            other => panic!("{other:?}"),
        }
    }

    fn s3(endpoint: &str, prefix: Option<&str>, region: Option<&str>) -> api::Backend {
        api::Backend {
            s3: Some(api::S3Backend {
                endpoint: endpoint.into(),
                bucket: "bkt".into(),
                prefix: prefix.map(str::to_string),
                region: region.map(str::to_string),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn wrong_password_and_missing_repository_say_which_and_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("repo");
        init(&dir);
        let mut a = RepoAccess::new("local-repo".into(), dir.clone(), "wrong".into());
        a.secret = ("hoard-system".into(), "repo-secret".into());
        a.node = "node-a".into();
        let e = a.open().unwrap_err();
        assert_eq!(e.reason(), "wrong_password");
        assert_eq!(
            e.to_string(),
            format!(
                "the password in Secret hoard-system/repo-secret does not open Repository \"local-repo\" at {}; put the repository's password under RESTIC_PASSWORD in that Secret",
                dir.display()
            )
        );
        a.location = Location::Local(t.path().join("nothing-here"));
        let e = a.open().unwrap_err();
        assert_eq!(e.reason(), "no_repository");
        assert!(e.to_string().contains("no repository at"), "{e}");
        assert!(e.to_string().contains("on node node-a"), "{e}");
        a.location = Location::Local(dir);
        a.password = "right".into();
        assert!(a.open().is_ok());
    }

    #[test]
    fn local_host_path_maps_under_the_host_root_only() {
        let local = |path: &str, sub: Option<&str>| {
            repo(api::Backend {
                local: Some(api::LocalBackend {
                    host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
                        path: path.into(),
                        type_: None,
                    }),
                    sub_path: sub.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let root = std::path::Path::new("/host");
        assert_eq!(
            local_location(&local("/data/repo", None), Some(root)).unwrap(),
            PathBuf::from("/host/data/repo")
        );
        assert_eq!(
            location_of(&local("/data", Some("demo")), Some(root)).unwrap(),
            (Location::Local(PathBuf::from("/host/data/demo")), None)
        );
        assert!(matches!(
            local_location(&local("/data/../etc", None), Some(root)),
            Err(RepoError::Invalid { .. })
        ));
        assert!(matches!(
            local_location(&local("/data", None), None),
            Err(RepoError::NoHostRoot { .. })
        ));
    }

    #[test]
    fn s3_endpoints_map_as_restic_spells_them() {
        // (endpoint, region field) → (client endpoint, region)
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (
                "s3.amazonaws.com",
                Some("us-east-1"),
                None,
                Some("us-east-1"),
            ),
            ("https://s3.amazonaws.com/", None, None, None),
            ("s3.eu-west-1.amazonaws.com", None, None, Some("eu-west-1")),
            (
                "s3-eu-west-1.amazonaws.com",
                Some("eu-west-2"),
                None,
                Some("eu-west-2"),
            ),
            (
                "http://minio.storage:9000",
                None,
                Some("http://minio.storage:9000"),
                None,
            ),
            (
                "minio.example.com",
                Some("eu"),
                Some("https://minio.example.com"),
                Some("eu"),
            ),
            (
                "http://127.0.0.1:5000/",
                None,
                Some("http://127.0.0.1:5000"),
                None,
            ),
        ];
        for (ep, region, want_ep, want_region) in cases {
            let c = object(s3(ep, Some("/demo//app/"), *region));
            assert_eq!(c.kind, ObjectStoreKind::S3);
            assert_eq!(c.bucket, "bkt");
            assert_eq!(c.prefix, "demo/app", "{ep}");
            assert_eq!(c.endpoint.as_deref(), *want_ep, "{ep}");
            assert_eq!(c.region.as_deref(), *want_region, "{ep}");
        }
        for bad in ["ftp://x", "http://minio:9000/bucket"] {
            let e = location_of(&repo(s3(bad, None, None)), None).unwrap_err();
            assert_eq!(e.reason(), "repository_config", "{bad}");
        }
        let e = location_of(&repo(s3("s3.amazonaws.com", Some("a/../b"), None)), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not contain '..'"), "{e}");
    }

    #[test]
    fn every_cloud_backend_maps_to_the_engine() {
        let bucket = |b: &str, p: Option<&str>| api::BucketBackend {
            bucket: b.into(),
            prefix: p.map(str::to_string),
        };
        let container = |c: &str| api::ContainerBackend {
            container: c.into(),
            prefix: Some("x".into()),
        };
        let gcs = object(api::Backend {
            gcs: Some(bucket("g", Some("p/q"))),
            ..Default::default()
        });
        assert_eq!(
            (gcs.kind, gcs.bucket.as_str(), gcs.prefix.as_str()),
            (ObjectStoreKind::Gcs, "g", "p/q")
        );
        let b2 = object(api::Backend {
            b2: Some(bucket("b", None)),
            ..Default::default()
        });
        assert_eq!((b2.kind, b2.prefix.as_str()), (ObjectStoreKind::B2, ""));
        let az = object(api::Backend {
            azure: Some(container("c")),
            ..Default::default()
        });
        assert_eq!((az.kind, az.bucket.as_str()), (ObjectStoreKind::Azure, "c"));
        let sw = object(api::Backend {
            swift: Some(container("s")),
            ..Default::default()
        });
        assert_eq!(sw.kind, ObjectStoreKind::Swift);
        let e = location_of(
            &repo(api::Backend {
                gcs: Some(bucket(" ", None)),
                ..Default::default()
            }),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("gcs.bucket"), "{e}");

        // a password in the REST URL is split off, never displayed
        let (loc, pw) = location_of(
            &repo(api::Backend {
                rest: Some(api::RestBackend {
                    url: "https://hoard:s3cr%40t@rest.example.com:8000/demo".into(),
                }),
                ..Default::default()
            }),
            None,
        )
        .unwrap();
        assert_eq!(pw.as_deref(), Some("s3cr@t"));
        assert_eq!(loc.display(), "rest:https://rest.example.com:8000/demo/");
        assert!(!format!("{loc:?}").contains("s3cr"));
    }

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn credentials_take_stash_and_engine_names_and_never_print_values() {
        let s = secret(&[
            ("RESTIC_PASSWORD", "pw"),
            ("AWS_ACCESS_KEY_ID", "AKIDVALUE\n"),
            ("AWS_SECRET_ACCESS_KEY", "SECRETVALUE"),
            ("GOOGLE_PROJECT_ID", "proj"),
            (
                "GOOGLE_SERVICE_ACCOUNT_JSON_KEY",
                "{\"type\":\"service_account\"}",
            ),
            ("AZURE_ACCOUNT_NAME", "acct"),
            ("AZURE_ACCOUNT_KEY", "AZKEYVALUE"),
            ("B2_ACCOUNT_ID", "b2id"),
            ("B2_ACCOUNT_KEY", "B2KEYVALUE"),
            ("REST_SERVER_USERNAME", "u"),
            ("REST_SERVER_PASSWORD", "RESTPWVALUE"),
            ("UNRELATED", "x"),
        ]);
        let c = credentials_from_secret(&s);
        assert_eq!(c.get("AWS_ACCESS_KEY_ID"), Some("AKIDVALUE"));
        assert_eq!(
            c.get("GOOGLE_SERVICE_ACCOUNT_JSON"),
            Some("{\"type\":\"service_account\"}")
        );
        assert_eq!(c.get("AZURE_ACCOUNT_KEY"), Some("AZKEYVALUE"));
        assert_eq!(c.get("B2_ACCOUNT_KEY"), Some("B2KEYVALUE"));
        assert_eq!(c.get("RESTIC_REST_USERNAME"), Some("u"));
        assert_eq!(c.get("RESTIC_REST_PASSWORD"), Some("RESTPWVALUE"));
        assert_eq!(c.get("UNRELATED"), None);
        assert_eq!(c.get("RESTIC_PASSWORD"), None, "the password is kept apart");
        let a = RepoAccess::with_location("r".into(), Location::Local("/x".into()), c, "pw".into());
        let dbg = format!("{a:?}");
        for v in [
            "AKIDVALUE",
            "SECRETVALUE",
            "AZKEYVALUE",
            "B2KEYVALUE",
            "RESTPWVALUE",
        ] {
            assert!(!dbg.contains(v), "{dbg}");
        }
        assert!(dbg.contains("AWS_ACCESS_KEY_ID"), "{dbg}");
    }

    #[test]
    fn unsupported_secrets_are_refused_before_any_request() {
        let s = secret(&[("RESTIC_PASSWORD", "pw"), ("CA_CERT_DATA", "-----BEGIN")]);
        let loc = object(s3("minio.example.com", None, None));
        assert!(
            check_supported(
                "r",
                &Location::Object(loc),
                &s,
                &credentials_from_secret(&s)
            )
            .is_ok()
        );
        let gcs = object(api::Backend {
            gcs: Some(api::BucketBackend {
                bucket: "g".into(),
                prefix: None,
            }),
            ..Default::default()
        });
        let e = check_supported(
            "r",
            &Location::Object(gcs),
            &s,
            &credentials_from_secret(&s),
        )
        .unwrap_err();
        assert_eq!(e.reason(), "repository_config");
        assert!(e.to_string().contains("CA_CERT_DATA"), "{e}");

        let sw = Location::Object(object(api::Backend {
            swift: Some(api::ContainerBackend {
                container: "c".into(),
                prefix: None,
            }),
            ..Default::default()
        }));
        let s = secret(&[("OS_AUTH_URL", "https://keystone"), ("OS_USERNAME", "u")]);
        let e = check_supported("r", &sw, &s, &credentials_from_secret(&s)).unwrap_err();
        assert!(e.to_string().contains("SWIFT_S3_ENDPOINT"), "{e}");
    }

    #[test]
    fn backend_config_errors_name_the_secret_not_its_values() {
        let mut creds = Credentials::default();
        creds.insert("AWS_ACCESS_KEY_ID", "ONLYHALFVALUE");
        let mut a = RepoAccess::with_location(
            "r".into(),
            Location::Object(object(s3("http://127.0.0.1:1", None, None))),
            creds,
            "pw".into(),
        );
        a.secret = ("hoard-system".into(), "s3-creds".into());
        let e = a.open().unwrap_err();
        assert_eq!(e.reason(), "repository_config");
        let msg = e.to_string();
        assert!(msg.contains("Secret hoard-system/s3-creds"), "{msg}");
        assert!(!msg.contains("ONLYHALFVALUE"), "{msg}");
    }
}
