//! The repository: opens a backend with a password, holds the master key,
//! config and in-memory index, and stores/loads blobs, snapshots and index
//! files.
//!
//! Writing: `save_blob` dedups against the index and blobs already saved in
//! this session, compresses and encrypts in the caller's thread, and appends
//! to a pack taken from a per-type pool (so N writer threads fill N packs in
//! parallel). A full pack is uploaded by the thread that filled it, then its
//! blobs enter the index and an "unsaved" list that becomes an index file
//! every [`INDEX_MAX_BLOBS`] blobs and at `flush`. Order on disk is always
//! packs, then index, then snapshot — restic's rule, so a crash leaves at
//! worst unreferenced packs, never a snapshot pointing at missing data.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::backend::{Backend, FileType};
use crate::blob::{self, BlobType};
use crate::config::Config;
use crate::crypto::Key;
use crate::error::{Error, Result};
use crate::id::{Id, find_by_prefix};
use crate::index::{BlobLocation, IndexFile, IndexPack, MemIndex, parse_index};
use crate::keyfile::{KdfParams, KeyFile};
use crate::lock::LockGuard;
use crate::pack::PackWriter;
use crate::snapshot::{Snapshot, SnapshotFilter};

/// Blobs per index file written during a session (restic uses the same
/// bound; it keeps each index file well under restic's 8 MiB guideline).
pub const INDEX_MAX_BLOBS: usize = 50_000;
/// Pack buffers kept for reuse: one per concurrent packer is enough.
const MAX_SPARE_BUFFERS: usize = 4;

/// How many key files to try before giving up (restic stops at 20 too; each
/// attempt costs one scrypt run).
const MAX_KEYS_TRIED: usize = 20;

/// Largest decompressed unpacked file (index, snapshot, lock) we accept.
const MAX_UNPACKED_LEN: usize = 1 << 30;

/// Options for [`Repository::init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub kdf: KdfParams,
    /// Reuse a polynomial (e.g. to dedup with another repository); random if `None`.
    pub chunker_polynomial: Option<u64>,
}

/// Result of [`Repository::save_blob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOutcome {
    /// False when the blob was already stored (deduplicated).
    pub new: bool,
    /// Bytes added to the repository (encrypted, after compression); 0 if not new.
    pub stored_len: u64,
}

/// Wraps JSON as an "unpacked" file plaintext: in v2, `0x02 || zstd(json)`.
pub(crate) fn pack_unpacked(json: &[u8], v2: bool) -> Result<Vec<u8>> {
    if !v2 {
        return Ok(json.to_vec());
    }
    let mut out = vec![2u8];
    let c = zstd::bulk::compress(json, blob::DEFAULT_COMPRESSION_LEVEL)
        .map_err(|e| Error::io("compress", "", e))?;
    out.extend_from_slice(&c);
    Ok(out)
}

/// Reverses [`pack_unpacked`]; plain JSON (`{`/`[` first) is accepted too.
pub(crate) fn unpack_unpacked(pt: &[u8], file: &str) -> Result<Vec<u8>> {
    match pt.first() {
        Some(b'{') | Some(b'[') => Ok(pt.to_vec()),
        Some(2) => {
            let mut out = Vec::new();
            let dec = zstd::stream::read::Decoder::new(&pt[1..])
                .map_err(|e| Error::corrupted(file, format!("zstd: {e}")))?;
            std::io::Read::read_to_end(
                &mut std::io::Read::take(dec, MAX_UNPACKED_LEN as u64 + 1),
                &mut out,
            )
            .map_err(|e| Error::corrupted(file, format!("zstd: {e}")))?;
            if out.len() > MAX_UNPACKED_LEN {
                return Err(Error::corrupted(
                    file,
                    "decompressed file is larger than 1 GiB",
                ));
            }
            Ok(out)
        }
        Some(v) => Err(Error::corrupted(
            file,
            format!("unknown encoding version {v}"),
        )),
        None => Err(Error::corrupted(file, "empty file")),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An open repository. `Send + Sync`: share it through an `Arc`.
#[derive(Debug)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: Key,
    config: Config,
    index: RwLock<MemIndex>,
    in_flight: Mutex<HashSet<(BlobType, Id)>>,
    packers: [Mutex<Vec<PackWriter>>; 2],
    /// Buffers of uploaded packs, for the next packs (see [`PackWriter::with_buffer`]).
    spare_buffers: Mutex<Vec<Vec<u8>>>,
    unsaved: Mutex<Vec<IndexPack>>,
    compression: Option<i32>,
}

impl Repository {
    /// Creates a new version-2 repository with one key for `password`.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &str,
        opts: InitOptions,
    ) -> Result<Repository> {
        if backend.exists(FileType::Config, "config")? {
            return Err(Error::RepositoryExists {
                location: backend.location(),
            });
        }
        backend.create()?;
        let key = Key::random();
        let mut config = Config::new_v2();
        if let Some(p) = opts.chunker_polynomial {
            config.chunker_polynomial = p;
        }
        let repo = Repository::with(backend, key, config);
        repo.add_key(password, opts.kdf)?;
        let json = serde_json::to_vec(&repo.config).map_err(|source| Error::Encode {
            what: "config",
            source,
        })?;
        repo.backend
            .write(FileType::Config, "config", &repo.key.encrypt(&json))?;
        Ok(repo)
    }

    fn with(backend: Arc<dyn Backend>, key: Key, config: Config) -> Repository {
        Repository {
            backend,
            key,
            config,
            index: RwLock::new(MemIndex::new()),
            in_flight: Mutex::new(HashSet::new()),
            packers: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            spare_buffers: Mutex::new(Vec::new()),
            unsaved: Mutex::new(Vec::new()),
            compression: Some(blob::DEFAULT_COMPRESSION_LEVEL),
        }
    }

    /// Opens an existing repository and loads its index.
    pub fn open(backend: Arc<dyn Backend>, password: &str) -> Result<Repository> {
        let cfg_raw = match backend.read_full(FileType::Config, "config") {
            Ok(r) => r,
            Err(Error::NotFound { .. }) | Err(Error::NoRepository { .. }) => {
                return Err(Error::NoRepository {
                    location: backend.location(),
                });
            }
            Err(e) => return Err(e),
        };
        let key = Self::find_key(&*backend, password)?;
        let cfg_json = key.decrypt(&cfg_raw).map_err(|_| Error::MacMismatch {
            file: "config".into(),
        })?;
        let config: Config = serde_json::from_slice(&cfg_json)
            .map_err(|e| Error::corrupted("config", format!("JSON: {e}")))?;
        if config.version != 1 && config.version != 2 {
            return Err(Error::UnsupportedVersion {
                version: config.version,
            });
        }
        let repo = Repository::with(backend, key, config);
        repo.load_index()?;
        Ok(repo)
    }

    fn find_key(backend: &dyn Backend, password: &str) -> Result<Key> {
        let mut names: Vec<String> = backend
            .list(FileType::Key)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.sort();
        let mut tried = 0;
        for name in names.iter().take(MAX_KEYS_TRIED) {
            let raw = backend.read_full(FileType::Key, name)?;
            let kf: KeyFile = match serde_json::from_slice(&raw) {
                Ok(kf) => kf,
                Err(e) => {
                    tracing::warn!(key = %name, error = %e, "skipping unreadable key file");
                    continue;
                }
            };
            tried += 1;
            if let Some(k) = kf.open(password, name)? {
                return Ok(k);
            }
        }
        Err(Error::WrongPassword { tried })
    }

    /// Stores compressed blobs at `level`, or uncompressed with `None`.
    pub fn with_compression(mut self, level: Option<i32>) -> Self {
        self.compression = if self.config.version >= 2 {
            level
        } else {
            None
        };
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    fn v2(&self) -> bool {
        self.config.version >= 2
    }

    /// Takes a repository lock (shared for backup/restore, exclusive for
    /// maintenance); held until the guard drops.
    pub fn lock(&self, exclusive: bool) -> Result<LockGuard> {
        LockGuard::acquire(self.backend.clone(), &self.key, exclusive)
    }

    // ---- keys ----

    /// Adds a key file for `password`; returns its id.
    pub fn add_key(&self, password: &str, kdf: KdfParams) -> Result<Id> {
        let kf = KeyFile::create(&self.key, password, kdf)?;
        let json = serde_json::to_vec(&kf).map_err(|source| Error::Encode {
            what: "key file",
            source,
        })?;
        let id = Id::hash(&json);
        self.backend.write(FileType::Key, &id.to_hex(), &json)?;
        Ok(id)
    }

    /// All key files (their metadata; the secrets stay sealed).
    pub fn list_keys(&self) -> Result<Vec<(Id, KeyFile)>> {
        let mut out = Vec::new();
        for (name, _) in self.backend.list(FileType::Key)? {
            let raw = self.backend.read_full(FileType::Key, &name)?;
            let kf: KeyFile = serde_json::from_slice(&raw).map_err(|e| {
                Error::corrupted(FileType::Key.rel_path(&name), format!("JSON: {e}"))
            })?;
            out.push((name.parse()?, kf));
        }
        out.sort_by_key(|(_, k)| k.created);
        Ok(out)
    }

    // ---- unpacked files ----

    /// Encrypts and stores a JSON document (snapshot, index, lock).
    pub fn save_json<T: serde::Serialize>(
        &self,
        t: FileType,
        what: &'static str,
        v: &T,
    ) -> Result<Id> {
        let json = serde_json::to_vec(v).map_err(|source| Error::Encode { what, source })?;
        let data = self.key.encrypt(&pack_unpacked(&json, self.v2())?);
        let id = Id::hash(&data);
        self.backend.write(t, &id.to_hex(), &data)?;
        Ok(id)
    }

    /// Loads, authenticates and decompresses an unpacked file; returns JSON bytes.
    pub fn load_unpacked(&self, t: FileType, id: &Id) -> Result<Vec<u8>> {
        let name = id.to_hex();
        let file = t.rel_path(&name);
        let raw = self.backend.read_full(t, &name)?;
        if Id::hash(&raw) != *id {
            return Err(Error::corrupted(
                file,
                "content does not match its name (SHA-256)",
            ));
        }
        let pt = self
            .key
            .decrypt(&raw)
            .map_err(|_| Error::MacMismatch { file: file.clone() })?;
        unpack_unpacked(&pt, &file)
    }

    // ---- index ----

    fn load_index(&self) -> Result<()> {
        let names = self.backend.list(FileType::Index)?;
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 4);
        let next = Mutex::new(names.into_iter());
        let (tx, rx) = mpsc::sync_channel::<Result<IndexFile>>(workers * 2);
        let idx = std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = tx.clone();
                let next = &next;
                s.spawn(move || {
                    loop {
                        let Some((name, _)) = lock(next).next() else {
                            return;
                        };
                        let r = name
                            .parse::<Id>()
                            .and_then(|id| self.load_unpacked(FileType::Index, &id))
                            .and_then(|json| parse_index(&json, &FileType::Index.rel_path(&name)));
                        let failed = r.is_err();
                        if tx.send(r).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let mut first_err = None;
            let idx = MemIndex::bulk_load(rx.iter().filter_map(|r| match r {
                Ok(f) => Some(f),
                Err(e) => {
                    first_err.get_or_insert(e);
                    None
                }
            }));
            match first_err {
                Some(e) => Err(e),
                None => Ok(idx),
            }
        })?;
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = idx;
        Ok(())
    }

    /// Reads the index files again, replacing the in-memory index. Needed
    /// after a prune rewrote the index and deleted packs: the old entries
    /// would make `save_blob` skip blobs that are gone. Call it only while
    /// no blobs are being saved through this `Repository`.
    pub fn reload_index(&self) -> Result<()> {
        self.load_index()
    }

    /// Number of blobs in the index and its approximate memory footprint.
    pub fn index_stats(&self) -> (usize, usize) {
        let i = self.index.read().unwrap_or_else(|e| e.into_inner());
        (i.len(), i.mem_bytes())
    }

    fn write_index(&self, packs: Vec<IndexPack>) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        self.save_json(
            FileType::Index,
            "index",
            &IndexFile {
                supersedes: vec![],
                packs,
            },
        )?;
        Ok(())
    }

    // ---- blobs ----

    /// Whether the blob is stored (indexed, or saved earlier in this session).
    pub fn has_blob(&self, t: BlobType, id: &Id) -> bool {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .has(t, id)
            || lock(&self.in_flight).contains(&(t, *id))
    }

    pub fn lookup(&self, t: BlobType, id: &Id) -> Option<BlobLocation> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(t, id)
    }

    /// Stores a blob unless already present. Thread-safe; the caller's thread
    /// compresses, encrypts and, when its pack fills, uploads it.
    pub fn save_blob(&self, t: BlobType, id: Id, plaintext: &[u8]) -> Result<SaveOutcome> {
        const DUP: SaveOutcome = SaveOutcome {
            new: false,
            stored_len: 0,
        };
        if self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .has(t, &id)
        {
            return Ok(DUP);
        }
        if !lock(&self.in_flight).insert((t, id)) {
            return Ok(DUP);
        }
        // An uploader adds to the index before leaving in_flight, so this
        // second look closes the race between the two checks above.
        if self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .has(t, &id)
        {
            lock(&self.in_flight).remove(&(t, id));
            return Ok(DUP);
        }
        let enc = match blob::encode(&self.key, plaintext, self.compression) {
            Ok(e) => e,
            Err(e) => {
                lock(&self.in_flight).remove(&(t, id));
                return Err(e);
            }
        };
        let stored_len = enc.bytes.len() as u64;
        let pool = &self.packers[t as usize];
        let mut packer = match lock(pool).pop() {
            Some(p) => p,
            None => lock(&self.spare_buffers)
                .pop()
                .map(PackWriter::with_buffer)
                .unwrap_or_default(),
        };
        if let Err(e) = packer.add(t, id, &enc.bytes, enc.uncompressed_length) {
            lock(&self.in_flight).remove(&(t, id));
            lock(pool).push(packer);
            return Err(e);
        }
        if packer.is_full() {
            self.upload(packer)?;
        } else {
            lock(pool).push(packer);
        }
        Ok(SaveOutcome {
            new: true,
            stored_len,
        })
    }

    fn upload(&self, packer: PackWriter) -> Result<()> {
        if packer.is_empty() {
            return Ok(());
        }
        let ids: Vec<(BlobType, Id)> = packer.ids().collect();
        let (pack_id, bytes, blobs) = packer.finish(&self.key);
        if let Err(e) = self
            .backend
            .write(FileType::Pack, &pack_id.to_hex(), &bytes)
        {
            let mut f = lock(&self.in_flight);
            for k in &ids {
                f.remove(k);
            }
            return Err(e);
        }
        {
            let mut spare = lock(&self.spare_buffers);
            if spare.len() < MAX_SPARE_BUFFERS {
                spare.push(bytes);
            }
        }
        let ip = IndexPack::from_packed(pack_id, &blobs);
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add_pack(&ip);
        {
            let mut f = lock(&self.in_flight);
            for k in &ids {
                f.remove(k);
            }
        }
        let full = {
            let mut u = lock(&self.unsaved);
            u.push(ip);
            if u.iter().map(|p| p.blobs.len()).sum::<usize>() >= INDEX_MAX_BLOBS {
                std::mem::take(&mut *u)
            } else {
                Vec::new()
            }
        };
        self.write_index(full)
    }

    /// Uploads all partial packs and writes index files for everything saved
    /// so far. Call before saving a snapshot that references the blobs.
    pub fn flush(&self) -> Result<()> {
        for pool in &self.packers {
            let packers = std::mem::take(&mut *lock(pool));
            for p in packers {
                self.upload(p)?;
            }
        }
        let rest = std::mem::take(&mut *lock(&self.unsaved));
        // A long-lived Repository (the agent's) holds no pack buffers between backups.
        lock(&self.spare_buffers).clear();
        self.write_index(rest)
    }

    /// Reads raw (encrypted) bytes of a pack.
    pub fn read_pack_range(&self, pack: &Id, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.backend
            .read_range(FileType::Pack, &pack.to_hex(), offset, len)
    }

    /// Decrypts, decompresses and verifies one blob's raw bytes.
    pub fn decode_blob(&self, id: &Id, loc: &BlobLocation, raw: &[u8]) -> Result<Vec<u8>> {
        blob::decode(
            &self.key,
            id,
            raw,
            loc.uncompressed_length,
            &FileType::Pack.rel_path(&loc.pack.to_hex()),
        )
    }

    /// Loads a blob by id (decrypted, decompressed, verified).
    pub fn load_blob(&self, t: BlobType, id: &Id) -> Result<Vec<u8>> {
        let loc = self.lookup(t, id).ok_or(Error::BlobNotFound {
            kind: t.as_str(),
            id: *id,
        })?;
        let raw = self.read_pack_range(&loc.pack, loc.offset, loc.length)?;
        self.decode_blob(id, &loc, &raw)
    }

    /// Reads and authenticates a pack's header (for check / index repair).
    pub fn pack_header(&self, pack: &Id) -> Result<Vec<crate::pack::PackedBlob>> {
        let name = pack.to_hex();
        let file = FileType::Pack.rel_path(&name);
        let size = self
            .backend
            .list(FileType::Pack)?
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| Error::NotFound { file: file.clone() })?;
        let trailer =
            self.backend
                .read_range(FileType::Pack, &name, size.saturating_sub(4), 4.min(size))?;
        let (start, len) = crate::pack::header_location(size, &trailer, &file)?;
        let enc = self.backend.read_range(FileType::Pack, &name, start, len)?;
        let plain = self.key.decrypt(&enc).map_err(|_| Error::MacMismatch {
            file: format!("{file} (pack header)"),
        })?;
        crate::pack::parse_header(&plain, start, &file)
    }

    // ---- snapshots ----

    pub fn save_snapshot(&self, s: &Snapshot) -> Result<Id> {
        self.save_json(FileType::Snapshot, "snapshot", s)
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let mut out = Vec::new();
        for (name, _) in self.backend.list(FileType::Snapshot)? {
            let id: Id = name.parse()?;
            let json = self.load_unpacked(FileType::Snapshot, &id)?;
            let s: Snapshot = serde_json::from_slice(&json).map_err(|e| {
                Error::corrupted(FileType::Snapshot.rel_path(&name), format!("JSON: {e}"))
            })?;
            out.push((id, s));
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Snapshots matching `filter`, oldest first.
    pub fn find_snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<(Id, Snapshot)>> {
        Ok(self
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| filter.matches(s))
            .collect())
    }

    /// Resolves `latest` (newest snapshot matching `filter`) or an id prefix.
    pub fn find_snapshot(&self, query: &str, filter: &SnapshotFilter) -> Result<(Id, Snapshot)> {
        let all = self.find_snapshots(filter)?;
        if query == "latest" {
            return all.into_iter().last().ok_or(Error::SnapshotNotFound {
                query: query.into(),
            });
        }
        let id = find_by_prefix(query, all.iter().map(|(id, _)| id))?;
        all.into_iter()
            .find(|(i, _)| *i == id)
            .ok_or(Error::SnapshotNotFound {
                query: query.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    fn opts() -> InitOptions {
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        }
    }

    #[test]
    fn init_open_save_load_and_wrong_password() {
        let be = Arc::new(MemoryBackend::new());
        let repo = Repository::init(be.clone(), "pw", opts()).unwrap();
        assert!(matches!(
            Repository::init(be.clone(), "pw", opts()),
            Err(Error::RepositoryExists { .. })
        ));
        let data = b"hello world".repeat(100);
        let id = Id::hash(&data);
        let o = repo.save_blob(BlobType::Data, id, &data).unwrap();
        assert!(o.new && o.stored_len > 0);
        assert!(repo.has_blob(BlobType::Data, &id));
        assert!(!repo.save_blob(BlobType::Data, id, &data).unwrap().new);
        repo.flush().unwrap();
        assert_eq!(repo.load_blob(BlobType::Data, &id).unwrap(), data);

        let repo2 = Repository::open(be.clone(), "pw").unwrap();
        assert_eq!(repo2.config(), repo.config());
        assert_eq!(repo2.load_blob(BlobType::Data, &id).unwrap(), data);
        assert!(!repo2.save_blob(BlobType::Data, id, &data).unwrap().new);
        let e = Repository::open(be.clone(), "nope").unwrap_err();
        assert!(e.to_string().contains("wrong password"), "{e}");
        let e = Repository::open(Arc::new(MemoryBackend::new()), "pw").unwrap_err();
        assert!(matches!(e, Error::NoRepository { .. }), "{e}");
    }

    #[test]
    fn second_key_opens() {
        let be = Arc::new(MemoryBackend::new());
        let repo = Repository::init(be.clone(), "one", opts()).unwrap();
        repo.add_key("two", KdfParams::insecure_fast()).unwrap();
        assert_eq!(repo.list_keys().unwrap().len(), 2);
        assert_eq!(Repository::open(be, "two").unwrap().config(), repo.config());
    }

    #[test]
    fn flipped_pack_byte_is_detected_and_named() {
        let be = Arc::new(MemoryBackend::new());
        let repo = Repository::init(be.clone(), "pw", opts()).unwrap();
        let id = Id::hash(b"payload");
        repo.save_blob(BlobType::Data, id, b"payload").unwrap();
        repo.flush().unwrap();
        let pack = repo.lookup(BlobType::Data, &id).unwrap().pack;
        be.corrupt(FileType::Pack, &pack.to_hex(), |d| d[20] ^= 1);
        let e = repo.load_blob(BlobType::Data, &id).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&pack.to_hex()) && msg.contains("MAC"), "{msg}");
    }

    #[test]
    fn concurrent_saves_dedup_and_fill_packs() {
        let be = Arc::new(MemoryBackend::new());
        let repo = Arc::new(
            Repository::init(be.clone(), "pw", opts())
                .unwrap()
                .with_compression(None),
        );
        let blobs: Vec<Vec<u8>> = (0..40u32).map(|i| vec![i as u8; 1024 * 1024]).collect();
        let new_count = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for b in &blobs {
                        if repo.save_blob(BlobType::Data, Id::hash(b), b).unwrap().new {
                            new_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(new_count.into_inner(), 40, "each blob stored exactly once");
        repo.flush().unwrap();
        let reopened = Repository::open(be.clone(), "pw").unwrap();
        assert_eq!(reopened.index_stats().0, 40);
        for b in &blobs {
            assert_eq!(
                &reopened.load_blob(BlobType::Data, &Id::hash(b)).unwrap(),
                b
            );
        }
        assert!(
            be.list(FileType::Pack).unwrap().len() >= 2,
            "40 MiB spans several packs"
        );
        for (name, _) in be.list(FileType::Pack).unwrap() {
            let hdr = reopened.pack_header(&name.parse().unwrap()).unwrap();
            assert!(!hdr.is_empty());
        }
    }

    #[test]
    fn snapshots_filter_latest_prefix() {
        let be = Arc::new(MemoryBackend::new());
        let repo = Repository::init(be, "pw", opts()).unwrap();
        let mut a = Snapshot::new(Id([1; 32]), vec!["/data".into()], "host-1");
        a.time -= chrono::Duration::seconds(10);
        let b = Snapshot::new(Id([2; 32]), vec!["/data".into()], "host-2");
        let ia = repo.save_snapshot(&a).unwrap();
        let ib = repo.save_snapshot(&b).unwrap();
        let all = repo.snapshots().unwrap();
        assert_eq!(
            all.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![ia, ib]
        );
        let f = SnapshotFilter {
            hosts: vec!["host-1".into()],
            ..Default::default()
        };
        assert_eq!(repo.find_snapshot("latest", &f).unwrap().0, ia);
        assert_eq!(
            repo.find_snapshot("latest", &SnapshotFilter::default())
                .unwrap()
                .0,
            ib
        );
        assert_eq!(
            repo.find_snapshot(&ib.to_hex()[..8], &SnapshotFilter::default())
                .unwrap()
                .1,
            b
        );
        assert!(
            repo.find_snapshot("zz", &SnapshotFilter::default())
                .is_err()
        );
    }
}
