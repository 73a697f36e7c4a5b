//! Restoring never writes outside the target directory, whatever names or
//! links the snapshot holds or the target already contains.

mod data_common;
use data_common::*;

use engine::restore::{RestoreOptions, restore};
use engine::tree::{GoTime, Node, NodeType, Tree};
use engine::{BlobType, Id, Repository, Snapshot};

fn file(name: &[u8], content: &[u8], repo: &Repository) -> Node {
    let id = Id::hash(content);
    repo.save_blob(BlobType::Data, id, content).unwrap();
    let mut n = Node::new(name.to_vec(), NodeType::File);
    n.mode = 0o644;
    n.size = content.len() as u64;
    n.content = Some(vec![id]);
    n.mtime = GoTime::from_unix(1_600_000_000, 0);
    n
}

fn dir(name: &[u8], nodes: Vec<Node>, repo: &Repository) -> Node {
    let mut n = Node::new(name.to_vec(), NodeType::Dir);
    n.mode = engine::tree::gomode::DIR | 0o755;
    n.subtree = Some(save(nodes, repo));
    n
}

fn symlink(name: &[u8], target: &[u8]) -> Node {
    let mut n = Node::new(name.to_vec(), NodeType::Symlink);
    n.mode = engine::tree::gomode::SYMLINK | 0o777;
    n.link_target = target.to_vec();
    n
}

/// Save a tree as-is (no sorting or validation: this is the attacker's snapshot).
fn save(nodes: Vec<Node>, repo: &Repository) -> Id {
    let json = Tree { nodes }.to_json();
    let id = Id::hash(&json);
    repo.save_blob(BlobType::Tree, id, &json).unwrap();
    id
}

fn snapshot(nodes: Vec<Node>, repo: &Repository) -> Id {
    let tree = save(nodes, repo);
    repo.flush().unwrap();
    repo.save_snapshot(&Snapshot::new(tree, vec!["/".into()], "evil"))
        .unwrap()
}

fn overwrite() -> RestoreOptions {
    RestoreOptions {
        overwrite: true,
        threads: 2,
        ..Default::default()
    }
}

#[test]
fn names_with_slashes_or_dot_dot_are_rejected() {
    let t = tempfile::tempdir().unwrap();
    let repo = init_local(&t.path().join("repo"));
    let nodes = vec![
        file(b"../escaped", b"EVIL", &repo),
        file(b"a/../../escaped2", b"EVIL", &repo),
        dir(b"..", vec![file(b"escaped3", b"EVIL", &repo)], &repo),
        dir(b".", vec![file(b"dot", b"EVIL", &repo)], &repo),
        file(b"ok", b"fine", &repo),
    ];
    let snap = snapshot(nodes, &repo);
    let target = t.path().join("a/target");
    let r = restore(&repo, &snap, &target, overwrite()).unwrap();
    assert_eq!(r.errors.len(), 4, "{:?}", r.errors);
    assert_eq!(std::fs::read(target.join("ok")).unwrap(), b"fine");
    for p in [
        "escaped",
        "a/escaped",
        "a/escaped2",
        "escaped2",
        "escaped3",
        "a/escaped3",
        "a/target/dot",
    ] {
        assert!(
            !t.path().join(p).exists(),
            "{p} was written outside the target"
        );
    }
}

#[test]
fn planted_directory_symlink_in_target_is_replaced_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let repo = init_local(&t.path().join("repo"));
    let victim = t.path().join("etc");
    std::fs::create_dir(&victim).unwrap();
    let target = t.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&victim, target.join("data")).unwrap();
    let snap = snapshot(
        vec![dir(
            b"data",
            vec![file(b"passwd", b"root::0:0", &repo)],
            &repo,
        )],
        &repo,
    );
    let r = restore(&repo, &snap, &target, overwrite()).unwrap();
    assert!(!r.is_incomplete(), "{:?}", r.errors);
    assert!(
        !victim.join("passwd").exists(),
        "restore wrote through a planted symlink"
    );
    assert!(
        std::fs::symlink_metadata(target.join("data"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read(target.join("data/passwd")).unwrap(),
        b"root::0:0"
    );
}

#[test]
fn planted_file_symlink_and_hard_link_in_target_are_not_written_through() {
    let t = tempfile::tempdir().unwrap();
    let repo = init_local(&t.path().join("repo"));
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("via-symlink"), b"ORIGINAL").unwrap();
    std::fs::write(outside.join("via-hardlink"), b"ORIGINAL").unwrap();
    let target = t.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(outside.join("via-symlink"), target.join("a")).unwrap();
    std::fs::hard_link(outside.join("via-hardlink"), target.join("b")).unwrap();
    let snap = snapshot(
        vec![file(b"a", b"NEW", &repo), file(b"b", b"NEW", &repo)],
        &repo,
    );
    let r = restore(&repo, &snap, &target, overwrite()).unwrap();
    assert!(!r.is_incomplete(), "{:?}", r.errors);
    assert_eq!(
        std::fs::read(outside.join("via-symlink")).unwrap(),
        b"ORIGINAL"
    );
    assert_eq!(
        std::fs::read(outside.join("via-hardlink")).unwrap(),
        b"ORIGINAL"
    );
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"NEW");
    assert_eq!(std::fs::read(target.join("b")).unwrap(), b"NEW");
}

#[test]
fn snapshot_symlink_followed_by_same_named_directory_stays_inside() {
    // A crafted tree first restores `d -> /outside`, then a directory `d`
    // with a file: the file must land in target/d, not through the link.
    let t = tempfile::tempdir().unwrap();
    let repo = init_local(&t.path().join("repo"));
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let nodes = vec![
        symlink(b"d", outside.as_os_str().as_encoded_bytes()),
        dir(b"d", vec![file(b"owned", b"EVIL", &repo)], &repo),
    ];
    let snap = snapshot(nodes, &repo);
    let target = t.path().join("target");
    restore(&repo, &snap, &target, overwrite()).unwrap();
    assert!(
        !outside.join("owned").exists(),
        "restore followed a symlink it had just created"
    );
    assert_eq!(std::fs::read(target.join("d/owned")).unwrap(), b"EVIL");
}

#[test]
fn hard_links_in_a_snapshot_only_link_to_restored_files() {
    // Two nodes claim the same inode; the second becomes a hard link to the
    // first restored path, inside the target.
    let t = tempfile::tempdir().unwrap();
    let repo = init_local(&t.path().join("repo"));
    let mut a = file(b"a", b"shared", &repo);
    a.links = 2;
    a.inode = 77;
    a.device_id = 1;
    let mut b = a.clone();
    b.name = b"b".to_vec();
    let snap = snapshot(vec![a, dir(b"sub", vec![b], &repo)], &repo);
    let target = t.path().join("target");
    restore(&repo, &snap, &target, overwrite()).unwrap();
    use std::os::unix::fs::MetadataExt;
    let ia = std::fs::metadata(target.join("a")).unwrap().ino();
    let ib = std::fs::metadata(target.join("sub/b")).unwrap().ino();
    assert_eq!(ia, ib);
    assert_eq!(std::fs::read(target.join("sub/b")).unwrap(), b"shared");
}
