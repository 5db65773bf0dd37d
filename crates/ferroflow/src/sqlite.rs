//! The embedded durable context's store: journals and the task queue in one SQLite file.
//!
//! One file, no server. The file is opened in WAL mode (readers never block the writer)
//! and marked with an application id, so that a foreign or corrupt file is refused with a
//! clear error instead of being written to. Values are stored as JSON text, never
//! pickled: the file is shared with other processes.
//!
//! Each operation is one short transaction run on the calling thread, on a connection
//! shared behind a mutex. The engine calls the store only from threads that may block
//! (blocking threads, or runtime workers inside `block_in_place`); an async caller on a
//! runtime worker blocks it for one transaction. Running the SQL elsewhere instead
//! (`spawn_blocking`) would deadlock a busy engine: its blocking threads wait on the store
//! while holding run locks, and the store would need one of those very threads.
//! Writes are `BEGIN IMMEDIATE` transactions, so several processes may use the same file
//! (SQLite serialises them; `busy_timeout` makes a writer wait its turn). Leased tasks are
//! polled for: SQLite has no cross-process notification.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::error::{Error, Result};
use crate::journal::{JournalEntry, RunStatus, now_ms};
use crate::store::{
    Claim, Created, DurableStore, GraphRecord, Holdings, JournalStore, Lease, QueuedTask, RELEASED, RunCursor, RunPage,
    RunQuery, RunRecord, Step, StoredEntry, TaskQueue, holds,
};

/// Written into the file header (`PRAGMA application_id`): "ffl1".
const APPLICATION_ID: i32 = 0x6666_6c31;
/// The schema this code reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i32 = 5;
/// The longest string SQLite stores (its compile-time `SQLITE_MAX_LENGTH`, which the
/// bundled build leaves at the default): a longer journal entry is refused before it is
/// written.
const MAX_TEXT_BYTES: usize = 1_000_000_000;
/// How often a waiting `lease` looks for due tasks.
const POLL: Duration = Duration::from_millis(20);

const SCHEMA: &str = "
CREATE TABLE runs (
    id         INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL UNIQUE,
    graph      TEXT NOT NULL,
    version    TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    -- when the status last changed
    updated_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX runs_by_created ON runs (created_ms DESC, id DESC);
";

/// Bits of a journal row's key that hold the entry's position in its run; the bits above
/// hold the run's integer id.
const SEQ_BITS: u32 = 24;
/// The most entries one run's journal can hold.
const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

/// The journal (schema version 3): one row per entry, keyed by `run << 24 | seq` packed
/// into the rowid. Entries of a run are contiguous and in order without a separate index,
/// and each row repeats 8 bytes of key, not the run id's 36. A rowid table keeps an entry
/// of up to ~4 KB in its b-tree page (an index-organised table spills anything over ~1 KB
/// to an overflow page of its own, mostly empty). Appending a node's entry writes one page
/// in the common case. `run` and `seq` are there for reading the file by hand.
const JOURNAL: &str = "
CREATE TABLE journal (
    id     INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
    entry  TEXT NOT NULL,
    run    INTEGER GENERATED ALWAYS AS (id >> 24) VIRTUAL,
    seq    INTEGER GENERATED ALWAYS AS (id & 16777215) VIRTUAL
) STRICT;
";

/// What schema version 3 added: holds on runs, and the task queue.
///
/// A run executing in an engine is held by it (`owner`, until `until_ms`), renewed in the
/// background, so a node's step writes nothing per task: only its journal rows. A partial
/// index lists the held runs, for renewing and for finding expired holds. Tasks queued for
/// any worker have a row in `tasks` until a step resolves them. Leases are per owner (an
/// engine), so one statement renews all of an engine's leases; it scans `tasks`, which
/// holds only the tasks queued or leased. One index serves claiming: free tasks (queued,
/// `until_ms` 0, or with an expired lease) come first in it.
const TASKS: &str = "
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN until_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_held ON runs (owner, until_ms) WHERE owner IS NOT NULL;
CREATE TABLE tasks (
    run_id        TEXT NOT NULL,
    node          TEXT NOT NULL,
    -- the element of a map node, -1 for a node that is not one
    item          INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    not_before_ms INTEGER NOT NULL,
    -- who holds the lease, NULL while queued
    owner         TEXT,
    -- when the lease expires, 0 while queued
    until_ms      INTEGER NOT NULL,
    deliveries    INTEGER NOT NULL,
    PRIMARY KEY (run_id, node, item, attempt)
) STRICT, WITHOUT ROWID;
CREATE INDEX tasks_free ON tasks (until_ms, not_before_ms);
";

/// What schema version 4 added: the graphs workers registered, with their structure.
const GRAPHS: &str = "
CREATE TABLE graphs (
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    spec          TEXT NOT NULL,
    registered_ms INTEGER NOT NULL,
    -- 1 when a worker registered it (to execute its runs), 0 when only its structure is known
    worker        INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (name, version)
) STRICT, WITHOUT ROWID;
";

/// What schema version 5 added: which graph records are workers' (version 4 had only those).
const GRAPHS_V5: &str = "ALTER TABLE graphs ADD COLUMN worker INTEGER NOT NULL DEFAULT 1;";

/// Journals and tasks in one SQLite file. Cheap to clone: clones share the connection.
///
/// Give it to an engine as its [`EngineConfig::store`](crate::EngineConfig::store); any
/// process that opens the same file sees the same runs.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Arc;
///
/// use ferroflow::store::JournalStore as _;
/// use ferroflow::{
///     Body, Engine, EngineConfig, GraphSpec, NodeKind, NodeSpec, RunStatus, SqliteStore, StartOptions,
///     Value, Workflow,
/// };
/// use serde_json::json;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("runs.db");
///
/// let mut spec = GraphSpec::new("echo");
/// spec.nodes = vec![NodeSpec::new("echo", NodeKind::Task)];
/// let bodies = HashMap::from([("echo".to_owned(), Body::blocking(|call| Ok(call.input)))]);
/// let workflow = Workflow::new(spec.build()?, bodies)?;
///
/// let config = EngineConfig { store: Some(Arc::new(SqliteStore::open(&path)?)), ..EngineConfig::default() };
/// let engine = Engine::new(tokio::runtime::Handle::current(), config);
/// let options = StartOptions { run_id: Some("run-1".into()), ..StartOptions::default() };
/// let run = engine.start(&workflow, Value::from(json!("hi")), options)?;
/// assert_eq!(run.wait(None).await?.status, RunStatus::Completed);
///
/// // Whoever opens the file sees the run and its journal.
/// let (record, journal) = SqliteStore::open(&path)?.load("run-1").await?.expect("stored");
/// assert_eq!(record.status, RunStatus::Completed);
/// assert_eq!(journal.len(), 3); // RunStarted, NodeCompleted, RunFinished
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, upgrading the schema of a file an
    /// older ferroflow wrote.
    ///
    /// # Errors
    ///
    /// [`Error::Store`], with a message naming the file, when it is not a ferroflow
    /// database, has a schema version this code does not read, is corrupt, or cannot be opened
    /// or written.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        refuse_private_database(&path)?;
        let fail =
            |what: &str, e: rusqlite::Error| Error::Store(format!("{}: {what}: {}", path.display(), describe(&e)));
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail("cannot open", e))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| fail("cannot configure", e))?;
        // What the file is: (application id, how many tables, schema version).
        let identify = |conn: &Connection| -> rusqlite::Result<(i32, i64, i32)> {
            let application_id = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
            let tables = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
            let version = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            Ok((application_id, tables, version))
        };
        // A new file has nothing in it: no table, and neither an application id nor a
        // schema version in its header. Anything else is some application's database, and is
        // written to only if it is ferroflow's.
        let empty =
            |(application_id, tables, version): (i32, i64, i32)| tables == 0 && application_id == 0 && version == 0;
        if empty(identify(&conn).map_err(|e| fail("cannot read", e))?) {
            // A new file. Several processes may open it at once (a server and its workers
            // starting together): the schema is made in an immediate transaction, which
            // takes the write lock first and looks again, so that the others wait and then
            // find it made.
            use_wal(&conn).map_err(|e| fail("cannot use WAL mode", e))?;
            let tx =
                conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| fail("cannot write", e))?;
            if empty(identify(&tx).map_err(|e| fail("cannot read", e))?) {
                for part in [SCHEMA, JOURNAL, TASKS, GRAPHS] {
                    tx.execute_batch(part).map_err(|e| fail("cannot create the schema", e))?;
                }
                tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(|e| fail("cannot write", e))?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| fail("cannot write", e))?;
            }
            tx.commit().map_err(|e| fail("cannot write", e))?;
        }
        let (application_id, _, version) = identify(&conn).map_err(|e| fail("cannot read", e))?;
        if application_id != APPLICATION_ID {
            return Err(Error::Store(format!(
                "{} is not a ferroflow database (it is another application's SQLite file); \
                 give ferroflow a file of its own",
                path.display()
            )));
        }
        if (2..SCHEMA_VERSION).contains(&version) {
            // Version 2 kept the journal keyed by (run, seq) in an index-organised table,
            // and had a task table no engine wrote to; version 3 had no graphs; version 4's
            // graphs were all workers'. Upgraded in an immediate transaction that looks at
            // the version again: of two processes upgrading at once, the second finds the
            // file upgraded.
            let to_v3 = [
                "ALTER TABLE journal RENAME TO journal_v2; DROP TABLE tasks;",
                JOURNAL,
                "INSERT INTO journal (id, at_ms, entry) SELECT (run << 24) | seq, at_ms, entry FROM journal_v2;
                 DROP TABLE journal_v2;",
                TASKS,
            ];
            let tx =
                conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| fail("cannot write", e))?;
            let (_, _, version) = identify(&tx).map_err(|e| fail("cannot read", e))?;
            if (2..SCHEMA_VERSION).contains(&version) {
                let parts: Vec<&str> = match version {
                    2 => to_v3.iter().copied().chain([GRAPHS]).collect(),
                    3 => vec![GRAPHS],
                    _ => vec![GRAPHS_V5],
                };
                for part in parts {
                    tx.execute_batch(part).map_err(|e| fail("cannot upgrade the schema", e))?;
                }
                tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| fail("cannot write", e))?;
            }
            tx.commit().map_err(|e| fail("cannot write", e))?;
        } else if version != SCHEMA_VERSION {
            return Err(Error::Store(format!(
                "{} has schema version {version}; this ferroflow reads version {SCHEMA_VERSION}",
                path.display()
            )));
        }
        use_wal(&conn).map_err(|e| fail("cannot use WAL mode", e))?;
        // WAL with synchronous=NORMAL: a commit survives a process crash; an OS crash or
        // power loss may lose the last transactions, never corrupt the file.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| fail("cannot configure", e))?;
        Ok(SqliteStore { inner: Arc::new(Inner { path, conn: Mutex::new(conn) }) })
    }

    /// The file the store was opened at.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with the connection, on this thread.
    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> Result<T>,
    {
        let mut conn = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| match e {
            Error::Store(message) => Error::Store(format!("{}: {message}", self.inner.path.display())),
            other => other,
        })
    }
}

/// Refuses paths that SQLite reads as a database private to one connection: `""` (a
/// temporary file) and `:memory:`. Runs stored there could not be found by a second
/// context, another process or a worker, so a durable context on them would only pretend.
fn refuse_private_database(path: &Path) -> Result<()> {
    let text = path.as_os_str();
    if text.is_empty() || text == ":memory:" {
        return Err(Error::Store(format!(
            "SQLite path {:?} names a database private to one connection, which no other context or \
             process can open: give a file path (for runs that need no file, use the in-memory context)",
            path.display().to_string()
        )));
    }
    Ok(())
}

/// Switches the file to WAL mode (a no-op once it is). The switch needs the file to
/// itself for a moment, and SQLite reports "busy" at once, without waiting, while another
/// connection (one opening the same new file, say) is reading it: tried again for up to ten
/// seconds, like any other wait for a lock here.
fn use_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            done => return done,
        }
    }
}

/// SQLite's own words, with the cases people hit most spelled out.
fn describe(e: &rusqlite::Error) -> String {
    use rusqlite::ffi::{self, ErrorCode};
    if let rusqlite::Error::SqliteFailure(failure, _) = e {
        match failure.extended_code {
            ffi::SQLITE_READONLY_DIRECTORY => {
                return "the database's directory is not writable: SQLite must create the -wal and -shm files \
                        beside the database"
                    .into();
            }
            ffi::SQLITE_IOERR_WRITE | ffi::SQLITE_IOERR_FSYNC | ffi::SQLITE_IOERR_TRUNCATE => {
                return format!(
                    "writing the file failed (disk full, quota or file size limit reached, or a device error): {e}"
                );
            }
            _ => {}
        }
    }
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => "the file is not a SQLite database, or it is corrupt".into(),
        Some(ErrorCode::DatabaseCorrupt) => "the database file is corrupt".into(),
        Some(ErrorCode::ReadOnly) => "the database is read-only (check the file's permissions)".into(),
        Some(ErrorCode::CannotOpen) => {
            "the file cannot be opened (check that its directory exists and is writable, and that the path is not a \
             directory)"
                .into()
        }
        Some(ErrorCode::DiskFull) => "the disk is full".into(),
        Some(ErrorCode::DatabaseBusy) => "the database stayed locked by another process".into(),
        _ => e.to_string(),
    }
}

fn sql(e: rusqlite::Error) -> Error {
    Error::Store(describe(&e))
}

fn encode(run_id: &str, entry: &StoredEntry) -> Result<String> {
    let text = serde_json::to_string(&entry.entry).map_err(|e| Error::InvalidInput {
        run_id: run_id.to_owned(),
        reason: match entry.entry.node() {
            Some(node) => format!("node '{node}': its value cannot be stored as JSON: {e}"),
            None => format!("a value cannot be stored as JSON: {e}"),
        },
    })?;
    if text.len() > MAX_TEXT_BYTES {
        return Err(Error::ValueTooLarge {
            what: format!("a journal entry of run '{run_id}'"),
            bytes: text.len(),
            limit: MAX_TEXT_BYTES,
            store: "SQLite: its longest string, SQLITE_MAX_LENGTH".to_owned(),
        });
    }
    Ok(text)
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction, committing on success and rolling back on
/// error. The statements are cached: compiling them for every write was a fifth of a
/// durable node's cost.
fn immediate<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.prepare_cached("BEGIN IMMEDIATE").and_then(|mut begin| begin.execute([])).map_err(sql)?;
    let outcome = f(conn).and_then(|value| {
        conn.prepare_cached("COMMIT").and_then(|mut commit| commit.execute([])).map_err(sql)?;
        Ok(value)
    });
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

/// The integer id of a run, if the store has it.
fn run_key(conn: &Connection, run_id: &str) -> Result<Option<i64>> {
    let mut select = conn.prepare_cached("SELECT id FROM runs WHERE run_id = ?1").map_err(sql)?;
    select.query_row([run_id], |r| r.get(0)).optional().map_err(sql)
}

/// What a step needs of a run's row.
struct RunRow {
    id: i64,
    status: String,
    holder: Option<String>,
    until: u64,
}

/// A run's row, if the store has it.
fn run_row(conn: &Connection, run_id: &str) -> Result<Option<RunRow>> {
    let mut select =
        conn.prepare_cached("SELECT id, status, owner, until_ms FROM runs WHERE run_id = ?1").map_err(sql)?;
    select
        .query_row([run_id], |r| {
            Ok(RunRow { id: r.get(0)?, status: r.get(1)?, holder: r.get(2)?, until: r.get::<_, i64>(3)? as u64 })
        })
        .optional()
        .map_err(sql)
}

/// The journal key of entry `seq` of run `run`.
fn entry_key(run: i64, seq: u64) -> i64 {
    (run << SEQ_BITS) | seq as i64
}

fn insert_entries(conn: &Connection, run: i64, run_id: &str, entries: &[StoredEntry]) -> Result<()> {
    let mut insert = conn.prepare_cached("INSERT INTO journal (id, at_ms, entry) VALUES (?1, ?2, ?3)").map_err(sql)?;
    for stored in entries {
        if stored.seq > MAX_SEQ {
            return Err(Error::Store(format!("run '{run_id}': its journal is full ({} entries at most)", MAX_SEQ + 1)));
        }
        insert
            .execute(params![entry_key(run, stored.seq), stored.at_ms as i64, encode(run_id, stored)?])
            .map_err(sql)?;
    }
    Ok(())
}

fn status_of(text: &str) -> Result<RunStatus> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| Error::Store(format!("unknown run status '{text}' in the runs table")))
}

/// The columns of a run record. `updated_ms` is when its last journal entry was written
/// (or its status last changed): the journal is not written twice per node to keep a
/// column of the `runs` row current.
const RECORD_COLUMNS: &str = "run_id, graph, version, status, created_ms, \
     max(updated_ms, coalesce((SELECT at_ms FROM journal WHERE id BETWEEN runs.id << 24 AND (runs.id << 24) + 16777215
     ORDER BY id DESC LIMIT 1), 0)), id";

/// A page of runs: ?1 graph, ?2 status (NULL for any), from after (?3 `created_ms`, ?4 id),
/// at most ?5 rows, newest first. The row-value comparison is a seek in `runs_by_created`
/// (whose order is the listing's), so a page costs the same at any depth; the filters are
/// checked on the rows the index walk meets from there. There is no index by graph or
/// status: a filter that few runs match walks past the runs of other graphs or statuses
/// (an index by status would be written on every status change).
fn list_runs_sql() -> String {
    format!(
        "SELECT {RECORD_COLUMNS} FROM runs
         WHERE (?1 IS NULL OR graph = ?1) AND (?2 IS NULL OR status = ?2) AND (created_ms, id) < (?3, ?4)
         ORDER BY created_ms DESC, id DESC LIMIT ?5"
    )
}

/// A `runs` row selected with [`RECORD_COLUMNS`]: the record, its status text and its id.
fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(RunRecord, String, i64)> {
    Ok((
        RunRecord {
            run_id: row.get(0)?,
            graph: row.get(1)?,
            version: row.get(2)?,
            status: RunStatus::Pending,
            created_ms: row.get::<_, i64>(4)? as u64,
            updated_ms: row.get::<_, i64>(5)? as u64,
        },
        row.get(3)?,
        row.get(6)?,
    ))
}

fn load_run(conn: &Connection, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
    let found = conn
        .prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM runs WHERE run_id = ?1"))
        .and_then(|mut select| select.query_row([run_id], read_record).optional())
        .map_err(sql)?;
    let Some((mut record, status, run)) = found else { return Ok(None) };
    record.status = status_of(&status)?;
    let journal = read_journal(conn, run, run_id, 0)?;
    Ok(Some((record, journal)))
}

/// Run `run`'s journal entries from `from` on.
fn read_journal(conn: &Connection, run: i64, run_id: &str, from: u64) -> Result<Vec<StoredEntry>> {
    let mut select = conn
        .prepare_cached("SELECT id & 16777215, at_ms, entry FROM journal WHERE id BETWEEN ?1 AND ?2 ORDER BY id")
        .map_err(sql)?;
    let rows = select
        .query_map(params![entry_key(run, from.min(MAX_SEQ + 1)), entry_key(run, MAX_SEQ)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })
        .map_err(sql)?;
    let mut journal = Vec::new();
    for row in rows {
        let (seq, at_ms, text) = row.map_err(sql)?;
        let entry: JournalEntry = serde_json::from_str(&text).map_err(|e| Error::CorruptJournal {
            run_id: run_id.to_owned(),
            graph: conn
                .query_row("SELECT graph FROM runs WHERE id = ?1", [run], |r| r.get(0))
                .unwrap_or_else(|_| "?".to_owned()),
            reason: format!("entry {seq} cannot be read: {e}"),
        })?;
        journal.push(StoredEntry { seq: seq as u64, at_ms: at_ms as u64, entry });
    }
    Ok(journal)
}

/// Inserts a run and its first entries, unless a run with its id exists (whose record and
/// journal are returned then).
fn create_run(
    conn: &Connection,
    record: &RunRecord,
    first: &[StoredEntry],
    owner: Option<(&str, Duration)>,
) -> Result<Created> {
    if let Some((existing, journal)) = load_run(conn, &record.run_id)? {
        return Ok(Created::Existing { record: existing, journal });
    }
    let until = owner.map_or(0, |(_, lease_for)| now_ms() + lease_for.as_millis() as u64);
    conn.prepare_cached(
        "INSERT INTO runs (run_id, graph, version, status, created_ms, updated_ms, owner, until_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut insert| {
        insert.execute(params![
            record.run_id,
            record.graph,
            record.version,
            record.status.as_str(),
            record.created_ms as i64,
            record.updated_ms as i64,
            owner.map(|(owner, _)| owner),
            until as i64
        ])
    })
    .map_err(sql)?;
    insert_entries(conn, conn.last_insert_rowid(), &record.run_id, first)?;
    Ok(Created::New)
}

#[async_trait]
impl JournalStore for SqliteStore {
    async fn create_run(&self, record: &RunRecord, first: &[StoredEntry]) -> Result<Created> {
        self.with_conn(|conn| immediate(conn, |conn| create_run(conn, record, first, None))).await
    }

    async fn append(&self, run_id: &str, expected_seq: u64, entries: &[StoredEntry]) -> Result<()> {
        self.with_conn(|conn| {
            immediate(conn, |conn| {
                let Some(run) = run_key(conn, run_id)? else {
                    return Err(Error::RunNotFound { run_id: run_id.to_owned() });
                };
                check_seq(conn, run, run_id, expected_seq)?;
                insert_entries(conn, run, run_id, entries)?;
                let finished = entries.iter().rev().find_map(|s| match &s.entry {
                    JournalEntry::RunFinished { status, .. } => Some((*status, s.at_ms)),
                    _ => None,
                });
                if let Some((status, at_ms)) = finished {
                    conn.prepare_cached("UPDATE runs SET status = ?2, updated_ms = ?3 WHERE id = ?1")
                        .and_then(|mut update| update.execute(params![run, status.as_str(), at_ms as i64]))
                        .map_err(sql)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        self.with_conn(|conn| load_run(conn, run_id)).await
    }

    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        self.with_conn(|conn| {
            let changed = conn
                .prepare_cached("UPDATE runs SET status = ?2, updated_ms = ?3 WHERE run_id = ?1")
                .and_then(|mut update| update.execute(params![run_id, status.as_str(), now_ms() as i64]))
                .map_err(sql)?;
            if changed == 0 {
                return Err(Error::RunNotFound { run_id: run_id.to_owned() });
            }
            Ok(())
        })
        .await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        if query.limit == 0 {
            return Ok(RunPage::default());
        }
        // Without a cursor, one past every row: the statement stays the same seek.
        let (created, id) = query.after.map_or((i64::MAX, i64::MAX), |after| {
            (after.created_ms as i64, i64::try_from(after.order).unwrap_or(i64::MAX))
        });
        let wanted = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
        self.with_conn(|conn| {
            let mut select = conn.prepare_cached(&list_runs_sql()).map_err(sql)?;
            let rows = select
                .query_map(params![query.graph, query.status.map(|s| s.as_str()), created, id, wanted], read_record)
                .map_err(sql)?;
            let mut matching = Vec::new();
            for row in rows {
                let (mut record, status, id) = row.map_err(sql)?;
                record.status = status_of(&status)?;
                matching.push((RunCursor { created_ms: record.created_ms, order: id as u64 }, record));
            }
            Ok(RunPage::of(matching, query.limit))
        })
        .await
    }
}

/// Fails with [`Error::Conflict`] unless run `run`'s journal holds `expected` entries:
/// entry `expected - 1` exists and entry `expected` does not. Two lookups of the row key,
/// on the page the step then writes. (A range query here, `max(seq)` or the like, was
/// compiled anew on every step: with a bound parameter in a range, SQLite's STAT4 build
/// re-plans the statement whenever the parameter changes.)
fn check_seq(conn: &Connection, run: i64, run_id: &str, expected: u64) -> Result<()> {
    let exists = |seq: u64| -> Result<bool> {
        conn.prepare_cached("SELECT 1 FROM journal WHERE id = ?1")
            .and_then(|mut select| select.exists([entry_key(run, seq)]))
            .map_err(sql)
    };
    let after_last = (expected == 0 || exists(expected - 1)?) && !exists(expected)?;
    if after_last {
        return Ok(());
    }
    let last: Option<i64> = conn
        .query_row(
            "SELECT max(id) FROM journal WHERE id BETWEEN ?1 AND ?2",
            params![entry_key(run, 0), entry_key(run, MAX_SEQ)],
            |r| r.get(0),
        )
        .map_err(sql)?;
    let found = last.map_or(0, |key| (key & MAX_SEQ as i64) as u64 + 1);
    Err(Error::Conflict { run_id: run_id.to_owned(), expected, found })
}

/// The `item` column of a task: map elements are numbered from 0, other nodes are -1.
fn item_column(item: Option<u32>) -> i64 {
    item.map_or(-1, i64::from)
}

/// Queues tasks that are not queued already.
fn insert_tasks(conn: &Connection, tasks: &[QueuedTask]) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO tasks (run_id, node, item, attempt, not_before_ms, owner, until_ms, deliveries)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, 0, 0)",
        )
        .map_err(sql)?;
    for task in tasks {
        insert
            .execute(params![
                task.run_id,
                task.node,
                item_column(task.item),
                i64::from(task.attempt),
                task.not_before_ms as i64
            ])
            .map_err(sql)?;
    }
    Ok(())
}

/// Makes `owner` hold up to `max` runs whose hold expired; returns their ids.
fn claim_expired_holds(conn: &Connection, owner: &str, max: usize, lease_for: Duration) -> Result<Vec<String>> {
    let now = now_ms();
    let expired: Vec<String> = {
        let mut select = conn
            .prepare_cached("SELECT run_id FROM runs WHERE owner IS NOT NULL AND until_ms <= ?1 LIMIT ?2")
            .map_err(sql)?;
        let rows = select.query_map(params![now as i64, max as i64], |r| r.get(0)).map_err(sql)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql)?
    };
    let mut update = conn.prepare_cached("UPDATE runs SET owner = ?2, until_ms = ?3 WHERE run_id = ?1").map_err(sql)?;
    for run_id in &expired {
        update.execute(params![run_id, owner, (now + lease_for.as_millis() as u64) as i64]).map_err(sql)?;
    }
    Ok(expired)
}

fn delete_tasks(conn: &Connection, tasks: &[QueuedTask]) -> Result<()> {
    let mut delete = conn
        .prepare_cached("DELETE FROM tasks WHERE run_id = ?1 AND node = ?2 AND item = ?3 AND attempt = ?4")
        .map_err(sql)?;
    for task in tasks {
        delete
            .execute(params![task.run_id, task.node, item_column(task.item), i64::from(task.attempt)])
            .map_err(sql)?;
    }
    Ok(())
}

/// Reads a `tasks` row selected as `run_id, node, item, attempt, not_before_ms, deliveries`.
fn read_task(r: &rusqlite::Row<'_>) -> rusqlite::Result<(QueuedTask, u32)> {
    let item: i64 = r.get(2)?;
    Ok((
        QueuedTask {
            run_id: r.get(0)?,
            node: r.get(1)?,
            item: u32::try_from(item).ok(),
            attempt: r.get::<_, i64>(3)? as u32,
            not_before_ms: r.get::<_, i64>(4)? as u64,
        },
        r.get::<_, i64>(5)? as u32,
    ))
}

/// Leases the tasks `select` lists (with its parameters) to `owner`, in the transaction
/// the caller holds.
fn lease_rows(
    conn: &Connection,
    select: &str,
    select_params: impl rusqlite::Params,
    owner: &str,
    lease_for: Duration,
) -> Result<Vec<Lease>> {
    let until = (now_ms() + lease_for.as_millis() as u64) as i64;
    let rows: Vec<(QueuedTask, u32)> = {
        let mut select = conn.prepare_cached(select).map_err(sql)?;
        let rows = select.query_map(select_params, read_task).map_err(sql)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql)?
    };
    let mut update = conn
        .prepare_cached(
            "UPDATE tasks SET owner = ?5, until_ms = ?6, deliveries = deliveries + 1
             WHERE run_id = ?1 AND node = ?2 AND item = ?3 AND attempt = ?4",
        )
        .map_err(sql)?;
    let mut leases = Vec::with_capacity(rows.len());
    for (task, deliveries) in rows {
        update
            .execute(params![task.run_id, task.node, item_column(task.item), i64::from(task.attempt), owner, until])
            .map_err(sql)?;
        leases.push(Lease { task, deliveries: deliveries + 1 });
    }
    Ok(leases)
}

const TASK_COLUMNS: &str = "run_id, node, item, attempt, not_before_ms, deliveries";

#[async_trait]
impl TaskQueue for SqliteStore {
    async fn enqueue(&self, tasks: &[QueuedTask]) -> Result<()> {
        self.with_conn(|conn| immediate(conn, |conn| insert_tasks(conn, tasks))).await
    }

    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>> {
        let deadline = tokio::time::Instant::now() + wait;
        let select = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE until_ms <= ?1 AND not_before_ms <= ?1
             ORDER BY not_before_ms LIMIT ?2"
        );
        loop {
            let claims = self
                .with_conn(|conn| {
                    immediate(conn, |conn| {
                        let now = now_ms();
                        let mut claims: Vec<Claim> =
                            claim_expired_holds(conn, owner, max, lease_for)?.into_iter().map(Claim::Run).collect();
                        let room = (max - claims.len()) as i64;
                        let leases = lease_rows(conn, &select, params![now as i64, room], owner, lease_for)?;
                        claims.extend(leases.into_iter().map(Claim::Task));
                        Ok(claims)
                    })
                })
                .await?;
            if !claims.is_empty() {
                return Ok(claims);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>> {
        let select = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE run_id = ?1");
        self.with_conn(|conn| {
            immediate(conn, |conn| {
                let until = now_ms() + lease_for.as_millis() as u64;
                conn.prepare_cached(
                    "UPDATE runs SET owner = ?2, until_ms = ?3 WHERE run_id = ?1 AND status IN ('pending', 'running')",
                )
                .and_then(|mut update| update.execute(params![run_id, owner, until as i64]))
                .map_err(sql)?;
                lease_rows(conn, &select, params![run_id], owner, lease_for)
            })
        })
        .await
    }

    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()> {
        self.with_conn(|conn| {
            immediate(conn, |conn| {
                let until = (now_ms() + lease_for.as_millis() as u64) as i64;
                for sql_text in [
                    "UPDATE runs SET until_ms = ?2 WHERE owner = ?1",
                    "UPDATE tasks SET until_ms = ?2 WHERE owner = ?1",
                ] {
                    conn.prepare_cached(sql_text)
                        .and_then(|mut update| update.execute(params![owner, until]))
                        .map_err(sql)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()> {
        self.with_conn(|conn| {
            let deleted = conn
                .prepare_cached(
                    "DELETE FROM tasks WHERE run_id = ?1 AND node = ?2 AND item = ?3 AND attempt = ?4
                     AND owner = ?5 AND until_ms > ?6",
                )
                .and_then(|mut delete| {
                    delete.execute(params![
                        task.run_id,
                        task.node,
                        item_column(task.item),
                        i64::from(task.attempt),
                        owner,
                        now_ms() as i64
                    ])
                })
                .map_err(sql)?;
            if deleted == 0 {
                return Err(Error::Store(format!(
                    "task {} is not held by {owner}: its lease expired, or it was acknowledged",
                    task.key()
                )));
            }
            Ok(())
        })
        .await
    }

    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()> {
        self.with_conn(|conn| {
            immediate(conn, |conn| {
                let mut update = conn
                    .prepare_cached(
                        "UPDATE tasks SET owner = NULL, until_ms = 0, not_before_ms = ?6,
                         deliveries = max(deliveries - 1, 0)
                         WHERE run_id = ?1 AND node = ?2 AND item = ?3 AND attempt = ?4 AND owner = ?5",
                    )
                    .map_err(sql)?;
                for task in tasks {
                    update
                        .execute(params![
                            task.run_id,
                            task.node,
                            item_column(task.item),
                            i64::from(task.attempt),
                            owner,
                            not_before_ms as i64
                        ])
                        .map_err(sql)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()> {
        self.with_conn(|conn| {
            conn.prepare_cached("UPDATE runs SET owner = ?3, until_ms = ?4 WHERE run_id = ?1 AND owner = ?2")
                .and_then(|mut update| update.execute(params![run_id, owner, RELEASED, not_before_ms as i64]))
                .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn holder(&self, run_id: &str) -> Result<Option<String>> {
        self.with_conn(|conn| Ok(run_row(conn, run_id)?.and_then(|row| row.holder))).await
    }

    async fn holdings(&self, owner: &str) -> Result<Holdings> {
        self.with_conn(|conn| {
            let mut runs =
                conn.prepare_cached("SELECT run_id FROM runs WHERE owner = ?1 ORDER BY run_id").map_err(sql)?;
            let runs = runs.query_map([owner], |r| r.get(0)).map_err(sql)?.collect::<rusqlite::Result<_>>();
            let mut tasks =
                conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE owner = ?1")).map_err(sql)?;
            let tasks = tasks.query_map([owner], |r| read_task(r).map(|(task, _)| task)).map_err(sql)?;
            Ok(Holdings { runs: runs.map_err(sql)?, tasks: tasks.collect::<rusqlite::Result<_>>().map_err(sql)? })
        })
        .await
    }
}

/// One step of [`DurableStore::commit`], in the transaction the caller holds.
fn commit_step(conn: &Connection, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
    let Some(RunRow { id: run, status, holder, until }) = run_row(conn, step.run_id)? else {
        return Err(Error::RunNotFound { run_id: step.run_id.to_owned() });
    };
    check_seq(conn, run, step.run_id, step.expected_seq)?;
    insert_entries(conn, run, step.run_id, step.entries)?;
    let now = now_ms();
    // Who holds the run after the step; the row is written only if that or the
    // status changes, so a node's step writes its journal rows alone.
    let (new_holder, new_until, held) = match owner {
        _ if !holds(step.status) => (None, 0, false),
        Some((me, _)) if holder.as_deref() == Some(me) => (holder.clone(), until, true),
        Some((me, lease_for)) if holder.is_none() => (Some(me.to_owned()), now + lease_for.as_millis() as u64, true),
        _ => (holder.clone(), until, false),
    };
    if status != step.status.as_str() || new_holder != holder {
        let at_ms = step.entries.last().map_or(now, |e| e.at_ms);
        conn.prepare_cached("UPDATE runs SET status = ?2, updated_ms = ?3, owner = ?4, until_ms = ?5 WHERE id = ?1")
            .and_then(|mut update| {
                update.execute(params![run, step.status.as_str(), at_ms as i64, new_holder, new_until as i64])
            })
            .map_err(sql)?;
    }
    if step.status.is_terminal() {
        // A finished run has nothing left to run, whoever holds its tasks.
        conn.prepare_cached("DELETE FROM tasks WHERE run_id = ?1")
            .and_then(|mut delete| delete.execute([step.run_id]))
            .map_err(sql)?;
        return Ok(false);
    }
    delete_tasks(conn, step.done)?;
    if !held {
        insert_tasks(conn, step.ready)?;
    }
    Ok(held)
}

#[async_trait]
impl DurableStore for SqliteStore {
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        self.with_conn(|conn| {
            immediate(conn, |conn| {
                let created = create_run(conn, record, first, owner)?;
                if let (Created::New, None) = (&created, owner) {
                    insert_tasks(conn, ready)?;
                }
                Ok(created)
            })
        })
        .await
    }

    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        self.with_conn(|conn| immediate(conn, |conn| commit_step(conn, step, owner))).await
    }

    async fn commit_batch(&self, steps: &[Step<'_>], owner: Option<(&str, Duration)>) -> Result<Vec<Result<bool>>> {
        self.with_conn(|conn| {
            immediate(conn, |conn| {
                let mut outcomes = Vec::with_capacity(steps.len());
                for step in steps {
                    // A savepoint per step: one that fails leaves the others written.
                    conn.prepare_cached("SAVEPOINT step").and_then(|mut s| s.execute([])).map_err(sql)?;
                    let outcome = commit_step(conn, step, owner);
                    if outcome.is_err() {
                        conn.prepare_cached("ROLLBACK TO step").and_then(|mut s| s.execute([])).map_err(sql)?;
                    }
                    conn.prepare_cached("RELEASE step").and_then(|mut s| s.execute([])).map_err(sql)?;
                    outcomes.push(outcome);
                }
                Ok(outcomes)
            })
        })
        .await
    }

    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>> {
        self.with_conn(|conn| {
            let Some(run) = run_key(conn, run_id)? else {
                return Err(Error::RunNotFound { run_id: run_id.to_owned() });
            };
            read_journal(conn, run, run_id, seq)
        })
        .await
    }

    async fn register_graph(&self, graph: &GraphRecord) -> Result<()> {
        self.with_conn(|conn| {
            let sql_text = if graph.worker {
                "INSERT INTO graphs (name, version, spec, registered_ms, worker) VALUES (?1, ?2, ?3, ?4, 1)
                 ON CONFLICT (name, version) DO UPDATE SET spec = excluded.spec, registered_ms = excluded.registered_ms,
                 worker = 1"
            } else {
                "INSERT INTO graphs (name, version, spec, registered_ms, worker) VALUES (?1, ?2, ?3, ?4, 0)
                 ON CONFLICT (name, version) DO NOTHING"
            };
            conn.prepare_cached(sql_text)
                .and_then(|mut insert| {
                    insert.execute(params![graph.name, graph.version, graph.spec, graph.registered_ms as i64])
                })
                .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn graphs(&self) -> Result<Vec<GraphRecord>> {
        self.with_conn(|conn| {
            let mut select = conn
                .prepare_cached(
                    "SELECT name, version, spec, registered_ms, worker FROM graphs
                     ORDER BY name, registered_ms DESC, version",
                )
                .map_err(sql)?;
            let rows = select
                .query_map([], |r| {
                    Ok(GraphRecord {
                        name: r.get(0)?,
                        version: r.get(1)?,
                        spec: r.get(2)?,
                        registered_ms: r.get::<_, i64>(3)? as u64,
                        worker: r.get::<_, i64>(4)? != 0,
                    })
                })
                .map_err(sql)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (graph, status) in [(None, None), (Some("g"), None), (None, Some("running")), (Some("g"), Some("running"))]
        {
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
        let step = Step {
            run_id: "old",
            expected_seq: 2,
            entries: &[entry],
            status: RunStatus::Completed,
            ready: &[],
            done: &[],
        };
        store.commit(&step, None).await.unwrap();
        assert_eq!(store.load_since("old", 2).await.unwrap().len(), 1);
        assert!(store.graphs().await.unwrap().is_empty());
        drop(store);
        let version: i32 =
            Connection::open(&path).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
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
        store.create_run(&record, &[started]).await.unwrap();
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
        let version: i32 =
            Connection::open(&path).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
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
        let version: i32 =
            Connection::open(&path).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
