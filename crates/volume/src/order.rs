//! The order of overlapping writes: one per chunk, fixed by the chunk's *primary* replica.
//!
//! Two gateways (or two requests of one client in flight together) may write overlapping
//! ranges of a chunk at once. If each sent its write to every replica in parallel, the replicas
//! could apply them in different orders and end up different, with nothing to tell which is
//! right. So a gateway first writes to the chunk's primary — its first current replica in
//! placement order, the same for every gateway — naming a *hold*: the primary applies the write
//! under a lock of its blocks and keeps the lock until the gateway releases the hold, after
//! every other replica has the write too (or was recorded as missing it). An overlapping write
//! of anyone else waits at the primary for that, so every replica sees overlapping writes in
//! the primary's order. Writes that do not overlap do not wait for each other.
//!
//! The locks live here, in [`RangeLocks`], on the primary. A hold is released by the gateway
//! (a wire `Release`, or directly when the gateway is the primary), when the connection that
//! took it closes (the gateway died or its link did), or, as a last resort against a gateway
//! that hangs, after [`HOLD_LEASE`].
//!
//! All gateways agree on a chunk's primary only while they route by the same view of which
//! replicas are current. When that changes (a replica goes stale, comes back in sync, a
//! migration starts or ends) the management group raises the volume's *routing epoch*, and
//! every write carries the epoch its gateway routed it by. A replica admits writes of one
//! volume in epochs that never go down ([`EpochFences`]): once it applied a write of epoch
//! `e`, it refuses (`NotReady`) any of an earlier one, and the gateway routes that write again
//! under the new view, to every replica. It admits only epochs its own copy of the management
//! state has reached (a later one is `NotReady` until it has), so no peer can make it refuse
//! every write by naming an epoch that was never committed. So two overlapping writes routed by different
//! primaries land in epoch order on every replica that takes both, and a write refused
//! somewhere is applied again after the other everywhere: the replicas end up the same.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_types::{VolumeId, BLOCK_SIZE};
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock};

/// How long a hold lasts if its gateway neither releases it nor closes its connection.
pub const HOLD_LEASE: Duration = Duration::from_secs(60);

/// How long a write waits at the primary for an overlapping hold before it is answered
/// `NotReady` (the gateway then retries): well inside a gateway's call timeout, so a wait is
/// never taken for a dead replica.
pub const HOLD_WAIT: Duration = Duration::from_secs(2);

/// Who took a hold: a gateway's token, and the wire connection it came over (`None`: a
/// gateway of this server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Chosen by the gateway for one write of one chunk; never reused.
    pub token: u64,
    /// The connection the hold came over, released with it when it closes.
    pub conn: Option<u64>,
}

/// How a gateway ordered one change of one chunk, as a replica receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Order {
    /// The volume's routing epoch the gateway chose the replicas by.
    pub epoch: u64,
    /// At the chunk's primary: the hold to take for the change.
    pub holder: Option<Holder>,
}

/// The latest routing epoch of each volume whose writes this server admitted (see the module
/// documentation).
#[derive(Default)]
pub struct EpochFences {
    fences: Mutex<HashMap<VolumeId, Arc<RwLock<u64>>>>,
}

impl EpochFences {
    /// Admits a change of `volume` routed by `epoch`, where `known` is the volume's epoch in
    /// this server's management state; refused (with why) if `epoch` is older than one this
    /// server admitted or knows, or newer than it knows. Otherwise returns a guard to hold while
    /// the change is applied, which keeps a change of a later epoch waiting until this one is
    /// in.
    pub async fn admit(
        &self,
        volume: VolumeId,
        epoch: u64,
        known: u64,
    ) -> Result<OwnedRwLockReadGuard<u64>, String> {
        if epoch > known {
            return Err(format!(
                "routing epoch {epoch} of volume {volume} is not known here yet (at {known})"
            ));
        }
        let stale =
            |latest: u64| format!("volume {volume} is routed by epoch {latest} now, not {epoch}");
        let fence = self.fences.lock().entry(volume).or_default().clone();
        let admitted = fence.clone().read_owned().await;
        let latest = (*admitted).max(known);
        if epoch < latest {
            return Err(stale(latest));
        }
        if epoch == *admitted {
            return Ok(admitted);
        }
        drop(admitted);
        // A later epoch: it is admitted once the changes of earlier ones in progress are in.
        let mut raised = fence.write_owned().await;
        if epoch < *raised {
            return Err(stale(*raised));
        }
        *raised = epoch;
        Ok(raised.downgrade())
    }

    /// Forgets the volumes `keep` rejects (they were deleted).
    pub fn retain(&self, keep: impl Fn(&VolumeId) -> bool) {
        self.fences.lock().retain(|v, _| keep(v));
    }
}

/// One held block range of a chunk.
struct Held {
    holder: Holder,
    /// Blocks `[start, end)` of the volume, in [`BLOCK_SIZE`] units.
    start: u64,
    end: u64,
    since: Instant,
}

/// A write waiting at the primary for a hold, in arrival order.
struct Waiting {
    ticket: u64,
    token: u64,
    start: u64,
    end: u64,
    /// When its wait ran out: its place is kept for [`KEPT_PLACE`], for the gateway's next
    /// attempt.
    gave_up: Option<Instant>,
}

/// How long a write whose wait ran out keeps its place in the queue: the gateway sends it
/// again within tens of milliseconds, and takes up its old place, so waiting in turn under
/// load never sends it to the back of the queue.
const KEPT_PLACE: Duration = Duration::from_millis(500);

/// How often a waiting write looks again even if no hold was released (a kept place may lapse).
const RECHECK: Duration = Duration::from_millis(100);

/// The holds of one chunk, and the writes waiting for one.
#[derive(Default)]
struct ChunkHolds {
    held: Vec<Held>,
    waiting: Vec<Waiting>,
}

/// The held ranges of this server, as primary, per (volume, chunk). Overlapping writes get
/// their holds in the order they arrived: a write waits for the overlapping holds taken and
/// for the overlapping writes that came before it and still wait, so a long stream of small
/// writes cannot keep a large one waiting until its time runs out.
#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<HashMap<(VolumeId, u64), ChunkHolds>>,
    released: Notify,
    tickets: std::sync::atomic::AtomicU64,
}

/// The blocks `[offset, offset+len)` touches: a write of part of a block rewrites the block.
fn blocks(offset: u64, len: u64) -> (u64, u64) {
    let start = offset / BLOCK_SIZE;
    let end = (offset + len).div_ceil(BLOCK_SIZE).max(start + 1);
    (start, end)
}

/// How a write's wait in the queue ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Left {
    /// It got its hold: the hold blocks what its place blocked.
    Held,
    /// Its wait ran out: the place is kept ([`Waiting::gave_up`]).
    GaveUp,
    /// Its request was dropped.
    Dropped,
}

/// A write's place in the queue while it waits; dropped, it leaves the queue as `left` says.
struct InQueue<'a> {
    locks: &'a RangeLocks,
    key: (VolumeId, u64),
    ticket: u64,
    left: Left,
}

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.held.lock();
        let Some(chunk) = map.get_mut(&self.key) else {
            return;
        };
        if self.left == Left::GaveUp {
            for w in chunk.waiting.iter_mut().filter(|w| w.ticket == self.ticket) {
                w.gave_up = Some(Instant::now());
            }
            return;
        }
        chunk.waiting.retain(|w| w.ticket != self.ticket);
        if chunk.held.is_empty() && chunk.waiting.is_empty() {
            map.remove(&self.key);
        }
        drop(map);
        if self.left == Left::Dropped {
            // A later write may have waited for this one only.
            self.locks.released.notify_waiters();
        }
    }
}

impl RangeLocks {
    /// Takes a hold of `[offset, offset+len)` of `chunk` for `holder`, waiting at most
    /// [`HOLD_WAIT`] for overlapping holds of others and for overlapping writes of others that
    /// arrived before it (a write sent again takes up the place its last attempt kept); `false`
    /// if it did not get the hold by then. A holder that already holds part of the chunk (a
    /// write sent again) is not blocked by itself. A write that is not blocked takes no place.
    pub async fn hold(
        &self,
        volume: VolumeId,
        chunk: u64,
        offset: u64,
        len: u64,
        holder: Holder,
    ) -> bool {
        let (start, end) = blocks(offset, len);
        let key = (volume, chunk);
        let deadline = tokio::time::Instant::now() + HOLD_WAIT;
        let overlaps = |token: u64, s: u64, e: u64| token != holder.token && s < end && start < e;
        let mut queued: Option<InQueue<'_>> = None;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut map = self.held.lock();
                let chunk_holds = map.entry(key).or_default();
                let expired = chunk_holds.held.len();
                chunk_holds.held.retain(|h| h.since.elapsed() < HOLD_LEASE);
                if chunk_holds.held.len() < expired {
                    tracing::warn!(%volume, chunk, "a write's hold outlived its lease; released it");
                }
                chunk_holds
                    .waiting
                    .retain(|w| w.gave_up.is_none_or(|at| at.elapsed() < KEPT_PLACE));
                // Its place: the one it took, or the one its last attempt kept; none yet (after
                // every waiting write) for a write just come.
                let place = queued.as_ref().map(|q| q.ticket).or_else(|| {
                    let kept = chunk_holds
                        .waiting
                        .iter_mut()
                        .find(|w| w.token == holder.token && (w.start, w.end) == (start, end))?;
                    kept.gave_up = None;
                    Some(kept.ticket)
                });
                // A write sent again by a holder goes before those that arrived after its
                // first one: they may wait for its hold, which waits for it.
                let resent = chunk_holds
                    .held
                    .iter()
                    .any(|h| h.holder.token == holder.token);
                let before = place.unwrap_or(u64::MAX);
                let blocked = chunk_holds
                    .held
                    .iter()
                    .any(|h| overlaps(h.holder.token, h.start, h.end))
                    || (!resent
                        && chunk_holds
                            .waiting
                            .iter()
                            .any(|w| w.ticket < before && overlaps(w.token, w.start, w.end)));
                if queued.is_none() {
                    let ticket = match place {
                        None if blocked => {
                            let ticket = self
                                .tickets
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            chunk_holds.waiting.push(Waiting {
                                ticket,
                                token: holder.token,
                                start,
                                end,
                                gave_up: None,
                            });
                            Some(ticket)
                        }
                        other => other,
                    };
                    queued = ticket.map(|ticket| InQueue {
                        locks: self,
                        key,
                        ticket,
                        left: Left::Dropped,
                    });
                }
                if !blocked {
                    chunk_holds.held.push(Held {
                        holder,
                        start,
                        end,
                        since: Instant::now(),
                    });
                    drop(map);
                    if let Some(q) = queued.as_mut() {
                        q.left = Left::Held;
                    }
                    return true;
                }
            }
            let wake = deadline.min(tokio::time::Instant::now() + RECHECK);
            if tokio::time::timeout_at(wake, released).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                if let Some(q) = queued.as_mut() {
                    q.left = Left::GaveUp;
                }
                return false;
            }
        }
    }

    /// Releases every hold of `token` on `chunk`.
    pub fn release(&self, volume: VolumeId, chunk: u64, token: u64) {
        self.remove(|key, h| *key == (volume, chunk) && h.holder.token == token);
    }

    /// The (volume, chunk)s with holds taken over wire connection `conn`.
    pub fn held_over(&self, conn: u64) -> Vec<(VolumeId, u64)> {
        self.held
            .lock()
            .iter()
            .filter(|(_, c)| c.held.iter().any(|h| h.holder.conn == Some(conn)))
            .map(|(key, _)| *key)
            .collect()
    }

    /// Releases every hold taken over wire connection `conn` (it closed).
    pub fn release_conn(&self, conn: u64) {
        self.remove(|_, h| h.holder.conn == Some(conn));
    }

    fn remove(&self, what: impl Fn(&(VolumeId, u64), &Held) -> bool) {
        let mut removed = false;
        self.held.lock().retain(|key, c| {
            c.waiting
                .retain(|w| w.gave_up.is_none_or(|at| at.elapsed() < KEPT_PLACE));
            let before = c.held.len();
            c.held.retain(|h| !what(key, h));
            removed |= c.held.len() < before;
            !c.held.is_empty() || !c.waiting.is_empty()
        });
        if removed {
            self.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn holder(token: u64) -> Holder {
        Holder { token, conn: None }
    }

    #[tokio::test]
    async fn an_overlapping_hold_waits_for_the_release() {
        let locks = Arc::new(RangeLocks::default());
        let v = VolumeId::new_random();
        assert!(locks.hold(v, 0, 0, 65536, holder(1)).await);
        // Blocks that do not overlap, and other chunks, are not held up.
        assert!(locks.hold(v, 0, 65536, 4096, holder(2)).await);
        assert!(locks.hold(v, 1, 0, 65536, holder(3)).await);
        // A holder sending its write again is not blocked by itself.
        assert!(locks.hold(v, 0, 0, 512, holder(1)).await);
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.hold(v, 0, 61440, 8192, holder(4)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "overlaps the holds of 1 and 2");
        locks.release(v, 0, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "still overlaps the hold of 2");
        locks.release(v, 0, 2);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn overlapping_writes_get_their_holds_in_the_order_they_came() {
        let locks = Arc::new(RangeLocks::default());
        let v = VolumeId::new_random();
        assert!(locks.hold(v, 0, 0, 4096, holder(1)).await);
        let wait = |offset, len, token| {
            let locks = locks.clone();
            tokio::spawn(async move { locks.hold(v, 0, offset, len, holder(token)).await })
        };
        // A large write waits for the hold of 1.
        let large = wait(0, 65536, 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A small one after it overlaps only the large one: it does not pass it.
        let small = wait(8192, 4096, 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !small.is_finished(),
            "passed the large write that came first"
        );
        // One that overlaps neither goes on at once.
        assert!(locks.hold(v, 0, 131072, 4096, holder(4)).await);
        // Holder 1 sending its write again is not queued behind the large one.
        assert!(locks.hold(v, 0, 0, 8192, holder(1)).await);
        locks.release(v, 0, 1);
        assert!(large.await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!small.is_finished(), "overlaps the hold of 2");
        locks.release(v, 0, 2);
        assert!(small.await.unwrap());
    }

    #[tokio::test]
    async fn a_write_whose_wait_ran_out_keeps_its_place_for_a_while() {
        let locks = Arc::new(RangeLocks::default());
        let v = VolumeId::new_random();
        assert!(locks.hold(v, 0, 0, 4096, holder(1)).await);
        assert!(!locks.hold(v, 0, 0, 65536, holder(2)).await, "held by 1");
        // The small write came after the large one's first attempt: it waits for its next.
        let small = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.hold(v, 0, 8192, 4096, holder(3)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!small.is_finished(), "passed the large write's kept place");
        let large = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.hold(v, 0, 0, 65536, holder(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        locks.release(v, 0, 1);
        assert!(
            large.await.unwrap(),
            "the large write takes its place again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!small.is_finished());
        locks.release(v, 0, 2);
        assert!(small.await.unwrap());
        // A place nobody takes up again lapses.
        locks.release(v, 0, 3);
        assert!(locks.hold(v, 0, 0, 4096, holder(4)).await);
        assert!(!locks.hold(v, 0, 0, 65536, holder(5)).await, "held by 4");
        let started = Instant::now();
        assert!(locks.hold(v, 0, 8192, 4096, holder(6)).await);
        assert!(started.elapsed() >= KEPT_PLACE - RECHECK);
    }

    #[tokio::test]
    async fn a_write_that_stops_waiting_leaves_the_queue() {
        let locks = Arc::new(RangeLocks::default());
        let v = VolumeId::new_random();
        assert!(locks.hold(v, 0, 0, 4096, holder(1)).await);
        let large = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.hold(v, 0, 0, 65536, holder(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        large.abort();
        let _ = large.await;
        // Only the hold of 1 is left in the way of what the large write covered.
        assert!(locks.hold(v, 0, 8192, 4096, holder(3)).await);
        assert!(locks
            .held
            .lock()
            .get(&(v, 0))
            .is_some_and(|c| c.waiting.is_empty()));
    }

    #[tokio::test]
    async fn epochs_are_admitted_in_an_order_that_never_goes_down() {
        let fences = Arc::new(EpochFences::default());
        let v = VolumeId::new_random();
        assert!(fences.admit(v, 3, 2).await.is_err(), "not committed here");
        let first = fences.admit(v, 3, 3).await.expect("a first epoch");
        assert!(fences.admit(v, 2, 3).await.is_err(), "an earlier epoch");
        assert!(fences.admit(v, 3, 5).await.is_err(), "known to be old");
        let same = fences
            .admit(v, 3, 3)
            .await
            .expect("the same epoch, at once");
        // A later epoch waits for the changes of the earlier one in progress.
        let later = {
            let fences = fences.clone();
            tokio::spawn(async move { fences.admit(v, 4, 4).await.map(|g| *g) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !later.is_finished(),
            "changes of epoch 3 are still in progress"
        );
        drop((first, same));
        assert_eq!(later.await.unwrap(), Ok(4));
        assert!(fences.admit(v, 3, 3).await.is_err(), "epoch 4 was admitted");
        let other = VolumeId::new_random();
        assert!(fences.admit(other, 0, 0).await.is_ok(), "volumes are apart");
    }

    #[tokio::test]
    async fn a_hold_is_released_with_its_connection_and_a_wait_is_bounded() {
        let locks = RangeLocks::default();
        let v = VolumeId::new_random();
        let wire = Holder {
            token: 7,
            conn: Some(42),
        };
        assert!(locks.hold(v, 3, 100, 1, wire).await);
        let started = Instant::now();
        assert!(
            !locks.hold(v, 3, 0, 4096, holder(8)).await,
            "a sub-block overlap"
        );
        assert!(started.elapsed() >= HOLD_WAIT);
        locks.release_conn(41);
        assert!(!locks.hold(v, 3, 0, 4096, holder(8)).await);
        locks.release_conn(42);
        assert!(locks.hold(v, 3, 0, 4096, holder(8)).await);
    }
}
