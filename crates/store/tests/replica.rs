//! Chunk images and missed-write marks: what replicas exchange to repair each other.

#![allow(clippy::unwrap_used)]

use strata_store::{ChunkImage, LayerId, Store, StoreError, StoreOptions, VolumeId};
use strata_types::{ServerId, CHUNK_SIZE};

const SIZE: u64 = 3 * CHUNK_SIZE;

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

fn chunk(store: &Store, vol: VolumeId, layer: Option<LayerId>, c: u64) -> Vec<u8> {
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    store.read(vol, layer, c * CHUNK_SIZE, &mut buf).unwrap();
    buf
}

/// Two stores holding the same volume and layers; `a` gets writes that `b` misses.
fn pair() -> (tempfile::TempDir, Store, Store, VolumeId, [LayerId; 2]) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (open(&tmp.path().join("a")), open(&tmp.path().join("b")));
    let vol = VolumeId::new_random();
    let layers = [LayerId::new_random(), LayerId::new_random()];
    for s in [&a, &b] {
        s.create_volume(vol, SIZE, layers[0]).unwrap();
    }
    (tmp, a, b, vol, layers)
}

#[test]
fn images_repair_every_layer_of_a_stale_replica() {
    let (_tmp, a, b, vol, [l0, l1]) = pair();
    // Both have some common data; b then has its own divergent write, a the real history.
    for s in [&a, &b] {
        s.write(vol, CHUNK_SIZE, &[1u8; 8192], false).unwrap();
    }
    b.write(vol, CHUNK_SIZE + 65536, &[9u8; 4096], false)
        .unwrap();
    a.write(vol, CHUNK_SIZE + 4096, &[2u8; 4096], false)
        .unwrap();
    a.write_zeroes(vol, CHUNK_SIZE, 4096, false).unwrap();
    for s in [&a, &b] {
        s.snapshot(vol, l1).unwrap();
    }
    a.write(vol, CHUNK_SIZE + 12288, &[3u8; 512], false)
        .unwrap();
    a.write_zeroes(vol, CHUNK_SIZE + 4096, 4096, false).unwrap();
    // Repair b: the frozen layer first (a repair may write a snapshot), then the head.
    for layer in [l0, l1] {
        let img = a.chunk_image(vol, layer, 1).unwrap();
        b.put_chunk_image(vol, layer, 1, &img, true).unwrap();
        assert_eq!(b.chunk_image(vol, layer, 1).unwrap(), img);
    }
    for layer in [Some(l0), None] {
        assert!(
            chunk(&a, vol, layer, 1) == chunk(&b, vol, layer, 1),
            "{layer:?}"
        );
    }
    // b's divergent block is gone, a's zeros shadow the snapshot's data in the head.
    assert!(chunk(&b, vol, Some(l0), 1)[65536..69632]
        .iter()
        .all(|x| *x == 0));
    assert!(chunk(&b, vol, None, 1)[4096..8192].iter().all(|x| *x == 0));
    assert!(chunk(&b, vol, Some(l0), 1)[4096..8192]
        .iter()
        .all(|x| *x == 2));
    // Durable: a crash right after the repair keeps it.
    let dir = _tmp.path().join("b");
    b.crash();
    let b = open(&dir);
    assert!(chunk(&a, vol, Some(l0), 1) == chunk(&b, vol, Some(l0), 1));
    assert!(chunk(&a, vol, None, 1) == chunk(&b, vol, None, 1));
}

#[test]
fn bad_images_are_refused() {
    let (_tmp, a, _b, vol, [l0, _]) = pair();
    let mut data = [0u64; 16];
    data[0] = 1;
    let short = ChunkImage {
        data,
        zero: [0; 16],
        blocks: vec![0u8; 100].into(),
        generation: 1,
    };
    assert!(matches!(
        a.put_chunk_image(vol, l0, 0, &short, true),
        Err(StoreError::BadChunkImage(_))
    ));
    let both = ChunkImage {
        data,
        zero: data,
        blocks: vec![0u8; 4096].into(),
        generation: 1,
    };
    assert!(matches!(
        a.put_chunk_image(vol, l0, 0, &both, true),
        Err(StoreError::BadChunkImage(_))
    ));
    let past = ChunkImage {
        data,
        zero: [0; 16],
        blocks: vec![0u8; 4096].into(),
        generation: 1,
    };
    assert!(matches!(
        a.put_chunk_image(vol, l0, 3, &past, true),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        a.chunk_image(vol, LayerId::new_random(), 0),
        Err(StoreError::NoSuchLayer { .. })
    ));
}

#[test]
fn missed_marks_bump_clear_persist_and_follow_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let s = open(&dir);
    let vol = VolumeId::new_random();
    let (l0, l1) = (LayerId::new_random(), LayerId::new_random());
    let server = ServerId::new_random();
    s.create_volume(vol, SIZE, l0).unwrap();
    s.record_missed(vol, l0, 2, server).unwrap();
    let first = s.missed(vol).unwrap();
    assert_eq!(first.len(), 1);
    s.record_missed(vol, l0, 2, server).unwrap();
    let second = s.missed(vol).unwrap();
    assert!(
        second[0].generation > first[0].generation,
        "recording again bumps"
    );
    assert!(
        !s.clear_missed(vol, &first[0]).unwrap(),
        "an old generation does not clear"
    );
    // Unflushed marks are lost in a crash; flushed ones are not.
    s.crash();
    let s = open(&dir);
    assert!(s.missed(vol).unwrap().is_empty());
    s.record_missed(vol, l0, 2, server).unwrap();
    s.record_missed(vol, l0, 1, server).unwrap();
    s.flush(vol).unwrap();
    s.crash();
    let s = open(&dir);
    let marks = s.missed(vol).unwrap();
    assert_eq!(marks.len(), 2);
    // A cleared mark stays cleared after a flush and a reopen.
    assert!(s.clear_missed(vol, &marks[0]).unwrap());
    s.flush(vol).unwrap();
    drop(s);
    let s = open(&dir);
    assert_eq!(s.missed(vol).unwrap().len(), 1);
    // Deleting a snapshot moves its marks to the layer above, which now holds its blocks.
    s.write(vol, 0, &[5u8; 4096], false).unwrap();
    s.snapshot(vol, l1).unwrap();
    s.delete_layer(vol, l0).unwrap();
    s.wait_merges_idle();
    let moved = s.missed(vol).unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].layer, l1);
    // The volume takes its marks with it.
    s.delete_volume(vol).unwrap();
    assert!(s.missed(vol).is_err());
    drop(s);
    let s = open(&dir);
    s.create_volume(vol, SIZE, LayerId::new_random()).unwrap();
    assert!(s.missed(vol).unwrap().is_empty());
}

/// A snapshot is durable once taken (metadata only: no data file is synced): a crash right
/// after it keeps it, and loses only the writes that were not flushed, in the snapshot and in
/// the new head alike.
#[test]
fn a_snapshot_is_durable_once_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let vol = VolumeId::new_random();
    let (l0, l1, l2) = (
        LayerId::new_random(),
        LayerId::new_random(),
        LayerId::new_random(),
    );
    let s = open(&dir);
    s.create_volume(vol, SIZE, l0).unwrap();
    s.write(vol, 0, &[1u8; 4096], true).unwrap();
    s.snapshot(vol, l1).unwrap();
    s.write(vol, 4096, &[2u8; 4096], false).unwrap();
    s.crash();
    let s = open(&dir);
    let info = s.volume(vol).unwrap();
    assert_eq!(info.head, l1, "the snapshot survives the crash");
    assert_eq!(chunk(&s, vol, Some(l0), 0)[..4096], [1u8; 4096]);
    assert_eq!(chunk(&s, vol, None, 0)[..4096], [1u8; 4096]);
    assert!(chunk(&s, vol, None, 0)[4096..8192].iter().all(|x| *x == 0));
    // An unflushed write to the head that is then frozen is lost from the snapshot too.
    s.write(vol, 4096, &[2u8; 4096], false).unwrap();
    s.snapshot(vol, l2).unwrap();
    s.crash();
    let s = open(&dir);
    let info = s.volume(vol).unwrap();
    assert_eq!(info.head, l2);
    assert!(chunk(&s, vol, Some(l1), 0)[4096..8192]
        .iter()
        .all(|x| *x == 0));
    // A flushed write survives.
    s.write(vol, 4096, &[3u8; 4096], true).unwrap();
    s.crash();
    let s = open(&dir);
    assert_eq!(chunk(&s, vol, None, 0)[4096..8192], [3u8; 4096]);
    assert!(chunk(&s, vol, Some(l0), 0)[4096..8192]
        .iter()
        .all(|x| *x == 0));
}

#[test]
fn touched_chunks_lists_every_layer_that_holds_a_chunk() {
    let (_tmp, a, _b, vol, [l0, l1]) = pair();
    assert!(a.touched_chunks(vol).unwrap().is_empty());
    a.write(vol, 0, &[1u8; 4096], false).unwrap();
    a.snapshot(vol, l1).unwrap();
    // Zeroes over data below are recorded (they shadow it); over nothing, only their write
    // generation is.
    a.write_zeroes(vol, 0, 4096, false).unwrap();
    a.write_zeroes(vol, CHUNK_SIZE, 4096, false).unwrap();
    a.write(vol, 2 * CHUNK_SIZE, &[2u8; 512], false).unwrap();
    let mut got = a.touched_chunks(vol).unwrap();
    got.sort();
    let mut want = vec![(l0, 0), (l1, 0), (l1, 1), (l1, 2)];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_copy_that_is_not_durable_becomes_durable_with_the_next_flush() {
    let (tmp, a, b, vol, [l0, _]) = pair();
    a.write(vol, 0, &[7u8; 65536], false).unwrap();
    let img = a.chunk_image(vol, l0, 0).unwrap();
    // Not durable: a crash right after loses it (b's chunk reads as before the copy).
    b.put_chunk_image(vol, l0, 0, &img, false).unwrap();
    assert_eq!(b.chunk_image(vol, l0, 0).unwrap(), img, "visible at once");
    b.crash();
    let b = open(&tmp.path().join("b"));
    assert!(chunk(&b, vol, None, 0).iter().all(|x| *x == 0));
    // Then flushed: a crash keeps it.
    b.put_chunk_image(vol, l0, 0, &img, false).unwrap();
    b.flush(vol).unwrap();
    b.crash();
    let b = open(&tmp.path().join("b"));
    assert_eq!(b.chunk_image(vol, l0, 0).unwrap(), img);
    assert!(chunk(&a, vol, None, 0) == chunk(&b, vol, None, 0));
}

#[test]
fn a_copy_into_a_layer_being_merged_down_is_refused_until_the_merge_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        merge_rate_bytes_per_sec: Some(256 << 10),
        ..StoreOptions::default()
    };
    let s = Store::open(tmp.path(), opts).unwrap();
    let vol = VolumeId::new_random();
    let [base, mid, head] = [(); 3].map(|()| LayerId::new_random());
    s.create_volume(vol, 16 * CHUNK_SIZE, base).unwrap();
    // A big base under a smaller frozen layer: deleting the base merges the small layer down
    // into the base's file, about 2 MiB at 256 KiB/s.
    s.write(vol, 0, &vec![1u8; (12 * CHUNK_SIZE) as usize], false)
        .unwrap();
    s.snapshot(vol, mid).unwrap();
    for c in 0..8 {
        s.write(vol, c * CHUNK_SIZE, &[2u8; 256 << 10], false)
            .unwrap();
    }
    s.snapshot(vol, head).unwrap();
    let image = s.chunk_image(vol, mid, 0).unwrap();
    s.delete_layer(vol, base).unwrap();
    let started = std::time::Instant::now();
    while s.stats().merged_bytes == 0 {
        assert!(started.elapsed().as_secs() < 20, "the merge did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let refused = s.put_chunk_image(vol, mid, 0, &image, true);
    assert!(
        matches!(refused, Err(StoreError::LayerMerging(l)) if l == mid),
        "{refused:?}"
    );
    // The head is not touched by a merge below it.
    let head_image = s.chunk_image(vol, head, 0).unwrap();
    s.put_chunk_image(vol, head, 0, &head_image, true).unwrap();
    s.wait_merges_idle();
    s.put_chunk_image(vol, mid, 0, &image, true).unwrap();
    assert_eq!(s.chunk_image(vol, mid, 0).unwrap(), image);
    assert!(chunk(&s, vol, Some(mid), 0)[..256 << 10]
        .iter()
        .all(|b| *b == 2));
}

/// A chunk written only in the head of a snapshot taken after the last flush is named after a
/// crash: the snapshot (the new head and the frozen one below it) is durable once taken, so
/// the crash cannot drop the head's file, and its activity log entry with it.
#[test]
fn a_crash_after_a_snapshot_names_the_chunks_written_in_its_new_head() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let vol = VolumeId::new_random();
    let (l0, l1) = (LayerId::new_random(), LayerId::new_random());
    let s = open(&dir);
    s.create_volume(vol, SIZE, l0).unwrap();
    s.write(vol, CHUNK_SIZE, &[1u8; 4096], false).unwrap();
    s.flush(vol).unwrap();
    s.snapshot(vol, l1).unwrap();
    s.write(vol, CHUNK_SIZE, &[2u8; 4096], false).unwrap();
    s.crash();
    let s = open(&dir);
    let layers: Vec<(LayerId, bool)> = s
        .volume(vol)
        .unwrap()
        .layers
        .iter()
        .map(|l| (l.id, l.frozen))
        .collect();
    assert_eq!(
        layers,
        vec![(l0, true), (l1, false)],
        "the snapshot survives"
    );
    let named = s.suspect_chunks(vol).unwrap();
    assert!(named.contains(&(l1, 1)), "{named:?}");
    assert_eq!(chunk(&s, vol, Some(l0), 1)[..4096], [1u8; 4096]);
}

/// After an unclean stop the store names every chunk that may hold writes it did not flush
/// (its activity log), and keeps naming them, whatever is flushed, until told they are recorded
/// elsewhere. Chunks flushed and left alone for a whole flush interval are not named.
#[test]
fn an_unclean_stop_names_every_chunk_that_may_hold_unflushed_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let vol = VolumeId::new_random();
    let (l0, l1) = (LayerId::new_random(), LayerId::new_random());
    let s = open(&dir);
    s.create_volume(vol, SIZE, l0).unwrap();
    s.write(vol, 0, &[1u8; 4096], false).unwrap();
    s.flush(vol).unwrap();
    // Chunk 0 stays in the log for the flush interval after its write, then leaves it.
    s.write(vol, CHUNK_SIZE, &[2u8; 4096], false).unwrap();
    s.flush(vol).unwrap();
    s.write(vol, CHUNK_SIZE + 4096, &[2u8; 4096], false)
        .unwrap();
    s.flush(vol).unwrap();
    // Unflushed: an overwrite, a trim, and a write-zeroes in a new chunk.
    s.write(vol, CHUNK_SIZE, &[3u8; 4096], false).unwrap();
    s.write_zeroes(vol, 2 * CHUNK_SIZE, 8192, false).unwrap();
    s.crash();
    let s = open(&dir);
    assert_eq!(s.suspect_chunks(vol).unwrap(), vec![(l0, 1), (l0, 2)]);
    // Flushes (and a snapshot) do not drop them before they are forgotten.
    s.write(vol, 0, &[4u8; 4096], false).unwrap();
    s.flush(vol).unwrap();
    s.snapshot(vol, l1).unwrap();
    s.write(vol, 0, &[4u8; 4096], false).unwrap();
    s.flush(vol).unwrap();
    s.flush(vol).unwrap();
    drop(s);
    let s = open(&dir);
    assert!(
        s.suspect_chunks(vol).unwrap().is_empty(),
        "a clean stop names none"
    );
    s.crash();
    let s = open(&dir);
    // The crash right after a clean open: what the log held then, the unforgotten suspects
    // included, is named again.
    let named = s.suspect_chunks(vol).unwrap();
    assert!(
        named.contains(&(l0, 1)) && named.contains(&(l0, 2)),
        "{named:?}"
    );
    s.forget_suspects(vol).unwrap();
    // Forgotten, idle for a flush interval: gone from the log, even after another crash.
    s.write(vol, 0, &[5u8; 4096], false).unwrap();
    s.flush(vol).unwrap();
    s.write(vol, 4096, &[5u8; 4096], false).unwrap();
    s.flush(vol).unwrap();
    s.crash();
    let s = open(&dir);
    assert_eq!(s.suspect_chunks(vol).unwrap(), vec![(l1, 0)]);
    // Merging a snapshot away keeps the chunks named in the layer that takes its blocks.
    s.delete_layer(vol, l0).unwrap();
    s.wait_merges_idle();
    s.crash();
    let s = open(&dir);
    let named = s.suspect_chunks(vol).unwrap();
    assert!(named.contains(&(l1, 0)), "{named:?}");
}

/// Every change of a chunk gets a write generation: the next one when the store is the first to
/// apply it, the one given otherwise; it is kept per layer (a snapshot's head starts above the
/// layers below), travels with chunk images, persists with a flush, and reads at a layer as the
/// highest at or below it.
#[test]
fn write_generations_order_the_changes_of_each_chunk() {
    let (tmp, a, b, vol, [l0, l1]) = pair();
    assert_eq!(a.generation(vol, None, 1).unwrap(), 0);
    assert_eq!(
        a.write_to(vol, l0, CHUNK_SIZE, &[1u8; 4096], false, 0)
            .unwrap(),
        1
    );
    assert_eq!(
        a.write_to(vol, l0, CHUNK_SIZE, &[2u8; 4096], false, 0)
            .unwrap(),
        2
    );
    // A replica applying the primary's change records the primary's generation.
    assert_eq!(
        b.write_to(vol, l0, CHUNK_SIZE, &[2u8; 4096], false, 2)
            .unwrap(),
        2
    );
    assert_eq!(b.generation(vol, None, 1).unwrap(), 2);
    // Applying an older change again does not lower it.
    assert_eq!(b.trim_to(vol, l0, CHUNK_SIZE, 4096, 1).unwrap(), 1);
    assert_eq!(b.generation(vol, None, 1).unwrap(), 2);
    // A whole-chunk trim keeps the generation though no block is left.
    assert_eq!(a.trim_to(vol, l0, CHUNK_SIZE, CHUNK_SIZE, 0).unwrap(), 3);
    assert_eq!(a.generation(vol, None, 1).unwrap(), 3);
    a.snapshot(vol, l1).unwrap();
    assert_eq!(
        a.write_to(vol, l1, CHUNK_SIZE, &[4u8; 4096], false, 0)
            .unwrap(),
        4
    );
    assert_eq!(a.generation(vol, Some(l0), 1).unwrap(), 3);
    assert_eq!(a.generation(vol, None, 1).unwrap(), 4);
    // A copy carries it and replaces the receiver's.
    let image = a.chunk_image(vol, l0, 1).unwrap();
    assert_eq!(image.generation, 3);
    b.put_chunk_image(vol, l0, 1, &image, true).unwrap();
    assert_eq!(b.generation(vol, None, 1).unwrap(), 3);
    // Durable with a flush.
    a.flush(vol).unwrap();
    a.crash();
    let a = open(&tmp.path().join("a"));
    assert_eq!(a.generation(vol, None, 1).unwrap(), 4);
    assert_eq!(a.generation(vol, Some(l0), 1).unwrap(), 3);
    // Merging the snapshot away keeps the highest.
    a.delete_layer(vol, l0).unwrap();
    a.wait_merges_idle();
    assert_eq!(a.generation(vol, None, 1).unwrap(), 4);
    // A change lost in a crash (its map row was not flushed) leaves its generation unused
    // here, but another replica may hold it: after an unclean open, new changes are given
    // generations above any given before.
    // (This store was opened uncleanly once above already.)
    let lost = a
        .write_to(vol, l1, CHUNK_SIZE, &[5u8; 4096], false, 0)
        .unwrap();
    assert_eq!(lost, 1 << 32);
    a.crash();
    let a = open(&tmp.path().join("a"));
    assert_eq!(a.generation(vol, None, 1).unwrap(), 4);
    let after = a
        .write_to(vol, l1, CHUNK_SIZE, &[6u8; 4096], false, 0)
        .unwrap();
    assert!(after > lost, "{after}");
    // A clean stop keeps the floor where it is.
    a.flush(vol).unwrap();
    drop(a);
    let a = open(&tmp.path().join("a"));
    assert_eq!(
        a.write_to(vol, l1, CHUNK_SIZE, &[7u8; 4096], false, 0)
            .unwrap(),
        after + 1
    );
}

/// A store closed with [`Store::close_as_unclean`] (its server stopped with requests in
/// flight) keeps everything it was given, and the next open names the chunks written in the
/// last flush interval as suspect, as after a crash: a write it applied may never have reached
/// the other replicas. Before, a stopped server's final flush retired them and wrote the
/// clean-close marker, so such a write stayed in one copy only (fault seed 41).
#[test]
fn a_close_as_unclean_keeps_data_and_names_the_chunks_written_lately() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let vol = VolumeId::new_random();
    let l0 = LayerId::new_random();
    let s = open(&dir);
    s.create_volume(vol, SIZE, l0).unwrap();
    s.write(vol, 0, &[1u8; 4096], false).unwrap();
    s.flush(vol).unwrap();
    s.write(vol, CHUNK_SIZE, &[2u8; 4096], false).unwrap();
    s.flush(vol).unwrap();
    // Chunk 2: written after the last flush, so not durable until the close's own flush.
    s.write(vol, 2 * CHUNK_SIZE, &[3u8; 4096], false).unwrap();
    s.close_as_unclean();
    drop(s);
    let s = open(&dir);
    assert!(s.was_unclean());
    assert_eq!(s.suspect_chunks(vol).unwrap(), vec![(l0, 1), (l0, 2)]);
    assert!(chunk(&s, vol, None, 2)[..4096].iter().all(|b| *b == 3));
    s.forget_suspects(vol).unwrap();
    drop(s);
    let s = open(&dir);
    assert!(!s.was_unclean(), "a plain drop is a clean close");
}
