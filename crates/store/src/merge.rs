//! The background merger: folds deleted snapshots into the layer above them.
//!
//! Deleting layer k (persisted at once as a `deleted` flag) leaves it in the stack, invisible
//! to listings but still read through, until the merger has moved into the layer above (u)
//! every block of k that u lacks, so reads at u and above never change. Two directions:
//! - **up**: copy k's missing blocks into u's file and set u's bits; used when u is the head
//!   (writes keep going to u: both sides take the chunk's stripe lock, and a block u already
//!   holds is never overwritten) or when k has fewer blocks to move;
//! - **down**: copy u's blocks into k's file (u's data over k's, u's zeros punched), then point
//!   u at k's file and maps; used when u is frozen and smaller, e.g. the oldest snapshot
//!   holding the base under a small newer delta, so the cost is the delta, not the base.
//!
//! Progress — (layer, direction, next chunk) — is persisted in the volume record together with
//! the map rows of each batch, after the files were synced; a restart resumes from it, and
//! redoing a chunk is harmless. The merger runs one merge at a time, throttled to
//! `merge_rate_bytes_per_sec`, and stops between chunks on shutdown.

use crate::bits::Bits;
use crate::error::{Result, StoreError};
use crate::index::groups;
use crate::meta::{self, MergeDir, MergeProgress};
use crate::store::Inner;
use crate::volume::{Layer, Stack, Volume};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_types::{BLOCKS_PER_CHUNK, BLOCK_SIZE};

/// Merger bookkeeping, under `Inner::ctl`.
#[derive(Default)]
pub(crate) struct MergeCtl {
    /// Bumped whenever there may be new work.
    requested: u64,
    /// The last `requested` value after which the merger found nothing left to do.
    done: u64,
    stopped: bool,
}

/// Starts the merger thread.
pub(crate) fn spawn(inner: Arc<Inner>) -> Result<std::thread::JoinHandle<()>> {
    inner.ctl.lock().requested = 1;
    std::thread::Builder::new()
        .name("strata-merge".into())
        .spawn(move || run(&inner))
        .map_err(|e| StoreError::io("starting the merge thread", e))
}

/// Tells the merger there is work.
pub(crate) fn kick(inner: &Inner) {
    inner.ctl.lock().requested += 1;
    inner.kick.notify_all();
}

/// Asks the merger to stop after the chunk it is copying.
pub(crate) fn stop(inner: &Inner) {
    let _c = inner.ctl.lock();
    inner.shutdown.store(true, Ordering::Release);
    inner.kick.notify_all();
}

/// Waits until the merger has found nothing left to do (or stopped).
pub(crate) fn wait_idle(inner: &Inner) {
    let mut c = inner.ctl.lock();
    let target = c.requested;
    while c.done < target && !c.stopped {
        inner.idle.wait(&mut c);
    }
}

fn shutting_down(inner: &Inner) -> bool {
    inner.shutdown.load(Ordering::Acquire)
}

fn run(inner: &Inner) {
    loop {
        let generation = inner.ctl.lock().requested;
        run_pending(inner);
        let mut c = inner.ctl.lock();
        if shutting_down(inner) {
            c.stopped = true;
            inner.idle.notify_all();
            return;
        }
        if c.requested == generation {
            c.done = generation;
            inner.idle.notify_all();
            while c.requested == generation && !shutting_down(inner) {
                // Merges waiting for space are tried again when room comes back, however it
                // came: look now and then.
                if inner.kick.wait_for(&mut c, SPACE_RETRY).timed_out() {
                    break;
                }
            }
        }
    }
}

/// How often an idle merger looks whether merges that found no space can go on.
const SPACE_RETRY: Duration = Duration::from_secs(1);

/// Runs merges until none is left, one failed (or waits for space) on every volume that has
/// some, or shutdown.
fn run_pending(inner: &Inner) {
    inner.space_freed();
    while !shutting_down(inner) {
        let vols: Vec<_> = inner.volumes.read().values().cloned().collect();
        let next = vols.into_iter().find(|v| {
            !v.merge_stalled.load(Ordering::Acquire)
                && !v.merge_waits_for_space.load(Ordering::Acquire)
                && v.stack.read().layers.iter().any(|l| l.deleted)
        });
        let Some(v) = next else { return };
        match merge_volume(inner, &v) {
            Ok(()) => {}
            Err(StoreError::NoSpace) => {
                tracing::warn!(volume = %v.id, "merge found no space; it goes on when the filesystem has room");
                v.merge_waits_for_space.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::error!(volume = %v.id, error = %e, "merge failed; retried at the next start");
                v.merge_stalled.store(true, Ordering::Release);
            }
        }
    }
}

/// Positions of the layer being merged and the layer above it.
pub(crate) fn positions(st: &Stack, p: &MergeProgress) -> Result<(usize, usize)> {
    match st.layers.iter().position(|l| l.id == p.layer) {
        Some(k) if k + 1 < st.layers.len() && st.layers[k].deleted => Ok((k, k + 1)),
        _ => Err(StoreError::Corrupt(format!(
            "merge of layer {} has lost its layer",
            p.layer
        ))),
    }
}

/// Picks the direction that copies fewer blocks.
fn choose(k: &Layer, u: &Layer) -> MergeDir {
    if !u.frozen {
        return MergeDir::Up;
    }
    let u_held: HashMap<u64, Bits> = u
        .data
        .maps
        .read()
        .iter()
        .map(|(c, b)| (*c, b.held()))
        .collect();
    let down: u64 = u.data.maps.read().values().map(|b| b.data.count()).sum();
    let up: u64 = k
        .data
        .maps
        .read()
        .iter()
        .map(|(c, b)| {
            b.data
                .and_not(&u_held.get(c).copied().unwrap_or_default())
                .count()
        })
        .sum();
    if down < up {
        MergeDir::Down
    } else {
        MergeDir::Up
    }
}

/// Merges the lowest deleted layer of `v` (or resumes the recorded merge), start to finish.
fn merge_volume(inner: &Inner, v: &Volume) -> Result<()> {
    let mut p = {
        // Exclusive while the merge starts: a chunk image written into the layer above (which
        // holds the stack for reading throughout) then either lands before the merge lists the
        // chunks to copy, or sees the merge and is refused (`StoreError::LayerMerging`).
        let st = v.stack.write();
        if st.gone {
            return Ok(());
        }
        let recorded = *v.merge.lock();
        match recorded {
            Some(p) => p,
            None => {
                let Some(k) = st.layers.iter().position(|l| l.deleted) else {
                    return Ok(());
                };
                let dir = choose(&st.layers[k], &st.layers[k + 1]);
                let p = MergeProgress {
                    layer: st.layers[k].id,
                    dir,
                    next_chunk: 0,
                };
                let txn = inner.db.begin_write()?;
                meta::put_volume(&txn, v.id, &st.record(Some(p)))?;
                txn.commit()?;
                *v.merge.lock() = Some(p);
                tracing::info!(volume = %v.id, layer = %p.layer, ?dir, "merge started");
                p
            }
        }
    };
    let rate = inner.opts.merge_rate_bytes_per_sec.filter(|r| *r > 0);
    let batch_bytes = rate.map_or(32 << 20, |r| (r / 8).clamp(256 << 10, 32 << 20));
    let started = Instant::now();
    let mut copied_total = 0u64;
    loop {
        let st = v.stack.read();
        if st.gone {
            return Ok(());
        }
        let (kp, up) = positions(&st, &p)?;
        let (k, u) = (&st.layers[kp], &st.layers[up]);
        let src = if p.dir == MergeDir::Up { k } else { u };
        let chunks: Vec<u64> = src
            .data
            .maps
            .read()
            .range(p.next_chunk..)
            .map(|(c, _)| *c)
            .take(64)
            .collect();
        let mut copied = 0;
        // On a full filesystem a merge up moves one chunk at a time and frees the merged
        // layer's copy of it once the batch is durable, so it needs at most a chunk of room.
        let full = v.space.is_full();
        let limit = if full { 1 } else { batch_bytes };
        let mut done = Vec::new();
        for &c in &chunks {
            if shutting_down(inner) {
                return Ok(());
            }
            let _g = v.stripe(c);
            copied += match p.dir {
                MergeDir::Up => copy_blocks(v, k, u, c, false)?,
                MergeDir::Down => copy_blocks(v, u, k, c, true)?,
            };
            p.next_chunk = c + 1;
            done.push(c);
            if copied >= limit {
                break;
            }
        }
        let finished = src.data.maps.read().range(p.next_chunk..).next().is_none();
        let rec = st.record(Some(p));
        v.flush_with(&inner.db, &st, |txn| meta::put_volume(txn, v.id, &rec))?;
        *v.merge.lock() = Some(p);
        if full && p.dir == MergeDir::Up {
            free_merged(k, &done)?;
        }
        drop(st);
        inner.merged_bytes.fetch_add(copied, Ordering::Relaxed);
        copied_total += copied;
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(copied_total as f64 / r as f64);
            while started.elapsed() < due && !shutting_down(inner) {
                std::thread::sleep((due - started.elapsed()).min(Duration::from_millis(20)));
            }
        }
        if finished {
            return finish(inner, v, p);
        }
    }
}

/// Punches the data of `chunks` out of the file of `k`, a deleted layer merging up whose
/// blocks in those chunks the layer above now holds durably: nothing reads them any more
/// (reads at the layer above and higher find the upper copy first; `k` itself is not read), and
/// a restart resumes the merge past them. Its maps are kept, so trims above still shadow them.
fn free_merged(k: &Layer, chunks: &[u64]) -> Result<()> {
    for &c in chunks {
        let Some(bits) = k.data.get(c) else { continue };
        let base = c * BLOCKS_PER_CHUNK;
        for (a, b) in bits.data.runs() {
            k.data.punch(
                (base + u64::from(a)) * BLOCK_SIZE,
                u64::from(b - a) * BLOCK_SIZE,
            )?;
        }
    }
    Ok(())
}

/// Copies chunk `c` from `from` into `to`: down (`overlay`) copies all of `from`'s blocks over
/// `to`; up copies only the blocks `to` lacks. Returns bytes copied. Caller holds the stripe.
fn copy_blocks(v: &Volume, from: &Layer, to: &Layer, c: u64, overlay: bool) -> Result<u64> {
    let Some(fb) = from.data.get(c) else {
        return Ok(0);
    };
    let tb = to.data.get(c).unwrap_or_default();
    let (data, zero) = if overlay {
        (fb.data, fb.zero)
    } else {
        let missing = fb.held().and_not(&tb.held());
        (fb.data.and(&missing), fb.zero.and(&missing))
    };
    if data.is_empty() && zero.is_empty() {
        if fb.generation > tb.generation {
            v.update_bits(to, c, |cb| cb.generation = cb.generation.max(fb.generation));
        }
        return Ok(0);
    }
    let base = c * BLOCKS_PER_CHUNK;
    let mut bytes = 0;
    for (a, b) in data.runs() {
        let off = (base + u64::from(a)) * BLOCK_SIZE;
        let mut buf = vec![0u8; (u64::from(b - a) * BLOCK_SIZE) as usize];
        from.data.read_at(&mut buf, off)?;
        to.data.write_at(&buf, off).map_err(|e| v.space.note(e))?;
        bytes += buf.len() as u64;
    }
    for (a, b) in zero.and(&tb.data).runs() {
        let off = (base + u64::from(a)) * BLOCK_SIZE;
        to.data.punch(off, u64::from(b - a) * BLOCK_SIZE)?;
    }
    v.update_bits(to, c, |cb| {
        cb.put_data(&data);
        cb.put_zero(&zero);
        cb.generation = cb.generation.max(fb.generation);
    });
    Ok(bytes)
}

/// Removes the merged layer from the stack (up), or relabels its file as the upper layer's
/// (down), in one transaction with the last map rows; then deletes the file no longer used.
fn finish(inner: &Inner, v: &Volume, p: MergeProgress) -> Result<()> {
    let mut st = v.stack.write();
    if st.gone {
        return Ok(());
    }
    let (kp, up) = positions(&st, &p)?;
    let mut rec = st.record(None);
    let (dropped_fid, kept_fid) = match p.dir {
        MergeDir::Up => (st.layers[kp].data.fid, st.layers[up].data.fid),
        MergeDir::Down => {
            rec.layers[up].fid = st.layers[kp].data.fid;
            (st.layers[up].data.fid, st.layers[kp].data.fid)
        }
    };
    rec.layers.remove(kp);
    v.flush_with(&inner.db, &st, |txn| {
        meta::put_volume(txn, v.id, &rec)?;
        meta::remove_rows(txn, dropped_fid)?;
        // Chunks still named as suspect (after an unclean stop) stay named, in the file that
        // now holds their blocks.
        v.activity.move_file(txn, dropped_fid, kept_fid)
    })?;
    let k = st.layers.remove(kp);
    let k_chunks: Vec<(u64, u64)> = k
        .data
        .maps
        .read()
        .iter()
        .map(|(c, b)| (*c, groups(&b.held())))
        .collect();
    let dropped = match p.dir {
        MergeDir::Up => {
            for (c, _) in k_chunks {
                v.index.remove(c, k.rank);
            }
            k.data
        }
        MergeDir::Down => {
            let u = &mut st.layers[kp];
            for (c, g) in k_chunks {
                v.index.remove(c, k.rank);
                v.index.set(c, u.rank, g);
            }
            std::mem::replace(&mut u.data, k.data)
        }
    };
    *v.merge.lock() = None;
    // The layer above now holds the merged layer's blocks, and so its missed marks.
    let upper = st.layers[kp].id;
    v.missed.lock().relabel(p.layer, upper);
    v.forget_dirty(dropped_fid);
    // No writer waits for the removal and the directory sync.
    drop(st);
    let removed = std::fs::remove_file(&dropped.path)
        .map_err(|e| StoreError::io(format!("removing {}", dropped.path.display()), e))
        .and_then(|()| crate::layer::sync_dir(&v.dir));
    if let Err(e) = removed {
        tracing::warn!(file = ?dropped.path, error = %e, "could not remove a merged layer file; the next start moves it aside");
    }
    // Its blocks are freed when the last handle closes.
    drop(dropped);
    inner.space_freed();
    tracing::info!(volume = %v.id, layer = %p.layer, dir = ?p.dir, "merge finished");
    Ok(())
}
