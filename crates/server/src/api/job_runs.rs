//! The work of each kind of job (see `crate::jobs` for how a job is run and watched):
//!
//! - **verify**: asks every server holding the volume which chunks it holds data in
//!   (`/internal/v1/volumes/{id}/chunks`), then has the volume engine compare only those (a
//!   chunk no replica holds reads as zeros everywhere, so it agrees); a server that does not
//!   answer has every chunk placed on it compared, so its silence shows as errors in the
//!   report. Optionally paced to a rate.
//! - **remove-server**: the handler commits the removal under its barrier; the job then
//!   waits until the server has left the cluster (every volume's data moved off it),
//!   reporting the chunk copies made. When its runner stops, the leader takes it up
//!   ([`resume_removal`]).

use super::volumes::{copy_progress, holders, local_parts};
use super::{ApiError, AppState};
use crate::jobs::{JobHandle, Outcome};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_api_types::HeldChunks;
use strata_meta::{
    ChunkMismatchRecord, Command, JobKind, JobProgress, JobRecord, JobState, ReplicaAnswer,
    StateView, VerifyResult, VolumeRecord,
};
use strata_types::{JobId, LayerId, Name, ServerId, VolumeId};
use strata_volume::verify::{Monitor, VerifyError};

/// How long a server may take to say which chunks of a volume it holds.
const CHUNKS_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a server removal looks at the data still moving: often enough that a volume
/// whose chunks move within a second is seen with its copies counted.
const REMOVE_POLL: Duration = Duration::from_millis(200);

/// Registers and records a new running job of `kind` run by this server.
pub(super) async fn start(
    app: &AppState,
    kind: JobKind,
) -> Result<(Arc<JobHandle>, JobRecord), ApiError> {
    let id = JobId::new_random();
    let handle = Arc::new(app.jobs.register(id));
    let record = JobRecord {
        id,
        kind,
        runner: app.identity.id,
        state: JobState::Running,
        progress: JobProgress::default(),
        started_unix_ms: super::now_ms(),
        ended_unix_ms: None,
        error: None,
        verify: None,
    };
    app.meta.write(Command::StartJob(record.clone())).await?;
    Ok((handle, record))
}

/// Records that the job of `handle` failed before its work was spawned.
pub(super) async fn fail(app: &AppState, handle: Arc<JobHandle>, error: String) {
    let cmd = Command::FinishJob {
        id: handle.id,
        state: JobState::Failed,
        error: Some(error),
        progress: None,
        verify: None,
        now_ms: super::now_ms(),
    };
    if let Err(e) = app.meta.write(cmd).await {
        tracing::warn!(job = %handle.id, error = %e, "cannot record that the job failed; the leader will");
    }
}

/// The chunks of `v` that some holder has data in, and every chunk placed on a holder that
/// did not say; ascending.
async fn chunks_to_read(
    app: &AppState,
    state: &StateView,
    v: &VolumeRecord,
) -> Result<Vec<u64>, String> {
    let view = app
        .engine
        .view(v.id)
        .ok_or_else(|| format!("volume {} is not known to this server yet", v.name))?;
    let asks = holders(v).into_iter().map(|id| {
        let api = state.servers.get(&id).map(|s| s.api_addr.clone());
        let (http, vid) = (app.http.clone(), v.id);
        async move {
            let api = api.ok_or_else(|| "unknown server".to_string())?;
            let url = format!("{api}/internal/v1/volumes/{vid}/chunks");
            let held: HeldChunks = http
                .get(&url)
                .timeout(CHUNKS_TIMEOUT)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(held)
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut chunks = Vec::new();
    let mut silent: Vec<ServerId> = Vec::new();
    for (id, answer) in holders(v).into_iter().zip(answers) {
        match answer {
            Ok(held) => {
                for [first, count] in held.runs {
                    chunks.extend(first..first.saturating_add(count));
                }
            }
            Err(e) => {
                tracing::warn!(volume = %v.name, server = %id, error = %e, "a holder did not say which chunks it holds; comparing all of its chunks");
                silent.push(id);
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        if !silent.is_empty() {
            let placed_on_silent =
                (0..view.chunks()).filter(|c| view.placed(*c).iter().any(|s| silent.contains(s)));
            chunks.extend(placed_on_silent);
        }
        chunks.sort_unstable();
        chunks.dedup();
        chunks
    })
    .await
    .map_err(|e| format!("listing the chunks failed: {e}"))
}

/// Counts each compared chunk as progress and holds the rate.
struct Pace<'a> {
    handle: &'a JobHandle,
    max_rate: Option<u64>,
    start: Instant,
}

#[async_trait::async_trait]
impl Monitor for Pace<'_> {
    fn stopped(&self) -> bool {
        self.handle.stopped()
    }

    async fn compared(&self, bytes: u64) {
        let mut total = 0;
        self.handle.update(|p| {
            p.done += 1;
            p.bytes += bytes;
            total = p.bytes;
        });
        if let Some(rate) = self.max_rate.filter(|r| *r > 0) {
            let due = self.start + Duration::from_secs_f64(total as f64 / rate as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = self.handle.cancelled() => {}
            }
        }
    }
}

/// A verify job's work: compares the replicas of `volume` (at `layer`).
pub(super) async fn verify(
    app: AppState,
    handle: Arc<JobHandle>,
    volume: VolumeId,
    layer: Option<LayerId>,
    repair: bool,
    max_rate: Option<u64>,
) -> Outcome {
    let state = app.meta.local_state();
    let Some(v) = state.volume_by_id(volume) else {
        return Outcome::Failed("the volume was deleted before its verify began".into());
    };
    let chunks = match chunks_to_read(&app, &state, v).await {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    handle.update(|p| p.total = chunks.len() as u64);
    let pace = Pace {
        handle: &handle,
        max_rate,
        start: Instant::now(),
    };
    let listed = strata_meta::MAX_LISTED_MISMATCHES;
    let verified =
        strata_volume::verify::verify(&app.engine, volume, layer, repair, chunks, listed, &pace)
            .await;
    if app.meta.local_state().volume_by_id(volume).is_none() {
        return Outcome::Failed("the volume was deleted while it was verified".into());
    }
    match verified {
        Ok(r) => Outcome::Succeeded(Some(VerifyResult {
            chunks: r.chunks,
            unallocated: r.chunks.saturating_sub(r.read),
            mismatches: r
                .problems
                .into_iter()
                .map(|p| ChunkMismatchRecord {
                    chunk: p.chunk,
                    replicas: p
                        .replicas
                        .into_iter()
                        .map(|d| ReplicaAnswer {
                            server: d.server,
                            digest: d.digest,
                            generation: d.generation,
                        })
                        .collect(),
                    repaired: p.repaired,
                })
                .collect(),
            unlisted_mismatches: r.unlisted,
            unlisted_unrepaired: r.unlisted_unrepaired,
        })),
        Err(VerifyError::Stopped) => Outcome::Stopped,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Takes up the server removal `id`, whose runner stopped, on this server (the leader): the
/// data goes on moving without it, so the job only has to watch again.
pub(crate) async fn resume_removal(
    app: &AppState,
    id: JobId,
    cluster: Name,
    server: ServerId,
) -> Result<(), ApiError> {
    let handle = Arc::new(app.jobs.register(id));
    app.meta
        .write(Command::ResumeJob {
            id,
            runner: app.identity.id,
        })
        .await?;
    let work = remove_server(app.clone(), handle.clone(), cluster, server);
    crate::jobs::spawn(app.clone(), handle, work);
    Ok(())
}

/// A server removal's work after the removal is committed: waits until `server` has left
/// `cluster`, counting the chunk copies made to the servers gaining its chunks.
pub(super) async fn remove_server(
    app: AppState,
    handle: Arc<JobHandle>,
    cluster: Name,
    server: ServerId,
) -> Outcome {
    // Per volume moving off the server: chunk copies made and to make. A volume that has
    // finished moving keeps its last count, all done.
    let mut volumes: HashMap<VolumeId, (u64, u64)> = HashMap::new();
    loop {
        let state = app.meta.local_state();
        let Some(c) = state.clusters.get(&cluster) else {
            return Outcome::Failed(format!("cluster {cluster} no longer exists"));
        };
        if !c.servers.contains(&server) {
            handle.update(|p| p.done = p.total);
            return Outcome::Succeeded(None);
        }
        for (_, (done, total)) in volumes.iter_mut() {
            *done = *total;
        }
        let moving = state
            .volumes
            .values()
            .filter(|v| v.servers.contains(&server))
            .filter_map(|v| Some((v, v.target.as_ref()?)));
        for (v, target) in moving {
            let parts = local_parts(&app, &state, v).await;
            let (remaining, total) = copy_progress(&parts, target);
            let seen = volumes.entry(v.id).or_default();
            let most = total.max(seen.1);
            *seen = (most - remaining.min(most), most);
        }
        let (done, total) = volumes
            .values()
            .fold((0, 0), |(d, t), (vd, vt)| (d + vd, t + vt));
        handle.update(|p| {
            p.done = done;
            p.total = total;
        });
        tokio::select! {
            _ = handle.cancelled() => return Outcome::Stopped,
            _ = tokio::time::sleep(REMOVE_POLL) => {}
        }
    }
}
