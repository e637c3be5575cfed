//! Migration: moving a volume to a new layout (its `target`) online, e.g. off a server that is
//! being removed from its cluster.
//!
//! While a migration runs, each chunk's replicas are those of both layouts
//! ([`crate::VolumeView::replicas_of`]); a server that gains a chunk gets its writes but is not
//! read from. The copying is the resync path's: missed marks, held by the current replicas.
//!
//! 0. **Start.** The migration is committed under a barrier (every gateway holds its writes
//!    and applies it before going on), so from then on every write reaches the gaining
//!    servers too: after the current replicas, and if a gaining server does not take it, the
//!    current replicas record it as missed.
//! 1. **Seeding.** Every in-sync server of the current layout records a mark for each (layer,
//!    chunk) it holds and each server that gains the chunk, flushes the marks, and reports it in
//!    the management group ([`crate::Control::migration_seeded`]).
//! 2. **Copying.** [`crate::resync`] copies marked chunks to the gaining servers, each under
//!    the chunk's lock on the copying server, which writes to the chunk also take: a write
//!    reaches a gaining server after the copy or is in its image. So a copied chunk stays
//!    current without further marks, and the copying converges while clients write.
//! 3. **Finishing.** The management leader watches. It finishes
//!    ([`crate::Control::finish_migration`]) once every seeder has seeded, no server of the
//!    target is stale and the in-sync servers hold no marks for target servers (only writes a
//!    target server refused record new ones, so this comes soon). It does so under a barrier:
//!    the gateways hold their writes, the holders copy any mark recorded meanwhile
//!    ([`crate::resync::drain`]), the target becomes the layout, and the writes go on once
//!    every gateway sees it. Servers that left the layout then drop their copies.

use std::sync::Arc;
use std::time::Duration;
use strata_types::ServerId;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::view::VolumeView;

/// How often the loop looks for work.
const PASS_EVERY: Duration = Duration::from_millis(500);

/// Runs migration passes until `shutdown`.
pub async fn run(engine: Arc<Engine>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PASS_EVERY) => {}
        }
        let topology = engine.topology();
        for view in topology.volumes.values() {
            let Some(target) = &view.target else {
                continue;
            };
            if let Err(e) = step(&engine, view, target).await {
                tracing::warn!(volume = %view.name, error = %e, "migration step failed; retrying");
            }
        }
    }
}

async fn step(engine: &Arc<Engine>, view: &VolumeView, target: &[ServerId]) -> Result<(), String> {
    let me = engine.me();
    if view.seeders.contains(&me) && !view.seeded.contains(&me) {
        let marked = seed(engine, view).await?;
        engine.control().migration_seeded(view.id, target).await?;
        tracing::info!(volume = %view.name, marked, "migration seeded: chunks to copy recorded");
    }
    if engine.control().is_leader() && ready(engine, view, target).await? {
        engine.control().finish_migration(view.id, target).await?;
        tracing::info!(volume = %view.name, "migration finished");
    }
    Ok(())
}

/// Records a mark for every (layer, chunk) this server holds a current copy of and each server
/// that gains the chunk; returns how many.
pub async fn seed(engine: &Arc<Engine>, view: &VolumeView) -> Result<u64, String> {
    let (engine, volume) = (engine.clone(), view.id);
    tokio::task::spawn_blocking(move || {
        let view = engine
            .view(volume)
            .ok_or_else(|| "the volume was deleted".to_string())?;
        let me = engine.me();
        let store = engine.store();
        let mut marked = 0;
        for (layer, chunk) in store.touched_chunks(volume).map_err(|e| e.to_string())? {
            if !view.current(me, chunk) || !view.replicas_of(chunk).contains(&me) {
                continue;
            }
            for server in view.gaining(chunk) {
                store
                    .record_missed(volume, layer, chunk, server)
                    .map_err(|e| e.to_string())?;
                marked += 1;
            }
        }
        store.flush(volume).map_err(|e| e.to_string())?;
        Ok(marked)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Whether the migration to `target` may finish: every seeder seeded, no target server is
/// stale, and the in-sync servers hold no marks for target servers.
async fn ready(
    engine: &Arc<Engine>,
    view: &VolumeView,
    target: &[ServerId],
) -> Result<bool, String> {
    if view.seeders.iter().any(|s| !view.seeded.contains(s))
        || target.iter().any(|s| !view.in_sync(*s))
    {
        tracing::debug!(volume = %view.name, seeders = ?view.seeders, seeded = ?view.seeded, stale = ?view.stale, "migration waits for seeding or resync");
        return Ok(false);
    }
    let holders = view
        .layout
        .iter()
        .chain(target)
        .filter(|s| view.in_sync(**s));
    let mut left = 0;
    for at in holders {
        for server in target {
            left += engine.control().missed_at(*at, view.id, *server).await?;
        }
    }
    tracing::debug!(volume = %view.name, left, "migration: chunk-layers left to copy");
    Ok(left == 0)
}
