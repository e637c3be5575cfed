//! An in-process group of `strata server`s on loopback with temporary data directories. Each
//! server runs on a tokio runtime of its own, so it can be killed as a process would be: its
//! runtime is shut down, every task of it stops at its next await point and every socket it
//! holds closes (see [`Group::kill`]). It can be restarted from its directory on the same ports, and the links between chosen servers can be cut and healed. Waits poll
//! the servers' state through the API; nothing sleeps for a guess.
//!
//! Links: server *i* of group *g* listens on its own loopback address 127.g.0.(10+i) and its
//! outgoing connections leave from it (`source_ip`). Other servers reach its API and peer ports only
//! through two proxies of the harness (its advertised addresses), which see from the source
//! address who is calling; a cut link refuses new connections and drops open ones, in both
//! directions. The test's own HTTP and NBD clients (from 127.0.0.1) are never cut.

use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_server::config::ServerConfig;
use strata_server::RunningServer;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long any wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Which links between servers are cut, and the proxied connections that are open.
#[derive(Default)]
pub struct Links {
    cut: Mutex<HashSet<(IpAddr, IpAddr)>>,
    open: Mutex<Vec<(IpAddr, IpAddr, CancellationToken)>>,
}

impl Links {
    fn is_cut(&self, from: IpAddr, to: IpAddr) -> bool {
        self.cut.lock().contains(&(from, to))
    }

    fn cut(&self, a: IpAddr, b: IpAddr) {
        self.cut_from(a, b);
        self.cut_from(b, a);
    }

    /// Cuts the connections `a` makes to `b`: those open now, and new ones.
    fn cut_from(&self, a: IpAddr, b: IpAddr) {
        self.cut.lock().insert((a, b));
        self.open.lock().retain(|(x, y, token)| {
            let hit = (*x, *y) == (a, b);
            if hit {
                token.cancel();
            }
            !hit && !token.is_cancelled()
        });
    }

    fn heal(&self) {
        self.cut.lock().clear();
    }
}

/// Forwards connections to `target`, the real listener of the server at `owner`, unless the
/// caller's link to it is cut. The connections' tasks belong to this task: stopping it (the
/// server is killed) closes them all at once, as the death of a server closes its sockets.
async fn proxy(listener: TcpListener, target: SocketAddr, owner: IpAddr, links: Arc<Links>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((mut inbound, from)) = listener.accept().await {
        while connections.try_join_next().is_some() {}
        if links.is_cut(from.ip(), owner) {
            continue; // dropped: the caller sees the connection closed
        }
        let token = CancellationToken::new();
        links.open.lock().push((from.ip(), owner, token.clone()));
        connections.spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = token.cancelled() => {}
            }
        });
    }
}

/// One server of the group: running or killed.
pub struct Node {
    pub name: String,
    dir: PathBuf,
    ip: IpAddr,
    api: SocketAddr,
    pub nbd: SocketAddr,
    peer: SocketAddr,
    /// The proxied addresses other servers use.
    public_api: SocketAddr,
    public_peer: SocketAddr,
    /// The proxies' tasks; stopped while the server is down, so callers see it refuse.
    proxies: Vec<tokio::task::JoinHandle<()>>,
    running: Option<Running>,
}

/// A started server and the runtime its tasks run on.
struct Running {
    server: Option<RunningServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Running {
    /// Ends the server as a process death would: its data as [`RunningServer::doom`] says,
    /// then its runtime, at once: every task is dropped where it waits, and this returns once
    /// the store calls already on the runtime's blocking pool are over (they finish as a dead
    /// process's writes to the page cache would) and the server's files are closed, as the
    /// kernel closes them when a process dies.
    async fn die(mut self, power_loss: bool) {
        if let Some(server) = &self.server {
            server.doom(power_loss);
        }
        let runtime = self.runtime.take();
        let server = self.server.take();
        tokio::task::spawn_blocking(move || {
            if let Some(runtime) = runtime {
                runtime.shutdown_timeout(Duration::from_secs(10));
            }
            drop(server);
        })
        .await
        .expect("the killed server's runtime ends");
    }

    /// Stops the server gracefully, on its own runtime.
    async fn stop(mut self) {
        if let (Some(server), Some(runtime)) = (self.server.take(), &self.runtime) {
            let _ = runtime.spawn(server.stop()).await;
        }
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("a running server")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping a runtime may block, which an async test's thread must not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Node {
    /// Serves the proxies in front of this server's API and peer ports.
    async fn open_proxies(&mut self, links: &Arc<Links>) {
        for (public, target) in [(self.public_api, self.api), (self.public_peer, self.peer)] {
            let deadline = Instant::now() + WAIT;
            let listener = loop {
                match TcpListener::bind(public).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("proxy port {public}: {e}"),
                }
            };
            self.proxies.push(tokio::spawn(proxy(
                listener,
                target,
                self.ip,
                links.clone(),
            )));
        }
    }

    fn addrs(&self) -> Addrs {
        Addrs {
            api: self.api,
            nbd: self.nbd,
            peer: self.peer,
            public_api: self.public_api,
            public_peer: self.public_peer,
        }
    }

    fn close_proxies(&mut self) {
        for p in self.proxies.drain(..) {
            p.abort();
        }
    }
}

/// The servers of one management group.
pub struct Group {
    pub nodes: Vec<Node>,
    http: reqwest::Client,
    links: Arc<Links>,
    _tmp: tempfile::TempDir,
}

impl Drop for Group {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.close_proxies();
        }
    }
}

/// The addresses a server listens on and advertises.
#[derive(Clone, Copy)]
struct Addrs {
    api: SocketAddr,
    nbd: SocketAddr,
    peer: SocketAddr,
    public_api: SocketAddr,
    public_peer: SocketAddr,
}

/// The configuration of server `name` in `dir` on `addrs`.
fn config(dir: &std::path::Path, name: &str, addrs: Addrs, join: Option<String>) -> ServerConfig {
    let mut config = ServerConfig::local(dir);
    config.name = Some(strata_types::Name::new(name).expect("name"));
    config.api = addrs.api;
    config.nbd = addrs.nbd;
    config.peer = addrs.peer;
    config.advertise_api = Some(format!("http://{}", addrs.public_api));
    config.advertise_peer = Some(addrs.public_peer);
    config.source_ip = Some(addrs.api.ip());
    config.bootstrap = join.is_none() && !dir.join("meta").exists();
    config.join = join;
    config
}

async fn start(dir: &std::path::Path, name: &str, addrs: Addrs, join: Option<String>) -> Running {
    let config = config(dir, name, addrs, join);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("{name}-rt"))
        .enable_all()
        .build()
        .expect("a runtime for the server");
    // A restart may find its old ports, or its databases, still held for a moment by the tasks
    // of the killed server that are finishing.
    let deadline = Instant::now() + WAIT;
    loop {
        // Every task of the server logs in a span naming it: one log, three servers.
        let span = tracing::info_span!(target: "strata_server", "server", name);
        let started = runtime
            .spawn(strata_server::start(config.clone(), CancellationToken::new()).instrument(span))
            .await
            .expect("the server's start task");
        match started {
            Ok(s) => {
                return Running {
                    server: Some(s),
                    runtime: Some(runtime),
                }
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("server {name} did not start yet ({e:#}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("server {name} did not start: {e:#}"),
        }
    }
}

/// Connects an NBD client to `export` on `addr`, retrying while a just-changed export becomes
/// ready.
pub fn connect(addr: &str, export: &str) -> crate::nbd_client::NbdClient {
    for _ in 0..100 {
        if let Ok(c) = crate::nbd_client::NbdClient::connect(addr, export) {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::nbd_client::NbdClient::connect(addr, export).expect("connect to export")
}

/// Runs blocking client code (the NBD client) off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

impl Group {
    /// Starts `n` servers `s1..sn`: `s1` bootstraps, each later one joins through the one before
    /// it (so joins are forwarded to the leader).
    pub async fn start(n: usize) -> Group {
        Group::start_with(n, |_, _| {}).await
    }

    /// Like [`Group::start`], calling `prepare(i, dir)` before server `i` first starts in
    /// `dir` (e.g. to mount a filesystem there).
    pub async fn start_with(n: usize, mut prepare: impl FnMut(usize, &std::path::Path)) -> Group {
        // Server logs, shown for a failed test; `RUST_LOG` picks the level (default: warnings).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let tmp = tempfile::tempdir().expect("temp dir");
        let links = Arc::new(Links::default());
        // Each group of the test process gets its own loopback addresses: servers of other
        // groups, running at the same time, then cannot take a port (for an outgoing
        // connection) that this group picked but has not bound yet.
        static GROUPS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let group = 1 + GROUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250;
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..n {
            let name = format!("s{}", i + 1);
            let dir = tmp.path().join(&name);
            let ip = IpAddr::V4(Ipv4Addr::new(127, group, 0, 10 + i as u8));
            // Listeners on fixed ports: the proxies must know where to forward before the
            // server starts, and a restart uses the same ports.
            // Five distinct ports: the probe listeners stay open until all are picked, so the
            // kernel cannot hand out the same port twice.
            let probes: Vec<std::net::TcpListener> = (0..5)
                .map(|_| std::net::TcpListener::bind((ip, 0)).expect("free port"))
                .collect();
            let ports: Vec<SocketAddr> = probes
                .iter()
                .map(|l| l.local_addr().expect("port"))
                .collect();
            drop(probes);
            let mut node = Node {
                name,
                dir,
                ip,
                api: ports[0],
                nbd: ports[1],
                peer: ports[2],
                public_api: ports[3],
                public_peer: ports[4],
                proxies: Vec::new(),
                running: None,
            };
            std::fs::create_dir_all(&node.dir).expect("server dir");
            prepare(i, &node.dir);
            node.open_proxies(&links).await;
            let join = nodes.last().map(|p: &Node| format!("http://{}", p.api));
            node.running = Some(start(&node.dir, &node.name, node.addrs(), join).await);
            nodes.push(node);
        }
        Group {
            nodes,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            links,
            _tmp: tmp,
        }
    }

    /// Cuts the links between server `a` and each of `others`, both ways.
    pub fn cut(&self, a: usize, others: &[usize]) {
        for b in others {
            self.links.cut(self.nodes[a].ip, self.nodes[*b].ip);
        }
    }

    /// Cuts the connections server `a` makes to each of `others`, open and new; theirs to `a`
    /// still work, so `a` answers them while it cannot reach them.
    pub fn cut_from(&self, a: usize, others: &[usize]) {
        for b in others {
            self.links.cut_from(self.nodes[a].ip, self.nodes[*b].ip);
        }
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.links.heal();
    }

    /// The API base URL of server `i`.
    pub fn api(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].api)
    }

    /// Kills server `i` as SIGKILL would: its runtime ends at once, and so every task and
    /// connection of it (its peers see their connections to it close, as after a process
    /// death); the next start is unclean.
    pub async fn kill(&mut self, i: usize) {
        let running = self.nodes[i].running.take().expect("server is running");
        self.nodes[i].close_proxies();
        let started = Instant::now();
        running.die(false).await;
        eprintln!(
            "server {} killed in {:?}",
            self.nodes[i].name,
            started.elapsed()
        );
    }

    /// Kills server `i` as a power loss would: what its store had not flushed is lost.
    pub async fn crash(&mut self, i: usize) {
        let running = self.nodes[i].running.take().expect("server is running");
        self.nodes[i].close_proxies();
        let started = Instant::now();
        running.die(true).await;
        eprintln!(
            "server {} power-failed in {:?}",
            self.nodes[i].name,
            started.elapsed()
        );
    }

    /// Starts server `i` again from its directory on its old ports.
    pub async fn restart(&mut self, i: usize) {
        let links = self.links.clone();
        let node = &mut self.nodes[i];
        node.open_proxies(&links).await;
        let running = start(&node.dir, &node.name, node.addrs(), None).await;
        self.nodes[i].running = Some(running);
    }

    /// Starts server `i` again, which must refuse to start: returns its error once it contains
    /// `expect` (other errors, such as ports still held by the killed server, are retried).
    pub async fn restart_refused(&mut self, i: usize, expect: &str) -> String {
        let node = &self.nodes[i];
        let config = config(&node.dir, &node.name, node.addrs(), None);
        let deadline = Instant::now() + WAIT;
        loop {
            match strata_server::start(config.clone(), CancellationToken::new()).await {
                Ok(_) => panic!("server {} started; it should have refused", node.name),
                Err(e) if format!("{e:#}").contains(expect) => return format!("{e:#}"),
                Err(e) => {
                    assert!(Instant::now() < deadline, "server {}: {e:#}", node.name);
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            }
        }
    }

    /// The data directory of server `i`.
    pub fn dir(&self, i: usize) -> &std::path::Path {
        &self.nodes[i].dir
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

    /// `n` servers, three of them managers, all in the `default` cluster.
    pub async fn cluster(n: usize) -> Group {
        Group::cluster_with(n, |_, _| {}).await
    }

    /// Like [`Group::cluster`], calling `prepare` as [`Group::start_with`] does.
    pub async fn cluster_with(n: usize, prepare: impl FnMut(usize, &std::path::Path)) -> Group {
        let g = Group::start_with(n, prepare).await;
        g.three_managers().await;
        g.one_cluster().await;
        g
    }

    /// The id of server `i` (named `s{i+1}`), from the server list.
    pub async fn server_id(&self, i: usize) -> strata_types::ServerId {
        let servers = self.get(0, "/v1/servers").await;
        let name = format!("s{}", i + 1);
        let s = servers
            .as_array()
            .expect("a list of servers")
            .iter()
            .find(|s| s["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no server {name} in {servers}"));
        serde_json::from_value(s["id"].clone()).unwrap()
    }

    /// The layer stack of volume `id` (bottom to top) in the management state of the first
    /// running server.
    pub fn layers(&self, id: strata_types::VolumeId) -> Vec<strata_types::LayerId> {
        self.nodes
            .iter()
            .find_map(|n| n.running.as_ref())
            .and_then(|r| {
                let state = r.server().meta.local_state();
                let layers = state.volumes.values().find(|v| v.id == id)?.layers.clone();
                Some(layers)
            })
            .unwrap_or_default()
    }

    /// The servers (by index) that hold `chunk` of volume `id` with `replicas` copies, best
    /// first, by the placement every server computes.
    pub async fn holders(
        &self,
        id: strata_types::VolumeId,
        chunk: u64,
        replicas: u8,
    ) -> Vec<usize> {
        let servers = self.get(0, "/v1/servers").await;
        let ids: Vec<(usize, strata_types::ServerId)> = servers
            .as_array()
            .expect("a list of servers")
            .iter()
            .map(|s| {
                let i = s["name"].as_str().unwrap()[1..].parse::<usize>().unwrap() - 1;
                (i, serde_json::from_value(s["id"].clone()).unwrap())
            })
            .collect();
        let layout: Vec<strata_types::ServerId> = ids.iter().map(|(_, s)| *s).collect();
        strata_volume::placement::replicas_of(id, chunk, &layout, usize::from(replicas))
            .into_iter()
            .map(|r| ids.iter().find(|(_, s)| *s == r).unwrap().0)
            .collect()
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

    /// Starts a verify job of `target` (`VOL` or `VOL@SNAP`) through server `i`, at most
    /// `max_rate` bytes per second: the job as the API answered (202).
    pub async fn start_verify(
        &self,
        i: usize,
        target: &str,
        repair: bool,
        max_rate: Option<u64>,
    ) -> Value {
        let (volume, snapshot) = match target.split_once('@') {
            Some((v, s)) => (v, Some(s)),
            None => (target, None),
        };
        let (status, body) = self
            .post(
                i,
                &format!("/v1/volumes/{volume}/verify"),
                serde_json::json!({"snapshot": snapshot, "repair": repair, "max_rate": max_rate}),
            )
            .await;
        assert_eq!(status, 202, "verify {target}: {body}");
        assert_eq!(body["state"], "running", "{body}");
        body
    }

    /// Waits until job `id` has ended, asking server `i`: the job.
    pub async fn wait_job(&self, i: usize, id: &str) -> Value {
        self.wait_for(i, &format!("/v1/jobs/{id}"), "the job ends", |j| {
            j["state"] != "running"
        })
        .await
    }

    /// Runs `strata volume verify` through server `i` (a job, waited for): the report.
    pub async fn verify(&self, i: usize, target: &str, repair: bool) -> Value {
        let job = self.start_verify(i, target, repair, None).await;
        let done = self.wait_job(i, job["id"].as_str().unwrap()).await;
        assert_eq!(done["state"], "succeeded", "verify {target}: {done}");
        done["report"].clone()
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

/// A small ext4 mounted at a given directory; lazily unmounted on drop.
pub struct SmallFs {
    mnt: PathBuf,
    _image: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a fresh ext4 of `mib` MiB at `mnt`, or says why it cannot.
    pub fn mount(mnt: &Path, mib: u64) -> Result<SmallFs, String> {
        let image_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| match cmd.output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        };
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-b", "4096"])
            .arg(&image))
        .map_err(|e| format!("mkfs.ext4 failed: {e}"))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(mnt))
        .map_err(|e| format!("mount -o loop failed (root and loop devices needed): {e}"))?;
        Ok(SmallFs {
            mnt: mnt.to_path_buf(),
            _image: image_dir,
        })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}
