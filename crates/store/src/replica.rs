//! What replicas of a volume exchange to repair each other: chunk images (one layer's content
//! of one chunk, maps and blocks) and missed-write marks (this server has writes that another
//! replica server missed).
//!
//! Marks live in memory (per volume) and are persisted by the volume's next flush, in the same
//! transaction as the changed map rows (table `missed_v1`), so a mark is never lost for a write
//! that was flushed. Each mark carries a generation, bumped whenever it is recorded again, so a
//! repairer clears it only if no write came in since it read the chunk. When a deleted layer is
//! merged away, its marks move to the layer above, which now holds its blocks.

use crate::bits::{Bits, ChunkBits};
use crate::error::{Result, StoreError};
use crate::merge::positions;
use crate::meta::MergeDir;
use crate::store::Store;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use strata_types::{LayerId, ServerId, VolumeId, BLOCKS_PER_CHUNK, BLOCK_SIZE, CHUNK_SIZE};

/// One layer's content of one chunk, as replicas exchange it to repair each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkImage {
    /// Blocks whose data the layer holds: bit i (word i/64, bit i%64) is block i of the chunk.
    pub data: [u64; 16],
    /// Blocks the layer records as zeroed or trimmed (they shadow lower layers).
    pub zero: [u64; 16],
    /// The content of the data blocks, in block order, 4096 bytes each.
    pub blocks: Bytes,
    /// The chunk's write generation in the layer (see [`Store::generation`]); a copy that
    /// replaces the image replaces it too.
    pub generation: u64,
}

/// A chunk of one layer that a replica server missed writes to, recorded on a replica that has
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MissedChunk {
    /// The server that missed the writes.
    pub server: ServerId,
    /// The layer written.
    pub layer: LayerId,
    /// The chunk index.
    pub chunk: u64,
    /// Bumped each time the mark is recorded again; [`Store::clear_missed`] removes the mark
    /// only if it is unchanged.
    pub generation: u64,
}

/// Key of one mark.
pub(crate) type MarkKey = (ServerId, LayerId, u64);

/// The missed marks of one volume.
#[derive(Default)]
pub(crate) struct Missed {
    marks: HashMap<MarkKey, u64>,
    next_generation: u64,
    /// Keys changed since the last flush: written (or removed) by it.
    dirty: HashSet<MarkKey>,
}

impl Missed {
    /// Marks loaded from the database.
    pub fn loaded(rows: Vec<(MarkKey, u64)>) -> Self {
        let next_generation = rows.iter().map(|(_, g)| g + 1).max().unwrap_or(1);
        Self {
            marks: rows.into_iter().collect(),
            next_generation,
            dirty: HashSet::new(),
        }
    }

    fn record(&mut self, key: MarkKey) {
        let g = self.next_generation;
        self.next_generation += 1;
        self.marks.insert(key, g);
        self.dirty.insert(key);
    }

    /// Whether any mark changed since the last flush.
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty()
    }

    /// Takes the changed marks for a flush: each key with its generation, or `None` if gone.
    pub fn take_dirty(&mut self) -> Vec<(MarkKey, Option<u64>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|k| (k, self.marks.get(&k).copied()))
            .collect()
    }

    /// Moves every mark of layer `from` to layer `to` (after a merge).
    pub fn relabel(&mut self, from: LayerId, to: LayerId) {
        let moved: Vec<MarkKey> = self
            .marks
            .keys()
            .filter(|(_, l, _)| *l == from)
            .copied()
            .collect();
        for key in moved {
            self.marks.remove(&key);
            self.dirty.insert(key);
            self.record((key.0, to, key.2));
        }
    }
}

/// Blocks of `chunk` that lie inside a volume of `size` bytes.
fn blocks_inside(size: u64, chunk: u64) -> u32 {
    let start = chunk * CHUNK_SIZE;
    let left = size.saturating_sub(start);
    left.min(CHUNK_SIZE).div_ceil(BLOCK_SIZE) as u32
}

fn bad_image(why: impl Into<String>) -> StoreError {
    StoreError::BadChunkImage(why.into())
}

impl Store {
    /// The content of `chunk` in `layer` (any live layer of the volume, frozen or head). A
    /// chunk the layer never touched gives empty maps and no blocks.
    pub fn chunk_image(&self, vol: VolumeId, layer: LayerId, chunk: u64) -> Result<ChunkImage> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        if st.gone {
            return Err(StoreError::NoSuchVolume(vol));
        }
        let pos = st.live_pos(vol, Some(layer))?;
        if blocks_inside(st.size, chunk) == 0 {
            return Err(StoreError::OutOfRange {
                offset: chunk.saturating_mul(CHUNK_SIZE),
                len: CHUNK_SIZE,
                size: st.size,
            });
        }
        let _g = v.stripe(chunk);
        let l = &st.layers[pos];
        let bits = l.data.get(chunk).unwrap_or_default();
        let mut blocks = Vec::with_capacity((bits.data.count() * BLOCK_SIZE) as usize);
        for (a, b) in bits.data.runs() {
            let off = (chunk * BLOCKS_PER_CHUNK + u64::from(a)) * BLOCK_SIZE;
            let at = blocks.len();
            blocks.resize(at + (u64::from(b - a) * BLOCK_SIZE) as usize, 0);
            l.data.read_at(&mut blocks[at..], off)?;
        }
        Ok(ChunkImage {
            data: bits.data.0,
            zero: bits.zero.0,
            blocks: Bytes::from(blocks),
            generation: bits.generation,
        })
    }

    /// Replaces `chunk` of `layer` with `image`, also in a frozen layer (this is repair, not a
    /// client write): afterwards [`Store::chunk_image`] returns exactly `image`. With `durable`,
    /// durable when it returns (data synced, then the rows committed); otherwise made durable by
    /// the volume's next flush, like a write.
    pub fn put_chunk_image(
        &self,
        vol: VolumeId,
        layer: LayerId,
        chunk: u64,
        image: &ChunkImage,
        durable: bool,
    ) -> Result<()> {
        let data = Bits(image.data);
        let zero = Bits(image.zero);
        if !data.and(&zero).is_empty() {
            return Err(bad_image("a block is marked both data and zero"));
        }
        if image.blocks.len() as u64 != data.count() * BLOCK_SIZE {
            return Err(bad_image(format!(
                "{} bytes of blocks for {} data blocks",
                image.blocks.len(),
                data.count()
            )));
        }
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        if st.gone {
            return Err(StoreError::NoSuchVolume(vol));
        }
        v.check_writable()?;
        let pos = st.live_pos(vol, Some(layer))?;
        // A merge down copies this layer into the deleted one's file, then points this layer at
        // that file and deletes its own: an image written here meanwhile could be dropped.
        if let Some(m) = *v.merge.lock() {
            if m.dir == MergeDir::Down && positions(&st, &m)?.1 == pos {
                return Err(StoreError::LayerMerging(layer));
            }
        }
        let inside = blocks_inside(st.size, chunk);
        if inside == 0 {
            return Err(StoreError::OutOfRange {
                offset: chunk.saturating_mul(CHUNK_SIZE),
                len: CHUNK_SIZE,
                size: st.size,
            });
        }
        if !data.or(&zero).and_not(&Bits::range(0, inside)).is_empty() {
            return Err(bad_image("blocks past the end of the volume"));
        }
        {
            let _g = v.stripe(chunk);
            let l = &st.layers[pos];
            v.check_space(l, chunk, &data)?;
            let base = chunk * BLOCKS_PER_CHUNK;
            let mut at = 0usize;
            for (a, b) in data.runs() {
                let len = (u64::from(b - a) * BLOCK_SIZE) as usize;
                l.data
                    .write_at(
                        &image.blocks[at..at + len],
                        (base + u64::from(a)) * BLOCK_SIZE,
                    )
                    .map_err(|e| v.space.note(e))?;
                at += len;
            }
            let old = l.data.get(chunk).unwrap_or_default();
            for (a, b) in old.data.and_not(&data).runs() {
                l.data.punch(
                    (base + u64::from(a)) * BLOCK_SIZE,
                    u64::from(b - a) * BLOCK_SIZE,
                )?;
            }
            v.update_bits(l, chunk, |cb| {
                *cb = ChunkBits {
                    data,
                    zero,
                    generation: image.generation,
                }
            });
        }
        if durable {
            v.flush_with(&self.inner.db, &st, |_| Ok(()))?;
        }
        Ok(())
    }

    /// Records that `server` missed writes to `chunk` of `layer`. Visible to
    /// [`Store::missed`] at once; persisted with the volume's next flush. Recording an existing
    /// mark bumps its generation.
    pub fn record_missed(
        &self,
        vol: VolumeId,
        layer: LayerId,
        chunk: u64,
        server: ServerId,
    ) -> Result<()> {
        let v = self.inner.volume(vol)?;
        v.missed.lock().record((server, layer, chunk));
        Ok(())
    }

    /// Every (layer, chunk) of the volume that some layer's maps touch (data or zero bits, or a
    /// write generation only), layers being merged away included: the chunks a full copy of this
    /// server's data must send.
    pub fn touched_chunks(&self, vol: VolumeId) -> Result<Vec<(LayerId, u64)>> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        if st.gone {
            return Err(StoreError::NoSuchVolume(vol));
        }
        let mut out = Vec::new();
        for l in &st.layers {
            out.extend(l.data.maps.read().keys().map(|c| (l.id, *c)));
        }
        Ok(out)
    }

    /// Every missed-write mark of the volume.
    pub fn missed(&self, vol: VolumeId) -> Result<Vec<MissedChunk>> {
        let v = self.inner.volume(vol)?;
        let m = v.missed.lock();
        let mut out: Vec<MissedChunk> = m
            .marks
            .iter()
            .map(|((server, layer, chunk), g)| MissedChunk {
                server: *server,
                layer: *layer,
                chunk: *chunk,
                generation: *g,
            })
            .collect();
        out.sort_by_key(|m| (m.server, m.chunk, m.layer));
        Ok(out)
    }

    /// Removes `mark` if its generation is still the recorded one; returns whether it did.
    /// Persisted with the next flush (a mark that comes back after a crash is only repaired
    /// again).
    pub fn clear_missed(&self, vol: VolumeId, mark: &MissedChunk) -> Result<bool> {
        let v = self.inner.volume(vol)?;
        let mut m = v.missed.lock();
        let key = (mark.server, mark.layer, mark.chunk);
        if m.marks.get(&key) == Some(&mark.generation) {
            m.marks.remove(&key);
            m.dirty.insert(key);
            return Ok(true);
        }
        Ok(false)
    }
}
