//! Prune: remove data no snapshot references, with restic's algorithm and
//! restic's crash-safety order, so a prune killed at any instant leaves a
//! repository that `restic check` accepts.
//!
//! Data flow: [`prune`] takes an exclusive lock and calls [`plan`] — read
//! only — which loads every index file into one flat list of blob records
//! (sorted by type and id, so "is this blob used" is one bit per record and a
//! binary search), walks every snapshot's trees to mark the blobs in use,
//! settles duplicates (one copy of each used blob is the one to keep, in a
//! pack that is kept anyway when possible), and classifies each pack:
//! fully used → keep; no used blob → delete; partly used → repack when its
//! unused share is among the largest and the repository's unused bytes would
//! otherwise stay above `max_unused_percent` of the used bytes (restic's
//! `--max-unused`), or when it holds tree or mixed blobs. Pack files that no
//! index mentions (left by an interrupted backup) are deleted first.
//!
//! Then it acts, in this order (restic's): delete unindexed packs; copy the
//! needed blobs of the packs to repack into new packs (each blob verified —
//! decrypted, decompressed and hashed — and copied as stored, not
//! re-compressed); write new index files covering every kept and new pack;
//! only then delete the old index files; last, delete the obsolete packs.
//! A crash before the new index is complete leaves new packs that no index
//! references (harmless, the next prune deletes them) and the old index that
//! still describes everything; a crash after it leaves old and new index
//! entries side by side (duplicates are allowed) or packs no index
//! references. No state ever has an index entry for a blob that is gone
//! while a snapshot needs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::backend::FileType;
use crate::blob::{self, BlobType};
use crate::crypto::OVERHEAD;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{BlobLocation, IndexBlob, IndexFile, IndexPack, parse_index};
use crate::pack::{PackWriter, TARGET_PACK_SIZE};
use crate::repository::{INDEX_MAX_BLOBS, Repository};
use crate::tree::Tree;

/// restic's `--max-unused` default: keep up to 5 % unused space rather than
/// rewriting packs to reclaim the last bytes.
pub const DEFAULT_MAX_UNUSED_PERCENT: f64 = 5.0;

/// A pack smaller than this counts as small for `repack_small` (a quarter
/// of the target size: restic 0.14's packs, ≥ 4 MiB, are not small; the
/// few-KiB packs an incremental backup of a quiet volume writes are).
pub const SMALL_PACK_SIZE: u64 = TARGET_PACK_SIZE as u64 / 4;

/// A repack pack's buffer: the target size plus room for the blob that
/// crosses it (usually small) and the header, so it is never regrown.
const REPACK_BUFFER: usize = TARGET_PACK_SIZE + (1 << 20);

/// Largest read from a pack being repacked: small enough that the reading
/// threads hold little memory, large enough that a pack takes few requests.
const REPACK_READ: usize = 4 << 20;

/// Threads copying blobs during a repack. Measured on the bench (2 cores):
/// one thread was as fast as two (the work is reads and hashing of data
/// that stays in cache; the writer is shared anyway) and peaked 30 MiB
/// lower (57 vs 87 MiB, restic 80–112 MiB).
const REPACK_THREADS: usize = 1;

/// Concurrent deletions/reads: object stores are latency-bound, so a few
/// requests in flight hide the round trips; more gains little.
const IO_THREADS: usize = 8;

/// What [`prune`] reports while it works (for a progress display).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneEvent {
    /// The plan is made; acting starts.
    Planned,
    /// Deleting pack files that no index references.
    RemovingUnindexed { packs: usize },
    /// `done` of `total` packs repacked.
    Repacking { done: usize, total: usize },
    /// Writing `files` new index files.
    WritingIndex { files: usize },
    /// Deleting the `files` old index files.
    RemovingOldIndex { files: usize },
    /// `done` of `total` obsolete packs deleted.
    RemovingPacks { done: usize, total: usize },
}

/// A progress callback; called from worker threads.
pub type PruneProgress = Arc<dyn Fn(PruneEvent) + Send + Sync>;

/// Options for [`prune`].
#[derive(Clone)]
pub struct PruneOptions {
    /// Only plan: report what would be done, change nothing.
    pub dry_run: bool,
    /// Tolerated unused space, in percent of the used bytes (restic's
    /// `--max-unused`); 0 repacks every partly used pack, 100 or more never
    /// repacks data packs for unused space.
    pub max_unused_percent: f64,
    /// Also merge fully used packs below [`SMALL_PACK_SIZE`] into larger ones
    /// (when there are at least two of them).
    pub repack_small: bool,
    pub progress: Option<PruneProgress>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            max_unused_percent: DEFAULT_MAX_UNUSED_PERCENT,
            repack_small: false,
            progress: None,
        }
    }
}

impl std::fmt::Debug for PruneOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PruneOptions")
            .field("dry_run", &self.dry_run)
            .field("max_unused_percent", &self.max_unused_percent)
            .field("repack_small", &self.repack_small)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What a prune found and did (or, for a dry run, would do). Byte counts of
/// blobs are their stored (encrypted, compressed) sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    pub dry_run: bool,
    pub snapshots: u64,
    /// Blobs some snapshot references (each counted once).
    pub blobs_used: u64,
    pub bytes_used: u64,
    /// Stored blobs no snapshot references, including extra copies of
    /// duplicated blobs.
    pub blobs_unused: u64,
    pub bytes_unused: u64,
    /// Extra copies of blobs stored more than once (part of `*_unused`).
    pub blobs_duplicate: u64,
    pub bytes_duplicate: u64,
    /// Pack files and their bytes before the prune.
    pub packs_total: u64,
    pub bytes_total: u64,
    /// Pack files no index references (left by interrupted backups).
    pub packs_unindexed: u64,
    /// Indexed packs without any used blob.
    pub packs_unused: u64,
    /// Partly used packs whose used blobs were copied into new packs.
    pub packs_repacked: u64,
    /// Packs kept as they are.
    pub packs_kept: u64,
    /// Pack files deleted: unindexed + unused + repacked.
    pub packs_deleted: u64,
    /// New packs written by repacking (estimated in a dry run).
    pub packs_written: u64,
    pub blobs_repacked: u64,
    /// Blob bytes copied into new packs.
    pub bytes_repacked: u64,
    /// Unused blobs gone from the repository after the prune.
    pub blobs_removed: u64,
    /// Pack bytes before minus pack bytes after (estimated in a dry run).
    pub bytes_freed: u64,
    /// Unused bytes still stored in kept packs after the prune.
    pub bytes_unused_after: u64,
    pub index_files_removed: u64,
    pub index_files_written: u64,
}

/// One blob entry of the index. Records are sorted by (type, id), so the
/// copies of a duplicated blob are adjacent.
#[derive(Debug, Clone, Copy)]
struct Rec {
    id: Id,
    pack: u32,
    offset: u32,
    length: u32,
    uncompressed_length: Option<u32>,
    blob_type: BlobType,
}

impl Rec {
    fn header_entry_len(&self) -> u64 {
        if self.uncompressed_length.is_some() {
            1 + 4 + 4 + 32
        } else {
            1 + 4 + 32
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Keep,
    Remove,
    Repack,
}

#[derive(Debug, Clone)]
struct PackInfo {
    id: Id,
    /// Size of the file, 0 when the listing did not have it.
    size: u64,
    present: bool,
    /// Range of `PrunePlan::by_pack` holding this pack's records.
    start: usize,
    end: usize,
    used_blobs: u64,
    used_bytes: u64,
    unused_blobs: u64,
    unused_bytes: u64,
    /// Tree blobs, data blobs, or (restic never writes them) both.
    has_tree: bool,
    has_data: bool,
    action: Action,
}

/// A bit per record.
#[derive(Debug, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
}

/// What [`prune`] will do; [`PrunePlan::stats`] says it in numbers.
#[derive(Debug, Clone)]
pub struct PrunePlan {
    pub stats: PruneStats,
    recs: Vec<Rec>,
    /// Record numbers ordered by (pack, offset).
    by_pack: Vec<u32>,
    packs: Vec<PackInfo>,
    /// Records whose bytes are copied into new packs.
    copy: Bits,
    /// Pack files no index references, and their total size.
    unindexed: Vec<Id>,
    unindexed_bytes: u64,
    old_index: Vec<Id>,
}

fn par_for_each<T: Sync>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    if failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    if let Err(e) = f(item) {
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn cpu_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4)
}

/// Loads every index file into records and packs (a pack listed by more
/// than one index file is taken once).
fn load_index_files(repo: &Repository) -> Result<(Vec<Id>, Vec<Rec>, Vec<Id>)> {
    let mut names = Vec::new();
    for (name, _) in repo.backend().list(FileType::Index)? {
        names.push(name.parse::<Id>().map_err(|_| {
            Error::corrupted(
                FileType::Index.rel_path(&name),
                "index file name is not an id; remove the stray file",
            )
        })?);
    }
    names.sort();
    // Each file becomes records in the thread that parsed it, so at most a
    // few parsed index files exist at a time next to the compact records.
    struct Acc {
        pack_ids: Vec<Id>,
        pack_nums: HashMap<Id, u32>,
        recs: Vec<Rec>,
    }
    let acc = Mutex::new(Acc {
        pack_ids: Vec::new(),
        pack_nums: HashMap::new(),
        recs: Vec::new(),
    });
    par_for_each(&names, cpu_threads(), |id| {
        let json = repo.load_unpacked(FileType::Index, id)?;
        let f = parse_index(&json, &FileType::Index.rel_path(&id.to_hex()))?;
        drop(json);
        let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
        for p in f.packs {
            // A pack listed by two index files (after an interrupted
            // prune) is taken once.
            if a.pack_nums.contains_key(&p.id) {
                continue;
            }
            let pn = u32::try_from(a.pack_ids.len())
                .map_err(|_| Error::corrupted("index", "more than 2^32 packs"))?;
            a.pack_nums.insert(p.id, pn);
            a.pack_ids.push(p.id);
            a.recs.extend(p.blobs.into_iter().map(|b| Rec {
                id: b.id,
                pack: pn,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
                blob_type: b.blob_type,
            }));
        }
        Ok(())
    })?;
    let Acc {
        pack_ids, mut recs, ..
    } = acc.into_inner().unwrap_or_else(|e| e.into_inner());
    recs.sort_unstable_by(|a, b| {
        (a.blob_type, a.id, a.pack, a.offset).cmp(&(b.blob_type, b.id, b.pack, b.offset))
    });
    Ok((names, recs, pack_ids))
}

/// The first record of blob (t, id), if indexed.
fn find(recs: &[Rec], t: BlobType, id: &Id) -> Option<usize> {
    let i = recs.partition_point(|r| (r.blob_type, r.id) < (t, *id));
    (i < recs.len() && recs[i].blob_type == t && recs[i].id == *id).then_some(i)
}

/// Marks every blob reachable from the snapshots (bit on the first record
/// of each used blob). Fails when a referenced blob is not indexed: pruning
/// then could delete what a snapshot needs.
///
/// Breadth first, one directory level at a time, with the level's trees
/// loaded by [`IO_THREADS`] threads: on an object store each tree is a
/// round trip, and a walk one tree at a time would wait for them in turn.
fn mark_used(repo: &Repository, recs: &[Rec], pack_ids: &[Id], roots: &[(Id, Id)]) -> Result<Bits> {
    let mut used = Bits::new(recs.len());
    let missing = |kind: &'static str, id: Id, snap: Id| Error::Corrupted {
        file: format!("snapshots/{}", snap.to_hex()),
        reason: format!(
            "it references {kind} blob {id}, which is not in the index; prune refuses to run so no data is lost — run `restic check` and `restic rebuild-index`"
        ),
    };
    // (record, tree id, a snapshot that reaches it — for error messages)
    let mut level: Vec<(usize, Id, Id)> = Vec::new();
    for (snap, root) in roots {
        let i = find(recs, BlobType::Tree, root).ok_or_else(|| missing("tree", *root, *snap))?;
        if !used.get(i) {
            used.set(i);
            level.push((i, *root, *snap));
        }
    }
    let used = Mutex::new(used);
    while !level.is_empty() {
        let next: Mutex<Vec<(usize, Id, Id)>> = Mutex::new(Vec::new());
        par_for_each(&level, IO_THREADS, |&(i, tid, snap)| {
            // Located through the index files just read, not the
            // repository's in-memory index, which predates other clients'
            // writes since it was opened.
            let r = &recs[i];
            let loc = BlobLocation {
                pack: pack_ids[r.pack as usize],
                offset: u64::from(r.offset),
                length: u64::from(r.length),
                uncompressed_length: r.uncompressed_length,
            };
            let raw = repo.read_pack_range(&loc.pack, loc.offset, loc.length)?;
            let data = repo.decode_blob(&tid, &loc, &raw)?;
            let tree = Tree::from_json(&data)
                .map_err(|e| Error::corrupted(format!("tree blob {tid}"), format!("{e}")))?;
            drop(data);
            // Look everything up first, then mark under one short lock; only
            // the next level's directories are kept, never whole trees.
            let (mut data_recs, mut sub_recs) = (Vec::new(), Vec::new());
            for node in &tree.nodes {
                for cid in node.content.iter().flatten() {
                    data_recs.push(
                        find(recs, BlobType::Data, cid)
                            .ok_or_else(|| missing("data", *cid, snap))?,
                    );
                }
                if let Some(sub) = node.subtree {
                    let j = find(recs, BlobType::Tree, &sub)
                        .ok_or_else(|| missing("tree", sub, snap))?;
                    sub_recs.push((j, sub));
                }
            }
            let mut found = Vec::new();
            {
                let mut u = used.lock().unwrap_or_else(|e| e.into_inner());
                for j in data_recs {
                    u.set(j);
                }
                for (j, sub) in sub_recs {
                    if !u.get(j) {
                        u.set(j);
                        found.push((j, sub, snap));
                    }
                }
            }
            next.lock().unwrap_or_else(|e| e.into_inner()).extend(found);
            Ok(())
        })?;
        let next = next.into_inner().unwrap_or_else(|e| e.into_inner());
        level = next;
    }
    Ok(used.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Plans a prune without changing anything. The caller should hold a lock
/// ([`prune`] holds an exclusive one): a backup running meanwhile adds packs
/// that the plan would count as unindexed.
pub fn plan(repo: &Repository, opts: &PruneOptions) -> Result<PrunePlan> {
    let (old_index, recs, pack_ids) = load_index_files(repo)?;
    let snaps = repo.snapshots()?;
    let roots: Vec<(Id, Id)> = snaps.iter().map(|(id, s)| (*id, s.tree)).collect();
    let used_first = mark_used(repo, &recs, &pack_ids, &roots)?;
    let mut st = PruneStats {
        dry_run: opts.dry_run,
        snapshots: snaps.len() as u64,
        ..Default::default()
    };
    drop(snaps);

    let mut packs: Vec<PackInfo> = pack_ids
        .iter()
        .map(|id| PackInfo {
            id: *id,
            size: 0,
            present: false,
            start: 0,
            end: 0,
            used_blobs: 0,
            used_bytes: 0,
            unused_blobs: 0,
            unused_bytes: 0,
            has_tree: false,
            has_data: false,
            action: Action::Keep,
        })
        .collect();
    // Used blobs per pack before settling duplicates, to prefer keeping the
    // copy that sits in a pack with other used blobs.
    let mut plain_used = vec![0u64; packs.len()];
    let mut keeper = Bits::new(recs.len());
    let mut g = 0;
    while g < recs.len() {
        let mut e = g + 1;
        while e < recs.len() && recs[e].blob_type == recs[g].blob_type && recs[e].id == recs[g].id {
            e += 1;
        }
        if used_first.get(g) && e - g == 1 {
            plain_used[recs[g].pack as usize] += 1;
        }
        g = e;
    }
    let mut g = 0;
    while g < recs.len() {
        let mut e = g + 1;
        while e < recs.len() && recs[e].blob_type == recs[g].blob_type && recs[e].id == recs[g].id {
            e += 1;
        }
        if used_first.get(g) {
            let k = (g..e)
                .max_by_key(|&i| (plain_used[recs[i].pack as usize], std::cmp::Reverse(i)))
                .unwrap_or(g);
            keeper.set(k);
            st.blobs_used += 1;
            st.bytes_used += u64::from(recs[k].length);
        }
        for (i, r) in recs.iter().enumerate().take(e).skip(g) {
            let p = &mut packs[r.pack as usize];
            match r.blob_type {
                BlobType::Tree => p.has_tree = true,
                BlobType::Data => p.has_data = true,
            }
            if keeper.get(i) {
                p.used_blobs += 1;
                p.used_bytes += u64::from(r.length);
            } else {
                p.unused_blobs += 1;
                p.unused_bytes += u64::from(r.length);
                st.blobs_unused += 1;
                st.bytes_unused += u64::from(r.length);
                // An extra copy: not the kept one of a used blob, not the
                // first of an unused one.
                if used_first.get(g) || i > g {
                    st.blobs_duplicate += 1;
                    st.bytes_duplicate += u64::from(r.length);
                }
            }
        }
        g = e;
    }
    drop(plain_used);

    let mut by_pack: Vec<u32> = (0..recs.len() as u32).collect();
    by_pack.sort_unstable_by_key(|&i| (recs[i as usize].pack, recs[i as usize].offset));
    let mut i = 0;
    while i < by_pack.len() {
        let pn = recs[by_pack[i] as usize].pack as usize;
        let mut e = i;
        while e < by_pack.len() && recs[by_pack[e] as usize].pack as usize == pn {
            e += 1;
        }
        packs[pn].start = i;
        packs[pn].end = e;
        i = e;
    }

    // Compare with the pack files actually stored.
    let listed = repo.backend().list(FileType::Pack)?;
    let pack_nums: HashMap<Id, usize> = packs.iter().enumerate().map(|(n, p)| (p.id, n)).collect();
    let mut unindexed = Vec::new();
    let mut st_unindexed_bytes = 0;
    for (name, size) in listed {
        st.packs_total += 1;
        st.bytes_total += size;
        let id: Id = name.parse().map_err(|_| {
            Error::corrupted(
                FileType::Pack.rel_path(&name),
                "pack file name is not an id; remove the stray file",
            )
        })?;
        match pack_nums.get(&id) {
            Some(&n) => {
                packs[n].present = true;
                packs[n].size = size;
            }
            None => {
                st.packs_unindexed += 1;
                st.bytes_freed += size;
                st_unindexed_bytes += size;
                unindexed.push(id);
            }
        }
    }
    for p in &packs {
        if p.used_blobs == 0 {
            continue;
        }
        let file = FileType::Pack.rel_path(&p.id.to_hex());
        if !p.present {
            return Err(Error::NotFound {
                file: format!(
                    "{file} (the index lists it and snapshots need {} of its blobs; prune refuses to run — run `restic check`, then `restic rebuild-index`)",
                    p.used_blobs
                ),
            });
        }
        let expected: u64 = by_pack[p.start..p.end]
            .iter()
            .map(|&r| {
                let r = &recs[r as usize];
                u64::from(r.length) + r.header_entry_len()
            })
            .sum::<u64>()
            + OVERHEAD as u64
            + 4;
        if expected != p.size {
            return Err(Error::corrupted(
                file,
                format!(
                    "the index describes {expected} bytes but the file has {}; prune refuses to run — run `restic rebuild-index`",
                    p.size
                ),
            ));
        }
    }

    // Decide per pack, as restic does.
    let mut candidates = Vec::new();
    let mut small = Vec::new();
    for (n, p) in packs.iter_mut().enumerate() {
        if p.used_blobs == 0 {
            p.action = Action::Remove;
        } else if p.unused_blobs == 0 && !(p.has_tree && p.has_data) {
            p.action = Action::Keep;
            if opts.repack_small && p.size < SMALL_PACK_SIZE {
                small.push(n);
            }
        } else {
            candidates.push(n);
        }
    }
    // Tree and mixed packs first (they are small and read by every
    // operation), then by unused share, largest first.
    candidates.sort_by(|&a, &b| {
        let (pa, pb) = (&packs[a], &packs[b]);
        let data_only = |p: &PackInfo| !p.has_tree;
        data_only(pa).cmp(&data_only(pb)).then_with(|| {
            (u128::from(pb.unused_bytes) * u128::from(pa.used_bytes))
                .cmp(&(u128::from(pa.unused_bytes) * u128::from(pb.used_bytes)))
        })
    });
    let max_unused_after = if opts.max_unused_percent >= 100.0 {
        u64::MAX
    } else {
        let p = opts.max_unused_percent.max(0.0);
        (p / (100.0 - p) * st.bytes_used as f64) as u64
    };
    let mut unused_gone: u64 = packs
        .iter()
        .filter(|p| p.action == Action::Remove)
        .map(|p| p.unused_bytes)
        .sum();
    for n in candidates {
        let p = &mut packs[n];
        let reached = st.bytes_unused - unused_gone < max_unused_after;
        if p.has_tree || !reached {
            p.action = Action::Repack;
            unused_gone += p.unused_bytes;
        } else {
            p.action = Action::Keep;
        }
    }
    if small.len() >= 2 {
        for n in small {
            packs[n].action = Action::Repack;
        }
    }

    // Which copies to write into new packs: a used blob needs a copy unless
    // one already sits in a kept pack.
    let mut copy = Bits::new(recs.len());
    let mut g = 0;
    while g < recs.len() {
        let mut e = g + 1;
        while e < recs.len() && recs[e].blob_type == recs[g].blob_type && recs[e].id == recs[g].id {
            e += 1;
        }
        if used_first.get(g) {
            let action = |i: usize| packs[recs[i].pack as usize].action;
            if !(g..e).any(|i| action(i) == Action::Keep) {
                let k = (g..e)
                    .find(|&i| keeper.get(i) && action(i) == Action::Repack)
                    .or_else(|| (g..e).find(|&i| action(i) == Action::Repack));
                if let Some(k) = k {
                    copy.set(k);
                    st.blobs_repacked += 1;
                    st.bytes_repacked += u64::from(recs[k].length);
                }
            }
        }
        g = e;
    }

    let mut kept_unused = 0;
    for p in &packs {
        match p.action {
            Action::Keep => {
                st.packs_kept += 1;
                kept_unused += p.unused_bytes;
            }
            Action::Remove => {
                st.packs_unused += u64::from(p.present);
                st.packs_deleted += u64::from(p.present);
                st.bytes_freed += p.size;
            }
            Action::Repack => {
                st.packs_repacked += 1;
                st.packs_deleted += 1;
                st.bytes_freed += p.size;
            }
        }
    }
    st.packs_deleted += st.packs_unindexed;
    st.bytes_unused_after = kept_unused;
    st.blobs_removed = st.blobs_unused
        - packs
            .iter()
            .filter(|p| p.action == Action::Keep)
            .map(|p| p.unused_blobs)
            .sum::<u64>();
    // Estimate of the new packs: one per target size per blob type, plus
    // headers; `prune` replaces it with what it wrote.
    let (mut new_bytes, mut new_packs) = (0u64, 0u64);
    for t in [BlobType::Tree, BlobType::Data] {
        let (mut bytes, mut hdr) = (0u64, 0u64);
        for (i, r) in recs.iter().enumerate() {
            if r.blob_type == t && copy.get(i) {
                bytes += u64::from(r.length);
                hdr += r.header_entry_len();
            }
        }
        if bytes > 0 {
            let n = bytes.div_ceil(TARGET_PACK_SIZE as u64);
            new_packs += n;
            new_bytes += bytes + hdr + n * (OVERHEAD as u64 + 4);
        }
    }
    st.packs_written = new_packs;
    st.bytes_freed = st.bytes_freed.saturating_sub(new_bytes);
    Ok(PrunePlan {
        stats: st,
        recs,
        by_pack,
        packs,
        copy,
        unindexed,
        unindexed_bytes: st_unindexed_bytes,
        old_index,
    })
}

impl PrunePlan {
    /// Whether acting on the plan changes the index.
    fn rewrites_index(&self) -> bool {
        self.packs.iter().any(|p| p.action != Action::Keep)
    }

    fn index_blob(&self, r: u32) -> IndexBlob {
        let r = &self.recs[r as usize];
        IndexBlob {
            id: r.id,
            blob_type: r.blob_type,
            offset: r.offset,
            length: r.length,
            uncompressed_length: r.uncompressed_length,
        }
    }
}

/// Packs being written by the repack workers, one per blob type.
struct Writers {
    open: [Mutex<Option<PackWriter>>; 2],
    done: Mutex<Vec<IndexPack>>,
    written_bytes: AtomicUsize,
}

impl Writers {
    fn add(&self, repo: &Repository, r: &Rec, raw: &[u8]) -> Result<()> {
        let full = {
            let mut slot = self.open[r.blob_type as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let w = slot.get_or_insert_with(|| PackWriter::with_capacity(REPACK_BUFFER));
            w.add(r.blob_type, r.id, raw, r.uncompressed_length)?;
            if w.is_full() { slot.take() } else { None }
        };
        match full {
            Some(w) => self.upload(repo, w),
            None => Ok(()),
        }
    }

    fn upload(&self, repo: &Repository, w: PackWriter) -> Result<()> {
        if w.is_empty() {
            return Ok(());
        }
        let (id, bytes, blobs) = w.finish(repo.key());
        repo.backend().write(FileType::Pack, &id.to_hex(), &bytes)?;
        self.written_bytes.fetch_add(bytes.len(), Ordering::Relaxed);
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(IndexPack::from_packed(id, &blobs));
        Ok(())
    }
}

/// Copies the needed blobs of the packs to repack into new packs; returns
/// the new packs' index entries and their total size.
fn repack(
    repo: &Repository,
    plan: &PrunePlan,
    opts: &PruneOptions,
) -> Result<(Vec<IndexPack>, u64)> {
    let work: Vec<&PackInfo> = plan
        .packs
        .iter()
        .filter(|p| p.action == Action::Repack)
        .collect();
    let writers = Writers {
        open: [Mutex::new(None), Mutex::new(None)],
        done: Mutex::new(Vec::new()),
        written_bytes: AtomicUsize::new(0),
    };
    let done = AtomicUsize::new(0);
    let total = work.len();
    if let Some(cb) = opts.progress.as_ref().filter(|_| total > 0) {
        cb(PruneEvent::Repacking { done: 0, total });
    }
    par_for_each(&work, REPACK_THREADS, |p| {
        let needed: Vec<&Rec> = plan.by_pack[p.start..p.end]
            .iter()
            .filter(|&&r| plan.copy.get(r as usize))
            .map(|&r| &plan.recs[r as usize])
            .collect();
        // Read runs of needed blobs of at most REPACK_READ bytes at a time
        // (one blob may be larger): one request per run, bounded memory.
        let file = FileType::Pack.rel_path(&p.id.to_hex());
        let mut i = 0;
        while i < needed.len() {
            let start = u64::from(needed[i].offset);
            let mut j = i + 1;
            while j < needed.len()
                && u64::from(needed[j].offset) + u64::from(needed[j].length) - start
                    <= REPACK_READ as u64
            {
                j += 1;
            }
            let last = needed[j - 1];
            let end = u64::from(last.offset) + u64::from(last.length);
            let buf = repo.read_pack_range(&p.id, start, end - start)?;
            for r in &needed[i..j] {
                let at = (u64::from(r.offset) - start) as usize;
                let raw = &buf[at..at + r.length as usize];
                // Never carry a damaged blob into a new pack: decrypt,
                // decompress and hash it first (restic does the same).
                blob::decode(repo.key(), &r.id, raw, r.uncompressed_length, &file)?;
                writers.add(repo, r, raw)?;
            }
            i = j;
        }
        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(cb) = &opts.progress {
            cb(PruneEvent::Repacking { done: d, total });
        }
        Ok(())
    })?;
    for slot in &writers.open {
        let w = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = w {
            writers.upload(repo, w)?;
        }
    }
    let bytes = writers.written_bytes.load(Ordering::Relaxed) as u64;
    Ok((
        writers.done.into_inner().unwrap_or_else(|e| e.into_inner()),
        bytes,
    ))
}

fn remove_files(
    repo: &Repository,
    t: FileType,
    ids: &[Id],
    progress: Option<&PruneProgress>,
) -> Result<()> {
    let done = AtomicUsize::new(0);
    par_for_each(ids, IO_THREADS, |id| {
        match repo.backend().remove(t, &id.to_hex()) {
            Ok(()) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(cb) = progress {
            cb(PruneEvent::RemovingPacks {
                done: d,
                total: ids.len(),
            });
        }
        Ok(())
    })
}

/// Removes unreferenced data: plans under an exclusive lock, then (unless
/// `dry_run`) deletes unindexed packs, repacks, rewrites the index and
/// deletes obsolete packs, in an order that is safe against a crash at any
/// point (see the module docs). Refused while any other client (a backup,
/// restore, check — hoard's or restic's) holds a lock. Afterwards the
/// repository's in-memory index is reloaded, so `repo` stays usable.
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneStats> {
    let _lock = repo.lock(true)?;
    let plan = plan(repo, opts)?;
    if opts.dry_run {
        return Ok(plan.stats);
    }
    let progress = opts.progress.as_ref();
    let emit = |e: PruneEvent| {
        if let Some(cb) = progress {
            cb(e);
        }
    };
    emit(PruneEvent::Planned);
    let mut st = plan.stats.clone();

    if !plan.unindexed.is_empty() {
        emit(PruneEvent::RemovingUnindexed {
            packs: plan.unindexed.len(),
        });
        remove_files(repo, FileType::Pack, &plan.unindexed, None)?;
    }
    if !plan.rewrites_index() {
        st.packs_written = 0;
        return Ok(st);
    }

    let (new_packs, new_bytes) = repack(repo, &plan, opts)?;

    // Index files for every kept pack and every new one, at most
    // INDEX_MAX_BLOBS blobs each. Only the grouping is planned here; each
    // file's JSON is built by the thread that writes it, so memory holds a
    // few index files at a time, not a second copy of the whole index.
    enum Src {
        Kept(usize),
        New(usize),
    }
    let sources = plan
        .packs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.action == Action::Keep)
        .map(|(n, p)| (Src::Kept(n), p.end - p.start))
        .chain(
            new_packs
                .iter()
                .enumerate()
                .map(|(n, p)| (Src::New(n), p.blobs.len())),
        );
    let mut files: Vec<Vec<Src>> = vec![Vec::new()];
    let mut in_file = 0;
    for (src, blobs) in sources {
        if in_file > 0 && in_file + blobs > INDEX_MAX_BLOBS {
            files.push(Vec::new());
            in_file = 0;
        }
        in_file += blobs;
        if let Some(f) = files.last_mut() {
            f.push(src);
        }
    }
    files.retain(|f| !f.is_empty());
    emit(PruneEvent::WritingIndex { files: files.len() });
    let written_ids = Mutex::new(Vec::new());
    par_for_each(&files, IO_THREADS, |srcs| {
        let packs = srcs
            .iter()
            .map(|src| match *src {
                Src::Kept(n) => {
                    let p = &plan.packs[n];
                    IndexPack {
                        id: p.id,
                        blobs: plan.by_pack[p.start..p.end]
                            .iter()
                            .map(|&r| plan.index_blob(r))
                            .collect(),
                    }
                }
                Src::New(n) => new_packs[n].clone(),
            })
            .collect();
        // No `supersedes`: a reader honouring it would drop the old files
        // while the new set is still incomplete.
        let id = repo.save_json(
            FileType::Index,
            "index",
            &IndexFile {
                supersedes: vec![],
                packs,
            },
        )?;
        written_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        Ok(())
    })?;
    st.index_files_written = files.len() as u64;

    emit(PruneEvent::RemovingOldIndex {
        files: plan.old_index.len(),
    });
    // Names are hashes of randomly encrypted content, so a new file never
    // takes an old one's name; the filter only guards that invariant.
    let new_ids = written_ids.into_inner().unwrap_or_else(|e| e.into_inner());
    let old: Vec<Id> = plan
        .old_index
        .iter()
        .copied()
        .filter(|id| !new_ids.contains(id))
        .collect();
    remove_files(repo, FileType::Index, &old, None)?;
    st.index_files_removed = old.len() as u64;

    let obsolete: Vec<Id> = plan
        .packs
        .iter()
        .filter(|p| p.action != Action::Keep && p.present)
        .map(|p| p.id)
        .collect();
    emit(PruneEvent::RemovingPacks {
        done: 0,
        total: obsolete.len(),
    });
    remove_files(repo, FileType::Pack, &obsolete, progress)?;

    st.packs_written = new_packs.len() as u64;
    let deleted: u64 = plan.unindexed_bytes
        + plan
            .packs
            .iter()
            .filter(|p| p.action != Action::Keep)
            .map(|p| p.size)
            .sum::<u64>();
    st.bytes_freed = deleted.saturating_sub(new_bytes);
    repo.reload_index()?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, MemoryBackend};
    use crate::keyfile::KdfParams;
    use crate::repository::InitOptions;
    use crate::snapshot::Snapshot;
    use crate::tree::{Node, NodeType};

    fn snapshot_of(repo: &Repository, blobs: &[Id]) -> Id {
        let mut n = Node::new(b"f".to_vec(), NodeType::File);
        n.content = Some(blobs.to_vec());
        let json = Tree { nodes: vec![n] }.to_json();
        let tid = Id::hash(&json);
        repo.save_blob(BlobType::Tree, tid, &json).unwrap();
        repo.flush().unwrap();
        repo.save_snapshot(&Snapshot::new(tid, vec!["/d".into()], "h"))
            .unwrap()
    }

    #[test]
    fn duplicates_keep_one_copy_and_unused_blobs_go() {
        let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let a = Repository::init(
            be.clone(),
            "pw",
            InitOptions {
                kdf: KdfParams::insecure_fast(),
                chunker_polynomial: None,
            },
        )
        .unwrap();
        // `b` opens before `a` flushes, so both store blob x: a duplicate.
        let b = Repository::open(be.clone(), "pw").unwrap();
        let x = b"shared".repeat(1000);
        let y = b"only-a".repeat(1000);
        let (xid, yid) = (Id::hash(&x), Id::hash(&y));
        a.save_blob(BlobType::Data, xid, &x).unwrap();
        a.save_blob(BlobType::Data, yid, &y).unwrap();
        a.flush().unwrap();
        b.save_blob(BlobType::Data, xid, &x).unwrap();
        b.flush().unwrap();
        snapshot_of(&b, &[xid]);

        let st = prune(&b, &PruneOptions::default()).unwrap();
        assert_eq!(st.blobs_duplicate, 1, "{st:?}");
        assert_eq!(st.blobs_used, 2, "x and the tree: {st:?}");
        // y sat next to a copy of x: that pack is deleted (its x is not the
        // kept copy) or repacked; either way y is gone and x stays once.
        let fresh = Repository::open(be.clone(), "pw").unwrap();
        assert_eq!(fresh.load_blob(BlobType::Data, &xid).unwrap(), x);
        assert!(!fresh.has_blob(BlobType::Data, &yid));
        let p = plan(&fresh, &PruneOptions::default()).unwrap();
        assert_eq!(
            (p.stats.blobs_duplicate, p.stats.blobs_unused),
            (0, 0),
            "{:?}",
            p.stats
        );
        assert!(be.list(FileType::Lock).unwrap().is_empty());
    }

    #[test]
    fn max_unused_parses_into_a_threshold_that_stops_repacking() {
        // 0 %: every partly used pack is repacked.
        let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let repo = Repository::init(
            be.clone(),
            "pw",
            InitOptions {
                kdf: KdfParams::insecure_fast(),
                chunker_polynomial: None,
            },
        )
        .unwrap()
        .with_compression(None);
        let noise = |n: usize, seed: u8| -> Vec<u8> {
            (0..n.div_ceil(32))
                .flat_map(|i| Id::hash(&[seed, (i % 256) as u8, (i / 256) as u8]).0)
                .take(n)
                .collect()
        };
        let keep = noise(64 << 10, 1);
        let drop = noise(1 << 10, 2);
        repo.save_blob(BlobType::Data, Id::hash(&keep), &keep)
            .unwrap();
        repo.save_blob(BlobType::Data, Id::hash(&drop), &drop)
            .unwrap();
        snapshot_of(&repo, &[Id::hash(&keep)]);
        let opts = |p: f64| PruneOptions {
            max_unused_percent: p,
            dry_run: true,
            ..Default::default()
        };
        // `drop` is a small share of its pack: 5 % tolerates it, 0 % does not.
        assert_eq!(prune(&repo, &opts(5.0)).unwrap().packs_repacked, 0);
        assert_eq!(prune(&repo, &opts(0.0)).unwrap().packs_repacked, 1);
        let st = prune(
            &repo,
            &PruneOptions {
                max_unused_percent: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((st.packs_repacked, st.bytes_unused_after), (1, 0));
        assert_eq!(
            repo.load_blob(BlobType::Data, &Id::hash(&keep)).unwrap(),
            keep
        );
    }
}
