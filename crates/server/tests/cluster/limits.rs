//! The NBD limits of a server's configuration reach its NBD server: a server started from a
//! TOML file with `nbd_max_connections = 2` and `nbd_idle_timeout = "2s"` closes a third
//! connection at once, closes connections that stay idle, and keeps serving busy ones.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use strata_server::config::ServerConfigFile;
use tokio_util::sync::CancellationToken;

use crate::harness::{blocking, connect, WAIT};
use crate::nbd_client::NbdClient;

const IDLE: Duration = Duration::from_secs(2);

/// Whether the server greets a new connection, rather than closing it at once.
fn greeted(addr: &str) -> bool {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_nbd_limits_refuse_extra_connections_and_close_idle_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("strata.toml");
    let toml = format!(
        "data_dir = {:?}\napi = \"127.0.0.1:0\"\nnbd = \"127.0.0.1:0\"\nbootstrap = true\n\
         nbd_max_connections = 2\nnbd_idle_timeout = \"{}s\"\n",
        tmp.path().join("data"),
        IDLE.as_secs()
    );
    std::fs::write(&file, toml).unwrap();
    let config = ServerConfigFile::load(&file).unwrap().validate().unwrap();
    let server = strata_server::start(config, CancellationToken::new())
        .await
        .unwrap();
    let created = reqwest::Client::new()
        .post(format!("{}/v1/volumes", server.api_url()))
        .json(&serde_json::json!({"name": "v", "size": 64u64 << 20, "replicas": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201, "create the volume");
    let nbd = server.nbd_addr.to_string();

    blocking(move || {
        let mut a = connect(&nbd, "v");
        let mut b = connect(&nbd, "v");
        assert_eq!(a.read(0, 4096).unwrap().unwrap().len(), 4096);
        let a_last = Instant::now();
        assert_eq!(b.read(0, 4096).unwrap().unwrap().len(), 4096);
        assert!(!greeted(&nbd), "a third connection is closed at once");

        // Both stay silent: each is closed once it has been idle for the timeout.
        assert!(
            a.closed_within(WAIT).unwrap(),
            "an idle connection is closed"
        );
        let idle_for = a_last.elapsed();
        assert!(
            idle_for >= IDLE - Duration::from_millis(200),
            "closed after {idle_for:?}, before the idle timeout"
        );
        assert!(b.closed_within(WAIT).unwrap());

        // Their slots are free again once the server has seen them end. A connection that
        // sends a request more often than the timeout then stays open past it.
        let deadline = Instant::now() + WAIT;
        let mut busy = loop {
            match NbdClient::connect(&nbd, "v") {
                Ok(c) => break c,
                Err(e) => assert!(Instant::now() < deadline, "not served again: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let started = Instant::now();
        while started.elapsed() < 2 * IDLE {
            assert_eq!(busy.read(0, 4096).unwrap().unwrap().len(), 4096);
            std::thread::sleep(IDLE / 4);
        }
        assert!(
            !busy.closed_within(IDLE / 4).unwrap(),
            "a busy connection stays open"
        );
        busy.disconnect();
    })
    .await;
    server.stop().await;
}
