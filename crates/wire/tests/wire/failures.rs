//! Failures: a server killed mid-call, a pool reconnecting, version mismatches, corrupt frames,
//! timeouts, absurd lengths and peers that stop reading — each failing only what it must, with
//! the right kind of error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use strata_types::{ServerId, VolumeId};
use strata_wire::handshake::{Hello, HELLO_LEN};
use strata_wire::{
    serve, ClientConfig, ErrorCode, Frame, FrameCodec, FrameKind, Handler, Pool, Request, Response,
    ServerConfig, WireClient, WireError, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::{any_port, MemHandler, TestServer, HANG_OFFSET};

fn hang(volume: VolumeId) -> Request {
    Request::Read {
        volume,
        layer: None,
        offset: HANG_OFFSET,
        len: 1,
    }
}

#[tokio::test]
async fn server_killed_mid_call_fails_the_call_retryably_and_the_pool_reconnects() {
    let volume = VolumeId::new_random();
    let handler = MemHandler::with_volumes(&[volume]);
    let server_id = ServerId::new_random();
    let server = TestServer::start(any_port(), server_id, handler.clone()).await;
    let addr = server.addr;
    let pool = std::sync::Arc::new(Pool::new(ServerId::new_random(), ClientConfig::default()));

    const CALLS: usize = 4;
    let in_flight: Vec<_> = (0..CALLS)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(addr, hang(volume)).await })
        })
        .collect();
    while handler.in_flight.load(Ordering::SeqCst) < CALLS {
        handler.hung.notified().await;
    }
    server.kill().await;
    for call in in_flight {
        let err = call.await.expect("task").expect_err("server died");
        assert!(matches!(err, WireError::ConnectionLost(_)), "{err:?}");
        assert!(err.is_retryable());
    }

    // Nobody listens now: connecting fails, retryably.
    let err = pool.call(addr, Request::Ping).await.expect_err("down");
    assert!(err.is_retryable(), "{err:?}");

    // The server comes back on the same address; the pool dials again on its own.
    let server = TestServer::start(addr, server_id, handler).await;
    let pong = pool.call(addr, Request::Ping).await.expect("reconnected");
    assert_eq!(pong, Response::Pong { run: 1 });
    assert_eq!(pool.get(addr).await.expect("get").peer_id(), server_id);
    server.kill().await;
}

#[tokio::test]
async fn a_call_times_out_without_harming_the_connection() {
    let volume = VolumeId::new_random();
    let handler = MemHandler::with_volumes(&[volume]);
    let server = TestServer::start(any_port(), ServerId::new_random(), handler).await;
    let client = WireClient::connect(server.addr, ServerId::new_random())
        .await
        .expect("connect");
    let err = client
        .call_timeout(hang(volume), Duration::from_millis(100))
        .await
        .expect_err("hangs");
    assert!(
        matches!(err, WireError::Timeout(_)) && err.is_retryable(),
        "{err:?}"
    );
    assert_eq!(
        client.call(Request::Ping).await.expect("ping"),
        Response::Pong { run: 1 }
    );
    assert!(!client.is_closed());
    server.kill().await;
}

#[tokio::test]
async fn a_server_refuses_another_protocol_version() {
    let server = TestServer::start(
        any_port(),
        ServerId::new_random(),
        MemHandler::with_volumes(&[]),
    )
    .await;
    let mut raw = TcpStream::connect(server.addr).await.expect("connect");
    let future = Hello {
        version: PROTOCOL_VERSION + 1,
        server: ServerId::new_random(),
    };
    raw.write_all(&future.encode()).await.expect("send hello");
    // The server still sends its own hello, so the peer can report the mismatch, then closes.
    let mut theirs = [0u8; HELLO_LEN];
    raw.read_exact(&mut theirs).await.expect("server hello");
    let hello = Hello::parse(&theirs).ok().flatten().expect("parses");
    assert_eq!((hello.version, hello.server), (PROTOCOL_VERSION, server.id));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing after the hello");
    server.kill().await;
}

#[tokio::test]
async fn a_client_refuses_another_protocol_version() {
    let listener = TcpListener::bind(any_port()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let hello = Hello {
            version: 99,
            server: ServerId::new_random(),
        };
        s.write_all(&hello.encode()).await.expect("send");
        let mut buf = [0u8; HELLO_LEN];
        let _ = s.read_exact(&mut buf).await;
    });
    let err = WireClient::connect(addr, ServerId::new_random())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, WireError::VersionMismatch { ours, theirs: 99 } if ours == PROTOCOL_VERSION),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("version 99"), "{err}");
    fake.await.expect("fake server");
}

/// A raw connection that has done the handshake, framed with the codec.
async fn raw_framed(addr: std::net::SocketAddr) -> Framed<TcpStream, FrameCodec> {
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    raw.write_all(&Hello::ours(ServerId::new_random()).encode())
        .await
        .expect("hello");
    let mut theirs = [0u8; HELLO_LEN];
    raw.read_exact(&mut theirs).await.expect("server hello");
    Framed::new(raw, FrameCodec::default())
}

/// A valid Ping frame numbered `id` with one bit flipped in its checksum.
fn corrupt_ping(id: u64) -> BytesMut {
    let mut bytes = BytesMut::new();
    tokio_util::codec::Encoder::encode(&mut FrameCodec::default(), (id, Request::Ping), &mut bytes)
        .expect("encode");
    bytes[25] ^= 1;
    bytes
}

#[tokio::test]
async fn a_corrupt_frame_closes_only_its_own_connection() {
    let server = TestServer::start(
        any_port(),
        ServerId::new_random(),
        MemHandler::with_volumes(&[]),
    )
    .await;
    let good = WireClient::connect(server.addr, ServerId::new_random())
        .await
        .expect("connect");
    let mut bad = raw_framed(server.addr).await;
    bad.get_mut()
        .write_all(&corrupt_ping(5))
        .await
        .expect("send corrupt");
    let next = tokio::time::timeout(Duration::from_secs(5), bad.next())
        .await
        .expect("closed promptly");
    assert!(
        !matches!(next, Some(Ok(_))),
        "no answer to a corrupt frame: {next:?}"
    );
    assert_eq!(
        good.call(Request::Ping).await.expect("ping"),
        Response::Pong { run: 1 }
    );
    server.kill().await;
}

#[tokio::test]
async fn an_unparsable_request_is_answered_with_bad_request_and_the_connection_lives_on() {
    let server = TestServer::start(
        any_port(),
        ServerId::new_random(),
        MemHandler::with_volumes(&[]),
    )
    .await;
    let mut conn = raw_framed(server.addr).await;
    let unknown = Frame {
        kind: FrameKind::Request,
        request_id: 77,
        msg_type: 0x0fff,
        payload: Bytes::from_static(b"?"),
    };
    conn.send(unknown).await.expect("send");
    let answer = conn.next().await.expect("answer").expect("frame");
    assert_eq!(answer.request_id, 77);
    assert!(matches!(
        answer.into_message::<Response>(),
        Ok(Response::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
    conn.send((78u64, Request::Ping)).await.expect("send ping");
    let pong = conn.next().await.expect("answer").expect("frame");
    assert_eq!(
        (pong.request_id, pong.into_message::<Response>()),
        (78, Ok(Response::Pong { run: 1 }))
    );
    server.kill().await;
}

#[tokio::test]
async fn a_read_of_4_gib_is_refused_before_the_handler_and_the_connection_lives_on() {
    let volume = VolumeId::new_random();
    let handler = MemHandler::with_volumes(&[volume]);
    let server = TestServer::start(any_port(), ServerId::new_random(), handler.clone()).await;
    let mut conn = raw_framed(server.addr).await;
    let max = strata_wire::DEFAULT_MAX_PAYLOAD;
    let too_long = [
        Request::Read {
            volume,
            layer: None,
            offset: 0,
            len: u32::MAX,
        },
        Request::Read {
            volume,
            layer: None,
            offset: 0,
            len: max + 1,
        },
        Request::Allocation {
            volume,
            layer: None,
            offset: 0,
            len: u32::MAX,
        },
    ];
    for (id, req) in (1u64..).zip(too_long) {
        conn.send((id, req)).await.expect("send");
        let answer = conn.next().await.expect("answer").expect("frame");
        assert_eq!(answer.request_id, id);
        assert!(
            matches!(
                answer.into_message::<Response>(),
                Ok(Response::Error {
                    code: ErrorCode::OutOfRange,
                    ..
                })
            ),
            "request {id}"
        );
    }
    assert_eq!(
        handler.max_in_flight.load(Ordering::SeqCst),
        0,
        "the handler never saw them"
    );
    let read = Request::Read {
        volume,
        layer: None,
        offset: 0,
        len: 4096,
    };
    conn.send((9u64, read)).await.expect("send");
    let data = conn.next().await.expect("answer").expect("frame");
    assert_eq!(
        (data.request_id, data.into_message::<Response>()),
        (9, Ok(Response::Data(Bytes::from(vec![0; 4096]))))
    );
    server.kill().await;
}

/// Answers every read with slices of one buffer of zeroes (no memory per read) and counts them.
struct CountingReads {
    zeroes: Bytes,
    reads: AtomicU64,
}

#[async_trait]
impl Handler for CountingReads {
    async fn handle(&self, _peer: ServerId, _conn: u64, req: Request) -> Response {
        match req {
            Request::Read { len, .. } => {
                self.reads.fetch_add(1, Ordering::SeqCst);
                Response::Data(self.zeroes.slice(..len as usize))
            }
            _ => Response::Ok,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_not_read_hold_the_connections_byte_budget() {
    const LEN: u32 = 16 << 20;
    let handler = Arc::new(CountingReads {
        zeroes: Bytes::from(vec![0u8; LEN as usize]),
        reads: AtomicU64::new(0),
    });
    let listener = TcpListener::bind(any_port()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ServerConfig {
        // Room for two answers and their small requests.
        max_bytes_in_flight: 2 * LEN as usize + 1024,
        ..ServerConfig::new(ServerId::new_random())
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, config, handler.clone(), shutdown.clone()));
    let mut conn = raw_framed(addr).await;
    let volume = VolumeId::new_random();
    for id in 0..20u64 {
        let read = Request::Read {
            volume,
            layer: None,
            offset: 0,
            len: LEN,
        };
        conn.send((id, read)).await.expect("send");
    }
    // 32 MiB for the connection: two 16 MiB answers, and no more while they are unwritten.
    tokio::time::timeout(Duration::from_secs(10), async {
        while handler.reads.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("reads started");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handler.reads.load(Ordering::SeqCst), 2);
    // Reading the answers lets the others through.
    for _ in 0..20 {
        let answer = conn.next().await.expect("answer").expect("frame");
        assert!(matches!(
            answer.into_message::<Response>(),
            Ok(Response::Data(d)) if d.len() == LEN as usize
        ));
    }
    assert_eq!(handler.reads.load(Ordering::SeqCst), 20);
    shutdown.cancel();
    task.await.expect("serve");
}

/// Takes its time over every request, and notes how many it had finished when each
/// connection closed.
#[derive(Default)]
struct Slow {
    finished: AtomicU64,
    finished_at_close: AtomicU64,
    closes: AtomicU64,
}

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, _peer: ServerId, _conn: u64, _req: Request) -> Response {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Response::Ok
    }

    fn closed(&self, _conn: u64) {
        self.finished_at_close
            .store(self.finished.load(Ordering::SeqCst), Ordering::SeqCst);
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
}

/// A connection that breaks (here: a corrupt frame; a reset is read the same way) while a
/// request it carried is being handled still lets that request finish before the handler
/// hears the connection closed: a write may already be in the store, and what the handler
/// keeps about the connection (the replica's record of unflushed writes) must include it.
#[tokio::test]
async fn a_broken_connection_lets_its_requests_in_flight_finish_before_it_is_closed() {
    let handler = Arc::new(Slow::default());
    let listener = TcpListener::bind(any_port()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        ServerConfig::new(ServerId::new_random()),
        handler.clone(),
        shutdown.clone(),
    ));
    let mut conn = raw_framed(addr).await;
    conn.send((1u64, Request::Ping)).await.expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.get_mut()
        .write_all(&corrupt_ping(2))
        .await
        .expect("send corrupt");
    tokio::time::timeout(Duration::from_secs(5), async {
        while handler.closes.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the connection is closed");
    assert_eq!(
        handler.finished_at_close.load(Ordering::SeqCst),
        1,
        "the request in flight was finished before the connection was closed"
    );
    shutdown.cancel();
    task.await.expect("serve task");
}
