//! The one redb file that holds all of a node's Raft and management data: `<dir>/meta.redb`.
//!
//! Tables (all values are JSON, versioned where they are our own format):
//! - `log`: `u64` log index → one serialized `Entry<TypeConfig>`.
//! - `raft`: `&str` key → value. Keys: `vote` (the durable vote), `committed` (last committed
//!   log id, a hint used to re-apply after restart), `last_purged` (log id of the last purged
//!   entry).
//! - `sm`: key `state` → [`SmData`]: the applied state, its last applied log id and the last
//!   membership, written once per applied batch.
//! - `snapshot`: key `meta` → the current snapshot's `SnapshotMeta`; key `data` → its bytes (a
//!   serialized [`SmData`]).
//!
//! Durability: the vote, log appends and truncations commit with redb's default (fsync) before
//! openraft is told they are done. The state machine commits with fsync too: servers act on the
//! applied state (a store creates, freezes and deletes volumes after the state says so), so the
//! state may never go back after a crash — redb's non-durable commits are lost on a process
//! kill, and a reconcile from an older state would delete a volume that holds flushed data.
//! The committed hint and purges commit without fsync (a later fsynced commit carries them;
//! openraft tolerates losing them). Snapshots are written durably because purged log entries
//! exist only in them.

use crate::model::StateView;
use crate::TypeConfig;
use openraft::{LogId, StorageError, StorageIOError, StoredMembership};
use redb::{Database, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::Path;
use tokio::sync::watch;

/// Log entries by index.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Raft bookkeeping: vote, committed, last purged.
pub(crate) const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");
/// The state machine's persisted state.
pub(crate) const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");
/// The current snapshot.
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// The file name inside the metadata directory.
pub const DB_FILE: &str = "meta.redb";

/// Format version of [`SmData`]; bump on incompatible change.
pub(crate) const SM_FORMAT: u32 = 1;

/// A redb failure (or an undecodable record), boxed because `redb::Error` is large.
#[derive(Debug)]
pub(crate) struct DbError(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for DbError {
    fn from(e: E) -> Self {
        DbError(Box::new(e.into()))
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DbError {}

/// A result of a redb operation.
pub(crate) type DbResult<T> = Result<T, DbError>;

/// Shorthand for the storage error type openraft wants.
pub(crate) type StoreError = StorageError<u64>;

/// Everything the state machine persists, and the content of a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SmData {
    /// [`SM_FORMAT`] when written.
    pub format: u32,
    /// The last log entry applied.
    pub last_applied: Option<LogId<u64>>,
    /// The last membership config applied.
    pub last_membership: StoredMembership<u64, openraft::BasicNode>,
    /// The management state.
    pub state: StateView,
}

/// The open database, shared by the log store and the state machine. When the last handle is
/// gone and the file is closed, the receiver returned by [`open`] sees its channel close, which
/// is how [`crate::Meta::shutdown`] knows the directory can be reopened.
pub(crate) struct Db {
    /// The redb database; dropped before `closed` (fields drop in declaration order).
    db: Database,
    /// Dropped right after `db`, closing the channel.
    _closed: watch::Sender<()>,
}

impl std::ops::Deref for Db {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Opens (or creates) the database in `dir` and makes sure every table exists, so read
/// transactions never meet a missing table. The receiver's channel closes once the database is.
pub(crate) fn open(dir: &Path) -> DbResult<(Db, watch::Receiver<()>)> {
    let db = Database::create(dir.join(DB_FILE))?;
    let tx = db.begin_write()?;
    {
        tx.open_table(LOG)?;
        tx.open_table(RAFT)?;
        tx.open_table(SM)?;
        tx.open_table(SNAPSHOT)?;
    }
    tx.commit()?;
    let (closed, on_close) = watch::channel(());
    Ok((
        Db {
            db,
            _closed: closed,
        },
        on_close,
    ))
}

/// Reads and decodes `key` from a `&str`-keyed table; `None` if absent.
pub(crate) fn get_json<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> DbResult<Option<T>> {
    let tx = db.begin_read()?;
    let t = tx.open_table(table)?;
    let Some(v) = t.get(key)? else {
        return Ok(None);
    };
    let decoded = serde_json::from_slice(v.value()).map_err(|e| corrupt(key, &e))?;
    Ok(Some(decoded))
}

/// Reads raw bytes of `key` from a `&str`-keyed table; `None` if absent.
pub(crate) fn get_raw(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> DbResult<Option<Vec<u8>>> {
    let tx = db.begin_read()?;
    let t = tx.open_table(table)?;
    Ok(t.get(key)?.map(|v| v.value().to_vec()))
}

/// Encodes `value` as JSON.
pub(crate) fn to_json<T: Serialize>(value: &T) -> DbResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| corrupt("value", &e))
}

/// A decode failure as a redb error, so one error type flows through the storage code.
fn corrupt(what: &str, e: &serde_json::Error) -> DbError {
    corrupted(format!("cannot decode {what} in {DB_FILE}: {e}"))
}

/// A "database corrupted" error with `msg`.
pub(crate) fn corrupted(msg: String) -> DbError {
    DbError(Box::new(redb::Error::Corrupted(msg)))
}

/// Converts any redb error into an openraft storage error for the given failure kind.
pub(crate) fn io_err<F>(make: F, e: DbError) -> StoreError
where
    F: FnOnce(openraft::AnyError) -> StorageIOError<u64>,
{
    tracing::error!(error = %e, "metadata storage error");
    StoreError::IO {
        source: make(openraft::AnyError::new(&e)),
    }
}

/// One entry of the Raft log, as stored in [`LOG`].
pub(crate) type LogEntry = openraft::Entry<TypeConfig>;
