//! Random 4 KiB read throughput at the head with 0 and with 64 snapshots below it.
//! `cargo run --release -p strata-store --example snapshot_reads`

#![allow(clippy::unwrap_used)]

use std::time::Instant;
use strata_store::{LayerId, Store, StoreOptions, VolumeId};

fn iops(snapshots: usize) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    let vol = VolumeId::new_random();
    let size = 256u64 << 20;
    s.create_volume(vol, size, LayerId::new_random()).unwrap();
    let buf = vec![7u8; 1 << 20];
    for off in (0..size).step_by(buf.len()) {
        s.write(vol, off, &buf, false).unwrap();
    }
    for i in 0..snapshots {
        s.snapshot(vol, LayerId::new_random()).unwrap();
        // a few scattered writes per snapshot, like a live VM
        s.write(vol, (i as u64 * 7919 * 4096) % size, &buf[..4096], false)
            .unwrap();
    }
    let mut x: u64 = 88172645463325252;
    let mut b = vec![0u8; 4096];
    let n = 300_000;
    let t = Instant::now();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.read(vol, None, (x % (size / 4096)) * 4096, &mut b)
            .unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let base = iops(0);
    let deep = iops(64);
    println!(
        "0 snapshots: {base:.0} IOPS; 64 snapshots: {deep:.0} IOPS; ratio {:.2}",
        deep / base
    );
}
