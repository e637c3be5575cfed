//! [`Store`]: opening and recovery, volume management, snapshots and layer deletion.
//! The data path is in `data.rs`, the background merger in `merge.rs`.

use crate::activity::ActivityLog;
use crate::error::{Result, StoreError};
use crate::layer::{create_dir_synced, file_name, sync_dir, LayerData};
use crate::merge::{self, MergeCtl};
use crate::meta;
use crate::space::{Space, SpaceBackend};
use crate::volume::{Layer, Stack, Volume};
use crate::{LayerInfo, StoreOptions, StoreStats, VolumeInfo};
use parking_lot::{Condvar, Mutex, RwLock};
use redb::{Builder, Database};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use strata_types::{LayerId, VolumeId, BLOCK_SIZE};

/// Largest volume size accepted.
pub const MAX_VOLUME_SIZE: u64 = 1 << 56;

/// One server's layered block store. Cheap to share: wrap it in an `Arc`.
pub struct Store {
    pub(crate) inner: Arc<Inner>,
    merger: Option<JoinHandle<()>>,
    /// Set by the crash test hooks: the last handle's drop flushes nothing.
    crashed: AtomicBool,
    /// Set by [`Store::close_as_unclean`].
    close_unclean: AtomicBool,
    /// See [`Store::is_new`].
    new: AtomicBool,
    /// See [`Store::was_unclean`].
    unclean: bool,
    /// Written by the last handle's drop once everything is flushed: the next open finds the
    /// store closed cleanly.
    clean_marker: PathBuf,
}

/// State shared with the merger thread.
pub(crate) struct Inner {
    pub db: Database,
    pub volumes_dir: PathBuf,
    pub volumes: RwLock<HashMap<VolumeId, Arc<Volume>>>,
    pub next_fid: AtomicU64,
    pub opts: StoreOptions,
    pub ctl: Mutex<MergeCtl>,
    pub kick: Condvar,
    pub idle: Condvar,
    pub shutdown: AtomicBool,
    pub merged_bytes: AtomicU64,
    pub space: Arc<Space>,
    /// See [`Volume::generation_floor`].
    pub generation_floor: u64,
}

impl Inner {
    pub(crate) fn volume(&self, vol: VolumeId) -> Result<Arc<Volume>> {
        find(&self.volumes.read(), vol)
    }

    /// Like [`Inner::volume`], but `None` instead of waiting while the volume map is being
    /// changed (a create or delete holds it across syncs).
    pub(crate) fn try_volume(&self, vol: VolumeId) -> Option<Result<Arc<Volume>>> {
        Some(find(&*self.volumes.try_read()?, vol))
    }

    /// Space was freed (a volume deleted, a merged layer's file removed): looks at the
    /// filesystem at once, and when the store is no longer full, merges that waited for space
    /// are tried again.
    pub(crate) fn space_freed(&self) {
        if self.space.refresh(true) {
            return;
        }
        let vols: Vec<_> = self.volumes.read().values().cloned().collect();
        let mut waiting = false;
        for v in vols {
            waiting |= v.merge_waits_for_space.swap(false, Ordering::AcqRel);
        }
        if waiting {
            merge::kick(self);
        }
    }
}

/// Volume `vol` of the map `volumes`.
fn find(volumes: &HashMap<VolumeId, Arc<Volume>>, vol: VolumeId) -> Result<Arc<Volume>> {
    volumes
        .get(&vol)
        .cloned()
        .ok_or(StoreError::NoSuchVolume(vol))
}

fn check_size(size: u64) -> Result<()> {
    if size == 0 || size % 512 != 0 || size > MAX_VOLUME_SIZE {
        return Err(StoreError::InvalidSize(size));
    }
    Ok(())
}

/// Like [`check_size`], and the layer files of a volume this large fit on the filesystem.
fn check_new_size(space: &Space, size: u64) -> Result<()> {
    check_size(size)?;
    let max = space.max_file();
    if size > max {
        return Err(StoreError::FileTooLarge { size, max });
    }
    Ok(())
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::io(what, e)
}

impl Store {
    /// Opens the store in `dir`, creating it if absent. Recovers to the last flush after a
    /// crash and resumes unfinished merges in the background.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store> {
        let volumes_dir = dir.join("volumes");
        create_dir_synced(&volumes_dir)?;
        let has_data = std::fs::read_dir(&volumes_dir)
            .map_err(io_err(format!("listing {}", volumes_dir.display())))?
            .next()
            .is_some();
        let db_path = dir.join("store.redb");
        let lost = || StoreError::LostDatabase {
            dir: dir.to_path_buf(),
        };
        let had_db = db_path.exists();
        if !had_db && has_data {
            return Err(lost());
        }
        let space = Arc::new(Space::open(dir, opts.reserve_bytes)?);
        let db =
            Builder::new().create_with_backend(SpaceBackend::open(&db_path, space.clone())?)?;
        if !had_db {
            sync_dir(dir)?;
        }
        let fresh = meta::is_new(&db)?;
        if fresh && has_data {
            return Err(lost());
        }
        let clean_marker = dir.join("closed-cleanly");
        let unclean = !fresh && !clean_marker.exists();
        match std::fs::remove_file(&clean_marker) {
            Ok(()) => sync_dir(dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing {}", clean_marker.display()))(e)),
        }
        let mut loaded = meta::load(&db)?;
        // New until its owner claims it: an owner that refused it (its management state places
        // volumes here that it does not hold) finds it new again on the next start.
        let new = !meta::is_claimed(&db)? && loaded.volumes.is_empty();
        let generation_floor = meta::generation_floor(&db, unclean)?;
        let mut volumes = HashMap::new();
        let mut max_fid = 0;
        for (id, rec) in loaded.volumes {
            let vdir = volumes_dir.join(id.to_string());
            let ranks_ok = rec.layers.windows(2).all(|w| w[0].rank < w[1].rank)
                && rec.layers.iter().all(|l| l.rank < rec.next_rank);
            let head_ok = rec.layers.last().is_some_and(|h| !h.frozen && !h.deleted);
            if !ranks_ok || !head_ok || check_size(rec.size).is_err() {
                return Err(StoreError::Corrupt(format!(
                    "volume {id} has an inconsistent layer stack"
                )));
            }
            if let Some(m) = rec.merge {
                let pos = rec.layers.iter().position(|l| l.id == m.layer);
                if !pos.is_some_and(|p| rec.layers[p].deleted && p + 1 < rec.layers.len()) {
                    return Err(StoreError::Corrupt(format!(
                        "volume {id} records a merge of layer {} that is not a deleted snapshot",
                        m.layer
                    )));
                }
            }
            let mut layers = Vec::new();
            let mut active = Vec::new();
            for l in &rec.layers {
                max_fid = max_fid.max(l.fid);
                let chunks = loaded.active.remove(&l.fid).unwrap_or_default();
                active.extend(chunks.into_iter().map(|c| (l.fid, c)));
                let maps = loaded.maps.remove(&l.fid).unwrap_or_default();
                layers.push(Layer {
                    id: l.id,
                    rank: l.rank,
                    frozen: l.frozen,
                    deleted: l.deleted,
                    data: Arc::new(LayerData::open(&vdir, l.fid, maps)?),
                });
            }
            let stack = Stack {
                size: rec.size,
                next_rank: rec.next_rank,
                layers,
                gone: false,
            };
            let mut v = Volume::new(id, vdir, stack, rec.merge, space.clone(), generation_floor);
            v.activity = ActivityLog::loaded(active, unclean);
            *v.missed.lock() =
                crate::replica::Missed::loaded(loaded.missed.remove(&id).unwrap_or_default());
            volumes.insert(id, Arc::new(v));
        }
        collect_garbage(
            &db,
            &mut Orphanage::new(dir),
            &volumes_dir,
            &volumes,
            loaded.maps.keys().chain(loaded.active.keys()).copied(),
        )?;
        let inner = Arc::new(Inner {
            db,
            volumes_dir,
            volumes: RwLock::new(volumes),
            next_fid: AtomicU64::new(loaded.next_fid.max(max_fid + 1)),
            opts,
            ctl: Mutex::new(MergeCtl::default()),
            kick: Condvar::new(),
            idle: Condvar::new(),
            shutdown: AtomicBool::new(false),
            merged_bytes: AtomicU64::new(0),
            space,
            generation_floor,
        });
        let merger = merge::spawn(inner.clone())?;
        Ok(Store {
            inner,
            merger: Some(merger),
            crashed: AtomicBool::new(false),
            close_unclean: AtomicBool::new(false),
            new: AtomicBool::new(new),
            unclean,
            clean_marker,
        })
    }

    /// True when the store was not closed cleanly before this open (the process died, or the
    /// machine lost power): writes acknowledged after the last flush may be lost, so its copies
    /// may be older than those of other replicas.
    pub fn was_unclean(&self) -> bool {
        self.unclean
    }

    /// After an unclean stop: the (layer, chunk)s of the volume that may hold writes that were
    /// not flushed — lost here, or here and not on another replica, or here and there in
    /// different orders. They stay named (kept in the store's activity log, whatever is
    /// flushed meanwhile) until [`Store::forget_suspects`]. Empty after a clean stop.
    pub fn suspect_chunks(&self, vol: VolumeId) -> Result<Vec<(LayerId, u64)>> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        let layer_of: HashMap<u64, LayerId> =
            st.layers.iter().map(|l| (l.data.fid, l.id)).collect();
        Ok(v.activity
            .pinned()
            .into_iter()
            .filter_map(|(fid, chunk)| Some((*layer_of.get(&fid)?, chunk)))
            .collect())
    }

    /// The caller recorded [`Store::suspect_chunks`] durably elsewhere (as marks to resync):
    /// later flushes may drop them from the activity log.
    pub fn forget_suspects(&self, vol: VolumeId) -> Result<()> {
        self.inner.volume(vol)?.activity.unpin();
        Ok(())
    }

    /// True while the store holds no volume and its owner has not claimed it
    /// ([`Store::claim`]): it may have been made by this open or by an earlier one whose owner
    /// refused it. A server whose management state places volumes here must not take such a
    /// store for its old one.
    pub fn is_new(&self) -> bool {
        self.new.load(Ordering::SeqCst)
    }

    /// Records, durably, that the owner takes this store for its own: it is not new any more.
    pub fn claim(&self) -> Result<()> {
        meta::claim(&self.inner.db)?;
        self.new.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Creates an empty volume of `size` bytes (a positive multiple of 512, at most
    /// [`Store::max_file_size`]) whose head is `head`.
    pub fn create_volume(&self, vol: VolumeId, size: u64, head: LayerId) -> Result<()> {
        check_new_size(&self.inner.space, size)?;
        let mut volumes = self.inner.volumes.write();
        if volumes.contains_key(&vol) {
            return Err(StoreError::VolumeExists(vol));
        }
        let vdir = self.inner.volumes_dir.join(vol.to_string());
        std::fs::create_dir_all(&vdir).map_err(io_err(format!("creating {}", vdir.display())))?;
        sync_dir(&self.inner.volumes_dir)?;
        let fid = self.inner.next_fid.fetch_add(1, Ordering::Relaxed);
        let data = Arc::new(LayerData::create(&vdir, fid)?);
        let stack = Stack {
            size,
            next_rank: 2,
            layers: vec![Layer {
                id: head,
                rank: 1,
                frozen: false,
                deleted: false,
                data,
            }],
            gone: false,
        };
        let commit = || -> Result<()> {
            let txn = self.inner.db.begin_write()?;
            meta::put_volume(&txn, vol, &stack.record(None))?;
            meta::bump_next_fid(&txn, fid + 1)?;
            txn.commit()?;
            Ok(())
        };
        if let Err(e) = commit() {
            let _ = std::fs::remove_dir_all(&vdir);
            return Err(e);
        }
        let space = self.inner.space.clone();
        let floor = self.inner.generation_floor;
        volumes.insert(
            vol,
            Arc::new(Volume::new(vol, vdir, stack, None, space, floor)),
        );
        Ok(())
    }

    /// Deletes a volume with all its layers and data.
    pub fn delete_volume(&self, vol: VolumeId) -> Result<()> {
        let mut volumes = self.inner.volumes.write();
        let v = volumes
            .get(&vol)
            .cloned()
            .ok_or(StoreError::NoSuchVolume(vol))?;
        let mut st = v.stack.write();
        let txn = self.inner.db.begin_write()?;
        meta::remove_volume(&txn, vol)?;
        meta::remove_marks(&txn, vol)?;
        for l in &st.layers {
            meta::remove_rows(&txn, l.data.fid)?;
        }
        txn.commit()?;
        st.gone = true;
        for l in &st.layers {
            v.forget_dirty(l.data.fid);
        }
        volumes.remove(&vol);
        let removed = std::fs::remove_dir_all(&v.dir)
            .map_err(io_err(format!("removing {}", v.dir.display())))
            .and_then(|()| sync_dir(&self.inner.volumes_dir));
        if let Err(e) = removed {
            tracing::warn!(volume = %vol, error = %e, "could not remove the deleted volume's files; the next start moves them aside");
        }
        // The files' blocks are freed when their last handle closes.
        drop(volumes);
        drop(st);
        drop(v);
        self.inner.space_freed();
        Ok(())
    }

    /// All volumes.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        let vols: Vec<_> = self.inner.volumes.read().values().cloned().collect();
        vols.iter().filter_map(|v| info(v).ok()).collect()
    }

    /// One volume.
    pub fn volume(&self, vol: VolumeId) -> Result<VolumeInfo> {
        info(&*self.inner.volume(vol)?)
    }

    /// Bytes of disk the volume's layer files use, every layer included (merging ones too).
    pub fn volume_used_bytes(&self, vol: VolumeId) -> Result<u64> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        Ok(st.layers.iter().map(|l| l.data.allocated_bytes()).sum())
    }

    /// Bytes of data each chunk of the volume holds, summed over its layers (snapshots and
    /// layers still merging included); chunks without data are absent. Unlike
    /// [`Store::volume_used_bytes`] this counts mapped blocks, not the disk the files use.
    pub fn chunk_data_bytes(&self, vol: VolumeId) -> Result<BTreeMap<u64, u64>> {
        let v = self.inner.volume(vol)?;
        let st = v.stack.read();
        let mut out = BTreeMap::new();
        for l in &st.layers {
            for (chunk, bits) in l.data.maps.read().iter() {
                let blocks = bits.data.count();
                if blocks > 0 {
                    *out.entry(*chunk).or_insert(0) += blocks * BLOCK_SIZE;
                }
            }
        }
        Ok(out)
    }

    /// Grows a volume to `new_size` bytes (at most [`Store::max_file_size`]); shrinking is
    /// refused.
    pub fn resize(&self, vol: VolumeId, new_size: u64) -> Result<()> {
        check_new_size(&self.inner.space, new_size)?;
        let v = self.inner.volume(vol)?;
        let mut st = v.stack.write();
        if st.gone {
            return Err(StoreError::NoSuchVolume(vol));
        }
        if new_size < st.size {
            return Err(StoreError::Shrink {
                size: st.size,
                new_size,
            });
        }
        let mut rec = st.record(*v.merge.lock());
        rec.size = new_size;
        let txn = self.inner.db.begin_write()?;
        meta::put_volume(&txn, vol, &rec)?;
        txn.commit()?;
        st.size = new_size;
        Ok(())
    }

    /// Freezes the volume's head (which becomes the returned snapshot) and puts a new empty head
    /// `new_head` on top. Metadata only: no data is copied and no data file is synced, so
    /// writers wait only for the stack's lock and one commit of the new stack. The stack is
    /// durable before any write reaches the new head: a crash that lost it would lose the new
    /// head's file and its activity log entries with it, and so the chunks written there would
    /// never be named as suspect ([`Store::suspect_chunks`]). Writes to the frozen layer that
    /// were not flushed are still lost in a crash, and named.
    pub fn snapshot(&self, vol: VolumeId, new_head: LayerId) -> Result<LayerId> {
        let v = self.inner.volume(vol)?;
        let mut st = v.stack.write();
        if st.gone {
            return Err(StoreError::NoSuchVolume(vol));
        }
        v.check_writable()?;
        if st.layers.iter().any(|l| l.id == new_head) {
            return Err(StoreError::LayerExists(new_head));
        }
        let fid = self.inner.next_fid.fetch_add(1, Ordering::Relaxed);
        let data = Arc::new(LayerData::create(&v.dir, fid)?);
        let rank = st.next_rank;
        st.next_rank += 1;
        let old = st.head_pos();
        st.layers[old].frozen = true;
        let frozen = st.layers[old].id;
        st.layers.push(Layer {
            id: new_head,
            rank,
            frozen: false,
            deleted: false,
            data,
        });
        let record = st.record(*v.merge.lock());
        let committed = (|| {
            let txn = self.inner.db.begin_write()?;
            meta::put_volume(&txn, vol, &record)?;
            meta::bump_next_fid(&txn, fid + 1)?;
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = committed {
            // As before the call; the new head's empty file is collected at the next open.
            st.layers.pop();
            st.layers[old].frozen = false;
            st.next_rank -= 1;
            return Err(e);
        }
        Ok(frozen)
    }

    /// Deletes a snapshot: it leaves the listings at once, and a background thread merges its
    /// blocks into the layer above so that every other layer reads the same as before.
    pub fn delete_layer(&self, vol: VolumeId, layer: LayerId) -> Result<()> {
        let v = self.inner.volume(vol)?;
        let mut st = v.stack.write();
        if st.gone {
            return Err(StoreError::NoSuchVolume(vol));
        }
        let pos = st.live_pos(vol, Some(layer))?;
        if pos == st.head_pos() {
            return Err(StoreError::DeleteHead(layer));
        }
        let mut rec = st.record(*v.merge.lock());
        rec.layers[pos].deleted = true;
        let txn = self.inner.db.begin_write()?;
        meta::put_volume(&txn, vol, &rec)?;
        txn.commit()?;
        st.layers[pos].deleted = true;
        drop(st);
        merge::kick(&self.inner);
        Ok(())
    }

    /// The largest file the store's filesystem holds, so the largest volume it takes: a layer
    /// file holds blocks at their logical offsets.
    pub fn max_file_size(&self) -> u64 {
        self.inner.space.max_file()
    }

    /// Blocks until no merge is pending (merges that failed are left for the next start;
    /// merges waiting for space are not waited for).
    pub fn wait_merges_idle(&self) {
        merge::wait_idle(&self.inner);
    }

    /// Counters for monitoring.
    pub fn stats(&self) -> StoreStats {
        let vols: Vec<_> = self.inner.volumes.read().values().cloned().collect();
        let mut s = StoreStats {
            volumes: vols.len() as u64,
            merged_bytes: self.inner.merged_bytes.load(Ordering::Relaxed),
            ..StoreStats::default()
        };
        for v in vols {
            let st = v.stack.read();
            for l in &st.layers {
                if l.deleted {
                    s.pending_merges += 1;
                } else {
                    s.layers += 1;
                }
                s.data_bytes += l.data.allocated_bytes();
            }
            s.failed_volumes += u64::from(v.is_failed());
        }
        s
    }

    /// The next open treats this store as stopped uncleanly ([`Store::was_unclean`]: the
    /// activity log names the chunks written lately), although its last drop still flushes
    /// everything: for a server stopped while requests were in flight, whose copies may hold
    /// changes it applied and never passed on to the other replicas.
    pub fn close_as_unclean(&self) {
        self.close_unclean.store(true, Ordering::Release);
    }

    /// Test hook: drops the store like a crash would — no final flush; merges stop where they
    /// are. Unflushed map changes are lost (data already written stays in the files).
    #[doc(hidden)]
    pub fn crash(self) {
        self.crash_in_place();
    }

    /// Test hook for a store other threads still hold (a server killed in a test): from now on
    /// it acts much as if its process had died. Every existing volume refuses the writes and
    /// flushes that start after this call, the merger stops, and the last handle's drop
    /// flushes nothing, so the map changes not flushed before are lost when the store is opened
    /// again. Not covered: a flush already under way still commits, and volume creation,
    /// deletion, resizing and snapshot deletion still commit; a test must not ask for those
    /// after the crash.
    #[doc(hidden)]
    pub fn crash_in_place(&self) {
        self.crashed.store(true, Ordering::Release);
        merge::stop(&self.inner);
        for v in self.inner.volumes.read().values() {
            v.halt();
        }
    }
}

fn info(v: &Volume) -> Result<VolumeInfo> {
    let st = v.stack.read();
    if st.gone {
        return Err(StoreError::NoSuchVolume(v.id));
    }
    let head = st.layers[st.head_pos()].id;
    Ok(VolumeInfo {
        id: v.id,
        size: st.size,
        layers: st
            .layers
            .iter()
            .filter(|l| !l.deleted)
            .map(|l| LayerInfo {
                id: l.id,
                frozen: l.frozen,
            })
            .collect(),
        head,
    })
}

/// Cleans up what a crash can leave behind: layer files and volume directories no record names
/// (created before their transaction committed, or dropped after), and rows of unknown files.
/// What holds nothing (empty files, directories of empty files) is removed; anything else is
/// moved aside into the [`Orphanage`], never deleted: the records may be what is wrong.
fn collect_garbage(
    db: &Database,
    orphanage: &mut Orphanage,
    volumes_dir: &Path,
    volumes: &HashMap<VolumeId, Arc<Volume>>,
    orphan_fids: impl Iterator<Item = u64>,
) -> Result<()> {
    let orphan_fids: Vec<u64> = orphan_fids.collect();
    if !orphan_fids.is_empty() {
        let txn = db.begin_write()?;
        for fid in &orphan_fids {
            meta::remove_rows(&txn, *fid)?;
        }
        txn.commit()?;
    }
    let entries = std::fs::read_dir(volumes_dir)
        .map_err(io_err(format!("listing {}", volumes_dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", volumes_dir.display())))?;
        let name = entry.file_name();
        let known = name
            .to_str()
            .and_then(|n| n.parse::<VolumeId>().ok())
            .and_then(|id| volumes.get(&id));
        let Some(v) = known else {
            orphanage.clear(&entry.path(), None)?;
            continue;
        };
        let names: HashSet<String> = v
            .stack
            .read()
            .layers
            .iter()
            .map(|l| file_name(l.data.fid))
            .collect();
        let files =
            std::fs::read_dir(&v.dir).map_err(io_err(format!("listing {}", v.dir.display())))?;
        for f in files {
            let f = f.map_err(io_err(format!("listing {}", v.dir.display())))?;
            let n = f.file_name();
            if n.to_str()
                .is_some_and(|n| n.ends_with(".layer") && !names.contains(n))
            {
                orphanage.clear(&f.path(), Some(&v.id.to_string()))?;
            }
        }
    }
    Ok(())
}

/// Where the store moves files that no record names: `<store>/orphaned/<unix time>/`, made on
/// first use, with a leftover layer file of a known volume under its volume's id. An operator
/// looks at them and deletes them.
struct Orphanage {
    root: PathBuf,
    dir: Option<PathBuf>,
}

impl Orphanage {
    fn new(store_dir: &Path) -> Orphanage {
        Orphanage {
            root: store_dir.join("orphaned"),
            dir: None,
        }
    }

    /// Gets `path` out of the way: removes it if it holds nothing, else moves it to this
    /// orphanage (under `sub`), syncing the directories it changed.
    fn clear(&mut self, path: &Path, sub: Option<&str>) -> Result<()> {
        let from = path.parent().unwrap_or(Path::new("."));
        if holds_nothing(path) {
            tracing::info!(path = ?path, "removing an empty leftover");
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            return removed
                .map_err(io_err(format!("removing {}", path.display())))
                .and_then(|()| sync_dir(from));
        }
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let mut dir = self.root.join(secs.to_string());
                let mut n = 0;
                while dir.exists() {
                    n += 1;
                    dir = self.root.join(format!("{secs}.{n}"));
                }
                self.dir = Some(dir.clone());
                dir
            }
        };
        let to_dir = sub.map_or_else(|| dir.clone(), |s| dir.join(s));
        create_dir_synced(&to_dir)?;
        let to = to_dir.join(path.file_name().unwrap_or_default());
        std::fs::rename(path, &to).map_err(io_err(format!(
            "moving {} aside to {}",
            path.display(),
            to.display()
        )))?;
        sync_dir(&to_dir)?;
        sync_dir(from)?;
        tracing::warn!(from = ?path, to = ?to,
            "moved aside a file no record of the store names; check it and delete it");
        Ok(())
    }
}

/// True for an empty file or a directory of empty files: removing it loses nothing.
fn holds_nothing(path: &Path) -> bool {
    let empty_file = |m: std::fs::Metadata| m.is_file() && m.len() == 0;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).is_ok_and(|mut entries| {
            entries.all(|e| e.and_then(|e| e.metadata()).is_ok_and(empty_file))
        }),
        Ok(m) => empty_file(m),
        Err(_) => false,
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        merge::stop(&self.inner);
        if let Some(h) = self.merger.take() {
            let _ = h.join();
        }
        if self.crashed.load(Ordering::Acquire) {
            return;
        }
        let vols: Vec<_> = self.inner.volumes.read().values().cloned().collect();
        let keep_log = self.close_unclean.load(Ordering::Acquire);
        let mut clean = !keep_log;
        for v in vols {
            if keep_log {
                v.activity.keep_all();
            }
            let st = v.stack.read();
            if st.gone || v.is_failed() {
                clean &= st.gone;
                continue;
            }
            if let Err(e) = v.flush_with(&self.inner.db, &st, |_| Ok(())) {
                tracing::error!(volume = %v.id, error = %e, "final flush failed");
                clean = false;
            }
        }
        if clean {
            let marked = std::fs::File::create(&self.clean_marker)
                .and_then(|f| f.sync_all())
                .map_err(io_err(format!("writing {}", self.clean_marker.display())))
                .and_then(|()| match self.clean_marker.parent() {
                    Some(dir) => sync_dir(dir),
                    None => Ok(()),
                });
            if let Err(e) = marked {
                tracing::warn!(error = %e, "could not record a clean close; the next start treats it as a crash");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    const MIB: u64 = 1 << 20;

    fn open(dir: &Path) -> Store {
        Store::open(dir, StoreOptions::default()).unwrap()
    }

    fn read(s: &Store, vol: VolumeId, at: Option<LayerId>, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0x55; len];
        s.read(vol, at, off, &mut b).unwrap();
        b
    }

    #[test]
    fn an_empty_head_whose_file_was_lost_in_a_crash_is_recreated() {
        // A snapshot creates the new head's file without syncing it, and the flush that persists
        // the snapshot syncs only files with data; if a crash loses that (empty) file, opening
        // the store makes a new empty one instead of reporting corruption.
        let tmp = tempfile::tempdir().unwrap();
        let (vol, base, head) = (
            VolumeId::new_random(),
            LayerId::new_random(),
            LayerId::new_random(),
        );
        let data = vec![7u8; 8192];
        {
            let s = open(tmp.path());
            s.create_volume(vol, 8 * MIB, base).unwrap();
            s.write(vol, 0, &data, false).unwrap();
            s.snapshot(vol, head).unwrap();
            s.flush(vol).unwrap();
            s.crash();
        }
        let vdir = tmp.path().join("volumes").join(vol.to_string());
        let mut files: Vec<_> = std::fs::read_dir(&vdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 2);
        std::fs::remove_file(files.last().unwrap()).unwrap();
        let s = open(tmp.path());
        assert_eq!(read(&s, vol, None, 0, 8192), data);
        assert_eq!(read(&s, vol, Some(base), 0, 8192), data);
        s.write(vol, 4096, &vec![9u8; 4096], true).unwrap();
        assert_eq!(read(&s, vol, None, 4096, 4096), vec![9u8; 4096]);
        assert_eq!(std::fs::read_dir(&vdir).unwrap().count(), 2);
    }
}
