//! The server's bounds: bytes in flight per connection and per server (counted until replies are
//! written), the number of connections, and idle connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_nbd::{
    consts, BlockDevice, ExportInfo, ExportProvider, Extent, IoError, OpenError, ServerConfig,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::client::{start_with, Client, Server};

const MIB: u32 = 1024 * 1024;
const BIG: u32 = 32 * MIB;

/// A device that counts the reads it was asked for and answers each with slices of one buffer
/// of zeroes, so that the test itself holds no memory per read.
struct Counting {
    zeroes: Bytes,
    reads: AtomicU64,
}

#[async_trait]
impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        1 << 30
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, _offset: u64, len: u32) -> Result<Bytes, IoError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.zeroes.slice(..len as usize))
    }
    async fn write(&self, _offset: u64, _data: Bytes, _fua: bool) -> Result<(), IoError> {
        Ok(())
    }
    async fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }
    async fn trim(&self, _offset: u64, _len: u32) -> Result<(), IoError> {
        Ok(())
    }
    async fn write_zeroes(&self, _: u64, _: u32, _: bool, _: bool) -> Result<(), IoError> {
        Ok(())
    }
    async fn block_status(&self, _offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        Ok(vec![Extent {
            len,
            hole: false,
            zero: false,
        }])
    }
}

struct One(Arc<Counting>);

#[async_trait]
impl ExportProvider for One {
    async fn list(&self) -> Vec<ExportInfo> {
        Vec::new()
    }
    async fn open(
        &self,
        _name: &str,
        _client: strata_nbd::Client,
    ) -> Result<Arc<dyn BlockDevice>, OpenError> {
        Ok(self.0.clone())
    }
}

async fn serve(config: ServerConfig) -> (Server, Arc<Counting>) {
    let dev = Arc::new(Counting {
        zeroes: Bytes::from(vec![0u8; BIG as usize]),
        reads: AtomicU64::new(0),
    });
    (start_with(Arc::new(One(dev.clone())), config).await, dev)
}

/// Sends `n` reads of [`BIG`] bytes (simple replies: the data travels in full).
async fn send_big_reads(c: &mut Client, n: u64) {
    for cookie in 0..n {
        c.request(0, consts::CMD_READ, cookie, 0, BIG, &[]).await;
    }
}

/// Waits until the device has seen `n` reads.
async fn reads_reach(dev: &Counting, n: u64) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while dev.reads.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the reads started");
}

/// Reads the replies of `n` big reads.
async fn drain(mut c: Client, n: u64) {
    for _ in 0..n {
        assert_eq!(
            c.read_result(0, BIG).await.map(|d| d.len()),
            Ok(BIG as usize)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_not_read_hold_the_connections_byte_budget() {
    let (server, dev) = serve(ServerConfig::default()).await;
    let mut c = Client::connect(server.addr).await;
    c.go("").await;
    send_big_reads(&mut c, 40).await;
    // 128 MiB a connection: four 32 MiB reads, and no more while their replies are unwritten.
    reads_reach(&dev, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dev.reads.load(Ordering::SeqCst), 4);
    // Reading the replies lets the rest through.
    drain(c, 40).await;
    assert_eq!(dev.reads.load(Ordering::SeqCst), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_share_the_servers_byte_budget() {
    let config = ServerConfig {
        max_bytes: 2 * BIG as usize,
        ..ServerConfig::default()
    };
    let (server, dev) = serve(config).await;
    let mut a = Client::connect(server.addr).await;
    a.go("").await;
    let mut b = Client::connect(server.addr).await;
    b.go("").await;
    send_big_reads(&mut a, 8).await;
    send_big_reads(&mut b, 8).await;
    reads_reach(&dev, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dev.reads.load(Ordering::SeqCst), 2, "64 MiB for the server");
    let (a, b) = tokio::join!(tokio::spawn(drain(a, 8)), tokio::spawn(drain(b, 8)));
    a.expect("a");
    b.expect("b");
    assert_eq!(dev.reads.load(Ordering::SeqCst), 16);
}

/// Whether the server greets a new connection (rather than closing it at once).
async fn greeted(server: &Server) -> bool {
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let mut greeting = [0u8; 18];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting));
    matches!(read.await, Ok(Ok(_)))
}

#[tokio::test]
async fn connections_over_the_maximum_are_closed() {
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let (server, _dev) = serve(config).await;
    let mut first = Client::connect(server.addr).await;
    first.go("").await;
    assert!(!greeted(&server).await, "a second connection is refused");
    first.request(0, consts::CMD_DISC, 1, 0, 0, &[]).await;
    assert!(first.closed().await);
    // The slot is free again once the server has seen the first connection end.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !greeted(&server).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a new connection is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_give_their_budget_back() {
    let config = ServerConfig {
        idle_timeout: Some(Duration::from_millis(500)),
        max_bytes: 2 * BIG as usize,
        ..ServerConfig::default()
    };
    let (server, dev) = serve(config).await;
    // Silent: closed after the timeout.
    let mut quiet = Client::connect(server.addr).await;
    quiet.go("").await;
    // Busy: requests more often than the timeout keep it open.
    let mut busy = Client::connect(server.addr).await;
    busy.go("").await;
    for cookie in 0..8 {
        busy.request(0, consts::CMD_READ, cookie, 0, 4096, &[])
            .await;
        assert_eq!(busy.read_result(0, 4096).await.map(|d| d.len()), Ok(4096));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(quiet.closed().await);
    // A client that stops reading its replies holds the server's whole budget, until it is
    // taken for idle and closed; then another client is served.
    let mut stuck = Client::connect(server.addr).await;
    stuck.go("").await;
    let before = dev.reads.load(Ordering::SeqCst);
    send_big_reads(&mut stuck, 4).await;
    reads_reach(&dev, before + 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dev.reads.load(Ordering::SeqCst), before + 2);
    let mut late = Client::connect(server.addr).await;
    late.go("").await;
    late.request(0, consts::CMD_READ, 1, 0, BIG, &[]).await;
    let served = tokio::time::timeout(Duration::from_secs(5), late.read_result(0, BIG));
    assert_eq!(
        served.await.expect("served").map(|d| d.len()),
        Ok(BIG as usize)
    );
    drop(stuck);
}

/// A client that stops taking its replies, with no idle timeout set: once a reply has waited
/// longer than the reply timeout to be written, the connection is closed and the bytes it held
/// go back to the server's budget, so other clients are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_replies_is_closed_after_the_reply_timeout() {
    let config = ServerConfig {
        idle_timeout: None,
        reply_timeout: Some(Duration::from_millis(500)),
        max_bytes: 2 * BIG as usize,
        ..ServerConfig::default()
    };
    let (server, dev) = serve(config).await;
    let mut stuck = Client::connect(server.addr).await;
    stuck.go("").await;
    send_big_reads(&mut stuck, 8).await;
    reads_reach(&dev, 2).await;
    let mut late = Client::connect(server.addr).await;
    late.go("").await;
    late.request(0, consts::CMD_READ, 1, 0, BIG, &[]).await;
    let served = tokio::time::timeout(Duration::from_secs(10), late.read_result(0, BIG));
    assert_eq!(
        served
            .await
            .expect("served after the stuck client was closed")
            .map(|d| d.len()),
        Ok(BIG as usize)
    );
    // What the server had written before it gave up is still buffered; then the stream ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; MIB as usize];
        loop {
            match stuck.io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    ended
        .await
        .expect("the stuck client's connection was closed");
}
