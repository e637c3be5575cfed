//! The replicated management state of a Strata site.
//!
//! A management group is a Raft group ([openraft] 0.9) whose voters ("managers") are some of the
//! site's servers; every server follows the same log. The log carries [`Command`]s — add a
//! server, create a cluster, create/resize/delete a volume, create/delete a snapshot, start/update/finish a job — and each
//! node's state machine applies them to a [`StateView`]: servers, clusters and volumes with
//! their layer stacks. High-rate data (block maps) never goes through here; it lives in each
//! server's store.
//!
//! Pieces:
//! - `model.rs`: the records, the commands and their outputs (plain serde data).
//! - `apply.rs`, `apply_servers.rs`, `apply_jobs.rs`: deterministic validation and application
//!   of one command.
//! - `db.rs`, `log_store.rs`, `state_machine.rs`: the Raft log, vote and state machine, all in
//!   one redb file `<dir>/meta.redb`.
//! - `network.rs`: the Raft RPCs over HTTP/JSON (reqwest client, [`raft_router`] for axum).
//! - `meta.rs`: [`Meta`], the handle the server uses: open, bootstrap, write, read, watch.
//!
//! A refused command (a taken name, an unknown volume, a shrinking resize) is still committed —
//! as a no-op — and its [`CommandError`] comes back to the writer as [`MetaError::Refused`].
//! Every replica refuses it identically, because validation depends only on the state at that
//! log position and the values carried in the command.
//!
//! Node addresses in the Raft membership are the servers' API base URLs; the Raft RPCs are
//! served under `/raft/` by the same HTTP server as the management API.

#![warn(missing_docs)]

mod apply;
mod apply_jobs;
mod apply_servers;
mod db;
mod error;
mod log_store;
mod meta;
mod model;
mod network;
mod state_machine;

#[cfg(test)]
mod suite_test;

use std::io::Cursor;

pub use apply::{apply_command, MAX_REPLICAS};
pub use apply_jobs::{state_word, MAX_FINISHED_JOBS, MAX_LISTED_MISMATCHES};
pub use db::DB_FILE;
pub use error::{CommandError, MetaError};
pub use log_store::LogStore;
pub use meta::{Meta, DEFAULT_CLUSTER, QUORUM_TIMEOUT};
pub use model::{
    ChunkMismatchRecord, ClusterRecord, Command, CommandOutput, CommandResponse, JobKind,
    JobProgress, JobRecord, JobState, ReplicaAnswer, ServerRecord, SnapshotRecord, StateView,
    VerifyResult, VolumeRecord,
};
pub use network::{raft_router, HttpNetwork, HttpNetworkFactory};
pub use openraft::{BasicNode, RaftMetrics, ServerState};
pub use state_machine::{SnapshotBuilder, StateMachine};

openraft::declare_raft_types!(
    /// The openraft type configuration of the management group: [`Command`] entries answered
    /// with a [`CommandResponse`], `u64` node ids, nodes addressed by their API base URL.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft metrics of a management node, as openraft reports them.
pub type MetaMetrics = RaftMetrics<u64, BasicNode>;

/// The openraft configuration for a LAN: 100 ms heartbeats, elections after 300–600 ms of
/// silence, snapshots every 1000 entries, and snapshot chunks small enough for JSON bodies.
pub fn raft_config() -> Result<openraft::Config, MetaError> {
    let config = openraft::Config {
        cluster_name: "strata-meta".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        install_snapshot_timeout: 2000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 1000,
        snapshot_max_chunk_size: 256 * 1024,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| MetaError::Storage(format!("invalid Raft configuration: {e}")))
}
