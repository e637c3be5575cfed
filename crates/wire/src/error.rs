//! Errors of the wire protocol, in three layers.
//!
//! - [`FrameError`]: the byte stream is not a valid frame (magic, version, kind, length bound,
//!   checksum). The connection has lost its framing and is closed.
//! - [`MessageError`]: a well-formed frame whose payload does not parse as the message its type
//!   says. On the server this becomes an `Error { code: BadRequest }` response for that request
//!   only; on the client it fails that call only.
//! - [`WireError`]: what a caller of [`crate::WireClient::call`] sees. [`WireError::is_retryable`]
//!   separates "the connection or peer failed, the request may be sent again (on a new
//!   connection or to another replica)" from "this will fail again" (version mismatch, a
//!   request too large to frame).
//!
//! Errors the *handler* reports (fenced layer, out of range, ...) are not `WireError`s: they are
//! ordinary [`crate::Response::Error`] answers with an [`crate::ErrorCode`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A frame could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start with the Strata wire magic.
    #[error("bad frame magic {0:#010x}: not a Strata wire peer, or the stream lost its framing")]
    BadMagic(u32),
    /// The frame header carries a protocol version this build does not speak.
    #[error("unsupported wire protocol version {0} (this build speaks {v})", v = crate::PROTOCOL_VERSION)]
    UnsupportedVersion(u16),
    /// The kind byte is neither request nor response.
    #[error("bad frame kind {0}")]
    BadKind(u8),
    /// The payload is longer than the codec's bound.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or attempted) payload length.
        len: u64,
        /// The codec's limit.
        max: u32,
    },
    /// The crc32c over header and payload does not match.
    #[error("frame checksum mismatch: header says {expected:#010x}, data gives {actual:#010x}")]
    BadChecksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum computed over the received bytes.
        actual: u32,
    },
    /// Reading or writing the socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// A frame's payload does not parse as the message its type announces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The message type code is not known for this frame kind.
    #[error("unknown message type {0:#06x}")]
    UnknownType(u16),
    /// A request type arrived in a response frame, or the reverse.
    #[error("message type {0:#06x} in a frame of the wrong kind")]
    WrongKind(u16),
    /// The payload is shorter or longer than the message needs.
    #[error("message type {msg_type:#06x}: bad payload length {len}")]
    BadLength {
        /// The message type code.
        msg_type: u16,
        /// The payload length received.
        len: usize,
    },
    /// A field holds a value outside its range (flag byte, error code, UTF-8 text).
    #[error("message type {msg_type:#06x}: invalid {field}")]
    BadField {
        /// The message type code.
        msg_type: u16,
        /// Which field.
        field: &'static str,
    },
    /// A request asks for more bytes than one answer may carry.
    #[error("message type {msg_type:#06x}: length {len} exceeds the limit of {max}")]
    TooLong {
        /// The message type code.
        msg_type: u16,
        /// The length asked for.
        len: u32,
        /// The limit.
        max: u32,
    },
}

/// What a wire client call or connection attempt can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The TCP connection to the peer could not be made (refused, unreachable, timed out).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The peer address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The peer speaks another protocol version; nothing was exchanged.
    #[error("peer speaks wire protocol version {theirs}, this server speaks {ours}: refusing the connection")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer's handshake is not a Strata wire handshake.
    #[error("bad handshake: {0}")]
    Handshake(String),
    /// The peer broke the protocol after the handshake (e.g. a response frame sent to a server).
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
    /// The connection closed or failed while the call was in flight or before it was sent.
    /// The request may or may not have been executed; it is safe to retry idempotent requests.
    #[error("connection to peer lost: {0}")]
    ConnectionLost(String),
    /// No response within the call timeout; the connection stays open. The request may still
    /// be executed by the peer later, so only idempotent requests are safe to resend.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// A frame error (on encode: the request is too large to send).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The response did not parse.
    #[error("bad response: {0}")]
    Message(#[from] MessageError),
}

impl WireError {
    /// Whether sending the request again (on a new connection, or to another replica) may
    /// succeed: true for connection failures, lost connections and timeouts.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::ConnectionLost(_) | Self::Timeout(_) => true,
            Self::Frame(FrameError::Io(_)) => true,
            Self::VersionMismatch { .. }
            | Self::Handshake(_)
            | Self::Protocol(_)
            | Self::Frame(_)
            | Self::Message(_) => false,
        }
    }
}
