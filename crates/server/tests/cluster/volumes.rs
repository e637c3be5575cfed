//! Distributed volumes: chunks on two of three servers, served by every server as gateway;
//! snapshots that hold a prefix of the writes of two gateways; a replica lost mid-write without
//! an error to the client, tracked, resynced (only what it missed) and verified identical.

use crate::harness::{blocking, connect, Group};
use crate::nbd_client::NbdClient;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 / 512) % 251) as u8)
        .collect()
}

/// Bytes of the volume's layers on server `i`.
async fn used_on(g: &Group, i: usize, id: &str) -> u64 {
    g.get(i, &format!("/internal/v1/volumes/{id}/local")).await["used_bytes"]
        .as_u64()
        .expect("used")
}

/// A wire client to server `name`'s peer port, as another server (or a faulty peer) would talk
/// to it.
async fn wire_to(g: &Group, name: &str) -> strata_wire::WireClient {
    let servers = g.get(0, "/v1/servers").await;
    let server = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
        .clone();
    let peer: std::net::SocketAddr = server["peer_addr"].as_str().unwrap().parse().unwrap();
    strata_wire::WireClient::connect(peer, strata_types::ServerId::new_random())
        .await
        .unwrap()
}

/// The run server `name` answers a ping with: resync compares it before and after a copy to
/// know that the receiver did not restart (losing the unsynced copy) in between.
async fn run_of(g: &Group, name: &str) -> u64 {
    match wire_to(g, name)
        .await
        .call(strata_wire::Request::Ping)
        .await
    {
        Ok(strata_wire::Response::Pong { run }) => run,
        other => panic!("ping {name}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_server_serves_a_replicated_volume() {
    let g = Group::start(3).await;
    g.one_cluster().await;
    let vol = g.create_volume("r2", 64 * MIB, 2).await;
    assert_eq!(vol["servers"].as_array().map(Vec::len), Some(3), "{vol}");
    let id = vol["id"].as_str().unwrap().to_string();
    // Write 16 chunks through s1, each a different pattern; read back through s2 and s3.
    let a = g.nbd(0);
    blocking(move || {
        let mut c = connect(&a, "r2");
        for chunk in 0..16u64 {
            assert_eq!(
                c.write(chunk * CHUNK + 4096, &pattern(chunk, 65536), false)
                    .unwrap(),
                0
            );
        }
        assert_eq!(c.flush().unwrap(), 0);
        c.disconnect();
    })
    .await;
    for i in [1, 2] {
        let addr = g.nbd(i);
        blocking(move || {
            let mut c = connect(&addr, "r2");
            for chunk in 0..16u64 {
                let got = c.read(chunk * CHUNK + 4096, 65536).unwrap().unwrap();
                assert!(
                    got == pattern(chunk, 65536),
                    "chunk {chunk} through server {i}"
                );
            }
            // A range across a chunk boundary reads zeros and data in the right order.
            let got = c.read(CHUNK - 4096, 3 * 4096).unwrap().unwrap();
            assert!(got[..8192].iter().all(|b| *b == 0));
            assert_eq!(&got[8192..], &pattern(1, 4096)[..]);
        })
        .await;
    }
    // Two copies of every chunk, spread over all three servers.
    let used: Vec<u64> = futures::future::join_all((0..3).map(|i| used_on(&g, i, &id))).await;
    let total: u64 = used.iter().sum();
    assert!(
        used.iter().all(|u| *u > 0),
        "every server holds chunks: {used:?}"
    );
    assert!(
        (2 * 16 * 65536..=2 * 16 * 65536 + 2 * 16 * 4096 * 4).contains(&total),
        "two copies of 1 MiB, not more: {used:?}"
    );
    let report = g.verify(2, "r2", false).await;
    assert_eq!(report["chunks"], 16, "{report}");
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}

/// Which of `n` sequence-numbered blocks a snapshot holds.
fn present(c: &mut NbdClient, n: u64) -> Vec<bool> {
    let data = c.read(0, (n * 4096) as u32).unwrap().unwrap();
    (0..n)
        .map(|i| {
            let b = &data[(i * 4096) as usize..((i + 1) * 4096) as usize];
            let tag = u64::from_le_bytes(b[..8].try_into().unwrap());
            assert!(tag == 0 || tag == i + 1, "block {i} holds {tag}");
            tag == i + 1
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_hold_a_prefix_of_writes_through_two_gateways() {
    let g = Group::start(3).await;
    g.one_cluster().await;
    // 1 MiB per chunk step: the writes land on every chunk, so on every replica pair.
    let blocks: u64 = 2048;
    g.create_volume("seq", blocks * 4096, 2).await;
    let gateways = [g.nbd(0), g.nbd(1)];
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut clients: Vec<NbdClient> = gateways.iter().map(|a| connect(a, "seq")).collect();
            // Write n+1 goes out only after write n is acknowledged, alternating gateways and
            // striding over the chunks so consecutive writes hit different replicas.
            for i in 0..blocks {
                let block = (i * 257) % blocks;
                let mut data = vec![0u8; 4096];
                data[..8].copy_from_slice(&(block + 1).to_le_bytes());
                assert_eq!(
                    clients[(i % 2) as usize]
                        .write(block * 4096, &data, false)
                        .unwrap(),
                    0
                );
            }
            done.store(true, Ordering::SeqCst);
            let order: Vec<u64> = (0..blocks).map(|i| (i * 257) % blocks).collect();
            order
        })
    };
    let mut snaps = Vec::new();
    while !done.load(Ordering::SeqCst) {
        let name = format!("s{}", snaps.len());
        let (status, body) = g
            .post(2, "/v1/volumes/seq/snapshots", json!({"name": name}))
            .await;
        assert_eq!(status, 201, "{body}");
        snaps.push(name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let order = writer.join().expect("writer");
    assert!(
        snaps.len() >= 3,
        "snapshots taken during the writes: {}",
        snaps.len()
    );
    let reader = g.nbd(2);
    blocking(move || {
        let mut last = 0;
        for s in &snaps {
            let mut c = connect(&reader, &format!("seq@{s}"));
            let has = present(&mut c, blocks);
            // The writes present are exactly the first k of the write order.
            let k = order.iter().take_while(|b| has[**b as usize]).count();
            let extra: Vec<_> = order[k..].iter().filter(|b| has[**b as usize]).collect();
            assert!(
                extra.is_empty(),
                "snapshot {s} holds writes {extra:?} after a gap at {k}"
            );
            assert!(k >= last, "snapshot {s} went back in time: {k} < {last}");
            last = k;
        }
    })
    .await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_replica_is_tracked_and_resynced_with_only_what_it_missed() {
    let mut g = Group::cluster(3).await;
    let vol = g.create_volume("dr", 256 * MIB, 2).await;
    let id = vol["id"].as_str().unwrap().to_string();
    let a = g.nbd(0);
    // 64 chunks written before the outage.
    blocking(move || {
        let mut c = connect(&a, "dr");
        for chunk in 0..64u64 {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk, 8192), false)
                    .unwrap(),
                0
            );
        }
        assert_eq!(c.flush().unwrap(), 0);
        c.disconnect();
    })
    .await;
    let run_before = run_of(&g, "s3").await;
    assert_eq!(
        run_of(&g, "s3").await,
        run_before,
        "the same run answers twice"
    );
    g.kill(2).await;
    // Writes through s1 keep working: 8 chunks rewritten, a snapshot, 4 more.
    let a = g.nbd(0);
    let client = blocking(move || {
        let mut c = connect(&a, "dr");
        for chunk in 0..8u64 {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk + 100, 8192), false)
                    .unwrap(),
                0
            );
        }
        assert_eq!(c.flush().unwrap(), 0);
        c
    })
    .await;
    let shown = g.wait_status(0, "dr", "degraded").await;
    assert_eq!(shown["stale_servers"], json!(["s3"]), "{shown}");
    let (status, body) = g
        .post(1, "/v1/volumes/dr/snapshots", json!({"name": "during"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let client = blocking(move || {
        let mut c = client;
        for chunk in 8..12u64 {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk + 200, 8192), true)
                    .unwrap(),
                0
            );
        }
        c
    })
    .await;
    // What the outage missed: every chunk-layer written since, on chunks that s3 holds.
    let missed_marks: u64 = {
        let mut n = 0;
        for i in [0, 1] {
            let m = g.get(i, &format!("/internal/v1/volumes/{id}/missed")).await;
            n += m
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["remaining"].as_u64().unwrap())
                .sum::<u64>();
        }
        n
    };
    assert!(
        (1..=12).contains(&missed_marks),
        "marks for at most the 12 chunks written: {missed_marks}"
    );
    let used_before = used_on(&g, 0, &id).await + used_on(&g, 1, &id).await;
    g.restart(2).await;
    assert_ne!(
        run_of(&g, "s3").await,
        run_before,
        "a restarted server names a new run"
    );
    g.wait_status(0, "dr", "healthy").await;
    // Only the missed chunks moved: s3 holds what it had plus at most the 12 rewritten chunks.
    let s3 = used_on(&g, 2, &id).await;
    assert!(
        s3 <= used_before,
        "s3 holds no more than the others: {s3} > {used_before}"
    );
    for target in ["dr", "dr@during"] {
        let report = g.verify(1, target, false).await;
        assert_eq!(report["mismatches"], json!([]), "{target}: {report}");
    }
    // Reads through the returned server see the newest data.
    let c3 = g.nbd(2);
    blocking(move || {
        let mut c = connect(&c3, "dr");
        assert!(c.read(0, 8192).unwrap().unwrap() == pattern(100, 8192));
        assert!(c.read(9 * CHUNK, 8192).unwrap().unwrap() == pattern(209, 8192));
        assert!(c.read(20 * CHUNK, 8192).unwrap().unwrap() == pattern(20, 8192));
        let mut s = connect(&c3, "dr@during");
        assert!(s.read(9 * CHUNK, 8192).unwrap().unwrap() == pattern(9, 8192));
        client.disconnect();
    })
    .await;
    g.stop().await;
}

/// A replica that crashes and is back before the client's next flush has lost the writes it
/// had not flushed, and does not know it. The gateway does (the connection they went over
/// dropped): reads keep returning what the client wrote, the next flush succeeds and records
/// what was lost, and resync makes the replica identical again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unflushed_writes_a_crashed_replica_lost_are_found_and_resynced() {
    // Enough chunks that some are read from s3 first (about one in six is placed on s2 and
    // s3 with s3 ranked first).
    const CHUNKS: u64 = 64;
    let mut g = Group::cluster(3).await;
    g.create_volume("lw", CHUNKS * CHUNK, 2).await;
    let written = |chunk: u64| [pattern(chunk, 8192), pattern(chunk + 100, 8192)].concat();
    let a = g.nbd(0);
    let client = blocking(move || {
        let mut c = connect(&a, "lw");
        for chunk in 0..CHUNKS {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk, 8192), false)
                    .unwrap(),
                0
            );
        }
        assert_eq!(c.flush().unwrap(), 0);
        // Into blocks the first flush did not map: the crash test hook loses unflushed maps,
        // not the bytes of blocks already mapped.
        for chunk in 0..CHUNKS {
            let data = pattern(chunk + 100, 8192);
            assert_eq!(c.write(chunk * CHUNK + 8192, &data, false).unwrap(), 0);
        }
        c
    })
    .await;
    g.crash(2).await;
    g.restart(2).await;
    // s3 did lose writes: its copies now differ from the others.
    let report = g.verify(1, "lw", false).await;
    assert_ne!(report["mismatches"], json!([]), "{report}");
    // Reads through s1 return what the client wrote, however often they are repeated (a
    // read that reached s3's copy would return the first version).
    let client = blocking(move || {
        let mut c = client;
        for _ in 0..3 {
            // Two chunks per read: the gateway reads them at once, so the first read to reach
            // s3 after its restart races another.
            for chunk in (0..CHUNKS).step_by(2) {
                let got = c
                    .read(chunk * CHUNK, (CHUNK + 16384) as u32)
                    .unwrap()
                    .unwrap();
                let mut want = written(chunk);
                want.resize(CHUNK as usize, 0);
                want.extend(written(chunk + 1));
                assert!(
                    got == want,
                    "chunk {chunk} or the next reads an old version"
                );
            }
        }
        assert_eq!(c.flush().unwrap(), 0);
        c
    })
    .await;
    g.wait_status(0, "lw", "healthy").await;
    let report = g.verify(1, "lw", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    let c3 = g.nbd(2);
    blocking(move || {
        let mut c = connect(&c3, "lw");
        for chunk in 0..CHUNKS {
            let got = c.read(chunk * CHUNK, 16384).unwrap().unwrap();
            assert!(got == written(chunk), "chunk {chunk} through s3");
        }
        client.disconnect();
    })
    .await;
    g.stop().await;
}

/// NBD multi-conn: a flush on one connection makes durable what every connection to the same
/// server wrote, on every replica: a replica crashed right after it loses none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_on_one_connection_covers_the_writes_of_another() {
    const CHUNKS: u64 = 16;
    let mut g = Group::cluster(3).await;
    g.create_volume("mc", CHUNKS * CHUNK, 2).await;
    let a = g.nbd(0);
    blocking(move || {
        let mut writer = connect(&a, "mc");
        let mut flusher = connect(&a, "mc");
        for chunk in 0..CHUNKS {
            let data = pattern(chunk + 7, 8192);
            assert_eq!(writer.write(chunk * CHUNK, &data, false).unwrap(), 0);
        }
        assert_eq!(flusher.flush().unwrap(), 0);
        writer.disconnect();
        flusher.disconnect();
    })
    .await;
    g.crash(2).await;
    g.restart(2).await;
    let report = g.verify(1, "mc", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    let c3 = g.nbd(2);
    blocking(move || {
        let mut c = connect(&c3, "mc");
        for chunk in 0..CHUNKS {
            let got = c.read(chunk * CHUNK, 8192).unwrap().unwrap();
            assert!(got == pattern(chunk + 7, 8192), "chunk {chunk} through s3");
        }
        c.disconnect();
    })
    .await;
    g.stop().await;
}

/// A power failure takes unflushed writes from a chunk's last current replica: nothing can
/// bring them back, so a flush must fail — on every connection that may have written them, not
/// only on the first to flush after the loss. Here one connection flushes first (and fails);
/// the other, whose write was lost, must not then be told its writes are durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_unflushed_write_fails_the_flush_of_every_connection() {
    let name = "lost-mc";
    let (mut g, replicas, gateway) = one_chunk_volume(name).await;
    let (last, down) = (replicas[0].0, replicas[1].0);
    let addr = g.nbd(gateway);
    let (mut first, mut second) =
        blocking(move || (connect(&addr, name), connect(&addr, name))).await;
    g.kill(down).await;
    // The first connection's write finds the other replica gone and has it marked stale.
    let (first, second) = blocking(move || {
        assert_eq!(first.write(0, &pattern(1, 4096), false).unwrap(), 0);
        assert_eq!(first.flush().unwrap(), 0);
        // The second connection's write is on the last current replica only, not flushed.
        assert_eq!(second.write(65536, &pattern(2, 4096), false).unwrap(), 0);
        (first, second)
    })
    .await;
    g.crash(last).await;
    g.restart(last).await;
    blocking(move || {
        let (mut first, mut second) = (first, second);
        assert_ne!(first.flush().unwrap(), 0, "the first flush after the loss");
        let flushed = second.flush().unwrap();
        let got = second.read(65536, 4096).unwrap();
        assert!(
            flushed != 0 || got.as_deref() == Ok(&pattern(2, 4096)[..]),
            "the second connection's write was lost and its flush succeeded"
        );
        first.disconnect();
        second.disconnect();
    })
    .await;
    g.restart(down).await;
    g.stop().await;
}

/// The same loss found by a read: the last current replica restarted with an unflushed write
/// lost. The read is still answered from that replica (what it holds is all there is), and the
/// loss fails the next flush instead (before, the read failed with EIO).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_that_finds_a_lost_unflushed_write_is_answered() {
    let name = "lost-read";
    let (mut g, replicas, gateway) = one_chunk_volume(name).await;
    let (last, down) = (replicas[0].0, replicas[1].0);
    let addr = g.nbd(gateway);
    let mut c = blocking(move || connect(&addr, name)).await;
    g.kill(down).await;
    let mut c = blocking(move || {
        assert_eq!(c.write(0, &pattern(1, 4096), false).unwrap(), 0);
        assert_eq!(c.flush().unwrap(), 0);
        assert_eq!(c.write(65536, &pattern(2, 4096), false).unwrap(), 0);
        c
    })
    .await;
    g.crash(last).await;
    g.restart(last).await;
    blocking(move || {
        let got = c.read(0, 4096).unwrap();
        assert_eq!(
            got.as_deref(),
            Ok(&pattern(1, 4096)[..]),
            "the flushed write"
        );
        assert_ne!(c.flush().unwrap(), 0, "the flush after the loss");
        c.disconnect();
    })
    .await;
    g.restart(down).await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_and_repairs_a_damaged_replica() {
    let g = Group::start(2).await;
    g.one_cluster().await;
    let vol = g.create_volume("scrub", 16 * MIB, 2).await;
    let id: Value = vol["id"].clone();
    let a = g.nbd(0);
    blocking(move || {
        let mut c = connect(&a, "scrub");
        for chunk in 0..4u64 {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk, 4096), true).unwrap(),
                0
            );
        }
    })
    .await;
    assert_eq!(g.verify(0, "scrub", false).await["mismatches"], json!([]));
    // Damage s2's copy of chunk 2 behind the gateways' back, as a faulty peer would: a write
    // straight to its wire port.
    // The write must name the volume's routing epoch, which the API does not show: a replica
    // refuses every other (the first epochs are tried in turn).
    let wire = wire_to(&g, "s2").await;
    let write = |epoch| strata_wire::Request::Write {
        volume: serde_json::from_value(id.clone()).unwrap(),
        layer: serde_json::from_value(vol["head"].clone()).unwrap(),
        offset: 2 * CHUNK + 8192,
        data: vec![0xee; 4096].into(),
        fua: true,
        missed: Vec::new(),
        hold: None,
        epoch,
        // As the chunk's current change: the damage cannot be told from it by generation.
        generation: 1,
    };
    let mut refused = 0;
    for epoch in 0..64 {
        match wire.call(write(epoch)).await.unwrap() {
            strata_wire::Response::Applied { .. } => break,
            strata_wire::Response::Error { code, .. } => {
                assert_eq!(code, strata_wire::ErrorCode::NotReady);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused < 64, "no routing epoch was admitted");
    let report = g.verify(0, "scrub", false).await;
    let bad = report["mismatches"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!(bad[0]["chunk"], 2);
    assert_eq!(bad[0]["repaired"], false);
    let repaired = g.verify(1, "scrub", true).await;
    assert_eq!(repaired["mismatches"][0]["repaired"], true, "{repaired}");
    assert_eq!(g.verify(0, "scrub", false).await["mismatches"], json!([]));
    // Both gateways now read the same bytes (which copy won is the repair's choice).
    let (a, b) = (g.nbd(0), g.nbd(1));
    blocking(move || {
        let x = connect(&a, "scrub")
            .read(2 * CHUNK, 16384)
            .unwrap()
            .unwrap();
        let y = connect(&b, "scrub")
            .read(2 * CHUNK, 16384)
            .unwrap()
            .unwrap();
        assert!(x == y);
    })
    .await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_minority_cannot_acknowledge_writes() {
    let g = Group::cluster(3).await;
    g.create_volume("split", 64 * MIB, 2).await;
    let (a, c) = (g.nbd(0), g.nbd(2));
    // s3 is cut off from s1 and s2; clients still reach both sides.
    g.cut(2, &[0, 1]);
    // Through s3 no write can be acknowledged: every chunk has a replica on the other side,
    // and s3 cannot reach a quorum to declare it stale.
    let minority = blocking(move || {
        let mut c = connect(&c, "split");
        let mut acked = Vec::new();
        for chunk in 0..4u64 {
            if c.write(chunk * CHUNK, &pattern(chunk + 50, 4096), true)
                .unwrap()
                == 0
            {
                acked.push(chunk);
            }
        }
        acked
    })
    .await;
    assert_eq!(
        minority,
        Vec::<u64>::new(),
        "the minority acknowledged writes"
    );
    // The majority side keeps writing without errors (it marks s3 stale).
    blocking(move || {
        let mut c = connect(&a, "split");
        for chunk in 0..16u64 {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk, 4096), true).unwrap(),
                0
            );
        }
    })
    .await;
    let shown = g.wait_status(0, "split", "degraded").await;
    assert_eq!(shown["stale_servers"], json!(["s3"]), "{shown}");
    // Healed: s3 catches up, drops what it took from the refused writes, and all copies agree.
    g.heal();
    g.wait_status(0, "split", "healthy").await;
    assert_eq!(g.verify(1, "split", false).await["mismatches"], json!([]));
    let c = g.nbd(2);
    blocking(move || {
        let mut c = connect(&c, "split");
        for chunk in 0..16u64 {
            assert!(c.read(chunk * CHUNK, 4096).unwrap().unwrap() == pattern(chunk, 4096));
        }
    })
    .await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fio_verify_passes_while_a_replica_is_killed_and_restarted() {
    if std::process::Command::new("fio")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("fio is not installed; run .ci/run or apt-get install fio");
    }
    let mut g = Group::cluster(3).await;
    g.create_volume("fio", 128 * MIB, 2).await;
    let uri = format!("nbd://{}/fio", g.nbd(0));
    // fio writes 64 MiB at random through s1, in a rate that keeps it busy for a few seconds,
    // then reads it all back and checks every block's checksum.
    let fio = tokio::process::Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=16k",
            "--iodepth=8",
            "--size=64M",
            "--rate=16m",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--do_verify=1",
            "--output-format=json",
        ])
        .output();
    let fio = tokio::spawn(fio);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    g.kill(1).await;
    // The writes that s2 misses are noticed, and tracked.
    g.wait_status(0, "fio", "degraded").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.restart(1).await;
    let out = fio.await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    let job = &report["jobs"][0];
    assert_eq!(job["error"].as_u64(), Some(0), "{text}");
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() >= 64 << 20,
        "fio read back all it wrote"
    );
    g.wait_status(0, "fio", "healthy").await;
    let report = g.verify(2, "fio", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_reports_every_chunk_with_a_replica_it_cannot_read() {
    let mut g = Group::start(2).await;
    g.one_cluster().await;
    g.create_volume("unread", 64 * MIB, 2).await;
    g.kill(1).await;
    // Every chunk has a copy on s2; before, a chunk whose first-placed replica was s2 counted
    // as agreeing.
    let report = g.verify(0, "unread", false).await;
    let bad = report["mismatches"].as_array().unwrap();
    assert_eq!(bad.len(), 16, "{report}");
    for m in bad {
        let s2 = m["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["server"] == "s2")
            .unwrap();
        assert!(s2["error"].is_string(), "{m}");
    }
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_that_crashes_with_unflushed_writes_to_its_own_copy_gets_them_back() {
    let mut g = Group::cluster(3).await;
    g.create_volume("gw", 64 * MIB, 2).await;
    // s1 is the gateway and a replica of about two thirds of the chunks: it writes its own
    // copy directly and the other replica's over the wire, and no flush follows.
    let a = g.nbd(0);
    blocking(move || {
        let mut c = connect(&a, "gw");
        for chunk in 0..16u64 {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk + 7, 65536), false)
                    .unwrap(),
                0
            );
        }
    })
    .await;
    // A power loss of s1 loses its unflushed writes; the other replicas have them. Before,
    // nobody noticed: s1 came back `healthy` with older copies (verify found them).
    g.crash(0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.restart(0).await;
    // From the moment it is back, s1 serves what it acknowledged (from the other replicas
    // until its copies are resynced).
    let a = g.nbd(0);
    blocking(move || {
        let mut c = connect(&a, "gw");
        for chunk in 0..16u64 {
            let got = c.read(chunk * CHUNK, 65536).unwrap().unwrap();
            assert!(got == pattern(chunk + 7, 65536), "chunk {chunk} through s1");
        }
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        g.wait_status(1, "gw", "healthy").await;
        let report = g.verify(1, "gw", false).await;
        if report["mismatches"] == json!([]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_down_replica_server_shows_degraded_without_io_and_use_counts_each_chunk_once() {
    let mut g = Group::cluster(3).await;
    // No replicas asked for: two on a cluster of three servers.
    let (status, vol) = g
        .post(0, "/v1/volumes", json!({"name": "idle", "size": 64 * MIB}))
        .await;
    assert_eq!(status, 201, "{vol}");
    assert_eq!(vol["replicas"], 2, "{vol}");
    let a = g.nbd(0);
    blocking(move || {
        let mut c = connect(&a, "idle");
        for chunk in 0..16u64 {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk, 65536), false)
                    .unwrap(),
                0
            );
        }
        assert_eq!(c.flush().unwrap(), 0);
        c.disconnect();
    })
    .await;
    let shown = g.wait_status(0, "idle", "healthy").await;
    assert_eq!(shown["used_logical_bytes"], 16 * 65536, "{shown}");
    let raw = shown["used_raw_bytes"].as_u64().unwrap();
    assert!(
        (2 * 16 * 65536..=2 * 16 * 65536 + 2 * 16 * 4096 * 4).contains(&raw),
        "two copies: {shown}"
    );
    // No client I/O notices s3 go down; `volume show` must.
    g.kill(2).await;
    let killed = std::time::Instant::now();
    let shown = g.wait_status(0, "idle", "degraded").await;
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "degraded after {:?}",
        killed.elapsed()
    );
    assert_eq!(shown["stale_servers"], json!([]), "{shown}");
    assert!(shown.get("used_raw_bytes").is_none(), "unknown: {shown}");
    g.restart(2).await;
    g.wait_status(0, "idle", "healthy").await;
    g.stop().await;
}

/// A server restarted after a power failure names the chunks that may hold its unflushed writes
/// (its own marks) from the first answer it gives: a resync source that asked earlier and was
/// told "nothing left" marked it in sync with the writes it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_server_names_its_suspect_chunks_from_its_first_answer() {
    const CHUNKS: u64 = 16;
    let mut g = Group::cluster(3).await;
    let vol = g.create_volume("sc", CHUNKS * CHUNK, 3).await;
    let id = vol["id"].as_str().unwrap().to_string();
    let servers = g.get(0, "/v1/servers").await;
    let s2 = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "s2")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .unwrap();
    let a = g.nbd(0);
    blocking(move || {
        let mut c = connect(&a, "sc");
        for chunk in 0..CHUNKS {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk, 8192), false)
                    .unwrap(),
                0
            );
        }
        c.disconnect();
    })
    .await;
    g.crash(1).await;
    let url = format!("{}/internal/v1/volumes/{id}/missed", g.api(1));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                let answer = http
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .and_then(|r| r.error_for_status());
                if let Ok(r) = answer {
                    return Some(r.json::<Value>().await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        })
    };
    g.restart(1).await;
    stop.store(true, Ordering::SeqCst);
    let first = poller
        .await
        .unwrap()
        .expect("the restarted server answered");
    let own = first
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["server"] == s2.as_str())
        .map_or(0, |m| m["remaining"].as_u64().unwrap());
    assert!(
        own > 0,
        "the restarted s2 first answered that it holds no marks for itself: {first}"
    );
    g.wait_status(0, "sc", "healthy").await;
    g.stop().await;
}

/// A stale replica is fully copied and its resync source is about to declare it in sync when a
/// write routed by the old view cannot reach it: the write must reach it after all (or leave
/// it stale), not be recorded as missed just after the source counted no marks left — the
/// replica would be declared in sync without it and the mark dropped as no longer needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_missed_while_a_replica_is_declared_in_sync_reaches_it() {
    const POINT: &str = "resync::before_in_sync";
    let g = Group::cluster(3).await;
    g.create_volume("ds", CHUNK, 3).await;
    let write = |g: &Group, seed: u64| {
        let a = g.nbd(0);
        blocking(move || {
            let mut c = connect(&a, "ds");
            assert_eq!(c.write(0, &pattern(seed, 8192), true).unwrap(), 0);
            c.disconnect();
        })
    };
    write(&g, 1).await;
    // s3 misses a write and is stale.
    g.cut(2, &[0, 1]);
    write(&g, 2).await;
    g.wait_status(0, "ds", "degraded").await;
    // Its resync sources (s1 and s2) copy the chunk, then hold before the in-sync commit.
    let reached = pause_at(POINT, "ds");
    g.heal();
    wait_reached(&reached, 2, "the end of the resync").await;
    // The gateway on s1 cannot pass the next write to s3.
    g.cut(2, &[0]);
    let late = write(&g, 3);
    let late = tokio::spawn(late);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    resume(POINT, "ds");
    late.await.unwrap();
    g.heal();
    g.wait_status(0, "ds", "healthy").await;
    // s3 reads its own copy first.
    let c = g.nbd(2);
    let got = blocking(move || {
        let mut c = connect(&c, "ds");
        let got = c.read(0, 8192).unwrap().unwrap();
        c.disconnect();
        got
    })
    .await;
    assert!(
        got == pattern(3, 8192),
        "s3 was declared in sync without the last acknowledged write"
    );
    g.stop().await;
}

/// Turns the pause `point` on for volume `key` (see `strata_volume`'s `failpoint`) and
/// returns how many tasks have reached it.
fn pause_at(point: &str, key: &str) -> Arc<AtomicUsize> {
    fail::cfg(format!("{point}::{key}"), "return").unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let seen = reached.clone();
    fail::cfg_callback(format!("{point}::{key}::reached"), move || {
        seen.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    reached
}

/// Lets the tasks paused at `point` for volume `key` go on.
fn resume(point: &str, key: &str) {
    fail::remove(format!("{point}::{key}"));
}

/// Has the second of `replicas` (chunk 0's, best first) marked stale, reported by the first,
/// and waits until its resync, with nothing to copy, is held before it declares it in sync
/// (the pause `resync::before_in_sync` for volume `name`; `resume` lets it go on).
async fn stale_with_declaration_paused(
    g: &Group,
    id: strata_types::VolumeId,
    replicas: &[(usize, strata_types::ServerId)],
    name: &str,
) {
    let declaring = pause_at("resync::before_in_sync", name);
    let (status, body) = g
        .post(
            replicas[0].0,
            &format!("/v1/internal/volumes/{id}/stale"),
            json!({ "server": replicas[1].1, "reporter": replicas[0].1 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_reached(&declaring, 1, "the stale replica's resync").await;
}

/// Waits until `n` tasks reached the fail point `reached` counts for.
async fn wait_reached(reached: &AtomicUsize, n: usize, what: &str) {
    let deadline = std::time::Instant::now() + crate::harness::WAIT;
    while reached.load(Ordering::SeqCst) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway is cut off (it might as well have died) after a chunk's current replica took a
/// write and before the stale replica (which lags behind it) got it: nothing was
/// acknowledged, but one copy holds the write and the other does not. The current replica,
/// which sees the gateway go with the write unflushed, must have the stale one copy the chunk
/// again, also if it is declared in sync meanwhile, so the two never end up different while
/// the volume says `healthy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_write_lost_with_its_gateway_is_copied_again() {
    lagging_write_lost_with_its_gateway(false).await;
}

/// The same, with the gateway alive and answering the replicas while it cannot reach them:
/// the current replica cannot leave the record to it (the gateway could not make one), so it
/// has the lagging replica copy the chunk all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_write_lost_while_its_gateway_lives_on_is_copied_again() {
    lagging_write_lost_with_its_gateway(true).await;
}

/// A write reaches a chunk's current replica, then its gateway is cut off from both replicas
/// (`one_way`: it still answers them) before it writes to the lagging one.
async fn lagging_write_lost_with_its_gateway(one_way: bool) {
    const IN_SYNC: &str = "resync::before_in_sync";
    const LAGGING: &str = "gateway::before_lagging";
    // Fail points are process-wide and keyed by volume name: the two variants run at once.
    let name = if one_way { "lg-one-way" } else { "lg" };
    let g = Group::cluster(3).await;
    let vol = g.create_volume(name, CHUNK, 2).await;
    let id: strata_types::VolumeId = serde_json::from_value(vol["id"].clone()).unwrap();
    let (replicas, gateway) = chunk_zero_replicas(&g, id).await;
    let (current, stale) = (replicas[0].0, replicas[1].0);
    let write = |addr: String, seed: u64, fua: bool| {
        blocking(move || {
            let mut c = connect(&addr, name);
            let done = c.write(0, &pattern(seed, 8192), fua);
            c.disconnect();
            done
        })
    };
    assert_eq!(write(g.nbd(gateway), 1, true).await.unwrap(), 0);
    // The second replica is stale, with nothing to copy; its declaration in sync waits.
    stale_with_declaration_paused(&g, id, &replicas, name).await;
    // The next write reaches the current replica; its gateway dies before the stale one.
    let lagging = pause_at(LAGGING, name);
    let lost = tokio::spawn(write(g.nbd(gateway), 2, false));
    wait_reached(&lagging, 1, "the write to the lagging replica").await;
    // The gateway is cut off from both replicas: its connections close with the write
    // unflushed; it fails the write.
    if one_way {
        g.cut_from(gateway, &[current, stale]);
    } else {
        g.cut(gateway, &[current, stale]);
    }
    resume(LAGGING, name);
    let _ = lost.await;
    // The current replica sees the gateway go and records the write as missed by the stale
    // one while its declaration in sync, counted before, still waits: that declaration must
    // not commit, and the mark must be there for the next one.
    let url = format!("/internal/v1/volumes/{id}/missed");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let marks = g.get(current, &url).await;
        let server = serde_json::to_value(replicas[1].1).unwrap();
        if marks
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["server"] == server)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the current replica recorded no mark for the stale one: {marks}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    resume(IN_SYNC, name);
    g.heal();
    g.wait_status(current, name, "healthy").await;
    let report = g.verify(current, name, false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}

/// A write reaches a chunk's current replica, and before it reaches the lagging one, that one
/// is declared in sync and a snapshot is taken (the gateway's pause, held up by the write,
/// times out: it is not waited for). The lagging replica refuses the write's old routing
/// epoch, so the write is routed again, by the new view, into the new head of both replicas:
/// the current replica's copy of the snapshot holds it, the other's does not. The gateway must
/// have that recorded, so that the snapshot's copies end up the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_routed_again_across_a_snapshot_leaves_its_copies_the_same() {
    const IN_SYNC: &str = "resync::before_in_sync";
    const LAGGING: &str = "gateway::before_lagging";
    let name = "across";
    let (g, replicas, gateway) = one_chunk_volume(name).await;
    let id: strata_types::VolumeId =
        serde_json::from_value(g.get(0, &format!("/v1/volumes/{name}")).await["id"].clone())
            .unwrap();
    let (current, lagging) = (replicas[0].0, replicas[1].0);
    assert_eq!(durable_write(g.nbd(gateway), name, 0, 1).await, 0);
    // The second replica is stale, with nothing to copy; its declaration in sync waits.
    stale_with_declaration_paused(&g, id, &replicas, name).await;
    // The next write reaches the current replica and waits before the lagging one.
    let paused = pause_at(LAGGING, name);
    let routed_again = tokio::spawn(durable_write(g.nbd(gateway), name, 0, 2));
    wait_reached(&paused, 1, "the write to the lagging replica").await;
    // The lagging replica is declared in sync (the routing epoch moves), and a snapshot is
    // taken while the write is still on its way.
    resume(IN_SYNC, name);
    g.wait_status(current, name, "healthy").await;
    let (status, body) = g
        .post(
            current,
            &format!("/v1/volumes/{name}/snapshots"),
            json!({"name": "snap"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A write of the new epoch reaches the formerly lagging replica (elsewhere in the chunk),
    // which then refuses the held one's old epoch.
    assert_eq!(durable_write(g.nbd(current), name, 65536, 3).await, 0);
    resume(LAGGING, name);
    assert_eq!(routed_again.await.unwrap(), 0, "the write is acknowledged");
    g.wait_status(lagging, name, "healthy").await;
    let report = g.verify(current, &format!("{name}@snap"), false).await;
    assert_eq!(report["mismatches"], json!([]), "the snapshot: {report}");
    let report = g.verify(current, name, false).await;
    assert_eq!(report["mismatches"], json!([]), "the head: {report}");
    g.stop().await;
}

/// A write to a chunk's second replica is held up there, after it was admitted, past its
/// gateway's patience: the gateway marks that replica stale and acknowledges through the
/// first, and the client writes the blocks again while the second is still counted down. When
/// resync copies the chunk over, the held-up write must land before the copy, not on top of it:
/// else the second replica ends up with the older write and says it is in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_held_up_at_a_replica_never_lands_on_a_later_copy() {
    const APPLY: &str = "replica::before_apply";
    let name = "held";
    let (g, replicas, gateway) = one_chunk_volume(name).await;
    let second = replicas[1].1;
    let write = |addr: String, seed: u64| durable_write(addr, name, 0, seed);
    assert_eq!(write(g.nbd(gateway), 1).await, 0);
    // The next write to the second replica waits there 9 s, well past the gateway's 5 s.
    let held = std::time::Instant::now();
    fail::cfg(format!("{APPLY}::{name}@{second}"), "1*return(9000)").unwrap();
    assert_eq!(
        write(g.nbd(gateway), 2).await,
        0,
        "acknowledged through the first"
    );
    assert!(
        held.elapsed() < Duration::from_secs(9),
        "the gateway waited for the held write"
    );
    assert_eq!(write(g.nbd(gateway), 3).await, 0);
    g.wait_status(gateway, name, "healthy").await;
    // Whatever resync did meanwhile, the held write is in by now.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(held.elapsed())).await;
    fail::remove(format!("{APPLY}::{name}@{second}"));
    g.wait_status(gateway, name, "healthy").await;
    last_write_on_every_replica(&g, gateway, &replicas, name, 3).await;
    g.stop().await;
}

/// The same with the second replica stale already, and resync held back while the write is
/// held up: the gateway gives up on the lagging replica and has the first record that it
/// missed the write; the copy resync makes of it later must not end under the held-up write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_held_up_at_a_lagging_replica_never_lands_on_a_later_copy() {
    const APPLY: &str = "replica::before_apply";
    const COPY: &str = "resync::before_copy";
    let name = "held-lagging";
    let (g, replicas, gateway) = one_chunk_volume(name).await;
    let second = replicas[1].1;
    let delay = format!("{APPLY}::{name}@{second}");
    let write = |addr: String, offset: u64, seed: u64| durable_write(addr, name, offset, seed);
    assert_eq!(write(g.nbd(gateway), 0, 1).await, 0);
    // The second replica becomes stale (a write to it is held up 6 s, past its gateway's
    // patience), and its resync waits before it copies anything.
    let copying = pause_at(COPY, name);
    fail::cfg(&delay, "1*return(6000)").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(write(g.nbd(gateway), 0, 5).await, 0);
    wait_reached(&copying, 1, "the stale replica's resync").await;
    // The held write is in, and the gateway no longer counts the replica as down.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(started.elapsed())).await;
    // Now a write to it while it lags is held up 9 s; the client writes the blocks again.
    let held = std::time::Instant::now();
    fail::cfg(&delay, "1*return(9000)").unwrap();
    assert_eq!(write(g.nbd(gateway), 0, 2).await, 0);
    assert!(
        held.elapsed() < Duration::from_secs(9),
        "the gateway waited for the held write"
    );
    assert_eq!(write(g.nbd(gateway), 0, 3).await, 0);
    resume(COPY, name);
    g.wait_status(gateway, name, "healthy").await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(held.elapsed())).await;
    fail::remove(&delay);
    g.wait_status(gateway, name, "healthy").await;
    last_write_on_every_replica(&g, gateway, &replicas, name, 3).await;
    g.stop().await;
}

/// A write is held up at a chunk's only current replica (the other is stale and answering),
/// after it was admitted there, past its gateway's patience. The gateway cannot mark that
/// replica stale (it is the only in-sync copy), so the write fails, and it never goes on to the
/// lagging replica; then it lands on the current one. Before, nothing recorded that the two
/// copies now differ: the stale replica was declared in sync without it and the volume said
/// `healthy` with `verify` finding the chunk different.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_held_up_at_the_only_current_replica_reaches_the_lagging_one() {
    const APPLY: &str = "replica::before_apply";
    const IN_SYNC: &str = "resync::before_in_sync";
    let name = "held-sole";
    let (g, replicas, gateway) = one_chunk_volume(name).await;
    let vol = g.get(gateway, &format!("/v1/volumes/{name}")).await;
    let id: strata_types::VolumeId = serde_json::from_value(vol["id"].clone()).unwrap();
    let (current, lagging) = (replicas[0].1, replicas[1].1);
    assert_eq!(durable_write(g.nbd(gateway), name, 0, 1).await, 0);
    // The second replica is stale, with nothing to copy; its declaration in sync waits.
    let declaring = pause_at(IN_SYNC, name);
    let (status, body) = g
        .post(
            replicas[0].0,
            &format!("/v1/internal/volumes/{id}/stale"),
            json!({ "server": lagging, "reporter": current }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_reached(&declaring, 1, "the stale replica's resync").await;
    // The next write waits 7 s at the current replica, past the gateway's 5 s.
    let delay = format!("{APPLY}::{name}@{current}");
    fail::cfg(&delay, "1*return(7000)").unwrap();
    let held = std::time::Instant::now();
    assert_ne!(
        durable_write(g.nbd(gateway), name, 0, 2).await,
        0,
        "acknowledged without a replica that could take it or be marked stale"
    );
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(held.elapsed())).await;
    fail::remove(&delay);
    resume(IN_SYNC, name);
    g.wait_status(gateway, name, "healthy").await;
    let report = g.verify(gateway, name, false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}

/// A gateway's link to a chunk's primary drops while its write is on its way to the second
/// replica (held up there 3 s): the primary lets go of the write's hold, and an overlapping
/// write through the primary's own gateway passes the held-up one at the second replica. The
/// replicas must still end up the same (before, the primary kept the second write and the
/// second replica the first, both at the same write generation, and the volume said
/// `healthy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_hold_lost_its_connection_is_not_passed_on_another_replica() {
    const APPLY: &str = "replica::before_apply";
    let name = "cut-hold";
    let (g, replicas, gateway) = one_chunk_volume(name).await;
    let (primary, second) = (replicas[0].0, replicas[1].1);
    let write = |addr: String, seed: u64| durable_write(addr, name, 0, seed);
    assert_eq!(write(g.nbd(gateway), 1).await, 0);
    let delay = format!("{APPLY}::{name}@{second}");
    fail::cfg(&delay, "1*return(3000)").unwrap();
    let first = tokio::spawn(write(g.nbd(gateway), 2));
    // The primary has applied it under its hold; the second replica holds it up.
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Only the gateway's open connections to the primary drop: new ones (and the primary's
    // ping of the gateway) go through.
    g.cut_from(gateway, &[primary]);
    g.heal();
    let overlapping = write(g.nbd(primary), 3).await;
    let first = first.await.unwrap();
    fail::remove(&delay);
    eprintln!("first write: {first}, overlapping write: {overlapping}");
    g.wait_status(gateway, name, "healthy").await;
    let report = g.verify(gateway, name, false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}

/// A gateway dies after a chunk's primary took a write and before the second replica did.
/// The primary keeps its version: it records the chunk as missed by the second replica and
/// asks the group to mark it stale — and power-fails before that is done, after a flush has
/// made the write durable (so its activity log no longer names the chunk). Its marks for an
/// in-sync replica are needed by nobody when it comes back; what it recorded first must still
/// make the two copies the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keeper_that_crashes_before_its_replica_is_marked_stale_leaves_the_copies_the_same() {
    const APPLY: &str = "replica::before_apply";
    const MARK: &str = "incoming::before_mark_stale";
    let name = "keeper-crash";
    let (mut g, replicas, gateway) = one_chunk_volume(name).await;
    let (primary, second) = (replicas[0].0, replicas[1].1);
    let delay = format!("{APPLY}::{name}@{second}");
    fail::cfg(&delay, "1*return(5000)").unwrap();
    let keeping = pause_at(MARK, name);
    let addr = g.nbd(gateway);
    let lost = tokio::spawn(blocking(move || {
        let mut c = connect(&addr, name);
        c.write(0, &pattern(1, 8192), false)
    }));
    // The primary has applied it under its hold; the second replica holds it up.
    tokio::time::sleep(Duration::from_millis(700)).await;
    g.kill(gateway).await;
    let _ = lost.await;
    wait_reached(&keeping, 1, "the primary keeping its version").await;
    // A flush through the primary makes its copy durable.
    let addr = g.nbd(primary);
    let flushed = flush_through(addr, name).await;
    eprintln!("flush through the primary: {flushed:?}");
    g.crash(primary).await;
    resume(MARK, name);
    fail::remove(&delay);
    g.restart(gateway).await;
    g.restart(primary).await;
    g.wait_status(gateway, name, "healthy").await;
    let report = g.verify(gateway, name, false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}

/// A group of 3 servers with a volume `name` of one chunk and 2 replicas: the group, the
/// chunk's replicas best first, and the server holding none (to use as the gateway).
async fn one_chunk_volume(name: &str) -> (Group, Vec<(usize, strata_types::ServerId)>, usize) {
    let g = Group::cluster(3).await;
    let vol = g.create_volume(name, CHUNK, 2).await;
    let id: strata_types::VolumeId = serde_json::from_value(vol["id"].clone()).unwrap();
    let (replicas, gateway) = chunk_zero_replicas(&g, id).await;
    (g, replicas, gateway)
}

/// Writes 8 KiB of the pattern of `seed` at `offset` of export `name` through the NBD server at
/// `addr`, with FUA, on a connection of its own; returns the NBD error (0: done).
async fn durable_write(addr: String, name: &'static str, offset: u64, seed: u64) -> u32 {
    blocking(move || {
        let mut c = connect(&addr, name);
        let done = c.write(offset, &pattern(seed, 8192), true).unwrap();
        c.disconnect();
        done
    })
    .await
}

/// Checks that `verify` finds the copies of volume `name` the same, and that each of
/// `replicas` (of chunk 0) reads the write of `seed` at offset 0.
async fn last_write_on_every_replica(
    g: &Group,
    gateway: usize,
    replicas: &[(usize, strata_types::ServerId)],
    name: &'static str,
    seed: u64,
) {
    let report = g.verify(gateway, name, false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    for (i, _) in replicas {
        let got = read_through(g.nbd(*i), name, 0, 8192).await;
        assert!(got == pattern(seed, 8192), "server {i} lost the last write");
    }
}

/// The replicas of chunk 0 of `id` best first, and the index of the server holding none.
async fn chunk_zero_replicas(
    g: &Group,
    id: strata_types::VolumeId,
) -> (Vec<(usize, strata_types::ServerId)>, usize) {
    let holders = g.holders(id, 0, 2).await;
    let mut replicas = Vec::new();
    for i in &holders {
        replicas.push((*i, g.server_id(*i).await));
    }
    (replicas, 3 - holders[0] - holders[1])
}

/// A gateway whose own copy is stale cannot have a replica marked stale: when the second
/// replica of a chunk fails a write the first took, the write fails, and the first one's
/// copy, which holds it, must be replaced by the second's, not left different.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_one_replica_took_and_could_not_be_fenced_is_undone() {
    const IN_SYNC: &str = "resync::before_in_sync";
    let g = Group::cluster(3).await;
    let vol = g.create_volume("rs", CHUNK, 2).await;
    let id: strata_types::VolumeId = serde_json::from_value(vol["id"].clone()).unwrap();
    let (replicas, gateway) = chunk_zero_replicas(&g, id).await;
    let write = |addr: String, seed: u64| {
        blocking(move || {
            let mut c = connect(&addr, "rs");
            let done = c.write(0, &pattern(seed, 8192), true);
            c.disconnect();
            done
        })
    };
    assert_eq!(write(g.nbd(gateway), 1).await.unwrap(), 0);
    // The gateway's server is stale (for chunks it holds), and stays so for now.
    let gateway_id = g.server_id(gateway).await;
    let declaring = pause_at(IN_SYNC, "rs");
    let (status, body) = g
        .post(
            replicas[0].0,
            &format!("/v1/internal/volumes/{id}/stale"),
            json!({ "server": gateway_id, "reporter": replicas[0].1 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_reached(&declaring, 1, "the stale gateway's resync").await;
    // The first replica takes the next write, the second cannot be reached nor fenced.
    g.cut(gateway, &[replicas[1].0]);
    let failed = write(g.nbd(gateway), 2).await;
    assert!(
        !matches!(failed, Ok(0)),
        "the write was acknowledged without its second replica"
    );
    g.heal();
    resume(IN_SYNC, "rs");
    g.wait_status(replicas[0].0, "rs", "healthy").await;
    let report = g.verify(replicas[0].0, "rs", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}

/// Both replicas of some chunks lose power, one after the other, while a third server writes
/// through to them: the first to go is marked stale and the second records what it missed in
/// memory only, then goes down too, keeping the data of its overwrites but not those records.
/// After both restart the replicas must converge on one version (unflushed writes may be lost,
/// but not differently on each replica) and the volume must not say `healthy` before they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_replicas_power_failed_during_unflushed_writes_converge() {
    const CHUNKS: u64 = 48;
    let mut g = Group::cluster(3).await;
    g.create_volume("bc", CHUNKS * CHUNK, 2).await;
    let a = g.nbd(0);
    let client = blocking(move || {
        let mut c = connect(&a, "bc");
        for chunk in 0..CHUNKS {
            assert_eq!(
                c.write(chunk * CHUNK, &pattern(chunk, 8192), false)
                    .unwrap(),
                0
            );
        }
        assert_eq!(c.flush().unwrap(), 0);
        c
    })
    .await;
    g.crash(1).await;
    // Overwrites of blocks the flush mapped: a power failure of s3 keeps their bytes (the
    // crash hook loses unflushed maps, not data already placed), s2 never got them.
    let client = blocking(move || {
        let mut c = client;
        for chunk in 0..CHUNKS {
            let data = pattern(chunk + 100, 8192);
            assert_eq!(c.write(chunk * CHUNK, &data, false).unwrap(), 0);
        }
        c
    })
    .await;
    g.crash(2).await;
    g.restart(1).await;
    g.restart(2).await;
    g.wait_status(0, "bc", "healthy").await;
    let report = g.verify(0, "bc", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    let reads = futures::future::join_all((0..3).map(|i| {
        let addr = g.nbd(i);
        blocking(move || {
            let mut c = connect(&addr, "bc");
            let got: Vec<Vec<u8>> = (0..CHUNKS)
                .map(|chunk| c.read(chunk * CHUNK, 8192).unwrap().unwrap())
                .collect();
            c.disconnect();
            got
        })
    }))
    .await;
    for chunk in 0..CHUNKS as usize {
        let first = &reads[0][chunk];
        assert!(
            *first == pattern(chunk as u64, 8192) || *first == pattern(chunk as u64 + 100, 8192),
            "chunk {chunk} holds neither version"
        );
        for (i, r) in reads.iter().enumerate() {
            assert!(
                r[chunk] == *first,
                "chunk {chunk} reads differently through s{}",
                i + 1
            );
        }
    }
    client.disconnect();
    g.stop().await;
}

/// A replica whose store is put back from an old backup (taken while its server was stopped)
/// holds older copies than the others and does not know it. `verify` finds every such chunk,
/// and `--repair` keeps the copy with the newest acknowledged writes — the one with the higher
/// write generation — whichever replica is placed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_keeps_the_newest_copy_when_a_replica_is_restored_from_an_old_backup() {
    const CHUNKS: u64 = 16;
    let mut g = Group::cluster(3).await;
    g.create_volume("old", CHUNKS * CHUNK, 2).await;
    let write_all = |addr: String, seed: u64| {
        blocking(move || {
            let mut c = connect(&addr, "old");
            for chunk in 0..CHUNKS {
                let data = pattern(chunk + seed, 8192);
                assert_eq!(c.write(chunk * CHUNK, &data, false).unwrap(), 0);
            }
            assert_eq!(c.flush().unwrap(), 0);
            c.disconnect();
        })
    };
    write_all(g.nbd(0), 0).await;
    g.kill(2).await;
    let store = g.dir(2).join("store");
    let backup = g.dir(2).with_extension("backup");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let _ = std::fs::remove_dir_all(to);
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    copy(&store, &backup);
    g.restart(2).await;
    g.wait_status(0, "old", "healthy").await;
    write_all(g.nbd(0), 100).await;
    g.kill(2).await;
    copy(&backup, &store);
    g.restart(2).await;
    let report = g.verify(0, "old", false).await;
    let differ = report["mismatches"].as_array().unwrap().clone();
    // About two thirds of the chunks have a copy on s3.
    assert!(differ.len() >= 4, "{report}");
    for m in &differ {
        let s3 = m["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["server"] == "s3")
            .unwrap();
        let other = m["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["server"] != "s3")
            .unwrap();
        assert!(
            s3["generation"].as_u64() < other["generation"].as_u64(),
            "the restored copy shows an older generation: {m}"
        );
    }
    let repaired = g.verify(1, "old", true).await;
    assert!(
        repaired["mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["repaired"] == true),
        "{repaired}"
    );
    assert_eq!(g.verify(0, "old", false).await["mismatches"], json!([]));
    // Every gateway reads the newest acknowledged writes.
    for i in 0..3 {
        let addr = g.nbd(i);
        blocking(move || {
            let mut c = connect(&addr, "old");
            for chunk in 0..CHUNKS {
                let got = c.read(chunk * CHUNK, 8192).unwrap().unwrap();
                assert!(
                    got == pattern(chunk + 100, 8192),
                    "chunk {chunk} through s{} holds the old copy",
                    i + 1
                );
            }
            c.disconnect();
        })
        .await;
    }
    let _ = std::fs::remove_dir_all(&backup);
    g.stop().await;
}

/// A stale replica takes the writes made while it waits for its copy, on top of its own
/// out-of-date lower layers: after a snapshot, a trim of a block it missed and a write to part
/// of another (which keeps the rest of the block from the layer below) land differently there
/// than on the current replica. The copy of the layer it missed must leave the two copies the
/// same, every layer of them, not only the one the mark names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_to_a_stale_replica_makes_the_layers_above_the_same_too() {
    const COPY: &str = "resync::before_copy";
    let name = "layers-above";
    let (mut g, replicas, gateway) = one_chunk_volume(name).await;
    let second = replicas[1].0;
    let copying = pause_at(COPY, name);
    g.kill(second).await;
    assert_eq!(durable_write(g.nbd(gateway), name, 0, 1).await, 0);
    g.restart(second).await;
    wait_reached(&copying, 1, "the resync of the returned replica").await;
    // The gateway reaches the returned replica again before the writes that matter.
    assert_eq!(durable_write(g.nbd(gateway), name, 3 * 4096, 3).await, 0);
    let (status, body) = g
        .post(
            gateway,
            &format!("/v1/volumes/{name}/snapshots"),
            json!({"name": "before"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let addr = g.nbd(gateway);
    blocking(move || {
        let mut c = connect(&addr, name);
        assert_eq!(c.trim(4096, 4096).unwrap(), 0);
        assert_eq!(c.write(0, &pattern(2, 512), false).unwrap(), 0);
        assert_eq!(c.flush().unwrap(), 0);
        c.disconnect();
    })
    .await;
    resume(COPY, name);
    g.wait_status(gateway, name, "healthy").await;
    for target in [name.to_string(), format!("{name}@before")] {
        let report = g.verify(gateway, &target, false).await;
        assert_eq!(report["mismatches"], json!([]), "{target}: {report}");
    }
    let mut want = pattern(1, 8192);
    want[..512].copy_from_slice(&pattern(2, 512));
    want[4096..].fill(0);
    for (i, _) in &replicas {
        let got = read_through(g.nbd(*i), name, 0, 8192).await;
        assert!(
            got == want,
            "server {i} reads something else than was written"
        );
    }
    g.stop().await;
}

/// A gateway writes, unflushed, to a chunk whose only current replica is the first (the second
/// is stale and takes the write as a lagging replica). The first loses power, comes back as the
/// only in-sync copy and gives its copy, which lost the write, to the second, which is declared
/// in sync. The gateway learns of the dropped connection only at the client's flush: the second
/// is current by then, but it did not keep the write, so the flush must fail (or the write be
/// there), never succeed with the write gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_fails_when_the_only_current_copy_lost_its_writes_and_was_copied_on() {
    const IN_SYNC: &str = "resync::before_in_sync";
    const COPY: &str = "resync::before_copy";
    let name = "copied-on";
    let (mut g, replicas, gateway) = one_chunk_volume(name).await;
    let id = volume_id(&g, gateway, name).await;
    let first = replicas[0].0;
    stale_with_declaration_paused(&g, id, &replicas, name).await;
    let addr = g.nbd(gateway);
    let client = blocking(move || {
        let mut c = connect(&addr, name);
        assert_eq!(c.write(0, &pattern(1, 8192), false).unwrap(), 0);
        c
    })
    .await;
    // Back, the first has its copy given to the second (which is then copied, first): the
    // copy waits until it is recorded.
    let copying = pause_at(COPY, name);
    g.crash(first).await;
    g.restart(first).await;
    wait_reached(&copying, 1, "the copy of the first replica's version").await;
    resume(COPY, name);
    resume(IN_SYNC, name);
    g.wait_status(gateway, name, "healthy").await;
    let (flushed, read) = blocking(move || {
        let mut c = client;
        let flushed = c.flush().unwrap();
        let read = c.read(0, 8192).unwrap().unwrap();
        c.disconnect();
        (flushed, read)
    })
    .await;
    assert!(
        flushed != 0 || read == pattern(1, 8192),
        "the flush succeeded and the write is gone"
    );
    g.stop().await;
}

/// A write reaches a stale replica that is being declared in sync (its marks are sealed) and
/// does not answer in time; the gateway cannot move the routing epoch past it (the management
/// group does not answer), and the current replica refuses to record the replica as missing
/// the write, as the seal says. The write is then routed again by the view that declares the
/// replica in sync, and succeeds: it must not fail with the current replica holding it and
/// nothing saying the other lacks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_write_whose_marks_are_sealed_is_routed_again_when_the_epoch_cannot_move() {
    const IN_SYNC: &str = "resync::before_in_sync";
    const APPLY: &str = "replica::before_apply";
    const MOVE: &str = "engine::move_epoch_past";
    let name = "sealed-lagging";
    let (g, replicas, gateway) = one_chunk_volume(name).await;
    let id = volume_id(&g, gateway, name).await;
    stale_with_declaration_paused(&g, id, &replicas, name).await;
    let delay = format!("{APPLY}::{name}@{}", replicas[1].1);
    fail::cfg(&delay, "1*return(6000)").unwrap();
    let refuse = format!("{MOVE}::{name}");
    fail::cfg(&refuse, "return").unwrap();
    let write = tokio::spawn(durable_write(g.nbd(gateway), name, 0, 1));
    // Past the call's timeout at the lagging replica, the epoch move and the refused marks.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    fail::remove(&refuse);
    resume(IN_SYNC, name);
    assert_eq!(write.await.unwrap(), 0, "the write failed");
    fail::remove(&delay);
    g.wait_status(gateway, name, "healthy").await;
    last_write_on_every_replica(&g, gateway, &replicas, name, 1).await;
    g.stop().await;
}

/// The id of volume `name`, as server `i` shows it.
async fn volume_id(g: &Group, i: usize, name: &str) -> strata_types::VolumeId {
    let v = g.get(i, &format!("/v1/volumes/{name}")).await;
    serde_json::from_value(v["id"].clone()).unwrap()
}

/// Reads `len` bytes at `offset` of export `name` through the NBD server at `addr`, on a
/// connection of its own.
async fn read_through(addr: String, name: &'static str, offset: u64, len: u32) -> Vec<u8> {
    blocking(move || {
        let mut c = connect(&addr, name);
        let got = c.read(offset, len).unwrap().unwrap();
        c.disconnect();
        got
    })
    .await
}

/// A gateway that is the second replica of a chunk writes to the primary first, then to its
/// own copy, which holds the write up; a flush through another connection of the gateway
/// succeeds meanwhile (it does not cover a write still in flight). Then the gateway loses
/// power before its own copy took the write: the primary holds it, the gateway's copy does not,
/// and no flush came after it. The primary, which still held the write in order when the
/// gateway's connection went, must have the copies made the same (it keeps its version).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_does_not_cover_a_write_still_on_its_way_to_the_gateways_own_copy() {
    const APPLY: &str = "replica::before_apply";
    let name = "in-flight";
    let (mut g, replicas, _) = one_chunk_volume(name).await;
    let (primary, (gateway, gateway_id)) = (replicas[0].0, replicas[1]);
    assert_eq!(durable_write(g.nbd(gateway), name, 0, 1).await, 0);
    let delay = format!("{APPLY}::{name}@{gateway_id}");
    fail::cfg(&delay, "1*return(5000)").unwrap();
    let addr = g.nbd(gateway);
    let in_flight = tokio::spawn(blocking(move || {
        let mut c = connect(&addr, name);
        c.write(0, &pattern(2, 8192), false)
    }));
    // The primary took it; the gateway's own copy holds it up.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let addr = g.nbd(gateway);
    let flushed = flush_through(addr, name).await;
    assert!(matches!(flushed, Ok(0)), "the flush failed: {flushed:?}");
    g.crash(gateway).await;
    let _ = in_flight.await;
    fail::remove(&delay);
    g.restart(gateway).await;
    g.wait_status(primary, name, "healthy").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        g.wait_status(primary, name, "healthy").await;
        let report = g.verify(primary, name, false).await;
        if report["mismatches"] == json!([]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    g.stop().await;
}

/// Flushes export `name` through the NBD server at `addr` on a connection of its own.
async fn flush_through(addr: String, name: &'static str) -> std::io::Result<u32> {
    blocking(move || {
        let mut c = connect(&addr, name);
        let flushed = c.flush();
        c.disconnect();
        flushed
    })
    .await
}
