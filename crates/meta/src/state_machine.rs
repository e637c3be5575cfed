//! The state machine: openraft's [`RaftStateMachine`] over the management [`StateView`].
//!
//! The authoritative copy of the state lives in [`StateMachine::data`], in memory. Each applied
//! batch runs [`apply_command`] on every entry, then writes the whole state (it is small) as one
//! blob to the `sm` table, then publishes the new state to [`Shared`] so that
//! [`crate::Meta::local_state`] and the applied-index watch see it. Publishing happens before
//! openraft learns the batch is applied, so a linearizable read that waits for "applied ≥ X"
//! always sees entry X.
//!
//! Snapshots are the same blob ([`SmData`]): building one serializes the current state and
//! stores it durably in the `snapshot` table; installing one replaces the state wholesale.

use crate::apply::apply_command;
use crate::db::{
    self, io_err, Db, DbResult, LogEntry, SmData, StoreError, SM, SM_FORMAT, SNAPSHOT,
};
use crate::model::{CommandOutput, CommandResponse, StateView};
use crate::TypeConfig;
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use redb::Database;
use std::io::Cursor;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

const KEY_STATE: &str = "state";
const KEY_SNAP_META: &str = "meta";
const KEY_SNAP_DATA: &str = "data";

/// What the state machine shares with [`crate::Meta`]: the latest applied state and a watch of
/// the last applied log index.
pub(crate) struct Shared {
    state: RwLock<Arc<StateView>>,
    applied: watch::Sender<u64>,
}

impl Shared {
    /// A clone of the latest applied state.
    pub(crate) fn state(&self) -> StateView {
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        StateView::clone(&guard)
    }

    /// A receiver of the last applied log index.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn publish(&self, data: &SmData) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(data.state.clone());
        let index = data.last_applied.map(|l| l.index).unwrap_or(0);
        self.applied.send_replace(index);
    }
}

/// The management state machine of one node, persisted in the shared redb database.
pub struct StateMachine {
    db: Arc<Db>,
    data: SmData,
    shared: Arc<Shared>,
}

impl StateMachine {
    /// Loads the state machine from `db` (tables must exist; see `db::open`).
    pub(crate) fn load(db: Arc<Db>) -> DbResult<Self> {
        let data: SmData = db::get_json(&db, SM, KEY_STATE)?.unwrap_or_else(|| SmData {
            format: SM_FORMAT,
            ..SmData::default()
        });
        if data.format != SM_FORMAT {
            return Err(db::corrupted(format!(
                "state machine format {} is not supported (expected {SM_FORMAT})",
                data.format
            )));
        }
        let (applied, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: RwLock::new(Arc::new(StateView::default())),
            applied,
        });
        shared.publish(&data);
        Ok(Self { db, data, shared })
    }

    /// The handle shared with [`crate::Meta`].
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Writes the state blob durably (see `db.rs`: servers act on it, so it must never go back).
    fn persist(&self) -> DbResult<()> {
        let bytes = db::to_json(&self.data)?;
        let tx = self.db.begin_write()?;
        tx.open_table(SM)?.insert(KEY_STATE, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }
}

/// Builds a snapshot from a copy of the state taken when the builder was made.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    data: SmData,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let bytes =
            db::to_json(&self.data).map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let snapshot_id = match self.data.last_applied {
            Some(l) => format!("{}-{}-{nanos}", l.leader_id.term, l.index),
            None => format!("none-{nanos}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.last_membership.clone(),
            snapshot_id,
        };
        save_snapshot(&self.db, &meta, &bytes, None).map_err(|e| {
            io_err(
                |a| StorageIOError::write_snapshot(Some(meta.signature()), a),
                e,
            )
        })?;
        tracing::info!(snapshot = %meta, "built a metadata snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

/// Stores `meta` and `bytes` as the current snapshot, durably.
/// Stores a snapshot; with `state`, also replaces the state blob with it in the same
/// transaction (installing a snapshot: a crash leaves either the old pair or the new one).
fn save_snapshot(
    db: &Database,
    meta: &SnapshotMeta<u64, BasicNode>,
    bytes: &[u8],
    state: Option<&SmData>,
) -> DbResult<()> {
    let meta_bytes = db::to_json(meta)?;
    let state_bytes = state.map(db::to_json).transpose()?;
    let tx = db.begin_write()?;
    {
        let mut t = tx.open_table(SNAPSHOT)?;
        t.insert(KEY_SNAP_META, meta_bytes.as_slice())?;
        t.insert(KEY_SNAP_DATA, bytes)?;
    }
    if let Some(state_bytes) = state_bytes {
        tx.open_table(SM)?
            .insert(KEY_STATE, state_bytes.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StoreError> {
        Ok((self.data.last_applied, self.data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StoreError>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.data.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Ok(CommandOutput::Nothing),
                EntryPayload::Membership(m) => {
                    self.data.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(CommandOutput::Nothing)
                }
                EntryPayload::Normal(cmd) => {
                    let res = apply_command(&mut self.data.state, cmd);
                    if let Err(e) = &res {
                        tracing::debug!(index = entry.log_id.index, error = %e, "command refused");
                    }
                    res
                }
            };
            replies.push(reply);
        }
        self.persist()
            .map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        self.shared.publish(&self.data);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            data: self.data.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StoreError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let bytes = snapshot.into_inner();
        let sig = meta.signature();
        let mut data: SmData = serde_json::from_slice(&bytes).map_err(|e| StoreError::IO {
            source: StorageIOError::read_snapshot(Some(sig.clone()), &e),
        })?;
        if data.format != SM_FORMAT {
            return Err(StoreError::IO {
                source: StorageIOError::read_snapshot(
                    Some(sig),
                    openraft::AnyError::error(format!(
                        "snapshot format {} is not supported",
                        data.format
                    )),
                ),
            });
        }
        // The meta is authoritative for what the snapshot covers.
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
        save_snapshot(&self.db, meta, &bytes, Some(&data)).map_err(|e| {
            io_err(
                |a| StorageIOError::write_snapshot(Some(meta.signature()), a),
                e,
            )
        })?;
        self.data = data;
        self.shared.publish(&self.data);
        tracing::info!(snapshot = %meta, "installed a metadata snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let read = || -> DbResult<Option<Snapshot<TypeConfig>>> {
            let Some(meta) =
                db::get_json::<SnapshotMeta<u64, BasicNode>>(&self.db, SNAPSHOT, KEY_SNAP_META)?
            else {
                return Ok(None);
            };
            let bytes = db::get_raw(&self.db, SNAPSHOT, KEY_SNAP_DATA)?.ok_or_else(|| {
                db::corrupted("snapshot meta is present but its data is missing".into())
            })?;
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            }))
        };
        read().map_err(|e| io_err(|a| StorageIOError::read_snapshot(None, a), e))
    }
}
