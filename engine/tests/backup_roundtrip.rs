//! Backup → restore round trip with hoard alone, and the change detection
//! of a second backup (also after the source directory moved).

mod data_common;
use data_common::*;

use std::os::unix::fs::MetadataExt;

#[test]
fn backup_then_restore_is_identical() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_dataset(&src);
    let repo = init_local(&t.path().join("repo"));
    let s = do_backup(&repo, &src, opts("host-2", "/data"));
    assert!(!s.is_incomplete(), "{:?}", s.errors);
    assert_eq!(s.stats.files_new, 8);
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].1.hostname, "host-2");
    assert_eq!(snaps[0].1.paths, vec!["/data".to_string()]);

    let out = t.path().join("out");
    let r = do_restore(&repo, &s.snapshot_id, &out);
    assert!(!r.is_incomplete(), "{:?}", r.errors);
    assert_same_tree(&src, &out.join("data"));
    // the hole stayed a hole
    let md = std::fs::metadata(out.join("data/sparse.img")).unwrap();
    assert!(
        md.blocks() * 512 < 1024 * 1024,
        "sparse file was filled: {} blocks",
        md.blocks()
    );

    // a non-empty target is refused unless overwriting
    let again = engine::restore::restore(&repo, &s.snapshot_id, &out, Default::default());
    assert!(matches!(
        again,
        Err(engine::restore::RestoreError::TargetNotEmpty(_))
    ));
}

#[test]
fn second_backup_reads_only_changed_files_even_after_the_source_moved() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_dataset(&src);
    let repo = init_local(&t.path().join("repo"));
    let first = do_backup(&repo, &src, opts("h", "/data"));

    // Nothing changed, but the volume is mounted somewhere else now.
    let moved = t.path().join("elsewhere");
    std::fs::rename(&src, &moved).unwrap();
    let second = do_backup(&repo, &moved, opts("h", "/data"));
    assert_eq!(second.parent, Some(first.snapshot_id));
    assert_eq!(second.stats.files_unmodified, 8);
    assert_eq!(second.stats.files_new + second.stats.files_changed, 0);
    assert_eq!(
        second.stats.bytes_read, 0,
        "unchanged files must not be read"
    );
    assert_eq!(second.stats.bytes_added, 0);
    // Only the root directory's ctime moved (the rename): the tree above
    // it is the one new blob.
    assert_eq!(second.stats.blobs_added, 1);

    // One inode changes (small.txt and its hard link dir/hardlink.txt):
    // only those two names are read.
    std::fs::write(moved.join("small.txt"), b"changed!").unwrap();
    let third = do_backup(&repo, &moved, opts("h", "/data"));
    assert_eq!(third.stats.files_changed, 2);
    assert_eq!(third.stats.files_unmodified, 6);
    assert_eq!(third.stats.bytes_read, 16);

    let out = t.path().join("out");
    do_restore(&repo, &third.snapshot_id, &out);
    assert_eq!(
        std::fs::read(out.join("data/small.txt")).unwrap(),
        b"changed!"
    );
    // a different host does not pick this parent
    let other = do_backup(&repo, &moved, opts("other-host", "/data"));
    assert_eq!(other.parent, None);
    assert_eq!(other.stats.files_unmodified, 0);
}

#[test]
fn include_restores_only_the_chosen_path() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_dataset(&src);
    let repo = init_local(&t.path().join("repo"));
    let s = do_backup(&repo, &src, opts("h", "/data"));
    let out = t.path().join("out");
    let o = engine::restore::RestoreOptions {
        include: vec!["/data/dir/sub".into()],
        ..Default::default()
    };
    engine::restore::restore(&repo, &s.snapshot_id, &out, o).unwrap();
    assert!(out.join("data/dir/sub/copy.bin").exists());
    assert!(!out.join("data/small.txt").exists());
    assert!(!out.join("data/dir/big.bin").exists());
}

#[test]
fn cancelled_backup_writes_no_snapshot_and_repo_stays_usable() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_dataset(&src);
    let repo = init_local(&t.path().join("repo"));
    let o = opts("h", "/data");
    o.cancel.cancel();
    let r = engine::backup::backup(&repo, &src, o);
    assert!(
        matches!(r, Err(engine::backup::BackupError::Cancelled)),
        "{r:?}"
    );
    assert!(repo.snapshots().unwrap().is_empty());
    let s = do_backup(&repo, &src, opts("h", "/data"));
    assert!(!s.is_incomplete());
}

#[test]
fn unreadable_files_are_reported_and_the_snapshot_is_incomplete() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_dataset(&src);
    let repo = init_local(&t.path().join("repo"));
    // A file that vanishes between listing and opening is one way to be unreadable.
    let mut o = opts("h", "/data");
    let victim = src.join("exec.sh");
    o.walk_hook = Some(std::sync::Arc::new(move |rel: &[u8]| {
        if rel == b"exec.sh" {
            let _ = std::fs::remove_file(&victim);
        }
    }));
    let s = engine::backup::backup(&repo, &src, o).unwrap();
    assert!(s.is_incomplete());
    assert_eq!(s.errors.len(), 1);
    assert_eq!(s.errors[0].path, "exec.sh");
    assert_eq!(s.stats.errors, 1);
    assert_eq!(repo.snapshots().unwrap().len(), 1);
}
