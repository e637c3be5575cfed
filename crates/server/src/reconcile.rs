//! The store follows the management state. [`reconcile`] compares the volumes and layer stacks
//! that the Raft state machine holds with what this server's store holds, and changes the store
//! to match: it creates volumes, freezes heads into snapshots (in stack order), grows volumes,
//! starts background merges for deleted snapshots and deletes volumes.
//!
//! The management state is always changed first and the store second, so after a crash between
//! the two the next reconcile (run at start and after every applied change) finishes the job.
//! Every step is idempotent: running reconcile twice does nothing the second time.
//!
//! A server holds (in its store) every volume whose layout, or the layout it migrates to, names
//! it — the whole layer stack, with data only for the chunks placed on it. A volume is deleted
//! from the store when the management state no longer has it, or when a finished migration took
//! this server out of its layout (its chunks were copied to the new layout first); never
//! because of a cluster membership change alone.

use std::collections::HashSet;
use strata_meta::StateView;
use strata_store::{Store, StoreError};
use strata_types::ServerId;

/// The volumes server `me` holds according to `state`. A record without a layout predates
/// placement: its data stays wherever it is.
fn wanted(state: &StateView, me: ServerId) -> HashSet<strata_types::VolumeId> {
    state
        .volumes
        .values()
        .filter(|v| v.servers.is_empty() || v.holds(me))
        .map(|v| v.id)
        .collect()
}

/// The volumes that `state` places on server `me` when `store` is new: their copies were
/// lost with the store's files (a new store never held anything), so the server must not
/// start and create them empty — clients would read zeros where data was acknowledged.
/// Empty for a store that existed before.
pub fn lost_volumes(state: &StateView, store: &Store, me: ServerId) -> Vec<String> {
    if !store.is_new() {
        return Vec::new();
    }
    state
        .volumes
        .values()
        .filter(|v| v.holds(me))
        .map(|v| v.name.to_string())
        .collect()
}

/// Deletes from `store` (the store of server `me`) every volume that `state` no longer places
/// on it. Separate from [`reconcile`] so that the volume engine can take in the new state
/// before the (possibly slow) deletion of files. Returns how many it deleted.
pub fn drop_unwanted(state: &StateView, store: &Store, me: ServerId) -> Result<usize, StoreError> {
    let wanted = wanted(state, me);
    let mut changes = 0;
    for stored in store.volumes() {
        if !wanted.contains(&stored.id) {
            tracing::info!(volume = %stored.id, "deleting this server's copy of a volume that was deleted or moved off it");
            store.delete_volume(stored.id)?;
            changes += 1;
        }
    }
    Ok(changes)
}

/// Makes `store` (the store of server `me`) hold every volume and layer `state` places on it
/// (deletions are [`drop_unwanted`]). Returns how many changes it made.
pub fn reconcile(state: &StateView, store: &Store, me: ServerId) -> Result<usize, StoreError> {
    let mut changes = 0;
    let wanted = wanted(state, me);
    for v in state.volumes.values().filter(|v| wanted.contains(&v.id)) {
        let stored = match store.volume(v.id) {
            Ok(s) => s,
            Err(StoreError::NoSuchVolume(_)) => {
                if !v.holds(me) {
                    continue; // none of its chunks live here
                }
                let Some(bottom) = v.layers.first() else {
                    tracing::error!(volume = %v.name, "volume has no layers in the management state");
                    continue;
                };
                store.create_volume(v.id, v.size, *bottom)?;
                changes += 1;
                store.volume(v.id)?
            }
            Err(e) => return Err(e),
        };
        if stored.size < v.size {
            store.resize(v.id, v.size)?;
            changes += 1;
        }
        // Freeze forward: the store's head is some layer of the wanted stack; every layer above
        // it in that stack is a snapshot taken since.
        let mut head = stored.head;
        if let Some(pos) = v.layers.iter().position(|l| *l == head) {
            for next in &v.layers[pos + 1..] {
                store.snapshot(v.id, *next)?;
                head = *next;
                changes += 1;
            }
        } else if !v.layers.contains(&head) {
            tracing::error!(volume = %v.name, head = %head,
                "the store's head layer is not in the volume's stack; leaving it for an operator");
        }
        // Deleted snapshots: every stored layer no longer in the stack is merged away.
        let keep: HashSet<_> = v.layers.iter().collect();
        for layer in store.volume(v.id)?.layers {
            if !keep.contains(&layer.id) && layer.id != head {
                store.delete_layer(v.id, layer.id)?;
                changes += 1;
            }
        }
    }
    Ok(changes)
}
