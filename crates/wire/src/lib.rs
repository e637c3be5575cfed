//! The server↔server data protocol of Strata: how a gateway writes to, reads from, flushes and
//! trims the replicas of a volume's chunks on other servers.
//!
//! # Shape
//!
//! One TCP connection between two servers carries many requests at once. Each request is a
//! [`frame`] with a client-chosen request id; the server handles requests concurrently and
//! answers each with a frame of the same id, in whatever order they finish. This is the same
//! design as the NBD transmission phase, and for the same reason: a gateway fans one client
//! request out to several replicas and must keep the pipes full without a connection per
//! request.
//!
//! ```text
//!  caller ─call()─► WireClient ─► writer task ═══ TCP ═══► connection task ─► Handler (×N tasks)
//!  caller ◄─oneshot─ pending map ◄─ reader task ◄══ TCP ══ writer task ◄─ responses, any order
//! ```
//!
//! # Layers
//!
//! - [`frame`]: the byte layout and the [`FrameCodec`] (a `tokio_util` codec). The decoder is the
//!   parser — no I/O — and is tested with tables of byte strings.
//! - [`message`]: [`Request`] and [`Response`], each a fixed binary layout with block data as the
//!   raw payload tail (no JSON, no copy on decode).
//! - [`handshake`]: magic, version and [`ServerId`](strata_types::ServerId) exchanged on connect;
//!   a version mismatch refuses the connection with a clear error on both sides.
//! - [`WireClient`], [`Pool`]: the calling side, with per-call timeouts and retryable errors when
//!   a connection is lost; [`serve`] and [`Handler`]: the answering side.
//!
//! # Errors
//!
//! Transport failures are [`WireError`]s ([`WireError::is_retryable`] says whether to try again);
//! refusals by the peer's store are ordinary [`Response::Error`] answers with an [`ErrorCode`].
//! Integrity: every frame carries a crc32c over header and payload, so a corrupted frame is
//! caught and closes its connection instead of writing wrong data to a replica.

mod client;
mod error;
pub mod frame;
pub mod handshake;
pub mod message;
mod pool;
mod server;
mod writer;

pub use client::{ClientConfig, WireClient};
pub use error::{FrameError, MessageError, WireError};
pub use frame::{
    Frame, FrameCodec, FrameKind, WireMessage, DEFAULT_MAX_PAYLOAD, HEADER_LEN, MAGIC,
    PROTOCOL_VERSION,
};
pub use message::{ChunkMaps, ErrorCode, Request, Response, Run};
pub use pool::Pool;
pub use server::{serve, Handler, ServerConfig};

#[cfg(test)]
mod frame_tests;
