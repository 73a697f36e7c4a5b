//! The real AdmissionReviews a kube-apiserver sent (shared/fixtures/admission)
//! over real HTTPS to the running server; each returned patch is applied to
//! the original object and read back as a typed Pod.

mod common;

use std::collections::BTreeMap;

use common::{Answered, TestServer, apply, fixture};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde_json::json;
use webhook::state::{BackupSummary, RestoreMount, RestoreRule, RestoreSummary, State};
use webhook::workload::{ReplicaSetOwner, Workload, WorkloadKind};

const SESSION_UID: &str = "0d7c1c4e-1f4e-4c4b-9d55-6a9c2b4f8e21";

fn backup(name: &str, kind: WorkloadKind, target: &str) -> BackupSummary {
    BackupSummary {
        name: name.into(),
        targets: vec![Workload::new(kind, target)],
    }
}

fn restore(
    name: &str,
    kind: WorkloadKind,
    target: &str,
    mounts: &[(&str, &str)],
) -> RestoreSummary {
    RestoreSummary {
        uid: SESSION_UID.into(),
        name: name.into(),
        target: Some(Workload::new(kind, target)),
        volume_mounts: mounts
            .iter()
            .map(|(n, p)| RestoreMount {
                name: (*n).into(),
                mount_path: (*p).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}
fn annotations(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.annotations.clone().unwrap_or_default()
}

/// Everything in `after` except the keys Hoard adds equals `before`.
fn only_hoard_keys_added(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    let kept: BTreeMap<_, _> = after
        .iter()
        .filter(|(k, _)| !k.starts_with("hoard.dev/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(&kept, before);
}

/// The init-container exactly as a user will see it in `kubectl get pod -o yaml`.
fn expected_init_container(mounts: serde_json::Value) -> Container {
    serde_json::from_value(json!({
        "name": "hoard-restore-wait",
        "image": common::IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["restore-wait"],
        "args": ["--session-uid", SESSION_UID, "--status-dir", "/hoard/status",
                 "--deadline-seconds", "3600"],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "16Mi"}
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts
    }))
    .unwrap()
}

fn status_volume() -> Volume {
    serde_json::from_value(json!({
        "name": "hoard-restore-status",
        "emptyDir": {"sizeLimit": "1Mi"}
    }))
    .unwrap()
}

async fn send(server: &TestServer, review: &serde_json::Value) -> Answered {
    let mut client = server.client().await;
    let answer = client.review(review).await;
    apply(review, &answer)
}

#[tokio::test]
async fn unrelated_pods_are_allowed_without_a_patch() {
    let server = TestServer::start(State::new()).await;
    for f in [
        "pod-create-bare.json",
        "pod-create-deployment.json",
        "pod-create-statefulset-web-0.json",
        "pod-create-daemonset.json",
        "pod-create-dryrun.json",
    ] {
        let a = send(&server, &fixture(f)).await;
        assert_eq!(a.response["allowed"], true, "{f}");
        assert!(a.patch.is_none(), "{f} must not be patched");
        assert!(a.response.get("warnings").is_none(), "{f}");
    }
    assert_eq!(server.metrics.reviews(webhook::mutate::Outcome::Skipped), 5);
    server.stop().await;
}

#[tokio::test]
async fn statefulset_pod_gets_identity_and_is_held_for_its_restore() {
    let state = State::new();
    state.apply_backup(
        "demo",
        backup("web-backup", WorkloadKind::StatefulSet, "web"),
    );
    state.apply_restore(
        "demo",
        restore(
            "web-restore",
            WorkloadKind::StatefulSet,
            "web",
            &[("data", "/usr/share/nginx/html")],
        ),
    );
    let server = TestServer::start(state).await;
    let review = fixture("pod-create-statefulset-web-1.json");
    let a = send(&server, &review).await;
    assert_eq!(a.response["allowed"], true);

    let l = labels(&a.pod);
    assert_eq!(l["hoard.dev/host"], "host-1");
    only_hoard_keys_added(&labels(&a.original), &l);
    assert_eq!(
        annotations(&a.pod),
        BTreeMap::from([
            ("hoard.dev/host".to_owned(), "host-1".to_owned()),
            ("hoard.dev/target".to_owned(), "StatefulSet/web".to_owned()),
            (
                "hoard.dev/backup-configuration".to_owned(),
                "web-backup".to_owned()
            ),
            (
                "hoard.dev/restore-session".to_owned(),
                "web-restore".to_owned()
            ),
        ]),
        "the fixture has no annotations, so the map is added whole"
    );

    let spec = a.pod.spec.as_ref().unwrap();
    let original = a.original.spec.as_ref().unwrap();
    assert_eq!(
        spec.init_containers.as_deref().unwrap(),
        [expected_init_container(json!([
            {"name": "hoard-restore-status", "mountPath": "/hoard/status"},
            {"name": "data", "mountPath": "/usr/share/nginx/html", "readOnly": true}
        ]))]
    );
    let volumes = spec.volumes.as_deref().unwrap();
    assert_eq!(
        volumes[..volumes.len() - 1],
        original.volumes.as_deref().unwrap()[..]
    );
    assert_eq!(volumes.last().unwrap(), &status_volume());
    assert_eq!(
        spec.containers, original.containers,
        "app containers untouched"
    );
    assert_eq!(
        spec.automount_service_account_token, original.automount_service_account_token,
        "the app's token choice is left alone"
    );
    assert_eq!(
        server
            .metrics
            .reviews(webhook::mutate::Outcome::PatchedRestore),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn a_host_whose_restore_finished_is_not_held_again() {
    let state = State::new();
    state.apply_backup(
        "demo",
        backup("web-backup", WorkloadKind::StatefulSet, "web"),
    );
    let mut r = restore(
        "web-restore",
        WorkloadKind::StatefulSet,
        "web",
        &[("data", "/d")],
    );
    r.hosts_finished.insert("host-0".into());
    // host-1 is named by a rule, host-0 by none and there is no catch-all.
    r.rules = vec![RestoreRule {
        target_hosts: Some(vec!["host-1".into()]),
        ..Default::default()
    }];
    state.apply_restore("demo", r);
    let server = TestServer::start(state).await;

    let web0 = send(&server, &fixture("pod-create-statefulset-web-0.json")).await;
    assert!(web0.pod.spec.as_ref().unwrap().init_containers.is_none());
    assert_eq!(labels(&web0.pod)["hoard.dev/host"], "host-0");
    assert!(!annotations(&web0.pod).contains_key("hoard.dev/restore-session"));

    let web1 = send(&server, &fixture("pod-create-statefulset-web-1.json")).await;
    assert_eq!(
        web1.pod
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .as_ref()
            .unwrap()[0]
            .name,
        "hoard-restore-wait"
    );
    assert_eq!(
        server
            .metrics
            .reviews(webhook::mutate::Outcome::PatchedBackup),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn deployment_pod_resolves_through_its_replicaset() {
    let state = State::new();
    state.apply_replicaset(
        "demo",
        "app-7df4659c59",
        ReplicaSetOwner::Deployment("app".into()),
    );
    state.apply_backup(
        "demo",
        backup("app-backup", WorkloadKind::Deployment, "app"),
    );
    state.apply_backup(
        "demo",
        backup("app-nightly", WorkloadKind::Deployment, "app"),
    );
    let server = TestServer::start(state).await;
    let a = send(&server, &fixture("pod-create-deployment.json")).await;
    assert_eq!(labels(&a.pod)["hoard.dev/host"], "host-0");
    only_hoard_keys_added(&labels(&a.original), &labels(&a.pod));
    let ann = annotations(&a.pod);
    only_hoard_keys_added(&annotations(&a.original), &ann);
    assert_eq!(ann["hoard.dev/target"], "Deployment/app");
    assert_eq!(
        ann["hoard.dev/backup-configuration"],
        "app-backup,app-nightly"
    );
    assert!(a.pod.spec.as_ref().unwrap().init_containers.is_none());
    // The rollout's pod has a ReplicaSet the cache has not seen yet.
    let b = send(&server, &fixture("pod-create-deployment-rollout.json")).await;
    assert_eq!(annotations(&b.pod)["hoard.dev/target"], "Deployment/app");
    server.stop().await;
}

#[tokio::test]
async fn daemonset_pod_is_named_after_the_node_in_its_affinity() {
    let state = State::new();
    state.apply_restore(
        "demo",
        restore(
            "agent-restore",
            WorkloadKind::DaemonSet,
            "agent",
            &[("host-var-log", "/restore/log")],
        ),
    );
    let server = TestServer::start(state).await;
    let a = send(&server, &fixture("pod-create-daemonset.json")).await;
    assert_eq!(labels(&a.pod)["hoard.dev/host"], "node-a");
    let ann = annotations(&a.pod);
    assert_eq!(ann["hoard.dev/host"], "node-a");
    assert_eq!(ann["hoard.dev/target"], "DaemonSet/agent");
    assert_eq!(ann["hoard.dev/restore-session"], "agent-restore");
    assert!(!ann.contains_key("hoard.dev/backup-configuration"));
    assert_eq!(
        a.pod
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .as_deref()
            .unwrap(),
        [expected_init_container(json!([
            {"name": "hoard-restore-status", "mountPath": "/hoard/status"},
            {"name": "host-var-log", "mountPath": "/restore/log", "readOnly": true}
        ]))]
    );
    server.stop().await;
}

#[tokio::test]
async fn restore_wait_goes_before_the_apps_own_init_containers() {
    let state = State::new();
    state.apply_restore(
        "demo",
        restore("r", WorkloadKind::StatefulSet, "web", &[("data", "/d")]),
    );
    let server = TestServer::start(state).await;
    let mut review = fixture("pod-create-statefulset-web-0.json");
    review["request"]["object"]["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "busybox:1.36"}]);
    let a = send(&server, &review).await;
    let names: Vec<_> = a
        .pod
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["hoard-restore-wait", "migrate"]);
    server.stop().await;
}

#[tokio::test]
async fn session_runtime_settings_reach_the_init_container() {
    let state = State::new();
    let mut r = restore("r", WorkloadKind::StatefulSet, "web", &[("data", "/d")]);
    r.resources = Some(
        serde_json::from_value(
            json!({"limits": {"memory": "256M"}, "requests": {"memory": "256M"}}),
        )
        .unwrap(),
    );
    r.run_as_user = Some(2000);
    r.run_as_group = Some(2000);
    r.deadline_seconds = Some(120);
    state.apply_restore("demo", r);
    let server = TestServer::start(state).await;
    let a = send(&server, &fixture("pod-create-statefulset-web-0.json")).await;
    let c = &a
        .pod
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0];
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "256M");
    assert!(!res.limits.as_ref().unwrap().contains_key("cpu"));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(2000), Some(2000)));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(c.args.as_ref().unwrap().last().unwrap(), "120");
    server.stop().await;
}

#[tokio::test]
async fn auto_backup_annotation_patches_a_pod_without_labels_and_dry_run_gets_the_same_answer() {
    let server = TestServer::start(State::new()).await;
    let mut review = fixture("pod-create-dryrun.json");
    assert_eq!(review["request"]["dryRun"], true);
    review["request"]["object"]["metadata"]["annotations"]["hoard.dev/backup"] = json!("true");
    review["request"]["object"]["metadata"]["annotations"]["hoard.dev/volumes"] = json!("cache");
    let dry = send(&server, &review).await;
    assert_eq!(
        labels(&dry.pod),
        BTreeMap::from([("hoard.dev/host".to_owned(), "host-0".to_owned())]),
        "the fixture has no labels: the map is added whole"
    );
    assert_eq!(annotations(&dry.pod)["hoard.dev/target"], "Pod/dryrun");

    let mut real = review.clone();
    real["request"]["dryRun"] = json!(false);
    let wet = send(&server, &real).await;
    assert_eq!(
        dry.response, wet.response,
        "dry run and real request get the same answer"
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_hoard_annotations_warn_but_never_deny() {
    let server = TestServer::start(State::new()).await;
    let mut review = fixture("pod-create-bare.json");
    let ann = &mut review["request"]["object"]["metadata"]["annotations"];
    ann["hoard.dev/backup"] = json!("true");
    ann["hoard.dev/volumes"] = json!("scratch,nope");
    ann["hoard.dev/paths"] = json!("relative/dir");
    ann["hoard.dev/schedule"] = json!("every day");
    let a = send(&server, &review).await;
    assert_eq!(a.response["allowed"], true);
    let warnings: Vec<String> = serde_json::from_value(a.response["warnings"].clone()).unwrap();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].contains("relative/dir"), "{warnings:?}");
    assert!(warnings[1].contains("hoard.dev/schedule"), "{warnings:?}");
    assert!(warnings[2].contains("nope"), "{warnings:?}");
    assert_eq!(labels(&a.pod)["hoard.dev/host"], "host-0");

    let mut review = fixture("pod-create-bare.json");
    review["request"]["object"]["metadata"]["annotations"]["hoard.dev/backup"] = json!("yes");
    let a = send(&server, &review).await;
    assert_eq!(a.response["allowed"], true);
    assert!(a.patch.is_none());
    assert!(
        a.response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("use \"true\" or \"false\"")
    );
    server.stop().await;
}

#[tokio::test]
async fn http2_clients_are_answered_like_http1_clients() {
    let state = State::new();
    state.apply_backup(
        "demo",
        backup("web-backup", WorkloadKind::StatefulSet, "web"),
    );
    let server = TestServer::start(state).await;
    let review = fixture("pod-create-statefulset-web-0.json");
    let http1 = server.client().await.review(&review).await;
    let mut h2 = server.h2_sender().await;
    // Several reviews multiplexed on one connection.
    let mut pending = Vec::new();
    for _ in 0..4 {
        let req = http::Request::post("https://localhost/mutate/pods?timeout=10s")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(&review).unwrap(),
            )))
            .unwrap();
        pending.push(h2.send_request(req));
    }
    for resp in futures::future::join_all(pending).await {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer, http1);
    }
    server.stop().await;
}

#[tokio::test]
async fn what_hoard_injects_passes_pod_security_restricted() {
    let state = State::new();
    state.apply_restore(
        "demo",
        restore("r", WorkloadKind::StatefulSet, "web", &[("data", "/d")]),
    );
    let server = TestServer::start(state).await;
    let a = send(&server, &fixture("pod-create-statefulset-web-0.json")).await;
    // The fixture's own busybox container is not restricted; judge only
    // what Hoard added: its init-container and its volume.
    let mut spec = a.pod.spec.clone().unwrap();
    assert!(
        !api::pod_security::restricted_violations(&spec).is_empty(),
        "the checker flags the fixture's unrestricted app container"
    );
    spec.containers.clear();
    spec.volumes = Some(vec![status_volume()]);
    assert_eq!(spec.init_containers.as_ref().unwrap().len(), 1);
    assert_eq!(
        api::pod_security::restricted_violations(&spec),
        Vec::<String>::new()
    );
    server.stop().await;
}

/// `admission.k8s.io/v1` `AdmissionReview` as the kube-apiserver decodes a
/// webhook's answer (Go's `encoding/json`): `patch` is a `[]byte`, i.e. a
/// base64 string, and `patchType` must be `JSONPatch`. Deliberately not the
/// kube-core types: this test must fail if our answer only round-trips
/// through our own library.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoReview {
    api_version: String,
    kind: String,
    response: GoResponse,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoResponse {
    uid: String,
    allowed: bool,
    patch_type: Option<String>,
    patch: Option<String>,
}

#[tokio::test]
async fn the_patch_is_sent_in_the_wire_form_the_api_server_decodes() {
    use base64::Engine as _;
    let state = State::new();
    state.apply_replicaset(
        "demo",
        "app-7df4659c59",
        ReplicaSetOwner::Deployment("app".into()),
    );
    state.apply_backup(
        "demo",
        backup("app-backup", WorkloadKind::Deployment, "app"),
    );
    state.apply_restore(
        "demo",
        restore(
            "app-restore",
            WorkloadKind::Deployment,
            "app",
            &[("data", "/data")],
        ),
    );
    let server = TestServer::start(state).await;
    // The fixture's bytes exactly as the API server sent them.
    let raw = std::fs::read(common::fixture_path("pod-create-deployment.json")).unwrap();
    let mut client = server.client().await;
    let (status, body) = client
        .send(
            "POST",
            "/mutate/pods?timeout=10s",
            Some("application/json"),
            raw.clone(),
        )
        .await
        .unwrap();
    assert_eq!(status, http::StatusCode::OK);

    let answer: GoReview = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "not a v1 AdmissionReview ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    let request: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(answer.api_version, "admission.k8s.io/v1");
    assert_eq!(answer.kind, "AdmissionReview");
    assert_eq!(
        answer.response.uid,
        request["request"]["uid"].as_str().unwrap()
    );
    assert!(answer.response.allowed);
    assert_eq!(answer.response.patch_type.as_deref(), Some("JSONPatch"));
    let encoded = answer.response.patch.expect("a patch");
    // Go decodes []byte with base64.StdEncoding: standard alphabet, padded.
    let bytes = base64::prelude::BASE64_STANDARD
        .decode(&encoded)
        .unwrap_or_else(|e| panic!("patch {encoded:?} is not standard base64: {e}"));
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();

    let mut pod = request["request"]["object"].clone();
    let original = pod.clone();
    json_patch::patch(&mut pod, &patch).unwrap();

    // The expected pod: the original plus exactly Hoard's additions.
    let mut want = original;
    want["metadata"]["labels"]["hoard.dev/host"] = json!("host-0");
    let ann = &mut want["metadata"]["annotations"];
    ann["hoard.dev/host"] = json!("host-0");
    ann["hoard.dev/target"] = json!("Deployment/app");
    ann["hoard.dev/backup-configuration"] = json!("app-backup");
    ann["hoard.dev/restore-session"] = json!("app-restore");
    want["spec"]["initContainers"] =
        json!([serde_json::to_value(expected_init_container(json!([
            {"name": "hoard-restore-status", "mountPath": "/hoard/status"},
            {"name": "data", "mountPath": "/data", "readOnly": true}
        ])))
        .unwrap()]);
    want["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::to_value(status_volume()).unwrap());
    assert_eq!(pod, want);
    let typed: Pod = serde_json::from_value(pod).unwrap();
    assert_eq!(typed.metadata.labels.unwrap()["hoard.dev/host"], "host-0");
    server.stop().await;
}

#[tokio::test]
async fn malformed_annotations_become_one_event_on_the_workload_but_not_for_a_dry_run() {
    let state = State::new();
    state.apply_replicaset(
        "demo",
        "app-7df4659c59",
        ReplicaSetOwner::Deployment("app".into()),
    );
    let mut server = TestServer::start(state).await;
    let break_it = |review: &mut serde_json::Value| {
        let ann = &mut review["request"]["object"]["metadata"]["annotations"];
        if ann.is_null() {
            *ann = json!({});
        }
        ann["hoard.dev/backup"] = json!("true");
        ann["hoard.dev/schedule"] = json!("every day");
    };

    // A Deployment pod: the event names the Deployment (its pod template
    // carries the annotations), not the ReplicaSet or the pod.
    let mut review = fixture("pod-create-deployment.json");
    break_it(&mut review);
    let a = send(&server, &review).await;
    assert_eq!(a.response["allowed"], true);
    let warnings: Vec<String> = serde_json::from_value(a.response["warnings"].clone()).unwrap();
    let ev = server.events.try_recv().expect("an event was queued");
    assert_eq!(ev.regarding.kind.as_deref(), Some("Deployment"));
    assert_eq!(ev.regarding.api_version.as_deref(), Some("apps/v1"));
    assert_eq!(ev.regarding.name.as_deref(), Some("app"));
    assert_eq!(ev.regarding.namespace.as_deref(), Some("demo"));
    assert_eq!(ev.regarding.uid, None, "looked up off the admission path");
    assert_eq!(ev.note, warnings.join("; "));
    assert!(ev.note.contains("hoard.dev/schedule"), "{}", ev.note);

    // A StatefulSet pod: the owner reference gives the uid.
    let mut review = fixture("pod-create-statefulset-web-0.json");
    break_it(&mut review);
    send(&server, &review).await;
    let ev = server.events.try_recv().expect("an event was queued");
    assert_eq!(ev.regarding.kind.as_deref(), Some("StatefulSet"));
    assert_eq!(ev.regarding.name.as_deref(), Some("web"));
    let owner_uid = review["request"]["object"]["metadata"]["ownerReferences"][0]["uid"].clone();
    assert_eq!(json!(ev.regarding.uid), owner_uid);

    // A dry run gets the same warnings and no side effect.
    let mut review = fixture("pod-create-dryrun.json");
    break_it(&mut review);
    let a = send(&server, &review).await;
    assert!(a.response["warnings"][0].is_string());
    // Well-formed annotations: no event either.
    let mut review = fixture("pod-create-bare.json");
    review["request"]["object"]["metadata"]["annotations"] = json!({"hoard.dev/backup": "true"});
    let a = send(&server, &review).await;
    assert!(a.response.get("warnings").is_none(), "{}", a.response);
    assert!(server.events.try_recv().is_err(), "no event for either");
    server.stop().await;
}

fn warnings_of(a: &Answered) -> Vec<String> {
    serde_json::from_value(a.response["warnings"].clone()).unwrap_or_default()
}

fn init_containers(a: &Answered) -> Vec<Container> {
    a.pod
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .clone()
        .unwrap_or_default()
}

/// The API server applies the patch, defaults and then validates the pod:
/// session resources it would refuse (a quantity it cannot decode, a
/// negative one, a request above its limit, claims the pod does not
/// declare, resources restore-wait has no use for) would make every pod of
/// the workload fail to be created, whatever the failurePolicy. The
/// init-container falls back to its defaults and the user is warned.
#[tokio::test]
async fn session_resources_the_api_server_would_refuse_fall_back_to_the_defaults() {
    let defaults = expected_init_container(json!([])).resources.unwrap();
    for (resources, why) in [
        (
            json!({"requests": {"memory": "512Mi"}, "limits": {"memory": "256Mi"}}),
            "memory",
        ),
        (json!({"limits": {"memory": "lots"}}), "lots"),
        (json!({"requests": {"cpu": "-100m"}}), "-100m"),
        (json!({"claims": [{"name": "gpu"}]}), "claims"),
        (json!({"limits": {"nvidia.com/gpu": "1"}}), "nvidia.com/gpu"),
        (
            json!({"requests": {"cpu": "1.5"}, "limits": {"cpu": "1500m", "memory": "1e3"},
                   "claims": []}),
            "",
        ),
    ] {
        let state = State::new();
        let mut r = restore("r", WorkloadKind::StatefulSet, "web", &[("data", "/d")]);
        r.resources = Some(serde_json::from_value(resources.clone()).unwrap());
        state.apply_restore("demo", r);
        let server = TestServer::start(state).await;
        let a = send(&server, &fixture("pod-create-statefulset-web-0.json")).await;
        let c = &init_containers(&a)[0];
        let warnings = warnings_of(&a);
        if why.is_empty() {
            // valid: kept as written, no warning
            assert_eq!(
                serde_json::to_value(c.resources.as_ref().unwrap()).unwrap(),
                resources,
                "{resources}"
            );
            assert!(warnings.is_empty(), "{resources}: {warnings:?}");
        } else {
            assert_eq!(c.resources.as_ref(), Some(&defaults), "{resources}");
            assert_eq!(warnings.len(), 1, "{resources}: {warnings:?}");
            assert!(
                warnings[0].contains("runtimeSettings.container.resources")
                    && warnings[0].contains(why),
                "{resources}: {warnings:?}"
            );
        }
        server.stop().await;
    }
}

/// The API server forbids the Linux security settings restore-wait runs
/// with (capabilities, seccompProfile, runAsUser, ...) on a pod with
/// `spec.os.name: windows`: injecting it would make the pod invalid. Such a
/// pod keeps its identity, is not held, and the user is told why.
#[tokio::test]
async fn a_windows_pod_is_not_held_since_the_api_server_would_refuse_it() {
    let state = State::new();
    state.apply_backup("demo", backup("b", WorkloadKind::StatefulSet, "web"));
    state.apply_restore(
        "demo",
        restore("r", WorkloadKind::StatefulSet, "web", &[("data", "/d")]),
    );
    let server = TestServer::start(state).await;
    let mut review = fixture("pod-create-statefulset-web-0.json");
    review["request"]["object"]["spec"]["os"] = json!({"name": "windows"});
    let a = send(&server, &review).await;
    assert!(init_containers(&a).is_empty(), "{:?}", init_containers(&a));
    assert_eq!(labels(&a.pod)["hoard.dev/host"], "host-0");
    assert!(!annotations(&a.pod).contains_key("hoard.dev/restore-session"));
    let warnings = warnings_of(&a);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("windows"), "{warnings:?}");
    server.stop().await;
}

/// Container names are unique across a pod's containers and
/// init-containers: an application container already named
/// `hoard-restore-wait` makes the injection a duplicate the API server
/// refuses.
#[tokio::test]
async fn an_app_container_named_like_the_init_container_is_not_duplicated() {
    let state = State::new();
    state.apply_restore(
        "demo",
        restore("r", WorkloadKind::StatefulSet, "web", &[("data", "/d")]),
    );
    let server = TestServer::start(state).await;
    let mut review = fixture("pod-create-statefulset-web-0.json");
    review["request"]["object"]["spec"]["containers"][0]["name"] = json!("hoard-restore-wait");
    let a = send(&server, &review).await;
    assert!(init_containers(&a).is_empty());
    let warnings = warnings_of(&a);
    assert!(
        warnings.iter().any(|w| w.contains("hoard-restore-wait")),
        "{warnings:?}"
    );
    server.stop().await;
}

/// A container's mount paths must be unique and not empty: a session that
/// mounts two volumes at one path (or one at "") must not make the pod
/// invalid; the first mount at a path wins and the rest are reported.
#[tokio::test]
async fn session_mounts_the_api_server_would_refuse_are_left_out() {
    let state = State::new();
    state.apply_restore(
        "demo",
        restore(
            "r",
            WorkloadKind::StatefulSet,
            "web",
            &[("data", "/d"), ("data", "/d"), ("data", "")],
        ),
    );
    let server = TestServer::start(state).await;
    let a = send(&server, &fixture("pod-create-statefulset-web-0.json")).await;
    let c = &init_containers(&a)[0];
    let paths: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(paths, ["/hoard/status", "/d"]);
    let warnings = warnings_of(&a);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    server.stop().await;
}

/// User and group ids are validated as 0..=2147483647 by the API server
/// (the CRD's int64 lets larger ones through): such a session's ids would
/// make the pod invalid, so restore-wait keeps its own ids and the user is
/// warned.
#[tokio::test]
async fn session_user_ids_the_api_server_would_refuse_are_not_used() {
    let state = State::new();
    let mut r = restore("r", WorkloadKind::StatefulSet, "web", &[("data", "/d")]);
    r.run_as_user = Some(4_294_967_295);
    r.run_as_group = Some(2_147_483_648);
    state.apply_restore("demo", r);
    let server = TestServer::start(state).await;
    let a = send(&server, &fixture("pod-create-statefulset-web-0.json")).await;
    let sc = init_containers(&a)[0].security_context.clone().unwrap();
    assert_eq!(
        (sc.run_as_user, sc.run_as_group),
        (Some(65532), Some(65532))
    );
    let warnings = warnings_of(&a);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("runAsUser 4294967295"), "{warnings:?}");
    assert!(
        warnings[1].contains("runAsGroup 2147483648"),
        "{warnings:?}"
    );
    server.stop().await;
}

/// With pod-level resources (`spec.resources`), the API server requires
/// every container's limits to fit within the pod's and the containers'
/// requests to add up within the pod's: the init-container's default
/// resources could break a small pod's budget. It then gets none and runs
/// within the pod's budget, as containers without resources do.
#[tokio::test]
async fn a_pod_with_pod_level_resources_gets_an_init_container_within_its_budget() {
    let state = State::new();
    state.apply_restore(
        "demo",
        restore("r", WorkloadKind::StatefulSet, "web", &[("data", "/d")]),
    );
    let server = TestServer::start(state).await;
    let mut review = fixture("pod-create-statefulset-web-0.json");
    review["request"]["object"]["spec"]["resources"] = json!({"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"cpu": "50m", "memory": "8Mi"}});
    let a = send(&server, &review).await;
    let c = &init_containers(&a)[0];
    assert_eq!(c.name, "hoard-restore-wait");
    assert!(
        c.resources
            .as_ref()
            .is_none_or(|r| r.limits.is_none() && r.requests.is_none()),
        "{:?}",
        c.resources
    );
    assert!(warnings_of(&a).is_empty(), "{:?}", warnings_of(&a));
    server.stop().await;
}
