//! The S3 back end against a real S3-protocol server (moto, from PyPI) on
//! 127.0.0.1, and restic reading and writing the same bucket.
//!
//! Each test starts its own `moto_server` on a free port (killed on drop).
//! It is found at `$HOARD_TEST_VENV/bin/moto_server` or
//! `<workspace>/.venv-test/bin/moto_server`; `scripts/install-deps` (or
//! `scripts/s3-server --install`) puts it there. Without it the tests fail
//! with that instruction — they never skip.

use std::path::Path;
use std::process::Command;

mod moto;

use engine::backend::location::{Credentials, Location, open_repo_string};
use engine::backend::object::ObjectBackend;
use engine::backup::{BackupOptions, ParentSelection, backup};
use engine::forget::{GroupBy, RetentionPolicy, forget, plan_forget};
use engine::restore::{RestoreOptions, restore};
use engine::{Backend, Error, FileType, InitOptions, KdfParams, Repository, SnapshotFilter};

const PASSWORD: &str = "s3-test-password";

fn creds() -> Credentials {
    let mut c = Credentials::default();
    c.insert("AWS_ACCESS_KEY_ID", "testing");
    c.insert("AWS_SECRET_ACCESS_KEY", "testing");
    c.insert("AWS_DEFAULT_REGION", "us-east-1");
    c
}

fn restic(repo: &str, pwfile: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("restic")
        .args(["-r", repo, "--no-cache", "--password-file"])
        .arg(pwfile)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_REPOSITORY")
        .output()
        .expect("run restic (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "restic {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

#[test]
fn backend_round_trips_on_s3() {
    let moto = moto::start();
    moto.create_bucket("bkt");
    let repo = format!("s3:http://127.0.0.1:{}/bkt/some/prefix", moto.port);
    let be = open_repo_string(&repo, &creds()).unwrap();
    assert_eq!(be.location(), repo);
    be.create().unwrap();

    let name = "ab".repeat(32);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    be.write(FileType::Pack, &name, &data).unwrap();
    be.write(FileType::Pack, &name, &data).unwrap();
    assert!(matches!(
        be.write(FileType::Pack, &name, b"different"),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        be.read_range(FileType::Pack, &name, 1000, 5000).unwrap(),
        &data[1000..6000]
    );
    assert!(be.read_range(FileType::Pack, &name, 299_999, 2).is_err());
    assert_eq!(be.read_full(FileType::Pack, &name).unwrap(), data);
    assert_eq!(
        be.list(FileType::Pack).unwrap(),
        vec![(name.clone(), 300_000)]
    );
    assert!(be.list(FileType::Snapshot).unwrap().is_empty());
    be.write(FileType::Config, "config", b"cfg").unwrap();
    assert!(matches!(be.create(), Err(Error::RepositoryExists { .. })));
    be.remove(FileType::Pack, &name).unwrap();
    assert!(!be.exists(FileType::Pack, &name).unwrap());
    assert!(matches!(
        be.read_full(FileType::Pack, &name),
        Err(Error::NotFound { .. })
    ));

    // moto returns the MD5 as ETag, so uploads are verified by it.
    let Location::Object(cfg) = repo.parse::<Location>().unwrap() else {
        panic!()
    };
    let obj = ObjectBackend::new(&cfg, &creds()).unwrap();
    obj.write(FileType::Index, &"ef".repeat(32), b"index bytes")
        .unwrap();
    assert!(obj.verifies_by_etag());

    // A missing bucket is an error that says so.
    let missing = open_repo_string(
        &format!("s3:http://127.0.0.1:{}/no-such-bucket", moto.port),
        &creds(),
    )
    .unwrap();
    let e = missing
        .write(FileType::Key, &"cd".repeat(32), b"k")
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(e.to_string().contains("no-such-bucket"), "{e}");
}

#[test]
fn hoard_and_restic_share_an_s3_repository() {
    let moto = moto::start();
    moto.create_bucket("shared");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let url = format!("s3:http://127.0.0.1:{}/shared/repo", moto.port);

    // hoard: init + backup into S3.
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"hello from hoard\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.join("sub/big.bin"), &big).unwrap();
    let be = open_repo_string(&url, &creds()).unwrap();
    let repo = Repository::init(
        be.clone(),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            ..Default::default()
        },
    )
    .unwrap();
    let opts = |tag: &str| BackupOptions {
        hostname: "node-1".into(),
        paths: vec!["/data".into()],
        tags: vec![tag.into()],
        parent: ParentSelection::Auto,
        ..Default::default()
    };
    let first = backup(&repo, &src, opts("one")).unwrap();
    std::fs::write(src.join("a.txt"), b"changed\n").unwrap();
    let second = backup(&repo, &src, opts("two")).unwrap();
    assert!(!first.is_incomplete() && !second.is_incomplete());

    // restic reads the bucket: lists both, checks all data, restores bytes.
    let snaps: serde_json::Value =
        serde_json::from_slice(&restic(&url, &pw, &["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    restic(&url, &pw, &["check", "--read-data"]);
    let out = dir.path().join("restic-out");
    restic(
        &url,
        &pw,
        &[
            "restore",
            &first.snapshot_id.to_hex(),
            "--target",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(out.join("data/sub/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(out.join("data/a.txt")).unwrap(),
        b"hello from hoard\n"
    );

    // restic writes into the same bucket; hoard sees and restores it.
    let rsrc = dir.path().join("rsrc");
    std::fs::create_dir_all(&rsrc).unwrap();
    std::fs::write(rsrc.join("r.txt"), b"from restic").unwrap();
    restic(
        &url,
        &pw,
        &["backup", "--host", "node-2", rsrc.to_str().unwrap()],
    );
    let repo = Repository::open(be.clone(), PASSWORD).unwrap();
    let from_restic = repo
        .find_snapshot(
            "latest",
            &SnapshotFilter {
                hosts: vec!["node-2".into()],
                ..Default::default()
            },
        )
        .unwrap();
    let hout = dir.path().join("hoard-out");
    let r = restore(&repo, &from_restic.0, &hout, RestoreOptions::default()).unwrap();
    assert!(!r.is_incomplete());
    let restored = hout.join(rsrc.strip_prefix("/").unwrap()).join("r.txt");
    assert_eq!(std::fs::read(restored).unwrap(), b"from restic");

    // forget on S3: keep the last snapshot of node-1's group.
    let plans = plan_forget(
        &repo.snapshots().unwrap(),
        &RetentionPolicy {
            keep_last: 1,
            ..Default::default()
        },
        GroupBy::default(),
    );
    let stats = forget(&repo, &plans).unwrap();
    assert_eq!(stats.removed, 1);
    let snaps: serde_json::Value =
        serde_json::from_slice(&restic(&url, &pw, &["snapshots", "--json"])).unwrap();
    let ids: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&first.snapshot_id.to_hex().as_str()));
    assert!(
        be.list(FileType::Lock).unwrap().is_empty(),
        "forget released its lock"
    );
    restic(&url, &pw, &["check"]);

    // prune on S3: the forgotten snapshot's own blobs (its a.txt, its trees)
    // go; with no unused space tolerated their packs are repacked.
    let pruned = engine::prune::prune(
        &repo,
        &engine::prune::PruneOptions {
            max_unused_percent: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(pruned.blobs_unused >= 2, "{pruned:?}");
    assert!(pruned.bytes_freed > 0, "{pruned:?}");
    assert!(
        be.list(FileType::Lock).unwrap().is_empty(),
        "prune released its lock"
    );
    // hoard's check (all data) and restic's agree the bucket is sound, and
    // the kept snapshot still restores the big file byte for byte.
    let repo = Repository::open(be.clone(), PASSWORD).unwrap();
    let report = engine::check::check(
        &repo,
        &engine::check::CheckOptions {
            read_data: true,
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    restic(&url, &pw, &["check", "--read-data"]);
    let out2 = dir.path().join("restic-out-2");
    restic(
        &url,
        &pw,
        &[
            "restore",
            &second.snapshot_id.to_hex(),
            "--target",
            out2.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(out2.join("data/sub/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(out2.join("data/a.txt")).unwrap(),
        b"changed\n"
    );
}
