//! Multi-server tests: joining, managers, forwarding to the leader, failover, a minority that
//! refuses changes, and clusters. Each test starts its own in-process group (`harness.rs`).

mod failover;
mod harness;
mod membership;
