//! The restic REST-server protocol (v2), as `rest:http[s]://host/path/`:
//! `POST /?create=true` creates a repository; `GET|HEAD|POST|DELETE
//! /{type}/{name}` and `/config` read, probe, store and remove files (the
//! server files packs under `data/xx/` itself); `GET /{type}/` with
//! `Accept: application/vnd.x.restic.rest.v2` lists names with sizes; reads
//! of part of a file use a `Range` header.
//!
//! Client: `reqwest`, the HTTP stack `object_store` already builds (rustls
//! with native roots), driven by the same private runtime pattern as the
//! object-store back end — synchronous callers only, never from an async
//! task (use `spawn_blocking`). Transient failures (5xx, 408, 429,
//! connection errors, timeouts) are retried with [`RetryPolicy`]; 4xx are
//! not. Uploads are verified by size (a HEAD after the POST); rest-server
//! itself also checks each file's SHA-256 against its name.

use std::time::Duration;

use reqwest::{Client, Method, StatusCode};

use super::location::{Credentials, RestConfig};
use super::object::BlockingRuntime;
use super::retry::{Attempt, RetryPolicy, is_transient_status, retry};
use super::{Backend, FileType, check_name};
use crate::error::{Error, Result};

const V2: &str = "application/vnd.x.restic.rest.v2";

/// A repository behind a restic REST server.
pub struct RestBackend {
    client: Client,
    /// Ends in `/`.
    url: reqwest::Url,
    auth: Option<(String, String)>,
    retry: RetryPolicy,
    rt: BlockingRuntime,
}

impl std::fmt::Debug for RestBackend {
    /// URL without credentials only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestBackend")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// An HTTP answer reduced to what the callers need.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    content_length: Option<u64>,
}

impl RestBackend {
    /// Credentials: `RESTIC_REST_USERNAME` (else the URL's user name) and
    /// `RESTIC_REST_PASSWORD`.
    pub fn new(cfg: &RestConfig, creds: &Credentials) -> Result<RestBackend> {
        Self::with_retry(cfg, creds, RetryPolicy::default())
    }

    pub fn with_retry(
        cfg: &RestConfig,
        creds: &Credentials,
        retry: RetryPolicy,
    ) -> Result<RestBackend> {
        let bad = |m: String| Error::Backend {
            file: format!("rest:{}", cfg.url),
            message: m,
        };
        let mut url =
            reqwest::Url::parse(&cfg.url).map_err(|e| bad(format!("invalid URL: {e}")))?;
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        let user = creds
            .get("RESTIC_REST_USERNAME")
            .map(String::from)
            .or_else(|| cfg.username.clone());
        let pass = creds.get("RESTIC_REST_PASSWORD").map(String::from);
        let auth = match (user, pass) {
            (Some(u), p) => Some((u, p.unwrap_or_default())),
            (None, Some(_)) => {
                return Err(bad(
                    "RESTIC_REST_PASSWORD is set but no user name (RESTIC_REST_USERNAME or user@ in the URL)".into(),
                ));
            }
            (None, None) => None,
        };
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| bad(format!("building the HTTP client: {e}")))?;
        Ok(RestBackend {
            client,
            url,
            auth,
            retry,
            rt: BlockingRuntime::new("hoard-rest")?,
        })
    }

    fn file_url(&self, t: FileType, name: &str) -> reqwest::Url {
        let rel = match t {
            FileType::Config => "config".to_string(),
            t => format!("{}/{name}", t.dir()),
        };
        // Names are checked hex ids: joining cannot leave the base path.
        self.url.join(&rel).unwrap_or_else(|_| self.url.clone())
    }

    fn err(&self, file: &str, message: impl Into<String>) -> Error {
        Error::Backend {
            file: format!("rest:{}{file}", self.url),
            message: message.into(),
        }
    }

    /// One request with retries; `body` is re-sent on each attempt.
    fn request(
        &self,
        method: Method,
        url: reqwest::Url,
        headers: Vec<(&'static str, String)>,
        body: Option<Vec<u8>>,
        file: &str,
    ) -> Result<Answer> {
        let (client, auth, policy) = (self.client.clone(), self.auth.clone(), self.retry);
        let what = format!("{method} {}", url.path());
        let res = self.rt.run(async move {
            retry(policy, &what, || {
                let mut rb = client.request(method.clone(), url.clone());
                for (k, v) in &headers {
                    rb = rb.header(*k, v);
                }
                if let Some((u, p)) = &auth {
                    rb = rb.basic_auth(u, Some(p));
                }
                if let Some(b) = &body {
                    rb = rb.body(b.clone());
                }
                async move {
                    let resp = rb.send().await.map_err(|e| {
                        let msg = format!("request failed: {}", error_chain(&e));
                        if e.is_builder() {
                            Attempt::Permanent(msg)
                        } else {
                            Attempt::Transient(msg)
                        }
                    })?;
                    let status = resp.status();
                    let content_length = resp
                        .headers()
                        .get(reqwest::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| Attempt::Transient(format!("reading the response: {e}")))?;
                    if is_transient_status(status.as_u16()) {
                        return Err(Attempt::Transient(format!(
                            "server answered {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
                        )));
                    }
                    Ok(Answer {
                        status,
                        body: body.to_vec(),
                        content_length,
                    })
                }
            })
            .await
        });
        match res {
            Some(Ok(a)) => Ok(a),
            Some(Err(msg)) => Err(self.err(file, msg)),
            None => Err(self.err(file, "the request task ended without an answer")),
        }
    }

    /// Maps a non-2xx answer to the engine's errors.
    fn status_err(&self, t: FileType, name: &str, a: &Answer) -> Error {
        let file = t.rel_path(name);
        match a.status {
            StatusCode::NOT_FOUND if t == FileType::Config => Error::NoRepository {
                location: self.location(),
            },
            StatusCode::NOT_FOUND => Error::NotFound { file },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => self.err(
                &file,
                format!(
                    "access denied ({}); check RESTIC_REST_USERNAME/RESTIC_REST_PASSWORD (or user:password@ in the URL) and the server's permissions (append-only servers refuse deletes)",
                    a.status
                ),
            ),
            s => self.err(
                &file,
                format!(
                    "server answered {s}: {}",
                    String::from_utf8_lossy(&a.body[..a.body.len().min(200)]).trim()
                ),
            ),
        }
    }

    fn head(&self, t: FileType, name: &str) -> Result<Option<u64>> {
        let a = self.request(
            Method::HEAD,
            self.file_url(t, name),
            vec![],
            None,
            &t.rel_path(name),
        )?;
        match a.status {
            s if s.is_success() => Ok(Some(a.content_length.unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_err(t, name, &a)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[derive(serde::Deserialize)]
struct ListEntry {
    name: String,
    size: u64,
}

impl Backend for RestBackend {
    fn location(&self) -> String {
        format!("rest:{}", self.url)
    }

    fn create(&self) -> Result<()> {
        if self.head(FileType::Config, "config")?.is_some() {
            return Err(Error::RepositoryExists {
                location: self.location(),
            });
        }
        let mut url = self.url.clone();
        url.set_query(Some("create=true"));
        let a = self.request(Method::POST, url, vec![], None, "")?;
        if a.status.is_success() {
            Ok(())
        } else {
            Err(self.err(
                "",
                format!(
                    "creating the repository: server answered {}: {}",
                    a.status,
                    String::from_utf8_lossy(&a.body).trim()
                ),
            ))
        }
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        check_name(t, name)?;
        if self.head(t, name)?.is_some() {
            return if self.read_full(t, name)? == data {
                Ok(())
            } else {
                Err(Error::Conflict {
                    file: t.rel_path(name),
                })
            };
        }
        let file = t.rel_path(name);
        let a = self.request(
            Method::POST,
            self.file_url(t, name),
            vec![("content-type", "application/octet-stream".into())],
            Some(data.to_vec()),
            &file,
        )?;
        if !a.status.is_success() {
            return Err(self.status_err(t, name, &a));
        }
        match self.head(t, name)? {
            Some(n) if n == data.len() as u64 => Ok(()),
            Some(n) => Err(self.err(
                &file,
                format!(
                    "upload verification failed: server stores {n} bytes, {} were sent; retry the operation",
                    data.len()
                ),
            )),
            None => Err(self.err(&file, "upload acknowledged but the file is missing")),
        }
    }

    fn read_full(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        check_name(t, name)?;
        let a = self.request(
            Method::GET,
            self.file_url(t, name),
            vec![],
            None,
            &t.rel_path(name),
        )?;
        if a.status.is_success() {
            Ok(a.body)
        } else {
            Err(self.status_err(t, name, &a))
        }
    }

    fn read_range(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        check_name(t, name)?;
        let file = t.rel_path(name);
        if len == 0 {
            return Ok(Vec::new());
        }
        let last = offset
            .checked_add(len - 1)
            .ok_or_else(|| self.err(&file, "range overflows"))?;
        let a = self.request(
            Method::GET,
            self.file_url(t, name),
            vec![("range", format!("bytes={offset}-{last}"))],
            None,
            &file,
        )?;
        match a.status {
            StatusCode::PARTIAL_CONTENT if a.body.len() as u64 == len => Ok(a.body),
            // A server that ignores Range sends the whole file.
            StatusCode::OK if a.body.len() as u64 > last => {
                Ok(a.body[offset as usize..=last as usize].to_vec())
            }
            s if s.is_success() || s == StatusCode::RANGE_NOT_SATISFIABLE => Err(self.err(
                &file,
                format!(
                    "range {offset}+{len} beyond end of file (got {} bytes)",
                    a.body.len()
                ),
            )),
            _ => Err(self.status_err(t, name, &a)),
        }
    }

    fn list(&self, t: FileType) -> Result<Vec<(String, u64)>> {
        if t == FileType::Config {
            return Ok(self
                .head(t, "config")?
                .map(|n| vec![("config".to_string(), n)])
                .unwrap_or_default());
        }
        let dir = format!("{}/", t.dir());
        let url = self.url.join(&dir).unwrap_or_else(|_| self.url.clone());
        let a = self.request(Method::GET, url, vec![("accept", V2.into())], None, &dir)?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok(vec![]);
        }
        if !a.status.is_success() {
            return Err(self.status_err(t, "", &a));
        }
        let entries: Vec<ListEntry> = serde_json::from_slice(&a.body).map_err(|e| {
            self.err(
                &dir,
                format!("unexpected list answer (is this a restic REST server ≥ 0.9?): {e}"),
            )
        })?;
        Ok(entries
            .into_iter()
            .filter(|e| check_name(t, &e.name).is_ok())
            .map(|e| (e.name, e.size))
            .collect())
    }

    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        check_name(t, name)?;
        let a = self.request(
            Method::DELETE,
            self.file_url(t, name),
            vec![],
            None,
            &t.rel_path(name),
        )?;
        if a.status.is_success() {
            Ok(())
        } else {
            Err(self.status_err(t, name, &a))
        }
    }

    fn exists(&self, t: FileType, name: &str) -> Result<bool> {
        check_name(t, name)?;
        Ok(self.head(t, name)?.is_some())
    }
}
