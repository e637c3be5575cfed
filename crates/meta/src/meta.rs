//! [`Meta`]: the handle a server holds on its management node.
//!
//! It owns the openraft node (log and state machine in `<dir>/meta.redb`, HTTP network) and
//! offers what the rest of the server needs: propose a [`Command`] on the leader
//! ([`Meta::write`]), read the state linearizably ([`Meta::read`]) or locally
//! ([`Meta::local_state`]), watch the applied index ([`Meta::subscribe`]), and manage the
//! group's membership.
//!
//! Writes and linearizable reads need a quorum; without one they give up after
//! [`QUORUM_TIMEOUT`] with [`MetaError::Unavailable`], saying that a write may still apply later.
//! On a follower they fail at once with [`MetaError::NotLeader`] naming the leader's API address,
//! so the server can forward the request.

use crate::db;
use crate::error::MetaError;
use crate::log_store::LogStore;
use crate::model::{Command, CommandOutput, ServerRecord, StateView};
use crate::network::HttpNetworkFactory;
use crate::state_machine::{Shared, StateMachine};
use crate::{raft_config, MetaMetrics, TypeConfig};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{BasicNode, Raft};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use strata_types::Name;
use tokio::sync::watch;

/// How long a write or linearizable read waits for a quorum before giving up.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Meta::bootstrap`] waits for this node to become leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Meta::shutdown`] waits for the storage to be released.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The name of the cluster [`Meta::bootstrap`] creates.
pub const DEFAULT_CLUSTER: &str = "default";

/// A handle on this server's management node. Cheap to clone.
#[derive(Clone)]
pub struct Meta {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    node_id: u64,
    my_addr: String,
    /// Closes when the database file is closed, so [`Meta::shutdown`] can wait for it.
    db_closed: watch::Receiver<()>,
}

impl Meta {
    /// Opens (or creates) the management node in `dir` with Raft node id `node_id`; `my_addr` is
    /// this server's API base URL (e.g. `http://127.0.0.1:7780`), which peers use for Raft RPCs.
    /// The node starts as an uninitialized follower unless its log says otherwise.
    pub async fn open(dir: &Path, node_id: u64, my_addr: String) -> Result<Meta, MetaError> {
        Self::open_with(dir, node_id, my_addr, None).await
    }

    /// Like [`Meta::open`], with Raft connections to peers leaving from `source_ip`.
    pub async fn open_with(
        dir: &Path,
        node_id: u64,
        my_addr: String,
        source_ip: Option<std::net::IpAddr>,
    ) -> Result<Meta, MetaError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            MetaError::Storage(format!(
                "cannot create metadata directory {}: {e}",
                dir.display()
            ))
        })?;
        let (database, db_closed) = db::open(dir).map_err(|e| {
            MetaError::Storage(format!(
                "cannot open {}: {e}",
                dir.join(db::DB_FILE).display()
            ))
        })?;
        let database = Arc::new(database);
        let log_store = LogStore::new(database.clone());
        let sm = StateMachine::load(database)
            .map_err(|e| MetaError::Storage(format!("cannot load the state machine: {e}")))?;
        let shared = sm.shared();
        let config = Arc::new(raft_config()?);
        let network = HttpNetworkFactory::from_ip(source_ip);
        let raft = Raft::new(node_id, config, network, log_store, sm)
            .await
            .map_err(|e| MetaError::Storage(format!("cannot start the Raft node: {e}")))?;
        tracing::info!(node_id, addr = %my_addr, dir = %dir.display(), "management node open");
        Ok(Meta {
            inner: Arc::new(Inner {
                raft,
                shared,
                node_id,
                my_addr,
                db_closed,
            }),
        })
    }

    /// The openraft node, for the RPC handlers.
    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// This node's API base URL, as given to [`Meta::open`].
    pub fn addr(&self) -> &str {
        &self.inner.my_addr
    }

    /// Starts a new one-voter management group with this node as its only manager, then registers
    /// `me` and creates the cluster `default` holding it, each only if absent. Idempotent: on an
    /// initialized node it skips initialization and only adds what is missing.
    pub async fn bootstrap(&self, me: ServerRecord) -> Result<(), MetaError> {
        if me.raft_node_id != self.node_id() {
            tracing::warn!(
                record = me.raft_node_id,
                node = self.node_id(),
                "bootstrap record names another Raft node id than this node's"
            );
        }
        let default = Name::new(DEFAULT_CLUSTER)
            .map_err(|e| MetaError::Storage(format!("bad default cluster name: {e}")))?;
        if self.is_initialized().await {
            // A restart of a bootstrapped server: nothing to do if it finished last time. (It may
            // be a follower now, or without a quorum; it must still start.)
            let local = self.local_state();
            if local.servers.contains_key(&me.id) && local.clusters.contains_key(&default) {
                return Ok(());
            }
        } else {
            let nodes = BTreeMap::from([(self.node_id(), BasicNode::new(self.addr()))]);
            match self.inner.raft.initialize(nodes).await {
                Ok(()) => {
                    tracing::info!(node_id = self.node_id(), "bootstrapped a management group")
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(MetaError::Unavailable(format!("cannot initialize: {e}"))),
            }
        }
        self.wait_for_leader(LEADER_TIMEOUT).await?;
        let state = self.read().await?;
        if !state.servers.contains_key(&me.id) {
            self.write(Command::AddServer(me.clone())).await?;
        }
        if !state.clusters.contains_key(&default) {
            let cmd = Command::CreateCluster {
                name: default,
                servers: vec![me.id],
                take_from_default: false,
            };
            self.write(cmd).await?;
        }
        Ok(())
    }

    /// Whether this node belongs to an initialized group (it has a membership config).
    pub async fn is_initialized(&self) -> bool {
        self.inner.raft.is_initialized().await.unwrap_or(false)
    }

    /// Waits until some leader is known and returns its node id, or `Unavailable` after
    /// `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, MetaError> {
        let m = self
            .inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|e| MetaError::Unavailable(format!("no leader elected: {e}")))?;
        m.current_leader
            .ok_or_else(|| MetaError::Unavailable("no leader elected".to_string()))
    }

    /// Proposes `cmd` on this node, which must be the leader, and returns its output once it is
    /// committed and applied.
    pub async fn write(&self, cmd: Command) -> Result<CommandOutput, MetaError> {
        let fut = self.inner.raft.client_write(cmd);
        let res = tokio::time::timeout(QUORUM_TIMEOUT, fut)
            .await
            .map_err(|_| {
                MetaError::Unavailable(format!(
                    "no quorum of managers confirmed the change within {QUORUM_TIMEOUT:?}; it may \
                 still be applied later — check that a majority of managers is running"
                ))
            })?;
        match res {
            Ok(resp) => resp.data.map_err(MetaError::Refused),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(f)),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(MetaError::Membership(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(stopped(e)),
        }
    }

    /// A linearizable read: confirms leadership with a quorum, waits until this node has applied
    /// everything committed before the read, and returns a copy of the state.
    pub async fn read(&self) -> Result<StateView, MetaError> {
        let fut = self.inner.raft.ensure_linearizable();
        let res = tokio::time::timeout(QUORUM_TIMEOUT, fut)
            .await
            .map_err(|_| {
                MetaError::Unavailable(format!(
                    "no quorum of managers confirmed leadership within {QUORUM_TIMEOUT:?}; check \
                 that a majority of managers is running"
                ))
            })?;
        match res {
            Ok(_) => Ok(self.local_state()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(f)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(MetaError::Unavailable(format!(
                    "{e}; check that a majority of managers is running"
                )))
            }
            Err(RaftError::Fatal(e)) => Err(stopped(e)),
        }
    }

    /// This node's applied state, without a quorum round: possibly behind the leader.
    pub fn local_state(&self) -> StateView {
        self.inner.shared.state()
    }

    /// A receiver of the last applied log index; it changes after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.subscribe()
    }

    /// Adds node `node_id` at API base URL `addr` as a learner (a non-voting follower). With
    /// `blocking`, returns once the learner has caught up with the log.
    pub async fn add_learner(
        &self,
        node_id: u64,
        addr: String,
        blocking: bool,
    ) -> Result<(), MetaError> {
        let res = self
            .inner
            .raft
            .add_learner(node_id, BasicNode::new(addr), blocking)
            .await;
        membership_result(res)
    }

    /// Makes `voters` the set of voting managers. With `retain`, removed voters stay as learners.
    pub async fn change_membership(
        &self,
        voters: BTreeSet<u64>,
        retain: bool,
    ) -> Result<(), MetaError> {
        let res = self.inner.raft.change_membership(voters, retain).await;
        membership_result(res)
    }

    /// Builds a snapshot of the state as applied now and purges the log up to it, returning the
    /// snapshot's last log index. Peers that lag behind the purge point catch up by receiving the
    /// snapshot (`/raft/snapshot`). Openraft also does this by itself every 1000 entries.
    pub async fn compact(&self) -> Result<u64, MetaError> {
        let target = self
            .raft_metrics()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        let raft = &self.inner.raft;
        raft.trigger().snapshot().await.map_err(stopped)?;
        let m = raft
            .wait(Some(QUORUM_TIMEOUT))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= target),
                "snapshot built",
            )
            .await
            .map_err(|e| MetaError::Unavailable(format!("snapshot not built: {e}")))?;
        let index = m.snapshot.map(|s| s.index).unwrap_or(0);
        raft.trigger().purge_log(index).await.map_err(stopped)?;
        raft.wait(Some(QUORUM_TIMEOUT))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= index), "log purged")
            .await
            .map_err(|e| MetaError::Unavailable(format!("log not purged: {e}")))?;
        tracing::info!(index, "compacted the management log");
        Ok(index)
    }

    /// On the leader: sends the followers the commit index now instead of at the next
    /// heartbeat, so they apply what was just committed within a round trip (the snapshot
    /// barrier waits for that while client writes are held). Elsewhere a no-op.
    pub async fn announce_commits(&self) {
        if let Err(e) = self.inner.raft.trigger().heartbeat().await {
            tracing::debug!(error = %e, "could not trigger a heartbeat");
        }
    }

    /// The current Raft metrics: state, term, leader, log and applied indexes, membership.
    pub fn raft_metrics(&self) -> MetaMetrics {
        self.inner.raft.metrics().borrow().clone()
    }

    /// A receiver of the Raft metrics, to wait on changes (e.g. a new leader).
    pub fn watch_metrics(&self) -> watch::Receiver<MetaMetrics> {
        self.inner.raft.metrics()
    }

    /// Stops the Raft node and waits until the database file is closed, so the directory can be
    /// reopened. Calls on any clone of this handle fail with `Unavailable` afterwards.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft node did not stop cleanly");
        }
        // `changed` fails once the database is closed (its sender dropped); we never send.
        let mut closed = self.inner.db_closed.clone();
        if tokio::time::timeout(CLOSE_TIMEOUT, closed.changed())
            .await
            .is_err()
        {
            tracing::warn!("metadata database still in use {CLOSE_TIMEOUT:?} after shutdown");
        }
        tracing::info!(node_id = self.node_id(), "management node stopped");
    }
}

fn not_leader(f: ForwardToLeader<u64, BasicNode>) -> MetaError {
    MetaError::NotLeader {
        leader_addr: f.leader_node.map(|n| n.addr),
    }
}

fn stopped(e: openraft::error::Fatal<u64>) -> MetaError {
    MetaError::Unavailable(format!(
        "the management node has stopped ({e}); restart the server"
    ))
}

fn membership_result(
    res: Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        RaftError<u64, ClientWriteError<u64, BasicNode>>,
    >,
) -> Result<(), MetaError> {
    match res {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(f)),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(MetaError::Membership(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(stopped(e)),
    }
}
