//! Storage backends: a synchronous, file-type-aware blob store. The engine
//! runs on its own threads, so the trait is blocking; cloud backends wrap
//! their async clients behind it. Every file except `config` is named by the
//! hex SHA-256 of its content and written exactly once.

mod local;
mod memory;
// network back ends and `--repo` parsing
pub mod location;
pub mod object;
pub mod rest;
pub mod retry;

pub use local::LocalBackend;
pub use memory::MemoryBackend;

use crate::error::Result;

/// The kinds of files in a repository, each with its own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Config,
    Key,
    Snapshot,
    Index,
    Pack,
    Lock,
}

impl FileType {
    /// restic's directory for this type (`config` is a file at the root).
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Config => "",
            FileType::Key => "keys",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Pack => "data",
            FileType::Lock => "locks",
        }
    }

    /// The path of `name` relative to the repository root, e.g.
    /// `data/ab/ab12...`, as shown in error messages.
    pub fn rel_path(self, name: &str) -> String {
        match self {
            FileType::Config => "config".into(),
            FileType::Pack => format!("data/{}/{}", name.get(..2).unwrap_or("__"), name),
            t => format!("{}/{}", t.dir(), name),
        }
    }
}

/// A repository store. Implementations must be safe to call from many threads.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Human-readable location, for messages (`/path/to/repo`, `s3:...`).
    fn location(&self) -> String;

    /// Creates the empty layout; fails if a `config` already exists.
    fn create(&self) -> Result<()>;

    /// Stores a file atomically: readers never see a partial file. Writing a
    /// name that already exists with the same content succeeds; with
    /// different content it fails (`Error::Conflict`).
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()>;

    fn read_full(&self, t: FileType, name: &str) -> Result<Vec<u8>>;

    /// Exactly `len` bytes at `offset`; a short file is an error.
    fn read_range(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// Names and sizes of all files of type `t`.
    fn list(&self, t: FileType) -> Result<Vec<(String, u64)>>;

    fn remove(&self, t: FileType, name: &str) -> Result<()>;

    fn exists(&self, t: FileType, name: &str) -> Result<bool>;
}

/// File names must be ids (or `config`): never a path.
pub(crate) fn check_name(t: FileType, name: &str) -> Result<()> {
    let ok = match t {
        FileType::Config => true,
        _ => !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
    };
    if ok {
        Ok(())
    } else {
        Err(crate::error::Error::Backend {
            file: name.to_string(),
            message: "invalid file name (expected a hex id)".into(),
        })
    }
}
