//! Error handling, crash consistency, merge restart and concurrency tests.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_store::{ExtentKind, LayerId, Store, StoreError, StoreOptions, VolumeId};

const MIB: u64 = 1 << 20;

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

fn fill(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ (i / 4096) as u8 ^ (i % 253) as u8)
        .collect()
}

fn read(s: &Store, vol: VolumeId, at: Option<LayerId>, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0x55; len];
    s.read(vol, at, off, &mut b).unwrap();
    b
}

fn layer_files(dir: &std::path::Path, vol: VolumeId) -> usize {
    std::fs::read_dir(dir.join("volumes").join(vol.to_string()))
        .unwrap()
        .count()
}

#[test]
fn errors_are_reported_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    let (vol, head) = (VolumeId::new_random(), LayerId::new_random());
    assert!(matches!(
        s.create_volume(vol, 1000, head),
        Err(StoreError::InvalidSize(1000))
    ));
    assert!(matches!(
        s.create_volume(vol, 0, head),
        Err(StoreError::InvalidSize(0))
    ));
    s.create_volume(vol, 8 * MIB, head).unwrap();
    assert!(matches!(
        s.create_volume(vol, 8 * MIB, head),
        Err(StoreError::VolumeExists(_))
    ));
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        s.read(vol, None, 8 * MIB - 512, &mut buf),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        s.read(vol, None, u64::MAX - 10, &mut buf),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        s.write(vol, 8 * MIB, &buf, false),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        s.write_zeroes(vol, 1, u64::MAX, false),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        s.trim(vol, 8 * MIB, 1),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        s.allocation(vol, None, u64::MAX, 2),
        Err(StoreError::OutOfRange { .. })
    ));
    let other = VolumeId::new_random();
    assert!(matches!(
        s.read(other, None, 0, &mut buf),
        Err(StoreError::NoSuchVolume(_))
    ));
    assert!(matches!(
        s.write(other, 0, &buf, false),
        Err(StoreError::NoSuchVolume(_))
    ));
    assert!(matches!(
        s.delete_volume(other),
        Err(StoreError::NoSuchVolume(_))
    ));
    let nolayer = LayerId::new_random();
    assert!(matches!(
        s.read(vol, Some(nolayer), 0, &mut buf),
        Err(StoreError::NoSuchLayer { .. })
    ));
    assert!(matches!(
        s.delete_layer(vol, head),
        Err(StoreError::DeleteHead(_))
    ));
    assert!(matches!(
        s.resize(vol, 4 * MIB),
        Err(StoreError::Shrink { .. })
    ));
    assert!(matches!(
        s.resize(vol, 8 * MIB + 100),
        Err(StoreError::InvalidSize(_))
    ));
    s.resize(vol, 16 * MIB).unwrap();
    let head2 = LayerId::new_random();
    assert_eq!(s.snapshot(vol, head2).unwrap(), head);
    assert!(matches!(
        s.snapshot(vol, head),
        Err(StoreError::LayerExists(_))
    ));
    assert!(matches!(
        s.write_to(vol, head, 0, &buf, false, 0),
        Err(StoreError::ReadOnlyLayer(_))
    ));
    s.write_to(vol, head2, 0, &buf, false, 0).unwrap();
    assert!(matches!(
        s.delta(vol, Some(head2), head),
        Err(StoreError::BadLayerOrder { .. })
    ));
    assert!(s.delta(vol, Some(head2), head2).unwrap().is_empty());
    let info = s.volume(vol).unwrap();
    assert_eq!(
        (info.size, info.head, info.layers.len()),
        (16 * MIB, head2, 2)
    );
    assert!(info.layers[0].frozen && !info.layers[1].frozen);
    s.delete_volume(vol).unwrap();
    assert!(s.volumes().is_empty());
    assert!(matches!(s.volume(vol), Err(StoreError::NoSuchVolume(_))));
    // Messages say what to do.
    let msg = StoreError::Shrink {
        size: 2,
        new_size: 1,
    }
    .to_string();
    assert!(msg.contains("only grow"), "{msg}");
}

#[test]
fn a_trim_is_fenced_like_a_write() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    let (vol, head) = (VolumeId::new_random(), LayerId::new_random());
    s.create_volume(vol, 8 * MIB, head).unwrap();
    s.write_to(vol, head, 0, &fill(7, 8192), false, 0).unwrap();
    let head2 = LayerId::new_random();
    s.snapshot(vol, head2).unwrap();
    // A trim meant for the head that was frozen never lands in the snapshot.
    assert!(matches!(
        s.trim_to(vol, head, 0, 4096, 0),
        Err(StoreError::ReadOnlyLayer(_))
    ));
    assert_eq!(read(&s, vol, Some(head), 0, 8192), fill(7, 8192));
    s.trim_to(vol, head2, 0, 4096, 0).unwrap();
    assert_eq!(read(&s, vol, None, 0, 4096), vec![0; 4096]);
    assert_eq!(read(&s, vol, Some(head), 0, 8192), fill(7, 8192));
}

#[test]
fn crash_keeps_flushed_writes_and_never_shows_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, head) = (VolumeId::new_random(), LayerId::new_random());
    let a = fill(1, 32 * 1024);
    let b = fill(2, 16 * 1024);
    let c = fill(3, 40 * 1024);
    {
        let s = open(tmp.path());
        s.create_volume(vol, 16 * MIB, head).unwrap();
        s.write(vol, 0, &a, false).unwrap();
        s.flush(vol).unwrap();
        s.write(vol, 0, &b, false).unwrap(); // overwrites flushed blocks, unflushed
        s.write(vol, MIB, &c, false).unwrap(); // new blocks, unflushed
        s.write(vol, 2 * MIB + 1024, &c[..512], false).unwrap(); // partial block, unflushed
        s.write(vol, 3 * MIB, &c[..8192], true).unwrap(); // FUA: durable
        s.trim(vol, 16 * 1024, 8192).unwrap(); // unflushed trim of flushed data
        s.crash();
    }
    let s = open(tmp.path());
    let got = read(&s, vol, None, 0, a.len());
    for blk in 0..8 {
        let r = blk * 4096..(blk + 1) * 4096;
        let g = &got[r.clone()];
        let ok = g == &a[r.clone()]
            || (blk < 4 && g == &b[r.clone()])
            || ((4..6).contains(&blk) && g.iter().all(|x| *x == 0));
        assert!(ok, "block {blk} holds neither old nor new content");
    }
    let got = read(&s, vol, None, MIB, c.len());
    for (blk, g) in got.chunks(4096).enumerate() {
        let r = blk * 4096..(blk + 1) * 4096;
        assert!(
            g == &c[r] || g.iter().all(|x| *x == 0),
            "new block {blk} is garbage"
        );
    }
    let got = read(&s, vol, None, 2 * MIB, 4096);
    assert!(got.iter().all(|x| *x == 0) || got[1024..1536] == c[..512]);
    assert_eq!(read(&s, vol, None, 3 * MIB, 8192), c[..8192]);
}

#[test]
fn a_flushed_snapshot_survives_a_crash_and_later_unflushed_writes_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, head, head2) = (
        VolumeId::new_random(),
        LayerId::new_random(),
        LayerId::new_random(),
    );
    let a = fill(7, 64 * 1024);
    {
        let s = open(tmp.path());
        s.create_volume(vol, 8 * MIB, head).unwrap();
        s.write(vol, 4096 * 3, &a, false).unwrap();
        s.snapshot(vol, head2).unwrap();
        s.flush(vol).unwrap();
        s.write(vol, 4096 * 3, &fill(9, 4096), false).unwrap();
        s.crash();
    }
    let s = open(tmp.path());
    assert_eq!(read(&s, vol, Some(head), 4096 * 3, a.len()), a);
    assert_eq!(read(&s, vol, None, 4096 * 3, a.len()), a);
    assert_eq!(s.volume(vol).unwrap().head, head2);
    let d = s.delta(vol, None, head).unwrap();
    assert_eq!(
        (d.len(), d[0].offset, d[0].len),
        (1, 4096 * 3, a.len() as u64)
    );
}

#[test]
fn merge_restarts_after_a_crash_and_keeps_reads_right() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, base, head) = (
        VolumeId::new_random(),
        LayerId::new_random(),
        LayerId::new_random(),
    );
    let big = fill(5, (24 * MIB) as usize);
    let small = fill(6, 64 * 1024);
    let merged_before;
    {
        let opts = StoreOptions {
            merge_rate_bytes_per_sec: Some(8 * MIB),
            ..StoreOptions::default()
        };
        let s = Store::open(tmp.path(), opts).unwrap();
        s.create_volume(vol, 64 * MIB, base).unwrap();
        s.write(vol, 0, &big, false).unwrap();
        s.snapshot(vol, head).unwrap();
        s.write(vol, 5 * MIB, &small, false).unwrap();
        s.delete_layer(vol, base).unwrap(); // head is writable: merge copies up, ~3 s
        let t = Instant::now();
        while s.stats().merged_bytes < 2 * MIB && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Writes during the merge, into blocks the merge has not reached yet, win.
        s.write(vol, 20 * MIB, &small, false).unwrap();
        let mut want = big.clone();
        want[5 * MIB as usize..][..small.len()].copy_from_slice(&small);
        want[20 * MIB as usize..][..small.len()].copy_from_slice(&small);
        assert_eq!(read(&s, vol, None, 0, want.len()), want);
        assert_eq!(s.stats().pending_merges, 1);
        assert_eq!(s.volume(vol).unwrap().layers.len(), 1);
        s.flush(vol).unwrap();
        merged_before = s.stats().merged_bytes;
        s.crash();
    }
    let s = open(tmp.path());
    let mut want = big.clone();
    want[5 * MIB as usize..][..small.len()].copy_from_slice(&small);
    want[20 * MIB as usize..][..small.len()].copy_from_slice(&small);
    assert_eq!(read(&s, vol, None, 0, want.len()), want);
    s.wait_merges_idle();
    assert_eq!(s.stats().pending_merges, 0);
    // Progress is persisted every 1 MiB at this rate: at most that much is copied twice.
    let merged_after = s.stats().merged_bytes;
    assert!(
        merged_after <= 24 * MIB - merged_before + MIB,
        "resumed, not restarted: {merged_before} then {merged_after}"
    );
    assert_eq!(read(&s, vol, None, 0, want.len()), want);
    assert_eq!(layer_files(tmp.path(), vol), 1);
    drop(s);
    let s = open(tmp.path());
    assert_eq!(read(&s, vol, None, 0, want.len()), want);
}

#[test]
fn deleting_an_old_base_under_a_small_delta_copies_the_delta_down() {
    let tmp = tempfile::tempdir().unwrap();
    let ids: Vec<LayerId> = (0..3).map(|_| LayerId::new_random()).collect();
    let vol = VolumeId::new_random();
    let s = open(tmp.path());
    s.create_volume(vol, 32 * MIB, ids[0]).unwrap();
    let big = fill(1, (16 * MIB) as usize);
    s.write(vol, 0, &big, false).unwrap();
    s.snapshot(vol, ids[1]).unwrap();
    s.write(vol, MIB + 512, &fill(2, 8192), false).unwrap();
    s.trim(vol, 2 * MIB, 64 * 1024).unwrap();
    s.snapshot(vol, ids[2]).unwrap();
    let before = read(&s, vol, Some(ids[1]), 0, (32 * MIB) as usize);
    let alloc_before = s.allocation(vol, Some(ids[1]), 0, 32 * MIB).unwrap();
    s.delete_layer(vol, ids[0]).unwrap();
    s.wait_merges_idle();
    assert!(
        s.stats().merged_bytes <= 3 * 4096,
        "copied {}",
        s.stats().merged_bytes
    );
    assert_eq!(read(&s, vol, Some(ids[1]), 0, (32 * MIB) as usize), before);
    assert_eq!(
        s.allocation(vol, Some(ids[1]), 0, 32 * MIB).unwrap(),
        alloc_before
    );
    assert!(alloc_before.iter().any(|e| e.kind == ExtentKind::Zero));
    assert_eq!(layer_files(tmp.path(), vol), 2);
    drop(s);
    let s = open(tmp.path());
    assert_eq!(read(&s, vol, Some(ids[1]), 0, (32 * MIB) as usize), before);
    assert_eq!(s.volume(vol).unwrap().layers.len(), 2);
}

#[test]
fn concurrent_partial_writes_to_one_block_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, base, head) = (
        VolumeId::new_random(),
        LayerId::new_random(),
        LayerId::new_random(),
    );
    let s = Arc::new(open(tmp.path()));
    s.create_volume(vol, 8 * MIB, base).unwrap();
    s.write(vol, 0, &vec![0xEE; 64 * 4096], false).unwrap();
    s.snapshot(vol, head).unwrap();
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for blk in 0..64u64 {
                    s.write(vol, blk * 4096 + u64::from(t) * 512, &[t + 1; 512], false)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = read(&s, vol, None, 0, 64 * 4096);
    for (i, sector) in got.chunks(512).enumerate() {
        assert!(
            sector.iter().all(|x| *x == (i % 8) as u8 + 1),
            "sector {i} lost its write"
        );
    }
    assert!(read(&s, vol, Some(base), 0, 64 * 4096)
        .iter()
        .all(|x| *x == 0xEE));
}

/// Evicts the volume's layer files from the page cache (they must be synced: dirty pages stay).
fn evict(dir: &std::path::Path, vol: VolumeId) {
    for e in std::fs::read_dir(dir.join("volumes").join(vol.to_string())).unwrap() {
        let f = std::fs::File::open(e.unwrap().path()).unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }
}

#[test]
fn a_cached_read_answers_from_memory_only_and_agrees_with_a_read() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    let vol = VolumeId::new_random();
    s.create_volume(vol, 16 * MIB, LayerId::new_random())
        .unwrap();
    s.write(vol, 0, &fill(1, MIB as usize), false).unwrap();
    let snap = s.snapshot(vol, LayerId::new_random()).unwrap();
    s.write(vol, MIB / 2, &fill(2, MIB as usize), false)
        .unwrap();
    s.flush(vol).unwrap();
    evict(tmp.path(), vol);
    // Holes need no file at all; data that was evicted must not be waited for.
    let mut buf = vec![0x55; MIB as usize];
    assert!(s.read_cached(vol, None, 8 * MIB, &mut buf).unwrap());
    assert_eq!(buf, vec![0; MIB as usize]);
    let probe = s.read_cached(vol, None, 0, &mut buf).unwrap();
    assert!(
        !probe,
        "data evicted from the page cache must not be read in memory-only mode"
    );
    // Once read, the data is in memory, and both reads agree, at the head and at the snapshot
    // (unless the filesystem cannot say what is cached: tmpfs; then it always falls back).
    for at in [None, Some(snap)] {
        let want = read(&s, vol, at, 0, 2 * MIB as usize);
        let mut got = vec![0x55; want.len()];
        if s.read_cached(vol, at, 0, &mut got).unwrap() {
            assert_eq!(got, want);
        } else {
            assert!(
                !nowait_reads_work(tmp.path()),
                "data just read must be readable from memory"
            );
        }
    }
}

/// Whether the filesystem of `dir` answers `RWF_NOWAIT` reads (tmpfs does not).
fn nowait_reads_work(dir: &std::path::Path) -> bool {
    let path = dir.join("nowait-probe");
    std::fs::write(&path, [1u8; 4096]).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let mut b = [0u8; 4096];
    let ok = rustix::io::preadv2(
        &f,
        &mut [std::io::IoSliceMut::new(&mut b)],
        0,
        rustix::io::ReadWriteFlags::NOWAIT,
    )
    .is_ok();
    let _ = std::fs::remove_file(&path);
    ok
}

/// Every file under `dir` (recursively) with its content.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_lost_database_is_refused_and_the_data_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, head) = (VolumeId::new_random(), LayerId::new_random());
    {
        let s = open(tmp.path());
        s.create_volume(vol, 8 * MIB, head).unwrap();
        s.write(vol, 0, &fill(3, 65536), true).unwrap();
    }
    let before = tree(&tmp.path().join("volumes"));
    assert!(!before.is_empty());
    std::fs::remove_file(tmp.path().join("store.redb")).unwrap();
    for _ in 0..2 {
        let err = Store::open(tmp.path(), StoreOptions::default())
            .err()
            .expect("a store whose database is lost must not open");
        assert!(matches!(err, StoreError::LostDatabase { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("store.redb"), "{text}");
        assert_eq!(tree(&tmp.path().join("volumes")), before);
    }
    // An empty (e.g. truncated) database is no better than a missing one.
    std::fs::write(tmp.path().join("store.redb"), b"").unwrap();
    let err = Store::open(tmp.path(), StoreOptions::default()).err();
    assert!(
        matches!(err, Some(StoreError::LostDatabase { .. })),
        "{err:?}"
    );
    assert_eq!(tree(&tmp.path().join("volumes")), before);
}

#[test]
fn a_new_store_says_so_until_it_is_claimed_and_an_old_one_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(open(tmp.path()).is_new());
    // Opened again without a claim (its owner refused it): still new.
    let store = open(tmp.path());
    assert!(store.is_new());
    store.claim().unwrap();
    assert!(!store.is_new());
    drop(store);
    assert!(!open(tmp.path()).is_new());
    // A store that holds a volume is not new, claimed or not (one made before claims).
    let other = tempfile::tempdir().unwrap();
    open(other.path())
        .create_volume(VolumeId::new_random(), 1 << 20, LayerId::new_random())
        .unwrap();
    assert!(!open(other.path()).is_new());
}

#[test]
fn files_no_record_names_are_moved_aside_not_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let (kept, dropped) = (VolumeId::new_random(), VolumeId::new_random());
    let data = fill(9, 65536);
    let saved = tmp.path().join("saved");
    {
        let s = open(tmp.path());
        s.create_volume(kept, 8 * MIB, LayerId::new_random())
            .unwrap();
        s.create_volume(dropped, 8 * MIB, LayerId::new_random())
            .unwrap();
        s.write(kept, 0, &data, true).unwrap();
        s.write(dropped, 0, &data, true).unwrap();
        let vdir = tmp.path().join("volumes").join(dropped.to_string());
        std::fs::create_dir(&saved).unwrap();
        for e in std::fs::read_dir(&vdir).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, saved.join(p.file_name().unwrap())).unwrap();
        }
        s.delete_volume(dropped).unwrap();
        // The directory of a volume the database does not name, holding data.
        std::fs::rename(&saved, &vdir).unwrap();
    }
    // A layer file with data and an empty one that no layer of `kept` names.
    let kdir = tmp.path().join("volumes").join(kept.to_string());
    let real = std::fs::read_dir(&kdir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stray = kdir.join("00000000000000ff.layer");
    std::fs::copy(&real, &stray).unwrap();
    std::fs::write(kdir.join("00000000000000fe.layer"), b"").unwrap();
    let stray_bytes = std::fs::read(&stray).unwrap();

    let s = open(tmp.path());
    assert_eq!(read(&s, kept, None, 0, data.len()), data);
    assert!(!tmp
        .path()
        .join("volumes")
        .join(dropped.to_string())
        .exists());
    assert_eq!(layer_files(tmp.path(), kept), 1);
    let moved = tree(&tmp.path().join("orphaned"));
    let names: Vec<String> = moved
        .iter()
        .map(|(p, _)| {
            p.strip_prefix(tmp.path().join("orphaned"))
                .unwrap()
                .components()
                .skip(1)
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    assert_eq!(moved.len(), 2, "{names:?}");
    assert!(
        names.contains(&format!("{kept}/00000000000000ff.layer")),
        "{names:?}"
    );
    let (_, dropped_bytes) = moved
        .iter()
        .find(|(p, _)| p.parent().unwrap().ends_with(dropped.to_string()))
        .expect("the dropped volume's layer file moved aside");
    assert_eq!(&dropped_bytes[..data.len()], &data[..]);
    let (_, stray_moved) = moved
        .iter()
        .find(|(p, _)| p.ends_with("00000000000000ff.layer"))
        .unwrap();
    assert_eq!(*stray_moved, stray_bytes);
}

#[test]
fn chunk_data_bytes_counts_the_blocks_of_every_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    let vol = VolumeId::new_random();
    s.create_volume(vol, 64 * MIB, LayerId::new_random())
        .unwrap();
    assert!(s.chunk_data_bytes(vol).unwrap().is_empty());
    s.write(vol, 0, &fill(1, 8192), false).unwrap();
    s.write(vol, 4 * MIB + 4096, &fill(2, 4096), false).unwrap();
    s.snapshot(vol, LayerId::new_random()).unwrap();
    // Rewriting a block in the new head counts it again: the snapshot keeps the old one.
    s.write(vol, 0, &fill(3, 4096), false).unwrap();
    // A partial block is stored whole.
    s.write(vol, 9 * MIB, &[7; 100], false).unwrap();
    let got: Vec<(u64, u64)> = s.chunk_data_bytes(vol).unwrap().into_iter().collect();
    assert_eq!(got, vec![(0, 3 * 4096), (1, 4096), (2, 4096)]);
}

#[test]
fn an_unclean_close_is_noticed_at_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, head) = (VolumeId::new_random(), LayerId::new_random());
    {
        let s = open(tmp.path());
        assert!(!s.was_unclean(), "a new store");
        s.create_volume(vol, 8 * MIB, head).unwrap();
        s.write(vol, 0, &fill(1, 4096), false).unwrap();
    }
    let s = open(tmp.path());
    assert!(!s.was_unclean(), "closed cleanly");
    s.write(vol, 0, &fill(2, 4096), false).unwrap();
    s.crash_in_place();
    drop(s);
    let s = open(tmp.path());
    assert!(s.was_unclean(), "crashed");
    // Opening again without closing (the process died again) is still unclean.
    s.crash_in_place();
    drop(s);
    assert!(open(tmp.path()).was_unclean());
}
