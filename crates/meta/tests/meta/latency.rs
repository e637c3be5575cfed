//! What one single-voter write costs on this machine, end to end through `Meta::write`.

use crate::harness::{create_volume, n, record};
use std::time::{Duration, Instant};
use strata_meta::{Command, CommandOutput, Meta};
use strata_types::LayerId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_write_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = "http://127.0.0.1:1".to_string();
    let meta = Meta::open(dir.path(), 1, addr.clone()).await.expect("open");
    meta.bootstrap(record("s1", 1, &addr))
        .await
        .expect("bootstrap");
    let CommandOutput::Volume(vol) = meta
        .write(create_volume("db", 1 << 30))
        .await
        .expect("create")
    else {
        panic!("unexpected output")
    };
    let mut head = vol.layers[0];
    let mut times: Vec<Duration> = Vec::with_capacity(200);
    for i in 0..200 {
        let new_head = LayerId::new_random();
        let cmd = Command::CreateSnapshot {
            volume: n("db"),
            name: n(&format!("s{i}")),
            frozen: head,
            new_head,
            now_ms: i,
        };
        let start = Instant::now();
        let before = *meta.subscribe().borrow();
        meta.write(cmd).await.expect("snapshot");
        times.push(start.elapsed());
        let after = *meta.subscribe().borrow();
        assert!(
            after > before,
            "applied index did not move: {before} -> {after}"
        );
        head = new_head;
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];
    println!(
        "single-voter write latency over 200 snapshot creates: p50 {p50:?}, p99 {p99:?}, max {:?}",
        times[times.len() - 1]
    );
    assert!(
        p50 < Duration::from_millis(100),
        "p50 {p50:?} is far too slow"
    );
    meta.shutdown().await;
}
