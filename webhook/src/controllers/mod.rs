//! Hoard's cluster-level controllers, run in the webhook process.
//!
//! Data flow: a `BackupConfiguration` with a `schedule` is reconciled by the
//! scheduler ([`schedule`]), which creates one `BackupSession` per due tick
//! and writes the configuration's status (last session, outcome, next tick).
//! The agents on the target's nodes fill in each host's `status.stats`; the
//! roll-up ([`rollup`]) turns those into the session's `phase`, `totalHosts`,
//! `hostsDone` and `sessionDuration`, and fails hosts that never report by
//! the session's deadline. Session changes wake the scheduler of their
//! configuration, which records the outcome.
//!
//! **One session per configuration at a time.** A cron tick that finds a
//! session of its configuration unfinished is skipped (`TickSkipped`
//! condition, `BackupSkipped` warning event naming the session). A
//! user-created (instant) `BackupSession` is never skipped: it **waits**.
//! The rule is [`api::backup::session_to_wait_for`] — among a
//! configuration's unfinished sessions only the first runs (a session a host
//! already reported on, then the oldest `creationTimestamp`, then the
//! smaller name) — and the agents apply it before starting any host, so
//! the controller never races them. The roll-up shows the wait (phase
//! `Pending`, condition `Waiting`, `status.message` `waiting for
//! BackupSession <older> to finish`, one `BackupWaiting` event), re-checks
//! every 30 s, and lifts it (`Waiting` `False`) when the older one
//! finished; the session's `timeOut` counts from then. Agents start a
//! waiting session when they see the older one finish.
//!
//!
//! A `RestoreSession` ([`restore`]) makes its target produce fresh pods the
//! webhook holds (a one-time pod-template annotation on a Deployment,
//! StatefulSet or DaemonSet), or restores through short-lived worker pods
//! ([`pods`]) into PVCs it creates from `volumeClaimTemplates` or into a
//! standalone PVC; its status is rolled up by the same code as a backup
//! session's. A `BackupSession` of a standalone PVC gets a worker pod when
//! no pod mounts the PVC ([`standalone`]). Workloads whose pod template asks
//! for auto-backup get an owned `BackupConfiguration` ([`auto_backup`]).
//!
//! Decisions are pure functions of the objects and `now` ([`plan`],
//! [`cron`], [`restore::plan_restore`], [`standalone::plan_pvc_workers`],
//! [`auto_backup::plan_auto_backup`]); the reconcilers only read, call them
//! and write.
//!
//! **Leader election** ([`leader`]): [`run`] takes the `hoard-controllers`
//! Lease in the pod's namespace first; only its holder runs the controllers,
//! so several webhook replicas (which all serve admission) never both
//! schedule or write status. [`run_controllers`] skips the election, for a
//! single replica.
//!
//! Metrics ([`metrics`]) go to the default Prometheus registry; events to
//! the objects (`kubectl describe`); the custom-resource controllers watch through
//! `DeserializeGuard`, so one unreadable object never stalls the others.

pub mod auto_backup;
pub mod cron;
pub mod leader;
pub mod metrics;
#[cfg(test)]
mod mock;
pub mod plan;
pub mod pods;
pub mod restore;
pub mod rollup;
pub mod schedule;
pub mod standalone;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use api::{BackupConfiguration, BackupSession, RestoreSession};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;

use crate::mutate::InjectConfig;

/// `reportingController` of Hoard's events.
pub const REPORTER: &str = "hoard.dev/controllers";

/// Why a reconcile failed (the controller retries with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "{kind} {name} has no namespace; Hoard's kinds are namespaced, is the CRD installed from manifests/?"
    )]
    NotNamespaced { kind: &'static str, name: String },
    #[error(
        "the {kind} CRD is not installed or not readable ({source}); apply manifests/install.yaml and check the webhook's RBAC"
    )]
    CrdMissing {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot take part in leader election with Lease {lease}: {source}; check that the webhook's service account may get, create and patch leases in its namespace"
    )]
    Lease {
        lease: &'static str,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error(
        "leader election stopped unexpectedly; the process exits so that Kubernetes restarts it"
    )]
    LeaderElectionStopped,
}

/// What the controllers create needs from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image and default deadline of `restore-wait` in worker pods (the
    /// webhook's own injection settings, so both hold pods the same way).
    pub inject: InjectConfig,
    /// Cluster-scoped `RepositoryTemplate` from which auto-backup generates
    /// a workload's own `Repository` when its pod template names none with
    /// `hoard.dev/repository` (empty: no template).
    pub default_repository_template: String,
    /// `Repository` (in the workload's namespace) that auto-backup uses when
    /// a pod template names none and the template does not exist.
    pub default_repository: String,
    /// Schedule of auto-backup when `hoard.dev/schedule` is absent.
    pub default_schedule: String,
}

/// Repository auto-backup uses unless told otherwise.
pub const DEFAULT_REPOSITORY: &str = "default";
/// Auto-backup schedule unless told otherwise: daily at 02:00, the quiet
/// hour most clusters keep for maintenance.
pub const DEFAULT_SCHEDULE: &str = "0 2 * * *";

impl Default for Settings {
    fn default() -> Self {
        Self {
            inject: InjectConfig::default(),
            default_repository_template: api::keys::DEFAULT_REPOSITORY_TEMPLATE.into(),
            default_repository: DEFAULT_REPOSITORY.into(),
            default_schedule: DEFAULT_SCHEDULE.into(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// The clock; tests pass a fixed one.
    pub now: fn() -> Timestamp,
    pub metrics: metrics::Metrics,
    pub settings: Settings,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Workloads without auto-backup (and without a generated
    /// configuration) by UID, at the generation that was checked: their
    /// status updates need no API request.
    pub(crate) auto_seen: Mutex<HashMap<String, i64>>,
    /// Events already published for a state that persists across
    /// reconciles (a failed worker waiting for its retry), by key.
    announced: Mutex<std::collections::HashSet<String>>,
}

/// Most keys remembered in [`Context::announced`]; forgetting one costs a
/// repeated event (a series count), nothing else.
const ANNOUNCED_MAX: usize = 10_000;

impl Context {
    pub fn new(client: Client, now: fn() -> Timestamp) -> Self {
        Self::with_settings(client, now, Settings::default())
    }

    pub fn with_settings(client: Client, now: fn() -> Timestamp, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: REPORTER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            now,
            metrics: metrics::Metrics::new(),
            settings,
            failures: Mutex::new(HashMap::new()),
            auto_seen: Mutex::new(HashMap::new()),
            announced: Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        format!(
            "{}/{}/{}",
            K::kind(&()),
            obj.meta().namespace.as_deref().unwrap_or_default(),
            obj.meta().name.as_deref().unwrap_or_default()
        )
    }

    /// Forgets the failures of `obj` after a successful reconcile.
    pub(crate) fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Self::key(obj));
    }

    /// Publishes `notice` on `obj` unless this process published it under
    /// `key` already: for a state that lasts while the object is reconciled
    /// again and again (agents write session status every few seconds).
    pub(crate) async fn publish_once<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        notice: &plan::Notice,
        key: &str,
    ) {
        let new = {
            let mut seen = self.announced.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() >= ANNOUNCED_MAX {
                seen.clear();
            }
            seen.insert(key.to_string())
        };
        if new {
            self.publish(obj, notice).await;
        }
    }

    /// Publishes an event on `obj`. A failed event is logged, not retried:
    /// it must not fail (and so repeat) the reconcile that caused it.
    pub(crate) async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        notice: &plan::Notice,
    ) {
        let ev = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.into(),
            note: Some(notice.note.clone()),
            action: notice.action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason = notice.reason, "could not publish event");
        }
    }
}

/// Quiet time before a burst of watch events on one object is reconciled.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// How often the session gauges are recomputed: a scrape interval.
const GAUGE_INTERVAL: Duration = Duration::from_secs(15);

/// First retry after a failure; doubled per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest wait between retries (a flapping API server is not hammered).
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Backoff after `failures` consecutive failures (1 → 5 s, 2 → 10 s, … ≤ 5 min).
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(Context::key(obj.as_ref())).or_insert(0);
        *n += 1;
        *n
    };
    ctx.metrics
        .failures
        .with_label_values(&[&K::kind(&()), err.metric_reason()])
        .inc();
    let wait = backoff(n);
    warn!(kind = %K::kind(&()), name = %obj.meta().name.as_deref().unwrap_or_default(), failures = n, retry_in = ?wait, error = %err, "reconcile failed");
    Action::requeue(wait)
}

/// Reconciles a readable object with `reconcile`; an unreadable one gets a
/// warning event saying why, and is left until it changes.
async fn guarded<K, F, Fut>(
    obj: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let kind = K::kind(&());
    ctx.metrics.reconciles.with_label_values(&[&kind]).inc();
    let _timer = ctx
        .metrics
        .duration
        .with_label_values(&[&kind])
        .start_timer();
    match &obj.0 {
        Ok(k) => reconcile(Arc::new(k.clone()), ctx.clone()).await,
        Err(invalid) => {
            warn!(kind = %K::kind(&()), name = ?invalid.metadata.name, ns = ?invalid.metadata.namespace, error = %invalid.error, "cannot read object");
            let notice = plan::Notice {
                warning: true,
                reason: "InvalidObject",
                action: "Read",
                note: format!(
                    "Hoard cannot read this {}: {}; fix the field named (kubectl edit) or re-create it from the documented schema",
                    K::kind(&()),
                    invalid.error
                ),
            };
            ctx.publish(obj.as_ref(), &notice).await;
            Ok(Action::await_change())
        }
    }
}

/// Fails with a plain message when one of our CRDs is not installed.
async fn check_crds(client: &Client) -> Result<(), Error> {
    let lp = kube::api::ListParams::default().limit(1);
    Api::<BackupConfiguration>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|source| Error::CrdMissing {
            kind: "BackupConfiguration",
            source,
        })?;
    Api::<BackupSession>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|source| Error::CrdMissing {
            kind: "BackupSession",
            source,
        })?;
    Api::<RestoreSession>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|source| Error::CrdMissing {
            kind: "RestoreSession",
            source,
        })?;
    Ok(())
}

/// Takes part in leader election and, while this replica leads, runs the
/// controllers ([`run_controllers`]); returns after `shutdown` resolved and
/// the lease was released. The webhook binary calls this beside its
/// admission server. `POD_NAME` / `POD_NAMESPACE` (downward API) name the
/// lease holder and the Lease's namespace (default `hoard-system`).
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    check_crds(&client).await?;
    let lease_err = |source| Error::Lease {
        lease: api::keys::LEADER_LEASE,
        source,
    };
    let namespace =
        std::env::var("POD_NAMESPACE").unwrap_or_else(|_| api::keys::NAMESPACE.to_string());
    let mut builder =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), api::keys::LEADER_LEASE)
            .with_namespace(namespace)
            .with_duration(leader::LEASE_DURATION_SECS)
            .with_grace(leader::LEASE_GRACE_SECS);
    if let Ok(pod) = std::env::var("POD_NAME") {
        builder = builder.with_identity(pod);
    }
    let manager = builder.build().await.map_err(lease_err)?;
    let (is_leader, lease_task) = manager.watch().await;
    let result = leader::lead(is_leader, shutdown, |stop| {
        run_controllers(client.clone(), settings.clone(), stop)
    })
    .await;
    // `lead` dropped the receiver: the lease task releases the Lease (so a
    // new replica takes over at once) and ends.
    match tokio::time::timeout(std::time::Duration::from_secs(5), lease_task).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease"),
        Ok(Err(e)) => warn!(error = %e, "leader lease task failed"),
        Err(_) => warn!("releasing the leader lease timed out; it expires on its own"),
        Ok(Ok(Ok(_))) => {}
    }
    result
}

/// Runs every controller until `shutdown` resolves
/// (then in-flight reconciles finish), without leader election: for one
/// replica only.
pub async fn run_controllers(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let shutdown = shutdown.shared();
    let mut context = Context::with_settings(client.clone(), Timestamp::now, settings);
    // The series the admin port serves (tests keep private ones).
    context.metrics = metrics::Metrics::global();
    let ctx = Arc::new(context);
    let wc = watcher::Config::default();
    // Agents write each host's progress every few seconds; coalescing the
    // bursts keeps both controllers from reconciling once per write.
    let cc = controller::Config::default().debounce(DEBOUNCE);

    // DeserializeGuard: one object the types cannot read (written before a
    // schema change, or with validation bypassed) is reported on itself
    // instead of stopping the watch for every other object.
    let scheduler = Controller::new(
        Api::<DeserializeGuard<BackupConfiguration>>::all(client.clone()),
        wc.clone(),
    )
    .with_config(cc.clone())
    // A session's change (created, finished) updates its configuration's
    // status; user-created sessions have no owner reference, so map by
    // the invoker rather than `owns`.
    .watches(
        Api::<DeserializeGuard<BackupSession>>::all(client.clone()),
        wc.clone(),
        |g: DeserializeGuard<BackupSession>| {
            let s = g.0.ok()?;
            let ns = s.namespace()?;
            Some(ObjectRef::new(&s.spec.invoker.name).within(&ns))
        },
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(
        |g, ctx| guarded(g, ctx, schedule::reconcile),
        error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Ok((obj, _)) = r {
            tracing::debug!(name = %obj.name, ns = ?obj.namespace, "configuration reconciled");
        }
    });

    let rollup = Controller::new(
        Api::<DeserializeGuard<BackupSession>>::all(client.clone()),
        wc.clone(),
    );
    // Sessions by phase and the oldest running one, from the roll-up's cache.
    let gauges = refresh_gauges(
        rollup.store(),
        {
            let metrics = ctx.metrics.clone();
            move |all| metrics.observe_sessions(all, Timestamp::now())
        },
        shutdown.clone(),
    );
    let rollup = rollup
        .with_config(cc.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |g, ctx| guarded(g, ctx, rollup::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Ok((obj, _)) = r {
                tracing::debug!(name = %obj.name, ns = ?obj.namespace, "session reconciled");
            }
        });

    // Only Hoard's worker pods are watched (owned by their session).
    let workers = watcher::Config::default().labels(&format!(
        "{}={}",
        api::keys::LABEL_COMPONENT,
        pods::COMPONENT_WORKER
    ));

    let standalone = Controller::new(
        Api::<DeserializeGuard<BackupSession>>::all(client.clone()),
        wc.clone(),
    )
    .owns(Api::<Pod>::all(client.clone()), workers.clone())
    .with_config(cc.clone())
    .graceful_shutdown_on(shutdown.clone())
    .run(
        |g, ctx| guarded(g, ctx, standalone::reconcile),
        error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Ok((obj, _)) = r {
            tracing::debug!(name = %obj.name, ns = ?obj.namespace, "standalone PVCs reconciled");
        }
    });

    let restores = Controller::new(
        Api::<DeserializeGuard<RestoreSession>>::all(client.clone()),
        wc.clone(),
    );
    // RestoreSessions by phase and the oldest unfinished one.
    let restore_gauges = refresh_gauges(
        restores.store(),
        {
            let metrics = ctx.metrics.clone();
            move |all| metrics.observe_restore_sessions(all, Timestamp::now())
        },
        shutdown.clone(),
    );
    let restores = restores
        .owns(Api::<Pod>::all(client.clone()), workers)
        .with_config(cc.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |g, ctx| guarded(g, ctx, restore::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Ok((obj, _)) = r {
                tracing::debug!(name = %obj.name, ns = ?obj.namespace, "restore reconciled");
            }
        });

    let auto_deployments = auto_backup_controller::<Deployment>(
        client.clone(),
        ctx.clone(),
        cc.clone(),
        shutdown.clone(),
    );
    let auto_statefulsets = auto_backup_controller::<StatefulSet>(
        client.clone(),
        ctx.clone(),
        cc.clone(),
        shutdown.clone(),
    );
    let auto_daemonsets = auto_backup_controller::<DaemonSet>(client, ctx, cc, shutdown);

    info!(
        "controllers started: backup scheduler, session roll-up, standalone PVC backups, restores, auto-backup"
    );
    tokio::join!(
        scheduler,
        rollup,
        gauges,
        standalone,
        restores,
        restore_gauges,
        auto_deployments,
        auto_statefulsets,
        auto_daemonsets
    );
    info!("controllers stopped");
    Ok(())
}

/// Feeds the objects of a controller's cache (those that decoded) to
/// `observe` every [`GAUGE_INTERVAL`] until `stop`.
async fn refresh_gauges<K>(
    store: reflector::Store<DeserializeGuard<K>>,
    observe: impl Fn(Vec<&K>),
    stop: impl Future<Output = ()>,
) where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let tick = async {
        loop {
            let all = store.state();
            observe(all.iter().filter_map(|g| g.0.as_ref().ok()).collect());
            tokio::time::sleep(GAUGE_INTERVAL).await;
        }
    };
    tokio::select! {
        () = tick => {}
        () = stop => {}
    }
}

/// The auto-backup controller of one workload kind. A workload's status
/// changes all the time, its pod template only with the spec: the
/// reconciler skips generations it already handled ([`Context::auto_seen`]).
async fn auto_backup_controller<K>(
    client: Client,
    ctx: Arc<Context>,
    cc: controller::Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) where
    K: auto_backup::AutoBackupWorkload,
{
    let mut controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let template = ctx.settings.default_repository_template.clone();
    if !template.is_empty() {
        // The default template created, edited or deleted: every workload
        // is looked at again (those without auto-backup at no API cost),
        // so generated Repositories follow at once, not at the resync.
        let changes = watcher(
            Api::<api::RepositoryTemplate>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={template}")),
        )
        .touched_objects()
        .filter_map(|r| async move { r.ok().map(|_| ()) });
        controller = controller.reconcile_all_on(changes);
    }
    controller
        .with_config(cc)
        .graceful_shutdown_on(shutdown)
        .run(
            |obj, ctx| async move {
                let kind = K::kind(&());
                ctx.metrics.reconciles.with_label_values(&[&kind]).inc();
                let _timer = ctx
                    .metrics
                    .duration
                    .with_label_values(&[&kind])
                    .start_timer();
                auto_backup::reconcile(obj, ctx).await
            },
            error_policy,
            ctx,
        )
        .for_each(|r| async move {
            if let Ok((obj, _)) = r {
                tracing::debug!(name = %obj.name, ns = ?obj.namespace, "auto-backup reconciled");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let got: Vec<u64> = [1, 2, 3, 4, 7, 50].map(|n| backoff(n).as_secs()).to_vec();
        assert_eq!(got, [5, 10, 20, 40, 300, 300]);
    }
}

#[cfg(test)]
mod shutdown_tests {
    use http::{Request, Response};
    use kube::client::Body;

    use super::*;

    /// SIGTERM: every controller (and the gauge task) ends once the
    /// shutdown future resolves, with its watches still open, so the
    /// process can release the lease and exit within its grace period.
    /// (A list the API server never answers is cut by the process's drain
    /// timeout instead, see `args::run`.)
    #[tokio::test(start_paused = true)]
    async fn every_controller_stops_on_shutdown() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        // The API server answers lists with nothing and holds every watch
        // open, as a quiet cluster does.
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                let q = req.uri().query().unwrap_or_default().to_string();
                if q.contains("watch=true") {
                    held.push(send);
                } else {
                    let body = serde_json::json!({
                        "apiVersion": "v1", "kind": "List",
                        "metadata": { "resourceVersion": "1" }, "items": []
                    });
                    send.send_response(
                        Response::builder()
                            .status(200)
                            .body(Body::from(serde_json::to_vec(&body).unwrap()))
                            .unwrap(),
                    );
                }
            }
            held.len()
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(run_controllers(
            Client::new(svc, "default"),
            Settings::default(),
            async move {
                let _ = rx.await;
            },
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!run.is_finished(), "controllers ended before the shutdown");
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("controllers stopped within 10 s of the shutdown")
            .unwrap()
            .unwrap();
        // One watch per watched kind and controller: BackupConfigurations
        // and BackupSessions (scheduler), BackupSessions (roll-up),
        // BackupSessions and pods (standalone PVCs), RestoreSessions and
        // pods (restores), three workload kinds and the default
        // RepositoryTemplate for each of them (auto-backup).
        assert_eq!(server.await.unwrap(), 13);
    }
}
