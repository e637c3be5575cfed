//! Handlers for the servers of the management group: admitting a new server (`join`), listing
//! them with their state, and this server's own status.
//!
//! A server's state comes from the leader (every request here is forwarded to it): `down` if it
//! does not answer a status probe within half a second; `joining` if it answers but is not yet
//! in the Raft membership, or is a learner that has not caught up with the log; `up` otherwise.
//! openraft 0.9 reports no per-follower heartbeat time, so the probe is what tells down from up.

use super::{parse_name, ApiError, AppState};
use crate::peers;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use std::collections::BTreeMap;
use strata_api_types::{JoinRequest, ServerInfo, ServerStatus};
use strata_meta::{Command, MetaMetrics, ServerRecord, StateView, QUORUM_TIMEOUT};

/// A learner more than this many log entries behind the leader is still `joining`.
const CATCH_UP_LAG: u64 = 100;

/// `POST /v1/servers/join`: register a server and add it to the Raft group as a learner; for a
/// server registered before, update its addresses. Idempotent, so a joiner can retry.
#[utoipa::path(post, path = "/v1/servers/join", request_body = JoinRequest,
    responses((status = 204), (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn join(
    State(app): State<AppState>,
    Json(req): Json<JoinRequest>,
) -> Result<StatusCode, ApiError> {
    let name = parse_name("server", &req.name)?;
    let state = app.meta.read().await?;
    match state.servers.get(&req.id) {
        Some(known) if known.name != name || known.raft_node_id != req.raft_node_id => {
            return Err(ApiError::conflict(format!(
                "server id {} is registered as {:?} with Raft node {}, not as {:?} with node {}; \
                 this data directory was not made for this group",
                req.id,
                known.name.as_str(),
                known.raft_node_id,
                req.name,
                req.raft_node_id
            )));
        }
        Some(known) => {
            let same = (&known.api_addr, &known.nbd_addr, &known.peer_addr)
                == (&req.api_addr, &req.nbd_addr, &req.peer_addr);
            if !same {
                tracing::info!(server = %name, api = %req.api_addr, "updating a server's addresses");
                let cmd = Command::UpdateServer {
                    id: req.id,
                    api_addr: req.api_addr.clone(),
                    nbd_addr: req.nbd_addr.clone(),
                    peer_addr: req.peer_addr.clone(),
                };
                app.meta.write(cmd).await?;
            }
        }
        None => {
            let rec = ServerRecord {
                id: req.id,
                name: name.clone(),
                api_addr: req.api_addr.clone(),
                nbd_addr: req.nbd_addr.clone(),
                peer_addr: req.peer_addr.clone(),
                raft_node_id: req.raft_node_id,
            };
            app.meta.write(Command::AddServer(rec)).await?;
            tracing::info!(server = %name, api = %req.api_addr, "server registered");
        }
    }
    let member = app
        .meta
        .raft_metrics()
        .membership_config
        .nodes()
        .any(|(id, _)| *id == req.raft_node_id);
    if !member {
        let add = app
            .meta
            .add_learner(req.raft_node_id, req.api_addr.clone(), false);
        tokio::time::timeout(QUORUM_TIMEOUT, add)
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "server {name} is registered but the group did not add it as a follower \
                     within {QUORUM_TIMEOUT:?}; start it again with --join to retry"
                ))
            })??;
        tracing::info!(server = %name, "server added to the management group as a learner");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/servers/self`: this server's own status, answered without the leader.
#[utoipa::path(get, path = "/v1/servers/self", responses((status = 200, body = ServerStatus)))]
pub async fn server_self(State(app): State<AppState>) -> Json<ServerStatus> {
    Json(peers::self_status(&app))
}

/// `GET /v1/servers`: every server of the management group with its state, role and space.
#[utoipa::path(get, path = "/v1/servers", responses((status = 200, body = Vec<ServerInfo>)))]
pub async fn list_servers(State(app): State<AppState>) -> Result<Json<Vec<ServerInfo>>, ApiError> {
    let state = app.meta.read().await?;
    Ok(Json(server_infos(&app, &state).await))
}

/// Every server's [`ServerInfo`], sorted by name, probing the others for their status.
pub async fn server_infos(app: &AppState, state: &StateView) -> Vec<ServerInfo> {
    let records: Vec<ServerRecord> = state.servers.values().cloned().collect();
    let statuses = peers::statuses(app, &records).await;
    let raft = app.meta.raft_metrics();
    let mut out: Vec<ServerInfo> = records
        .iter()
        .map(|s| {
            let status = statuses.get(&s.raft_node_id);
            ServerInfo {
                id: s.id,
                name: s.name.to_string(),
                api_addr: s.api_addr.clone(),
                nbd_addr: s.nbd_addr.clone(),
                peer_addr: s.peer_addr.clone(),
                state: server_state(&raft, s.raft_node_id, status.is_some()).into(),
                manager: manager_role(&raft, s.raft_node_id).into(),
                cluster: state.cluster_of(s.id).map(|c| c.name.to_string()),
                capacity_bytes: status.and_then(|st| st.capacity_bytes),
                used_bytes: status.map(|st| st.used_bytes),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `up`, `down` or `joining`, as the module documentation says.
fn server_state(raft: &MetaMetrics, node: u64, answers: bool) -> &'static str {
    if !answers {
        return "down";
    }
    let member = raft.membership_config.nodes().any(|(id, _)| *id == node);
    let voter = raft.membership_config.voter_ids().any(|id| id == node);
    if !member {
        return "joining";
    }
    if voter || node == raft.id {
        return "up";
    }
    let matched: BTreeMap<u64, Option<u64>> = raft
        .replication
        .iter()
        .flatten()
        .map(|(id, log)| (*id, log.map(|l| l.index)))
        .collect();
    let last = raft.last_log_index.unwrap_or(0);
    match matched.get(&node) {
        Some(Some(index)) if index + CATCH_UP_LAG >= last => "up",
        _ => "joining",
    }
}

/// `leader`, `manager` or `none`.
pub fn manager_role(raft: &MetaMetrics, node: u64) -> &'static str {
    if raft.current_leader == Some(node) {
        "leader"
    } else if raft.membership_config.voter_ids().any(|id| id == node) {
        "manager"
    } else {
        "none"
    }
}
