//! Where a repository lives: restic's `--repo` spellings parsed into one
//! typed [`Location`], and [`open_backend`], which turns a location plus a
//! Secret-shaped [`Credentials`] map into a [`Backend`].
//!
//! Spellings (as restic 0.14 accepts them):
//! `/path`, `local:/path`; `s3:https://host[:port]/bucket[/prefix]`,
//! `s3:http://...` (plain HTTP, e.g. MinIO), `s3:host/bucket[/prefix]` (HTTPS),
//! `s3:s3.amazonaws.com/bucket[/prefix]` (AWS, region from credentials);
//! `gs:bucket:/prefix`; `azure:container:/prefix`;
//! `rest:http[s]://[user:pass@]host[:port][/path]`; `b2:bucket:prefix` and
//! `swift:container:/prefix` through the store's S3 API (needs an endpoint in
//! the credentials). `sftp:` and `rclone:` are refused with a clear error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Backend, LocalBackend};
use crate::error::{Error, Result};

/// The object-store flavours behind [`super::object::ObjectBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectStoreKind {
    /// AWS S3 and S3-compatible stores (MinIO, Ceph RGW, moto, ...).
    S3,
    Gcs,
    Azure,
    /// Backblaze B2 through its S3-compatible API.
    B2,
    /// OpenStack Swift through its S3 API (`s3api` middleware).
    Swift,
}

/// One object-store repository location: what the `Repository` CRD's
/// backend section maps onto. Credentials are kept apart ([`Credentials`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreConfig {
    pub kind: ObjectStoreKind,
    /// Bucket (S3, GCS, B2) or container (Azure, Swift).
    pub bucket: String,
    /// Path inside the bucket, without leading or trailing `/` ("" = root).
    #[serde(default)]
    pub prefix: String,
    /// `scheme://host[:port]` of an S3-compatible service; `None` for the
    /// provider's own endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl ObjectStoreConfig {
    /// restic's spelling of this location, for messages.
    pub fn display(&self) -> String {
        let p = |sep: &str| {
            if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{sep}{}", self.prefix)
            }
        };
        match self.kind {
            ObjectStoreKind::S3 => format!(
                "s3:{}/{}{}",
                self.endpoint.as_deref().unwrap_or("s3.amazonaws.com"),
                self.bucket,
                p("/")
            ),
            ObjectStoreKind::Gcs => format!("gs:{}:/{}", self.bucket, self.prefix),
            ObjectStoreKind::Azure => format!("azure:{}:/{}", self.bucket, self.prefix),
            ObjectStoreKind::B2 => format!("b2:{}:{}", self.bucket, self.prefix),
            ObjectStoreKind::Swift => format!("swift:{}:/{}", self.bucket, self.prefix),
        }
    }
}

/// A restic REST-server location. The password lives in [`Credentials`]
/// (`RESTIC_REST_PASSWORD`) once parsed, so `Debug` never shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestConfig {
    /// `http[s]://host[:port]/path/` without user info, ending in `/`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// A parsed `--repo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Object(ObjectStoreConfig),
    /// The password from the URL, if any, is returned next to it by
    /// [`Location::parse_with_secret`].
    Rest(RestConfig),
}

/// A `--repo` that is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid repository location {location:?}: {reason}")]
pub struct InvalidLocation {
    pub location: String,
    pub reason: String,
}

impl FromStr for Location {
    type Err = InvalidLocation;

    /// Parses and drops any password embedded in a `rest:` URL; use
    /// [`Location::parse_with_secret`] to keep it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Location::parse_with_secret(s).map(|(l, _)| l)
    }
}

impl Location {
    /// Parses `s`; a password in a `rest:` URL is returned separately so it
    /// can go into [`Credentials`] rather than into logs.
    pub fn parse_with_secret(s: &str) -> Result<(Location, Option<String>), InvalidLocation> {
        let bad = |reason: &str| InvalidLocation {
            location: redact_url_password(s),
            reason: reason.into(),
        };
        let (scheme, rest) = match s.split_once(':') {
            Some((sch, rest))
                if !sch.is_empty()
                    && sch
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
            {
                (sch, rest)
            }
            _ => ("", s),
        };
        let obj = |kind, bucket: &str, prefix: &str| -> Result<_, InvalidLocation> {
            if bucket.is_empty() {
                return Err(bad("the bucket (or container) name is missing"));
            }
            Ok((
                Location::Object(ObjectStoreConfig {
                    kind,
                    bucket: bucket.to_string(),
                    prefix: clean_prefix(prefix),
                    endpoint: None,
                    region: None,
                }),
                None,
            ))
        };
        match scheme {
            "" => {
                if s.is_empty() {
                    return Err(bad("empty location"));
                }
                Ok((Location::Local(PathBuf::from(s)), None))
            }
            "local" => {
                if rest.is_empty() {
                    return Err(bad("the path is missing after local:"));
                }
                Ok((Location::Local(PathBuf::from(rest)), None))
            }
            "s3" => {
                let (endpoint, path) = if let Some(u) = rest
                    .strip_prefix("http://")
                    .map(|r| ("http", r))
                    .or_else(|| rest.strip_prefix("https://").map(|r| ("https", r)))
                {
                    let (host, path) = u.1.split_once('/').unwrap_or((u.1, ""));
                    (format!("{}://{host}", u.0), path)
                } else {
                    let r = rest.strip_prefix("//").unwrap_or(rest);
                    let (host, path) = r.split_once('/').unwrap_or((r, ""));
                    (format!("https://{host}"), path)
                };
                if endpoint.ends_with("://") {
                    return Err(bad(
                        "the S3 endpoint host is missing (s3:https://host/bucket)",
                    ));
                }
                let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
                let (mut loc, _) = obj(ObjectStoreKind::S3, bucket, prefix)?;
                if let Location::Object(c) = &mut loc {
                    // AWS itself: let the SDK pick the regional endpoint.
                    let aws = endpoint == "https://s3.amazonaws.com";
                    c.endpoint = (!aws).then_some(endpoint);
                }
                Ok((loc, None))
            }
            "gs" | "azure" | "swift" | "b2" => {
                let (bucket, prefix) = rest.split_once(':').unwrap_or((rest, ""));
                let kind = match scheme {
                    "gs" => ObjectStoreKind::Gcs,
                    "azure" => ObjectStoreKind::Azure,
                    "swift" => ObjectStoreKind::Swift,
                    _ => ObjectStoreKind::B2,
                };
                obj(kind, bucket, prefix)
            }
            "rest" => {
                let url = reqwest::Url::parse(rest)
                    .map_err(|e| bad(&format!("not a URL after rest: ({e})")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(bad(
                        "expected rest:http://host:port/path or rest:https://...",
                    ));
                }
                let username = (!url.username().is_empty()).then(|| percent_decode(url.username()));
                let password = url.password().map(percent_decode);
                let mut clean = url.clone();
                let _ = clean.set_username("");
                let _ = clean.set_password(None);
                let mut u = clean.to_string();
                if !u.ends_with('/') {
                    u.push('/');
                }
                Ok((Location::Rest(RestConfig { url: u, username }), password))
            }
            "sftp" | "rclone" => Err(bad(
                "sftp and rclone repositories are not supported by hoard; use s3:, gs:, azure:, rest: or a local path",
            )),
            // A Windows-style or odd path such as "c:..." is not ours to guess.
            other => Err(bad(&format!(
                "unknown backend type {other:?}; expected a path, local:, s3:, gs:, azure:, b2:, swift: or rest:"
            ))),
        }
    }

    /// restic's spelling, without secrets.
    pub fn display(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::Object(c) => c.display(),
            Location::Rest(r) => format!("rest:{}", r.url),
        }
    }
}

fn clean_prefix(p: &str) -> String {
    p.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `rest:http://user:secret@host/` → `rest:http://user:***@host/`.
fn redact_url_password(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let after = &s[scheme_end + 3..];
        let auth_end = after.find('/').unwrap_or(after.len());
        if let Some(at) = after[..auth_end].rfind('@')
            && let Some(colon) = after[..at].find(':')
        {
            return format!(
                "{}{}:***{}",
                &s[..scheme_end + 3],
                &after[..colon],
                &after[at..]
            );
        }
    }
    s.to_string()
}

/// Credentials as a Kubernetes Secret holds them: names to values, e.g.
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_DEFAULT_REGION`, `GOOGLE_SERVICE_ACCOUNT_JSON` (the key file's
/// content) or `GOOGLE_APPLICATION_CREDENTIALS` (its path),
/// `AZURE_ACCOUNT_NAME`, `AZURE_ACCOUNT_KEY`, `B2_ACCOUNT_ID`,
/// `B2_ACCOUNT_KEY`, `B2_S3_ENDPOINT`, `SWIFT_S3_ENDPOINT`,
/// `RESTIC_REST_USERNAME`, `RESTIC_REST_PASSWORD`.
/// `Debug` prints the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials(BTreeMap<String, String>);

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

/// Every name [`Credentials::from_env`] picks up.
pub const CREDENTIAL_NAMES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "GOOGLE_SERVICE_ACCOUNT_JSON",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_ACCOUNT_NAME",
    "AZURE_ACCOUNT_KEY",
    "AZURE_ACCOUNT_SAS",
    "B2_ACCOUNT_ID",
    "B2_ACCOUNT_KEY",
    "B2_S3_ENDPOINT",
    "SWIFT_S3_ENDPOINT",
    "RESTIC_REST_USERNAME",
    "RESTIC_REST_PASSWORD",
];

impl Credentials {
    pub fn new(map: BTreeMap<String, String>) -> Self {
        Credentials(map)
    }

    /// The [`CREDENTIAL_NAMES`] set in this process's environment (the CLI's
    /// source, matching restic's environment variables).
    pub fn from_env() -> Self {
        Credentials(
            CREDENTIAL_NAMES
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }
}

/// Opens the backend for `location`. Cloud clients are built here (no
/// request is made yet); errors name what is missing.
pub fn open_backend(location: &Location, creds: &Credentials) -> Result<Arc<dyn Backend>> {
    match location {
        Location::Local(p) => Ok(Arc::new(LocalBackend::new(p))),
        Location::Object(c) => Ok(Arc::new(super::object::ObjectBackend::new(c, creds)?)),
        Location::Rest(r) => Ok(Arc::new(super::rest::RestBackend::new(r, creds)?)),
    }
}

/// Parses `repo` (restic's spelling) and opens it; a password in a `rest:`
/// URL is used unless the credentials already carry one.
pub fn open_repo_string(repo: &str, creds: &Credentials) -> Result<Arc<dyn Backend>> {
    let (loc, secret) = Location::parse_with_secret(repo).map_err(|e| Error::Backend {
        file: "--repo".into(),
        message: e.to_string(),
    })?;
    let mut creds = creds.clone();
    if let Some(pw) = secret
        && creds.get("RESTIC_REST_PASSWORD").is_none()
    {
        creds.insert("RESTIC_REST_PASSWORD", pw);
    }
    open_backend(&loc, &creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> ObjectStoreConfig {
        match s.parse::<Location>().unwrap() {
            Location::Object(c) => c,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn local_paths() {
        assert_eq!(
            "/srv/repo".parse::<Location>().unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            "local:/srv/repo".parse::<Location>().unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            "relative/repo".parse::<Location>().unwrap(),
            Location::Local("relative/repo".into())
        );
        assert!("".parse::<Location>().is_err());
    }

    #[test]
    fn s3_spellings() {
        let c = obj("s3:https://minio.example:9000/bucket/some/prefix/");
        assert_eq!(c.kind, ObjectStoreKind::S3);
        assert_eq!(c.endpoint.as_deref(), Some("https://minio.example:9000"));
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("bucket", "some/prefix")
        );
        let c = obj("s3:http://127.0.0.1:5000/b");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("b", ""));
        let c = obj("s3:s3.amazonaws.com/bucket/restic");
        assert_eq!(c.endpoint, None, "AWS uses its own regional endpoint");
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bucket", "restic"));
        let c = obj("s3:rgw.local/bkt");
        assert_eq!(c.endpoint.as_deref(), Some("https://rgw.local"));
        assert_eq!(c.display(), "s3:https://rgw.local/bkt");
        assert!("s3:https://host".parse::<Location>().is_err(), "no bucket");
        assert!("s3:https:///b".parse::<Location>().is_err(), "no host");
    }

    #[test]
    fn gs_azure_b2_swift() {
        let c = obj("gs:my-bucket:/backups/x");
        assert_eq!(
            (c.kind, c.bucket.as_str(), c.prefix.as_str()),
            (ObjectStoreKind::Gcs, "my-bucket", "backups/x")
        );
        assert_eq!(c.display(), "gs:my-bucket:/backups/x");
        let c = obj("azure:container:/");
        assert_eq!(
            (c.kind, c.bucket.as_str(), c.prefix.as_str()),
            (ObjectStoreKind::Azure, "container", "")
        );
        let c = obj("b2:bucket:path/to");
        assert_eq!(
            (c.kind, c.prefix.as_str()),
            (ObjectStoreKind::B2, "path/to")
        );
        let c = obj("swift:cont:/p");
        assert_eq!(c.kind, ObjectStoreKind::Swift);
        assert!("gs::/x".parse::<Location>().is_err());
    }

    #[test]
    fn rest_keeps_the_password_out_of_the_location() {
        let (loc, pw) =
            Location::parse_with_secret("rest:http://alice:s%40cret@127.0.0.1:8000/repo").unwrap();
        assert_eq!(pw.as_deref(), Some("s@cret"));
        let Location::Rest(r) = &loc else { panic!() };
        assert_eq!(r.url, "http://127.0.0.1:8000/repo/");
        assert_eq!(r.username.as_deref(), Some("alice"));
        assert!(!format!("{loc:?}").contains("cret"));
        assert_eq!(loc.display(), "rest:http://127.0.0.1:8000/repo/");
        let Location::Rest(r) = "rest:https://host/".parse::<Location>().unwrap() else {
            panic!()
        };
        assert_eq!((r.url.as_str(), r.username), ("https://host/", None));
        let e = "rest:ftp://alice:topsecret@host/"
            .parse::<Location>()
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("topsecret") && e.contains("alice:***@host"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_and_unknown_schemes_are_named() {
        let e = "sftp:user@host:/srv"
            .parse::<Location>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
        let e = "foo:bar".parse::<Location>().unwrap_err().to_string();
        assert!(e.contains("unknown backend type \"foo\""), "{e}");
    }

    #[test]
    fn credentials_debug_hides_values() {
        let mut c = Credentials::default();
        c.insert("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI");
        let d = format!("{c:?}");
        assert!(
            d.contains("AWS_SECRET_ACCESS_KEY") && !d.contains("wJalr"),
            "{d}"
        );
        c.insert("AWS_REGION", "");
        assert_eq!(c.get("AWS_REGION"), None, "empty values count as unset");
    }

    #[test]
    fn config_serde_shape() {
        let c = obj("s3:http://127.0.0.1:9000/b/p");
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"kind":"s3","bucket":"b","prefix":"p","endpoint":"http://127.0.0.1:9000"})
        );
    }
}
