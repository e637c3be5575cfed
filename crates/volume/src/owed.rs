//! Own marks a gateway of this server owes to replicas it could not reach.
//!
//! When a change fails after some replicas took it and the others could not be fenced, the
//! gateway has each replica that took it record an *own* mark (its copy of the chunk is
//! suspect, see [`crate::resync`]). A replica that cannot be reached then (a partition, a
//! dropped link) still holds a write the others lack. Its side of the connection may see the
//! gateway alive and leave the record to it (see [`crate::incoming`]), so the gateway keeps the
//! debt here and sends the marks again, in the background, until the replica takes them, the
//! volume is gone, or the replica no longer holds the chunk. A mark that comes late costs one
//! copy of the chunk; one that never comes leaves the copies different.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use strata_types::{LayerId, ServerId, VolumeId};

use crate::engine::Engine;

/// The first wait before a mark is sent again; it doubles up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between two tries.
const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// How long one try may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);

/// The (layer, chunk)s of a volume owed to one replica.
type Chunks = HashSet<(LayerId, u64)>;

/// The (layer, chunk)s owed, per (volume, replica): a key is there while its delivering task
/// runs, and only that task removes it, once it has nothing left.
#[derive(Default)]
pub(crate) struct Owed {
    pending: Mutex<HashMap<(VolumeId, ServerId), Chunks>>,
}

/// Records that `holder` is owed an own mark for `chunk` of `layer` of `volume`, and has it
/// delivered in the background.
pub(crate) fn owe(
    engine: &Arc<Engine>,
    volume: VolumeId,
    holder: ServerId,
    layer: LayerId,
    chunk: u64,
) {
    let new = {
        let mut pending = engine.owed.pending.lock();
        let new = !pending.contains_key(&(volume, holder));
        pending
            .entry((volume, holder))
            .or_default()
            .insert((layer, chunk));
        new
    };
    if new {
        // Otherwise its task is running, and takes this one too.
        engine.spawn_background(deliver(engine.clone(), volume, holder));
    }
}

/// Sends `holder` the marks owed to it for `volume` until none is left.
async fn deliver(engine: Arc<Engine>, volume: VolumeId, holder: ServerId) {
    let mut wait = FIRST_WAIT;
    loop {
        let owed: Vec<(LayerId, u64)> = engine
            .owed
            .pending
            .lock()
            .get(&(volume, holder))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for (layer, chunk) in owed {
            let done = match engine.view(volume) {
                // Deleted, or it no longer holds the chunk: nothing to repair there.
                None => true,
                Some(view) if !view.replicas_of(chunk).contains(&holder) => true,
                Some(view) => {
                    let mark = crate::replica::marks_request(
                        volume,
                        layer,
                        chunk,
                        vec![holder],
                        view.epoch,
                    );
                    match engine.ask(holder, mark, TRY_TIMEOUT).await {
                        Ok(_) => {
                            tracing::info!(%volume, server = %holder, layer = %layer, chunk,
                                "a replica that took a failed write was told so; its copy is replaced");
                            true
                        }
                        Err(e) => {
                            tracing::debug!(%volume, server = %holder, error = %e,
                                "a replica that took a failed write was not reached yet");
                            false
                        }
                    }
                }
            };
            if done {
                if let Some(s) = engine.owed.pending.lock().get_mut(&(volume, holder)) {
                    s.remove(&(layer, chunk));
                }
            }
        }
        {
            let mut pending = engine.owed.pending.lock();
            if pending.get(&(volume, holder)).is_none_or(|s| s.is_empty()) {
                pending.remove(&(volume, holder));
                return;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(LONGEST_WAIT);
    }
}
