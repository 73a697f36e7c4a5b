//! Index files (JSON, restic format) and the compact in-memory index.
//!
//! The in-memory index keeps, per blob type, one sorted `Vec` of fixed-size
//! 48-byte entries (id, pack number, offset, length, uncompressed length);
//! pack ids live once in a pack table. Blobs added during a session go into a
//! small hash map that is merged into the sorted vector when it grows past a
//! quarter of it, so inserts stay amortised O(log n) and memory stays ~48
//! bytes per blob plus the pack table.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::blob::BlobType;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::PackedBlob;

/// An index file's JSON.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    #[serde(default)]
    pub packs: Vec<IndexPack>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IndexPack {
    pub id: Id,
    #[serde(default)]
    pub blobs: Vec<IndexBlob>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IndexBlob {
    pub id: Id,
    #[serde(rename = "type")]
    pub blob_type: BlobType,
    pub offset: u32,
    pub length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

impl IndexPack {
    pub fn from_packed(id: Id, blobs: &[PackedBlob]) -> IndexPack {
        IndexPack {
            id,
            blobs: blobs
                .iter()
                .map(|b| IndexBlob {
                    id: b.id,
                    blob_type: b.blob_type,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                })
                .collect(),
        }
    }
}

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub offset: u64,
    /// Encrypted length in the pack.
    pub length: u64,
    /// Plaintext length when the blob is compressed.
    pub uncompressed_length: Option<u32>,
}

impl BlobLocation {
    /// The blob's plaintext size.
    pub fn data_len(&self) -> u64 {
        match self.uncompressed_length {
            Some(u) => u64::from(u),
            None => self.length.saturating_sub(crate::crypto::OVERHEAD as u64),
        }
    }
}

/// 48 bytes per blob. `ulen == 0` means uncompressed (a compressed blob of
/// zero plaintext bytes is never written; a stored one decodes either way
/// because the hash check settles it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: [u8; 32],
    pack: u32,
    offset: u32,
    length: u32,
    ulen: u32,
}

/// Buckets of the first-two-bytes fan-out table: lookups binary-search only
/// the ~n/65536 entries sharing an id's first two bytes (ids are uniformly
/// distributed hashes), saving most cache misses of a full binary search
/// for 256 KiB per blob type.
const FANOUT: usize = 1 << 16;

#[derive(Debug, Default)]
struct TypeIndex {
    sorted: Vec<Entry>,
    /// `fanout[p]..fanout[p + 1]` is the range of `sorted` whose ids start
    /// with the 16-bit prefix `p`; empty until the first sort.
    fanout: Vec<u32>,
    pending: HashMap<[u8; 32], Entry>,
}

fn prefix(id: &[u8; 32]) -> usize {
    usize::from(u16::from_be_bytes([id[0], id[1]]))
}

impl TypeIndex {
    fn get(&self, id: &Id) -> Option<&Entry> {
        let (lo, hi) = match self.fanout.len() {
            0 => (0, self.sorted.len()),
            _ => {
                let p = prefix(&id.0);
                (self.fanout[p] as usize, self.fanout[p + 1] as usize)
            }
        };
        let part = &self.sorted[lo..hi];
        if let Ok(i) = part.binary_search_by(|e| e.id.cmp(&id.0)) {
            return Some(&part[i]);
        }
        if self.pending.is_empty() {
            return None;
        }
        self.pending.get(&id.0)
    }

    fn build_fanout(&mut self) {
        if self.sorted.len() < 4096 {
            // Small indexes: a plain binary search is as fast, skip 256 KiB.
            self.fanout = Vec::new();
            return;
        }
        let mut f = vec![0u32; FANOUT + 1];
        for e in &self.sorted {
            f[prefix(&e.id) + 1] += 1;
        }
        for i in 1..=FANOUT {
            f[i] += f[i - 1];
        }
        self.fanout = f;
    }

    fn insert(&mut self, e: Entry) {
        if self.get(&Id(e.id)).is_some() {
            return;
        }
        self.pending.insert(e.id, e);
        if self.pending.len() > 65_536.max(self.sorted.len() / 4) {
            self.merge();
        }
    }

    fn merge(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.sorted.reserve_exact(self.pending.len());
        self.sorted.extend(self.pending.drain().map(|(_, e)| e));
        self.sorted.sort_unstable_by_key(|e| e.id);
        self.sorted.dedup_by(|a, b| a.id == b.id);
        self.pending = HashMap::new();
        self.build_fanout();
    }

    fn bulk_finish(&mut self) {
        self.sorted.sort_unstable_by_key(|e| e.id);
        self.sorted.dedup_by(|a, b| a.id == b.id);
        self.sorted.shrink_to_fit();
        self.build_fanout();
    }

    fn len(&self) -> usize {
        self.sorted.len() + self.pending.len()
    }

    fn mem_bytes(&self) -> usize {
        self.sorted.capacity() * std::mem::size_of::<Entry>()
            + self.fanout.capacity() * 4
            + self.pending.capacity() * (std::mem::size_of::<Entry>() + 32 + 8)
    }
}

/// The in-memory index of all blobs in the repository.
#[derive(Debug, Default)]
pub struct MemIndex {
    packs: Vec<Id>,
    pack_nums: HashMap<Id, u32>,
    data: TypeIndex,
    tree: TypeIndex,
}

impl MemIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn ti(&self, t: BlobType) -> &TypeIndex {
        match t {
            BlobType::Data => &self.data,
            BlobType::Tree => &self.tree,
        }
    }

    fn ti_mut(&mut self, t: BlobType) -> &mut TypeIndex {
        match t {
            BlobType::Data => &mut self.data,
            BlobType::Tree => &mut self.tree,
        }
    }

    fn pack_num(&mut self, id: Id) -> u32 {
        if let Some(&n) = self.pack_nums.get(&id) {
            return n;
        }
        let n = self.packs.len() as u32;
        self.packs.push(id);
        self.pack_nums.insert(id, n);
        n
    }

    /// Adds a pack's blobs (a just-written pack, or a loaded index entry).
    pub fn add_pack(&mut self, pack: &IndexPack) {
        let pn = self.pack_num(pack.id);
        for b in &pack.blobs {
            let e = Entry {
                id: b.id.0,
                pack: pn,
                offset: b.offset,
                length: b.length,
                ulen: b.uncompressed_length.unwrap_or(0),
            };
            self.ti_mut(b.blob_type).insert(e);
        }
    }

    /// Loads many index files at once: append everything, sort once.
    pub fn bulk_load(files: impl IntoIterator<Item = IndexFile>) -> MemIndex {
        let mut idx = MemIndex::new();
        for f in files {
            for p in f.packs {
                let pn = idx.pack_num(p.id);
                for b in p.blobs {
                    let e = Entry {
                        id: b.id.0,
                        pack: pn,
                        offset: b.offset,
                        length: b.length,
                        ulen: b.uncompressed_length.unwrap_or(0),
                    };
                    idx.ti_mut(b.blob_type).sorted.push(e);
                }
            }
        }
        idx.data.bulk_finish();
        idx.tree.bulk_finish();
        idx.packs.shrink_to_fit();
        idx
    }

    pub fn has(&self, t: BlobType, id: &Id) -> bool {
        self.ti(t).get(id).is_some()
    }

    pub fn get(&self, t: BlobType, id: &Id) -> Option<BlobLocation> {
        let e = self.ti(t).get(id)?;
        Some(BlobLocation {
            pack: self.packs[e.pack as usize],
            offset: u64::from(e.offset),
            length: u64::from(e.length),
            uncompressed_length: (e.ulen != 0).then_some(e.ulen),
        })
    }

    pub fn len(&self) -> usize {
        self.data.len() + self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_nums.contains_key(id)
    }

    /// Approximate heap bytes held (entries, pack table and its map).
    pub fn mem_bytes(&self) -> usize {
        self.data.mem_bytes()
            + self.tree.mem_bytes()
            + self.packs.capacity() * 32
            + self.pack_nums.capacity() * (32 + 4 + 8)
    }

    /// Ids of all blobs of type `t` (sorted part first).
    pub fn ids(&self, t: BlobType) -> impl Iterator<Item = Id> + '_ {
        let ti = self.ti(t);
        ti.sorted
            .iter()
            .map(|e| Id(e.id))
            .chain(ti.pending.keys().map(|k| Id(*k)))
    }
}

/// Parses an index file's JSON (after decryption and decompression).
pub fn parse_index(json: &[u8], file: &str) -> Result<IndexFile> {
    serde_json::from_slice(json).map_err(|e| Error::corrupted(file, format!("index JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ib(n: u8, t: BlobType, off: u32, ul: Option<u32>) -> IndexBlob {
        IndexBlob {
            id: Id([n; 32]),
            blob_type: t,
            offset: off,
            length: 100,
            uncompressed_length: ul,
        }
    }

    #[test]
    fn restic_json_shape() {
        let f = IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: Id([1; 32]),
                blobs: vec![
                    ib(2, BlobType::Data, 0, None),
                    ib(3, BlobType::Tree, 100, Some(300)),
                ],
            }],
        };
        let j = serde_json::to_string(&f).unwrap();
        assert!(!j.contains("supersedes"));
        assert!(
            j.contains(r#""type":"tree","offset":100,"length":100,"uncompressed_length":300"#),
            "{j}"
        );
        assert!(!j.contains(r#""length":100,"uncompressed_length":null"#));
        let restic = r#"{"supersedes":["ed54ae36197f4745ebc4b54d10e0f623eaaaedd03013eb7ae90df881b7781452"],"packs":[{"id":"73d04e6125cf3c28a299cc2f3cca3b78ceac396e4fcf9575e34536b26782413c","blobs":[{"id":"3ec79977ef0cf5de7b08cd12b874cd0f62bbaf7f07f3497a5b1bbcc8cb39b1ce","type":"data","offset":0,"length":38},{"id":"9ccb846e60d90d4eb915848add7aa7ea1e4bbabfc60e573db9f7bfb2789afbae","type":"data","offset":38,"length":112,"uncompressed_length":511}]}]}"#;
        let f = parse_index(restic.as_bytes(), "i").unwrap();
        assert_eq!(f.supersedes.len(), 1);
        assert_eq!(f.packs[0].blobs[1].uncompressed_length, Some(511));
    }

    #[test]
    fn memindex_bulk_and_incremental() {
        let p = IndexPack {
            id: Id([9; 32]),
            blobs: vec![
                ib(2, BlobType::Data, 0, None),
                ib(3, BlobType::Tree, 100, Some(300)),
            ],
        };
        let idx = MemIndex::bulk_load([IndexFile {
            supersedes: vec![],
            packs: vec![p.clone()],
        }]);
        let loc = idx.get(BlobType::Tree, &Id([3; 32])).unwrap();
        assert_eq!(
            (loc.pack, loc.offset, loc.uncompressed_length),
            (Id([9; 32]), 100, Some(300))
        );
        assert!(!idx.has(BlobType::Data, &Id([3; 32])), "types are separate");
        let mut idx = MemIndex::new();
        for i in 0..200_000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            idx.add_pack(&IndexPack {
                id: Id([(i % 7) as u8; 32]),
                blobs: vec![IndexBlob {
                    id: Id(id),
                    blob_type: BlobType::Data,
                    offset: i,
                    length: 40,
                    uncompressed_length: None,
                }],
            });
        }
        assert_eq!(idx.len(), 200_000);
        for i in (0..200_000u32).step_by(997) {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            assert_eq!(
                idx.get(BlobType::Data, &Id(id)).unwrap().offset,
                u64::from(i)
            );
        }
    }

    proptest! {
        #[test]
        fn index_json_roundtrip(packs in proptest::collection::vec(
            (any::<[u8; 32]>(), proptest::collection::vec((any::<[u8; 32]>(), any::<bool>(), any::<u32>(), any::<u32>(), proptest::option::of(any::<u32>())), 0..5)), 0..5)) {
            let f = IndexFile {
                supersedes: vec![],
                packs: packs.into_iter().map(|(p, bs)| IndexPack {
                    id: Id(p),
                    blobs: bs.into_iter().map(|(id, t, o, l, u)| IndexBlob {
                        id: Id(id), blob_type: if t { BlobType::Tree } else { BlobType::Data },
                        offset: o, length: l, uncompressed_length: u }).collect(),
                }).collect(),
            };
            let j = serde_json::to_vec(&f).unwrap();
            prop_assert_eq!(parse_index(&j, "i").unwrap(), f);
        }

        #[test]
        fn random_index_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_index(&b, "i");
        }

        #[test]
        fn random_index_text_never_panics(s in r#"\{"packs":\[\{"id":"[0-9a-f]{0,64}","blobs":\[\{"id":"[0-9a-f]{64}","type":"(data|tree|x)","offset":-?[0-9]{1,12},"length":[0-9]{1,12}\}\]\}\]\}"#) {
            let _ = parse_index(s.as_bytes(), "i");
        }
    }
}
