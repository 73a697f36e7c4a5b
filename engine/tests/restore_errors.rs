//! Restore failures are reported with the path, never silently dropped.

mod data_common;
use data_common::*;

use engine::restore::{RestoreError, RestoreOptions, restore};

#[test]
fn disk_full_is_reported_with_the_path() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), random_bytes(3, 3 * 1024 * 1024)).unwrap();
    std::fs::write(src.join("small.txt"), b"fits").unwrap();
    let repo = init_local(&t.path().join("repo"));
    let s = do_backup(&repo, &src, opts("h", "/data"));
    let m = TmpMount::new(&t.path().join("full"), "1m");
    let r = restore(
        &repo,
        &s.snapshot_id,
        &m.0,
        RestoreOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.is_incomplete());
    let e = r
        .errors
        .iter()
        .find(|e| e.path == "/data/big.bin")
        .expect("big.bin not reported");
    assert!(e.reason.contains("No space left"), "{}", e.reason);
    // Every other file is either complete or reported too: nothing is
    // silently short.
    let small_ok = std::fs::read(m.0.join("data/small.txt"))
        .map(|d| d == b"fits")
        .unwrap_or(false);
    assert!(
        small_ok || r.errors.iter().any(|e| e.path == "/data/small.txt"),
        "{:?}",
        r.errors
    );
}

#[test]
fn cancelled_restore_says_so() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_dataset(&src);
    let repo = init_local(&t.path().join("repo"));
    let s = do_backup(&repo, &src, opts("h", "/data"));
    let o = RestoreOptions::default();
    o.cancel.cancel();
    let r = restore(&repo, &s.snapshot_id, &t.path().join("out"), o);
    assert!(matches!(r, Err(RestoreError::Cancelled)), "{r:?}");
}
