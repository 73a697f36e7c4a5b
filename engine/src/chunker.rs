//! Content-defined chunking, cut for cut the same as restic's Rabin chunker
//! (`github.com/restic/chunker`), so data that restic stored deduplicates
//! against data that hoard stores and vice versa.
//!
//! Data flow: the backup builds one [`ChunkerTables`] per repository
//! polynomial (the two 256-entry lookup tables cost ~16k polynomial
//! reductions; rebuilding them per file was 54% of rustic_core's CPU on small
//! files) and shares it by reference with every reader thread. Each thread
//! wraps a file in a [`FileChunker`], which reads the file in blocks and hands
//! out one owned `Vec<u8>` per chunk.
//!
//! The rolling hash at every candidate cut point depends only on the 64 bytes
//! of the window that ends there: restic resets the hash at each chunk start
//! and skips `MIN_SIZE - 64` bytes before hashing, so the window is full of
//! chunk data by the first possible cut at `MIN_SIZE`. That lets the scanner
//! read the outgoing window byte straight from the chunk buffer instead of
//! keeping a ring buffer, which keeps the inner loop to two table lookups.

use std::io::{self, Read};

/// Smallest chunk restic cuts (except the last chunk of a file).
pub const MIN_SIZE: usize = 512 * 1024;
/// Stretches shorter than `LANES` times this are scanned as one chain.
const PARALLEL_SCAN_MIN: usize = 4096;
/// Independent hash chains interleaved over a long stretch.
const LANES: usize = 4;
/// Largest chunk: a cut is forced here.
pub const MAX_SIZE: usize = 8 * 1024 * 1024;
/// Bytes in the rolling-hash window.
pub const WINDOW_SIZE: usize = 64;
/// restic's default: a cut where the low 20 bits of the hash are zero, i.e.
/// 1 MiB average chunks beyond the minimum.
pub const AVERAGE_BITS: u32 = 20;

/// Bytes read from a file per `read` call once the minimum chunk is in
/// memory. Small enough that the bytes read past a cut (copied into the next
/// chunk's buffer) cost little, large enough for few syscalls.
const READ_BLOCK: usize = 256 * 1024;

/// A polynomial the chunker cannot use.
#[derive(Debug, thiserror::Error)]
#[error(
    "chunker polynomial {0:#x} has degree {1}; restic repositories use degree-53 polynomials \
     (the repository config is damaged or was not written by restic/hoard)"
)]
pub struct BadPolynomial(pub u64, pub i32);

/// Degree of a GF(2) polynomial stored as bits; -1 for zero.
fn deg(p: u64) -> i32 {
    63 - p.leading_zeros() as i32
}

/// `x mod d` over GF(2).
fn pol_mod(mut x: u64, d: u64) -> u64 {
    let dd = deg(d);
    while deg(x) >= dd {
        x ^= d << (deg(x) - dd);
    }
    x
}

/// Lookup tables for one polynomial; build once, share for every file.
#[derive(Clone)]
pub struct ChunkerTables {
    pol: u64,
    /// `out[b]` = hash of `b` followed by 63 zero bytes: XOR it in to drop `b`
    /// from the window.
    out: Box<[u64; 256]>,
    /// `modt[b]` = `(b << deg) mod pol | b << deg`: one XOR reduces the 8 bits
    /// that a shift pushes above the degree.
    modt: Box<[u64; 256]>,
    shift: u32,
    split_mask: u64,
}

impl std::fmt::Debug for ChunkerTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkerTables")
            .field("pol", &format_args!("{:#x}", self.pol))
            .finish_non_exhaustive()
    }
}

impl ChunkerTables {
    /// Tables for `pol` with restic's default 1 MiB average chunk size.
    pub fn new(pol: u64) -> Result<Self, BadPolynomial> {
        Self::with_average_bits(pol, AVERAGE_BITS)
    }

    /// Tables with a different average (restic's `WithAverageBits`); only
    /// restic's own test vectors use this.
    pub fn with_average_bits(pol: u64, bits: u32) -> Result<Self, BadPolynomial> {
        let d = deg(pol);
        // digest << 8 must fit in 64 bits, and the top-byte index needs deg > 8.
        if !(9..=56).contains(&d) {
            return Err(BadPolynomial(pol, d));
        }
        let mut out = Box::new([0u64; 256]);
        for (b, slot) in out.iter_mut().enumerate() {
            let mut h = pol_mod(b as u64, pol);
            for _ in 0..WINDOW_SIZE - 1 {
                h = pol_mod(h << 8, pol);
            }
            *slot = h;
        }
        let mut modt = Box::new([0u64; 256]);
        for (b, slot) in modt.iter_mut().enumerate() {
            let hi = (b as u64) << d;
            *slot = pol_mod(hi, pol) | hi;
        }
        Ok(Self {
            pol,
            out,
            modt,
            shift: (d - 8) as u32,
            split_mask: (1u64 << bits) - 1,
        })
    }

    /// The polynomial these tables were built for.
    pub fn polynomial(&self) -> u64 {
        self.pol
    }

    /// Continue scanning the chunk that starts at `data[0]`. `state` carries
    /// the hash between calls while `data` grows. Returns the chunk length at
    /// a cut point (`<= data.len()`), or `None` when more data is needed.
    pub fn next_boundary(&self, data: &[u8], state: &mut ScanState) -> Option<usize> {
        if state.pos < MIN_SIZE {
            // Warm-up: hash the window that ends at the first cut candidate.
            if data.len() < MIN_SIZE {
                return None;
            }
            let mut d = 0u64;
            for &b in &data[MIN_SIZE - WINDOW_SIZE..MIN_SIZE] {
                d = self.append(d, b);
            }
            state.digest = d;
            state.pos = MIN_SIZE;
            if d & self.split_mask == 0 {
                state.cut = d;
                return Some(MIN_SIZE);
            }
        }
        let end = data.len().min(MAX_SIZE);
        let start = state.pos;
        if start < end {
            let out = &*self.out;
            let modt = &*self.modt;
            let shift = self.shift;
            let mask = self.split_mask;
            let step = |d: u64, o: u8, b: u8| {
                let d = d ^ out[o as usize];
                let idx = (d >> shift) as u8;
                ((d << 8) | u64::from(b)) ^ modt[idx as usize]
            };
            let mut d = state.digest;
            // The digest at a position depends only on the window's 64
            // bytes, so each quarter of a long stretch can be hashed from a
            // fresh warm-up, interleaved with the others: four independent
            // dependency chains keep the core's pipeline full (one chain
            // waits on each table lookup; two still left it half idle). The
            // first cut in order wins, exactly as a one-byte-at-a-time scan
            // finds it: lane 0 stops at its first cut, and the later lanes
            // (which only record their first cut) cover later bytes.
            let mut from = start;
            if end - start >= LANES * PARALLEL_SCAN_MIN {
                let q = (end - start) / LANES;
                let warm = |at: usize| {
                    data[at - WINDOW_SIZE..at]
                        .iter()
                        .fold(0u64, |d, &b| self.append(d, b))
                };
                let (s1, s2, s3) = (start + q, start + 2 * q, start + 3 * q);
                let (mut d1, mut d2, mut d3) = (warm(s1), warm(s2), warm(s3));
                let lane = |at: usize| {
                    (
                        &data[at - WINDOW_SIZE..at - WINDOW_SIZE + q],
                        &data[at..at + q],
                    )
                };
                let ((l0, e0), (l1, e1), (l2, e2), (l3, e3)) =
                    (lane(start), lane(s1), lane(s2), lane(s3));
                // First cut of lanes 1-3: (position after the cut, digest).
                let mut cuts: [Option<(usize, u64)>; LANES] = [None; LANES];
                for k in 0..q {
                    d = step(d, l0[k], e0[k]);
                    if d & mask == 0 {
                        state.digest = d;
                        state.cut = d;
                        state.pos = start + k + 1;
                        return Some(start + k + 1);
                    }
                    // Stepping on past a lane's first cut is harmless (the
                    // digest depends only on the window); only the first
                    // one is kept.
                    d1 = step(d1, l1[k], e1[k]);
                    d2 = step(d2, l2[k], e2[k]);
                    d3 = step(d3, l3[k], e3[k]);
                    if (d1 & mask == 0) | (d2 & mask == 0) | (d3 & mask == 0) {
                        for (c, (dj, sj)) in
                            cuts[1..].iter_mut().zip([(d1, s1), (d2, s2), (d3, s3)])
                        {
                            if c.is_none() && dj & mask == 0 {
                                *c = Some((sj + k + 1, dj));
                            }
                        }
                    }
                }
                if let Some((at, cut)) = cuts.iter().flatten().next().copied() {
                    state.digest = cut;
                    state.cut = cut;
                    state.pos = at;
                    return Some(at);
                }
                // The last lane hashed up to s3 + q; the stretch's remainder
                // (fewer than LANES bytes) follows.
                d = d3;
                from = s3 + q;
            }
            let leaving = &data[from - WINDOW_SIZE..end - WINDOW_SIZE];
            let entering = &data[from..end];
            for (i, (&o, &b)) in leaving.iter().zip(entering).enumerate() {
                d = step(d, o, b);
                if d & mask == 0 {
                    state.digest = d;
                    state.cut = d;
                    state.pos = from + i + 1;
                    return Some(from + i + 1);
                }
            }
            state.digest = d;
            state.pos = end;
        }
        if state.pos >= MAX_SIZE {
            state.cut = state.digest;
            return Some(MAX_SIZE);
        }
        None
    }

    fn append(&self, d: u64, b: u8) -> u64 {
        let idx = (d >> self.shift) as u8;
        ((d << 8) | u64::from(b)) ^ self.modt[idx as usize]
    }
}

/// Hash state of the chunk being scanned; start each chunk with `default()`.
#[derive(Debug, Default, Clone)]
pub struct ScanState {
    digest: u64,
    pos: usize,
    cut: u64,
}

impl ScanState {
    /// Rolling-hash value at the last cut (restic's `Chunk.Cut`).
    pub fn cut_fingerprint(&self) -> u64 {
        self.cut
    }
}

/// Splits one reader into chunks. Memory: one chunk buffer (≤ 8 MiB + one
/// read block) plus the carry-over of at most one read block.
pub struct FileChunker<'t, R> {
    tables: &'t ChunkerTables,
    reader: R,
    carry: Vec<u8>,
    eof: bool,
    size_hint: Option<u64>,
    bytes_read: u64,
}

impl<'t, R: Read> FileChunker<'t, R> {
    /// `size_hint` (the file size from `fstat`) lets small files get a buffer
    /// of their size instead of a 512 KiB one.
    pub fn new(tables: &'t ChunkerTables, reader: R, size_hint: Option<u64>) -> Self {
        Self {
            tables,
            reader,
            carry: Vec::new(),
            eof: false,
            size_hint,
            bytes_read: 0,
        }
    }

    /// Bytes read from the reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next chunk, or `None` at the end of the data.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = std::mem::take(&mut self.carry);
        if buf.capacity() == 0 {
            let remaining = self
                .size_hint
                .map(|s| s.saturating_sub(self.bytes_read) as usize + 1);
            let cap = remaining.unwrap_or(MIN_SIZE).min(MIN_SIZE + READ_BLOCK);
            buf.reserve_exact(cap);
        }
        let mut state = ScanState::default();
        loop {
            if let Some(cut) = self.tables.next_boundary(&buf, &mut state) {
                if cut < buf.len() {
                    let mut rest = Vec::with_capacity(
                        MIN_SIZE.min(
                            self.size_hint
                                .map(|s| {
                                    s.saturating_sub(self.bytes_read) as usize + buf.len() - cut + 1
                                })
                                .unwrap_or(MIN_SIZE),
                        ),
                    );
                    rest.extend_from_slice(&buf[cut..]);
                    self.carry = rest;
                    buf.truncate(cut);
                }
                return Ok(Some(buf));
            }
            if self.eof {
                return Ok(if buf.is_empty() { None } else { Some(buf) });
            }
            let want = if buf.len() < MIN_SIZE {
                MIN_SIZE - buf.len()
            } else {
                READ_BLOCK
            };
            let n = read_up_to(&mut self.reader, &mut buf, want)?;
            self.bytes_read += n as u64;
            if n < want {
                self.eof = true;
            }
        }
    }
}

/// Append up to `want` bytes to `buf`; fewer only at end of data.
fn read_up_to<R: Read>(r: &mut R, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let start = buf.len();
    buf.reserve(want);
    let mut got = 0;
    // Read into spare capacity without zeroing 256 KiB per call: `take` +
    // `read_to_end` appends exactly what the reader returns.
    while got < want {
        let n = r
            .by_ref()
            .take((want - got) as u64)
            .read_to_end(buf)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(0)
                } else {
                    Err(e)
                }
            })?;
        if n == 0 {
            break;
        }
        got += n;
    }
    debug_assert_eq!(buf.len(), start + got);
    Ok(got)
}

/// Split an in-memory buffer (tests, small blobs): chunk lengths in order.
pub fn chunk_lengths(tables: &ChunkerTables, mut data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut st = ScanState::default();
        let n = tables.next_boundary(data, &mut st).unwrap_or(data.len());
        out.push(n);
        data = &data[n..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEST_POL: u64 = 0x3DA3358B4DC173;

    #[test]
    fn zeros_cut_at_min_size() {
        // restic's chunks2 vector: all-zero data hashes to 0 at every window.
        let t = ChunkerTables::new(TEST_POL).unwrap();
        let data = vec![0u8; 4 * MIN_SIZE];
        assert_eq!(chunk_lengths(&t, &data), vec![MIN_SIZE; 4]);
    }

    #[test]
    fn rejects_degenerate_polynomials() {
        assert!(ChunkerTables::new(0).is_err());
        assert!(ChunkerTables::new(0x1ff).is_err());
        assert!(ChunkerTables::new(1 << 60).is_err());
    }

    fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn file_chunker_matches_in_memory_split() {
        let t = ChunkerTables::new(TEST_POL).unwrap();
        let data = pseudo_random(7, 11 * 1024 * 1024 + 12345);
        let want = chunk_lengths(&t, &data);
        for hint in [None, Some(data.len() as u64)] {
            let mut fc = FileChunker::new(&t, &data[..], hint);
            let mut got = Vec::new();
            let mut all = Vec::new();
            while let Some(c) = fc.next_chunk().unwrap() {
                got.push(c.len());
                all.extend_from_slice(&c);
            }
            assert_eq!(got, want);
            assert_eq!(all, data);
        }
    }

    #[test]
    fn max_size_forces_a_cut() {
        // A polynomial/mask that never matches is hard to build, so use 1 bit
        // more than the data can satisfy: 63 average bits never hit 0 on
        // random data within 8 MiB except by astronomically small chance.
        let t = ChunkerTables::with_average_bits(TEST_POL, 53).unwrap();
        let data = pseudo_random(3, MAX_SIZE + 1000);
        assert_eq!(chunk_lengths(&t, &data), vec![MAX_SIZE, 1000]);
    }

    /// The scan one byte at a time (restic's loop), without the two-chain
    /// interleaving: the reference the fast scan must agree with.
    fn reference_lengths(t: &ChunkerTables, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            if rest.len() <= MIN_SIZE {
                out.push(rest.len());
                break;
            }
            let mut d = 0u64;
            for &b in &rest[MIN_SIZE - WINDOW_SIZE..MIN_SIZE] {
                d = t.append(d, b);
            }
            let mut cut = (d & t.split_mask == 0).then_some(MIN_SIZE);
            let end = rest.len().min(MAX_SIZE);
            let mut p = MIN_SIZE;
            while cut.is_none() && p < end {
                d ^= t.out[rest[p - WINDOW_SIZE] as usize];
                d = t.append(d, rest[p]);
                p += 1;
                if d & t.split_mask == 0 {
                    cut = Some(p);
                }
            }
            let n = cut.unwrap_or(end);
            out.push(n);
            rest = &rest[n..];
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn interleaved_scan_cuts_where_the_byte_loop_does(
            seed in any::<u64>(),
            len in (MIN_SIZE * 2)..(MIN_SIZE * 12),
            bits in 12u32..22,
        ) {
            let t = ChunkerTables::with_average_bits(TEST_POL, bits).unwrap();
            let data = pseudo_random(seed, len);
            prop_assert_eq!(chunk_lengths(&t, &data), reference_lengths(&t, &data));
            // Fed in pieces, as a file is read.
            let mut fc = FileChunker::new(&t, &data[..], None);
            let mut got = Vec::new();
            while let Some(c) = fc.next_chunk().unwrap() {
                got.push(c.len());
            }
            prop_assert_eq!(got, reference_lengths(&t, &data));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn chunks_concatenate_and_resync_after_prefix_change(
            seed in any::<u64>(),
            len in (MIN_SIZE * 3)..(MIN_SIZE * 9),
            prefix in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            // Small average so several cuts happen in a few MiB.
            let t = ChunkerTables::with_average_bits(TEST_POL, 14).unwrap();
            let data = pseudo_random(seed, len);
            let lens = chunk_lengths(&t, &data);
            prop_assert_eq!(lens.iter().sum::<usize>(), data.len());
            for (i, l) in lens.iter().enumerate() {
                prop_assert!(*l <= MAX_SIZE);
                if i + 1 < lens.len() { prop_assert!(*l >= MIN_SIZE); }
            }
            let cuts = |ls: &[usize]| ls.iter().scan(0, |s, l| { *s += l; Some(*s) }).collect::<Vec<_>>();
            let a = cuts(&lens);
            // Bytes the window never covers (the first MIN-64 of a chunk) do not matter.
            let mut flipped = data.clone();
            for (i, p) in prefix.iter().enumerate() { flipped[i % (MIN_SIZE - WINDOW_SIZE)] ^= p | 1; }
            prop_assert_eq!(&chunk_lengths(&t, &flipped), &lens);
            // Appending after a cut keeps every earlier cut.
            let mut longer = data.clone();
            longer.extend_from_slice(&prefix);
            let c = cuts(&chunk_lengths(&t, &longer));
            prop_assert_eq!(&c[..a.len() - 1], &a[..a.len() - 1]);
            // After an inserted prefix, once one cut coincides with an old
            // one, every later cut coincides too (the chunker resynchronises).
            let mut changed = prefix.clone();
            changed.extend_from_slice(&data);
            let b: Vec<usize> = cuts(&chunk_lengths(&t, &changed)).into_iter().filter(|c| *c > prefix.len()).map(|c| c - prefix.len()).collect();
            if let Some(pos) = b.iter().position(|c| a.contains(c)) {
                let k = a.iter().position(|c| *c == b[pos]).unwrap();
                prop_assert_eq!(&b[pos..], &a[k..]);
            }
        }
    }
}
