//! `engine::check` on real repositories on disk: a clean repository (made by
//! hoard or by restic) passes; each kind of damage is reported against the
//! file it concerns; `--read-data-subset 1/2` + `2/2` read every pack once;
//! and the real restic (0.14, /usr/bin/restic) agrees on pass/fail.

mod data_common;
use data_common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use engine::backend::FileType;
use engine::check::{CheckOptions, CheckReport, ProblemKind, Subset, check};
use engine::index::{IndexPack, parse_index};
use engine::pack::PackWriter;
use engine::progress::Progress;
use engine::tree::Tree;
use engine::{BlobType, Id, Repository};

fn restic(repo: &Path, args: &[&str]) -> (bool, String) {
    let bin = std::env::var("RESTIC").unwrap_or_else(|_| "/usr/bin/restic".into());
    assert!(
        Path::new(&bin).exists(),
        "these tests need the real restic at {bin} (scripts/install-deps installs it)"
    );
    let out = Command::new(bin)
        .arg("-r")
        .arg(repo)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run_check(repo: &Repository, read_data: bool, subset: Option<Subset>) -> CheckReport {
    check(
        repo,
        &CheckOptions {
            read_data,
            read_data_subset: subset,
        },
        &Progress::new(),
    )
    .unwrap()
}

fn pack_path(dir: &Path, id: &Id) -> PathBuf {
    let h = id.to_hex();
    dir.join("data").join(&h[..2]).join(h)
}

fn pack_rel(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{h}", &h[..2])
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// Snapshot id and root tree, one per backup, oldest first.
    snaps: Vec<(Id, Id)>,
}

/// `backups` snapshots of different small directories: each backup adds
/// (at least) one data pack, one tree pack and one index file.
fn fixture(backups: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let repo = init_local(&dir);
    let mut snaps = Vec::new();
    for i in 0..backups {
        let src = tmp.path().join(format!("src{i}"));
        std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
        std::fs::write(src.join("a.bin"), random_bytes(10 * i + 1, 300_000)).unwrap();
        std::fs::write(src.join("sub/b.bin"), random_bytes(10 * i + 2, 200_000)).unwrap();
        std::fs::write(src.join("sub/deeper/c.txt"), format!("backup {i}\n")).unwrap();
        let s = do_backup(&repo, &src, opts("host", "/data"));
        assert!(!s.is_incomplete(), "{:?}", s.errors);
        let (_, snap) = repo
            .find_snapshot(&s.snapshot_id.to_hex(), &Default::default())
            .unwrap();
        snaps.push((s.snapshot_id, snap.tree));
    }
    Fixture {
        _tmp: tmp,
        dir,
        snaps,
    }
}

/// The tree of the backed-up directory (restic nests it under `/data`).
fn data_tree(repo: &Repository, root: &Id) -> Id {
    child(repo, root, "data").subtree.unwrap()
}

fn child(repo: &Repository, tree: &Id, name: &str) -> engine::tree::Node {
    let t = Tree::from_json(&repo.load_blob(BlobType::Tree, tree).unwrap()).unwrap();
    t.nodes
        .into_iter()
        .find(|n| n.name == name.as_bytes())
        .unwrap_or_else(|| panic!("no {name} in tree {tree}"))
}

/// The pack holding `a.bin`'s (only) data blob in the first snapshot.
fn a_bin(repo: &Repository, f: &Fixture) -> (Id, engine::BlobLocation) {
    let node = child(repo, &data_tree(repo, &f.snaps[0].1), "a.bin");
    let blob = node.content.unwrap()[0];
    (blob, repo.lookup(BlobType::Data, &blob).unwrap())
}

fn kinds(r: &CheckReport) -> Vec<(ProblemKind, String)> {
    r.problems
        .iter()
        .map(|p| (p.kind, p.file.clone()))
        .collect()
}

#[test]
fn clean_hoard_repository_passes_and_restic_agrees() {
    let f = fixture(3);
    let repo = open_local(&f.dir);
    let r = run_check(&repo, true, None);
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert!(r.is_ok());
    let packs = std::fs::read_dir(f.dir.join("data"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count() as u64)
        .sum::<u64>();
    assert_eq!(r.stats.packs, packs);
    assert_eq!(r.stats.indexed_packs, packs);
    assert_eq!(r.stats.packs_read, packs);
    assert_eq!(r.stats.snapshots, 3);
    assert_eq!(
        r.stats.trees, 12,
        "/, /data, /data/sub, /data/sub/deeper per snapshot"
    );
    assert!(r.stats.blobs_verified >= 15, "{:?}", r.stats);
    assert!(
        std::fs::read_dir(f.dir.join("locks")).unwrap().count() == 0,
        "check released its lock"
    );
    let (ok, out) = restic(&f.dir, &["check", "--read-data"]);
    assert!(ok, "{out}");
}

#[test]
fn clean_restic_repository_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("x.bin"), random_bytes(7, 2_500_000)).unwrap();
    std::fs::write(src.join("d/y.txt"), b"restic wrote this\n").unwrap();
    let (ok, out) = restic(&dir, &["init"]);
    assert!(ok, "{out}");
    let (ok, out) = restic(&dir, &["backup", src.to_str().unwrap()]);
    assert!(ok, "{out}");
    let repo = open_local(&dir);
    let r = run_check(&repo, true, None);
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(r.stats.snapshots, 1);
    assert!(
        r.stats.packs_read >= 2 && r.stats.blobs_verified >= 3,
        "{:?}",
        r.stats
    );
}

#[test]
fn flipped_pack_byte_is_found_only_by_read_data() {
    let f = fixture(2);
    let repo = open_local(&f.dir);
    let (blob, loc) = a_bin(&repo, &f);
    let path = pack_path(&f.dir, &loc.pack);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[loc.offset as usize + 40] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let r = run_check(&repo, false, None);
    assert!(
        r.problems.is_empty(),
        "structure is intact: {:#?}",
        r.problems
    );

    let r = run_check(&repo, true, None);
    assert!(!r.is_ok());
    let file = pack_rel(&loc.pack);
    assert_eq!(
        kinds(&r),
        vec![
            (ProblemKind::PackHashMismatch, file.clone()),
            (ProblemKind::BlobCorrupted, file.clone()),
        ],
        "{:#?}",
        r.problems
    );
    assert_eq!(r.problems[1].blob, Some(blob));

    let (ok, out) = restic(&f.dir, &["check"]);
    assert!(ok, "restic without --read-data misses it too: {out}");
    let (ok, out) = restic(&f.dir, &["check", "--read-data"]);
    assert!(!ok && out.contains(&loc.pack.short()), "{out}");
}

#[test]
fn deleted_pack_is_named() {
    let f = fixture(2);
    let repo = open_local(&f.dir);
    let (_, loc) = a_bin(&repo, &f);
    std::fs::remove_file(pack_path(&f.dir, &loc.pack)).unwrap();
    let r = run_check(&repo, false, None);
    assert_eq!(
        kinds(&r),
        vec![(ProblemKind::PackMissing, pack_rel(&loc.pack))],
        "{:#?}",
        r.problems
    );
    assert!(
        r.problems[0].message.contains("index/"),
        "{}",
        r.problems[0]
    );
    let (ok, out) = restic(&f.dir, &["check"]);
    assert!(!ok && out.contains(&loc.pack.short()), "{out}");
}

#[test]
fn deleted_index_file_leaves_unindexed_packs_and_missing_trees() {
    let f = fixture(2);
    // The first backup's index file is the older one; find it by content.
    let repo = open_local(&f.dir);
    let first_tree_pack = repo.lookup(BlobType::Tree, &f.snaps[0].1).unwrap().pack;
    let mut victim = None;
    for (name, _) in repo.backend().list(FileType::Index).unwrap() {
        let id: Id = name.parse().unwrap();
        let json = repo.load_unpacked(FileType::Index, &id).unwrap();
        if parse_index(&json, "i")
            .unwrap()
            .packs
            .iter()
            .any(|p| p.id == first_tree_pack)
        {
            victim = Some(name);
        }
    }
    let victim = victim.expect("an index lists the first tree pack");
    std::fs::remove_file(f.dir.join("index").join(&victim)).unwrap();
    drop(repo);

    let repo = open_local(&f.dir);
    let r = run_check(&repo, false, None);
    assert!(!r.is_ok());
    let snap_file = format!("snapshots/{}", f.snaps[0].0.to_hex());
    let missing = r
        .errors()
        .find(|p| p.kind == ProblemKind::TreeMissing)
        .expect("the first snapshot's root tree is missing");
    assert_eq!(missing.file, snap_file);
    assert_eq!(missing.blob, Some(f.snaps[0].1));
    assert_eq!(missing.path.as_deref(), Some("/"));
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::PackNotInIndex
                && p.file == pack_rel(&first_tree_pack)
                && !p.is_error()),
        "{:#?}",
        r.problems
    );
    assert!(
        r.errors()
            .all(|p| p.file == snap_file && p.kind == ProblemKind::TreeMissing),
        "only the first snapshot is damaged: {:#?}",
        r.problems
    );
    let (ok, out) = restic(&f.dir, &["check"]);
    assert!(!ok, "{out}");
}

#[test]
fn truncated_pack_is_named() {
    let f = fixture(1);
    let repo = open_local(&f.dir);
    let (_, loc) = a_bin(&repo, &f);
    let path = pack_path(&f.dir, &loc.pack);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let r = run_check(&repo, false, None);
    let file = pack_rel(&loc.pack);
    assert_eq!(
        kinds(&r),
        vec![
            (ProblemKind::PackSizeMismatch, file.clone()),
            (ProblemKind::PackHeaderUnreadable, file.clone()),
        ],
        "{:#?}",
        r.problems
    );
    assert!(r.problems[0].message.contains(&format!("{}", len - 100)));
    let r = run_check(&repo, true, None);
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::PackHashMismatch && p.file == file)
    );
    let (ok, out) = restic(&f.dir, &["check", "--read-data"]);
    assert!(!ok && out.contains(&loc.pack.short()), "{out}");
}

/// Rewrites the pack holding `tree` without it, and the index to match: the
/// tree blob is gone from the repository, everything else is consistent.
fn remove_tree_blob(dir: &Path, tree: Id) {
    let repo = open_local(dir);
    let be = repo.backend().clone();
    let old = repo.lookup(BlobType::Tree, &tree).unwrap().pack;
    let mut w = PackWriter::new();
    for b in repo.pack_header(&old).unwrap() {
        if b.id != tree {
            let raw = repo
                .read_pack_range(&old, u64::from(b.offset), u64::from(b.length))
                .unwrap();
            w.add(b.blob_type, b.id, &raw, b.uncompressed_length)
                .unwrap();
        }
    }
    let (new, bytes, blobs) = w.finish(repo.key());
    be.write(FileType::Pack, &new.to_hex(), &bytes).unwrap();
    for (name, _) in be.list(FileType::Index).unwrap() {
        let id: Id = name.parse().unwrap();
        let mut idx = parse_index(&repo.load_unpacked(FileType::Index, &id).unwrap(), "i").unwrap();
        if let Some(p) = idx.packs.iter_mut().find(|p| p.id == old) {
            *p = IndexPack::from_packed(new, &blobs);
            repo.save_json(FileType::Index, "index", &idx).unwrap();
            be.remove(FileType::Index, &name).unwrap();
        }
    }
    be.remove(FileType::Pack, &old.to_hex()).unwrap();
}

#[test]
fn removed_tree_blob_is_named_with_its_path() {
    let f = fixture(1);
    let repo = open_local(&f.dir);
    let sub = child(&repo, &data_tree(&repo, &f.snaps[0].1), "sub")
        .subtree
        .unwrap();
    drop(repo);
    remove_tree_blob(&f.dir, sub);
    let repo = open_local(&f.dir);
    let r = run_check(&repo, true, None);
    assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
    let p = &r.problems[0];
    assert_eq!(p.kind, ProblemKind::TreeMissing);
    assert_eq!(p.file, format!("snapshots/{}", f.snaps[0].0.to_hex()));
    assert_eq!(p.blob, Some(sub));
    assert_eq!(p.snapshot, Some(f.snaps[0].0));
    assert_eq!(p.path.as_deref(), Some("/data/sub"));
    let (ok, out) = restic(&f.dir, &["check"]);
    assert!(!ok && out.contains(&sub.short()), "{out}");
}

#[test]
fn subset_halves_read_every_pack_once() {
    let f = fixture(4);
    let repo = open_local(&f.dir);
    let (_, loc) = a_bin(&repo, &f);
    let path = pack_path(&f.dir, &loc.pack);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[loc.offset as usize + 40] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let halves: Vec<CheckReport> = (1..=2)
        .map(|n| run_check(&repo, false, Some(Subset::Bucket { n, t: 2 })))
        .collect();
    let total = halves[0].stats.packs;
    assert!(total >= 8, "{total}");
    assert_eq!(
        halves[0].stats.packs_read + halves[1].stats.packs_read,
        total
    );
    let found: Vec<bool> = halves
        .iter()
        .map(|r| {
            r.problems
                .iter()
                .any(|p| p.kind == ProblemKind::PackHashMismatch && p.file == pack_rel(&loc.pack))
        })
        .collect();
    assert_eq!(
        found.iter().filter(|b| **b).count(),
        1,
        "exactly one half reads the damaged pack: {found:?}"
    );
    let bucket = usize::from(loc.pack.0[0] % 2);
    assert!(found[bucket], "restic's bucket rule: first byte mod t");
    let (ok, out) = restic(
        &f.dir,
        &["check", "--read-data-subset", &format!("{}/2", bucket + 1)],
    );
    assert!(!ok, "{out}");
    let (ok, out) = restic(
        &f.dir,
        &["check", "--read-data-subset", &format!("{}/2", 2 - bucket)],
    );
    assert!(ok, "restic's other half is clean too: {out}");
}

#[test]
fn check_takes_a_shared_lock() {
    let f = fixture(1);
    let repo = open_local(&f.dir);
    let shared = repo.lock(false).unwrap();
    assert!(
        run_check(&repo, false, None).is_ok(),
        "runs beside a backup"
    );
    drop(shared);
    let excl = repo.lock(true).unwrap();
    let e = check(&repo, &CheckOptions::default(), &Progress::new()).unwrap_err();
    assert!(matches!(e, engine::Error::Locked { .. }), "{e}");
    drop(excl);
}
