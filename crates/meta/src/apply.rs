//! Applying one [`Command`] to a [`StateView`]: validation, then mutation.
//!
//! This is the deterministic heart of the state machine. Every replica runs [`apply_command`] on
//! the same state with the same command and must reach the same result, so nothing here reads
//! the clock, draws random numbers or depends on iteration order of unordered maps.
//!
//! Each command is checked completely before anything is changed: a refused command leaves the
//! state exactly as it was, and its [`CommandError`] becomes the Raft response.

use crate::apply_jobs as jobs;
use crate::apply_servers as servers;
use crate::error::CommandError;
use crate::model::{Command, CommandOutput, SnapshotRecord, StateView, VolumeRecord};
use strata_types::{LayerId, Name, ServerId, VolumeId};

/// The most replicas a volume may have.
pub const MAX_REPLICAS: u8 = 3;

/// Validates `cmd` against `state` and, if valid, applies it.
pub fn apply_command(state: &mut StateView, cmd: Command) -> Result<CommandOutput, CommandError> {
    match cmd {
        Command::AddServer(rec) => servers::add_server(state, rec),
        Command::UpdateServer {
            id,
            api_addr,
            nbd_addr,
            peer_addr,
        } => servers::update_server(state, id, [api_addr, nbd_addr, peer_addr]),
        Command::CreateCluster {
            name,
            servers,
            take_from_default,
        } => servers::create_cluster(state, name, servers, take_from_default),
        Command::AddClusterServer { cluster, server } => {
            servers::add_cluster_server(state, cluster, server)
        }
        Command::RemoveClusterServer { cluster, server } => {
            servers::remove_cluster_server(state, cluster, server)
        }
        Command::CreateVolume {
            id,
            name,
            cluster,
            size,
            replicas,
            head,
            now_ms,
        } => {
            let vol = VolumeRecord {
                id,
                name,
                cluster,
                size,
                replicas,
                servers: Vec::new(),
                target: None,
                seeded: Vec::new(),
                stale: Vec::new(),
                epoch: 0,
                layers: vec![head],
                snapshots: Vec::new(),
                created_unix_ms: now_ms,
            };
            create_volume(state, vol)
        }
        Command::ResizeVolume { name, size } => resize_volume(state, &name, size),
        Command::DeleteVolume { name } => {
            let vol = state
                .volumes
                .remove(&name)
                .ok_or(CommandError::UnknownVolume(name))?;
            // A leaving server whose last volume this was leaves now.
            servers::drop_departed(state);
            Ok(CommandOutput::Volume(vol))
        }
        Command::CreateSnapshot {
            volume,
            name,
            frozen,
            new_head,
            now_ms,
        } => create_snapshot(state, volume, name, frozen, new_head, now_ms),
        Command::DeleteSnapshot { volume, name } => delete_snapshot(state, volume, name),
        Command::MarkReplicaStale {
            volume,
            server,
            reporter,
        } => mark_stale(state, volume, server, reporter),
        Command::MarkReplicaInSync {
            volume,
            server,
            epoch,
        } => {
            let vol = volume_by_id_mut(state, volume)?;
            if let Some(expected) = epoch.filter(|e| *e != vol.epoch) {
                return Err(CommandError::EpochMoved {
                    volume: vol.name.clone(),
                    expected,
                    now: vol.epoch,
                });
            }
            if vol.stale.contains(&server) {
                vol.stale.retain(|s| *s != server);
                vol.rerouted();
            }
            Ok(CommandOutput::Volume(vol.clone()))
        }
        Command::MigrationSeeded {
            volume,
            server,
            target,
        } => {
            let vol = migrating_to(state, volume, &target)?;
            if !vol.seeded.contains(&server) {
                vol.seeded.push(server);
            }
            Ok(CommandOutput::Volume(vol.clone()))
        }
        Command::FinishMigration { volume, target } => finish_migration(state, volume, &target),
        Command::StartJob(job) => jobs::start_job(state, job),
        Command::UpdateJob { id, progress } => jobs::update_job(state, id, progress),
        Command::ResumeJob { id, runner } => jobs::resume_job(state, id, runner),
        Command::FinishJob {
            id,
            state: end,
            error,
            progress,
            verify,
            now_ms,
        } => jobs::finish_job(
            state,
            id,
            jobs::Ending {
                state: end,
                error,
                progress,
                verify,
                now_ms,
            },
        ),
    }
}

/// The volume `id`, if it is migrating to exactly `target`.
fn migrating_to<'a>(
    state: &'a mut StateView,
    id: VolumeId,
    target: &[ServerId],
) -> Result<&'a mut VolumeRecord, CommandError> {
    let vol = volume_by_id_mut(state, id)?;
    if vol.target.as_deref() != Some(target) {
        return Err(CommandError::NotMigrating {
            volume: vol.name.clone(),
        });
    }
    Ok(vol)
}

fn finish_migration(
    state: &mut StateView,
    volume: VolumeId,
    target: &[ServerId],
) -> Result<CommandOutput, CommandError> {
    let vol = migrating_to(state, volume, target)?;
    vol.servers = target.to_vec();
    vol.target = None;
    vol.seeded.clear();
    vol.stale.retain(|s| target.contains(s));
    vol.rerouted();
    let out = vol.clone();
    servers::drop_departed(state);
    Ok(CommandOutput::Volume(out))
}

/// Volume sizes are whole 512-byte sectors, as block devices and qemu-img sizes are.
pub const SECTOR_SIZE: u64 = 512;

fn check_size(size: u64) -> Result<(), CommandError> {
    if size == 0 || !size.is_multiple_of(SECTOR_SIZE) {
        return Err(CommandError::BadSize {
            size,
            block: SECTOR_SIZE,
        });
    }
    Ok(())
}

fn check_fresh_layer(state: &StateView, layer: LayerId) -> Result<(), CommandError> {
    if state.volume_with_layer(layer).is_some() {
        return Err(CommandError::LayerInUse(layer));
    }
    Ok(())
}

fn check_fresh_volume_id(state: &StateView, id: VolumeId) -> Result<(), CommandError> {
    if state.volume_by_id(id).is_some() {
        return Err(CommandError::VolumeIdExists(id));
    }
    Ok(())
}

fn volume_by_id_mut(
    state: &mut StateView,
    id: VolumeId,
) -> Result<&mut VolumeRecord, CommandError> {
    state
        .volumes
        .values_mut()
        .find(|v| v.id == id)
        .ok_or(CommandError::UnknownVolumeId(id))
}

fn mark_stale(
    state: &mut StateView,
    volume: VolumeId,
    server: ServerId,
    reporter: ServerId,
) -> Result<CommandOutput, CommandError> {
    let vol = volume_by_id_mut(state, volume)?;
    if vol.stale.contains(&server) {
        // Missing data as of now: a declaration in sync decided before this, which names the
        // epoch it was decided at, must not commit after it.
        vol.rerouted();
        return Ok(CommandOutput::Volume(vol.clone()));
    }
    if !vol.holds(server) {
        return Err(CommandError::NotInLayout {
            volume: vol.name.clone(),
            server,
        });
    }
    if vol.stale.contains(&reporter) {
        return Err(CommandError::ReporterStale {
            volume: vol.name.clone(),
        });
    }
    // Some chunk's replicas may all lie in the stale set once it has `replicas` members.
    if vol.stale.len() + 1 >= usize::from(vol.replicas) {
        return Err(CommandError::NoReplicaLeft {
            volume: vol.name.clone(),
            replicas: vol.replicas,
        });
    }
    vol.stale.push(server);
    vol.rerouted();
    Ok(CommandOutput::Volume(vol.clone()))
}

fn create_volume(
    state: &mut StateView,
    mut vol: VolumeRecord,
) -> Result<CommandOutput, CommandError> {
    if state.volumes.contains_key(&vol.name) {
        return Err(CommandError::VolumeExists(vol.name));
    }
    check_fresh_volume_id(state, vol.id)?;
    let cluster = state
        .clusters
        .get(&vol.cluster)
        .ok_or_else(|| CommandError::UnknownCluster(vol.cluster.clone()))?;
    check_size(vol.size)?;
    let layout = cluster.placeable();
    let max = layout.len().min(usize::from(MAX_REPLICAS));
    if vol.replicas == 0 || usize::from(vol.replicas) > max {
        return Err(CommandError::BadReplicas {
            replicas: vol.replicas,
            cluster: vol.cluster,
            servers: layout.len(),
            max,
        });
    }
    vol.servers = layout;
    for layer in &vol.layers {
        check_fresh_layer(state, *layer)?;
    }
    state.volumes.insert(vol.name.clone(), vol.clone());
    Ok(CommandOutput::Volume(vol))
}

fn resize_volume(
    state: &mut StateView,
    name: &Name,
    size: u64,
) -> Result<CommandOutput, CommandError> {
    let vol = state
        .volumes
        .get_mut(name)
        .ok_or_else(|| CommandError::UnknownVolume(name.clone()))?;
    check_size(size)?;
    if size < vol.size {
        return Err(CommandError::Shrink {
            name: name.clone(),
            current: vol.size,
            requested: size,
        });
    }
    vol.size = size;
    Ok(CommandOutput::Volume(vol.clone()))
}

fn create_snapshot(
    state: &mut StateView,
    volume: Name,
    name: Name,
    frozen: LayerId,
    new_head: LayerId,
    now_ms: u64,
) -> Result<CommandOutput, CommandError> {
    if !state.volumes.contains_key(&volume) {
        return Err(CommandError::UnknownVolume(volume));
    }
    check_fresh_layer(state, new_head)?;
    let vol = state
        .volumes
        .get_mut(&volume)
        .ok_or_else(|| CommandError::UnknownVolume(volume.clone()))?;
    if vol.snapshot(&name).is_some() {
        return Err(CommandError::SnapshotExists { volume, name });
    }
    match vol.head() {
        Some(head) if head == frozen => {}
        head => {
            return Err(CommandError::StaleHead {
                volume,
                // An empty stack never occurs; report the layer asked for rather than panic.
                head: head.unwrap_or(frozen),
            });
        }
    }
    let snap = SnapshotRecord {
        name,
        layer: frozen,
        created_unix_ms: now_ms,
        size: vol.size,
    };
    vol.snapshots.push(snap.clone());
    vol.layers.push(new_head);
    Ok(CommandOutput::Snapshot {
        snapshot: snap,
        volume: vol.clone(),
    })
}

fn delete_snapshot(
    state: &mut StateView,
    volume: Name,
    name: Name,
) -> Result<CommandOutput, CommandError> {
    let vol = state
        .volumes
        .get_mut(&volume)
        .ok_or_else(|| CommandError::UnknownVolume(volume.clone()))?;
    let pos = vol
        .snapshots
        .iter()
        .position(|s| s.name == name)
        .ok_or(CommandError::UnknownSnapshot { volume, name })?;
    let snap = vol.snapshots.remove(pos);
    vol.layers.retain(|l| *l != snap.layer);
    Ok(CommandOutput::Snapshot {
        snapshot: snap,
        volume: vol.clone(),
    })
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
