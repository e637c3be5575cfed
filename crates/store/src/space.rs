//! Space on the store's filesystem: a reserve for metadata, the *full* state, and the largest
//! file the filesystem holds.
//!
//! A filesystem filled by client data must not take the store down with it: the metadata
//! database (redb) stops for good after any failed write ("Previous I/O error"), and a flush,
//! a volume delete or a restart all need to commit to it. So the store keeps `reserve` (a
//! preallocated file in its directory; by default a sixteenth of the filesystem, at most
//! 64 MiB) and, when a data write first
//! gets ENOSPC — or the database's backend does ([`SpaceBackend`]) — it turns *full*: the
//! reserve is released at once, leaving room for metadata (this store's and the management
//! state's on the same filesystem), and from then on the store itself refuses ([`Space::may_allocate`])
//! every data write that needs new space before it reaches the filesystem, so that room stays
//! for metadata. Overwrites of blocks a layer file already holds, trims, flushes, snapshots,
//! reads and deletes go on. The store leaves the full state when the filesystem has room for
//! the whole reserve and as much again ([`Space::refresh`]: checked after a delete or merge
//! frees space, and at most every [`RECHECK`] by refused writes); the reserve is then
//! allocated again.
//!
//! The largest file is found once at open by probing (`ftruncate` of a sparse probe file,
//! bisected): a layer file holds blocks at their logical offsets, so a volume larger than that
//! is refused at create and resize (ext4 with 4 KiB blocks: 16 TiB).

use crate::error::{Result, StoreError};
use crate::layer::sync_dir;
use parking_lot::Mutex;
use rustix::fs::FallocateFlags;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest default reserve.
const MAX_DEFAULT_RESERVE: u64 = 64 << 20;
/// Refused writes look at the filesystem again at most this often.
pub(crate) const RECHECK: Duration = Duration::from_millis(100);
const MIB: u64 = 1 << 20;

/// The reserve file and how much of it is allocated.
struct Reserve {
    file: File,
    held: u64,
    checked: Option<Instant>,
}

/// See the module documentation.
pub(crate) struct Space {
    dir: PathBuf,
    target: u64,
    reserve: Mutex<Reserve>,
    full: AtomicBool,
    max_file: u64,
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
}

/// Bytes available to the store on the filesystem holding `dir`, and its size.
fn available(dir: &Path) -> Result<(u64, u64)> {
    let s = rustix::fs::statvfs(dir).map_err(|e| {
        StoreError::io(
            format!("asking the filesystem of {} for its space", dir.display()),
            e.into(),
        )
    })?;
    Ok((
        s.f_bavail.saturating_mul(s.f_frsize),
        s.f_blocks.saturating_mul(s.f_frsize),
    ))
}

impl Space {
    /// Opens (or makes) the reserve in `dir`, allocating it up to `target` bytes (`None`: a
    /// sixteenth of the filesystem, at most 64 MiB) if the filesystem has room; the store is
    /// full from the start if it has not. Probes the largest file.
    pub fn open(dir: &Path, target: Option<u64>) -> Result<Space> {
        let (_, total) = available(dir)?;
        let target = target.unwrap_or((total / 16).min(MAX_DEFAULT_RESERVE) / MIB * MIB);
        let path = dir.join("reserve");
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        if !existed {
            sync_dir(dir)?;
        }
        let held = file
            .metadata()
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?
            .len();
        let space = Space {
            dir: dir.to_path_buf(),
            target,
            reserve: Mutex::new(Reserve {
                file,
                held,
                checked: None,
            }),
            full: AtomicBool::new(false),
            max_file: probe_max_file(dir)?,
        };
        if held < target {
            space.full.store(true, Ordering::Release);
            space.refresh(true);
            if space.is_full() {
                tracing::warn!(dir = %dir.display(), "the store's filesystem is full: new data is refused until volumes or snapshots are deleted or the filesystem is grown");
            }
        }
        Ok(space)
    }

    /// True while new data is refused.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// The largest file the filesystem holds, in bytes.
    pub fn max_file(&self) -> u64 {
        self.max_file
    }

    /// Whether a data write that needs new space may go to the filesystem: always when not
    /// full; when full, only if [`Space::refresh`] (at most every [`RECHECK`]) finds room.
    pub fn may_allocate(&self) -> bool {
        !self.is_full() || !self.refresh(false)
    }

    /// A data write got ENOSPC: the store is full from now on and the reserve is released.
    pub fn hit_full(&self) {
        self.enter_full();
        self.release();
    }

    fn enter_full(&self) {
        if !self.full.swap(true, Ordering::AcqRel) {
            tracing::warn!(dir = %self.dir.display(), "the store's filesystem is full: new data is refused until volumes or snapshots are deleted or the filesystem is grown; reads, overwrites, trims and deletes go on");
        }
    }

    /// Releases the whole reserve; true if it held anything.
    fn release(&self) -> bool {
        let mut r = self.reserve.lock();
        if r.held == 0 {
            return false;
        }
        match r.file.set_len(0) {
            Ok(()) => {
                tracing::info!(bytes = r.held, "released the store's space reserve");
                r.held = 0;
                r.checked = Some(Instant::now());
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not release the store's space reserve");
                false
            }
        }
    }

    /// When full: if the filesystem has room for the reserve and as much again, allocates the
    /// reserve and leaves the full state. Looks at most every [`RECHECK`] unless `now`.
    /// Returns whether the store is (still) full.
    pub fn refresh(&self, now: bool) -> bool {
        if !self.is_full() {
            return false;
        }
        let mut r = self.reserve.lock();
        if !now && r.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return self.is_full();
        }
        r.checked = Some(Instant::now());
        let avail = match available(&self.dir) {
            Ok((a, _)) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether the store's filesystem has room again");
                return true;
            }
        };
        let missing = self.target.saturating_sub(r.held);
        if avail < missing.saturating_add(self.target) {
            return true;
        }
        if missing > 0 {
            match rustix::fs::fallocate(&r.file, FallocateFlags::empty(), 0, self.target) {
                Ok(()) => r.held = self.target,
                Err(e) => {
                    tracing::warn!(error = %e, "could not allocate the store's space reserve again");
                    return true;
                }
            }
        }
        self.full.store(false, Ordering::Release);
        tracing::info!(dir = %self.dir.display(), "the store's filesystem has room again: new data is taken");
        false
    }

    /// Maps an error of a data write: ENOSPC turns the store full.
    pub fn note(&self, e: StoreError) -> StoreError {
        if matches!(e, StoreError::NoSpace) {
            self.hit_full();
        }
        e
    }
}

/// The largest size a file in `dir` can be given, found by bisecting `ftruncate` of a sparse
/// probe file (nothing is allocated), capped by this process's file size limit.
fn probe_max_file(dir: &Path) -> Result<u64> {
    let path = dir.join("size-probe");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
    // Past RLIMIT_FSIZE a truncate raises SIGXFSZ, which would end the process.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Fsize)
        .current
        .unwrap_or(u64::MAX);
    let (mut lo, mut hi) = (0u64, limit.min(i64::MAX as u64) / 4096 * 4096 + 4096);
    if file.set_len(hi - 4096).is_ok() {
        lo = hi - 4096;
    }
    while hi - lo > 4096 {
        let mid = (lo + (hi - lo) / 2) / 4096 * 4096;
        if file.set_len(mid).is_ok() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    drop(file);
    std::fs::remove_file(&path)
        .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
    Ok(lo)
}

/// The metadata database's file, drawing on the reserve when the filesystem is full: a write
/// or growth that gets ENOSPC releases the reserve and is tried again, since redb refuses every
/// later operation after one failed write.
#[derive(Debug)]
pub(crate) struct SpaceBackend {
    file: redb::backends::FileBackend,
    space: std::sync::Arc<Space>,
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Space")
            .field("dir", &self.dir)
            .field("full", &self.is_full())
            .finish_non_exhaustive()
    }
}

impl SpaceBackend {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path, space: std::sync::Arc<Space>) -> Result<SpaceBackend> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        Ok(SpaceBackend {
            file: redb::backends::FileBackend::new(file)?,
            space,
        })
    }

    fn retry<T>(&self, mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
        loop {
            match op() {
                Err(e) if is_enospc(&e) => {
                    self.space.enter_full();
                    if !self.space.release() {
                        tracing::error!("the store's metadata database found no space, and the reserve is used up");
                        return Err(e);
                    }
                }
                r => return r,
            }
        }
    }
}

impl redb::StorageBackend for SpaceBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.file.read(offset, len)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.retry(|| self.file.set_len(len))
    }

    fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
        // Not retried: after a failed sync, what reached the disk is unknown.
        self.file.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.retry(|| self.file.write(offset, data))
    }
}
