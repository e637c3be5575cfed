//! [`ServerControl`]: how the volume engine reaches the management group from this server.
//! Changes go through this server's own API, whose forwarding sends them to the leader; a
//! minority side therefore gets the same "no quorum" refusal as any client would.

use async_trait::async_trait;
use std::time::Duration;
use strata_api_types::{MarkReplica, MigrationStep, MissedSummary, SealMarks};
use strata_meta::{Meta, StateView};
use strata_types::{ServerId, VolumeId};

/// How long a change may take to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a change waits for the management group to elect a leader (a few election
/// timeouts).
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How often a change is sent again meanwhile.
const LEADER_RETRY: Duration = Duration::from_millis(250);
/// How long a question to another server may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The engine's link to the management group.
pub struct ServerControl {
    me: ServerId,
    meta: Meta,
    http: reqwest::Client,
    own_api: String,
}

impl ServerControl {
    /// Control for server `me`, whose API is at `own_api`.
    pub fn new(me: ServerId, meta: Meta, http: reqwest::Client, own_api: String) -> Self {
        Self {
            me,
            meta,
            http,
            own_api,
        }
    }

    /// Sends a seal (or its lift) of `body.server`'s marks for `volume` to server `at`; answers
    /// the marks left there.
    async fn seal_request(
        &self,
        at: ServerId,
        volume: VolumeId,
        body: &SealMarks,
    ) -> Result<u64, String> {
        let api = api_of(&self.meta.local_state(), at)?;
        self.http
            .post(format!("{api}/internal/v1/volumes/{volume}/seal"))
            .json(body)
            .timeout(ASK_TIMEOUT)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                format!(
                    "cannot ask server {at} to seal the marks of server {}: {e}",
                    body.server
                )
            })?
            .json()
            .await
            .map_err(|e| format!("bad answer from server {at}: {e}"))
    }

    async fn post(&self, path: String, body: &impl serde::Serialize) -> Result<(), String> {
        post_change(
            &self.http,
            &format!("{}{path}", self.own_api),
            body,
            LEADER_WAIT,
        )
        .await
    }
}

/// Posts a change to the management group at `url` (this server's API). While the group has
/// no leader (an election after the leader died), the API answers 503 and the change is sent
/// again, for at most `wait`: a client write waits for a new leader rather than fail. Any other
/// refusal is final.
pub(crate) async fn post_change(
    http: &reqwest::Client,
    url: &str,
    body: &impl serde::Serialize,
    wait: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let resp = http
            .post(url)
            .json(body)
            .timeout(CHANGE_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("cannot reach the management API: {e}"))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<strata_api_types::ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or(text);
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && tokio::time::Instant::now() < deadline
        {
            tracing::info!(%url, %message, "no management leader yet; sending the change again");
            tokio::time::sleep(LEADER_RETRY).await;
            continue;
        }
        return Err(format!("{status}: {message}"));
    }
}

#[async_trait]
impl strata_volume::Control for ServerControl {
    async fn mark_stale(&self, volume: VolumeId, server: ServerId) -> Result<(), String> {
        let body = MarkReplica {
            server,
            reporter: Some(self.me),
            epoch: None,
        };
        self.post(format!("/v1/internal/volumes/{volume}/stale"), &body)
            .await
    }

    async fn mark_in_sync(
        &self,
        volume: VolumeId,
        server: ServerId,
        epoch: u64,
    ) -> Result<(), String> {
        let body = MarkReplica {
            server,
            reporter: None,
            epoch: Some(epoch),
        };
        self.post(format!("/v1/internal/volumes/{volume}/in-sync"), &body)
            .await
    }

    fn is_leader(&self) -> bool {
        self.meta.raft_metrics().current_leader == Some(self.meta.node_id())
    }

    async fn migration_seeded(&self, volume: VolumeId, target: &[ServerId]) -> Result<(), String> {
        let body = MigrationStep {
            server: Some(self.me),
            target: target.to_vec(),
        };
        self.post(format!("/v1/internal/volumes/{volume}/seeded"), &body)
            .await
    }

    async fn finish_migration(&self, volume: VolumeId, target: &[ServerId]) -> Result<(), String> {
        let body = MigrationStep {
            server: None,
            target: target.to_vec(),
        };
        self.post(format!("/v1/internal/volumes/{volume}/finish"), &body)
            .await
    }

    async fn seal_marks_at(
        &self,
        at: ServerId,
        volume: VolumeId,
        server: ServerId,
        epoch: u64,
    ) -> Result<u64, String> {
        let body = SealMarks {
            server,
            epoch,
            lift: false,
        };
        self.seal_request(at, volume, &body).await
    }

    async fn lift_seal_at(
        &self,
        at: ServerId,
        volume: VolumeId,
        server: ServerId,
        epoch: u64,
    ) -> Result<(), String> {
        let body = SealMarks {
            server,
            epoch,
            lift: true,
        };
        self.seal_request(at, volume, &body).await.map(|_| ())
    }

    async fn missed_at(
        &self,
        at: ServerId,
        volume: VolumeId,
        server: ServerId,
    ) -> Result<u64, String> {
        let list = missed_at(&self.http, &self.meta.local_state(), at, volume).await?;
        Ok(list
            .iter()
            .find(|m| m.server == server)
            .map_or(0, |m| m.remaining))
    }
}

/// The API base URL of server `at`.
fn api_of(state: &StateView, at: ServerId) -> Result<String, String> {
    state
        .servers
        .get(&at)
        .map(|s| s.api_addr.clone())
        .ok_or_else(|| format!("server {at} is unknown"))
}

/// The missed marks server `at` holds for `volume`, counted by the server that missed them.
pub async fn missed_at(
    http: &reqwest::Client,
    state: &StateView,
    at: ServerId,
    volume: VolumeId,
) -> Result<Vec<MissedSummary>, String> {
    let api = api_of(state, at)?;
    let url = format!("{api}/internal/v1/volumes/{volume}/missed");
    http.get(&url)
        .timeout(ASK_TIMEOUT)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("cannot ask server {at}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("bad answer from server {at}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// An API that answers 503 to the first `elections` posts, then `last`.
    async fn api(elections: usize, last: StatusCode) -> (String, Arc<AtomicUsize>) {
        let posts = Arc::new(AtomicUsize::new(0));
        let seen = posts.clone();
        let app = axum::Router::new().route(
            "/change",
            axum::routing::post(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < elections {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        last
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/change", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, posts)
    }

    #[tokio::test]
    async fn a_change_waits_for_a_leader_but_not_past_a_refusal() {
        let http = reqwest::Client::new();
        let wait = Duration::from_secs(5);
        // Failed before the fix: the first 503 was returned as the error.
        let (url, posts) = api(3, StatusCode::OK).await;
        post_change(&http, &url, &"x", wait).await.unwrap();
        assert_eq!(posts.load(Ordering::SeqCst), 4);
        // A refusal is not sent again.
        let (url, posts) = api(1, StatusCode::CONFLICT).await;
        let err = post_change(&http, &url, &"x", wait).await.unwrap_err();
        assert!(err.starts_with("409"), "{err}");
        assert_eq!(posts.load(Ordering::SeqCst), 2);
        // Without a leader for longer than the wait, the 503 is the answer.
        let (url, _) = api(usize::MAX, StatusCode::OK).await;
        let err = post_change(&http, &url, &"x", Duration::from_millis(600))
            .await
            .unwrap_err();
        assert!(err.starts_with("503"), "{err}");
    }
}
