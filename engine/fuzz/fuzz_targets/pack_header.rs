//! Pack headers come from untrusted storage: parsing arbitrary bytes must
//! return an error or entries that lie within the pack, never panic.
#![no_main]

use engine::crypto::Key;
use engine::pack::{header_location, parse_header, read_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let data_len = u64::from_le_bytes(data[..8].try_into().unwrap());
        if let Ok(blobs) = parse_header(&data[8..], data_len, "fuzz") {
            for b in blobs {
                assert!(u64::from(b.offset) + u64::from(b.length) <= data_len);
            }
        }
    }
    let _ = header_location(data.len() as u64, data, "fuzz");
    let key = Key::from_bytes(&[7u8; 64]);
    let _ = read_header(&key, data, "fuzz");
});
