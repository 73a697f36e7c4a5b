//! The scenarios of issue 8, each asserting on objects' status the way
//! `kubectl get` shows them. Without a cluster each prints one skip line.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use api::{BackupSession, Phase, RestoreSession};
use e2e::kubelet::read_tree;
use e2e::workloads::{self, DATA_VOLUME, host_of};
use e2e::{REPO_PASSWORD, TestCtx, wait};

/// Bound of a session's run: agents back up a few KiB per host.
const SESSION: Duration = Duration::from_secs(180);
/// Bound of pods being created, bound and started.
const PODS: Duration = Duration::from_secs(120);

type Files = BTreeMap<String, String>;

fn pp() -> PostParams {
    PostParams::default()
}

/// Waits for `n` pods labelled `app=<app>` in phase Running.
async fn running_pods(t: &TestCtx, app: &str, n: usize) -> anyhow::Result<Vec<Pod>> {
    let pods = wait::until(
        t.api::<Pod>(),
        Some(&format!("app={app}")),
        &format!("{n} Running pods of {app}"),
        PODS,
        |ps| {
            let live: Vec<_> = ps
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            live.len() == n
                && live
                    .iter()
                    .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        },
        |ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{} {:?} node={:?}",
                        p.name_any(),
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                        p.spec.as_ref().and_then(|s| s.node_name.clone())
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
    .await?;
    let mut pods: Vec<Pod> = pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (*p).clone())
        .collect();
    pods.sort_by_key(|p| p.name_any());
    Ok(pods)
}

/// Writes the files an application would have written into the pod's data
/// volume, returns them.
fn write_data(t: &TestCtx, pod: &Pod, tag: &str) -> anyhow::Result<Files> {
    write_files(&t.volume_dir(pod, DATA_VOLUME)?, tag)
}

/// Writes a small tree tagged `tag` into `dir`, returns it.
fn write_files(dir: &std::path::Path, tag: &str) -> anyhow::Result<Files> {
    let mut files = Files::new();
    files.insert("id.txt".into(), format!("{tag}\n"));
    // Enough to span several chunks' worth of content variety.
    let big: String = (0..2000).map(|i| format!("{tag} line {i}\n")).collect();
    files.insert("nested/deeper/log.txt".into(), big);
    for (rel, content) in &files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, content).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(files)
}

fn phase_name(p: Option<Phase>) -> String {
    p.map(|p| format!("{p:?}")).unwrap_or_default()
}

fn show_backup_sessions(ss: &[Arc<BackupSession>]) -> String {
    ss.iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            format!(
                "{} phase={} hosts={:?}/{:?} stats={:?} message={:?}",
                s.name_any(),
                phase_name(st.phase),
                st.hosts_done,
                st.total_hosts,
                st.stats
                    .iter()
                    .flatten()
                    .map(|h| (h.hostname.clone(), phase_name(h.phase), h.error.clone()))
                    .collect::<Vec<_>>(),
                st.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn finished(s: &BackupSession) -> bool {
    matches!(
        s.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Succeeded | Phase::Failed)
    )
}

/// Waits until session `name` has finished and returns it.
async fn finished_session(t: &TestCtx, name: &str) -> anyhow::Result<BackupSession> {
    let ss = wait::until(
        t.api::<BackupSession>(),
        None,
        &format!("BackupSession {name} to finish"),
        SESSION,
        |ss| ss.iter().any(|s| s.name_any() == name && finished(s)),
        show_backup_sessions,
    )
    .await?;
    ss.into_iter()
        .find(|s| s.name_any() == name)
        .map(|s| (*s).clone())
        .context("session vanished")
}

/// Creates an instant backup of `config` and waits for its end.
async fn instant_backup(t: &TestCtx, config: &str) -> anyhow::Result<BackupSession> {
    let s = t
        .api::<BackupSession>()
        .create(&pp(), &workloads::backup_session(config)?)
        .await
        .context("cannot create a BackupSession")?;
    finished_session(t, &s.name_any()).await
}

/// `phase: Succeeded`, `totalHosts` and one Succeeded entry per host in `hosts`.
fn assert_backup_succeeded(s: &BackupSession, hosts: &BTreeSet<String>) -> anyhow::Result<()> {
    let st = s.status.clone().unwrap_or_default();
    let shown = show_backup_sessions(&[Arc::new(s.clone())]);
    ensure!(
        st.phase == Some(Phase::Succeeded),
        "session not Succeeded: {shown}"
    );
    ensure!(
        st.total_hosts == Some(hosts.len() as i32),
        "totalHosts is not {}: {shown}",
        hosts.len()
    );
    let stats = st.stats.unwrap_or_default();
    let got: BTreeSet<String> = stats.iter().map(|h| h.hostname.clone()).collect();
    ensure!(
        &got == hosts,
        "hosts in status.stats are {got:?}, want {hosts:?}"
    );
    ensure!(
        stats.len() == hosts.len(),
        "status.stats has {} entries for {} hosts: {shown}",
        stats.len(),
        hosts.len()
    );
    for h in &stats {
        ensure!(
            h.phase == Some(Phase::Succeeded),
            "host {} not Succeeded: {shown}",
            h.hostname
        );
        ensure!(
            h.snapshots.as_ref().is_some_and(|s| !s.is_empty()),
            "host {} lists no snapshot: {shown}",
            h.hostname
        );
    }
    Ok(())
}

#[derive(serde::Deserialize, Debug)]
struct ResticSnapshot {
    id: String,
    time: String,
    hostname: String,
    paths: Vec<String>,
}

async fn snapshots(t: &TestCtx) -> anyhow::Result<Vec<ResticSnapshot>> {
    let out = t.restic(&["snapshots", "--json"]).await?;
    serde_json::from_str(&out).with_context(|| format!("restic snapshots --json printed {out}"))
}

/// Restores the latest snapshot of `host` with the stock restic and returns
/// its files relative to the backed-up path.
async fn restic_restore(t: &TestCtx, host: &str) -> anyhow::Result<Files> {
    let mut snaps: Vec<_> = snapshots(t)
        .await?
        .into_iter()
        .filter(|s| s.hostname == host)
        .collect();
    snaps.sort_by(|a, b| a.time.cmp(&b.time));
    let snap = snaps
        .last()
        .with_context(|| format!("restic sees no snapshot of host {host}"))?;
    let target = tempfile::tempdir()?;
    t.restic(&[
        "restore",
        &snap.id,
        "--target",
        &target.path().display().to_string(),
    ])
    .await?;
    let prefix = snap
        .paths
        .first()
        .map(|p| format!("{}/", p.trim_matches('/')))
        .unwrap_or_default();
    Ok(read_tree(target.path())
        .into_iter()
        .map(|(k, v)| (k.strip_prefix(&prefix).map(str::to_owned).unwrap_or(k), v))
        .collect())
}

fn hosts(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Scenario 1: a StatefulSet of 3 backed up every minute; the stock restic
/// restores exactly what the pods had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_scheduled_backup_succeeds_with_three_hosts_and_restic_restores_originals() {
    e2e::run("sts-schedule", |t| async move {
        t.local_repository(REPO_PASSWORD).await?;
        let cfg = workloads::backup_configuration(
            "web-backup",
            "StatefulSet",
            "web",
            Some("* * * * *"),
            json!({}),
        )?;
        t.api::<api::BackupConfiguration>()
            .create(&pp(), &cfg)
            .await?;
        workloads::await_webhook(
            &t,
            "StatefulSet",
            "web",
            "label pods of web as host-0",
            |p| host_of(p) == Some("host-0"),
        )
        .await?;
        t.api::<StatefulSet>()
            .create(&pp(), &workloads::statefulset(&t, "web", 3)?)
            .await?;
        let pods = running_pods(&t, "web", 3).await?;
        let mut want = BTreeMap::new();
        for p in &pods {
            let host = host_of(p)
                .with_context(|| format!("pod {} has no hoard.dev/host", p.name_any()))?
                .to_owned();
            want.insert(host.clone(), write_data(&t, p, &p.name_any())?);
        }
        ensure!(
            want.keys().cloned().collect::<BTreeSet<_>>() == hosts(&["host-0", "host-1", "host-2"]),
            "the webhook named the pods {:?}",
            want.keys()
        );
        // Only a session created after the data was written must contain it.
        let written = Timestamp::now().as_second();
        let ss = wait::until(
            t.api::<BackupSession>(),
            None,
            "a scheduled BackupSession, created after the data was written, to finish",
            SESSION,
            |ss| {
                ss.iter().any(|s| {
                    finished(s)
                        && s.creation_timestamp()
                            .is_some_and(|c| c.0.as_second() > written)
                })
            },
            show_backup_sessions,
        )
        .await?;
        let s = ss
            .iter()
            .find(|s| {
                finished(s)
                    && s.creation_timestamp()
                        .is_some_and(|c| c.0.as_second() > written)
            })
            .context("no session")?;
        ensure!(
            s.spec.invoker.name == "web-backup",
            "the session was invoked by {:?}",
            s.spec.invoker
        );
        assert_backup_succeeded(s, &hosts(&["host-0", "host-1", "host-2"]))?;
        for (host, files) in &want {
            let got = restic_restore(&t, host).await?;
            ensure!(
                &got == files,
                "restic restored for {host}: {:?}, want {:?}",
                got.keys(),
                files.keys()
            );
        }
        let cfg = t
            .api::<api::BackupConfiguration>()
            .get("web-backup")
            .await?;
        ensure!(
            cfg.status
                .as_ref()
                .and_then(|s| s.next_schedule_time.as_ref())
                .is_some(),
            "BackupConfiguration web-backup shows no next schedule time: {:?}",
            cfg.status
        );
        Ok(())
    })
    .await;
}

/// Backs up a StatefulSet `source` of 3 whose host-i holds "source host-i".
async fn backed_up_source(t: &TestCtx) -> anyhow::Result<BTreeMap<String, Files>> {
    t.local_repository(REPO_PASSWORD).await?;
    let cfg =
        workloads::backup_configuration("source-backup", "StatefulSet", "source", None, json!({}))?;
    t.api::<api::BackupConfiguration>()
        .create(&pp(), &cfg)
        .await?;
    workloads::await_webhook(t, "StatefulSet", "source", "label pods of source", |p| {
        host_of(p) == Some("host-0")
    })
    .await?;
    t.api::<StatefulSet>()
        .create(&pp(), &workloads::statefulset(t, "source", 3)?)
        .await?;
    let mut data = BTreeMap::new();
    for p in running_pods(t, "source", 3).await? {
        let host = host_of(&p).context("source pod without host")?.to_owned();
        data.insert(host.clone(), write_data(t, &p, &format!("source {host}"))?);
    }
    let s = instant_backup(t, "source-backup").await?;
    assert_backup_succeeded(&s, &hosts(&["host-0", "host-1", "host-2"]))?;
    Ok(data)
}

/// Scenario 2, seed 001: a new StatefulSet of 5 restored with host-3 and
/// host-4 from host-1, the rest from themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_restore_into_five_replicas_holds_each_pod_until_its_data_is_back() {
    e2e::run("seed-001-restore", |t| async move {
        let source = backed_up_source(&t).await?;
        let rs: RestoreSession = serde_json::from_value(json!({
            "apiVersion": "hoard.dev/v1beta1",
            "kind": "RestoreSession",
            "metadata": { "name": "restore" },
            "spec": {
                "repository": { "name": e2e::REPO_NAME },
                "target": {
                    "ref": { "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "recovered" },
                    "volumeMounts": [{ "name": DATA_VOLUME, "mountPath": workloads::DATA_PATH }],
                },
                "rules": [
                    { "targetHosts": ["host-3", "host-4"], "sourceHost": "host-1", "paths": [workloads::DATA_PATH] },
                    { "targetHosts": [], "sourceHost": "", "paths": [workloads::DATA_PATH] },
                ],
            },
        }))?;
        t.api::<RestoreSession>().create(&pp(), &rs).await?;
        workloads::await_webhook(&t, "StatefulSet", "recovered", "hold pods of recovered", |p| {
            p.spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .and_then(|c| c.first())
                .is_some_and(|c| c.name == api::keys::RESTORE_WAIT_CONTAINER)
        })
        .await?;
        t.api::<StatefulSet>()
            .create(&pp(), &workloads::statefulset(&t, "recovered", 5)?)
            .await?;
        let pods = running_pods(&t, "recovered", 5).await?;
        let from = |host: &str| match host {
            "host-3" | "host-4" => "host-1".to_owned(),
            h => h.to_owned(),
        };
        for p in &pods {
            let name = p.name_any();
            let host = host_of(p).with_context(|| format!("{name} has no host"))?;
            let inits = p.spec.as_ref().and_then(|s| s.init_containers.clone()).unwrap_or_default();
            ensure!(
                inits.first().map(|c| c.name.as_str()) == Some(api::keys::RESTORE_WAIT_CONTAINER),
                "pod {name} was created without {} first: {:?}",
                api::keys::RESTORE_WAIT_CONTAINER,
                inits.iter().map(|c| &c.name).collect::<Vec<_>>()
            );
            ensure!(
                p.annotations().get(api::keys::ANNOTATION_RESTORE_SESSION).map(String::as_str)
                    == Some("restore"),
                "pod {name} is not annotated with its RestoreSession"
            );
            let want = source
                .get(&from(host))
                .with_context(|| format!("no source data of {}", from(host)))?;
            if let Some(k) = &t.kubelet {
                let rec = k
                    .hold_record(&name)
                    .with_context(|| format!("restore-wait of {name} never ran"))?;
                ensure!(rec.exit_code == 0, "restore-wait of {name} exited {}", rec.exit_code);
                ensure!(
                    rec.volumes.get(DATA_VOLUME) == Some(want),
                    "when restore-wait of {name} ({host}) let it start, its data was {:?}, want the files of {}",
                    rec.volumes.get(DATA_VOLUME).map(|f| f.keys().collect::<Vec<_>>()),
                    from(host)
                );
            }
            let now = read_tree(&t.volume_dir(p, DATA_VOLUME)?);
            ensure!(&now == want, "{name} ({host}) holds {:?}, want the files of {}", now.keys(), from(host));
        }
        let done = wait::object(
            t.api::<RestoreSession>(),
            "restore",
            "RestoreSession restore: phase Succeeded, totalHosts 5, one Succeeded entry per host",
            SESSION,
            |rs| {
                let st = rs.status.clone().unwrap_or_default();
                let stats = st.stats.unwrap_or_default();
                st.phase == Some(Phase::Succeeded)
                    && st.total_hosts == Some(5)
                    && stats.len() == 5
                    && stats.iter().all(|h| h.phase == Some(Phase::Succeeded))
            },
        )
        .await?;
        let got: BTreeSet<String> = done
            .status
            .unwrap_or_default()
            .stats
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.hostname)
            .collect();
        ensure!(got == hosts(&["host-0", "host-1", "host-2", "host-3", "host-4"]), "stats hosts {got:?}");
        Ok(())
    })
    .await;
}

/// Scenario 3: a DaemonSet on the two test nodes; hosts are the node names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_hosts_are_named_after_their_nodes() {
    e2e::run("daemonset", |t| async move {
        t.local_repository(REPO_PASSWORD).await?;
        let nodes: BTreeSet<String> = t.env.nodes.iter().map(|n| n.name.clone()).collect();
        let first = t
            .env
            .nodes
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let cfg = workloads::backup_configuration(
            "agents-backup",
            "DaemonSet",
            "agents",
            None,
            json!({}),
        )?;
        t.api::<api::BackupConfiguration>()
            .create(&pp(), &cfg)
            .await?;
        workloads::await_webhook(
            &t,
            "DaemonSet",
            "agents",
            "name a DaemonSet pod after its node",
            |p| host_of(p) == Some(first.as_str()),
        )
        .await?;
        t.api::<DaemonSet>()
            .create(&pp(), &workloads::daemonset(&t, "agents")?)
            .await?;
        let pods = running_pods(&t, "agents", nodes.len()).await?;
        let mut want = BTreeMap::new();
        for p in &pods {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            ensure!(
                host_of(p) == Some(node.as_str()),
                "pod {} on {node} has host {:?}",
                p.name_any(),
                host_of(p)
            );
            want.insert(node.clone(), write_data(&t, p, &node)?);
        }
        let s = instant_backup(&t, "agents-backup").await?;
        assert_backup_succeeded(&s, &nodes)?;
        for (host, files) in &want {
            ensure!(
                &restic_restore(&t, host).await? == files,
                "restic restored other files for {host}"
            );
        }
        Ok(())
    })
    .await;
}

/// Scenario 4: a Deployment of 2 replicas on two nodes is one host, host-0,
/// backed up once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_on_two_nodes_is_backed_up_once_as_host_0() {
    e2e::run("deployment", |t| async move {
        t.local_repository(REPO_PASSWORD).await?;
        let cfg =
            workloads::backup_configuration("app-backup", "Deployment", "app", None, json!({}))?;
        t.api::<api::BackupConfiguration>()
            .create(&pp(), &cfg)
            .await?;
        workloads::await_webhook(
            &t,
            "Deployment",
            "app",
            "label Deployment pods host-0",
            |p| host_of(p) == Some("host-0"),
        )
        .await?;
        t.api::<Deployment>()
            .create(&pp(), &workloads::deployment(&t, "app", 2, json!({}))?)
            .await?;
        let pods = running_pods(&t, "app", 2).await?;
        let nodes: BTreeSet<_> = pods
            .iter()
            .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect();
        if t.kubelet.is_some() {
            ensure!(
                nodes.len() == 2,
                "the two replicas run on {nodes:?}, want two nodes"
            );
        }
        let mut want = None;
        for p in &pods {
            ensure!(
                host_of(p) == Some("host-0"),
                "pod {} has host {:?}",
                p.name_any(),
                host_of(p)
            );
            want = Some(write_data(&t, p, "app data")?);
        }
        let s = instant_backup(&t, "app-backup").await?;
        assert_backup_succeeded(&s, &hosts(&["host-0"]))?;
        let snaps = snapshots(&t).await?;
        ensure!(
            snaps.len() == 1 && snaps[0].hostname == "host-0",
            "want exactly one snapshot, of host-0; restic lists {snaps:?}"
        );
        ensure!(
            Some(restic_restore(&t, "host-0").await?) == want,
            "restic restored other files"
        );
        Ok(())
    })
    .await;
}

/// Scenario 5: annotations alone create a BackupConfiguration owned by the
/// workload, and it goes with the workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_backup_annotation_creates_a_configuration_owned_by_the_workload() {
    e2e::run("auto-backup", |t| async move {
        t.local_repository(REPO_PASSWORD).await?;
        let ann = json!({
            api::keys::ANNOTATION_BACKUP: "true",
            api::keys::ANNOTATION_REPOSITORY: e2e::REPO_NAME,
            api::keys::ANNOTATION_VOLUMES: DATA_VOLUME,
            api::keys::ANNOTATION_SCHEDULE: "@every 12h",
            api::keys::ANNOTATION_RETENTION: "keepLast=2,prune=true",
        });
        let d = t
            .api::<Deployment>()
            .create(&pp(), &workloads::deployment(&t, "notes", 1, ann)?)
            .await?;
        let uid = d.uid().context("no uid")?;
        let cfgs = wait::until(
            t.api::<api::BackupConfiguration>(),
            None,
            "a BackupConfiguration owned by Deployment notes",
            PODS,
            |cs| {
                cs.iter().any(|c| {
                    c.owner_references()
                        .iter()
                        .any(|o| o.uid == uid && o.kind == "Deployment")
                })
            },
            |cs| format!("{cs:?}"),
        )
        .await?;
        let cfg = cfgs
            .iter()
            .find(|c| c.owner_references().iter().any(|o| o.uid == uid))
            .context("no owned configuration")?;
        ensure!(
            cfg.spec.schedule.as_deref() == Some("@every 12h"),
            "generated schedule {:?}",
            cfg.spec.schedule
        );
        let name = cfg.name_any();
        t.api::<Deployment>()
            .delete("notes", &DeleteParams::foreground())
            .await?;
        wait::until(
            t.api::<api::BackupConfiguration>(),
            None,
            &format!("BackupConfiguration {name} to go with its Deployment"),
            PODS,
            |cs| !cs.iter().any(|c| c.name_any() == name),
            |cs| format!("{cs:?}"),
        )
        .await?;
        Ok(())
    })
    .await;
}

/// Waits until the worker pods of session `uid` are gone (the controllers
/// delete them once their host finished; without a kubelet the fake one
/// completes the deletion).
async fn workers_gone(t: &TestCtx, uid: &str, of: &str) -> anyhow::Result<()> {
    wait::until(
        t.api::<Pod>(),
        Some(&format!("{}={uid}", api::keys::LABEL_SESSION_UID)),
        &format!("the worker pods of {of} to be deleted"),
        PODS,
        |ps| ps.is_empty(),
        |ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{} phase={:?} deleting={}",
                        p.name_any(),
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                        p.metadata.deletion_timestamp.is_some()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
    .await?;
    Ok(())
}

/// Scenario 6: a PVC no pod mounts is backed up through a short-lived worker
/// pod the controllers create and remove, and restored into a fresh PVC
/// through a worker pod held by restore-wait until its data is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_pvc_is_backed_up_and_restored_through_short_lived_pods() {
    e2e::run("standalone-pvc", |t| async move {
        t.local_repository(REPO_PASSWORD).await?;
        let source = t.local_claim("data").await?;
        let files = write_files(&source, "standalone pvc")?;
        let cfg = workloads::backup_configuration(
            "data-backup",
            "PersistentVolumeClaim",
            "data",
            None,
            json!({ "runtimeSettings": workloads::worker_runtime_settings(&t) }),
        )?;
        t.api::<api::BackupConfiguration>()
            .create(&pp(), &cfg)
            .await?;
        let s = instant_backup(&t, "data-backup").await?;
        assert_backup_succeeded(&s, &hosts(&["host-0"]))?;
        let name = s.name_any();
        let uid = s.uid().context("the session has no uid")?;
        // What `kubectl describe backupsession` shows of the worker pod.
        wait::until(
            t.api::<Event>(),
            None,
            &format!("a WorkerPodCreated event on BackupSession {name}"),
            PODS,
            |evs| {
                evs.iter().any(|e| {
                    e.reason.as_deref() == Some("WorkerPodCreated")
                        && e.involved_object.name.as_deref() == Some(name.as_str())
                })
            },
            |evs| {
                evs.iter()
                    .map(|e| {
                        format!(
                            "{:?} {:?}: {:?}",
                            e.involved_object.name, e.reason, e.message
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        )
        .await?;
        workers_gone(&t, &uid, &format!("BackupSession {name}")).await?;
        ensure!(
            restic_restore(&t, "host-0").await? == files,
            "restic restored other files for host-0 than the PVC held"
        );

        let target = t.local_claim("restored").await?;
        let rs = workloads::pvc_restore_session(&t, "restore", "restored")?;
        let rs = t.api::<RestoreSession>().create(&pp(), &rs).await?;
        let rs_uid = rs.uid().context("the RestoreSession has no uid")?;
        let done = wait::object(
            t.api::<RestoreSession>(),
            "restore",
            "RestoreSession restore to finish",
            SESSION,
            |rs| {
                matches!(
                    rs.status.as_ref().and_then(|s| s.phase),
                    Some(Phase::Succeeded | Phase::Failed)
                )
            },
        )
        .await?;
        let st = done.status.clone().unwrap_or_default();
        let stats = st.stats.clone().unwrap_or_default();
        ensure!(
            st.phase == Some(Phase::Succeeded)
                && st.total_hosts == Some(1)
                && stats.len() == 1
                && stats[0].hostname == "host-0"
                && stats[0].phase == Some(Phase::Succeeded),
            "want phase Succeeded, totalHosts 1, host-0 Succeeded; the RestoreSession shows {st:?}"
        );
        workers_gone(&t, &rs_uid, "RestoreSession restore").await?;
        if let Some(k) = &t.kubelet {
            let holds = k.hold_records_of(&rs_uid);
            ensure!(
                holds.len() == 1,
                "want one worker pod held by restore-wait for the restore, saw {:?}",
                holds.iter().map(|(n, _)| n).collect::<Vec<_>>()
            );
            let (pod, rec) = &holds[0];
            ensure!(
                rec.exit_code == 0,
                "restore-wait of {pod} exited {}",
                rec.exit_code
            );
            ensure!(
                rec.volumes.get(DATA_VOLUME) == Some(&files),
                "when restore-wait of {pod} let it start, the PVC held {:?}, want {:?}",
                rec.volumes
                    .get(DATA_VOLUME)
                    .map(|f| f.keys().collect::<Vec<_>>()),
                files.keys()
            );
        }
        let now = read_tree(&target);
        ensure!(
            now == files,
            "PVC restored holds {:?}, want {:?}",
            now.keys(),
            files.keys()
        );
        Ok(())
    })
    .await;
}

/// Scenario 7: after 5 sessions with keepLast 2, two snapshots per host remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_last_two_snapshots_per_host() {
    e2e::run("retention", |t| async move {
        t.local_repository(REPO_PASSWORD).await?;
        let cfg = workloads::backup_configuration(
            "db-backup",
            "StatefulSet",
            "db",
            None,
            json!({ "retentionPolicy": { "name": "keep-2", "keepLast": 2, "prune": true } }),
        )?;
        t.api::<api::BackupConfiguration>()
            .create(&pp(), &cfg)
            .await?;
        workloads::await_webhook(&t, "StatefulSet", "db", "label pods of db", |p| {
            host_of(p) == Some("host-0")
        })
        .await?;
        t.api::<StatefulSet>()
            .create(&pp(), &workloads::statefulset(&t, "db", 2)?)
            .await?;
        let pods = running_pods(&t, "db", 2).await?;
        for round in 0..5 {
            for p in &pods {
                write_data(&t, p, &format!("{} round {round}", p.name_any()))?;
            }
            let s = instant_backup(&t, "db-backup").await?;
            assert_backup_succeeded(&s, &hosts(&["host-0", "host-1"]))
                .with_context(|| format!("session {round}"))?;
        }
        let snaps = snapshots(&t).await?;
        for h in ["host-0", "host-1"] {
            let n = snaps.iter().filter(|s| s.hostname == h).count();
            ensure!(
                n == 2,
                "{h} has {n} snapshots after 5 sessions with keepLast 2: {snaps:?}"
            );
        }
        Ok(())
    })
    .await;
}

/// Scenario 8a: a wrong repository password fails the session, and each
/// host's error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_repository_password_fails_the_session_with_a_password_error() {
    e2e::run("wrong-password", |t| async move {
        t.local_repository("not-the-password").await?;
        let cfg =
            workloads::backup_configuration("web-backup", "StatefulSet", "web", None, json!({}))?;
        t.api::<api::BackupConfiguration>()
            .create(&pp(), &cfg)
            .await?;
        workloads::await_webhook(&t, "StatefulSet", "web", "label pods of web", |p| {
            host_of(p) == Some("host-0")
        })
        .await?;
        t.api::<StatefulSet>()
            .create(&pp(), &workloads::statefulset(&t, "web", 1)?)
            .await?;
        running_pods(&t, "web", 1).await?;
        let s = instant_backup(&t, "web-backup").await?;
        let st = s.status.clone().unwrap_or_default();
        let shown = show_backup_sessions(&[Arc::new(s.clone())]);
        ensure!(
            st.phase == Some(Phase::Failed),
            "session not Failed: {shown}"
        );
        let host = st
            .stats
            .unwrap_or_default()
            .into_iter()
            .find(|h| h.hostname == "host-0")
            .with_context(|| format!("no entry for host-0: {shown}"))?;
        let err = host.error.unwrap_or_default();
        ensure!(
            err.contains("password"),
            "the error of host-0 does not mention the password: {err:?}"
        );
        Ok(())
    })
    .await;
}

/// Scenario 8b: with the webhook process stopped, pods of workloads Hoard
/// does not target are still created, because of the failurePolicy of
/// manifests/base/webhook-configuration.yaml; so are those of a workload it
/// targets, unpatched.
///
/// The test's namespace opts out of the shared webhook
/// (`hoard.dev/webhook: disabled`, awaited: a dry-run pod with the
/// auto-backup annotation comes back unpatched) and gets a `hoard-webhook`
/// of its own, registered with the shipped policy for this namespace only.
/// The API server loads a new configuration asynchronously, so the test
/// first shows it is live: the dry-run pod comes back patched and the
/// test's process counts a patched review. Then the process is stopped
/// (SIGTERM, exit awaited); an un-targeted Deployment's pod and an
/// auto-backup Deployment's pod must still be created, the latter without
/// Hoard's host, and the API server must report that it called the webhook
/// for both and failed open (`apiserver_admission_webhook_fail_open_count`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_created_while_the_webhook_is_down() {
    e2e::run("webhook-down", |t| async move {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
        use k8s_openapi::api::core::v1::Namespace;
        use kube::api::{Patch, PatchParams};
        let shipped = workloads::shipped_webhook()?;
        ensure!(
            shipped["failurePolicy"] == "Ignore",
            "the shipped webhook's failurePolicy is {}, not Ignore: a stopped webhook would \
             block every pod",
            shipped["failurePolicy"]
        );
        let opt_out = json!({ "metadata": { "labels": {
            api::keys::LABEL_WEBHOOK: api::keys::WEBHOOK_DISABLED,
        } } });
        Api::<Namespace>::all(t.client.clone())
            .patch(&t.ns, &PatchParams::default(), &Patch::Merge(&opt_out))
            .await?;
        let mut own = t.env.start_own_webhook(&t.ns).await?;
        let hook = format!("{}.down.hoard.dev", t.ns);
        let name = format!("hoard-e2e-down-{}", t.ns);
        let cfg: MutatingWebhookConfiguration =
            serde_json::from_value(workloads::own_webhook_config_body(
                &name,
                &t.env.run_id,
                &hook,
                &own.url,
                own.ca_pem.as_bytes(),
                &t.ns,
                &shipped,
            )?)?;
        let whs = Api::<MutatingWebhookConfiguration>::all(t.client.clone());
        let outcome = async {
            await_probe(
                &t,
                &own,
                "the shared webhook to leave the namespace alone",
                |host, _| host.is_none(),
            )
            .await?;
            whs.create(&pp(), &cfg).await?;
            await_probe(
                &t,
                &own,
                "the API server to call the test's webhook",
                |host, n| host == Some("host-0") && n > 0,
            )
            .await?;
            own.stop().await?;
            let before = fail_open_count(&t, &hook).await?;
            let backup = json!({ api::keys::ANNOTATION_BACKUP: "true" });
            for (app, annotations) in [("plain", json!({})), ("targeted", backup)] {
                t.api::<Deployment>()
                    .create(&pp(), &workloads::deployment(&t, app, 1, annotations)?)
                    .await?;
            }
            for app in ["plain", "targeted"] {
                let pods = running_pods(&t, app, 1).await?;
                ensure!(
                    host_of(&pods[0]).is_none(),
                    "pod {} of {app} got a host with the webhook stopped",
                    pods[0].name_any()
                );
            }
            let after = fail_open_count(&t, &hook).await?;
            ensure!(
                after >= before + 2.0,
                "the pods were created, but the API server did not report failing open on \
                 webhook {hook} for both ({before} -> {after} in \
                 apiserver_admission_webhook_fail_open_count): was it called at all?"
            );
            Ok(())
        }
        .await;
        let _ = whs.delete(&name, &DeleteParams::default()).await;
        let _ = own.stop().await;
        outcome.with_context(|| format!("the test's own webhook logged:\n{}", own.log_tail(30)))
    })
    .await;
}

/// Waits (bounded) until a dry-run pod with the auto-backup annotation
/// comes back the way `ok` wants, given its Hoard host and the number of
/// reviews the test's own webhook patched.
async fn await_probe(
    t: &TestCtx,
    own: &e2e::env::OwnWebhook,
    what: &str,
    ok: impl Fn(Option<&str>, u64) -> bool,
) -> anyhow::Result<()> {
    let limit = Duration::from_secs(30);
    let start = std::time::Instant::now();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let probe = workloads::auto_backup_pod(t, "probe")?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let last = match t.api::<Pod>().create(&dry, &probe).await {
            Ok(pod) => {
                let patched = own.reviews("patched-backup").await?;
                if ok(host_of(&pod), patched) {
                    return Ok(());
                }
                format!(
                    "the last dry-run pod has host {:?}; the test's webhook patched {patched} reviews",
                    host_of(&pod)
                )
            }
            Err(e) => format!("the last dry run failed: {e}"),
        };
        ensure!(
            start.elapsed() < limit,
            "waited {limit:?} for {what} ({}); {last}",
            own.url
        );
    }
}

/// The API server's count of calls to mutating webhook `hook` that failed
/// and were ignored (`failurePolicy: Ignore`), from its `/metrics`.
async fn fail_open_count(t: &TestCtx, hook: &str) -> anyhow::Result<f64> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = t.client.request_text(req).await.context(
        "cannot read the API server's /metrics (the suite needs cluster-admin: \
         get on the non-resource URL /metrics)",
    )?;
    Ok(e2e::prometheus_value(
        &text,
        "apiserver_admission_webhook_fail_open_count",
        &[("name", hook), ("type", "admit")],
    )
    .unwrap_or(0.0))
}

/// Scenario 9: install.yaml and every example pass server-side dry-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_manifest_and_examples_pass_server_side_dry_run() {
    e2e::run("dry-run", |t| async move {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let mut files = vec![root.join("install.yaml")];
        let mut examples: Vec<_> = std::fs::read_dir(root.join("examples"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        examples.sort();
        files.extend(examples);
        // Namespaced objects need their namespace to exist even in a dry run.
        let created = ensure_namespaces(&t, &["hoard-system", "demo"]).await?;
        let mut failures = Vec::new();
        for f in &files {
            let out = tokio::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&t.env.kubeconfig)
                .args([
                    "apply",
                    "--dry-run=server",
                    "--server-side",
                    "--field-manager",
                    "hoard-e2e",
                    "-f",
                ])
                .arg(f)
                .output()
                .await
                .context("cannot run kubectl (needed for this scenario)")?;
            if !out.status.success() {
                failures.push(format!(
                    "{}: {}",
                    f.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let nss = Api::<k8s_openapi::api::core::v1::Namespace>::all(t.client.clone());
        for ns in created {
            let _ = nss.delete(&ns, &DeleteParams::background()).await;
        }
        ensure!(
            failures.is_empty(),
            "server-side dry run failed:\n{}",
            failures.join("\n")
        );
        Ok(())
    })
    .await;
}

/// Creates the namespaces that do not exist yet; returns those it created.
async fn ensure_namespaces(t: &TestCtx, names: &[&str]) -> anyhow::Result<Vec<String>> {
    let nss = Api::<k8s_openapi::api::core::v1::Namespace>::all(t.client.clone());
    let mut created = Vec::new();
    for n in names {
        if nss.get_opt(n).await?.is_none() {
            let ns = serde_json::from_value(json!({
                "metadata": { "name": n, "labels": { e2e::E2E_LABEL: t.env.run_id } }
            }))?;
            nss.create(&pp(), &ns).await?;
            created.push(n.to_string());
        }
    }
    Ok(created)
}
