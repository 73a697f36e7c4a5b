//! The node agent's benchmark (not a test; `bench/agent.sh` runs it, see
//! bench/README.md): 20 pods' volumes on one node backed up by one
//! `BackupSession`, against the engine alone on the same data.
//!
//! ```text
//! bench-agent generate --data D --scale S --seed N   20 StatefulSet pods' volumes
//!                                                     under D/kubelet (kubelet layout)
//!                                                     + D/pods.json
//! bench-agent agent  --data D --work W   the real Agent (watches, owner, status,
//!                                        events, transfers) against an API server
//!                                        played in-process; one BackupSession
//! bench-agent engine --data D --work W   the same 20 hosts, same snapshots, one
//!                                        repository open, nothing else
//! ```
//!
//! Each run initialises a fresh local repository under W (real key
//! derivation parameters, as `hoard init` writes them) and prints one JSON
//! line: `wall_s` from session creation (agent) or from before the
//! repository is opened (engine) until every host is done, and `first_read_s`
//! until the first byte of a volume's file is read.
//!
//! First read is observed from outside the agent: inotify watches on every
//! directory of the volumes report the first `IN_ACCESS` of a file (read(2)
//! by the engine), then the inotify descriptor is closed, so nothing is
//! added to the agent's code and the kernel stops reporting at once.
//!
//! The played API server answers as the API server does for what the agent
//! asks: list/watch (newline-delimited watch events), get, JSON patch of the
//! session's status with its `test` on resourceVersion (422 when stale), a
//! MODIFIED event to every session watcher after each status write (so the
//! agent re-reads the configuration and pods as it would in a cluster),
//! events, PVCs, the Repository and its Secret.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use http::{Method, Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use kube::client::Body;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use engine::{InitOptions, KdfParams, LocalBackend, Repository};
use nodeagent::agent::Agent;
use nodeagent::beneath::SecureDir;
use nodeagent::metrics::Metrics;
use nodeagent::volumes::Kubelet;
use nodeagent::work::{HostProgress, HostVolume, TransferSettings, run_backup_host};

const PASSWORD: &str = "bench-agent-password";
const NODE: &str = "bench-node";
const NS: &str = "demo";
const SESSION: &str = "bench-1";
const MOUNT_PATH: &str = "/data";
/// Relative pod sizes (sum 312): 6.6 MiB to 315 MiB at scale 1, in an order
/// that puts small and large pods next to each other.
const WEIGHTS: [u64; 20] = [
    12, 1, 28, 4, 40, 2, 16, 6, 48, 3, 20, 8, 36, 1, 24, 10, 32, 5, 14, 2,
];
/// Scale 1: 2 GiB in all (1.98 GiB with integer file sizes).
const FULL_BYTES: f64 = 2.0 * 1024.0 * 1024.0 * 1024.0;

#[derive(Parser)]
#[command(name = "bench-agent", about = "Hoard node agent benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lays out 20 pods' volumes as the kubelet does (skipped when present).
    Generate {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// One BackupSession through the real agent.
    Agent {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        work: PathBuf,
        /// The agent's --max-transfers.
        #[arg(long, default_value_t = 1)]
        transfers: usize,
    },
    /// The same 20 hosts through the engine alone.
    Engine {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        work: PathBuf,
    },
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    scale: f64,
    seed: u64,
    bytes: u64,
    files: u64,
    pods: Vec<PodData>,
}

#[derive(Serialize, Deserialize)]
struct PodData {
    ordinal: usize,
    uid: String,
    /// PVC name (a CSI PV) or `None` (an emptyDir).
    claim: Option<String>,
    pv: Option<String>,
    /// The volume directory, relative to the kubelet root.
    dir: String,
    bytes: u64,
    files: u64,
}

fn main() -> anyhow::Result<()> {
    // as `hoard agent` logs (info), to stderr
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = match Cli::parse().cmd {
        Cmd::Generate { data, scale, seed } => return generate(&data, scale, seed),
        Cmd::Agent {
            data,
            work,
            transfers,
        } => rt.block_on(run_agent(&data, &work, transfers))?,
        Cmd::Engine { data, work } => run_engine(&data, &work)?,
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &report)?;
    writeln!(out)?;
    out.flush()?;
    // The agent's watch tasks run forever: leave without waiting for them.
    std::process::exit(0)
}

// ---------------------------------------------------------------- dataset

/// xorshift64*: fast enough to write 2 GiB in seconds, seeded, not crypto.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn fill_random(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    /// Log-like lines (zstd makes ~3-4x of them).
    fn fill_text(&mut self, buf: &mut [u8], pod: usize) {
        let mut pos = 0;
        let mut line = String::with_capacity(160);
        while pos < buf.len() {
            line.clear();
            let r = self.next();
            use std::fmt::Write as _;
            let _ = writeln!(
                line,
                "2026-11-30T{:02}:{:02}:{:02}.{:03}Z {} bench-{pod} request id={:016x} path=/api/v1/items/{} status={} bytes={}",
                r % 24,
                (r >> 5) % 60,
                (r >> 11) % 60,
                (r >> 17) % 1000,
                ["INFO", "INFO", "INFO", "WARN", "DEBUG"][((r >> 27) % 5) as usize],
                self.next(),
                (r >> 30) % 100_000,
                [200, 200, 200, 201, 404, 500][((r >> 47) % 6) as usize],
                (r >> 50) % 65_536,
            );
            let n = line.len().min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&line.as_bytes()[..n]);
            pos += n;
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// Writes `size` bytes, random or text (alternating per file).
fn write_file(path: &Path, size: u64, text: bool, rng: &mut Rng, pod: usize) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(
        MIB as usize,
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut buf = vec![0u8; (size.min(MIB)) as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        if text {
            rng.fill_text(&mut buf[..n], pod);
        } else {
            rng.fill_random(&mut buf[..n]);
        }
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// One pod's volume: `style` 0 = a few large files (a database), 1 = small
/// files only (an upload store), 2 = half and half.
fn generate_pod(
    dir: &Path,
    bytes: u64,
    style: usize,
    rng: &mut Rng,
    pod: usize,
) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let large_share = [0.9, 0.0, 0.5][style];
    let mut large = (bytes as f64 * large_share) as u64;
    let mut small = bytes - large;
    let mut files = 0u64;
    let mut k = 0u64;
    while large > 0 {
        let size = (8 * MIB + rng.below(56 * MIB)).min(large);
        write_file(
            &dir.join(format!("table-{k:03}.db")),
            size,
            k % 2 == 1,
            rng,
            pod,
        )?;
        large -= size;
        files += 1;
        k += 1;
    }
    let mut sub = PathBuf::new();
    while small > 0 {
        if files.is_multiple_of(200) || sub.as_os_str().is_empty() {
            sub = dir.join(format!("files/{:02}/{:03}", files / 4000, files / 200));
            std::fs::create_dir_all(&sub)?;
        }
        let size = (1024 + rng.below(63 * 1024)).min(small);
        write_file(
            &sub.join(format!("f{files:06}")),
            size,
            files.is_multiple_of(2),
            rng,
            pod,
        )?;
        small -= size;
        files += 1;
    }
    Ok(files)
}

fn generate(data: &Path, scale: f64, seed: u64) -> anyhow::Result<()> {
    if !(scale > 0.0 && scale <= 8.0) {
        bail!("--scale must be in (0, 8]; 1 is ≈2 GiB");
    }
    let mpath = data.join("pods.json");
    if let Ok(m) = std::fs::read(&mpath)
        && let Ok(m) = serde_json::from_slice::<Manifest>(&m)
        && m.scale == scale
        && m.seed == seed
    {
        eprintln!("bench-agent: dataset in {} is up to date", data.display());
        return Ok(());
    }
    if data.exists() {
        std::fs::remove_dir_all(data).with_context(|| format!("removing {}", data.display()))?;
    }
    let total = FULL_BYTES * scale;
    let wsum: u64 = WEIGHTS.iter().sum();
    let mut pods = Vec::new();
    for (i, w) in WEIGHTS.iter().enumerate() {
        let mut rng = Rng::new(seed * 1000 + i as u64);
        let bytes = (total * *w as f64 / wsum as f64) as u64;
        let uid = format!("9c1d{i:04}-bench-pod-uid-{seed:04}");
        // even ordinals: a PVC bound to a CSI PV (volumeClaimTemplates);
        // odd: an emptyDir
        let (claim, pv, dir) = if i % 2 == 0 {
            let pv = format!("pvc-bench-{i:02}");
            (
                Some(format!("data-bench-{i}")),
                Some(pv.clone()),
                format!("pods/{uid}/volumes/kubernetes.io~csi/{pv}/mount"),
            )
        } else {
            (
                None,
                None,
                format!("pods/{uid}/volumes/kubernetes.io~empty-dir/data"),
            )
        };
        let files = generate_pod(&data.join("kubelet").join(&dir), bytes, i % 3, &mut rng, i)?;
        pods.push(PodData {
            ordinal: i,
            uid,
            claim,
            pv,
            dir,
            bytes,
            files,
        });
    }
    let m = Manifest {
        scale,
        seed,
        bytes: pods.iter().map(|p| p.bytes).sum(),
        files: pods.iter().map(|p| p.files).sum(),
        pods,
    };
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m)?)?;
    eprintln!(
        "bench-agent: {} files, {:.1} MiB in 20 pods under {}",
        m.files,
        m.bytes as f64 / MIB as f64,
        data.join("kubelet").display()
    );
    Ok(())
}

fn load(data: &Path) -> anyhow::Result<Manifest> {
    let p = data.join("pods.json");
    let b = std::fs::read(&p)
        .with_context(|| format!("reading {}; run `bench-agent generate` first", p.display()))?;
    Ok(serde_json::from_slice(&b)?)
}

// ------------------------------------------------------------ first read

/// The instant of the first file read beneath the watched directories.
struct FirstRead(Arc<OnceLock<Instant>>);

impl FirstRead {
    fn watch(root: &Path, m: &Manifest) -> anyhow::Result<FirstRead> {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC)?;
        let mut dirs = Vec::new();
        for p in &m.pods {
            dirs_below(&root.join(&p.dir), &mut dirs)?;
        }
        for d in &dirs {
            inotify::add_watch(&fd, d.as_path(), inotify::WatchFlags::ACCESS).with_context(
                || {
                    format!(
                        "inotify watch on {} (raise fs.inotify.max_user_watches)",
                        d.display()
                    )
                },
            )?;
        }
        let at = Arc::new(OnceLock::new());
        let at2 = at.clone();
        std::thread::Builder::new()
            .name("first-read".into())
            .spawn(move || {
                let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
                let mut r = inotify::Reader::new(&fd, &mut buf);
                while let Ok(ev) = r.next() {
                    // a file's content, not a directory listing
                    if !ev.events().contains(inotify::ReadFlags::ISDIR) {
                        let _ = at2.set(Instant::now());
                        break;
                    }
                }
                // dropping the descriptor removes every watch
            })?;
        Ok(FirstRead(at))
    }

    fn get(&self) -> Option<Instant> {
        self.0.get().copied()
    }
}

fn dirs_below(d: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    out.push(d.to_path_buf());
    for e in std::fs::read_dir(d)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            dirs_below(&e.path(), out)?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------ the runs

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    hosts: usize,
    bytes: u64,
    files: u64,
    /// Session creation (or the start of the engine's work) → all hosts done.
    wall_s: f64,
    /// → the first byte of a volume's file read.
    first_read_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<ApiCounts>,
}

#[derive(Serialize, Default, Clone)]
struct ApiCounts {
    requests: u64,
    status_patches: u64,
    status_conflicts: u64,
    events: u64,
    session_watch_events: u64,
}

fn init_repo(work: &Path) -> anyhow::Result<PathBuf> {
    let repo_dir = work.join("host/var/hoard/repo");
    if repo_dir.exists() {
        std::fs::remove_dir_all(&repo_dir)?;
    }
    // the parameters `hoard init` writes: every open pays the real KDF
    Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::default(),
            chunker_polynomial: None,
        },
    )?;
    Ok(repo_dir)
}

fn tags() -> Vec<String> {
    vec![
        "backupconfiguration=bench".into(),
        "target=StatefulSet/bench".into(),
    ]
}

fn run_engine(data: &Path, work: &Path) -> anyhow::Result<Report> {
    let m = load(data)?;
    let repo_dir = init_repo(work)?;
    let kroot = data.join("kubelet");
    let first = FirstRead::watch(&kroot, &m)?;
    let t0 = Instant::now();
    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD)?;
    let settings = TransferSettings {
        tags: tags(),
        ..Default::default()
    };
    for p in &m.pods {
        let vols = [HostVolume {
            volume: "data".into(),
            snapshot_path: MOUNT_PATH.into(),
            dir: SecureDir::open_root(&kroot.join(&p.dir))?,
        }];
        let host = format!("host-{}", p.ordinal);
        let r = run_backup_host(&repo, &host, &vols, &settings, &HostProgress::default());
        if let Some(e) = r.error {
            bail!("{host}: {e}");
        }
    }
    let wall = t0.elapsed();
    Ok(Report {
        mode: "engine",
        hosts: m.pods.len(),
        bytes: m.bytes,
        files: m.files,
        wall_s: wall.as_secs_f64(),
        first_read_s: first.get().map(|t| (t - t0).as_secs_f64()),
        api: None,
    })
}

async fn run_agent(data: &Path, work: &Path, transfers: usize) -> anyhow::Result<Report> {
    let m = load(data)?;
    let host_root = work.join("host");
    init_repo(work)?;
    let kroot = data.join("kubelet");
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root);

    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
    let client = kube::Client::new(svc, "default");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (watching_tx, watching_rx) = tokio::sync::oneshot::channel();
    let world = Arc::new(Mutex::new(World::new(&m, done_tx, watching_tx)));
    tokio::spawn(api_server(handle, world.clone()));

    let agent = Agent::new(
        client,
        NODE.into(),
        "hoard-system".into(),
        kubelet,
        transfers,
        Metrics::new(),
        // `--progress-interval-secs`' default
        Duration::from_secs(5),
    );
    agent.check_crds().await?;
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(agent.clone().watch(ready.clone()));
    tokio::time::timeout(Duration::from_secs(60), watching_rx)
        .await
        .context("the agent did not watch BackupSessions within 60 s")??;

    let first = FirstRead::watch(&kroot, &m)?;
    let t0 = Instant::now();
    lock(&world).create_session();
    let outcome = done_rx.await.context("the API server stopped")?;
    let wall = t0.elapsed();
    if let Err(e) = outcome {
        bail!("the session did not succeed: {e}");
    }
    if !ready.load(Ordering::Relaxed) {
        eprintln!("bench-agent: note: the agent never reported its watches synced");
    }
    let api = lock(&world).counts.clone();
    Ok(Report {
        mode: "agent",
        hosts: m.pods.len(),
        bytes: m.bytes,
        files: m.files,
        wall_s: wall.as_secs_f64(),
        first_read_s: first.get().map(|t| (t - t0).as_secs_f64()),
        api: Some(api),
    })
}

// ------------------------------------------------- the played API server

type Chunk = Result<Frame<Bytes>, Infallible>;
type RespBody = StreamBody<UnboundedReceiver<Chunk>>;
type Handle = tower_test::mock::Handle<Request<Body>, Response<RespBody>>;

fn lock(w: &Mutex<World>) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// One JSON document, newline-terminated (a watch event, or a whole body).
fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn respond(send: tower_test::mock::SendResponse<Response<RespBody>>, code: StatusCode, v: &Value) {
    let (tx, rx) = unbounded();
    let _ = tx.unbounded_send(Ok(Frame::data(line(v))));
    drop(tx);
    send_body(send, code, rx);
}

fn send_body(
    send: tower_test::mock::SendResponse<Response<RespBody>>,
    code: StatusCode,
    rx: UnboundedReceiver<Chunk>,
) {
    match Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(StreamBody::new(rx))
    {
        Ok(r) => send.send_response(r),
        Err(e) => eprintln!("bench-agent: building a response: {e}"),
    }
}

fn status(code: u16, reason: &str, msg: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": msg,
           "reason": reason, "code": code})
}

struct World {
    pods: Vec<Value>,
    pvcs: HashMap<String, Value>,
    config: Value,
    repository: Value,
    secret: Value,
    session: Option<Value>,
    rv: u64,
    hosts: usize,
    session_watchers: Vec<UnboundedSender<Chunk>>,
    /// Kept open: watches with nothing to report.
    idle_watchers: Vec<UnboundedSender<Chunk>>,
    done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    watching: Option<tokio::sync::oneshot::Sender<()>>,
    counts: ApiCounts,
}

impl World {
    fn new(
        m: &Manifest,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
        watching: tokio::sync::oneshot::Sender<()>,
    ) -> World {
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
        let mut pvcs = HashMap::new();
        let pods = m
            .pods
            .iter()
            .map(|p| {
                let volume = match (&p.claim, &p.pv) {
                    (Some(c), Some(pv)) => {
                        pvcs.insert(
                            c.clone(),
                            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "metadata": {"name": c, "namespace": NS},
                                "spec": {"volumeName": pv}, "status": {"phase": "Bound"}}),
                        );
                        json!({"name": "data", "persistentVolumeClaim": {"claimName": c}})
                    }
                    _ => json!({"name": "data", "emptyDir": {}}),
                };
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("bench-{}", p.ordinal), "namespace": NS, "uid": p.uid,
                        "resourceVersion": "5",
                        "labels": {"app": "bench", "statefulset.kubernetes.io/pod-name": format!("bench-{}", p.ordinal)},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "bench",
                            "uid": "sts-bench", "controller": true}]},
                    "spec": {"nodeName": NODE,
                        "containers": [{"name": "app", "image": "registry.example/app:1",
                            "volumeMounts": [{"name": "data", "mountPath": MOUNT_PATH},
                                             {"name": "config", "mountPath": "/etc/app"}]}],
                        "volumes": [volume, {"name": "config", "configMap": {"name": "app-config"}}]},
                    "status": {"phase": "Running"}
                })
            })
            .collect();
        World {
            pods,
            pvcs,
            config: json!({
                "apiVersion": "hoard.dev/v1beta1", "kind": "BackupConfiguration",
                "metadata": {"name": "bench", "namespace": NS, "uid": "cfg-bench"},
                "spec": {
                    "repository": {"name": "bench-repo"},
                    "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "bench"},
                               "volumeMounts": [{"name": "data", "mountPath": MOUNT_PATH}]}
                }
            }),
            repository: json!({
                "apiVersion": "hoard.dev/v1beta1", "kind": "Repository",
                "metadata": {"name": "bench-repo", "namespace": NS},
                "spec": {"backend": {"storageSecretName": "repo-secret",
                    "local": {"hostPath": {"path": "/var/hoard/repo"}, "mountPath": "/repo"}}}
            }),
            secret: json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "repo-secret", "namespace": "hoard-system",
                    "annotations": {"hoard.dev/allowed-namespaces": NS}},
                "data": {"RESTIC_PASSWORD": b64(PASSWORD)}
            }),
            session: None,
            rv: 100,
            hosts: m.pods.len(),
            session_watchers: vec![],
            idle_watchers: vec![],
            done: Some(done),
            watching: Some(watching),
            counts: ApiCounts::default(),
        }
    }

    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// What the operator does when the schedule fires.
    fn create_session(&mut self) {
        let rv = self.bump();
        let s = json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
            "metadata": {"name": SESSION, "namespace": NS, "uid": "bs-bench-uid",
                "resourceVersion": rv, "creationTimestamp": "2026-11-30T08:00:00Z",
                "labels": {"hoard.dev/invoker-name": "bench"}},
            "spec": {"invoker": {"apiGroup": "hoard.dev", "kind": "BackupConfiguration", "name": "bench"}}
        });
        self.session = Some(s);
        self.notify("ADDED");
    }

    fn notify(&mut self, kind: &str) {
        let Some(s) = &self.session else { return };
        let ev = line(&json!({"type": kind, "object": s}));
        self.counts.session_watch_events += 1;
        self.session_watchers
            .retain(|w| w.unbounded_send(Ok(Frame::data(ev.clone()))).is_ok());
    }

    /// Every host written Succeeded, or one Failed.
    fn check_done(&mut self) {
        let Some(stats) = self
            .session
            .as_ref()
            .and_then(|s| s.pointer("/status/stats"))
            .and_then(|s| s.as_array())
        else {
            return;
        };
        let failed = stats.iter().find(|e| e["phase"] == "Failed");
        let ok = stats.iter().filter(|e| e["phase"] == "Succeeded").count();
        let outcome = match failed {
            Some(f) => Err(format!("{}: {}", f["hostname"], f["error"])),
            None if ok == self.hosts => Ok(()),
            None => return,
        };
        if let Some(tx) = self.done.take() {
            let _ = tx.send(outcome);
        }
    }

    fn list(&self, kind: &str, items: Vec<Value>) -> Value {
        json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": self.rv.to_string()},
               "items": items})
    }

    fn pod_list(&self) -> Value {
        self.list("PodList", self.pods.clone())
    }
}

const SESSIONS: &str = "/apis/hoard.dev/v1beta1/backupsessions";

async fn api_server(mut handle: Handle, world: Arc<Mutex<World>>) {
    while let Some((req, send)) = handle.next_request().await {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let body = match http_body_util::BodyExt::collect(req.into_body()).await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                eprintln!("bench-agent: reading a request body: {e}");
                continue;
            }
        };
        let mut w = lock(&world);
        w.counts.requests += 1;
        let watch = query.split('&').any(|q| q == "watch=true");
        let session_path =
            format!("/apis/hoard.dev/v1beta1/namespaces/{NS}/backupsessions/{SESSION}/status");
        let ns_sessions = format!("/apis/hoard.dev/v1beta1/namespaces/{NS}/backupsessions");
        match (&method, path.as_str()) {
            (&Method::GET, p) if watch => {
                let (tx, rx) = unbounded();
                if p == SESSIONS {
                    w.session_watchers.push(tx);
                    if let Some(t) = w.watching.take() {
                        let _ = t.send(());
                    }
                } else {
                    w.idle_watchers.push(tx);
                }
                send_body(send, StatusCode::OK, rx);
            }
            // the agent lists a configuration's sessions (one runs at a time)
            (&Method::GET, p) if p == SESSIONS || p == ns_sessions => {
                let items = w.session.iter().cloned().collect();
                let l = w.list("BackupSessionList", items);
                respond(send, StatusCode::OK, &l);
            }
            (
                &Method::GET,
                "/apis/hoard.dev/v1beta1/restoresessions"
                | "/apis/hoard.dev/v1beta1/repositories"
                | "/apis/hoard.dev/v1alpha1/recoveries",
            ) => {
                let l = w.list("List", vec![]);
                respond(send, StatusCode::OK, &l);
            }
            (&Method::GET, "/api/v1/pods") | (&Method::GET, "/api/v1/namespaces/demo/pods") => {
                if !query.contains(&format!("spec.nodeName%3D{NODE}")) {
                    eprintln!(
                        "bench-agent: pods listed without this node's field selector: {query}"
                    );
                }
                let l = w.pod_list();
                respond(send, StatusCode::OK, &l);
            }
            (
                &Method::GET,
                "/apis/hoard.dev/v1beta1/namespaces/demo/backupconfigurations/bench",
            ) => {
                respond(send, StatusCode::OK, &w.config);
            }
            (&Method::GET, "/apis/hoard.dev/v1beta1/namespaces/demo/repositories/bench-repo") => {
                respond(send, StatusCode::OK, &w.repository);
            }
            (&Method::GET, "/api/v1/namespaces/hoard-system/secrets/repo-secret") => {
                respond(send, StatusCode::OK, &w.secret);
            }
            (&Method::GET, p)
                if p.starts_with("/api/v1/namespaces/demo/persistentvolumeclaims/") =>
            {
                let name = p.rsplit('/').next().unwrap_or("");
                match w.pvcs.get(name) {
                    Some(c) => respond(send, StatusCode::OK, c),
                    None => respond(
                        send,
                        StatusCode::NOT_FOUND,
                        &status(404, "NotFound", "no such claim"),
                    ),
                }
            }
            (&Method::GET, p) if p == session_path => match &w.session {
                Some(s) => respond(send, StatusCode::OK, s),
                None => respond(
                    send,
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", "no session"),
                ),
            },
            (&Method::PATCH, p) if p == session_path => {
                w.counts.status_patches += 1;
                let patch: Result<json_patch::Patch, _> = serde_json::from_slice(&body);
                let (Ok(patch), Some(cur)) = (patch, w.session.clone()) else {
                    respond(
                        send,
                        StatusCode::BAD_REQUEST,
                        &status(400, "BadRequest", "not a JSON patch"),
                    );
                    continue;
                };
                let mut next = cur;
                match json_patch::patch(&mut next, &patch) {
                    Ok(()) => {
                        let rv = w.bump();
                        next["metadata"]["resourceVersion"] = json!(rv);
                        respond(send, StatusCode::OK, &next);
                        w.session = Some(next);
                        w.notify("MODIFIED");
                        w.check_done();
                    }
                    Err(e) => {
                        w.counts.status_conflicts += 1;
                        respond(
                            send,
                            StatusCode::UNPROCESSABLE_ENTITY,
                            &status(422, "Invalid", &e.to_string()),
                        );
                    }
                }
            }
            (&Method::POST, "/apis/events.k8s.io/v1/namespaces/demo/events") => {
                w.counts.events += 1;
                let ev: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                respond(send, StatusCode::CREATED, &ev);
            }
            (&Method::PATCH, p)
                if p.starts_with("/apis/events.k8s.io/v1/namespaces/demo/events/") =>
            {
                w.counts.events += 1;
                let ev: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                respond(send, StatusCode::OK, &ev);
            }
            (m, p) => {
                eprintln!("bench-agent: unexpected request {m} {p}?{query}");
                respond(
                    send,
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", "not served by the bench"),
                );
            }
        }
    }
}
