//! The request and response bodies of Strata's `/v1` management API.
//!
//! The server serves these types, the `strata` CLI and the tests send and read them, and the
//! OpenAPI document at `/v1/openapi.json` is generated from their `ToSchema` derives — so the
//! three can never drift apart. Sizes are bytes; times are Unix milliseconds; ids are UUIDs.

use serde::{Deserialize, Serialize};
use strata_types::{JobId, LayerId, ServerId, VolumeId};
use utoipa::ToSchema;

/// Every error the API returns has this body, with a matching HTTP status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// One line saying what went wrong and what to do about it.
    pub error: String,
}

/// A server of the management group, as `strata server list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// The server's permanent id.
    pub id: ServerId,
    /// The server's name.
    pub name: String,
    /// Management API address (`http://host:port`).
    pub api_addr: String,
    /// NBD address (`host:port`) clients connect to.
    pub nbd_addr: String,
    /// Address other servers use to reach this one.
    pub peer_addr: String,
    /// `up` (answers and follows the log), `down` (does not answer) or `joining` (answers but
    /// is not yet a caught-up member of the group).
    pub state: String,
    /// `leader`, `manager` or `none`: this server's part in the management quorum.
    pub manager: String,
    /// The cluster this server belongs to, if any.
    pub cluster: Option<String>,
    /// Bytes of the filesystem holding the server's data directory; absent if unknown (down).
    pub capacity_bytes: Option<u64>,
    /// Bytes of volume data stored on this server; absent if unknown (down).
    pub used_bytes: Option<u64>,
}

/// `GET /v1/servers/self`: what the answering server knows about itself, without asking the
/// management leader. The leader asks every server for this to fill `strata server list`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerStatus {
    /// The server's permanent id.
    pub id: ServerId,
    /// The server's name.
    pub name: String,
    /// Bytes of the filesystem holding its data directory, if the filesystem says.
    pub capacity_bytes: Option<u64>,
    /// Bytes of volume data it stores.
    pub used_bytes: u64,
    /// The largest file its data filesystem holds, so the largest volume it can keep a copy of
    /// (a copy is one file per layer, blocks at their offsets); absent from older servers.
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
}

/// `POST /v1/servers/join`: a new server asks the group to admit it (as a Raft learner). A
/// server already admitted under the same id has its addresses updated instead.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    /// The joining server's permanent id.
    pub id: ServerId,
    /// Its name, unique in the group.
    pub name: String,
    /// Its API base URL (`http://host:port`).
    pub api_addr: String,
    /// Its NBD address (`host:port`).
    pub nbd_addr: String,
    /// The base URL other servers reach it at for Raft (normally its API URL).
    pub peer_addr: String,
    /// Its Raft node id.
    pub raft_node_id: u64,
}

/// A manager: a voting member of the management quorum.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ManagerInfo {
    /// The server's name.
    pub name: String,
    /// Whether it is the current leader.
    pub leader: bool,
    /// `up` or `down`, as for `strata server list`.
    pub state: String,
    /// Its Raft node id.
    pub raft_node_id: u64,
}

/// `POST /v1/managers`: make servers managers or take them out of the quorum. The resulting
/// number of managers must be 1, 3 or 5, so managers are added and removed two at a time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ChangeManagers {
    /// Names of servers to make managers.
    #[serde(default)]
    pub add: Vec<String>,
    /// Names of managers to turn back into plain (following) servers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `POST /v1/clusters`: make a new cluster of servers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateCluster {
    /// The cluster's name.
    pub name: String,
    /// Names of its servers; each must be in no cluster or in `default` (it moves out).
    pub servers: Vec<String>,
}

/// `POST /v1/clusters/{name}/servers`: add a server to a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddClusterServer {
    /// The server's name; it must be in no cluster or in `default` (it moves out).
    pub server: String,
}

/// A cluster: a named set of servers that volumes live on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// The cluster's name.
    pub name: String,
    /// Names of its servers.
    pub servers: Vec<String>,
    /// Names of its servers that are being taken out: their data is moving away.
    #[serde(default)]
    pub leaving: Vec<String>,
    /// Names of the volumes that live on it.
    pub volumes: Vec<String>,
}

/// `POST /v1/volumes`: make a new, empty, thin-provisioned volume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateVolume {
    /// Name of the volume; letters, digits, `-`, `_`, `.`, at most 64.
    pub name: String,
    /// Size in bytes, a multiple of 512.
    pub size: u64,
    /// Cluster to place it on (default: `default`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Copies of each chunk, 1 to 3 (default: 2 when the cluster has at least 2 servers to
    /// place on, else 1).
    #[serde(default)]
    pub replicas: Option<u8>,
}

/// `POST /v1/volumes/{name}/resize`: grow a volume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResizeVolume {
    /// New size in bytes: a multiple of 512, not smaller than the current size.
    pub size: u64,
}

/// A volume and its snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeInfo {
    /// The volume's permanent id.
    pub id: VolumeId,
    /// The volume's name, also its NBD export name.
    pub name: String,
    /// The cluster it lives on.
    pub cluster: String,
    /// Size in bytes.
    pub size: u64,
    /// Copies of each chunk.
    pub replicas: u8,
    /// `primary` (writable) or `remote` (read-only, fed by remote copy).
    pub role: String,
    /// `healthy`; `degraded` while a server holding its chunks does not answer (or a stale
    /// one is not back); `resyncing N%` while stale servers catch up; `migrating N%`.
    pub status: String,
    /// Bytes of data the volume holds, each chunk counted once (not per replica): the
    /// written 4 KiB blocks of every layer, snapshots included; absent when a server did not
    /// answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_logical_bytes: Option<u64>,
    /// Bytes of disk the volume's layers (snapshots included) use, summed over every server
    /// holding its chunks, every replica counted; absent when a server did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_raw_bytes: Option<u64>,
    /// Names of the servers its chunks are placed on.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Names of the servers that missed writes and are not repaired yet.
    #[serde(default)]
    pub stale_servers: Vec<String>,
    /// While the volume migrates: names of the servers of the layout it is moving to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_servers: Option<Vec<String>>,
    /// The id of the writable head layer.
    pub head: LayerId,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// NBD URL of the volume on the server that answered (or, if that server is not in the
    /// volume's cluster, on one that is).
    pub nbd_url: String,
    /// Creation time, Unix milliseconds.
    pub created_unix_ms: u64,
    /// The volume's running job, else the last one that ended (a verify), if any is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobInfo>,
}

/// `POST /v1/volumes/{name}/snapshots`: take a snapshot of the volume now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshot {
    /// Name for the snapshot; if absent the server names it from the time (`snap-YYYYMMDD-HHMMSS`).
    #[serde(default)]
    pub name: Option<String>,
}

/// A snapshot: a frozen layer of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    /// The snapshot's id (its layer id), globally unique.
    pub id: LayerId,
    /// The snapshot's name, unique within its volume.
    pub name: String,
    /// The volume it belongs to.
    pub volume: String,
    /// Size of the volume when the snapshot was taken.
    pub size: u64,
    /// When it was taken, Unix milliseconds.
    pub created_unix_ms: u64,
    /// NBD export name (`VOL@SNAP`), read-only.
    pub export: String,
}

/// A byte range of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Range {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// `GET /v1/volumes/{name}/diff`: what changed between two points of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiffInfo {
    /// The volume.
    pub volume: String,
    /// The older snapshot.
    pub from: String,
    /// The newer snapshot, or `HEAD` for the live volume.
    pub to: String,
    /// Ranges written, trimmed or zeroed after `from` up to `to`, sorted and coalesced.
    pub ranges: Vec<Range>,
    /// Sum of the ranges' lengths.
    pub changed_bytes: u64,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when the server serves I/O and its management state is readable.
    pub status: String,
    /// This server's name.
    pub server: String,
}

/// Internal: mark a replica of a volume stale or in sync (`/v1/internal/volumes/{id}/...`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkReplica {
    /// The replica's server.
    pub server: ServerId,
    /// The server whose gateway saw the failure (for `stale`).
    #[serde(default)]
    pub reporter: Option<ServerId>,
    /// The routing epoch the replica's marks were sealed at (for `in-sync`): the change is
    /// refused if the volume's epoch moved since.
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// Internal: seal a stale replica's marks at a routing epoch before it is declared in sync
/// (`POST /internal/v1/volumes/{id}/seal`; answers the number of marks for it left here).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealMarks {
    /// The stale replica's server.
    pub server: ServerId,
    /// The volume's routing epoch as the resync source sees it.
    pub epoch: u64,
    /// Lift the seal instead (the replica is not declared in sync after all); answers 0.
    #[serde(default)]
    pub lift: bool,
}

/// Internal: a step of a volume's migration to `target` (seeded by `server`, or finish).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationStep {
    /// The server that seeded (for `seeded`).
    #[serde(default)]
    pub server: Option<ServerId>,
    /// The migration's target layout.
    pub target: Vec<ServerId>,
}

/// Internal: how many chunks one server records as missed by another, and the resync progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissedSummary {
    /// The server that missed writes.
    pub server: ServerId,
    /// Chunk-layers still to copy to it from the answering server.
    pub remaining: u64,
    /// Chunk-layers to copy when its resync started (at least `remaining`).
    pub total: u64,
}

/// Internal: the chunks of a volume that one server holds data in (any layer), as runs
/// `[first, count]` in ascending order (`GET /internal/v1/volumes/{id}/chunks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldChunks {
    /// Runs of consecutive chunk indexes.
    pub runs: Vec<[u64; 2]>,
}

impl HeldChunks {
    /// The runs of `chunks` (ascending).
    pub fn from_sorted(chunks: impl IntoIterator<Item = u64>) -> Self {
        let mut runs: Vec<[u64; 2]> = Vec::new();
        for c in chunks {
            match runs.last_mut() {
                Some([first, count]) if *first + *count == c => *count += 1,
                _ => runs.push([c, 1]),
            }
        }
        Self { runs }
    }
}

/// Internal: an export of a volume that a client has open through one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenClient {
    /// The snapshot's layer, `None` for the volume itself.
    pub layer: Option<LayerId>,
    /// The client's address.
    pub client: String,
}

/// Query of `DELETE /v1/volumes/{name}` and `DELETE /v1/volumes/{name}/snapshots/{snapshot}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
pub struct DeleteQuery {
    /// Delete even while clients have it open (their I/O then fails).
    #[serde(default)]
    pub force: bool,
    /// Delete a volume's snapshots with it (a volume with snapshots is refused otherwise).
    #[serde(default)]
    pub with_snapshots: bool,
}

/// Internal: what one server holds of a volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalVolume {
    /// Bytes its layers use on this server.
    pub used_bytes: u64,
    /// Bytes of data (every layer) in the chunks this server is the first replica of, so
    /// that the sum over the layout counts each chunk once.
    #[serde(default)]
    pub first_copy_bytes: u64,
    /// Missed-write marks it holds, by server.
    pub missed: Vec<MissedSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_chunks_are_runs() {
        let held = HeldChunks::from_sorted([0, 1, 2, 5, 7, 8]);
        assert_eq!(held.runs, vec![[0, 3], [5, 1], [7, 2]]);
        assert_eq!(HeldChunks::from_sorted([]).runs, Vec::<[u64; 2]>::new());
    }
}

/// `POST /v1/volumes/{name}/verify`: compare the replicas of every chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct VerifyRequest {
    /// Verify this snapshot instead of the live volume.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Copy each differing chunk from a good replica to the others.
    #[serde(default)]
    pub repair: bool,
    /// Compare at most this many bytes of the volume per second (each replica reads as
    /// much), so that a verify leaves the disks to the clients; no limit if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u64>,
}

/// One replica's digest of a chunk.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplicaDigest {
    /// The server's name.
    pub server: String,
    /// The chunk's blake3 digest (hex), absent if the server could not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why it could not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The chunk's write generation there: the copy with the highest one took the latest
    /// change, and a repair copies it to the others. Absent if the server could not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// A chunk whose replicas differ or did not all answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChunkMismatch {
    /// Chunk index (offset / 4 MiB).
    pub chunk: u64,
    /// Byte offset of the chunk.
    pub offset: u64,
    /// Every replica's answer.
    pub replicas: Vec<ReplicaDigest>,
    /// Whether a repair made the replicas agree.
    pub repaired: bool,
}

/// The result of `strata volume verify`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    /// The volume.
    pub volume: String,
    /// The snapshot verified, if not the live volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Chunks compared.
    pub chunks: u64,
    /// Of those, chunks that no replica holds data in: they read as zeros everywhere, so they
    /// agree without being read.
    #[serde(default)]
    pub unallocated_chunks: u64,
    /// Chunks whose replicas differ or did not all answer (the first 1000; see
    /// `unlisted_mismatches`).
    pub mismatches: Vec<ChunkMismatch>,
    /// Differing chunks past those listed.
    #[serde(default)]
    pub unlisted_mismatches: u64,
    /// Of the unlisted ones, those a repair did not fix.
    #[serde(default)]
    pub unlisted_unrepaired: u64,
}

impl VerifyReport {
    /// Chunks whose replicas still differ: listed and not repaired, and unlisted ones.
    pub fn unrepaired(&self) -> u64 {
        self.mismatches.iter().filter(|m| !m.repaired).count() as u64 + self.unlisted_unrepaired
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Its server is working on it.
    Running,
    /// It ended and did what it was asked.
    Succeeded,
    /// It ended with an error, or was interrupted (its server stopped).
    Failed,
    /// It was cancelled before it ended.
    Cancelled,
}

impl JobState {
    /// The state as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// How far a job has come.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobProgress {
    /// Units done: chunks read and compared (verify), chunk copies made (remove-server).
    pub done: u64,
    /// Units to do, as known now (a server removal learns of more as it goes).
    pub total: u64,
    /// What a unit is: `chunks` or `chunk copies`.
    pub unit: String,
    /// Bytes compared (verify) so far.
    pub bytes: u64,
}

impl JobProgress {
    /// Whole percent done, 0 when nothing is known yet.
    pub fn percent(&self) -> u64 {
        (self.done.min(self.total) * 100)
            .checked_div(self.total)
            .unwrap_or(0)
    }
}

/// A long operation the management group runs on one server and reports on:
/// `verify` (`POST /v1/volumes/{name}/verify`) or `remove-server`
/// (`DELETE /v1/clusters/{name}/servers/{server}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    /// The job's id.
    pub id: JobId,
    /// `verify` or `remove-server`.
    pub kind: String,
    /// What it works on, for people: `VOL`, `VOL@SNAP`, or `SERVER from CLUSTER`.
    pub target: String,
    /// The volume (verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The snapshot (verify of a snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The cluster (remove-server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The server leaving (remove-server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Whether a verify repairs what differs.
    #[serde(default)]
    pub repair: bool,
    /// A verify's limit, bytes of the volume compared per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u64>,
    /// The server running it.
    pub runner: String,
    /// Where it is.
    pub state: JobState,
    /// How far it has come.
    pub progress: JobProgress,
    /// When it started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// When it ended, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix_ms: Option<u64>,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A finished verify's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<VerifyReport>,
}
