//! Index files come from untrusted storage: any JSON must parse to an error
//! or an index that loads and answers lookups without panicking.
#![no_main]

use engine::index::{MemIndex, parse_index};
use engine::BlobType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = parse_index(data, "fuzz") {
        let ids: Vec<_> = f.packs.iter().flat_map(|p| p.blobs.iter().map(|b| (b.blob_type, b.id))).collect();
        let idx = MemIndex::bulk_load([f]);
        for (t, id) in ids {
            assert!(idx.get(t, &id).is_some());
        }
        let _ = idx.has(BlobType::Tree, &engine::Id::default());
    }
});
