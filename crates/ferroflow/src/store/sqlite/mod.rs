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

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::{Error, Result};
use crate::store::StoredEntry;

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

mod durable;
mod journal;
mod queue;
mod rows;
#[cfg(test)]
mod tests;
