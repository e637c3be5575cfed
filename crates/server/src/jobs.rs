//! Jobs: long operations (`volume verify`, `cluster remove-server`) that the API starts and
//! answers at once (202 with the job), and that one server, the job's *runner*, works on in
//! the background.
//!
//! The job's record lives in the management state (`strata_meta`'s `apply_jobs.rs`): the
//! handler commits `StartJob` before the work begins, the runner commits its progress about
//! once a second and `FinishJob` at the end, so every server shows every job, and a job
//! outlives the loss of the leader or of its runner. Its runner's in-memory [`Jobs`] registry
//! says which jobs it is working on now; the management leader's [`watch`] compares it with the
//! records and, for a running job whose runner no longer runs it (it restarted) or has not
//! answered for [`RUNNER_LOST_AFTER`], fails it (a verify) or takes it up itself (a server
//! removal, whose data moves on anyway), so no job stays `running` for ever. A record that ends
//! while its runner still works (cancelled, or failed by the leader during a partition) makes
//! the runner stop: it watches its own applied state for that.
//!
//! The runner's changes go through its own API, which forwards them to whichever server leads,
//! and wait for a new leader after an election, like the volume engine's changes.

use crate::api::AppState;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_meta::{Command, JobProgress, JobState, VerifyResult};
use strata_types::JobId;
use tokio_util::sync::CancellationToken;

/// How often a runner reports progress (when it changed).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often the leader checks that every running job's runner still runs it.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How long a runner may not answer before its jobs are failed.
pub const RUNNER_LOST_AFTER: Duration = Duration::from_secs(10);
/// How long the leader waits for a runner's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a runner's change may wait for a management leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// The jobs this server is working on now, each with the token that stops it.
pub struct Jobs {
    running: Mutex<HashMap<JobId, CancellationToken>>,
    shutdown: CancellationToken,
}

impl Jobs {
    /// An empty registry whose jobs stop when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// The jobs this server is working on.
    pub fn running(&self) -> Vec<JobId> {
        self.running.lock().keys().copied().collect()
    }

    /// Registers job `id` before its record is committed, so the leader never sees it
    /// running without this server knowing it; dropping the handle unregisters it.
    pub fn register(self: &Arc<Self>, id: JobId) -> JobHandle {
        let token = self.shutdown.child_token();
        self.running.lock().insert(id, token.clone());
        JobHandle {
            id,
            token,
            jobs: self.clone(),
            progress: Mutex::new(JobProgress::default()),
        }
    }
}

/// One job this server runs: its stop token and its progress, which [`spawn`] reports.
pub struct JobHandle {
    /// The job.
    pub id: JobId,
    token: CancellationToken,
    jobs: Arc<Jobs>,
    progress: Mutex<JobProgress>,
}

impl JobHandle {
    /// Whether the job must stop: it ended elsewhere (cancelled, failed by the leader) or
    /// this server is stopping.
    pub fn stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the job must stop.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Changes the progress to report.
    pub fn update(&self, f: impl FnOnce(&mut JobProgress)) {
        f(&mut self.progress.lock());
    }

    /// The progress now.
    pub fn progress(&self) -> JobProgress {
        *self.progress.lock()
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.jobs.running.lock().remove(&self.id);
    }
}

/// How a job's work ended.
pub enum Outcome {
    /// It did what it was asked; a verify's findings.
    Succeeded(Option<VerifyResult>),
    /// It failed, saying why.
    Failed(String),
    /// It stopped because its record ended elsewhere or the server is stopping: nothing to
    /// record.
    Stopped,
}

/// A runner's change to its job's record, sent to `POST /v1/internal/jobs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobChange {
    /// Progress so far.
    Progress(JobProgress),
    /// The end.
    Finish {
        /// Succeeded, failed or cancelled.
        state: JobState,
        /// Why it failed.
        error: Option<String>,
        /// The last progress.
        progress: JobProgress,
        /// A verify's findings.
        verify: Option<VerifyResult>,
    },
}

impl JobChange {
    /// The command that records this change of job `id` at `now_ms`.
    pub fn command(self, id: JobId, now_ms: u64) -> Command {
        match self {
            JobChange::Progress(progress) => Command::UpdateJob { id, progress },
            JobChange::Finish {
                state,
                error,
                progress,
                verify,
            } => Command::FinishJob {
                id,
                state,
                error,
                progress: Some(progress),
                verify,
                now_ms,
            },
        }
    }
}

/// Sends a change of job `id` through this server's API (forwarded to the leader).
async fn send(app: &AppState, id: JobId, change: &JobChange) -> Result<(), String> {
    let url = format!("{}/v1/internal/jobs/{id}", app.own_api);
    crate::control::post_change(&app.http, &url, change, LEADER_WAIT).await
}

/// Whether job `id` has ended in this server's applied state (or is gone from it).
fn ended_here(app: &AppState, id: JobId) -> bool {
    app.meta
        .local_state()
        .jobs
        .get(&id)
        .is_none_or(|j| j.state != JobState::Running)
}

/// Runs `work` for the job of `handle` in the background: reports its progress every second,
/// stops it when its record ends elsewhere, and records how it ended.
pub fn spawn<F>(app: AppState, handle: Arc<JobHandle>, work: F)
where
    F: Future<Output = Outcome> + Send + 'static,
{
    // It ends with the server: the leader's watch then ends its record.
    let engine = app.engine.clone();
    engine.spawn_background(async move {
        let id = handle.id;
        let reporter = async {
            let mut sent = JobProgress::default();
            loop {
                tokio::time::sleep(REPORT_EVERY).await;
                if ended_here(&app, id) {
                    // The work sees the token and ends at its next step.
                    handle.token.cancel();
                    std::future::pending::<()>().await;
                }
                let now = handle.progress();
                if now != sent {
                    match send(&app, id, &JobChange::Progress(now)).await {
                        Ok(()) => sent = now,
                        Err(e) => {
                            tracing::warn!(job = %id, error = %e, "cannot record the job's progress")
                        }
                    }
                }
            }
        };
        let outcome = tokio::select! {
            out = work => out,
            () = reporter => Outcome::Stopped,
        };
        let (state, error, verify) = match outcome {
            Outcome::Stopped => return,
            Outcome::Succeeded(v) => (JobState::Succeeded, None, v),
            Outcome::Failed(e) => (JobState::Failed, Some(e), None),
        };
        let change = JobChange::Finish {
            state,
            error,
            progress: handle.progress(),
            verify,
        };
        match send(&app, id, &change).await {
            Ok(()) => {
                tracing::info!(job = %id, state = strata_meta::state_word(state), "job ended")
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot record the end of the job; the leader will mark it failed")
            }
        }
        drop(handle);
    });
}

/// The jobs server `api` says it is working on.
async fn runner_jobs(app: &AppState, api: &str) -> Result<Vec<JobId>, String> {
    app.http
        .get(format!("{api}/internal/v1/jobs"))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// On the management leader, every [`WATCH_EVERY`]: fails (or, for a server removal, takes up)
/// each running job whose runner no longer runs it (it restarted, or was taken out of the
/// group) or has not answered for [`RUNNER_LOST_AFTER`].
pub async fn watch(app: AppState, shutdown: CancellationToken) {
    // Since when each runner has not answered, as this leader saw it.
    let mut silent: HashMap<strata_types::ServerId, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        if app.meta.raft_metrics().current_leader != Some(app.meta.node_id()) {
            silent.clear();
            continue;
        }
        let state = app.meta.local_state();
        let running: Vec<_> = state
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .cloned()
            .collect();
        let mut asked: HashMap<strata_types::ServerId, Result<Vec<JobId>, String>> = HashMap::new();
        for job in running {
            let runner = state.servers.get(&job.runner);
            let name = runner.map_or_else(|| job.runner.to_string(), |s| s.name.to_string());
            let answer = match runner {
                None => Err("it is no longer in the management group".to_string()),
                Some(_) if job.runner == app.identity.id => Ok(app.jobs.running()),
                Some(s) => match asked.get(&job.runner) {
                    Some(a) => a.clone(),
                    None => {
                        let a = runner_jobs(&app, &s.api_addr).await;
                        asked.insert(job.runner, a.clone());
                        a
                    }
                },
            };
            let why = match answer {
                Ok(ids) => {
                    silent.remove(&job.runner);
                    if ids.contains(&job.id) {
                        continue;
                    }
                    format!("interrupted: server {name} no longer runs it (it restarted, or could not record the end); start it again")
                }
                Err(e) => {
                    let since = *silent.entry(job.runner).or_insert_with(Instant::now);
                    if since.elapsed() < RUNNER_LOST_AFTER {
                        continue;
                    }
                    format!("interrupted: server {name}, which ran it, has not answered for {}s ({e}); start it again", since.elapsed().as_secs())
                }
            };
            // A server removal goes on without its runner: take it up here.
            if let strata_meta::JobKind::RemoveServer { cluster, server } = &job.kind {
                match crate::api::resume_removal(&app, job.id, cluster.clone(), *server).await {
                    Ok(()) => {
                        tracing::info!(job = %job.id, reason = %why, "took up a server removal whose runner is gone");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e.message, "cannot take up the server removal")
                    }
                }
            }
            tracing::warn!(job = %job.id, reason = %why, "failing a job whose runner is gone");
            let cmd = Command::FinishJob {
                id: job.id,
                state: JobState::Failed,
                error: Some(why),
                progress: None,
                verify: None,
                now_ms: crate::api::now_ms(),
            };
            if let Err(e) = app.meta.write(cmd).await {
                tracing::debug!(job = %job.id, error = %e, "could not fail the job");
            }
        }
    }
}
