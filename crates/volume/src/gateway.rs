//! [`GatewayDevice`]: one NBD export of a volume on this server, acting as the volume's gateway.
//!
//! Each request is split by chunk. A write goes to every replica of its chunk at once and is
//! acknowledged when every current replica has it; then stale replicas, and servers a
//! migration copies the chunk to, get it too if they answer (else they are recorded as missing
//! it). A replica that cannot be written is first marked stale in the
//! management group, then the write is sent again to the remaining replicas carrying the mark,
//! so they record the chunk as missed; if marking fails the write fails. Reads go to one current
//! replica: this server if it holds the chunk, else the first that answers.
//!
//! FLUSH goes to every replica written since the last flush. The device remembers, per replica,
//! which chunks it wrote there since then: if that replica fails, or its connection drops (it
//! may have restarted and lost unflushed writes), those chunks are recorded as missed by it on
//! the other replicas before anything else is acknowledged.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::join_all;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_nbd::{BlockDevice, Extent, IoError};
use strata_types::{ExtentKind, LayerId, ServerId, VolumeId, CHUNK_SIZE};
use strata_wire::{Request, Response, Run, WireClient};
use tokio::sync::RwLock as AsyncRwLock;

use crate::engine::Engine;
use crate::metrics::{DeviceMetrics, Op};
use crate::order::{Holder, Order};
use crate::replica::{self, ReplicaError};
use crate::view::VolumeView;

/// How long a request keeps retrying while replicas catch up with a new head layer.
const RETRY_WINDOW: Duration = Duration::from_secs(10);
/// How long one replica may take to answer one request.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replica asked to record marks may take to reach their routing epoch.
const MARKS_WAIT: Duration = Duration::from_secs(2);

/// What was written to one replica since its last flush.
#[derive(Default)]
struct Link {
    /// The connection those writes went over; if it closes, they may be lost.
    client: Option<WireClient>,
    /// The (layer, chunk)s written and not yet flushed, each with the number of the last write
    /// to it ([`Links::writes`]): a flush forgets a chunk only if no write came after the ones
    /// it covered.
    unflushed: HashMap<(LayerId, u64), u64>,
    /// The (layer, chunk)s that were unflushed when the connection dropped: they may be lost,
    /// so they are not read from this replica. A successful flush does not clear them:
    /// [`GatewayDevice::record_lost`] does, once the other replicas have recorded them as
    /// missed, or [`GatewayDevice::lost_writes`], when this replica was their only current
    /// copy (and the flush or read that found it fails).
    lost: HashSet<(LayerId, u64)>,
    /// For each (layer, chunk) of `unflushed` and `lost`, the other replicas that were current
    /// at every write to it since it was last neither: if this one lost those writes, only
    /// they may still hold them (see [`GatewayDevice::sole_loss`]).
    vouchers: HashMap<(LayerId, u64), Vec<ServerId>>,
}

impl Link {
    /// Whether this replica may have lost writes to `chunk` (see [`Link::lost`]).
    fn may_have_lost(&self, chunk: u64) -> bool {
        self.lost.iter().any(|(_, c)| *c == chunk)
    }

    /// Records a write to `key`, not flushed yet, numbered `n`, while `current` were the
    /// other current replicas of its chunk.
    fn wrote(&mut self, key: (LayerId, u64), n: u64, current: Vec<ServerId>) {
        if !self.unflushed.contains_key(&key) && !self.lost.contains(&key) {
            self.vouchers.insert(key, current);
        } else if let Some(v) = self.vouchers.get_mut(&key) {
            v.retain(|r| current.contains(r));
        }
        self.unflushed.insert(key, n);
    }

    /// Forgets the vouchers of the (layer, chunk)s no longer unflushed nor lost.
    fn forget_clean(&mut self) {
        let (unflushed, lost) = (&self.unflushed, &self.lost);
        self.vouchers
            .retain(|k, _| unflushed.contains_key(k) || lost.contains(k));
    }
}

/// The links of one volume's exports on this server, shared by all of them (the engine keeps
/// one per volume): a client may open several connections (NBD multi-conn), and a flush on any
/// of them must make durable what all of them wrote.
#[derive(Default)]
pub(crate) struct Links {
    map: Mutex<HashMap<ServerId, Link>>,
    /// Numbers the writes, for [`Link::unflushed`].
    writes: AtomicU64,
    /// Counts the times a replica turned out to have lost unflushed writes of which it was the
    /// only current copy: each fails the next flush of every export open then (see
    /// [`GatewayDevice::reported`]).
    losses: AtomicU64,
}

impl Links {
    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<ServerId, Link>> {
        self.map.lock()
    }
}

/// A change to a chunk.
#[derive(Clone)]
enum Change {
    Write(Bytes),
    Zero(u64),
}

/// How the holders of a chunk answered when asked to record marks
/// ([`GatewayDevice::record_marks_at`]).
#[derive(Default)]
struct MarksRecorded {
    /// Some holder recorded them.
    by_any: bool,
    /// A holder refused them: the replica they name is being declared in sync, or is current
    /// in a later view (see [`crate::seal`]).
    rerouted: Option<ReplicaError>,
    /// A holder could not record them.
    failed: Option<ReplicaError>,
}

/// Which replicas took a change into which head layer, over the attempts of one change that
/// were refused somewhere or routed again. The next attempt writes to every replica again, and
/// so makes them the same — unless a snapshot froze that layer meanwhile: the next attempt
/// then writes to the new head, and the copies of the snapshot differ.
#[derive(Default)]
struct Taken {
    layer: Option<LayerId>,
    by: Vec<ServerId>,
}

impl Taken {
    /// Records that `by` took the change into `layer`.
    fn add(&mut self, layer: LayerId, by: &[ServerId]) {
        if self.layer != Some(layer) {
            self.by.clear();
        }
        self.layer = Some(layer);
        for s in by {
            if !self.by.contains(s) {
                self.by.push(*s);
            }
        }
    }

    /// Who took the change into `head`: `acked` now, and those that did in earlier attempts
    /// into the same layer (their copies hold it too, whatever they answered since).
    fn takers(&self, head: LayerId, acked: &[ServerId]) -> Vec<ServerId> {
        let mut all = acked.to_vec();
        if self.layer == Some(head) {
            all.extend(self.by.iter().filter(|s| !acked.contains(s)));
        }
        all
    }

    /// When the head is no longer the layer the change was taken into: that layer and who
    /// took it there (forgotten here: the caller records it).
    fn left_behind(&mut self, head: LayerId) -> Option<(LayerId, Vec<ServerId>)> {
        let layer = self.layer.filter(|l| *l != head)?;
        self.layer = None;
        let by = std::mem::take(&mut self.by);
        (!by.is_empty()).then_some((layer, by))
    }
}

/// Those of `servers` not in `took`.
fn others_than(servers: &[ServerId], took: &[ServerId]) -> Vec<ServerId> {
    servers
        .iter()
        .filter(|s| !took.contains(s))
        .copied()
        .collect()
}

/// What the current replicas answered to one attempt of a change.
#[derive(Default)]
struct Outcome {
    /// Replicas that took the change.
    acked: Vec<ServerId>,
    /// Replicas whose storage or connection failed, or that are out of space: to be marked
    /// stale.
    failed: Vec<ServerId>,
    /// Those of `failed` that are out of space.
    full: Vec<ServerId>,
    /// Replicas not ready for the head layer or the routing epoch, or whose blocks were held:
    /// try again.
    refused: Vec<ServerId>,
    /// Those of `refused` that had frozen the layer (a snapshot was taken meanwhile).
    fenced: Vec<ServerId>,
    /// The write generation the first replica to take the change gave it (0: none took it).
    generation: u64,
}

impl Outcome {
    /// Takes in `server`'s answer; an error the client must see ends the change.
    fn add(
        &mut self,
        view: &VolumeView,
        server: ServerId,
        res: Result<u64, ReplicaError>,
    ) -> Result<(), IoError> {
        match res {
            Ok(generation) => {
                self.acked.push(server);
                if self.generation == 0 {
                    self.generation = generation;
                }
            }
            Err(ReplicaError::Fenced(_)) => {
                self.refused.push(server);
                self.fenced.push(server);
            }
            Err(ReplicaError::NotReady(_) | ReplicaError::Rerouted(_)) => self.refused.push(server),
            Err(ReplicaError::Io(e)) => {
                tracing::warn!(volume = %view.name, %server, error = %e, "replica write failed");
                self.failed.push(server);
            }
            // A full replica is a failed one (as DRBD detaches a full disk): the change goes
            // on to the others, and resync brings it back once it has room. Only when it is
            // the last copy does the client see the error.
            Err(ReplicaError::NoSpace) => {
                tracing::warn!(volume = %view.name, %server, "replica out of space");
                self.failed.push(server);
                self.full.push(server);
            }
            Err(e) => return Err(io(e)),
        }
        Ok(())
    }
}

/// The holds one change of one chunk took on its primaries (one, or more if the primary
/// changed between attempts), released when the change ends however it ends (see
/// [`crate::order`]).
struct Holds {
    engine: Arc<Engine>,
    volume: VolumeId,
    chunk: u64,
    token: u64,
    servers: Mutex<Vec<ServerId>>,
}

impl Holds {
    fn new(engine: Arc<Engine>, volume: VolumeId, chunk: u64) -> Self {
        Self {
            token: engine.new_token(),
            engine,
            volume,
            chunk,
            servers: Mutex::new(Vec::new()),
        }
    }

    /// The token to send to `primary`, which will hold blocks under it.
    fn sent_to(&self, primary: ServerId) -> u64 {
        let mut servers = self.servers.lock();
        if !servers.contains(&primary) {
            servers.push(primary);
        }
        self.token
    }
}

impl Drop for Holds {
    fn drop(&mut self) {
        let (volume, chunk, token) = (self.volume, self.chunk, self.token);
        for server in self.servers.get_mut().drain(..) {
            if server == self.engine.me() {
                self.engine.ranges.release(volume, chunk, token);
                continue;
            }
            // Without a runtime (shutting down) nothing is sent: the connection closes, which
            // releases the holds.
            let engine = self.engine.clone();
            self.engine.spawn_background(async move {
                let release = Request::Release {
                    volume,
                    chunk,
                    token,
                };
                if let Err(e) = engine.call(server, release, CALL_TIMEOUT).await {
                    // The hold ends with the connection, or with its lease.
                    tracing::debug!(%server, error = %e, "releasing a write's hold failed");
                }
            });
        }
    }
}

/// One export of a volume: its head (read-write) or a snapshot (read-only).
pub struct GatewayDevice {
    engine: Arc<Engine>,
    volume: VolumeId,
    /// `None` for the head, the snapshot's layer otherwise.
    layer: Option<LayerId>,
    size: u64,
    read_only: bool,
    gate: Arc<AsyncRwLock<()>>,
    links: Arc<Links>,
    /// The [`Links::losses`] this export's client has been told of (by a failed flush), or
    /// that came before it opened.
    reported: AtomicU64,
    metrics: DeviceMetrics,
    /// Keeps this export listed among the volume's open ones while it lives.
    _open: crate::engine::OpenExport,
}

/// `[offset, offset+len)` split at chunk boundaries: (chunk, offset, len).
fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let chunk = at / CHUNK_SIZE;
        let stop = ((chunk + 1) * CHUNK_SIZE).min(end);
        let piece = (chunk, at, stop - at);
        at = stop;
        Some(piece)
    })
}

fn io(e: ReplicaError) -> IoError {
    match e {
        ReplicaError::OutOfRange(m) => IoError::InvalidArgument(m),
        ReplicaError::NoSpace => IoError::NoSpace,
        other => IoError::Io(other.to_string()),
    }
}

impl GatewayDevice {
    /// An export of `volume` at `layer` (`None`: the writable head) of `size` bytes, opened by
    /// `client` (its address, for [`Engine::open_exports`]).
    pub fn new(
        engine: Arc<Engine>,
        volume: VolumeId,
        name: &str,
        layer: Option<LayerId>,
        size: u64,
        read_only: bool,
        client: String,
    ) -> Self {
        let links = engine.links(volume);
        Self {
            _open: engine.opened(volume, layer, client),
            gate: engine.gate(volume),
            reported: AtomicU64::new(links.losses.load(Ordering::SeqCst)),
            links,
            engine,
            volume,
            layer,
            size,
            read_only,
            metrics: DeviceMetrics::new(name),
        }
    }

    fn view(&self) -> Result<Arc<VolumeView>, IoError> {
        self.engine
            .view(self.volume)
            .ok_or_else(|| IoError::Io("the volume was deleted".into()))
    }

    /// The connection to `server`, and how many chunks it may have lost because the previous
    /// connection just turned out to have dropped (see [`Link::lost`]). With `reading`, refuses
    /// (`NotReady`) if that chunk is among them: checked under the same lock that records them, so a
    /// read racing the one that noticed the drop cannot reach the copy either.
    async fn remote(
        &self,
        server: ServerId,
        reading: Option<u64>,
    ) -> Result<(WireClient, usize), ReplicaError> {
        let client = self
            .engine
            .client(server)
            .await
            .map_err(|e| ReplicaError::Io(e.to_string()))?;
        let mut links = self.links.lock();
        let link = links.entry(server).or_default();
        let dropped = link.client.as_ref().is_some_and(|c| c.is_closed());
        link.client = Some(client.clone());
        let mut newly_lost = 0;
        if dropped {
            let unflushed: Vec<_> = link.unflushed.drain().map(|(k, _)| k).collect();
            newly_lost = unflushed.len();
            link.lost.extend(unflushed);
        }
        if let Some(chunk) = reading {
            if link.may_have_lost(chunk) {
                // Not a failed replica: the read is planned again, with this one suspect.
                return Err(ReplicaError::NotReady(format!(
                    "server {server} may have lost writes to chunk {chunk}"
                )));
            }
        }
        Ok((client, newly_lost))
    }

    /// Sends `req` to the remote `server`; a connection failure is an `Io` error (the replica
    /// failed), a refusal is the replica's error.
    async fn call(&self, server: ServerId, req: Request) -> Result<Response, ReplicaError> {
        self.call_for(server, None, req).await
    }

    /// [`GatewayDevice::call`] for a read of `reading`: refused if the server may have lost
    /// writes to that chunk (see [`GatewayDevice::remote`]).
    async fn call_for(
        &self,
        server: ServerId,
        reading: Option<u64>,
        req: Request,
    ) -> Result<Response, ReplicaError> {
        let (client, lost) = self.remote(server, reading).await?;
        if lost > 0 {
            return Err(ReplicaError::Io(format!(
                "connection to server {server} dropped with {lost} unflushed chunk(s) on it"
            )));
        }
        match client.call_timeout(req, CALL_TIMEOUT).await {
            Ok(Response::Error { code, message }) => Err(ReplicaError::from_wire(code, message)),
            Ok(r) => Ok(r),
            Err(e) => {
                self.engine.note_down(server);
                Err(ReplicaError::Io(e.to_string()))
            }
        }
    }

    /// Applies `change` at `offset` (within one chunk) on replica `server`, routed by `epoch`,
    /// as the chunk's change of write `generation` (0: `server` is the first to apply it and
    /// gives it one); with `hold`, as the chunk's primary, which holds the blocks under that
    /// token (see [`crate::order`]). Returns the generation applied.
    #[allow(clippy::too_many_arguments)]
    async fn send_change(
        &self,
        server: ServerId,
        layer: LayerId,
        offset: u64,
        change: Change,
        fua: bool,
        missed: Vec<ServerId>,
        epoch: u64,
        hold: Option<u64>,
        generation: u64,
    ) -> Result<u64, ReplicaError> {
        let e = &self.engine;
        if server == e.me() {
            let order = Order {
                epoch,
                holder: hold.map(|token| Holder { token, conn: None }),
            };
            let volume = self.volume;
            return match change {
                Change::Write(data) => {
                    replica::write(
                        e, volume, layer, offset, data, fua, missed, order, generation,
                    )
                    .await
                }
                Change::Zero(len) => {
                    let applied =
                        replica::trim(e, volume, layer, offset, len, missed, order, generation)
                            .await?;
                    if fua {
                        replica::flush(e, volume).await?;
                    }
                    Ok(applied)
                }
            };
        }
        let volume = self.volume;
        let req = match change {
            Change::Write(data) => Request::Write {
                volume,
                layer,
                offset,
                data,
                fua,
                missed,
                hold,
                epoch,
                generation,
            },
            Change::Zero(len) => Request::Trim {
                volume,
                layer,
                offset,
                len,
                missed,
                hold,
                epoch,
                generation,
            },
        };
        let zero_fua = fua && matches!(req, Request::Trim { .. });
        let applied = match self.call(server, req).await? {
            Response::Applied { generation } => generation,
            other => {
                return Err(ReplicaError::Io(format!(
                    "server {server} answered a write with {other:?}"
                )))
            }
        };
        if zero_fua {
            self.call(server, Request::Flush { volume }).await?;
        } else if !fua {
            let chunk = offset / CHUNK_SIZE;
            // By the view that routed the write: one declared in sync since took it lagging.
            let current: Vec<ServerId> = self
                .view()
                .ok()
                .filter(|v| v.epoch == epoch)
                .map(|v| {
                    v.replicas_of(chunk)
                        .into_iter()
                        .filter(|r| *r != server && v.current(*r, chunk))
                        .collect()
                })
                .unwrap_or_default();
            let n = self.links.writes.fetch_add(1, Ordering::Relaxed);
            self.links
                .lock()
                .entry(server)
                .or_default()
                .wrote((layer, chunk), n, current);
        }
        Ok(applied)
    }

    /// Has `holder` record, durably, that each of `missed` lacks the chunk at `offset` of
    /// `layer` (a marks-only write; `missed` naming `holder` itself is an own mark).
    async fn record_marks(
        &self,
        holder: ServerId,
        layer: LayerId,
        offset: u64,
        missed: Vec<ServerId>,
        epoch: u64,
    ) -> Result<u64, ReplicaError> {
        // Durable on the answer (the receiver flushes marks at once), so no flush owes it.
        let mark = Change::Write(Bytes::new());
        let deadline = Instant::now() + MARKS_WAIT;
        loop {
            let sent = self
                .send_change(
                    holder,
                    layer,
                    offset,
                    mark.clone(),
                    true,
                    missed.clone(),
                    epoch,
                    None,
                    0,
                )
                .await;
            match sent {
                // It has not caught up with `epoch` yet.
                Err(ReplicaError::NotReady(_)) if Instant::now() < deadline => {
                    self.engine.wait_change(Duration::from_millis(20)).await;
                }
                done => return done,
            }
        }
    }

    /// Has each of `holders` record that each of `missed` lacks the chunk at `offset` of
    /// `layer` ([`GatewayDevice::record_marks`], all at once), and sums up their answers.
    async fn record_marks_at(
        &self,
        holders: &[ServerId],
        layer: LayerId,
        offset: u64,
        missed: &[ServerId],
        epoch: u64,
    ) -> MarksRecorded {
        let marks = holders
            .iter()
            .map(|r| self.record_marks(*r, layer, offset, missed.to_vec(), epoch));
        let mut sum = MarksRecorded::default();
        for r in join_all(marks).await {
            match r {
                Ok(_) => sum.by_any = true,
                Err(e @ ReplicaError::Rerouted(_)) => sum.rerouted = Some(e),
                Err(e) => sum.failed = Some(e),
            }
        }
        sum
    }

    /// Replica `server` failed: marks it stale in the management group, then has the other
    /// in-sync replicas record the chunks it may have lost (written to it and not flushed).
    async fn replica_failed(&self, server: ServerId) -> Result<(), IoError> {
        self.engine
            .mark_stale(self.volume, server)
            .await
            .map_err(|e| {
                IoError::Io(format!(
                    "server {server} did not take a write and could not be marked stale: {e}"
                ))
            })?;
        self.record_lost(server).await
    }

    /// `server` may have lost writes (its connection dropped, or a write or flush to it failed
    /// with an I/O error): if it is current for any chunk written to it since its last flush,
    /// it becomes stale ([`GatewayDevice::replica_failed`]); otherwise (it is stale, or gaining
    /// those chunks in a migration) the chunks are only marked for a copy.
    async fn lost_writes(&self, server: ServerId) -> Result<(), IoError> {
        if self.sole_loss(server).await? {
            return Err(IoError::Io(format!(
                "server {server}, the only current replica of some chunks, may have lost unflushed writes"
            )));
        }
        self.record_loss(server).await
    }

    /// [`GatewayDevice::lost_writes`] for a server that is not the only current copy of any
    /// chunk it may have lost writes to.
    async fn record_loss(&self, server: ServerId) -> Result<(), IoError> {
        let view = self.view()?;
        let current = self.links.lock().get(&server).is_some_and(|l| {
            l.unflushed
                .keys()
                .chain(&l.lost)
                .any(|(_, c)| current_replica(&view, server, *c))
        });
        if current {
            self.replica_failed(server).await
        } else {
            self.record_lost(server).await
        }
    }

    /// Whether `server` is the only current copy of some chunk written to it since its last
    /// flush, and so may have lost writes nothing can mark or repair. Only a replica that was
    /// current at those writes and is now counts as another copy: one current now but not
    /// then took them as a lagging replica and may since have been given this one's copy,
    /// which lacks them too (back from a power failure as the only in-sync copy, it gives its
    /// copy to the stale replicas, see [`crate::resync`]). If so, the loss is
    /// counted: the next flush of every open export fails, once (each client learns its
    /// unflushed writes may be lost, as with a failed disk; the writes of several connections
    /// share these records), and what it still holds as unflushed is flushed again next time.
    /// Where another replica is current now all the same, the copies are first made the same
    /// ([`GatewayDevice::record_loss`]): it may hold writes this one lost.
    async fn sole_loss(&self, server: ServerId) -> Result<bool, IoError> {
        let view = self.view()?;
        let (sole, others) = match self.links.lock().get(&server) {
            None => return Ok(false),
            Some(l) => {
                let mut written = l.unflushed.keys().chain(&l.lost);
                let sole = written.clone().any(|key| {
                    let c = key.1;
                    current_replica(&view, server, c)
                        && !l
                            .vouchers
                            .get(key)
                            .is_some_and(|v| v.iter().any(|r| view.current(*r, c)))
                });
                let others = written.any(|(_, c)| {
                    view.replicas_of(*c)
                        .into_iter()
                        .any(|r| r != server && view.current(r, *c))
                });
                (sole, others)
            }
        };
        if !sole {
            return Ok(false);
        }
        let recorded = if others {
            self.record_loss(server).await
        } else {
            Ok(())
        };
        self.links.losses.fetch_add(1, Ordering::SeqCst);
        recorded?;
        if let Some(l) = self.links.lock().get_mut(&server) {
            l.lost.clear();
            l.forget_clean();
        }
        Ok(true)
    }

    /// Has the current replicas of every chunk written to `server` since its last flush record
    /// the chunk as missed by `server`, durably: those writes may be lost. Also for a server
    /// that is already stale or gaining the chunk: the writes it took after a copy carry no
    /// mark, so without this a restart that lost them would go unnoticed. The chunks are
    /// forgotten only once every mark is durable, so a flush running meanwhile still sees them.
    async fn record_lost(&self, server: ServerId) -> Result<(), IoError> {
        let (unflushed, lost): (Vec<_>, Vec<_>) = match self.links.lock().get(&server) {
            Some(l) => (
                l.unflushed.iter().map(|(k, n)| (*k, *n)).collect(),
                l.lost.iter().copied().collect(),
            ),
            None => Default::default(),
        };
        if unflushed.is_empty() && lost.is_empty() {
            return Ok(());
        }
        let view = self.view()?;
        let mut marks = Vec::new();
        for (layer, chunk) in unflushed.iter().map(|(k, _)| k).chain(&lost) {
            for r in view.replicas_of(*chunk) {
                if r != server && view.current(r, *chunk) {
                    marks.push(self.record_marks(
                        r,
                        *layer,
                        chunk * CHUNK_SIZE,
                        vec![server],
                        view.epoch,
                    ));
                }
            }
        }
        for r in join_all(marks).await {
            r.map_err(|e| {
                IoError::Io(format!(
                    "could not record the writes server {server} may have lost: {e}"
                ))
            })?;
        }
        if let Some(l) = self.links.lock().get_mut(&server) {
            // A write that came after these were collected is not covered by the marks.
            for (x, n) in &unflushed {
                if l.unflushed.get(x) == Some(n) {
                    l.unflushed.remove(x);
                }
            }
            for x in &lost {
                l.lost.remove(x);
            }
            l.forget_clean();
        }
        Ok(())
    }

    /// A change failed after `took` took it, and the replicas that did not could not be
    /// marked stale or recorded as missing it: the copies of `took` may now hold a write the
    /// others lack, and no mark says so. Each records the chunk as missed by itself (an own
    /// mark, never refused), so resync replaces its copy with a current replica's (see
    /// [`crate::resync`]). One that cannot be reached is told again in the background until it
    /// is ([`crate::owed`]).
    async fn distrust(&self, took: &[ServerId], layer: LayerId, offset: u64, epoch: u64) {
        let own = took.iter().map(|k| async move {
            let sent = self.record_marks(*k, layer, offset, vec![*k], epoch).await;
            if let Err(e) = sent {
                tracing::warn!(volume = %self.volume, server = %k, error = %e, "could not tell a replica that its copy of a chunk took a failed write; telling it again in the background");
                crate::owed::owe(&self.engine, self.volume, *k, layer, offset / CHUNK_SIZE);
            }
        });
        join_all(own).await;
    }

    /// Whether `server`, whose call just failed, may still apply the request: the connection
    /// to it is open (it did not answer in time). One that could not be connected to never got
    /// it, and one whose connection dropped sees that, and handles what it held then (see
    /// [`crate::incoming`]).
    fn may_still_apply(&self, server: ServerId) -> bool {
        self.links
            .lock()
            .get(&server)
            .and_then(|l| l.client.as_ref())
            .is_some_and(|c| !c.is_closed())
    }

    /// A replica that could not be marked stale may still apply a change this gateway gave up
    /// on, which the `late` replicas of `view` (stale, or gaining the chunk) then never get.
    /// Moves the volume's routing epoch past `view`'s: the copy that the replica's own mark
    /// (see [`GatewayDevice::distrust`]) has made to them is then made by a later epoch,
    /// which it admits only after such a change is in, or refuses it.
    async fn fence_lagging(&self, view: &VolumeView, late: &[ServerId]) {
        let Some(stale) = late.iter().find(|s| view.stale.contains(s)) else {
            return;
        };
        if let Err(e) = self
            .engine
            .move_epoch_past(self.volume, *stale, view.epoch)
            .await
        {
            tracing::warn!(volume = %self.volume, error = %e, "could not move the routing epoch past a write a replica may still apply");
        }
    }

    /// Applies `change`, already on the `current` replicas, to `server`, whose copy of the chunk
    /// is not current (it is stale, or a migration copies the chunk to it). Only after the
    /// current replicas: a copy of the chunk to `server` holds the chunk's lock on the copying
    /// replica, so a write reaches `server` either after the copy or in its image, never before
    /// it to be overwritten. So a write it takes needs no mark, and copying converges while
    /// clients write. If `server` does not take it, the current replicas record the chunk as
    /// missed by it, and it is copied again — unless it refused the routing epoch and `reroute`
    /// allows, or the current replicas refuse the marks (it is being declared in sync, see
    /// [`crate::seal`]): then the view changes (it may be current now, and read from), so it
    /// answers `Ok(false)` and the whole change is routed again.
    #[allow(clippy::too_many_arguments)]
    async fn write_lagging(
        &self,
        server: ServerId,
        current: &[ServerId],
        head: LayerId,
        offset: u64,
        change: Change,
        fua: bool,
        epoch: u64,
        generation: u64,
        reroute: bool,
    ) -> Result<bool, IoError> {
        let Err(e) = self
            .send_change(
                server,
                head,
                offset,
                change,
                fua,
                Vec::new(),
                epoch,
                None,
                generation,
            )
            .await
        else {
            return Ok(true);
        };
        if reroute && matches!(e, ReplicaError::Rerouted(_)) {
            return Ok(false);
        }
        tracing::debug!(volume = %self.volume, %server, error = %e, "write to a lagging replica failed; marking it");
        let mut moved = Ok(None);
        if matches!(e, ReplicaError::Io(_)) {
            // Its connection may have dropped with earlier writes unflushed.
            self.lost_writes(server).await?;
            // It may still apply this write, after the copy the marks ask for: that copy must
            // be made by a later epoch, which it admits only after the write or never.
            moved = self
                .engine
                .move_epoch_past(self.volume, server, epoch)
                .await;
        }
        let marks_epoch = moved.as_ref().ok().copied().flatten().unwrap_or(epoch);
        let marks = self
            .record_marks_at(current, head, offset, &[server], marks_epoch)
            .await;
        // Rerouted: it is being declared in sync, or is by now (see `crate::seal`): the change
        // is routed again by the new view, where it is current and takes the change.
        let rerouted = marks.rerouted.is_some();
        if let Some(e) = marks.failed {
            if !marks.by_any && !rerouted {
                // The current replicas hold a write `server` lacks, and no mark says so.
                self.distrust(current, head, offset, epoch).await;
            }
            return Err(IoError::Io(format!(
                "could not record that server {server} missed a write: {e}"
            )));
        }
        if rerouted {
            // Routed again by the new view, whose epoch it admits only after this write or
            // never, the epoch move above failed or not; the caller must not give up on the
            // change now: the current replicas hold it, and nothing says `server` lacks it.
            return Ok(false);
        }
        if let Err(e) = moved {
            return Err(IoError::Io(format!(
                "server {server} may still apply a write it did not answer, and the volume's routing could not be moved past it: {e}"
            )));
        }
        Ok(true)
    }

    /// The copies of `differ` of the chunk at `offset` in `layer` and those of `keep` no longer
    /// agree: one side took a change the other refused. Marks `differ` stale and has `keep`
    /// record the chunk as missed by them, so resync copies `keep`'s version to them. If the
    /// group refuses (a `differ` server is the only in-sync copy of some chunk), it goes the
    /// other way: each of `keep` records the chunk as missed by itself (an own mark), so resync
    /// replaces its copy with a current replica's, wherever this gateway runs.
    async fn missed_by(
        &self,
        differ: &[ServerId],
        keep: &[ServerId],
        layer: LayerId,
        offset: u64,
        epoch: u64,
    ) -> Result<(), IoError> {
        if keep.is_empty() || differ.is_empty() {
            return Ok(());
        }
        for server in differ {
            if let Err(e) = self.engine.mark_stale(self.volume, *server).await {
                self.distrust(keep, layer, offset, epoch).await;
                return Err(IoError::Io(format!(
                    "the replicas of a chunk disagree and server {server} could not be marked stale: {e}"
                )));
            }
        }
        let marks = self
            .record_marks_at(keep, layer, offset, differ, epoch)
            .await;
        let Some(e) = marks.failed.or(marks.rerouted) else {
            return Ok(());
        };
        if !marks.by_any {
            self.distrust(keep, layer, offset, epoch).await;
        }
        Err(IoError::Io(format!("could not record a missed write: {e}")))
    }

    /// Applies `change` to one chunk on all its replicas: first on the chunk's primary (its
    /// first current replica), which holds the blocks until every other replica has it, so
    /// overlapping writes reach every replica in one order (see [`crate::order`]); then on the
    /// other current replicas at once; then on the lagging ones.
    async fn change_piece(&self, offset: u64, change: Change, fua: bool) -> Result<(), IoError> {
        let chunk = offset / CHUNK_SIZE;
        let holds = Holds::new(self.engine.clone(), self.volume, chunk);
        let deadline = Instant::now() + RETRY_WINDOW;
        // The replicas that took the change into a head layer in an earlier attempt, which was
        // then refused elsewhere or routed again (see `Taken`).
        let mut taken = Taken::default();
        loop {
            let view = self.view()?;
            let head = view
                .head()
                .ok_or_else(|| IoError::Io("the volume has no head layer".into()))?;
            if let Some((layer, took)) = taken.left_behind(head) {
                // A snapshot froze `layer` between two attempts: the copies of the snapshot of
                // those that took it hold the change, the others' do not (this attempt writes
                // to the new head). Resync gives the others the takers' version of `layer`.
                let differ: Vec<ServerId> = view
                    .replicas_of(chunk)
                    .into_iter()
                    .filter(|r| !took.contains(r))
                    .collect();
                self.missed_by(&differ, &took, layer, offset, view.epoch)
                    .await?;
            }
            let replicas = view.replicas_of(chunk);
            let current: Vec<ServerId> = replicas
                .iter()
                .copied()
                .filter(|r| view.current(*r, chunk))
                .collect();
            // The others (stale replicas, and servers a migration copies the chunk to): one
            // that answers gets the write after the current replicas (`write_lagging`); one
            // that failed a moment ago is recorded by them as missing it, at once.
            let (late, down): (Vec<ServerId>, Vec<ServerId>) = replicas
                .iter()
                .copied()
                .filter(|r| !view.current(*r, chunk))
                .partition(|r| !self.engine.recently_down(*r));
            let Some((&primary, others)) = current.split_first() else {
                return Err(IoError::Io(format!(
                    "no in-sync replica of chunk {chunk} is reachable"
                )));
            };
            // A write with one copy to make needs no order.
            let hold = (current.len() > 1 || !late.is_empty()).then(|| holds.sent_to(primary));
            let mut outcome = Outcome::default();
            let first = self
                .send_change(
                    primary,
                    head,
                    offset,
                    change.clone(),
                    fua,
                    down.clone(),
                    view.epoch,
                    hold,
                    0,
                )
                .await;
            outcome.add(&view, primary, first)?;
            if outcome.acked.len() == 1 {
                // The others apply it as the primary's change: with its generation.
                let generation = outcome.generation;
                let sends = others.iter().map(|r| {
                    let (change, down) = (change.clone(), down.clone());
                    let epoch = view.epoch;
                    self.send_change(*r, head, offset, change, fua, down, epoch, None, generation)
                });
                for (r, res) in others.iter().zip(join_all(sends).await) {
                    outcome.add(&view, *r, res)?;
                }
            }
            if !outcome.failed.is_empty() {
                for f in &outcome.failed {
                    if let Err(e) = self.replica_failed(*f).await {
                        let mut took = taken.takers(head, &outcome.acked);
                        if !outcome.full.contains(f) && self.may_still_apply(*f) {
                            // It did not answer in time, and may still apply the change: then
                            // its copy too holds a write the others lack.
                            took.push(*f);
                            self.fence_lagging(&view, &late).await;
                        }
                        self.distrust(&took, head, offset, view.epoch).await;
                        if outcome.full.contains(f) {
                            return Err(IoError::NoSpace);
                        }
                        return Err(e);
                    }
                }
                // Those that took it record the failed ones as missing it in `head`, now: the
                // next attempt may write to a newer head (a snapshot committed meanwhile), and
                // its marks would name that layer, not this one, whose copies then differ.
                let marks = self
                    .record_marks_at(&outcome.acked, head, offset, &outcome.failed, view.epoch)
                    .await;
                if let Some(e) = marks.failed {
                    if !marks.by_any {
                        // The failed replicas are stale, but nothing says they lack this
                        // chunk: the copies of those that took it are replaced instead.
                        self.distrust(
                            &taken.takers(head, &outcome.acked),
                            head,
                            offset,
                            view.epoch,
                        )
                        .await;
                    }
                    return Err(IoError::Io(format!("could not record a missed write: {e}")));
                }
                if marks.rerouted.is_some() {
                    // A failed one is being declared in sync again, or is by now (see
                    // `crate::seal`): the next attempt, by the new view, writes to it.
                    self.engine.wait_change(Duration::from_millis(20)).await;
                }
                continue; // again, now with the failed replicas recorded as missing it
            }
            if !outcome.fenced.is_empty() {
                // A snapshot froze `head` at some replicas after others took the change into
                // it: their copies of the snapshot now hold a write made after it.
                let took = taken.takers(head, &outcome.acked);
                let kept = others_than(&outcome.fenced, &took);
                self.missed_by(&took, &kept, head, offset, view.epoch)
                    .await?;
                // Settled: the takers' copies of `head` become the fenced ones'.
                taken = Taken::default();
            }
            if !outcome.refused.is_empty() {
                // The fenced ones are recorded above; the others may refuse again in a newer
                // head.
                if outcome.fenced.is_empty() {
                    taken.add(head, &outcome.acked);
                }
                let past = Instant::now() > deadline;
                if past && outcome.fenced.is_empty() {
                    // Those that took it now differ from those that did not.
                    let took = taken.takers(head, &outcome.acked);
                    let lack = others_than(&outcome.refused, &took);
                    self.missed_by(&lack, &took, head, offset, view.epoch)
                        .await?;
                }
                if past {
                    // (With fenced ones, the copies were settled above.)
                    return Err(IoError::Io(format!(
                        "the replicas of chunk {chunk} did not accept head layer {head} within {RETRY_WINDOW:?}"
                    )));
                }
                self.engine.wait_change(Duration::from_millis(20)).await;
                continue;
            }
            let reroute = Instant::now() < deadline;
            let mut rerouted = false;
            if !late.is_empty() {
                crate::failpoint::pause("gateway::before_lagging", &view.name).await;
            }
            // Those that took it, or are recorded as missing it (by the current ones).
            let mut took = outcome.acked.clone();
            for s in late {
                let (change, epoch, generation) = (change.clone(), view.epoch, outcome.generation);
                let applied = self
                    .write_lagging(
                        s, &current, head, offset, change, fua, epoch, generation, reroute,
                    )
                    .await?;
                if applied {
                    took.push(s);
                } else {
                    rerouted = true;
                }
            }
            if rerouted {
                taken.add(head, &took);
                self.engine.wait_change(Duration::from_millis(20)).await;
                continue;
            }
            return Ok(());
        }
    }

    /// Applies `change` to `[offset, offset+len)` on every replica, holding the write gate.
    async fn change(
        &self,
        offset: u64,
        len: u64,
        change: Change,
        fua: bool,
    ) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError::ReadOnly);
        }
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| {
                IoError::InvalidArgument(format!(
                    "range offset {offset} length {len} is outside the volume of {} bytes",
                    self.size
                ))
            })?;
        let _gate = self.gate.read().await;
        let mut parts = Vec::new();
        for (_, at, n) in pieces(offset, end - offset) {
            let part = match &change {
                Change::Write(data) => {
                    let s = (at - offset) as usize;
                    Change::Write(data.slice(s..s + n as usize))
                }
                Change::Zero(_) => Change::Zero(n),
            };
            parts.push(self.change_piece(at, part, fua));
        }
        join_all(parts).await.into_iter().collect()
    }

    /// The replicas to read `chunk` from, in the order to try them (this server first, servers
    /// seen down lately last), and the current replicas left out because they may have lost
    /// writes to the chunk when their connection dropped ([`Link::lost`]): their copy may be
    /// older than what this server's gateways acknowledged.
    fn read_order(&self, view: &VolumeView, chunk: u64) -> (Vec<ServerId>, Vec<ServerId>) {
        let me = self.engine.me();
        let links = self.links.lock();
        let (mut order, suspect): (Vec<ServerId>, Vec<ServerId>) = view
            .replicas_of(chunk)
            .into_iter()
            .filter(|r| view.current(*r, chunk))
            .partition(|r| links.get(r).is_none_or(|l| !l.may_have_lost(chunk)));
        drop(links);
        order.sort_by_key(|r| (*r != me, self.engine.recently_down(*r)));
        (order, suspect)
    }

    /// Reads one chunk's piece from an in-sync replica.
    async fn read_piece(&self, offset: u64, len: u64) -> Result<Bytes, IoError> {
        let chunk = offset / CHUNK_SIZE;
        let deadline = Instant::now() + RETRY_WINDOW;
        loop {
            let me = self.engine.me();
            let (order, suspect) = self.read_order(&*self.view()?, chunk);
            if order.is_empty() && !suspect.is_empty() {
                // Only replicas that may have lost writes are left: have the loss recorded now,
                // as the next flush would, instead of failing every read until then. They
                // become stale; or, as the only current copy, they are read all the same (what
                // they hold is all there is) and the loss fails the next flush instead.
                for s in suspect {
                    if !self.sole_loss(s).await? {
                        self.record_loss(s).await?;
                    }
                }
                continue;
            }
            let mut last = String::from("no in-sync replica");
            let mut not_ready = false;
            for r in order {
                let res = if r == me {
                    replica::read(&self.engine, self.volume, self.layer, offset, len as u32).await
                } else {
                    let req = Request::Read {
                        volume: self.volume,
                        layer: self.layer,
                        offset,
                        len: len as u32,
                    };
                    match self.call_for(r, Some(chunk), req).await {
                        Ok(Response::Data(d)) if d.len() as u64 == len => Ok(d),
                        Ok(other) => Err(ReplicaError::Io(format!("unexpected answer {other:?}"))),
                        Err(e) => Err(e),
                    }
                };
                match res {
                    Ok(d) => return Ok(d),
                    Err(ReplicaError::NotReady(m)) => {
                        not_ready = true;
                        last = m;
                    }
                    Err(ReplicaError::Io(m)) => last = m,
                    Err(e) => return Err(io(e)),
                }
            }
            if !not_ready || Instant::now() > deadline {
                return Err(IoError::Io(format!(
                    "no replica of chunk {chunk} could be read: {last}"
                )));
            }
            self.engine.wait_change(Duration::from_millis(20)).await;
        }
    }

    /// Flushes every replica written since the last flush, and this server's copy.
    async fn flush_all(&self) -> Result<(), IoError> {
        type Written = Vec<((LayerId, u64), u64)>;
        let written: Vec<(ServerId, Written)> = self
            .links
            .lock()
            .iter_mut()
            .filter(|(_, l)| !l.unflushed.is_empty() || !l.lost.is_empty())
            .map(|(s, l)| (*s, l.unflushed.iter().map(|(k, n)| (*k, *n)).collect()))
            .collect();
        let volume = self.volume;
        let flushes = written
            .iter()
            .map(|(s, _)| async move { (*s, self.call(*s, Request::Flush { volume }).await) });
        let local = replica::flush(&self.engine, volume);
        let (results, local) = tokio::join!(join_all(flushes), local);
        local.map_err(io)?;
        for ((server, chunks), (_, res)) in written.iter().zip(results) {
            if !self.view()?.holds(*server) {
                // A migration took the server out of the layout after these writes: the new
                // layout's replicas got them too, or copies of them, under the final barrier.
                self.links.lock().remove(server);
                continue;
            }
            match res {
                Ok(_) => {
                    let lost = match self.links.lock().get_mut(server) {
                        Some(l) => {
                            // Writes numbered after the ones collected are not covered.
                            for (c, n) in chunks {
                                if l.unflushed.get(c) == Some(n) {
                                    l.unflushed.remove(c);
                                }
                            }
                            l.forget_clean();
                            !l.lost.is_empty()
                        }
                        None => false,
                    };
                    // An earlier connection dropped (some other call noticed): what it carried
                    // is handled before this flush is acknowledged.
                    if lost {
                        self.lost_writes(*server).await?;
                    }
                }
                Err(ReplicaError::Io(e)) => {
                    tracing::warn!(volume = %volume, server = %server, error = %e, "replica flush failed");
                    self.lost_writes(*server).await?;
                }
                Err(e) => return Err(io(e)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BlockDevice for GatewayDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        let started = Instant::now();
        let result = async {
            let parts = pieces(offset, u64::from(len)).map(|(_, at, n)| self.read_piece(at, n));
            let mut buf = BytesMut::with_capacity(len as usize);
            for part in join_all(parts).await {
                buf.extend_from_slice(&part?);
            }
            Ok(buf.freeze())
        }
        .await;
        self.metrics
            .record(Op::Read, u64::from(len), started, &result);
        result
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        let started = Instant::now();
        let len = data.len() as u64;
        let result = self.change(offset, len, Change::Write(data), fua).await;
        self.metrics.record(Op::Write, len, started, &result);
        result
    }

    async fn flush(&self) -> Result<(), IoError> {
        if self.read_only {
            return Ok(());
        }
        let started = Instant::now();
        let mut result = self.flush_all().await;
        let losses = self.links.losses.load(Ordering::SeqCst);
        if self.reported.swap(losses, Ordering::SeqCst) < losses && result.is_ok() {
            // Another export found the loss first: it may have taken writes of this one too.
            result = Err(IoError::Io(
                "a replica that was the only current copy of some chunks lost unflushed writes; \
                 writes made since the last successful flush may be lost"
                    .into(),
            ));
        }
        self.metrics.record(Op::Flush, 0, started, &result);
        result
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), IoError> {
        let started = Instant::now();
        let n = u64::from(len);
        let result = self.change(offset, n, Change::Zero(n), false).await;
        self.metrics.record(Op::Trim, n, started, &result);
        result
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), IoError> {
        let started = Instant::now();
        let n = u64::from(len);
        let result = if no_hole {
            // The range must stay allocated: zero blocks are written like data (a trim would
            // leave holes), a chunk at a time from one buffer of zeroes.
            let zeroes = Bytes::from(vec![0u8; n.min(CHUNK_SIZE) as usize]);
            let mut result = Ok(());
            for (_, at, piece) in pieces(offset, n) {
                let data = Change::Write(zeroes.slice(..piece as usize));
                result = self.change(at, piece, data, fua).await;
                if result.is_err() {
                    break;
                }
            }
            result
        } else {
            self.change(offset, n, Change::Zero(n), fua).await
        };
        self.metrics.record(Op::WriteZeroes, n, started, &result);
        result
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        let started = Instant::now();
        let result = self.allocation(offset, u64::from(len)).await;
        self.metrics.record(Op::BlockStatus, 0, started, &result);
        result
    }
}

impl GatewayDevice {
    /// Allocation of `[offset, offset+len)`, chunk by chunk from an in-sync replica: this
    /// server's copy first, else another's over the wire. A chunk that no replica describes is
    /// reported as data: block status is advisory, and data is always a correct answer.
    async fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, IoError> {
        let mut out: Vec<Extent> = Vec::new();
        for (chunk, at, n) in pieces(offset, len) {
            let runs = self.chunk_allocation(chunk, at, n as u32).await?;
            for r in runs {
                let e = Extent {
                    len: r.len,
                    hole: r.kind != ExtentKind::Data,
                    zero: r.kind != ExtentKind::Data,
                };
                match out.last_mut() {
                    Some(l) if l.hole == e.hole && l.zero == e.zero => l.len += e.len,
                    _ => out.push(e),
                }
            }
        }
        Ok(out)
    }

    /// The runs of `[offset, offset+len)` within one chunk (see [`GatewayDevice::allocation`]).
    async fn chunk_allocation(
        &self,
        chunk: u64,
        offset: u64,
        len: u32,
    ) -> Result<Vec<Run>, IoError> {
        let me = self.engine.me();
        for r in self.read_order(&*self.view()?, chunk).0 {
            let res = if r == me {
                replica::allocation(&self.engine, self.volume, self.layer, offset, len).await
            } else {
                let req = Request::Allocation {
                    volume: self.volume,
                    layer: self.layer,
                    offset,
                    len,
                };
                match self.call_for(r, Some(chunk), req).await {
                    Ok(Response::Allocation(runs))
                        if runs.iter().map(|r| u64::from(r.len)).sum::<u64>() == u64::from(len) =>
                    {
                        Ok(runs)
                    }
                    Ok(other) => Err(ReplicaError::Io(format!("unexpected answer {other:?}"))),
                    Err(e) => Err(e),
                }
            };
            match res {
                Ok(runs) => return Ok(runs),
                Err(e @ (ReplicaError::OutOfRange(_) | ReplicaError::BadRequest(_))) => {
                    return Err(io(e))
                }
                Err(e) => {
                    tracing::debug!(server = %r, chunk, error = %e, "block status from a replica failed");
                }
            }
        }
        Ok(vec![Run {
            len,
            kind: ExtentKind::Data,
        }])
    }
}

/// Whether `server` is a current replica of `chunk` in `view`.
fn current_replica(view: &VolumeView, server: ServerId, chunk: u64) -> bool {
    view.current(server, chunk) && view.replicas_of(chunk).contains(&server)
}

#[cfg(test)]
mod tests {
    use super::pieces;
    use strata_types::CHUNK_SIZE;

    #[test]
    fn pieces_split_at_chunk_boundaries() {
        let p: Vec<_> = pieces(CHUNK_SIZE - 512, 1024 + CHUNK_SIZE).collect();
        assert_eq!(
            p,
            vec![
                (0, CHUNK_SIZE - 512, 512),
                (1, CHUNK_SIZE, CHUNK_SIZE),
                (2, 2 * CHUNK_SIZE, 512)
            ]
        );
        assert_eq!(pieces(5, 0).count(), 0);
    }
}
