//! The replicated data model: what the management group agrees on.
//!
//! Everything here is plain serde data. The [`StateView`] is the whole management state of one
//! site — servers, clusters and volumes with their layer stacks and snapshots. It is small (a few
//! thousand records at most), so the state machine keeps it in memory, persists it as one blob per
//! applied batch, and hands out clones to readers.
//!
//! A [`Command`] is one proposed change. Commands carry every value that must be the same on every
//! replica — ids, timestamps, new layer ids — because the state machine must be deterministic:
//! the proposer picks random ids and reads the clock, the state machine never does. Each command
//! is validated inside the state machine against the state at its log position (see
//! `apply.rs`); a refused command is a committed no-op whose response carries a [`CommandError`].

use crate::error::CommandError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use strata_types::{JobId, LayerId, Name, ServerId, VolumeId};

/// One `strata server` known to the management group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The server's id for its whole life.
    pub id: ServerId,
    /// The server's unique name.
    pub name: Name,
    /// Base URL of its management API, e.g. `http://10.0.0.5:7780`.
    pub api_addr: String,
    /// Address its NBD listener serves clients on, e.g. `10.0.0.5:10809`.
    pub nbd_addr: String,
    /// Address for server↔server data traffic.
    pub peer_addr: String,
    /// The server's node id in the Raft group.
    pub raft_node_id: u64,
}

/// A named set of servers; a volume lives on one cluster. A server is in at most one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The cluster's unique name.
    pub name: Name,
    /// Its servers, in the order given at creation.
    pub servers: Vec<ServerId>,
    /// Servers being taken out (`cluster remove-server`): they stay members until every
    /// volume's data has moved off them, and new volumes are not placed on them.
    #[serde(default)]
    pub leaving: Vec<ServerId>,
}

impl ClusterRecord {
    /// The servers new volumes are placed on: the members that are not leaving.
    pub fn placeable(&self) -> Vec<ServerId> {
        self.servers
            .iter()
            .filter(|s| !self.leaving.contains(s))
            .copied()
            .collect()
    }

    /// The replicas of a new volume whose request names none: 2 when the cluster has at least
    /// 2 servers to place on, else 1.
    pub fn default_replicas(&self) -> u8 {
        if self.placeable().len() >= 2 {
            2
        } else {
            1
        }
    }
}

/// A snapshot: a frozen layer of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Name, unique within its volume.
    pub name: Name,
    /// The frozen layer holding the blocks written since the previous snapshot.
    pub layer: LayerId,
    /// When it was taken (Unix milliseconds, chosen by the proposer).
    pub created_unix_ms: u64,
    /// The volume's size in bytes when it was taken.
    pub size: u64,
}

/// A volume: a thin-provisioned virtual disk on one cluster, as a stack of layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// The volume's id for its whole life.
    pub id: VolumeId,
    /// Its unique name.
    pub name: Name,
    /// The cluster it lives on.
    pub cluster: Name,
    /// Size in bytes (a whole number of blocks).
    pub size: u64,
    /// Replicas per chunk, 1–3.
    pub replicas: u8,
    /// The volume's layout: the servers its chunks are placed on (by rendezvous hash over this
    /// list), set when it is created and changed only by a migration.
    #[serde(default)]
    pub servers: Vec<ServerId>,
    /// The layout the volume is moving to, while a migration runs. Meanwhile each chunk lives on
    /// its replicas under both layouts: writes go to all of them, and a server that gains the
    /// chunk is not read from until the copy is done.
    #[serde(default)]
    pub target: Option<Vec<ServerId>>,
    /// Servers of the current layout that have recorded, for the running migration, every
    /// chunk they hold that another server gains (so the copy cannot miss one).
    #[serde(default)]
    pub seeded: Vec<ServerId>,
    /// Servers of the layout that missed writes and are not yet repaired: gateways neither read
    /// from them nor count them as holding current data until a resync marks them in sync.
    #[serde(default)]
    pub stale: Vec<ServerId>,
    /// The volume's *routing epoch*: raised by every change of who its chunks' replicas are or
    /// which of them are current (its layout, a migration's target, its stale servers). A write
    /// carries the epoch its gateway routed it by, and a replica that has seen a later one
    /// refuses it, so overlapping writes routed by different primaries cannot land in different
    /// orders (see the volume engine's `order` module).
    #[serde(default)]
    pub epoch: u64,
    /// The layer stack, bottom to top; the last is the writable head.
    pub layers: Vec<LayerId>,
    /// Snapshots in stack order (oldest first).
    pub snapshots: Vec<SnapshotRecord>,
    /// When it was created (Unix milliseconds, chosen by the proposer).
    pub created_unix_ms: u64,
}

impl VolumeRecord {
    /// Records that the volume's routing changed (see [`VolumeRecord::epoch`]).
    pub fn rerouted(&mut self) {
        self.epoch += 1;
    }

    /// The writable top layer, if the stack is not empty (it never is for a valid record).
    pub fn head(&self) -> Option<LayerId> {
        self.layers.last().copied()
    }

    /// Whether `server` is in the layout or in the layout being moved to.
    pub fn holds(&self, server: ServerId) -> bool {
        self.servers.contains(&server) || self.target.as_ref().is_some_and(|t| t.contains(&server))
    }

    /// The servers whose seeding the running migration waits for: every in-sync server of the
    /// current layout. A leaving server is excused when every other server is in sync and
    /// each chunk has another replica, which seeds in its place (so a dead server can be
    /// replaced).
    pub fn seeders(&self) -> Vec<ServerId> {
        let Some(target) = &self.target else {
            return Vec::new();
        };
        let others_in_sync = self.stale.iter().all(|s| !target.contains(s));
        self.servers
            .iter()
            .filter(|s| !self.stale.contains(s))
            .filter(|s| target.contains(s) || !(others_in_sync && self.replicas >= 2))
            .copied()
            .collect()
    }

    /// The snapshot called `name`, if any.
    pub fn snapshot(&self, name: &Name) -> Option<&SnapshotRecord> {
        self.snapshots.iter().find(|s| &s.name == name)
    }
}

/// The whole management state of one site, as applied by one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateView {
    /// Every server, by id.
    pub servers: BTreeMap<ServerId, ServerRecord>,
    /// Every cluster, by name.
    pub clusters: BTreeMap<Name, ClusterRecord>,
    /// Every volume, by name.
    pub volumes: BTreeMap<Name, VolumeRecord>,
    /// Jobs running and the last ones finished, by id (see `apply_jobs.rs`).
    #[serde(default)]
    pub jobs: BTreeMap<JobId, JobRecord>,
}

impl StateView {
    /// The server called `name`, if any.
    pub fn server_by_name(&self, name: &Name) -> Option<&ServerRecord> {
        self.servers.values().find(|s| &s.name == name)
    }

    /// The cluster holding server `id`, if any.
    pub fn cluster_of(&self, id: ServerId) -> Option<&ClusterRecord> {
        self.clusters.values().find(|c| c.servers.contains(&id))
    }

    /// The volume with id `id`, if any.
    pub fn volume_by_id(&self, id: VolumeId) -> Option<&VolumeRecord> {
        self.volumes.values().find(|v| v.id == id)
    }

    /// The volume whose stack holds `layer`, if any. Layer ids are unique across volumes.
    pub fn volume_with_layer(&self, layer: LayerId) -> Option<&VolumeRecord> {
        self.volumes.values().find(|v| v.layers.contains(&layer))
    }
}

/// What a job does, and to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Compare (and with `repair`, fix) the replicas of every chunk of a volume.
    Verify {
        /// The volume.
        volume: VolumeId,
        /// Its name when the job started (the volume may be gone later).
        volume_name: Name,
        /// The snapshot verified instead of the live volume: its name and layer.
        snapshot: Option<(Name, LayerId)>,
        /// Whether differing chunks are copied from a good replica.
        repair: bool,
        /// The most bytes of the volume compared per second, if limited.
        max_rate: Option<u64>,
    },
    /// Take a server out of a cluster, moving every volume's data off it.
    RemoveServer {
        /// The cluster.
        cluster: Name,
        /// The server leaving it.
        server: ServerId,
    },
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Its server is working on it.
    Running,
    /// It ended and did what it was asked.
    Succeeded,
    /// It ended with an error (its server stopped, too: the job was interrupted).
    Failed,
    /// Someone cancelled it before it ended.
    Cancelled,
}

/// How far a job has come. The unit of `done` and `total` depends on the kind: chunks to
/// read for a verify, chunk copies (chunk and layer) for a server removal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Units done.
    pub done: u64,
    /// Units to do, as known now (a server removal learns of more as it goes).
    pub total: u64,
    /// Bytes read or copied so far.
    pub bytes: u64,
}

/// One replica's answer for a chunk that verify found differing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAnswer {
    /// The replica's server.
    pub server: ServerId,
    /// The chunk's digest there (hex), or why it could not give one.
    pub digest: Result<String, String>,
    /// The chunk's write generation there (0 when it could not be read).
    #[serde(default)]
    pub generation: u64,
}

/// A chunk whose replicas differ or did not all answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMismatchRecord {
    /// The chunk's index.
    pub chunk: u64,
    /// Every replica's answer.
    pub replicas: Vec<ReplicaAnswer>,
    /// Whether a repair made the replicas agree.
    pub repaired: bool,
}

/// What a verify job found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// Chunks of the volume compared (those no replica holds data in count: they agree).
    pub chunks: u64,
    /// Of those, the chunks no replica holds data in, which were not read.
    pub unallocated: u64,
    /// The first [`crate::MAX_LISTED_MISMATCHES`] chunks whose replicas differ.
    pub mismatches: Vec<ChunkMismatchRecord>,
    /// Differing chunks past those listed.
    pub unlisted_mismatches: u64,
    /// Differing chunks past those listed that a repair did not fix.
    pub unlisted_unrepaired: u64,
}

/// A long operation the group runs on one server (its *runner*) and reports on. The record
/// lives in the management state, so any server shows it and it outlives its runner: the
/// leader marks it failed when the runner stops answering or no longer runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: JobId,
    /// What it does.
    pub kind: JobKind,
    /// The server that runs it.
    pub runner: ServerId,
    /// Where it is.
    pub state: JobState,
    /// How far it has come.
    pub progress: JobProgress,
    /// When it started (Unix milliseconds, chosen by the proposer).
    pub started_unix_ms: u64,
    /// When it ended, if it has.
    pub ended_unix_ms: Option<u64>,
    /// Why it failed (or was cancelled).
    pub error: Option<String>,
    /// What a verify found.
    pub verify: Option<VerifyResult>,
}

/// One proposed change to the management state. Every field that must be identical on every
/// replica (ids, times) is chosen by the proposer and carried here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Register a server with the group.
    AddServer(ServerRecord),
    /// Change the addresses of a registered server (its id, name and Raft node id stay).
    UpdateServer {
        /// The server.
        id: ServerId,
        /// New base URL of its management API.
        api_addr: String,
        /// New NBD address.
        nbd_addr: String,
        /// New address for server↔server traffic.
        peer_addr: String,
    },
    /// Create a cluster of existing servers that are in no other cluster.
    CreateCluster {
        /// The new cluster's name.
        name: Name,
        /// Its servers (at least one).
        servers: Vec<ServerId>,
        /// Whether servers of the `default` cluster may be moved out of it into this one.
        /// Absent (false) in log entries written before clusters could take servers.
        #[serde(default)]
        take_from_default: bool,
    },
    /// Add a server to a cluster. It must be in no cluster, or in `default` (it moves out).
    AddClusterServer {
        /// The cluster.
        cluster: Name,
        /// The server.
        server: ServerId,
    },
    /// Take a server out of a cluster. Refused while a volume of the cluster needs it.
    RemoveClusterServer {
        /// The cluster.
        cluster: Name,
        /// The server.
        server: ServerId,
    },
    /// Create a volume with one empty writable layer `head`.
    CreateVolume {
        /// The new volume's id.
        id: VolumeId,
        /// The new volume's name.
        name: Name,
        /// The cluster it goes on.
        cluster: Name,
        /// Size in bytes, a positive multiple of the block size.
        size: u64,
        /// Replicas per chunk, 1–3 and at most the cluster's server count.
        replicas: u8,
        /// The id of its first (writable) layer.
        head: LayerId,
        /// Creation time, Unix milliseconds.
        now_ms: u64,
    },
    /// Grow a volume.
    ResizeVolume {
        /// The volume.
        name: Name,
        /// The new size in bytes; not smaller than the current size.
        size: u64,
    },
    /// Delete a volume and all its snapshots.
    DeleteVolume {
        /// The volume.
        name: Name,
    },
    /// Freeze the head layer `frozen` as snapshot `name` and put `new_head` on top.
    CreateSnapshot {
        /// The volume.
        volume: Name,
        /// The snapshot's name, unique within the volume.
        name: Name,
        /// Must equal the volume's current head layer.
        frozen: LayerId,
        /// The new empty writable layer.
        new_head: LayerId,
        /// Creation time, Unix milliseconds.
        now_ms: u64,
    },
    /// Forget a snapshot and remove its layer from the stack.
    DeleteSnapshot {
        /// The volume.
        volume: Name,
        /// The snapshot.
        name: Name,
    },
    /// Record that `server` missed writes to the volume: a gateway (`reporter`) could not write
    /// to it. Refused when the reporter is itself stale or when the volume would have no
    /// in-sync copy of some chunk left: then the write must fail rather than be acknowledged.
    /// Marking a stale server again moves the volume's epoch, so that a declaration in sync
    /// decided before the report is refused.
    MarkReplicaStale {
        /// The volume.
        volume: VolumeId,
        /// The server that missed writes.
        server: ServerId,
        /// The server whose gateway saw the failure.
        reporter: ServerId,
    },
    /// Record that `server` has caught up with every write it missed.
    MarkReplicaInSync {
        /// The volume.
        volume: VolumeId,
        /// The repaired server.
        server: ServerId,
        /// Refused unless the volume is still routed by this epoch (the one its resync source
        /// sealed the marks at); `None` (older entries): unconditionally.
        #[serde(default)]
        epoch: Option<u64>,
    },
    /// Record that `server` has recorded, as missed, every chunk it holds that a server gains
    /// in the migration to `target`. Ignored (refused) if the migration changed meanwhile.
    MigrationSeeded {
        /// The volume.
        volume: VolumeId,
        /// The server that seeded.
        server: ServerId,
        /// The migration's target layout, as the server saw it.
        target: Vec<ServerId>,
    },
    /// Record a new running job. Refused while a job of the same kind runs on the same target
    /// (volume or server). Drops the oldest finished jobs past [`crate::MAX_FINISHED_JOBS`].
    StartJob(JobRecord),
    /// Record a running job's progress. Refused once the job has ended (so its runner stops).
    UpdateJob {
        /// The job.
        id: JobId,
        /// Its progress now.
        progress: JobProgress,
    },
    /// Hand a running job to another runner, which takes it up where it is (a server removal
    /// whose runner stopped: the data goes on moving anyway). Refused once it has ended.
    ResumeJob {
        /// The job.
        id: JobId,
        /// Its new runner.
        runner: ServerId,
    },
    /// End a running job: succeeded, failed or cancelled. Refused once it has ended.
    FinishJob {
        /// The job.
        id: JobId,
        /// Its final state (not `Running`).
        state: JobState,
        /// Why it failed or was cancelled.
        error: Option<String>,
        /// Its last progress, if the finisher knows it (the runner does).
        progress: Option<JobProgress>,
        /// What a verify found.
        verify: Option<VerifyResult>,
        /// When it ended, Unix milliseconds.
        now_ms: u64,
    },
    /// End the migration to `target`: every chunk has been copied to the servers that gain it.
    /// The target becomes the layout; servers that left it drop their copies, and leaving
    /// servers that no volume holds any more leave their cluster.
    FinishMigration {
        /// The volume.
        volume: VolumeId,
        /// The migration's target layout (refused if it changed).
        target: Vec<ServerId>,
    },
}

/// What a successfully applied command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    /// The log entry carried no command (a blank or membership entry).
    Nothing,
    /// The server as registered or updated.
    Server(ServerRecord),
    /// The cluster as created or changed.
    Cluster(ClusterRecord),
    /// The volume after the change (for `DeleteVolume`, the record as it was before deletion, so
    /// the caller knows which layers to drop).
    Volume(VolumeRecord),
    /// The job after the change.
    Job(JobRecord),
    /// The snapshot created or deleted, and the volume after the change.
    Snapshot {
        /// The snapshot.
        snapshot: SnapshotRecord,
        /// The volume after the change.
        volume: VolumeRecord,
    },
}

/// The Raft response of one log entry: the command's output, or why it was refused.
pub type CommandResponse = Result<CommandOutput, CommandError>;
