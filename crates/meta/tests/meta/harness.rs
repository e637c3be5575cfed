//! An in-process harness: management nodes with their Raft RPCs served by axum on 127.0.0.1:0.

use std::path::Path;
use std::time::Duration;
use strata_meta::{raft_router, Command, Meta, ServerRecord, StateView};
use strata_types::{LayerId, Name, ServerId, VolumeId};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any wait in these tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running node: its `Meta` and the HTTP server answering its Raft RPCs.
pub struct Node {
    pub meta: Meta,
    pub addr: String,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl Node {
    /// Opens the node in `dir` and serves its Raft RPCs on a fresh loopback port.
    pub async fn start(dir: &Path, id: u64) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("local addr"));
        let meta = Meta::open(dir, id, addr.clone()).await.expect("open meta");
        let app = raft_router(meta.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Node {
            meta,
            addr,
            stop,
            server,
        }
    }

    /// Stops the HTTP server and the Raft node, as if the server had gone away.
    pub async fn kill(self) {
        let _ = self.stop.send(());
        let abort = self.server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.server)
            .await
            .is_err()
        {
            abort.abort();
        }
        self.meta.shutdown().await;
    }

    /// The server record this node registers as.
    pub fn record(&self, name: &str) -> ServerRecord {
        record(name, self.meta.node_id(), &self.addr)
    }
}

/// A server record for `name` with Raft id `raft` and API address `addr`.
pub fn record(name: &str, raft: u64, addr: &str) -> ServerRecord {
    ServerRecord {
        id: ServerId::new_random(),
        name: n(name),
        api_addr: addr.to_string(),
        nbd_addr: format!("127.0.0.1:{}", 10800 + raft),
        peer_addr: format!("127.0.0.1:{}", 7800 + raft),
        raft_node_id: raft,
    }
}

/// A valid name, or the test fails.
pub fn n(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

/// A `CreateVolume` of `name` on cluster `default`.
pub fn create_volume(name: &str, size: u64) -> Command {
    Command::CreateVolume {
        id: VolumeId::new_random(),
        name: n(name),
        cluster: n("default"),
        size,
        replicas: 1,
        head: LayerId::new_random(),
        now_ms: 1,
    }
}

/// Waits until `meta` has applied at least log index `index`, then returns its local state.
pub async fn converged(meta: &Meta, index: u64) -> StateView {
    let mut rx = meta.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|applied| *applied >= index))
        .await
        .expect("node did not catch up in time")
        .expect("applied watch closed");
    meta.local_state()
}

/// The last log index `meta` has applied. (The applied watch is updated before a write returns;
/// the Raft metrics may lag a little, so they are not used here.)
pub fn applied(meta: &Meta) -> u64 {
    *meta.subscribe().borrow()
}
