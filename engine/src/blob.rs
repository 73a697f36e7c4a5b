//! Blob encoding: zstd compression (repository v2), then encryption; and the
//! reverse with a check that the plaintext hashes to the blob id, so a blob
//! that decrypts but is the wrong one (a swapped index entry) is caught too.

use std::cell::RefCell;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::crypto::Key;
use crate::error::{Error, Result};
use crate::id::Id;

/// What a blob holds: file content or a directory listing (tree JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    Data,
    Tree,
}

impl BlobType {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        }
    }
}

impl fmt::Display for BlobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// zstd level for blobs and unpacked files. restic's "auto" is klauspost's
/// "SpeedDefault" (about zstd level 3). Level 2 is zstd's "fast" strategy
/// with level 3's table sizes for small inputs: measured on the benchmark's
/// log files (8 KiB blocks) it compresses 22-30 % faster than level 3 for
/// 1.8 % more output (ratio 2.868 vs 2.919; level 1: 2.856), and small
/// files of log text were the largest zstd cost of a backup.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 2;

/// Largest plaintext we agree to inflate a blob to. restic's chunks are at
/// most 8 MiB; trees of huge directories are larger, so leave ample room
/// while refusing absurd lengths from a hostile index.
pub const MAX_BLOB_PLAINTEXT: usize = 1 << 30;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    /// One decompression context per thread: creating one per blob cost 5 %
    /// of a restore's CPU on small files.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        match d.as_mut() {
            Some(dec) => dec.decompress(data, capacity),
            None => zstd::bulk::decompress(data, capacity),
        }
    })
}

fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, comp) = c.as_mut()?;
        if data.len() >= PROBE_MIN && !samples_shrink(comp, data) {
            return None;
        }
        // Only worth it if it shrinks: cap the output below the input size.
        let mut out = Vec::with_capacity(data.len());
        match comp.compress_to_buffer(data, &mut out) {
            Ok(_) if out.len() < data.len() => Some(out),
            _ => None,
        }
    })
}

/// Chunks at least this long are probed before being compressed whole.
const PROBE_MIN: usize = 256 * 1024;
/// Evenly spaced samples of a probed chunk, and their length: 64 KiB in
/// all, 4 % of an average (1.5 MiB) chunk.
const PROBE_SAMPLES: usize = 8;
const PROBE_LEN: usize = 8 * 1024;

/// Whether `data`'s samples, compressed like the whole, come out smaller.
///
/// Random or already-compressed data (media, archives, encrypted files) is
/// stored uncompressed anyway (see [`encode`]), but compressing a chunk
/// whole only to find that out cost the benchmark's random files 1.5 GB/s of
/// zstd work per core. Only when no sample shrinks at all is the chunk
/// stored without trying; a compressible stretch at least twice the sample
/// spacing long always covers a whole sample.
fn samples_shrink(comp: &mut zstd::bulk::Compressor<'static>, data: &[u8]) -> bool {
    let step = data.len() / PROBE_SAMPLES;
    let mut out = Vec::with_capacity(PROBE_LEN);
    (0..PROBE_SAMPLES).any(|i| {
        let sample = &data[i * step..][..PROBE_LEN.min(step)];
        out.clear();
        // An error is "does not fit in the sample's length": no gain.
        matches!(comp.compress_to_buffer(sample, &mut out), Ok(n) if n < sample.len())
    })
}

/// A blob ready to go into a pack.
#[derive(Debug, Clone)]
pub struct EncodedBlob {
    /// `IV || ciphertext || MAC`.
    pub bytes: Vec<u8>,
    /// Set when the plaintext was compressed (v2 compressed blob types).
    pub uncompressed_length: Option<u32>,
}

/// Compresses (when `level` is `Some` and it helps) and encrypts.
///
/// restic 0.14 always compresses in v2 repositories; storing incompressible
/// data uncompressed is equally valid v2 (uncompressed and compressed blobs
/// may be mixed) and saves the reader a decompression pass.
pub fn encode(key: &Key, plaintext: &[u8], level: Option<i32>) -> Result<EncodedBlob> {
    let len32 = u32::try_from(plaintext.len())
        .map_err(|_| Error::corrupted("blob", "blob larger than 4 GiB cannot be stored"))?;
    if let Some(c) = level
        .filter(|_| !plaintext.is_empty())
        .and_then(|level| compress(plaintext, level))
    {
        return Ok(EncodedBlob {
            bytes: key.encrypt(&c),
            uncompressed_length: Some(len32),
        });
    }
    Ok(EncodedBlob {
        bytes: key.encrypt(plaintext),
        uncompressed_length: None,
    })
}

/// Decrypts, decompresses and verifies `raw` (one blob's bytes from a pack).
/// `file` names where it came from, for the error message.
pub fn decode(
    key: &Key,
    id: &Id,
    raw: &[u8],
    uncompressed_length: Option<u32>,
    file: &str,
) -> Result<Vec<u8>> {
    let pt = key.decrypt(raw).map_err(|_| Error::MacMismatch {
        file: format!("{file} (blob {id})"),
    })?;
    let pt = match uncompressed_length {
        None => pt,
        Some(ul) => {
            let ul = ul as usize;
            if ul > MAX_BLOB_PLAINTEXT {
                return Err(Error::corrupted(
                    file,
                    format!("blob {id}: uncompressed length {ul} is implausible"),
                ));
            }
            let out = decompress(&pt, ul)
                .map_err(|e| Error::corrupted(file, format!("blob {id}: zstd: {e}")))?;
            if out.len() != ul {
                return Err(Error::corrupted(
                    file,
                    format!(
                        "blob {id}: decompressed to {} bytes, index says {ul}",
                        out.len()
                    ),
                ));
            }
            out
        }
    };
    if Id::hash(&pt) != *id {
        return Err(Error::corrupted(
            file,
            format!("blob {id}: content does not match its id"),
        ));
    }
    Ok(pt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_and_random_roundtrip() {
        let key = Key::random();
        let text = b"log line 12345 something happened\n".repeat(1000);
        let e = encode(&key, &text, Some(3)).unwrap();
        assert_eq!(e.uncompressed_length, Some(text.len() as u32));
        assert!(e.bytes.len() < text.len() / 10);
        assert_eq!(
            decode(&key, &Id::hash(&text), &e.bytes, e.uncompressed_length, "p").unwrap(),
            text
        );

        let rnd: Vec<u8> = (0..10_000).map(|_| rand::random::<u8>()).collect();
        let e = encode(&key, &rnd, Some(3)).unwrap();
        assert_eq!(
            e.uncompressed_length, None,
            "random data is stored uncompressed"
        );
        assert_eq!(
            decode(&key, &Id::hash(&rnd), &e.bytes, None, "p").unwrap(),
            rnd
        );

        let e = encode(&key, b"", Some(3)).unwrap();
        assert_eq!(
            decode(&key, &Id::hash(b""), &e.bytes, e.uncompressed_length, "p").unwrap(),
            b""
        );
    }

    #[test]
    fn large_chunks_compress_unless_every_sample_is_incompressible() {
        let key = Key::random();
        let mut rnd: Vec<u8> = (0..PROBE_MIN * 2).map(|_| rand::random::<u8>()).collect();
        let e = encode(&key, &rnd, Some(3)).unwrap();
        assert_eq!(e.uncompressed_length, None, "random chunk stored as is");
        // One compressible stretch covering a single sample is enough.
        let step = rnd.len() / PROBE_SAMPLES;
        rnd[3 * step..3 * step + 2 * PROBE_LEN].fill(b'a');
        let e = encode(&key, &rnd, Some(3)).unwrap();
        assert_eq!(e.uncompressed_length, Some(rnd.len() as u32));
        assert!(e.bytes.len() < rnd.len());
        assert_eq!(
            decode(&key, &Id::hash(&rnd), &e.bytes, e.uncompressed_length, "p").unwrap(),
            rnd
        );
    }

    #[test]
    fn wrong_id_and_tamper_detected() {
        let key = Key::random();
        let e = encode(&key, b"abc", None).unwrap();
        let err = decode(&key, &Id::hash(b"abd"), &e.bytes, None, "data/x").unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let mut bad = e.bytes.clone();
        bad[20] ^= 1;
        let err = decode(&key, &Id::hash(b"abc"), &bad, None, "data/x").unwrap_err();
        assert!(matches!(err, Error::MacMismatch { .. }), "{err}");
        assert!(err.to_string().contains("data/x"));
    }
}
