//! The data-path half of [`Store`]'s API: read, write, zeroing, flush, allocation and delta.

use crate::bits::Bits;
use crate::error::{Result, StoreError};
use crate::io::pieces;
use crate::layer::Wait;
use crate::store::Store;
use crate::volume::{Stack, Volume};
use crate::{ChangedRange, Extent, ExtentKind};
use std::collections::BTreeMap;
use strata_types::{LayerId, VolumeId, BLOCKS_PER_CHUNK, BLOCK_SIZE};

fn live(v: &Volume, st: &Stack) -> Result<()> {
    if st.gone {
        return Err(StoreError::NoSuchVolume(v.id));
    }
    Ok(())
}

/// The checks and the read shared by [`Store::read`] and [`Store::read_cached`].
fn read_from(
    v: &Volume,
    st: &Stack,
    at: Option<LayerId>,
    offset: u64,
    buf: &mut [u8],
    wait: Wait,
) -> Result<bool> {
    live(v, st)?;
    let pos = st.live_pos(v.id, at)?;
    st.check_range(offset, buf.len() as u64)?;
    v.read_at_pos(st, pos, offset, buf, wait)
}

impl Store {
    /// Reads `buf.len()` bytes at `offset` from layer `at` (`None` = the head).
    pub fn read(
        &self,
        vol: VolumeId,
        at: Option<LayerId>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        read_from(&v, &st, at, offset, buf, Wait::Yes).map(|_| ())
    }

    /// Like [`Store::read`] without waiting for the disk, for callers that must not block:
    /// returns false, with `buf` partly filled, when some of the data is not in memory.
    pub fn read_cached(
        &self,
        vol: VolumeId,
        at: Option<LayerId>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<bool> {
        // A volume being created or deleted, or a snapshot or merge holding the stack, would
        // make this wait.
        let Some(v) = self.inner.try_volume(vol) else {
            return Ok(false);
        };
        let v = v?;
        let Some(st) = v.stack.try_read() else {
            return Ok(false);
        };
        read_from(&v, &st, at, offset, buf, Wait::No)
    }

    /// Writes `data` at `offset` into the volume's head; with `fua`, durable on return.
    pub fn write(&self, vol: VolumeId, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.write_checked(vol, None, offset, data, fua, 0)
            .map(|_| ())
    }

    /// Like [`Store::write`], but only if `layer` is still the head: a frozen layer gives
    /// [`StoreError::ReadOnlyLayer`], so a caller never writes into a snapshot by mistake. The
    /// change is the chunk's write `generation` (0: this store is the first to apply it and
    /// gives it the next one, above every layer's for the chunk); returns the generation
    /// applied (of the last chunk written, for a write that spans several).
    pub fn write_to(
        &self,
        vol: VolumeId,
        layer: LayerId,
        offset: u64,
        data: &[u8],
        fua: bool,
        generation: u64,
    ) -> Result<u64> {
        self.write_checked(vol, Some(layer), offset, data, fua, generation)
    }

    fn write_checked(
        &self,
        vol: VolumeId,
        layer: Option<LayerId>,
        offset: u64,
        data: &[u8],
        fua: bool,
        generation: u64,
    ) -> Result<u64> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        live(&v, &st)?;
        if let Some(id) = layer {
            if st.live_pos(vol, Some(id))? != st.head_pos() {
                return Err(StoreError::ReadOnlyLayer(id));
            }
        }
        v.check_writable()?;
        st.check_range(offset, data.len() as u64)?;
        let head = st.layers[st.head_pos()].data.fid;
        let mut applied = generation;
        for (chunk, s, e) in pieces(offset, data.len() as u64) {
            let _active = v.activity.enter(&self.inner.db, (head, chunk))?;
            let _g = v.stripe(chunk);
            applied = v.generation_for(&st, chunk, generation);
            let piece = &data[(s - offset) as usize..(e - offset) as usize];
            v.write_piece(&st, chunk, s, piece, applied)?;
        }
        if fua {
            v.flush_with(&self.inner.db, &st, |_| Ok(()))?;
        }
        Ok(applied)
    }

    /// Makes `[offset, offset+len)` read as zeros; with `fua`, durable on return.
    pub fn write_zeroes(&self, vol: VolumeId, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.zero_checked(vol, None, offset, len, fua, 0)
            .map(|_| ())
    }

    /// Like [`Store::trim`], but only if `layer` is still the head: a frozen layer gives
    /// [`StoreError::ReadOnlyLayer`], so a trim meant for the head never lands in a snapshot.
    /// Generations as for [`Store::write_to`].
    pub fn trim_to(
        &self,
        vol: VolumeId,
        layer: LayerId,
        offset: u64,
        len: u64,
        generation: u64,
    ) -> Result<u64> {
        self.zero_checked(vol, Some(layer), offset, len, false, generation)
    }

    fn zero_checked(
        &self,
        vol: VolumeId,
        layer: Option<LayerId>,
        offset: u64,
        len: u64,
        fua: bool,
        generation: u64,
    ) -> Result<u64> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        live(&v, &st)?;
        if let Some(id) = layer {
            if st.live_pos(vol, Some(id))? != st.head_pos() {
                return Err(StoreError::ReadOnlyLayer(id));
            }
        }
        v.check_writable()?;
        st.check_range(offset, len)?;
        let head = st.layers[st.head_pos()].data.fid;
        let mut applied = generation;
        for (chunk, s, e) in pieces(offset, len) {
            let _active = v.activity.enter(&self.inner.db, (head, chunk))?;
            let _g = v.stripe(chunk);
            applied = v.generation_for(&st, chunk, generation);
            v.zero_piece(&st, chunk, s, e, applied)?;
        }
        if fua {
            v.flush_with(&self.inner.db, &st, |_| Ok(()))?;
        }
        Ok(applied)
    }

    /// The write generation of `chunk` as read at `at` (`None`: the head): the highest of the
    /// layers at or below it (0: never written there).
    pub fn generation(&self, vol: VolumeId, at: Option<LayerId>, chunk: u64) -> Result<u64> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        live(&v, &st)?;
        let pos = st.live_pos(vol, at)?;
        Ok(v.generation_at(&st, pos, chunk))
    }

    /// Discards `[offset, offset+len)`: it reads back as zeros, shadowing lower layers, and
    /// whole blocks free their space in the head's file.
    pub fn trim(&self, vol: VolumeId, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(vol, offset, len, false)
    }

    /// Makes every write to the volume acknowledged so far durable.
    pub fn flush(&self, vol: VolumeId) -> Result<()> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        v.flush(&self.inner.db, &st)
    }

    /// What `[offset, offset+len)` of layer `at` (`None` = head) holds, as merged runs that
    /// cover the range exactly.
    pub fn allocation(
        &self,
        vol: VolumeId,
        at: Option<LayerId>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        live(&v, &st)?;
        let pos = st.live_pos(vol, at)?;
        st.check_range(offset, len)?;
        let rank = st.layers[pos].rank;
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |offset: u64, end: u64, kind: ExtentKind| match out.last_mut() {
            Some(last) if last.kind == kind && last.offset + last.len == offset => {
                last.len += end - offset;
            }
            _ => out.push(Extent {
                offset,
                len: end - offset,
                kind,
            }),
        };
        for (chunk, s, e) in pieces(offset, len) {
            let eff = v.effective(&st, chunk, rank);
            if eff.is_empty() {
                push(s, e, ExtentKind::Hole);
                continue;
            }
            for b in s / BLOCK_SIZE..=(e - 1) / BLOCK_SIZE {
                let i = (b % BLOCKS_PER_CHUNK) as u32;
                let kind = if eff.data.get(i) {
                    ExtentKind::Data
                } else if eff.zero.get(i) {
                    ExtentKind::Zero
                } else {
                    ExtentKind::Hole
                };
                push((b * BLOCK_SIZE).max(s), ((b + 1) * BLOCK_SIZE).min(e), kind);
            }
        }
        Ok(out)
    }

    /// The byte ranges whose blocks were written, trimmed or zeroed in the layers above `after`
    /// (`None` = from the bottom) up to and including `upto`: sorted and coalesced. Computed
    /// from the block maps only; what is outside them is the same in both layers.
    pub fn delta(
        &self,
        vol: VolumeId,
        after: Option<LayerId>,
        upto: LayerId,
    ) -> Result<Vec<ChangedRange>> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        live(&v, &st)?;
        let upto_pos = st.live_pos(vol, Some(upto))?;
        let lo = match after {
            None => 0,
            Some(a) => {
                let p = st.live_pos(vol, Some(a))?;
                if p > upto_pos {
                    return Err(StoreError::BadLayerOrder { after: a, upto });
                }
                p + 1
            }
        };
        let mut acc: BTreeMap<u64, Bits> = BTreeMap::new();
        for l in st.layers.get(lo..=upto_pos).unwrap_or(&[]) {
            for (c, b) in l.data.maps.read().iter() {
                let e = acc.entry(*c).or_default();
                *e = e.or(&b.held());
            }
        }
        let mut out: Vec<ChangedRange> = Vec::new();
        for (c, bits) in acc {
            for (a, b) in bits.runs() {
                let base = c * BLOCKS_PER_CHUNK;
                let s = (base + u64::from(a)) * BLOCK_SIZE;
                let e = ((base + u64::from(b)) * BLOCK_SIZE).min(st.size);
                if s >= e {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.offset + last.len == s => last.len += e - s,
                    _ => out.push(ChangedRange {
                        offset: s,
                        len: e - s,
                    }),
                }
            }
        }
        Ok(out)
    }
}
