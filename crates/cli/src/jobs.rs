//! Jobs from the command line: `strata job ...`, and the wait that `volume verify` and
//! `cluster remove-server` do for the job they start. While waiting, a progress bar (indicatif,
//! on standard error) when standard output is a terminal and the output is a table; else a
//! line on standard error now and then. Interrupting a wait leaves the job running.

use crate::args::{JobCommand, Output};
use crate::client::{segment, Client};
use crate::commands::{print, time, verify_text};
use crate::table;
use anyhow::{bail, Result};
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use strata_api_types::{JobInfo, JobState};
use strata_types::format_size;

/// How often a wait asks for the job.
const POLL: Duration = Duration::from_millis(500);
/// How often a wait without a progress bar prints a line.
const LINE_EVERY: Duration = Duration::from_secs(10);
/// How long a wait goes on while the API does not answer (a leader election, a restart).
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// `done/total unit, N%`, or `starting` before the total is known.
fn progress_text(j: &JobInfo) -> String {
    let p = &j.progress;
    let percent = match (j.state, p.total) {
        (JobState::Running, 0) => return "starting".into(),
        // Nothing to do (an empty volume to verify) is all done.
        (JobState::Succeeded, 0) => 100,
        _ => p.percent(),
    };
    let mut text = format!("{}/{} {}, {percent}%", p.done, p.total, p.unit);
    if p.bytes > 0 {
        text.push_str(&format!(", {}", format_size(p.bytes)));
    }
    text
}

/// One line about a job, as `volume show` prints it: `verify 42% (id …)`.
pub fn summary(j: &JobInfo) -> String {
    match j.state {
        JobState::Running => format!("{} {}% (id {})", j.kind, j.progress.percent(), j.id),
        JobState::Failed => format!(
            "{} failed: {} (id {})",
            j.kind,
            j.error.as_deref().unwrap_or("no reason given"),
            j.id
        ),
        state => {
            let ended = j.ended_unix_ms.map(|t| format!(" {}", time(t)));
            format!(
                "{} {}{} (id {})",
                j.kind,
                state.as_str(),
                ended.unwrap_or_default(),
                j.id
            )
        }
    }
}

fn details(j: &JobInfo) -> String {
    let mut out = format!(
        "id:        {}\nkind:      {}{}{}\ntarget:    {}\nstate:     {}\nprogress:  {}\nrunner:    {}\nstarted:   {}\n",
        j.id,
        j.kind,
        if j.repair { " (repair)" } else { "" },
        j.max_rate
            .map(|r| format!(", at most {}/s", format_size(r)))
            .unwrap_or_default(),
        j.target,
        j.state.as_str(),
        progress_text(j),
        j.runner,
        time(j.started_unix_ms),
    );
    if let Some(t) = j.ended_unix_ms {
        out.push_str(&format!("ended:     {}\n", time(t)));
    }
    if let Some(e) = &j.error {
        out.push_str(&format!("error:     {e}\n"));
    }
    if let Some(r) = &j.report {
        out.push_str(&verify_text(r));
    }
    out
}

fn jobs_table(jobs: &[JobInfo]) -> String {
    table::render(
        &["ID", "KIND", "TARGET", "STATE", "PROGRESS", "STARTED"],
        &jobs
            .iter()
            .map(|j| {
                vec![
                    j.id.to_string(),
                    j.kind.clone(),
                    j.target.clone(),
                    j.state.as_str().to_string(),
                    progress_text(j),
                    time(j.started_unix_ms),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

/// How the wait shows progress.
enum Display {
    Bar(indicatif::ProgressBar),
    Lines { last: Instant },
}

impl Display {
    fn new(out: Output) -> Self {
        if out == Output::Table && std::io::stdout().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} {prefix} ({elapsed}, {eta} left)",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            Display::Bar(bar)
        } else {
            // The first line after LINE_EVERY: a quick job prints nothing.
            Display::Lines {
                last: Instant::now(),
            }
        }
    }

    fn show(&mut self, j: &JobInfo) {
        match self {
            Display::Bar(bar) => {
                bar.set_message(format!("{} {}", j.kind, j.target));
                bar.set_prefix(j.progress.unit.clone());
                bar.set_length(j.progress.total);
                bar.set_position(j.progress.done);
            }
            Display::Lines { last } => {
                if last.elapsed() >= LINE_EVERY {
                    eprintln!(
                        "{} {}: {} (job {}; interrupting this wait does not stop it)",
                        j.kind,
                        j.target,
                        progress_text(j),
                        j.id
                    );
                    *last = Instant::now();
                }
            }
        }
    }

    fn finish(self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Waits until job `id` ends, showing its progress; returns it as it ended.
pub async fn wait(api: &Client, id: &str, out: Output) -> Result<JobInfo> {
    let path = format!("/v1/jobs/{}", segment(id));
    let mut display = Display::new(out);
    let mut unreachable_since: Option<Instant> = None;
    let ended = loop {
        match api.get::<JobInfo>(&path).await {
            Ok(j) if j.state != JobState::Running => break Ok(j),
            Ok(j) => {
                unreachable_since = None;
                display.show(&j);
            }
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREACHABLE_FOR {
                    break Err(e.context(format!(
                        "lost track of job {id}, which may still run; see `strata job show {id}`"
                    )));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    };
    display.finish();
    ended
}

/// Prints what an ended job produced, as the command that started it does: a verify's report
/// (failing if chunks still differ), a removal's cluster. Fails if the job did not succeed.
pub async fn conclude(api: &Client, out: Output, j: &JobInfo) -> Result<()> {
    match j.state {
        JobState::Succeeded => {}
        JobState::Running => bail!("job {} is still running", j.id),
        JobState::Failed => bail!(
            "{} {} failed: {}",
            j.kind,
            j.target,
            j.error.as_deref().unwrap_or("no reason given")
        ),
        JobState::Cancelled => bail!("{} {} was cancelled (job {})", j.kind, j.target, j.id),
    }
    if let Some(report) = &j.report {
        print(out, report, verify_text)?;
        let unrepaired = report.unrepaired();
        if unrepaired > 0 {
            let target = &j.target;
            bail!("{unrepaired} chunk(s) of {target} differ between replicas; run `strata volume verify {target} --repair`");
        }
        return Ok(());
    }
    if let Some(cluster) = &j.cluster {
        let c: strata_api_types::ClusterInfo = api
            .get(&format!("/v1/clusters/{}", segment(cluster)))
            .await?;
        return print(out, &c, crate::group::cluster_details);
    }
    print(out, j, details)
}

/// After a command started job `j`: with `no_wait`, prints its id (its record with `--output
/// json`); else waits for it and prints its result.
pub async fn started(api: &Client, out: Output, j: JobInfo, no_wait: bool) -> Result<()> {
    if no_wait {
        return print(out, &j, |j| format!("{}\n", j.id));
    }
    let ended = wait(api, &j.id.to_string(), out).await?;
    conclude(api, out, &ended).await
}

/// `strata job ...`.
pub async fn job(api: &Client, out: Output, cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::List => {
            let jobs: Vec<JobInfo> = api.get("/v1/jobs").await?;
            print(out, &jobs, |j| jobs_table(j))
        }
        JobCommand::Show { id } => {
            let j: JobInfo = api.get(&format!("/v1/jobs/{}", segment(&id))).await?;
            print(out, &j, details)
        }
        JobCommand::Wait { id } => {
            let j = wait(api, &id, out).await?;
            conclude(api, out, &j).await
        }
        JobCommand::Cancel { id } => {
            let j: JobInfo = api
                .delete_json(&format!("/v1/jobs/{}", segment(&id)))
                .await?;
            print(out, &j, |j| {
                format!("cancelled job {} ({} {})\n", j.id, j.kind, j.target)
            })
        }
    }
}
