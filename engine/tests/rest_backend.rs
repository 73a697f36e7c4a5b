//! The REST back end against an in-test restic REST server on 127.0.0.1.
//!
//! The server is checked first against restic itself (restic 0.14's REST
//! client inits, backs up and checks through it), so it speaks the
//! protocol as restic expects; then hoard's client reads restic's data,
//! writes its own (which `restic check --read-data` accepts), and the
//! failure paths are driven by fault injection: 503s are retried, a wrong
//! password (401) and an append-only server's 403 are not.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use engine::backend::location::{Credentials, Location, open_repo_string};
use engine::backend::rest::RestBackend;
use engine::backend::retry::RetryPolicy;
use engine::backup::{BackupOptions, backup};
use engine::restore::{RestoreOptions, restore};
use engine::{Error, FileType, Repository, SnapshotFilter};

const PASSWORD: &str = "rest-test-password";

#[derive(Default)]
struct State {
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    created: Mutex<bool>,
    /// Answer this many requests with 503 before serving.
    fail_next: AtomicU32,
    requests: AtomicU32,
    /// Refuse DELETE, as `rest-server --append-only` does.
    append_only: Mutex<bool>,
    /// The repository's path on the server ("" or e.g. "repo").
    base: String,
}

struct Server {
    state: Arc<State>,
    port: u16,
    _rt: tokio::runtime::Runtime,
}

const TYPES: &[&str] = &["data", "keys", "locks", "snapshots", "index"];

fn resp(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

async fn handle(
    st: Arc<State>,
    auth: Option<String>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    if st
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Ok(resp(StatusCode::SERVICE_UNAVAILABLE, b"try later".to_vec()));
    }
    if let Some(want) = &auth {
        let got = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if got != Some(want.as_str()) {
            return Ok(resp(StatusCode::UNAUTHORIZED, vec![]));
        }
    }
    let method = req.method().clone();
    let full = req.uri().path().trim_start_matches('/');
    let Some(path) = full.strip_prefix(st.base.as_str()) else {
        return Ok(resp(StatusCode::NOT_FOUND, vec![]));
    };
    let path = path.trim_start_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let v2 = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("vnd.x.restic.rest.v2"));
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();

    if path.is_empty() && method == Method::POST && query == "create=true" {
        *st.created.lock().unwrap() = true;
        return Ok(resp(StatusCode::OK, vec![]));
    }
    if !*st.created.lock().unwrap() {
        return Ok(resp(StatusCode::NOT_FOUND, vec![]));
    }
    // Listing: "{type}/"
    if let Some(t) = path.strip_suffix('/')
        && TYPES.contains(&t)
        && method == Method::GET
    {
        let files = st.files.lock().unwrap();
        let entries: Vec<(String, usize)> = files
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(&format!("{t}/"))?;
                Some((name.to_string(), v.len()))
            })
            .collect();
        let (ct, json) = if v2 {
            (
                "application/vnd.x.restic.rest.v2",
                serde_json::to_vec(
                    &entries
                        .iter()
                        .map(|(n, s)| serde_json::json!({"name": n, "size": s}))
                        .collect::<Vec<_>>(),
                ),
            )
        } else {
            (
                "application/vnd.x.restic.rest.v1",
                serde_json::to_vec(&entries.iter().map(|e| &e.0).collect::<Vec<_>>()),
            )
        };
        let mut r = resp(StatusCode::OK, json.unwrap());
        r.headers_mut().insert("content-type", ct.parse().unwrap());
        return Ok(r);
    }
    let valid = path == "config"
        || path
            .split_once('/')
            .is_some_and(|(t, n)| TYPES.contains(&t) && !n.is_empty() && !n.contains('/'));
    if !valid {
        return Ok(resp(StatusCode::BAD_REQUEST, b"bad path".to_vec()));
    }
    let mut files = st.files.lock().unwrap();
    Ok(match method {
        Method::HEAD => match files.get(&path) {
            Some(d) => {
                let mut r = resp(StatusCode::OK, vec![]);
                r.headers_mut()
                    .insert("content-length", d.len().to_string().parse().unwrap());
                r
            }
            None => resp(StatusCode::NOT_FOUND, vec![]),
        },
        Method::GET => match files.get(&path) {
            None => resp(StatusCode::NOT_FOUND, vec![]),
            Some(d) => match range {
                None => resp(StatusCode::OK, d.clone()),
                Some(r) => {
                    let spec = r.strip_prefix("bytes=").unwrap();
                    let (a, b) = spec.split_once('-').unwrap();
                    let a: usize = a.parse().unwrap();
                    let b: usize = if b.is_empty() {
                        d.len().saturating_sub(1)
                    } else {
                        b.parse::<usize>().unwrap().min(d.len().saturating_sub(1))
                    };
                    if a >= d.len() {
                        resp(StatusCode::RANGE_NOT_SATISFIABLE, vec![])
                    } else {
                        resp(StatusCode::PARTIAL_CONTENT, d[a..=b].to_vec())
                    }
                }
            },
        },
        Method::POST => {
            match files.entry(path) {
                // rest-server refuses to overwrite.
                std::collections::btree_map::Entry::Occupied(_) => {
                    resp(StatusCode::FORBIDDEN, b"file exists".to_vec())
                }
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(body);
                    resp(StatusCode::OK, vec![])
                }
            }
        }
        Method::DELETE => {
            if *st.append_only.lock().unwrap() {
                resp(StatusCode::FORBIDDEN, b"append-only".to_vec())
            } else if files.remove(&path).is_some() {
                resp(StatusCode::OK, vec![])
            } else {
                resp(StatusCode::NOT_FOUND, vec![])
            }
        }
        _ => resp(StatusCode::METHOD_NOT_ALLOWED, vec![]),
    })
}

fn start_server(base: &str, user_pass: Option<(&str, &str)>) -> Server {
    use base64::Engine as _;
    let auth = user_pass.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    let state = Arc::new(State {
        base: base.into(),
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let st = state.clone();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (st, auth) = (st.clone(), auth.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| handle(st.clone(), auth.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server {
        state,
        port,
        _rt: rt,
    }
}

fn restic(repo: &str, pwfile: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("restic")
        .args(["-r", repo, "--no-cache", "--password-file"])
        .arg(pwfile)
        .args(args)
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_REPOSITORY")
        .output()
        .expect("run restic (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "restic {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        retry_timeout: Duration::from_secs(30),
    }
}

#[test]
fn restic_and_hoard_share_a_rest_repository() {
    let srv = start_server("", Some(("alice", "s3cr:et")));
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let url = format!("rest:http://alice:s3cr%3Aet@127.0.0.1:{}/", srv.port);

    // restic's own REST client drives the server.
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("small.txt"), b"from restic").unwrap();
    restic(&url, &pw, &["init"]);
    restic(
        &url,
        &pw,
        &["backup", "--host", "r-host", src.to_str().unwrap()],
    );

    // hoard's client reads it: password from the URL, ranges for blobs.
    let be = open_repo_string(&url, &Credentials::default()).unwrap();
    assert!(!format!("{be:?}").contains("s3cr"), "{be:?}");
    assert!(!be.location().contains("s3cr"));
    let repo = Repository::open(be.clone(), PASSWORD).unwrap();
    let (sid, snap) = repo
        .find_snapshot("latest", &SnapshotFilter::default())
        .unwrap();
    assert_eq!(snap.hostname, "r-host");
    let out = dir.path().join("out");
    let r = restore(&repo, &sid, &out, RestoreOptions::default()).unwrap();
    assert!(!r.is_incomplete());
    let rel = src.strip_prefix("/").unwrap();
    assert_eq!(std::fs::read(out.join(rel).join("big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(out.join(rel).join("small.txt")).unwrap(),
        b"from restic"
    );

    // hoard writes; restic verifies every byte and sees the snapshot.
    std::fs::write(src.join("small.txt"), b"changed by hoard").unwrap();
    let s = backup(
        &repo,
        &src,
        BackupOptions {
            hostname: "h-host".into(),
            paths: vec!["/data".into()],
            ..Default::default()
        },
    )
    .unwrap();
    restic(&url, &pw, &["check", "--read-data"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&restic(&url, &pw, &["snapshots", "--json"])).unwrap();
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == s.snapshot_id.to_hex())
    );
}

#[test]
fn backend_operations_and_faults() {
    let srv = start_server("repo", Some(("bob", "pw")));
    let loc = format!("rest:http://bob@127.0.0.1:{}/repo", srv.port);
    let Location::Rest(cfg) = loc.parse::<Location>().unwrap() else {
        panic!()
    };
    let mut creds = Credentials::default();
    creds.insert("RESTIC_REST_PASSWORD", "pw");
    let be = RestBackend::with_retry(&cfg, &creds, fast_retry()).unwrap();
    use engine::Backend as _;
    be.create().unwrap();
    assert!(matches!(
        be.read_full(FileType::Config, "config"),
        Err(Error::NoRepository { .. })
    ));
    be.write(FileType::Config, "config", b"cfg").unwrap();
    assert!(matches!(be.create(), Err(Error::RepositoryExists { .. })));
    assert_eq!(
        be.list(FileType::Config).unwrap(),
        vec![("config".into(), 3)]
    );

    let name = "ab".repeat(32);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    be.write(FileType::Pack, &name, &data).unwrap();
    be.write(FileType::Pack, &name, &data).unwrap();
    assert!(matches!(
        be.write(FileType::Pack, &name, b"other"),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        be.read_range(FileType::Pack, &name, 10, 90).unwrap(),
        &data[10..100]
    );
    assert!(be.read_range(FileType::Pack, &name, 99_990, 20).is_err());
    assert_eq!(
        be.list(FileType::Pack).unwrap(),
        vec![(name.clone(), 100_000)]
    );
    assert!(be.list(FileType::Index).unwrap().is_empty());
    assert!(matches!(
        be.read_full(FileType::Snapshot, &"cd".repeat(32)),
        Err(Error::NotFound { .. })
    ));

    // Transient: two 503s, then success; each retry is a new request.
    srv.state.fail_next.store(2, Ordering::SeqCst);
    let before = srv.state.requests.load(Ordering::SeqCst);
    assert_eq!(be.read_full(FileType::Pack, &name).unwrap(), data);
    assert_eq!(srv.state.requests.load(Ordering::SeqCst) - before, 3);

    // Permanently unavailable: bounded attempts, then an error naming 503.
    srv.state.fail_next.store(100, Ordering::SeqCst);
    let before = srv.state.requests.load(Ordering::SeqCst);
    let e = be.read_full(FileType::Pack, &name).unwrap_err().to_string();
    assert!(e.contains("503"), "{e}");
    assert_eq!(
        srv.state.requests.load(Ordering::SeqCst) - before,
        5,
        "1 + 4 retries"
    );
    srv.state.fail_next.store(0, Ordering::SeqCst);

    // Append-only server: DELETE refused (403), not retried, explained.
    *srv.state.append_only.lock().unwrap() = true;
    let before = srv.state.requests.load(Ordering::SeqCst);
    let e = be.remove(FileType::Pack, &name).unwrap_err().to_string();
    assert!(
        e.contains("access denied") && e.contains("append-only"),
        "{e}"
    );
    assert_eq!(srv.state.requests.load(Ordering::SeqCst) - before, 1);
    *srv.state.append_only.lock().unwrap() = false;
    be.remove(FileType::Pack, &name).unwrap();
    assert!(!be.exists(FileType::Pack, &name).unwrap());

    // Wrong password: 401 at once, with what to check.
    let mut wrong = Credentials::default();
    wrong.insert("RESTIC_REST_PASSWORD", "nope");
    let bad = RestBackend::with_retry(&cfg, &wrong, fast_retry()).unwrap();
    let before = srv.state.requests.load(Ordering::SeqCst);
    let e = bad.list(FileType::Snapshot).unwrap_err().to_string();
    assert!(
        e.contains("RESTIC_REST_PASSWORD") && !e.contains("nope"),
        "{e}"
    );
    assert_eq!(srv.state.requests.load(Ordering::SeqCst) - before, 1);

    // Nobody listening: a connection error, retried, then reported.
    drop(srv);
    let e = be.exists(FileType::Pack, &name).unwrap_err().to_string();
    assert!(e.contains("request failed"), "{e}");
}
