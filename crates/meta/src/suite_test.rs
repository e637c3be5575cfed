//! openraft's own storage test suite, run against our redb log store and state machine.

use crate::db;
use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};
use std::sync::Arc;
use tempfile::TempDir;

/// Builds a fresh store in its own temporary directory for every suite case.
struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = TempDir::new().map_err(|e| StorageError::IO {
            source: StorageIOError::write(&e),
        })?;
        let (database, _closed) = db::open(dir.path()).map_err(|e| StorageError::IO {
            source: StorageIOError::write(&e),
        })?;
        let database = Arc::new(database);
        let sm = StateMachine::load(database.clone()).map_err(|e| StorageError::IO {
            source: StorageIOError::read(&e),
        })?;
        Ok((dir, LogStore::new(database), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}
