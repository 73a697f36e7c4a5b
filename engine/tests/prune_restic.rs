//! Prune against the real restic (Debian's 0.14): after forgetting half the
//! snapshots, hoard's prune frees the dropped snapshots' data, `restic check
//! --read-data` passes and every kept snapshot restores byte for byte; hoard
//! prunes restic's repositories and restic prunes hoard's; a prune is
//! refused while a backup holds its lock and loses nothing when both run;
//! and a prune stopped after any number of repository writes (a crash at
//! every point) leaves a repository restic accepts and a second prune
//! completes.

mod data_common;
use data_common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use engine::backend::FileType;
use engine::prune::{PruneOptions, PruneStats, prune};
use engine::{Backend, BlobType, Error, Id, LocalBackend, Repository};

fn restic(repo: &Path) -> Command {
    let bin = std::env::var("RESTIC").unwrap_or_else(|_| "/usr/bin/restic".into());
    assert!(
        Path::new(&bin).exists(),
        "these tests need the real restic binary at {bin} (install it with scripts/install-deps)"
    );
    let mut c = Command::new(bin);
    c.arg("-r")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", PASSWORD)
        .env_remove("RESTIC_REPOSITORY");
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

fn restic_check(repo: &Path, read_data: bool) {
    let mut c = restic(repo);
    c.arg("check");
    if read_data {
        c.arg("--read-data");
    }
    let out = run(c);
    assert!(out.contains("no errors were found"), "{out}");
}

/// Source directory `k`: a file shared by all, one unique to `k`, and a few
/// small files in a subdirectory (so trees differ per snapshot too).
fn make_source(root: &Path, k: u64) -> PathBuf {
    make_source_sized(root, k, 1 << 20)
}

/// [`make_source`] with a shared file of 3 × `unit` bytes and a unique one
/// of about 2 × `unit`.
fn make_source_sized(root: &Path, k: u64, unit: usize) -> PathBuf {
    let dir = root.join(format!("src{k}"));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("shared.bin"), random_bytes(1000, 3 * unit)).unwrap();
    std::fs::write(
        dir.join(format!("unique{k}.bin")),
        random_bytes(k + 1, 2 * unit + k as usize * 4099),
    )
    .unwrap();
    for i in 0..5 {
        std::fs::write(
            dir.join("sub").join(format!("note{i}.txt")),
            format!("snapshot {k} note {i}\n").repeat(50),
        )
        .unwrap();
    }
    dir
}

fn pack_files(repo: &Path) -> (usize, u64) {
    let be = LocalBackend::new(repo);
    let l = be.list(FileType::Pack).unwrap();
    (l.len(), l.iter().map(|(_, s)| s).sum())
}

fn content_ids(repo: &Repository, snap: &Id, name: &str) -> Vec<Id> {
    let (_, s) = repo
        .find_snapshot(&snap.to_hex(), &Default::default())
        .unwrap();
    let tree =
        engine::tree::Tree::from_json(&repo.load_blob(BlobType::Tree, &s.tree).unwrap()).unwrap();
    // The snapshot's root tree holds "data", which holds the files.
    let data = tree.nodes[0].subtree.unwrap();
    let t = engine::tree::Tree::from_json(&repo.load_blob(BlobType::Tree, &data).unwrap()).unwrap();
    t.nodes
        .iter()
        .find(|n| n.name == name.as_bytes())
        .and_then(|n| n.content.clone())
        .unwrap()
}

fn forget(repo_dir: &Path, ids: &[Id]) {
    let be = LocalBackend::new(repo_dir);
    for id in ids {
        be.remove(FileType::Snapshot, &id.to_hex()).unwrap();
    }
}

/// Six snapshots of six sources; returns (source, snapshot id) pairs.
fn six_backups(t: &Path, repo: &Repository) -> Vec<(PathBuf, Id)> {
    six_backups_sized(t, repo, 1 << 20)
}

fn six_backups_sized(t: &Path, repo: &Repository, unit: usize) -> Vec<(PathBuf, Id)> {
    (0..6u64)
        .map(|k| {
            let src = make_source_sized(t, k, unit);
            let s = do_backup(repo, &src, opts("h", "/data"));
            assert!(!s.is_incomplete(), "{:?}", s.errors);
            (src, s.snapshot_id)
        })
        .collect()
}

#[test]
fn prune_after_forgetting_half_frees_their_data_and_restic_checks_it() {
    let t = tempfile::tempdir().unwrap();
    let repo_dir = t.path().join("repo");
    let repo = init_local(&repo_dir);
    let snaps = six_backups(t.path(), &repo);
    let dropped: Vec<Id> = snaps.iter().step_by(2).map(|s| s.1).collect();
    let unique0 = content_ids(&repo, &dropped[0], "unique0.bin");
    let shared = content_ids(&repo, &dropped[0], "shared.bin");
    forget(&repo_dir, &dropped);
    let (packs_before, bytes_before) = pack_files(&repo_dir);

    let dry = prune(
        &repo,
        &PruneOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        pack_files(&repo_dir),
        (packs_before, bytes_before),
        "a dry run changes nothing"
    );
    let st = prune(&repo, &PruneOptions::default()).unwrap();
    let (packs_after, bytes_after) = pack_files(&repo_dir);

    // The plan a dry run shows is the one that was carried out.
    let planned = |s: &PruneStats| {
        (
            s.snapshots,
            s.blobs_used,
            s.bytes_used,
            s.blobs_unused,
            s.packs_repacked,
            s.packs_deleted,
            s.blobs_removed,
            s.bytes_repacked,
        )
    };
    assert_eq!(planned(&dry), planned(&st));
    assert!(dry.dry_run && !st.dry_run);

    // Numbers match what happened on disk.
    assert_eq!(st.snapshots, 3);
    assert_eq!(st.packs_total as usize, packs_before);
    assert_eq!(st.bytes_total, bytes_before);
    assert_eq!(
        packs_after as u64,
        st.packs_total - st.packs_deleted + st.packs_written
    );
    assert_eq!(st.bytes_freed, bytes_before - bytes_after);
    // Three unique files of 2+ MiB were dropped.
    assert!(st.bytes_freed > 6 << 20, "{st:?}");
    assert!(st.packs_deleted > 0 && st.packs_repacked > 0, "{st:?}");
    assert!(st.index_files_written > 0 && st.index_files_removed > 0);
    assert!(
        st.bytes_unused_after as f64 <= st.bytes_used as f64 * 5.0 / 95.0,
        "{st:?}"
    );

    // The dropped snapshot's unique data is gone, the shared data stays.
    let reopened = open_local(&repo_dir);
    for id in &unique0 {
        assert!(!reopened.has_blob(BlobType::Data, id), "unique blob kept");
    }
    for id in &shared {
        assert!(reopened.has_blob(BlobType::Data, id), "shared blob lost");
    }
    // The pruned Repository reloaded its index: it agrees with a fresh open.
    for id in unique0.iter().chain(&shared) {
        assert_eq!(
            repo.has_blob(BlobType::Data, id),
            reopened.has_blob(BlobType::Data, id)
        );
    }

    restic_check(&repo_dir, true);
    for (k, (src, id)) in snaps.iter().enumerate().filter(|(k, _)| k % 2 == 1) {
        let out = t.path().join(format!("out{k}"));
        let r = do_restore(&reopened, id, &out);
        assert!(!r.is_incomplete(), "{:?}", r.errors);
        assert_same_tree(src, &out.join("data"));
    }

    // Nothing left to do.
    let again = prune(&reopened, &PruneOptions::default()).unwrap();
    assert_eq!(
        (again.packs_deleted, again.bytes_freed),
        (0, 0),
        "{again:?}"
    );
    assert_eq!(pack_files(&repo_dir), (packs_after, bytes_after));
}

#[test]
fn max_unused_100_percent_only_deletes_fully_unused_packs() {
    let t = tempfile::tempdir().unwrap();
    let repo_dir = t.path().join("repo");
    let repo = init_local(&repo_dir);
    let snaps = six_backups(t.path(), &repo);
    forget(&repo_dir, &[snaps[0].1]);
    let st = prune(
        &repo,
        &PruneOptions {
            max_unused_percent: 100.0,
            ..Default::default()
        },
    )
    .unwrap();
    // Backup 0's data pack also holds the shared file: partly used, kept.
    // Its tree pack is fully unused and deleted.
    assert_eq!(st.packs_repacked, 0, "{st:?}");
    assert!(st.packs_unused >= 1, "{st:?}");
    assert!(st.bytes_unused_after >= 2 << 20, "{st:?}");
    restic_check(&repo_dir, false);
}

#[test]
fn hoard_prunes_a_restic_repository_and_restic_prunes_a_hoard_repository() {
    let t = tempfile::tempdir().unwrap();
    let srcs: Vec<PathBuf> = (0..4).map(|k| make_source(t.path(), k)).collect();

    // restic writes, hoard prunes.
    let rdir = t.path().join("restic-repo");
    let mut c = restic(&rdir);
    c.args(["init", "--repository-version", "2"]);
    run(c);
    for src in &srcs {
        let mut c = restic(&rdir);
        c.args(["backup", "--host", "h"]).arg(src);
        run(c);
    }
    let mut c = restic(&rdir);
    c.args(["forget", "--group-by", "host", "--keep-last", "2"]);
    run(c);
    let (_, before) = pack_files(&rdir);
    let repo = open_local(&rdir);
    let st = prune(&repo, &PruneOptions::default()).unwrap();
    assert!(st.bytes_freed > 4 << 20, "{st:?}");
    assert_eq!(before - pack_files(&rdir).1, st.bytes_freed);
    restic_check(&rdir, true);
    for (k, src) in srcs.iter().enumerate().skip(2) {
        let out = t.path().join(format!("rout{k}"));
        let mut c = restic(&rdir);
        c.args(["restore", "latest", "--path"])
            .arg(src)
            .arg("--target")
            .arg(&out);
        run(c);
        assert_same_tree(src, &out.join(src.strip_prefix("/").unwrap()));
    }

    // hoard writes, restic prunes, hoard reads.
    let hdir = t.path().join("hoard-repo");
    let repo = init_local(&hdir);
    let ids: Vec<Id> = srcs
        .iter()
        .map(|s| do_backup(&repo, s, opts("h", "/data")).snapshot_id)
        .collect();
    drop(repo);
    forget(&hdir, &ids[..2]);
    let (_, before) = pack_files(&hdir);
    let mut c = restic(&hdir);
    c.arg("prune");
    run(c);
    assert!(pack_files(&hdir).1 + (4 << 20) < before);
    restic_check(&hdir, true);
    let repo = open_local(&hdir);
    for k in 2..4 {
        let out = t.path().join(format!("hout{k}"));
        let r = do_restore(&repo, &ids[k], &out);
        assert!(!r.is_incomplete(), "{:?}", r.errors);
        assert_same_tree(&srcs[k], &out.join("data"));
    }
    // and hoard prunes what restic pruned: nothing more to free but sound.
    prune(&repo, &PruneOptions::default()).unwrap();
    restic_check(&hdir, false);
}

#[test]
fn prune_is_refused_while_a_backup_holds_a_lock_and_nothing_is_lost() {
    let t = tempfile::tempdir().unwrap();
    let repo_dir = t.path().join("repo");
    let repo = init_local(&repo_dir);
    let snaps = six_backups(t.path(), &repo);
    forget(&repo_dir, &[snaps[0].1, snaps[2].1]);
    let before = pack_files(&repo_dir);

    // Another client (a backup on another node) holds a shared lock.
    let other = open_local(&repo_dir);
    let held = other.lock(false).unwrap();
    let e = prune(&repo, &PruneOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    assert!(e.to_string().contains("wait for it to finish"), "{e}");
    assert_eq!(
        pack_files(&repo_dir),
        before,
        "a refused prune changed data"
    );
    drop(held);

    // For real: a backup runs while prune is attempted. Whichever gets the
    // lock first, no blob of any snapshot is lost.
    let big = t.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..6 {
        std::fs::write(big.join(format!("f{i}")), random_bytes(50 + i, 8 << 20)).unwrap();
    }
    let backup_repo = open_local(&repo_dir);
    let bt = {
        let big = big.clone();
        std::thread::spawn(move || do_backup(&backup_repo, &big, opts("h", "/big")).snapshot_id)
    };
    let locks = || {
        LocalBackend::new(&repo_dir)
            .list(FileType::Lock)
            .unwrap()
            .len()
    };
    while locks() == 0 && !bt.is_finished() {
        std::thread::yield_now();
    }
    match prune(&repo, &PruneOptions::default()) {
        Err(Error::Locked { .. }) => {}
        Ok(_) => assert!(
            bt.is_finished() || locks() == 0,
            "prune ran while the backup held its lock"
        ),
        Err(e) => panic!("prune failed: {e}"),
    }
    let big_id = bt.join().unwrap();
    prune(&repo, &PruneOptions::default()).unwrap();
    restic_check(&repo_dir, true);
    let reopened = open_local(&repo_dir);
    let out = t.path().join("out-big");
    do_restore(&reopened, &big_id, &out);
    assert_same_tree(&big, &out.join("big"));
    for k in [1, 3, 4, 5] {
        let out = t.path().join(format!("out{k}"));
        do_restore(&reopened, &snaps[k].1, &out);
        assert_same_tree(&snaps[k].0, &out.join("data"));
    }
}

/// A local backend that "crashes" after `budget` writes and removes: from
/// then on every write and remove fails, as if the process had died (its
/// lock file stays behind too).
#[derive(Debug)]
struct CrashAfter {
    inner: LocalBackend,
    budget: AtomicI64,
}

impl CrashAfter {
    fn spend(&self, what: &str) -> engine::Result<()> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(Error::Backend {
                file: what.into(),
                message: "simulated crash".into(),
            });
        }
        Ok(())
    }
}

impl Backend for CrashAfter {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> engine::Result<()> {
        self.inner.create()
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> engine::Result<()> {
        self.spend(name)?;
        self.inner.write(t, name, data)
    }
    fn read_full(&self, t: FileType, name: &str) -> engine::Result<Vec<u8>> {
        self.inner.read_full(t, name)
    }
    fn read_range(&self, t: FileType, name: &str, off: u64, len: u64) -> engine::Result<Vec<u8>> {
        self.inner.read_range(t, name, off, len)
    }
    fn list(&self, t: FileType) -> engine::Result<Vec<(String, u64)>> {
        self.inner.list(t)
    }
    fn remove(&self, t: FileType, name: &str) -> engine::Result<()> {
        self.spend(name)?;
        self.inner.remove(t, name)
    }
    fn exists(&self, t: FileType, name: &str) -> engine::Result<bool> {
        self.inner.exists(t, name)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn prune_stopped_after_any_number_of_writes_leaves_a_repository_restic_accepts() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    let repo = init_local(&base);
    // Small files: this test runs restic twice per crash point.
    let snaps = six_backups_sized(t.path(), &repo, 128 << 10);
    forget(&base, &[snaps[0].1, snaps[2].1, snaps[4].1]);
    // An unindexed pack, as an interrupted backup leaves one: back up, then
    // drop the index file and snapshot that backup wrote.
    let be = LocalBackend::new(&base);
    let names =
        |t: FileType| -> Vec<String> { be.list(t).unwrap().into_iter().map(|(n, _)| n).collect() };
    let (index_before, snaps_before) = (names(FileType::Index), names(FileType::Snapshot));
    let stray = t.path().join("stray");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("x"), random_bytes(77, 300_000)).unwrap();
    do_backup(&repo, &stray, opts("h", "/stray"));
    for (t, before) in [
        (FileType::Index, index_before),
        (FileType::Snapshot, snaps_before),
    ] {
        for n in names(t).into_iter().filter(|n| !before.contains(n)) {
            be.remove(t, &n).unwrap();
        }
    }
    drop(repo);

    // How many writes and removes a full prune makes.
    let full = t.path().join("full");
    copy_dir(&base, &full);
    let counter = Arc::new(CrashAfter {
        inner: LocalBackend::new(&full),
        budget: AtomicI64::new(i64::MAX),
    });
    let r = Repository::open(counter.clone(), PASSWORD).unwrap();
    let st = prune(&r, &PruneOptions::default()).unwrap();
    assert!(st.packs_repacked > 0 && st.packs_unindexed > 0, "{st:?}");
    drop(r);
    let ops = i64::MAX - counter.budget.load(Ordering::SeqCst);
    assert!(
        ops > 6,
        "a prune that does this much writes more than {ops} times"
    );

    for n in 0..ops {
        let dir = t.path().join(format!("crash{n}"));
        copy_dir(&base, &dir);
        let be = Arc::new(CrashAfter {
            inner: LocalBackend::new(&dir),
            budget: AtomicI64::new(n),
        });
        let r = Repository::open(be, PASSWORD).unwrap();
        // The last write is the lock's removal, whose failure prune ignores.
        let res = prune(&r, &PruneOptions::default());
        assert!(res.is_err() || n == ops - 1, "no crash at {n}");
        drop(r);
        // The dead process's lock: a real one is stale (its PID is gone);
        // this test process is alive, so remove it by hand.
        let local = LocalBackend::new(&dir);
        for (name, _) in local.list(FileType::Lock).unwrap() {
            local.remove(FileType::Lock, &name).unwrap();
        }
        restic_check(&dir, false);
        let r = open_local(&dir);
        prune(&r, &PruneOptions::default()).unwrap();
        restic_check(&dir, true);
        for k in [1, 5] {
            let out = t.path().join(format!("out{n}-{k}"));
            do_restore(&r, &snaps[k].1, &out);
            assert_same_tree(&snaps[k].0, &out.join("data"));
            std::fs::remove_dir_all(&out).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
