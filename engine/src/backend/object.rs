//! S3 (and S3-compatible: MinIO, Ceph RGW, B2, Swift), Google Cloud Storage
//! and Azure Blob back ends through the `object_store` crate, with restic's
//! object layout under a prefix: `config`, `keys/<id>`, `data/<xx>/<id>`,
//! `index/<id>`, `snapshots/<id>`, `locks/<id>`.
//!
//! Threading: the [`Backend`] trait is synchronous and the engine calls it
//! from its own worker threads. Each `ObjectBackend` owns a small tokio
//! runtime (2 worker threads); a call spawns its request on that runtime and
//! waits on a channel. This works from any plain thread. **Do not call it
//! from an async task**: the waiting blocks that runtime thread — async
//! callers go through `tokio::task::spawn_blocking`, as for all engine work.
//!
//! Retries: `object_store`'s retry loop with [`RetryPolicy`] (5xx, 408, 429,
//! connection errors and timeouts only; 4xx fail at once), exponential
//! backoff with jitter.
//!
//! Upload verification: S3-style stores return the object's MD5 as its ETag
//! for a single-part PUT; it is compared with the MD5 of what was sent. A
//! store whose ETags are not MD5s (SSE-KMS buckets, Azure) is detected: on
//! an ETag mismatch the object is read back and its SHA-256 compared with
//! the data sent; if that matches, ETags are not trusted for this backend
//! from then on and uploads are verified by size (a HEAD). A real mismatch
//! deletes the object and fails the write.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, PutPayload};

use super::location::{Credentials, ObjectStoreConfig, ObjectStoreKind};
use super::retry::RetryPolicy;
use super::{Backend, FileType, check_name};
use crate::error::{Error, Result};
use crate::id::Id;

/// A repository in a bucket.
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    /// `prefix/` or "" for the bucket root.
    prefix: String,
    location: String,
    rt: BlockingRuntime,
    /// Cleared once the store proved that its ETags are not content MD5s.
    etag_is_md5: AtomicBool,
}

impl std::fmt::Debug for ObjectBackend {
    /// Location only: the client holds credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackend")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// A private tokio runtime that synchronous callers hand futures to (see
/// the module docs for the one constraint). Shared with the REST back end.
pub(crate) struct BlockingRuntime {
    /// `Some` until drop (taken to shut down without blocking).
    rt: Option<tokio::runtime::Runtime>,
}

impl BlockingRuntime {
    pub(crate) fn new(name: &str) -> Result<BlockingRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the network runtime", "", e))?;
        Ok(BlockingRuntime { rt: Some(rt) })
    }

    /// Runs `fut` on the runtime and waits for it; `None` if the task died.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.as_ref()?.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        // `Runtime::drop` blocks, and panics inside async contexts.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn config_err(location: &str, what: &str) -> Error {
    Error::Backend {
        file: location.to_string(),
        message: what.to_string(),
    }
}

fn client_options(endpoint: Option<&str>) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")))
        .with_connect_timeout(Duration::from_secs(10))
        // A 16 MiB pack on a slow uplink; per request, retried on timeout.
        .with_timeout(Duration::from_secs(300))
}

impl ObjectBackend {
    /// Builds the client for `cfg` with `creds` (see [`Credentials`] for the
    /// names read per kind). No request is made yet.
    pub fn new(cfg: &ObjectStoreConfig, creds: &Credentials) -> Result<ObjectBackend> {
        Self::with_retry(cfg, creds, RetryPolicy::default())
    }

    pub fn with_retry(
        cfg: &ObjectStoreConfig,
        creds: &Credentials,
        retry: RetryPolicy,
    ) -> Result<ObjectBackend> {
        let location = cfg.display();
        let store: Arc<dyn ObjectStore> = match cfg.kind {
            ObjectStoreKind::S3 | ObjectStoreKind::B2 | ObjectStoreKind::Swift => {
                Arc::new(build_s3(cfg, creds, retry, &location)?)
            }
            ObjectStoreKind::Gcs => {
                use object_store::gcp::GoogleCloudStorageBuilder;
                if cfg.endpoint.is_some() {
                    return Err(config_err(
                        &location,
                        "a custom endpoint is not supported for gs: repositories",
                    ));
                }
                let mut b = GoogleCloudStorageBuilder::new()
                    .with_bucket_name(&cfg.bucket)
                    .with_retry(retry.object_store())
                    .with_client_options(client_options(None));
                if let Some(json) = creds.get("GOOGLE_SERVICE_ACCOUNT_JSON") {
                    b = b.with_service_account_key(json);
                } else if let Some(path) = creds.get("GOOGLE_APPLICATION_CREDENTIALS") {
                    b = b.with_application_credentials(path);
                }
                Arc::new(b.build().map_err(|e| {
                    config_err(&location, &format!("configuring the GCS client: {e}"))
                })?)
            }
            ObjectStoreKind::Azure => {
                use object_store::azure::MicrosoftAzureBuilder;
                let account = creds.get("AZURE_ACCOUNT_NAME").ok_or_else(|| {
                    config_err(
                        &location,
                        "AZURE_ACCOUNT_NAME is not set in the repository credentials",
                    )
                })?;
                let mut b = MicrosoftAzureBuilder::new()
                    .with_account(account)
                    .with_container_name(&cfg.bucket)
                    .with_retry(retry.object_store())
                    .with_client_options(client_options(cfg.endpoint.as_deref()));
                if let Some(ep) = &cfg.endpoint {
                    b = b
                        .with_endpoint(ep.clone())
                        .with_allow_http(ep.starts_with("http://"));
                }
                if let Some(key) = creds.get("AZURE_ACCOUNT_KEY") {
                    b = b.with_access_key(key);
                } else if let Some(sas) = creds.get("AZURE_ACCOUNT_SAS") {
                    let pairs = sas
                        .trim_start_matches('?')
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<Vec<_>>();
                    b = b.with_sas_authorization(pairs);
                }
                Arc::new(b.build().map_err(|e| {
                    config_err(&location, &format!("configuring the Azure client: {e}"))
                })?)
            }
        };
        Self::from_store(store, &cfg.prefix, location)
    }

    /// Wraps an existing store (tests use `object_store::memory::InMemory`).
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        location: String,
    ) -> Result<ObjectBackend> {
        let rt = BlockingRuntime::new("hoard-object-store")?;
        let prefix = prefix.trim_matches('/');
        Ok(ObjectBackend {
            store,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            location,
            rt,
            etag_is_md5: AtomicBool::new(true),
        })
    }

    /// Runs `fut` on the backend's runtime and waits for it (see the module
    /// docs: never from an async task).
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
        self.rt
            .run(fut)
            .ok_or_else(|| self.err("", "the request task ended without an answer (panicked)"))
    }

    fn path(&self, t: FileType, name: &str) -> Path {
        Path::from(format!("{}{}", self.prefix, t.rel_path(name)))
    }

    fn err(&self, file: &str, message: impl Into<String>) -> Error {
        Error::Backend {
            file: if file.is_empty() {
                self.location.clone()
            } else {
                format!("{}: {file}", self.location)
            },
            message: message.into(),
        }
    }

    fn map_err(&self, t: FileType, name: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } if t == FileType::Config => Error::NoRepository {
                location: self.location.clone(),
            },
            E::NotFound { .. } => Error::NotFound {
                file: t.rel_path(name),
            },
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => self.err(
                &t.rel_path(name),
                format!(
                    "access denied ({e}); check the repository credentials and the bucket's access policy"
                ),
            ),
            e => self.err(&t.rel_path(name), e.to_string()),
        }
    }

    fn head(&self, t: FileType, name: &str) -> Result<Option<object_store::ObjectMeta>> {
        let (store, path) = (self.store.clone(), self.path(t, name));
        match self.run(async move { store.head(&path).await })? {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.map_err(t, name, e)),
        }
    }

    /// Whether uploads are still verified by ETag = MD5 (false once the
    /// store proved its ETags are something else; then by size).
    pub fn verifies_by_etag(&self) -> bool {
        self.etag_is_md5.load(Ordering::Relaxed)
    }

    /// Checks a finished upload (see the module docs).
    fn verify_upload(
        &self,
        t: FileType,
        name: &str,
        data: &[u8],
        etag: Option<String>,
    ) -> Result<()> {
        let etag = etag
            .map(|e| e.trim_matches('"').to_ascii_lowercase())
            .filter(|e| e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit()));
        if let Some(etag) = etag.filter(|_| self.etag_is_md5.load(Ordering::Relaxed)) {
            if etag == hex::encode(Md5::digest(data)) {
                return Ok(());
            }
            // Not the MD5 we sent: a corrupted upload, or a store whose
            // ETags are something else. The content decides.
            let back = self.read_full(t, name)?;
            if Id::hash(&back) == Id::hash(data) {
                tracing::info!(location = %self.location, "object ETags are not MD5 here; verifying uploads by size");
                self.etag_is_md5.store(false, Ordering::Relaxed);
                return Ok(());
            }
            return self.reject_upload(t, name, "content read back differs from what was sent");
        }
        match self.head(t, name)? {
            Some(m) if m.size == data.len() as u64 => Ok(()),
            Some(m) => self.reject_upload(
                t,
                name,
                &format!("stored size {} != {} bytes sent", m.size, data.len()),
            ),
            None => Err(self.err(
                &t.rel_path(name),
                "upload acknowledged but the object is missing",
            )),
        }
    }

    fn reject_upload<T>(&self, t: FileType, name: &str, why: &str) -> Result<T> {
        let _ = self.remove(t, name);
        Err(self.err(
            &t.rel_path(name),
            format!(
                "upload verification failed: {why}; the object was removed, retry the operation"
            ),
        ))
    }
}

fn build_s3(
    cfg: &ObjectStoreConfig,
    creds: &Credentials,
    retry: RetryPolicy,
    location: &str,
) -> Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;
    let (key_id, secret, endpoint) = match cfg.kind {
        ObjectStoreKind::B2 => {
            let ep = cfg
                .endpoint
                .clone()
                .or_else(|| creds.get("B2_S3_ENDPOINT").map(String::from))
                .ok_or_else(|| {
                    config_err(
                        location,
                        "b2: repositories use B2's S3-compatible API: set B2_S3_ENDPOINT (e.g. https://s3.us-west-004.backblazeb2.com, shown on the bucket's page) in the credentials",
                    )
                })?;
            (
                creds
                    .get("B2_ACCOUNT_ID")
                    .or(creds.get("AWS_ACCESS_KEY_ID")),
                creds
                    .get("B2_ACCOUNT_KEY")
                    .or(creds.get("AWS_SECRET_ACCESS_KEY")),
                Some(ep),
            )
        }
        ObjectStoreKind::Swift => {
            let ep = cfg
                .endpoint
                .clone()
                .or_else(|| creds.get("SWIFT_S3_ENDPOINT").map(String::from))
                .ok_or_else(|| {
                    config_err(
                        location,
                        "swift: repositories use Swift's S3 API (s3api): set SWIFT_S3_ENDPOINT and EC2-style AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the credentials",
                    )
                })?;
            (
                creds.get("AWS_ACCESS_KEY_ID"),
                creds.get("AWS_SECRET_ACCESS_KEY"),
                Some(ep),
            )
        }
        _ => (
            creds.get("AWS_ACCESS_KEY_ID"),
            creds.get("AWS_SECRET_ACCESS_KEY"),
            cfg.endpoint.clone(),
        ),
    };
    // B2 endpoints name their region: s3.<region>.backblazeb2.com.
    let b2_region = endpoint.as_deref().and_then(|e| {
        let host = e.split("://").nth(1)?;
        host.strip_prefix("s3.")?
            .strip_suffix(".backblazeb2.com")
            .map(String::from)
    });
    let region = cfg
        .region
        .clone()
        .or_else(|| creds.get("AWS_DEFAULT_REGION").map(String::from))
        .or_else(|| creds.get("AWS_REGION").map(String::from))
        .or(b2_region)
        .unwrap_or_else(|| "us-east-1".into());
    // Without static keys, pick up the pod's identity (IRSA web identity,
    // ECS/IMDS) from the environment the way the AWS SDKs do.
    let mut b = if key_id.is_some() {
        AmazonS3Builder::new()
    } else {
        AmazonS3Builder::from_env()
    };
    b = b
        .with_bucket_name(&cfg.bucket)
        .with_region(region)
        .with_retry(retry.object_store())
        .with_client_options(client_options(endpoint.as_deref()));
    if let Some(ep) = &endpoint {
        // Path-style requests, as restic (minio-go) uses for custom endpoints.
        b = b
            .with_endpoint(ep)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(ep.starts_with("http://"));
    }
    match (key_id, secret) {
        (Some(k), Some(s)) => {
            b = b.with_access_key_id(k).with_secret_access_key(s);
            if let Some(t) = creds.get("AWS_SESSION_TOKEN") {
                b = b.with_token(t);
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(config_err(
                location,
                "only one of the access key id and secret key is set in the repository credentials; set both",
            ));
        }
        (None, None) => {}
    }
    b.build()
        .map_err(|e| config_err(location, &format!("configuring the S3 client: {e}")))
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    /// Object stores have no directories: only refuse an existing repository.
    fn create(&self) -> Result<()> {
        if self.head(FileType::Config, "config")?.is_some() {
            return Err(Error::RepositoryExists {
                location: self.location.clone(),
            });
        }
        Ok(())
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        check_name(t, name)?;
        // Names are content hashes (config is written once, by init): an
        // existing object is either this content or a conflict.
        if self.head(t, name)?.is_some() {
            return if self.read_full(t, name)? == data {
                Ok(())
            } else {
                Err(Error::Conflict {
                    file: t.rel_path(name),
                })
            };
        }
        let (store, path) = (self.store.clone(), self.path(t, name));
        let payload = PutPayload::from(data.to_vec());
        let res = self
            .run(async move { store.put(&path, payload).await })?
            .map_err(|e| match e {
                // The object cannot be missing on a PUT: the bucket is.
                object_store::Error::NotFound { .. } => self.err(
                    &t.rel_path(name),
                    format!(
                        "the bucket or container does not exist ({e}); create it first (hoard does not create buckets)"
                    ),
                ),
                e => self.map_err(t, name, e),
            })?;
        self.verify_upload(t, name, data, res.e_tag)
    }

    fn read_full(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        check_name(t, name)?;
        let (store, path) = (self.store.clone(), self.path(t, name));
        let got = self.run(async move {
            match store.get(&path).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
        })?;
        got.map(|b| b.to_vec())
            .map_err(|e| self.map_err(t, name, e))
    }

    fn read_range(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        check_name(t, name)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| self.err(&t.rel_path(name), "range overflows"))?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let (store, path) = (self.store.clone(), self.path(t, name));
        let got = self
            .run(async move { store.get_range(&path, offset..end).await })?
            .map_err(|e| self.map_err(t, name, e))?;
        if got.len() as u64 != len {
            return Err(self.err(
                &t.rel_path(name),
                format!(
                    "range {offset}+{len} beyond end of file (got {} bytes)",
                    got.len()
                ),
            ));
        }
        Ok(got.to_vec())
    }

    fn list(&self, t: FileType) -> Result<Vec<(String, u64)>> {
        if t == FileType::Config {
            return Ok(self
                .head(t, "config")?
                .map(|m| vec![("config".to_string(), m.size)])
                .unwrap_or_default());
        }
        let dir = Path::from(format!("{}{}", self.prefix, t.dir()));
        let store = self.store.clone();
        let metas = self
            .run(async move { store.list(Some(&dir)).try_collect::<Vec<_>>().await })?
            .map_err(|e| self.err(t.dir(), format!("listing: {e}")))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                check_name(t, &name).ok()?;
                Some((name, m.size))
            })
            .collect())
    }

    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        check_name(t, name)?;
        let (store, path) = (self.store.clone(), self.path(t, name));
        self.run(async move { store.delete(&path).await })?
            .map_err(|e| self.map_err(t, name, e))
    }

    fn exists(&self, t: FileType, name: &str) -> Result<bool> {
        check_name(t, name)?;
        Ok(self.head(t, name)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn backend(prefix: &str) -> (Arc<InMemory>, ObjectBackend) {
        let mem = Arc::new(InMemory::new());
        let be = ObjectBackend::from_store(mem.clone(), prefix, "memory-object:".into()).unwrap();
        (mem, be)
    }

    #[test]
    fn restic_layout_under_the_prefix() {
        let (mem, be) = backend("/some/prefix/");
        be.create().unwrap();
        let name = "ab".repeat(32);
        be.write(FileType::Pack, &name, b"pack bytes").unwrap();
        be.write(FileType::Config, "config", b"cfg").unwrap();
        be.write(FileType::Snapshot, &"01".repeat(32), b"snap")
            .unwrap();
        let keys: Vec<String> = be
            .run({
                let mem = mem.clone();
                async move { mem.list(None).try_collect::<Vec<_>>().await }
            })
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            [
                "some/prefix/config".to_string(),
                format!("some/prefix/data/ab/{name}"),
                format!("some/prefix/snapshots/{}", "01".repeat(32)),
            ]
        );
        assert!(matches!(be.create(), Err(Error::RepositoryExists { .. })));
        assert_eq!(be.list(FileType::Pack).unwrap(), vec![(name.clone(), 10)]);
        assert_eq!(
            be.list(FileType::Config).unwrap(),
            vec![("config".into(), 3)]
        );
        assert!(be.list(FileType::Index).unwrap().is_empty());
    }

    #[test]
    fn write_read_range_conflict_remove() {
        let (_, be) = backend("");
        let name = "cd".repeat(32);
        be.write(FileType::Pack, &name, b"hello world").unwrap();
        be.write(FileType::Pack, &name, b"hello world").unwrap();
        assert!(matches!(
            be.write(FileType::Pack, &name, b"other"),
            Err(Error::Conflict { .. })
        ));
        assert_eq!(
            be.read_range(FileType::Pack, &name, 6, 5).unwrap(),
            b"world"
        );
        assert!(be.read_range(FileType::Pack, &name, 6, 50).is_err());
        assert_eq!(be.read_full(FileType::Pack, &name).unwrap(), b"hello world");
        assert!(be.exists(FileType::Pack, &name).unwrap());
        be.remove(FileType::Pack, &name).unwrap();
        assert!(!be.exists(FileType::Pack, &name).unwrap());
        assert!(matches!(
            be.read_full(FileType::Pack, &name),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            be.read_full(FileType::Config, "config"),
            Err(Error::NoRepository { .. })
        ));
        assert!(be.write(FileType::Key, "../escape", b"x").is_err());
    }

    #[test]
    fn a_repository_lives_in_an_object_store() {
        let (_, be) = backend("repo");
        let be: Arc<dyn Backend> = Arc::new(be);
        let repo = crate::Repository::init(
            be.clone(),
            "pw",
            crate::InitOptions {
                kdf: crate::KdfParams::insecure_fast(),
                ..Default::default()
            },
        )
        .unwrap();
        let s = crate::Snapshot::new(Id::hash(b"t"), vec!["/data".into()], "h");
        let id = repo.save_snapshot(&s).unwrap();
        drop(repo);
        let repo = crate::Repository::open(be, "pw").unwrap();
        assert_eq!(repo.snapshots().unwrap()[0].0, id);
    }

    #[test]
    fn debug_never_shows_credentials() {
        let mut creds = Credentials::default();
        creds.insert("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE");
        creds.insert("AWS_SECRET_ACCESS_KEY", "very-secret-value");
        let cfg: ObjectStoreConfig = match "s3:http://127.0.0.1:1/b/p".parse().unwrap() {
            super::super::location::Location::Object(c) => c,
            _ => unreachable!(),
        };
        let be = ObjectBackend::new(&cfg, &creds).unwrap();
        let d = format!("{be:?}");
        assert!(!d.contains("very-secret") && !d.contains("AKIA"), "{d}");
        assert!(d.contains("s3:http://127.0.0.1:1/b/p"), "{d}");
    }

    #[test]
    fn b2_without_endpoint_says_what_to_set() {
        let cfg: ObjectStoreConfig = match "b2:bucket:path".parse().unwrap() {
            super::super::location::Location::Object(c) => c,
            _ => unreachable!(),
        };
        let e = ObjectBackend::new(&cfg, &Credentials::default()).unwrap_err();
        assert!(e.to_string().contains("B2_S3_ENDPOINT"), "{e}");
    }

    #[test]
    fn usable_from_inside_an_async_context_via_spawn_blocking() {
        let (_, be) = backend("");
        let be = Arc::new(be);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let name = "ef".repeat(32);
        let got = rt.block_on({
            let be = be.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    be.write(FileType::Index, &name, b"idx").unwrap();
                    be.read_full(FileType::Index, &name).unwrap()
                })
                .await
                .unwrap()
            }
        });
        assert_eq!(got, b"idx");
        drop(rt);
        // Dropping the backend inside a runtime must not panic either.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move { drop(be) });
    }

    /// A store that damages or re-labels uploads, to drive verification.
    #[derive(Debug)]
    struct Tamper {
        inner: InMemory,
        mode: Mode,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Mode {
        /// Stores what was sent; ETag = its MD5 (like S3).
        Honest,
        /// Stores what was sent; ETag is 32 hex digits but not the MD5
        /// (like an SSE-KMS bucket).
        KmsEtag,
        /// Flips a byte; ETag = MD5 of what it stored.
        FlipByte,
        /// Drops the last byte; opaque ETag (like Azure).
        Truncate,
    }

    impl std::fmt::Display for Tamper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Tamper({:?})", self.mode)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Tamper {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            let mut data: Vec<u8> = payload.into_iter().flat_map(|b| b.to_vec()).collect();
            match self.mode {
                Mode::FlipByte => data[0] ^= 1,
                Mode::Truncate => {
                    data.pop();
                }
                Mode::Honest | Mode::KmsEtag => {}
            }
            let md5 = hex::encode(Md5::digest(&data));
            let mut r = self.inner.put_opts(location, data.into(), opts).await?;
            r.e_tag = match self.mode {
                Mode::Honest | Mode::FlipByte => Some(format!("\"{md5}\"")),
                Mode::KmsEtag => Some("\"0123456789abcdef0123456789abcdef\"".into()),
                Mode::Truncate => Some("\"0x8DCF00DB1E55\"".into()),
            };
            Ok(r)
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &Path) -> object_store::Result<()> {
            self.inner.delete(location).await
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    fn tampered(mode: Mode) -> ObjectBackend {
        let store = Arc::new(Tamper {
            inner: InMemory::new(),
            mode,
        });
        ObjectBackend::from_store(store, "", format!("tamper-{mode:?}")).unwrap()
    }

    #[test]
    fn uploads_are_verified() {
        let name = "ab".repeat(32);
        let data = b"sixteen bytes!!!".to_vec();

        let be = tampered(Mode::Honest);
        be.write(FileType::Pack, &name, &data).unwrap();
        assert!(be.verifies_by_etag(), "MD5 ETags are trusted");

        // Non-MD5 ETags: the read-back proves the upload good, and from
        // then on uploads are checked by size.
        let be = tampered(Mode::KmsEtag);
        be.write(FileType::Pack, &name, &data).unwrap();
        assert!(!be.verifies_by_etag());
        assert_eq!(be.read_full(FileType::Pack, &name).unwrap(), data);

        for mode in [Mode::FlipByte, Mode::Truncate] {
            let be = tampered(mode);
            let e = be.write(FileType::Pack, &name, &data).unwrap_err();
            assert!(
                e.to_string().contains("upload verification failed"),
                "{mode:?}: {e}"
            );
            assert!(
                !be.exists(FileType::Pack, &name).unwrap(),
                "{mode:?}: the damaged object is removed"
            );
        }
    }

    #[test]
    fn azure_and_gcs_clients_build_from_credentials() {
        let cfg = |s: &str| match s.parse().unwrap() {
            super::super::location::Location::Object(c) => c,
            _ => unreachable!(),
        };
        let azure = cfg("azure:backups:/cluster-1");
        let e = ObjectBackend::new(&azure, &Credentials::default()).unwrap_err();
        assert!(e.to_string().contains("AZURE_ACCOUNT_NAME"), "{e}");
        let mut creds = Credentials::default();
        creds.insert("AZURE_ACCOUNT_NAME", "acct");
        creds.insert("AZURE_ACCOUNT_KEY", "c2VjcmV0LWtleS1ieXRlcw==");
        let be = ObjectBackend::new(&azure, &creds).unwrap();
        assert_eq!(be.location(), "azure:backups:/cluster-1");
        assert!(!format!("{be:?}").contains("c2VjcmV0"));
        let gcs = cfg("gs:bucket:/p");
        let be = ObjectBackend::new(&gcs, &Credentials::default()).unwrap();
        assert_eq!(be.location(), "gs:bucket:/p");
        let mut with_ep = gcs.clone();
        with_ep.endpoint = Some("http://127.0.0.1:1".into());
        assert!(ObjectBackend::new(&with_ep, &Credentials::default()).is_err());
    }
}
