//! Vocabulary shared by every Strata crate: typed ids ([`VolumeId`], [`LayerId`], [`ServerId`], [`JobId`]),
//! validated object names ([`Name`]) and human-readable sizes ([`parse_size`], [`format_size`]).
//!
//! This crate has no I/O and no async code; everything here is plain data that the store, the
//! management state, the API and the CLI agree on.

mod ids;
mod name;
mod size;

pub use ids::{JobId, LayerId, ServerId, VolumeId};
pub use name::{Name, NameError, MAX_NAME_LEN};
pub use size::{format_size, parse_size, SizeError};

/// Bytes in one block: the unit that snapshots track and remote copy moves.
pub const BLOCK_SIZE: u64 = 4096;

/// Bytes in one chunk: the placement unit of a volume (a whole number of blocks).
pub const CHUNK_SIZE: u64 = 4 * 1024 * 1024;

/// Blocks in one chunk.
pub const BLOCKS_PER_CHUNK: u64 = CHUNK_SIZE / BLOCK_SIZE;

/// What a byte range of a layer holds (block status): the store reports it, replicas send it
/// to gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Written data (it may happen to be zeros).
    Data,
    /// Trimmed or zeroed: reads as zeros, shadowing lower layers.
    Zero,
    /// Nothing in any layer at or below: reads as zeros.
    Hole,
}
