//! The rows of a SQLite store: reading and writing runs, journal entries and tasks inside
//! the caller's transaction. The trait impls (journal, queue, durable) are made of these.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::journal::{JournalEntry, RunStatus, now_ms};
use crate::store::{Created, Lease, QueuedTask, RunRecord, Step, StoredEntry, holds};

use super::{MAX_SEQ, SEQ_BITS, encode, sql};

/// The integer id of a run, if the store has it.
pub(super) fn run_key(conn: &Connection, run_id: &str) -> Result<Option<i64>> {
    let mut select = conn.prepare_cached("SELECT id FROM runs WHERE run_id = ?1").map_err(sql)?;
    select.query_row([run_id], |r| r.get(0)).optional().map_err(sql)
}

/// What a step needs of a run's row.
pub(super) struct RunRow {
    pub(super) id: i64,
    pub(super) status: String,
    pub(super) holder: Option<String>,
    pub(super) until: u64,
}

/// A run's row, if the store has it.
pub(super) fn run_row(conn: &Connection, run_id: &str) -> Result<Option<RunRow>> {
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
pub(super) fn entry_key(run: i64, seq: u64) -> i64 {
    (run << SEQ_BITS) | seq as i64
}

pub(super) fn insert_entries(conn: &Connection, run: i64, run_id: &str, entries: &[StoredEntry]) -> Result<()> {
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

pub(super) fn status_of(text: &str) -> Result<RunStatus> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| Error::Store(format!("unknown run status '{text}' in the runs table")))
}

/// The columns of a run record. `updated_ms` is when its last journal entry was written
/// (or its status last changed): the journal is not written twice per node to keep a
/// column of the `runs` row current.
pub(super) const RECORD_COLUMNS: &str = "run_id, graph, version, status, created_ms, \
     max(updated_ms, coalesce((SELECT at_ms FROM journal WHERE id BETWEEN runs.id << 24 AND (runs.id << 24) + 16777215
     ORDER BY id DESC LIMIT 1), 0)), id";

/// A page of runs: ?1 graph, ?2 status (NULL for any), from after (?3 `created_ms`, ?4 id),
/// at most ?5 rows, newest first. The row-value comparison is a seek in `runs_by_created`
/// (whose order is the listing's), so a page costs the same at any depth; the filters are
/// checked on the rows the index walk meets from there. There is no index by graph or
/// status: a filter that few runs match walks past the runs of other graphs or statuses
/// (an index by status would be written on every status change).
pub(super) fn list_runs_sql() -> String {
    format!(
        "SELECT {RECORD_COLUMNS} FROM runs
         WHERE (?1 IS NULL OR graph = ?1) AND (?2 IS NULL OR status = ?2) AND (created_ms, id) < (?3, ?4)
         ORDER BY created_ms DESC, id DESC LIMIT ?5"
    )
}

/// A `runs` row selected with [`RECORD_COLUMNS`]: the record, its status text and its id.
pub(super) fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(RunRecord, String, i64)> {
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

pub(super) fn load_run(conn: &Connection, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
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
pub(super) fn read_journal(conn: &Connection, run: i64, run_id: &str, from: u64) -> Result<Vec<StoredEntry>> {
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

/// Inserts a run and its first entries, held by `owner` if given, unless a run with its id
/// exists (whose record and journal are returned then). The run's tasks are the caller's.
pub(super) fn insert_run(
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

/// Fails with [`Error::Conflict`] unless run `run`'s journal holds `expected` entries:
/// entry `expected - 1` exists and entry `expected` does not. Two lookups of the row key,
/// on the page the step then writes. (A range query here, `max(seq)` or the like, was
/// compiled anew on every step: with a bound parameter in a range, SQLite's STAT4 build
/// re-plans the statement whenever the parameter changes.)
pub(super) fn check_seq(conn: &Connection, run: i64, run_id: &str, expected: u64) -> Result<()> {
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
pub(super) fn item_column(item: Option<u32>) -> i64 {
    item.map_or(-1, i64::from)
}

/// Queues tasks that are not queued already.
pub(super) fn insert_tasks(conn: &Connection, tasks: &[QueuedTask]) -> Result<()> {
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
pub(super) fn claim_expired_holds(
    conn: &Connection,
    owner: &str,
    max: usize,
    lease_for: Duration,
) -> Result<Vec<String>> {
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

pub(super) fn delete_tasks(conn: &Connection, tasks: &[QueuedTask]) -> Result<()> {
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
pub(super) fn read_task(r: &rusqlite::Row<'_>) -> rusqlite::Result<(QueuedTask, u32)> {
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
pub(super) fn lease_rows(
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

pub(super) const TASK_COLUMNS: &str = "run_id, node, item, attempt, not_before_ms, deliveries";

/// One step of [`DurableStore::commit`], in the transaction the caller holds.
pub(super) fn commit_step(conn: &Connection, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
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
