//! The data path of one volume: reads at any layer, writes and zeroing in the head.
//!
//! Requests are split at chunk boundaries ([`pieces`]). A read asks the read index for the
//! layers holding blocks of the chunk, copies those layers' maps of the chunk (top-down from
//! the layer read) and then issues one `pread` per run of blocks coming from the same file;
//! blocks no layer holds, or whose top holder has them as zero, are filled with zeros.
//!
//! A write whose ends do not fall on block boundaries first reads the partial end blocks as
//! the head currently shows them (from the head itself or from below), merges the new bytes in
//! and writes whole blocks into the head file, all under the chunk's stripe lock.

use crate::bits::{Bits, ChunkBits};
use crate::error::Result;
use crate::index::groups;
use crate::layer::Wait;
use crate::volume::{Layer, Stack, Volume};
use strata_types::{BLOCKS_PER_CHUNK, BLOCK_SIZE, CHUNK_SIZE};

const BS: u64 = BLOCK_SIZE;

/// Splits `[offset, offset+len)` at chunk boundaries: `(chunk, start, end)` in bytes.
pub(crate) fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let end = offset.saturating_add(len);
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let chunk = pos / CHUNK_SIZE;
        let e = end.min((chunk + 1).saturating_mul(CHUNK_SIZE));
        let piece = (chunk, pos, e);
        pos = e;
        Some(piece)
    })
}

/// Index of block `block` inside its chunk.
fn in_chunk(block: u64) -> u32 {
    (block % BLOCKS_PER_CHUNK) as u32
}

impl Volume {
    /// The layers at or below `max_rank` with maps in `chunk`, top first, with those maps.
    pub(crate) fn candidates<'s>(
        &self,
        st: &'s Stack,
        chunk: u64,
        max_rank: u64,
        out: &mut Vec<(&'s Layer, ChunkBits)>,
    ) {
        let mut ranks = Vec::new();
        self.index.ranks_into(chunk, max_rank, &mut ranks);
        out.clear();
        for r in ranks {
            if let Some(l) = st.by_rank(r) {
                if let Some(bits) = l.data.get(chunk) {
                    out.push((l, bits));
                }
            }
        }
    }

    /// What a read at `max_rank` sees in `chunk`: blocks with data, blocks shadowed as zero.
    pub(crate) fn effective(&self, st: &Stack, chunk: u64, max_rank: u64) -> ChunkBits {
        let mut cands = Vec::new();
        self.candidates(st, chunk, max_rank, &mut cands);
        let mut held = Bits::default();
        let mut eff = ChunkBits::default();
        for (_, b) in &cands {
            eff.data = eff.data.or(&b.data.and_not(&held));
            eff.zero = eff.zero.or(&b.zero.and_not(&held));
            held = held.or(&b.held());
        }
        eff
    }

    /// Reads `buf.len()` bytes at `offset` as seen from the layer at position `top`; with
    /// [`Wait::No`], returns false (the buffer partly filled) when some of it is not in memory.
    /// No range check: the caller has done it.
    ///
    /// Per chunk, the layers the index names are checked top-down, each only for the blocks of
    /// the request still unresolved, without copying their maps; the walk stops as soon as every
    /// block has its source. This keeps a read cheap under a deep stack of snapshots.
    pub(crate) fn read_at_pos(
        &self,
        st: &Stack,
        top: usize,
        offset: u64,
        buf: &mut [u8],
        wait: Wait,
    ) -> Result<bool> {
        let Some(top_layer) = st.layers.get(top) else {
            buf.fill(0);
            return Ok(true);
        };
        let mut ranks = Vec::new();
        // The layers that supply data to this piece, with the blocks each supplies.
        let mut sources: Vec<(&Layer, Bits)> = Vec::new();
        for (chunk, s, e) in pieces(offset, buf.len() as u64) {
            let (fb, lb) = (s / BS, (e - 1) / BS);
            let mut want = Bits::range(in_chunk(fb), in_chunk(lb) + 1);
            let near = groups(&want);
            self.index
                .ranks_touching(chunk, top_layer.rank, near, &mut ranks);
            sources.clear();
            for r in &ranks {
                let Some(l) = st.by_rank(*r) else { continue };
                let (data, held) = {
                    let maps = l.data.maps.read();
                    let Some(cb) = maps.get(&chunk) else { continue };
                    let data = cb.data.and(&want);
                    (data, data.or(&cb.zero.and(&want)))
                };
                if held.is_empty() {
                    continue;
                }
                if !data.is_empty() {
                    sources.push((l, data));
                }
                want = want.and_not(&held);
                if want.is_empty() {
                    break;
                }
            }
            let source = |b: u64| {
                let i = in_chunk(b);
                sources
                    .iter()
                    .find(|(_, bits)| bits.get(i))
                    .map(|(l, _)| *l)
            };
            let mut b = fb;
            while b <= lb {
                let src = source(b);
                let mut b2 = b + 1;
                while b2 <= lb && source(b2).map(|l| l.rank) == src.map(|l| l.rank) {
                    b2 += 1;
                }
                let rs = (b * BS).max(s);
                let re = (b2 * BS).min(e);
                let out = &mut buf[(rs - offset) as usize..(re - offset) as usize];
                match src {
                    Some(l) => {
                        if !l.data.read_at_with(out, rs, wait)? {
                            return Ok(false);
                        }
                    }
                    None => out.fill(0),
                }
                b = b2;
            }
        }
        Ok(true)
    }

    /// Writes `data` at `start` into the head; the range lies inside chunk `chunk`.
    /// The caller holds the chunk's stripe.
    pub(crate) fn write_piece(
        &self,
        st: &Stack,
        chunk: u64,
        start: u64,
        data: &[u8],
        generation: u64,
    ) -> Result<()> {
        let head_pos = st.head_pos();
        let head = &st.layers[head_pos];
        let end = start + data.len() as u64;
        let (fb, lb) = (start / BS, (end - 1) / BS);
        let (astart, aend) = (fb * BS, (lb + 1) * BS);
        let blocks = Bits::range(in_chunk(fb), in_chunk(lb) + 1);
        self.check_space(head, chunk, &blocks)?;
        let write =
            |buf: &[u8], at: u64| head.data.write_at(buf, at).map_err(|e| self.space.note(e));
        if start == astart && end == aend {
            write(data, start)?;
        } else {
            let mut buf = vec![0u8; (aend - astart) as usize];
            let bs = BS as usize;
            if start != astart {
                self.read_at_pos(st, head_pos, astart, &mut buf[..bs], Wait::Yes)?;
            }
            if end != aend && (lb != fb || start == astart) {
                let off = buf.len() - bs;
                self.read_at_pos(st, head_pos, lb * BS, &mut buf[off..], Wait::Yes)?;
            }
            buf[(start - astart) as usize..(end - astart) as usize].copy_from_slice(data);
            write(&buf, astart)?;
        }
        debug_assert_eq!(fb / BLOCKS_PER_CHUNK, chunk);
        self.update_bits(head, chunk, |cb| {
            cb.put_data(&blocks);
            cb.generation = cb.generation.max(generation);
        });
        Ok(())
    }

    /// Makes `[start, end)` of chunk `chunk` read as zeros in the head. Whole blocks are dropped
    /// from the head (or marked zero when a lower layer has data there) and their bytes freed;
    /// partial blocks get zeros written. A range ending at the volume's end covers its last
    /// block. The caller holds the chunk's stripe.
    pub(crate) fn zero_piece(
        &self,
        st: &Stack,
        chunk: u64,
        start: u64,
        end: u64,
        generation: u64,
    ) -> Result<()> {
        let head = &st.layers[st.head_pos()];
        let eff_end = if end == st.size {
            end.div_ceil(BS) * BS
        } else {
            end
        };
        let first_full = start.div_ceil(BS);
        let end_full = eff_end / BS;
        if first_full >= end_full {
            let zeros = vec![0u8; (end - start) as usize];
            return self.write_piece(st, chunk, start, &zeros, generation);
        }
        if start < first_full * BS {
            let zeros = vec![0u8; (first_full * BS - start) as usize];
            self.write_piece(st, chunk, start, &zeros, generation)?;
        }
        if end_full * BS < end {
            let zeros = vec![0u8; (end - end_full * BS) as usize];
            self.write_piece(st, chunk, end_full * BS, &zeros, generation)?;
        }
        let base = chunk * BLOCKS_PER_CHUNK;
        let full = Bits::range((first_full - base) as u32, (end_full - base) as u32);
        // A block held by any layer below, deleted ones included, is recorded as zero here; only
        // a block no layer below holds can be dropped. Judging by what reads see now is not
        // enough: a deleted layer may be merging into the head, and the blocks of it already
        // copied up would be lost with the dropped bits once the merge removes the layer.
        let mut below = Bits::default();
        if let Some(r) = head.rank.checked_sub(1) {
            let mut cands = Vec::new();
            self.candidates(st, chunk, r, &mut cands);
            for (_, bits) in &cands {
                below = below.or(&bits.held());
            }
        }
        let shadow = full.and(&below);
        let drop = full.and_not(&below);
        let had_data = head
            .data
            .get(chunk)
            .map(|b| b.data.and(&full))
            .unwrap_or_default();
        self.update_bits(head, chunk, |cb| {
            cb.put_zero(&shadow);
            cb.clear(&drop);
            cb.generation = cb.generation.max(generation);
        });
        for (a, b) in had_data.runs() {
            let off = (base + u64::from(a)) * BS;
            head.data.punch(off, u64::from(b - a) * BS)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_chunks() {
        let v: Vec<_> = pieces(CHUNK_SIZE - 512, 1024 + CHUNK_SIZE).collect();
        assert_eq!(
            v,
            vec![
                (0, CHUNK_SIZE - 512, CHUNK_SIZE),
                (1, CHUNK_SIZE, 2 * CHUNK_SIZE),
                (2, 2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 512)
            ]
        );
        assert_eq!(pieces(5, 0).count(), 0);
    }
}
