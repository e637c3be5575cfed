//! Any server's API serves any request: a middleware in front of `/v1` sends every request that
//! needs the management leader — all of them except this server's own status and the OpenAPI
//! document — to the leader's API, and hands back its status and body unchanged.
//!
//! - This server is the leader: it first checks that a quorum of managers acknowledged it
//!   recently (openraft's `millis_since_quorum_ack`), and answers 503 as soon as that stops
//!   being true while the request runs, so a leader cut off from its managers refuses within
//!   about a second instead of letting a write wait for a quorum that is not there.
//! - Another server is the leader: the request is forwarded to the API address of the leader's
//!   server record. If the leader cannot be reached at all (the request was not sent), the
//!   middleware waits for a new leader and tries it; if the leader went away after the request
//!   was sent, the answer is a 503 saying the change may or may not have been applied.
//! - No leader within [`LEADER_WAIT`]: 503 "no quorum of managers: N of M reachable; ..." if
//!   only a minority of managers answers; while a majority does, an election is under way and
//!   the request waits again, up to [`ELECTION_WAIT`] in all.
//!
//! Every wait is bounded, so a minority answers within a few seconds and never hangs.
//! A forwarded request carries a hop count, so leadership moving mid-request cannot loop it.

use crate::api::{ApiError, AppState};
use crate::peers;
use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::{Duration, Instant};

/// How long to wait for a leader to be known before answering that there is no quorum.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long a request waits for a leader with a quorum while a majority of managers answers
/// (several election timeouts, and more on a loaded machine), before it is refused.
const ELECTION_WAIT: Duration = Duration::from_secs(15);
/// How many leaders a request is forwarded to before it is refused.
const MAX_FORWARDS: usize = 3;
/// How long a forwarded request may take (longer than a write's own quorum timeout).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// A leader whose last quorum acknowledgement is older than this has lost its managers.
const QUORUM_ACK_MAX_MS: u64 = 1000;
/// How long a new leader may take to hear from a quorum.
const QUORUM_WAIT: Duration = Duration::from_millis(1500);
/// Header counting how often a request was forwarded.
const HOPS_HEADER: &str = "x-strata-hops";
const MAX_HOPS: u8 = 2;
/// Largest request body forwarded.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Whether a request to `path` must be served by the management leader.
fn needs_leader(path: &str) -> bool {
    path.starts_with("/v1/") && !matches!(path, "/v1/openapi.json" | "/v1/servers/self")
}

/// The axum middleware: serve here if this server leads with a quorum, else forward.
pub async fn forward_to_leader(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if !needs_leader(req.uri().path()) {
        return next.run(req).await;
    }
    let hops: u8 = req
        .headers()
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (parts, body) = req.into_parts();
    let body = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_request(format!("cannot read the request body: {e}"))
                .into_response()
        }
    };
    let (method, uri, headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    let deadline = Instant::now() + ELECTION_WAIT;
    let mut unreachable = None;
    let mut forwards = 0;
    while forwards < MAX_FORWARDS {
        match leader(&app, unreachable).await {
            None => {
                if !worth_waiting(&app, deadline).await {
                    break;
                }
            }
            Some(id) if id == app.meta.node_id() => {
                if !has_quorum(&app).await {
                    if worth_waiting(&app, deadline).await {
                        continue;
                    }
                    break;
                }
                let run = next.run(Request::from_parts(parts, Body::from(body)));
                return tokio::select! {
                    resp = run => resp,
                    () = quorum_lost(&app) => {
                        let mut e = no_quorum(&app).await;
                        e.message.push_str(
                            "; the request was already proposed and may still apply when they return",
                        );
                        e.into_response()
                    }
                };
            }
            Some(id) => {
                if hops >= MAX_HOPS {
                    return unavailable(
                        "the management leader changed while the request was forwarded; retry",
                    );
                }
                let url = peers::api_url_of(&app, id);
                let req = Forwarded {
                    method: &method,
                    uri: &uri,
                    headers: &headers,
                    body: body.clone(),
                    hops: hops + 1,
                };
                forwards += 1;
                match proxy(&app, &url, req).await {
                    Ok(resp) => return resp,
                    Err(ProxyError::NotSent(e)) => {
                        tracing::info!(leader = %url, error = %e, "leader unreachable; waiting for another");
                        unreachable = Some(id);
                    }
                    Err(ProxyError::Lost(e)) => {
                        return unavailable(&format!(
                        "the management leader at {url} stopped answering ({e}); the change may \
                             or may not have been applied — check, then retry"
                    ))
                    }
                }
            }
        }
    }
    no_quorum(&app).await.into_response()
}

/// After a wait for a leader or a quorum came to nothing: whether to wait again, because a
/// majority of managers answers (an election is under way, slow on a loaded machine) and
/// `deadline` has not passed. A minority is refused at once.
async fn worth_waiting(app: &AppState, deadline: Instant) -> bool {
    if Instant::now() >= deadline {
        return false;
    }
    let (reachable, total) = peers::reachable_managers(app).await;
    reachable > total / 2
}

/// Waits up to [`LEADER_WAIT`] for a known leader other than `not`.
async fn leader(app: &AppState, not: Option<u64>) -> Option<u64> {
    let mut rx = app.meta.watch_metrics();
    let wait = async {
        loop {
            let current = rx.borrow_and_update().current_leader;
            if let Some(id) = current.filter(|id| Some(*id) != not) {
                return Some(id);
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    };
    tokio::time::timeout(LEADER_WAIT, wait).await.ok().flatten()
}

/// On the leader: whether a quorum of managers acknowledged it within [`QUORUM_ACK_MAX_MS`],
/// waiting up to [`QUORUM_WAIT`] for a new leader's first acknowledgements.
async fn has_quorum(app: &AppState) -> bool {
    let mut rx = app.meta.watch_metrics();
    let wait = async {
        loop {
            let ok = {
                let m = rx.borrow_and_update();
                m.membership_config.voter_ids().count() <= 1
                    || m.millis_since_quorum_ack
                        .is_some_and(|ms| ms <= QUORUM_ACK_MAX_MS)
            };
            if ok {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    };
    tokio::time::timeout(QUORUM_WAIT, wait)
        .await
        .unwrap_or(false)
}

/// On the leader: returns once a quorum has not acknowledged it for [`QUORUM_ACK_MAX_MS`] (or
/// it is no longer the leader); never returns in a one-manager group.
async fn quorum_lost(app: &AppState) {
    let mut rx = app.meta.watch_metrics();
    loop {
        let lost = {
            let m = rx.borrow_and_update();
            m.membership_config.voter_ids().count() > 1
                && (m.current_leader != Some(m.id)
                    || m.millis_since_quorum_ack
                        .is_none_or(|ms| ms > QUORUM_ACK_MAX_MS))
        };
        if lost || rx.changed().await.is_err() {
            return;
        }
    }
}

/// The 503 for a group without a working quorum, counting the managers that answer.
pub async fn no_quorum(app: &AppState) -> ApiError {
    let (reachable, total) = peers::reachable_managers(app).await;
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!(
            "no quorum of managers: {reachable} of {total} reachable; changes are refused until a \
             majority ({}) of managers runs again — start the stopped managers",
            total / 2 + 1
        ),
    }
}

fn unavailable(message: &str) -> Response {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: message.to_string(),
    }
    .into_response()
}

/// One request to pass on.
struct Forwarded<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: Bytes,
    hops: u8,
}

enum ProxyError {
    /// The request never reached the leader: safe to send elsewhere.
    NotSent(reqwest::Error),
    /// The leader may have received it.
    Lost(reqwest::Error),
}

async fn proxy(app: &AppState, base: &str, req: Forwarded<'_>) -> Result<Response, ProxyError> {
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut builder = app
        .http
        .request(req.method.clone(), &url)
        .timeout(FORWARD_TIMEOUT)
        .header(HOPS_HEADER, req.hops.to_string())
        .body(req.body);
    if let Some(ct) = req.headers.get(header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    let resp = builder.send().await.map_err(|e| {
        if e.is_connect() {
            ProxyError::NotSent(e)
        } else {
            ProxyError::Lost(e)
        }
    })?;
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = resp.bytes().await.map_err(ProxyError::Lost)?;
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}
