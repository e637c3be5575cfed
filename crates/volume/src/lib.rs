//! The distributed volume engine.
//!
//! A volume's chunks (4 MiB) are placed on `replicas` servers of its layout by rendezvous hash
//! ([`placement`]). Any server of the volume's cluster is a **gateway** for it: the NBD device
//! ([`GatewayDevice`]) splits each request by chunk, writes to every replica in parallel, reads
//! from one (this server first), and sends FLUSH to every replica it wrote to. The receiving side
//! of those requests is [`ReplicaHandler`], a wire-protocol handler over this server's store.
//!
//! Consistency rules:
//! - **Fencing**: every write names the head layer the gateway believes current; a replica
//!   refuses a write for a frozen layer, and the gateway retries with the new head.
//! - **Snapshot barrier** ([`Engine::pause`] / [`Engine::release`]): the leader holds new writes
//!   on every gateway and drains the ones in flight, commits the snapshot, has every replica
//!   freeze the head, then releases the gateways; so a snapshot holds a prefix of acknowledged
//!   writes across servers.
//! - **Failures**: when a replica cannot be written, the gateway first records it as *stale* in
//!   the management group (which needs a quorum, so a partitioned minority cannot acknowledge
//!   writes), then has the surviving replicas record the chunk as *missed* by it in their stores.
//!   Stale replicas are not read from. [`resync`] copies exactly the missed chunks (layer by
//!   layer) when the server is back, then marks it in sync.
//! - **Migration** ([`migrate`]): a new layout; writes go to the replicas under both layouts,
//!   the chunks each server gains are copied by the resync path, then the new layout takes over
//!   under a barrier.
//! - **Verify** ([`verify`]) compares the replicas' digests of every chunk and can repair a
//!   chunk from a good replica.

mod engine;
mod failpoint;
mod gateway;
mod incoming;
mod metrics;
pub mod migrate;
mod order;
mod owed;
pub mod placement;
mod replica;
pub mod resync;
mod seal;
pub mod verify;
mod view;

pub use engine::{Engine, OpenInfo};
pub use gateway::GatewayDevice;
pub use replica::ReplicaHandler;
pub use view::{Topology, VolumeView};

use async_trait::async_trait;
use strata_types::{ServerId, VolumeId};

/// What the engine needs from the management group; implemented by the server.
#[async_trait]
pub trait Control: Send + Sync + 'static {
    /// Commits that `server` missed writes to `volume` (through the leader).
    async fn mark_stale(&self, volume: VolumeId, server: ServerId) -> Result<(), String>;
    /// Commits that `server` has caught up with every write of `volume` it missed, if the
    /// volume's routing epoch is still `epoch` (the one its marks were sealed at).
    async fn mark_in_sync(
        &self,
        volume: VolumeId,
        server: ServerId,
        epoch: u64,
    ) -> Result<(), String>;
    /// Whether this server is the management leader, which drives group-wide background work
    /// (the end of migrations).
    fn is_leader(&self) -> bool;
    /// Commits that this server has seeded the migration of `volume` to `target`.
    async fn migration_seeded(&self, volume: VolumeId, target: &[ServerId]) -> Result<(), String>;
    /// Asks the leader to finish the migration of `volume` to `target` (under a barrier).
    async fn finish_migration(&self, volume: VolumeId, target: &[ServerId]) -> Result<(), String>;
    /// Has server `at` seal stale replica `server` of `volume` at routing `epoch` (see
    /// [`Engine::seal_marks`]); returns how many marks for it `at` holds.
    async fn seal_marks_at(
        &self,
        at: ServerId,
        volume: VolumeId,
        server: ServerId,
        epoch: u64,
    ) -> Result<u64, String>;
    /// Has server `at` lift its seal of `server` for `volume` at `epoch`.
    async fn lift_seal_at(
        &self,
        at: ServerId,
        volume: VolumeId,
        server: ServerId,
        epoch: u64,
    ) -> Result<(), String>;
    /// How many chunks of `volume` server `at` records as missed by `server`.
    async fn missed_at(
        &self,
        at: ServerId,
        volume: VolumeId,
        server: ServerId,
    ) -> Result<u64, String>;
}
