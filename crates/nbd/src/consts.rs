//! Wire constants of the NBD protocol, named as in `doc/proto.md` of the NetworkBlockDevice/nbd
//! repository.
//!
//! Every number that crosses the wire is defined here once: the magic numbers that frame the
//! handshake, options, requests and replies; the flag bits of each phase; the option, reply,
//! info, command and structured-reply type codes; and the errno values. All multi-byte values
//! travel in network byte order (big-endian). The size limits this server enforces (the option
//! length cap, the maximum payload) live here too, so the parsers and the connection loop agree.

/// `NBDMAGIC`: first eight bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second greeting word, and the magic that starts every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic that starts every fixed-newstyle option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic that starts every transmission request (`NBD_REQUEST_MAGIC`).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of the simple reply (`NBD_SIMPLE_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk (`NBD_STRUCTURED_REPLY_MAGIC`).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client wants no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag: always set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_TRIM` is supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`) is supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: `NBD_CMD_FLAG_DF` is supported (only with structured replies).
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: flushes and FUA are visible across all connections to the export.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Option: choose an export and enter transmission (no error reporting possible).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: end the session.
pub const OPT_ABORT: u32 = 2;
/// Option: list the exports.
pub const OPT_LIST: u32 = 3;
/// Option: upgrade to TLS (not supported here).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe one export.
pub const OPT_INFO: u32 = 6;
/// Option: describe one export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: use structured replies in transmission.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list the metadata contexts matching some queries.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select the metadata contexts for `NBD_CMD_BLOCK_STATUS`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply: success, or the end of a list.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of a `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// Option reply: one piece of information about an export.
pub const REP_INFO: u32 = 3;
/// Option reply: one metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Option reply error: the option is unknown to this server.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Option reply error: server policy forbids the option.
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// Option reply error: the option is syntactically or semantically invalid.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// Option reply error: the export is not available.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// Option reply error: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
/// Option reply error: the request or the reply is too large.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Info type: export size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Info type: canonical export name.
pub const INFO_NAME: u16 = 1;
/// Info type: human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Info type: minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write (followed by the payload).
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush to stable storage.
pub const CMD_FLUSH: u16 = 3;
/// Command: discard.
pub const CMD_TRIM: u16 = 4;
/// Command: write zeroes without a payload.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: query block status.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: write zeroes without punching a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: reply to a read with at most one content chunk.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: reply to a block status with exactly one extent.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Structured reply flag: the final chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply type: nothing more (final chunk).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured reply type: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured reply type: zeroes at an offset.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Structured reply type: block status descriptors for one metadata context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Structured reply type: an error for the whole request.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// Errno: operation not permitted.
pub const EPERM: u32 = 1;
/// Errno: input/output error.
pub const EIO: u32 = 5;
/// Errno: invalid argument.
pub const EINVAL: u32 = 22;
/// Errno: no space left on device.
pub const ENOSPC: u32 = 28;
/// Errno: value too large.
pub const EOVERFLOW: u32 = 75;
/// Errno: operation not supported.
pub const ENOTSUP: u32 = 95;
/// Errno: the server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// `base:allocation` state bit: the extent is a hole.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` state bit: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context this server offers.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id this server gives `base:allocation` when it is selected.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Largest payload a client may send or request (32 MiB, advertised as the maximum block size).
/// A larger WRITE gets an error reply (its payload is read and thrown away) up to
/// [`MAX_DISCARDED_WRITE`].
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Longest WRITE whose payload is read and discarded with an error reply (`MAX_PAYLOAD` plus
/// 64 MiB); a longer one is taken as an attack and ends the connection (`doc/proto.md` allows a
/// hard disconnect above 2^25 bytes).
pub const MAX_DISCARDED_WRITE: u32 = MAX_PAYLOAD + 64 * 1024 * 1024;
/// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE`.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest option data this server accepts (options carry names and queries, not data).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Longest string (export name, query, message) the protocol allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Most extents sent in one block-status chunk.
pub const MAX_EXTENTS: usize = 1 << 20;
