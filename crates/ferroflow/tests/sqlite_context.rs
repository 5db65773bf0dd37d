//! The SQLite store against the contracts of the context traits, and the failures only a
//! file can have.
#![cfg(feature = "sqlite")]

#[macro_use]
mod contract;

use ferroflow::SqliteStore;
use tempfile::TempDir;

/// A store in a fresh file; the directory lives as long as the guard.
fn fresh() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("ferroflow.db")).unwrap();
    (store, dir)
}

mod journal_store {
    use super::contract::journal_store::*;

    journal_store_contract!(super::fresh());
}

mod task_queue {
    use super::contract::task_queue::*;

    task_queue_contract!(super::fresh());
}

mod durable_store {
    use super::contract::task_queue::*;

    durable_store_contract!(super::fresh());
}

mod file {
    use std::time::Duration;

    use ferroflow::{Error, JournalStore, QueuedTask, SqliteStore, TaskQueue};

    use super::contract::journal_store::started;
    use super::contract::task_queue::submit;

    fn message(result: Result<SqliteStore, Error>) -> String {
        match result {
            Ok(_) => panic!("the store opened"),
            Err(Error::Store(message)) => message,
            Err(other) => panic!("expected a store error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn runs_and_tasks_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferroflow.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            let task =
                QueuedTask { run_id: "r1".into(), node: "a".into(), item: Some(3), attempt: 1, not_before_ms: 0 };
            submit(&store, "r1", &[task]).await;
        }
        let store = SqliteStore::open(&path).unwrap();
        let (record, journal) = store.load("r1").await.unwrap().unwrap();
        assert_eq!(record.graph, "g");
        assert_eq!(journal.len(), 1);
        assert_eq!(format!("{:?}", journal[0].entry), format!("{:?}", started(100).entry));
        let leases = super::contract::task_queue::leases(
            store.claim("w", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap(),
        );
        assert_eq!(leases.len(), 1);
        assert_eq!((leases[0].task.node.as_str(), leases[0].task.item), ("a", Some(3)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_on_one_file_never_lease_the_same_task() {
        // Two handles stand for two processes: each has its own connection to the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferroflow.db");
        let first = SqliteStore::open(&path).unwrap();
        let second = SqliteStore::open(&path).unwrap();
        super::contract::task_queue::two_handles_never_lease_the_same_task(first, second, 200).await;
    }

    #[test]
    fn a_foreign_sqlite_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        let other = rusqlite_free_foreign_db(&path);
        let before = std::fs::read(&path).unwrap();
        let message = message(SqliteStore::open(&path));
        assert!(message.contains("not a ferroflow database"), "{message}");
        assert!(message.contains("other.db"), "the error names the file: {message}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "the foreign file was modified");
        drop(other);
    }

    /// A SQLite file of another application, made through our own store type's SQL
    /// library so the test needs no extra dependency: a store file whose application id
    /// is then changed.
    fn rusqlite_free_foreign_db(path: &std::path::Path) -> SqliteStore {
        let store = SqliteStore::open(path).unwrap();
        drop(store);
        // Overwrite the application id in the header (offset 68, big-endian) with another's.
        let mut bytes = std::fs::read(path).unwrap();
        bytes[68..72].copy_from_slice(&0x1234_5678_u32.to_be_bytes());
        std::fs::write(path, bytes).unwrap();
        SqliteStore::open(dir_of(path).join("unrelated.db")).unwrap()
    }

    fn dir_of(path: &std::path::Path) -> &std::path::Path {
        path.parent().unwrap()
    }

    #[test]
    fn an_empty_foreign_file_with_a_schema_version_is_refused_and_left_untouched() {
        // Another application's database before it made any table: no tables and no
        // application id, but its schema version set in the header (offset 60).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("theirs.db");
        std::fs::write(&path, empty_database_with_user_version(7)).unwrap();
        let before = std::fs::read(&path).unwrap();
        let message = message(SqliteStore::open(&path));
        assert!(message.contains("not a ferroflow database"), "{message}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "the foreign file was modified");
    }

    /// The bytes of an empty SQLite database (one page, no schema) whose header says
    /// `user_version`, written by SQLite itself.
    fn empty_database_with_user_version(version: i32) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", version).unwrap();
        drop(conn);
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn paths_private_to_one_connection_are_refused() {
        for path in ["", ":memory:"] {
            let message = message(SqliteStore::open(path));
            assert!(message.contains("private to one connection"), "{path:?}: {message}");
        }
    }

    #[test]
    fn a_corrupt_file_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, b"this is not a database, just some text that is long enough".repeat(100)).unwrap();
        let message = message(SqliteStore::open(&path));
        assert!(message.contains("garbage.db"), "{message}");
        assert!(message.contains("not a SQLite database") || message.contains("corrupt"), "{message}");
    }

    #[test]
    fn a_path_that_cannot_be_created_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/ferroflow.db");
        let message = message(SqliteStore::open(&path));
        assert!(message.contains("cannot be opened") || message.contains("cannot open"), "{message}");
        assert!(message.contains("ferroflow.db"), "{message}");
    }
}
