//! [`ServerControl`]: how the volume engine reaches the management group from this server.
//! Changes go through this server's own API, whose forwarding sends them to the leader; a
//! minority side therefore gets the same "no quorum" refusal as any client would.

use async_trait::async_trait;
use std::time::Duration;
use strata_api_types::{MarkReplica, MigrationStep, MissedSummary};
use strata_meta::{Meta, StateView};
use strata_types::{ServerId, VolumeId};

/// How long a change may take to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
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

    async fn post(&self, path: String, body: &impl serde::Serialize) -> Result<(), String> {
        let url = format!("{}{path}", self.own_api);
        let resp = self
            .http
            .post(&url)
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
        Err(format!("{status}: {message}"))
    }
}

#[async_trait]
impl strata_volume::Control for ServerControl {
    async fn mark_stale(&self, volume: VolumeId, server: ServerId) -> Result<(), String> {
        let body = MarkReplica {
            server,
            reporter: Some(self.me),
        };
        self.post(format!("/v1/internal/volumes/{volume}/stale"), &body)
            .await
    }

    async fn mark_in_sync(&self, volume: VolumeId, server: ServerId) -> Result<(), String> {
        let body = MarkReplica {
            server,
            reporter: None,
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

/// The missed marks server `at` holds for `volume`, counted by the server that missed them.
pub async fn missed_at(
    http: &reqwest::Client,
    state: &StateView,
    at: ServerId,
    volume: VolumeId,
) -> Result<Vec<MissedSummary>, String> {
    let api = state
        .servers
        .get(&at)
        .map(|s| s.api_addr.clone())
        .ok_or_else(|| format!("server {at} is unknown"))?;
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
