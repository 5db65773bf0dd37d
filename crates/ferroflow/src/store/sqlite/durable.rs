//! The SQLite store's side of the contract: steps: a journal write with its tasks and holds, in one.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use crate::error::{Error, Result};
use crate::journal::RunStatus;
use crate::store::{Created, DurableStore, GraphRecord, QueuedTask, RunRecord, Step, StoredEntry};

use super::rows::{commit_step, insert_run, insert_tasks, read_journal, run_key, run_row};
use super::{SEQ_BITS, SqliteStore, immediate, sql};

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
                let created = insert_run(conn, record, first, owner)?;
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

    async fn delete_finished(&self, run_id: &str) -> Result<bool> {
        self.with_conn(|conn| {
            immediate(conn, |conn| {
                let Some(run) = run_row(conn, run_id)? else {
                    return Err(Error::RunNotFound { run_id: run_id.to_owned() });
                };
                let finished = [RunStatus::Completed, RunStatus::Failed, RunStatus::Cancelled];
                if !finished.iter().any(|s| s.as_str() == run.status) {
                    return Ok(false);
                }
                // The run's journal rows are the keys `run << SEQ_BITS | seq`.
                let (from, to) = (run.id << SEQ_BITS, (run.id + 1) << SEQ_BITS);
                conn.prepare_cached("DELETE FROM journal WHERE id >= ?1 AND id < ?2")
                    .and_then(|mut delete| delete.execute(params![from, to]))
                    .map_err(sql)?;
                conn.prepare_cached("DELETE FROM tasks WHERE run_id = ?1")
                    .and_then(|mut delete| delete.execute([run_id]))
                    .map_err(sql)?;
                conn.prepare_cached("DELETE FROM runs WHERE id = ?1")
                    .and_then(|mut delete| delete.execute([run.id]))
                    .map_err(sql)?;
                Ok(true)
            })
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
