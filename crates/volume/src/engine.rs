//! [`Engine`]: the per-server state of the volume engine, shared by the gateways (NBD devices),
//! the replica side of the wire protocol, the snapshot barrier, resync and verify.
//!
//! The engine holds a [`Topology`] that the server refreshes after every applied change of the
//! management state, the connection pool to the peers, and one write gate per volume: every
//! gateway write holds the gate's read side for its whole duration, and a snapshot barrier takes
//! the write side, which both drains the writes in flight and holds new ones.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_store::Store;
use strata_types::{LayerId, ServerId, VolumeId};
use strata_wire::{ClientConfig, Pool, Request, Response, WireClient, WireError};
use tokio::sync::{watch, OwnedRwLockWriteGuard, RwLock as AsyncRwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::view::{Topology, VolumeView};
use crate::Control;

/// How long a held barrier may stay held if the leader never releases it.
const BARRIER_MAX_HOLD: Duration = Duration::from_secs(10);

/// Stripes of the per-chunk locks used while volumes migrate.
const CHUNK_LOCKS: usize = 1024;

/// A peer that failed within this long is tried last for reads.
const DOWN_MEMORY: Duration = Duration::from_secs(2);

/// The volume engine of one server.
pub struct Engine {
    me: ServerId,
    store: Arc<Store>,
    pool: Pool,
    control: Arc<dyn Control>,
    topology: RwLock<Arc<Topology>>,
    version: watch::Sender<u64>,
    gates: Mutex<HashMap<VolumeId, Arc<AsyncRwLock<()>>>>,
    links: Mutex<HashMap<VolumeId, Arc<crate::gateway::Links>>>,
    chunk_locks: Box<[tokio::sync::Mutex<()>]>,
    held: Mutex<HashMap<u64, Vec<OwnedRwLockWriteGuard<()>>>>,
    down: Mutex<HashMap<ServerId, Instant>>,
    /// Taken while [`Engine::move_epoch_past`] commits a move.
    epoch_moves: tokio::sync::Mutex<()>,
    /// Resync progress of this server's copies to stale replicas.
    pub resync: crate::resync::Tracker,
    /// The blocks held by writes for which this server is the chunk's primary.
    pub(crate) ranges: crate::order::RangeLocks,
    /// The routing epochs of the writes this server admitted, per volume.
    pub(crate) epochs: crate::order::EpochFences,
    /// Writes other servers' gateways made here and have not flushed.
    pub(crate) incoming: crate::incoming::Incoming,
    /// Stale replicas being declared in sync, whose marks this server refuses.
    pub(crate) seals: crate::seal::Seals,
    /// Own marks this server's gateways owe to replicas they could not reach.
    pub(crate) owed: crate::owed::Owed,
    /// Replicas this server recorded as missing chunks and is having marked stale, per volume
    /// (see [`Engine::marking_stale`]).
    marking: Arc<Mutex<HashMap<(VolumeId, ServerId), usize>>>,
    /// Names this run of the server (see [`Engine::run`]).
    run: u64,
    /// Counts the tokens of [`Engine::new_token`].
    tokens: std::sync::atomic::AtomicU64,
    /// The exports clients have open on this server, by a number each.
    opens: Arc<Mutex<HashMap<u64, OpenInfo>>>,
    /// The engine's own work in the background ([`Engine::spawn_background`]).
    background: TaskTracker,
    /// Cancelled when the server stops: the background work ends.
    stopping: CancellationToken,
}

/// One export a client has open through this server (see [`Engine::open_exports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenInfo {
    /// The volume.
    pub volume: VolumeId,
    /// The snapshot's layer, `None` for the volume's head.
    pub layer: Option<LayerId>,
    /// The client's address.
    pub client: String,
}

/// Lists an export among the open ones until dropped.
pub(crate) struct OpenExport {
    opens: Arc<Mutex<HashMap<u64, OpenInfo>>>,
    id: u64,
}

impl Drop for OpenExport {
    fn drop(&mut self) {
        self.opens.lock().remove(&self.id);
    }
}

/// A value that differs between runs of a server, even in one process (tests restart servers
/// in-process): the hash of the time under a per-call random key.
fn new_run_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(since_epoch.as_nanos());
    h.finish()
}

/// While it lives, resync keeps this server's marks for a replica that is in sync (see
/// [`Engine::marking_stale`]).
pub(crate) struct MarkingStale {
    marking: Arc<Mutex<HashMap<(VolumeId, ServerId), usize>>>,
    key: (VolumeId, ServerId),
}

impl Drop for MarkingStale {
    fn drop(&mut self) {
        let mut marking = self.marking.lock();
        if let Some(n) = marking.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                marking.remove(&self.key);
            }
        }
    }
}

impl Engine {
    /// The engine of server `me` over its `store`; `control` reaches the management group;
    /// connections to peers leave from `source_ip` if given.
    pub fn new(
        me: ServerId,
        store: Arc<Store>,
        control: Arc<dyn Control>,
        source_ip: Option<std::net::IpAddr>,
    ) -> Arc<Self> {
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(10),
            local_ip: source_ip,
            ..ClientConfig::default()
        };
        Arc::new(Self {
            me,
            store,
            pool: Pool::new(me, config),
            control,
            topology: RwLock::new(Arc::new(Topology::default())),
            version: watch::channel(0).0,
            gates: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            chunk_locks: (0..CHUNK_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            held: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            epoch_moves: tokio::sync::Mutex::new(()),
            resync: crate::resync::Tracker::default(),
            ranges: crate::order::RangeLocks::default(),
            epochs: crate::order::EpochFences::default(),
            incoming: crate::incoming::Incoming::default(),
            owed: crate::owed::Owed::default(),
            marking: Arc::default(),
            seals: crate::seal::Seals::default(),
            run: new_run_id(),
            tokens: std::sync::atomic::AtomicU64::new(0),
            opens: Arc::default(),
            background: TaskTracker::new(),
            stopping: CancellationToken::new(),
        })
    }

    /// Runs `work` in the background until it ends or the server stops ([`Engine::stop`]),
    /// which waits for it. Nothing runs if there is no runtime (the server is going away).
    pub fn spawn_background(&self, work: impl Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let stopping = self.stopping.clone();
        self.background.spawn_on(
            async move {
                tokio::select! {
                    biased;
                    () = stopping.cancelled() => {}
                    () = work => {}
                }
            }
            .in_current_span(),
            &runtime,
        );
    }

    /// Ends the background work and waits until it has: the server stops, and nothing it
    /// started keeps its store open or talks to its peers afterwards.
    pub async fn stop(&self) {
        self.stopping.cancel();
        self.background.close();
        self.background.wait().await;
    }

    /// Taken before recording marks for `server`, a replica of `volume` that is in sync, and
    /// kept until it is marked stale (or the marks are cleared): resync drops marks for an
    /// in-sync replica that nobody needs (leftovers of a refused mark), and must not drop
    /// these while the group is slow to mark it stale — it would then be stale with nothing
    /// to copy, and declared in sync without the chunks.
    pub(crate) fn marking_stale(&self, volume: VolumeId, server: ServerId) -> MarkingStale {
        *self.marking.lock().entry((volume, server)).or_default() += 1;
        MarkingStale {
            marking: self.marking.clone(),
            key: (volume, server),
        }
    }

    /// Whether some task of this server is recording marks for `server` and having it marked
    /// stale (see [`Engine::marking_stale`]).
    pub(crate) fn is_marking_stale(&self, volume: VolumeId, server: ServerId) -> bool {
        self.marking.lock().contains_key(&(volume, server))
    }

    /// Whether some task of this server is having any replica of `volume` marked stale, to
    /// take this server's version: this server's own marks on the volume, recorded first in
    /// case it crashes meanwhile, wait until that is settled (see `incoming`'s
    /// `keep_this_version`).
    pub(crate) fn is_keeping_own_version(&self, volume: VolumeId) -> bool {
        self.marking.lock().keys().any(|(v, _)| *v == volume)
    }

    /// Names this run of the server: a new value at each start, answered to pings, so that a
    /// peer can tell whether this server restarted (and lost what it had not synced) between
    /// two of its requests.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// A token no other write of this run or of another server uses (for [`crate::order`]).
    pub(crate) fn new_token(&self) -> u64 {
        let n = self
            .tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let h = blake3::hash(&[self.run.to_le_bytes(), n.to_le_bytes()].concat());
        u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default()) | 1
    }

    /// Records that `client` opened `volume` at `layer` here, until the guard is dropped.
    pub(crate) fn opened(
        &self,
        volume: VolumeId,
        layer: Option<LayerId>,
        client: String,
    ) -> OpenExport {
        let id = self
            .tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let info = OpenInfo {
            volume,
            layer,
            client,
        };
        self.opens.lock().insert(id, info);
        OpenExport {
            opens: self.opens.clone(),
            id,
        }
    }

    /// The exports of `volume` that clients have open through this server: what a delete
    /// would pull from under them.
    pub fn open_exports(&self, volume: VolumeId) -> Vec<OpenInfo> {
        self.opens
            .lock()
            .values()
            .filter(|o| o.volume == volume)
            .cloned()
            .collect()
    }

    /// This server's id.
    pub fn me(&self) -> ServerId {
        self.me
    }

    /// This server's block store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Records in this server's store, durably, that `server` missed the writes to each of
    /// `chunks` (layer, chunk) of `volume`; whether that worked. Marks for another server are
    /// admitted by the seals like those a change carries (see [`crate::seal`]), as routed by
    /// this server's view now. While `server` is being declared in sync at that epoch (by a
    /// count of marks taken before this one), `server` is reported stale again, which moves the
    /// epoch so that the declaration is refused, and this waits (up to
    /// [`crate::seal::SEAL_LEASE`]) for the new epoch to admit the mark. If the declaration
    /// committed first, the mark is recorded after it, and the caller marks `server` stale.
    pub async fn record_missed(
        &self,
        volume: VolumeId,
        server: ServerId,
        chunks: Vec<(LayerId, u64)>,
    ) -> bool {
        let deadline = Instant::now() + crate::seal::SEAL_LEASE;
        let mut reported = false;
        let admitted = loop {
            let epoch = self.view(volume).map_or(0, |v| v.epoch);
            match self
                .seals
                .admit(volume, 0, &[server], epoch, self.me, None)
                .await
            {
                Ok(admitted) => break admitted,
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(%volume, %server, error = %e, "a mark was not recorded");
                    return false;
                }
                Err(e) => {
                    if !reported {
                        // `server` is being declared in sync by a count of marks that misses
                        // this one: reporting it stale again moves the epoch, so that the
                        // declaration is refused, and the mark is then admitted by the new one.
                        reported = true;
                        if let Err(stale) = self.control.mark_stale(volume, server).await {
                            tracing::warn!(%volume, %server, sealed = %e, error = %stale,
                                "could not stop a replica that lacks a write from being declared in sync");
                        }
                    }
                    self.wait_change(Duration::from_millis(50)).await
                }
            }
        };
        let store = self.store.clone();
        let done = tokio::task::spawn_blocking(move || {
            for (layer, chunk) in &chunks {
                store.record_missed(volume, *layer, *chunk, server)?;
            }
            let flushed = store.flush(volume);
            drop(admitted);
            flushed
        })
        .await;
        matches!(done, Ok(Ok(())))
    }

    /// Seals stale replica `server` of `volume` at routing `epoch` (see [`crate::seal`]) and
    /// returns how many marks for it this server holds: none left means none can come from a
    /// change routed by that epoch or an earlier one.
    pub async fn seal_marks(
        &self,
        volume: VolumeId,
        server: ServerId,
        epoch: u64,
    ) -> Result<u64, String> {
        // Counted under the seal's lock, which the recording of marks shares.
        let sealed = self.seals.seal(volume, server, epoch).await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let left = match store.missed(volume) {
                Ok(marks) => marks.iter().filter(|m| m.server == server).count() as u64,
                Err(strata_store::StoreError::NoSuchVolume(_)) => 0,
                Err(e) => return Err(e.to_string()),
            };
            drop(sealed);
            Ok(left)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Lifts the seal of `server` for `volume` at `epoch` (see [`crate::seal`]).
    pub async fn lift_seal(&self, volume: VolumeId, server: ServerId, epoch: u64) {
        self.seals.lift(volume, server, epoch).await;
    }

    /// The management group.
    pub fn control(&self) -> &Arc<dyn Control> {
        &self.control
    }

    /// Takes in a newly applied management state.
    pub fn update(&self, state: &strata_meta::StateView) {
        let topology = Arc::new(Topology::of(state));
        self.epochs.retain(|v| topology.volumes.contains_key(v));
        *self.topology.write() = topology;
        self.version.send_modify(|v| *v += 1);
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.read().clone()
    }

    /// The current view of `volume`, if the management state has it.
    pub fn view(&self, volume: VolumeId) -> Option<Arc<VolumeView>> {
        self.topology.read().volumes.get(&volume).cloned()
    }

    /// The routing epoch to copy a chunk of `view`'s volume by: the latest this server knows,
    /// which may be past `view`'s (see [`crate::replica::put_chunk`]).
    pub fn epoch_of(&self, view: &crate::VolumeView) -> u64 {
        self.view(view.id)
            .map_or(view.epoch, |v| v.epoch.max(view.epoch))
    }

    /// Waits until the view of `volume` satisfies `pred`, at most `timeout`; returns whether it
    /// does.
    pub async fn wait_view(
        &self,
        volume: VolumeId,
        timeout: Duration,
        pred: impl Fn(Option<&VolumeView>) -> bool,
    ) -> bool {
        let mut rx = self.version.subscribe();
        let wait = async {
            loop {
                if pred(self.view(volume).as_deref()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        pred(self.view(volume).as_deref())
    }

    /// Waits for the next topology change, at most `timeout`.
    pub async fn wait_change(&self, timeout: Duration) {
        let mut rx = self.version.subscribe();
        let _ = tokio::time::timeout(timeout, rx.changed()).await;
    }

    /// The wire address of `server`.
    pub fn peer_addr(&self, server: ServerId) -> Option<SocketAddr> {
        self.topology.read().peers.get(&server).copied()
    }

    /// The pooled connection to `server`.
    pub async fn client(&self, server: ServerId) -> Result<WireClient, WireError> {
        let addr = self.peer_addr(server).ok_or_else(|| {
            WireError::ConnectionLost(format!("server {server} has no known peer address"))
        })?;
        match self.pool.get(addr).await {
            Ok(c) => Ok(c),
            Err(e) => {
                self.note_down(server);
                Err(e)
            }
        }
    }

    /// Sends `req` to `server`, waiting at most `timeout` for the answer.
    pub async fn call(
        &self,
        server: ServerId,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, WireError> {
        let client = self.client(server).await?;
        let res = client.call_timeout(req, timeout).await;
        if res.as_ref().is_err_and(|e| e.is_retryable()) {
            self.note_down(server);
        }
        res
    }

    /// Remembers that `server` just failed to answer.
    pub fn note_down(&self, server: ServerId) {
        self.down.lock().insert(server, Instant::now());
    }

    /// Whether `server` failed to answer a moment ago.
    pub fn recently_down(&self, server: ServerId) -> bool {
        self.down
            .lock()
            .get(&server)
            .is_some_and(|t| t.elapsed() < DOWN_MEMORY)
    }

    /// Forgets that `server` failed (it answered since).
    pub fn note_up(&self, server: ServerId) {
        self.down.lock().remove(&server);
    }

    /// The write gate of `volume`.
    pub(crate) fn gate(&self, volume: VolumeId) -> Arc<AsyncRwLock<()>> {
        self.gates.lock().entry(volume).or_default().clone()
    }

    /// What this server's exports of `volume` wrote to each replica since its last flush,
    /// shared by all of them (see [`crate::gateway::Links`]).
    pub(crate) fn links(&self, volume: VolumeId) -> Arc<crate::gateway::Links> {
        self.links.lock().entry(volume).or_default().clone()
    }

    /// The lock of `chunk` of `volume` on this server (one of a fixed set of stripes): held by
    /// a migration's copy of the chunk and by writes to it while the volume migrates.
    pub(crate) async fn lock_chunk(
        &self,
        volume: VolumeId,
        chunk: u64,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&(volume, chunk), &mut h);
        let stripe = std::hash::Hasher::finish(&h) as usize % self.chunk_locks.len();
        self.chunk_locks[stripe].lock().await
    }

    /// Snapshot barrier, step 1 on this server: holds new writes of `volume` through this
    /// server's gateways and waits for the ones in flight to finish, at most `timeout`. The hold
    /// lasts until [`Engine::release`] with the same `barrier` id, or at most 10 s.
    pub async fn pause(
        self: &Arc<Self>,
        barrier: u64,
        volume: VolumeId,
        timeout: Duration,
    ) -> Result<(), String> {
        let gate = self.gate(volume);
        let guard = tokio::time::timeout(timeout, gate.write_owned())
            .await
            .map_err(|_| format!("writes in flight did not finish within {timeout:?}"))?;
        self.held.lock().entry(barrier).or_default().push(guard);
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(BARRIER_MAX_HOLD).await;
            if let Some(engine) = engine.upgrade() {
                if engine.held.lock().remove(&barrier).is_some() {
                    tracing::warn!(barrier, "snapshot barrier was never released; released it");
                }
            }
        });
        Ok(())
    }

    /// Snapshot barrier, last step: lets the writes held by `barrier` go.
    pub fn release(&self, barrier: u64) {
        self.held.lock().remove(&barrier);
    }

    /// Has the management group move the routing epoch of `volume` past `epoch`, if this
    /// server's view has not moved past it already, by recording again that `server` (a stale
    /// replica) missed writes; waits until this server's view shows it and returns the view's
    /// epoch. A write of `epoch` that `server` may still apply later (its gateway gave up on
    /// it) can then never land on a copy made by a later epoch (see
    /// [`crate::replica::put_chunk`]). `None` (nothing to do) when `server` is not stale.
    pub async fn move_epoch_past(
        &self,
        volume: VolumeId,
        server: ServerId,
        epoch: u64,
    ) -> Result<Option<u64>, String> {
        let moved = |v: &crate::VolumeView| (v.epoch > epoch).then_some(v.epoch);
        let Some(view) = self.view(volume) else {
            return Ok(None);
        };
        if !view.stale.contains(&server) {
            return Ok(None);
        }
        // One commit per epoch: the writes that failed together wait for the first one's.
        let _one = self.epoch_moves.lock().await;
        if let Some(now) = self.view(volume).as_deref().and_then(moved) {
            return Ok(Some(now));
        }
        tracing::info!(%volume, %server, epoch, "a write to a stale replica is in doubt; moving the volume's routing epoch");
        if crate::failpoint::fails("engine::move_epoch_past", || view.name.clone()) {
            return Err("the management group could not be reached (fail point)".into());
        }
        self.control.mark_stale(volume, server).await?;
        self.wait_view(volume, Duration::from_secs(5), |v| {
            v.is_none_or(|v| v.epoch > epoch)
        })
        .await;
        match self.view(volume) {
            None => Ok(None),
            Some(v) => moved(&v).map(Some).ok_or_else(|| {
                "the routing epoch was moved but the move has not reached this server yet".into()
            }),
        }
    }

    /// Records through the management group that `server` missed writes to `volume`, and waits
    /// until this server's view shows it. Fails when the group refuses (the write must then
    /// fail: acknowledging it could lose it) or cannot be reached (a partitioned minority must
    /// not acknowledge writes the majority does not have).
    pub async fn mark_stale(&self, volume: VolumeId, server: ServerId) -> Result<(), String> {
        if self.view(volume).is_some_and(|v| !v.in_sync(server)) {
            return Ok(());
        }
        tracing::warn!(%volume, %server, "replica missed writes; marking it stale");
        self.control.mark_stale(volume, server).await?;
        let shown = self
            .wait_view(volume, Duration::from_secs(5), |v| {
                v.is_none_or(|v| !v.in_sync(server))
            })
            .await;
        if shown {
            Ok(())
        } else {
            Err("the stale mark was committed but has not reached this server yet".into())
        }
    }
}

impl Engine {
    /// Asks `server` (this one included, without the network) to handle `req`; a refusal or a
    /// failure to reach it is a [`ReplicaError`] (unreachable: `Io`).
    pub async fn ask(
        self: &Arc<Self>,
        server: ServerId,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, crate::replica::ReplicaError> {
        use crate::replica::ReplicaError;
        use strata_wire::Handler;
        let resp = if server == self.me {
            crate::ReplicaHandler::new(self.clone())
                .handle(self.me, 0, req)
                .await
        } else {
            self.call(server, req, timeout)
                .await
                .map_err(|e| ReplicaError::Io(e.to_string()))?
        };
        match resp {
            Response::Error { code, message } => Err(ReplicaError::from_wire(code, message)),
            other => Ok(other),
        }
    }
}
