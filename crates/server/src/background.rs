//! A few low-priority threads for work that must finish but must not take the CPU from client
//! I/O: the sync that makes a snapshot durable after its barrier has released the writes.
//!
//! On a busy server that sync competes with the write path for the cores (block allocation,
//! bio submission); at the lowest priority (nice 19) the scheduler gives the cores to client
//! I/O first, and the snapshot's API call, which waits for the sync, takes the delay.

use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;

type Job = Box<dyn FnOnce() + Send>;

/// The pool. Its threads end when it is dropped, after the jobs already queued.
pub struct Background {
    jobs: mpsc::Sender<Job>,
}

/// The pool has no threads left (none could start, or every one has ended).
#[derive(Debug, thiserror::Error)]
#[error("the background threads are gone")]
pub struct Gone;

impl Background {
    /// Starts `threads` threads at the lowest CPU priority.
    pub fn start(threads: usize) -> std::io::Result<Background> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("strata-background-{i}"))
                .spawn(move || {
                    // On Linux this sets the calling thread's priority only.
                    if let Err(e) = rustix::process::setpriority_process(None, 19) {
                        tracing::warn!(error = %e, "cannot lower a background thread's priority");
                    }
                    loop {
                        let job = queue.lock().recv();
                        match job {
                            // A job that panics drops its answer (its caller gets `Gone`);
                            // the thread goes on.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                            }
                            Err(mpsc::RecvError) => return,
                        }
                    }
                })?;
        }
        Ok(Background { jobs })
    }

    /// Runs `f` on one of the threads and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Gone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_at_the_lowest_priority_and_answer() {
        let pool = Background::start(2).expect("threads");
        let (nice, name) = pool
            .run(|| {
                let nice = rustix::process::getpriority_process(None).expect("priority");
                (nice, std::thread::current().name().map(str::to_owned))
            })
            .await
            .expect("ran");
        assert_eq!(nice, 19);
        assert!(name.is_some_and(|n| n.starts_with("strata-background-")));
        // Many jobs at once all answer, each with its own result.
        let all = futures::future::join_all((0..20u32).map(|i| pool.run(move || i * i))).await;
        let got: Vec<u32> = all.into_iter().map(|r| r.expect("ran")).collect();
        assert_eq!(got, (0..20u32).map(|i| i * i).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_job_that_panics_fails_its_caller_and_the_thread_goes_on() {
        let pool = Background::start(1).expect("threads");
        let panicked = pool.run(|| -> u32 { panic!("job failed") }).await;
        assert!(panicked.is_err());
        assert_eq!(pool.run(|| 7).await.expect("the thread still runs jobs"), 7);
    }
}
