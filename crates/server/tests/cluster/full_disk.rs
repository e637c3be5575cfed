//! A server whose data filesystem fills up: clients get ENOSPC for new data only, the server
//! goes on serving, restarts, and takes new data again once a volume is deleted; a volume
//! larger than its filesystem's largest file is refused at create. The data directory is a
//! loop-mounted ext4 made by the test (root and `mkfs.ext4` needed; a test that cannot make
//! one says why and does nothing).

use crate::harness::{blocking, connect, Group, SmallFs};
use serde_json::json;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;
/// NBD's ENOSPC.
const ENOSPC: u32 = 28;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_data_filesystem_refuses_new_data_only_and_a_delete_makes_room() {
    let mut mounted = Vec::new();
    let mut skip = None;
    let mut g = Group::start_with(1, |_, dir| match SmallFs::mount(dir, 128) {
        Ok(fs) => mounted.push(fs),
        Err(why) => skip = Some(why),
    })
    .await;
    if let Some(why) = skip {
        eprintln!("SKIPPED: cannot make a small ext4 filesystem for this test: {why}");
        g.stop().await;
        return;
    }

    // Larger than ext4's largest file (16 TiB): refused at create, naming the server.
    let (status, body) = g
        .post(
            0,
            "/v1/volumes",
            json!({"name": "huge", "size": 20 * TIB, "replicas": 1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body.to_string();
    assert!(msg.contains("server s1") && msg.contains("16TiB"), "{msg}");

    g.create_volume("fill", 512 * MIB, 1).await;
    g.create_volume("other", 512 * MIB, 1).await;
    let a = g.nbd(0);
    let written = blocking(move || {
        let mut other = connect(&a, "other");
        assert_eq!(other.write(0, &[7; 1 << 20], false).unwrap(), 0);
        assert_eq!(other.flush().unwrap(), 0);
        let mut c = connect(&a, "fill");
        let mut written = 0u64;
        loop {
            assert!(
                written < 512 * MIB,
                "512 MiB went into a 128 MiB filesystem"
            );
            match c.write(written, &[9; 1 << 20], false).unwrap() {
                0 => written += MIB,
                e => {
                    assert_eq!(e, ENOSPC, "a write to a full filesystem");
                    break;
                }
            }
            if written.is_multiple_of(8 * MIB) {
                assert_eq!(c.flush().unwrap(), 0, "flush at {written}");
            }
        }
        // What was acknowledged is flushed and reads back; overwrites still go in.
        assert_eq!(c.flush().unwrap(), 0);
        assert!(written >= 32 * MIB, "full after {written} bytes");
        for off in (0..written).step_by(MIB as usize) {
            assert_eq!(c.read(off, 1 << 20).unwrap().unwrap(), vec![9; 1 << 20]);
        }
        assert_eq!(c.write(0, &[10; 1 << 20], false).unwrap(), 0);
        assert_eq!(c.flush().unwrap(), 0);
        c.disconnect();
        // The other volume reads and overwrites, but takes no new data.
        assert_eq!(other.read(0, 1 << 20).unwrap().unwrap(), vec![7; 1 << 20]);
        assert_eq!(other.write(0, &[8; 1 << 20], true).unwrap(), 0);
        assert_eq!(other.write(64 * MIB, &[8; 1 << 20], false).unwrap(), ENOSPC);
        assert_eq!(other.flush().unwrap(), 0);
        other.disconnect();
        written
    })
    .await;

    // A restart on the full filesystem works.
    g.kill(0).await;
    g.restart(0).await;
    g.wait_status(0, "fill", "healthy").await;
    let a = g.nbd(0);
    blocking(move || {
        let mut c = connect(&a, "fill");
        assert_eq!(c.read(0, 1 << 20).unwrap().unwrap(), vec![10; 1 << 20]);
        let last = written - MIB;
        assert_eq!(c.read(last, 1 << 20).unwrap().unwrap(), vec![9; 1 << 20]);
        c.disconnect();
    })
    .await;

    // Deleting a volume frees its space: new data goes in again without a restart. (The
    // server notices the reader's disconnect a moment later: until then the delete is refused
    // as the volume is open.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = g
            .call(0, reqwest::Method::DELETE, "/v1/volumes/fill", None)
            .await;
        let open = status == 409 && body.to_string().contains("is open by");
        if !open || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 204, "delete on a full filesystem: {body}");
    let a = g.nbd(0);
    blocking(move || {
        let mut other = connect(&a, "other");
        assert_eq!(other.read(0, 1 << 20).unwrap().unwrap(), vec![8; 1 << 20]);
        for i in 0..16u64 {
            let off = 64 * MIB + i * MIB;
            assert_eq!(other.write(off, &[11; 1 << 20], false).unwrap(), 0);
        }
        assert_eq!(other.flush().unwrap(), 0);
        assert_eq!(
            other.read(79 * MIB, 1 << 20).unwrap().unwrap(),
            vec![11; 1 << 20]
        );
        other.disconnect();
    })
    .await;
    g.stop().await;
    drop(mounted);
}

/// One replica server of a replicas=2 volume runs out of space while a client writes: it is
/// treated as a failed replica (marked stale, the writes go on to the other copy), so the
/// client sees no error and the copies never differ unknown to the volume; once the disk has
/// room again, resync brings the replica back and `verify` finds the copies identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_disk_fills_is_resynced_and_never_differs() {
    let mut mounted = Vec::new();
    let mut skip = None;
    let g = Group::cluster_with(3, |i, dir| {
        if i == 2 {
            match SmallFs::mount(dir, 128) {
                Ok(fs) => mounted.push(fs),
                Err(why) => skip = Some(why),
            }
        }
    })
    .await;
    if let Some(why) = skip {
        eprintln!("SKIPPED: cannot make a small ext4 filesystem for this test: {why}");
        g.stop().await;
        return;
    }
    let vol = g.create_volume("big", 1024 * MIB, 2).await;
    let id: strata_types::VolumeId = serde_json::from_value(vol["id"].clone()).unwrap();
    // The leading chunks written below hold `SHARE` chunks on s3, wherever placement puts them
    // (a fixed range gives s3 anywhere from half to nine tenths of it).
    const SHARE: usize = 16;
    let mut chunks = 0u64;
    let mut held = 0;
    while held < SHARE {
        held += usize::from(g.holders(id, chunks, 2).await.contains(&2));
        chunks += 1;
    }
    // Room the test gives back later: with it, s3's share (64 MiB) does not fit; without it,
    // it does, with room to spare for metadata and the store's reserve.
    let ballast = g.dir(2).join("ballast");
    let room = {
        let fs = rustix::fs::statvfs(g.dir(2)).unwrap();
        fs.f_bavail * fs.f_frsize
    };
    std::fs::write(&ballast, vec![1u8; (room - 32 * MIB) as usize]).unwrap();
    let a = g.nbd(0);
    let failed = blocking(move || {
        let mut c = connect(&a, "big");
        let mut failed = Vec::new();
        for mib in 0..chunks * 4 {
            let e = c
                .write(mib * MIB, &[mib as u8 | 1; 1 << 20], false)
                .unwrap();
            if e != 0 {
                failed.push((mib, e));
            }
        }
        if c.flush().unwrap() != 0 {
            failed.push((u64::MAX, 0));
        }
        c.disconnect();
        failed
    })
    .await;
    assert_eq!(failed, vec![], "writes the client saw fail");
    let shown = g.get(0, "/v1/volumes/big").await;
    assert_ne!(
        shown["status"], "healthy",
        "s3's disk never filled: {shown}"
    );
    std::fs::remove_file(&ballast).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let shown = g.get(0, "/v1/volumes/big").await;
        if shown["status"] == "healthy" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not healthy 60 s after the disk had room again: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = g.verify(0, "big", false).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    g.stop().await;
}
