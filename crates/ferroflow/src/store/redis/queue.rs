//! The Redis store's side of the contract: the task queue: claims, leases and holds.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::store::{Claim, Holdings, Lease, QueuedTask, RELEASED, TaskQueue};

use super::{ClaimReply, MAX_CLAIMS, POLL, RedisStore};

#[async_trait]
impl TaskQueue for RedisStore {
    /// Polls every [`POLL`] while it waits, or sooner when the server says a task, lease or
    /// hold falls due before.
    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut invocation = self.inner.scripts.claim.prepare_invoke();
            invocation.arg(&self.inner.prefix).arg(owner).arg(max.min(MAX_CLAIMS)).arg(lease_for.as_millis() as u64);
            let mut conn = self.conn.clone();
            let (now, next_due, runs, tasks): ClaimReply =
                self.call("cannot claim work", async move { invocation.invoke_async(&mut conn).await }).await?;
            if !runs.is_empty() || !tasks.is_empty() {
                let mut claims: Vec<Claim> = runs.into_iter().map(Claim::Run).collect();
                claims.extend(self.leases(tasks)?.into_iter().map(Claim::Task));
                return Ok(claims);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let mut nap = POLL.min(left);
            if next_due >= 0 {
                nap = nap.min(Duration::from_millis((next_due - now).max(1) as u64));
            }
            tokio::time::sleep(nap).await;
        }
    }

    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>> {
        let mut invocation = self.inner.scripts.claim_run.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(run_id).arg(lease_for.as_millis() as u64);
        let mut conn = self.conn.clone();
        let rows: Vec<(String, u64, u32)> = self
            .call(&format!("cannot take run '{run_id}' over"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        let mut leases = self.leases(rows)?;
        leases.sort_by_key(|lease| lease.task.not_before_ms);
        Ok(leases)
    }

    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()> {
        let mut invocation = self.inner.scripts.renew.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(lease_for.as_millis() as u64);
        let mut conn = self.conn.clone();
        let _: i64 =
            self.call(&format!("cannot renew the leases of {owner}"), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()> {
        let mut invocation = self.inner.scripts.ack.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(self.task_key(task));
        let mut conn = self.conn.clone();
        let removed: i64 = self
            .call(&format!("cannot acknowledge task {}", task.key()), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if removed == 0 {
            return Err(Error::Store(format!(
                "task {} is not held by {owner}: its lease expired, or it was acknowledged",
                task.key()
            )));
        }
        Ok(())
    }

    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut invocation = self.inner.scripts.release.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(not_before_ms);
        for task in tasks {
            invocation.arg(self.task_key(task));
        }
        let mut conn = self.conn.clone();
        let _: i64 =
            self.call(&format!("cannot hand back tasks of {owner}"), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()> {
        let mut invocation = self.inner.scripts.release_run.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(run_id).arg(not_before_ms).arg(RELEASED);
        let mut conn = self.conn.clone();
        let _: i64 = self
            .call(&format!("cannot hand back run '{run_id}'"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    async fn holdings(&self, owner: &str) -> Result<Holdings> {
        let mut invocation = self.inner.scripts.holdings.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner);
        let mut conn = self.conn.clone();
        let (mut runs, rows): (Vec<String>, Vec<(String, u64, u32)>) = self
            .call(&format!("cannot read what {owner} holds"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        runs.sort();
        Ok(Holdings { runs, tasks: self.leases(rows)?.into_iter().map(|lease| lease.task).collect() })
    }

    async fn holder(&self, run_id: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        self.call(&format!("cannot read who holds run '{run_id}'"), async {
            redis::cmd("HGET").arg(self.run_key(run_id)).arg("owner").query_async(&mut conn).await
        })
        .await
    }
}
