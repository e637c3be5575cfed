//! A full data filesystem, on a real small filesystem: a loop-mounted ext4 image made for the
//! test (root and `mkfs.ext4` needed; a test that cannot make one says why and does nothing).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use strata_store::{LayerId, Store, StoreError, StoreOptions, VolumeId};

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;

/// An ext4 filesystem of a few MiB in an image file, loop-mounted in a temp dir; unmounted on
/// drop.
struct SmallFs {
    mnt: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallFs {
    /// A fresh ext4 of `mib` MiB, or `None` (with the reason printed) where none can be made.
    fn ext4(mib: u64) -> Option<SmallFs> {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("fs.img");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib * MIB)
            .unwrap();
        let run = |cmd: &mut Command| match cmd.output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        };
        let made = run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-b", "4096"])
            .arg(&image))
        .map_err(|e| format!("mkfs.ext4 failed: {e}"))
        .and_then(|()| {
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mnt))
            .map_err(|e| format!("mount -o loop failed (root and loop devices needed): {e}"))
        });
        if let Err(why) = made {
            eprintln!("SKIPPED: cannot make a small ext4 filesystem for this test: {why}");
            return None;
        }
        Some(SmallFs { mnt, _tmp: tmp })
    }

    fn store_dir(&self) -> PathBuf {
        self.mnt.join("store")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

fn fill(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ (i / 4096) as u8 ^ (i % 251) as u8)
        .collect()
}

fn read(s: &Store, vol: VolumeId, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0x55; len];
    s.read(vol, None, off, &mut b).unwrap();
    b
}

/// Writes `piece` at `offsets` one after another into `vol`, flushing after every 16, until
/// the store says the filesystem is full; returns the offsets written (and flushed) before.
fn write_until_full(
    s: &Store,
    vol: VolumeId,
    offsets: impl Iterator<Item = u64>,
    piece: &[u8],
) -> Vec<u64> {
    let mut done = Vec::new();
    let mut since_flush = Vec::new();
    for off in offsets.take(1 << 20) {
        match s.write(vol, off, piece, false) {
            Ok(()) => since_flush.push(off),
            Err(StoreError::NoSpace) => break,
            Err(e) => panic!("write at {off} failed with {e} instead of no space"),
        }
        if since_flush.len() == 16 {
            match s.flush(vol) {
                Ok(()) => done.append(&mut since_flush),
                Err(StoreError::NoSpace) => break,
                Err(e) => panic!("flush after {off} failed with {e} instead of no space"),
            }
        }
    }
    assert!(!done.is_empty(), "the filesystem was full from the start");
    // What was written but not flushed yet is flushed now, on the full filesystem.
    s.flush(vol).unwrap();
    done.append(&mut since_flush);
    done
}

/// 16 KiB in every chunk of a large volume, as a random-write benchmark leaves it: one
/// block-map row per write, so the metadata grows with the data.
fn scattered() -> impl Iterator<Item = u64> {
    (0..).map(|i: u64| i * 4 * MIB + (i % 200) * 16384)
}

#[test]
fn a_full_filesystem_refuses_new_data_and_recovers_when_a_volume_is_deleted() {
    let Some(fs) = SmallFs::ext4(96) else { return };
    let dir = fs.store_dir();
    let s = open(&dir);
    let (a, b, c) = (
        VolumeId::new_random(),
        VolumeId::new_random(),
        VolumeId::new_random(),
    );
    s.create_volume(a, TIB, LayerId::new_random()).unwrap();
    for v in [b, c] {
        s.create_volume(v, 512 * MIB, LayerId::new_random())
            .unwrap();
    }
    let early = fill(1, 4 * MIB as usize);
    s.write(b, 0, &early, false).unwrap();
    s.flush(b).unwrap();

    let piece = fill(2, 16384);
    let written = write_until_full(&s, a, scattered(), &piece);
    assert!(written.len() > 1000, "full after {} writes", written.len());
    // Reads, overwrites, trims and flushes still work; only new data is refused.
    for off in &written {
        assert_eq!(read(&s, a, *off, piece.len()), piece, "volume a at {off}");
    }
    assert_eq!(read(&s, b, 0, early.len()), early);
    let over = fill(3, MIB as usize);
    s.write(b, MIB, &over, true).unwrap();
    s.write(a, written[0], &over[..16384], false).unwrap();
    s.flush(a).unwrap();
    assert!(matches!(
        s.write(c, 0, &over, false),
        Err(StoreError::NoSpace)
    ));
    assert!(matches!(
        s.write(b, 100 * MIB, &over, false),
        Err(StoreError::NoSpace)
    ));
    s.trim(a, written[1], 16384).unwrap();
    s.flush(a).unwrap();
    s.flush(c).unwrap();
    let snap = LayerId::new_random();
    s.snapshot(b, snap).unwrap();
    s.flush(b).unwrap();

    // A restart on the full filesystem works and finds everything flushed.
    drop(s);
    let s = open(&dir);
    assert_eq!(read(&s, a, written[0], 16384), over[..16384]);
    assert_eq!(read(&s, a, written[1], 16384), vec![0; 16384]);
    for off in &written[2..] {
        assert_eq!(read(&s, a, *off, piece.len()), piece, "volume a at {off}");
    }
    assert_eq!(read(&s, b, MIB, MIB as usize), over);
    assert_eq!(s.volume(b).unwrap().layers.len(), 2);
    assert!(matches!(
        s.write(c, 0, &over, false),
        Err(StoreError::NoSpace)
    ));

    // Deleting a volume frees its space: new data goes in again, no restart needed.
    s.delete_volume(a).unwrap();
    let fresh = fill(4, 8 * MIB as usize);
    s.write(c, 0, &fresh, false).unwrap();
    s.flush(c).unwrap();
    s.write(b, 100 * MIB, &fresh, true).unwrap();
    assert_eq!(read(&s, c, 0, fresh.len()), fresh);
    assert_eq!(read(&s, b, 100 * MIB, fresh.len()), fresh);
    drop(s);
    let s = open(&dir);
    assert_eq!(read(&s, c, 0, fresh.len()), fresh);
    assert_eq!(read(&s, b, 0, MIB as usize), early[..MIB as usize]);
}

#[test]
fn deleting_a_snapshot_on_a_full_filesystem_frees_its_space() {
    let Some(fs) = SmallFs::ext4(96) else { return };
    let dir = fs.store_dir();
    let s = open(&dir);
    let vol = VolumeId::new_random();
    s.create_volume(vol, 512 * MIB, LayerId::new_random())
        .unwrap();
    let base = fill(5, 60 * MIB as usize);
    s.write(vol, 0, &base, false).unwrap();
    s.flush(vol).unwrap();
    let snap = s.volume(vol).unwrap().head;
    s.snapshot(vol, LayerId::new_random()).unwrap();
    s.flush(vol).unwrap();
    // Overwriting the snapshotted data in the head fills the filesystem, leaving some of the
    // snapshot's blocks unshadowed: its merge must move them up into the head.
    let newer = fill(6, MIB as usize);
    let written = write_until_full(&s, vol, (0..).map(|i| i * MIB), &newer);
    let top = written.len() as u64 * MIB;
    assert!(top > 4 * MIB && top < 50 * MIB, "full at {top}");
    s.delete_layer(vol, snap).unwrap();
    s.wait_merges_idle();
    assert_eq!(s.stats().pending_merges, 0, "the merge did not finish");
    for off in &written {
        assert_eq!(read(&s, vol, *off, MIB as usize), newer, "at {off}");
    }
    let rest = &base[(top + MIB) as usize..];
    assert_eq!(read(&s, vol, top + MIB, rest.len()), rest);
    let more = fill(7, 8 * MIB as usize);
    s.write(vol, 200 * MIB, &more, true).unwrap();
    drop(s);
    let s = open(&dir);
    assert_eq!(read(&s, vol, 200 * MIB, more.len()), more);
    assert_eq!(read(&s, vol, top + MIB, rest.len()), rest);
}

#[test]
fn a_volume_larger_than_the_filesystems_largest_file_is_refused() {
    let Some(fs) = SmallFs::ext4(32) else { return };
    let s = open(&fs.store_dir());
    let max = s.max_file_size();
    // ext4 with 4 KiB blocks holds files up to 16 TiB.
    assert!(max > 15 * TIB && max <= 16 * TIB, "largest file {max}");
    let big = VolumeId::new_random();
    match s.create_volume(big, 20 * TIB, LayerId::new_random()) {
        Err(e @ StoreError::FileTooLarge { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("at most 16TiB ({max} bytes)")),
                "{msg}"
            );
        }
        other => panic!("a 20 TiB volume on ext4 gave {other:?}"),
    }
    assert!(s.volumes().is_empty());
    let vol = VolumeId::new_random();
    s.create_volume(vol, 8 * TIB, LayerId::new_random())
        .unwrap();
    assert!(matches!(
        s.resize(vol, 17 * TIB),
        Err(StoreError::FileTooLarge { .. })
    ));
    s.resize(vol, max / 4096 * 4096).unwrap();
    let data = fill(8, 8192);
    let at = max / 4096 * 4096 - 8192;
    s.write(vol, at, &data, true).unwrap();
    assert_eq!(read(&s, vol, at, data.len()), data);
}
