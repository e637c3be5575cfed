//! The barrier over the servers of one volume: every gateway holds new writes and drains the
//! ones in flight while the management group commits a change that all of them must see at
//! once — a snapshot (SPEC F5) or the end of a migration — and the servers apply it.

use super::{ApiError, AppState};
use futures::future::join_all;
use std::time::Duration;
use strata_meta::{StateView, VolumeRecord};
use strata_types::{LayerId, ServerId, VolumeId};

/// The snapshot barrier over the servers of one volume (SPEC F5; see `strata_volume`): every
/// gateway holds new writes and drains its writes in flight, the snapshot commits, every replica freezes the old head (in
/// memory: no sync while writes are held), and only then are the gateways released. Last, the
/// replicas flush again, which makes the frozen layer and the new stack durable, before the
/// snapshot is acknowledged. A server that does not answer in time is not waited for: its
/// writes carry the old head and are fenced. A replica that did not freeze may still take
/// writes into the old head from a gateway that missed the pause, so the snapshot is
/// acknowledged only once each in-sync replica that did not freeze is marked stale
/// ([`Barrier::unfrozen`]): then no chunk is read from it until resync repaired it.
pub(crate) struct Barrier {
    http: reqwest::Client,
    id: u64,
    volume: VolumeId,
    /// API URLs of the volume's possible gateways (its cluster) and replicas (its layout).
    servers: Vec<String>,
    /// Its replicas (layout and target), with their API URLs.
    replicas: Vec<(ServerId, String)>,
    paused: std::sync::Mutex<Vec<String>>,
    /// The replicas that froze the old head.
    froze: std::sync::Mutex<Vec<String>>,
}

/// How long one server may take for one barrier step.
const BARRIER_STEP_TIMEOUT: Duration = Duration::from_secs(3);

impl Barrier {
    pub(crate) fn new(app: &AppState, state: &StateView, v: &VolumeRecord) -> Self {
        let api = |id: &ServerId| state.servers.get(id).map(|s| s.api_addr.clone());
        let mut ids: Vec<ServerId> = state
            .clusters
            .get(&v.cluster)
            .map(|c| c.servers.clone())
            .unwrap_or_default();
        ids.extend(
            v.servers
                .iter()
                .chain(v.target.iter().flatten())
                .filter(|s| !ids.contains(s))
                .copied()
                .collect::<Vec<_>>(),
        );
        Self {
            http: app.http.clone(),
            id: rand::random(),
            volume: v.id,
            servers: ids.iter().filter_map(api).collect(),
            replicas: v
                .servers
                .iter()
                .chain(v.target.iter().flatten())
                .filter_map(|s| Some((*s, api(s)?)))
                .collect(),
            paused: std::sync::Mutex::new(Vec::new()),
            froze: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Runs `step` on every server of `urls` at once; returns the ones that did it.
    async fn step(&self, urls: &[String], step: &str, query: String) -> Vec<String> {
        let calls = urls.iter().map(|base| {
            let url = format!("{base}/internal/v1/barrier/{}/{step}?{query}", self.id);
            let http = self.http.clone();
            async move {
                let res = http
                    .post(&url)
                    .timeout(BARRIER_STEP_TIMEOUT)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status());
                match res {
                    Ok(_) => Some(base.clone()),
                    Err(e) => {
                        tracing::warn!(server = %base, step, error = %e, "barrier step failed on a server");
                        None
                    }
                }
            }
        });
        join_all(calls).await.into_iter().flatten().collect()
    }

    /// Makes the snapshot durable on every replica; a replica that cannot is an error (the
    /// snapshot exists, but this request cannot promise its content survives a crash there).
    /// Only the replicas that froze are asked: one that was unreachable takes the snapshot
    /// from the management state when it returns, and is resynced.
    pub(crate) async fn persist(&self) -> Result<(), ApiError> {
        let froze = std::mem::take(&mut *self.froze.lock().unwrap_or_else(|e| e.into_inner()));
        let done = self
            .step(&froze, "persist", format!("volume={}", self.volume))
            .await;
        if done.len() < froze.len() {
            return Err(ApiError::unavailable(format!(
                "the snapshot was taken but {} of {} servers holding the volume could not make it durable yet; they will when they next flush",
                froze.len() - done.len(),
                froze.len()
            )));
        }
        Ok(())
    }

    /// Holds the writes of every gateway that answers; returns the API URLs of those that did
    /// not.
    pub(crate) async fn pause(&self) -> Vec<String> {
        let done = self
            .step(&self.servers, "pause", format!("volume={}", self.volume))
            .await;
        let missing = self
            .servers
            .iter()
            .filter(|s| !done.contains(s))
            .cloned()
            .collect();
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = done;
        missing
    }

    /// Has each of `holders` copy the chunks it holds marks for towards `servers`, with writes
    /// held; returns whether all of them did and none is left.
    pub(crate) async fn drain(
        &self,
        state: &StateView,
        holders: &[ServerId],
        servers: &[ServerId],
    ) -> bool {
        let urls: Vec<String> = holders
            .iter()
            .filter_map(|s| state.servers.get(s).map(|r| r.api_addr.clone()))
            .collect();
        let ids: Vec<String> = servers.iter().map(ToString::to_string).collect();
        let query = format!("volume={}&servers={}", self.volume, ids.join(","));
        let done = self.step(&urls, "drain", query).await;
        done.len() == urls.len() && urls.len() == holders.len()
    }

    /// Waits until every paused server has applied the start (`migrating`: true) or the end
    /// of the volume's migration.
    pub(crate) async fn settle(&self, migrating: bool) {
        let paused = self
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let query = format!("volume={}&migrating={migrating}", self.volume);
        self.step(&paused, "settle", query).await;
    }

    /// Has every replica freeze `head`, the old head.
    pub(crate) async fn freeze(&self, head: LayerId) {
        let query = format!("volume={}&head={head}", self.volume);
        let urls: Vec<String> = self.replicas.iter().map(|(_, u)| u.clone()).collect();
        let done = self.step(&urls, "freeze", query).await;
        *self.froze.lock().unwrap_or_else(|e| e.into_inner()) = done;
    }

    /// The replicas that did not freeze the old head (after [`Barrier::freeze`]).
    pub(crate) fn unfrozen(&self) -> Vec<ServerId> {
        let froze = self.froze.lock().unwrap_or_else(|e| e.into_inner());
        self.replicas
            .iter()
            .filter(|(_, url)| !froze.contains(url))
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) async fn release(&self) {
        let paused = std::mem::take(&mut *self.paused.lock().unwrap_or_else(|e| e.into_inner()));
        self.step(&paused, "release", String::new()).await;
    }
}
