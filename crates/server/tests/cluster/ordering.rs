//! Overlapping requests in flight together, from one connection and from two gateways at once:
//! whichever lands last is the clients' race, but every replica must agree on it.

use crate::harness::{blocking, connect, Group};
use serde_json::json;

const MIB: u64 = 1 << 20;
/// The range the pairs fall in: four chunks, so that most pairs overlap others too.
const SPAN: u64 = 16 * MIB;

/// Runs `scripts/overlap.py` against export `vol` of `addr`: `pairs` pairs of overlapping
/// requests sent back to back, up to 16 pairs in flight.
async fn overlap(addr: String, vol: &str, seed: u64, pairs: u32) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/cluster/scripts/overlap.py"
    );
    let uri = format!("nbd://{addr}/{vol}");
    let out = blocking(move || {
        std::process::Command::new("/usr/bin/python3")
            .args([script, &uri, &seed.to_string(), &pairs.to_string()])
            .arg(SPAN.to_string())
            .output()
            .expect("run overlap.py (needs python3-libnbd)")
    })
    .await;
    assert!(
        out.status.success(),
        "overlap.py against {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads `SPAN` bytes of `vol` through every server and checks they agree, then has `verify`
/// compare the replicas chunk by chunk.
async fn assert_replicas_agree(g: &Group, vol: &str) {
    let mut images = Vec::new();
    for i in 0..3 {
        let (addr, vol) = (g.nbd(i), vol.to_string());
        images.push(
            blocking(move || {
                let mut c = connect(&addr, &vol);
                let mut image = Vec::new();
                for m in 0..SPAN / MIB {
                    image.extend(c.read(m * MIB, MIB as u32).unwrap().unwrap());
                }
                c.disconnect();
                image
            })
            .await,
        );
    }
    for i in 1..3 {
        let differ = (0..SPAN as usize / 4096)
            .filter(|b| images[0][b * 4096..(b + 1) * 4096] != images[i][b * 4096..(b + 1) * 4096])
            .count();
        assert_eq!(
            differ,
            0,
            "4 KiB blocks that read differently through s1 and s{}",
            i + 1
        );
    }
    let report = g.verify(0, vol, false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    let shown = g.get(0, &format!("/v1/volumes/{vol}")).await;
    assert_eq!(shown["status"], "healthy", "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_requests_on_one_connection_leave_the_replicas_identical() {
    let g = Group::cluster(3).await;
    g.create_volume("ov", 64 * MIB, 2).await;
    overlap(g.nbd(0), "ov", 1, 2000).await;
    assert_replicas_agree(&g, "ov").await;
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_requests_through_two_gateways_leave_the_replicas_identical() {
    let g = Group::cluster(3).await;
    g.create_volume("ov2", 64 * MIB, 2).await;
    tokio::join!(
        overlap(g.nbd(0), "ov2", 2, 1000),
        overlap(g.nbd(1), "ov2", 3, 1000),
        overlap(g.nbd(2), "ov2", 4, 1000),
    );
    assert_replicas_agree(&g, "ov2").await;
    g.stop().await;
}
