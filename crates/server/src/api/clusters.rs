//! Handlers for clusters: named sets of servers that volumes live on. A server is in at most
//! one cluster; creating a cluster or adding a server to one may take servers out of `default`.
//! Taking a server out of a cluster is refused while a volume there needs it (see
//! `strata_meta`'s `apply_servers.rs`); otherwise taking it out is a job that moves the data
//! off it.

use super::barrier::Barrier;
use super::{find_server, parse_name, ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use futures::future::join_all;
use strata_api_types::{AddClusterServer, ClusterInfo, CreateCluster, JobInfo};
use strata_meta::{apply_command, ClusterRecord, Command, CommandOutput, JobKind, StateView};
use strata_types::{Name, ServerId};

fn cluster_info(state: &StateView, c: &ClusterRecord) -> ClusterInfo {
    let names = |ids: &[ServerId]| {
        ids.iter()
            .filter_map(|id| state.servers.get(id))
            .map(|s| s.name.to_string())
            .collect()
    };
    ClusterInfo {
        name: c.name.to_string(),
        servers: names(&c.servers),
        leaving: names(&c.leaving),
        volumes: state
            .volumes
            .values()
            .filter(|v| v.cluster == c.name)
            .map(|v| v.name.to_string())
            .collect(),
    }
}

/// The cluster's info after a command that answers with a cluster.
fn changed(app: &AppState, out: CommandOutput) -> Result<ClusterInfo, ApiError> {
    match out {
        CommandOutput::Cluster(c) => Ok(cluster_info(&app.meta.local_state(), &c)),
        other => Err(ApiError::internal(format!(
            "a cluster change answered {other:?}"
        ))),
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
    let c = Name::new(&name)
        .ok()
        .and_then(|n| state.clusters.get(&n))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no cluster named {name:?}; see `strata cluster list`"
            ))
        })?;
    Ok(Json(cluster_info(&state, c)))
}

/// `POST /v1/clusters`: create a cluster of servers, taking them out of `default` if there.
#[utoipa::path(post, path = "/v1/clusters", request_body = CreateCluster,
    responses((status = 201, body = ClusterInfo), (status = 400, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn create_cluster(
    State(app): State<AppState>,
    Json(req): Json<CreateCluster>,
) -> Result<(StatusCode, Json<ClusterInfo>), ApiError> {
    let name = parse_name("cluster", &req.name)?;
    let state = app.meta.read().await?;
    let servers = req
        .servers
        .iter()
        .map(|s| find_server(&state, s).map(|r| r.id))
        .collect::<Result<Vec<_>, _>>()?;
    let cmd = Command::CreateCluster {
        name,
        servers,
        take_from_default: true,
    };
    let out = app.meta.write(cmd).await?;
    Ok((StatusCode::CREATED, Json(changed(&app, out)?)))
}

/// `POST /v1/clusters/{name}/servers`: add a server to a cluster.
#[utoipa::path(post, path = "/v1/clusters/{name}/servers", request_body = AddClusterServer,
    responses((status = 200, body = ClusterInfo), (status = 404, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn add_server(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<AddClusterServer>,
) -> Result<Json<ClusterInfo>, ApiError> {
    let cluster = parse_name("cluster", &name)?;
    let state = app.meta.read().await?;
    let server = find_server(&state, &req.server)?.id;
    let out = app
        .meta
        .write(Command::AddClusterServer { cluster, server })
        .await?;
    Ok(Json(changed(&app, out)?))
}

/// `DELETE /v1/clusters/{name}/servers/{server}`: take a server out of a cluster, as a job
/// (answered 202 at once; a removal the state refuses is answered with the refusal and starts
/// no job). Each volume holding data on it starts migrating to a layout without it, under a
/// barrier: every gateway of the volume (but the leaving servers, which may be dead) holds its
/// writes until it has applied the migration, so every later write reaches the servers that
/// gain chunks. The server stays a leaving member until the last migration finishes; the job
/// ends then.
#[utoipa::path(delete, path = "/v1/clusters/{name}/servers/{server}",
    responses((status = 202, body = JobInfo), (status = 404, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn remove_server(
    State(app): State<AppState>,
    Path((name, server)): Path<(String, String)>,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    let cluster = parse_name("cluster", &name)?;
    let state = app.meta.read().await?;
    let server = find_server(&state, &server)?.id;
    // Refusals (unknown cluster, too few servers left, already leaving) are answered at once,
    // without a job: the state machine is deterministic, so a trial on a copy tells.
    let removal = Command::RemoveClusterServer {
        cluster: cluster.clone(),
        server,
    };
    apply_command(&mut state.clone(), removal.clone())?;
    let kind = JobKind::RemoveServer {
        cluster: cluster.clone(),
        server,
    };
    let (handle, record) = super::job_runs::start(&app, kind).await?;
    if let Err(e) = move_off(&app, &state, &cluster, server, removal).await {
        super::job_runs::fail(&app, handle, e.message.clone()).await;
        return Err(e);
    }
    let work = super::job_runs::remove_server(app.clone(), handle.clone(), cluster, server);
    crate::jobs::spawn(app.clone(), handle, work);
    Ok((
        StatusCode::ACCEPTED,
        Json(super::jobs::job_info(&app.meta.local_state(), &record)),
    ))
}

/// Commits the removal of `server` under a barrier on every volume holding data on it.
async fn move_off(
    app: &AppState,
    state: &StateView,
    cluster: &Name,
    server: ServerId,
    removal: Command,
) -> Result<(), ApiError> {
    let barriers: Vec<Barrier> = state
        .volumes
        .values()
        .filter(|v| v.holds(server))
        .map(|v| Barrier::new(app, state, v))
        .collect();
    let mut excused: Vec<String> = state
        .clusters
        .get(cluster)
        .into_iter()
        .flat_map(|c| c.leaving.iter())
        .chain([&server])
        .filter_map(|s| state.servers.get(s).map(|r| r.api_addr.clone()))
        .collect();
    excused.sort();
    let missing: Vec<String> = join_all(barriers.iter().map(|b| b.pause()))
        .await
        .into_iter()
        .flatten()
        .filter(|m| excused.binary_search(m).is_err())
        .collect();
    let removed = async {
        if let Some(m) = missing.first() {
            return Err(ApiError::unavailable(format!(
                "the server at {m} did not hold its writes, so the move of the data cannot start \
                 safely; bring it back (or take it out first) and try again"
            )));
        }
        app.meta.write(removal).await?;
        app.meta.announce_commits().await;
        join_all(barriers.iter().map(|b| b.settle(true))).await;
        Ok(())
    }
    .await;
    join_all(barriers.iter().map(|b| b.release())).await;
    removed
}
