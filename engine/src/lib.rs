//! Hoard's backup engine: restic-format repositories (version 2, zstd).
//!
//! Data flow, bottom up: a [`backend::Backend`] stores named files; [`crypto`]
//! seals every file and blob (AES-256-CTR + Poly1305-AES); [`keyfile`] unwraps
//! the master key from a password; [`pack`] groups encrypted [`blob`]s into
//! pack files whose locations the [`index`] records; [`repository::Repository`]
//! ties these together (dedup, compression, index, snapshots, [`lock`]s).

pub mod backend;
pub mod blob;
pub mod config;
pub mod crypto;
pub mod error;
pub mod forget;
pub mod id;
pub mod index;
pub mod keyfile;
pub mod lock;
pub mod lock_stale;
pub mod pack;
pub mod prune;
pub mod repository;
pub mod snapshot;
// backup/restore side (chunking, trees, secure file access)
pub mod backup;
pub mod chunker;
pub mod fs;
pub mod priority;
pub mod progress;
pub mod restore;
pub mod tree;

pub use backend::{Backend, FileType, LocalBackend, MemoryBackend};
pub use blob::BlobType;
pub use config::Config;
pub use error::{Error, Result};
pub use id::Id;
pub use index::BlobLocation;
pub use keyfile::KdfParams;
pub use lock::LockGuard;
pub use repository::{InitOptions, Repository, SaveOutcome};
pub use snapshot::{Snapshot, SnapshotFilter};
