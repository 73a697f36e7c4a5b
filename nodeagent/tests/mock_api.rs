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

struct World {
    session: Value,
    rv: u64,
    /// (method, path) of every request, in order.
    log: Vec<(String, String)>,
    events: Vec<String>,
    conflicts_injected: bool,
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
        let (req, send) = handle.next_request().await.expect("agent hung up");
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
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
                respond(send, StatusCode::OK, config());
                false
            }
            (Method::GET, "/api/v1/namespaces/demo/pods") => {
                assert!(
                    query.contains("fieldSelector=spec.nodeName%3Dnode-a"),
                    "StatefulSet pods are listed for this node only: {query}"
                );
                respond(
                    send,
                    StatusCode::OK,
                    json!({
                        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"},
                        "items": [pod("web-0", "uid-0", "node-a")]
                    }),
                );
                false
            }
            (Method::GET, "/apis/hoard.dev/v1beta1/namespaces/demo/repositories/local-repo") => {
                respond(
                    send,
                    StatusCode::OK,
                    json!({
                        "apiVersion": "hoard.dev/v1beta1", "kind": "Repository",
                        "metadata": {"name": "local-repo", "namespace": "demo"},
                        "spec": {"backend": {"storageSecretName": "repo-secret",
                            "local": {"hostPath": {"path": "/var/hoard/repo"}, "mountPath": "/repo"}}}
                    }),
                );
                false
            }
            (Method::GET, "/api/v1/namespaces/hoard-system/secrets/repo-secret") => {
                use base64::Engine as _;
                let pw = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
                respond(
                    send,
                    StatusCode::OK,
                    json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "repo-secret", "namespace": "hoard-system"},
                        "data": {"RESTIC_PASSWORD": pw}
                    }),
                );
                false
            }
            (Method::GET, "/apis/hoard.dev/v1beta1/namespaces/demo/backupsessions/bs-1/status") => {
                let s = w.session.clone();
                respond(send, StatusCode::OK, s);
                false
            }
            (
                Method::PATCH,
                "/apis/hoard.dev/v1beta1/namespaces/demo/backupsessions/bs-1/status",
            ) => {
                let patch: json_patch::Patch = serde_json::from_slice(&body).expect("a JSON patch");
                if !w.conflicts_injected {
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
                assert_eq!(ev["regarding"]["name"], "bs-1");
                assert_eq!(ev["reportingController"], "hoard-agent");
                let reason = ev["reason"].as_str().unwrap().to_string();
                w.events.push(reason.clone());
                respond(send, StatusCode::CREATED, ev);
                reason != "HostBackupStarted"
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
        session: session.clone(),
        rv: 10,
        log: vec![],
        events: vec![],
        conflicts_injected: false,
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
