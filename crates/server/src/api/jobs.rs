//! Handlers for jobs (see `crate::jobs`): list, show and cancel them; the runner's internal
//! changes; and the record-to-API conversion that `volume show` uses too.

use super::{ApiError, AppState};
use crate::jobs::JobChange;
use axum::extract::{Path, State};
use axum::Json;
use strata_api_types::{
    ChunkMismatch, JobInfo, JobProgress, JobState, ReplicaDigest, VerifyReport,
};
use strata_meta::{Command, JobKind, JobRecord, StateView, VerifyResult};
use strata_types::{JobId, ServerId, VolumeId};

fn server_name(state: &StateView, id: ServerId) -> String {
    state
        .servers
        .get(&id)
        .map_or_else(|| id.to_string(), |s| s.name.to_string())
}

fn api_state(s: strata_meta::JobState) -> JobState {
    match s {
        strata_meta::JobState::Running => JobState::Running,
        strata_meta::JobState::Succeeded => JobState::Succeeded,
        strata_meta::JobState::Failed => JobState::Failed,
        strata_meta::JobState::Cancelled => JobState::Cancelled,
    }
}

/// A verify's findings as the API reports them.
pub(super) fn verify_report(
    state: &StateView,
    volume: String,
    snapshot: Option<String>,
    r: &VerifyResult,
) -> VerifyReport {
    VerifyReport {
        volume,
        snapshot,
        chunks: r.chunks,
        unallocated_chunks: r.unallocated,
        mismatches: r
            .mismatches
            .iter()
            .map(|m| ChunkMismatch {
                chunk: m.chunk,
                offset: m.chunk * strata_types::CHUNK_SIZE,
                replicas: m
                    .replicas
                    .iter()
                    .map(|a| ReplicaDigest {
                        server: server_name(state, a.server),
                        digest: a.digest.clone().ok(),
                        error: a.digest.clone().err(),
                        generation: a.digest.is_ok().then_some(a.generation),
                    })
                    .collect(),
                repaired: m.repaired,
            })
            .collect(),
        unlisted_mismatches: r.unlisted_mismatches,
        unlisted_unrepaired: r.unlisted_unrepaired,
    }
}

/// A job record as the API shows it, with names from `state`.
pub(super) fn job_info(state: &StateView, j: &JobRecord) -> JobInfo {
    let mut info = JobInfo {
        id: j.id,
        kind: String::new(),
        target: String::new(),
        volume: None,
        snapshot: None,
        cluster: None,
        server: None,
        repair: false,
        max_rate: None,
        runner: server_name(state, j.runner),
        state: api_state(j.state),
        progress: JobProgress {
            done: j.progress.done,
            total: j.progress.total,
            unit: String::new(),
            bytes: j.progress.bytes,
        },
        started_unix_ms: j.started_unix_ms,
        ended_unix_ms: j.ended_unix_ms,
        error: j.error.clone(),
        report: None,
    };
    match &j.kind {
        JobKind::Verify {
            volume_name,
            snapshot,
            repair,
            max_rate,
            ..
        } => {
            let snap = snapshot.as_ref().map(|(n, _)| n.to_string());
            info.kind = "verify".into();
            info.target = match &snap {
                Some(s) => format!("{volume_name}@{s}"),
                None => volume_name.to_string(),
            };
            info.progress.unit = "chunks".into();
            info.repair = *repair;
            info.max_rate = *max_rate;
            info.report = j
                .verify
                .as_ref()
                .map(|r| verify_report(state, volume_name.to_string(), snap.clone(), r));
            info.volume = Some(volume_name.to_string());
            info.snapshot = snap;
        }
        JobKind::RemoveServer { cluster, server } => {
            let name = server_name(state, *server);
            info.kind = "remove-server".into();
            info.target = format!("{name} from {cluster}");
            info.progress.unit = "chunk copies".into();
            info.cluster = Some(cluster.to_string());
            info.server = Some(name);
        }
    }
    info
}

/// The job of volume `id` that `volume show` reports: the running one, else the last ended.
pub(super) fn volume_job(state: &StateView, id: VolumeId) -> Option<JobInfo> {
    state
        .jobs
        .values()
        .filter(|j| matches!(&j.kind, JobKind::Verify { volume, .. } if *volume == id))
        .max_by_key(|j| {
            (
                j.state == strata_meta::JobState::Running,
                j.ended_unix_ms.unwrap_or(j.started_unix_ms),
            )
        })
        .map(|j| job_info(state, j))
}

fn parse_id(text: &str) -> Result<JobId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!("{text:?} is not a job id; see `strata job list`"))
    })
}

fn find_job(state: &StateView, id: JobId) -> Result<&JobRecord, ApiError> {
    state.jobs.get(&id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no job with id {id}; see `strata job list` (only the last {} ended jobs are kept)",
            strata_meta::MAX_FINISHED_JOBS
        ))
    })
}

/// `GET /v1/jobs`: the running jobs and the last ones that ended, newest first.
#[utoipa::path(get, path = "/v1/jobs", responses((status = 200, body = Vec<JobInfo>)))]
pub async fn list_jobs(State(app): State<AppState>) -> Result<Json<Vec<JobInfo>>, ApiError> {
    let state = app.meta.read().await?;
    let mut jobs: Vec<&JobRecord> = state.jobs.values().collect();
    jobs.sort_by_key(|j| std::cmp::Reverse((j.started_unix_ms, j.id)));
    Ok(Json(
        jobs.into_iter().map(|j| job_info(&state, j)).collect(),
    ))
}

/// `GET /v1/jobs/{id}`: one job, with its progress and, once a verify has ended, its report.
#[utoipa::path(get, path = "/v1/jobs/{id}",
    responses((status = 200, body = JobInfo), (status = 404, body = strata_api_types::ErrorBody)))]
pub async fn show_job(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, ApiError> {
    let id = parse_id(&id)?;
    let state = app.meta.read().await?;
    Ok(Json(job_info(&state, find_job(&state, id)?)))
}

/// `DELETE /v1/jobs/{id}`: cancel a running verify; its runner stops after the chunks in hand.
/// A server removal cannot be cancelled: its data is already moving (add the server back
/// once it has left).
#[utoipa::path(delete, path = "/v1/jobs/{id}",
    responses((status = 200, body = JobInfo), (status = 404, body = strata_api_types::ErrorBody),
              (status = 409, body = strata_api_types::ErrorBody)))]
pub async fn cancel_job(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, ApiError> {
    let id = parse_id(&id)?;
    let state = app.meta.read().await?;
    let job = find_job(&state, id)?;
    if let JobKind::RemoveServer { cluster, .. } = &job.kind {
        return Err(ApiError::conflict(format!(
            "a server removal cannot be cancelled: the data is moving off it; once it has left, \
             add it back with `strata cluster add-server {cluster} SERVER`"
        )));
    }
    app.meta
        .write(Command::FinishJob {
            id,
            state: strata_meta::JobState::Cancelled,
            error: Some("cancelled by request".into()),
            progress: None,
            verify: None,
            now_ms: super::now_ms(),
        })
        .await?;
    let state = app.meta.local_state();
    Ok(Json(job_info(&state, find_job(&state, id)?)))
}

/// `POST /v1/internal/jobs/{id}` (forwarded to the leader): a runner records its job's
/// progress or end.
pub async fn change_job(
    State(app): State<AppState>,
    Path(id): Path<JobId>,
    Json(change): Json<JobChange>,
) -> Result<Json<()>, ApiError> {
    app.meta.write(change.command(id, super::now_ms())).await?;
    Ok(Json(()))
}

/// `GET /internal/v1/jobs` (answered by the server asked): the jobs it is working on now.
pub async fn running_here(State(app): State<AppState>) -> Json<Vec<JobId>> {
    Json(app.jobs.running())
}
