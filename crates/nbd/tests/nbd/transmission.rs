//! The transmission phase: data round trips, concurrency, block status and errors.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use strata_nbd::consts;

use crate::client::{start, Client, Msg, Server};
use crate::memdev::{MemDevice, MemExports};

const SIZE: u64 = 1 << 20;

async fn setup(structured: bool, meta: bool) -> (Server, Arc<MemDevice>, Arc<MemDevice>, Client) {
    let dev = MemDevice::new(SIZE, false);
    let ro = MemDevice::new(SIZE, true);
    let server = start(MemExports::with(&[
        ("vol", dev.clone()),
        ("ro", ro.clone()),
    ]))
    .await;
    let mut c = Client::connect(server.addr).await;
    if structured {
        c.structured_reply().await;
    }
    if meta {
        c.set_meta("vol", &["base:allocation"]).await;
    }
    c.go("vol").await;
    (server, dev, ro, c)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn write_read_round_trip_simple_and_structured() {
    for structured in [false, true] {
        let (_server, dev, _ro, mut c) = setup(structured, false).await;
        let data = pattern(70_000, 3);
        c.request(
            consts::CMD_FLAG_FUA,
            consts::CMD_WRITE,
            1,
            1000,
            data.len() as u32,
            &data,
        )
        .await;
        assert_eq!(c.status().await, Ok(()));
        c.request(0, consts::CMD_READ, 2, 1000, data.len() as u32, &[])
            .await;
        assert_eq!(
            c.read_result(1000, data.len() as u32).await,
            Ok(data.clone())
        );
        assert_eq!(&dev.contents()[1000..1000 + data.len()], &data[..]);
        // Flush, trim, write zeroes.
        c.request(0, consts::CMD_FLUSH, 3, 0, 0, &[]).await;
        assert_eq!(c.status().await, Ok(()));
        assert_eq!(dev.flushes.load(Ordering::SeqCst), 1);
        c.request(
            consts::CMD_FLAG_NO_HOLE | consts::CMD_FLAG_FUA,
            consts::CMD_WRITE_ZEROES,
            4,
            1000,
            100,
            &[],
        )
        .await;
        assert_eq!(c.status().await, Ok(()));
        c.request(0, consts::CMD_TRIM, 5, 8192, 4096, &[]).await;
        assert_eq!(c.status().await, Ok(()));
        c.request(0, consts::CMD_READ, 6, 1000, 200, &[]).await;
        let got = c.read_result(1000, 200).await.expect("read");
        assert_eq!(&got[..100], &[0; 100][..]);
        assert_eq!(&got[100..], &data[100..200]);
        // Zero-length requests succeed without harm.
        c.request(0, consts::CMD_READ, 7, 0, 0, &[]).await;
        assert_eq!(c.read_result(0, 0).await, Ok(vec![]));
        c.request(0, consts::CMD_WRITE, 8, SIZE, 0, &[]).await;
        assert_eq!(c.status().await, Ok(()));
        // DISC: the server closes after replying to everything in flight.
        c.request(0, consts::CMD_READ, 9, 0, 4096, &[]).await;
        c.request(0, consts::CMD_DISC, 10, 0, 0, &[]).await;
        assert_eq!(c.read_result(0, 4096).await.map(|d| d.len()), Ok(4096));
        assert!(c.closed().await);
    }
}

#[tokio::test]
async fn pipelined_requests_reply_out_of_order() {
    let (_server, dev, _ro, mut c) = setup(true, false).await;
    dev.gated_offset.store(0, Ordering::SeqCst);
    c.request(0, consts::CMD_READ, 1, 0, 4096, &[]).await; // held by the gate
    for cookie in 2..40u64 {
        c.request(0, consts::CMD_READ, cookie, cookie * 4096, 4096, &[])
            .await;
    }
    let mut seen = Vec::new();
    for _ in 2..40 {
        let msg = c.reply().await;
        assert!(matches!(
            msg,
            Msg::Chunk {
                kind: consts::REPLY_TYPE_OFFSET_HOLE,
                ..
            }
        ));
        seen.push(msg.cookie());
    }
    seen.sort_unstable();
    assert_eq!(seen, (2..40).collect::<Vec<_>>());
    dev.gate.add_permits(1);
    assert_eq!(c.reply().await.cookie(), 1, "the held read replies last");
    // Many writes in one burst, each reply whole.
    let mut burst = Vec::new();
    for i in 0..64u64 {
        let data = pattern(4096, i as u8);
        let mut req = consts::REQUEST_MAGIC.to_be_bytes().to_vec();
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&consts::CMD_WRITE.to_be_bytes());
        req.extend_from_slice(&(100 + i).to_be_bytes());
        req.extend_from_slice(&(i * 4096).to_be_bytes());
        req.extend_from_slice(&4096u32.to_be_bytes());
        req.extend_from_slice(&data);
        burst.extend_from_slice(&req);
    }
    c.send_raw(&burst).await;
    for _ in 0..64 {
        assert_eq!(c.status().await, Ok(()));
    }
    for i in 0..64u64 {
        let start = (i * 4096) as usize;
        assert_eq!(
            &dev.contents()[start..start + 4096],
            &pattern(4096, i as u8)[..]
        );
    }
}

#[tokio::test]
async fn block_status_reports_allocation() {
    let (_server, _dev, _ro, mut c) = setup(true, true).await;
    c.request(0, consts::CMD_WRITE, 1, 8192, 4096, &[1; 4096])
        .await;
    assert_eq!(c.status().await, Ok(()));
    c.request(0, consts::CMD_BLOCK_STATUS, 2, 0, 16384, &[])
        .await;
    let Msg::Chunk {
        flags,
        kind,
        payload,
        ..
    } = c.reply().await
    else {
        panic!("chunk")
    };
    assert_eq!(
        (flags, kind),
        (consts::REPLY_FLAG_DONE, consts::REPLY_TYPE_BLOCK_STATUS)
    );
    let words: Vec<u32> = payload
        .chunks(4)
        .map(|w| u32::from_be_bytes(w.try_into().expect("4")))
        .collect();
    assert_eq!(words, vec![1, 8192, 3, 4096, 0, 4096, 3]);
    c.request(
        consts::CMD_FLAG_REQ_ONE,
        consts::CMD_BLOCK_STATUS,
        3,
        0,
        16384,
        &[],
    )
    .await;
    let Msg::Chunk { payload, .. } = c.reply().await else {
        panic!("chunk")
    };
    assert_eq!(payload.len(), 12);
    c.request(0, consts::CMD_BLOCK_STATUS, 4, SIZE, 1, &[])
        .await;
    assert_eq!(c.status().await, Err(consts::EINVAL));
}

/// The `base:allocation` words of one block status reply: context id, then (length, flags)s.
async fn status_words(c: &mut Client, cookie: u64, offset: u64, len: u32) -> Vec<u32> {
    c.request(0, consts::CMD_BLOCK_STATUS, cookie, offset, len, &[])
        .await;
    let Msg::Chunk { payload, .. } = c.reply().await else {
        panic!("chunk")
    };
    payload
        .chunks(4)
        .map(|w| u32::from_be_bytes(w.try_into().expect("4")))
        .collect()
}

#[tokio::test]
async fn write_zeroes_with_no_hole_stays_allocated() {
    let (_server, dev, _ro, mut c) = setup(true, true).await;
    c.request(0, consts::CMD_WRITE, 1, 0, 16384, &[1; 16384])
        .await;
    assert_eq!(c.status().await, Ok(()));
    // NO_HOLE: zeroes, still allocated; without it the device may punch a hole.
    let no_hole = consts::CMD_FLAG_NO_HOLE;
    c.request(no_hole, consts::CMD_WRITE_ZEROES, 2, 0, 8192, &[])
        .await;
    assert_eq!(c.status().await, Ok(()));
    c.request(0, consts::CMD_WRITE_ZEROES, 3, 8192, 8192, &[])
        .await;
    assert_eq!(c.status().await, Ok(()));
    assert_eq!(&dev.contents()[..16384], &[0; 16384][..]);
    assert_eq!(
        status_words(&mut c, 4, 0, 16384).await,
        vec![1, 8192, 0, 8192, 3]
    );
    // A hole zeroed with NO_HOLE becomes allocated.
    c.request(no_hole, consts::CMD_WRITE_ZEROES, 5, 65536, 4096, &[])
        .await;
    assert_eq!(c.status().await, Ok(()));
    assert_eq!(
        status_words(&mut c, 6, 61440, 12288).await,
        vec![1, 4096, 3, 4096, 0, 4096, 3]
    );
}

#[tokio::test]
async fn errors_are_replies_and_the_connection_survives() {
    let (server, dev, ro, mut c) = setup(true, false).await;
    let calls = dev.calls.load(Ordering::SeqCst);
    c.request(0, consts::CMD_READ, 1, SIZE - 10, 20, &[]).await;
    assert_eq!(c.read_result(0, 0).await, Err(consts::EINVAL));
    c.request(0, consts::CMD_READ, 2, u64::MAX - 1, 20, &[])
        .await;
    assert_eq!(c.read_result(0, 0).await, Err(consts::EINVAL));
    c.request(0, consts::CMD_WRITE, 3, SIZE, 4, b"abcd").await;
    assert_eq!(c.status().await, Err(consts::ENOSPC));
    c.request(0, consts::CMD_TRIM, 4, SIZE, 4, &[]).await;
    assert_eq!(c.status().await, Err(consts::EINVAL));
    c.request(0, 77, 5, 0, 0, &[]).await;
    assert_eq!(c.status().await, Err(consts::EINVAL));
    c.request(0x40, consts::CMD_READ, 6, 0, 1, &[]).await;
    assert_eq!(c.read_result(0, 0).await, Err(consts::EINVAL));
    c.request(0, consts::CMD_BLOCK_STATUS, 7, 0, 512, &[]).await;
    assert_eq!(
        c.status().await,
        Err(consts::EINVAL),
        "no meta context negotiated"
    );
    c.request(0, consts::CMD_READ, 8, 0, consts::MAX_PAYLOAD + 1, &[])
        .await;
    assert_eq!(c.read_result(0, 0).await, Err(consts::EOVERFLOW));
    assert_eq!(
        dev.calls.load(Ordering::SeqCst),
        calls,
        "the device never saw those"
    );
    // Device failures become errors with a message.
    dev.fail.store(true, Ordering::SeqCst);
    c.request(0, consts::CMD_READ, 9, 0, 512, &[]).await;
    let Msg::Chunk { kind, payload, .. } = c.reply().await else {
        panic!("chunk")
    };
    assert_eq!(kind, consts::REPLY_TYPE_ERROR);
    assert_eq!(crate::client::errno_of(&payload), consts::EIO);
    assert!(String::from_utf8_lossy(&payload[6..]).contains("injected failure"));
    dev.fail.store(false, Ordering::SeqCst);
    c.request(0, consts::CMD_READ, 10, 0, 512, &[]).await;
    assert!(c.read_result(0, 512).await.is_ok());

    // Read-only exports refuse writes with EPERM, in simple-reply mode too.
    let mut r = Client::connect(server.addr).await;
    let (_, flags) = r.go("ro").await;
    assert_ne!(flags & consts::FLAG_READ_ONLY, 0);
    r.request(0, consts::CMD_WRITE, 1, 0, 4, b"abcd").await;
    assert_eq!(r.status().await, Err(consts::EPERM));
    r.request(0, consts::CMD_WRITE_ZEROES, 2, 0, 4, &[]).await;
    assert_eq!(r.status().await, Err(consts::EPERM));
    r.request(0, consts::CMD_READ, 3, SIZE, 1, &[]).await;
    assert_eq!(r.read_result(0, 0).await, Err(consts::EINVAL));
    r.request(0, consts::CMD_READ, 4, 0, 8, &[]).await;
    assert_eq!(r.read_result(0, 8).await, Ok(vec![0; 8]));
    assert_eq!(ro.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_write_over_the_maximum_payload_is_refused_and_the_connection_lives() {
    for structured in [false, true] {
        let (_server, dev, _ro, mut c) = setup(structured, false).await;
        let calls = dev.calls.load(Ordering::SeqCst);
        // The payload follows in full: the server reads it, throws it away and answers.
        let len = consts::MAX_PAYLOAD + 4096;
        let payload = vec![0xa5; len as usize];
        c.request(0, consts::CMD_WRITE, 1, 0, len, &payload).await;
        let errno = if structured {
            consts::EOVERFLOW
        } else {
            consts::EINVAL
        };
        assert_eq!(c.status().await, Err(errno), "structured {structured}");
        assert_eq!(dev.calls.load(Ordering::SeqCst), calls, "device untouched");
        // The stream is still in step: the next requests work.
        c.request(0, consts::CMD_WRITE, 2, 0, 4, b"abcd").await;
        assert_eq!(c.status().await, Ok(()));
        c.request(0, consts::CMD_READ, 3, 0, 4, &[]).await;
        assert_eq!(c.read_result(0, 4).await, Ok(b"abcd".to_vec()));
    }
}

/// The refusal of a WRITE over the maximum payload comes only once its payload is read: a
/// client still sending it (libnbd) took an earlier reply for an unknown cookie and dropped the
/// connection.
#[tokio::test]
async fn the_refusal_of_an_oversized_write_waits_for_its_payload() {
    for structured in [false, true] {
        let (_server, _dev, _ro, mut c) = setup(structured, false).await;
        let len = consts::MAX_PAYLOAD + 1;
        c.request(0, consts::CMD_WRITE, 1, 0, len, &[]).await;
        let early = tokio::time::timeout(Duration::from_millis(300), c.status()).await;
        assert!(early.is_err(), "answered before the payload: {early:?}");
        c.send_raw(&vec![0x5a; len as usize]).await;
        assert!(c.status().await.is_err(), "structured {structured}");
        c.request(0, consts::CMD_READ, 2, 0, 4, &[]).await;
        assert!(c.read_result(0, 4).await.is_ok());
    }
}

#[tokio::test]
async fn malformed_transmission_ends_only_that_connection() {
    let (server, _dev, _ro, mut bad) = setup(true, false).await;
    bad.send_raw(b"this is not an nbd request at all....").await;
    assert!(bad.closed().await);
    // A write far beyond the maximum payload: hard disconnect.
    let mut big = Client::connect(server.addr).await;
    big.go("vol").await;
    big.request(
        0,
        consts::CMD_WRITE,
        1,
        0,
        consts::MAX_DISCARDED_WRITE + 1,
        &[],
    )
    .await;
    assert!(big.closed().await);
    // A request cut short by a hang-up.
    let mut cut = Client::connect(server.addr).await;
    cut.go("vol").await;
    cut.send_raw(&consts::REQUEST_MAGIC.to_be_bytes()).await;
    drop(cut);
    // Others keep working.
    let mut good = Client::connect(server.addr).await;
    good.go("vol").await;
    good.request(0, consts::CMD_READ, 1, 0, 16, &[]).await;
    assert_eq!(good.read_result(0, 16).await, Ok(vec![0; 16]));
    // Shutdown: the connection is closed and serve returns.
    server.shutdown.cancel();
    assert!(good.closed().await);
    server.task.await.expect("join").expect("serve");
}

#[tokio::test]
async fn serve_connection_over_a_duplex_stream() {
    let dev = MemDevice::new(4096, false);
    let exports = MemExports::with(&[("d", dev)]);
    let (client_side, server_side) = tokio::io::duplex(64 * 1024);
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(strata_nbd::serve_connection(server_side, exports, token));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(client_side);
    let mut greeting = [0u8; 18];
    rd.read_exact(&mut greeting).await.expect("greeting");
    wr.write_all(&3u32.to_be_bytes()).await.expect("flags");
    let mut opt = consts::IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'd']);
    wr.write_all(&opt).await.expect("export name");
    let mut reply = [0u8; 10];
    rd.read_exact(&mut reply).await.expect("reply");
    let mut disc = consts::REQUEST_MAGIC.to_be_bytes().to_vec();
    disc.extend_from_slice(&[0, 0, 0, 2]);
    disc.extend_from_slice(&[0; 20]);
    wr.write_all(&disc).await.expect("disc");
    task.await.expect("join").expect("clean end");
}
