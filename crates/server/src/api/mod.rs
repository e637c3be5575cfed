//! The HTTP surface of a server: the `/v1` management API (JSON; described by the generated
//! OpenAPI document at `/v1/openapi.json`), `/healthz`, `/metrics` (Prometheus text) and the
//! Raft endpoints other managers call. Every CLI command is a thin client of `/v1`.
//!
//! Handlers change the management state through Raft first and then bring this server's store
//! in line with it ([`AppState::apply_to_store`]), so a request returns only once its effect is
//! both committed and visible on the NBD exports of this server.

mod error;
mod system;
mod volumes;

pub use error::ApiError;

use crate::identity::Identity;
use crate::reconcile::reconcile;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use strata_meta::Meta;
use strata_store::Store;
use utoipa::OpenApi;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The replicated management state.
    pub meta: Meta,
    /// This server's block store.
    pub store: Arc<Store>,
    /// This server's identity.
    pub identity: Arc<Identity>,
    /// This server's data directory.
    pub data_dir: std::path::PathBuf,
    /// The NBD address clients reach this server at (`host:port`).
    pub nbd_addr: String,
    /// Serialises store reconciliation between handlers and the background follower.
    pub reconcile_lock: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    /// Brings the store in line with this server's applied management state.
    pub async fn apply_to_store(&self) -> Result<(), ApiError> {
        let _guard = self.reconcile_lock.lock().await;
        let state = self.meta.local_state();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || reconcile(&state, &store))
            .await
            .map_err(|e| ApiError::internal(format!("reconcile task failed: {e}")))??;
        Ok(())
    }
}

/// The generated OpenAPI description of `/v1`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strata management API",
        description = "Volumes, snapshots, servers and clusters of a Strata management group."
    ),
    paths(
        system::healthz,
        system::list_servers,
        system::list_clusters,
        system::show_cluster,
        volumes::create_volume,
        volumes::list_volumes,
        volumes::show_volume,
        volumes::resize_volume,
        volumes::delete_volume,
        volumes::create_snapshot,
        volumes::list_snapshots,
        volumes::delete_snapshot,
        volumes::diff,
    ),
    components(schemas(strata_api_types::ErrorBody))
)]
pub struct ApiDoc;

/// The whole HTTP router of a server.
pub fn router(state: AppState) -> Router {
    let raft = strata_meta::raft_router(state.meta.clone());
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics))
        .route("/v1/openapi.json", get(system::openapi))
        .route("/v1/servers", get(system::list_servers))
        .route("/v1/clusters", get(system::list_clusters))
        .route("/v1/clusters/{name}", get(system::show_cluster))
        .route(
            "/v1/volumes",
            get(volumes::list_volumes).post(volumes::create_volume),
        )
        .route(
            "/v1/volumes/{name}",
            get(volumes::show_volume).delete(volumes::delete_volume),
        )
        .route("/v1/volumes/{name}/resize", post(volumes::resize_volume))
        .route(
            "/v1/volumes/{name}/snapshots",
            get(volumes::list_snapshots).post(volumes::create_snapshot),
        )
        .route(
            "/v1/volumes/{name}/snapshots/{snapshot}",
            axum::routing::delete(volumes::delete_snapshot),
        )
        .route("/v1/volumes/{name}/diff", get(volumes::diff))
        .with_state(state)
        .merge(raft)
}
