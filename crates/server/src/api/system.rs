//! Handlers for the server as a whole: health, metrics and the OpenAPI document.

use super::{ApiDoc, AppState};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use strata_api_types::Health;
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
