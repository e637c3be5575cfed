//! Joining a management group (`strata server --join URL`) and keeping this server's record
//! current.
//!
//! A new server serves its API (with the Raft endpoints) first, then asks the server at URL to
//! admit it: `POST /v1/servers/join` with its id, name, addresses and Raft node id. Whichever
//! server answers forwards the request to the leader, which registers the server and adds it to
//! the Raft group as a learner; the joiner then waits until the leader's log — its own
//! registration included — has reached it. Once joined, a server is initialized and later
//! starts need no `--join`.
//!
//! On every start of an initialized server, [`keep_record_current`] compares the addresses the
//! group has for it with the ones it now serves on, and sends the same join request (through
//! its own API) to update them. The Raft address of a server is fixed when it joins.

use anyhow::{anyhow, bail, Result};
use std::time::{Duration, Instant};
use strata_api_types::{ErrorBody, JoinRequest};
use strata_meta::Meta;
use tokio_util::sync::CancellationToken;

/// How long joining may take: reaching the group, being admitted and receiving its log.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts while the group has no leader or cannot be reached.
const RETRY: Duration = Duration::from_millis(500);

/// The join request endpoint of the server at `base` (`http://host:port`, or `host:port`).
fn join_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.contains("://") {
        format!("{base}/v1/servers/join")
    } else {
        format!("http://{base}/v1/servers/join")
    }
}

/// Sends `me` to the server at `base` until it is accepted, a refusal comes back, or `deadline`.
async fn send(
    http: &reqwest::Client,
    base: &str,
    me: &JoinRequest,
    deadline: Instant,
) -> Result<()> {
    let url = join_url(base);
    loop {
        let why = match http.post(&url).json(me).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let msg = serde_json::from_str::<ErrorBody>(&text).map_or(text, |b| b.error);
                if status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    bail!("the group at {base} refused to admit this server: {msg}");
                }
                msg
            }
            Err(e) => format!("cannot reach {base}: {e}"),
        };
        if Instant::now() + RETRY > deadline {
            bail!(
                "could not join the group at {base} within {JOIN_TIMEOUT:?}: {why}; check --join"
            );
        }
        tracing::info!(reason = %why, "join not accepted yet; retrying");
        tokio::time::sleep(RETRY).await;
    }
}

/// Joins the group of the server at `base` and waits until this node has the group's state
/// with its own registration in it.
pub async fn join(meta: &Meta, http: &reqwest::Client, base: &str, me: &JoinRequest) -> Result<()> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    tracing::info!(group = %base, server = %me.name, "asking to join a management group");
    send(http, base, me, deadline).await?;
    let mut applied = meta.subscribe();
    let arrived = async {
        while !meta.local_state().servers.contains_key(&me.id) {
            if applied.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), arrived)
        .await
        .map_err(|_| {
            anyhow!(
                "admitted by the group at {base}, but its log did not reach this server within \
                 {JOIN_TIMEOUT:?}; check that the group's servers can reach {}",
                me.api_addr
            )
        })?;
    tracing::info!(group = %base, "joined the management group");
    Ok(())
}

/// Once this server's record has arrived, updates its addresses in the group if they changed
/// since the last start. Retries through this server's own API (`own_api`) until the update
/// is accepted or `shutdown` fires.
pub async fn keep_record_current(
    meta: Meta,
    http: reqwest::Client,
    own_api: String,
    me: JoinRequest,
    shutdown: CancellationToken,
) {
    let mut applied = meta.subscribe();
    loop {
        let current = meta.local_state().servers.get(&me.id).map(|r| {
            r.api_addr == me.api_addr && r.nbd_addr == me.nbd_addr && r.peer_addr == me.peer_addr
        });
        match current {
            Some(true) => return,
            Some(false) => break,
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
            },
        }
    }
    tracing::info!(api = %me.api_addr, nbd = %me.nbd_addr, "this server's addresses changed; updating them");
    loop {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = send(&http, &own_api, &me, deadline) => match sent {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "cannot update this server's addresses; retrying"),
            },
        }
    }
}
