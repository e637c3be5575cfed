//! Block maps of one chunk.
//!
//! Every layer records, per 4 MiB chunk it has touched, two fixed 1024-bit bitmaps (one bit per
//! 4 KiB block):
//! - `data`: the layer's data file holds this block's content at the block's logical offset;
//! - `zero`: the block was trimmed or zeroed in this layer and reads as zeros, shadowing any
//!   lower layer that holds it.
//!
//! A block has at most one of the two bits set. A layer keeps a [`ChunkBits`] only for chunks
//! where some bit is set, so memory is 256 bytes per written chunk per layer, nothing for
//! untouched chunks. Fixed bitmaps (rather than roaring) make every operation a handful of word
//! operations, and one chunk's maps are exactly one metadata row.
//!
//! Each also carries the chunk's *write generation* in the layer: the generation of the last
//! change applied to it. The replica that applies a change first (the chunk's primary) gives it
//! the next generation, above every layer's for the chunk; the others apply it with the same
//! one, and a copy between replicas carries it, so of two copies that differ the one with the
//! higher generation holds the later writes (see `strata_volume`'s verify).
//!
//! On disk (a value of the `maps_v1` table keyed by `(file id, chunk index)`): one version byte
//! [`ROW_VERSION`], then 16 little-endian u64 words of `data`, then 16 of `zero`, then the
//! generation (little-endian u64) — 265 bytes. Rows of version 1 (257 bytes, before
//! generations) read as generation 0. A chunk whose maps are empty and whose generation is 0
//! has no row.

use strata_types::BLOCKS_PER_CHUNK;

/// 64-bit words in one chunk's bitmap.
pub(crate) const WORDS: usize = (BLOCKS_PER_CHUNK / 64) as usize;
const _: () = assert!(BLOCKS_PER_CHUNK % 64 == 0 && BLOCKS_PER_CHUNK <= u32::MAX as u64);

/// Version byte at the start of every persisted row.
pub(crate) const ROW_VERSION: u8 = 2;
/// Length of a persisted row.
pub(crate) const ROW_LEN: usize = 1 + 2 * WORDS * 8 + 8;
/// Length of a row of version 1, which had no generation.
const ROW_V1_LEN: usize = 1 + 2 * WORDS * 8;

/// One bit per block of a chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bits(pub [u64; WORDS]);

impl Bits {
    /// All blocks `[from, to)` set.
    pub fn range(from: u32, to: u32) -> Bits {
        let mut b = Bits::default();
        for (wi, w) in b.0.iter_mut().enumerate() {
            let lo = wi as u32 * 64;
            let (s, e) = (from.max(lo), to.min(lo + 64));
            if s < e {
                let n = e - s;
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                *w = mask << (s - lo);
            }
        }
        b
    }
    pub fn get(&self, i: u32) -> bool {
        self.0[(i / 64) as usize] >> (i % 64) & 1 == 1
    }
    #[cfg(test)]
    pub fn set(&mut self, i: u32) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    pub fn or(&self, o: &Bits) -> Bits {
        Bits(std::array::from_fn(|i| self.0[i] | o.0[i]))
    }
    pub fn and(&self, o: &Bits) -> Bits {
        Bits(std::array::from_fn(|i| self.0[i] & o.0[i]))
    }
    pub fn and_not(&self, o: &Bits) -> Bits {
        Bits(std::array::from_fn(|i| self.0[i] & !o.0[i]))
    }
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
    pub fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    /// Maximal runs `[start, end)` of set bits, ascending.
    pub fn runs(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut start: Option<u32> = None;
        for (wi, &w) in self.0.iter().enumerate() {
            let base = wi as u32 * 64;
            if w == 0 || w == u64::MAX {
                match (w == 0, start) {
                    (true, Some(s)) => {
                        out.push((s, base));
                        start = None;
                    }
                    (false, None) => start = Some(base),
                    _ => {}
                }
                continue;
            }
            for bit in 0..64 {
                let i = base + bit;
                match (w >> bit & 1 == 1, start) {
                    (true, None) => start = Some(i),
                    (false, Some(s)) => {
                        out.push((s, i));
                        start = None;
                    }
                    _ => {}
                }
            }
        }
        if let Some(s) = start {
            out.push((s, BLOCKS_PER_CHUNK as u32));
        }
        out
    }
}

/// The `data` and `zero` maps of one layer for one chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChunkBits {
    /// Blocks whose content is in the layer's data file.
    pub data: Bits,
    /// Blocks that read as zeros in this layer, shadowing lower layers.
    pub zero: Bits,
    /// The write generation of the last change applied to the chunk in this layer.
    pub generation: u64,
}

impl ChunkBits {
    /// Blocks this layer holds in either form.
    pub fn held(&self) -> Bits {
        self.data.or(&self.zero)
    }
    /// Nothing recorded: no block, no generation.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.zero.is_empty() && self.generation == 0
    }
    /// Marks `blocks` as data here.
    pub fn put_data(&mut self, blocks: &Bits) {
        self.data = self.data.or(blocks);
        self.zero = self.zero.and_not(blocks);
    }
    /// Marks `blocks` as zero here.
    pub fn put_zero(&mut self, blocks: &Bits) {
        self.zero = self.zero.or(blocks);
        self.data = self.data.and_not(blocks);
    }
    /// Forgets `blocks` here.
    pub fn clear(&mut self, blocks: &Bits) {
        self.zero = self.zero.and_not(blocks);
        self.data = self.data.and_not(blocks);
    }

    /// The persisted form (see the module docs).
    pub fn encode(&self) -> [u8; ROW_LEN] {
        let mut out = [0u8; ROW_LEN];
        out[0] = ROW_VERSION;
        for (i, w) in self.data.0.iter().chain(self.zero.0.iter()).enumerate() {
            out[1 + i * 8..9 + i * 8].copy_from_slice(&w.to_le_bytes());
        }
        out[ROW_V1_LEN..].copy_from_slice(&self.generation.to_le_bytes());
        out
    }

    /// Parses a persisted row.
    pub fn decode(row: &[u8]) -> Result<ChunkBits, String> {
        let v1 = row.len() == ROW_V1_LEN && row.first() == Some(&1);
        if !v1 && (row.len() != ROW_LEN || row[0] != ROW_VERSION) {
            return Err(format!(
                "block-map row of {} bytes with version {:?}, expected {ROW_LEN} bytes version {ROW_VERSION}",
                row.len(),
                row.first()
            ));
        }
        let mut words = [0u64; 2 * WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&row[1 + i * 8..9 + i * 8]);
            *w = u64::from_le_bytes(b);
        }
        let mut generation = [0u8; 8];
        if !v1 {
            generation.copy_from_slice(&row[ROW_V1_LEN..]);
        }
        Ok(ChunkBits {
            data: Bits(std::array::from_fn(|i| words[i])),
            zero: Bits(std::array::from_fn(|i| words[WORDS + i])),
            generation: u64::from_le_bytes(generation),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_rows_round_trip() {
        let mut b = Bits::range(3, 70);
        b.set(200);
        b.0[10] = u64::MAX;
        assert_eq!(b.runs(), vec![(3, 70), (200, 201), (640, 704)]);
        assert_eq!(Bits::range(0, 1024).runs(), vec![(0, 1024)]);
        assert_eq!(b.count(), 67 + 1 + 64);
        let cb = ChunkBits {
            data: b,
            zero: Bits::range(900, 1000),
            generation: 77,
        };
        assert_eq!(ChunkBits::decode(&cb.encode()), Ok(cb));
        assert!(ChunkBits::decode(&[3u8; ROW_LEN]).is_err());
        // A row written before generations reads as generation 0.
        let v1 = [&[1u8][..], &cb.encode()[1..ROW_V1_LEN]].concat();
        let old = ChunkBits::decode(&v1).unwrap();
        assert_eq!((old.data, old.zero, old.generation), (cb.data, cb.zero, 0));
    }

    #[test]
    fn range_matches_setting_each_bit() {
        for (from, to) in [
            (0, 0),
            (0, 1),
            (5, 5),
            (63, 65),
            (0, 64),
            (64, 128),
            (1, 1023),
            (0, 1024),
        ] {
            let mut want = Bits::default();
            for i in from..to {
                want.set(i);
            }
            assert_eq!(Bits::range(from, to), want, "[{from}, {to})");
        }
    }
}
