//! Metadata in one redb database (`store.redb` in the store's directory).
//!
//! Tables (the version is in each table name, so a format change adds tables beside old ones):
//! - `meta` (`&str -> bytes`): `format` = `b"STRATA-STORE"` + u32 LE [`FORMAT_VERSION`];
//!   `next_fid` = u64 LE, the next unused file id; `generation_floor` = u64 LE, the least write
//!   generation a change this store is first to apply gets (raised at each unclean open, so
//!   generations lost with unflushed map rows are never given again).
//! - `volumes_v1` (`volume id bytes -> record`): a [`VolumeRecord`]:
//!   `b"SVOL"`, u16 LE version (1), u64 size, u64 next rank,
//!   u8 merge flag [+ 16-byte layer id, u8 direction (0 up, 1 down), u64 next chunk],
//!   u32 layer count, then per layer bottom..top: 16-byte id, u64 rank, u64 fid, u8 flags
//!   (1 = frozen, 2 = deleted and waiting to be merged). All integers little-endian.
//! - `maps_v1` (`(fid, chunk) -> row`): one chunk's block maps, see [`crate::bits`].
//! - `missed_v1` (`(volume id, server id, layer id, chunk) -> generation u64`): a chunk of a
//!   layer that another replica server missed writes to (see [`crate::replica`]); written by
//!   flushes together with the map rows.
//!
//! Every change to the layer stack is one transaction; a flush is one transaction holding the
//! changed map rows (written only after the data files were `fdatasync`ed), optionally together
//! with a new volume record (snapshot, merge progress), so the two never disagree after a crash.

use crate::bits::ChunkBits;
use crate::error::{Result, StoreError};
use crate::replica::MarkKey;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::{BTreeMap, HashMap};
use strata_types::{LayerId, ServerId, VolumeId};

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const VOLUMES: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("volumes_v1");
pub(crate) const MAPS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("maps_v1");
/// Key of a missed mark: (volume, server, layer, chunk).
pub(crate) type MarkRow = ([u8; 16], [u8; 16], [u8; 16], u64);
pub(crate) const MISSED: TableDefinition<MarkRow, u64> = TableDefinition::new("missed_v1");
/// The activity log (see `activity.rs`): (layer file id, chunk) of chunks that may hold
/// unflushed writes.
pub(crate) const ACTIVE: TableDefinition<(u64, u64), ()> = TableDefinition::new("active_v1");

const FORMAT_MAGIC: &[u8] = b"STRATA-STORE";
/// Version of the whole on-disk format.
pub(crate) const FORMAT_VERSION: u32 = 1;
const VOLUME_MAGIC: &[u8] = b"SVOL";
const VOLUME_VERSION: u16 = 1;

/// Which way a merge moves blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MergeDir {
    /// Copy the deleted layer's blocks that the layer above lacks up into the layer above.
    Up,
    /// Copy the layer above's blocks down into the deleted layer's file, then relabel it.
    Down,
}

/// A merge in progress: the deleted layer, the direction, and the next chunk to process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MergeProgress {
    pub layer: LayerId,
    pub dir: MergeDir,
    pub next_chunk: u64,
}

/// One layer of a persisted stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LayerRecord {
    pub id: LayerId,
    pub rank: u64,
    pub fid: u64,
    pub frozen: bool,
    pub deleted: bool,
}

/// A persisted volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VolumeRecord {
    pub size: u64,
    pub next_rank: u64,
    pub merge: Option<MergeProgress>,
    pub layers: Vec<LayerRecord>,
}

impl VolumeRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.layers.len() * 33);
        v.extend_from_slice(VOLUME_MAGIC);
        v.extend_from_slice(&VOLUME_VERSION.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.next_rank.to_le_bytes());
        match self.merge {
            None => v.push(0),
            Some(m) => {
                v.push(1);
                v.extend_from_slice(&m.layer.to_bytes());
                v.push(match m.dir {
                    MergeDir::Up => 0,
                    MergeDir::Down => 1,
                });
                v.extend_from_slice(&m.next_chunk.to_le_bytes());
            }
        }
        v.extend_from_slice(&(self.layers.len() as u32).to_le_bytes());
        for l in &self.layers {
            v.extend_from_slice(&l.id.to_bytes());
            v.extend_from_slice(&l.rank.to_le_bytes());
            v.extend_from_slice(&l.fid.to_le_bytes());
            v.push(u8::from(l.frozen) | u8::from(l.deleted) << 1);
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<VolumeRecord, String> {
        let mut r = Reader(b);
        if r.take(4)? != VOLUME_MAGIC {
            return Err("volume record has a bad magic".into());
        }
        let version = u16::from_le_bytes(r.array()?);
        if version != VOLUME_VERSION {
            return Err(format!("volume record version {version} is not supported"));
        }
        let size = r.u64()?;
        let next_rank = r.u64()?;
        let merge = match r.u8()? {
            0 => None,
            1 => Some(MergeProgress {
                layer: LayerId::from_bytes(r.array()?),
                dir: match r.u8()? {
                    0 => MergeDir::Up,
                    1 => MergeDir::Down,
                    d => return Err(format!("unknown merge direction {d}")),
                },
                next_chunk: r.u64()?,
            }),
            f => return Err(format!("bad merge flag {f}")),
        };
        let n = u32::from_le_bytes(r.array()?);
        let mut layers = Vec::new();
        for _ in 0..n {
            let id = LayerId::from_bytes(r.array()?);
            let rank = r.u64()?;
            let fid = r.u64()?;
            let flags = r.u8()?;
            layers.push(LayerRecord {
                id,
                rank,
                fid,
                frozen: flags & 1 != 0,
                deleted: flags & 2 != 0,
            });
        }
        if !r.0.is_empty() || layers.is_empty() {
            return Err("volume record has trailing bytes or no layers".into());
        }
        Ok(VolumeRecord {
            size,
            next_rank,
            merge,
            layers,
        })
    }
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("volume record is truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// What [`load`] found in the database.
pub(crate) struct Loaded {
    pub next_fid: u64,
    pub volumes: Vec<(VolumeId, VolumeRecord)>,
    /// Map rows by fid, for every fid in the rows table.
    pub maps: HashMap<u64, BTreeMap<u64, ChunkBits>>,
    /// Missed marks by volume: ((server, layer, chunk), generation).
    pub missed: HashMap<VolumeId, Vec<(MarkKey, u64)>>,
    /// Activity log entries by fid: chunks.
    pub active: HashMap<u64, Vec<u64>>,
}

/// Whether the meta table holds `key` (false when there is no meta table yet).
fn has_meta(db: &Database, key: &str) -> Result<bool> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(meta.get(key)?.is_some())
}

/// True when the database has no format tag yet: it was just made (or emptied), and holds no
/// record of anything.
pub(crate) fn is_new(db: &Database) -> Result<bool> {
    Ok(!has_meta(db, "format")?)
}

/// Whether the store's owner took this database for its own ([`claim`]).
pub(crate) fn is_claimed(db: &Database) -> Result<bool> {
    has_meta(db, "claimed")
}

/// Records, durably, that the store's owner took this database for its own.
pub(crate) fn claim(db: &Database) -> Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(META)?.insert("claimed", [1u8].as_slice())?;
    txn.commit()?;
    Ok(())
}

/// Checks (or writes, for a new database) the format tag and loads everything.
pub(crate) fn load(db: &Database) -> Result<Loaded> {
    let txn = db.begin_write()?;
    let next_fid;
    {
        let mut meta = txn.open_table(META)?;
        let format = meta.get("format")?.map(|v| v.value().to_vec());
        match format {
            None => {
                let mut tag = FORMAT_MAGIC.to_vec();
                tag.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
                meta.insert("format", tag.as_slice())?;
            }
            Some(tag) => {
                let ok = tag.len() == FORMAT_MAGIC.len() + 4
                    && tag.starts_with(FORMAT_MAGIC)
                    && tag[FORMAT_MAGIC.len()..] == FORMAT_VERSION.to_le_bytes();
                if !ok {
                    return Err(StoreError::Corrupt(format!(
                        "the database's format tag {tag:?} is not this store's format version {FORMAT_VERSION}"
                    )));
                }
            }
        }
        next_fid = match meta.get("next_fid")? {
            None => 1,
            Some(v) => {
                let b: [u8; 8] = v
                    .value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("next_fid is not 8 bytes".into()))?;
                u64::from_le_bytes(b)
            }
        };
        txn.open_table(VOLUMES)?;
        txn.open_table(MAPS)?;
        txn.open_table(MISSED)?;
        txn.open_table(ACTIVE)?;
    }
    txn.commit()?;

    let txn = db.begin_read()?;
    let mut volumes = Vec::new();
    for row in txn.open_table(VOLUMES)?.iter()? {
        let (k, v) = row?;
        let id = VolumeId::from_bytes(k.value());
        let rec = VolumeRecord::decode(v.value())
            .map_err(|e| StoreError::Corrupt(format!("volume {id}: {e}")))?;
        volumes.push((id, rec));
    }
    let mut maps: HashMap<u64, BTreeMap<u64, ChunkBits>> = HashMap::new();
    for row in txn.open_table(MAPS)?.iter()? {
        let (k, v) = row?;
        let (fid, chunk) = k.value();
        let bits = ChunkBits::decode(v.value())
            .map_err(|e| StoreError::Corrupt(format!("file {fid} chunk {chunk}: {e}")))?;
        maps.entry(fid).or_default().insert(chunk, bits);
    }
    let mut missed: HashMap<VolumeId, Vec<(MarkKey, u64)>> = HashMap::new();
    for row in txn.open_table(MISSED)?.iter()? {
        let (k, v) = row?;
        let (vol, server, layer, chunk) = k.value();
        missed.entry(VolumeId::from_bytes(vol)).or_default().push((
            (
                ServerId::from_bytes(server),
                LayerId::from_bytes(layer),
                chunk,
            ),
            v.value(),
        ));
    }
    let mut active: HashMap<u64, Vec<u64>> = HashMap::new();
    for row in txn.open_table(ACTIVE)?.iter()? {
        let (fid, chunk) = row?.0.value();
        active.entry(fid).or_default().push(chunk);
    }
    Ok(Loaded {
        next_fid,
        volumes,
        maps,
        missed,
        active,
    })
}

/// Writes a volume record.
pub(crate) fn put_volume(txn: &WriteTransaction, id: VolumeId, rec: &VolumeRecord) -> Result<()> {
    txn.open_table(VOLUMES)?
        .insert(id.to_bytes(), rec.encode().as_slice())?;
    Ok(())
}

/// Removes a volume record.
pub(crate) fn remove_volume(txn: &WriteTransaction, id: VolumeId) -> Result<()> {
    txn.open_table(VOLUMES)?.remove(id.to_bytes())?;
    Ok(())
}

/// Writes (or, for `None`, removes) one missed mark of volume `vol`.
pub(crate) fn put_mark(
    t: &mut redb::Table<MarkRow, u64>,
    vol: VolumeId,
    (server, layer, chunk): MarkKey,
    generation: Option<u64>,
) -> Result<()> {
    let key = (vol.to_bytes(), server.to_bytes(), layer.to_bytes(), chunk);
    match generation {
        Some(g) => {
            t.insert(key, g)?;
        }
        None => {
            t.remove(key)?;
        }
    }
    Ok(())
}

/// Removes every missed mark of volume `vol`.
pub(crate) fn remove_marks(txn: &WriteTransaction, vol: VolumeId) -> Result<()> {
    let mut t = txn.open_table(MISSED)?;
    let v = vol.to_bytes();
    t.retain_in(
        (v, [0; 16], [0; 16], 0)..=(v, [255; 16], [255; 16], u64::MAX),
        |_, _| false,
    )?;
    Ok(())
}

/// Removes all map rows and activity log entries of a file id.
pub(crate) fn remove_rows(txn: &WriteTransaction, fid: u64) -> Result<()> {
    let mut t = txn.open_table(MAPS)?;
    t.retain_in((fid, 0)..=(fid, u64::MAX), |_, _| false)?;
    let mut t = txn.open_table(ACTIVE)?;
    t.retain_in((fid, 0)..=(fid, u64::MAX), |_, _| false)?;
    Ok(())
}

/// Writes (or, for `None`, removes) one map row.
pub(crate) fn put_row(
    t: &mut redb::Table<(u64, u64), &[u8]>,
    fid: u64,
    chunk: u64,
    bits: Option<&ChunkBits>,
) -> Result<()> {
    match bits {
        Some(b) if !b.is_empty() => {
            t.insert((fid, chunk), b.encode().as_slice())?;
        }
        _ => {
            t.remove((fid, chunk))?;
        }
    }
    Ok(())
}

/// The step `generation_floor` rises by at each unclean open: more changes than one chunk
/// takes between two crashes.
const FLOOR_STEP: u64 = 1 << 32;

/// Reads `generation_floor` and, with `raise` (an unclean open), raises it first by
/// [`FLOOR_STEP`], durably; returns the floor to use.
pub(crate) fn generation_floor(db: &Database, raise: bool) -> Result<u64> {
    let txn = db.begin_write()?;
    let floor = {
        let mut meta = txn.open_table(META)?;
        let cur = match meta.get("generation_floor")? {
            Some(v) => v.value().try_into().map(u64::from_le_bytes).unwrap_or(0),
            None => 0,
        };
        let floor = if raise {
            cur.saturating_add(FLOOR_STEP)
        } else {
            cur
        };
        if floor != cur {
            meta.insert("generation_floor", floor.to_le_bytes().as_slice())?;
        }
        floor
    };
    txn.commit()?;
    Ok(floor)
}

/// Raises the persisted `next_fid` to at least `next`.
pub(crate) fn bump_next_fid(txn: &WriteTransaction, next: u64) -> Result<()> {
    let mut meta = txn.open_table(META)?;
    let cur = match meta.get("next_fid")? {
        Some(v) => v.value().try_into().map(u64::from_le_bytes).unwrap_or(0),
        None => 0,
    };
    if next > cur {
        meta.insert("next_fid", next.to_le_bytes().as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn volume_record_round_trips() {
        let rec = VolumeRecord {
            size: 12345 * 512,
            next_rank: 7,
            merge: Some(MergeProgress {
                layer: LayerId::new_random(),
                dir: MergeDir::Down,
                next_chunk: 99,
            }),
            layers: vec![
                LayerRecord {
                    id: LayerId::new_random(),
                    rank: 1,
                    fid: 4,
                    frozen: true,
                    deleted: true,
                },
                LayerRecord {
                    id: LayerId::new_random(),
                    rank: 6,
                    fid: 9,
                    frozen: false,
                    deleted: false,
                },
            ],
        };
        let bytes = rec.encode();
        assert_eq!(VolumeRecord::decode(&bytes), Ok(rec));
        assert!(VolumeRecord::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
