//! The SQLite store's side of the contract: journals and run records.

use async_trait::async_trait;
use rusqlite::params;

use crate::error::{Error, Result};
use crate::journal::{JournalEntry, RunStatus, now_ms};
use crate::store::{Created, JournalStore, RunCursor, RunPage, RunQuery, RunRecord, StoredEntry};

use super::rows::{check_seq, create_run, insert_entries, list_runs_sql, load_run, read_record, run_key, status_of};
use super::{SqliteStore, immediate, sql};

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
