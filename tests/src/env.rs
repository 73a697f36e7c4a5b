//! The environment every test of one process shares: the binaries, the CRDs,
//! Hoard's namespace, the webhook and its registration, the test nodes and
//! one agent per node.
//!
//! Set up once, by the first test that needs it ([`Env::get`]); a failure is
//! kept and reported to every later test instead of being retried.
//!
//! The processes run under a small `sh` guard that holds the read end of a
//! pipe whose write end only this process holds: when the test process ends,
//! however it ends, the guard sees end-of-file and sends SIGTERM to its
//! child. Cluster-scoped objects left by an earlier, killed run (labelled
//! [`E2E_LABEL`] with another run id) are swept at the next start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use tokio::sync::OnceCell;

use crate::{E2E_LABEL, FIELD_MANAGER};

/// Label that marks the suite's own Node objects (fake-kubelet mode); the
/// suite's DaemonSets select it.
pub const TEST_NODE_LABEL: &str = "hoard.dev/e2e-node";
/// Names of the Node objects the suite creates when the cluster has no kubelets.
pub const FAKE_NODES: [&str; 2] = ["hoard-e2e-node-a", "hoard-e2e-node-b"];
/// Objects of an earlier run younger than this may belong to a run still
/// going on (the suite finishes in well under 10 minutes); older ones are
/// swept.
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// Bound of every start-up wait (a binary becoming ready, a CRD established).
const STARTUP: Duration = Duration::from_secs(90);

/// One test node and its agent.
#[derive(Debug)]
pub struct TestNode {
    pub name: String,
    /// `--kubelet-root` of the node's agent.
    pub kubelet_root: PathBuf,
}

/// A process started by the suite.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Closing it (dropping the Env, or the process ending) stops the child.
    _guard: ChildStdin,
}

/// The shared environment.
pub struct Env {
    pub run_id: String,
    /// Hoard's namespace of this run (repository Secrets, the leader Lease).
    pub hoard_ns: String,
    pub kubeconfig: PathBuf,
    /// The agents' `--host-root`: repositories live under it.
    pub host_root: PathBuf,
    pub nodes: Vec<TestNode>,
    /// True when the suite plays scheduler and kubelet for its pods.
    pub fake_kubelet: bool,
    pub bin_dir: PathBuf,
    pub restic: PathBuf,
    pub webhook_url: String,
    /// MutatingWebhookConfiguration of this run.
    pub webhook_config: String,
    /// The kubeconfig the webhook runs with (its ServiceAccount's token).
    webhook_kubeconfig: PathBuf,
    logs: PathBuf,
    work_dir: PathBuf,
    procs: Mutex<Vec<Proc>>,
    /// Deletes the run's cluster objects when the test process ends.
    _janitor: Option<Proc>,
    _work: tempfile::TempDir,
}

static ENV: OnceCell<Result<Arc<Env>, String>> = OnceCell::const_new();

impl Env {
    /// The environment, set up by the first caller.
    pub async fn get(kubeconfig: PathBuf) -> anyhow::Result<Arc<Env>> {
        let r = ENV
            .get_or_init(|| async move { setup(kubeconfig).await.map_err(|e| format!("{e:#}")) })
            .await;
        match r {
            Ok(env) => Ok(env.clone()),
            Err(e) => anyhow::bail!("the e2e environment could not be set up: {e}"),
        }
    }

    /// A binary built from this workspace.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The last `lines` lines of every process's log, and which processes
    /// have exited.
    pub fn process_report(&self, lines: usize) -> String {
        let mut out = String::new();
        let Ok(mut procs) = self.procs.lock() else {
            return out;
        };
        for p in procs.iter_mut() {
            let state = match p.child.try_wait() {
                Ok(Some(st)) => format!("EXITED ({st})"),
                Ok(None) => "running".into(),
                Err(e) => format!("unknown ({e})"),
            };
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "--- {} ({state}), last {} lines of {}\n{}\n",
                p.name,
                tail.len(),
                p.log.display(),
                tail.join("\n")
            ));
        }
        out
    }
}

fn run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("r{secs}-{}", std::process::id())
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds `hoard-webhook`, `hoard` and `restore-wait` with the profile of
/// this test binary, or takes them from `HOARD_E2E_BIN_DIR`.
fn binaries() -> anyhow::Result<PathBuf> {
    let names = ["hoard-webhook", "hoard", "restore-wait"];
    if let Some(dir) = std::env::var_os("HOARD_E2E_BIN_DIR") {
        let dir = PathBuf::from(dir);
        for n in names {
            anyhow::ensure!(
                dir.join(n).is_file(),
                "HOARD_E2E_BIN_DIR={} has no {n}; build it with `cargo build -p webhook -p hoard -p restore-wait`",
                dir.display()
            );
        }
        return Ok(dir);
    }
    // This test binary is <target>/<profile>/deps/<name>-<hash>; the other
    // packages' binaries of the same profile land in <target>/<profile>.
    let exe = std::env::current_exe().context("cannot locate the test binary")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in <target>/<profile>/deps")?
        .to_path_buf();
    let target = dir.parent().context("no target directory")?;
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_dir())
        .args([
            "build",
            "-p",
            "webhook",
            "-p",
            "hoard",
            "-p",
            "restore-wait",
            "--bins",
        ])
        .env("CARGO_TARGET_DIR", target);
    if profile == "release" {
        cmd.arg("--release");
    } else if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    eprintln!("e2e: building hoard-webhook, hoard and restore-wait ({profile})");
    let st = cmd.status().context("cannot run cargo build")?;
    anyhow::ensure!(
        st.success(),
        "cargo build -p webhook -p hoard -p restore-wait failed ({st}); or set HOARD_E2E_BIN_DIR to prebuilt binaries"
    );
    Ok(dir)
}

fn free_port(host: &str) -> anyhow::Result<u16> {
    let l = TcpListener::bind((host, 0)).with_context(|| format!("cannot bind {host}:0"))?;
    Ok(l.local_addr()?.port())
}

/// Starts `bin args` under the guard described in the module docs.
fn spawn(
    name: &str,
    bin: &Path,
    args: &[String],
    envs: &[(&str, String)],
    logs: &Path,
) -> anyhow::Result<Proc> {
    let log = logs.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    // fd 3 keeps the pipe: the background list's own stdin is /dev/null.
    let guard =
        r#"exec 3<&0; "$@" <&- & c=$!; (read _ <&3; kill -TERM "$c" 2>/dev/null) & wait "$c""#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(guard)
        .arg("sh")
        .arg(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let guard = child.stdin.take().context("no stdin pipe")?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        log,
        _guard: guard,
    })
}

/// `kubectl <args>` (the first one `--kubeconfig=..`), then deletion of the
/// PersistentVolumes labelled `selector` and removal of the work directory
/// `work`, once the pipe closes (the test process ended).
fn janitor(args: &[String], selector: &str, logs: &Path, work: &Path) -> anyhow::Result<Proc> {
    let log = logs.join("janitor.log");
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(concat!(
            r#"read _; kubectl "$@"; "#,
            r#"kubectl "$1" delete persistentvolumes -l "$HOARD_E2E_SELECTOR" --ignore-not-found --wait=false; "#,
            r#"rm -rf -- "$HOARD_E2E_WORK""#
        ))
        .arg("sh")
        .args(args)
        .env("HOARD_E2E_WORK", work)
        .env("HOARD_E2E_SELECTOR", selector)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("cannot start the janitor")?;
    let guard = child.stdin.take().context("no stdin pipe")?;
    Ok(Proc {
        name: "janitor".into(),
        child,
        log,
        _guard: guard,
    })
}

/// Waits until `GET /ready` on `addr` answers 200, or the process exits.
async fn await_ready(p: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        if let Some(st) = p.child.try_wait()? {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            anyhow::bail!("{} exited ({st}) before it was ready:\n{log}", p.name);
        }
        let ok = tokio::task::spawn_blocking(move || {
            http_get(addr, "/ready").map(|(status, _)| status.contains(" 200"))
        })
        .await?;
        if matches!(ok, Ok(true)) {
            return Ok(());
        }
        if start.elapsed() > STARTUP {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            anyhow::bail!(
                "{} was not ready after {STARTUP:?} (GET http://{addr}/ready):\n{log}",
                p.name
            );
        }
    }
}

/// `GET <path>` over plain HTTP on `addr` (the admin ports): the status line
/// and the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((buf.as_str(), ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// A started `hoard-webhook`.
struct StartedWebhook {
    proc: Proc,
    /// `clientConfig.url` for the API server.
    url: String,
    bundle: certs::Bundle,
    admin: SocketAddr,
}

/// Starts `hoard-webhook` (logging to `<logs>/<name>.log`) on a free port of
/// the address the API server reaches (`HOARD_E2E_WEBHOOK_HOST`), with a CA
/// and serving certificate from the certs crate written into `tls_dir`, and
/// waits until it is ready. `pod_name` is its identity in the controllers'
/// leader election (Lease in `hoard_ns`).
async fn start_webhook(
    bin_dir: &Path,
    kubeconfig: &Path,
    hoard_ns: &str,
    pod_name: &str,
    tls_dir: &Path,
    logs: &Path,
    name: &str,
) -> anyhow::Result<StartedWebhook> {
    let host = std::env::var("HOARD_E2E_WEBHOOK_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let listen_host = if host == "127.0.0.1" {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let port = free_port(listen_host)?;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")?));
    let mut cfg = certs::CertsConfig::new(hoard_ns, "unused", "hoard-webhook", "unused");
    cfg.extra_sans = vec![host.clone()];
    let bundle = certs::Bundle::generate(&cfg, SystemTime::now())
        .context("cannot generate the webhook's certificates")?;
    certs::write_files(&bundle, tls_dir).context("cannot write the webhook's certificates")?;
    let mut webhook = spawn(
        name,
        &bin_dir.join("hoard-webhook"),
        &[
            format!("--listen={listen_host}:{port}"),
            format!("--admin-listen={admin}"),
            format!("--tls-dir={}", tls_dir.display()),
            "--manage-certs=false".into(),
            format!("--namespace={hoard_ns}"),
        ],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("POD_NAMESPACE", hoard_ns.to_owned()),
            ("POD_NAME", pod_name.to_owned()),
            ("RUST_LOG", log_filter()),
        ],
        logs,
    )?;
    await_ready(&mut webhook, admin).await?;
    Ok(StartedWebhook {
        proc: webhook,
        url: format!("https://{host}:{port}{}", api::keys::MUTATE_PODS_PATH),
        bundle,
        admin,
    })
}

/// A `hoard-webhook` of one test's own, beside the shared one (scenario 8b
/// stops it). It takes part in the shared controllers' leader election as a
/// follower, so only its admission server matters.
pub struct OwnWebhook {
    /// `clientConfig.url` for the API server.
    pub url: String,
    /// PEM of the CA that signed its serving certificate (`caBundle`).
    pub ca_pem: String,
    admin: SocketAddr,
    log: PathBuf,
    proc: Option<Proc>,
}

impl OwnWebhook {
    /// How many admission reviews it answered with `outcome` (its
    /// `hoard_webhook_reviews_total` counter).
    pub async fn reviews(&self, outcome: &str) -> anyhow::Result<u64> {
        let admin = self.admin;
        let (status, body) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
            .await?
            .with_context(|| format!("cannot read http://{admin}/metrics"))?;
        anyhow::ensure!(
            status.contains(" 200"),
            "GET http://{admin}/metrics: {status}"
        );
        let counter = crate::prometheus_value(
            &body,
            "hoard_webhook_reviews_total",
            &[("outcome", outcome)],
        );
        Ok(counter.unwrap_or(0.0) as u64)
    }

    /// Stops the process (SIGTERM, as Kubernetes stops a pod) and waits
    /// until it has exited: from then on nothing listens on its port.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(Proc {
            mut child, _guard, ..
        }) = self.proc.take()
        else {
            return Ok(());
        };
        drop(_guard);
        let st = tokio::time::timeout(STARTUP, tokio::task::spawn_blocking(move || child.wait()))
            .await
            .context("the webhook did not exit after SIGTERM")???;
        eprintln!("e2e: own webhook stopped ({st})");
        Ok(())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Env {
    /// Starts a `hoard-webhook` for one test (`name` names its log and
    /// certificates), with the shared webhook's credentials.
    pub async fn start_own_webhook(&self, name: &str) -> anyhow::Result<OwnWebhook> {
        let tls_dir = self.work_dir.join(format!("tls-{name}"));
        let started = start_webhook(
            &self.bin_dir,
            &self.webhook_kubeconfig,
            &self.hoard_ns,
            &format!("hoard-e2e-webhook-{}-{name}", self.run_id),
            &tls_dir,
            &self.logs,
            &format!("hoard-webhook-{name}"),
        )
        .await?;
        Ok(OwnWebhook {
            url: started.url,
            ca_pem: started.bundle.ca_cert_pem.clone(),
            admin: started.admin,
            log: started.proc.log.clone(),
            proc: Some(started.proc),
        })
    }
}

async fn setup(kubeconfig: PathBuf) -> anyhow::Result<Arc<Env>> {
    let run_id = run_id();
    let client = crate::client(&kubeconfig).await?;
    sweep(&client, &run_id).await;

    let bin_dir = tokio::task::spawn_blocking(binaries).await??;
    let restic = std::env::var_os("HOARD_E2E_RESTIC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/restic"));
    anyhow::ensure!(
        restic.is_file(),
        "{} not found: install restic (scripts/install-deps) or set HOARD_E2E_RESTIC",
        restic.display()
    );

    apply_crds(&client).await?;

    let hoard_ns = format!("hoard-e2e-{run_id}");
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": hoard_ns,
            "labels": { E2E_LABEL: run_id, api::keys::LABEL_WEBHOOK: api::keys::WEBHOOK_DISABLED },
        }
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("cannot create namespace {hoard_ns}"))?;

    let work = tempfile::Builder::new().prefix("hoard-e2e-").tempdir()?;
    let logs = work.path().join("logs");
    let host_root = work.path().join("host");
    std::fs::create_dir_all(&logs)?;
    std::fs::create_dir_all(host_root.join("repos"))?;

    let (fake_kubelet, node_names) = test_nodes(&client, &run_id).await?;
    let kubelet_root_real = std::env::var_os("HOARD_E2E_KUBELET_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kubelet"));
    let nodes: Vec<TestNode> = node_names
        .into_iter()
        .map(|name| TestNode {
            kubelet_root: if fake_kubelet {
                work.path().join("nodes").join(&name).join("kubelet")
            } else {
                kubelet_root_real.clone()
            },
            name,
        })
        .collect();
    for n in &nodes {
        if fake_kubelet {
            std::fs::create_dir_all(n.kubelet_root.join("pods"))?;
        } else {
            anyhow::ensure!(
                n.kubelet_root.join("pods").is_dir(),
                "the cluster has kubelets, but their pods directory {} is not on this machine: \
                 the local agents and the suite must see the kubelet's volumes. Run the suite on \
                 the node (HOARD_E2E_KUBELET_ROOT=<its kubelet root>), or let it play the kubelet \
                 on its own test nodes with HOARD_E2E_FAKE_KUBELET=1 (see tests/README.md)",
                n.kubelet_root.join("pods").display()
            );
        }
    }

    let mut procs = Vec::new();
    // The processes' credentials: the ServiceAccounts of manifests/base.
    let (webhook_kc, agent_kc) = if crate::rbac::admin_credentials() {
        (kubeconfig.clone(), kubeconfig.clone())
    } else {
        let manifests = workspace_dir().join("manifests");
        crate::rbac::apply_rbac(&client, &manifests, &hoard_ns, &run_id).await?;
        let dir = work.path();
        (
            crate::rbac::kubeconfig_for(&client, &kubeconfig, &hoard_ns, "hoard-webhook", dir)
                .await?,
            crate::rbac::kubeconfig_for(&client, &kubeconfig, &hoard_ns, "hoard-agent", dir)
                .await?,
        )
    };

    // The webhook, with a CA and serving certificate from the certs crate.
    let started = start_webhook(
        &bin_dir,
        &webhook_kc,
        &hoard_ns,
        &format!("hoard-e2e-webhook-{run_id}"),
        &work.path().join("tls"),
        &logs,
        "hoard-webhook",
    )
    .await?;
    let (webhook_url, bundle) = (started.url, started.bundle);
    procs.push(started.proc);
    let webhook_config = format!("hoard-e2e-{run_id}");
    register_webhook(&client, &webhook_config, &run_id, &webhook_url, &bundle).await?;

    for n in &nodes {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")?));
        let dir = work.path().join("nodes").join(&n.name);
        std::fs::create_dir_all(&dir)?;
        let mut agent = spawn(
            &format!("agent-{}", n.name),
            &bin_dir.join("hoard"),
            &[
                "agent".into(),
                format!("--node-name={}", n.name),
                format!("--kubelet-root={}", n.kubelet_root.display()),
                format!("--host-root={}", host_root.display()),
                format!("--namespace={hoard_ns}"),
                format!("--admin-listen={admin}"),
                format!(
                    "--termination-log={}",
                    dir.join("termination-log").display()
                ),
                "--progress-interval-secs=1".into(),
            ],
            &[
                ("KUBECONFIG", agent_kc.display().to_string()),
                ("POD_NAMESPACE", hoard_ns.clone()),
                ("RUST_LOG", log_filter()),
                ("HOARD_LOG", log_filter()),
            ],
            &logs,
        )?;
        await_ready(&mut agent, admin).await?;
        procs.push(agent);
    }
    // Statics are never dropped: the run's cluster objects are deleted by a
    // guarded kubectl once this process ends (what it cannot delete, the
    // next run sweeps).
    let janitor = if crate::keep() {
        None
    } else {
        let mut objects = vec![
            format!("mutatingwebhookconfiguration/{webhook_config}"),
            format!("namespace/{hoard_ns}"),
        ];
        for n in ["hoard-webhook", "hoard-agent"] {
            objects.push(format!("clusterrolebinding/{n}-{run_id}"));
            objects.push(format!("clusterrole/{n}-{run_id}"));
        }
        if fake_kubelet {
            objects.extend(nodes.iter().map(|n| format!("node/{}", n.name)));
        }
        let mut args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            "delete".into(),
            "--ignore-not-found".into(),
            "--wait=false".into(),
        ];
        args.extend(objects);
        janitor(&args, &format!("{E2E_LABEL}={run_id}"), &logs, work.path()).ok()
    };
    eprintln!(
        "e2e: run {run_id}: webhook {webhook_url}, nodes {:?} ({}), logs in {}",
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        if fake_kubelet {
            "the suite plays the kubelet"
        } else {
            "real kubelets"
        },
        logs.display()
    );

    Ok(Arc::new(Env {
        run_id,
        hoard_ns,
        kubeconfig,
        host_root,
        nodes,
        fake_kubelet,
        bin_dir,
        restic,
        webhook_url,
        webhook_config,
        webhook_kubeconfig: webhook_kc,
        logs,
        work_dir: work.path().to_path_buf(),
        procs: Mutex::new(procs),
        _janitor: janitor,
        _work: work,
    }))
}

fn log_filter() -> String {
    std::env::var("HOARD_E2E_LOG").unwrap_or_else(|_| "info".into())
}

/// Applies `manifests/crds.yaml` (server-side) and waits until every CRD is
/// Established.
async fn apply_crds(client: &Client) -> anyhow::Result<()> {
    let path = workspace_dir().join("manifests/crds.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        // Applied as written (a typed round trip would silently drop any
        // schema field k8s-openapi does not model).
        let crd: serde_json::Value = serde_json::to_value(&v)?;
        anyhow::ensure!(
            crd["kind"] == "CustomResourceDefinition",
            "{} holds a {}, not a CustomResourceDefinition",
            path.display(),
            crd["kind"]
        );
        let name = crd["metadata"]["name"]
            .as_str()
            .with_context(|| format!("a CRD in {} has no metadata.name", path.display()))?
            .to_owned();
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("cannot apply CRD {name}"))?;
        names.push(name);
    }
    anyhow::ensure!(!names.is_empty(), "{} holds no CRD", path.display());
    for name in names {
        tokio::time::timeout(
            STARTUP,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} was not Established within {STARTUP:?}"))??;
    }
    Ok(())
}

/// The nodes the tests run on. Without any Ready node the suite creates its
/// own Node objects and plays their kubelet (`HOARD_E2E_FAKE_KUBELET=1|0`
/// forces the choice).
async fn test_nodes(client: &Client, run_id: &str) -> anyhow::Result<(bool, Vec<String>)> {
    let api = Api::<Node>::all(client.clone());
    let nodes = api
        .list(&ListParams::default())
        .await
        .context("cannot list nodes")?;
    let ready: Vec<String> = nodes
        .items
        .iter()
        .filter(|n| !n.labels().contains_key(TEST_NODE_LABEL))
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|n| n.name_any())
        .collect();
    let fake = match std::env::var("HOARD_E2E_FAKE_KUBELET").as_deref() {
        Ok("1") | Ok("true") => true,
        Ok("0") | Ok("false") => false,
        _ => ready.is_empty(),
    };
    if !fake {
        anyhow::ensure!(
            !ready.is_empty(),
            "HOARD_E2E_FAKE_KUBELET=0 but no node is Ready"
        );
        // Label them so the suite's DaemonSets select exactly these.
        let names: Vec<String> = ready.into_iter().take(2).collect();
        for n in &names {
            let patch = serde_json::json!({"metadata": {"labels": {TEST_NODE_LABEL: "true"}}});
            api.patch(n, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("cannot label node {n}"))?;
        }
        return Ok((false, names));
    }
    for name in FAKE_NODES {
        let node = fake_node_body(name, run_id);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .with_context(|| format!("cannot create node {name}"))?;
        crate::kubelet::heartbeat(client, name).await?;
    }
    Ok((true, FAKE_NODES.iter().map(|s| s.to_string()).collect()))
}

/// A fake Node: labelled for the suite's DaemonSets, tainted so that only
/// the suite's pods (which tolerate it) land there should the cluster have
/// a scheduler after all.
fn fake_node_body(name: &str, run_id: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                E2E_LABEL: run_id,
                TEST_NODE_LABEL: "true",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            },
            "annotations": { "hoard.dev/e2e-fake": "the hoard e2e suite plays this node's kubelet" },
        },
        "spec": { "taints": [{ "key": TEST_NODE_LABEL, "value": "fake", "effect": "NoSchedule" }] },
    })
}

/// Registers the webhook for this run's test namespaces only.
async fn register_webhook(
    client: &Client,
    name: &str,
    run_id: &str,
    url: &str,
    bundle: &certs::Bundle,
) -> anyhow::Result<()> {
    let cfg = webhook_config_body(name, run_id, url, bundle.ca_cert_pem.as_bytes())?;
    let cfg: MutatingWebhookConfiguration = serde_json::from_value(cfg)?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cfg),
        )
        .await
        .context("cannot register the MutatingWebhookConfiguration")?;
    Ok(())
}

/// The run's MutatingWebhookConfiguration: by URL, with the CA, scoped to
/// the run's test namespaces; policy as in
/// manifests/base/webhook-configuration.yaml.
fn webhook_config_body(
    name: &str,
    run_id: &str,
    url: &str,
    ca_pem: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let ca = serde_json::to_value(ByteString(ca_pem.to_vec()))?;
    Ok(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": name, "labels": { E2E_LABEL: run_id } },
        "webhooks": [{
            "name": api::keys::WEBHOOK_PODS_NAME,
            "admissionReviewVersions": ["v1"],
            "clientConfig": { "url": url, "caBundle": ca },
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            // As in manifests/base/webhook-configuration.yaml.
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "sideEffects": "None",
            "matchPolicy": "Equivalent",
            "reinvocationPolicy": "Never",
            "namespaceSelector": {
                "matchLabels": { E2E_LABEL: run_id },
                "matchExpressions": [{
                    "key": api::keys::LABEL_WEBHOOK,
                    "operator": "NotIn",
                    "values": [api::keys::WEBHOOK_DISABLED],
                }],
            },
            "objectSelector": { "matchExpressions": [{
                "key": api::keys::LABEL_PART_OF,
                "operator": "NotIn",
                "values": [api::keys::PART_OF_HOARD],
            }] },
        }],
    }))
}

/// Deletes what killed runs left behind: labelled namespaces, webhook
/// configurations, cluster roles and bindings, nodes and PersistentVolumes of
/// other runs older than [`STALE_AFTER`].
async fn sweep(client: &Client, run_id: &str) {
    let lp = ListParams::default().labels(E2E_LABEL);
    let stale = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let other = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(E2E_LABEL))
            .is_some_and(|v| v != run_id);
        let old = meta.creation_timestamp.as_ref().is_some_and(|t| {
            let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
            age.as_secs() > STALE_AFTER.as_secs() as i64
        });
        other && old
    };
    let dp = DeleteParams::background();
    let nss = Api::<Namespace>::all(client.clone());
    if let Ok(list) = nss.list(&lp).await {
        for o in list.items.iter().filter(|o| stale(&o.metadata)) {
            let _ = nss.delete(&o.name_any(), &dp).await;
        }
    }
    let whs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    if let Ok(list) = whs.list(&lp).await {
        for o in list.items.iter().filter(|o| stale(&o.metadata)) {
            let _ = whs.delete(&o.name_any(), &dp).await;
        }
    }
    let crs = Api::<ClusterRole>::all(client.clone());
    if let Ok(list) = crs.list(&lp).await {
        for o in list.items.iter().filter(|o| stale(&o.metadata)) {
            let _ = crs.delete(&o.name_any(), &dp).await;
        }
    }
    let crbs = Api::<ClusterRoleBinding>::all(client.clone());
    if let Ok(list) = crbs.list(&lp).await {
        for o in list.items.iter().filter(|o| stale(&o.metadata)) {
            let _ = crbs.delete(&o.name_any(), &dp).await;
        }
    }
    let nodes = Api::<Node>::all(client.clone());
    if let Ok(list) = nodes.list(&lp).await {
        for o in list.items.iter().filter(|o| stale(&o.metadata)) {
            let _ = nodes.delete(&o.name_any(), &dp).await;
        }
    }
    let pvs = Api::<PersistentVolume>::all(client.clone());
    if let Ok(list) = pvs.list(&lp).await {
        for o in list.items.iter().filter(|o| stale(&o.metadata)) {
            let _ = pvs.delete(&o.name_any(), &dp).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_schema;

    #[test]
    fn node_and_webhook_bodies_are_what_the_schema_reads() {
        check_schema::<Node>(&fake_node_body("hoard-e2e-node-a", "r1")).unwrap();
        let cfg =
            webhook_config_body("hoard-e2e-r1", "r1", "https://127.0.0.1:9443/x", b"PEM").unwrap();
        check_schema::<MutatingWebhookConfiguration>(&cfg).unwrap();
    }

    /// The run's registration behaves as a real installation: the policy
    /// fields are the shipped ones.
    #[test]
    fn the_webhook_is_registered_with_the_shipped_policy() {
        let path = workspace_dir().join("manifests/base/webhook-configuration.yaml");
        let shipped: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ours = webhook_config_body("n", "r1", "https://127.0.0.1:1/x", b"PEM").unwrap();
        for field in [
            "failurePolicy",
            "timeoutSeconds",
            "sideEffects",
            "admissionReviewVersions",
            "rules",
        ] {
            assert_eq!(
                ours["webhooks"][0][field], shipped["webhooks"][0][field],
                "webhooks[0].{field}"
            );
        }
    }

    /// Without the guard a webhook or agent would outlive a killed test run
    /// (statics are never dropped) and hold its ports and watches.
    #[test]
    fn a_guarded_process_stops_when_its_pipe_closes() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = spawn(
            "sleeper",
            Path::new("sleep"),
            &["1000".into()],
            &[],
            dir.path(),
        )
        .unwrap();
        assert!(p.child.try_wait().unwrap().is_none(), "the child runs");
        let Proc {
            mut child, _guard, ..
        } = p;
        drop(_guard);
        let st = child.wait().unwrap();
        // sh reports the child's SIGTERM as 128+15.
        assert_eq!(st.code(), Some(143), "{st:?}");
    }

    /// A process that ends by itself is seen as exited (the readiness wait
    /// reports it with its log instead of waiting out the timeout).
    #[test]
    fn a_guarded_process_that_exits_is_seen_exited() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = spawn("false", Path::new("false"), &[], &[], dir.path()).unwrap();
        let st = p.child.wait().unwrap();
        assert_eq!(st.code(), Some(1));
    }
}
