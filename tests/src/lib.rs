//! End-to-end harness of Hoard (issue 8): drives the real binaries against a
//! real API server.
//!
//! Data flow of one test ([`run`]):
//!
//! ```text
//! KUBECONFIG / HOARD_E2E_KUBECONFIG ── unset ──> one skip line, return
//!        │ set
//!        v
//! Env (once per test process, env.rs): build hoard-webhook, hoard, restore-wait
//!   → apply manifests/crds.yaml, wait Established → Hoard namespace
//!   → hoard-webhook on <host>:<port> (certs crate) + MutatingWebhookConfiguration
//!     scoped to namespaces labelled hoard.dev/e2e=<run-id>
//!   → test nodes (fake: Node objects hoard-e2e-node-a/b) → one `hoard agent` each
//!        │
//!        v
//! per test: namespace hoard.dev/e2e=<run-id> → fake kubelet for its pods
//!   (kubelet.rs; only when the cluster has no kubelets) → scenario body
//!   → on failure: dump pods, sessions, events, process logs
//!   → delete the namespace (kept with HOARD_E2E_KEEP=1)
//! ```
//!
//! The processes are shared by every test of the process (tests run in
//! parallel threads, each with its own tokio runtime, so no `kube::Client`
//! is shared); each test works in its own namespace and its own repository,
//! so no test depends on another or on their order.

pub mod dump;
pub mod env;
pub mod kubelet;
pub mod rbac;
pub mod wait;
pub mod workloads;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount,
};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Client, Config, ResourceExt};

pub use env::Env;
pub use kubelet::FakeKubelet;

/// Label on every object the suite creates at cluster scope or as a
/// namespace; its value is the run id.
pub const E2E_LABEL: &str = "hoard.dev/e2e";
/// Label on the PersistentVolumes a test creates (cluster-scoped, so they
/// do not go with its namespace): the test's namespace.
pub const E2E_NAMESPACE_LABEL: &str = "hoard.dev/e2e-namespace";
/// Field manager of the suite's server-side applies.
pub const FIELD_MANAGER: &str = "hoard-e2e";
/// Password of every test repository.
pub const REPO_PASSWORD: &str = "hoard-e2e-password";
/// Name of the `Repository` each test namespace gets.
pub const REPO_NAME: &str = "local";

/// Bound of one scenario's body, setup of the shared environment excluded.
/// The slowest scenario (a schedule of every minute) needs about two
/// minutes; with the scenarios running in parallel (`--test-threads=10`,
/// they wait on the cluster, not the CPU) the suite stays under 10 minutes
/// even when every one of them hangs.
pub const TEST_LIMIT: Duration = Duration::from_secs(300);

/// The kubeconfig the suite uses, if any: `HOARD_E2E_KUBECONFIG` first, then
/// `KUBECONFIG`.
pub fn kubeconfig() -> Option<PathBuf> {
    ["HOARD_E2E_KUBECONFIG", "KUBECONFIG"]
        .into_iter()
        .filter_map(std::env::var_os)
        .find(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A client for the cluster the kubeconfig names.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    anyhow::ensure!(
        !kubeconfig.as_os_str().to_string_lossy().contains(':'),
        "KUBECONFIG={} lists several files; set HOARD_E2E_KUBECONFIG to the one naming the test cluster",
        kubeconfig.display()
    );
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read kubeconfig {}", kubeconfig.display()))?;
    let mut cfg = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| {
            format!(
                "kubeconfig {} names no usable cluster",
                kubeconfig.display()
            )
        })?;
    // Watches of the fake kubelet and of the waits stay open for minutes.
    cfg.read_timeout = Some(Duration::from_secs(295));
    Client::try_from(cfg).context("cannot build a Kubernetes client")
}

/// `HOARD_E2E_KEEP=1`: leave namespaces in place for inspection.
pub fn keep() -> bool {
    std::env::var("HOARD_E2E_KEEP").is_ok_and(|v| v == "1" || v == "true")
}

/// Everything a scenario needs.
pub struct TestCtx {
    pub client: Client,
    /// The test's namespace.
    pub ns: String,
    pub env: Arc<Env>,
    /// Present when the suite plays the kubelet (no kubelets in the cluster).
    pub kubelet: Option<FakeKubelet>,
}

impl TestCtx {
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Where the repository of this test lives on the (shared) host root.
    pub fn repo_dir(&self) -> PathBuf {
        self.env
            .host_root
            .join(self.repo_host_path().trim_start_matches('/'))
    }

    /// `backend.local.hostPath.path` of this test's repository.
    pub fn repo_host_path(&self) -> String {
        format!("/repos/{}", self.ns)
    }

    /// The directory of volume `volume` of `pod` on the node the pod runs
    /// on, as the agent of that node reads it.
    pub fn volume_dir(&self, pod: &Pod, volume: &str) -> anyhow::Result<PathBuf> {
        kubelet::volume_dir(&self.env, pod, volume)
    }

    /// Runs the stock `restic` against this test's repository.
    pub async fn restic(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(&self.env.restic)
            .arg("--repo")
            .arg(self.repo_dir())
            .arg("--no-cache")
            .args(args)
            .env("RESTIC_PASSWORD", REPO_PASSWORD)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.env.restic.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "restic {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Initializes this test's repository with the stock `restic` and creates
    /// its credentials Secret (in Hoard's namespace, allowed for this test's
    /// namespace only) and the `Repository` object named [`REPO_NAME`].
    pub async fn local_repository(&self, password: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.repo_dir().parent().unwrap_or(&self.env.host_root))?;
        self.restic(&["init"]).await?;
        let secret_name = format!("{}-repo", self.ns);
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": secret_name,
                "labels": { E2E_LABEL: self.env.run_id },
                "annotations": { api::keys::ANNOTATION_ALLOWED_NAMESPACES: self.ns },
            },
            "stringData": { "RESTIC_PASSWORD": password },
        }))?;
        Api::<Secret>::namespaced(self.client.clone(), &self.env.hoard_ns)
            .create(&PostParams::default(), &secret)
            .await
            .context("cannot create the repository Secret")?;
        let repo: api::Repository = serde_json::from_value(serde_json::json!({
            "apiVersion": "hoard.dev/v1beta1",
            "kind": "Repository",
            "metadata": { "name": REPO_NAME },
            "spec": { "backend": {
                "storageSecretName": secret_name,
                "local": { "hostPath": { "path": self.repo_host_path() } },
            } },
        }))?;
        self.api::<api::Repository>()
            .create(&PostParams::default(), &repo)
            .await
            .context("cannot create the Repository")?;
        Ok(())
    }
}

impl TestCtx {
    /// Claim `name` in this test's namespace, bound to a local PV on the
    /// first test node whose directory is returned (what an application
    /// writes into the claim lands there).
    ///
    /// Neither a bare control plane nor the fake kubelet has a volume
    /// provisioner, so the PV is created here and pre-bound both ways
    /// (`claimRef` on the PV, `volumeName` on the claim, both with
    /// `storageClassName: ""` so no default class is filled in); the PV
    /// binder of kube-controller-manager then binds them, which is awaited.
    /// A local PV (not hostPath) because the kubelet mounts it under the
    /// pod's `volumes/kubernetes.io~local-volume/<pv>`, where Hoard's agent
    /// finds claims; the PV carries the node affinity a local PV requires,
    /// so the pods that mount it go to that node.
    pub async fn local_claim(&self, name: &str) -> anyhow::Result<PathBuf> {
        let node = self
            .env
            .nodes
            .first()
            .context("the environment has no test node")?;
        let hostname = Api::<Node>::all(self.client.clone())
            .get(&node.name)
            .await
            .with_context(|| format!("cannot read node {}", node.name))?
            .labels()
            .get("kubernetes.io/hostname")
            .cloned()
            .unwrap_or_else(|| node.name.clone());
        let dir = self.env.host_root.join("pvs").join(&self.ns).join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let pv_name = format!("{}-{name}", self.ns);
        let pv: PersistentVolume = serde_json::from_value(local_pv_body(
            &self.env.run_id,
            &self.ns,
            name,
            &pv_name,
            &dir,
            &hostname,
        ))?;
        Api::<PersistentVolume>::all(self.client.clone())
            .create(&PostParams::default(), &pv)
            .await
            .with_context(|| format!("cannot create PersistentVolume {pv_name}"))?;
        let pvc: PersistentVolumeClaim = serde_json::from_value(local_pvc_body(name, &pv_name))?;
        self.api::<PersistentVolumeClaim>()
            .create(&PostParams::default(), &pvc)
            .await
            .with_context(|| format!("cannot create PersistentVolumeClaim {name}"))?;
        let limit = Duration::from_secs(60);
        wait::object(
            self.api::<PersistentVolumeClaim>(),
            name,
            &format!(
                "claim {name} to be Bound to PV {pv_name} (by kube-controller-manager's persistentvolume-binder controller; is it running?)"
            ),
            limit,
            |c: &PersistentVolumeClaim| {
                c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
            },
        )
        .await?;
        Ok(dir)
    }
}

/// A local PV at `dir` on the node labelled `kubernetes.io/hostname=<hostname>`,
/// pre-bound to claim `ns/claim`.
fn local_pv_body(
    run_id: &str,
    ns: &str,
    claim: &str,
    pv_name: &str,
    dir: &Path,
    hostname: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "labels": { E2E_LABEL: run_id, E2E_NAMESPACE_LABEL: ns },
        },
        "spec": {
            "capacity": { "storage": "1Gi" },
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "local": { "path": dir.display().to_string() },
            "nodeAffinity": { "required": { "nodeSelectorTerms": [{ "matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": [hostname],
            }] }] } },
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": ns, "name": claim,
            },
        },
    })
}

/// Claim `name`, pre-bound to PV `pv_name` (no storage class, so no
/// default one is filled in and no provisioner is asked).
fn local_pvc_body(name: &str, pv_name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": name },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "storageClassName": "",
            "volumeName": pv_name,
            "resources": { "requests": { "storage": "1Gi" } },
        },
    })
}

/// Test helper: `doc` survives a round trip through the k8s-openapi type `T`
/// (the v1.36 schema): every field it sets comes back with the same value.
/// A misspelled or unknown field would fail here; the API server would drop
/// it silently (field validation is `Warn` by default), and the object would
/// not be what the suite meant.
#[cfg(test)]
pub(crate) fn check_schema<T>(doc: &serde_json::Value) -> Result<(), String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    use serde_json::Value;
    fn subset(want: &Value, got: &Value, path: &str, errs: &mut Vec<String>) {
        match (want, got) {
            (Value::Object(w), Value::Object(g)) => {
                for (k, v) in w {
                    match g.get(k) {
                        Some(gv) => subset(v, gv, &format!("{path}.{k}"), errs),
                        None => errs.push(format!("{path}.{k} is not in the schema")),
                    }
                }
            }
            (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
                for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                    subset(wv, gv, &format!("{path}[{i}]"), errs);
                }
            }
            _ if want == got => {}
            _ => errs.push(format!("{path}: sent {want}, the schema reads {got}")),
        }
    }
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut errs = Vec::new();
    subset(doc, &back, "", &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// The sum of the samples of counter `name` in a Prometheus text exposition
/// whose labels include every pair of `labels`; `None` when there is none.
pub fn prometheus_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    /// `k="v",k2="v2"` into pairs (values unescaped).
    fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut rest = s.trim();
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"")?;
            let mut v = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => v.push('\n'),
                        c => v.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => v.push(c),
                }
            };
            out.push((k.trim().to_owned(), v));
            rest = after[end + 1..].trim_start_matches(',').trim();
        }
        Some(out)
    }
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (series, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some((l, v)) = rest.rsplit_once('}') else {
                continue;
            };
            let Some(series) = parse_labels(l) else {
                continue;
            };
            (series, v)
        } else if rest.starts_with(' ') {
            (Vec::new(), rest)
        } else {
            continue; // another metric whose name starts with `name`
        };
        let matches = labels
            .iter()
            .all(|(k, v)| series.iter().any(|(sk, sv)| sk == k && sv == v));
        let value = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let (true, Some(v)) = (matches, value) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Runs one scenario: skips (one line) without a cluster; otherwise sets up
/// the shared environment and a fresh namespace, runs `body`, dumps what the
/// test made when it fails, and deletes the namespace.
pub async fn run<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Arc<TestCtx>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let Some(kubeconfig) = kubeconfig() else {
        println!(
            "e2e {name}: skipped: set KUBECONFIG or HOARD_E2E_KUBECONFIG to a cluster to run it (see tests/README.md)"
        );
        return;
    };
    if let Err(e) = run_inner(name, &kubeconfig, body).await {
        panic!("e2e {name} failed: {e:#}");
    }
}

async fn run_inner<F, Fut>(name: &str, kubeconfig: &Path, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<TestCtx>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let env = Env::get(kubeconfig.to_path_buf()).await?;
    let client = client(kubeconfig).await?;
    let ns = create_namespace(&client, &env, name).await?;
    let kubelet = if env.fake_kubelet {
        Some(FakeKubelet::start(client.clone(), env.clone(), ns.clone()))
    } else {
        None
    };
    let ctx = Arc::new(TestCtx {
        client: client.clone(),
        ns: ns.clone(),
        env: env.clone(),
        kubelet,
    });
    // A panic in the body (an assert!) ends up here as a JoinError, so the
    // dump and the cleanup run either way.
    let mut task = tokio::spawn(body(ctx.clone()));
    let outcome = match tokio::time::timeout(TEST_LIMIT, &mut task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(anyhow::anyhow!("the test panicked: {e}")),
        Err(_) => {
            task.abort();
            Err(anyhow::anyhow!(
                "the scenario did not finish within {TEST_LIMIT:?} (each of its waits is bounded, \
                 their sum is not); the dump below shows where it stood"
            ))
        }
    };
    if let Err(e) = &outcome {
        eprintln!("e2e {name} in namespace {ns} failed: {e:#}");
        dump::dump(&ctx).await;
    }
    if let Some(k) = &ctx.kubelet {
        k.stop();
    }
    cleanup(&client, &env, &ns).await;
    outcome
}

async fn create_namespace(client: &Client, env: &Env, test: &str) -> anyhow::Result<String> {
    let base: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {
            "generateName": format!("e2e-{}-", base.trim_matches('-')),
            "labels": { E2E_LABEL: env.run_id },
        }
    }))?;
    let created = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .context("cannot create the test namespace")?;
    let name = created
        .metadata
        .name
        .context("the API server returned a namespace without a name")?;
    // Pods are refused until the service account controller has created the
    // namespace's default ServiceAccount.
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &name);
    let limit = Duration::from_secs(60);
    tokio::time::timeout(
        limit,
        await_condition(sas, "default", |sa: Option<&ServiceAccount>| sa.is_some()),
    )
    .await
    .with_context(|| {
        format!(
            "namespace {name} got no default ServiceAccount within {limit:?}; is kube-controller-manager running (with --service-account-private-key-file)?"
        )
    })??;
    Ok(name)
}

async fn cleanup(client: &Client, env: &Env, ns: &str) {
    if keep() {
        eprintln!("HOARD_E2E_KEEP=1: namespace {ns} is kept");
        return;
    }
    let secret = format!("{ns}-repo");
    let _ = Api::<Secret>::namespaced(client.clone(), &env.hoard_ns)
        .delete(&secret, &DeleteParams::default())
        .await;
    if let Err(e) = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::background())
        .await
    {
        eprintln!("cannot delete namespace {ns}: {e}; delete it with kubectl delete ns {ns}");
    }
    // Without a kubelet, a bound pod with a grace period stays Terminating
    // (and with it the namespace) until something deletes it with a zero
    // grace period, as a kubelet does once its containers are gone. The
    // namespace is Terminating now, so no new pod can be created in it.
    if env.fake_kubelet {
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for p in list.items {
                let _ = pods.delete(&p.name_any(), &now).await;
            }
        }
    }
    // PVs are cluster-scoped; the claims go with the namespace, then the PV
    // protection finalizer lets these go.
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let lp = ListParams::default().labels(&format!("{E2E_NAMESPACE_LABEL}={ns}"));
    if let Ok(list) = pvs.list(&lp).await {
        for pv in list.items {
            let _ = pvs
                .delete(&pv.name_any(), &DeleteParams::background())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pre_bound_local_pv_and_claim_are_what_the_schema_reads() {
        let pv = local_pv_body(
            "r1",
            "ns1",
            "data",
            "ns1-data",
            Path::new("/srv/x"),
            "node-a",
        );
        check_schema::<PersistentVolume>(&pv).unwrap();
        let pvc = local_pvc_body("data", "ns1-data");
        check_schema::<PersistentVolumeClaim>(&pvc).unwrap();
        // the two halves of the pre-binding name each other
        assert_eq!(pv["spec"]["claimRef"]["name"], pvc["metadata"]["name"]);
        assert_eq!(pvc["spec"]["volumeName"], pv["metadata"]["name"]);
        assert_eq!(
            pv["spec"]["storageClassName"],
            pvc["spec"]["storageClassName"]
        );
    }

    #[test]
    fn prometheus_counters_are_read_by_name_and_labels() {
        let text = r#"# HELP apiserver_admission_webhook_fail_open_count Admission webhook fail open count.
# TYPE apiserver_admission_webhook_fail_open_count counter
apiserver_admission_webhook_fail_open_count{name="a.down.hoard.dev",type="admit"} 3
apiserver_admission_webhook_fail_open_count{name="b.hoard.dev",type="admit"} 7
apiserver_admission_webhook_fail_open_count_other{name="a.down.hoard.dev",type="admit"} 100
hoard_webhook_reviews_total{outcome="patched-backup"} 2
hoard_webhook_reviews_total{outcome="skip\"ped,x"} 5
hoard_webhook_panics_total 1
"#;
        let fail_open = "apiserver_admission_webhook_fail_open_count";
        let a = [("name", "a.down.hoard.dev"), ("type", "admit")];
        assert_eq!(prometheus_value(text, fail_open, &a), Some(3.0));
        assert_eq!(prometheus_value(text, fail_open, &[]), Some(10.0));
        let c = [("name", "c.hoard.dev")];
        assert_eq!(prometheus_value(text, fail_open, &c), None);
        let reviews = "hoard_webhook_reviews_total";
        let patched = [("outcome", "patched-backup")];
        assert_eq!(prometheus_value(text, reviews, &patched), Some(2.0));
        let odd = [("outcome", "skip\"ped,x")];
        assert_eq!(prometheus_value(text, reviews, &odd), Some(5.0));
        let panics = "hoard_webhook_panics_total";
        assert_eq!(prometheus_value(text, panics, &[]), Some(1.0));
    }

    #[test]
    fn the_schema_check_catches_a_misspelled_field() {
        let bad = serde_json::json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": "x" }, "spec": { "volumename": "pv" } });
        let err = check_schema::<PersistentVolumeClaim>(&bad).unwrap_err();
        assert!(err.contains(".spec.volumename"), "{err}");
    }
}
