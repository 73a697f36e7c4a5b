//! The objects the scenarios create, as a user would write them.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use serde_json::{Value, json};

use crate::env::TEST_NODE_LABEL;
use crate::{REPO_NAME, TestCtx};

/// Name and mount path of the data volume of every test workload.
pub const DATA_VOLUME: &str = "data";
pub const DATA_PATH: &str = "/data";

/// Scheduler name of the suite's pods when it plays the scheduler: a
/// cluster's own scheduler leaves them alone.
pub const SCHEDULER: &str = "hoard-e2e";

/// A pod template with one emptyDir `data` volume at `/data`, on the test
/// nodes only, tolerating every taint (fake nodes are tainted so that no
/// other pod lands on them, and may be marked not-ready between heartbeats).
pub fn pod_template(t: &TestCtx, app: &str, annotations: Value) -> Value {
    template(t.env.fake_kubelet, app, annotations)
}

fn template(fake: bool, app: &str, annotations: Value) -> Value {
    let mut tpl = json!({
        "metadata": { "labels": { "app": app }, "annotations": annotations },
        "spec": {
            // Deleted pods go at once: the API server waits for a kubelet's
            // confirmation only when there is a grace period.
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{
                "name": "app",
                "image": "docker.io/library/busybox:1.37",
                "command": ["sh", "-c", "sleep 3600"],
                "volumeMounts": [{ "name": DATA_VOLUME, "mountPath": DATA_PATH }],
            }],
            "volumes": [{ "name": DATA_VOLUME, "emptyDir": {} }],
            "nodeSelector": { TEST_NODE_LABEL: "true" },
        },
    });
    if fake {
        tpl["spec"]["schedulerName"] = json!(SCHEDULER);
    }
    tpl
}

pub fn statefulset(t: &TestCtx, name: &str, replicas: i32) -> anyhow::Result<StatefulSet> {
    Ok(serde_json::from_value(statefulset_body(
        t.env.fake_kubelet,
        name,
        replicas,
    ))?)
}

fn statefulset_body(fake: bool, name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": name },
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            // Parallel: the pods do not wait for each other (OrderedReady
            // creates pod N+1 once pod N is Running and Ready), only for
            // their data.
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": name } },
            "template": template(fake, name, json!({})),
        },
    })
}

pub fn deployment(
    t: &TestCtx,
    name: &str,
    replicas: i32,
    annotations: Value,
) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(deployment_body(
        t.env.fake_kubelet,
        name,
        replicas,
        annotations,
    ))?)
}

fn deployment_body(fake: bool, name: &str, replicas: i32, annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": template(fake, name, annotations),
        },
    })
}

/// A DaemonSet on the test nodes only.
pub fn daemonset(t: &TestCtx, name: &str) -> anyhow::Result<DaemonSet> {
    Ok(serde_json::from_value(daemonset_body(
        t.env.fake_kubelet,
        name,
    ))?)
}

fn daemonset_body(fake: bool, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": name },
        "spec": {
            "selector": { "matchLabels": { "app": name } },
            "template": template(fake, name, json!({})),
        },
    })
}

/// A configuration backing up `/data` of workload `kind/name` into the
/// test's repository.
pub fn backup_configuration(
    name: &str,
    kind: &str,
    target: &str,
    schedule: Option<&str>,
    extra: Value,
) -> anyhow::Result<api::BackupConfiguration> {
    Ok(serde_json::from_value(backup_configuration_body(
        name, kind, target, schedule, extra,
    ))?)
}

fn backup_configuration_body(
    name: &str,
    kind: &str,
    target: &str,
    schedule: Option<&str>,
    extra: Value,
) -> Value {
    let mut spec = json!({
        "repository": { "name": REPO_NAME },
        "target": {
            "ref": { "apiVersion": api_version_of(kind), "kind": kind, "name": target },
            "volumeMounts": [{ "name": DATA_VOLUME, "mountPath": DATA_PATH }],
            "paths": [DATA_PATH],
        },
    });
    if let Some(s) = schedule {
        spec["schedule"] = json!(s);
    }
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({
        "apiVersion": "hoard.dev/v1beta1",
        "kind": "BackupConfiguration",
        "metadata": { "name": name },
        "spec": spec,
    })
}

/// `apiVersion` of a target of kind `kind`.
pub fn api_version_of(kind: &str) -> &'static str {
    match kind {
        "PersistentVolumeClaim" | "Pod" | "ReplicationController" => "v1",
        _ => "apps/v1",
    }
}

/// `runtimeSettings` for the worker pods the controllers create (standalone
/// PVCs): when the suite plays the scheduler, they ask for it by name (it
/// binds no other pods) and tolerate the fake nodes' taint.
pub fn worker_runtime_settings(t: &TestCtx) -> Value {
    worker_settings(t.env.fake_kubelet)
}

fn worker_settings(fake: bool) -> Value {
    if fake {
        json!({ "pod": {
            "schedulerName": SCHEDULER,
            "tolerations": [{ "operator": "Exists" }],
        } })
    } else {
        json!({})
    }
}

/// A `RestoreSession` named `name` restoring host-0's latest snapshot of
/// `/data` into claim `claim` (a standalone PVC: one worker pod).
pub fn pvc_restore_session(
    t: &TestCtx,
    name: &str,
    claim: &str,
) -> anyhow::Result<api::RestoreSession> {
    Ok(serde_json::from_value(pvc_restore_body(
        t.env.fake_kubelet,
        name,
        claim,
    ))?)
}

fn pvc_restore_body(fake: bool, name: &str, claim: &str) -> Value {
    json!({
        "apiVersion": "hoard.dev/v1beta1",
        "kind": "RestoreSession",
        "metadata": { "name": name },
        "spec": {
            "repository": { "name": REPO_NAME },
            "target": {
                "ref": { "apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": claim },
                "volumeMounts": [{ "name": DATA_VOLUME, "mountPath": DATA_PATH }],
            },
            "rules": [{ "targetHosts": [], "sourceHost": "host-0", "paths": [DATA_PATH] }],
            "runtimeSettings": worker_settings(fake),
        },
    })
}

/// An instant backup: a session a user creates for configuration `config`.
pub fn backup_session(config: &str) -> anyhow::Result<api::BackupSession> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "hoard.dev/v1beta1",
        "kind": "BackupSession",
        "metadata": {
            "generateName": format!("{config}-"),
            "labels": { api::keys::LABEL_BACKUP_CONFIGURATION: config },
        },
        "spec": { "invoker": {
            "apiGroup": "hoard.dev", "kind": "BackupConfiguration", "name": config,
        } },
    }))?)
}

/// What the webhook would do to a pod of `kind/name`: a server-side dry-run
/// create of such a pod (no side effects), returning the mutated pod.
pub async fn probe_pod(t: &TestCtx, kind: &str, name: &str) -> anyhow::Result<Pod> {
    let node = t
        .env
        .nodes
        .first()
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let (pod_name, owner_kind, owner_name, labels) = match kind {
        "StatefulSet" => (
            format!("{name}-0"),
            "StatefulSet".to_string(),
            name.to_string(),
            json!({ "app": name, api::keys::POD_INDEX_LABEL: "0",
                    api::keys::STATEFULSET_POD_NAME_LABEL: format!("{name}-0") }),
        ),
        "Deployment" => (
            format!("{name}-5d8f9c7b6-probe"),
            "ReplicaSet".to_string(),
            format!("{name}-5d8f9c7b6"),
            json!({ "app": name, "pod-template-hash": "5d8f9c7b6" }),
        ),
        _ => (
            format!("{name}-probe"),
            kind.to_string(),
            name.to_string(),
            json!({ "app": name }),
        ),
    };
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": owner_kind, "name": owner_name,
                "uid": "00000000-0000-0000-0000-000000000000", "controller": true,
            }],
        },
        "spec": pod_template(t, name, json!({}))["spec"].clone(),
    });
    pod["spec"]["nodeName"] = json!(node);
    let pod: Pod = serde_json::from_value(pod)?;
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    t.api::<Pod>()
        .create(&pp, &pod)
        .await
        .context("dry-run create of a probe pod")
}

/// Waits until the webhook's caches know what the test just created: a
/// dry-run pod of `kind/name` comes back the way `ok` wants. The webhook
/// learns of configurations and sessions through watches, so a pod created
/// right after them could be admitted before; this awaits that, polling the
/// dry run (which has no side effects) a few times a second.
pub async fn await_webhook<F>(
    t: &TestCtx,
    kind: &str,
    name: &str,
    what: &str,
    ok: F,
) -> anyhow::Result<()>
where
    F: Fn(&Pod) -> bool,
{
    let limit = Duration::from_secs(30);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let last = match probe_pod(t, kind, name).await {
            Ok(pod) if ok(&pod) => return Ok(()),
            Ok(pod) => format!("the last dry-run pod: {:?}", pod.metadata),
            // e.g. the namespace's default ServiceAccount not created yet
            Err(e) => format!("the last dry run failed: {e:#}"),
        };
        anyhow::ensure!(
            start.elapsed() < limit,
            "the webhook ({}) did not {what} within {limit:?}; {last}",
            t.env.webhook_url,
        );
    }
}

/// The shipped webhook registration, `webhooks[0]` of
/// manifests/base/webhook-configuration.yaml.
pub fn shipped_webhook() -> anyhow::Result<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base/webhook-configuration.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: Value =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    cfg["webhooks"]
        .get(0)
        .cloned()
        .with_context(|| format!("{} registers no webhook", path.display()))
}

/// A MutatingWebhookConfiguration `name` registering webhook `hook` at
/// `url` for the pods of namespace `ns` only, with every other field
/// (failurePolicy, timeoutSeconds, sideEffects, rules, objectSelector, ...)
/// as `shipped` has it.
pub fn own_webhook_config_body(
    name: &str,
    run_id: &str,
    hook: &str,
    url: &str,
    ca_pem: &[u8],
    ns: &str,
    shipped: &Value,
) -> anyhow::Result<Value> {
    let mut webhook = shipped.clone();
    let ca = serde_json::to_value(k8s_openapi::ByteString(ca_pem.to_vec()))?;
    webhook["name"] = json!(hook);
    webhook["clientConfig"] = json!({ "url": url, "caBundle": ca });
    webhook["namespaceSelector"] = json!({ "matchLabels": { "kubernetes.io/metadata.name": ns } });
    Ok(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": name, "labels": { crate::E2E_LABEL: run_id } },
        "webhooks": [webhook],
    }))
}

/// A bare pod `name` with Hoard's auto-backup annotation: the webhook
/// patches it (host `host-0`) whatever else exists.
pub fn auto_backup_pod(t: &TestCtx, name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(auto_backup_pod_body(
        t.env.fake_kubelet,
        name,
    ))?)
}

fn auto_backup_pod_body(fake: bool, name: &str) -> Value {
    let tpl = template(fake, name, json!({ api::keys::ANNOTATION_BACKUP: "true" }));
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": tpl["metadata"]["labels"],
                      "annotations": tpl["metadata"]["annotations"] },
        "spec": tpl["spec"],
    })
}

/// The pod's `hoard.dev/host` annotation.
pub fn host_of(p: &Pod) -> Option<&str> {
    p.metadata
        .annotations
        .as_ref()?
        .get(api::keys::ANNOTATION_HOST)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_schema;

    /// The objects are typed before they are sent, which drops a field the
    /// type does not know: each must survive that as written.
    #[test]
    fn the_workloads_and_hoard_objects_are_what_the_schemas_read() {
        for fake in [true, false] {
            check_schema::<StatefulSet>(&statefulset_body(fake, "web", 3)).unwrap();
            check_schema::<Deployment>(&deployment_body(fake, "app", 2, json!({ "a": "b" })))
                .unwrap();
            check_schema::<DaemonSet>(&daemonset_body(fake, "agents")).unwrap();
            check_schema::<api::RestoreSession>(&pvc_restore_body(fake, "r", "restored")).unwrap();
            let extra = json!({ "runtimeSettings": worker_settings(fake) });
            let cfg = backup_configuration_body("c", "PersistentVolumeClaim", "data", None, extra);
            check_schema::<api::BackupConfiguration>(&cfg).unwrap();
            assert_eq!(cfg["spec"]["target"]["ref"]["apiVersion"], "v1");
        }
        let cfg = backup_configuration_body(
            "c",
            "StatefulSet",
            "web",
            Some("* * * * *"),
            json!({ "retentionPolicy": { "name": "keep-2", "keepLast": 2, "prune": true } }),
        );
        check_schema::<api::BackupConfiguration>(&cfg).unwrap();
        assert_eq!(cfg["spec"]["target"]["ref"]["apiVersion"], "apps/v1");
        for fake in [true, false] {
            let pod = auto_backup_pod_body(fake, "probe");
            check_schema::<Pod>(&pod).unwrap();
            assert_eq!(
                pod["metadata"]["annotations"][api::keys::ANNOTATION_BACKUP],
                "true"
            );
        }
    }

    /// Scenario 8b's registration differs from the shipped one only in
    /// name, address and namespace: what it shows holds for the shipped one.
    #[test]
    fn the_own_webhook_registration_keeps_the_shipped_policy() {
        let shipped = shipped_webhook().unwrap();
        let cfg = own_webhook_config_body(
            "hoard-e2e-down-ns1",
            "r1",
            "ns1.down.hoard.dev",
            "https://127.0.0.1:9443/mutate/pods",
            b"PEM",
            "ns1",
            &shipped,
        )
        .unwrap();
        check_schema::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>(
            &cfg,
        )
        .unwrap();
        let ours = cfg["webhooks"][0].as_object().unwrap();
        let theirs = shipped.as_object().unwrap();
        for (k, v) in theirs {
            if !["name", "clientConfig", "namespaceSelector"].contains(&k.as_str()) {
                assert_eq!(ours.get(k), Some(v), "webhooks[0].{k}");
            }
        }
        assert_eq!(ours["failurePolicy"], "Ignore");
        assert_eq!(
            ours["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "ns1"
        );
    }
}
