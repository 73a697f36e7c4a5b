//! Measures the in-memory index's cost per blob: loads N synthetic blobs
//! (default 1,000,000, ~2,000 per pack like a small-file backup) and prints
//! the index's own accounting and the process RSS growth.
//!
//! `cargo run --release -p engine --example index_memory [N]`

use engine::index::{IndexBlob, IndexFile, IndexPack, MemIndex};
use engine::{BlobType, Id};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let per_pack = 2_000;
    let before = rss_kib();
    // Feed index files one at a time, as Repository::open streams them.
    let files = (0..n.div_ceil(per_pack)).map(|p| IndexFile {
        supersedes: vec![],
        packs: vec![IndexPack {
            id: Id::hash(&(p as u64).to_le_bytes()),
            blobs: (0..per_pack.min(n - p * per_pack))
                .map(|i| IndexBlob {
                    id: Id::hash(&((p * per_pack + i) as u64).to_be_bytes()),
                    blob_type: if i % 50 == 0 {
                        BlobType::Tree
                    } else {
                        BlobType::Data
                    },
                    offset: (i * 8000) as u32,
                    length: 8000,
                    uncompressed_length: Some(9000),
                })
                .collect(),
        }],
    });
    let t = std::time::Instant::now();
    let idx = MemIndex::bulk_load(files);
    let load = t.elapsed();
    let after = rss_kib();
    let ids: Vec<Id> = (0..n)
        .map(|i| Id::hash(&(i as u64).to_be_bytes()))
        .collect();
    let t = std::time::Instant::now();
    let mut found = 0;
    for id in &ids {
        let id = *id;
        found += usize::from(idx.has(BlobType::Data, &id) || idx.has(BlobType::Tree, &id));
    }
    let look = t.elapsed();
    assert_eq!(found, n);
    println!(
        "blobs={n} packs={} index_bytes={} ({:.1} B/blob, {:.1} MiB) rss_growth={:.1} MiB load={load:?} lookups={:.0} ns/op",
        idx.pack_count(),
        idx.mem_bytes(),
        idx.mem_bytes() as f64 / n as f64,
        idx.mem_bytes() as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / 1024.0,
        look.as_nanos() as f64 / n as f64,
    );
}
