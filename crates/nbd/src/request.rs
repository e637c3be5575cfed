//! Parsing and checking transmission requests.
//!
//! A request on the wire (all big-endian):
//! ```text
//! u32 NBD_REQUEST_MAGIC | u16 flags | u16 type | u64 cookie | u64 offset | u32 length
//! [length bytes of payload, for NBD_CMD_WRITE only]
//! ```
//! [`parse_request`] turns a byte slice into a [`Request`]: `Ok(None)` while the slice holds
//! only part of a message (header *or* write payload), `Ok(Some((request, consumed)))` once it
//! holds the whole message (the payload is `buf[REQUEST_HEADER_LEN..consumed]`), and
//! `Err(ProtocolError)` when the stream cannot continue: a bad magic, or a write payload larger
//! than [`consts::MAX_DISCARDED_WRITE`] (the doc allows a hard disconnect there).
//! [`decode_request`] is the same over a `BytesMut`, and hands the payload out as `Bytes`
//! without copying it.
//!
//! A write longer than [`consts::MAX_PAYLOAD`] but within [`consts::MAX_DISCARDED_WRITE`] is
//! returned with its header alone (`consumed` covers only the header and the payload is empty):
//! the caller skips the [`Request::discard_len`] bytes that follow, without buffering them, and
//! [`validate`] refuses the request (`EOVERFLOW`, or `EINVAL` with simple replies), so the
//! connection stays in step and keeps serving.
//!
//! Everything else that can be wrong with a request — unknown command or flags, out of range,
//! misaligned, a write to a read-only export — is not a framing problem: [`validate`] maps it to
//! an errno for an error reply, and the connection keeps serving. The device is never called
//! for a request that fails validation.

use bytes::{Buf, Bytes, BytesMut};

use crate::consts;
use crate::error::ProtocolError;

/// Bytes in a request header.
pub const REQUEST_HEADER_LEN: usize = 28;

/// The request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE` (a payload follows the header).
    Write,
    /// `NBD_CMD_DISC`.
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// Any other type code; answered with `NBD_EINVAL`.
    Unknown(u16),
}

impl Command {
    /// The command for a wire type code.
    pub fn from_code(code: u16) -> Command {
        match code {
            consts::CMD_READ => Command::Read,
            consts::CMD_WRITE => Command::Write,
            consts::CMD_DISC => Command::Disc,
            consts::CMD_FLUSH => Command::Flush,
            consts::CMD_TRIM => Command::Trim,
            consts::CMD_WRITE_ZEROES => Command::WriteZeroes,
            consts::CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }
}

/// One request header, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*` bits as sent.
    pub flags: u16,
    /// The request type.
    pub command: Command,
    /// Opaque value echoed in the reply.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Length in bytes (the payload length for a write).
    pub len: u32,
}

impl Request {
    /// Whether the client set `NBD_CMD_FLAG_FUA`.
    pub fn fua(&self) -> bool {
        self.flags & consts::CMD_FLAG_FUA != 0
    }
    /// Bytes of payload that follow the header on the wire and are handed to the device (none
    /// for a write over the maximum payload: see [`Request::discard_len`]).
    pub fn payload_len(&self) -> usize {
        match self.command {
            Command::Write if self.len <= consts::MAX_PAYLOAD => self.len as usize,
            _ => 0,
        }
    }
    /// Bytes of payload that follow the header on the wire and must be read and thrown away:
    /// the whole payload of a write over [`consts::MAX_PAYLOAD`], else none.
    pub fn discard_len(&self) -> usize {
        match self.command {
            Command::Write if self.len > consts::MAX_PAYLOAD => self.len as usize,
            _ => 0,
        }
    }
}

/// Parses one whole request (header and any write payload); see the module doc.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    let Some(head) = buf.first_chunk::<REQUEST_HEADER_LEN>() else {
        return Ok(None);
    };
    let req = parse_header(head)?;
    let total = REQUEST_HEADER_LEN + req.payload_len();
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((req, total)))
}

fn parse_header(head: &[u8; REQUEST_HEADER_LEN]) -> Result<Request, ProtocolError> {
    let mut b = &head[..];
    let magic = b.get_u32();
    if magic != consts::REQUEST_MAGIC {
        let expected = u64::from(consts::REQUEST_MAGIC);
        return Err(ProtocolError::BadMagic {
            expected,
            got: u64::from(magic),
        });
    }
    let flags = b.get_u16();
    let command = Command::from_code(b.get_u16());
    let cookie = b.get_u64();
    let offset = b.get_u64();
    let len = b.get_u32();
    if command == Command::Write && len > consts::MAX_DISCARDED_WRITE {
        return Err(ProtocolError::PayloadTooLarge(len));
    }
    Ok(Request {
        flags,
        command,
        cookie,
        offset,
        len,
    })
}

/// Takes one whole request off the front of `buf`, with its payload (empty unless a write).
/// When only part of a request is buffered, reserves room for the rest and returns `Ok(None)`.
pub fn decode_request(buf: &mut BytesMut) -> Result<Option<(Request, Bytes)>, ProtocolError> {
    match parse_request(buf)? {
        Some((req, total)) => {
            let mut frame = buf.split_to(total);
            frame.advance(REQUEST_HEADER_LEN);
            Ok(Some((req, frame.freeze())))
        }
        None => {
            if let Some(head) = buf.first_chunk::<REQUEST_HEADER_LEN>() {
                let total = REQUEST_HEADER_LEN + parse_header(head)?.payload_len();
                buf.reserve(total - buf.len());
            }
            Ok(None)
        }
    }
}

/// What a request is checked against: the export and what the handshake negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Export size in bytes.
    pub size: u64,
    /// The export refuses writes.
    pub read_only: bool,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The id of `base:allocation`, if selected for this export.
    pub meta_context: Option<u32>,
    /// Minimum block size advertised (1 = any alignment).
    pub min_block: u32,
}

/// Checks a request before the device sees it; `Err` holds the errno for the error reply.
/// `NBD_CMD_DISC` is always valid (it has no reply).
pub fn validate(req: &Request, s: &Session) -> Result<(), u32> {
    let allowed = consts::CMD_FLAG_FUA
        | match req.command {
            Command::Read if s.structured => consts::CMD_FLAG_DF,
            Command::WriteZeroes => consts::CMD_FLAG_NO_HOLE,
            Command::BlockStatus => consts::CMD_FLAG_REQ_ONE,
            Command::Disc => return Ok(()),
            Command::Unknown(_) => return Err(consts::EINVAL),
            _ => 0,
        };
    if req.flags & !allowed != 0 {
        return Err(consts::EINVAL);
    }
    let writes = matches!(req.command, Command::Write | Command::WriteZeroes);
    match req.command {
        Command::Flush => return Ok(()),
        Command::Write | Command::WriteZeroes | Command::Trim if s.read_only => {
            return Err(consts::EPERM)
        }
        Command::Read | Command::Write if req.len > consts::MAX_PAYLOAD => {
            return Err(if s.structured {
                consts::EOVERFLOW
            } else {
                consts::EINVAL
            });
        }
        Command::BlockStatus if s.meta_context.is_none() || !s.structured || req.len == 0 => {
            return Err(consts::EINVAL)
        }
        _ => {}
    }
    let end = req.offset.checked_add(u64::from(req.len));
    if end.is_none_or(|end| end > s.size) {
        // doc/proto.md: ENOSPC for writes past the end, EINVAL for the rest.
        return Err(if writes {
            consts::ENOSPC
        } else {
            consts::EINVAL
        });
    }
    // The minimum block size is a power of two, so `x & mask` is `x % min`.
    let mask = u64::from(s.min_block.max(1)) - 1;
    let at_end = end == Some(s.size);
    if req.command != Command::BlockStatus
        && (req.offset & mask != 0 || (u64::from(req.len) & mask != 0 && !at_end))
    {
        return Err(consts::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
