//! Handlers for volumes and their snapshots.

use super::{parse_name, ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use strata_api_types::{
    CreateSnapshot, CreateVolume, DiffInfo, Range, ResizeVolume, SnapshotInfo, VolumeInfo,
};
use strata_meta::{Command, CommandError, MetaError, StateView, VolumeRecord};
use strata_types::{LayerId, Name, VolumeId};

/// The largest volume accepted: 1 PiB.
const MAX_VOLUME_SIZE: u64 = 1 << 50;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Refuses sizes past the largest volume; the state machine checks the rest (whole sectors).
fn check_size(size: u64) -> Result<(), ApiError> {
    if size > MAX_VOLUME_SIZE {
        return Err(ApiError::bad_request(format!(
            "size {} is larger than the largest volume, 1PiB",
            strata_types::format_size(size)
        )));
    }
    Ok(())
}

fn find_volume<'a>(state: &'a StateView, name: &str) -> Result<&'a VolumeRecord, ApiError> {
    Name::new(name)
        .ok()
        .and_then(|n| state.volumes.get(&n))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no volume named {name:?}; see `strata volume list`"
            ))
        })
}

fn snapshot_info(v: &VolumeRecord, s: &strata_meta::SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        id: s.layer,
        name: s.name.to_string(),
        volume: v.name.to_string(),
        size: s.size,
        created_unix_ms: s.created_unix_ms,
        export: format!("{}@{}", v.name, s.name),
    }
}

fn volume_info(app: &AppState, state: &StateView, v: &VolumeRecord) -> VolumeInfo {
    // Until volumes are distributed, one server holds each; the answering server knows the use
    // only of what it holds.
    let used_bytes = app.store.volume_used_bytes(v.id).ok();
    let nbd_addr = state
        .home_server(v)
        .map_or(app.nbd_addr.as_str(), |h| h.nbd_addr.as_str());
    VolumeInfo {
        id: v.id,
        name: v.name.to_string(),
        cluster: v.cluster.to_string(),
        size: v.size,
        replicas: v.replicas,
        role: "primary".into(),
        status: "healthy".into(),
        used_bytes,
        head: v
            .layers
            .last()
            .copied()
            .unwrap_or(LayerId(uuid::Uuid::nil())),
        snapshots: v.snapshots.iter().map(|s| snapshot_info(v, s)).collect(),
        nbd_url: format!("nbd://{nbd_addr}/{}", v.name),
        created_unix_ms: v.created_unix_ms,
    }
}

/// `POST /v1/volumes`: create a volume.
#[utoipa::path(post, path = "/v1/volumes", request_body = CreateVolume,
    responses((status = 201, body = VolumeInfo), (status = 400, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn create_volume(
    State(app): State<AppState>,
    Json(req): Json<CreateVolume>,
) -> Result<(StatusCode, Json<VolumeInfo>), ApiError> {
    let name = parse_name("volume", &req.name)?;
    check_size(req.size)?;
    let cluster = parse_name("cluster", req.cluster.as_deref().unwrap_or("default"))?;
    let replicas = req.replicas.unwrap_or(1);
    if !(1..=3).contains(&replicas) {
        return Err(ApiError::bad_request(format!(
            "replicas must be 1, 2 or 3, not {replicas}"
        )));
    }
    app.meta
        .write(Command::CreateVolume {
            id: VolumeId::new_random(),
            name: name.clone(),
            cluster,
            size: req.size,
            replicas,
            head: LayerId::new_random(),
            now_ms: now_ms(),
        })
        .await?;
    app.apply_to_store().await?;
    let state = app.meta.local_state();
    let v = find_volume(&state, name.as_str())?;
    Ok((StatusCode::CREATED, Json(volume_info(&app, &state, v))))
}

/// `GET /v1/volumes`: every volume.
#[utoipa::path(get, path = "/v1/volumes", responses((status = 200, body = Vec<VolumeInfo>)))]
pub async fn list_volumes(State(app): State<AppState>) -> Result<Json<Vec<VolumeInfo>>, ApiError> {
    let state = app.meta.read().await?;
    // Keyed by name, so already in name order.
    Ok(Json(
        state
            .volumes
            .values()
            .map(|v| volume_info(&app, &state, v))
            .collect(),
    ))
}

/// `GET /v1/volumes/{name}`: one volume with its snapshots.
#[utoipa::path(get, path = "/v1/volumes/{name}",
    responses((status = 200, body = VolumeInfo), (status = 404, body = strata_api_types::ErrorBody)))]
pub async fn show_volume(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VolumeInfo>, ApiError> {
    let state = app.meta.read().await?;
    Ok(Json(volume_info(&app, &state, find_volume(&state, &name)?)))
}

/// `POST /v1/volumes/{name}/resize`: grow a volume. Clients see the new size when they reconnect.
#[utoipa::path(post, path = "/v1/volumes/{name}/resize", request_body = ResizeVolume,
    responses((status = 200, body = VolumeInfo), (status = 400, body = strata_api_types::ErrorBody),
              (status = 404, body = strata_api_types::ErrorBody)))]
pub async fn resize_volume(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<ResizeVolume>,
) -> Result<Json<VolumeInfo>, ApiError> {
    let name = parse_name("volume", &name)?;
    check_size(req.size)?;
    app.meta
        .write(Command::ResizeVolume {
            name: name.clone(),
            size: req.size,
        })
        .await?;
    app.apply_to_store().await?;
    let state = app.meta.local_state();
    Ok(Json(volume_info(
        &app,
        &state,
        find_volume(&state, name.as_str())?,
    )))
}

/// `DELETE /v1/volumes/{name}`: delete a volume, its snapshots and its data.
#[utoipa::path(delete, path = "/v1/volumes/{name}",
    responses((status = 204), (status = 404, body = strata_api_types::ErrorBody)))]
pub async fn delete_volume(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = parse_name("volume", &name)?;
    app.meta.write(Command::DeleteVolume { name }).await?;
    app.apply_to_store().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A snapshot name from the time, `snap-YYYYMMDD-HHMMSS-mmm` in UTC.
fn default_snapshot_name() -> String {
    jiff::Timestamp::now()
        .strftime("snap-%Y%m%d-%H%M%S-%3f")
        .to_string()
}

/// `POST /v1/volumes/{name}/snapshots`: take a snapshot now. It holds every write acknowledged
/// before this request arrived; it costs no data copy.
#[utoipa::path(post, path = "/v1/volumes/{name}/snapshots", request_body = CreateSnapshot,
    responses((status = 201, body = SnapshotInfo), (status = 404, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn create_snapshot(
    State(app): State<AppState>,
    Path(volume): Path<String>,
    body: Option<Json<CreateSnapshot>>,
) -> Result<(StatusCode, Json<SnapshotInfo>), ApiError> {
    let volume = parse_name("volume", &volume)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let snap = match req.name {
        Some(n) => parse_name("snapshot", &n)?,
        None => parse_name("snapshot", &default_snapshot_name())?,
    };
    // Another snapshot of the same volume may win the race for the head; then take ours on
    // top of it.
    let mut attempts = 0;
    loop {
        let state = app.meta.read().await?;
        let v = find_volume(&state, volume.as_str())?;
        let frozen = *v
            .layers
            .last()
            .ok_or_else(|| ApiError::internal(format!("volume {volume} has no head layer")))?;
        let written = app
            .meta
            .write(Command::CreateSnapshot {
                volume: volume.clone(),
                name: snap.clone(),
                frozen,
                new_head: LayerId::new_random(),
                now_ms: now_ms(),
            })
            .await;
        match written {
            Err(MetaError::Refused(CommandError::StaleHead { .. })) if attempts < 5 => {
                attempts += 1
            }
            other => {
                other?;
                break;
            }
        }
    }
    app.apply_to_store().await?;
    let state = app.meta.local_state();
    let v = find_volume(&state, volume.as_str())?;
    let s = v
        .snapshots
        .iter()
        .find(|s| s.name == snap)
        .ok_or_else(|| ApiError::internal("snapshot vanished right after it was taken"))?;
    Ok((StatusCode::CREATED, Json(snapshot_info(v, s))))
}

/// `GET /v1/volumes/{name}/snapshots`: the volume's snapshots, oldest first.
#[utoipa::path(get, path = "/v1/volumes/{name}/snapshots",
    responses((status = 200, body = Vec<SnapshotInfo>), (status = 404, body = strata_api_types::ErrorBody)))]
pub async fn list_snapshots(
    State(app): State<AppState>,
    Path(volume): Path<String>,
) -> Result<Json<Vec<SnapshotInfo>>, ApiError> {
    let state = app.meta.read().await?;
    let v = find_volume(&state, &volume)?;
    Ok(Json(
        v.snapshots.iter().map(|s| snapshot_info(v, s)).collect(),
    ))
}

/// `DELETE /v1/volumes/{name}/snapshots/{snapshot}`: delete a snapshot. It disappears at once;
/// its blocks are merged into the layer above in the background.
#[utoipa::path(delete, path = "/v1/volumes/{name}/snapshots/{snapshot}",
    responses((status = 204), (status = 404, body = strata_api_types::ErrorBody)))]
pub async fn delete_snapshot(
    State(app): State<AppState>,
    Path((volume, snapshot)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let volume = parse_name("volume", &volume)?;
    let name = parse_name("snapshot", &snapshot)?;
    app.meta
        .write(Command::DeleteSnapshot { volume, name })
        .await?;
    app.apply_to_store().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /v1/volumes/{name}/diff`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DiffQuery {
    /// The older snapshot.
    pub from: String,
    /// The newer snapshot; absent means the live volume.
    pub to: Option<String>,
}

/// `GET /v1/volumes/{name}/diff?from=A[&to=B]`: the ranges changed after snapshot A up to
/// snapshot B (or the live volume), read from the block maps without scanning data.
#[utoipa::path(get, path = "/v1/volumes/{name}/diff", params(DiffQuery),
    responses((status = 200, body = DiffInfo), (status = 400, body = strata_api_types::ErrorBody),
              (status = 404, body = strata_api_types::ErrorBody)))]
pub async fn diff(
    State(app): State<AppState>,
    Path(volume): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<DiffInfo>, ApiError> {
    let state = app.meta.read().await?;
    let v = find_volume(&state, &volume)?;
    let position = |name: &str| {
        v.snapshots
            .iter()
            .position(|s| s.name.as_str() == name)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "volume {volume:?} has no snapshot {name:?}; see `strata snapshot list {volume}`"
                ))
            })
    };
    let from = position(&q.from)?;
    let (to_layer, to_name) = match &q.to {
        Some(name) => {
            let to = position(name)?;
            if to <= from {
                return Err(ApiError::bad_request(format!(
                    "snapshot {name:?} is not newer than {:?}; give the older one first",
                    q.from
                )));
            }
            (v.snapshots[to].layer, name.clone())
        }
        None => (
            *v.layers
                .last()
                .ok_or_else(|| ApiError::internal("volume has no head layer"))?,
            "HEAD".to_string(),
        ),
    };
    let from_layer = v.snapshots[from].layer;
    let (store, id) = (app.store.clone(), v.id);
    let changed = tokio::task::spawn_blocking(move || store.delta(id, Some(from_layer), to_layer))
        .await
        .map_err(|e| ApiError::internal(format!("diff task failed: {e}")))??;
    let ranges: Vec<Range> = changed
        .iter()
        .map(|r| Range {
            offset: r.offset,
            len: r.len,
        })
        .collect();
    let changed_bytes = ranges.iter().map(|r| r.len).sum();
    Ok(Json(DiffInfo {
        volume: v.name.to_string(),
        from: q.from,
        to: to_name,
        ranges,
        changed_bytes,
    }))
}
