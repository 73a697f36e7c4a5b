//! restic's published chunker test vectors (`chunker_test.go` in
//! github.com/restic/chunker): 32 MiB from Go's `math/rand` seeded with 23,
//! chunked with polynomial 0x3DA3358B4DC173. Go's generator is reproduced
//! here (its 607-value seed table is in `data/go_rng_cooked.txt`) so the
//! exact bytes restic tests with are chunked by hoard's chunker.

use engine::chunker::{ChunkerTables, FileChunker, MIN_SIZE, ScanState};
use sha2::{Digest, Sha256};

const TEST_POL: u64 = 0x3DA3358B4DC173;

/// Go's `math/rand` (pre-1.20 `rngSource`, still the seeded source).
struct GoRand {
    tap: usize,
    feed: usize,
    vec: [i64; 607],
}

fn seedrand(x: i32) -> i32 {
    const A: i32 = 48271;
    const Q: i32 = 44488;
    const R: i32 = 3399;
    let hi = x / Q;
    let lo = x % Q;
    let mut x = A.wrapping_mul(lo).wrapping_sub(R.wrapping_mul(hi));
    if x < 0 {
        x = x.wrapping_add(i32::MAX);
    }
    x
}

impl GoRand {
    fn new(seed: i64) -> Self {
        let cooked: Vec<i64> = include_str!("data/go_rng_cooked.txt")
            .split(',')
            .map(|s| s.trim().parse::<i64>().unwrap())
            .collect();
        assert_eq!(cooked.len(), 607);
        let mut r = GoRand {
            tap: 0,
            feed: 607 - 273,
            vec: [0; 607],
        };
        let mut seed = seed % i64::from(i32::MAX);
        if seed < 0 {
            seed += i64::from(i32::MAX);
        }
        if seed == 0 {
            seed = 89482311;
        }
        let mut x = seed as i32;
        for i in -20i32..607 {
            x = seedrand(x);
            if i >= 0 {
                let mut u = i64::from(x) << 40;
                x = seedrand(x);
                u ^= i64::from(x) << 20;
                x = seedrand(x);
                u ^= i64::from(x);
                u ^= cooked[i as usize];
                r.vec[i as usize] = u & i64::MAX;
            }
        }
        r
    }

    fn int63(&mut self) -> i64 {
        self.tap = if self.tap == 0 { 606 } else { self.tap - 1 };
        self.feed = if self.feed == 0 { 606 } else { self.feed - 1 };
        let x = self.vec[self.feed].wrapping_add(self.vec[self.tap]) & i64::MAX;
        self.vec[self.feed] = x;
        x
    }

    fn uint32(&mut self) -> u32 {
        (self.int63() >> 31) as u32
    }
}

fn go_random(seed: i64, len: usize) -> Vec<u8> {
    let mut r = GoRand::new(seed);
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        buf.extend_from_slice(&r.uint32().to_le_bytes());
    }
    buf
}

/// (length, cut fingerprint, sha256) from restic's `chunks1`.
const CHUNKS1: &[(usize, u64, &str)] = &[
    (
        2163460,
        0x000b98d4cdf00000,
        "4b94cb2cf293855ea43bf766731c74969b91aa6bf3c078719aabdd19860d590d",
    ),
    (
        643703,
        0x000d4e8364d00000,
        "5727a63c0964f365ab8ed2ccf604912f2ea7be29759a2b53ede4d6841e397407",
    ),
    (
        1528956,
        0x0015a25c2ef00000,
        "a73759636a1e7a2758767791c69e81b69fb49236c6929e5d1b654e06e37674ba",
    ),
    (
        1955808,
        0x00102a8242e00000,
        "c955fb059409b25f07e5ae09defbbc2aadf117c97a3724e06ad4abd2787e6824",
    ),
    (
        2222372,
        0x00045da878000000,
        "6ba5e9f7e1b310722be3627716cf469be941f7f3e39a4c3bcefea492ec31ee56",
    ),
    (
        2538687,
        0x00198a8179900000,
        "8687937412f654b5cfe4a82b08f28393a0c040f77c6f95e26742c2fc4254bfde",
    ),
    (
        609606,
        0x001d4e8d17100000,
        "5da820742ff5feb3369112938d3095785487456f65a8efc4b96dac4be7ebb259",
    ),
    (
        1205738,
        0x000a7204dd600000,
        "cc70d8fad5472beb031b1aca356bcab86c7368f40faa24fe5f8922c6c268c299",
    ),
    (
        959742,
        0x00183e71e1400000,
        "4065bdd778f95676c92b38ac265d361f81bff17d76e5d9452cf985a2ea5a4e39",
    ),
    (
        4036109,
        0x001fec043c700000,
        "b9cf166e75200eb4993fc9b6e22300a6790c75e6b0fc8f3f29b68a752d42f275",
    ),
    (
        1525894,
        0x000b1574b1500000,
        "2f238180e4ca1f7520a05f3d6059233926341090f9236ce677690c1823eccab3",
    ),
    (
        1352720,
        0x00018965f2e00000,
        "afd12f13286a3901430de816e62b85cc62468c059295ce5888b76b3af9028d84",
    ),
    (
        811884,
        0x00155628aa100000,
        "42d0cdb1ee7c48e552705d18e061abb70ae7957027db8ae8db37ec756472a70a",
    ),
    (
        1282314,
        0x001909a0a1400000,
        "819721c2457426eb4f4c7565050c44c32076a56fa9b4515a1c7796441730eb58",
    ),
    (
        1318021,
        0x001cceb980000000,
        "842eb53543db55bacac5e25cb91e43cc2e310fe5f9acc1aee86bdf5e91389374",
    ),
    (
        948640,
        0x0011f7a470a00000,
        "b8e36bf7019bb96ac3fb7867659d2167d9d3b3148c09fe0de45850b8fe577185",
    ),
    (
        645464,
        0x00030ce2d9400000,
        "5584bd27982191c3329f01ed846bfd266e96548dfa87018f745c33cfc240211d",
    ),
    (
        533758,
        0x0004435c53c00000,
        "4da778a25b72a9a0d53529eccfe2e5865a789116cb1800f470d8df685a8ab05d",
    ),
    (
        1128303,
        0x0000c48517800000,
        "08c6b0b38095b348d80300f0be4c5184d2744a17147c2cba5cc4315abf4c048f",
    ),
    (
        800374,
        0x000968473f900000,
        "820284d2c8fd243429674c996d8eb8d3450cbc32421f43113e980f516282c7bf",
    ),
    (
        2453512,
        0x001e197c92600000,
        "5fa870ed107c67704258e5e50abe67509fb73562caf77caa843b5f243425d853",
    ),
    (
        2651975,
        0x000ae6c868000000,
        "181347d2bbec32bef77ad5e9001e6af80f6abcf3576549384d334ee00c1988d8",
    ),
    (
        237392,
        0x0000000000000001,
        "fcd567f5d866357a8e299fd5b2359bb2c8157c30395229c4e9b0a353944a7978",
    ),
];

/// `chunks3`: the same data with average bits 19.
const CHUNKS3_LENGTHS: &[usize] = &[
    1491586, 671874, 643703, 1284146, 823366, 810134, 567118, 821315, 1401057, 2311122, 608723,
    980456, 1140278, 2015542, 904752, 713072, 675937, 1525894, 1352720, 811884, 1282314, 1093738,
    962003, 856384, 533758, 1128303, 800374, 2453512, 665901, 1986074, 237392,
];

#[test]
fn restic_chunks1_vector() {
    let data = go_random(23, 32 * 1024 * 1024);
    let t = ChunkerTables::new(TEST_POL).unwrap();
    let mut rest = &data[..];
    for (i, (len, cut, digest)) in CHUNKS1.iter().enumerate() {
        let mut st = ScanState::default();
        let n = t.next_boundary(rest, &mut st).unwrap_or(rest.len());
        assert_eq!(n, *len, "length of chunk {i}");
        if i + 1 < CHUNKS1.len() {
            assert_eq!(st.cut_fingerprint(), *cut, "cut fingerprint of chunk {i}");
        }
        assert_eq!(hex_sha(&rest[..n]), *digest, "sha256 of chunk {i}");
        rest = &rest[n..];
    }
    assert!(rest.is_empty());

    // The streaming reader used by backup cuts the same chunks.
    let mut fc = FileChunker::new(&t, &data[..], None);
    for (len, _, digest) in CHUNKS1 {
        let c = fc.next_chunk().unwrap().unwrap();
        assert_eq!(c.len(), *len);
        assert_eq!(hex_sha(&c), *digest);
    }
    assert!(fc.next_chunk().unwrap().is_none());
}

#[test]
fn restic_chunks3_vector_average_bits_19() {
    let data = go_random(23, 32 * 1024 * 1024);
    let t = ChunkerTables::with_average_bits(TEST_POL, 19).unwrap();
    assert_eq!(engine::chunker::chunk_lengths(&t, &data), CHUNKS3_LENGTHS);
}

#[test]
fn restic_chunks2_vector_zeros() {
    let t = ChunkerTables::new(TEST_POL).unwrap();
    let data = vec![0u8; 4 * MIN_SIZE];
    let mut fc = FileChunker::new(&t, &data[..], Some(data.len() as u64));
    for _ in 0..4 {
        let c = fc.next_chunk().unwrap().unwrap();
        assert_eq!(
            hex_sha(&c),
            "07854d2fef297a06ba81685e660c332de36d5d18d546927d30daad6d7fda1541"
        );
    }
    assert!(fc.next_chunk().unwrap().is_none());
}

fn hex_sha(d: &[u8]) -> String {
    Sha256::digest(d)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
