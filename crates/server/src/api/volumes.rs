//! Handlers for volumes and their snapshots.

use super::barrier::Barrier;
use super::{parse_name, ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use futures::future::join_all;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;
use strata_api_types::{
    CreateSnapshot, CreateVolume, DeleteQuery, DiffInfo, JobInfo, LocalVolume, OpenClient, Range,
    ResizeVolume, SnapshotInfo, VerifyRequest, VolumeInfo,
};
use strata_meta::{
    Command, CommandError, JobKind, MetaError, ServerRecord, StateView, VolumeRecord,
};
use strata_types::{LayerId, Name, ServerId, VolumeId};

/// The largest volume accepted: 1 PiB.
const MAX_VOLUME_SIZE: u64 = 1 << 50;

use super::now_ms;

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

/// Refuses a volume of `size` bytes on `servers` when the data filesystem of one of them
/// cannot hold a file that large: a server keeps its copy of a volume as one file per layer,
/// blocks at their logical offsets. Servers that do not answer are not asked; their store
/// refuses the volume itself.
async fn check_file_size(
    app: &AppState,
    state: &StateView,
    servers: &[ServerId],
    size: u64,
) -> Result<(), ApiError> {
    let records: Vec<ServerRecord> = servers
        .iter()
        .filter_map(|id| state.servers.get(id).cloned())
        .collect();
    let statuses = crate::peers::statuses(app, &records).await;
    for s in statuses.values() {
        if let Some(max) = s.max_file_bytes.filter(|max| size > *max) {
            return Err(ApiError::bad_request(format!(
                "size {} is larger than the largest file the data filesystem of server {} \
                 holds ({}): each server keeps its copy of a volume as one file per layer; \
                 make the volume at most {}, or move that server's data directory to a \
                 filesystem with larger files (XFS)",
                strata_types::format_size(size),
                s.name,
                strata_types::format_size(max),
                strata_types::format_size(max)
            )));
        }
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

/// How long the leader waits for another server's part of an answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);

/// The servers holding `v`'s chunks: its layout, then those a running migration adds.
pub(super) fn holders(v: &VolumeRecord) -> Vec<ServerId> {
    let mut all = v.servers.clone();
    let added = v.target.iter().flatten().filter(|s| !v.servers.contains(s));
    all.extend(added.copied().collect::<Vec<_>>());
    all
}

/// Asks every server holding `v` what it holds of it; servers that do not answer in time are
/// missing from the result.
pub(super) async fn local_parts(
    app: &AppState,
    state: &StateView,
    v: &VolumeRecord,
) -> HashMap<ServerId, LocalVolume> {
    let asks = holders(v).into_iter().filter_map(|id| {
        let api = state.servers.get(&id)?.api_addr.clone();
        let (http, vid) = (app.http.clone(), v.id);
        Some(async move {
            let url = format!("{api}/internal/v1/volumes/{vid}/local");
            let resp = http.get(&url).timeout(ASK_TIMEOUT).send().await.ok()?;
            let part: LocalVolume = resp.error_for_status().ok()?.json().await.ok()?;
            Some((id, part))
        })
    });
    join_all(asks).await.into_iter().flatten().collect()
}

/// `degraded` while a server holding chunks (stale or not) does not answer, even with no
/// client I/O to notice it; `resyncing N%` while stale servers catch up, or a server holds
/// marks for its own copy; `migrating N%` while
/// chunks are copied to a new layout; else `healthy`.
fn health(v: &VolumeRecord, parts: &HashMap<ServerId, LocalVolume>) -> String {
    if holders(v)
        .iter()
        .chain(&v.stale)
        .any(|s| !parts.contains_key(s))
    {
        return "degraded".into();
    }
    // A server holding marks for itself has a copy it does not trust (it stopped uncleanly,
    // or took writes another replica did not) until resync replaces it.
    let suspect: Vec<ServerId> = parts
        .iter()
        .filter(|(id, p)| p.missed.iter().any(|m| m.server == **id))
        .map(|(id, _)| *id)
        .collect();
    let (word, copying_to) = match &v.target {
        _ if !v.stale.is_empty() => ("resyncing", v.stale.clone()),
        _ if !suspect.is_empty() => ("resyncing", suspect),
        Some(target) => ("migrating", target.clone()),
        None => return "healthy".into(),
    };
    let (remaining, total) = copy_progress(parts, &copying_to);
    // Never 100% until the management group records the end.
    let done = ((total - remaining.min(total)) * 100)
        .checked_div(total)
        .map_or(0, |p| p.min(99));
    format!("{word} {done}%")
}

/// The chunk copies still to make to `copying_to` and the copies to make in all, summed over
/// the holders' missed marks.
pub(super) fn copy_progress(
    parts: &HashMap<ServerId, LocalVolume>,
    copying_to: &[ServerId],
) -> (u64, u64) {
    let (mut remaining, mut total) = (0u64, 0u64);
    for part in parts.values() {
        for m in part
            .missed
            .iter()
            .filter(|m| copying_to.contains(&m.server))
        {
            remaining += m.remaining;
            total += m.total;
        }
    }
    (remaining, total)
}

async fn volume_info(app: &AppState, state: &StateView, v: &VolumeRecord) -> VolumeInfo {
    let parts = local_parts(app, state, v).await;
    let all = parts.len() == holders(v).len();
    let used_raw_bytes = all.then(|| parts.values().map(|p| p.used_bytes).sum());
    let used_logical_bytes = all.then(|| parts.values().map(|p| p.first_copy_bytes).sum());
    let names = |ids: &[ServerId]| {
        ids.iter()
            .map(|id| {
                state
                    .servers
                    .get(id)
                    .map_or_else(|| id.to_string(), |s| s.name.to_string())
            })
            .collect::<Vec<_>>()
    };
    // This server if it is a gateway of the volume (in its cluster), else one that is.
    let cluster = state.clusters.get(&v.cluster).map(|c| c.servers.clone());
    let nbd_addr = match cluster {
        Some(c) if !c.contains(&app.identity.id) => c
            .first()
            .and_then(|s| state.servers.get(s))
            .map_or(app.nbd_addr.clone(), |s| s.nbd_addr.clone()),
        _ => app.nbd_addr.clone(),
    };
    VolumeInfo {
        id: v.id,
        name: v.name.to_string(),
        cluster: v.cluster.to_string(),
        size: v.size,
        replicas: v.replicas,
        role: "primary".into(),
        status: health(v, &parts),
        used_logical_bytes,
        used_raw_bytes,
        servers: names(&v.servers),
        stale_servers: names(&v.stale),
        target_servers: v.target.as_deref().map(names),
        head: v
            .layers
            .last()
            .copied()
            .unwrap_or(LayerId(uuid::Uuid::nil())),
        snapshots: v.snapshots.iter().map(|s| snapshot_info(v, s)).collect(),
        nbd_url: format!("nbd://{nbd_addr}/{}", v.name),
        created_unix_ms: v.created_unix_ms,
        job: super::jobs::volume_job(state, v.id),
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
    // The default is decided here, for the CLI and every other client alike, from this
    // (leader's) applied state: the state machine checks the count against the cluster again,
    // and a lost quorum is reported by the write below.
    let replicas = match req.replicas {
        Some(r) => r,
        None => app
            .meta
            .local_state()
            .clusters
            .get(&cluster)
            .map_or(1, |c| c.default_replicas()),
    };
    if !(1..=3).contains(&replicas) {
        return Err(ApiError::bad_request(format!(
            "replicas must be 1, 2 or 3, not {replicas}"
        )));
    }
    {
        let state = app.meta.local_state();
        let servers = state
            .clusters
            .get(&cluster)
            .map(|c| c.servers.clone())
            .unwrap_or_default();
        check_file_size(&app, &state, &servers, req.size).await?;
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
    Ok((
        StatusCode::CREATED,
        Json(volume_info(&app, &state, v).await),
    ))
}

/// `GET /v1/volumes`: every volume.
#[utoipa::path(get, path = "/v1/volumes", responses((status = 200, body = Vec<VolumeInfo>)))]
pub async fn list_volumes(State(app): State<AppState>) -> Result<Json<Vec<VolumeInfo>>, ApiError> {
    let state = app.meta.read().await?;
    // Keyed by name, so already in name order.
    let infos = state.volumes.values().map(|v| volume_info(&app, &state, v));
    Ok(Json(join_all(infos).await))
}

/// `GET /v1/volumes/{name}`: one volume with its snapshots.
#[utoipa::path(get, path = "/v1/volumes/{name}",
    responses((status = 200, body = VolumeInfo), (status = 404, body = strata_api_types::ErrorBody)))]
pub async fn show_volume(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VolumeInfo>, ApiError> {
    let state = app.meta.read().await?;
    Ok(Json(
        volume_info(&app, &state, find_volume(&state, &name)?).await,
    ))
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
    {
        let state = app.meta.local_state();
        let servers = holders(find_volume(&state, name.as_str())?);
        check_file_size(&app, &state, &servers, req.size).await?;
    }
    app.meta
        .write(Command::ResizeVolume {
            name: name.clone(),
            size: req.size,
        })
        .await?;
    app.apply_to_store().await?;
    let state = app.meta.local_state();
    Ok(Json(
        volume_info(&app, &state, find_volume(&state, name.as_str())?).await,
    ))
}

/// The clients that have `v` (with `layer`, only that snapshot) open, as `ADDR through
/// SERVER`, asking every server of its cluster; a server that does not answer is an error (it
/// may have some).
async fn open_clients(
    app: &AppState,
    state: &StateView,
    v: &VolumeRecord,
    layer: Option<LayerId>,
) -> Result<Vec<String>, String> {
    let mut servers = state
        .clusters
        .get(&v.cluster)
        .map(|c| c.servers.clone())
        .unwrap_or_default();
    servers.extend(
        holders(v)
            .into_iter()
            .filter(|s| !servers.contains(s))
            .collect::<Vec<_>>(),
    );
    let asks = servers.into_iter().filter_map(|id| {
        let s = state.servers.get(&id)?;
        let (http, vid, api, name) = (app.http.clone(), v.id, s.api_addr.clone(), s.name.clone());
        Some(async move {
            let url = format!("{api}/internal/v1/volumes/{vid}/clients");
            let answer = async {
                let resp = http.get(&url).timeout(ASK_TIMEOUT).send().await.ok()?;
                resp.error_for_status()
                    .ok()?
                    .json::<Vec<OpenClient>>()
                    .await
                    .ok()
            };
            (name, answer.await)
        })
    });
    let mut open = Vec::new();
    for (server, answer) in join_all(asks).await {
        let Some(clients) = answer else {
            return Err(format!(
                "server {server} did not answer whether clients have it open; start it, or pass --force"
            ));
        };
        open.extend(
            clients
                .into_iter()
                .filter(|c| layer.is_none() || c.layer == layer)
                .map(|c| format!("{} through {server}", c.client)),
        );
    }
    Ok(open)
}

/// Refuses (409) to delete `what` while clients have it open, unless `force`.
async fn refuse_if_open(
    app: &AppState,
    state: &StateView,
    v: &VolumeRecord,
    layer: Option<LayerId>,
    what: &str,
    force: bool,
) -> Result<(), ApiError> {
    if force {
        return Ok(());
    }
    let open = open_clients(app, state, v, layer)
        .await
        .map_err(|e| ApiError::conflict(format!("cannot tell whether {what} is in use: {e}")))?;
    if open.is_empty() {
        return Ok(());
    }
    Err(ApiError::conflict(format!(
        "{what} is open by {} client(s): {}; disconnect them, or pass --force (their I/O then fails)",
        open.len(),
        open.join(", ")
    )))
}

/// `DELETE /v1/volumes/{name}`: delete a volume and its data. Refused while clients have it or
/// one of its snapshots open (unless `force`), and while it has snapshots (unless
/// `with_snapshots`).
#[utoipa::path(delete, path = "/v1/volumes/{name}", params(DeleteQuery),
    responses((status = 204), (status = 404, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn delete_volume(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let name = parse_name("volume", &name)?;
    let state = app.meta.read().await?;
    let v = find_volume(&state, name.as_str())?;
    if !v.snapshots.is_empty() && !q.with_snapshots {
        let names: Vec<&str> = v.snapshots.iter().map(|s| s.name.as_str()).collect();
        return Err(ApiError::conflict(format!(
            "volume {name} has {} snapshot(s) ({}): delete them first, or pass --with-snapshots to delete them with it",
            names.len(),
            names.join(", ")
        )));
    }
    refuse_if_open(&app, &state, v, None, &format!("volume {name}"), q.force).await?;
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
    let state = app.meta.read().await?;
    let v = find_volume(&state, volume.as_str())?;
    let barrier = Barrier::new(&app, &state, v);
    // Times since the start of the barrier, for `RUST_LOG=strata_server::api::volumes=debug`.
    let start = std::time::Instant::now();
    barrier.pause().await;
    let paused = start.elapsed();
    let taken = commit_snapshot(&app, &volume, &snap).await;
    let committed = start.elapsed();
    if let Ok(head) = &taken {
        app.meta.announce_commits().await;
        barrier.freeze(*head).await;
    }
    let frozen = start.elapsed();
    let unfrozen = barrier.unfrozen();
    barrier.release().await;
    let released = start.elapsed();
    taken?;
    distrust_unfrozen(&app, v, &snap, &unfrozen).await?;
    barrier.persist().await?;
    tracing::debug!(volume = %volume, ?paused, ?committed, ?frozen, ?released,
        persisted = ?start.elapsed(), "snapshot barrier steps");
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

/// Marks stale each in-sync replica of `v` in `unfrozen` (it did not freeze the old head, so
/// its copy of snapshot `snap` may hold writes made after it), or refuses to acknowledge the
/// snapshot if one cannot be marked.
async fn distrust_unfrozen(
    app: &AppState,
    v: &VolumeRecord,
    snap: &Name,
    unfrozen: &[ServerId],
) -> Result<(), ApiError> {
    for server in unfrozen.iter().filter(|s| !v.stale.contains(s)) {
        tracing::warn!(volume = %v.name, %server, "a replica did not freeze the snapshot's layer; marking it stale");
        if let Err(e) = app.engine.mark_stale(v.id, *server).await {
            return Err(ApiError::unavailable(format!(
                "snapshot {snap} of volume {} was taken, but server {server} did not freeze it and could not be marked stale ({e}): the snapshot may hold writes made after it on that server; delete it and take it again when the servers are back",
                v.name
            )));
        }
    }
    Ok(())
}

/// Commits the snapshot; returns the new head layer.
async fn commit_snapshot(app: &AppState, volume: &Name, snap: &Name) -> Result<LayerId, ApiError> {
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
        let new_head = LayerId::new_random();
        let written = app
            .meta
            .write(Command::CreateSnapshot {
                volume: volume.clone(),
                name: snap.clone(),
                frozen,
                new_head,
                now_ms: now_ms(),
            })
            .await;
        match written {
            Err(MetaError::Refused(CommandError::StaleHead { .. })) if attempts < 5 => {
                attempts += 1
            }
            other => {
                other?;
                return Ok(new_head);
            }
        }
    }
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
/// Refused while clients have the snapshot open, unless `force`.
#[utoipa::path(delete, path = "/v1/volumes/{name}/snapshots/{snapshot}", params(DeleteQuery),
    responses((status = 204), (status = 404, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn delete_snapshot(
    State(app): State<AppState>,
    Path((volume, snapshot)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let volume = parse_name("volume", &volume)?;
    let name = parse_name("snapshot", &snapshot)?;
    let state = app.meta.read().await?;
    let v = find_volume(&state, volume.as_str())?;
    if let Some(s) = v.snapshots.iter().find(|s| s.name == name) {
        let what = format!("snapshot {volume}@{name}");
        refuse_if_open(&app, &state, v, Some(s.layer), &what, q.force).await?;
    }
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
    // Each server knows the changes in the chunks it holds; the union is the volume's.
    let asks = v.servers.iter().map(|id| {
        let api = state.servers.get(id).map(|s| s.api_addr.clone());
        let http = app.http.clone();
        let url = format!(
            "{}/internal/v1/volumes/{}/delta?from={from_layer}&to={to_layer}",
            api.unwrap_or_default(),
            v.id
        );
        async move {
            let resp = http.get(&url).timeout(Duration::from_secs(30)).send().await;
            let ranges: Vec<Range> = resp
                .and_then(|r| r.error_for_status())
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(ranges)
        }
    });
    let mut ranges: Vec<Range> = Vec::new();
    for (id, part) in v.servers.iter().zip(join_all(asks).await) {
        let part = part.map_err(|e| {
            ApiError::unavailable(format!(
                "server {id} holding chunks of {volume:?} did not answer ({e}); retry when it is up"
            ))
        })?;
        ranges.extend(part);
    }
    let ranges = merge_ranges(ranges);
    let changed_bytes = ranges.iter().map(|r| r.len).sum();
    Ok(Json(DiffInfo {
        volume: v.name.to_string(),
        from: q.from,
        to: to_name,
        ranges,
        changed_bytes,
    }))
}

/// Sorts ranges and merges overlapping or touching ones.
fn merge_ranges(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_by_key(|r| r.offset);
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.offset <= last.offset + last.len => {
                let end = (r.offset + r.len).max(last.offset + last.len);
                last.len = end - last.offset;
            }
            _ => out.push(r),
        }
    }
    out
}

/// `POST /v1/volumes/{name}/verify`: start a job that compares the replicas of every chunk
/// by digest (reading only the chunks some replica holds data in) and, with `repair`, copies
/// differing chunks from a good replica. Answers 202 with the job at once; its report is in
/// `GET /v1/jobs/{id}` when it ends.
#[utoipa::path(post, path = "/v1/volumes/{name}/verify", request_body = VerifyRequest,
    responses((status = 202, body = JobInfo), (status = 404, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn verify(
    State(app): State<AppState>,
    Path(volume): Path<String>,
    body: Option<Json<VerifyRequest>>,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    if req.max_rate == Some(0) {
        return Err(ApiError::bad_request(
            "a rate of 0 would never end; give a positive rate, or none for no limit",
        ));
    }
    let state = app.meta.read().await?;
    let v = find_volume(&state, &volume)?;
    let snapshot = match &req.snapshot {
        Some(name) => Some(
            v.snapshots
                .iter()
                .find(|s| s.name.as_str() == name)
                .map(|s| (s.name.clone(), s.layer))
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "volume {volume:?} has no snapshot {name:?}; see `strata snapshot list {volume}`"
                    ))
                })?,
        ),
        None => None,
    };
    let layer = snapshot.as_ref().map(|(_, l)| *l);
    let kind = JobKind::Verify {
        volume: v.id,
        volume_name: v.name.clone(),
        snapshot,
        repair: req.repair,
        max_rate: req.max_rate,
    };
    let (handle, record) = super::job_runs::start(&app, kind).await?;
    let work = super::job_runs::verify(
        app.clone(),
        handle.clone(),
        v.id,
        layer,
        req.repair,
        req.max_rate,
    );
    crate::jobs::spawn(app.clone(), handle, work);
    Ok((
        StatusCode::ACCEPTED,
        Json(super::jobs::job_info(&app.meta.local_state(), &record)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_across_servers() {
        let r = |offset, len| Range { offset, len };
        let merged = merge_ranges(vec![r(8192, 4096), r(0, 4096), r(4096, 4096), r(20000, 10)]);
        assert_eq!(
            merged.iter().map(|x| (x.offset, x.len)).collect::<Vec<_>>(),
            vec![(0, 12288), (20000, 10)]
        );
    }
}
