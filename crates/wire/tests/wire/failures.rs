//! Failures: a server killed mid-call, a pool reconnecting, version mismatches, corrupt frames
//! and timeouts — each failing only what it must, with the right kind of error.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use strata_types::{ServerId, VolumeId};
use strata_wire::handshake::{Hello, HELLO_LEN};
use strata_wire::{
    ClientConfig, ErrorCode, Frame, FrameCodec, FrameKind, Pool, Request, Response, WireClient,
    WireError, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

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
    // A valid Ping frame with one bit flipped in its checksum.
    let mut bytes = BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut FrameCodec::default(),
        (5u64, Request::Ping),
        &mut bytes,
    )
    .expect("encode");
    bytes[25] ^= 1;
    bad.get_mut().write_all(&bytes).await.expect("send corrupt");
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
