//! The read index of one volume.
//!
//! For each chunk, the ranks of the layers whose maps have any bit set in that chunk, ascending
//! (a layer's rank grows with its position in the stack and never changes). A read at layer L
//! asks the index once per chunk and then consults only those layers' maps, top-down from L, so
//! its cost does not grow with the number of snapshots that never touched the chunk. Cost: a few
//! bytes per (chunk, layer-that-wrote-it), nothing per block.
//!
//! The index lives only in memory; [`crate::store::Store::open`] rebuilds it from the maps.
//! Lock discipline: nobody holds the index lock while taking a layer's map lock, or vice versa.

use parking_lot::RwLock;
use std::collections::HashMap;

/// Chunk -> ranks of layers with blocks in it.
#[derive(Default)]
pub(crate) struct ChunkIndex {
    map: RwLock<HashMap<u64, Vec<u64>>>,
}

impl ChunkIndex {
    /// Records that layer `rank` holds blocks in `chunk`.
    pub fn add(&self, chunk: u64, rank: u64) {
        let mut m = self.map.write();
        let v = m.entry(chunk).or_default();
        if let Err(i) = v.binary_search(&rank) {
            v.insert(i, rank);
        }
    }

    /// Records that layer `rank` no longer holds blocks in `chunk`.
    pub fn remove(&self, chunk: u64, rank: u64) {
        let mut m = self.map.write();
        if let Some(v) = m.get_mut(&chunk) {
            if let Ok(i) = v.binary_search(&rank) {
                v.remove(i);
            }
            if v.is_empty() {
                m.remove(&chunk);
            }
        }
    }

    /// Copies the ranks at or below `max_rank` holding blocks in `chunk` into `out`, top first.
    pub fn ranks_into(&self, chunk: u64, max_rank: u64, out: &mut Vec<u64>) {
        out.clear();
        if let Some(v) = self.map.read().get(&chunk) {
            out.extend(v.iter().rev().filter(|r| **r <= max_rank));
        }
    }
}
