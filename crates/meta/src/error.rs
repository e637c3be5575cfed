//! Errors of the management state.
//!
//! Two kinds, kept apart on purpose:
//! - [`CommandError`]: the state machine refused a command (a name is taken, a volume is unknown,
//!   a size would shrink, ...). It is deterministic — every replica refuses the same command the
//!   same way — and it travels in the Raft response, so it is serializable. Retrying the same
//!   command will fail the same way; the message says what to change.
//! - [`MetaError`]: what a caller of [`crate::Meta`] gets. Besides a refusal it says whether this
//!   node is not the leader (forward the request), whether the group is unavailable for now (no
//!   quorum, shutting down: retry later or elsewhere), or whether local storage failed.

use serde::{Deserialize, Serialize};
use strata_types::{JobId, LayerId, Name, ServerId};

/// Why the state machine refused a command. Messages are meant for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// A server with this id is already registered.
    #[error("server {0} is already registered; it cannot be added twice")]
    ServerIdExists(ServerId),
    /// A server with this name is already registered.
    #[error("server name {0:?} is already taken; start the server with another --name")]
    ServerNameExists(Name),
    /// Another server already uses this Raft node id.
    #[error("Raft node id {0} is already used by another server; each server needs its own")]
    RaftNodeIdExists(u64),
    /// A server record has an empty address.
    #[error("server {name:?} has no {what}; give every address of a server")]
    MissingAddress {
        /// The server's name.
        name: Name,
        /// Which address is missing.
        what: String,
    },
    /// No server with this id is registered.
    #[error("no server with id {0} is registered; add it to the group first")]
    UnknownServer(ServerId),
    /// A cluster with this name exists.
    #[error("cluster {0:?} already exists; pick another name")]
    ClusterExists(Name),
    /// No cluster with this name exists.
    #[error("cluster {0:?} does not exist; see `strata cluster list`")]
    UnknownCluster(Name),
    /// A cluster was given no servers.
    #[error("cluster {0:?} needs at least one server")]
    EmptyCluster(Name),
    /// A server was listed twice, or already belongs to a cluster.
    #[error(
        "server {server} is already in cluster {cluster:?}; a server can be in one cluster only"
    )]
    ServerInCluster {
        /// The server.
        server: ServerId,
        /// The cluster it is already in (possibly the one being created, if listed twice).
        cluster: Name,
    },
    /// A server is not in the cluster it was to be taken out of.
    #[error(
        "server {server:?} is not in cluster {cluster:?}; see `strata cluster show {cluster}`"
    )]
    NotInCluster {
        /// The server's name.
        server: Name,
        /// The cluster.
        cluster: Name,
    },
    /// The server is in the layout of a volume: its chunks live there.
    #[error(
        "server {server:?} holds chunks of volume {volume:?}; take it out of its cluster first \
         with `strata cluster remove-server`, which moves its data away"
    )]
    ServerHoldsData {
        /// The server's name.
        server: Name,
        /// A volume with chunks on it.
        volume: Name,
    },
    /// No volume with this id exists.
    #[error("no volume with id {0} exists; it may have been deleted")]
    UnknownVolumeId(strata_types::VolumeId),
    /// The server is not one of the volume's servers.
    #[error("server {server} holds no chunks of volume {volume:?}")]
    NotInLayout {
        /// The volume.
        volume: Name,
        /// The server.
        server: ServerId,
    },
    /// A server that missed writes itself cannot declare another replica out of date.
    #[error(
        "this server's copy of volume {volume:?} is out of date, so it cannot write without its \
         peers; write through another server or wait for the resync"
    )]
    ReporterStale {
        /// The volume.
        volume: Name,
    },
    /// Losing one more replica would leave some chunk with no current copy.
    #[error(
        "volume {volume:?} has {replicas} replicas and cannot lose another one: writes stop until \
         the missing servers return"
    )]
    NoReplicaLeft {
        /// The volume.
        volume: Name,
        /// Its replica count.
        replicas: u8,
    },
    /// A replica was to be declared in sync as of a routing epoch the volume has left.
    #[error(
        "volume {volume:?} is routed by epoch {now}, not {expected}: the replica's resync is \
         checked again"
    )]
    EpochMoved {
        /// The volume.
        volume: Name,
        /// The epoch the change was made for.
        expected: u64,
        /// The volume's epoch.
        now: u64,
    },
    /// Taking the server out would leave a volume with fewer servers than replicas.
    #[error(
        "volume {volume:?} has {replicas} replicas and would be left with {left} server(s); add \
         a server to the cluster first"
    )]
    TooFewServers {
        /// The volume.
        volume: Name,
        /// Its replica count.
        replicas: u8,
        /// Servers its layout would keep.
        left: usize,
    },
    /// The volume is not migrating to the layout named (the migration finished or changed).
    #[error("volume {volume:?} is not migrating to that layout any more")]
    NotMigrating {
        /// The volume.
        volume: Name,
    },
    /// The server is already being taken out of its cluster.
    #[error("server {server:?} is already leaving cluster {cluster:?}; its data is moving away")]
    AlreadyLeaving {
        /// The server's name.
        server: Name,
        /// The cluster.
        cluster: Name,
    },
    /// A volume with this name exists.
    #[error("volume {0:?} already exists; pick another name or delete it first")]
    VolumeExists(Name),
    /// A volume with this id exists.
    #[error("a volume with id {0} already exists; retry to get a fresh id")]
    VolumeIdExists(strata_types::VolumeId),
    /// No volume with this name exists.
    #[error("volume {0:?} does not exist; see `strata volume list`")]
    UnknownVolume(Name),
    /// A size is zero or not a whole number of blocks.
    #[error("size {size} bytes is not valid; give a positive multiple of {block} bytes")]
    BadSize {
        /// The size asked for.
        size: u64,
        /// The block size it must be a multiple of.
        block: u64,
    },
    /// A resize asked for a smaller size.
    #[error("volume {name:?} is {current} bytes; it can only grow, not shrink to {requested}")]
    Shrink {
        /// The volume.
        name: Name,
        /// Its current size.
        current: u64,
        /// The size asked for.
        requested: u64,
    },
    /// A replica count outside 1–3 or above the cluster's server count.
    #[error("{replicas} replicas is not possible on cluster {cluster:?} with {servers} server(s); use 1 to {max}")]
    BadReplicas {
        /// The count asked for.
        replicas: u8,
        /// The cluster.
        cluster: Name,
        /// Its server count.
        servers: usize,
        /// The largest count allowed there.
        max: usize,
    },
    /// A layer id is already used by a volume.
    #[error("layer {0} is already in use; retry to get a fresh id")]
    LayerInUse(LayerId),
    /// A snapshot with this name exists in the volume.
    #[error(
        "volume {volume:?} already has a snapshot {name:?}; pick another name or delete it first"
    )]
    SnapshotExists {
        /// The volume.
        volume: Name,
        /// The snapshot name.
        name: Name,
    },
    /// No snapshot with this name exists in the volume.
    #[error("volume {volume:?} has no snapshot {name:?}; see `strata snapshot list {volume}`")]
    UnknownSnapshot {
        /// The volume.
        volume: Name,
        /// The snapshot name.
        name: Name,
    },
    /// The snapshot's frozen layer is not the volume's head (another snapshot won the race).
    #[error(
        "volume {volume:?} changed while the snapshot was being taken (head is now {head}); retry"
    )]
    StaleHead {
        /// The volume.
        volume: Name,
        /// Its current head layer.
        head: LayerId,
    },
    /// A job with this id exists.
    #[error("a job with id {0} already exists; retry to get a fresh id")]
    JobExists(JobId),
    /// No job with this id is known (it never existed, or ended long ago and was dropped).
    #[error("no job with id {0}; see `strata job list`")]
    UnknownJob(JobId),
    /// The job has ended; it cannot change any more.
    #[error("job {id} has already ended ({state})")]
    JobEnded {
        /// The job.
        id: JobId,
        /// How it ended: `succeeded`, `failed` or `cancelled`.
        state: String,
    },
    /// A job of the same kind already runs on the same target.
    #[error("{what} is already running as job {job}; wait for it (`strata job wait {job}`) or cancel it")]
    JobBusy {
        /// What runs, e.g. `a verify of volume "v"`.
        what: String,
        /// The running job.
        job: JobId,
    },
    /// A job was recorded as starting in a state other than running, or finishing as running.
    #[error("a job cannot {0}")]
    BadJobState(String),
}

/// What a [`crate::Meta`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// This node is not the leader; send the request to the leader (its API base URL, if known).
    #[error("this server is not the management leader{}; send the request to the leader",
        leader_addr.as_deref().map(|a| format!(" (the leader is {a})")).unwrap_or_else(|| " and no leader is known yet".to_string()))]
    NotLeader {
        /// The leader's API base URL, if a leader is known.
        leader_addr: Option<String>,
    },
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// The group cannot serve the request now (no quorum, no leader yet, shutting down). The
    /// text says which and what to do.
    #[error("management group unavailable: {0}")]
    Unavailable(String),
    /// The local metadata storage failed (opening or reading the database).
    #[error("metadata storage failed: {0}")]
    Storage(String),
    /// A membership change was refused by Raft.
    #[error("membership change refused: {0}")]
    Membership(String),
}
