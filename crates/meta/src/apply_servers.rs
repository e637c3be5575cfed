//! Applying the commands that change servers and clusters: register a server, update its
//! addresses, create a cluster, add a server to a cluster and take one out.
//!
//! A server belongs to at most one cluster. The cluster `default` (made at bootstrap) is where
//! servers start; creating a cluster or adding a server to one may take servers out of
//! `default`, but only servers that hold no volume's data. Taking a server out of a cluster
//! whose volumes hold data on it starts a migration of each such volume to a layout without
//! it; the server stays a (leaving) member until the last migration finishes. Like the rest of
//! `apply`, everything here is deterministic and checks completely before it changes anything.

use crate::error::CommandError;
use crate::meta::DEFAULT_CLUSTER;
use crate::model::{ClusterRecord, CommandOutput, ServerRecord, StateView};
use strata_types::{Name, ServerId};

pub(crate) fn add_server(
    state: &mut StateView,
    rec: ServerRecord,
) -> Result<CommandOutput, CommandError> {
    if state.servers.contains_key(&rec.id) {
        return Err(CommandError::ServerIdExists(rec.id));
    }
    if state.server_by_name(&rec.name).is_some() {
        return Err(CommandError::ServerNameExists(rec.name));
    }
    if state
        .servers
        .values()
        .any(|s| s.raft_node_id == rec.raft_node_id)
    {
        return Err(CommandError::RaftNodeIdExists(rec.raft_node_id));
    }
    check_addresses(&rec.name, [&rec.api_addr, &rec.nbd_addr, &rec.peer_addr])?;
    state.servers.insert(rec.id, rec.clone());
    Ok(CommandOutput::Server(rec))
}

/// `addrs` is `[api, nbd, peer]`.
pub(crate) fn update_server(
    state: &mut StateView,
    id: ServerId,
    addrs: [String; 3],
) -> Result<CommandOutput, CommandError> {
    let rec = state
        .servers
        .get_mut(&id)
        .ok_or(CommandError::UnknownServer(id))?;
    check_addresses(&rec.name, [&addrs[0], &addrs[1], &addrs[2]])?;
    let [api, nbd, peer] = addrs;
    rec.api_addr = api;
    rec.nbd_addr = nbd;
    rec.peer_addr = peer;
    Ok(CommandOutput::Server(rec.clone()))
}

fn check_addresses(name: &Name, addrs: [&String; 3]) -> Result<(), CommandError> {
    for (what, addr) in ["API address", "NBD address", "peer address"]
        .iter()
        .zip(addrs)
    {
        if addr.trim().is_empty() {
            return Err(CommandError::MissingAddress {
                name: name.clone(),
                what: what.to_string(),
            });
        }
    }
    Ok(())
}

pub(crate) fn create_cluster(
    state: &mut StateView,
    name: Name,
    servers: Vec<ServerId>,
    take_from_default: bool,
) -> Result<CommandOutput, CommandError> {
    if state.clusters.contains_key(&name) {
        return Err(CommandError::ClusterExists(name));
    }
    if servers.is_empty() {
        return Err(CommandError::EmptyCluster(name));
    }
    for (i, id) in servers.iter().enumerate() {
        if servers[..i].contains(id) {
            return Err(CommandError::ServerInCluster {
                server: *id,
                cluster: name,
            });
        }
    }
    // Check every move out of `default` together: they all leave at once.
    let moved = movable(state, &servers, take_from_default)?;
    if let Some(default) = moved_out_of_default(state, &moved) {
        check_can_lose(state, &default, &moved)?;
        retain_servers(state, &default, &moved);
    }
    let rec = ClusterRecord {
        name,
        servers,
        leaving: Vec::new(),
    };
    state.clusters.insert(rec.name.clone(), rec.clone());
    Ok(CommandOutput::Cluster(rec))
}

pub(crate) fn add_cluster_server(
    state: &mut StateView,
    cluster: Name,
    server: ServerId,
) -> Result<CommandOutput, CommandError> {
    if !state.clusters.contains_key(&cluster) {
        return Err(CommandError::UnknownCluster(cluster));
    }
    let moved = movable(state, &[server], true)?;
    if let Some(default) = moved_out_of_default(state, &moved) {
        if default == cluster {
            return Err(CommandError::ServerInCluster { server, cluster });
        }
        check_can_lose(state, &default, &moved)?;
        retain_servers(state, &default, &moved);
    }
    let rec = state
        .clusters
        .get_mut(&cluster)
        .ok_or_else(|| CommandError::UnknownCluster(cluster.clone()))?;
    rec.servers.push(server);
    Ok(CommandOutput::Cluster(rec.clone()))
}

pub(crate) fn remove_cluster_server(
    state: &mut StateView,
    cluster: Name,
    server: ServerId,
) -> Result<CommandOutput, CommandError> {
    let rec = state
        .clusters
        .get(&cluster)
        .ok_or_else(|| CommandError::UnknownCluster(cluster.clone()))?;
    let server_rec = state
        .servers
        .get(&server)
        .ok_or(CommandError::UnknownServer(server))?;
    if !rec.servers.contains(&server) {
        return Err(CommandError::NotInCluster {
            server: server_rec.name.clone(),
            cluster,
        });
    }
    if rec.leaving.contains(&server) {
        return Err(CommandError::AlreadyLeaving {
            server: server_rec.name.clone(),
            cluster,
        });
    }
    // Every volume holding data on the server moves to a layout without it.
    let mut moves = Vec::new();
    for v in state.volumes.values().filter(|v| v.holds(server)) {
        let from = v.target.as_ref().unwrap_or(&v.servers);
        let to: Vec<ServerId> = from.iter().filter(|s| **s != server).copied().collect();
        if to.len() < usize::from(v.replicas) {
            return Err(CommandError::TooFewServers {
                volume: v.name.clone(),
                replicas: v.replicas,
                left: to.len(),
            });
        }
        moves.push((v.name.clone(), to));
    }
    for (name, to) in moves {
        if let Some(v) = state.volumes.get_mut(&name) {
            v.target = Some(to);
            v.seeded.clear();
            v.rerouted();
        }
    }
    if let Some(rec) = state.clusters.get_mut(&cluster) {
        rec.leaving.push(server);
    }
    drop_departed(state);
    let rec = state
        .clusters
        .get(&cluster)
        .ok_or(CommandError::UnknownCluster(cluster))?;
    Ok(CommandOutput::Cluster(rec.clone()))
}

/// Takes leaving servers that no volume holds data on any more out of their clusters.
pub(crate) fn drop_departed(state: &mut StateView) {
    let held = |s: &ServerId| state.volumes.values().any(|v| v.holds(*s));
    let gone: Vec<(Name, ServerId)> = state
        .clusters
        .values()
        .flat_map(|c| c.leaving.iter().map(|s| (c.name.clone(), *s)))
        .filter(|(_, s)| !held(s))
        .collect();
    for (cluster, server) in gone {
        if let Some(rec) = state.clusters.get_mut(&cluster) {
            rec.servers.retain(|s| *s != server);
            rec.leaving.retain(|s| *s != server);
        }
    }
}

/// Checks that every server in `servers` exists and is in no cluster — or, with
/// `take_from_default`, in `default` — and returns those that are in `default`.
fn movable(
    state: &StateView,
    servers: &[ServerId],
    take_from_default: bool,
) -> Result<Vec<ServerId>, CommandError> {
    let mut moved = Vec::new();
    for id in servers {
        if !state.servers.contains_key(id) {
            return Err(CommandError::UnknownServer(*id));
        }
        if let Some(other) = state.cluster_of(*id) {
            if !take_from_default || other.name.as_str() != DEFAULT_CLUSTER {
                return Err(CommandError::ServerInCluster {
                    server: *id,
                    cluster: other.name.clone(),
                });
            }
            moved.push(*id);
        }
    }
    Ok(moved)
}

/// The name of `default` if `moved` is not empty (the servers in it come from there).
fn moved_out_of_default(state: &StateView, moved: &[ServerId]) -> Option<Name> {
    let first = moved.first()?;
    state.cluster_of(*first).map(|c| c.name.clone())
}

/// Refuses to move `leaving` out of `cluster` (to another cluster) while a volume's layout
/// holds one of them: its chunks live there; `remove-server` moves them away first.
fn check_can_lose(
    state: &StateView,
    cluster: &Name,
    leaving: &[ServerId],
) -> Result<(), CommandError> {
    if !state.clusters.contains_key(cluster) {
        return Err(CommandError::UnknownCluster(cluster.clone()));
    }
    for v in state.volumes.values() {
        if let Some(id) = leaving.iter().find(|s| v.holds(**s)) {
            let server = state
                .servers
                .get(id)
                .map_or_else(|| cluster.clone(), |s| s.name.clone());
            return Err(CommandError::ServerHoldsData {
                server,
                volume: v.name.clone(),
            });
        }
    }
    Ok(())
}

fn retain_servers(state: &mut StateView, cluster: &Name, leaving: &[ServerId]) {
    if let Some(rec) = state.clusters.get_mut(cluster) {
        rec.servers.retain(|s| !leaving.contains(s));
    }
}

#[cfg(test)]
#[path = "apply_servers_tests.rs"]
mod tests;
