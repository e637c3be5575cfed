//! Server-to-server endpoints that are not part of the public API.
//!
//! Under `/v1/internal` (forwarded to the leader like any change): marking a replica stale or
//! in sync, a migration's steps (seeded; finish, which the leader runs under a barrier), and a
//! job runner's progress and end (`jobs.rs`).
//! Under `/internal/v1` (answered by the server asked, never forwarded): the barrier's steps
//! on this server, what this server holds of a volume (use, missed marks, changed ranges,
//! chunks with data), which the leader gathers for `volume show`, `snapshot diff` and
//! verify jobs, and the jobs it runs (for the leader's job watch).

use super::barrier::Barrier;
use super::{ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use strata_api_types::{
    HeldChunks, LocalVolume, MarkReplica, MigrationStep, MissedSummary, OpenClient, Range,
    SealMarks,
};
use strata_meta::Command;
use strata_types::{LayerId, ServerId, VolumeId};

/// The routes under `/internal/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/internal/v1/volumes/{id}/local", get(local_volume))
        .route("/internal/v1/volumes/{id}/clients", get(open_clients))
        .route("/internal/v1/volumes/{id}/missed", get(missed))
        .route("/internal/v1/volumes/{id}/seal", post(seal))
        .route("/internal/v1/volumes/{id}/delta", get(delta))
        .route("/internal/v1/volumes/{id}/chunks", get(held_chunks))
        .route("/internal/v1/jobs", get(super::jobs::running_here))
        .route("/internal/v1/barrier/{barrier}/persist", post(persist))
        .route("/internal/v1/barrier/{barrier}/pause", post(pause))
        .route("/internal/v1/barrier/{barrier}/freeze", post(freeze))
        .route("/internal/v1/barrier/{barrier}/release", post(release))
        .route("/internal/v1/barrier/{barrier}/settle", post(settle))
        .route("/internal/v1/barrier/{barrier}/drain", post(drain))
}

/// `POST /v1/internal/volumes/{id}/stale`: a gateway could not write to a replica.
pub async fn mark_stale(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
    Json(req): Json<MarkReplica>,
) -> Result<Json<()>, ApiError> {
    let reporter = req
        .reporter
        .ok_or_else(|| ApiError::bad_request("a stale mark needs the reporting server"))?;
    app.meta
        .write(Command::MarkReplicaStale {
            volume: id,
            server: req.server,
            reporter,
        })
        .await?;
    Ok(Json(()))
}

/// `POST /v1/internal/volumes/{id}/in-sync`: a replica caught up.
pub async fn mark_in_sync(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
    Json(req): Json<MarkReplica>,
) -> Result<Json<()>, ApiError> {
    app.meta
        .write(Command::MarkReplicaInSync {
            volume: id,
            server: req.server,
            epoch: req.epoch,
        })
        .await?;
    Ok(Json(()))
}

/// `POST /v1/internal/volumes/{id}/seeded`: a server recorded the chunks a migration must copy.
pub async fn migration_seeded(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
    Json(req): Json<MigrationStep>,
) -> Result<Json<()>, ApiError> {
    let server = req
        .server
        .ok_or_else(|| ApiError::bad_request("a seeded step needs the seeding server"))?;
    app.meta
        .write(Command::MigrationSeeded {
            volume: id,
            server,
            target: req.target,
        })
        .await?;
    Ok(Json(()))
}

/// `POST /v1/internal/volumes/{id}/finish` (on the leader): every chunk has been copied to the
/// servers that gain it; make the target the layout. Under a barrier: every gateway that is
/// not leaving must hold its writes, the marks are counted again with no write in flight, and
/// the gateways are released only once they apply the new layout.
pub async fn finish_migration(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
    Json(req): Json<MigrationStep>,
) -> Result<Json<()>, ApiError> {
    let state = app.meta.read().await?;
    let v = state
        .volume_by_id(id)
        .ok_or_else(|| ApiError::not_found(format!("no volume with id {id}")))?;
    let leaving: Vec<String> = state
        .clusters
        .get(&v.cluster)
        .into_iter()
        .flat_map(|c| c.leaving.iter())
        .filter_map(|s| state.servers.get(s).map(|r| r.api_addr.clone()))
        .collect();
    let barrier = Barrier::new(&app, &state, v);
    let missing = barrier.pause().await;
    let finished = async {
        if let Some(m) = missing.iter().find(|m| !leaving.contains(m)) {
            return Err(ApiError::unavailable(format!(
                "the gateway at {m} did not hold its writes; the migration finishes once it does"
            )));
        }
        let holders: Vec<ServerId> = v
            .servers
            .iter()
            .chain(&req.target)
            .filter(|s| !v.stale.contains(s))
            .copied()
            .collect();
        if !barrier.drain(&state, &holders, &req.target).await {
            return Err(ApiError::unavailable(
                "some chunks could not be copied while writes were held; the migration finishes on a later try",
            ));
        }
        app.meta
            .write(Command::FinishMigration {
                volume: id,
                target: req.target.clone(),
            })
            .await?;
        app.meta.announce_commits().await;
        barrier.settle(false).await;
        Ok(())
    }
    .await;
    barrier.release().await;
    finished?;
    app.apply_to_store().await?;
    Ok(Json(()))
}

/// The missed marks this server holds for `id`, counted by server, with resync progress.
fn missed_summary(app: &AppState, id: VolumeId) -> Result<Vec<MissedSummary>, ApiError> {
    let marks = match app.store.missed(id) {
        Ok(m) => m,
        Err(strata_store::StoreError::NoSuchVolume(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut counts: BTreeMap<_, u64> = BTreeMap::new();
    for m in marks {
        *counts.entry(m.server).or_default() += 1;
    }
    Ok(counts
        .into_iter()
        .map(|(server, remaining)| {
            let p = app.engine.resync.get(id, server);
            MissedSummary {
                server,
                remaining,
                total: p.total.max(remaining),
            }
        })
        .collect())
}

/// `GET /internal/v1/volumes/{id}/missed`.
async fn missed(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
) -> Result<Json<Vec<MissedSummary>>, ApiError> {
    Ok(Json(missed_summary(&app, id)?))
}

/// `POST /internal/v1/volumes/{id}/seal`: a resync source seals a stale replica's marks here
/// before it declares the replica in sync, and answers how many marks for it are left; or lifts
/// the seal (`lift`).
async fn seal(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
    Json(req): Json<SealMarks>,
) -> Result<Json<u64>, ApiError> {
    if req.lift {
        app.engine.lift_seal(id, req.server, req.epoch).await;
        return Ok(Json(0));
    }
    app.engine
        .seal_marks(id, req.server, req.epoch)
        .await
        .map(Json)
        .map_err(ApiError::internal)
}

/// `GET /internal/v1/volumes/{id}/clients`: the exports of the volume that clients have open
/// through this server.
async fn open_clients(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
) -> Json<Vec<OpenClient>> {
    Json(
        app.engine
            .open_exports(id)
            .into_iter()
            .map(|o| OpenClient {
                layer: o.layer,
                client: o.client,
            })
            .collect(),
    )
}

/// `GET /internal/v1/volumes/{id}/local`.
async fn local_volume(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
) -> Result<Json<LocalVolume>, ApiError> {
    // The layout as this server knows it: the chunks it is the first replica of.
    let layout = app
        .meta
        .local_state()
        .volumes
        .values()
        .find(|v| v.id == id)
        .map(|v| v.servers.clone())
        .unwrap_or_default();
    let (store, me) = (app.store.clone(), app.identity.id);
    let (used_bytes, first_copy_bytes) = tokio::task::spawn_blocking(move || {
        let used = store.volume_used_bytes(id).unwrap_or(0);
        let first: u64 = store
            .chunk_data_bytes(id)
            .unwrap_or_default()
            .into_iter()
            .filter(|(chunk, _)| {
                strata_volume::placement::replicas_of(id, *chunk, &layout, 1).first() == Some(&me)
            })
            .map(|(_, bytes)| bytes)
            .sum();
        (used, first)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(LocalVolume {
        used_bytes,
        first_copy_bytes,
        missed: missed_summary(&app, id)?,
    }))
}

/// `GET /internal/v1/volumes/{id}/chunks`: the chunks this server holds data in, in any
/// layer (verify reads only those; a volume this store lacks is an error, so that verify
/// compares all of this server's chunks).
async fn held_chunks(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
) -> Result<Json<HeldChunks>, ApiError> {
    let store = app.store.clone();
    let held = tokio::task::spawn_blocking(move || store.chunk_data_bytes(id))
        .await
        .map_err(|e| ApiError::internal(format!("chunk listing task failed: {e}")))??;
    Ok(Json(HeldChunks::from_sorted(held.into_keys())))
}

/// Query of the delta endpoint.
#[derive(Debug, Deserialize)]
struct DeltaQuery {
    from: LayerId,
    to: LayerId,
}

/// `GET /internal/v1/volumes/{id}/delta?from=&to=`: ranges changed in this server's chunks.
async fn delta(
    State(app): State<AppState>,
    Path(id): Path<VolumeId>,
    Query(q): Query<DeltaQuery>,
) -> Result<Json<Vec<Range>>, ApiError> {
    let store = app.store.clone();
    let changed = tokio::task::spawn_blocking(move || store.delta(id, Some(q.from), q.to))
        .await
        .map_err(|e| ApiError::internal(format!("diff task failed: {e}")))??;
    Ok(Json(
        changed
            .iter()
            .map(|r| Range {
                offset: r.offset,
                len: r.len,
            })
            .collect(),
    ))
}

/// Query of the barrier steps.
#[derive(Debug, Deserialize)]
struct BarrierQuery {
    volume: VolumeId,
    #[serde(default)]
    head: Option<LayerId>,
}

/// `POST /internal/v1/barrier/{barrier}/persist?volume=`: after the release, flush this
/// server's copy, which makes the snapshot (frozen in memory during the pause) durable with
/// every write acknowledged before it, before the snapshot is acknowledged.
async fn persist(
    State(app): State<AppState>,
    Path(_barrier): Path<u64>,
    Query(q): Query<BarrierQuery>,
) -> Result<Json<()>, ApiError> {
    let store = app.store.clone();
    // At low priority: the gateways are released, and this sync must not slow their writes.
    match app.background.run(move || store.flush(q.volume)).await {
        Ok(Ok(())) | Ok(Err(strata_store::StoreError::NoSuchVolume(_))) => Ok(Json(())),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError::internal(format!("flush task failed: {e}"))),
    }
}

/// `POST /internal/v1/barrier/{barrier}/pause?volume=`: hold this server's gateway writes.
async fn pause(
    State(app): State<AppState>,
    Path(barrier): Path<u64>,
    Query(q): Query<BarrierQuery>,
) -> Result<Json<()>, ApiError> {
    app.engine
        .pause(barrier, q.volume, Duration::from_secs(2))
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(()))
}

/// `POST /internal/v1/barrier/{barrier}/freeze?volume=&head=`: wait for the new head to be
/// applied here, and the store to have frozen the old one.
async fn freeze(
    State(app): State<AppState>,
    Path(_barrier): Path<u64>,
    Query(q): Query<BarrierQuery>,
) -> Result<Json<()>, ApiError> {
    let head = q
        .head
        .ok_or_else(|| ApiError::bad_request("freeze needs the new head layer"))?;
    let mut applied = app.meta.subscribe();
    let arrived = async {
        loop {
            let has = app
                .meta
                .local_state()
                .volume_by_id(q.volume)
                .is_none_or(|v| v.layers.contains(&head));
            if has || applied.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), arrived)
        .await
        .map_err(|_| ApiError::unavailable("the snapshot did not reach this server in time"))?;
    app.apply_to_store().await?;
    Ok(Json(()))
}

/// Query of the settle step.
#[derive(Debug, Deserialize)]
struct SettleQuery {
    volume: VolumeId,
    /// Wait for the start of a migration (true) or for its end (false).
    migrating: bool,
}

/// `POST /internal/v1/barrier/{barrier}/settle?volume=&migrating=`: wait until this server's
/// volume engine sees the start or the end of the volume's migration (the store follows; a
/// copy to drop is deleted after the engine has let go of it).
async fn settle(
    State(app): State<AppState>,
    Path(_barrier): Path<u64>,
    Query(q): Query<SettleQuery>,
) -> Result<Json<()>, ApiError> {
    let seen = app
        .engine
        .wait_view(q.volume, Duration::from_secs(5), |v| {
            v.is_none_or(|v| v.target.is_some() == q.migrating)
        })
        .await;
    if !seen {
        return Err(ApiError::unavailable(
            "the layout change did not reach this server in time",
        ));
    }
    Ok(Json(()))
}

/// Query of the drain step: the volume and the servers whose marks to copy.
#[derive(Debug, Deserialize)]
struct DrainQuery {
    volume: VolumeId,
    /// Comma-separated server ids.
    servers: String,
}

/// `POST /internal/v1/barrier/{barrier}/drain?volume=&servers=`: with writes held, copy every
/// chunk this server holds marks for towards those servers; fails if some are left.
async fn drain(
    State(app): State<AppState>,
    Path(_barrier): Path<u64>,
    Query(q): Query<DrainQuery>,
) -> Result<Json<()>, ApiError> {
    let servers = q
        .servers
        .split(',')
        .map(|s| s.parse::<ServerId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(format!("bad server id: {e}")))?;
    let Some(view) = app.engine.view(q.volume) else {
        return Ok(Json(()));
    };
    let left = strata_volume::resync::drain(&app.engine, &view, &servers)
        .await
        .map_err(ApiError::unavailable)?;
    if left > 0 {
        return Err(ApiError::unavailable(format!(
            "{left} chunk-layer(s) are still to be copied (written again meanwhile, or this server's own failed writes awaiting repair); the migration retries"
        )));
    }
    Ok(Json(()))
}

/// `POST /internal/v1/barrier/{barrier}/release`: let held writes go.
async fn release(State(app): State<AppState>, Path(barrier): Path<u64>) -> Json<()> {
    app.engine.release(barrier);
    Json(())
}
