//! The store's one error type. Each message says what happened and what the caller can do.

use strata_types::{LayerId, VolumeId};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The volume does not exist on this server.
    #[error("volume {0} does not exist on this server; list volumes to see which do")]
    NoSuchVolume(VolumeId),
    /// The layer is not (or no longer) part of the volume's stack.
    #[error("layer {layer} is not a live layer of volume {volume}; list the volume's layers")]
    NoSuchLayer {
        /// The volume asked about.
        volume: VolumeId,
        /// The layer that was not found.
        layer: LayerId,
    },
    /// A volume with this id already exists.
    #[error("volume {0} already exists on this server; delete it first or use another id")]
    VolumeExists(VolumeId),
    /// A layer with this id already exists in the volume's stack.
    #[error("layer {0} already exists in this volume; layer ids must be new")]
    LayerExists(LayerId),
    /// The byte range lies (partly) outside the volume.
    #[error("range offset {offset} length {len} is outside the volume of {size} bytes")]
    OutOfRange {
        /// First byte asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The volume's size.
        size: u64,
    },
    /// The layer is frozen (a snapshot) and cannot be written.
    #[error("layer {0} is a frozen snapshot and cannot be written; write to the volume's head")]
    ReadOnlyLayer(LayerId),
    /// The head (writable top layer) cannot be deleted; delete the volume instead.
    #[error("layer {0} is the volume's writable head and cannot be deleted; take a snapshot first or delete the volume")]
    DeleteHead(LayerId),
    /// `after` is not below `upto` in the stack.
    #[error("layer {after} is not below layer {upto} in the volume's stack")]
    BadLayerOrder {
        /// The lower bound given.
        after: LayerId,
        /// The upper bound given.
        upto: LayerId,
    },
    /// Volumes only grow.
    #[error("volume size {size} cannot shrink to {new_size}; volumes only grow")]
    Shrink {
        /// Current size.
        size: u64,
        /// Requested size.
        new_size: u64,
    },
    /// A size that is zero, not a multiple of 512 bytes, or too large.
    #[error(
        "invalid volume size {0}: it must be a positive multiple of 512 bytes and at most 2^56"
    )]
    InvalidSize(u64),
    /// A background merge is moving this layer's blocks into another file, which replaces it
    /// when the merge ends: a change to it now would be lost.
    #[error("layer {0} is being rewritten by a snapshot merge; retry when the merge has ended")]
    LayerMerging(LayerId),
    /// A chunk image from another replica does not make sense.
    #[error("chunk image refused: {0}; the sending replica is faulty or out of date")]
    BadChunkImage(String),
    /// The filesystem holding the store is full (ENOSPC).
    #[error(
        "no space left on this server's data filesystem: new data is refused (reads, \
         overwrites of written blocks, trims and deletes go on); delete volumes or snapshots, \
         or grow the filesystem"
    )]
    NoSpace,
    /// A volume this large needs layer files larger than the filesystem holds.
    #[error(
        "a volume of {} ({size} bytes) needs files of that size on this server's data \
         filesystem, which holds files of at most {} ({max} bytes); make the volume at most \
         that large, or put the data directory on a filesystem with larger files (XFS)",
        strata_types::format_size(*size),
        strata_types::format_size(*max)
    )]
    FileTooLarge {
        /// The volume size asked for.
        size: u64,
        /// The largest file the filesystem holds.
        max: u64,
    },
    /// An I/O error, with what the store was doing.
    #[error("i/o error while {context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database reported an error.
    #[error("metadata database error: {0}")]
    Db(String),
    /// The store's directory holds volume data but its database is missing or new: what the
    /// data files hold is unknown, and opening would present this server's copies as empty.
    #[error(
        "the store in {} holds volume data in volumes/ but its database store.redb is missing \
         or empty, so which blocks hold data is lost; refusing to open it, which would replace \
         this server's copies with zeros (nothing was changed). Restore store.redb from a \
         backup, or move the data directory aside and replace this server: `strata cluster \
         remove-server` rebuilds its chunks from the other replicas",
        dir.display()
    )]
    LostDatabase {
        /// The store's directory.
        dir: std::path::PathBuf,
    },
    /// On-disk state that does not make sense; the store refuses to guess.
    #[error("store is corrupt: {0}; move the data directory aside and restore from a replica")]
    Corrupt(String),
}

impl StoreError {
    /// Wraps an I/O error with context, mapping ENOSPC to [`StoreError::NoSpace`].
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            return StoreError::NoSpace;
        }
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) => StoreError::io("using the metadata database", io),
            redb::Error::Corrupted(s) => StoreError::Corrupt(format!("metadata database: {s}")),
            other => StoreError::Db(other.to_string()),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                redb::Error::from(e).into()
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_maps_to_no_space() {
        let e = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        assert!(matches!(StoreError::io("writing", e), StoreError::NoSpace));
        let e = std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error());
        assert!(StoreError::io("syncing x", e)
            .to_string()
            .contains("syncing x"));
    }
}
