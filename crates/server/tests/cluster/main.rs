//! Multi-server tests: joining, managers, forwarding to the leader, failover, a minority that
//! refuses changes, and clusters. Each test starts its own in-process group (`harness.rs`);
//! `limits.rs` starts one server from a TOML file to check the NBD limits it configures.

#![allow(clippy::unwrap_used)]

mod failover;
mod faults;
mod full_disk;
mod harness;
mod jobs;
mod limits;
mod membership;
mod migration;
mod ordering;
// The CLI tests' minimal NBD client; this suite does not read every field it offers.
#[allow(dead_code)]
#[path = "../../../cli/tests/support/nbd_client.rs"]
mod nbd_client;
mod store_loss;
mod volumes;
