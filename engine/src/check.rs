//! `check`: is the repository whole? Structure always (index ↔ packs ↔
//! trees ↔ snapshots), and optionally the data itself (`--read-data`, or a
//! `--read-data-subset`), with every problem naming the file it concerns.
//!
//! Data flow, as restic's checker (ideas, not code):
//! 1. list the pack files the backend holds, and read every index file on
//!    its own (an index file that cannot be read is a problem of that file);
//!    each indexed pack is kept as a 32-byte digest of its index entries plus
//!    its expected size, so memory is ~100 bytes per pack, not per blob;
//! 2. packs indexed but absent are errors; packs present but not indexed are
//!    hints (what a crashed backup leaves; `prune` removes them); a pack whose
//!    size differs from what its index entries imply is an error;
//! 3. every pack's header is read (a few KiB from its end) and its digest
//!    compared with the index's; only on a mismatch is the index file read
//!    again to name each differing blob;
//! 4. every snapshot is loaded and its trees walked once each (shared
//!    subtrees are visited once): a tree missing from the index or not
//!    decodable, and a data blob missing from the index, are errors naming
//!    the snapshot, the tree id and the path inside the snapshot;
//! 5. with read-data, each selected pack is streamed by one of a few
//!    workers in [`READ_WINDOW`] pieces (memory: workers × (window + one
//!    blob), whatever the pack size): its SHA-256 is compared with its name,
//!    its header with the index, and every blob decrypted, decompressed and
//!    hashed against its id. The header comparison of step 3 is done here
//!    instead for the packs read in full.
//!
//! The repository is locked shared while checking (restic does the same), so
//! a backup may run meanwhile; `prune` (exclusive) waits.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard, mpsc};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::backend::FileType;
use crate::blob::{self, BlobType};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{IndexBlob, parse_index};
use crate::pack::{self, PackedBlob};
use crate::progress::Progress;
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{NodeType, Tree};

/// Read-data reads packs in pieces of this size: enough for few round trips
/// on object stores, small enough that workers × (window + one blob) stays
/// far below restic's memory use.
pub const READ_WINDOW: u64 = 4 << 20;

/// restic's largest bucket count for `n/t` (it selects by the first byte).
pub const MAX_BUCKETS: u32 = 256;

/// Which packs `--read-data-subset` reads, in restic's three spellings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    /// `n/t`: the packs whose id's first byte modulo `t` is `n - 1`; running
    /// `1/t` … `t/t` reads every pack exactly once.
    Bucket { n: u32, t: u32 },
    /// `x%`: a random `x` percent of the packs (at least one).
    Percent(f64),
    /// `500M`: random packs adding up to about this many bytes.
    Size(u64),
}

/// A `--read-data-subset` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid read-data subset {input:?}: {reason}; use n/t (e.g. 1/5), a percentage (e.g. 10%) or a size (e.g. 500M)"
)]
pub struct SubsetError {
    pub input: String,
    pub reason: String,
}

impl FromStr for Subset {
    type Err = SubsetError;

    fn from_str(s: &str) -> Result<Subset, SubsetError> {
        let err = |reason: &str| SubsetError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| err("the percentage is not a number"))?;
            if !(p.is_finite() && p > 0.0 && p <= 100.0) {
                return Err(err("the percentage must be above 0 and at most 100"));
            }
            return Ok(Subset::Percent(p));
        }
        if let Some((n, tot)) = t.split_once('/') {
            let n: u32 = n.trim().parse().map_err(|_| err("n is not a number"))?;
            let tot: u32 = tot.trim().parse().map_err(|_| err("t is not a number"))?;
            if tot == 0 || tot > MAX_BUCKETS {
                return Err(err("t must be between 1 and 256"));
            }
            if n == 0 || n > tot {
                return Err(err("n must be between 1 and t"));
            }
            return Ok(Subset::Bucket { n, t: tot });
        }
        // restic's ui.ParseBytes: an integer with an optional binary unit.
        let (num, unit) = match t.as_bytes().last() {
            Some(b'b' | b'B') => (&t[..t.len() - 1], 1u64),
            Some(b'k' | b'K') => (&t[..t.len() - 1], 1 << 10),
            Some(b'm' | b'M') => (&t[..t.len() - 1], 1 << 20),
            Some(b'g' | b'G') => (&t[..t.len() - 1], 1 << 30),
            Some(b't' | b'T') => (&t[..t.len() - 1], 1 << 40),
            _ => (t, 1),
        };
        let v: u64 = num.trim().parse().map_err(|_| err("not a size"))?;
        let bytes = v
            .checked_mul(unit)
            .ok_or_else(|| err("the size is too large"))?;
        if bytes == 0 {
            return Err(err("the size must be above 0"));
        }
        Ok(Subset::Size(bytes))
    }
}

impl fmt::Display for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subset::Bucket { n, t } => write!(f, "{n}/{t}"),
            Subset::Percent(p) => write!(f, "{p}%"),
            Subset::Size(b) => write!(f, "{b}B"),
        }
    }
}

impl Subset {
    /// The packs to read out of `packs` (id, size); sorted by id.
    pub fn select(&self, packs: &[(Id, u64)]) -> Vec<(Id, u64)> {
        let mut out: Vec<(Id, u64)> = match *self {
            Subset::Bucket { n, t } => packs
                .iter()
                .filter(|(id, _)| u32::from(id.0[0]) % t == n - 1)
                .copied()
                .collect(),
            Subset::Percent(p) => random_share(packs, p),
            Subset::Size(bytes) => {
                let total: u64 = packs.iter().map(|(_, s)| s).sum();
                if total == 0 {
                    Vec::new()
                } else {
                    let p = (bytes as f64 / total as f64 * 100.0).min(100.0);
                    random_share(packs, p)
                }
            }
        };
        out.sort_unstable();
        out
    }
}

/// restic: `round(count × p / 100)` random packs, at least one.
fn random_share(packs: &[(Id, u64)], p: f64) -> Vec<(Id, u64)> {
    use rand::seq::SliceRandom;
    let mut n = (packs.len() as f64 * p / 100.0).round() as usize;
    if n == 0 && !packs.is_empty() {
        n = 1;
    }
    let mut v = packs.to_vec();
    v.shuffle(&mut rand::thread_rng());
    v.truncate(n);
    v
}

/// What to check beyond the structure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckOptions {
    /// Read every pack and verify every blob.
    pub read_data: bool,
    /// Read only these packs (implies reading data; overrides `read_data`'s "all").
    pub read_data_subset: Option<Subset>,
}

/// The kinds of problems `check` finds. Hints ([`ProblemKind::is_error`]
/// false) do not make a check fail, as in restic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An index file cannot be read, decrypted or parsed.
    IndexUnreadable,
    /// The index lists a pack the backend does not have.
    PackMissing,
    /// A pack file no index lists (hint: left by an interrupted backup; `prune` removes it).
    PackNotInIndex,
    /// A pack listed by more than one index file (hint).
    PackInSeveralIndexes,
    /// The pack's size differs from what its index entries imply (e.g. truncated).
    PackSizeMismatch,
    /// The pack's header cannot be read, decrypted or parsed.
    PackHeaderUnreadable,
    /// The index lists a blob at a place the pack header does not.
    BlobNotInPackHeader,
    /// The pack header lists a blob the index does not (for this pack).
    BlobNotInIndex,
    /// A snapshot file cannot be read, decrypted or parsed.
    SnapshotUnreadable,
    /// A tree referenced by a snapshot or a parent tree is not in the index.
    TreeMissing,
    /// A tree blob cannot be loaded or is not a valid tree.
    TreeUndecodable,
    /// A data blob referenced by a file is not in the index.
    BlobMissing,
    /// Reading the pack failed (read-data).
    PackUnreadable,
    /// The pack's content does not hash to its name (read-data).
    PackHashMismatch,
    /// A blob does not decrypt, decompress, or hash to its id (read-data).
    BlobCorrupted,
}

impl ProblemKind {
    /// False for hints, which do not fail the check.
    pub fn is_error(self) -> bool {
        !matches!(
            self,
            ProblemKind::PackNotInIndex | ProblemKind::PackInSeveralIndexes
        )
    }

    /// The snake_case name (as serialized), for status fields and metrics labels.
    pub fn as_str(self) -> &'static str {
        use ProblemKind::*;
        match self {
            IndexUnreadable => "index_unreadable",
            PackMissing => "pack_missing",
            PackNotInIndex => "pack_not_in_index",
            PackInSeveralIndexes => "pack_in_several_indexes",
            PackSizeMismatch => "pack_size_mismatch",
            PackHeaderUnreadable => "pack_header_unreadable",
            BlobNotInPackHeader => "blob_not_in_pack_header",
            BlobNotInIndex => "blob_not_in_index",
            SnapshotUnreadable => "snapshot_unreadable",
            TreeMissing => "tree_missing",
            TreeUndecodable => "tree_undecodable",
            BlobMissing => "blob_missing",
            PackUnreadable => "pack_unreadable",
            PackHashMismatch => "pack_hash_mismatch",
            BlobCorrupted => "blob_corrupted",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem, naming the repository file it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The file, relative to the repository root: `data/ab/ab12…` for a
    /// pack, `index/…`, `snapshots/…`.
    pub file: String,
    /// The blob concerned (a tree for tree problems), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<Id>,
    /// The snapshot whose trees led here, for tree and blob problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Id>,
    /// The path inside that snapshot (`/dir/file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl Problem {
    fn new(kind: ProblemKind, file: String, message: impl Into<String>) -> Problem {
        Problem {
            kind,
            file,
            blob: None,
            snapshot: None,
            path: None,
            message: message.into(),
        }
    }

    fn blob(mut self, id: Id) -> Problem {
        self.blob = Some(id);
        self
    }

    fn at(mut self, snapshot: Id, path: &str) -> Problem {
        self.snapshot = Some(snapshot);
        self.path = Some(path.to_string());
        self
    }

    pub fn is_error(&self) -> bool {
        self.kind.is_error()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.is_error() { "error" } else { "hint" };
        write!(f, "{level}: {}: {}", self.file, self.message)?;
        if let (Some(s), Some(p)) = (&self.snapshot, &self.path) {
            write!(f, " (snapshot {}, path {p})", s.short())?;
        }
        Ok(())
    }
}

/// What was looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckStats {
    pub index_files: u64,
    /// Pack files in the backend.
    pub packs: u64,
    /// Packs listed in the index.
    pub indexed_packs: u64,
    pub snapshots: u64,
    /// Distinct trees walked.
    pub trees: u64,
    /// Data blob references checked (a blob shared by two files counts twice).
    pub data_blob_refs: u64,
    /// Packs read in full (read-data).
    pub packs_read: u64,
    pub bytes_read: u64,
    /// Blobs decrypted and verified (read-data).
    pub blobs_verified: u64,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Errors and hints, errors first, each group sorted by file.
    pub problems: Vec<Problem>,
    pub stats: CheckStats,
}

impl CheckReport {
    /// The problems that make the check fail.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }

    /// No errors (hints allowed).
    pub fn is_ok(&self) -> bool {
        self.errors().next().is_none()
    }
}

/// Checks `repo` (holding a shared lock meanwhile). `Err` only when the
/// check itself cannot run (lock refused, backend listing failed); damage is
/// reported in the [`CheckReport`]. `progress` counts packs as files and,
/// with read-data, pack bytes as bytes.
pub fn check(repo: &Repository, opts: &CheckOptions, progress: &Progress) -> Result<CheckReport> {
    let _lock = repo.lock(false)?;
    let mut c = Checker {
        repo,
        problems: Mutex::new(Vec::new()),
        stats: CheckStats::default(),
        workers: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8),
    };
    let backend_packs: HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)?
        .into_iter()
        .filter_map(|(n, s)| n.parse::<Id>().ok().map(|id| (id, s)))
        .collect();
    c.stats.packs = backend_packs.len() as u64;
    let (index_names, indexed) = c.load_index()?;
    c.stats.indexed_packs = indexed.len() as u64;

    // Packs: present vs indexed, sizes.
    let mut to_header = Vec::new();
    let mut present = Vec::new();
    for (id, info) in &indexed {
        let file = pack_file(id);
        let Some(&size) = backend_packs.get(id) else {
            c.push(Problem::new(
                ProblemKind::PackMissing,
                file,
                format!(
                    "pack listed in {} does not exist",
                    index_file(&index_names[info.index as usize])
                ),
            ));
            continue;
        };
        if size != info.expected_size {
            c.push(Problem::new(
                ProblemKind::PackSizeMismatch,
                file,
                format!(
                    "pack is {size} bytes but its index entries imply {} bytes (truncated or damaged)",
                    info.expected_size
                ),
            ));
        }
        present.push((*id, size));
    }
    for id in backend_packs.keys() {
        if !indexed.contains_key(id) {
            c.push(Problem::new(
                ProblemKind::PackNotInIndex,
                pack_file(id),
                "pack is not referenced by any index (left by an interrupted backup; `prune` removes it)",
            ));
        }
    }
    present.sort_unstable();
    let read: Vec<(Id, u64)> = match (&opts.read_data_subset, opts.read_data) {
        (Some(s), _) => s.select(&present),
        (None, true) => present.clone(),
        (None, false) => Vec::new(),
    };
    let read_set: HashSet<Id> = read.iter().map(|(id, _)| *id).collect();
    for (id, size) in &present {
        if !read_set.contains(id) {
            to_header.push((*id, *size));
        }
    }
    progress.add_files_total((to_header.len() + read.len()) as u64);
    progress.add_bytes_total(read.iter().map(|(_, s)| s).sum());
    progress.set_totals_known();

    // Pack headers against the index.
    let ctx = (&c, &indexed, &index_names);
    parallel(c.workers, to_header, |(id, size)| {
        ctx.0.check_header(&id, size, ctx.1, ctx.2);
        progress.add_files_done(1);
    });

    let (snapshots, trees, refs) = c.walk_snapshots();

    // Data.
    let bytes_read = AtomicU64::new(0);
    let blobs = AtomicU64::new(0);
    let n_read = read.len() as u64;
    parallel(c.workers, read, |(id, size)| {
        let n = ctx.0.read_pack(&id, size, ctx.1, ctx.2);
        blobs.fetch_add(n, Relaxed);
        bytes_read.fetch_add(size, Relaxed);
        progress.add_bytes_done(size);
        progress.add_bytes_read(size);
        progress.add_files_done(1);
    });
    c.stats.snapshots = snapshots;
    c.stats.trees = trees;
    c.stats.data_blob_refs = refs;
    c.stats.packs_read = n_read;
    c.stats.bytes_read = bytes_read.into_inner();
    c.stats.blobs_verified = blobs.into_inner();
    progress.add_errors(c.problems().iter().filter(|p| p.is_error()).count() as u64);
    progress.finish(None);

    let mut problems = c.problems.into_inner().unwrap_or_else(|e| e.into_inner());
    problems.sort_by(|a, b| {
        (!a.is_error(), &a.file, a.kind, &a.path, a.blob).cmp(&(
            !b.is_error(),
            &b.file,
            b.kind,
            &b.path,
            b.blob,
        ))
    });
    problems.dedup();
    Ok(CheckReport {
        problems,
        stats: c.stats,
    })
}

fn pack_file(id: &Id) -> String {
    FileType::Pack.rel_path(&id.to_hex())
}

fn index_file(id: &Id) -> String {
    FileType::Index.rel_path(&id.to_hex())
}

/// An indexed pack, compactly: which index file listed it first, a digest of
/// its entries, and the size they imply.
#[derive(Debug, Clone, Copy)]
struct PackInfo {
    index: u32,
    digest: Id,
    expected_size: u64,
}

/// Canonical form of one blob entry, from the index or a pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Entry {
    offset: u32,
    length: u32,
    blob_type: BlobType,
    id: Id,
    ulen: Option<u32>,
}

impl Entry {
    fn from_index(b: &IndexBlob) -> Entry {
        Entry {
            offset: b.offset,
            length: b.length,
            blob_type: b.blob_type,
            id: b.id,
            ulen: b.uncompressed_length,
        }
    }

    fn from_header(b: &PackedBlob) -> Entry {
        Entry {
            offset: b.offset,
            length: b.length,
            blob_type: b.blob_type,
            id: b.id,
            ulen: b.uncompressed_length,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} blob {} at offset {}, length {}",
            self.blob_type, self.id, self.offset, self.length
        )
    }
}

fn digest(mut entries: Vec<Entry>) -> Id {
    entries.sort_unstable();
    let mut buf = Vec::with_capacity(entries.len() * 46);
    for e in &entries {
        buf.extend_from_slice(&e.offset.to_le_bytes());
        buf.extend_from_slice(&e.length.to_le_bytes());
        buf.push(match e.blob_type {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        });
        buf.extend_from_slice(&e.id.0);
        match e.ulen {
            Some(u) => {
                buf.push(1);
                buf.extend_from_slice(&u.to_le_bytes());
            }
            None => buf.push(0),
        }
    }
    Id::hash(&buf)
}

/// Runs `f` on every item with `workers` threads.
fn parallel<T: Send>(workers: usize, items: Vec<T>, f: impl Fn(T) + Sync) {
    let next = Mutex::new(items.into_iter());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let Some(item) = relock(&next).next() else {
                        return;
                    };
                    f(item);
                }
            });
        }
    });
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Checker<'a> {
    repo: &'a Repository,
    problems: Mutex<Vec<Problem>>,
    stats: CheckStats,
    workers: usize,
}

/// One tree to visit, and how the walk got there.
struct Job {
    tree: Id,
    path: String,
    snapshot: Id,
}

impl Checker<'_> {
    fn push(&self, p: Problem) {
        relock(&self.problems).push(p);
    }

    fn problems(&self) -> MutexGuard<'_, Vec<Problem>> {
        relock(&self.problems)
    }

    fn load_index_file(&self, id: &Id) -> Result<crate::index::IndexFile> {
        let json = self.repo.load_unpacked(FileType::Index, id)?;
        parse_index(&json, &index_file(id))
    }

    /// Reads every index file; returns their names and the indexed packs.
    #[allow(clippy::type_complexity)]
    fn load_index(&mut self) -> Result<(Vec<Id>, HashMap<Id, PackInfo>)> {
        let mut names: Vec<Id> = Vec::new();
        for (n, _) in self.repo.backend().list(FileType::Index)? {
            match n.parse::<Id>() {
                Ok(id) => names.push(id),
                Err(_) => self.push(Problem::new(
                    ProblemKind::IndexUnreadable,
                    FileType::Index.rel_path(&n),
                    "index file name is not an id",
                )),
            }
        }
        names.sort_unstable();
        self.stats.index_files = names.len() as u64;
        type Summary = (u32, Vec<Id>, Vec<(Id, Id, u64)>);
        let (tx, rx) = mpsc::sync_channel::<Summary>(self.workers * 2);
        let items: Vec<(u32, Id)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32, *n))
            .collect();
        let this = &*self;
        let mut files: Vec<Summary> = std::thread::scope(|s| {
            s.spawn(move || {
                parallel(this.workers, items, |(i, id)| {
                    match this.load_index_file(&id) {
                        Ok(f) => {
                            let packs = f
                                .packs
                                .iter()
                                .map(|p| {
                                    let entries: Vec<Entry> =
                                        p.blobs.iter().map(Entry::from_index).collect();
                                    let size = pack::expected_pack_size(
                                        entries.iter().map(|e| (e.length, e.ulen.is_some())),
                                    );
                                    (p.id, digest(entries), size)
                                })
                                .collect();
                            let _ = tx.send((i, f.supersedes, packs));
                        }
                        Err(e) => this.push(Problem::new(
                            ProblemKind::IndexUnreadable,
                            index_file(&id),
                            e.to_string(),
                        )),
                    }
                });
            });
            rx.iter().collect()
        });
        files.sort_unstable_by_key(|f| f.0);
        let superseded: HashSet<Id> = files.iter().flat_map(|f| f.1.iter().copied()).collect();
        let mut packs: HashMap<Id, PackInfo> = HashMap::new();
        for (i, _, list) in files {
            if superseded.contains(&names[i as usize]) {
                continue;
            }
            for (id, digest, expected_size) in list {
                if let Some(first) = packs.get(&id) {
                    let agree = if first.digest == digest {
                        "with the same entries"
                    } else {
                        "with different entries"
                    };
                    self.push(Problem::new(
                        ProblemKind::PackInSeveralIndexes,
                        pack_file(&id),
                        format!(
                            "pack is listed by {} and {} {agree}",
                            index_file(&names[first.index as usize]),
                            index_file(&names[i as usize])
                        ),
                    ));
                    continue;
                }
                packs.insert(
                    id,
                    PackInfo {
                        index: i,
                        digest,
                        expected_size,
                    },
                );
            }
        }
        Ok((names, packs))
    }

    /// Reads and decrypts a pack's header from its end (two range reads).
    fn read_header(&self, id: &Id, size: u64) -> Result<Vec<PackedBlob>> {
        let file = pack_file(id);
        let name = id.to_hex();
        let be = self.repo.backend();
        let trailer = be.read_range(FileType::Pack, &name, size.saturating_sub(4), 4.min(size))?;
        let (start, len) = pack::header_location(size, &trailer, &file)?;
        let enc = be.read_range(FileType::Pack, &name, start, len)?;
        let plain = self
            .repo
            .key()
            .decrypt(&enc)
            .map_err(|_| Error::MacMismatch {
                file: format!("{file} (pack header)"),
            })?;
        pack::parse_header(&plain, start, &file)
    }

    /// Reads a pack's header and compares it with the index.
    fn check_header(&self, id: &Id, size: u64, indexed: &HashMap<Id, PackInfo>, names: &[Id]) {
        match self.read_header(id, size) {
            Ok(h) => self.compare_header(id, &h, indexed, names),
            Err(e) => self.push(Problem::new(
                ProblemKind::PackHeaderUnreadable,
                pack_file(id),
                e.to_string(),
            )),
        }
    }

    /// The index's entries for `pack` (re-reading its index file).
    fn index_entries(&self, pack: &Id, info: &PackInfo, names: &[Id]) -> Option<Vec<Entry>> {
        let f = self.load_index_file(&names[info.index as usize]).ok()?;
        let p = f.packs.iter().find(|p| p.id == *pack)?;
        Some(p.blobs.iter().map(Entry::from_index).collect())
    }

    fn compare_header(
        &self,
        id: &Id,
        header: &[PackedBlob],
        indexed: &HashMap<Id, PackInfo>,
        names: &[Id],
    ) {
        let Some(info) = indexed.get(id) else { return };
        let hentries: Vec<Entry> = header.iter().map(Entry::from_header).collect();
        if digest(hentries.clone()) == info.digest {
            return;
        }
        let file = pack_file(id);
        let ifile = index_file(&names[info.index as usize]);
        let Some(ientries) = self.index_entries(id, info, names) else {
            self.push(Problem::new(
                ProblemKind::BlobNotInPackHeader,
                file,
                format!("pack header differs from {ifile}, which can no longer be read"),
            ));
            return;
        };
        let hset: HashSet<Entry> = hentries.iter().copied().collect();
        let iset: HashSet<Entry> = ientries.iter().copied().collect();
        for e in ientries.iter().filter(|e| !hset.contains(e)) {
            self.push(
                Problem::new(
                    ProblemKind::BlobNotInPackHeader,
                    file.clone(),
                    format!(
                        "{ifile} lists {}, but the pack header does not",
                        e.describe()
                    ),
                )
                .blob(e.id),
            );
        }
        for e in hentries.iter().filter(|e| !iset.contains(e)) {
            self.push(
                Problem::new(
                    ProblemKind::BlobNotInIndex,
                    file.clone(),
                    format!("pack header lists {}, but {ifile} does not", e.describe()),
                )
                .blob(e.id),
            );
        }
    }

    /// Streams a whole pack and verifies it; returns the blobs verified.
    /// The header comes first (it says where the blobs are), then the pack
    /// is read front to back in [`READ_WINDOW`] pieces, hashed as it goes,
    /// and each blob is verified as soon as its last byte has arrived: a
    /// worker holds one window plus at most one blob, never the whole pack.
    fn read_pack(&self, id: &Id, size: u64, indexed: &HashMap<Id, PackInfo>, names: &[Id]) -> u64 {
        let file = pack_file(id);
        let mut entries: Vec<Entry> = match self.read_header(id, size) {
            Ok(h) => {
                self.compare_header(id, &h, indexed, names);
                h.iter().map(Entry::from_header).collect()
            }
            Err(e) => {
                self.push(Problem::new(
                    ProblemKind::PackHeaderUnreadable,
                    file.clone(),
                    e.to_string(),
                ));
                // Still verify the blobs where the index says they are.
                match indexed.get(id) {
                    Some(info) => self.index_entries(id, info, names).unwrap_or_default(),
                    None => Vec::new(),
                }
            }
        };
        entries.sort_unstable();
        let name = id.to_hex();
        let mut hasher = Sha256::new();
        // `buf` holds the pack's bytes from offset `buf_at` up to `read`.
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_at = 0u64;
        let mut read = 0u64;
        let mut next = 0usize;
        let mut verified = 0;
        while read < size {
            let n = READ_WINDOW.min(size - read);
            match self
                .repo
                .backend()
                .read_range(FileType::Pack, &name, read, n)
            {
                Ok(d) => {
                    hasher.update(&d);
                    buf.extend_from_slice(&d);
                }
                Err(e) => {
                    self.push(Problem::new(
                        ProblemKind::PackUnreadable,
                        file,
                        e.to_string(),
                    ));
                    return verified;
                }
            }
            read += n;
            while let Some(e) = entries.get(next) {
                let (start, end) = (
                    u64::from(e.offset),
                    u64::from(e.offset) + u64::from(e.length),
                );
                if end > read {
                    break;
                }
                next += 1;
                if start < buf_at {
                    self.push(
                        Problem::new(
                            ProblemKind::BlobCorrupted,
                            file.clone(),
                            format!("{} overlaps the blob before it", e.describe()),
                        )
                        .blob(e.id),
                    );
                    continue;
                }
                let raw = &buf[(start - buf_at) as usize..(end - buf_at) as usize];
                match blob::decode(self.repo.key(), &e.id, raw, e.ulen, &file) {
                    Ok(_) => verified += 1,
                    Err(err) => self.push(
                        Problem::new(ProblemKind::BlobCorrupted, file.clone(), err.to_string())
                            .blob(e.id),
                    ),
                }
            }
            // Bytes before the next blob (verified blobs, the header) are not
            // needed again; dropped once per window, not once per blob.
            let keep_from = entries
                .get(next)
                .map_or(read, |e| u64::from(e.offset).min(read))
                .max(buf_at);
            buf.drain(..(keep_from - buf_at) as usize);
            buf_at = keep_from;
        }
        for e in &entries[next..] {
            self.push(
                Problem::new(
                    ProblemKind::BlobCorrupted,
                    file.clone(),
                    format!("{} lies beyond the end of the pack", e.describe()),
                )
                .blob(e.id),
            );
        }
        let actual = Id(hasher.finalize().into());
        if actual != *id {
            self.push(Problem::new(
                ProblemKind::PackHashMismatch,
                file,
                format!("pack content hashes to {actual}, not to its name (modified or damaged)"),
            ));
        }
        verified
    }

    /// Loads every snapshot and walks its trees; returns (snapshots, trees,
    /// data blob references).
    fn walk_snapshots(&self) -> (u64, u64, u64) {
        let names = match self.repo.backend().list(FileType::Snapshot) {
            Ok(n) => n,
            Err(e) => {
                self.push(Problem::new(
                    ProblemKind::SnapshotUnreadable,
                    "snapshots".into(),
                    format!("listing snapshots: {e}"),
                ));
                return (0, 0, 0);
            }
        };
        let n = names.len() as u64;
        let roots = Mutex::new(Vec::new());
        parallel(self.workers, names, |(name, _)| {
            let file = FileType::Snapshot.rel_path(&name);
            let r = name.parse::<Id>().and_then(|id| {
                let json = self.repo.load_unpacked(FileType::Snapshot, &id)?;
                let s: Snapshot = serde_json::from_slice(&json)
                    .map_err(|e| Error::corrupted(file.clone(), format!("JSON: {e}")))?;
                Ok((id, s.tree))
            });
            match r {
                Ok(root) => relock(&roots).push(root),
                Err(e) => self.push(Problem::new(
                    ProblemKind::SnapshotUnreadable,
                    file,
                    e.to_string(),
                )),
            }
        });
        let mut roots = roots.into_inner().unwrap_or_else(|e| e.into_inner());
        roots.sort_unstable();
        let (trees, refs) = self.walk_trees(roots);
        (n, trees, refs)
    }

    /// Visits every tree reachable from `roots` once, with `workers` threads
    /// sharing a stack of trees to visit; returns (trees, data blob refs).
    fn walk_trees(&self, roots: Vec<(Id, Id)>) -> (u64, u64) {
        struct Shared {
            stack: Vec<Job>,
            busy: usize,
            seen: HashSet<Id>,
            missing_reported: HashSet<Id>,
        }
        let mut seen = HashSet::new();
        let mut stack = Vec::new();
        for (snap, tree) in roots.into_iter().rev() {
            if seen.insert(tree) {
                stack.push(Job {
                    tree,
                    path: "/".into(),
                    snapshot: snap,
                });
            }
        }
        let shared = Mutex::new(Shared {
            stack,
            busy: 0,
            seen,
            missing_reported: HashSet::new(),
        });
        let cv = Condvar::new();
        let trees = AtomicU64::new(0);
        let refs = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..self.workers {
                s.spawn(|| {
                    loop {
                        let job = {
                            let mut g = relock(&shared);
                            loop {
                                if let Some(j) = g.stack.pop() {
                                    g.busy += 1;
                                    break Some(j);
                                }
                                if g.busy == 0 {
                                    break None;
                                }
                                g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                            }
                        };
                        let Some(job) = job else {
                            cv.notify_all();
                            return;
                        };
                        trees.fetch_add(1, Relaxed);
                        let (children, missing, nrefs) = self.visit_tree(&job);
                        refs.fetch_add(nrefs, Relaxed);
                        let mut g = relock(&shared);
                        for (blob, p) in missing {
                            if g.missing_reported.insert(blob) {
                                self.push(p);
                            }
                        }
                        for c in children {
                            if g.seen.insert(c.tree) {
                                g.stack.push(c);
                            }
                        }
                        g.busy -= 1;
                        drop(g);
                        cv.notify_all();
                    }
                });
            }
        });
        (trees.into_inner(), refs.into_inner())
    }

    /// Loads one tree and checks its nodes; returns its subtrees, the data
    /// blobs found missing (reported once each by the caller) and the
    /// number of data blob references.
    fn visit_tree(&self, job: &Job) -> (Vec<Job>, Vec<(Id, Problem)>, u64) {
        let snap_file = FileType::Snapshot.rel_path(&job.snapshot.to_hex());
        let Some(loc) = self.repo.lookup(BlobType::Tree, &job.tree) else {
            self.push(
                Problem::new(
                    ProblemKind::TreeMissing,
                    snap_file,
                    format!("tree {} is not in the index", job.tree),
                )
                .blob(job.tree)
                .at(job.snapshot, &job.path),
            );
            return (Vec::new(), Vec::new(), 0);
        };
        let tree = self
            .repo
            .load_blob(BlobType::Tree, &job.tree)
            .and_then(|b| {
                Tree::from_json(&b)
                    .map_err(|e| Error::corrupted(pack_file(&loc.pack), e.to_string()))
            });
        let tree = match tree {
            Ok(t) => t,
            Err(e) => {
                self.push(
                    Problem::new(
                        ProblemKind::TreeUndecodable,
                        pack_file(&loc.pack),
                        format!("tree {}: {e}", job.tree),
                    )
                    .blob(job.tree)
                    .at(job.snapshot, &job.path),
                );
                return (Vec::new(), Vec::new(), 0);
            }
        };
        let mut children = Vec::new();
        let mut missing = Vec::new();
        let mut refs = 0u64;
        for node in &tree.nodes {
            let name = String::from_utf8_lossy(&node.name);
            let path = if job.path.ends_with('/') {
                format!("{}{name}", job.path)
            } else {
                format!("{}/{name}", job.path)
            };
            match node.node_type {
                NodeType::Dir => match node.subtree {
                    Some(t) => children.push(Job {
                        tree: t,
                        path,
                        snapshot: job.snapshot,
                    }),
                    None => self.push(
                        Problem::new(
                            ProblemKind::TreeUndecodable,
                            pack_file(&loc.pack),
                            format!("tree {}: directory {path} has no subtree", job.tree),
                        )
                        .blob(job.tree)
                        .at(job.snapshot, &path),
                    ),
                },
                NodeType::File => {
                    for (i, b) in node.content.iter().flatten().enumerate() {
                        refs += 1;
                        if !self.repo.has_blob(BlobType::Data, b) {
                            missing.push((
                                *b,
                                Problem::new(
                                    ProblemKind::BlobMissing,
                                    snap_file.clone(),
                                    format!(
                                        "file {path}: data blob {b} (part {}) is not in the index",
                                        i + 1
                                    ),
                                )
                                .blob(*b)
                                .at(job.snapshot, &path),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        (children, missing, refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_spellings() {
        assert_eq!(
            "1/5".parse::<Subset>().unwrap(),
            Subset::Bucket { n: 1, t: 5 }
        );
        assert_eq!(
            "256/256".parse::<Subset>().unwrap(),
            Subset::Bucket { n: 256, t: 256 }
        );
        assert_eq!("10%".parse::<Subset>().unwrap(), Subset::Percent(10.0));
        assert_eq!("2.5%".parse::<Subset>().unwrap(), Subset::Percent(2.5));
        assert_eq!("500M".parse::<Subset>().unwrap(), Subset::Size(500 << 20));
        assert_eq!("3g".parse::<Subset>().unwrap(), Subset::Size(3 << 30));
        assert_eq!("1024".parse::<Subset>().unwrap(), Subset::Size(1024));
        assert_eq!("7k".parse::<Subset>().unwrap(), Subset::Size(7 << 10));
        for bad in [
            "0/5", "6/5", "1/0", "1/257", "0%", "101%", "x%", "nan%", "", "M", "0", "-1", "1/2/3",
            "5Q",
        ] {
            let e = bad.parse::<Subset>().unwrap_err();
            assert!(e.to_string().contains("n/t"), "{bad}: {e}");
        }
    }

    fn packs(n: u8) -> Vec<(Id, u64)> {
        (0..n).map(|i| (Id([i; 32]), 100)).collect()
    }

    #[test]
    fn buckets_partition_the_packs() {
        let all = packs(200);
        for t in [1u32, 2, 3, 7, 256] {
            let mut seen: Vec<(Id, u64)> = (1..=t)
                .flat_map(|n| Subset::Bucket { n, t }.select(&all))
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, all, "t = {t}");
        }
    }

    #[test]
    fn percent_and_size_pick_restic_counts() {
        let all = packs(10);
        assert_eq!(Subset::Percent(50.0).select(&all).len(), 5);
        assert_eq!(Subset::Percent(0.1).select(&all).len(), 1, "at least one");
        assert_eq!(Subset::Percent(100.0).select(&all), all);
        assert_eq!(Subset::Size(300).select(&all).len(), 3);
        assert_eq!(Subset::Size(1 << 40).select(&all).len(), 10);
        assert!(Subset::Percent(50.0).select(&[]).is_empty());
        let s = Subset::Percent(30.0).select(&all);
        let uniq: HashSet<Id> = s.iter().map(|p| p.0).collect();
        assert_eq!(uniq.len(), 3, "no pack twice");
    }

    #[test]
    fn problem_display_and_hints() {
        let p = Problem::new(ProblemKind::BlobMissing, "snapshots/ab".into(), "gone")
            .at(Id([1; 32]), "/a/b");
        assert_eq!(
            p.to_string(),
            "error: snapshots/ab: gone (snapshot 01010101, path /a/b)"
        );
        assert!(!ProblemKind::PackNotInIndex.is_error());
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["kind"], "blob_missing");
        assert_eq!(j["path"], "/a/b");
    }

    /// Blobs that straddle read windows and many tiny ones in one pack: all
    /// verified; damage after the first window is pinned to its blob.
    #[test]
    fn streamed_read_crosses_windows() {
        use crate::backend::MemoryBackend;
        use std::sync::Arc;
        let be = Arc::new(MemoryBackend::new());
        let repo = Repository::init(
            be.clone(),
            "pw",
            crate::InitOptions {
                kdf: crate::KdfParams::insecure_fast(),
                chunker_polynomial: None,
            },
        )
        .unwrap()
        .with_compression(None);
        let mut x = 7u64;
        let mut ids = Vec::new();
        for i in 0..2000usize {
            let len = if i % 250 == 0 { 1_500_000 } else { 40 };
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let id = Id::hash(&b);
            repo.save_blob(BlobType::Data, id, &b).unwrap();
            ids.push(id);
        }
        repo.flush().unwrap();
        let all = CheckOptions {
            read_data: true,
            read_data_subset: None,
        };
        let r = check(&repo, &all, &Progress::new()).unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert_eq!(r.stats.blobs_verified, 2000);
        let victim = ids[1500];
        let loc = repo.lookup(BlobType::Data, &victim).unwrap();
        assert!(
            loc.offset > READ_WINDOW,
            "the blob is past the first window"
        );
        be.corrupt(FileType::Pack, &loc.pack.to_hex(), |d| {
            d[loc.offset as usize + 700_000] ^= 4
        });
        let r = check(&repo, &all, &Progress::new()).unwrap();
        let kinds: Vec<(ProblemKind, Option<Id>)> =
            r.problems.iter().map(|p| (p.kind, p.blob)).collect();
        assert_eq!(
            kinds,
            vec![
                (ProblemKind::PackHashMismatch, None),
                (ProblemKind::BlobCorrupted, Some(victim)),
            ]
        );
        assert_eq!(r.stats.blobs_verified, 1999);
    }
}
