//! Errors of the NBD layer.
//!
//! Two kinds, kept apart on purpose:
//! - [`ProtocolError`]: the peer broke the framing (bad magic, unknown client flags, a length
//!   no server should accept). The byte stream can no longer be trusted, so the connection ends;
//!   the parsers return it and never panic.
//! - [`NbdError`]: why [`crate::serve_connection`] stopped — a protocol error, an I/O error on
//!   the socket, or a handshake the server had to refuse. None of them affects other connections.
//!
//! Errors of a single request or option (out of range, device failure, unknown option) are not
//! errors here at all: they become error replies and the connection keeps serving.

/// The peer sent bytes that violate the framing of the protocol; the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A message did not start with the magic number its position requires.
    #[error("bad magic {got:#x}, expected {expected:#x}")]
    BadMagic {
        /// The magic the protocol requires here.
        expected: u64,
        /// The value received.
        got: u64,
    },
    /// The client flags contain unknown bits or lack `NBD_FLAG_C_FIXED_NEWSTYLE`.
    #[error("unsupported client flags {0:#x}")]
    BadClientFlags(u32),
    /// An option's data is longer than this server accepts.
    #[error("option {option} too large: {len} bytes")]
    OptionTooLarge {
        /// The option code.
        option: u32,
        /// The announced data length.
        len: u32,
    },
    /// A WRITE announced a payload too large even to read and discard
    /// ([`crate::consts::MAX_DISCARDED_WRITE`]).
    #[error("write payload too large: {0} bytes")]
    PayloadTooLarge(u32),
    /// The client did not finish option haggling within [`crate::NEGOTIATION_TIMEOUT`].
    #[error("handshake not finished within {0:?}; closing the connection")]
    NegotiationTimeout(std::time::Duration),
    /// `NBD_OPT_EXPORT_NAME` named an export that is not a valid string.
    #[error("invalid export name")]
    BadExportName,
}

/// Why a connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The client closed the connection in the middle of a message.
    #[error("connection closed mid-message")]
    Truncated,
    /// The client did not finish option haggling within [`crate::NEGOTIATION_TIMEOUT`].
    #[error("handshake not finished within {0:?}; closing the connection")]
    NegotiationTimeout(std::time::Duration),
    /// `NBD_OPT_EXPORT_NAME` named an export that could not be opened (the session must end).
    #[error("export {name:?} unavailable: {reason}")]
    ExportUnavailable {
        /// The name the client asked for.
        name: String,
        /// Why it could not be opened.
        reason: String,
    },
}
