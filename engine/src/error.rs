//! The engine's error type. Every variant a user can hit says what went wrong
//! and what to do next; the CLI prints `Display` as-is.

use std::path::PathBuf;

use crate::id::Id;

/// Errors of the repository layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "wrong password or no key found; check --password-file / HOARD_PASSWORD (tried {tried} key file(s))"
    )]
    WrongPassword { tried: usize },

    #[error("no repository at {location}; run `hoard init` to create one")]
    NoRepository { location: String },

    #[error("a repository already exists at {location}; refusing to overwrite it")]
    RepositoryExists { location: String },

    #[error(
        "repository file {file} is corrupted: MAC check failed (the data was modified or damaged); run `restic check --read-data` to find all damaged files"
    )]
    MacMismatch { file: String },

    #[error("repository file {file} is corrupted: {reason}")]
    Corrupted { file: String, reason: String },

    #[error("unsupported repository version {version}: hoard reads versions 1 and 2")]
    UnsupportedVersion { version: u32 },

    #[error(
        "{kind} blob {id} is not in the repository index; the repository may be damaged (run `restic check`)"
    )]
    BlobNotFound { kind: &'static str, id: Id },

    #[error("no snapshot matches {query:?}; list them with `hoard snapshots`")]
    SnapshotNotFound { query: String },

    #[error(
        "snapshot prefix {query:?} is ambiguous: it matches {count} snapshots; give more characters"
    )]
    AmbiguousId { query: String, count: usize },

    #[error("invalid id {text:?}: expected 64 hexadecimal characters")]
    InvalidId { text: String },

    #[error(
        "repository is in use: {holder}; wait for it to finish (locks of dead processes, or not refreshed for 30 minutes, are removed automatically; `hoard unlock --remove-all` removes the rest)"
    )]
    Locked { holder: String },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{file} not found in the repository")]
    NotFound { file: String },

    #[error("refusing to overwrite {file} with different content (repository files are immutable)")]
    Conflict { file: String },

    #[error("backend error on {file}: {message}")]
    Backend { file: String, message: String },

    #[error("encoding {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("key derivation failed: {0}")]
    Kdf(String),

    #[error("operation cancelled")]
    Cancelled,
}

impl Error {
    pub(crate) fn corrupted(file: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupted {
            file: file.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
