//! The frame codec: how one request or response travels on a connection.
//!
//! Every message is one frame: a fixed 26-byte header followed by the raw payload. Integers are
//! big-endian (network order).
//!
//! ```text
//! offset size field
//!      0    4 magic          b"STRW" (0x5354_5257)
//!      4    2 version        PROTOCOL_VERSION (7)
//!      6    1 kind           0 = request, 1 = response
//!      7    1 flags          reserved, must be 0
//!      8    8 request id     chosen by the client, echoed in the response
//!     16    2 message type   see `message.rs` (requests 0x00xx, responses 0x80xx)
//!     18    4 payload length bytes after the header, at most `max_payload` (64 MiB)
//!     22    4 crc32c         over header bytes 0..22, then the payload
//!     26    n payload        message-specific; block data is raw bytes, never re-encoded
//! ```
//!
//! The [`FrameCodec`] is the parser: [`Decoder::decode`] looks only at the buffer, returns
//! `Ok(None)` while the frame is incomplete and a typed [`FrameError`] as soon as a header is
//! known to be bad (wrong magic, version or kind, or a length above the limit) — it does not wait
//! for an oversized payload to arrive. The checksum is verified once the whole frame is buffered.
//! A frame error is not recoverable on that connection (the byte stream has lost its framing),
//! so the connection loops close the connection, and only that one.
//!
//! Encoding writes the header and the payload straight into the output buffer:
//! [`WireMessage::put_payload`] copies block data once, from the caller's `Bytes` to the socket
//! buffer. The connections' writers skip even that copy: they queue a message's block data
//! ([`WireMessage::tail`]) as it is and send it with vectored writes (`writer.rs`). On decode the payload is split off the read buffer without copying, so a `Write`'s
//! data is a slice of the bytes that came off the socket.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::FrameError;

/// The four bytes that open every frame and every handshake.
pub const MAGIC: [u8; 4] = *b"STRW";
/// The protocol version this build speaks, in the handshake and in every frame header.
pub const PROTOCOL_VERSION: u16 = 7;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 26;
/// The default bound on a frame's payload: 64 MiB, well above one 4 MiB chunk.
pub const DEFAULT_MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

/// Whether a frame carries a request (client → server) or a response (server → client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A request; the server answers with a response of the same request id.
    Request = 0,
    /// A response to the request with the same id.
    Response = 1,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Request),
            1 => Some(Self::Response),
            _ => None,
        }
    }
}

/// One decoded frame: the header fields that matter and the payload, not yet interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Request or response.
    pub kind: FrameKind,
    /// The id that pairs a response with its request.
    pub request_id: u64,
    /// What the payload holds (see [`crate::Request`] and [`crate::Response`]).
    pub msg_type: u16,
    /// The payload bytes, checksum already verified.
    pub payload: Bytes,
}

/// A message that can travel as a frame payload: [`crate::Request`] or [`crate::Response`].
pub trait WireMessage: Sized {
    /// The frame kind this message travels in.
    const KIND: FrameKind;
    /// The message type code in the header.
    fn msg_type(&self) -> u16;
    /// The exact number of payload bytes [`Self::put_payload`] writes.
    fn payload_len(&self) -> usize;
    /// Appends the payload to `dst`, except its [`Self::tail`].
    fn put_head(&self, dst: &mut BytesMut);
    /// The raw block data that ends the payload, if the message carries any: a writer may send
    /// it from the caller's buffer instead of copying it.
    fn tail(&self) -> Option<&Bytes> {
        None
    }
    /// Appends the whole payload to `dst`.
    fn put_payload(&self, dst: &mut BytesMut) {
        self.put_head(dst);
        if let Some(t) = self.tail() {
            dst.put_slice(t);
        }
    }
    /// Parses a payload of type `msg_type`.
    fn decode(msg_type: u16, payload: Bytes) -> Result<Self, crate::MessageError>;
}

/// The tokio-util codec for frames; one per connection direction.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_payload: u32,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameCodec {
    /// A codec that refuses payloads longer than `max_payload` bytes, in both directions.
    pub fn new(max_payload: u32) -> Self {
        Self { max_payload }
    }

    /// The payload bound of this codec.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }
}

/// `len` as a header's payload length, if it is at most `max`.
pub(crate) fn check_len(len: usize, max: u32) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(l) if l <= max => Ok(l),
        _ => Err(FrameError::TooLarge {
            len: len as u64,
            max,
        }),
    }
}

/// Appends the frame of `msg` (payload length `len`) to `dst`, except the tail given as
/// `separate`, which the caller sends right after; the checksum covers it either way.
pub(crate) fn encode_head<M: WireMessage>(
    dst: &mut BytesMut,
    request_id: u64,
    msg: &M,
    len: u32,
    separate: Option<&Bytes>,
) {
    let start = dst.len();
    dst.reserve(HEADER_LEN + len as usize - separate.map_or(0, Bytes::len));
    put_header(dst, M::KIND, request_id, msg.msg_type(), len);
    if separate.is_some() {
        msg.put_head(dst);
    } else {
        msg.put_payload(dst);
    }
    let crc = crc32c::crc32c(&dst[start..start + 22]);
    let mut crc = crc32c::crc32c_append(crc, &dst[start + HEADER_LEN..]);
    if let Some(t) = separate {
        crc = crc32c::crc32c_append(crc, t);
    }
    debug_assert_eq!(
        dst.len() - start + separate.map_or(0, Bytes::len),
        HEADER_LEN + len as usize
    );
    dst[start + 22..start + HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
}

/// Writes a header with the checksum left as zero; returns the header's start in `dst`.
fn put_header(dst: &mut BytesMut, kind: FrameKind, request_id: u64, msg_type: u16, len: u32) {
    dst.put_slice(&MAGIC);
    dst.put_u16(PROTOCOL_VERSION);
    dst.put_u8(kind as u8);
    dst.put_u8(0);
    dst.put_u64(request_id);
    dst.put_u16(msg_type);
    dst.put_u32(len);
    dst.put_u32(0);
}

/// Fills in the checksum of the frame that starts at `start` and runs to the end of `dst`.
fn seal(dst: &mut BytesMut, start: usize) {
    let crc = crc32c::crc32c(&dst[start..start + 22]);
    let crc = crc32c::crc32c_append(crc, &dst[start + HEADER_LEN..]);
    dst[start + 22..start + HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = check_len(frame.payload.len(), self.max_payload)?;
        dst.reserve(HEADER_LEN + frame.payload.len());
        let start = dst.len();
        put_header(dst, frame.kind, frame.request_id, frame.msg_type, len);
        dst.put_slice(&frame.payload);
        seal(dst, start);
        Ok(())
    }
}

impl<M: WireMessage> Encoder<(u64, M)> for FrameCodec {
    type Error = FrameError;

    fn encode(
        &mut self,
        (request_id, msg): (u64, M),
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let len = check_len(msg.payload_len(), self.max_payload)?;
        encode_head(dst, request_id, &msg, len, None);
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        // Reject a wrong magic as soon as its bytes are here, before a whole header arrives.
        let seen = src.len().min(MAGIC.len());
        if src[..seen] != MAGIC[..seen] {
            return Err(FrameError::BadMagic(take4(src)));
        }
        if src.len() < HEADER_LEN {
            src.reserve(HEADER_LEN - src.len());
            return Ok(None);
        }
        let mut h = &src[4..HEADER_LEN];
        let version = h.get_u16();
        let kind_byte = h.get_u8();
        let _flags = h.get_u8();
        let request_id = h.get_u64();
        let msg_type = h.get_u16();
        let len = h.get_u32();
        let crc = h.get_u32();
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kind = FrameKind::from_u8(kind_byte).ok_or(FrameError::BadKind(kind_byte))?;
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max_payload,
            });
        }
        let total = HEADER_LEN + len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let actual = crc32c::crc32c_append(crc32c::crc32c(&src[..22]), &src[HEADER_LEN..total]);
        if actual != crc {
            return Err(FrameError::BadChecksum {
                expected: crc,
                actual,
            });
        }
        let mut frame = src.split_to(total);
        frame.advance(HEADER_LEN);
        Ok(Some(Frame {
            kind,
            request_id,
            msg_type,
            payload: frame.freeze(),
        }))
    }
}

/// The first (up to) four bytes of `src` as a big-endian number, for error messages.
fn take4(src: &[u8]) -> u32 {
    src.iter()
        .take(4)
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

impl Frame {
    /// Interprets the payload as message `M`, checking that the frame kind fits.
    pub fn into_message<M: WireMessage>(self) -> Result<M, crate::MessageError> {
        if self.kind != M::KIND {
            return Err(crate::MessageError::WrongKind(self.msg_type));
        }
        M::decode(self.msg_type, self.payload)
    }
}
