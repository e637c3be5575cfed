//! Integration tests of the management node: durability across restarts, a real three-node
//! group over HTTP with leader failover, and the latency of one single-voter write.

mod cluster;
mod harness;
mod latency;
mod reopen;
