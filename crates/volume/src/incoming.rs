//! Writes this server took from other servers' gateways that their gateway has not flushed
//! yet, per wire connection ([`Incoming`]).
//!
//! A gateway keeps track of what it wrote to each replica and has not flushed, and when a
//! replica's connection drops it has the others record those chunks as missed by it. But if
//! the gateway itself dies before a flush, nobody keeps that record: its own copy (a gateway is
//! often a replica too) and any replica that crashed with it may lack writes that the surviving
//! replicas have (a power loss, or a SIGKILL, loses the store's unflushed map changes). So each
//! replica remembers, per incoming connection, the chunks written through it since the peer's
//! last flush. When that connection closes with some left and the peer turns out to have died
//! or restarted (it does not answer a ping, or answers with another run than when it wrote),
//! the replicas of each such chunk may hold it differently (the gateway died after a write
//! reached some of them, or before it reached a lagging replica, which it writes last), so
//! they agree on one version: the first current replica in placement order that answers keeps
//! its own; every other current replica that answers records the chunk as missed by itself (an
//! *own* mark, see [`crate::resync`]: its copy is replaced by a current replica's), and the
//! keeper records it as missed by every other replica — one that does not answer (it died with
//! the gateway, or is cut off), one that answers but may never have been sent the write, and
//! one that is not current — and marks them stale (a server a migration copies the chunk to
//! only gets the mark), so resync copies its version to them. If the group refuses that (the
//! other one is the only other in-sync copy of some chunk), the keeper's own mark, recorded
//! before it asked, has its copy replaced instead. A replica that lost unflushed writes in a crash of its
//! own names them itself when it starts again (the store's activity log, see
//! `strata_server`'s `distrust_own_copies`). A peer that is alive with the same run keeps its
//! own record of what the current replicas took (one it cannot deliver it sends again, see
//! [`crate::owed`]) — but not of the lagging replicas, which it writes last and with no mark:
//! the connection may have gone (the gateway cut off from here and from them) with a write to
//! them still to come. So every current replica that took the write records the lagging ones
//! as missing the chunk, whether the gateway is alive or not. The ping that tells a dead
//! gateway from a live one may also reach it over a link about to be cut.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use strata_types::{LayerId, ServerId, VolumeId, CHUNK_SIZE};
use strata_wire::{Request, Response};

use crate::engine::Engine;
use crate::view::VolumeView;

/// The unflushed writes of one incoming connection.
struct Conn {
    peer: ServerId,
    /// The peer's run when it wrote (learned in the background; `None` until then).
    run: Option<u64>,
    /// (volume, layer, chunk) → number of the last write to it.
    chunks: HashMap<(VolumeId, LayerId, u64), u64>,
}

/// The chunks of (volume, layer, chunk) that one peer wrote through a connection.
type Unflushed = Vec<(VolumeId, LayerId, u64)>;

/// The unflushed writes taken from other servers' gateways, per connection.
#[derive(Default)]
pub(crate) struct Incoming {
    conns: Mutex<HashMap<u64, Conn>>,
    /// Numbers the writes, so that a flush forgets only those it covered.
    writes: std::sync::atomic::AtomicU64,
}

impl Incoming {
    /// A write from `peer`'s gateway over `conn` to the chunk at `offset` of `layer` was
    /// applied; returns whether the connection is new, so its peer's run is to be learned
    /// ([`learn_run`]).
    pub(crate) fn wrote(
        &self,
        conn: u64,
        peer: ServerId,
        volume: VolumeId,
        layer: LayerId,
        offset: u64,
    ) -> bool {
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conns = self.conns.lock();
        let mut new = false;
        let c = conns.entry(conn).or_insert_with(|| {
            new = true;
            Conn {
                peer,
                run: None,
                chunks: HashMap::new(),
            }
        });
        c.chunks.insert((volume, layer, offset / CHUNK_SIZE), n);
        new
    }

    /// The number a flush starting now covers: writes numbered below it.
    pub(crate) fn flush_mark(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A flush of `volume` from `peer` that started at `mark` succeeded: its gateway flushed
    /// its own copy too, so the writes it covered are durable everywhere.
    pub(crate) fn flushed(&self, peer: ServerId, volume: VolumeId, mark: u64) {
        let mut conns = self.conns.lock();
        for c in conns.values_mut().filter(|c| c.peer == peer) {
            c.chunks.retain(|(v, _, _), n| *v != volume || *n >= mark);
        }
    }

    /// Connection `conn` closed: its peer, the peer's run when it wrote, and the chunks it
    /// wrote through it and did not flush (`None` if there are none).
    fn take(&self, conn: u64) -> Option<(ServerId, Option<u64>, Unflushed)> {
        let c = self.conns.lock().remove(&conn)?;
        (!c.chunks.is_empty()).then(|| (c.peer, c.run, c.chunks.into_keys().collect()))
    }
}

/// The run `peer` answers a ping with, if it answers within half a second. One try: a peer
/// that refuses the connection is down, and acting at once keeps a gateway that crashed from
/// serving its old copies when it comes back.
async fn run_of(engine: &Engine, peer: ServerId) -> Option<u64> {
    match engine
        .call(peer, Request::Ping, Duration::from_millis(500))
        .await
    {
        Ok(Response::Pong { run }) => Some(run),
        _ => None,
    }
}

/// Learns, in the background, the run of the peer that writes over `conn`.
pub(crate) fn learn_run(engine: &Arc<Engine>, conn: u64, peer: ServerId) {
    let learner = engine.clone();
    engine.spawn_background(async move {
        let engine = learner;
        let run = run_of(&engine, peer).await;
        let mut conns = engine.incoming.conns.lock();
        if let Some(c) = conns.get_mut(&conn) {
            c.run = run;
        }
    });
}

/// Handles the close of incoming connection `conn` (see the module doc), in the background:
/// the wire server calls this from a drop. The holds taken over it (this server is the
/// primary of their chunks) are released only once the other replicas of those chunks are
/// recorded as possibly differing ([`held_at_close`]).
pub(crate) fn closed(engine: &Arc<Engine>, conn: u64) {
    let held = engine.ranges.held_over(conn);
    if !held.is_empty() {
        let handler = engine.clone();
        engine.spawn_background(async move {
            held_at_close(&handler, held).await;
            handler.ranges.release_conn(conn);
        });
    }
    let Some((peer, run, chunks)) = engine.incoming.take(conn) else {
        return;
    };
    let handler = engine.clone();
    engine.spawn_background(async move {
        let engine = handler;
        let now = run_of(&engine, peer).await;
        // Alive, and not restarted: its gateway keeps its own record of what the replicas
        // took, except for lagging replicas, written last and with no mark: this connection
        // may have gone with a write to one still to come (the gateway may be cut off from
        // here and from it, and fail the write with no mark recorded anywhere).
        let alive = now.is_some() && now == run;
        tracing::debug!(gateway = %peer, chunks = chunks.len(), alive,
            "a gateway's connection closed with unflushed writes");
        let me = engine.me();
        // Per volume, where this server keeps its version: the (layer, chunk)s each other
        // replica may hold differently (`differ`; `gain` for servers a migration copies the
        // chunk to); and the (layer, chunk)s this server does not keep (`own`).
        let mut differ: HashMap<VolumeId, HashMap<ServerId, Vec<(LayerId, u64)>>> = HashMap::new();
        let mut gain: HashMap<VolumeId, HashMap<ServerId, Vec<(LayerId, u64)>>> = HashMap::new();
        let mut answers: HashMap<ServerId, bool> = HashMap::from([(peer, false), (me, true)]);
        let mut own: HashMap<VolumeId, Vec<(LayerId, u64)>> = HashMap::new();
        for (volume, layer, chunk) in chunks {
            let Some(view) = engine.view(volume) else {
                continue;
            };
            if !view.current(me, chunk) {
                continue;
            }
            let others = if alive {
                // Every current replica that took the write has the lagging ones copy it.
                view.replicas_of(chunk)
                    .into_iter()
                    .filter(|r| !view.current(*r, chunk))
                    .collect()
            } else {
                match kept_from(&engine, &view, chunk, &mut answers).await {
                    Some(others) => others,
                    None => {
                        own.entry(volume).or_default().push((layer, chunk));
                        continue;
                    }
                }
            };
            let gaining = view.gaining(chunk);
            for r in others {
                let to = if gaining.contains(&r) {
                    &mut gain
                } else {
                    &mut differ
                };
                let per = to.entry(volume).or_default();
                per.entry(r).or_default().push((layer, chunk));
            }
        }
        for (volume, chunks) in own {
            tracing::warn!(%volume, gateway = %peer, chunks = chunks.len(),
                "a gateway died with unflushed writes; another replica keeps its version of them");
            record_own(&engine, volume, chunks).await;
        }
        for (volume, servers) in differ {
            for (server, chunks) in servers {
                lost_with_gateway(&engine, volume, peer, server, chunks).await;
            }
        }
        mark_gaining(&engine, gain).await;
    });
}

/// A hold orders a write at its chunk's primary until every other replica took it. When the
/// connection it came over closes first, the gateway may still be sending the write to the
/// others (it is alive, only that link went) or may have left it queued at one (it died):
/// once the hold goes, an overlapping write of another gateway can pass it there, and that
/// replica would end up with the older write of the two while this one holds the newer. So
/// this server, the primary, keeps its version of each such chunk: every other replica is
/// recorded as missing it and is marked stale — a stale one has the routing epoch moved past
/// the one of the write, so that a copy made later is never overtaken by it — before the
/// holds are let go. A hold may outlive the write it ordered and a snapshot taken since, so
/// the write may be in any layer of the stack: every layer of the chunk is marked.
async fn held_at_close(engine: &Arc<Engine>, held: Vec<(VolumeId, u64)>) {
    let me = engine.me();
    let mut per: HashMap<VolumeId, HashMap<ServerId, Vec<(LayerId, u64)>>> = HashMap::new();
    let mut gain: HashMap<VolumeId, HashMap<ServerId, Vec<(LayerId, u64)>>> = HashMap::new();
    for (volume, chunk) in held {
        let Some(view) = engine.view(volume) else {
            continue;
        };
        let gaining = view.gaining(chunk);
        for r in view.replicas_of(chunk).into_iter().filter(|r| *r != me) {
            let to = if gaining.contains(&r) {
                &mut gain
            } else {
                &mut per
            };
            to.entry(volume)
                .or_default()
                .entry(r)
                .or_default()
                .extend(view.layers.iter().map(|layer| (*layer, chunk)));
        }
    }
    mark_gaining(engine, gain).await;
    for (volume, servers) in per {
        let view = engine.view(volume);
        for (server, chunks) in servers {
            tracing::info!(%volume, replica = %server, chunks = chunks.len(),
                "a connection closed while its writes were held in order here; a replica that may hold them in another order copies this version");
            let Some(view) = view.as_deref() else {
                continue;
            };
            if view.in_sync(server) {
                keep_this_version(engine, volume, server, chunks).await;
                continue;
            }
            if !engine.record_missed(volume, server, chunks).await {
                tracing::error!(%volume, %server, "could not record the writes a stale replica may hold in another order; run `strata volume verify --repair`");
                continue;
            }
            // Past this view's epoch, at least that of the held writes.
            if let Err(e) = engine.move_epoch_past(volume, server, view.epoch).await {
                tracing::warn!(%volume, replica = %server, error = %e, "could not move the routing epoch past writes a stale replica may still apply");
            }
        }
    }
}

/// Has the servers a migration copies chunks to take this server's version of them: they take
/// a chunk from its marks alone.
async fn mark_gaining(
    engine: &Arc<Engine>,
    gain: HashMap<VolumeId, HashMap<ServerId, Vec<(LayerId, u64)>>>,
) {
    for (volume, servers) in gain {
        for (server, chunks) in servers {
            if !engine.record_missed(volume, server, chunks).await {
                tracing::error!(%volume, %server, "could not record the writes a server gaining a chunk may lack; run `strata volume verify --repair` after the migration");
            }
        }
    }
}

/// With the gateway gone: the replicas of `chunk` that are to take this server's version of
/// it, or `None` if another keeps its own. The first current replica that answers keeps its
/// version, and has every other replica take it: one that did not answer (it died with the
/// gateway, or is cut off), one that answers (the gateway may have died before it sent it the
/// write) and one that is not current (the gateway writes to a lagging replica last). The
/// others that answer take it on their own too (own marks). `answers` remembers who answered.
async fn kept_from(
    engine: &Arc<Engine>,
    view: &VolumeView,
    chunk: u64,
    answers: &mut HashMap<ServerId, bool>,
) -> Option<Vec<ServerId>> {
    let mut keeper = None;
    let mut others = Vec::new();
    for r in view.replicas_of(chunk) {
        if keeper.is_none() && view.current(r, chunk) {
            let answered = match answers.get(&r) {
                Some(a) => *a,
                None => {
                    let a = run_of(engine, r).await.is_some();
                    answers.insert(r, a);
                    a
                }
            };
            if answered {
                keeper = Some(r);
                continue;
            }
        }
        others.push(r);
    }
    (keeper == Some(engine.me())).then_some(others)
}

/// Records `chunks` of `volume` as missed by this server itself: its copy of them is replaced
/// by another current replica's (see [`crate::resync`]).
async fn record_own(engine: &Arc<Engine>, volume: VolumeId, chunks: Vec<(LayerId, u64)>) {
    let n = chunks.len();
    if engine.record_missed(volume, engine.me(), chunks).await {
        tracing::warn!(%volume, chunks = n,
            "this copy of chunks another replica may hold differently is copied back from a current replica");
    } else {
        tracing::error!(%volume, "could not record that this copy may differ from another replica; run `strata volume verify --repair`");
    }
}

/// Has `server` copy `chunks` of `volume` from here again, as it may hold them differently
/// (it died with the gateway `peer`, or the gateway went before it sent it a write): see
/// [`keep_this_version`].
async fn lost_with_gateway(
    engine: &Arc<Engine>,
    volume: VolumeId,
    peer: ServerId,
    server: ServerId,
    chunks: Vec<(LayerId, u64)>,
) {
    tracing::warn!(%volume, gateway = %peer, replica = %server, chunks = chunks.len(),
        "a gateway's connection went with unflushed writes; a replica that may lack some copies them again");
    keep_this_version(engine, volume, server, chunks).await;
}

/// Has `server`, a current replica, copy `chunks` of `volume` from here. This server first
/// records its own copy of them as suspect (own marks), durably, then records them as missed by
/// `server` and marks it stale; once the group has, the own marks it added are cleared. So a
/// crash of this server at any step leaves a mark that makes the copies the same: while
/// `server` is still in sync, the own marks copy its version back here (and the marks for it,
/// needed by nobody, are dropped by resync); once it is stale, the marks for it give it this
/// version. If the group refuses (`server` is the only other in-sync copy of some chunk) or
/// cannot be reached, the marks stay, and resync settles them the same way.
async fn keep_this_version(
    engine: &Arc<Engine>,
    volume: VolumeId,
    server: ServerId,
    chunks: Vec<(LayerId, u64)>,
) {
    let _marking = engine.marking_stale(volume, server);
    tracing::info!(%volume, replica = %server, ?chunks, "this copy is kept: the replica is to take it");
    // A stale replica takes this version from its marks alone: no stale mark to wait for.
    let stale = engine.view(volume).is_some_and(|v| !v.in_sync(server));
    let own = if stale {
        Vec::new()
    } else {
        suspect_own(engine, volume, chunks.clone())
            .await
            .unwrap_or_default()
    };
    if !engine.record_missed(volume, server, chunks).await {
        tracing::error!(%volume, %server, "could not record the writes a replica may hold differently; this copy is copied back from it instead");
        return;
    }
    let name = engine
        .view(volume)
        .map(|v| v.name.clone())
        .unwrap_or_default();
    crate::failpoint::pause("incoming::before_mark_stale", &name).await;
    if let Err(e) = engine.mark_stale(volume, server).await {
        tracing::warn!(%volume, replica = %server, error = %e, "could not mark the replica stale; resync makes the copies the same (this one is copied back from it while it stays in sync)");
        return;
    }
    let store = engine.store().clone();
    let cleared = tokio::task::spawn_blocking(move || {
        for mark in &own {
            store.clear_missed(volume, mark)?;
        }
        store.flush(volume)
    })
    .await;
    if !matches!(cleared, Ok(Ok(()))) {
        tracing::warn!(%volume, "could not clear the marks that made this kept copy suspect; it is copied back from a current replica");
    }
}

/// Records `chunks` of `volume` as missed by this server itself (see [`record_own`]) and
/// returns the marks that this added (not those recorded before for another reason), or `None`
/// if they could not be recorded (logged: the keeper goes on without them).
async fn suspect_own(
    engine: &Arc<Engine>,
    volume: VolumeId,
    chunks: Vec<(LayerId, u64)>,
) -> Option<Vec<strata_store::MissedChunk>> {
    let me = engine.me();
    let marks = || {
        let store = engine.store().clone();
        tokio::task::spawn_blocking(move || store.missed(volume))
    };
    let before = match marks().await {
        Ok(Ok(marks)) => marks,
        _ => {
            tracing::error!(%volume, "could not read this server's marks; run `strata volume verify --repair`");
            return None;
        }
    };
    if !engine.record_missed(volume, me, chunks.clone()).await {
        tracing::error!(%volume, "could not record that this copy may differ from another replica; run `strata volume verify --repair`");
        return None;
    }
    let after = match marks().await {
        Ok(Ok(marks)) => marks,
        _ => return Some(Vec::new()),
    };
    let existed = |m: &strata_store::MissedChunk| {
        before
            .iter()
            .any(|b| (b.server, b.layer, b.chunk) == (m.server, m.layer, m.chunk))
    };
    Some(
        after
            .into_iter()
            .filter(|m| m.server == me && chunks.contains(&(m.layer, m.chunk)) && !existed(m))
            .collect(),
    )
}
