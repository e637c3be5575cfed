//! Multi-server tests: joining, managers, forwarding to the leader, failover, a minority that
//! refuses changes, and clusters. Each test starts its own in-process group (`harness.rs`).

mod failover;
mod harness;
mod membership;
#[path = "../../../cli/tests/support/nbd_client.rs"]
mod nbd_client;
mod volumes;
