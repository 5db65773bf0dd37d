//! The SQLite store's side of the contract: the task queue: claims, leases and holds.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use crate::error::{Error, Result};
use crate::journal::now_ms;
use crate::store::{Claim, Holdings, Lease, QueuedTask, RELEASED, TaskQueue};

use super::rows::{TASK_COLUMNS, claim_expired_holds, item_column, lease_rows, read_task, run_row};
use super::{POLL, SqliteStore, immediate, sql};

#[async_trait]
impl TaskQueue for SqliteStore {
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
