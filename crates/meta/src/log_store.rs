//! The Raft log in redb: openraft's [`RaftLogStorage`] and [`RaftLogReader`].
//!
//! Entries live in the `log` table keyed by index; the vote, the committed hint and the last
//! purged log id live in the `raft` table (see `db.rs` for the layout and durability rules).
//! The store is a cheap handle on the shared database, so the reader handed to replication
//! tasks is simply a clone.
//!
//! An append or a vote returns only after its redb commit (with fsync) has finished; the
//! append's flush callback is called right after that commit, so openraft never counts an entry
//! as persisted before it is on disk.

use crate::db::{self, io_err, Db, DbResult, LogEntry, StoreError, LOG, RAFT};
use crate::TypeConfig;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Durability, ReadableTable};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// The Raft log and vote of one node, in the shared redb database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    /// A log store on `db` (tables must exist; see `db::open`).
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Writes `value` under `key` in the `raft` table, with or without fsync.
    fn put_raft<T: serde::Serialize>(&self, key: &str, value: &T, durable: bool) -> DbResult<()> {
        let bytes = db::to_json(value)?;
        let mut tx = self.db.begin_write()?;
        if !durable {
            tx.set_durability(Durability::None);
        }
        {
            let mut t = tx.open_table(RAFT)?;
            t.insert(key, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn last_purged(&self) -> DbResult<Option<LogId<u64>>> {
        db::get_json(&self.db, RAFT, KEY_PURGED)
    }

    fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> DbResult<Vec<LogEntry>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LOG)?;
        let mut out = Vec::new();
        for item in t.range(range)? {
            let (k, v) = item?;
            let entry: LogEntry = serde_json::from_slice(v.value()).map_err(|e| {
                db::corrupted(format!("log entry {} is unreadable: {e}", k.value()))
            })?;
            out.push(entry);
        }
        Ok(out)
    }

    fn append_sync(&self, entries: Vec<LogEntry>) -> DbResult<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(LOG)?;
            for entry in &entries {
                let bytes = db::to_json(entry)?;
                t.insert(entry.log_id.index, bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes entries with index in `range`; `durable` chooses fsync.
    fn remove_range<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        purged: Option<LogId<u64>>,
        durable: bool,
    ) -> DbResult<()> {
        let mut tx = self.db.begin_write()?;
        if !durable {
            tx.set_durability(Durability::None);
        }
        {
            let mut t = tx.open_table(LOG)?;
            t.retain_in(range, |_, _| false)?;
            if let Some(p) = purged {
                let bytes = db::to_json(&p)?;
                tx.open_table(RAFT)?.insert(KEY_PURGED, bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StoreError> {
        self.read_range(range)
            .map_err(|e| io_err(StorageIOError::read_logs, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StoreError> {
        let purged = self
            .last_purged()
            .map_err(|e| io_err(StorageIOError::read_logs, e))?;
        let last = (|| -> DbResult<Option<LogId<u64>>> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(LOG)?;
            let Some((k, v)) = t.last()? else {
                return Ok(None);
            };
            let entry: LogEntry = serde_json::from_slice(v.value()).map_err(|e| {
                db::corrupted(format!("log entry {} is unreadable: {e}", k.value()))
            })?;
            Ok(Some(entry.log_id))
        })()
        .map_err(|e| io_err(StorageIOError::read_logs, e))?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StoreError> {
        self.put_raft(KEY_VOTE, vote, true)
            .map_err(|e| io_err(StorageIOError::write_vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StoreError> {
        db::get_json(&self.db, RAFT, KEY_VOTE).map_err(|e| io_err(StorageIOError::read_vote, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StoreError> {
        // A hint only: losing it on a crash means re-learning the commit point from the leader.
        self.put_raft(KEY_COMMITTED, &committed, false)
            .map_err(|e| io_err(StorageIOError::write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StoreError> {
        let c: Option<Option<LogId<u64>>> = db::get_json(&self.db, RAFT, KEY_COMMITTED)
            .map_err(|e| io_err(StorageIOError::read, e))?;
        Ok(c.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<LogEntry> = entries.into_iter().collect();
        match self.append_sync(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(StorageIOError::write_logs, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StoreError> {
        tracing::debug!(%log_id, "truncating the Raft log");
        self.remove_range(log_id.index.., None, true)
            .map_err(|e| io_err(StorageIOError::write_logs, e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StoreError> {
        tracing::debug!(%log_id, "purging the Raft log");
        self.remove_range(..=log_id.index, Some(log_id), false)
            .map_err(|e| io_err(StorageIOError::write_logs, e))
    }
}
