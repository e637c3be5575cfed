//! One layer's data: a sparse data file plus the layer's block maps.
//!
//! The data file (`volumes/<volume-uuid>/<file-id as 16 hex digits>.layer`) holds each block the
//! layer has written at the block's logical byte offset in the volume; everything else is a hole.
//! It has no header: whether a block's bytes mean anything is decided only by the layer's `data`
//! map (see [`crate::bits`]), which is persisted only after the file has been `fdatasync`ed.
//! A file id (`fid`) names a file and its map rows together; a merge that copies the newer layer
//! down into the older layer's file then simply points the newer layer at the older fid.

use crate::bits::ChunkBits;
use crate::error::{Result, StoreError};
use parking_lot::RwLock;
use rustix::fs::FallocateFlags;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a read may wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Read from the disk when needed (the caller may block).
    Yes,
    /// Read only what is in memory (the caller must not block: an async task).
    No,
}

/// The file name of a layer file.
pub(crate) fn file_name(fid: u64) -> String {
    format!("{fid:016x}.layer")
}

/// A layer's data file and block maps.
pub(crate) struct LayerData {
    /// The file id: names the data file and the map rows.
    pub fid: u64,
    /// Path of the data file.
    pub path: PathBuf,
    file: File,
    /// Whether the file's directory entry is known durable. A new file is created without any
    /// sync (a snapshot then costs no file or directory fsync); the first [`LayerData::sync_data`]
    /// syncs the directory too, so the entry is durable before any map row naming data in the
    /// file is committed. A file that is missing at open while it has no map rows is recreated.
    dir_synced: AtomicBool,
    /// Chunk index -> that chunk's maps (only non-empty chunks).
    pub maps: RwLock<BTreeMap<u64, ChunkBits>>,
}

impl LayerData {
    /// Creates a new empty data file. Nothing is synced yet: an empty layer needs no file on
    /// disk ([`LayerData::open`] recreates it), and the first [`LayerData::sync_data`] makes the
    /// directory entry durable before any data in the file is referenced.
    pub fn create(dir: &Path, fid: u64) -> Result<LayerData> {
        let path = dir.join(file_name(fid));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        Ok(LayerData {
            fid,
            path,
            file,
            dir_synced: AtomicBool::new(false),
            maps: RwLock::new(BTreeMap::new()),
        })
    }

    /// Opens an existing data file with maps loaded from the database. A layer without map rows
    /// may have lost its (empty, never synced) file in a crash: it gets a new empty one.
    pub fn open(dir: &Path, fid: u64, maps: BTreeMap<u64, ChunkBits>) -> Result<LayerData> {
        let path = dir.join(file_name(fid));
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && maps.is_empty() => {
                return LayerData::create(dir, fid);
            }
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                    "layer file {} cannot be opened: {e}",
                    path.display()
                )))
            }
        };
        Ok(LayerData {
            fid,
            path,
            file,
            // A file without map rows may have been created but never synced before a kill:
            // its directory entry is synced with its first data, as for a new file.
            dir_synced: AtomicBool::new(!maps.is_empty()),
            maps: RwLock::new(maps),
        })
    }

    /// The maps of one chunk, if any bit is set.
    pub fn get(&self, chunk: u64) -> Option<ChunkBits> {
        self.maps.read().get(&chunk).copied()
    }

    /// Reads `buf.len()` bytes at `off`; bytes past the end of the file read as zeros.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.read_at_with(buf, off, Wait::Yes).map(|_| ())
    }

    /// Like [`LayerData::read_at`]; with [`Wait::No`] it reads only what is in the page cache
    /// and returns false (the buffer partly filled) as soon as some of it is not.
    pub(crate) fn read_at_with(
        &self,
        mut buf: &mut [u8],
        mut off: u64,
        wait: Wait,
    ) -> Result<bool> {
        while !buf.is_empty() {
            let read = match wait {
                Wait::Yes => self.file.read_at(buf, off),
                Wait::No => rustix::io::preadv2(
                    &self.file,
                    &mut [std::io::IoSliceMut::new(buf)],
                    off,
                    rustix::io::ReadWriteFlags::NOWAIT,
                )
                .map_err(std::io::Error::from),
            };
            match read {
                Ok(0) => {
                    buf.fill(0);
                    return Ok(true);
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    off += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Not in the page cache (EAGAIN), or a kernel without RWF_NOWAIT.
                Err(_) if wait == Wait::No => return Ok(false),
                Err(e) => {
                    return Err(StoreError::io(
                        format!("reading {}", self.path.display()),
                        e,
                    ))
                }
            }
        }
        Ok(true)
    }

    /// Writes all of `buf` at `off`.
    pub fn write_at(&self, buf: &[u8], off: u64) -> Result<()> {
        self.file
            .write_all_at(buf, off)
            .map_err(|e| StoreError::io(format!("writing {}", self.path.display()), e))
    }

    /// Frees `[off, off+len)` in the file (reads back zeros); the file size is kept.
    pub fn punch(&self, off: u64, len: u64) -> Result<()> {
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, off, len) {
            Ok(()) => Ok(()),
            // Filesystems without hole punching keep the bytes; the maps say they are unused.
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(StoreError::io(
                format!("punching a hole in {}", self.path.display()),
                e.into(),
            )),
        }
    }

    /// `fdatasync`s the file; the first time, also `fsync`s its directory (see `dir_synced`).
    pub fn sync_data(&self) -> Result<()> {
        rustix::fs::fdatasync(&self.file)
            .map_err(|e| StoreError::io(format!("syncing {}", self.path.display()), e.into()))?;
        if !self.dir_synced.load(Ordering::Acquire) {
            if let Some(dir) = self.path.parent() {
                sync_dir(dir)?;
            }
            self.dir_synced.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Bytes allocated on disk for the file.
    pub fn allocated_bytes(&self) -> u64 {
        self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }
}

/// `fsync`s a directory so entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    // The parent of a relative one-component path is "".
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

/// Creates `dir` and its missing parents, `fsync`ing the parent of each directory it creates so
/// that the new entries are durable.
pub(crate) fn create_dir_synced(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}
