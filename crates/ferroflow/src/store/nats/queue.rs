//! The NATS store's side of the contract: the task queue: claims, leases and holds.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::journal::now_ms;
use crate::store::{Claim, Holdings, Lease, QueuedTask, RELEASED, TaskQueue, holds};

use super::{HoldDoc, NatsStore, POLL, RETRIES, RunDoc, TaskDoc, task_key, token};

#[async_trait]
impl TaskQueue for NatsStore {
    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a wake-up in between is not missed.
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (claims, next_due) =
                self.timed("cannot claim tasks", Duration::ZERO, self.claim_once(owner, max, lease_for)).await?;
            if !claims.is_empty() || max == 0 {
                return Ok(claims);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let until_due = next_due.map(|at| Duration::from_millis(at.saturating_sub(now_ms()).max(1)));
            let nap = until_due.map_or(POLL, |d| d.min(POLL)).min(deadline - now);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>> {
        self.timed("cannot take a run over", Duration::ZERO, async {
            let until = now_ms() + lease_for.as_millis() as u64;
            if let Some(run) = self.record(run_id).await?
                && holds(run.value.status)
            {
                let hold = HoldDoc { owner: owner.to_owned(), until_ms: until };
                self.put(&self.inner.holds, &token(run_id), &hold).await?;
            }
            let prefix = format!("{}.", token(run_id));
            let mut leases = Vec::new();
            for (key, task) in self.scan::<TaskDoc>(&self.inner.tasks, &prefix).await? {
                let (mut doc, mut revision) = (task.value, task.revision);
                for _ in 0..RETRIES {
                    if let Some(lease) = self.lease(&key, doc.clone(), revision, owner, until).await? {
                        leases.push(lease);
                        break;
                    }
                    // Changed since the scan: take what it is now, if it is still there.
                    match self.get::<TaskDoc>(&self.inner.tasks, &key).await? {
                        Some(fresh) => (doc, revision) = (fresh.value, fresh.revision),
                        None => break,
                    }
                }
            }
            Ok(leases)
        })
        .await
    }

    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()> {
        self.timed("cannot renew leases", Duration::ZERO, async {
            let until = now_ms() + lease_for.as_millis() as u64;
            // A record that changed since the scan was taken by someone else: it is no
            // longer the owner's to renew.
            let mut freed = false;
            for (key, hold) in self.scan::<HoldDoc>(&self.inner.holds, "").await? {
                if hold.value.owner == owner {
                    let renewed = HoldDoc { owner: owner.to_owned(), until_ms: until };
                    if self.update(&self.inner.holds, &key, &renewed, hold.revision).await?.is_some()
                        && lease_for.is_zero()
                    {
                        self.hint_run(&key).await;
                        freed = true;
                    }
                }
            }
            for (key, task) in self.scan::<TaskDoc>(&self.inner.tasks, "").await? {
                if task.value.owner.as_deref() == Some(owner) {
                    let mut doc = task.value;
                    doc.until_ms = until;
                    if self.update(&self.inner.tasks, &key, &doc, task.revision).await?.is_some() && lease_for.is_zero()
                    {
                        self.hint_tasks([&QueuedTask::from(&doc.task)]).await;
                        freed = true;
                    }
                }
            }
            if freed {
                self.wake().await;
            }
            Ok(())
        })
        .await
    }

    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()> {
        self.timed("cannot acknowledge a task", Duration::ZERO, async {
            let key = task_key(task);
            let not_held = || {
                Error::Store(format!(
                    "task {} is not held by {owner}: its lease expired, or it was acknowledged",
                    task.key()
                ))
            };
            match self.get::<TaskDoc>(&self.inner.tasks, &key).await? {
                Some(held) if held.value.owner.as_deref() == Some(owner) && held.value.until_ms > now_ms() => {
                    if self.remove_if(&self.inner.tasks, &key, held.revision).await? { Ok(()) } else { Err(not_held()) }
                }
                _ => Err(not_held()),
            }
        })
        .await
    }

    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()> {
        self.timed("cannot release tasks", Duration::ZERO, async {
            let mut released = false;
            for task in tasks {
                let key = task_key(task);
                for _ in 0..RETRIES {
                    let Some(held) = self.get::<TaskDoc>(&self.inner.tasks, &key).await? else { break };
                    if held.value.owner.as_deref() != Some(owner) {
                        break;
                    }
                    let mut doc = held.value;
                    doc.owner = None;
                    doc.until_ms = 0;
                    doc.task.not_before_ms = not_before_ms;
                    doc.deliveries = doc.deliveries.saturating_sub(1);
                    if self.update(&self.inner.tasks, &key, &doc, held.revision).await?.is_some() {
                        self.hint_tasks([task]).await;
                        released = true;
                        break;
                    }
                }
            }
            if released {
                self.wake().await;
            }
            Ok(())
        })
        .await
    }

    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()> {
        self.timed("cannot release a run", Duration::ZERO, async {
            let key = token(run_id);
            for _ in 0..RETRIES {
                let Some(hold) = self.get::<HoldDoc>(&self.inner.holds, &key).await? else { return Ok(()) };
                if hold.value.owner != owner {
                    return Ok(());
                }
                let released = HoldDoc { owner: RELEASED.to_owned(), until_ms: not_before_ms };
                if self.update(&self.inner.holds, &key, &released, hold.revision).await?.is_some() {
                    self.hint_run(&key).await;
                    self.wake().await;
                    return Ok(());
                }
            }
            Err(self.fail(&format!("cannot release run '{run_id}'"), "too many concurrent writers"))
        })
        .await
    }

    async fn holdings(&self, owner: &str) -> Result<Holdings> {
        self.timed("cannot read what an owner holds", Duration::ZERO, async {
            let mut held = Holdings::default();
            // Hold keys are escaped run ids; the run record has the id itself.
            for (key, hold) in self.scan::<HoldDoc>(&self.inner.holds, "").await? {
                if hold.value.owner == owner
                    && let Some(run) = self.get::<RunDoc>(&self.inner.runs, &key).await?
                {
                    held.runs.push(run.value.run_id);
                }
            }
            held.runs.sort();
            for (_, task) in self.scan::<TaskDoc>(&self.inner.tasks, "").await? {
                if task.value.owner.as_deref() == Some(owner) {
                    held.tasks.push(QueuedTask::from(&task.value.task));
                }
            }
            Ok(held)
        })
        .await
    }

    async fn holder(&self, run_id: &str) -> Result<Option<String>> {
        self.timed("cannot read who holds a run", Duration::ZERO, async {
            Ok(self.get::<HoldDoc>(&self.inner.holds, &token(run_id)).await?.map(|hold| hold.value.owner))
        })
        .await
    }
}
