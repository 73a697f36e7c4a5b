//! The agent against a mocked API server (`tower_test::mock::pair` →
//! `kube::Client::new`): the server side answers as the API server would —
//! it keeps the session object, applies JSON patches to it (rejecting a
//! failed `test` with 422), bumps `resourceVersion` — and asserts every
//! request the agent makes. Real directories in a kubelet-shaped temp dir,
//! a real local repository.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use engine::{InitOptions, KdfParams, LocalBackend, Repository};
use nodeagent::agent::Agent;
use nodeagent::metrics::Metrics;
use nodeagent::volumes::Kubelet;

#[path = "../../engine/tests/moto/mod.rs"]
mod moto;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PASSWORD: &str = "mock-test-password";

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, code: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn status_422(msg: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": msg,
           "reason": "Invalid", "code": 422})
}

#[derive(Default)]
struct World {
    config: Value,
    /// `Some(node)`: pod lists must be scoped to that node.
    node_scoped: Option<String>,
    /// e.g. `backupsessions/bs-1`
    session_path: String,
    pods: Vec<Value>,
    /// inject another agent's write before the first PATCH
    inject_conflict: bool,
    session: Value,
    rv: u64,
    /// (method, path) of every request, in order.
    log: Vec<(String, String)>,
    events: Vec<String>,
    conflicts_injected: bool,
    /// The `Repository` the configuration names (served by name).
    repository: Value,
    /// Its credentials Secret in hoard-system (served by name).
    secret: Value,
    /// Finishing events (not `...Started`) to see before the server stops,
    /// beyond the first.
    extra_final_events: usize,
    final_events_seen: usize,
    /// Told every event reason as it is posted.
    event_tx: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// (event name, reason) of posted events, for series updates (PATCH).
    event_names: Vec<(String, String)>,
    /// Other `BackupSession`s of the configuration, listed beside `session`.
    siblings: Vec<Value>,
}

/// `Recovery` is v1alpha1, the sessions v1beta1.
fn session_version(session_path: &str) -> &'static str {
    if session_path.starts_with("recoveries/") {
        "v1alpha1"
    } else {
        "v1beta1"
    }
}

fn local_repository() -> Value {
    json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "Repository",
        "metadata": {"name": "local-repo", "namespace": "demo"},
        "spec": {"backend": {"storageSecretName": "repo-secret",
            "local": {"hostPath": {"path": "/var/hoard/repo"}, "mountPath": "/repo"}}}
    })
}

/// `repo-secret` in hoard-system with the password and `extra` keys, usable
/// from namespace demo.
fn repo_secret(extra: &[(&str, &str)]) -> Value {
    use base64::Engine as _;
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let mut data = serde_json::Map::new();
    data.insert("RESTIC_PASSWORD".into(), json!(b64(PASSWORD)));
    for (k, v) in extra {
        data.insert(k.to_string(), json!(b64(v)));
    }
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "repo-secret", "namespace": "hoard-system",
            "annotations": {"hoard.dev/allowed-namespaces": "demo"}},
        "data": data
    })
}

fn config() -> Value {
    json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupConfiguration",
        "metadata": {"name": "ss-backup", "namespace": "demo", "uid": "cfg-uid"},
        "spec": {
            "repository": {"name": "local-repo"},
            "target": {
                "ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web"},
                "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]
            },
            "runtimeSettings": {"container": {"nice": {"adjustment": 5}, "ionice": {"class": 2, "classData": 6}}}
        }
    })
}

fn pod(name: &str, uid: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": uid,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "sts", "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}],
                 "volumes": [{"name": "data", "emptyDir": {}}]},
        "status": {"phase": "Running"}
    })
}

/// Answers requests until the session shows host-0 finished and the
/// success/failure event was posted.
async fn api_server(mut handle: Handle, world: Arc<std::sync::Mutex<World>>) {
    loop {
        // The agent dropped its client: whatever it did is in the log.
        let Some((req, send)) = handle.next_request().await else {
            return;
        };
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let merge = req
            .headers()
            .get("content-type")
            .is_some_and(|c| c.as_bytes() == b"application/merge-patch+json");
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        let mut w = world.lock().unwrap();
        w.log.push((method.to_string(), path.clone()));
        let done = match (method.clone(), path.as_str()) {
            (
                Method::GET,
                "/apis/hoard.dev/v1beta1/namespaces/demo/backupconfigurations/ss-backup",
            ) => {
                let cfg = w.config.clone();
                respond(send, StatusCode::OK, cfg);
                false
            }
            (Method::GET, "/apis/hoard.dev/v1beta1/namespaces/demo/backupsessions") => {
                assert!(
                    query.contains("fieldSelector=spec.invoker.name%3Dss-backup"),
                    "the configuration's sessions are listed by invoker: {query}"
                );
                let mut items = w.siblings.clone();
                if w.session_path.starts_with("backupsessions/") {
                    items.push(w.session.clone());
                }
                respond(
                    send,
                    StatusCode::OK,
                    json!({
                        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSessionList",
                        "metadata": {"resourceVersion": "5"}, "items": items
                    }),
                );
                false
            }
            (Method::GET, "/api/v1/namespaces/demo/persistentvolumeclaims/shared") => {
                respond(
                    send,
                    StatusCode::OK,
                    json!({
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "shared", "namespace": "demo"},
                        "spec": {"volumeName": "pv-shared"}
                    }),
                );
                false
            }
            (Method::GET, "/api/v1/namespaces/demo/pods") => {
                if let Some(node) = &w.node_scoped {
                    assert!(
                        query.contains(&format!("fieldSelector=spec.nodeName%3D{node}")),
                        "StatefulSet pods are listed for this node only: {query}"
                    );
                } else {
                    assert!(
                        !query.contains("fieldSelector"),
                        "host-0 is chosen among all the workload's pods: {query}"
                    );
                }
                respond(
                    send,
                    StatusCode::OK,
                    json!({
                        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"},
                        "items": w.pods.clone()
                    }),
                );
                false
            }
            (Method::GET, p)
                if Some(p)
                    == w.repository["metadata"]["name"]
                        .as_str()
                        .map(|n| {
                            format!("/apis/hoard.dev/v1beta1/namespaces/demo/repositories/{n}")
                        })
                        .as_deref() =>
            {
                let r = w.repository.clone();
                respond(send, StatusCode::OK, r);
                false
            }
            (Method::GET, p)
                if Some(p)
                    == w.secret["metadata"]["name"]
                        .as_str()
                        .map(|n| format!("/api/v1/namespaces/hoard-system/secrets/{n}"))
                        .as_deref() =>
            {
                let s = w.secret.clone();
                respond(send, StatusCode::OK, s);
                false
            }
            (Method::GET, p)
                if p == format!(
                    "/apis/hoard.dev/{}/namespaces/demo/{}/status",
                    session_version(&w.session_path),
                    w.session_path
                ) =>
            {
                let s = w.session.clone();
                respond(send, StatusCode::OK, s);
                false
            }
            (Method::PATCH, p)
                if p == format!(
                    "/apis/hoard.dev/{}/namespaces/demo/{}/status",
                    session_version(&w.session_path),
                    w.session_path
                ) =>
            {
                if merge {
                    let patch: Value = serde_json::from_slice(&body).unwrap();
                    json_patch::merge(&mut w.session, &patch);
                    w.rv += 1;
                    let rv = w.rv.to_string();
                    w.session["metadata"]["resourceVersion"] = json!(rv);
                    let s = w.session.clone();
                    respond(send, StatusCode::OK, s);
                    continue;
                }
                let patch: json_patch::Patch = serde_json::from_slice(&body).expect("a JSON patch");
                if w.inject_conflict && !w.conflicts_injected {
                    // another node's agent writes host-2 just before us
                    w.conflicts_injected = true;
                    w.rv += 1;
                    let rv = w.rv.to_string();
                    w.session["metadata"]["resourceVersion"] = json!(rv);
                    w.session["status"]["stats"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"hostname": "host-2", "phase": "Running"}));
                }
                let mut next = w.session.clone();
                match json_patch::patch(&mut next, &patch) {
                    Ok(()) => {
                        w.rv += 1;
                        next["metadata"]["resourceVersion"] = json!(w.rv.to_string());
                        w.session = next.clone();
                        respond(send, StatusCode::OK, next);
                    }
                    Err(e) => respond(
                        send,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        status_422(&e.to_string()),
                    ),
                }
                false
            }
            (Method::POST, "/apis/events.k8s.io/v1/namespaces/demo/events") => {
                let ev: Value = serde_json::from_slice(&body).unwrap();
                let session_name = w.session_path.rsplit('/').next().unwrap().to_string();
                // events are about the session, or (integrity) its Repository
                let about = if ev["regarding"]["kind"] == "Repository" {
                    w.repository["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .to_string()
                } else {
                    session_name
                };
                assert_eq!(ev["regarding"]["name"], about.as_str());
                assert_eq!(ev["reportingController"], "hoard-agent");
                let reason = ev["reason"].as_str().unwrap().to_string();
                let ev_name = ev["metadata"]["name"].as_str().unwrap_or("").to_string();
                w.event_names.push((ev_name, reason.clone()));
                w.events.push(reason.clone());
                if let Some(tx) = &w.event_tx {
                    let _ = tx.send(reason.clone());
                }
                respond(send, StatusCode::CREATED, ev);
                if !reason.ends_with("Started") {
                    w.final_events_seen += 1;
                }
                w.final_events_seen > w.extra_final_events
            }
            // the recorder turns a repeated reason into a series: a PATCH
            (Method::PATCH, p)
                if p.starts_with("/apis/events.k8s.io/v1/namespaces/demo/events/") =>
            {
                let ev_name = p.rsplit('/').next().unwrap_or("").to_string();
                let reason = w
                    .event_names
                    .iter()
                    .find(|(n, _)| *n == ev_name)
                    .map(|(_, r)| r.clone())
                    .expect("a series update of a posted event");
                w.events.push(reason.clone());
                if let Some(tx) = &w.event_tx {
                    let _ = tx.send(reason.clone());
                }
                let ev: Value = serde_json::from_slice(&body).unwrap();
                respond(send, StatusCode::OK, ev);
                if !reason.ends_with("Started") {
                    w.final_events_seen += 1;
                }
                w.final_events_seen > w.extra_final_events
            }
            (Method::PATCH, p)
                if Some(p)
                    == w.repository["metadata"]["name"]
                        .as_str()
                        .map(|n| {
                            format!(
                                "/apis/hoard.dev/v1beta1/namespaces/demo/repositories/{n}/status"
                            )
                        })
                        .as_deref() =>
            {
                assert!(merge, "the Repository status is merge-patched");
                let patch: Value = serde_json::from_slice(&body).unwrap();
                json_patch::merge(&mut w.repository, &patch);
                let r = w.repository.clone();
                respond(send, StatusCode::OK, r);
                false
            }
            (m, p) => panic!("unexpected request {m} {p}?{query}"),
        };
        if done {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_session_host_status_merges_with_other_agents() {
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    let data = kroot.join("pods/uid-0/volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("a"), "alpha").unwrap();
    std::fs::write(data.join("sub/b"), "beta".repeat(1000)).unwrap();
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();

    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root.clone());
    let metrics = Metrics::new();
    let agent = Agent::new(
        client,
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        1,
        metrics.clone(),
        Duration::from_secs(3600),
    );
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "10"},
        "spec": {"invoker": {"apiGroup": "hoard.dev", "kind": "BackupConfiguration", "name": "ss-backup"}},
        "status": {"phase": "Running", "stats": [{"hostname": "host-1", "phase": "Succeeded"}]}
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: config(),
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        inject_conflict: true,
        session: session.clone(),
        rv: 10,
        log: vec![],
        events: vec![],
        conflicts_injected: false,
        repository: local_repository(),
        secret: repo_secret(&[]),
        ..Default::default()
    }));
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("the agent finished the host within the deadline")
        .unwrap();

    let w = world.lock().unwrap();
    let stats = w.session["status"]["stats"].as_array().unwrap().clone();
    let hosts: Vec<&str> = stats
        .iter()
        .map(|s| s["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        ["host-1", "host-2", "host-0"],
        "no agent's entry is lost"
    );
    let h0 = &stats[2];
    assert_eq!(h0["phase"], "Succeeded", "{h0}");
    assert_eq!(h0["target"]["kind"], "StatefulSet");
    assert_eq!(h0["snapshots"][0]["path"], "/source/data");
    assert_eq!(h0["snapshots"][0]["fileStats"]["new"], 2);
    assert!(h0.get("error").is_none());
    assert_eq!(w.events, ["HostBackupStarted", "HostBackupSucceeded"]);
    // the 422 from the stale `test` made the agent re-read and retry
    let patches = w.log.iter().filter(|(m, _)| m == "PATCH").count();
    assert_eq!(
        patches, 3,
        "Running (rejected once, retried), then Succeeded"
    );
    // Secrets are read only from hoard-system
    assert!(
        w.log
            .iter()
            .filter(|(_, p)| p.contains("/secrets/"))
            .all(|(_, p)| p.starts_with("/api/v1/namespaces/hoard-system/"))
    );
    drop(w);

    // the repository holds host-0's snapshot at its mount path
    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD).unwrap();
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].1.hostname, "host-0");
    assert_eq!(snaps[0].1.paths, ["/source/data"]);
    assert!(
        snaps[0]
            .1
            .tags
            .contains(&"target=StatefulSet/web".to_string())
    );

    // metrics were recorded for the host
    let text = metrics.encode();
    assert!(text.contains(
        "hoard_agent_files_total{host=\"host-0\",namespace=\"demo\",state=\"new\",target=\"StatefulSet/web\"} 2"
    ), "{text}");
    assert!(text.contains("hoard_agent_transfer_duration_seconds_count{host=\"host-0\",namespace=\"demo\",op=\"backup\",target=\"StatefulSet/web\"} 1"));
}

#[tokio::test]
async fn missing_crds_give_one_clear_error() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let agent = Agent::new(
        client,
        "node-a".into(),
        "hoard-system".into(),
        Kubelet::new("/nonexistent"),
        1,
        Metrics::new(),
        Duration::from_secs(5),
    );
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), "/apis/hoard.dev/v1beta1/backupsessions");
        respond(
            send,
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404}),
        );
    });
    let e = agent.check_crds().await.unwrap_err();
    server.await.unwrap();
    assert_eq!(
        e.to_string(),
        "the hoard.dev custom resources are not installed (BackupSession not served by the API server); install them with `kubectl apply -f manifests/install.yaml`"
    );
}

/// A pod of a new StatefulSet held by the restore init-container on this
/// node: the agent restores host-1's backup into it (seed 001's rule for
/// host-3), writes the done marker, the status entry and the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_session_restores_a_held_pod_and_releases_it() {
    use nodeagent::work::{HostProgress, HostVolume, TransferSettings, run_backup_host};
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    let repo = Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    // host-1's earlier backup
    let src = t.path().join("old-web-1");
    std::fs::create_dir_all(src.join("db")).unwrap();
    std::fs::write(src.join("db/rows"), "host-1 rows").unwrap();
    let r = run_backup_host(
        &repo,
        "host-1",
        &[HostVolume {
            volume: "data".into(),
            snapshot_path: "/source/data".into(),
            dir: nodeagent::beneath::SecureDir::open_root(&src).unwrap(),
        }],
        &TransferSettings::default(),
        &HostProgress::default(),
    );
    assert!(r.error.is_none());
    drop(repo);

    // the held pod recovered-3 (host-3) on node-a
    let vols = kroot.join("pods/uid-r3/volumes/kubernetes.io~empty-dir");
    std::fs::create_dir_all(vols.join("data")).unwrap();
    std::fs::create_dir_all(vols.join("hoard-restore-status")).unwrap();
    let held = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "recovered-3", "namespace": "demo", "uid": "uid-r3",
            "annotations": {"hoard.dev/restore-session": "rs-1"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "recovered", "uid": "sts", "controller": true}]},
        "spec": {"nodeName": "node-a",
            "initContainers": [{"name": "hoard-restore-wait", "image": "x"}],
            "containers": [{"name": "app", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "hoard-restore-status", "emptyDir": {}}]},
        "status": {"phase": "Pending"}
    });
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "RestoreSession",
        "metadata": {"name": "rs-1", "namespace": "demo", "uid": "rs-uid", "resourceVersion": "3"},
        "spec": {
            "repository": {"name": "local-repo"},
            "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "recovered"},
                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
            "rules": [
                {"targetHosts": ["host-3", "host-4"], "sourceHost": "host-1", "paths": ["/source/data"]},
                {"targetHosts": [], "sourceHost": "", "paths": ["/source/data"]}
            ],
            "runtimeSettings": {"container": {"nice": {"adjustment": 5}, "ionice": {"class": 2, "classData": 4}}}
        }
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: Value::Null,
        node_scoped: Some("node-a".into()),
        session_path: "restoresessions/rs-1".into(),
        pods: vec![held],
        inject_conflict: false,
        session: session.clone(),
        rv: 3,
        log: vec![],
        events: vec![],
        conflicts_injected: false,
        repository: local_repository(),
        secret: repo_secret(&[]),
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root.clone());
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let rs: api::RestoreSession = serde_json::from_value(session).unwrap();
    agent.handle_restore_session(rs).await.unwrap();
    if tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .is_err()
    {
        panic!(
            "restore did not finish; requests: {:?}",
            world.lock().unwrap().log
        );
    }

    assert_eq!(
        std::fs::read_to_string(vols.join("data/db/rows")).unwrap(),
        "host-1 rows"
    );
    assert!(vols.join("hoard-restore-status/rs-uid/done").is_file());
    let w = world.lock().unwrap();
    assert_eq!(w.events, ["HostRestoreStarted", "HostRestoreSucceeded"]);
    let stats = w.session["status"]["stats"].as_array().unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0]["hostname"], "host-3");
    assert_eq!(stats[0]["phase"], "Succeeded");
    // the RestoreSession names no other objects: no other request was made
    // (the api_server panics on any unexpected one)
    assert!(
        w.log
            .iter()
            .any(|(m, p)| m == "GET" && p == "/api/v1/namespaces/hoard-system/secrets/repo-secret")
    );
}

/// A Deployment with replicas on two nodes is backed up once, as host-0, by
/// the agent on the node of the lowest-named Running pod; the other agent
/// only looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_is_backed_up_by_exactly_one_agent() {
    let t = tempfile::tempdir().unwrap();
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    let dep_pod = |name: &str, uid: &str, node: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "demo", "uid": uid,
                "labels": {"pod-template-hash": "5f7c"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-5f7c", "uid": "rs", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}]},
            "status": {"phase": "Running"}
        })
    };
    // both nodes' kubelets mount the same RWX PV
    for (node, uid) in [("node-a", "uid-b"), ("node-b", "uid-a")] {
        let m = t
            .path()
            .join(node)
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~nfs/pv-shared");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("f"), "shared data").unwrap();
    }
    // app-5f7c-aaaa (lowest name) runs on node-b
    let pods = vec![
        dep_pod("app-5f7c-bbbb", "uid-b", "node-a"),
        dep_pod("app-5f7c-aaaa", "uid-a", "node-b"),
    ];
    let mut cfg = config();
    cfg["spec"]["target"] =
        json!({"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"}});
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "1"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let mut worlds = vec![];
    for node in ["node-a", "node-b"] {
        let world = Arc::new(std::sync::Mutex::new(World {
            config: cfg.clone(),
            node_scoped: None,
            session_path: "backupsessions/bs-1".into(),
            pods: pods.clone(),
            inject_conflict: false,
            session: session.clone(),
            rv: 1,
            log: vec![],
            events: vec![],
            conflicts_injected: false,
            repository: local_repository(),
            secret: repo_secret(&[]),
            ..Default::default()
        }));
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut kubelet = Kubelet::new(t.path().join(node));
        kubelet.host_root = Some(host_root.clone());
        let agent = Agent::new(
            kube::Client::new(svc, "default"),
            node.into(),
            "hoard-system".into(),
            kubelet,
            1,
            Metrics::new(),
            Duration::from_secs(3600),
        );
        let server = tokio::spawn(api_server(handle, world.clone()));
        let bs: api::BackupSession = serde_json::from_value(session.clone()).unwrap();
        agent.handle_backup_session(bs).await.unwrap();
        if node == "node-a" {
            // not the owner: nothing was spawned; drop the client to end the server
            drop(agent);
        }
        tokio::time::timeout(Duration::from_secs(120), server)
            .await
            .expect("bounded in time")
            .unwrap();
        worlds.push(world);
    }
    let a = worlds[0].lock().unwrap();
    assert_eq!(
        a.log,
        [
            (
                "GET".to_string(),
                "/apis/hoard.dev/v1beta1/namespaces/demo/backupconfigurations/ss-backup"
                    .to_string()
            ),
            (
                "GET".to_string(),
                "/api/v1/namespaces/demo/pods".to_string()
            ),
        ],
        "node-a's agent only looks"
    );
    let b = worlds[1].lock().unwrap();
    assert_eq!(b.events, ["HostBackupStarted", "HostBackupSucceeded"]);
    let stats = b.session["status"]["stats"].as_array().unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0]["hostname"], "host-0");
    assert_eq!(stats[0]["phase"], "Succeeded", "{}", stats[0]);
    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD).unwrap();
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1, "exactly one backup");
    assert_eq!(
        (snaps[0].1.hostname.as_str(), snaps[0].1.paths.clone()),
        ("host-0", vec!["/data".to_string()])
    );
}

/// The agent restarted while backing up host-0: the entry it finds
/// `Running` is marked failed with a reason, not left running forever, and
/// no second backup starts behind the user's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_left_running_by_a_previous_agent_process_is_marked_failed() {
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    std::fs::create_dir_all(kroot.join("pods/uid-0/volumes/kubernetes.io~empty-dir/data")).unwrap();
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "4"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}},
        "status": {"phase": "Running", "stats": [{"hostname": "host-0", "phase": "Running",
            "target": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web"}}]}
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: config(),
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        inject_conflict: false,
        session: session.clone(),
        rv: 4,
        log: vec![],
        events: vec![],
        conflicts_injected: false,
        repository: local_repository(),
        secret: repo_secret(&[]),
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        Kubelet::new(&kroot),
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("bounded in time")
        .unwrap();
    let w = world.lock().unwrap();
    assert_eq!(w.events, ["HostBackupFailed"]);
    let h0 = &w.session["status"]["stats"][0];
    assert_eq!(h0["phase"], "Failed");
    assert!(
        h0["error"]
            .as_str()
            .unwrap()
            .starts_with("the node agent restarted while this host was being backed up"),
        "{h0}"
    );
    assert!(
        !w.log
            .iter()
            .any(|(_, p)| p.contains("/secrets/") || p.contains("/repositories/")),
        "no new transfer was started: {:?}",
        w.log
    );
}

/// A StatefulSet host backed up into an S3 repository (moto on 127.0.0.1):
/// the `Repository`'s s3 section (endpoint, bucket, prefix, region) and the
/// Secret's Stash-named keys reach the engine, and the real restic reads
/// the snapshot back from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_into_an_s3_repository_that_restic_reads() {
    let moto = moto::start();
    moto.create_bucket("hoard");
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let restic_repo = format!("s3:{endpoint}/hoard/demo/web");
    // the repository exists (initialized by `hoard init` earlier)
    let init_repo = restic_repo.clone();
    tokio::task::spawn_blocking(move || {
        let mut creds = engine::backend::location::Credentials::default();
        creds.insert("AWS_ACCESS_KEY_ID", "testing");
        creds.insert("AWS_SECRET_ACCESS_KEY", "testing");
        let backend = engine::backend::location::open_repo_string(&init_repo, &creds).unwrap();
        Repository::init(
            backend,
            PASSWORD,
            InitOptions {
                kdf: KdfParams::insecure_fast(),
                chunker_polynomial: None,
            },
        )
        .unwrap();
    })
    .await
    .unwrap();

    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    let data = kroot.join("pods/uid-0/volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("a"), "alpha").unwrap();
    std::fs::write(data.join("sub/b"), "beta".repeat(10_000)).unwrap();

    let mut cfg = config();
    cfg["spec"]["repository"]["name"] = json!("s3-repo");
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "1"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: cfg,
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        inject_conflict: false,
        session: session.clone(),
        rv: 1,
        log: vec![],
        events: vec![],
        conflicts_injected: false,
        repository: json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "Repository",
            "metadata": {"name": "s3-repo", "namespace": "demo"},
            "spec": {"backend": {"storageSecretName": "repo-secret",
                "s3": {"endpoint": endpoint, "bucket": "hoard", "prefix": "/demo/web/", "region": "us-east-1"}}}
        }),
        secret: repo_secret(&[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]),
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        Kubelet::new(&kroot),
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("the agent finished the host within the deadline")
        .unwrap();
    {
        let w = world.lock().unwrap();
        let h0 = &w.session["status"]["stats"][0];
        assert_eq!(h0["hostname"], "host-0");
        assert_eq!(h0["phase"], "Succeeded", "{h0}");
        assert_eq!(w.events, ["HostBackupStarted", "HostBackupSucceeded"]);
        // no credential value reached the status or an event
        let status = w.session.to_string();
        assert!(!status.contains("testing"), "{status}");
    }

    // restic reads what the agent wrote into the bucket
    let out = tokio::task::spawn_blocking(move || {
        let snaps: Value = serde_json::from_slice(&moto::restic(
            &restic_repo,
            PASSWORD,
            &["snapshots", "--json"],
        ))
        .unwrap();
        moto::restic(&restic_repo, PASSWORD, &["check", "--read-data"]);
        let a = moto::restic(
            &restic_repo,
            PASSWORD,
            &["dump", "latest", "/source/data/a"],
        );
        let b = moto::restic(
            &restic_repo,
            PASSWORD,
            &["dump", "latest", "/source/data/sub/b"],
        );
        (snaps, a, b)
    })
    .await
    .unwrap();
    let (snaps, a, b) = out;
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    assert_eq!(snaps[0]["hostname"], "host-0");
    assert_eq!(snaps[0]["paths"], json!(["/source/data"]));
    assert_eq!(a, b"alpha");
    assert_eq!(b, "beta".repeat(10_000).as_bytes());
}

/// A Repository in namespace demo naming a hoard-system Secret that does
/// not list demo in `hoard.dev/allowed-namespaces`: the host fails saying
/// how to allow it, and no data is read or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_not_shared_with_the_namespace_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    std::fs::create_dir_all(kroot.join("pods/uid-0/volumes/kubernetes.io~empty-dir/data")).unwrap();
    let mut secret = repo_secret(&[]);
    secret["metadata"]["annotations"]["hoard.dev/allowed-namespaces"] = json!("prod, staging");
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "1"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: config(),
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        inject_conflict: false,
        session: session.clone(),
        rv: 1,
        log: vec![],
        events: vec![],
        conflicts_injected: false,
        repository: local_repository(),
        secret,
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(t.path().join("host"));
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("bounded in time")
        .unwrap();
    let w = world.lock().unwrap();
    assert_eq!(w.events, ["HostBackupStarted", "HostBackupFailed"]);
    let h0 = &w.session["status"]["stats"][0];
    assert_eq!(h0["phase"], "Failed");
    assert_eq!(
        h0["error"],
        "Secret hoard-system/repo-secret may not be used by Repository \"local-repo\" in namespace demo: add demo to the Secret's hoard.dev/allowed-namespaces annotation (comma-separated, or *)"
    );
    assert!(!t.path().join("host/var/hoard/repo").exists());
}

/// After the session succeeded, the agent that backed up its first host
/// applies `keepLast: 1` to the configuration's snapshots (another
/// configuration's snapshot in the same repository is left alone), prunes
/// (restic check --read-data passes afterwards), records
/// the outcome in `status.retention`, posts an event and writes the
/// `Repository` status. An agent on another node that ran no host of the
/// session only lists its node's pods (host-0 is not among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_runs_once_after_a_successful_session() {
    use nodeagent::work::{HostProgress, HostVolume, TransferSettings, run_backup_host};
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    let data = kroot.join("pods/uid-0/volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a"), "today").unwrap();
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    let repo = Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    // two earlier backups of this configuration's host-0, one of another's
    let old = t.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    for (i, cfg) in ["ss-backup", "other", "ss-backup"].iter().enumerate() {
        std::fs::write(old.join("a"), format!("day {i}")).unwrap();
        let settings = TransferSettings {
            tags: vec![
                format!("backupconfiguration={cfg}"),
                "target=StatefulSet/web".into(),
            ],
            ..Default::default()
        };
        let r = run_backup_host(
            &repo,
            "host-0",
            &[HostVolume {
                volume: "data".into(),
                snapshot_path: "/source/data".into(),
                dir: nodeagent::beneath::SecureDir::open_root(&old).unwrap(),
            }],
            &settings,
            &HostProgress::default(),
        );
        assert!(r.error.is_none());
    }
    drop(repo);

    let mut cfg = config();
    cfg["spec"]["retentionPolicy"] = json!({"name": "keep-last", "keepLast": 1, "prune": true});
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "1"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let (event_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let world = Arc::new(std::sync::Mutex::new(World {
        config: cfg,
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        session: session.clone(),
        rv: 1,
        repository: local_repository(),
        secret: repo_secret(&[]),
        extra_final_events: 1,
        event_tx: Some(event_tx),
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root.clone());
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .expect("the backup finished in time");
        if ev.as_deref() == Some("HostBackupSucceeded") {
            break;
        }
    }
    // the controllers roll the session up to Succeeded; every agent sees it
    let succeeded = {
        let mut w = world.lock().unwrap();
        w.session["status"]["phase"] = json!("Succeeded");
        w.session.clone()
    };
    let bs: api::BackupSession = serde_json::from_value(succeeded.clone()).unwrap();
    agent.handle_backup_session(bs.clone()).await.unwrap();
    // a repeated watch event starts nothing twice
    agent.handle_backup_session(bs.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("retention finished in time")
        .unwrap();

    {
        let w = world.lock().unwrap();
        assert_eq!(
            w.events,
            [
                "HostBackupStarted",
                "HostBackupSucceeded",
                "RetentionApplied"
            ]
        );
        let r = &w.session["status"]["retention"];
        assert_eq!(r["phase"], "Succeeded", "{r}");
        assert_eq!(r["dryRun"], false);
        assert_eq!(r["snapshotsRemoved"], 2, "{r}");
        assert_eq!(r["snapshotsKept"], 1, "{r}");
        assert_eq!(r["node"], "node-a");
        // the two forgotten snapshots' packs held nothing else
        assert_eq!(r["pruned"], true, "{r}");
        assert!(r["bytesFreed"].as_i64().unwrap() > 0, "{r}");
        assert!(
            r["message"].as_str().unwrap().contains("prune freed"),
            "{r}"
        );
        assert!(r["startTime"].is_string() && r["completionTime"].is_string());
        assert!(r.get("error").is_none());
        let rs = &w.repository["status"];
        assert_eq!(rs["snapshotCount"], 2, "{rs}");
        assert_eq!(rs["snapshotsRemovedOnLastCleanup"], 2);
        assert!(rs["totalSizeBytes"].as_i64().unwrap() > 0);
        assert!(rs["lastBackupTime"].is_string() && rs["firstBackupTime"].is_string());
        // the structure check after retention found the pruned repository whole
        assert_eq!(rs["integrity"], true, "{rs}");
        assert!(
            rs["integrityMessage"]
                .as_str()
                .unwrap()
                .starts_with("no problems: "),
            "{rs}"
        );
        assert!(rs["lastCheckTime"].is_string(), "{rs}");
        let merges = w
            .log
            .iter()
            .filter(|(m, p)| m == "PATCH" && p.ends_with("/backupsessions/bs-1/status"))
            .count();
        assert_eq!(
            merges, 4,
            "Running, Succeeded (host), Running, outcome (retention)"
        );
    }

    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD).unwrap();
    let left: Vec<(String, String)> = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(_, s)| (s.tags[0].clone(), s.time.to_rfc3339()))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0].0, "backupconfiguration=other");
    assert_eq!(left[1].0, "backupconfiguration=ss-backup");
    drop(repo);
    // restic agrees the pruned repository is whole
    let out = std::process::Command::new("restic")
        .args(["-r"])
        .arg(&repo_dir)
        .args(["--no-cache", "check", "--read-data"])
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("run restic (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // node-b's agent ran no host of this session: it only looks
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let other = Agent::new(
        kube::Client::new(svc, "default"),
        "node-b".into(),
        "hoard-system".into(),
        Kubelet::new(&kroot),
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    // it answers the agent's requests in whatever order they come
    let api = tokio::spawn(async move {
        let mut seen = vec![];
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            match path.as_str() {
                "/api/v1/namespaces/demo/pods" => {
                    assert!(query.contains("spec.nodeName%3Dnode-b"), "{query}");
                    respond(
                        send,
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                               "items": [pod("web-0", "uid-0", "node-a")]}),
                    );
                }
                // a finished session may free a waiting one of its configuration
                "/apis/hoard.dev/v1beta1/namespaces/demo/backupsessions" => {
                    assert!(query.contains("spec.invoker.name%3Dss-backup"), "{query}");
                    respond(
                        send,
                        StatusCode::OK,
                        json!({"apiVersion": "hoard.dev/v1beta1", "kind": "BackupSessionList",
                               "metadata": {}, "items": [succeeded]}),
                    );
                }
                p => panic!("unexpected request {p}?{query}"),
            }
            seen.push(path);
        }
        seen
    });
    other.handle_backup_session(bs).await.unwrap();
    drop(other);
    let mut seen = tokio::time::timeout(Duration::from_secs(60), api)
        .await
        .expect("the other agent let go of its client")
        .unwrap();
    seen.sort();
    assert_eq!(
        seen,
        [
            "/api/v1/namespaces/demo/pods",
            "/apis/hoard.dev/v1beta1/namespaces/demo/backupsessions"
        ],
        "no request but its node's pods and the configuration's sessions from an agent that does not own retention"
    );
}

/// Seed 000's StatefulSet Recovery: `podOrdinal: 1` → host-1's latest
/// backup is restored, by the agent on web-1's node, into the hostPath under
/// the agent's allowed recovery root; the status has the path's phase and
/// duration, and events say it started and succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_restores_a_statefulset_host_into_a_host_path() {
    use nodeagent::work::{HostProgress, HostVolume, TransferSettings, run_backup_host};
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    std::fs::create_dir_all(kroot.join("pods")).unwrap();
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    let repo = Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    // host-1's backup (and host-0's, which must not be restored)
    for (host, content) in [("host-1", "rows of web-1"), ("host-0", "rows of web-0")] {
        let src = t.path().join(host);
        std::fs::create_dir_all(src.join("db")).unwrap();
        std::fs::write(src.join("db/rows"), content).unwrap();
        let r = run_backup_host(
            &repo,
            host,
            &[HostVolume {
                volume: "data".into(),
                snapshot_path: "/source/data".into(),
                dir: nodeagent::beneath::SecureDir::open_root(&src).unwrap(),
            }],
            &TransferSettings::default(),
            &HostProgress::default(),
        );
        assert!(r.error.is_none());
    }
    drop(repo);

    let recovery = json!({
        "apiVersion": "hoard.dev/v1alpha1", "kind": "Recovery",
        "metadata": {"name": "rec-1", "namespace": "demo", "uid": "rec-uid", "resourceVersion": "1"},
        "spec": {
            "restic": "ss-backup",
            "workload": {"kind": "Statefulset", "name": "web"},
            "podOrdinal": 1,
            "volumes": [{"name": "data", "hostPath": {"path": "/var/lib/hoard/recovery/web-1"}}]
        }
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: config(),
        node_scoped: Some("node-a".into()),
        session_path: "recoveries/rec-1".into(),
        pods: vec![pod("web-1", "uid-1", "node-a")],
        session: recovery.clone(),
        rv: 1,
        repository: local_repository(),
        secret: repo_secret(&[]),
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root.clone());
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let rec: api::Recovery = serde_json::from_value(recovery.clone()).unwrap();
    agent.handle_recovery(rec.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("the recovery finished in time")
        .unwrap();

    assert_eq!(
        std::fs::read_to_string(host_root.join("var/lib/hoard/recovery/web-1/db/rows")).unwrap(),
        "rows of web-1"
    );
    {
        let w = world.lock().unwrap();
        assert_eq!(w.events, ["RecoveryStarted", "RecoverySucceeded"]);
        let st = &w.session["status"];
        assert_eq!(st["phase"], "Succeeded", "{st}");
        assert_eq!(st["stats"][0]["path"], "/source/data");
        assert_eq!(st["stats"][0]["phase"], "Succeeded");
        assert!(st["stats"][0]["duration"].is_string());
    }

    // the agent on another node (web-1 is not there) leaves it alone
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let other = Agent::new(
        kube::Client::new(svc, "default"),
        "node-b".into(),
        "hoard-system".into(),
        Kubelet::new(&kroot),
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let pods = vec![pod("web-1", "uid-1", "node-a")];
    let lister = tokio::spawn(async move {
        // its node's pods, then every node's: web-1 runs on node-a
        for _ in 0..2 {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.uri().path(), "/api/v1/namespaces/demo/pods");
            respond(
                send,
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
            );
        }
        handle.next_request().await.is_none()
    });
    other.handle_recovery(rec).await.unwrap();
    drop(other);
    assert!(
        lister.await.unwrap(),
        "node-b's agent only listed pods (node-a runs web-1: no waiting message)"
    );
}

/// The pod is deleted while its host is being backed up: the host fails at
/// once saying so (no hang, no cryptic "volume not found" from the
/// kubelet's cleanup), and the session gets the failure event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_mid_backup_fails_its_host_clearly() {
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    let pod_dir = kroot.join("pods/uid-0");
    let data = pod_dir.join("volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..200 {
        std::fs::write(data.join(format!("f{i}")), format!("{i}").repeat(5000)).unwrap();
    }
    let host_root = t.path().join("host");
    Repository::init(
        Arc::new(LocalBackend::new(host_root.join("var/hoard/repo"))),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "1"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let (event_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let world = Arc::new(std::sync::Mutex::new(World {
        config: config(),
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        session: session.clone(),
        rv: 1,
        repository: local_repository(),
        secret: repo_secret(&[]),
        event_tx: Some(event_tx),
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root);
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    let started = tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .unwrap();
    assert_eq!(started.as_deref(), Some("HostBackupStarted"));
    // the pod watch reports the deletion; the kubelet then removes the pod's directory
    agent.pod_gone("uid-0");
    std::fs::remove_dir_all(&pod_dir).unwrap();
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the host failed promptly instead of hanging")
        .unwrap();
    let w = world.lock().unwrap();
    assert_eq!(w.events, ["HostBackupStarted", "HostBackupFailed"]);
    let h0 = &w.session["status"]["stats"][0];
    assert_eq!(h0["phase"], "Failed");
    assert_eq!(
        h0["error"],
        "pod demo/web-0 was deleted while its volumes were being backed up; the transfer of this host was stopped (the repository stays valid)"
    );
}

/// Batch backup (seed 004): two Deployments in one configuration are both
/// `host-0`; the agent backs up each (claims are per target) and their
/// status entries stay apart (merged by hostname and target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_targets_sharing_host_0_are_both_backed_up() {
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    let dep_pod = |app: &str, uid: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{app}-5f7c-aaaa"), "namespace": "demo", "uid": uid,
                "labels": {"pod-template-hash": "5f7c"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-5f7c"), "uid": "rs", "controller": true}]},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "x",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]},
            "status": {"phase": "Running"}
        })
    };
    for (app, uid) in [("a", "uid-a"), ("b", "uid-b")] {
        let d = kroot.join(format!("pods/{uid}/volumes/kubernetes.io~empty-dir/data"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), format!("data of {app}")).unwrap();
    }
    let mut cfg = config();
    let target =
        |n: &str| json!({"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": n}});
    cfg["spec"]["target"] = target("a");
    cfg["spec"]["targets"] = json!([target("b")]);
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "1"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: cfg,
        session_path: "backupsessions/bs-1".into(),
        pods: vec![dep_pod("a", "uid-a"), dep_pod("b", "uid-b")],
        session: session.clone(),
        rv: 1,
        repository: local_repository(),
        secret: repo_secret(&[]),
        extra_final_events: 1,
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root);
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        2,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("both hosts finished in time")
        .unwrap();
    {
        let w = world.lock().unwrap();
        let mut entries: Vec<(String, String, String)> = w.session["status"]["stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["hostname"].as_str().unwrap().to_string(),
                    e["target"]["name"].as_str().unwrap().to_string(),
                    e["phase"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            [
                ("host-0".into(), "a".into(), "Succeeded".into()),
                ("host-0".into(), "b".into(), "Succeeded".into())
            ]
        );
    }
    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD).unwrap();
    let mut targets: Vec<String> = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(_, s)| s.tags[1].clone())
        .collect();
    targets.sort();
    assert_eq!(targets, ["target=Deployment/a", "target=Deployment/b"]);
}

/// An S3 store whose certificate comes from a private CA (an in-cluster
/// MinIO, here moto over HTTPS): with the CA in the Secret's CA_CERT_DATA
/// the agent backs up into it, and restic (told the same CA) reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_into_s3_behind_a_private_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let t = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // distinct names: OpenSSL (curl, restic's Go TLS is fine either way)
    // calls a leaf whose issuer equals its subject self-signed
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "hoard test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca_pem, cert_file, key_file, ca_file) = (
        ca_cert.pem(),
        t.path().join("tls.crt"),
        t.path().join("tls.key"),
        t.path().join("ca.crt"),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, &ca_pem).unwrap();

    let moto = moto::start_tls(&cert_file, &key_file);
    moto::create_bucket_tls(moto.port, &ca_file, "private");
    let endpoint = format!("https://127.0.0.1:{}", moto.port);
    let restic_repo = format!("s3:{endpoint}/private/demo");
    let mut creds = engine::backend::location::Credentials::default();
    creds.insert("AWS_ACCESS_KEY_ID", "testing");
    creds.insert("AWS_SECRET_ACCESS_KEY", "testing");
    let cfg_s3 = engine::backend::location::ObjectStoreConfig {
        kind: engine::backend::location::ObjectStoreKind::S3,
        bucket: "private".into(),
        prefix: "demo".into(),
        endpoint: Some(endpoint.clone()),
        region: None,
    };
    let pem = ca_pem.clone();
    tokio::task::spawn_blocking(move || {
        let backend = nodeagent::repo::s3_with_ca(&cfg_s3, &creds, &pem).unwrap();
        Repository::init(
            backend,
            PASSWORD,
            InitOptions {
                kdf: KdfParams::insecure_fast(),
                chunker_polynomial: None,
            },
        )
        .unwrap();
    })
    .await
    .unwrap();

    let kroot = t.path().join("kubelet");
    let data = kroot.join("pods/uid-0/volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a"), "behind a private CA").unwrap();
    let mut cfg = config();
    cfg["spec"]["repository"]["name"] = json!("minio-repo");
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "1"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: cfg,
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        session: session.clone(),
        rv: 1,
        repository: json!({
            "apiVersion": "hoard.dev/v1beta1", "kind": "Repository",
            "metadata": {"name": "minio-repo", "namespace": "demo"},
            "spec": {"backend": {"storageSecretName": "repo-secret",
                "s3": {"endpoint": endpoint, "bucket": "private", "prefix": "demo"}}}
        }),
        secret: repo_secret(&[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("CA_CERT_DATA", &ca_pem),
        ]),
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        Kubelet::new(&kroot),
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("the agent finished the host within the deadline")
        .unwrap();
    {
        let w = world.lock().unwrap();
        let h0 = &w.session["status"]["stats"][0];
        assert_eq!(h0["phase"], "Succeeded", "{h0}");
    }
    let ca_arg = ca_file.display().to_string();
    let a = tokio::task::spawn_blocking(move || {
        moto::restic(
            &restic_repo,
            PASSWORD,
            &["--cacert", &ca_arg, "dump", "latest", "/source/data/a"],
        )
    })
    .await
    .unwrap();
    assert_eq!(a, b"behind a private CA");
}

/// A pack file deleted from the repository after the backup (a bucket
/// lifecycle rule, a careless `rm`): the check after retention sets the
/// `Repository`'s `integrity` to false with a message naming the pack, and
/// posts a Warning event on the `Repository`; retention itself succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pack_makes_the_repository_integrity_false() {
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    let data = kroot.join("pods/uid-0/volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a"), "today").unwrap();
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    let mut cfg = config();
    cfg["spec"]["retentionPolicy"] = json!({"name": "keep-last", "keepLast": 1});
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "1"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let (event_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let world = Arc::new(std::sync::Mutex::new(World {
        config: cfg,
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        session: session.clone(),
        rv: 1,
        repository: local_repository(),
        secret: repo_secret(&[]),
        // HostBackupSucceeded, IntegrityCheckFailed, RetentionApplied
        extra_final_events: 2,
        event_tx: Some(event_tx),
        ..Default::default()
    }));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root.clone());
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .expect("the backup finished in time");
        if ev.as_deref() == Some("HostBackupSucceeded") {
            break;
        }
    }
    // one of the backup's packs disappears
    let mut packs: Vec<std::path::PathBuf> = std::fs::read_dir(repo_dir.join("data"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    packs.sort();
    assert!(!packs.is_empty(), "the backup wrote packs");
    let gone = &packs[0];
    let gone_name = gone.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(gone).unwrap();

    let succeeded = {
        let mut w = world.lock().unwrap();
        w.session["status"]["phase"] = json!("Succeeded");
        w.session.clone()
    };
    let bs: api::BackupSession = serde_json::from_value(succeeded).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("retention and the check finished in time")
        .unwrap();

    let w = world.lock().unwrap();
    assert_eq!(
        w.events,
        [
            "HostBackupStarted",
            "HostBackupSucceeded",
            "IntegrityCheckFailed",
            "RetentionApplied"
        ]
    );
    assert_eq!(w.session["status"]["retention"]["phase"], "Succeeded");
    let rs = &w.repository["status"];
    assert_eq!(rs["integrity"], false, "{rs}");
    let msg = rs["integrityMessage"].as_str().unwrap();
    assert!(msg.contains(&gone_name), "the missing pack is named: {msg}");
    assert!(msg.contains("error"), "{msg}");
    assert!(rs["lastCheckTime"].is_string(), "{rs}");
    assert_eq!(rs["snapshotCount"], 1, "{rs}");
    // the engine's own check agrees on the pack
    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD).unwrap();
    let report = engine::check::check(
        &repo,
        &engine::check::CheckOptions::default(),
        &engine::progress::Progress::new(),
    )
    .unwrap();
    assert!(
        report.problems.iter().any(|p| {
            p.kind == engine::check::ProblemKind::PackMissing && p.file.ends_with(&gone_name)
        }),
        "{:?}",
        report.problems
    );
}

/// Twelve StatefulSet pods on one node, one session: the agent's own hosts
/// take turns writing the session's status (Running, then the result), so
/// none of them is rejected as stale by another host of the same agent —
/// before, 20 hosts queued at once exhausted the optimistic retries and
/// some hosts never got their final entry (found by bench/agent.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_hosts_on_one_node_all_get_their_status_without_conflicts() {
    const N: usize = 12;
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    let mut pods = vec![];
    for i in 0..N {
        let data = kroot.join(format!("pods/uid-{i}/volumes/kubernetes.io~empty-dir/data"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("f"), format!("host {i}")).unwrap();
        pods.push(pod(&format!("web-{i}"), &format!("uid-{i}"), "node-a"));
    }
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root.clone());
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let session = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "1"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: config(),
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods,
        session: session.clone(),
        rv: 1,
        repository: local_repository(),
        secret: repo_secret(&[]),
        extra_final_events: N - 1,
        ..Default::default()
    }));
    let server = tokio::spawn(api_server(handle, world.clone()));
    let bs: api::BackupSession = serde_json::from_value(session).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    if tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .is_err()
    {
        panic!(
            "not every host finished; session: {}",
            world.lock().unwrap().session
        );
    }
    let w = world.lock().unwrap();
    let stats = w.session["status"]["stats"].as_array().unwrap();
    assert_eq!(stats.len(), N, "{stats:?}");
    assert!(stats.iter().all(|s| s["phase"] == "Succeeded"), "{stats:?}");
    let patches = w
        .log
        .iter()
        .filter(|(m, p)| m == "PATCH" && p.ends_with("/bs-1/status"))
        .count();
    assert_eq!(
        patches,
        2 * N,
        "Running and the result once per host: no write was rejected as stale"
    );
    drop(w);
    // one repository opened for the hosts in turn: each host's snapshot holds its file
    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD).unwrap();
    let mut hosts: Vec<String> = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(_, s)| s.hostname)
        .collect();
    hosts.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("host-{i}")).collect();
    want.sort();
    assert_eq!(hosts, want);
}

/// A Recovery of `host-1` while web-1 runs on no node (Pending on node-b):
/// no agent can start it, and the status says what it waits for instead of
/// staying an empty Pending. The write is guarded by the resourceVersion
/// (another agent may have started it meanwhile) and not repeated once the
/// message is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_without_a_running_pod_says_what_it_waits_for() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        Kubelet::new("/nonexistent"),
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let recovery = json!({
        "apiVersion": "hoard.dev/v1alpha1", "kind": "Recovery",
        "metadata": {"name": "rec-1", "namespace": "demo", "uid": "rec-uid", "resourceVersion": "7"},
        "spec": {
            "restic": "ss-backup",
            "workload": {"kind": "StatefulSet", "name": "web"},
            "podOrdinal": 1,
            "volumes": [{"name": "data", "hostPath": {"path": "/var/lib/hoard/recovery/web-1"}}]
        }
    });
    let mut pending = pod("web-1", "uid-1", "node-b");
    pending["status"]["phase"] = json!("Pending");
    let running0 = pod("web-0", "uid-0", "node-a");
    let rec0 = recovery.clone();
    let server = tokio::spawn(async move {
        let (mut written, mut patches) = (None, 0);
        while let Some((req, send)) = handle.next_request().await {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let query = req.uri().query().unwrap_or("").to_string();
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            match (method, path.as_str()) {
                (Method::GET, "/api/v1/namespaces/demo/pods") => {
                    // this node's pods, or every node's
                    let items = if query.contains("fieldSelector") {
                        vec![running0.clone()]
                    } else {
                        vec![running0.clone(), pending.clone()]
                    };
                    respond(
                        send,
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
                    );
                }
                (
                    Method::GET,
                    "/apis/hoard.dev/v1alpha1/namespaces/demo/recoveries/rec-1/status",
                ) => {
                    respond(send, StatusCode::OK, rec0.clone());
                }
                (
                    Method::PATCH,
                    "/apis/hoard.dev/v1alpha1/namespaces/demo/recoveries/rec-1/status",
                ) => {
                    patches += 1;
                    let patch: json_patch::Patch = serde_json::from_slice(&body).unwrap();
                    let mut next = rec0.clone();
                    json_patch::patch(&mut next, &patch)
                        .expect("the patch applies to the object read");
                    let mut stale = rec0.clone();
                    stale["metadata"]["resourceVersion"] = json!("8");
                    assert!(
                        json_patch::patch(&mut stale, &patch).is_err(),
                        "the write is guarded by resourceVersion"
                    );
                    written = Some(next.clone());
                    respond(send, StatusCode::OK, next);
                }
                (m, p) => panic!("unexpected request {m} {p}?{query}"),
            }
        }
        (written, patches)
    });
    let rec: api::Recovery = serde_json::from_value(recovery.clone()).unwrap();
    agent.handle_recovery(rec).await.unwrap();
    // the watch brings the object back with the message: no second write
    let mut seen = recovery;
    seen["status"] = json!({"phase": "Pending", "message": WAITING});
    seen["metadata"]["resourceVersion"] = json!("8");
    agent
        .handle_recovery(serde_json::from_value(seen).unwrap())
        .await
        .unwrap();
    drop(agent);
    let (written, patches) = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the agent stopped asking")
        .unwrap();
    let written = written.expect("the Recovery's status was written");
    assert_eq!(patches, 1);
    let st = &written["status"];
    assert_eq!(st["phase"], "Pending", "{st}");
    assert_eq!(st["message"], WAITING, "{st}");
}

const WAITING: &str = "waiting for pod web-1 (host-1) of StatefulSet demo/web to be Running on some node (it is Pending on node-b); the agent on that node starts the recovery then";

/// The agent restarted between host-0's backup and the session's
/// `Succeeded`: the new process remembers nothing, yet it applies the
/// retention policy, because it derives ownership from the session's
/// status and its node's pods (web-0, host-0, runs here). A second new
/// process seeing a stale `Succeeded` event (no `status.retention` in it)
/// does not apply it again: the claim is a guarded write of
/// `status.retention`, so retention runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_survives_an_agent_restart_and_runs_once() {
    retention_after_a_restart(None).await;
}

/// The agent died while applying retention (`status.retention` says
/// Running on node-a): the next process on node-a takes the run over and
/// finishes it, once — a claim left Running never stays Running forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_left_running_by_a_dead_process_is_taken_over_once() {
    retention_after_a_restart(Some(json!({
        "phase": "Running", "node": "node-a", "startTime": "2026-03-10T12:00:00Z"
    })))
    .await;
}

/// See the two tests above: `prior` is the `status.retention` the session
/// already carries when the new agent process sees it `Succeeded`.
async fn retention_after_a_restart(prior: Option<Value>) {
    use nodeagent::work::{HostProgress, HostVolume, TransferSettings, run_backup_host};
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    std::fs::create_dir_all(kroot.join("pods")).unwrap();
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    let repo = Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    // yesterday's and today's backups of host-0 (today's by the old process)
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for day in ["yesterday", "today"] {
        std::fs::write(src.join("a"), day).unwrap();
        let r = run_backup_host(
            &repo,
            "host-0",
            &[HostVolume {
                volume: "data".into(),
                snapshot_path: "/source/data".into(),
                dir: nodeagent::beneath::SecureDir::open_root(&src).unwrap(),
            }],
            &TransferSettings {
                tags: vec![
                    "backupconfiguration=ss-backup".into(),
                    "target=StatefulSet/web".into(),
                ],
                ..Default::default()
            },
            &HostProgress::default(),
        );
        assert!(r.error.is_none());
    }
    drop(repo);

    let mut cfg = config();
    cfg["spec"]["retentionPolicy"] = json!({"name": "keep-last", "keepLast": 1});
    let succeeded = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid", "resourceVersion": "9"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}},
        "status": {"phase": "Succeeded", "stats": [
            {"hostname": "host-0", "phase": "Succeeded",
             "target": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web"}}
        ]}
    });
    let mut succeeded = succeeded;
    if let Some(prior) = prior {
        succeeded["status"]["retention"] = prior;
    }
    let world = Arc::new(std::sync::Mutex::new(World {
        config: cfg,
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        session: succeeded.clone(),
        rv: 9,
        repository: local_repository(),
        secret: repo_secret(&[]),
        ..Default::default()
    }));
    let fresh_agent = || {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut kubelet = Kubelet::new(&kroot);
        kubelet.host_root = Some(host_root.clone());
        let agent = Agent::new(
            kube::Client::new(svc, "default"),
            "node-a".into(),
            "hoard-system".into(),
            kubelet,
            1,
            Metrics::new(),
            Duration::from_secs(3600),
        );
        (agent, tokio::spawn(api_server(handle, world.clone())))
    };
    let bs: api::BackupSession = serde_json::from_value(succeeded).unwrap();

    // the restarted process
    let (agent, server) = fresh_agent();
    agent.handle_backup_session(bs.clone()).await.unwrap();
    if tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .is_err()
    {
        panic!(
            "retention did not run; requests: {:?}",
            world.lock().unwrap().log
        );
    }
    drop(agent);
    {
        let w = world.lock().unwrap();
        assert_eq!(w.events, ["RetentionApplied"]);
        let r = &w.session["status"]["retention"];
        assert_eq!(r["phase"], "Succeeded", "{r}");
        assert_eq!(r["snapshotsRemoved"], 1, "{r}");
        assert_eq!(r["node"], "node-a");
    }

    // another new process, shown the same stale event
    let (again, server) = fresh_agent();
    again.handle_backup_session(bs).await.unwrap();
    // the server ends when the agent's last task lets go of its client
    drop(again);
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the second agent stopped asking")
        .unwrap();
    let w = world.lock().unwrap();
    assert_eq!(w.events, ["RetentionApplied"], "applied once");
    let writes = w
        .log
        .iter()
        .filter(|(m, p)| m == "PATCH" && p.ends_with("/backupsessions/bs-1/status"))
        .count();
    assert_eq!(writes, 2, "the claim (Running) and the outcome, once");
    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD).unwrap();
    assert_eq!(repo.snapshots().unwrap().len(), 1);
}

/// One configuration runs one session at a time (issue 7): a user's
/// instant session created while an older session of the same
/// configuration runs waits — the agent writes nothing for it and reads no
/// volume — and runs once the older one finished (the agent is told of that
/// by the older session's change, not the waiting one's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waits_for_the_older_session_of_its_configuration() {
    let t = tempfile::tempdir().unwrap();
    let kroot = t.path().join("kubelet");
    let data = kroot.join("pods/uid-0/volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a"), "alpha").unwrap();
    let host_root = t.path().join("host");
    let repo_dir = host_root.join("var/hoard/repo");
    Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kubelet = Kubelet::new(&kroot);
    kubelet.host_root = Some(host_root.clone());
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        kubelet,
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let older = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "ss-backup-1773140400", "namespace": "demo", "uid": "old-uid",
            "resourceVersion": "3", "creationTimestamp": "2026-03-10T11:00:00Z"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}},
        "status": {"phase": "Running"}
    });
    let younger = json!({
        "apiVersion": "hoard.dev/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "bs-1", "namespace": "demo", "uid": "bs-uid",
            "resourceVersion": "4", "creationTimestamp": "2026-03-10T11:00:05Z"},
        "spec": {"invoker": {"kind": "BackupConfiguration", "name": "ss-backup"}}
    });
    let world = Arc::new(std::sync::Mutex::new(World {
        config: config(),
        node_scoped: Some("node-a".into()),
        session_path: "backupsessions/bs-1".into(),
        pods: vec![pod("web-0", "uid-0", "node-a")],
        session: younger.clone(),
        rv: 4,
        repository: local_repository(),
        secret: repo_secret(&[]),
        siblings: vec![older.clone()],
        ..Default::default()
    }));
    let server = tokio::spawn(api_server(handle, world.clone()));

    let bs: api::BackupSession = serde_json::from_value(younger.clone()).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    {
        let w = world.lock().unwrap();
        assert!(
            w.log.iter().all(|(m, _)| m == "GET"),
            "nothing is written for the waiting session: {:?}",
            w.log
        );
        assert!(
            !w.log
                .iter()
                .any(|(_, p)| p.contains("/repositories/") || p.contains("/secrets/")),
            "the repository is not even opened: {:?}",
            w.log
        );
        assert!(w.events.is_empty(), "{:?}", w.events);
        assert_eq!(w.session, younger, "the waiting session is untouched");
        assert!(
            w.log
                .iter()
                .any(|(_, p)| p == "/apis/hoard.dev/v1beta1/namespaces/demo/backupsessions"),
            "the agent read the configuration's sessions"
        );
    }
    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), PASSWORD).unwrap();
    assert!(repo.snapshots().unwrap().is_empty(), "no volume was read");

    // the older session finished: its change frees the younger one
    let mut finished = older;
    finished["status"]["phase"] = json!("Succeeded");
    finished["metadata"]["resourceVersion"] = json!("9");
    world.lock().unwrap().siblings = vec![finished.clone()];
    let bs: api::BackupSession = serde_json::from_value(finished).unwrap();
    agent.handle_backup_session(bs).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("the freed session ran within the deadline")
        .unwrap();

    let w = world.lock().unwrap();
    assert_eq!(w.events, ["HostBackupStarted", "HostBackupSucceeded"]);
    let stats = w.session["status"]["stats"].as_array().unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0]["hostname"], "host-0");
    assert_eq!(stats[0]["phase"], "Succeeded", "{}", stats[0]);
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1, "the younger session's backup");
    assert_eq!(snaps[0].1.hostname, "host-0");
}

/// The Recovery that waited for web-1 starts when web-1 runs on this node:
/// the pod watch's event makes the agent read the Recovery again, find the
/// host its own and start it (status Running), with no change to the
/// Recovery itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_recovery_starts_when_its_pod_runs_here() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let agent = Agent::new(
        kube::Client::new(svc, "default"),
        "node-a".into(),
        "hoard-system".into(),
        Kubelet::new("/nonexistent"),
        1,
        Metrics::new(),
        Duration::from_secs(3600),
    );
    let recovery = json!({
        "apiVersion": "hoard.dev/v1alpha1", "kind": "Recovery",
        "metadata": {"name": "rec-1", "namespace": "demo", "uid": "rec-uid", "resourceVersion": "7"},
        "spec": {
            "restic": "ss-backup",
            "workload": {"kind": "StatefulSet", "name": "web"},
            "podOrdinal": 1,
            "volumes": [{"name": "data", "hostPath": {"path": "/var/lib/hoard/recovery/web-1"}}]
        },
        "status": {"phase": "Pending", "message": WAITING}
    });
    let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let web1 = |phase: &str, node: &str| {
        let mut p = pod("web-1", "uid-1", node);
        p["status"]["phase"] = json!(phase);
        p
    };
    let (rec0, is_running) = (recovery.clone(), running.clone());
    // Pending on node-b at first; then re-created, Running on node-a
    let (pending, up) = (web1("Pending", "node-b"), web1("Running", "node-a"));
    let server = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            let pods = if is_running.load(std::sync::atomic::Ordering::SeqCst) {
                up.clone()
            } else {
                pending.clone()
            };
            match (method, path.as_str()) {
                (Method::GET, "/api/v1/namespaces/demo/pods") => respond(
                    send,
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pods]}),
                ),
                (Method::GET, "/apis/hoard.dev/v1alpha1/namespaces/demo/recoveries/rec-1") => {
                    respond(send, StatusCode::OK, rec0.clone())
                }
                (
                    Method::PATCH,
                    "/apis/hoard.dev/v1alpha1/namespaces/demo/recoveries/rec-1/status",
                ) => {
                    let patch: Value = serde_json::from_slice(&body).unwrap();
                    return patch;
                }
                (m, p) => panic!("unexpected request {m} {p}"),
            }
        }
        panic!("the agent stopped without starting the recovery");
    });
    // web-1 is Pending: the Recovery waits (its message is already there)
    let rec: api::Recovery = serde_json::from_value(recovery).unwrap();
    agent.handle_recovery(rec).await.unwrap();
    // then the pod watch reports web-1 Running on node-a
    running.store(true, std::sync::atomic::Ordering::SeqCst);
    agent
        .clone()
        .on_pod(serde_json::from_value(web1("Running", "node-a")).unwrap());
    let patch = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the recovery started")
        .unwrap();
    assert_eq!(patch["status"]["phase"], "Running", "{patch}");
    assert!(
        patch["status"]["message"]
            .as_str()
            .unwrap()
            .contains("restoring host-1's data on node node-a"),
        "{patch}"
    );
}
