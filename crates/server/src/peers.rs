//! Talking to the other servers of the group over their APIs: where a Raft node's API is, which
//! managers answer, and each server's own status (`GET /v1/servers/self`: capacity and use).
//!
//! Every probe has a short timeout, so a list of servers with some of them down still answers
//! quickly; what a down server would have said is reported as unknown, never as zero.

use crate::api::{filesystem_space, AppState};
use std::collections::BTreeMap;
use std::time::Duration;
use strata_api_types::ServerStatus;
use strata_meta::ServerRecord;
use tokio::task::JoinSet;

/// How long a status probe of another server may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The API base URL of the server that is Raft node `node_id`: from its server record, else the
/// address it has in the Raft membership.
pub fn api_url_of(app: &AppState, node_id: u64) -> String {
    let state = app.meta.local_state();
    if let Some(s) = state.servers.values().find(|s| s.raft_node_id == node_id) {
        return s.api_addr.clone();
    }
    let metrics = app.meta.raft_metrics();
    let addr = metrics
        .membership_config
        .nodes()
        .find(|(id, _)| **id == node_id)
        .map(|(_, n)| n.addr.clone());
    addr.unwrap_or_default()
}

/// This server's own status.
pub fn self_status(app: &AppState) -> ServerStatus {
    ServerStatus {
        id: app.identity.id,
        name: app.identity.name.to_string(),
        capacity_bytes: filesystem_space(&app.data_dir).map(|(c, _)| c),
        used_bytes: app.store.stats().data_bytes,
        max_file_bytes: Some(app.store.max_file_size()),
    }
}

/// Asks every server in `servers` for its status at once; this server answers from memory.
/// Servers that do not answer within [`PROBE_TIMEOUT`] are missing from the result.
pub async fn statuses(app: &AppState, servers: &[ServerRecord]) -> BTreeMap<u64, ServerStatus> {
    let mut out = BTreeMap::new();
    let mut probes = JoinSet::new();
    for s in servers {
        if s.id == app.identity.id {
            out.insert(s.raft_node_id, self_status(app));
            continue;
        }
        let http = app.http.clone();
        let url = format!("{}/v1/servers/self", s.api_addr.trim_end_matches('/'));
        let (node, id) = (s.raft_node_id, s.id);
        probes.spawn(async move {
            let resp = http.get(&url).timeout(PROBE_TIMEOUT).send().await.ok()?;
            let status: ServerStatus = resp.error_for_status().ok()?.json().await.ok()?;
            // A different server at that address is not the one asked about.
            (status.id == id).then_some((node, status))
        });
    }
    while let Some(done) = probes.join_next().await {
        if let Ok(Some((node, status))) = done {
            out.insert(node, status);
        }
    }
    out
}

/// How many managers (Raft voters) answer a status probe, this server included if it is one,
/// and how many managers there are. A voter without a server record counts as unreachable.
pub async fn reachable_managers(app: &AppState) -> (usize, usize) {
    let metrics = app.meta.raft_metrics();
    let voters: Vec<u64> = metrics.membership_config.voter_ids().collect();
    let state = app.meta.local_state();
    let records: Vec<ServerRecord> = state
        .servers
        .values()
        .filter(|s| voters.contains(&s.raft_node_id))
        .cloned()
        .collect();
    let answered = statuses(app, &records).await;
    (answered.len(), voters.len())
}
