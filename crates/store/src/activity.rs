//! The activity log: which chunks of which layer files may hold writes that are not flushed.
//!
//! Before the first write to a chunk of a layer file (after the chunk left the log), the write
//! records `(fid, chunk)` durably in table `active_v1`; writes of concurrent callers that find
//! their chunk missing share one commit. A flush removes, in its own transaction, the entries
//! no write touched since the flush before it (so a chunk written in every flush interval stays
//! in the log and costs nothing more), and only entries with no write in progress. After an
//! unclean stop the log therefore names every chunk that may have lost writes, or may hold
//! writes another replica lacks; [`crate::Store::suspect_chunks`] gives them to the caller,
//! which has them resynced. This is DRBD's activity log, with 4 MiB chunks as its extents.
//!
//! Entries found at open are *pinned* until the caller says it recorded them elsewhere
//! ([`crate::Store::forget_suspects`]), so no flush in between drops them.

use crate::error::Result;
use crate::meta;
use parking_lot::Mutex;
use redb::{Database, WriteTransaction};
use std::collections::{HashMap, HashSet};

/// Key of an entry: (layer file id, chunk).
pub(crate) type ActiveKey = (u64, u64);

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// Written since the last flush started.
    written: bool,
    /// Writes to the chunk in progress (between [`ActivityLog::enter`] and the guard's drop).
    in_progress: u32,
    /// Found at open after an unclean stop, and not yet forgotten by the caller.
    pinned: bool,
}

#[derive(Default)]
struct State {
    entries: HashMap<ActiveKey, Entry>,
    /// Keys waiting for a commit by whichever caller commits next.
    pending: HashSet<ActiveKey>,
}

/// One volume's activity log.
#[derive(Default)]
pub(crate) struct ActivityLog {
    state: Mutex<State>,
    /// Held while committing new entries: one commit at a time, each taking every pending key.
    committing: Mutex<()>,
}

/// A write to one chunk in progress; the entry stays while it lives.
pub(crate) struct InProgress<'a> {
    log: &'a ActivityLog,
    key: ActiveKey,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.log.state.lock().entries.get_mut(&self.key) {
            e.in_progress -= 1;
        }
    }
}

impl ActivityLog {
    /// The log as found at open; with `unclean`, its entries are pinned (see the module doc).
    pub fn loaded(keys: impl IntoIterator<Item = ActiveKey>, unclean: bool) -> ActivityLog {
        let entries = keys
            .into_iter()
            .map(|k| {
                let e = Entry {
                    pinned: unclean,
                    ..Entry::default()
                };
                (k, e)
            })
            .collect();
        ActivityLog {
            state: Mutex::new(State {
                entries,
                pending: HashSet::new(),
            }),
            committing: Mutex::new(()),
        }
    }

    /// Starts a write to `key`: durably in the log before this returns.
    pub fn enter(&self, db: &Database, key: ActiveKey) -> Result<InProgress<'_>> {
        loop {
            {
                let mut st = self.state.lock();
                if let Some(e) = st.entries.get_mut(&key) {
                    e.written = true;
                    e.in_progress += 1;
                    return Ok(InProgress { log: self, key });
                }
                st.pending.insert(key);
            }
            let _one = self.committing.lock();
            let batch = {
                let mut st = self.state.lock();
                if st.entries.contains_key(&key) {
                    continue; // the commit before ours took it
                }
                let mut batch = std::mem::take(&mut st.pending);
                batch.insert(key); // a failed commit before ours dropped it
                batch
            };
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(meta::ACTIVE)?;
                for k in &batch {
                    t.insert(*k, ())?;
                }
            }
            txn.commit()?;
            let mut st = self.state.lock();
            for k in batch {
                st.entries.entry(k).or_insert(Entry {
                    written: true,
                    ..Entry::default()
                });
            }
        }
    }

    /// Called as a flush starts, before it syncs: the entries that may leave the log with it
    /// (no write since the previous flush started, none in progress, not pinned). Every other
    /// entry starts a new interval.
    pub fn idle(&self) -> Vec<ActiveKey> {
        let mut st = self.state.lock();
        let mut idle = Vec::new();
        for (k, e) in st.entries.iter_mut() {
            if !e.written && e.in_progress == 0 && !e.pinned {
                idle.push(*k);
            }
            e.written = false;
        }
        idle
    }

    /// Inside the flush's transaction, after its sync: removes those of `idle` that are still
    /// idle, from memory and from the table. A write that finds its entry gone commits it again
    /// after this transaction.
    pub fn retire(&self, txn: &WriteTransaction, idle: &[ActiveKey]) -> Result<()> {
        if idle.is_empty() {
            return Ok(());
        }
        let mut t = txn.open_table(meta::ACTIVE)?;
        let mut st = self.state.lock();
        for k in idle {
            if st
                .entries
                .get(k)
                .is_some_and(|e| !e.written && e.in_progress == 0 && !e.pinned)
            {
                st.entries.remove(k);
                t.remove(*k)?;
            }
        }
        Ok(())
    }

    /// Keeps every entry through the next flush, as if each chunk had just been written: the
    /// store's last flush before a close that must leave them for the next open.
    pub fn keep_all(&self) {
        for e in self.state.lock().entries.values_mut() {
            e.written = true;
        }
    }

    /// The pinned entries (found at open after an unclean stop).
    pub fn pinned(&self) -> Vec<ActiveKey> {
        let st = self.state.lock();
        let mut keys: Vec<ActiveKey> = st
            .entries
            .iter()
            .filter(|(_, e)| e.pinned)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Unpins every entry: later flushes may remove them.
    pub fn unpin(&self) {
        for e in self.state.lock().entries.values_mut() {
            e.pinned = false;
        }
    }

    /// Inside the transaction that drops layer file `from` (a finished merge, whose blocks are
    /// in file `to` now): its entries become `to`'s.
    pub fn move_file(&self, txn: &WriteTransaction, from: u64, to: u64) -> Result<()> {
        let mut t = txn.open_table(meta::ACTIVE)?;
        let mut st = self.state.lock();
        let moved: Vec<(ActiveKey, Entry)> = st
            .entries
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|(k, e)| (*k, *e))
            .collect();
        for ((_, chunk), e) in moved {
            st.entries.remove(&(from, chunk));
            let to_entry = st.entries.entry((to, chunk)).or_default();
            to_entry.pinned |= e.pinned;
            to_entry.written |= e.written;
            t.insert((to, chunk), ())?;
        }
        Ok(())
    }

    /// Forgets the entries of a layer file that is going away (its rows go with
    /// [`meta::remove_rows`]).
    pub fn forget_file(&self, fid: u64) {
        self.state.lock().entries.retain(|(f, _), _| *f != fid);
    }
}
