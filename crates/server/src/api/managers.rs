//! Handlers for the managers: the servers that vote in the management quorum (Raft voters).
//! Every other server follows the log as a learner.
//!
//! A group has 1, 3 or 5 managers. An even count tolerates no more failures than one manager
//! fewer, and a change to 2 or 4 is the moment a group is most fragile, so a change must land
//! on an odd count: managers are added or removed two at a time (`strata manager add A,B`),
//! in one joint-consensus membership change. A new manager must be a running, joined server.

use super::servers::server_infos;
use super::{find_server, ApiError, AppState};
use axum::extract::State;
use axum::Json;
use std::collections::BTreeSet;
use std::time::Duration;
use strata_api_types::{ChangeManagers, ManagerInfo, ServerInfo};
use strata_meta::StateView;

/// The manager counts a group may have.
pub const MANAGER_COUNTS: [usize; 3] = [1, 3, 5];

/// How long a membership change may take before the request gives up waiting for it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /v1/managers`: the managers, marking the leader.
#[utoipa::path(get, path = "/v1/managers", responses((status = 200, body = Vec<ManagerInfo>)))]
pub async fn list_managers(
    State(app): State<AppState>,
) -> Result<Json<Vec<ManagerInfo>>, ApiError> {
    let state = app.meta.read().await?;
    Ok(Json(managers(&app, &state).await))
}

async fn managers(app: &AppState, state: &StateView) -> Vec<ManagerInfo> {
    let voters: BTreeSet<u64> = app
        .meta
        .raft_metrics()
        .membership_config
        .voter_ids()
        .collect();
    let infos: Vec<ServerInfo> = server_infos(app, state).await;
    state
        .servers
        .values()
        .filter(|s| voters.contains(&s.raft_node_id))
        .filter_map(|s| {
            let info = infos.iter().find(|i| i.id == s.id)?;
            Some(ManagerInfo {
                name: info.name.clone(),
                leader: info.manager == "leader",
                state: info.state.clone(),
                raft_node_id: s.raft_node_id,
            })
        })
        .collect()
}

/// `POST /v1/managers`: add and remove managers in one membership change; the result must be
/// 1, 3 or 5 managers. Removed managers keep following the log.
#[utoipa::path(post, path = "/v1/managers", request_body = ChangeManagers,
    responses((status = 200, body = Vec<ManagerInfo>), (status = 400, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn change_managers(
    State(app): State<AppState>,
    Json(req): Json<ChangeManagers>,
) -> Result<Json<Vec<ManagerInfo>>, ApiError> {
    if req.add.is_empty() && req.remove.is_empty() {
        return Err(ApiError::bad_request(
            "name servers to add or remove as managers",
        ));
    }
    let state = app.meta.read().await?;
    let raft = app.meta.raft_metrics();
    let mut voters: BTreeSet<u64> = raft.membership_config.voter_ids().collect();
    let before = voters.len();
    let members: BTreeSet<u64> = raft.membership_config.nodes().map(|(id, _)| *id).collect();
    let mut added = Vec::new();
    for name in &req.add {
        let s = find_server(&state, name)?;
        if !voters.insert(s.raft_node_id) {
            return Err(ApiError::conflict(format!("{name} is already a manager")));
        }
        if !members.contains(&s.raft_node_id) {
            return Err(ApiError::conflict(format!(
                "{name} has not finished joining the group; wait until `strata server list` shows it up"
            )));
        }
        added.push(s.clone());
    }
    for name in &req.remove {
        let s = find_server(&state, name)?;
        if !voters.remove(&s.raft_node_id) {
            return Err(ApiError::bad_request(format!(
                "{name} is not a manager; see `strata manager list`"
            )));
        }
    }
    if !MANAGER_COUNTS.contains(&voters.len()) {
        let hint = if voters.len() > before {
            "add two at once, e.g. `strata manager add A,B`"
        } else {
            "remove two at once, e.g. `strata manager remove A,B`"
        };
        return Err(ApiError::bad_request(format!(
            "the group would have {} managers; it needs 1, 3 or 5 (an even count survives no more \
             failures than one fewer) — {hint}",
            voters.len()
        )));
    }
    let answering = crate::peers::statuses(&app, &added).await;
    if let Some(down) = added
        .iter()
        .find(|s| !answering.contains_key(&s.raft_node_id))
    {
        return Err(ApiError::conflict(format!(
            "{} does not answer; a new manager must be running — start it, then retry",
            down.name
        )));
    }
    tracing::info!(?voters, "changing the managers");
    tokio::time::timeout(CHANGE_TIMEOUT, app.meta.change_membership(voters, true))
        .await
        .map_err(|_| {
            ApiError::unavailable(format!(
                "the change of managers was not confirmed within {CHANGE_TIMEOUT:?}; it may still \
                 complete — check `strata manager list`"
            ))
        })??;
    let state = app.meta.local_state();
    Ok(Json(managers(&app, &state).await))
}
