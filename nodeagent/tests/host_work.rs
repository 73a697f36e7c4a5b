//! The agent's data work on real directories laid out as the kubelet lays
//! them out, with a real local repository and the real `restic` reading
//! back what was written.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use api::RestoreRule;
use api::keys;
use api::rules::plan_for_host;
use engine::priority::Priority;
use engine::{InitOptions, KdfParams, LocalBackend, Repository};
use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodStatus, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use nodeagent::hold::{Outcome, write_marker};
use nodeagent::transfers::Transfers;
use nodeagent::volumes::Kubelet;
use nodeagent::work::{
    HostProgress, HostVolume, TransferSettings, run_backup_host, run_restore_host,
};

const PASSWORD: &str = "agent-test-password";
const MOUNT: &str = "/source/data";
const VOL: &str = "source-data";

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn pvc(name: &str, claim: &str) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..Default::default()
    }
}

fn pod(name: &str, uid: &str, phase: &str, volumes: Vec<Volume>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("demo".into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            volumes: Some(volumes),
            node_name: Some("node-a".into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
    }
}

fn empty_dir_path(root: &Path, uid: &str, vol: &str) -> PathBuf {
    root.join("pods")
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir")
        .join(vol)
}

fn init_repo(dir: &Path) -> Arc<Repository> {
    Arc::new(
        Repository::init(
            Arc::new(LocalBackend::new(dir)),
            PASSWORD,
            InitOptions {
                kdf: KdfParams::insecure_fast(),
                chunker_polynomial: None,
            },
        )
        .unwrap(),
    )
}

/// Distinct content per host: small files, a nested dir, a 300 KiB file, a symlink.
fn fill(dir: &Path, host: &str) {
    std::fs::create_dir_all(dir.join("db/sub")).unwrap();
    std::fs::write(dir.join("whoami"), host).unwrap();
    std::fs::write(dir.join("db/sub/rows"), format!("{host}\n").repeat(3000)).unwrap();
    let big: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ host.len() as u8)
        .collect();
    std::fs::write(dir.join("db/blob.bin"), big).unwrap();
    symlink("db/sub/rows", dir.join("rows-link")).unwrap();
}

/// Relative path → (kind, content or link target, permission bits).
fn digest(root: &Path) -> BTreeMap<String, (char, Vec<u8>, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, Vec<u8>, u32)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.mode() & 0o7777;
            if m.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, ('l', t.to_string_lossy().as_bytes().to_vec(), 0));
            } else if m.is_dir() {
                out.insert(rel, ('d', vec![], mode));
                walk(root, &p, out);
            } else {
                out.insert(rel, ('f', std::fs::read(&p).unwrap(), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn settings() -> TransferSettings {
    TransferSettings {
        priority: Priority {
            nice: Some(5),
            ionice_class: Some(2),
            ionice_class_data: Some(4),
        },
        tags: vec![
            "demo/BackupConfiguration/ss-backup".into(),
            "StatefulSet/web".into(),
        ],
        threads: 2,
        ..Default::default()
    }
}

fn volumes_of(k: &Kubelet, p: &Pod, pvs: &dyn Fn(&str) -> Option<String>) -> Vec<HostVolume> {
    vec![HostVolume {
        volume: VOL.into(),
        snapshot_path: MOUNT.into(),
        dir: k.open_volume(p, VOL, false, pvs).unwrap(),
    }]
}

fn restic(repo: &Path) -> Command {
    let bin = std::env::var("RESTIC").unwrap_or_else(|_| "/usr/bin/restic".into());
    assert!(
        Path::new(&bin).exists(),
        "this test needs the real restic at {bin} (scripts/install-deps or apt-get install restic)"
    );
    let mut c = Command::new(bin);
    c.arg("-r")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", PASSWORD);
    c
}

fn run(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Seed 001: a StatefulSet's 3 hosts backed up; a new 5-replica StatefulSet
/// restored with host-3/host-4 ← host-1 and every other host from itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_backup_then_seed_001_restore_with_markers() {
    let t = tempfile::tempdir().unwrap();
    let k = Arc::new(Kubelet::new(t.path().join("kubelet")));
    let repo_dir = t.path().join("repo");
    let repo = init_repo(&repo_dir);
    let transfers = Transfers::new(1, None);
    let no_pv = |_: &str| None;

    let mut originals = BTreeMap::new();
    for i in 0..3 {
        let uid = format!("old-uid-{i}");
        let host = format!("host-{i}");
        let dir = empty_dir_path(k.root.as_path(), &uid, VOL);
        fill(&dir, &host);
        originals.insert(host.clone(), digest(&dir));
        let p = pod(&format!("web-{i}"), &uid, "Running", vec![empty_dir(VOL)]);
        let vols = volumes_of(&k, &p, &no_pv);
        let (repo, h) = (repo.clone(), host.clone());
        let report = transfers
            .run("backup", settings().priority, move || {
                run_backup_host(&repo, &h, &vols, &settings(), &HostProgress::default())
            })
            .await
            .unwrap();
        assert!(report.error.is_none(), "{:?}", report.error);
        let st = report.to_status();
        assert_eq!(st.hostname, host);
        assert_eq!(st.phase, Some(api::Phase::Succeeded));
        let snaps = st.snapshots.unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].path, MOUNT);
        let fs = snaps[0].file_stats.clone().unwrap();
        // regular files only (the symlink is stored as a link)
        assert_eq!(
            (fs.total, fs.new, fs.unmodified),
            (Some(3), Some(3), Some(0))
        );
    }
    // snapshots are labelled by host and mount path, not by the pod's directory
    let snaps = repo.snapshots().unwrap();
    let mut labels: Vec<_> = snaps
        .iter()
        .map(|(_, s)| (s.hostname.clone(), s.paths.clone()))
        .collect();
    labels.sort();
    assert_eq!(
        labels,
        (0..3)
            .map(|i| (format!("host-{i}"), vec![MOUNT.to_string()]))
            .collect::<Vec<_>>()
    );
    assert!(snaps[0].1.tags.contains(&"StatefulSet/web".to_string()));

    // the seed 001 rules
    let rules = vec![
        RestoreRule {
            target_hosts: Some(vec!["host-3".into(), "host-4".into()]),
            source_host: Some("host-1".into()),
            paths: Some(vec![MOUNT.into()]),
            snapshots: None,
        },
        RestoreRule {
            target_hosts: Some(vec![]),
            source_host: Some("".into()),
            paths: Some(vec![MOUNT.into()]),
            snapshots: None,
        },
    ];
    let session_uid = "rs-uid-1";
    for i in 0..5 {
        let uid = format!("new-uid-{i}");
        let host = format!("host-{i}");
        let dir = empty_dir_path(k.root.as_path(), &uid, VOL);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(empty_dir_path(
            k.root.as_path(),
            &uid,
            keys::RESTORE_STATUS_VOLUME,
        ))
        .unwrap();
        let p = pod(
            &format!("recovered-{i}"),
            &uid,
            "Pending",
            vec![empty_dir(VOL), empty_dir(keys::RESTORE_STATUS_VOLUME)],
        );
        let plan = plan_for_host(&host, Some(&rules)).expect("every host has a rule");
        let vols = volumes_of(&k, &p, &no_pv);
        let (repo, h, k2, p2) = (repo.clone(), host.clone(), k.clone(), p.clone());
        let report = transfers
            .run("restore", settings().priority, move || {
                let r = run_restore_host(
                    &repo,
                    &h,
                    &plan,
                    &vols,
                    &settings(),
                    &HostProgress::default(),
                );
                let outcome = match &r.error {
                    None => Outcome::Done,
                    Some(e) => Outcome::Failed(e.to_string()),
                };
                write_marker(&k2, &p2, session_uid, &outcome).unwrap();
                r
            })
            .await
            .unwrap();
        assert!(report.error.is_none(), "{host}: {:?}", report.error);
        assert_eq!(report.to_status().phase, Some(api::Phase::Succeeded));
        let source = if i >= 3 {
            "host-1".to_string()
        } else {
            host.clone()
        };
        assert_eq!(report.source_host, source);
        assert_eq!(
            digest(&dir),
            originals[&source],
            "{host} must equal {source}"
        );
        let marker = empty_dir_path(k.root.as_path(), &uid, keys::RESTORE_STATUS_VOLUME)
            .join(keys::restore_done_marker(session_uid));
        assert!(marker.is_file(), "{host}: done marker");
        // no staging directory is left in the volume
        assert!(!dir.join(".hoard-restore-staging").exists());
    }

    // the stock restic reads what the agent wrote
    drop(repo);
    run({
        let mut c = restic(&repo_dir);
        c.args(["check", "--read-data"]);
        c
    });
    let out = t.path().join("restic-out");
    run({
        let mut c = restic(&repo_dir);
        c.args(["restore", "latest", "--host", "host-1", "--target"])
            .arg(&out);
        c
    });
    assert_eq!(digest(&out.join("source/data")), originals["host-1"]);
}

/// A rule naming a host that was never backed up fails the host and writes
/// the failure marker with the reason the init-container prints.
#[tokio::test]
async fn restore_failure_writes_the_failed_marker_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let k = Kubelet::new(t.path().join("kubelet"));
    let repo = init_repo(&t.path().join("repo"));
    let uid = "u-fail";
    std::fs::create_dir_all(empty_dir_path(k.root.as_path(), uid, VOL)).unwrap();
    let status = empty_dir_path(k.root.as_path(), uid, keys::RESTORE_STATUS_VOLUME);
    std::fs::create_dir_all(&status).unwrap();
    let p = pod(
        "r-0",
        uid,
        "Pending",
        vec![empty_dir(VOL), empty_dir(keys::RESTORE_STATUS_VOLUME)],
    );
    let rules = vec![RestoreRule {
        target_hosts: None,
        source_host: Some("host-9".into()),
        paths: Some(vec![MOUNT.into()]),
        snapshots: None,
    }];
    let plan = plan_for_host("host-0", Some(&rules)).unwrap();
    let vols = volumes_of(&k, &p, &|_| None);
    let r = run_restore_host(
        &repo,
        "host-0",
        &plan,
        &vols,
        &settings(),
        &HostProgress::default(),
    );
    let e = r.error.as_ref().expect("must fail");
    assert_eq!(e.reason(), "no_snapshot");
    let st = r.to_status();
    assert_eq!(st.phase, Some(api::Phase::Failed));
    write_marker(&k, &p, "s1", &Outcome::Failed(e.to_string())).unwrap();
    let reason = std::fs::read_to_string(status.join("s1/failed")).unwrap();
    assert!(
        reason.starts_with("no snapshot of host \"host-9\" with path /source/data"),
        "{reason}"
    );
    assert!(!status.join("s1/done").exists());

    // a rule path no volume mounts says which paths exist
    let rules = vec![RestoreRule {
        target_hosts: None,
        source_host: None,
        paths: Some(vec!["/elsewhere".into()]),
        snapshots: None,
    }];
    let plan = plan_for_host("host-0", Some(&rules)).unwrap();
    let r = run_restore_host(
        &repo,
        "host-0",
        &plan,
        &vols,
        &settings(),
        &HostProgress::default(),
    );
    assert_eq!(
        r.error.unwrap().to_string(),
        "path /elsewhere is not inside any volume mounted by the target (mount paths: /source/data); use one of them in the rule's paths"
    );
}

/// A StatefulSet pod re-created with a new UID: its PV is mounted under the
/// new pod's directory, and the next backup reads no unchanged file.
#[test]
fn second_backup_after_pod_recreated_with_new_uid_is_incremental() {
    let t = tempfile::tempdir().unwrap();
    let k = Kubelet::new(t.path().join("kubelet"));
    let repo = init_repo(&t.path().join("repo"));
    let csi = |uid: &str| {
        k.root
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~csi/pvc-0123/mount")
    };
    fill(&csi("uid-a"), "host-0");
    let pvs = |c: &str| (c == "data-web-0").then(|| "pvc-0123".to_string());
    let first_pod = pod("web-0", "uid-a", "Running", vec![pvc(VOL, "data-web-0")]);
    let r1 = run_backup_host(
        &repo,
        "host-0",
        &volumes_of(&k, &first_pod, &pvs),
        &settings(),
        &HostProgress::default(),
    );
    assert!(r1.error.is_none());
    // the pod is deleted and re-created: the same volume, a new pod directory
    std::fs::create_dir_all(csi("uid-b").parent().unwrap()).unwrap();
    std::fs::rename(csi("uid-a"), csi("uid-b")).unwrap();
    std::fs::write(csi("uid-b").join("whoami"), "host-0 changed").unwrap();
    let second_pod = pod("web-0", "uid-b", "Running", vec![pvc(VOL, "data-web-0")]);
    let progress = HostProgress::default();
    let r2 = run_backup_host(
        &repo,
        "host-0",
        &volumes_of(&k, &second_pod, &pvs),
        &settings(),
        &progress,
    );
    assert!(r2.error.is_none());
    let s = &r2.volumes[0].summary;
    assert_eq!(s.parent, Some(r1.volumes[0].summary.snapshot_id));
    assert_eq!(s.stats.files_unmodified, 2, "db/sub/rows and db/blob.bin");
    assert_eq!(s.stats.files_changed, 1);
    assert_eq!(s.stats.files_new, 0);
    assert_eq!(s.stats.bytes_read, "host-0 changed".len() as u64);
    assert_eq!(progress.totals().bytes_read, s.stats.bytes_read);
}

/// The tenant plants links in the target volume before the restore: they
/// are replaced, never written through, and nothing outside changes.
#[test]
fn attack_restore_over_planted_links_writes_nothing_outside_the_volume() {
    let t = tempfile::tempdir().unwrap();
    let k = Kubelet::new(t.path().join("kubelet"));
    let repo = init_repo(&t.path().join("repo"));
    let src = empty_dir_path(k.root.as_path(), "u-src", VOL);
    fill(&src, "host-0");
    let src_pod = pod("web-0", "u-src", "Running", vec![empty_dir(VOL)]);
    let r = run_backup_host(
        &repo,
        "host-0",
        &volumes_of(&k, &src_pod, &|_| None),
        &settings(),
        &HostProgress::default(),
    );
    assert!(r.error.is_none());

    let outside = t.path().join("outside");
    std::fs::create_dir_all(outside.join("db")).unwrap();
    std::fs::write(outside.join("whoami"), "host file").unwrap();
    let dst = empty_dir_path(k.root.as_path(), "u-dst", VOL);
    std::fs::create_dir_all(&dst).unwrap();
    symlink(outside.join("whoami"), dst.join("whoami")).unwrap();
    symlink(outside.join("db"), dst.join("db")).unwrap();
    symlink(&outside, dst.join(".hoard-restore-staging")).unwrap();
    let dst_pod = pod("web-0", "u-dst", "Pending", vec![empty_dir(VOL)]);
    let plan = plan_for_host("host-0", None).unwrap();
    let rr = run_restore_host(
        &repo,
        "host-0",
        &plan,
        &volumes_of(&k, &dst_pod, &|_| None),
        &settings(),
        &HostProgress::default(),
    );
    assert!(rr.error.is_none(), "{:?}", rr.error);
    assert_eq!(digest(&dst), digest(&src));
    assert_eq!(
        std::fs::read_to_string(outside.join("whoami")).unwrap(),
        "host file"
    );
    assert_eq!(std::fs::read_dir(outside.join("db")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 2);
}
