//! Raft RPCs over HTTP/JSON.
//!
//! Client side: [`HttpNetworkFactory`] gives openraft one [`HttpNetwork`] per peer, which POSTs
//! the request as JSON to `{addr}/raft/append`, `/raft/vote` or `/raft/snapshot`, where `addr` is
//! the peer's API base URL from the Raft membership. The response body is the peer's
//! `Result<Response, RaftError>` as JSON, so a refusal on the peer comes back as
//! `RPCError::RemoteError` and openraft handles it like any other Raft answer.
//!
//! Server side: [`raft_router`] serves the three endpoints by handing each request to the local
//! Raft node. The server crate merges it into its API router.
//!
//! Error mapping: a connection failure is `Unreachable` (openraft backs off before retrying
//! that peer); a timeout, a non-200 status or an undecodable body is a `NetworkError` (retry).

use crate::meta::Meta;
use crate::TypeConfig;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Largest Raft request body accepted (snapshot chunks are 256 KiB before JSON encoding).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Makes HTTP clients for the Raft peers; all share one connection pool.
#[derive(Clone)]
pub struct HttpNetworkFactory {
    client: reqwest::Client,
}

impl HttpNetworkFactory {
    /// A factory with its own connection pool.
    pub fn new() -> Self {
        Self::from_ip(None)
    }

    /// A factory whose connections leave from `source_ip`, if given.
    pub fn from_ip(source_ip: Option<std::net::IpAddr>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .local_address(source_ip)
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "custom HTTP client failed; using defaults");
                reqwest::Client::new()
            });
        Self { client }
    }
}

impl Default for HttpNetworkFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = HttpNetwork;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> HttpNetwork {
        HttpNetwork {
            client: self.client.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// The HTTP connection to one Raft peer.
pub struct HttpNetwork {
    client: reqwest::Client,
    target: u64,
    node: BasicNode,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl HttpNetwork {
    /// POSTs `req` to `{addr}{path}` and decodes the peer's `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(&self, path: &str, req: &Req, ttl: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}{}", self.node.addr.trim_end_matches('/'), path);
        let resp = self
            .client
            .post(&url)
            .timeout(ttl)
            .json(req)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let msg = format!("POST {url} answered {status}: {body}");
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(msg),
            )));
        }
        let res: Result<Resp, RaftError<u64, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for HttpNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, Infallible> {
        self.call("/raft/append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call("/raft/snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, Infallible> {
        self.call("/raft/vote", &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        // Retry an unreachable peer every 200 ms: short enough to notice a restart quickly.
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// The axum router serving this node's Raft RPCs: `POST /raft/append`, `/raft/vote` and
/// `/raft/snapshot` with JSON bodies. Merge it into the server's API router.
pub fn raft_router(meta: Meta) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(meta)
}

async fn append(
    State(meta): State<Meta>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<u64>, RaftError<u64>>> {
    Json(meta.raft().append_entries(req).await)
}

async fn vote(
    State(meta): State<Meta>,
    Json(req): Json<VoteRequest<u64>>,
) -> Json<Result<VoteResponse<u64>, RaftError<u64>>> {
    Json(meta.raft().vote(req).await)
}

async fn snapshot(
    State(meta): State<Meta>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>> {
    Json(meta.raft().install_snapshot(req).await)
}
