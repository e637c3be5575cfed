//! This server's layered block store.
//!
//! A volume is a stack of layers, bottom..top; the top layer is the writable *head*, every other
//! layer is a frozen snapshot. A read returns, per 4 KiB block, the content of the highest layer
//! at or below the layer read that holds the block, else zeros. Taking a snapshot freezes the
//! head and puts a new empty head on top — metadata only. Deleting a snapshot merges its blocks
//! into the layer above in a background thread, throttled, crash-safe and restartable.
//!
//! Layout on disk (in the directory given to [`Store::open`]):
//! - `store.redb`: volumes, layer stacks, merges in progress and per-(layer file, chunk) block
//!   maps, and the missed-write marks kept for other replicas (see [`ChunkImage`] and
//!   [`MissedChunk`]), and the activity log: the chunks that may hold unflushed writes, which
//!   [`Store::suspect_chunks`] names after an unclean stop (see `activity.rs`); see
//!   [`meta`](crate::meta) for the tables and byte layouts;
//! - `volumes/<volume-uuid>/<file-id>.layer`: one sparse data file per layer, blocks at their
//!   logical offsets (see [`layer`](crate::layer));
//! - `reserve`: space kept back for metadata, released when data fills the filesystem;
//! - `orphaned/<unix time>/...`: files found at open that no record names and that hold
//!   something (e.g. a merged layer's file a crash left behind), moved aside rather than
//!   deleted; an operator checks and deletes them. Empty leftovers are removed.
//!
//! [`Store::open`] refuses ([`StoreError::LostDatabase`]) a directory whose `volumes/` holds
//! anything while `store.redb` is missing or empty: the data files alone do not say which
//! blocks hold data. Directories are `fsync`ed after the store creates, renames or removes
//! entries in them (a new layer file's entry is synced with its first data, see
//! [`layer`](crate::layer)).
//!
//! Durability: writes go to the page cache and to the in-memory maps; [`Store::flush`] (and FUA
//! writes) `fdatasync` the data files first and then commit the changed maps, so after a crash
//! every flushed write reads back and an unflushed one reads either its new content or what was
//! there before — never garbage.
//!
//! Full filesystem: when data fills it, new data is refused ([`StoreError::NoSpace`]) while
//! reads, overwrites of written blocks, trims, flushes, snapshots and deletes go on; a delete
//! that frees space lets new data in again, and the store opens on a full filesystem. A
//! volume larger than the largest file the filesystem holds is refused at create and resize
//! ([`StoreError::FileTooLarge`]). See `space.rs`.
//!
//! [`Store`] is `Send + Sync`; call it from many threads at once (e.g. `spawn_blocking`).

#![warn(missing_docs)]

mod activity;
mod bits;
mod data;
mod error;
mod index;
mod io;
mod layer;
mod merge;
mod meta;
mod replica;
mod space;
mod store;
mod volume;

pub use error::{Result, StoreError};
pub use replica::{ChunkImage, MissedChunk};
pub use store::{Store, MAX_VOLUME_SIZE};
pub use strata_types::{ExtentKind, LayerId, VolumeId};

/// Options for [`Store::open`].
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Maximum bytes per second that background merges copy; `None` = unthrottled.
    pub merge_rate_bytes_per_sec: Option<u64>,
    /// Bytes of the filesystem kept back for metadata, released when data fills it (see
    /// "Full filesystem" above); `None` = a sixteenth of the filesystem, at most 64 MiB.
    pub reserve_bytes: Option<u64>,
}

/// A volume as [`Store::volume`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The volume.
    pub id: VolumeId,
    /// Size in bytes.
    pub size: u64,
    /// Live layers, bottom..top (layers deleted but still merging are not listed).
    pub layers: Vec<LayerInfo>,
    /// The writable head (the last of `layers`).
    pub head: LayerId,
}

/// One live layer of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// The layer.
    pub id: LayerId,
    /// True for snapshots; false for the head.
    pub frozen: bool,
}

/// A run of bytes of one [`ExtentKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the range holds.
    pub kind: ExtentKind,
}

/// A byte range whose blocks changed, as reported by [`Store::delta`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangedRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Counters for monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Volumes on this server.
    pub volumes: u64,
    /// Live layers over all volumes.
    pub layers: u64,
    /// Deleted layers whose merge has not finished.
    pub pending_merges: u64,
    /// Bytes allocated on disk by all layer files.
    pub data_bytes: u64,
    /// Bytes copied by merges since the store was opened.
    pub merged_bytes: u64,
    /// Volumes that refuse writes after a failed sync.
    pub failed_volumes: u64,
}
