//! Format compatibility with the real restic (Debian's 0.14 at /usr/bin/restic):
//! restic checks and restores what hoard writes, hoard restores what restic
//! writes, and both deduplicate against each other in one repository.

mod data_common;
use data_common::*;

use std::path::Path;
use std::process::Command;

use engine::backup::ParentSelection;

fn restic(repo: &Path) -> Command {
    let bin = std::env::var("RESTIC").unwrap_or_else(|_| "/usr/bin/restic".into());
    assert!(
        Path::new(&bin).exists(),
        "these tests need the real restic binary at {bin} (install it with scripts/install-deps or `apt-get install restic`)"
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
        "{c:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `restic backup --json`'s summary line.
fn backup_summary(stdout: &str) -> serde_json::Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .expect("restic printed no summary")
}

#[test]
fn restic_checks_and_restores_a_hoard_repository() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_dataset(&src);
    let repo_dir = t.path().join("repo");
    let repo = init_local(&repo_dir);
    let s = do_backup(&repo, &src, opts("host-2", "/data"));
    assert!(!s.is_incomplete(), "{:?}", s.errors);
    drop(repo);

    let mut check = restic(&repo_dir);
    check.args(["check", "--read-data"]);
    run(check);

    let mut snaps = restic(&repo_dir);
    snaps.args(["snapshots", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&run(snaps)).unwrap();
    assert_eq!(list[0]["hostname"], "host-2");
    assert_eq!(list[0]["paths"][0], "/data");

    let out = t.path().join("out");
    let mut r = restic(&repo_dir);
    r.args(["restore", "latest", "--target"]).arg(&out);
    run(r);
    assert_same_tree(&src, &out.join("data"));
}

#[test]
fn hoard_restores_a_restic_repository() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_dataset(&src);
    let repo_dir = t.path().join("repo");
    let mut init = restic(&repo_dir);
    init.args(["init", "--repository-version", "2"]);
    run(init);
    let mut b = restic(&repo_dir);
    b.args(["backup", "--host", "h"]).arg(&src);
    run(b);

    let repo = open_local(&repo_dir);
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    let out = t.path().join("out");
    let r = do_restore(&repo, &snaps[0].0, &out);
    assert!(!r.is_incomplete(), "{:?}", r.errors);
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
}

#[test]
fn hoard_and_restic_deduplicate_against_each_other() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_dataset(&src);
    // big enough for several chunks: cut points must agree byte for byte
    std::fs::write(src.join("large.bin"), random_bytes(9, 6 * 1024 * 1024)).unwrap();
    let repo_dir = t.path().join("repo");
    let repo = init_local(&repo_dir);

    // restic first, into hoard's repository ...
    let mut b = restic(&repo_dir);
    b.args(["backup", "--json", "--host", "restic-host"])
        .arg(&src);
    let first = backup_summary(&run(b));
    assert!(first["data_blobs"].as_u64().unwrap() > 3);

    // ... then hoard adds no data blobs for the same files.
    let repo = {
        drop(repo);
        open_local(&repo_dir)
    };
    let mut o = opts("hoard-host", "/data");
    o.parent = ParentSelection::None;
    let s = do_backup(&repo, &src, o);
    assert_eq!(
        s.stats.bytes_added, 0,
        "hoard stored data restic already had: chunking differs"
    );
    assert!(s.stats.bytes_read > 9 * 1024 * 1024);

    // And the other way round: new data backed up by hoard first.
    std::fs::write(src.join("new.bin"), random_bytes(10, 3 * 1024 * 1024)).unwrap();
    let mut o = opts("hoard-host", "/data");
    o.parent = ParentSelection::None;
    let s2 = do_backup(&repo, &src, o);
    assert!(s2.stats.bytes_added >= 3 * 1024 * 1024);
    drop(repo);
    let mut b = restic(&repo_dir);
    b.args(["backup", "--json", "--force", "--host", "restic-host"])
        .arg(&src);
    let again = backup_summary(&run(b));
    assert_eq!(
        again["data_blobs"], 0,
        "restic stored data hoard already had: {again}"
    );

    let mut check = restic(&repo_dir);
    check.args(["check", "--read-data"]);
    run(check);
}

/// Subtree id of `path` (components) below a snapshot's root tree.
fn subtree(repo: &engine::Repository, snap: &engine::Id, path: &[&str]) -> engine::Id {
    let s = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .find(|(i, _)| i == snap)
        .unwrap()
        .1;
    let mut id = s.tree;
    for c in path {
        let t =
            engine::tree::Tree::from_json(&repo.load_blob(engine::BlobType::Tree, &id).unwrap())
                .unwrap();
        id = t
            .nodes
            .iter()
            .find(|n| n.name == c.as_bytes())
            .unwrap()
            .subtree
            .unwrap();
    }
    id
}

#[test]
fn hoard_writes_tree_blobs_byte_identical_to_restic() {
    // Regular files only, so every recorded field is the same for both tools
    // and the tree JSON must be the same bytes.
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let files = src.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("a <&> \"q\".txt"), b"x").unwrap();
    std::fs::write(files.join("empty"), b"").unwrap();
    std::fs::write(files.join("big"), random_bytes(5, 2 * 1024 * 1024)).unwrap();
    std::fs::write(
        files.join(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"caf\xc3\xa9\xff"),
        ),
        b"y",
    )
    .unwrap();
    set_mtime(&files.join("big"), 1_234_567_890, 100);
    let repo_dir = t.path().join("repo");
    drop(init_local(&repo_dir));
    let mut b = restic(&repo_dir);
    b.args(["backup", "--host", "h"]).arg(&src);
    run(b);
    let repo = open_local(&repo_dir);
    let restic_snap = repo.snapshots().unwrap()[0].0;
    let abs = src.to_str().unwrap().to_string();
    let mut o = opts("h", &abs);
    o.parent = ParentSelection::None;
    let ours = do_backup(&repo, &src, o);
    let mut comps: Vec<&str> = abs.split('/').filter(|c| !c.is_empty()).collect();
    comps.push("files");
    let (a, b) = (
        subtree(&repo, &ours.snapshot_id, &comps),
        subtree(&repo, &restic_snap, &comps),
    );
    let text =
        |id| String::from_utf8(repo.load_blob(engine::BlobType::Tree, &id).unwrap()).unwrap();
    assert_eq!(text(a), text(b));
    assert_eq!(a, b);
}
