//! The HTTP surface of a server: the `/v1` management API (JSON; described by the generated
//! OpenAPI document at `/v1/openapi.json`), `/healthz`, `/metrics` (Prometheus text) and the
//! Raft endpoints other managers call. Every CLI command is a thin client of `/v1`.
//!
//! Every `/v1` request that needs the management leader is forwarded to it first (see
//! `forward.rs`), so any server's API serves any request.
//!
//! Handlers change the management state through Raft first and then bring this server's store
//! in line with it ([`AppState::apply_to_store`]), so a request returns only once its effect is
//! both committed and visible on the NBD exports of this server.

mod barrier;
mod clusters;
mod error;
mod internal;
mod job_runs;
mod jobs;
mod managers;
mod servers;
mod system;
mod volumes;

pub use error::ApiError;
pub(crate) use job_runs::resume_removal;
pub use managers::MANAGER_COUNTS;
pub use system::filesystem_space;

use crate::identity::Identity;
use crate::reconcile::reconcile;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use strata_meta::{Meta, ServerRecord, StateView};
use strata_store::Store;
use strata_types::Name;
use utoipa::OpenApi;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The volume engine: gateways, replicas, barrier, resync.
    pub engine: Arc<strata_volume::Engine>,
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
    /// The HTTP client for other servers' APIs (forwarding, status probes).
    pub http: reqwest::Client,
    /// Low-priority threads for syncs that clients do not wait for.
    pub(crate) background: Arc<crate::background::Background>,
    /// The jobs this server runs.
    pub(crate) jobs: Arc<crate::jobs::Jobs>,
    /// This server's own API base URL (listen address), through which its job runners and
    /// engine send changes to the leader.
    pub own_api: String,
}

/// Now, in Unix milliseconds (for the times commands carry).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses a user-given name, or answers 400 saying what kind of name was bad.
pub(crate) fn parse_name(what: &str, text: &str) -> Result<Name, ApiError> {
    Name::new(text).map_err(|e| ApiError::bad_request(format!("invalid {what} name: {e}")))
}

/// The server called `name`, or 404.
pub(crate) fn find_server<'a>(
    state: &'a StateView,
    name: &str,
) -> Result<&'a ServerRecord, ApiError> {
    let n = parse_name("server", name)?;
    state.server_by_name(&n).ok_or_else(|| {
        ApiError::not_found(format!(
            "no server named {name:?}; see `strata server list`"
        ))
    })
}

impl AppState {
    /// Brings the store in line with this server's applied management state.
    pub async fn apply_to_store(&self) -> Result<(), ApiError> {
        // The guard moves into the blocking task: if this handler is dropped (client gone,
        // quorum lost), the reconcile still runs to its end before another may start.
        let guard = self.reconcile_lock.clone().lock_owned().await;
        let state = self.meta.local_state();
        let (store, me, engine) = (self.store.clone(), self.identity.id, self.engine.clone());
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let done = reconcile(&state, &store, me);
            // The engine sees a layer only once the store has it: a replica must not accept
            // writes for a head whose predecessor it has not frozen yet. It sees a volume gone
            // from this server before its files are: the copy is not current any more.
            engine.update(&state);
            done?;
            crate::reconcile::drop_unwanted(&state, &store, me)
        })
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
        servers::list_servers,
        servers::server_self,
        servers::join,
        managers::list_managers,
        managers::change_managers,
        clusters::list_clusters,
        clusters::show_cluster,
        clusters::create_cluster,
        clusters::add_server,
        clusters::remove_server,
        volumes::create_volume,
        volumes::list_volumes,
        volumes::show_volume,
        volumes::resize_volume,
        volumes::delete_volume,
        volumes::create_snapshot,
        volumes::list_snapshots,
        volumes::delete_snapshot,
        volumes::diff,
        volumes::verify,
        jobs::list_jobs,
        jobs::show_job,
        jobs::cancel_job,
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
        .route("/v1/servers", get(servers::list_servers))
        .route("/v1/servers/self", get(servers::server_self))
        .route("/v1/servers/join", post(servers::join))
        .route(
            "/v1/managers",
            get(managers::list_managers).post(managers::change_managers),
        )
        .route(
            "/v1/clusters",
            get(clusters::list_clusters).post(clusters::create_cluster),
        )
        .route("/v1/clusters/{name}", get(clusters::show_cluster))
        .route("/v1/clusters/{name}/servers", post(clusters::add_server))
        .route(
            "/v1/clusters/{name}/servers/{server}",
            axum::routing::delete(clusters::remove_server),
        )
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
        .route("/v1/volumes/{name}/verify", post(volumes::verify))
        .route("/v1/jobs", get(jobs::list_jobs))
        .route(
            "/v1/jobs/{id}",
            get(jobs::show_job).delete(jobs::cancel_job),
        )
        .route("/v1/internal/jobs/{id}", post(jobs::change_job))
        .route(
            "/v1/internal/volumes/{id}/stale",
            post(internal::mark_stale),
        )
        .route(
            "/v1/internal/volumes/{id}/in-sync",
            post(internal::mark_in_sync),
        )
        .route(
            "/v1/internal/volumes/{id}/seeded",
            post(internal::migration_seeded),
        )
        .route(
            "/v1/internal/volumes/{id}/finish",
            post(internal::finish_migration),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::forward::forward_to_leader,
        ))
        .merge(internal::router())
        .with_state(state)
        .merge(raft)
}
