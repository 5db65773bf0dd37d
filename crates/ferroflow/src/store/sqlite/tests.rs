use super::*;
use rusqlite::params;

use crate::journal::{JournalEntry, RunStatus};
use crate::store::{DurableStore, GraphRecord, JournalStore, RunRecord, Step};

use super::rows::list_runs_sql;

/// The schema of version 2, as a file written by ferroflow 0.1 holds it.
const V2: &str = "
    CREATE TABLE runs (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL UNIQUE, graph TEXT NOT NULL,
        version TEXT NOT NULL, status TEXT NOT NULL, created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL) STRICT;
    CREATE INDEX runs_by_created ON runs (created_ms DESC, id DESC);
    CREATE TABLE journal (run INTEGER NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
        entry TEXT NOT NULL, PRIMARY KEY (run, seq)) STRICT, WITHOUT ROWID;
    CREATE TABLE tasks (key TEXT PRIMARY KEY, run_id TEXT NOT NULL, node TEXT NOT NULL, item INTEGER,
        attempt INTEGER NOT NULL, not_before_ms INTEGER NOT NULL, state INTEGER NOT NULL,
        lease_token TEXT, leased_until_ms INTEGER, deliveries INTEGER NOT NULL) STRICT;
    INSERT INTO runs VALUES (7, 'old', 'g', 'v1', 'running', 100, 100);
    INSERT INTO journal VALUES
        (7, 0, 100, '{\"type\":\"RunStarted\",\"graph\":\"g\",\"version\":\"v1\",\"input\":1}'),
        (7, 1, 110, '{\"type\":\"NodeCompleted\",\"node\":\"a\",\"item\":null,\"attempt\":1,\"output\":2}');
    PRAGMA user_version = 2;
";

/// Processes that open a new file at the same moment (a server and its workers
/// starting together) all get the store: one makes the schema, the others find it.
#[test]
fn a_new_file_opened_by_many_at_once_is_set_up_once() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..30 {
        let path = dir.path().join(format!("runs-{round}.db"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let (path, barrier) = (path.clone(), std::sync::Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(path).map(drop)
                })
            })
            .collect();
        for opener in openers {
            opener.join().unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}

/// Listing a page seeks to its cursor in `runs_by_created` (a SEARCH, not a SCAN that
/// walks the pages before it) and needs no sort, with or without filters.
#[test]
fn a_page_of_runs_is_a_seek_in_the_creation_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("plan.db")).unwrap();
    let conn = store.inner.conn.lock().unwrap();
    for (graph, status) in [(None, None), (Some("g"), None), (None, Some("running")), (Some("g"), Some("running"))] {
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", list_runs_sql())).unwrap();
        let plan: Vec<String> = explain
            .query_map(params![graph, status, 100_i64, 7_i64, 11_i64], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let outer: Vec<&String> = plan.iter().filter(|step| step.contains("runs ")).collect();
        assert!(
            outer.iter().any(|step| step.starts_with("SEARCH runs USING INDEX runs_by_created (created_ms")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE") || step.starts_with("SCAN runs")), "{plan:?}");
    }
}

#[tokio::test]
async fn a_version_2_file_is_upgraded_in_place_keeping_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let old = Connection::open(&path).unwrap();
    old.execute_batch(V2).unwrap();
    old.pragma_update(None, "application_id", APPLICATION_ID).unwrap();
    drop(old);

    let store = SqliteStore::open(&path).unwrap();
    let (record, journal) = store.load("old").await.unwrap().unwrap();
    assert_eq!((record.status, record.updated_ms), (RunStatus::Running, 110));
    assert_eq!(journal.iter().map(|e| (e.seq, e.at_ms)).collect::<Vec<_>>(), [(0, 100), (1, 110)]);
    assert!(matches!(&journal[1].entry, JournalEntry::NodeCompleted { node, .. } if &**node == "a"));
    // It is a current store now: steps, the queue and graphs work on it.
    let entry = StoredEntry {
        seq: 2,
        at_ms: 120,
        entry: JournalEntry::RunFinished { status: RunStatus::Completed, output: None, failure: None },
    };
    let step =
        Step { run_id: "old", expected_seq: 2, entries: &[entry], status: RunStatus::Completed, ready: &[], done: &[] };
    store.commit(&step, None).await.unwrap();
    assert_eq!(store.load_since("old", 2).await.unwrap().len(), 1);
    assert!(store.graphs().await.unwrap().is_empty());
    drop(store);
    let version: i32 = Connection::open(&path).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[tokio::test]
async fn a_version_3_file_gains_the_graphs_table_keeping_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    let store = SqliteStore::open(&path).unwrap();
    let record = RunRecord {
        run_id: "r1".into(),
        graph: "g".into(),
        version: "v1".into(),
        status: RunStatus::Running,
        created_ms: 100,
        updated_ms: 100,
    };
    let started = StoredEntry {
        seq: 0,
        at_ms: 100,
        entry: JournalEntry::RunStarted {
            graph: "g".into(),
            version: "v1".into(),
            input: crate::value::Value::from(serde_json::json!(1)),
        },
    };
    store.create(&record, &[started], &[], None).await.unwrap();
    drop(store);
    // What version 3 had: no graphs table.
    let old = Connection::open(&path).unwrap();
    old.execute_batch("DROP TABLE graphs; PRAGMA user_version = 3;").unwrap();
    drop(old);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 1, "the run is kept");
    let graph =
        GraphRecord { name: "g".into(), version: "v1".into(), spec: "{}".into(), registered_ms: 5, worker: true };
    store.register_graph(&graph).await.unwrap();
    assert_eq!(store.graphs().await.unwrap(), [graph]);
    drop(store);
    let version: i32 = Connection::open(&path).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[tokio::test]
async fn a_version_4_file_keeps_its_graphs_as_workers_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    drop(SqliteStore::open(&path).unwrap());
    // What version 4 had: graphs without the `worker` column.
    let old = Connection::open(&path).unwrap();
    old.execute_batch(
        "DROP TABLE graphs;
         CREATE TABLE graphs (name TEXT NOT NULL, version TEXT NOT NULL, spec TEXT NOT NULL,
             registered_ms INTEGER NOT NULL, PRIMARY KEY (name, version)) STRICT, WITHOUT ROWID;
         INSERT INTO graphs VALUES ('g', 'v1', '{}', 5);
         PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(old);

    let store = SqliteStore::open(&path).unwrap();
    let graphs = store.graphs().await.unwrap();
    assert_eq!(graphs.len(), 1);
    assert!(graphs[0].worker, "a version 4 record is a worker's");
    drop(store);
    let version: i32 = Connection::open(&path).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}
