//! An in-process group of `strata server`s on 127.0.0.1 with temporary data directories. A
//! server can be killed (its Raft node stops, then its tasks) and restarted from its directory
//! on the same ports. Waits poll the servers' state through the API; nothing sleeps for a guess.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strata_server::config::ServerConfig;
use strata_server::RunningServer;
use tokio_util::sync::CancellationToken;

/// How long any wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// One server of the group: running or killed.
pub struct Node {
    pub name: String,
    dir: PathBuf,
    api: SocketAddr,
    pub nbd: SocketAddr,
    peer: SocketAddr,
    running: Option<RunningServer>,
}

/// The servers of one management group.
pub struct Group {
    pub nodes: Vec<Node>,
    http: reqwest::Client,
    _tmp: tempfile::TempDir,
}

async fn start(
    dir: &std::path::Path,
    name: &str,
    api: SocketAddr,
    nbd: SocketAddr,
    peer: SocketAddr,
    join: Option<String>,
) -> RunningServer {
    let mut config = ServerConfig::local(dir);
    config.name = Some(strata_types::Name::new(name).expect("name"));
    config.api = api;
    config.nbd = nbd;
    config.peer = peer;
    config.bootstrap = join.is_none() && !dir.join("meta").exists();
    config.join = join;
    // A restart may find its old port still held for a moment.
    let deadline = Instant::now() + WAIT;
    loop {
        match strata_server::start(config.clone(), CancellationToken::new()).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline && format!("{e:#}").contains("cannot listen") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("server {name} did not start: {e:#}"),
        }
    }
}

impl Group {
    /// Starts `n` servers `s1..sn`: `s1` bootstraps, each later one joins through the one before
    /// it (so joins are forwarded to the leader).
    pub async fn start(n: usize) -> Group {
        let tmp = tempfile::tempdir().expect("temp dir");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..n {
            let name = format!("s{}", i + 1);
            let dir = tmp.path().join(&name);
            let join = nodes.last().map(|p: &Node| format!("http://{}", p.api));
            let running = start(&dir, &name, any, any, any, join).await;
            nodes.push(Node {
                name,
                dir,
                api: running.api_addr,
                nbd: running.nbd_addr,
                peer: running.peer_addr,
                running: Some(running),
            });
        }
        Group {
            nodes,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            _tmp: tmp,
        }
    }

    /// The API base URL of server `i`.
    pub fn api(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].api)
    }

    /// Kills server `i`.
    pub async fn kill(&mut self, i: usize) {
        let running = self.nodes[i].running.take().expect("server is running");
        running.kill().await;
    }

    /// Starts server `i` again from its directory on its old ports.
    pub async fn restart(&mut self, i: usize) {
        let node = &self.nodes[i];
        let running = start(&node.dir, &node.name, node.api, node.nbd, node.peer, None).await;
        self.nodes[i].running = Some(running);
    }

    /// Sends a request to server `i`; returns the status and the JSON body (`null` if none).
    pub async fn call(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.api(i)));
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// `GET path` on server `i`, which must succeed.
    pub async fn get(&self, i: usize, path: &str) -> Value {
        let (status, body) = self.call(i, reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path} on server {i}: {body}");
        body
    }

    /// `POST path` on server `i`: the status and body.
    pub async fn post(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        self.call(i, reqwest::Method::POST, path, Some(body)).await
    }

    /// Polls `GET path` on server `i` until `ok` holds for the answer, or fails after [`WAIT`].
    pub async fn wait_for(
        &self,
        i: usize,
        path: &str,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.call(i, reqwest::Method::GET, path, None).await;
            if status == 200 && ok(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{what}: still {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes all servers managers and waits until server `i` sees them all up.
    pub async fn three_managers(&self) {
        let (status, body) = self
            .post(0, "/v1/managers", serde_json::json!({"add": ["s2", "s3"]}))
            .await;
        assert_eq!(status, 200, "manager add: {body}");
        self.wait_for(0, "/v1/managers", "three managers up", |m| {
            m.as_array()
                .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["state"] == "up"))
        })
        .await;
    }

    /// The NBD address of server `i`.
    pub fn nbd(&self, i: usize) -> String {
        self.nodes[i].nbd.to_string()
    }

    /// Puts every server into the `default` cluster.
    pub async fn one_cluster(&self) {
        for node in &self.nodes[1..] {
            let (status, body) = self
                .post(
                    0,
                    "/v1/clusters/default/servers",
                    serde_json::json!({"server": node.name}),
                )
                .await;
            assert_eq!(status, 200, "add {} to default: {body}", node.name);
        }
    }

    /// Creates volume `name` of `size` bytes with `replicas` on `default`; returns its record.
    pub async fn create_volume(&self, name: &str, size: u64, replicas: u8) -> Value {
        let (status, body) = self
            .post(
                0,
                "/v1/volumes",
                serde_json::json!({"name": name, "size": size, "replicas": replicas}),
            )
            .await;
        assert_eq!(status, 201, "create volume {name}: {body}");
        body
    }

    /// Waits until volume `name` shows `status` (by prefix) through server `i`.
    pub async fn wait_status(&self, i: usize, name: &str, status: &str) -> Value {
        self.wait_for(i, &format!("/v1/volumes/{name}"), status, |v| {
            v["status"].as_str().is_some_and(|s| s.starts_with(status))
        })
        .await
    }

    /// Runs `strata volume verify` through server `i`: the report.
    pub async fn verify(&self, i: usize, target: &str, repair: bool) -> Value {
        let (volume, snapshot) = match target.split_once('@') {
            Some((v, s)) => (v, Some(s)),
            None => (target, None),
        };
        let (status, body) = self
            .post(
                i,
                &format!("/v1/volumes/{volume}/verify"),
                serde_json::json!({"snapshot": snapshot, "repair": repair}),
            )
            .await;
        assert_eq!(status, 200, "verify {target}: {body}");
        body
    }

    /// Stops every running server.
    pub async fn stop(mut self) {
        for node in &mut self.nodes {
            if let Some(r) = node.running.take() {
                r.stop().await;
            }
        }
    }
}

/// The name of the leader in a `/v1/managers` answer.
pub fn leader(managers: &Value) -> Option<String> {
    managers
        .as_array()?
        .iter()
        .find(|m| m["leader"] == true)
        .and_then(|m| m["name"].as_str())
        .map(String::from)
}
