//! One volume in memory: its layer stack, read index, per-chunk write locks and dirty set.
//!
//! Locks, always taken in this order: `stack` (read for I/O, write for stack changes, so a
//! snapshot waits for in-flight writes and no write lands in a layer after it froze) →
//! `flush_lock` → one chunk stripe (every change to a chunk's maps, in any layer, happens under
//! its stripe, so read-modify-write and merges never lose a concurrent write) → the index or one
//! layer's maps (never both at once) → `dirty`.
//!
//! Durability: a write sets map bits in memory after its `pwrite` returned and records
//! `(fid, chunk)` as dirty. [`Volume::flush_with`] copies the dirty rows, `fdatasync`s their
//! files, and only then commits the rows to redb, so a persisted bit never names unwritten data.
//! After a failed sync or commit the volume refuses writes until the store is reopened.

use crate::activity::ActivityLog;
use crate::bits::{Bits, ChunkBits};
use crate::error::{Result, StoreError};
use crate::index::{groups, ChunkIndex};
use crate::layer::LayerData;
use crate::meta::{self, LayerRecord, MergeProgress, VolumeRecord};
use crate::replica::Missed;
use crate::space::Space;
use parking_lot::{Mutex, MutexGuard, RwLock};
use redb::{Database, WriteTransaction};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use strata_types::{LayerId, VolumeId};

const STRIPES: usize = 256;

/// One layer of a stack in memory.
pub(crate) struct Layer {
    pub id: LayerId,
    /// Grows bottom to top; never changes; used by the read index.
    pub rank: u64,
    pub frozen: bool,
    /// Deleted by the caller, still here until its merge finishes.
    pub deleted: bool,
    pub data: Arc<LayerData>,
}

/// A volume's size and layers, bottom..top (the last one is the writable head).
pub(crate) struct Stack {
    pub size: u64,
    pub next_rank: u64,
    pub layers: Vec<Layer>,
    /// The volume was deleted; every operation reports it missing.
    pub gone: bool,
}

impl Stack {
    /// Position of the head.
    pub fn head_pos(&self) -> usize {
        self.layers.len().saturating_sub(1)
    }

    /// Position of a live (not deleted) layer; `None` = the head.
    pub fn live_pos(&self, vol: VolumeId, layer: Option<LayerId>) -> Result<usize> {
        match layer {
            None => Ok(self.head_pos()),
            Some(id) => self
                .layers
                .iter()
                .position(|l| l.id == id && !l.deleted)
                .ok_or(StoreError::NoSuchLayer {
                    volume: vol,
                    layer: id,
                }),
        }
    }

    /// The layer with this rank.
    pub fn by_rank(&self, rank: u64) -> Option<&Layer> {
        self.layers
            .binary_search_by_key(&rank, |l| l.rank)
            .ok()
            .map(|i| &self.layers[i])
    }

    /// Checks `[offset, offset+len)` lies inside the volume; returns the end.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(end),
            _ => Err(StoreError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// The persisted form of this stack.
    pub fn record(&self, merge: Option<MergeProgress>) -> VolumeRecord {
        VolumeRecord {
            size: self.size,
            next_rank: self.next_rank,
            merge,
            layers: self
                .layers
                .iter()
                .map(|l| LayerRecord {
                    id: l.id,
                    rank: l.rank,
                    fid: l.data.fid,
                    frozen: l.frozen,
                    deleted: l.deleted,
                })
                .collect(),
        }
    }
}

/// Dirty map rows: fid -> (its layer data, chunks whose rows changed since the last flush).
type Dirty = HashMap<u64, (Arc<LayerData>, BTreeSet<u64>)>;

/// One volume.
pub(crate) struct Volume {
    pub id: VolumeId,
    /// Directory holding the volume's layer files.
    pub dir: PathBuf,
    pub stack: RwLock<Stack>,
    pub index: ChunkIndex,
    stripes: Box<[Mutex<()>]>,
    dirty: Mutex<Dirty>,
    flush_lock: Mutex<()>,
    failed: AtomicBool,
    /// The merge in progress, if any (persisted in the volume record).
    pub merge: Mutex<Option<MergeProgress>>,
    /// A merge failed; the merger leaves this volume alone until the store is reopened.
    pub merge_stalled: AtomicBool,
    /// Missed-write marks kept for other replicas; persisted by flushes.
    pub missed: Mutex<Missed>,
    /// The layer stack changed (a snapshot) and its record is not persisted yet: the next flush
    /// writes it, in the same transaction as the map rows.
    pub stack_dirty: AtomicBool,
    /// A merge found no space; the merger retries it when the store has room again.
    pub merge_waits_for_space: AtomicBool,
    /// The store's filesystem space: data writes that need new space ask it first.
    pub space: Arc<Space>,
    /// Chunks that may hold unflushed writes (see `activity.rs`).
    pub activity: ActivityLog,
    /// The least write generation this store gives a change it is first to apply: raised at
    /// each unclean open, so the generations of changes whose map rows a crash lost are not
    /// given again to other changes.
    pub generation_floor: u64,
}

impl Volume {
    /// A volume from its stack; builds the read index from the layers' maps.
    pub fn new(
        id: VolumeId,
        dir: PathBuf,
        stack: Stack,
        merge: Option<MergeProgress>,
        space: Arc<Space>,
        generation_floor: u64,
    ) -> Volume {
        let index = ChunkIndex::default();
        for l in &stack.layers {
            for (chunk, bits) in l.data.maps.read().iter() {
                index.set(*chunk, l.rank, groups(&bits.held()));
            }
        }
        Volume {
            id,
            dir,
            stack: RwLock::new(stack),
            index,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            dirty: Mutex::new(HashMap::new()),
            flush_lock: Mutex::new(()),
            failed: AtomicBool::new(false),
            merge: Mutex::new(merge),
            merge_stalled: AtomicBool::new(false),
            missed: Mutex::new(Missed::default()),
            stack_dirty: AtomicBool::new(false),
            merge_waits_for_space: AtomicBool::new(false),
            space,
            activity: ActivityLog::default(),
            generation_floor,
        }
    }

    /// Refuses ([`StoreError::NoSpace`]) writing `blocks` of `chunk` into `layer` while the
    /// store is full, unless the layer's file already holds every one of them (an overwrite
    /// needs no new space).
    pub fn check_space(&self, layer: &Layer, chunk: u64, blocks: &Bits) -> Result<()> {
        if !self.space.is_full() {
            return Ok(());
        }
        let held = layer.data.get(chunk).unwrap_or_default().data;
        if blocks.and_not(&held).is_empty() || self.space.may_allocate() {
            return Ok(());
        }
        Err(StoreError::NoSpace)
    }

    /// The write lock of a chunk.
    pub fn stripe(&self, chunk: u64) -> MutexGuard<'_, ()> {
        self.stripes[(chunk % STRIPES as u64) as usize].lock()
    }

    /// Refuses writes after a failed sync.
    pub fn check_writable(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Io {
                context: format!("writing volume {}", self.id),
                source: std::io::Error::other(
                    "an earlier sync of this volume failed, so it refuses writes; restart the server to recover from the last flush",
                ),
            });
        }
        Ok(())
    }

    /// True after a failed sync.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Refuses every write and flush that starts from now on, as
    /// [`crate::Store::crash_in_place`] needs.
    pub fn halt(&self) {
        self.failed.store(true, Ordering::Release);
    }

    fn fail(&self, e: &StoreError) {
        tracing::error!(volume = %self.id, error = %e, "sync failed; volume now refuses writes");
        self.halt();
    }

    /// The highest write generation of `chunk` in the layers at positions `0..=pos`.
    pub fn generation_at(&self, st: &Stack, pos: usize, chunk: u64) -> u64 {
        st.layers[..=pos]
            .iter()
            .filter_map(|l| l.data.get(chunk))
            .map(|b| b.generation)
            .max()
            .unwrap_or(0)
    }

    /// The write generation a change of `chunk` about to be applied to the head is recorded
    /// as (the caller holds the chunk's stripe): `generation`, or, for 0, the next one, above
    /// every layer's and the store's floor.
    pub fn generation_for(&self, st: &Stack, chunk: u64, generation: u64) -> u64 {
        match generation {
            0 => (self
                .generation_at(st, st.head_pos(), chunk)
                .saturating_add(1))
            .max(self.generation_floor),
            g => g,
        }
    }

    /// Changes one layer's maps of one chunk (caller holds the chunk's stripe), keeps the read
    /// index in step and records the row as dirty.
    pub fn update_bits(&self, layer: &Layer, chunk: u64, f: impl FnOnce(&mut ChunkBits)) {
        let (was, now) = {
            let mut maps = layer.data.maps.write();
            let e = maps.entry(chunk).or_default();
            let was = groups(&e.held());
            f(e);
            let now = groups(&e.held());
            if e.is_empty() {
                maps.remove(&chunk);
            }
            (was, now)
        };
        if now != was {
            self.index.set(chunk, layer.rank, now);
        }
        let mut d = self.dirty.lock();
        d.entry(layer.data.fid)
            .or_insert_with(|| (layer.data.clone(), BTreeSet::new()))
            .1
            .insert(chunk);
    }

    /// Makes every write so far durable: syncs dirty data files, then commits their changed map
    /// rows together with whatever `extra` writes, in one transaction.
    pub fn flush_with(
        &self,
        db: &Database,
        st: &Stack,
        extra: impl FnOnce(&WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        if st.gone {
            return Err(StoreError::NoSuchVolume(self.id));
        }
        self.check_writable()?;
        let _serial = self.flush_lock.lock();
        self.flush_locked(db, st, extra)
    }

    /// Makes every write so far durable, like [`Volume::flush_with`] with nothing extra, but
    /// costs nothing when no map row changed since the last flush: flushes are serialised, so
    /// an empty dirty set means every write acknowledged before this call was made durable by
    /// a flush that has already finished.
    pub fn flush(&self, db: &Database, st: &Stack) -> Result<()> {
        if st.gone {
            return Err(StoreError::NoSuchVolume(self.id));
        }
        self.check_writable()?;
        let _serial = self.flush_lock.lock();
        // A flush that failed while we waited leaves the volume failed: report it.
        self.check_writable()?;
        if self.dirty.lock().is_empty()
            && self.missed.lock().is_clean()
            && !self.stack_dirty.load(Ordering::Acquire)
        {
            return Ok(());
        }
        self.flush_locked(db, st, |_| Ok(()))
    }

    /// The body of a flush; the caller holds `flush_lock`.
    fn flush_locked(
        &self,
        db: &Database,
        st: &Stack,
        extra: impl FnOnce(&WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        // A flush that failed while this one waited for the lock took (and dropped) rows this
        // caller may depend on: never report success after it.
        self.check_writable()?;
        let dirty = std::mem::take(&mut *self.dirty.lock());
        let marks = self.missed.lock().take_dirty();
        // Before the sync: what this flush makes durable was written before this point.
        let idle = self.activity.idle();
        let record = self
            .stack_dirty
            .swap(false, Ordering::AcqRel)
            .then(|| st.record(*self.merge.lock()));
        let mut rows = Vec::new();
        for (fid, (ld, chunks)) in &dirty {
            let maps = ld.maps.read();
            rows.extend(chunks.iter().map(|c| (*fid, *c, maps.get(c).copied())));
        }
        let result = (|| {
            for (ld, _) in dirty.values() {
                ld.sync_data()?;
            }
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(meta::MAPS)?;
                for (fid, chunk, bits) in &rows {
                    meta::put_row(&mut t, *fid, *chunk, bits.as_ref())?;
                }
                let mut m = txn.open_table(meta::MISSED)?;
                for (key, generation) in &marks {
                    meta::put_mark(&mut m, self.id, *key, *generation)?;
                }
            }
            if let Some(rec) = &record {
                meta::put_volume(&txn, self.id, rec)?;
                let top_fid = rec.layers.iter().map(|l| l.fid).max().unwrap_or(0);
                meta::bump_next_fid(&txn, top_fid + 1)?;
            }
            self.activity.retire(&txn, &idle)?;
            extra(&txn)?;
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = &result {
            if record.is_some() {
                self.stack_dirty.store(true, Ordering::Release);
            }
            self.fail(e);
        }
        result
    }

    /// Drops dirty rows and activity log entries of a file id that is going away.
    pub fn forget_dirty(&self, fid: u64) {
        self.dirty.lock().remove(&fid);
        self.activity.forget_file(fid);
    }
}
