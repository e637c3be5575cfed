//! The read index of one volume.
//!
//! For each chunk, the ranks of the layers whose maps have any bit set in that chunk, ascending
//! (a layer's rank grows with its position in the stack and never changes), each with a 64-bit
//! summary of which 64 KiB groups of the chunk it holds blocks in. A read at layer L asks the
//! index once per chunk and then consults only the maps of the layers holding blocks near the
//! ones it reads, top-down from L, so its cost does not grow with the number of snapshots that
//! never touched that part of the chunk. Cost: 16 bytes per (chunk, layer-that-wrote-it),
//! nothing per block.
//!
//! The index lives only in memory; [`crate::store::Store::open`] rebuilds it from the maps.
//! Lock discipline: nobody holds the index lock while taking a layer's map lock, or vice versa.

use crate::bits::Bits;
use parking_lot::RwLock;
use std::collections::HashMap;

/// Chunk -> `(rank, groups)` of the layers with blocks in it, ascending by rank. `groups` has
/// one bit per 16-block (64 KiB) group of the chunk that the layer holds any block of (see
/// [`groups`]), so a read skips, without touching their maps, the layers that hold nothing near
/// the blocks it wants: with many snapshots that each wrote a little everywhere, a read then
/// looks at the maps of the few layers that matter instead of all of them.
#[derive(Default)]
pub(crate) struct ChunkIndex {
    map: RwLock<HashMap<u64, Vec<(u64, u64)>>>,
}

/// The 64 16-block groups of a chunk's bitmap that have any bit set, one bit each.
pub(crate) fn groups(b: &Bits) -> u64 {
    let mut g = 0u64;
    for (wi, w) in b.0.iter().enumerate() {
        for k in 0..4 {
            if (w >> (16 * k)) & 0xFFFF != 0 {
                g |= 1 << (wi * 4 + k);
            }
        }
    }
    g
}

impl ChunkIndex {
    /// Records that layer `rank` holds blocks in the `groups` of `chunk` (0: none).
    pub fn set(&self, chunk: u64, rank: u64, groups: u64) {
        if groups == 0 {
            return self.remove(chunk, rank);
        }
        let mut m = self.map.write();
        let v = m.entry(chunk).or_default();
        match v.binary_search_by_key(&rank, |e| e.0) {
            Ok(i) => v[i].1 = groups,
            Err(i) => v.insert(i, (rank, groups)),
        }
    }

    /// Records that layer `rank` no longer holds blocks in `chunk`.
    pub fn remove(&self, chunk: u64, rank: u64) {
        let mut m = self.map.write();
        if let Some(v) = m.get_mut(&chunk) {
            if let Ok(i) = v.binary_search_by_key(&rank, |e| e.0) {
                v.remove(i);
            }
            if v.is_empty() {
                m.remove(&chunk);
            }
        }
    }

    /// Copies the ranks at or below `max_rank` holding blocks in `chunk` into `out`, top first.
    pub fn ranks_into(&self, chunk: u64, max_rank: u64, out: &mut Vec<u64>) {
        self.ranks_touching(chunk, max_rank, u64::MAX, out);
    }

    /// Like [`ChunkIndex::ranks_into`], but only layers holding blocks in some of `groups`.
    pub fn ranks_touching(&self, chunk: u64, max_rank: u64, groups: u64, out: &mut Vec<u64>) {
        out.clear();
        if let Some(v) = self.map.read().get(&chunk) {
            out.extend(
                v.iter()
                    .rev()
                    .filter(|(r, g)| *r <= max_rank && g & groups != 0)
                    .map(|(r, _)| *r),
            );
        }
    }
}
