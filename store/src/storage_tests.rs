//! openraft's storage conformance suite against the redb log store and state machine.
use openraft::testing::{StoreBuilder, Suite};

use crate::log_store::LogStore;
use crate::raft_types::{StorageError, TypeConfig};
use crate::state_machine::StateMachine;
use crate::tables::open_db;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let err = |e: crate::Error| -> StorageError {
            openraft::StorageIOError::read(openraft::AnyError::error(e.to_string())).into()
        };
        let dir = tempfile::tempdir()
            .map_err(|e| err(crate::Error::Io { operation: "tempdir", path: String::new(), source: e }))?;
        let db = open_db(&dir.path().join("store.redb")).map_err(err)?;
        let log = LogStore::open(db.clone()).map_err(err)?;
        let sm = StateMachine::open(db, 100).map_err(err)?;
        Ok((dir, log, sm))
    }
}

#[test]
#[allow(clippy::result_large_err)]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(RedbBuilder)
}
