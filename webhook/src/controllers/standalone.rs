//! Backups of standalone PVCs (target kind `PersistentVolumeClaim`).
//!
//! The agent backs a PVC up through a Running pod that mounts it
//! (`owner::belongs_to` in the agent). When an application pod mounts it,
//! that pod serves and nothing is created. When none does, this controller
//! creates a short-lived worker pod ([`super::pods`]) that mounts it — only
//! then, so a ReadWriteOnce volume is never wanted on two nodes at once —
//! and deletes it once the PVC's host finished, the session finished
//! (either way, a deadline included) or the session's configuration is gone.
//! Worker pods are owned by the session, so deleting the session (history
//! limit) removes any that are left.
//!
//! A worker that fails is kept and replaced after an exponential backoff
//! (10 s doubling, at most [`WORKER_ATTEMPTS`] attempts; a `WorkerPodFailed`
//! warning says when the next starts); after the last, the PVC's host is
//! failed in the session's status with the pod's reason, so the session
//! finishes then instead of at its deadline ([`super::pods::retry`]).
//!
//! The agents act on session events; a worker that starts running raises
//! none, so the controller then annotates the session
//! (`hoard.dev/worker-ready: <pod>`), once, which is the event the agents
//! need to back the PVC up through it.
//!
//! A session that waits for an older one of its configuration (condition
//! `Waiting`) gets no worker until the wait is lifted.
//!
//! Data flow: read the session, its configuration and the namespace's pods;
//! [`plan_pvc_workers`] decides; create and delete pods, annotate the session.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, VolumeMount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use api::common::{Phase, TargetRef};
use api::host::{HOST_0, WorkloadKind, target_annotation};
use api::keys::{self, FIELD_MANAGER};
use api::{BackupConfiguration, BackupSession, HostBackupStats};

use super::plan::HostEntry;
use super::plan::Notice;
use super::pods::{
    DEFAULT_MOUNT_PATH, Retry, WORKER_ATTEMPTS, WorkerPod, attempt_pod_name, claim_users,
    current_worker, failure_reason, has_failed, is_terminal, retry, target_of, until, worker_pod,
    workers_of,
};
use super::{Context, Error};
use crate::mutate::InjectConfig;

/// How often a session whose PVC is held by a pod that is not Running yet
/// looks again (that pod's start raises no event on the session).
pub const RECHECK: Duration = Duration::from_secs(30);

/// What to do for one session.
#[derive(Debug, Clone, Default)]
pub struct PvcPlan {
    /// A worker that runs now, before its host reported: annotate the
    /// session with its name so the agents see a session event.
    pub nudge: Option<String>,
    pub create: Vec<Pod>,
    pub delete: Vec<String>,
    pub notices: Vec<Notice>,
    /// Events about a state that lasts across reconciles, each published
    /// once under its key (a failed pod's name: one per attempt).
    pub notices_once: Vec<(String, Notice)>,
    pub requeue: Option<Duration>,
    /// Hosts (by batch target) whose worker failed every attempt: failed
    /// in the session's status with the reason, so the session finishes
    /// now instead of at its deadline.
    pub fail_hosts: Vec<(Option<TargetRef>, String)>,
}

fn sooner(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn host_finished(session: &BackupSession, target: Option<&TargetRef>) -> bool {
    session
        .status
        .as_ref()
        .and_then(|s| s.stats.as_ref())
        .into_iter()
        .flatten()
        .any(|h| {
            h.hostname == HOST_0
                && h.target.as_ref() == target
                && h.phase.is_some_and(Phase::is_finished)
        })
}

fn host_reported(session: &BackupSession, target: Option<&TargetRef>) -> bool {
    session
        .status
        .as_ref()
        .and_then(|s| s.stats.as_ref())
        .into_iter()
        .flatten()
        .any(|h| h.hostname == HOST_0 && h.target.as_ref() == target)
}

/// Decides the worker pods of `session`. `config` is its configuration
/// (`None`: gone), `pods` the namespace's pods.
pub fn plan_pvc_workers(
    session: &BackupSession,
    config: Option<&BackupConfiguration>,
    pods: &[Pod],
    cfg: &InjectConfig,
    now: Timestamp,
) -> PvcPlan {
    let mut plan = PvcPlan::default();
    let uid = session.uid().unwrap_or_default();
    let name = session.name_any();
    let ns = session.namespace().unwrap_or_default();
    let workers = workers_of(pods, &uid);
    let finished = session
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(Phase::is_finished);
    let live = |p: &&&Pod| p.metadata.deletion_timestamp.is_none();
    let Some(config) = config.filter(|_| !finished) else {
        plan.delete = workers.iter().filter(live).map(|p| p.name_any()).collect();
        return plan;
    };
    let batch = config.spec.targets.as_ref().is_some_and(|t| !t.is_empty());
    let timeout = config
        .spec
        .timeout()
        .unwrap_or(api::phase::DEFAULT_SESSION_TIMEOUT);
    let mut wanted = Vec::new();
    for (i, t) in config.spec.all_targets().enumerate() {
        let r = &t.target_ref;
        if WorkloadKind::parse(&r.kind) != Some(WorkloadKind::PersistentVolumeClaim) {
            continue;
        }
        let annotation = target_annotation(WorkloadKind::PersistentVolumeClaim, &r.name);
        let mine = current_worker(
            workers
                .iter()
                .copied()
                .filter(|p| target_of(p) == Some(annotation.as_str())),
        );
        if host_finished(session, batch.then_some(r)) {
            continue;
        }
        let mut attempt = 1;
        if let Some(p) = mine.filter(|p| has_failed(p)) {
            let reason = failure_reason(p);
            let pod = p.name_any();
            match retry(p, now) {
                Retry::Wait { at, next } => {
                    // Kept until replaced: it carries the attempt count.
                    wanted.push(pod.clone());
                    plan.requeue = sooner(plan.requeue, until(now, at));
                    plan.notices_once.push((format!("{}/{pod}", ns), Notice {
                        warning: true,
                        reason: "WorkerPodFailed",
                        action: "Backup",
                        note: format!(
                            "worker pod {pod} for PVC {} failed: {reason}; attempt {next} of {WORKER_ATTEMPTS} starts at {at}",
                            r.name
                        ),
                    }));
                    continue;
                }
                Retry::GiveUp { attempts } => {
                    wanted.push(pod.clone());
                    let msg = format!(
                        "the worker pod that mounts PVC {} failed {attempts} times (the last, {pod}: {reason}); see kubectl -n {ns} describe pod {pod}, fix the cause (image, node, PVC) and start a new backup",
                        r.name
                    );
                    plan.notices.push(Notice {
                        warning: true,
                        reason: "WorkerPodGaveUp",
                        action: "Backup",
                        note: msg.clone(),
                    });
                    plan.fail_hosts.push((batch.then(|| r.clone()), msg));
                    continue;
                }
                // Replaced below, once nothing else holds the PVC.
                Retry::Now { next } => attempt = next,
            }
        } else if let Some(p) = mine {
            wanted.push(p.name_any());
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let told = session
                .annotations()
                .get(keys::ANNOTATION_WORKER_READY)
                .is_some_and(|v| *v == p.name_any());
            if running && !told && !host_reported(session, batch.then_some(r)) {
                plan.nudge = Some(p.name_any());
            }
            continue;
        }
        let users = claim_users(pods, &r.name);
        if !users.is_empty() {
            let running = users
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
            if !running {
                // Pending: it will mount the PVC; the agent uses it once it
                // runs. Look again in case it never does.
                plan.requeue = Some(RECHECK);
            }
            continue;
        }
        let given: &[VolumeMount] = t.volume_mounts.as_deref().unwrap_or_default();
        let volume = given
            .first()
            .map_or("data", |m| m.name.as_str())
            .to_string();
        let mut mounts: Vec<VolumeMount> =
            given.iter().filter(|m| m.name == volume).cloned().collect();
        if mounts.is_empty() {
            mounts.push(VolumeMount {
                name: volume.clone(),
                mount_path: DEFAULT_MOUNT_PATH.into(),
                ..Default::default()
            });
        }
        let pod = worker_pod(
            &WorkerPod {
                name: attempt_pod_name(&name, &format!("pvc-{i}"), attempt),
                namespace: &ns,
                owner: session.controller_owner_ref(&()).unwrap_or_default(),
                session_uid: &uid,
                host: HOST_0.into(),
                target: annotation,
                claims: vec![(volume, r.name.clone())],
                mounts,
                restore: None,
                settings: config
                    .spec
                    .runtime_settings
                    .as_ref()
                    .and_then(|s| s.pod.as_ref()),
                deadline_seconds: timeout.as_secs().max(1),
                attempt,
            },
            cfg,
        );
        plan.notices.push(Notice {
            warning: false,
            reason: "WorkerPodCreated",
            action: "Backup",
            note: if attempt > 1 {
                format!(
                    "created pod {} to mount PVC {} for the backup, attempt {attempt} of {WORKER_ATTEMPTS}",
                    pod.name_any(),
                    r.name
                )
            } else {
                format!(
                    "no running pod mounts PVC {}: created pod {} to mount it for the backup; it is removed when the backup finished",
                    r.name,
                    pod.name_any()
                )
            },
        });
        wanted.push(pod.name_any());
        plan.create.push(pod);
    }
    // Workers whose PVC finished, that were replaced, or that ended without
    // failing (a failed one is kept until replaced: it holds the count).
    plan.delete = workers
        .iter()
        .filter(live)
        .filter(|p| !wanted.contains(&p.name_any()) || (is_terminal(p) && !has_failed(p)))
        .map(|p| p.name_any())
        .collect();
    plan
}

fn pp_patch() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// The session's host entries with `fails` (batch target, reason) failed:
/// an entry the agent wrote is marked failed, a missing one is added.
pub fn with_failed_hosts(
    session: &BackupSession,
    fails: &[(Option<TargetRef>, String)],
) -> Vec<HostBackupStats> {
    let mut stats = session
        .status
        .as_ref()
        .and_then(|s| s.stats.clone())
        .unwrap_or_default();
    for (target, msg) in fails {
        match stats
            .iter_mut()
            .find(|h| h.hostname == HOST_0 && h.target.as_ref() == target.as_ref())
        {
            Some(h) => h.fail(msg.clone()),
            None => stats.push(HostBackupStats::never_reported(
                HOST_0.into(),
                target.clone(),
                msg.clone(),
            )),
        }
    }
    stats
}

/// `true` when `config` backs up a PVC.
fn has_pvc_target(config: &BackupConfiguration) -> bool {
    config.spec.all_targets().any(|t| {
        WorkloadKind::parse(&t.target_ref.kind) == Some(WorkloadKind::PersistentVolumeClaim)
    })
}

/// The session waits for an older one of its configuration (its `Waiting`
/// condition, set by the roll-up, is `True`).
fn is_waiting(session: &BackupSession) -> bool {
    session
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == api::backup::CONDITION_WAITING && c.status == "True")
}

pub async fn reconcile(session: Arc<BackupSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = session.name_any();
    let ns = session.namespace().ok_or_else(|| Error::NotNamespaced {
        kind: "BackupSession",
        name: name.clone(),
    })?;
    let uid = session.uid().unwrap_or_default();
    if is_waiting(&session) {
        // An older session of the configuration is unfinished (and may hold
        // the PVC through its own worker): no worker until the roll-up
        // lifts the wait, which changes the session and brings it back.
        ctx.succeeded(session.as_ref());
        return Ok(Action::await_change());
    }
    let finished = session
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(Phase::is_finished);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = ListParams::default().labels(&format!("{}={uid}", keys::LABEL_SESSION_UID));
    let (config, pods) = if finished {
        (None, pods_api.list(&selector).await?.items)
    } else {
        let config = Api::<BackupConfiguration>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&session.spec.invoker.name)
            .await?;
        match config {
            Some(c) if has_pvc_target(&c) => {
                (Some(c), pods_api.list(&ListParams::default()).await?.items)
            }
            // Nothing to mount; leftovers of an edited configuration are
            // removed when the session finishes (or with it).
            Some(_) => {
                ctx.succeeded(session.as_ref());
                return Ok(Action::await_change());
            }
            None => (None, pods_api.list(&selector).await?.items),
        }
    };
    let plan = plan_pvc_workers(
        &session,
        config.as_ref(),
        &pods,
        &ctx.settings.inject,
        (ctx.now)(),
    );
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    for pod in &plan.create {
        match pods_api.create(&pp, pod).await {
            Ok(_) => {
                info!(%ns, session = %name, pod = %pod.name_any(), "backup worker pod created")
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(pod) = &plan.nudge {
        let body = serde_json::json!({
            "metadata": { "annotations": { keys::ANNOTATION_WORKER_READY: pod } }
        });
        Api::<BackupSession>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &pp_patch(), &Patch::Merge(&body))
            .await?;
        info!(%ns, session = %name, %pod, "worker pod running; agents notified through the session");
    }
    for pod in &plan.delete {
        match pods_api.delete(pod, &DeleteParams::background()).await {
            Ok(_) => info!(%ns, session = %name, %pod, "backup worker pod deleted"),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !plan.fail_hosts.is_empty() {
        // Guarded by the resourceVersion: agents write `stats` too, and a
        // stale list must fail (and retry), not drop their entries.
        let body = serde_json::json!({
            "metadata": { "resourceVersion": session.resource_version() },
            "status": { "stats": with_failed_hosts(&session, &plan.fail_hosts) },
        });
        Api::<BackupSession>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &pp_patch(), &Patch::Merge(&body))
            .await?;
        info!(%ns, session = %name, hosts = plan.fail_hosts.len(), "worker pods failed every attempt; hosts failed");
    }
    for n in &plan.notices {
        ctx.publish(session.as_ref(), n).await;
    }
    for (key, n) in &plan.notices_once {
        ctx.publish_once(session.as_ref(), n, key).await;
    }
    ctx.succeeded(session.as_ref());
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use http::Method;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::{Value, json};

    use api::{
        BackupConfigurationSpec, BackupSessionSpec, BackupSessionStatus, BackupTarget,
        HostBackupStats, InvokerRef,
    };

    use super::super::mock::{ApiServer, NS, late, list_of, now, paused_now, verify_with};
    use super::super::pods::WORKER_BACKOFF_BASE;
    use super::*;

    const PODS: &str = "/api/v1/namespaces/demo/pods";
    const BC: &str = "/apis/hoard.dev/v1beta1/namespaces/demo/backupconfigurations/cfg";

    fn config(kind: &str) -> BackupConfiguration {
        let mut c = BackupConfiguration::new(
            "cfg",
            BackupConfigurationSpec {
                target: Some(BackupTarget {
                    target_ref: TargetRef {
                        api_version: "v1".into(),
                        kind: kind.into(),
                        name: "data".into(),
                    },
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some(NS.into());
        c
    }

    fn session(status: Option<BackupSessionStatus>) -> BackupSession {
        let mut s = BackupSession::new(
            "cfg-1",
            BackupSessionSpec {
                invoker: InvokerRef {
                    api_group: Some("hoard.dev".into()),
                    kind: "BackupConfiguration".into(),
                    name: "cfg".into(),
                },
            },
        );
        s.metadata.namespace = Some(NS.into());
        s.metadata.uid = Some("uid-s".into());
        s.metadata.creation_timestamp = Some(Time("2026-03-10T11:00:00Z".parse().unwrap()));
        s.status = status;
        s
    }

    fn host0(phase: Phase) -> Option<BackupSessionStatus> {
        Some(BackupSessionStatus {
            phase: Some(if phase.is_finished() {
                Phase::Running
            } else {
                phase
            }),
            stats: Some(vec![HostBackupStats {
                hostname: HOST_0.into(),
                phase: Some(phase),
                ..Default::default()
            }]),
            ..Default::default()
        })
    }

    fn app_pod(phase: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "app-0", "namespace": NS },
            "spec": {
                "containers": [{ "name": "app", "image": "app" }],
                "volumes": [{ "name": "d", "persistentVolumeClaim": { "claimName": "data" } }]
            },
            "status": { "phase": phase }
        })
    }

    fn worker() -> Value {
        let plan = plan_pvc_workers(
            &session(None),
            Some(&config("PersistentVolumeClaim")),
            &[],
            &InjectConfig::default(),
            now(),
        );
        let mut pod = plan.create[0].clone();
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        json!(pod)
    }

    fn deleted() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cfg-1-pvc-0"}})
    }

    #[test]
    fn a_worker_pod_serves_the_agent_and_nothing_else() {
        let pod: Pod = serde_json::from_value(worker()).unwrap();
        let ann = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[keys::ANNOTATION_HOST], HOST_0);
        assert_eq!(ann[keys::ANNOTATION_TARGET], "PersistentVolumeClaim/data");
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.init_containers.is_none(), "a backup needs no hold");
        let mount = spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "data")
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (DEFAULT_MOUNT_PATH, Some(true))
        );
        assert_eq!(
            api::pod_security::restricted_violations(spec),
            Vec::<String>::new()
        );
        // a second PVC target of a batch gets its own pod name
        let mut batch = config("PersistentVolumeClaim");
        let first = batch.spec.target.take().unwrap();
        let mut second = first.clone();
        second.target_ref.name = "logs".into();
        batch.spec.targets = Some(vec![first, second]);
        let plan = plan_pvc_workers(
            &session(None),
            Some(&batch),
            &[],
            &InjectConfig::default(),
            now(),
        );
        let names: Vec<String> = plan.create.iter().map(ResourceExt::name_any).collect();
        assert_eq!(names, ["cfg-1-pvc-0", "cfg-1-pvc-1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unmounted_pvc_gets_a_worker_pod() {
        verify_with(
            now,
            session(None),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                    .await;
                api.expect(
                    Method::GET,
                    &format!("{PODS}?"),
                    200,
                    list_of("Pod", vec![]),
                )
                .await;
                let body = api
                    .expect(
                        Method::POST,
                        &format!("{PODS}?&fieldManager=hoard"),
                        201,
                        worker(),
                    )
                    .await;
                assert_eq!(body["metadata"]["name"], "cfg-1-pvc-0");
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-s");
                assert_eq!(
                    body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
                    "data"
                );
                assert_eq!(api.event().await["reason"], "WorkerPodCreated");
                api
            },
        )
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_pvc_a_running_pod_mounts_gets_no_second_pod() {
        let action = verify_with(
            now,
            session(None),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                    .await;
                api.expect(
                    Method::GET,
                    &format!("{PODS}?"),
                    200,
                    list_of("Pod", vec![app_pod("Running")]),
                )
                .await;
                api
            },
        )
        .await
        .unwrap();
        assert_eq!(action, Action::await_change());
        // held by a pod that does not run yet: look again soon
        let action = verify_with(
            now,
            session(None),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                    .await;
                api.expect(
                    Method::GET,
                    &format!("{PODS}?"),
                    200,
                    list_of("Pod", vec![app_pod("Pending")]),
                )
                .await;
                api
            },
        )
        .await
        .unwrap();
        assert_eq!(action, Action::requeue(RECHECK));
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_goes_once_the_pvc_was_backed_up() {
        let s = session(host0(Phase::Succeeded));
        verify_with(now, s, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                .await;
            api.expect(
                Method::GET,
                &format!("{PODS}?"),
                200,
                list_of("Pod", vec![worker()]),
            )
            .await;
            api.expect(
                Method::DELETE,
                &format!("{PODS}/cfg-1-pvc-0?"),
                200,
                deleted(),
            )
            .await;
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_worker_is_announced_on_the_session_once() {
        verify_with(now, session(None), reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                .await;
            api.expect(Method::GET, &format!("{PODS}?"), 200, list_of("Pod", vec![worker()]))
                .await;
            let body = api
                .expect(
                    Method::PATCH,
                    "/apis/hoard.dev/v1beta1/namespaces/demo/backupsessions/cfg-1?&fieldManager=hoard",
                    200,
                    json!(session(None)),
                )
                .await;
            assert_eq!(
                body["metadata"]["annotations"][keys::ANNOTATION_WORKER_READY],
                "cfg-1-pvc-0"
            );
            api
        })
        .await
        .unwrap();
        // announced already: nothing to do
        let mut told = session(None);
        told.metadata.annotations = Some(
            [(
                keys::ANNOTATION_WORKER_READY.to_string(),
                "cfg-1-pvc-0".to_string(),
            )]
            .into(),
        );
        verify_with(now, told, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                .await;
            api.expect(
                Method::GET,
                &format!("{PODS}?"),
                200,
                list_of("Pod", vec![worker()]),
            )
            .await;
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_session_removes_its_worker() {
        let mut st = host0(Phase::Running).unwrap();
        st.phase = Some(Phase::Failed);
        let s = session(Some(st));
        verify_with(now, s, reconcile, |mut api: ApiServer| async move {
            api.expect(
                Method::GET,
                &format!("{PODS}?&labelSelector=hoard.dev%2Fsession-uid%3Duid-s"),
                200,
                list_of("Pod", vec![worker()]),
            )
            .await;
            api.expect(
                Method::DELETE,
                &format!("{PODS}/cfg-1-pvc-0?"),
                200,
                deleted(),
            )
            .await;
            api
        })
        .await
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_workload_backup_needs_no_worker() {
        verify_with(
            now,
            session(None),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, BC, 200, json!(config("StatefulSet")))
                    .await;
                api
            },
        )
        .await
        .unwrap();
    }

    /// Attempt `attempt` of the worker, failed at `at` (its container ended).
    fn failed_worker(attempt: u32, at: Timestamp) -> Pod {
        let plan = plan_pvc_workers(
            &session(None),
            Some(&config("PersistentVolumeClaim")),
            &[],
            &InjectConfig::default(),
            now(),
        );
        let mut pod = plan.create[0].clone();
        pod.metadata.name = Some(attempt_pod_name("cfg-1", "pvc-0", attempt));
        pod.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys::ANNOTATION_WORKER_ATTEMPT.into(), attempt.to_string());
        pod.status = Some(
            serde_json::from_value(json!({
                "phase": "Failed",
                "containerStatuses": [{
                    "name": "hoard-worker", "image": "hoard", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": { "terminated": {
                        "exitCode": 137, "reason": "OOMKilled", "finishedAt": Time(at)
                    } }
                }]
            }))
            .unwrap(),
        );
        pod
    }

    fn plan_at(pods: &[Pod], at: Timestamp) -> PvcPlan {
        plan_pvc_workers(
            &session(None),
            Some(&config("PersistentVolumeClaim")),
            pods,
            &InjectConfig::default(),
            at,
        )
    }

    fn after(secs: i64) -> Timestamp {
        now() + k8s_openapi::jiff::SignedDuration::from_secs(secs)
    }

    /// Regression: a failed worker used to be deleted and re-created at
    /// once, on every reconcile, until the session's deadline.
    #[test]
    fn a_failed_worker_is_replaced_after_a_growing_backoff_then_the_host_fails() {
        // attempt n failed at `now`: wait 10 s, 20 s, 40 s, 80 s
        for (attempt, wait) in [(1, 10), (2, 20), (3, 40), (4, 80)] {
            let pod = failed_worker(attempt, now());
            let early = plan_at(std::slice::from_ref(&pod), after(wait - 1));
            assert!(
                early.create.is_empty() && early.delete.is_empty(),
                "{attempt}"
            );
            assert_eq!(early.requeue, Some(Duration::from_secs(1)));
            let n = &early.notices_once[0].1;
            assert_eq!((n.reason, n.warning), ("WorkerPodFailed", true));
            assert!(
                n.note.contains("OOMKilled")
                    && n.note.contains(&format!("attempt {} of 5", attempt + 1)),
                "{}",
                n.note
            );
            let due = plan_at(std::slice::from_ref(&pod), after(wait));
            assert_eq!(due.delete, [pod.name_any()]);
            let next = &due.create[0];
            assert_eq!(next.name_any(), format!("cfg-1-pvc-0-{}", attempt + 1));
            assert_eq!(
                next.annotations()[keys::ANNOTATION_WORKER_ATTEMPT],
                (attempt + 1).to_string()
            );
            assert!(due.fail_hosts.is_empty());
        }
        // the fifth failure is the last: the host fails, the pod stays
        let last = plan_at(&[failed_worker(5, now())], after(3600));
        assert!(last.create.is_empty() && last.delete.is_empty());
        assert_eq!(last.fail_hosts.len(), 1);
        assert!(
            last.fail_hosts[0].1.contains("failed 5 times"),
            "{:?}",
            last.fail_hosts
        );
        assert_eq!(last.notices[0].reason, "WorkerPodGaveUp");
        // a replaced pod that is still terminating does not hide its successor
        let mut old = failed_worker(1, now());
        old.metadata.deletion_timestamp = Some(Time(now()));
        let mut new: Pod = serde_json::from_value(worker()).unwrap();
        new.metadata.name = Some("cfg-1-pvc-0-2".into());
        new.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys::ANNOTATION_WORKER_ATTEMPT.into(), "2".into());
        let plan = plan_at(&[old, new], after(30));
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.nudge.as_deref(), Some("cfg-1-pvc-0-2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_worker_waits_on_the_paused_clock_then_is_replaced() {
        let failed = json!(failed_worker(1, paused_now()));
        let f = failed.clone();
        let action = verify_with(
            paused_now,
            session(None),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                    .await;
                api.expect(
                    Method::GET,
                    &format!("{PODS}?"),
                    200,
                    list_of("Pod", vec![f]),
                )
                .await;
                let ev = api.event().await;
                assert_eq!(
                    (ev["type"].as_str(), ev["reason"].as_str()),
                    (Some("Warning"), Some("WorkerPodFailed"))
                );
                api
            },
        )
        .await
        .unwrap();
        assert_eq!(action, Action::requeue(WORKER_BACKOFF_BASE));
        tokio::time::advance(WORKER_BACKOFF_BASE).await;
        verify_with(
            paused_now,
            session(None),
            reconcile,
            |mut api: ApiServer| async move {
                api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                    .await;
                api.expect(
                    Method::GET,
                    &format!("{PODS}?"),
                    200,
                    list_of("Pod", vec![failed]),
                )
                .await;
                let body = api
                    .expect(
                        Method::POST,
                        &format!("{PODS}?&fieldManager=hoard"),
                        201,
                        worker(),
                    )
                    .await;
                assert_eq!(body["metadata"]["name"], "cfg-1-pvc-0-2");
                api.expect(
                    Method::DELETE,
                    &format!("{PODS}/cfg-1-pvc-0?"),
                    200,
                    deleted(),
                )
                .await;
                let ev = api.event().await;
                assert_eq!(ev["reason"], "WorkerPodCreated");
                assert!(
                    ev["note"].as_str().unwrap().contains("attempt 2 of 5"),
                    "{ev}"
                );
                api
            },
        )
        .await
        .unwrap();
    }

    /// Agents write the session's status every few seconds, and each write
    /// reconciles it: the wait for a retry is announced once, not per write.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_retry_is_announced_once() {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = Arc::new(Context::new(kube::Client::new(svc, "default"), now));
        let failed = json!(failed_worker(1, now()));
        let server = tokio::spawn(async move {
            let mut api = ApiServer(handle);
            for round in 0..3 {
                api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                    .await;
                api.expect(
                    Method::GET,
                    &format!("{PODS}?"),
                    200,
                    list_of("Pod", vec![failed.clone()]),
                )
                .await;
                if round == 0 {
                    assert_eq!(api.event().await["reason"], "WorkerPodFailed");
                }
            }
            api.done().await;
        });
        for _ in 0..3 {
            let a = reconcile(Arc::new(session(None)), ctx.clone())
                .await
                .unwrap();
            assert_eq!(a, Action::requeue(WORKER_BACKOFF_BASE));
        }
        drop(ctx);
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_failed_attempt_fails_the_host_in_the_status() {
        let mut s = session(host0(Phase::Running));
        s.metadata.resource_version = Some("42".into());
        let failed = json!(failed_worker(WORKER_ATTEMPTS, now()));
        verify_with(late, s, reconcile, |mut api: ApiServer| async move {
            api.expect(Method::GET, BC, 200, json!(config("PersistentVolumeClaim")))
                .await;
            api.expect(Method::GET, &format!("{PODS}?"), 200, list_of("Pod", vec![failed]))
                .await;
            let body = api
                .expect(
                    Method::PATCH,
                    "/apis/hoard.dev/v1beta1/namespaces/demo/backupsessions/cfg-1/status?&fieldManager=hoard",
                    200,
                    json!(session(None)),
                )
                .await;
            assert_eq!(body["metadata"]["resourceVersion"], "42");
            let host = &body["status"]["stats"][0];
            assert_eq!(host["hostname"], HOST_0);
            assert_eq!(host["phase"], "Failed");
            let err = host["error"].as_str().unwrap();
            assert!(err.contains("failed 5 times") && err.contains("OOMKilled"), "{err}");
            assert_eq!(api.event().await["reason"], "WorkerPodGaveUp");
            api
        })
        .await
        .unwrap();
    }
}
