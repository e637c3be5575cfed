//! Scrub: compare the replicas of every chunk of a volume (or of one snapshot) by digest, and
//! optionally repair a differing replica from a good one.
//!
//! The digest is blake3 of the chunk's bytes as read at the layer, answered with the chunk's
//! write generation there (see `strata_store`'s block maps: every change of a chunk gets a
//! generation from the replica that applies it first, and the others apply it with the same).
//! A replica is *good* when it is in sync, could be read, and holds the highest generation of
//! those: its copy took the latest change, so a replica that missed changes (restored from an
//! old backup, or left behind by a fault) is repaired from the others and never the other way.
//! Among replicas of the same generation that still differ (the data itself was damaged), the
//! digest most of them agree on wins, then the replica placed first. Repair copies the chunk's
//! image (with its generation) in every layer up to the one verified from the good replica to
//! each differing one, then digests again to confirm.
//!
//! The caller names the chunks to read: a chunk that no replica holds data in reads as zeros on
//! every replica, so the server's job runner asks the replicas which chunks they hold and
//! passes only those (an empty 1 PiB volume is verified without reading anything). A
//! [`Monitor`] sees each compared chunk, can pace the run (a rate limit) and stop it.

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use strata_types::{LayerId, ServerId, VolumeId};
use strata_wire::{Request, Response};

use crate::engine::Engine;

/// Chunks verified at once.
const PARALLEL: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(30);

/// One replica's answer for one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaDigest {
    /// The replica.
    pub server: ServerId,
    /// Its digest (hex), or why it could not give one.
    pub digest: Result<String, String>,
    /// The chunk's write generation there (0 when it could not be read).
    pub generation: u64,
}

/// A chunk whose replicas disagree or did not all answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkProblem {
    /// The chunk index.
    pub chunk: u64,
    /// Every replica's answer.
    pub replicas: Vec<ReplicaDigest>,
    /// Whether a repair made every reachable replica agree.
    pub repaired: bool,
}

/// The result of verifying a volume or snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Chunks of the volume (those not read agree: no replica holds data there).
    pub chunks: u64,
    /// Chunks read and compared.
    pub read: u64,
    /// The first chunks whose replicas differ or did not all answer (at most the `listed`
    /// given to [`verify`]).
    pub problems: Vec<ChunkProblem>,
    /// Such chunks past those listed.
    pub unlisted: u64,
    /// Of the unlisted ones, those a repair did not fix.
    pub unlisted_unrepaired: u64,
}

/// Why a verify did not finish.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The volume is not (or no longer) known to this server's engine.
    #[error("volume {0} does not exist")]
    UnknownVolume(VolumeId),
    /// The [`Monitor`] stopped the run.
    #[error("stopped before every chunk was compared")]
    Stopped,
}

/// Watches and paces a verify run.
#[async_trait]
pub trait Monitor: Send + Sync {
    /// Whether the run must stop now (checked before each chunk).
    fn stopped(&self) -> bool;
    /// One chunk of `bytes` bytes was compared; may wait, to hold a rate.
    async fn compared(&self, bytes: u64);
}

/// Verifies `volume` as of `layer` (`None`: the head), reading the `chunks` named (ascending;
/// every other chunk is taken to be held by no replica); with `repair`, fixes differing
/// replicas. Lists at most `listed` problems and counts the rest.
pub async fn verify(
    engine: &Arc<Engine>,
    volume: VolumeId,
    layer: Option<LayerId>,
    repair: bool,
    chunks: impl IntoIterator<Item = u64>,
    listed: usize,
    monitor: &dyn Monitor,
) -> Result<Report, VerifyError> {
    let view = engine
        .view(volume)
        .ok_or(VerifyError::UnknownVolume(volume))?;
    let count = view.chunks();
    let mut report = Report {
        chunks: count,
        ..Report::default()
    };
    let mut results = stream::iter(chunks.into_iter().filter(|c| *c < count))
        .take_while(|_| std::future::ready(!monitor.stopped()))
        .map(|chunk| {
            let view = view.clone();
            async move {
                let problem =
                    // Servers a migration is still copying the chunk to are not compared.
                    check(engine, &view.placed(chunk), volume, layer, chunk).await;
                let problem = match problem {
                    Some(mut p) if repair => {
                        p.repaired = fix(engine, &view, layer, &p).await;
                        Some(p)
                    }
                    other => other,
                };
                let start = chunk * strata_types::CHUNK_SIZE;
                monitor
                    .compared(strata_types::CHUNK_SIZE.min(view.size.saturating_sub(start)))
                    .await;
                problem
            }
        })
        .buffered(PARALLEL);
    while let Some(problem) = results.next().await {
        report.read += 1;
        match problem {
            Some(p) if report.problems.len() < listed => report.problems.push(p),
            Some(p) => {
                report.unlisted += 1;
                report.unlisted_unrepaired += u64::from(!p.repaired);
            }
            None => {}
        }
    }
    if monitor.stopped() {
        return Err(VerifyError::Stopped);
    }
    Ok(report)
}

async fn digests(
    engine: &Arc<Engine>,
    replicas: &[ServerId],
    volume: VolumeId,
    layer: Option<LayerId>,
    chunk: u64,
) -> Vec<ReplicaDigest> {
    let asks = replicas.iter().map(|r| async move {
        let req = Request::Digest {
            volume,
            layer,
            chunk,
        };
        let (digest, generation) = match engine.ask(*r, req, TIMEOUT).await {
            Ok(Response::Digest { digest, generation }) => (Ok(hex(&digest)), generation),
            Ok(other) => (Err(format!("unexpected answer {other:?}")), 0),
            Err(e) => (Err(e.to_string()), 0),
        };
        ReplicaDigest {
            server: *r,
            digest,
            generation,
        }
    });
    futures::future::join_all(asks).await
}

/// The chunk's problem, or `None` when all replicas agree.
async fn check(
    engine: &Arc<Engine>,
    replicas: &[ServerId],
    volume: VolumeId,
    layer: Option<LayerId>,
    chunk: u64,
) -> Option<ChunkProblem> {
    let answers = digests(engine, replicas, volume, layer, chunk).await;
    // A replica that cannot be read is a problem, not agreement, whichever one it is.
    let first = answers.first()?.digest.as_ref().ok();
    let agree = answers
        .iter()
        .all(|a| a.digest.as_ref().is_ok_and(|d| Some(d) == first));
    (!agree).then_some(ChunkProblem {
        chunk,
        replicas: answers,
        repaired: false,
    })
}

/// The replica to repair the others of `problem` from: the in-sync, readable one with the
/// highest write generation; then the digest most of those agree on; then the first placed.
fn good_copy<'a>(view: &crate::VolumeView, problem: &'a ChunkProblem) -> Option<&'a ReplicaDigest> {
    let in_sync: Vec<&ReplicaDigest> = problem
        .replicas
        .iter()
        .filter(|r| view.in_sync(r.server) && r.digest.is_ok())
        .collect();
    in_sync
        .iter()
        .max_by_key(|r| {
            let votes = in_sync
                .iter()
                .filter(|o| o.generation == r.generation && o.digest == r.digest)
                .count();
            let rank = problem.replicas.len()
                - problem
                    .replicas
                    .iter()
                    .position(|x| x.server == r.server)
                    .unwrap_or(0);
            (r.generation, votes, rank)
        })
        .copied()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Repairs one chunk; returns whether the replicas agree afterwards.
async fn fix(
    engine: &Arc<Engine>,
    view: &crate::VolumeView,
    layer: Option<LayerId>,
    problem: &ChunkProblem,
) -> bool {
    let Some(good) = good_copy(view, problem) else {
        return false;
    };
    let top = layer
        .and_then(|l| view.layers.iter().position(|x| *x == l))
        .unwrap_or(view.layers.len().saturating_sub(1));
    let layers = &view.layers[..=top.min(view.layers.len().saturating_sub(1))];
    for bad in problem
        .replicas
        .iter()
        .filter(|r| r.digest.is_ok() && r.digest != good.digest)
    {
        for l in layers {
            let get = Request::GetChunk {
                volume: view.id,
                layer: *l,
                chunk: problem.chunk,
            };
            let Ok(Response::Chunk { maps, blocks }) = engine.ask(good.server, get, TIMEOUT).await
            else {
                return false;
            };
            let put = Request::PutChunk {
                volume: view.id,
                layer: *l,
                chunk: problem.chunk,
                durable: true,
                epoch: engine.epoch_of(view),
                maps,
                blocks,
            };
            if let Err(e) = engine.ask(bad.server, put, TIMEOUT).await {
                tracing::warn!(volume = %view.name, chunk = problem.chunk, server = %bad.server, error = %e, "repair failed");
                return false;
            }
        }
        tracing::info!(volume = %view.name, chunk = problem.chunk, server = %bad.server, from = %good.server, "repaired chunk");
    }
    check(
        engine,
        &problem
            .replicas
            .iter()
            .map(|r| r.server)
            .collect::<Vec<_>>(),
        view.id,
        layer,
        problem.chunk,
    )
    .await
    .is_none()
}
