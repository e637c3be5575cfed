//! Many calls in flight on one connection, answered out of order, each matched to its request.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use strata_types::{LayerId, ServerId, VolumeId};
use strata_wire::{ClientConfig, ErrorCode, Pool, Request, Response, WireClient};

use crate::{any_port, MemHandler, TestServer};

/// The bytes task `t` writes at its `i`-th offset: unique per call, of varying length.
fn payload(t: u64, i: u64) -> Bytes {
    let len = 512 + ((t * 31 + i * 7) % 64) as usize * 64;
    Bytes::from(
        (0..len)
            .map(|k| (t as usize * 13 + i as usize * 7 + k) as u8)
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_from_many_tasks_each_get_their_own_answer() {
    let volume = VolumeId::new_random();
    let head = LayerId::new_random();
    let handler = MemHandler::with_volumes(&[volume]);
    let server = TestServer::start(any_port(), ServerId::new_random(), handler.clone()).await;
    let me = ServerId::new_random();
    let client = WireClient::connect(server.addr, me).await.expect("connect");
    assert_eq!(
        client.peer_id(),
        server.id,
        "handshake carries the server id"
    );

    const TASKS: u64 = 8;
    const CALLS: u64 = 60;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            // Fire every write of this task at once, then every read, so they overlap.
            let writes = (0..CALLS).map(|i| {
                client.call(Request::Write {
                    volume,
                    layer: head,
                    offset: (t * CALLS + i) * 4096,
                    data: payload(t, i),
                    fua: i % 2 == 0,
                    missed: Vec::new(),
                    hold: None,
                    epoch: 0,
                    generation: 0,
                })
            });
            for resp in futures::future::join_all(writes).await {
                assert_eq!(resp.expect("write"), Response::Ok);
            }
            let reads = (0..CALLS).map(|i| {
                client.call(Request::Read {
                    volume,
                    layer: (i % 2 == 0).then_some(head),
                    offset: (t * CALLS + i) * 4096,
                    len: payload(t, i).len() as u32,
                })
            });
            for (i, resp) in futures::future::join_all(reads)
                .await
                .into_iter()
                .enumerate()
            {
                assert_eq!(
                    resp.expect("read"),
                    Response::Data(payload(t, i as u64)),
                    "task {t} call {i} got another call's answer"
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(
        handler.blocks.lock().expect("lock").len() as u64,
        TASKS * CALLS
    );
    let most = handler.max_in_flight.load(Ordering::SeqCst);
    assert!(most > 1, "requests were handled one at a time ({most})");
    assert!(most <= 64, "the per-connection bound holds ({most})");
    assert_eq!(
        handler
            .peers
            .lock()
            .expect("lock")
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![me],
        "the handler sees the caller's id"
    );
    server.kill().await;
}

#[tokio::test]
async fn handler_refusals_travel_as_error_responses() {
    let volume = VolumeId::new_random();
    let frozen = LayerId::new_random();
    let handler = MemHandler::with_volumes(&[volume]);
    handler.frozen.lock().expect("lock").insert(frozen);
    let server = TestServer::start(any_port(), ServerId::new_random(), handler).await;
    let pool = Pool::new(ServerId::new_random(), ClientConfig::default());

    let write = |volume, layer| Request::Write {
        volume,
        layer,
        offset: 0,
        data: Bytes::from_static(b"late"),
        fua: false,
        missed: Vec::new(),
        hold: None,
        epoch: 0,
        generation: 0,
    };
    let code = |resp: Response| match resp {
        Response::Error { code, message } => {
            assert!(!message.is_empty());
            Some(code)
        }
        _ => None,
    };
    let fenced = pool.call(server.addr, write(volume, frozen)).await;
    assert_eq!(code(fenced.expect("call")), Some(ErrorCode::Fenced));
    let unknown = pool
        .call(
            server.addr,
            write(VolumeId::new_random(), LayerId::new_random()),
        )
        .await;
    assert_eq!(code(unknown.expect("call")), Some(ErrorCode::UnknownVolume));
    let trim = Request::Trim {
        volume,
        layer: LayerId::new_random(),
        offset: 0,
        len: 4096,
        missed: Vec::new(),
        hold: None,
        epoch: 0,
        generation: 0,
    };
    assert_eq!(
        pool.call(server.addr, trim).await.expect("trim"),
        Response::Ok
    );
    let flush = pool.call(server.addr, Request::Flush { volume }).await;
    assert_eq!(flush.expect("flush"), Response::Ok);
    let ping = pool.call(server.addr, Request::Ping).await;
    assert_eq!(ping.expect("ping"), Response::Pong { run: 1 });
    assert_eq!(pool.connected(), vec![server.addr], "one pooled connection");
    server.kill().await;
}

#[tokio::test]
async fn a_large_write_travels_whole_and_an_oversized_one_is_refused_before_sending() {
    let volume = VolumeId::new_random();
    let handler = MemHandler::with_volumes(&[volume]);
    let server = TestServer::start(any_port(), ServerId::new_random(), handler).await;
    let config = ClientConfig {
        max_payload: 5 * 1024 * 1024,
        ..ClientConfig::default()
    };
    let client = WireClient::connect_with(server.addr, ServerId::new_random(), config)
        .await
        .expect("connect");
    let chunk = Bytes::from(vec![0xa5u8; 4 * 1024 * 1024]);
    let write = |data: Bytes| Request::Write {
        volume,
        layer: LayerId::new_random(),
        offset: 0,
        data,
        fua: true,
        missed: Vec::new(),
        hold: None,
        epoch: 0,
        generation: 0,
    };
    let ok = client
        .call(write(chunk.clone()))
        .await
        .expect("4 MiB write");
    assert_eq!(ok, Response::Ok);
    let read = Request::Read {
        volume,
        layer: None,
        offset: 0,
        len: chunk.len() as u32,
    };
    assert_eq!(
        client.call(read).await.expect("read"),
        Response::Data(chunk)
    );

    let err = client
        .call(write(Bytes::from(vec![0u8; 6 * 1024 * 1024])))
        .await
        .expect_err("too large");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert_eq!(
        client.call(Request::Ping).await.expect("still open"),
        Response::Pong { run: 1 }
    );
    server.kill().await;
}

/// `Arc<MemHandler>` must be usable as `Arc<dyn Handler>`.
#[allow(dead_code)]
fn handler_is_object_safe(h: Arc<MemHandler>) -> Arc<dyn strata_wire::Handler> {
    h
}
