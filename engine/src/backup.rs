//! Backup of one directory into a snapshot.
//!
//! Data flow (all on plain threads, never on an async runtime):
//!
//! ```text
//! walker thread ──(bounded channel of open files)──> N reader workers
//!   │  openat2 beneath the root, fstat, readlinkat,      │ read + chunk (shared
//!   │  xattrs; parent tree lookup for unchanged files    │ ChunkerTables) + SHA-256
//!   │                                                    │ + Repository::save_blob
//!   └─ waits for its directory's file results <──────────┘ (compress/encrypt/upload)
//!      → Tree JSON → save_blob(Tree) … → root tree → flush → snapshot
//! ```
//!
//! The walker lists a directory, hands its regular files to the workers,
//! recurses into its subdirectories, then collects the file results and
//! stores the directory's tree — so memory holds one tree per level of the
//! current path plus at most `2 × workers` queued files and one chunk per
//! worker. Files whose size, mtime, ctime and inode equal the parent
//! snapshot's node reuse its content list without being opened.
//!
//! The snapshot records the caller's hostname, paths and tags, never the
//! on-disk source path: the source's content becomes the tree at
//! `opts.paths[0]` (e.g. `/data`).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use crate::blob::BlobType;
use crate::chunker::{ChunkerTables, FileChunker};
use crate::fs::{Dir, Meta};
use crate::id::Id;
use crate::priority::Priority;
use crate::progress::{Progress, ProgressSnapshot};
use crate::repository::Repository;
use crate::snapshot::{Snapshot, SnapshotFilter};
use crate::tree::{GoTime, Node, NodeType, Tree, go_mode_from_st_mode};

/// Cancels a running backup or restore from any thread.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Which snapshot to compare against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ParentSelection {
    /// The newest snapshot with the same hostname and paths.
    #[default]
    Auto,
    Explicit(Id),
    /// Read every file.
    None,
}

/// Called with the entry's path relative to the source root right before
/// the walker opens it. Tests use it to swap files for symlinks at exactly
/// that moment; production code leaves it `None`.
pub type WalkHook = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// What to back up and how to label it.
#[derive(Clone, Default)]
pub struct BackupOptions {
    pub hostname: String,
    /// The snapshot's path, e.g. `/data` (exactly one, absolute).
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub parent: ParentSelection,
    /// Glob patterns (`*`, `?`) matched against each entry's name and its
    /// path relative to the source root.
    pub excludes: Vec<String>,
    pub cancel: CancelToken,
    pub progress: Progress,
    /// nice/ionice for the walker and reader threads.
    pub priority: Priority,
    /// Reader threads; 0 = one per CPU.
    pub threads: usize,
    #[doc(hidden)]
    pub walk_hook: Option<WalkHook>,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("hostname", &self.hostname)
            .field("paths", &self.paths)
            .field("tags", &self.tags)
            .field("parent", &self.parent)
            .field("excludes", &self.excludes)
            .finish_non_exhaustive()
    }
}

/// A file or directory that could not be backed up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileError {
    /// Path relative to the source root.
    pub path: String,
    pub reason: String,
}

/// Outcome of a backup that wrote a snapshot.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub snapshot_id: Id,
    pub parent: Option<Id>,
    /// Unreadable entries; the snapshot lacks them (exit code 3).
    pub errors: Vec<FileError>,
    pub stats: ProgressSnapshot,
}

impl BackupSummary {
    /// restic's convention: a snapshot was written but some files are missing.
    pub fn is_incomplete(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// Why a backup wrote no snapshot.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Repository(#[from] crate::error::Error),
    #[error("cannot read the backup source {path}: {source}")]
    Source {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid backup options: {0}")]
    Options(String),
    #[error(transparent)]
    Priority(#[from] crate::priority::PriorityError),
    #[error(
        "backup cancelled; no snapshot was written (data already uploaded is indexed and will be reused)"
    )]
    Cancelled,
}

/// One regular file for a reader worker.
/// Most files, and bytes, the walker hands to a reader at once.
const BATCH_FILES: usize = 16;
const BATCH_BYTES: u64 = 1024 * 1024;

struct Job {
    file: std::fs::File,
    size: u64,
    /// The directory ([`Walker::open`] index) and the file's slot in it.
    dir: usize,
    slot: usize,
}

/// A reader's answer for one [`Job`]: directory, slot, outcome.
type Reply = (usize, usize, FileOutcome);

enum FileOutcome {
    Done(Vec<Id>),
    ReadError(io::Error),
    Fatal(crate::error::Error),
    Cancelled,
}

struct Shared<'a> {
    repo: &'a Repository,
    opts: &'a BackupOptions,
    errors: Mutex<Vec<FileError>>,
    root_dev: u64,
    names: Mutex<NameCache>,
}

impl Shared<'_> {
    fn report(&self, path: &[u8], reason: impl std::fmt::Display) {
        self.opts.progress.add_errors(1);
        let e = FileError {
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.to_string(),
        };
        tracing::warn!(path = %e.path, reason = %e.reason, "not backed up");
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }
}

/// Back up `source` into `repo` as a snapshot labelled by `opts`.
pub fn backup(
    repo: &Repository,
    source: &Path,
    opts: BackupOptions,
) -> Result<BackupSummary, BackupError> {
    opts.priority.validate()?;
    let snap_path = match opts.paths.as_slice() {
        [p] if p.starts_with('/') => p.clone(),
        _ => {
            return Err(BackupError::Options(format!(
                "exactly one absolute snapshot path is needed (e.g. /data), got {:?}",
                opts.paths
            )));
        }
    };
    let components: Vec<Vec<u8>> = snap_path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(|c| c.as_bytes().to_vec())
        .collect();
    if components.iter().any(|c| !crate::tree::is_safe_name(c)) {
        return Err(BackupError::Options(format!(
            "snapshot path {snap_path:?} contains '.' or '..'"
        )));
    }
    let src_err = |e: io::Error| BackupError::Source {
        path: source.display().to_string(),
        source: e,
    };
    let root = Dir::open_root(source).map_err(src_err)?;
    let root_meta = root.stat().map_err(src_err)?;

    let _lock = repo.lock(false)?;
    let tables = ChunkerTables::new(repo.config().chunker_polynomial)
        .map_err(|e| BackupError::Options(e.to_string()))?;

    // Parent snapshot and the parent's tree for the source directory.
    let parent_id = match &opts.parent {
        ParentSelection::None => None,
        ParentSelection::Explicit(id) => Some(*id),
        ParentSelection::Auto => {
            let filter = SnapshotFilter {
                hosts: vec![opts.hostname.clone()],
                ..Default::default()
            };
            repo.find_snapshots(&filter)?
                .into_iter()
                .rev()
                .find(|(_, s)| s.paths == opts.paths)
                .map(|(id, _)| id)
        }
    };
    let parent_tree = match parent_id {
        Some(pid) => {
            let snap = repo
                .snapshots()?
                .into_iter()
                .find(|(id, _)| *id == pid)
                .map(|(_, s)| s)
                .ok_or(crate::error::Error::SnapshotNotFound {
                    query: pid.to_hex(),
                })?;
            let mut t = Some(snap.tree);
            for c in &components {
                t = t.and_then(|id| load_tree(repo, &id).ok()).and_then(|tree| {
                    tree.nodes
                        .into_iter()
                        .find(|n| &n.name == c && n.node_type == NodeType::Dir)
                        .and_then(|n| n.subtree)
                });
            }
            t
        }
        None => None,
    };

    let shared = Shared {
        repo,
        opts: &opts,
        errors: Mutex::new(Vec::new()),
        root_dev: root_meta.dev,
        names: Mutex::new(NameCache::default()),
    };
    let workers = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        opts.threads
    };
    let (job_tx, job_rx) = sync_channel::<Vec<Job>>(workers * 2);
    let job_rx = Arc::new(Mutex::new(job_rx));
    // Unbounded: a reader never waits for the walker; at most the queued
    // and running batches' replies are outstanding.
    let (reply_tx, reply_rx) = channel::<Reply>();

    let opts_ref = &opts;
    let walk_result = std::thread::scope(|s| {
        let opts = opts_ref;
        for i in 0..workers {
            let rx = Arc::clone(&job_rx);
            let tables = &tables;
            let replies = reply_tx.clone();
            std::thread::Builder::new()
                .name(format!("hoard-read-{i}"))
                .spawn_scoped(s, move || reader_worker(repo, tables, opts, &rx, &replies))
                .map_err(|e| BackupError::Source {
                    path: "thread".into(),
                    source: e,
                })?;
        }
        // Only the readers hold senders: if they all stop, the walker's
        // wait for replies ends instead of hanging.
        drop(reply_tx);
        let shared = &shared;
        let walker = std::thread::Builder::new()
            .name("hoard-walk".into())
            .spawn_scoped(s, move || -> Result<Id, BackupError> {
                crate::priority::apply_to_current_thread(&opts.priority)?;
                let mut root_node = dir_node(shared, b"", &root_meta, &root);
                let mut w = Walker {
                    sh: shared,
                    jobs: Some(job_tx),
                    replies: reply_rx,
                    open: Vec::new(),
                    free: Vec::new(),
                    root: None,
                };
                w.walk_dir(&root, &mut Vec::new(), parent_tree, None)?;
                let mut id = w.finish()?;
                // Wrap the source's tree in the snapshot path's directories.
                for c in components.iter().rev() {
                    root_node.name = c.clone();
                    root_node.subtree = Some(id);
                    id = save_tree(
                        shared,
                        Tree {
                            nodes: vec![root_node.clone()],
                        },
                    )?;
                }
                opts.progress.set_totals_known();
                Ok(id)
            })
            .map_err(|e| BackupError::Source {
                path: "thread".into(),
                source: e,
            })?;
        walker
            .join()
            .unwrap_or_else(|_| Err(BackupError::Options("walker thread panicked".into())))
    });

    let root_tree = match walk_result {
        Ok(id) => id,
        Err(e) => {
            // Keep what was uploaded indexed (reused next time); write no snapshot.
            let _ = repo.flush();
            opts.progress.finish(None);
            return Err(e);
        }
    };
    if opts.cancel.is_cancelled() {
        let _ = repo.flush();
        opts.progress.finish(None);
        return Err(BackupError::Cancelled);
    }
    // Packs, then index, then snapshot: a crash before the snapshot leaves
    // only unreferenced data.
    repo.flush()?;
    let mut snap = Snapshot::new(root_tree, opts.paths.clone(), opts.hostname.clone());
    snap.tags = opts.tags.clone();
    snap.parent = parent_id;
    snap.excludes = opts.excludes.clone();
    let snapshot_id = repo.save_snapshot(&snap)?;
    opts.progress.finish(Some(snapshot_id));
    let errors = shared
        .errors
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    Ok(BackupSummary {
        snapshot_id,
        parent: parent_id,
        errors,
        stats: opts.progress.snapshot(),
    })
}

fn load_tree(repo: &Repository, id: &Id) -> Result<Tree, crate::error::Error> {
    let raw = repo.load_blob(BlobType::Tree, id)?;
    Tree::from_json(&raw).map_err(|e| crate::error::Error::Corrupted {
        file: format!("tree {id}"),
        reason: e.to_string(),
    })
}

fn save_tree(sh: &Shared<'_>, mut tree: Tree) -> Result<Id, BackupError> {
    tree.sort();
    let json = tree.to_json();
    let id = Id::hash(&json);
    let out = sh.repo.save_blob(BlobType::Tree, id, &json)?;
    if out.new {
        sh.opts.progress.add_bytes_stored(out.stored_len);
        sh.opts.progress.add_blobs_added(1);
    }
    Ok(id)
}

fn reader_worker(
    repo: &Repository,
    tables: &ChunkerTables,
    opts: &BackupOptions,
    rx: &Mutex<Receiver<Vec<Job>>>,
    replies: &Sender<Reply>,
) {
    if let Err(e) = crate::priority::apply_to_current_thread(&opts.priority) {
        tracing::warn!(error = %e, "could not lower the reader thread's priority");
    }
    // Time spent with nothing to do: on a machine with as many cores as
    // readers, that is an idle core (logged at debug level when done).
    let mut idle = std::time::Duration::ZERO;
    loop {
        let waiting = std::time::Instant::now();
        let batch = {
            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
            guard.recv()
        };
        idle += waiting.elapsed();
        let Ok(batch) = batch else {
            tracing::debug!(idle_ms = idle.as_millis() as u64, "reader finished");
            return;
        };
        for job in batch {
            let outcome = read_file(repo, tables, opts, &job);
            let _ = replies.send((job.dir, job.slot, outcome));
        }
    }
}

fn read_file(
    repo: &Repository,
    tables: &ChunkerTables,
    opts: &BackupOptions,
    job: &Job,
) -> FileOutcome {
    let p = &opts.progress;
    let mut ch = FileChunker::new(tables, &job.file, Some(job.size));
    let mut ids = Vec::new();
    loop {
        if opts.cancel.is_cancelled() {
            return FileOutcome::Cancelled;
        }
        let before = ch.bytes_read();
        let chunk = match ch.next_chunk() {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return FileOutcome::ReadError(e),
        };
        p.add_bytes_read(ch.bytes_read() - before);
        let id = Id::hash(&chunk);
        match repo.save_blob(BlobType::Data, id, &chunk) {
            Ok(o) => {
                if o.new {
                    p.add_bytes_added(chunk.len() as u64);
                    p.add_bytes_stored(o.stored_len);
                    p.add_blobs_added(1);
                }
            }
            Err(e) => return FileOutcome::Fatal(e),
        }
        p.add_bytes_done(chunk.len() as u64);
        ids.push(id);
    }
    FileOutcome::Done(ids)
}

fn path_of(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = rel.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// A file whose content the workers are producing.
struct Pending {
    node: Node,
    parent_had: bool,
}

/// A directory whose tree cannot be stored yet: its files are still being
/// read, or its subdirectories' trees are not stored yet.
///
/// The walker does not wait for a directory's files before it moves on (a
/// directory of large files would leave a reader idle while the other
/// finishes the last one); it stores each tree as soon as everything in it
/// is done. Open directories are those with files in flight (bounded by the
/// job queue) and their ancestors, so memory stays bounded as before.
struct OpenDir {
    /// Relative path, for error reports.
    rel: Vec<u8>,
    /// Entries that are complete already (symlinks, devices, unchanged files).
    nodes: Vec<Node>,
    files: Vec<Pending>,
    outcomes: Vec<Option<FileOutcome>>,
    /// Subdirectory nodes; each gets its subtree when that tree is stored.
    subdirs: Vec<Node>,
    /// Files and subdirectories not finished yet, plus one while the walk
    /// is still listing this directory.
    waiting: usize,
    /// The parent's index in [`Walker::open`] and this directory's slot in
    /// its `subdirs`; `None` for the source root.
    parent: Option<(usize, usize)>,
}

/// The walker thread's state: lists directories, hands files to the
/// readers, and stores trees as their contents complete.
struct Walker<'s, 'a> {
    sh: &'s Shared<'a>,
    /// `None` once the walk is done (closes the readers' queue).
    jobs: Option<SyncSender<Vec<Job>>>,
    replies: Receiver<Reply>,
    open: Vec<Option<OpenDir>>,
    free: Vec<usize>,
    /// The source root's tree, once stored.
    root: Option<Id>,
}

impl Walker<'_, '_> {
    fn send(&self, batch: Vec<Job>) -> Result<(), BackupError> {
        match &self.jobs {
            Some(j) if j.send(batch).is_ok() => Ok(()),
            _ => Err(BackupError::Cancelled),
        }
    }

    fn dir(&mut self, i: usize) -> &mut OpenDir {
        match self.open.get_mut(i).and_then(Option::as_mut) {
            Some(d) => d,
            None => unreachable!("open directory {i} is referenced after it was stored"),
        }
    }

    /// Records the replies that have arrived, without waiting.
    fn drain_replies(&mut self) -> Result<(), BackupError> {
        while let Ok(r) = self.replies.try_recv() {
            self.apply(r)?;
        }
        Ok(())
    }

    fn apply(&mut self, (dir, slot, out): Reply) -> Result<(), BackupError> {
        let d = self.dir(dir);
        d.outcomes[slot] = Some(out);
        d.waiting -= 1;
        if d.waiting == 0 {
            self.store(dir)?;
        }
        Ok(())
    }

    /// Waits for the rest of the files, then returns the root tree's id.
    fn finish(mut self) -> Result<Id, BackupError> {
        self.jobs = None;
        while self.root.is_none() {
            if self.sh.opts.cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            match self.replies.recv() {
                Ok(r) => self.apply(r)?,
                // Every reader stopped with files unanswered.
                Err(_) => return Err(BackupError::Cancelled),
            }
        }
        self.root.ok_or(BackupError::Cancelled)
    }

    /// Stores the tree of open directory `i` (complete), then its parent's
    /// if that completes too.
    fn store(&mut self, mut i: usize) -> Result<(), BackupError> {
        loop {
            let Some(d) = self.open.get_mut(i).and_then(Option::take) else {
                unreachable!("open directory {i} stored twice");
            };
            self.free.push(i);
            let opts = self.sh.opts;
            let mut nodes = d.nodes;
            nodes.extend(d.subdirs);
            for (p, out) in d.files.into_iter().zip(d.outcomes) {
                match out {
                    Some(FileOutcome::Done(ids)) => {
                        let mut node = p.node;
                        node.content = Some(ids);
                        if p.parent_had {
                            opts.progress.add_files_changed(1);
                        } else {
                            opts.progress.add_files_new(1);
                        }
                        opts.progress.add_files_done(1);
                        nodes.push(node);
                    }
                    Some(FileOutcome::ReadError(e)) => {
                        self.sh.report(&path_of(&d.rel, &p.node.name), e)
                    }
                    Some(FileOutcome::Fatal(e)) => return Err(e.into()),
                    Some(FileOutcome::Cancelled) | None => return Err(BackupError::Cancelled),
                }
            }
            let id = save_tree(self.sh, Tree { nodes })?;
            let Some((parent, slot)) = d.parent else {
                self.root = Some(id);
                return Ok(());
            };
            opts.progress.add_dirs(1);
            let pd = self.dir(parent);
            pd.subdirs[slot].subtree = Some(id);
            pd.waiting -= 1;
            if pd.waiting > 0 {
                return Ok(());
            }
            i = parent;
        }
    }

    /// Lists `dir`, hands its changed files to the readers and walks its
    /// subdirectories; its tree is stored once all of that is done (maybe
    /// after this returns). `link` is the parent's open directory and slot.
    fn walk_dir(
        &mut self,
        dir: &Dir,
        rel: &mut Vec<u8>,
        parent: Option<Id>,
        link: Option<(usize, usize)>,
    ) -> Result<(), BackupError> {
        let sh = self.sh;
        let opts = sh.opts;
        let me = OpenDir {
            rel: rel.clone(),
            nodes: Vec::new(),
            files: Vec::new(),
            outcomes: Vec::new(),
            subdirs: Vec::new(),
            waiting: 1,
            parent: link,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.open[i] = Some(me);
                i
            }
            None => {
                self.open.push(Some(me));
                self.open.len() - 1
            }
        };
        let parent_nodes: HashMap<Vec<u8>, Node> = parent
            .and_then(|id| load_tree(sh.repo, &id).ok())
            .map(|t| t.nodes.into_iter().map(|n| (n.name.clone(), n)).collect())
            .unwrap_or_default();
        let mut names = match dir.entries() {
            Ok(n) => n,
            Err(e) => {
                sh.report(rel, format!("listing directory: {e}"));
                Vec::new()
            }
        };
        names.sort();
        let mut subdirs: Vec<(Vec<u8>, Meta)> = Vec::new();
        // Files go to the readers in batches (a few small files, or one large
        // one): one channel hand-off, and one wake-up of a reader, per batch
        // instead of per file.
        let mut batch: Vec<Job> = Vec::new();
        let mut batch_bytes = 0u64;

        for name in names {
            if opts.cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            let path = path_of(rel, &name);
            if is_excluded(&opts.excludes, &name, &path) {
                continue;
            }
            let meta = match dir.lstat(&name) {
                Ok(m) => m,
                Err(e) => {
                    sh.report(&path, e);
                    continue;
                }
            };
            if meta.dev != sh.root_dev {
                // Another filesystem mounted inside the source: not ours to read.
                continue;
            }
            let Some(kind) = NodeType::from_st_mode(meta.mode) else {
                continue;
            };
            match kind {
                NodeType::Dir => subdirs.push((name, meta)),
                NodeType::File => {
                    opts.progress.add_files_total(1);
                    opts.progress.add_bytes_total(meta.size);
                    let prev = parent_nodes.get(&name);
                    if let Some(prev) = prev
                        && unchanged(prev, &meta)
                        && prev.content.as_ref().is_some_and(|c| {
                            c.iter().all(|id| sh.repo.has_blob(BlobType::Data, id))
                        })
                    {
                        let mut node = base_node(sh, &name, NodeType::File, &meta);
                        node.content = prev.content.clone();
                        node.xattrs = prev.xattrs.clone();
                        opts.progress.add_files_unmodified(1);
                        opts.progress.add_files_done(1);
                        opts.progress.add_bytes_done(meta.size);
                        self.dir(idx).nodes.push(node);
                        continue;
                    }
                    if let Some(h) = &opts.walk_hook {
                        h(&path);
                    }
                    let (file, fmeta) = match dir.open_file(&name) {
                        Ok(f) => f,
                        Err(e) => {
                            sh.report(&path, e);
                            continue;
                        }
                    };
                    let mut node = base_node(sh, &name, NodeType::File, &fmeta);
                    node.xattrs = xattrs_or_report(sh, &path, std::os::fd::AsFd::as_fd(&file));
                    let d = self.dir(idx);
                    let slot = d.files.len();
                    d.files.push(Pending {
                        node,
                        parent_had: prev.is_some(),
                    });
                    d.outcomes.push(None);
                    d.waiting += 1;
                    batch_bytes += fmeta.size;
                    batch.push(Job {
                        file,
                        size: fmeta.size,
                        dir: idx,
                        slot,
                    });
                    if batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES {
                        self.send(std::mem::take(&mut batch))?;
                        batch_bytes = 0;
                    }
                }
                NodeType::Symlink => {
                    let mut node = base_node(sh, &name, NodeType::Symlink, &meta);
                    match dir.read_link(&name) {
                        Ok(t) => node.link_target = t,
                        Err(e) => {
                            sh.report(&path, e);
                            continue;
                        }
                    }
                    self.dir(idx).nodes.push(node);
                }
                other => {
                    let mut node = base_node(sh, &name, other, &meta);
                    if matches!(node.node_type, NodeType::Dev | NodeType::Chardev) {
                        node.device = meta.rdev;
                    }
                    self.dir(idx).nodes.push(node);
                }
            }
        }
        if !batch.is_empty() {
            self.send(batch)?;
        }

        for (name, meta) in subdirs {
            if opts.cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            let path = path_of(rel, &name);
            if let Some(h) = &opts.walk_hook {
                h(&path);
            }
            let sub = match dir.open_dir(&name) {
                Ok(d) => d,
                Err(e) => {
                    sh.report(&path, e);
                    continue;
                }
            };
            let smeta = sub.stat().unwrap_or(meta);
            let mut node = dir_node(sh, &name, &smeta, &sub);
            node.xattrs = xattrs_or_report(sh, &path, sub.as_fd());
            let psub = parent_nodes
                .get(&name)
                .filter(|n| n.node_type == NodeType::Dir)
                .and_then(|n| n.subtree);
            let d = self.dir(idx);
            let slot = d.subdirs.len();
            d.subdirs.push(node);
            d.waiting += 1;
            let len = rel.len();
            *rel = path;
            let r = self.walk_dir(&sub, rel, psub, Some((idx, slot)));
            rel.truncate(len);
            r?;
        }

        // Listing done: store the tree now if nothing is in flight.
        self.drain_replies()?;
        let d = self.dir(idx);
        d.waiting -= 1;
        if d.waiting == 0 {
            self.store(idx)?;
        }
        Ok(())
    }
}

fn unchanged(prev: &Node, m: &Meta) -> bool {
    prev.node_type == NodeType::File
        && prev.size == m.size
        && prev.inode == m.ino
        && (prev.mtime.secs, prev.mtime.nanos) == m.mtime
        && (prev.ctime.secs, prev.ctime.nanos) == m.ctime
}

fn xattrs_or_report(
    _sh: &Shared<'_>,
    path: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> Vec<(String, Vec<u8>)> {
    match crate::fs::read_xattrs(fd) {
        Ok(x) => x,
        Err(e) => {
            // restic warns and keeps the file; so do we (not counted as unreadable).
            tracing::warn!(path = %String::from_utf8_lossy(path), error = %e, "reading extended attributes");
            Vec::new()
        }
    }
}

fn time(t: (i64, u32)) -> GoTime {
    GoTime::from_unix(t.0, t.1)
}

fn base_node(sh: &Shared<'_>, name: &[u8], kind: NodeType, m: &Meta) -> Node {
    let mut n = Node::new(name.to_vec(), kind);
    n.mode = go_mode_from_st_mode(m.mode);
    n.mtime = time(m.mtime);
    // restic records atime = mtime unless run with --with-atime: reading a
    // file moves its atime, so a real atime would make every backup's trees
    // differ (and differ from restic's for the same data).
    n.atime = n.mtime;
    n.ctime = time(m.ctime);
    n.uid = m.uid;
    n.gid = m.gid;
    {
        let mut names = sh.names.lock().unwrap_or_else(|e| e.into_inner());
        n.user = names.user(m.uid);
        n.group = names.group(m.gid);
    }
    n.inode = m.ino;
    n.device_id = m.dev;
    match n.node_type {
        NodeType::File => {
            n.size = m.size;
            n.links = m.nlink;
        }
        NodeType::Symlink | NodeType::Dev | NodeType::Chardev => n.links = m.nlink,
        _ => {}
    }
    n
}

fn dir_node(sh: &Shared<'_>, name: &[u8], m: &Meta, _d: &Dir) -> Node {
    base_node(sh, name, NodeType::Dir, m)
}

/// `*` and `?` glob against the name or the relative path.
fn is_excluded(patterns: &[String], name: &[u8], path: &[u8]) -> bool {
    patterns.iter().any(|p| {
        let p = p.trim_start_matches('/').as_bytes();
        glob(p, name) || glob(p, path)
    })
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && glob(p, &s[1..])),
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// uid/gid → name from this machine's /etc/passwd and /etc/group, as restic
/// records them (cached; "" when unknown).
#[derive(Default)]
struct NameCache {
    users: Option<HashMap<u32, String>>,
    groups: Option<HashMap<u32, String>>,
}

fn parse_id_file(path: &str) -> HashMap<u32, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((id, name.to_string()))
        })
        .collect()
}

impl NameCache {
    fn user(&mut self, uid: u32) -> String {
        self.users
            .get_or_insert_with(|| parse_id_file("/etc/passwd"))
            .get(&uid)
            .cloned()
            .unwrap_or_default()
    }
    fn group(&mut self, gid: u32) -> String {
        self.groups
            .get_or_insert_with(|| parse_id_file("/etc/group"))
            .get(&gid)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_names_and_relative_paths() {
        let ex = vec!["*.tmp".to_string(), "cache/big?".to_string()];
        assert!(is_excluded(&ex, b"a.tmp", b"x/a.tmp"));
        assert!(is_excluded(&ex, b"big1", b"cache/big1"));
        assert!(!is_excluded(&ex, b"big1", b"other/big1"));
        assert!(!is_excluded(&ex, b"a.txt", b"a.txt"));
    }
}
