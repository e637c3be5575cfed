//! What the protocol serves: the [`BlockDevice`] and [`ExportProvider`] traits.
//!
//! The NBD crate knows nothing of Strata's storage. A connection asks an [`ExportProvider`] for
//! the export the client names, gets back an `Arc<dyn BlockDevice>`, and turns every request into
//! one call on it. The device sees only byte ranges that the protocol layer has already checked:
//! in bounds (`offset + len <= size()`), aligned to [`BlockDevice::min_block_size`], never a write
//! to a read-only device. Devices are called concurrently, many requests at a time per connection
//! and from many connections, so they take `&self`.
//!
//! Durability contract (the NBD ordering rules, `doc/proto.md` "Ordering of messages and writes"):
//! when [`BlockDevice::flush`] returns `Ok`, every write, trim and write-zeroes that had returned
//! `Ok` before the flush was called is on stable storage; a write or write-zeroes called with
//! `fua = true` is on stable storage when it returns `Ok`.
//!
//! Errors are typed ([`IoError`], [`OpenError`]) and mapped to NBD's numbers in exactly one place
//! each: [`IoError::errno`] and [`OpenError::reply_code`].

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::consts;

/// One run of bytes with the same allocation state, as reported by [`BlockDevice::block_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length of the run in bytes (zero-length extents are skipped by the protocol layer).
    pub len: u32,
    /// The run is not allocated in the backing store (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// The run reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

impl Extent {
    /// The `base:allocation` status flags of this extent.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.hole {
            flags |= consts::STATE_HOLE;
        }
        if self.zero {
            flags |= consts::STATE_ZERO;
        }
        flags
    }
}

/// Why a device operation failed; each variant maps to one NBD errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The request makes no sense for this device (`NBD_EINVAL`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The device does not accept writes (`NBD_EPERM`).
    #[error("read-only device")]
    ReadOnly,
    /// The backing store is full (`NBD_ENOSPC`).
    #[error("no space left")]
    NoSpace,
    /// Anything else went wrong (`NBD_EIO`).
    #[error("i/o error: {0}")]
    Io(String),
}

impl IoError {
    /// The NBD errno sent to the client for this error: the one place that mapping lives.
    pub fn errno(&self) -> u32 {
        match self {
            IoError::InvalidArgument(_) => consts::EINVAL,
            IoError::ReadOnly => consts::EPERM,
            IoError::NoSpace => consts::ENOSPC,
            IoError::Io(_) => consts::EIO,
        }
    }
}

/// A block device served over NBD: a fixed-size array of bytes.
#[async_trait]
pub trait BlockDevice: Send + Sync {
    /// Size in bytes; fixed for the life of a connection.
    fn size(&self) -> u64;
    /// Whether the device refuses writes; the protocol answers writes with `NBD_EPERM` itself.
    fn read_only(&self) -> bool;
    /// Smallest addressable unit in bytes (a power of two, 1 to 65536). Requests not aligned to
    /// it are refused with `NBD_EINVAL` before reaching the device. Default: 1 (any alignment).
    fn min_block_size(&self) -> u32 {
        1
    }
    /// Reads exactly `len` bytes at `offset`; a reply of another length is reported as `EIO`.
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError>;
    /// Writes `data` at `offset`; with `fua`, returns only once the data is durable.
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError>;
    /// Makes every write that completed before this call durable.
    async fn flush(&self) -> Result<(), IoError>;
    /// Discards `len` bytes at `offset` (a hint: the contents become unspecified).
    async fn trim(&self, offset: u64, len: u32) -> Result<(), IoError>;
    /// Makes `len` bytes at `offset` read as zeroes; with `fua`, durably before returning.
    /// With `no_hole` (`NBD_CMD_FLAG_NO_HOLE`) the range must stay allocated, as if zeroes had
    /// been written: block status then reports it as data, not as a hole. Without it the device
    /// may deallocate the range.
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), IoError>;
    /// Allocation state of the range starting at `offset`: consecutive extents covering it from
    /// `offset`; the list may end early (it must not be empty) or run past `len`.
    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError>;
}

/// One entry of the export list (`NBD_OPT_LIST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The name a client uses to open the export; "" is the default export.
    pub name: String,
    /// A human-readable description (may be empty).
    pub description: String,
}

/// Why an export could not be opened; each variant maps to one option reply code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No export of that name (`NBD_REP_ERR_UNKNOWN`).
    #[error("unknown export")]
    Unknown,
    /// The export exists but this client may not use it (`NBD_REP_ERR_POLICY`).
    #[error("access denied: {0}")]
    Denied(String),
    /// The export exists but cannot be opened now (`NBD_REP_ERR_UNKNOWN`, with this message).
    #[error("{0}")]
    Other(String),
}

impl OpenError {
    /// The option reply code sent to the client: the one place that mapping lives.
    pub fn reply_code(&self) -> u32 {
        match self {
            OpenError::Unknown | OpenError::Other(_) => consts::REP_ERR_UNKNOWN,
            OpenError::Denied(_) => consts::REP_ERR_POLICY,
        }
    }
}

/// Who is asking for an export: what the server knows of the client's connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Client {
    /// The client's address (`None` for a connection that is not TCP, as in tests).
    pub addr: Option<std::net::SocketAddr>,
}

/// The set of exports a server offers.
#[async_trait]
pub trait ExportProvider: Send + Sync {
    /// All exports, for `NBD_OPT_LIST` and for descriptions in `NBD_OPT_INFO`/`NBD_OPT_GO`.
    async fn list(&self) -> Vec<ExportInfo>;
    /// Opens the export called `name` ("" is the default export, if the provider has one) for
    /// `client`; the device lives as long as the client's use of it.
    async fn open(&self, name: &str, client: Client) -> Result<Arc<dyn BlockDevice>, OpenError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let table = [
            (IoError::InvalidArgument("x".into()), consts::EINVAL),
            (IoError::ReadOnly, consts::EPERM),
            (IoError::NoSpace, consts::ENOSPC),
            (IoError::Io("x".into()), consts::EIO),
        ];
        for (err, errno) in table {
            assert_eq!(err.errno(), errno, "{err:?}");
        }
    }

    #[test]
    fn open_error_mapping() {
        assert_eq!(OpenError::Unknown.reply_code(), consts::REP_ERR_UNKNOWN);
        assert_eq!(
            OpenError::Other("x".into()).reply_code(),
            consts::REP_ERR_UNKNOWN
        );
        assert_eq!(
            OpenError::Denied("x".into()).reply_code(),
            consts::REP_ERR_POLICY
        );
    }

    #[test]
    fn extent_flags() {
        let e = |hole, zero| Extent { len: 1, hole, zero };
        assert_eq!(e(false, false).flags(), 0);
        assert_eq!(e(true, false).flags(), 1);
        assert_eq!(e(false, true).flags(), 2);
        assert_eq!(e(true, true).flags(), 3);
    }
}
