//! Integration tests of the NBD server: a hand-written client against `serve` over loopback
//! TCP, real clients (qemu-io, nbdinfo, nbdcopy) when installed, and property tests that the
//! parsers never panic on random bytes.

mod client;
mod handshake;
mod limits;
mod memdev;
mod props;
mod real_clients;
mod transmission;
