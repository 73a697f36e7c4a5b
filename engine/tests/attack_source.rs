//! A tenant controls the source volume: backing it up must never read
//! outside it, whatever symlinks it plants or swaps in while the walk runs.

mod data_common;
use data_common::*;

use std::sync::Arc;

use engine::tree::{NodeType, Tree};
use engine::{BlobType, Id, Repository};

const SECRET: &[u8] = b"TOP SECRET: the node's /etc/shadow stand-in\n";

fn outside(t: &std::path::Path) -> std::path::PathBuf {
    let o = t.join("outside");
    std::fs::create_dir_all(o.join("deep")).unwrap();
    std::fs::write(o.join("secret.txt"), SECRET).unwrap();
    std::fs::write(o.join("deep/secret2.txt"), SECRET).unwrap();
    o
}

fn secret_stored(repo: &Repository) -> bool {
    repo.has_blob(BlobType::Data, &Id::hash(SECRET))
}

fn root_nodes(repo: &Repository, snap: &Id) -> Vec<engine::tree::Node> {
    let s = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .find(|(i, _)| i == snap)
        .unwrap()
        .1;
    let root = Tree::from_json(&repo.load_blob(BlobType::Tree, &s.tree).unwrap()).unwrap();
    let data = root.nodes[0].subtree.unwrap();
    Tree::from_json(&repo.load_blob(BlobType::Tree, &data).unwrap())
        .unwrap()
        .nodes
}

#[test]
fn symlinks_out_of_the_volume_are_recorded_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let out = outside(t.path());
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::os::unix::fs::symlink("/", src.join("root")).unwrap();
    std::os::unix::fs::symlink("../outside", src.join("up")).unwrap();
    std::os::unix::fs::symlink(out.join("secret.txt"), src.join("abs")).unwrap();
    std::fs::write(src.join("own.txt"), b"mine").unwrap();
    let repo = init_local(&t.path().join("repo"));
    let s = do_backup(&repo, &src, opts("h", "/data"));
    assert!(!s.is_incomplete(), "{:?}", s.errors);
    assert!(
        !secret_stored(&repo),
        "content from outside the volume was backed up"
    );
    assert_eq!(s.stats.bytes_read, 4, "only own.txt may be read");
    let nodes = root_nodes(&repo, &s.snapshot_id);
    let link = |n: &str| nodes.iter().find(|x| x.name == n.as_bytes()).unwrap();
    assert_eq!(link("root").node_type, NodeType::Symlink);
    assert_eq!(link("root").link_target, b"/");
    assert_eq!(link("up").node_type, NodeType::Symlink);
    assert_eq!(link("up").link_target, b"../outside");
    assert_eq!(link("abs").node_type, NodeType::Symlink);
    assert!(link("abs").subtree.is_none() && link("up").subtree.is_none());
}

#[test]
fn directory_swapped_for_symlink_during_the_walk_is_not_followed() {
    let t = tempfile::tempdir().unwrap();
    outside(t.path());
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/secret.txt"), b"innocent").unwrap();
    let repo = init_local(&t.path().join("repo"));
    let mut o = opts("h", "/data");
    // Right after the walker saw `sub` as a directory and right before it
    // opens it, the tenant replaces it with a symlink to outside the volume.
    let s2 = src.clone();
    o.walk_hook = Some(Arc::new(move |rel: &[u8]| {
        if rel == b"sub" {
            std::fs::rename(s2.join("sub"), s2.join("sub.old")).unwrap();
            std::os::unix::fs::symlink("../outside", s2.join("sub")).unwrap();
        }
    }));
    let s = engine::backup::backup(&repo, &src, o).unwrap();
    assert!(
        !secret_stored(&repo),
        "walker followed a swapped-in symlink out of the volume"
    );
    assert!(s.is_incomplete());
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert_eq!(s.errors[0].path, "sub");
}

#[test]
fn file_swapped_for_symlink_before_open_is_not_read() {
    let t = tempfile::tempdir().unwrap();
    let out = outside(t.path());
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f.txt"), b"innocent").unwrap();
    let repo = init_local(&t.path().join("repo"));
    let mut o = opts("h", "/data");
    let s2 = src.clone();
    o.walk_hook = Some(Arc::new(move |rel: &[u8]| {
        if rel == b"f.txt" {
            std::fs::remove_file(s2.join("f.txt")).unwrap();
            std::os::unix::fs::symlink(out.join("secret.txt"), s2.join("f.txt")).unwrap();
        }
    }));
    let s = engine::backup::backup(&repo, &src, o).unwrap();
    assert!(
        !secret_stored(&repo),
        "opened a symlink swapped in for a file"
    );
    assert_eq!(s.errors.len(), 1);
    assert_eq!(s.stats.bytes_read, 0);
}

#[test]
fn parent_directory_swapped_while_files_are_queued_stays_inside() {
    // The walker holds the directory fd: replacing the directory's *path*
    // after it was opened cannot redirect the files read through that fd.
    let t = tempfile::tempdir().unwrap();
    outside(t.path());
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/secret.txt"), b"innocent").unwrap();
    let repo = init_local(&t.path().join("repo"));
    let mut o = opts("h", "/data");
    let s2 = src.clone();
    o.walk_hook = Some(Arc::new(move |rel: &[u8]| {
        if rel == b"d/secret.txt" {
            std::fs::rename(s2.join("d"), s2.join("d.old")).unwrap();
            std::os::unix::fs::symlink("../outside", s2.join("d")).unwrap();
        }
    }));
    let s = engine::backup::backup(&repo, &src, o).unwrap();
    assert!(!secret_stored(&repo));
    assert!(repo.has_blob(BlobType::Data, &Id::hash(b"innocent")));
    assert!(!s.is_incomplete(), "{:?}", s.errors);
}

#[test]
fn other_filesystems_mounted_inside_the_volume_are_not_read() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("own.txt"), b"mine").unwrap();
    let m = TmpMount::new(&src.join("mnt"), "1m");
    std::fs::write(m.0.join("secret.txt"), SECRET).unwrap();
    let repo = init_local(&t.path().join("repo"));
    let s = do_backup(&repo, &src, opts("h", "/data"));
    assert!(
        !secret_stored(&repo),
        "backup crossed into another filesystem"
    );
    assert!(!s.is_incomplete(), "{:?}", s.errors);
    assert_eq!(s.stats.bytes_read, 4);
}
