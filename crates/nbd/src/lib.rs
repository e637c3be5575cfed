//! The NBD protocol, server side: Strata's block access for qemu, libnbd tools, fio and the
//! Linux kernel.
//!
//! This crate knows nothing of Strata's storage. It serves any [`BlockDevice`] that an
//! [`ExportProvider`] hands out by name, speaking the protocol of `doc/proto.md` in the
//! NetworkBlockDevice/nbd repository:
//! - the **fixed newstyle handshake** only (oldstyle is never offered; clients must set
//!   `NBD_FLAG_C_FIXED_NEWSTYLE`; `NBD_FLAG_C_NO_ZEROES` is honoured);
//! - options `EXPORT_NAME`, `GO`, `INFO` (with `INFO_EXPORT`, `INFO_NAME`, `INFO_DESCRIPTION`,
//!   `INFO_BLOCK_SIZE`), `LIST`, `ABORT`, `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and
//!   `SET_META_CONTEXT` with the one context `base:allocation`; others get `NBD_REP_ERR_UNSUP`;
//! - commands `READ`, `WRITE` (FUA), `FLUSH`, `TRIM`, `WRITE_ZEROES` (FUA, NO_HOLE),
//!   `BLOCK_STATUS` (REQ_ONE) and `DISC`, with simple replies, or structured replies when
//!   negotiated (reads as `OFFSET_DATA`, errors as `ERROR` chunks with a message).
//!
//! Shape: the wire formats are parsed and encoded by pure functions over byte buffers
//! ([`parse_client_flags`], [`parse_option`], [`parse_request`], [`Reply`], the `handshake`
//! encoders) that return "incomplete" instead of blocking and errors instead of panicking; they
//! are unit-tested with byte tables and fuzzed (`fuzz/` at the repository root). The connection
//! code — [`serve`], [`serve_with`] and [`serve_connection`] — is a thin shell that reads into
//! a buffer, calls the parsers, and runs requests concurrently (many per connection, replies in completion
//! order through one writer task), within the bounds of a [`ServerConfig`]: connections, idle
//! time, and payload bytes in flight per connection and per server, counted until each reply is
//! written to the socket.
//!
//! Guarantees kept here (SPEC "Guarantees"): a request that is out of range, misaligned, for an
//! unknown command or a write to a read-only export gets an error reply without reaching the
//! device; a device error becomes an errno (mapped once, in [`IoError::errno`]); malformed bytes
//! end only the connection they arrived on; a reply to FLUSH or to a FUA write is sent only after
//! the device reported it durable.
//!
//! Metrics are not collected here: the server wraps the device it hands out.

mod config;
pub mod consts;
mod device;
mod error;
mod handshake;
mod negotiate;
mod option;
mod reply;
mod request;
mod server;
mod transmission;

pub use config::ServerConfig;
pub use device::{BlockDevice, Client, ExportInfo, ExportProvider, Extent, IoError, OpenError};
pub use error::{NbdError, ProtocolError};
pub use handshake::{greeting, match_meta_query, transmission_flags, MetaMatch};
pub use option::{
    parse_client_flags, parse_option, ClientFlags, ClientOption, InfoRequest, MetaQuery,
};
pub use reply::{block_status_descriptors, Reply};
pub use request::{
    decode_request, parse_request, validate, Command, Request, Session, REQUEST_HEADER_LEN,
};
pub use server::{serve, serve_connection, serve_with, NEGOTIATION_TIMEOUT};
