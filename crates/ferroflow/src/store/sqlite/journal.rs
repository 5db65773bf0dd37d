//! The SQLite store's side of the contract: journals and run records.

use async_trait::async_trait;
use rusqlite::params;

use crate::error::Result;
use crate::store::{JournalStore, RunCursor, RunPage, RunQuery, RunRecord, StoredEntry};

use super::rows::{list_runs_sql, load_run, read_record, status_of};
use super::{SqliteStore, sql};

#[async_trait]
impl JournalStore for SqliteStore {
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        self.with_conn(|conn| load_run(conn, run_id)).await
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
