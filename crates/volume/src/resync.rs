//! Resync: copying to a returned replica exactly the chunks it missed.
//!
//! Every server runs [`run`]. For each volume with stale replicas, it walks the missed-chunk
//! marks in its own store; for a stale server that answers, it copies each marked chunk of
//! each marked layer and of every layer above it (the stale server's copies of those were
//! written on top of its out-of-date one; a layer merged away since is replaced by every layer
//! of the stack) from its store to the stale server's, then clears the mark — only if its generation did not change
//! meanwhile (a write the stale server did not take records it again). Each copy holds the
//! chunk's lock on the copying server, which writes take while a replica lags, and gateways
//! write to a lagging replica only after the current ones: a write reaches it after the copy
//! or is in the copied image. So the writes it takes need no marks, and the copy converges
//! while clients keep writing. When no server holds marks for it any more, the replica is
//! marked in sync in the management group.
//!
//! A server may also hold marks for *itself*: its copy of a chunk took a write that failed on
//! the other replicas (it could not reach them, nor a quorum to mark them stale). It then marks
//! itself stale and has an in-sync replica record those chunks as missed by it, so they are
//! copied back like any other, and the failed write, never acknowledged, does not linger in
//! one copy only.
//!
//! While a volume migrates, the servers that gain a chunk are repaired the same way: the
//! current replicas hold marks for them (see [`crate::migrate`]), and this loop copies those
//! chunks, every layer of them; only a stale server is ever marked in sync by it.
//!
//! Marks nobody needs any more (for servers in sync that gain nothing, stragglers recorded
//! just as a resync finished, or servers that left the layout) are dropped after they have
//! stayed unchanged for one pass. A stale server copies nothing to others: its data may be
//! out of date, and the in-sync replicas hold the same marks.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use strata_store::MissedChunk;
use strata_types::{LayerId, ServerId, VolumeId, CHUNK_SIZE};
use strata_wire::{Request, Response};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::replica::ReplicaError;
use crate::view::VolumeView;

/// How often the resync loop looks for work when nothing changes.
const PASS_EVERY: Duration = Duration::from_millis(500);
/// How long one copy request may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(30);

/// Progress of the resync of one stale server of a volume, as seen by one source server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Marks still to copy.
    pub remaining: u64,
    /// The most marks seen since the server became stale (the amount to copy at the start).
    pub total: u64,
    /// Chunk-layers copied so far.
    pub copied: u64,
}

/// Resync progress kept by the engine, by (volume, stale server).
#[derive(Default)]
pub struct Tracker {
    progress: parking_lot::Mutex<HashMap<(VolumeId, ServerId), Progress>>,
}

impl Tracker {
    /// Progress towards `server` for `volume` on this server.
    pub fn get(&self, volume: VolumeId, server: ServerId) -> Progress {
        self.progress
            .lock()
            .get(&(volume, server))
            .copied()
            .unwrap_or_default()
    }

    fn set_remaining(&self, volume: VolumeId, server: ServerId, remaining: u64) {
        let mut p = self.progress.lock();
        let e = p.entry((volume, server)).or_default();
        e.remaining = remaining;
        e.total = e.total.max(remaining + e.copied);
    }

    fn copied(&self, volume: VolumeId, server: ServerId) {
        let mut p = self.progress.lock();
        let e = p.entry((volume, server)).or_default();
        e.copied += 1;
        e.remaining = e.remaining.saturating_sub(1);
    }

    fn forget(&self, volume: VolumeId, server: ServerId) {
        self.progress.lock().remove(&(volume, server));
    }
}

/// Runs resync passes until `shutdown`.
pub async fn run(engine: Arc<Engine>, shutdown: CancellationToken) {
    let mut settled: HashSet<(VolumeId, MissedChunk)> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PASS_EVERY) => {}
        }
        let topology = engine.topology();
        let mut seen = HashSet::new();
        for view in topology.volumes.values() {
            if !view.holds(engine.me()) {
                continue;
            }
            if let Err(e) = pass(&engine, view, &settled, &mut seen).await {
                tracing::warn!(volume = %view.name, error = %e, "resync pass failed; retrying");
            }
        }
        settled = seen;
    }
}

/// Missed marks of `volume` in this server's store.
async fn marks(engine: &Arc<Engine>, volume: VolumeId) -> Result<Vec<MissedChunk>, String> {
    let store = engine.store().clone();
    tokio::task::spawn_blocking(move || store.missed(volume))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// One pass over one volume. `settled` holds the in-sync servers' marks seen unchanged in the
/// previous pass (dropped now); `seen` collects this pass's.
async fn pass(
    engine: &Arc<Engine>,
    view: &VolumeView,
    settled: &HashSet<(VolumeId, MissedChunk)>,
    seen: &mut HashSet<(VolumeId, MissedChunk)>,
) -> Result<(), String> {
    let all = marks(engine, view.id).await?;
    let me = engine.me();
    let mut by_server: HashMap<ServerId, Vec<MissedChunk>> = HashMap::new();
    for m in all {
        let needed = m.server == me
            || (view.holds(m.server)
                && (!view.in_sync(m.server) || view.gaining(m.chunk).contains(&m.server)));
        if !needed {
            if engine.is_marking_stale(view.id, m.server) {
                // Recorded for a replica this server is having marked stale: needed soon.
                continue;
            }
            if settled.contains(&(view.id, m)) {
                tracing::info!(volume = %view.name, server = %m.server, layer = %m.layer, chunk = m.chunk, "resync: a mark nobody needs is dropped (its server is in sync)");
                clear(engine, view.id, m).await?;
            } else {
                seen.insert((view.id, m));
            }
        } else {
            by_server.entry(m.server).or_default().push(m);
        }
    }
    let own = by_server.remove(&me);
    if let Some(own) = own.filter(|_| !engine.is_keeping_own_version(view.id)) {
        // Read again now that no keeper holds them: one may have recorded and cleared own marks
        // since they were read (a mark recorded again has a new generation).
        let now = marks(engine, view.id).await?;
        let own: Vec<MissedChunk> = own.into_iter().filter(|m| now.contains(m)).collect();
        if let Err(e) = repair_own(engine, view, own).await {
            // Typically refused because this server is the only in-sync copy of some chunk
            // (another replica is stale): the copies to the stale servers below go on, and once
            // they are in sync again a later pass repairs this server's own marks.
            tracing::info!(volume = %view.name, error = %e, "resync: this server's own marks wait for the next pass");
        }
    }
    if !view.in_sync(me) {
        return Ok(());
    }
    let mut targets: Vec<ServerId> = view.stale.clone();
    let gaining: Vec<ServerId> = by_server
        .keys()
        .filter(|s| !view.stale.contains(s))
        .copied()
        .collect();
    targets.extend(gaining);
    for server in targets {
        if server == me {
            continue;
        }
        let todo = by_server.remove(&server).unwrap_or_default();
        engine
            .resync
            .set_remaining(view.id, server, todo.len() as u64);
        if !answers(engine, server).await {
            tracing::debug!(volume = %view.name, %server, "resync: server does not answer");
            continue;
        }
        tracing::debug!(volume = %view.name, %server, marks = todo.len(), "resync: copying");
        let mut copies = Copies::default();
        for mark in Copies::order(view, todo) {
            if let Err(e) = copies.copy(engine, view, &mark).await {
                // Refused (its layer is being merged, the receiver restarted or stopped
                // answering): the marks stay for the next pass, and the other servers of the
                // volume are still copied to in this one.
                tracing::info!(volume = %view.name, %server, chunk = mark.chunk, error = %e, "resync: copy failed; retried on the next pass");
                break;
            }
            clear(engine, view.id, mark).await?;
            engine.resync.copied(view.id, server);
        }
        if !view.in_sync(server) {
            finish_if_done(engine, view, server).await?;
        }
    }
    Ok(())
}

/// Copies now every chunk this server holds marks for towards one of `servers`, and returns
/// how many such marks are left (some may have been recorded again meanwhile). The end of a
/// migration runs this while the gateways hold their writes, so nothing is left then.
pub async fn drain(
    engine: &Arc<Engine>,
    view: &VolumeView,
    servers: &[ServerId],
) -> Result<u64, String> {
    if !view.in_sync(engine.me()) {
        return Ok(0); // a stale server's marks are not copied; the in-sync ones hold the same
    }
    // A mark for this server itself is repaired by `repair_own`, not copied here (a copy to
    // itself would change nothing); until then it counts as left.
    let todo = marks(engine, view.id)
        .await?
        .into_iter()
        .filter(|m| servers.contains(&m.server) && m.server != engine.me())
        .collect();
    let mut copies = Copies::default();
    for mark in Copies::order(view, todo) {
        copies.copy(engine, view, &mark).await?;
        clear(engine, view.id, mark).await?;
        engine.resync.copied(view.id, mark.server);
    }
    let left = marks(engine, view.id).await?;
    Ok(left.iter().filter(|m| servers.contains(&m.server)).count() as u64)
}

/// This server's own marks: its copy of those chunks is suspect (it took writes that failed
/// elsewhere, or it stopped uncleanly with writes not flushed). It marks itself stale (so
/// nobody reads from it meanwhile), then has an in-sync replica of each chunk record it as
/// missed by this server (a marks-only write, for every layer of the stack), so that replica
/// copies it here under its chunk lock like any other mark. A chunk with no other current
/// replica (the others are stale: they stopped too) keeps this server's version instead: the
/// mark becomes marks for the other replicas, which resync copies it to.
async fn repair_own(
    engine: &Arc<Engine>,
    view: &VolumeView,
    own: Vec<MissedChunk>,
) -> Result<(), String> {
    let me = engine.me();
    if view.in_sync(me) {
        // Where no other replica of the chunk is current, this copy is the one the others
        // will be made the same as: its suspicion becomes marks for them, for every layer of
        // the chunk (as a copy back takes every layer): the layer the suspicion names need
        // not be the only one where the copies differ.
        let (alone, shared): (Vec<MissedChunk>, Vec<MissedChunk>) =
            own.into_iter().partition(|m| {
                !view
                    .replicas_of(m.chunk)
                    .iter()
                    .any(|r| *r != me && view.current(*r, m.chunk))
            });
        let mut others: HashMap<ServerId, Vec<(LayerId, u64)>> = HashMap::new();
        let chunks: BTreeSet<u64> = alone.iter().map(|m| m.chunk).collect();
        for chunk in chunks {
            for r in view.replicas_of(chunk).into_iter().filter(|r| *r != me) {
                let marks = others.entry(r).or_default();
                marks.extend(view.layers.iter().map(|layer| (*layer, chunk)));
            }
        }
        let _marking: Vec<_> = others
            .keys()
            .map(|server| engine.marking_stale(view.id, *server))
            .collect();
        for (server, chunks) in &others {
            if !engine.record_missed(view.id, *server, chunks.clone()).await {
                return Err(format!(
                    "recording chunks server {server} must copy from here"
                ));
            }
        }
        // The marks make them take this version only while they stay stale: one marked in
        // sync meanwhile (its resync ended by another source that asked this server for marks
        // before they were recorded) would drop them unused and keep its own version. So each
        // is marked stale again, after the marks are durable (a no-op for one still stale);
        // if the group refuses, this copy is not alone any more and is repaired instead.
        for server in others.keys() {
            engine
                .control()
                .mark_stale(view.id, *server)
                .await
                .map_err(|e| {
                    format!("server {server} was to take this copy and cannot be marked stale: {e}")
                })?;
        }
        for m in alone {
            tracing::info!(volume = %view.name, chunk = m.chunk, "resync: no other current replica holds this suspect chunk; this copy is given to the stale ones");
            clear(engine, view.id, m).await?;
        }
        if shared.is_empty() {
            return Ok(());
        }
        // The next pass sees this server stale and does the rest.
        return engine.mark_stale(view.id, me).await;
    }
    for mark in own {
        let Some(source) = view
            .replicas_of(mark.chunk)
            .into_iter()
            .find(|r| *r != me && view.current(*r, mark.chunk))
        else {
            continue;
        };
        for layer in &view.layers {
            let record =
                crate::replica::marks_request(view.id, *layer, mark.chunk, vec![me], view.epoch);
            engine
                .ask(source, record, COPY_TIMEOUT)
                .await
                .map_err(|e| {
                    format!(
                        "asking server {source} to copy chunk {} back here: {e}",
                        mark.chunk
                    )
                })?;
        }
        tracing::info!(volume = %view.name, chunk = mark.chunk, %source, "resync: this suspect copy is copied back from a current replica");
        clear(engine, view.id, mark).await?;
    }
    Ok(())
}

async fn answers(engine: &Arc<Engine>, server: ServerId) -> bool {
    matches!(
        engine
            .call(server, Request::Ping, Duration::from_millis(500))
            .await,
        Ok(Response::Pong { .. })
    )
}

/// The copies one pass makes. The copy of a mark takes its layer and every layer above it
/// (see [`layers_from`]), so a mark whose layer an earlier copy of the pass took, to the same
/// server, needs no copy of its own: that copy was made after the mark was read, and a write
/// the server missed since records the mark again (with a new generation, which its clearing
/// then keeps).
#[derive(Default)]
struct Copies {
    /// The layers copied so far, per receiving server and chunk.
    copied: HashMap<(ServerId, u64), HashSet<LayerId>>,
}

impl Copies {
    /// `marks` in the order to copy them: by server and chunk, the lowest layer (in `view`)
    /// first, so that the copy of the first takes the layers of the others.
    fn order(view: &VolumeView, mut marks: Vec<MissedChunk>) -> Vec<MissedChunk> {
        marks.sort_by_key(|m| (m.server, m.chunk, first_layer(view, m)));
        marks
    }

    /// Copies the layers of `mark` to its server, unless an earlier copy took its layer.
    async fn copy(
        &mut self,
        engine: &Arc<Engine>,
        view: &VolumeView,
        mark: &MissedChunk,
    ) -> Result<(), String> {
        let key = (mark.server, mark.chunk);
        if self
            .copied
            .get(&key)
            .is_some_and(|layers| layers.contains(&mark.layer))
        {
            return Ok(());
        }
        let layers = copy_mark(engine, view, mark).await?;
        // Its own layer too: merged away, it is in the layers copied.
        let copied = self.copied.entry(key).or_default();
        copied.extend(layers);
        copied.insert(mark.layer);
        Ok(())
    }
}

/// The stack position of the lowest layer a copy of `mark` takes: its layer's, or the
/// bottom's if its layer was merged away (its blocks are in some layer of the stack now).
fn first_layer(view: &VolumeView, mark: &MissedChunk) -> usize {
    view.layers
        .iter()
        .position(|l| *l == mark.layer)
        .unwrap_or(0)
}

/// The layers a copy of `mark` takes, bottom first: its own and every layer above it. The
/// receiver's copies of the layers above were written on top of its out-of-date copy of this
/// one (a write to part of a block there keeps the rest of the block from below, and a trim
/// there drops a block or marks it zero depending on what lies below), so they may differ
/// from this server's although they took the same writes.
fn layers_from<'v>(view: &'v VolumeView, mark: &MissedChunk) -> &'v [LayerId] {
    &view.layers[first_layer(view, mark)..]
}

/// Copies the chunk of one mark from this server to the mark's server, under the chunk's lock
/// (which writes take while a replica lags): a write reaches the lagging server after the copy
/// or is in the copied image, so the writes it takes need no marks. The lock covers only the
/// reading and the sending of the image; the copy is made durable after the lock is let go
/// (writes to the chunk wait for the copy, not for a sync of the receiving server), and
/// before the caller clears the mark. A receiver that restarted between the copy and its
/// flush lost the copy although the flush succeeds, so its run is compared before and after:
/// the mark stays when it changed. Returns the layers copied.
async fn copy_mark(
    engine: &Arc<Engine>,
    view: &VolumeView,
    mark: &MissedChunk,
) -> Result<Vec<LayerId>, String> {
    crate::failpoint::pause("resync::before_copy", &view.name).await;
    let to = mark.server;
    let run = run_of(engine, to).await?;
    // A write routed by an earlier epoch that is still on its way into this server's copy
    // lands before the image is read, or is refused after it, as at the receiver: else it
    // could land here after the copy and leave the two copies different. (Before the chunk's
    // lock: a write waits for that while it holds its epoch's admission.)
    let epoch = engine.epoch_of(view);
    let admitted = engine.epochs.admit(view.id, epoch, epoch).await;
    drop(admitted.map_err(|e| format!("reading chunk {} to copy it: {e}", mark.chunk))?);
    let copied = {
        let _copy = engine.lock_chunk(view.id, mark.chunk).await;
        // The stack as it is now, under the lock: a snapshot taken since the pass began put
        // a layer above, which the receiver took writes into too.
        let now = engine
            .view(view.id)
            .ok_or_else(|| format!("volume {} was deleted", view.name))?;
        copy_between(engine, &now, mark, engine.me(), to).await?;
        layers_from(&now, mark).to_vec()
    };
    engine
        .ask(to, Request::Flush { volume: view.id }, COPY_TIMEOUT)
        .await
        .map_err(|e| format!("making the copy on server {to} durable: {e}"))?;
    if run_of(engine, to).await? != run {
        return Err(format!(
            "server {to} restarted while chunk {} was copied to it; it is copied again",
            mark.chunk
        ));
    }
    Ok(copied)
}

/// The run of server `server` (see [`Engine::run`]).
async fn run_of(engine: &Arc<Engine>, server: ServerId) -> Result<u64, String> {
    match engine.ask(server, Request::Ping, COPY_TIMEOUT).await {
        Ok(Response::Pong { run }) => Ok(run),
        Ok(other) => Err(format!("server {server} answered a ping with {other:?}")),
        Err(e) => Err(format!("asking server {server} whether it restarted: {e}")),
    }
}

/// Copies the chunk of `mark` (each layer it concerns, see [`layers_from`]) from server `from`
/// to server `to`; the copy is durable on `to` after its next flush.
async fn copy_between(
    engine: &Arc<Engine>,
    view: &VolumeView,
    mark: &MissedChunk,
    from: ServerId,
    to: ServerId,
) -> Result<(), String> {
    let epoch = engine.epoch_of(view);
    for &layer in layers_from(view, mark) {
        let got = engine
            .ask(
                from,
                Request::GetChunk {
                    volume: view.id,
                    layer,
                    chunk: mark.chunk,
                },
                COPY_TIMEOUT,
            )
            .await;
        let (maps, blocks) = match got {
            Ok(Response::Chunk { maps, blocks }) => (maps, blocks),
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            // The layer was deleted under us: the next pass sees the new stack.
            Err(ReplicaError::NotReady(m)) => return Err(m),
            Err(e) => return Err(e.to_string()),
        };
        let bytes = blocks.len() as u64;
        tracing::debug!(volume = %view.name, chunk = mark.chunk, %layer, %from, %to, generation = maps.generation, "resync: copying a chunk's layer");
        let put = Request::PutChunk {
            volume: view.id,
            layer,
            chunk: mark.chunk,
            durable: false,
            epoch,
            maps,
            blocks,
        };
        engine.ask(to, put, COPY_TIMEOUT).await.map_err(|e| {
            format!(
                "copying chunk {} (offset {}) from server {from} to server {to}: {e}",
                mark.chunk,
                mark.chunk * CHUNK_SIZE,
            )
        })?;
        metrics::counter!("strata_resync_chunk_layers_total").increment(1);
        metrics::counter!("strata_resync_bytes_total").increment(bytes);
    }
    Ok(())
}

async fn clear(engine: &Arc<Engine>, volume: VolumeId, mark: MissedChunk) -> Result<(), String> {
    let store = engine.store().clone();
    tokio::task::spawn_blocking(move || store.clear_missed(volume, &mark))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Marks `server` in sync once no server of the layout holds marks for it.
async fn finish_if_done(
    engine: &Arc<Engine>,
    view: &VolumeView,
    server: ServerId,
) -> Result<(), String> {
    // Every in-sync server may hold marks for it, and it may hold marks for itself. Each seals
    // it at this view's epoch first: a change routed by it can no longer add a mark unseen
    // (see [`crate::seal`]).
    let mut holders: Vec<ServerId> = Vec::new();
    for h in view.layout.iter().chain(view.target.iter().flatten()) {
        if (*h == server || view.in_sync(*h)) && !holders.contains(h) {
            holders.push(*h);
        }
    }
    let mut sealed = Vec::new();
    let mut done = Ok(true);
    for holder in &holders {
        let left = if *holder == engine.me() {
            engine.seal_marks(view.id, server, view.epoch).await
        } else {
            let control = engine.control();
            control
                .seal_marks_at(*holder, view.id, server, view.epoch)
                .await
        };
        sealed.push(*holder);
        match left {
            Ok(0) => {}
            // Written again meanwhile, or that server is still copying.
            Ok(_) => {
                done = Ok(false);
                break;
            }
            Err(e) => {
                done = Err(e);
                break;
            }
        }
    }
    if matches!(done, Ok(true)) {
        done = declare_in_sync(engine, view, server).await;
    }
    if !matches!(done, Ok(true)) {
        // Not declared in sync after all: its marks are needed again (it may itself be asking
        // a holder to record one). A seal that cannot be lifted lapses.
        for holder in sealed {
            let lifted = if holder == engine.me() {
                engine.lift_seal(view.id, server, view.epoch).await;
                Ok(())
            } else {
                let control = engine.control();
                control
                    .lift_seal_at(holder, view.id, server, view.epoch)
                    .await
            };
            if let Err(e) = lifted {
                tracing::info!(volume = %view.name, %server, error = %e, "resync: a seal was not lifted; it lapses");
            }
        }
    }
    done.map(|_| ())
}

/// Declares `server` in sync for `view`'s volume once every holder has sealed it with no
/// marks left; whether the group took it.
async fn declare_in_sync(
    engine: &Arc<Engine>,
    view: &VolumeView,
    server: ServerId,
) -> Result<bool, String> {
    // Make this server's clears durable before declaring the replica current.
    let store = engine.store().clone();
    let volume = view.id;
    tokio::task::spawn_blocking(move || store.flush(volume))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    crate::failpoint::pause("resync::before_in_sync", &view.name).await;
    // Refused if the epoch moved (another source declared it in sync first, or the view
    // changed what the marks mean): the next pass looks again.
    if let Err(e) = engine
        .control()
        .mark_in_sync(view.id, server, view.epoch)
        .await
    {
        tracing::info!(volume = %view.name, %server, error = %e, "resync: not declared in sync; checked again on the next pass");
        return Ok(false);
    }
    engine.resync.forget(view.id, server);
    tracing::info!(volume = %view.name, %server, "replica resynced; in sync again");
    Ok(true)
}
