//! Restore of a snapshot (or chosen paths of it) into a target directory.
//!
//! Data flow: the walker thread reads tree blobs depth-first and creates
//! every entry relative to an open directory fd (see [`crate::fs`]: names
//! from the snapshot are checked to be single safe components, existing
//! symlinks and files in the target are unlinked, never followed or written
//! through). Regular files are created empty by the walker and handed, open,
//! in batches of up to 16 files over a bounded channel to writer threads,
//! which load their data blobs one at a time (`lookup` → `read_pack_range` →
//! `decode_blob`), write them (or seek over all-zero blobs to leave holes),
//! then set owner, mode, xattrs and times on the fd. Memory is bounded by
//! `2 × workers + 1` batches of open files plus one read (≤ 8 MiB) and one
//! decoded blob per writer, whatever the repository's size. Directory
//! metadata is set after all of its entries exist, so creating them does not
//! disturb the restored directory times.

use std::collections::HashMap;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use crate::backup::{CancelToken, FileError};
use crate::blob::BlobType;
use crate::fs::{Dir, Special};
use crate::id::Id;
use crate::priority::Priority;
use crate::progress::{Progress, ProgressSnapshot};
use crate::repository::Repository;
use crate::tree::{Node, NodeType, Tree, perm_bits_from_go_mode};

/// What to restore and how.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Snapshot paths to restore (e.g. `/data/db`); empty = everything.
    pub include: Vec<String>,
    /// Allow a non-empty target; existing entries with restored names are replaced.
    pub overwrite: bool,
    pub cancel: CancelToken,
    pub progress: Progress,
    /// Leave holes for all-zero blobs.
    pub sparse: bool,
    pub priority: Priority,
    /// Writer threads; 0 = two per CPU (at least 4, at most 16).
    pub threads: usize,
}

#[derive(Debug, Clone)]
pub struct RestoreSummary {
    /// Entries that could not be restored, with the reason.
    pub errors: Vec<FileError>,
    pub stats: ProgressSnapshot,
}

impl RestoreSummary {
    pub fn is_incomplete(&self) -> bool {
        !self.errors.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Repository(#[from] crate::error::Error),
    #[error("target directory {path}: {source}")]
    Target {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "target directory {0} is not empty; restore into an empty directory or allow overwriting"
    )]
    TargetNotEmpty(String),
    #[error(transparent)]
    Priority(#[from] crate::priority::PriorityError),
    #[error("restore cancelled; the target directory holds a partial restore")]
    Cancelled,
}

struct FileJob {
    file: std::fs::File,
    node: Node,
    path: String,
}

/// Files per message to the writers, and the content bytes after which a
/// batch goes out early: one channel hand-off (and at most one writer
/// wake-up) per batch instead of per file, which for small files cost more
/// CPU in futex wake-ups and context switches than their data. A batch
/// holds its files open, so queued batches × files bounds the open fds.
const BATCH_FILES: usize = 16;
const BATCH_BYTES: u64 = 1024 * 1024;

/// The walker's batch of created files waiting for a writer.
struct Batch<'a> {
    tx: &'a SyncSender<Vec<FileJob>>,
    jobs: Vec<FileJob>,
    bytes: u64,
}

impl Batch<'_> {
    fn push(&mut self, job: FileJob) -> Result<(), NodeErr> {
        self.bytes += job.node.size;
        self.jobs.push(job);
        if self.jobs.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES {
            self.flush()
                .map_err(|_| NodeErr::Fatal(RestoreError::Cancelled))?;
        }
        Ok(())
    }

    /// Hands the batch over; fails only when every writer is gone.
    fn flush(&mut self) -> Result<(), ()> {
        self.bytes = 0;
        if self.jobs.is_empty() {
            return Ok(());
        }
        let jobs = std::mem::replace(&mut self.jobs, Vec::with_capacity(BATCH_FILES));
        self.tx.send(jobs).map_err(|_| ())
    }
}

/// Directory and name of the first restored path of a hard-linked inode.
type LinkSource = (Arc<Dir>, Vec<u8>);

struct Ctx<'a> {
    repo: &'a Repository,
    opts: &'a RestoreOptions,
    errors: Mutex<Vec<FileError>>,
    as_root: bool,
    /// (device, inode) of hard-linked files already restored → where.
    links: Mutex<HashMap<(u64, u64), LinkSource>>,
    include: Vec<Vec<Vec<u8>>>,
}

impl Ctx<'_> {
    fn report(&self, path: &str, reason: impl std::fmt::Display) {
        self.opts.progress.add_errors(1);
        tracing::warn!(path, reason = %reason, "not restored");
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(FileError {
                path: path.to_string(),
                reason: reason.to_string(),
            });
    }

    /// Whether a node at `components` is wanted: on, under, or above an
    /// include path.
    fn wanted(&self, components: &[Vec<u8>]) -> bool {
        self.include.is_empty()
            || self.include.iter().any(|inc| {
                let n = inc.len().min(components.len());
                inc[..n] == components[..n]
            })
    }
}

/// Restore snapshot `snapshot_id` into `target`.
pub fn restore(
    repo: &Repository,
    snapshot_id: &Id,
    target: &Path,
    opts: RestoreOptions,
) -> Result<RestoreSummary, RestoreError> {
    opts.priority.validate()?;
    let terr = |e: io::Error| RestoreError::Target {
        path: target.display().to_string(),
        source: e,
    };
    let snap = repo
        .snapshots()?
        .into_iter()
        .find(|(id, _)| id == snapshot_id)
        .map(|(_, s)| s)
        .ok_or(crate::error::Error::SnapshotNotFound {
            query: snapshot_id.to_hex(),
        })?;
    std::fs::create_dir_all(target).map_err(terr)?;
    let root = Dir::open_root(target).map_err(terr)?;
    if !opts.overwrite && !root.is_empty().map_err(terr)? {
        return Err(RestoreError::TargetNotEmpty(target.display().to_string()));
    }
    let _lock = repo.lock(false)?;
    let ctx = Ctx {
        repo,
        opts: &opts,
        errors: Mutex::new(Vec::new()),
        as_root: rustix::process::geteuid().is_root(),
        links: Mutex::new(HashMap::new()),
        include: opts
            .include
            .iter()
            .map(|p| {
                p.split('/')
                    .filter(|c| !c.is_empty())
                    .map(|c| c.as_bytes().to_vec())
                    .collect()
            })
            .collect(),
    };
    let workers = if opts.threads == 0 {
        // Writing small files is syscall-bound (create, write, chown,
        // chmod, utimens, close per file), and on real disks those block:
        // twice the CPUs keeps the cores busy while some writers wait
        // (restic runs 8 restore workers). Memory: each writer holds at
        // most one read of MAX_READ bytes plus one decoded blob.
        std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(4)
            .clamp(4, 16)
    } else {
        opts.threads
    };
    let (tx, rx) = sync_channel::<Vec<FileJob>>(workers);
    let rx = Mutex::new(rx);
    let root = Arc::new(root);
    let result = std::thread::scope(|s| {
        let ctx = &ctx;
        let rx = &rx;
        let mut handles = Vec::new();
        for i in 0..workers {
            let h = std::thread::Builder::new()
                .name(format!("hoard-write-{i}"))
                .spawn_scoped(s, move || writer(ctx, rx))
                .map_err(|e| RestoreError::Target {
                    path: "thread".into(),
                    source: e,
                })?;
            handles.push(h);
        }
        let walker = std::thread::Builder::new()
            .name("hoard-restore-walk".into())
            .spawn_scoped(s, move || -> Result<(), RestoreError> {
                crate::priority::apply_to_current_thread(&ctx.opts.priority)?;
                let mut batch = Batch {
                    tx: &tx,
                    jobs: Vec::with_capacity(BATCH_FILES),
                    bytes: 0,
                };
                let r = restore_tree(ctx, &root, &snap.tree, &mut Vec::new(), &mut batch);
                // Files already created are written even when the walk
                // failed, as they were before batching.
                let _ = batch.flush();
                drop(tx);
                r
            })
            .map_err(|e| RestoreError::Target {
                path: "thread".into(),
                source: e,
            })?;
        let r = walker.join().unwrap_or(Err(RestoreError::Cancelled));
        for h in handles {
            let _ = h.join();
        }
        r
    });
    if result.is_ok() && opts.cancel.is_cancelled() {
        opts.progress.finish(None);
        return Err(RestoreError::Cancelled);
    }
    opts.progress.finish(None);
    result?;
    Ok(RestoreSummary {
        errors: ctx.errors.into_inner().unwrap_or_else(|e| e.into_inner()),
        stats: opts.progress.snapshot(),
    })
}

fn display(components: &[Vec<u8>], name: &[u8]) -> String {
    let mut s = String::new();
    for c in components
        .iter()
        .map(|c| c.as_slice())
        .chain(std::iter::once(name))
    {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    s
}

fn restore_tree(
    ctx: &Ctx<'_>,
    dir: &Arc<Dir>,
    tree_id: &Id,
    comps: &mut Vec<Vec<u8>>,
    tx: &mut Batch<'_>,
) -> Result<(), RestoreError> {
    let raw = ctx.repo.load_blob(BlobType::Tree, tree_id)?;
    let tree = Tree::from_json(&raw).map_err(|e| crate::error::Error::Corrupted {
        file: format!("tree {tree_id}"),
        reason: e.to_string(),
    })?;
    for node in tree.nodes {
        if ctx.opts.cancel.is_cancelled() {
            return Err(RestoreError::Cancelled);
        }
        let path = display(comps, &node.name);
        if !node.has_safe_name() {
            ctx.report(
                &path,
                "unsafe name in snapshot (contains '/', NUL, or is '.'/'..'); skipped",
            );
            continue;
        }
        comps.push(node.name.clone());
        if !ctx.wanted(comps) {
            comps.pop();
            continue;
        }
        let r = restore_node(ctx, dir, &node, comps, &path, tx);
        comps.pop();
        match r {
            Ok(()) => {}
            Err(NodeErr::Fatal(e)) => return Err(e),
            Err(NodeErr::Io(e)) => ctx.report(&path, e),
        }
    }
    Ok(())
}

enum NodeErr {
    Io(io::Error),
    Fatal(RestoreError),
}

impl From<io::Error> for NodeErr {
    fn from(e: io::Error) -> Self {
        NodeErr::Io(e)
    }
}

fn restore_node(
    ctx: &Ctx<'_>,
    dir: &Arc<Dir>,
    node: &Node,
    comps: &mut Vec<Vec<u8>>,
    path: &str,
    tx: &mut Batch<'_>,
) -> Result<(), NodeErr> {
    let p = &ctx.opts.progress;
    let owner = ctx.as_root.then_some((node.uid, node.gid));
    let times = (
        (node.atime.secs, node.atime.nanos),
        (node.mtime.secs, node.mtime.nanos),
    );
    match &node.node_type {
        NodeType::Dir => {
            let sub = Arc::new(dir.create_dir(&node.name)?);
            if let Some(st) = &node.subtree {
                restore_tree(ctx, &sub, st, comps, tx).map_err(NodeErr::Fatal)?;
            }
            for (k, v) in &node.xattrs {
                if let Err(e) = crate::fs::write_xattr(sub.as_fd(), k, v) {
                    ctx.report(path, format!("extended attribute {k}: {e}"));
                }
            }
            crate::fs::set_fd_metadata(
                sub.as_fd(),
                owner,
                perm_bits_from_go_mode(node.mode),
                times.0,
                times.1,
            )?;
            p.add_dirs(1);
        }
        NodeType::File => {
            p.add_files_total(1);
            p.add_bytes_total(node.size);
            if node.links > 1 {
                let key = (node.device_id, node.inode);
                let first = ctx
                    .links
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    .cloned();
                if let Some((src_dir, src_name)) = first {
                    dir.create_hardlink(&src_dir, &src_name, &node.name)?;
                    p.add_files_done(1);
                    p.add_bytes_done(node.size);
                    return Ok(());
                }
                ctx.links
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (Arc::clone(dir), node.name.clone()));
            }
            let file = dir.create_file(&node.name)?;
            tx.push(FileJob {
                file,
                node: node.clone(),
                path: path.to_string(),
            })?;
        }
        NodeType::Symlink => {
            dir.create_symlink(&node.name, &node.link_target)?;
            if let Some((u, g)) = owner {
                dir.chown_entry(&node.name, u, g)?;
            }
            dir.set_times_entry(&node.name, times.0, times.1)?;
        }
        NodeType::Dev | NodeType::Chardev | NodeType::Fifo => {
            let kind = match node.node_type {
                NodeType::Dev => Special::Block,
                NodeType::Chardev => Special::Char,
                _ => Special::Fifo,
            };
            dir.create_special(&node.name, kind, node.device)?;
            if let Some((u, g)) = owner {
                dir.chown_entry(&node.name, u, g)?;
            }
            dir.chmod_special(&node.name, perm_bits_from_go_mode(node.mode))?;
            dir.set_times_entry(&node.name, times.0, times.1)?;
        }
        // restic does not restore sockets either: they only exist while a
        // process listens on them.
        NodeType::Socket => {}
        NodeType::Other(t) => {
            return Err(NodeErr::Io(io::Error::other(format!(
                "unknown node type {t:?}"
            ))));
        }
    }
    Ok(())
}

fn writer(ctx: &Ctx<'_>, rx: &Mutex<Receiver<Vec<FileJob>>>) {
    if let Err(e) = crate::priority::apply_to_current_thread(&ctx.opts.priority) {
        tracing::warn!(error = %e, "could not lower the writer thread's priority");
    }
    loop {
        let jobs = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        for job in jobs {
            if ctx.opts.cancel.is_cancelled() {
                continue;
            }
            write_job(ctx, &job);
        }
    }
}

/// Writes one file's content, then its xattrs, owner, mode and times.
fn write_job(ctx: &Ctx<'_>, job: &FileJob) {
    let owner = ctx.as_root.then_some((job.node.uid, job.node.gid));
    match write_file(ctx, job) {
        Ok(()) => {
            let n = &job.node;
            let fd = std::os::fd::AsFd::as_fd(&job.file);
            for (k, v) in &n.xattrs {
                if let Err(e) = crate::fs::write_xattr(fd, k, v) {
                    ctx.report(&job.path, format!("extended attribute {k}: {e}"));
                }
            }
            if let Err(e) = crate::fs::set_fd_metadata(
                fd,
                owner,
                perm_bits_from_go_mode(n.mode),
                (n.atime.secs, n.atime.nanos),
                (n.mtime.secs, n.mtime.nanos),
            ) {
                ctx.report(&job.path, format!("setting metadata: {e}"));
            }
            ctx.opts.progress.add_files_done(1);
            ctx.opts.progress.add_files_new(1);
        }
        Err(e) => ctx.report(&job.path, e),
    }
}

/// Raw bytes read from a pack in one request: consecutive blobs of a file
/// that sit back to back in one pack are fetched together, up to this many
/// bytes (one blob is always fetched whole). Bounds a writer's memory to
/// about this plus one decoded blob.
const MAX_READ: u64 = 8 * 1024 * 1024;

fn write_file(ctx: &Ctx<'_>, job: &FileJob) -> Result<(), String> {
    let p = &ctx.opts.progress;
    let mut f = &job.file;
    let mut pos = 0u64;
    let mut hole_at_end = false;
    let ids: &[Id] = job.node.content.as_deref().unwrap_or(&[]);
    let mut i = 0;
    while i < ids.len() {
        if ctx.opts.cancel.is_cancelled() {
            return Err("cancelled".into());
        }
        let locate = |id: &Id| {
            ctx.repo
                .lookup(BlobType::Data, id)
                .ok_or_else(|| format!("data blob {id} is missing from the repository index"))
        };
        // Group blobs i..j that are contiguous in one pack.
        let first = locate(&ids[i])?;
        let mut group = vec![(ids[i], first)];
        let mut end = first.offset + first.length;
        let mut j = i + 1;
        while j < ids.len() {
            let next = locate(&ids[j])?;
            if next.pack != first.pack
                || next.offset != end
                || end + next.length - first.offset > MAX_READ
            {
                break;
            }
            end += next.length;
            group.push((ids[j], next));
            j += 1;
        }
        let raw = ctx
            .repo
            .read_pack_range(&first.pack, first.offset, end - first.offset)
            .map_err(|e| e.to_string())?;
        p.add_bytes_read(raw.len() as u64);
        for (id, loc) in &group {
            let at = (loc.offset - first.offset) as usize;
            let data = ctx
                .repo
                .decode_blob(id, loc, &raw[at..at + loc.length as usize])
                .map_err(|e| e.to_string())?;
            if ctx.opts.sparse && data.iter().all(|b| *b == 0) {
                f.seek(SeekFrom::Current(data.len() as i64))
                    .map_err(|e| format!("seek: {e}"))?;
                hole_at_end = true;
            } else {
                f.write_all(&data).map_err(|e| format!("writing: {e}"))?;
                hole_at_end = false;
            }
            pos += data.len() as u64;
            p.add_bytes_done(data.len() as u64);
            p.add_bytes_added(data.len() as u64);
        }
        i = j;
    }
    if hole_at_end {
        job.file
            .set_len(pos)
            .map_err(|e| format!("extending sparse file: {e}"))?;
    }
    Ok(())
}
