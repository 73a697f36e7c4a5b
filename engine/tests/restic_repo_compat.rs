//! Repository-format compatibility with the real restic (0.14, Debian):
//! a repository written by hoard passes `restic check --read-data` and
//! restores byte-identically with restic; a repository written by restic is
//! opened, indexed and read (every blob verified) by hoard.
//!
//! These tests need `restic` on PATH (scripts/install-deps installs it) and
//! fail — they do not skip — without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use engine::{
    BlobType, Id, InitOptions, KdfParams, LocalBackend, Repository, Snapshot, SnapshotFilter,
};

fn restic_bin() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin"])
    {
        let p = Path::new(dir).join("restic");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "restic not found on PATH: these compatibility tests need the real restic; run scripts/install-deps"
    );
}

fn restic(repo: &Path, pwfile: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(restic_bin())
        .arg("-r")
        .arg(repo)
        .arg("--password-file")
        .arg(pwfile)
        .arg("--no-cache")
        .args(args)
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_REPOSITORY")
        .output()
        .expect("run restic");
    assert!(
        out.status.success(),
        "restic {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn file_node(name: &str, content: &[Id], size: u64) -> serde_json::Value {
    serde_json::json!({
        "name": name, "type": "file", "mode": 0o644,
        "mtime": "2024-05-01T10:00:00.123456789Z", "atime": "2024-05-01T10:00:00.123456789Z",
        "ctime": "2024-05-01T10:00:00.123456789Z",
        "uid": 0, "gid": 0, "user": "root", "group": "root", "inode": 42, "device_id": 1,
        "size": size, "links": 1, "content": content,
    })
}

#[test]
fn hoard_repository_passes_restic_check_and_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let repo = Repository::init(
        Arc::new(LocalBackend::new(&repo_dir)),
        "correct horse",
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap();

    // Three chunks of one file: compressible text, random bytes, a tiny tail.
    let chunks: Vec<Vec<u8>> = vec![
        b"2024-05-01 INFO request served in 3ms\n".repeat(20_000),
        (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
        b"tail".to_vec(),
    ];
    let ids: Vec<Id> = chunks.iter().map(|c| Id::hash(c)).collect();
    for (c, id) in chunks.iter().zip(&ids) {
        assert!(repo.save_blob(BlobType::Data, *id, c).unwrap().new);
    }
    let whole: Vec<u8> = chunks.concat();
    let empty_content: [Id; 0] = [];
    let tree = serde_json::json!({ "nodes": [
        file_node("empty.txt", &empty_content, 0),
        file_node("file.bin", &ids, whole.len() as u64),
    ]});
    let mut tree_bytes = serde_json::to_vec(&tree).unwrap();
    tree_bytes.push(b'\n');
    let tree_id = Id::hash(&tree_bytes);
    repo.save_blob(BlobType::Tree, tree_id, &tree_bytes)
        .unwrap();
    repo.flush().unwrap();
    let mut snap = Snapshot::new(tree_id, vec!["/data".into()], "host-2");
    snap.tags = vec!["nightly".into()];
    let snap_id = repo.save_snapshot(&snap).unwrap();

    restic(&repo_dir, &pw, &["check", "--read-data"]);

    let out = restic(&repo_dir, &pw, &["snapshots", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &list[0];
    assert_eq!(first["id"], snap_id.to_hex());
    assert_eq!(first["hostname"], "host-2");
    assert_eq!(first["paths"][0], "/data");
    assert_eq!(first["tags"][0], "nightly");

    let target = tmp.path().join("restored");
    restic(
        &repo_dir,
        &pw,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(target.join("file.bin")).unwrap(), whole);
    assert_eq!(std::fs::read(target.join("empty.txt")).unwrap(), b"");

    let cfg = restic(&repo_dir, &pw, &["cat", "config"]);
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout).unwrap();
    assert_eq!(cfg["version"], 2);
    assert_eq!(cfg["id"], repo.config().id.to_hex());
}

#[test]
fn restic_repository_is_read_by_hoard() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "s3cret").unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("sub/log.txt"), b"line of log text\n".repeat(5000)).unwrap();
    restic(&repo_dir, &pw, &["init", "--repository-version", "2"]);
    restic(
        &repo_dir,
        &pw,
        &[
            "backup",
            "--host",
            "host-9",
            "--tag",
            "t1",
            src.to_str().unwrap(),
        ],
    );

    let e = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), "wrong").unwrap_err();
    assert!(e.to_string().contains("wrong password"), "{e}");
    let repo = Repository::open(Arc::new(LocalBackend::new(&repo_dir)), "s3cret").unwrap();
    assert_eq!(repo.config().version, 2);

    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    let (_, snap) = &snaps[0];
    assert_eq!(snap.hostname, "host-9");
    assert_eq!(snap.tags, vec!["t1".to_string()]);
    assert_eq!(snap.paths, vec![src.to_str().unwrap().to_string()]);
    let filter = SnapshotFilter {
        hosts: vec!["host-9".into()],
        tags: vec!["t1".into()],
        ..Default::default()
    };
    assert_eq!(repo.find_snapshot("latest", &filter).unwrap().1, *snap);

    // Every blob of every pack: header authenticates, index agrees, content verifies.
    let (indexed, _) = repo.index_stats();
    let mut seen = 0;
    for (name, _) in repo.backend().list(engine::FileType::Pack).unwrap() {
        for b in repo.pack_header(&name.parse().unwrap()).unwrap() {
            let loc = repo
                .lookup(b.blob_type, &b.id)
                .expect("blob in pack header is indexed");
            assert_eq!(
                (loc.offset, loc.length),
                (u64::from(b.offset), u64::from(b.length))
            );
            repo.load_blob(b.blob_type, &b.id).unwrap();
            seen += 1;
        }
    }
    assert_eq!(seen, indexed);

    // Walk the snapshot's trees down to big.bin and reassemble it.
    let mut tree: serde_json::Value =
        serde_json::from_slice(&repo.load_blob(BlobType::Tree, &snap.tree).unwrap()).unwrap();
    let file = loop {
        let nodes = tree["nodes"].as_array().unwrap().clone();
        if let Some(f) = nodes.iter().find(|n| n["name"] == "big.bin") {
            break f.clone();
        }
        let sub = nodes
            .iter()
            .find(|n| n["type"] == "dir")
            .expect("path leads down to the source dir");
        let sub_id: Id = sub["subtree"].as_str().unwrap().parse().unwrap();
        tree = serde_json::from_slice(&repo.load_blob(BlobType::Tree, &sub_id).unwrap()).unwrap();
    };
    let mut data = Vec::new();
    for c in file["content"].as_array().unwrap() {
        let id: Id = c.as_str().unwrap().parse().unwrap();
        data.extend(repo.load_blob(BlobType::Data, &id).unwrap());
    }
    assert_eq!(data, big);
}
