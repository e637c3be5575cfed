//! Encoding transmission replies.
//!
//! Two reply formats exist (all big-endian):
//! ```text
//! simple:     u32 NBD_SIMPLE_REPLY_MAGIC | u32 error | u64 cookie | [read data]
//! structured: u32 NBD_STRUCTURED_REPLY_MAGIC | u16 flags | u16 type | u64 cookie | u32 length
//!             | payload (OFFSET_DATA: u64 offset + data; ERROR: u32 errno + u16 msg len + msg;
//!               BLOCK_STATUS: u32 context id + (u32 length, u32 flags)*)
//! ```
//! A [`Reply`] is everything sent for one request, as a fixed header of at most 32 bytes kept
//! inline (no allocation) followed by a body held as `Bytes`, so read data goes from the device
//! to the socket without being copied here. This server always answers a request with exactly
//! one message (one structured chunk carries `NBD_REPLY_FLAG_DONE`), so the writer never has to
//! keep the chunks of one reply together: one `Reply` is written whole, never interleaved.

use bytes::{BufMut, Bytes, BytesMut};

use crate::consts;
use crate::device::Extent;

/// The bytes of one reply: an inline header and a body.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    head: [u8; 32],
    head_len: u8,
    body: Bytes,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("head", &self.head())
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Reply {
    fn from_head(parts: &[&[u8]], body: Bytes) -> Reply {
        let mut head = [0u8; 32];
        let mut len = 0;
        for part in parts {
            head[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        Reply {
            head,
            head_len: len as u8,
            body,
        }
    }

    fn chunk(cookie: u64, kind: u16, payload_len: usize, extra: &[u8], body: Bytes) -> Reply {
        let magic = consts::STRUCTURED_REPLY_MAGIC.to_be_bytes();
        let flags = consts::REPLY_FLAG_DONE.to_be_bytes();
        // Payload lengths are bounded by MAX_PAYLOAD plus a small fixed overhead.
        let len = u32::try_from(payload_len).unwrap_or(u32::MAX).to_be_bytes();
        let parts: [&[u8]; 6] = [
            &magic,
            &flags,
            &kind.to_be_bytes(),
            &cookie.to_be_bytes(),
            &len,
            extra,
        ];
        Reply::from_head(&parts, body)
    }

    /// A simple reply with no data: success (`errno` 0) or an error.
    pub fn simple(cookie: u64, errno: u32) -> Reply {
        let magic = consts::SIMPLE_REPLY_MAGIC.to_be_bytes();
        Reply::from_head(
            &[&magic, &errno.to_be_bytes(), &cookie.to_be_bytes()],
            Bytes::new(),
        )
    }

    /// A successful simple reply to a read, followed by the data.
    pub fn simple_read(cookie: u64, data: Bytes) -> Reply {
        let mut reply = Reply::simple(cookie, 0);
        reply.body = data;
        reply
    }

    /// A final `NBD_REPLY_TYPE_OFFSET_DATA` chunk carrying `data` read at `offset`.
    pub fn offset_data(cookie: u64, offset: u64, data: Bytes) -> Reply {
        let len = 8 + data.len();
        Reply::chunk(
            cookie,
            consts::REPLY_TYPE_OFFSET_DATA,
            len,
            &offset.to_be_bytes(),
            data,
        )
    }

    /// A final `NBD_REPLY_TYPE_OFFSET_HOLE` chunk: `len` bytes of zeroes at `offset`.
    pub fn offset_hole(cookie: u64, offset: u64, len: u32) -> Reply {
        let mut extra = [0u8; 12];
        extra[..8].copy_from_slice(&offset.to_be_bytes());
        extra[8..].copy_from_slice(&len.to_be_bytes());
        Reply::chunk(
            cookie,
            consts::REPLY_TYPE_OFFSET_HOLE,
            12,
            &extra,
            Bytes::new(),
        )
    }

    /// A final `NBD_REPLY_TYPE_NONE` chunk: success with nothing to say.
    pub fn none(cookie: u64) -> Reply {
        Reply::chunk(cookie, consts::REPLY_TYPE_NONE, 0, &[], Bytes::new())
    }

    /// A final `NBD_REPLY_TYPE_ERROR` chunk with `errno` and a human-readable message.
    pub fn error(cookie: u64, errno: u32, message: &str) -> Reply {
        let mut end = message.len().min(consts::MAX_STRING_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let mut extra = [0u8; 6];
        extra[..4].copy_from_slice(&errno.to_be_bytes());
        extra[4..].copy_from_slice(&(message.len() as u16).to_be_bytes());
        let body = Bytes::copy_from_slice(message.as_bytes());
        Reply::chunk(
            cookie,
            consts::REPLY_TYPE_ERROR,
            6 + message.len(),
            &extra,
            body,
        )
    }

    /// A final `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for one context: `(length, flags)` pairs.
    pub fn block_status(cookie: u64, context: u32, descriptors: &[(u32, u32)]) -> Reply {
        let mut body = BytesMut::with_capacity(descriptors.len() * 8);
        for (len, flags) in descriptors {
            body.put_u32(*len);
            body.put_u32(*flags);
        }
        let len = 4 + body.len();
        let kind = consts::REPLY_TYPE_BLOCK_STATUS;
        Reply::chunk(cookie, kind, len, &context.to_be_bytes(), body.freeze())
    }

    /// The header bytes.
    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// The body bytes (read data, an error message, descriptors).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Header and body in one buffer (for tests and small replies).
    pub fn to_vec(&self) -> Vec<u8> {
        [self.head(), &self.body[..]].concat()
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.head().len() + self.body.len()
    }
}

/// Turns what a device reported into valid `base:allocation` descriptors for a request of
/// `len` bytes: zero-length extents dropped, equal neighbours merged, the list cut where it
/// covers `len` (the last one clipped to it), one descriptor with `req_one`, at most
/// [`consts::MAX_EXTENTS`]. An empty report becomes one "allocated, unknown" extent over the
/// whole request, which the doc says is always safe.
pub fn block_status_descriptors(extents: &[Extent], len: u32, req_one: bool) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut covered: u32 = 0;
    for e in extents.iter().filter(|e| e.len > 0) {
        let take = e.len.min(len - covered);
        let full = out.len() == consts::MAX_EXTENTS;
        match out.last_mut() {
            Some(last) if last.1 == e.flags() => last.0 += take,
            _ if full => break,
            _ => out.push((take, e.flags())),
        }
        covered += take;
        if covered == len || (req_one && !out.is_empty()) {
            break;
        }
    }
    if out.is_empty() {
        out.push((len, 0));
    }
    if req_one {
        out.truncate(1);
    }
    out
}

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
