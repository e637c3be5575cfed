//! Handlers for the server as a whole: health, metrics, the OpenAPI document, the servers and
//! clusters of the management group.

use super::{ApiDoc, ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use strata_api_types::{ClusterInfo, Health, ServerInfo};
use strata_meta::StateView;
use utoipa::OpenApi;

/// `GET /healthz`: the server serves and its management state is readable.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        server: app.identity.name.to_string(),
    })
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    refresh_gauges(&app);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
}

/// Sets the gauges that are read rather than counted.
fn refresh_gauges(app: &AppState) {
    let stats = app.store.stats();
    metrics::gauge!("strata_store_data_bytes").set(stats.data_bytes as f64);
    metrics::gauge!("strata_store_volumes").set(stats.volumes as f64);
    metrics::gauge!("strata_store_layers").set(stats.layers as f64);
    if let Some((capacity, free)) = filesystem_space(&app.data_dir) {
        metrics::gauge!("strata_store_capacity_bytes").set(capacity as f64);
        metrics::gauge!("strata_store_free_bytes").set(free as f64);
    }
    let state = app.meta.local_state();
    for v in state.volumes.values() {
        let labels = [("volume", v.name.to_string())];
        metrics::gauge!("strata_volume_snapshots", &labels).set(v.snapshots.len() as f64);
        metrics::gauge!("strata_volume_size_bytes", &labels).set(v.size as f64);
    }
    let raft = app.meta.raft_metrics();
    metrics::gauge!("strata_meta_term").set(raft.current_term as f64);
    metrics::gauge!("strata_meta_last_applied")
        .set(raft.last_applied.map_or(0, |l| l.index) as f64);
    metrics::gauge!("strata_meta_is_leader")
        .set(f64::from(u8::from(raft.current_leader == Some(raft.id))));
}

/// Total and free bytes of the filesystem holding `path`.
pub fn filesystem_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some((s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
}

/// `GET /v1/openapi.json`: this API's OpenAPI document.
pub async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// `GET /v1/servers`: every server of the management group.
#[utoipa::path(get, path = "/v1/servers", responses((status = 200, body = Vec<ServerInfo>)))]
pub async fn list_servers(State(app): State<AppState>) -> Result<Json<Vec<ServerInfo>>, ApiError> {
    let state = app.meta.read().await?;
    let raft = app.meta.raft_metrics();
    let voters: Vec<u64> = raft.membership_config.voter_ids().collect();
    let mut out = Vec::new();
    for s in state.servers.values() {
        let is_me = s.id == app.identity.id;
        let (capacity_bytes, used_bytes) = if is_me {
            let capacity = filesystem_space(&app.data_dir).map_or(0, |(c, _)| c);
            (capacity, app.store.stats().data_bytes)
        } else {
            (0, 0)
        };
        let manager = if raft.current_leader == Some(s.raft_node_id) {
            "leader"
        } else if voters.contains(&s.raft_node_id) {
            "manager"
        } else {
            "none"
        };
        out.push(ServerInfo {
            id: s.id,
            name: s.name.to_string(),
            api_addr: s.api_addr.clone(),
            nbd_addr: s.nbd_addr.clone(),
            peer_addr: s.peer_addr.clone(),
            state: if is_me { "up" } else { "unknown" }.into(),
            manager: manager.into(),
            cluster: cluster_of(&state, s.id),
            capacity_bytes,
            used_bytes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

fn cluster_of(state: &StateView, server: strata_types::ServerId) -> Option<String> {
    state
        .clusters
        .values()
        .find(|c| c.servers.contains(&server))
        .map(|c| c.name.to_string())
}

fn cluster_info(state: &StateView, c: &strata_meta::ClusterRecord) -> ClusterInfo {
    ClusterInfo {
        name: c.name.to_string(),
        servers: c
            .servers
            .iter()
            .filter_map(|id| state.servers.values().find(|s| s.id == *id))
            .map(|s| s.name.to_string())
            .collect(),
        volumes: state
            .volumes
            .values()
            .filter(|v| v.cluster == c.name)
            .map(|v| v.name.to_string())
            .collect(),
    }
}

/// `GET /v1/clusters`: every cluster of the management group.
#[utoipa::path(get, path = "/v1/clusters", responses((status = 200, body = Vec<ClusterInfo>)))]
pub async fn list_clusters(
    State(app): State<AppState>,
) -> Result<Json<Vec<ClusterInfo>>, ApiError> {
    let state = app.meta.read().await?;
    Ok(Json(
        state
            .clusters
            .values()
            .map(|c| cluster_info(&state, c))
            .collect(),
    ))
}

/// `GET /v1/clusters/{name}`: one cluster.
#[utoipa::path(get, path = "/v1/clusters/{name}",
    responses((status = 200, body = ClusterInfo), (status = 404, body = strata_api_types::ErrorBody)))]
pub async fn show_cluster(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ClusterInfo>, ApiError> {
    let state = app.meta.read().await?;
    let c = state
        .clusters
        .values()
        .find(|c| c.name.as_str() == name)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no cluster named {name:?}; see `strata cluster list`"
            ))
        })?;
    Ok(Json(cluster_info(&state, c)))
}
