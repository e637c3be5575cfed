//! Applying the job commands: start, progress, resume (a new runner), finish.
//!
//! A job record is small (a verify's list of differing chunks is capped at
//! [`MAX_LISTED_MISMATCHES`]), and the state keeps only the last [`MAX_FINISHED_JOBS`] finished
//! ones, so the state stays small however many jobs run. A job's runner writes its progress
//! every second or so; once the job has ended (finished, cancelled, or failed by the leader
//! because its runner stopped) every further change is refused, which tells a runner that is
//! still working to stop.

use crate::error::CommandError;
use crate::model::{
    CommandOutput, JobKind, JobProgress, JobRecord, JobState, StateView, VerifyResult,
};
use strata_types::{JobId, ServerId};

/// Finished jobs kept in the state; the oldest are dropped when a new job starts.
pub const MAX_FINISHED_JOBS: usize = 100;

/// Differing chunks a verify job lists; the rest are counted.
pub const MAX_LISTED_MISMATCHES: usize = 1000;

/// The job's state as a word, as the API and the CLI show it.
pub fn state_word(state: JobState) -> &'static str {
    match state {
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// Whether `a` and `b` work on the same thing, so that they may not run at once.
fn same_target(a: &JobKind, b: &JobKind) -> bool {
    match (a, b) {
        (JobKind::Verify { volume: x, .. }, JobKind::Verify { volume: y, .. }) => x == y,
        (JobKind::RemoveServer { server: x, .. }, JobKind::RemoveServer { server: y, .. }) => {
            x == y
        }
        _ => false,
    }
}

fn describe(kind: &JobKind) -> String {
    match kind {
        JobKind::Verify { volume_name, .. } => format!("a verify of volume {volume_name:?}"),
        JobKind::RemoveServer { cluster, server } => {
            format!("the removal of server {server} from cluster {cluster:?}")
        }
    }
}

/// Records a new running job, dropping the oldest finished ones past the limit.
pub fn start_job(state: &mut StateView, job: JobRecord) -> Result<CommandOutput, CommandError> {
    if state.jobs.contains_key(&job.id) {
        return Err(CommandError::JobExists(job.id));
    }
    if job.state != JobState::Running || job.ended_unix_ms.is_some() {
        return Err(CommandError::BadJobState("start in an ended state".into()));
    }
    if let Some(busy) = state
        .jobs
        .values()
        .find(|j| j.state == JobState::Running && same_target(&j.kind, &job.kind))
    {
        return Err(CommandError::JobBusy {
            what: describe(&job.kind),
            job: busy.id,
        });
    }
    let mut finished: Vec<(u64, JobId)> = state
        .jobs
        .values()
        .filter(|j| j.state != JobState::Running)
        .map(|j| (j.ended_unix_ms.unwrap_or(j.started_unix_ms), j.id))
        .collect();
    finished.sort();
    let excess = finished.len().saturating_sub(MAX_FINISHED_JOBS - 1);
    for (_, id) in finished.into_iter().take(excess) {
        state.jobs.remove(&id);
    }
    state.jobs.insert(job.id, job.clone());
    Ok(CommandOutput::Job(job))
}

fn running(state: &mut StateView, id: JobId) -> Result<&mut JobRecord, CommandError> {
    let job = state
        .jobs
        .get_mut(&id)
        .ok_or(CommandError::UnknownJob(id))?;
    if job.state != JobState::Running {
        return Err(CommandError::JobEnded {
            id,
            state: state_word(job.state).into(),
        });
    }
    Ok(job)
}

/// Records a running job's progress.
pub fn update_job(
    state: &mut StateView,
    id: JobId,
    progress: JobProgress,
) -> Result<CommandOutput, CommandError> {
    let job = running(state, id)?;
    job.progress = progress;
    Ok(CommandOutput::Job(job.clone()))
}

/// Hands a running job to `runner`.
pub fn resume_job(
    state: &mut StateView,
    id: JobId,
    runner: ServerId,
) -> Result<CommandOutput, CommandError> {
    if !state.servers.contains_key(&runner) {
        return Err(CommandError::UnknownServer(runner));
    }
    let job = running(state, id)?;
    job.runner = runner;
    Ok(CommandOutput::Job(job.clone()))
}

/// What a job ends with.
pub struct Ending {
    /// The final state.
    pub state: JobState,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// The last progress, if known.
    pub progress: Option<JobProgress>,
    /// A verify's findings.
    pub verify: Option<VerifyResult>,
    /// When it ended.
    pub now_ms: u64,
}

/// Ends a running job.
pub fn finish_job(
    state: &mut StateView,
    id: JobId,
    end: Ending,
) -> Result<CommandOutput, CommandError> {
    if end.state == JobState::Running {
        return Err(CommandError::BadJobState("finish as running".into()));
    }
    let job = running(state, id)?;
    job.state = end.state;
    job.error = end.error;
    if let Some(p) = end.progress {
        job.progress = p;
    }
    job.verify = end.verify;
    job.ended_unix_ms = Some(end.now_ms);
    Ok(CommandOutput::Job(job.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_command;
    use crate::model::Command;
    use strata_types::{Name, ServerId, VolumeId};

    fn verify_job(volume: VolumeId, started: u64) -> JobRecord {
        JobRecord {
            id: JobId::new_random(),
            kind: JobKind::Verify {
                volume,
                volume_name: Name::new("v").expect("valid name"),
                snapshot: None,
                repair: false,
                max_rate: None,
            },
            runner: ServerId::new_random(),
            state: JobState::Running,
            progress: JobProgress::default(),
            started_unix_ms: started,
            ended_unix_ms: None,
            error: None,
            verify: None,
        }
    }

    fn finish(id: JobId, state: JobState, now_ms: u64) -> Command {
        Command::FinishJob {
            id,
            state,
            error: None,
            progress: None,
            verify: Some(VerifyResult::default()),
            now_ms,
        }
    }

    #[test]
    fn a_job_runs_reports_and_ends_once() {
        let mut st = StateView::default();
        let job = verify_job(VolumeId::new_random(), 10);
        let id = job.id;
        apply_command(&mut st, Command::StartJob(job.clone())).expect("start");
        assert_eq!(
            apply_command(&mut st, Command::StartJob(job)),
            Err(CommandError::JobExists(id))
        );
        let progress = JobProgress {
            done: 3,
            total: 10,
            bytes: 3 << 22,
        };
        apply_command(&mut st, Command::UpdateJob { id, progress }).expect("progress");
        assert_eq!(st.jobs[&id].progress, progress);
        // Another runner takes it up; it must be a known server.
        let stranger = ServerId::new_random();
        assert_eq!(
            apply_command(
                &mut st,
                Command::ResumeJob {
                    id,
                    runner: stranger
                }
            ),
            Err(CommandError::UnknownServer(stranger))
        );
        let rec = crate::model::ServerRecord {
            id: stranger,
            name: Name::new("b").expect("valid name"),
            api_addr: "http://b:7780".into(),
            nbd_addr: "b:10809".into(),
            peer_addr: "b:7781".into(),
            raft_node_id: 2,
        };
        apply_command(&mut st, Command::AddServer(rec)).expect("add server");
        apply_command(
            &mut st,
            Command::ResumeJob {
                id,
                runner: stranger,
            },
        )
        .expect("resume");
        assert_eq!(st.jobs[&id].runner, stranger);
        apply_command(&mut st, finish(id, JobState::Succeeded, 20)).expect("finish");
        assert_eq!(st.jobs[&id].state, JobState::Succeeded);
        assert_eq!(st.jobs[&id].ended_unix_ms, Some(20));
        // Once ended, nothing changes it: a runner still at work learns it must stop.
        let before = st.clone();
        assert!(matches!(
            apply_command(&mut st, Command::UpdateJob { id, progress }),
            Err(CommandError::JobEnded { .. })
        ));
        assert!(matches!(
            apply_command(&mut st, finish(id, JobState::Failed, 30)),
            Err(CommandError::JobEnded { .. })
        ));
        assert!(matches!(
            apply_command(
                &mut st,
                Command::ResumeJob {
                    id,
                    runner: stranger
                }
            ),
            Err(CommandError::JobEnded { .. })
        ));
        assert_eq!(st, before);
        let unknown = JobId::new_random();
        assert_eq!(
            apply_command(&mut st, finish(unknown, JobState::Failed, 30)),
            Err(CommandError::UnknownJob(unknown))
        );
    }

    #[test]
    fn one_verify_per_volume_at_a_time() {
        let mut st = StateView::default();
        let vol = VolumeId::new_random();
        let first = verify_job(vol, 1);
        apply_command(&mut st, Command::StartJob(first.clone())).expect("start");
        let err = apply_command(&mut st, Command::StartJob(verify_job(vol, 2)));
        assert!(
            matches!(err, Err(CommandError::JobBusy { job, .. }) if job == first.id),
            "{err:?}"
        );
        apply_command(
            &mut st,
            Command::StartJob(verify_job(VolumeId::new_random(), 2)),
        )
        .expect("another volume");
        apply_command(&mut st, finish(first.id, JobState::Cancelled, 3)).expect("cancel");
        apply_command(&mut st, Command::StartJob(verify_job(vol, 4))).expect("after the first");
    }

    #[test]
    fn only_the_newest_finished_jobs_are_kept() {
        let mut st = StateView::default();
        let mut ids = Vec::new();
        for i in 0..(MAX_FINISHED_JOBS as u64 + 5) {
            let job = verify_job(VolumeId::new_random(), i);
            ids.push(job.id);
            apply_command(&mut st, Command::StartJob(job.clone())).expect("start");
            apply_command(&mut st, finish(job.id, JobState::Succeeded, 1000 + i)).expect("finish");
        }
        let running = verify_job(VolumeId::new_random(), 5000);
        apply_command(&mut st, Command::StartJob(running.clone())).expect("start");
        assert_eq!(st.jobs.len(), MAX_FINISHED_JOBS);
        assert!(st.jobs.contains_key(&running.id));
        // The oldest went first.
        assert!(!st.jobs.contains_key(&ids[0]));
        assert!(!st.jobs.contains_key(&ids[5]));
        assert!(st.jobs.contains_key(&ids[6]));
    }
}
