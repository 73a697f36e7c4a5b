//! Keeps [`State`] in step with the cluster through `kube::runtime` watchers.
//!
//! Data flow: three watch streams (ReplicaSets metadata-only; the
//! `BackupConfiguration` and `RestoreSession` custom resources) → each event
//! is reduced to a small summary ([`backup_summary`], [`restore_summary`],
//! [`replicaset_owner`]) → [`State`]. A (re)list is buffered until
//! `InitDone` and swapped in whole, so a review never sees a half-listed
//! cache; the first `InitDone` of each stream marks that cache synced, which
//! is what `/ready` waits for.
//!
//! Only ReplicaSets are watched among the built-in workloads: a pod's own
//! owner reference already names its StatefulSet, DaemonSet or
//! ReplicationController, and a ReplicaSet's metadata names its Deployment.
//! Deployments, StatefulSets and DaemonSets are never needed, so they cost
//! nothing. Objects that fail to decode are logged and skipped
//! (`DeserializeGuard`), never fatal.

use std::fmt::Debug;

use api::backup::BackupConfiguration;
use api::common::{Driver, Phase};
use api::restore::{RestoreSession, RestoreSessionSpec};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::state::{BackupSummary, CacheKind, RestoreMount, RestoreSummary, State};
use crate::workload::{ReplicaSetOwner, Workload, kind_from_ref};

/// A watch stream ended; the watchers retry forever, so this is a bug or a
/// shutdown, and the process should exit and be restarted.
#[derive(Debug, thiserror::Error)]
#[error("the {cache} watch stream ended unexpectedly")]
pub struct WatchEnded {
    pub cache: &'static str,
}

/// The controller of a ReplicaSet, from its metadata.
pub fn replicaset_owner(meta: &ObjectMeta) -> ReplicaSetOwner {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| o.kind == "Deployment" && o.api_version.starts_with("apps/"))
        .map_or(ReplicaSetOwner::None, |o| {
            ReplicaSetOwner::Deployment(o.name.clone())
        })
}

/// What admission needs of a `BackupConfiguration`: its name and the
/// workloads it targets (all of a batch backup). `None` when it targets no
/// workload whose pods Hoard patches (e.g. only a standalone PVC).
pub fn backup_summary(bc: &BackupConfiguration) -> Option<BackupSummary> {
    let targets: Vec<_> = bc
        .spec
        .all_targets()
        .filter_map(|t| {
            let r = &t.target_ref;
            kind_from_ref(&r.api_version, &r.kind).map(|k| Workload::new(k, &r.name))
        })
        .collect();
    (!targets.is_empty()).then(|| BackupSummary {
        name: bc.name_any(),
        targets,
    })
}

fn finished(phase: Option<Phase>) -> bool {
    matches!(phase, Some(Phase::Succeeded | Phase::Failed))
}

/// What admission needs of a `RestoreSession`. `None` when no pod of a
/// workload is held for it: another driver (VolumeSnapshotter restores into
/// new PVCs, not running pods) or a target that is not a workload.
pub fn restore_summary(rs: &RestoreSession) -> Option<RestoreSummary> {
    let RestoreSessionSpec {
        target,
        rules,
        runtime_settings,
        ..
    } = &rs.spec;
    if rs.spec.driver() != Driver::Restic {
        return None;
    }
    // With volumeClaimTemplates the controllers restore into new PVCs
    // through their own worker pods (which carry the init-container from
    // birth); the target's existing pods must not be held.
    if target
        .volume_claim_templates
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return None;
    }
    let r = &target.target_ref;
    let kind = kind_from_ref(&r.api_version, &r.kind)?;
    let status = rs.status.as_ref();
    let container = runtime_settings.as_ref().and_then(|s| s.container.as_ref());
    let security = container.and_then(|c| c.security_context.as_ref());
    Some(RestoreSummary {
        uid: rs.uid().unwrap_or_default(),
        name: rs.name_any(),
        created: rs.meta().creation_timestamp.clone(),
        target: Some(Workload::new(kind, &r.name)),
        volume_mounts: target
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| RestoreMount {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
            })
            .collect(),
        rules: rules.clone().unwrap_or_default(),
        finished: finished(status.and_then(|s| s.phase)),
        hosts_finished: status
            .and_then(|s| s.stats.as_ref())
            .into_iter()
            .flatten()
            .filter(|h| finished(h.phase))
            .map(|h| h.hostname.clone())
            .collect(),
        resources: container.and_then(|c| c.resources.clone()),
        run_as_user: security.and_then(|s| s.run_as_user),
        run_as_group: security.and_then(|s| s.run_as_group),
        // The session's `timeOut`; absent (or, past CRD validation,
        // unreadable) means the webhook's default. The controllers fail the
        // session at its deadline and the agent writes a failure marker, so
        // this is the init-container's backstop, not its usual way out.
        deadline_seconds: rs
            .spec
            .time_out
            .as_ref()
            .and_then(|_| rs.spec.timeout().ok())
            .map(|d| d.as_secs()),
    })
}

/// Applies one watch stream to the state.
async fn follow<K, T>(
    cache: CacheKind,
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    state: &State,
    summarize: impl Fn(&K) -> Option<T>,
    apply: impl Fn(&State, &str, &str, T),
    delete: impl Fn(&State, &str, &str),
    replace: impl Fn(&State, Vec<(String, String, T)>),
) -> WatchEnded
where
    K: Resource + Debug,
{
    let mut stream = std::pin::pin!(stream);
    let mut buffer: Vec<(String, String, T)> = Vec::new();
    let name = cache.as_str();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(o)) => {
                if let Some(t) = summarize(&o) {
                    buffer.push((o.namespace().unwrap_or_default(), o.name_any(), t));
                }
            }
            Ok(Event::InitDone) => {
                let n = buffer.len();
                replace(state, std::mem::take(&mut buffer));
                if !state.is_synced(cache) {
                    info!(cache = name, objects = n, "cache synced");
                }
                state.set_synced(cache);
            }
            Ok(Event::Apply(o)) => {
                let (ns, n) = (o.namespace().unwrap_or_default(), o.name_any());
                match summarize(&o) {
                    Some(t) => apply(state, &ns, &n, t),
                    None => delete(state, &ns, &n),
                }
            }
            Ok(Event::Delete(o)) => {
                delete(state, &o.namespace().unwrap_or_default(), &o.name_any());
            }
            Err(e) => {
                let missing = matches!(
                    &e,
                    watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                        if s.code == 404
                );
                if missing {
                    warn!(
                        cache = name,
                        "the custom resource is not installed; install Hoard's CRDs \
                        (kubectl apply -f manifests/install.yaml); retrying"
                    );
                } else {
                    warn!(cache = name, error = %e, "watch failed; retrying with backoff");
                }
            }
        }
    }
    WatchEnded { cache: name }
}

/// Logs an object that does not decode and keeps it out of the cache.
fn guarded<K, T>(
    cache: &'static str,
    f: impl Fn(&K) -> Option<T>,
) -> impl Fn(&DeserializeGuard<K>) -> Option<T> {
    move |g| match &g.0 {
        Ok(o) => f(o),
        Err(invalid) => {
            warn!(
                cache,
                namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
                name = invalid.metadata.name.as_deref().unwrap_or_default(),
                error = %invalid.error,
                "object does not decode; ignored until it is fixed"
            );
            None
        }
    }
}

/// Runs the three watches until one ends (which the caller treats as fatal).
pub async fn run(client: Client, state: &State) -> WatchEnded {
    let cfg = watcher::Config::default().any_semantic();
    let replicasets = follow(
        CacheKind::ReplicaSets,
        // `PartialObjectMeta` makes this a metadata-only list/watch: no pod
        // templates are transferred or decoded.
        watch_objects(
            Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
            cfg.clone(),
        )
        .default_backoff(),
        state,
        |o| Some(replicaset_owner(&o.metadata)),
        |s, ns, n, owner| s.apply_replicaset(ns, n, owner),
        |s, ns, n| s.delete_replicaset(ns, n),
        |s, all| s.replace_replicasets(all),
    );
    let backups = follow(
        CacheKind::BackupConfigurations,
        watch_objects(
            Api::<DeserializeGuard<BackupConfiguration>>::all(client.clone()),
            cfg.clone(),
        )
        .default_backoff(),
        state,
        guarded("backupconfigurations", backup_summary),
        |s, ns, _, b| s.apply_backup(ns, b),
        |s, ns, n| s.delete_backup(ns, n),
        |s, all| s.replace_backups(all.into_iter().map(|(ns, _, b)| (ns, b))),
    );
    let restores = follow(
        CacheKind::RestoreSessions,
        watch_objects(Api::<DeserializeGuard<RestoreSession>>::all(client), cfg).default_backoff(),
        state,
        guarded("restoresessions", restore_summary),
        |s, ns, _, r| s.apply_restore(ns, r),
        |s, ns, n| s.delete_restore(ns, n),
        |s, all| s.replace_restores(all.into_iter().map(|(ns, _, r)| (ns, r))),
    );
    tokio::select! {
        e = replicasets => e,
        e = backups => e,
        e = restores => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn rs(name: &str, owner: Option<&str>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("demo".into()),
                owner_references: owner.map(|d| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        name: d.into(),
                        uid: "u".into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn relists_replace_the_cache_and_mark_it_synced() {
        let state = State::new();
        state.apply_replicaset("demo", "stale", ReplicaSetOwner::None);
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(rs("app-1", Some("app")))),
            Ok(Event::InitApply(rs("solo", None))),
            Ok(Event::InitDone),
            Ok(Event::Apply(rs("app-2", Some("app")))),
            Ok(Event::Delete(rs("solo", None))),
            Err(watcher::Error::NoResourceVersion),
        ];
        let ended = follow(
            CacheKind::ReplicaSets,
            stream::iter(events),
            &state,
            |o: &ReplicaSet| Some(replicaset_owner(&o.metadata)),
            |s, ns, n, owner| s.apply_replicaset(ns, n, owner),
            |s, ns, n| s.delete_replicaset(ns, n),
            |s, all| s.replace_replicasets(all),
        )
        .await;
        assert_eq!(ended.cache, "replicasets");
        use crate::workload::ReplicaSetOwners;
        assert!(state.is_synced(CacheKind::ReplicaSets));
        assert_eq!(state.replicaset_owner("demo", "stale"), None);
        assert_eq!(state.replicaset_owner("demo", "solo"), None);
        assert_eq!(
            state.replicaset_owner("demo", "app-2"),
            Some(ReplicaSetOwner::Deployment("app".into()))
        );
        assert_eq!(state.len(CacheKind::ReplicaSets), 2);
    }

    #[test]
    fn restore_session_from_the_seed_example() {
        // seed 001's RestoreSession, group changed to hoard.dev, with status.
        let rs: RestoreSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "hoard.dev/v1beta1",
            "kind": "RestoreSession",
            "metadata": {"name": "statefulset-restore", "namespace": "demo", "uid": "abc-123"},
            "spec": {
                "driver": "Restic",
                "repository": {"name": "local-repo"},
                "target": {
                    "ref": {"apiVersion": "apps/v1", "kind": "StatefulSet",
                            "name": "recovered-statefulset"},
                    "volumeMounts": [{"mountPath": "/source/data", "name": "source-data"}]
                },
                "rules": [
                    {"targetHosts": ["host-3", "host-4"], "sourceHost": "host-1",
                     "paths": ["/source/data"]},
                    {"targetHosts": [], "sourceHost": "", "paths": ["/source/data"]}
                ],
                "timeOut": "1h30m",
                "runtimeSettings": {"container": {
                    "resources": {"limits": {"memory": "256M"}, "requests": {"memory": "256M"}},
                    "securityContext": {"runAsGroup": 2000, "runAsUser": 2000}
                }}
            },
            "status": {"phase": "Running", "stats": [
                {"hostname": "host-1", "phase": "Succeeded"},
                {"hostname": "host-2", "phase": "Running"}
            ]}
        }))
        .unwrap();
        let s = restore_summary(&rs).unwrap();
        assert_eq!(s.uid, "abc-123");
        assert_eq!(
            s.target,
            Some(Workload::new(
                api::host::WorkloadKind::StatefulSet,
                "recovered-statefulset"
            ))
        );
        assert_eq!(
            s.volume_mounts,
            [RestoreMount {
                name: "source-data".into(),
                mount_path: "/source/data".into()
            }]
        );
        assert_eq!((s.run_as_user, s.run_as_group), (Some(2000), Some(2000)));
        assert_eq!(s.deadline_seconds, Some(5400), "the session's timeOut");
        let mut no_timeout = rs.clone();
        no_timeout.spec.time_out = None;
        assert_eq!(
            restore_summary(&no_timeout).unwrap().deadline_seconds,
            None,
            "the webhook's default applies"
        );
        assert!(!s.finished);
        assert!(!s.owes("host-1"), "host-1 already finished");
        assert!(s.owes("host-2") && s.owes("host-3") && s.owes("host-0"));

        let mut snap = rs.clone();
        snap.spec.driver = Some(Driver::VolumeSnapshotter);
        assert!(
            restore_summary(&snap).is_none(),
            "no pod is held for snapshot restores"
        );
        let mut into_new_claims = rs.clone();
        into_new_claims.spec.target.volume_claim_templates = Some(vec![
            k8s_openapi::api::core::v1::PersistentVolumeClaim::default(),
        ]);
        assert!(
            restore_summary(&into_new_claims).is_none(),
            "restores into volumeClaimTemplates go through worker pods, the target's pods are not held"
        );
        let mut done = rs;
        done.status.as_mut().unwrap().phase = Some(Phase::Succeeded);
        assert!(restore_summary(&done).unwrap().finished);
    }

    #[test]
    fn batch_backup_configuration_indexes_every_workload_target() {
        let bc: BackupConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "hoard.dev/v1beta1",
            "kind": "BackupConfiguration",
            "metadata": {"name": "nightly", "namespace": "demo"},
            "spec": {
                "repository": {"name": "repo"},
                "schedule": "0 2 * * *",
                "targets": [
                    {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"}},
                    {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web"}},
                    {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data"}}
                ]
            }
        }))
        .unwrap();
        let s = backup_summary(&bc).unwrap();
        assert_eq!(s.name, "nightly");
        assert_eq!(
            s.targets,
            [
                Workload::new(api::host::WorkloadKind::Deployment, "app"),
                Workload::new(api::host::WorkloadKind::StatefulSet, "web"),
            ]
        );
    }

    /// The memory budget (100k ReplicaSets cost little) rests on
    /// the ReplicaSet watch being metadata-only: no pod templates are sent
    /// or decoded. Asserted on the requests the watch actually makes.
    #[tokio::test]
    async fn replicasets_are_listed_metadata_only_and_the_crds_in_full() {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let state = State::new();
        let watch = tokio::spawn(async move { run(client, &state).await });
        let mut seen = std::collections::BTreeMap::new();
        while seen.len() < 3 {
            let (req, send) =
                tokio::time::timeout(std::time::Duration::from_secs(10), handle.next_request())
                    .await
                    .expect("the watches list their resources")
                    .expect("client alive");
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            seen.insert(req.uri().path().to_owned(), accept);
            // Answer nothing useful; the test only looks at the requests.
            send.send_error(std::io::Error::other("test: not answered"));
        }
        watch.abort();
        let rs = &seen["/apis/apps/v1/replicasets"];
        assert!(
            rs.contains("as=PartialObjectMetadataList"),
            "ReplicaSets must be listed metadata-only, Accept was {rs:?}"
        );
        for crd in [
            "/apis/hoard.dev/v1beta1/backupconfigurations",
            "/apis/hoard.dev/v1beta1/restoresessions",
        ] {
            assert!(
                !seen[crd].contains("PartialObjectMetadata"),
                "{crd} needs its spec"
            );
        }
    }
}
