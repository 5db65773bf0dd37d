//! Claims: what a worker's claim takes (expired holds, then due tasks), and leasing a task.

use std::time::Duration;

use crate::error::Result;
use crate::journal::now_ms;
use crate::store::{Claim, Lease, QueuedTask};

use super::{HoldDoc, NatsStore, RunDoc, TaskDoc};

impl NatsStore {
    /// Leases the task record `key` (read at `revision`) to `owner`; `None` if it changed.
    pub(super) async fn lease(
        &self,
        key: &str,
        mut doc: TaskDoc,
        revision: u64,
        owner: &str,
        until_ms: u64,
    ) -> Result<Option<Lease>> {
        doc.owner = Some(owner.to_owned());
        doc.until_ms = until_ms;
        doc.deliveries += 1;
        Ok(self
            .update(&self.inner.tasks, key, &doc, revision)
            .await?
            .map(|_| Lease { task: QueuedTask::from(&doc.task), deliveries: doc.deliveries }))
    }

    /// One pass of a claim: what the hints name ([`super::hints`]), then, when the hints gave
    /// nothing or the last scan is a while ago, a scan: expired holds, then due tasks; also
    /// when the next thing falls due.
    pub(super) async fn claim_once(
        &self,
        owner: &str,
        max: usize,
        lease_for: Duration,
    ) -> Result<(Vec<Claim>, Option<u64>)> {
        let until = now_ms() + lease_for.as_millis() as u64;
        let (mut claims, hinted, mut next_due) =
            if max == 0 { (Vec::new(), 0, None) } else { self.claim_hinted(owner, max, until).await? };
        if claims.len() >= max || !self.sweep_due(hinted == 0) {
            return Ok((claims, next_due));
        }
        let swept = std::time::Instant::now();
        let now = now_ms();
        for (key, hold) in self.scan::<HoldDoc>(&self.inner.holds, "").await? {
            if hold.value.until_ms > now {
                next_due = Some(next_due.map_or(hold.value.until_ms, |d| d.min(hold.value.until_ms)));
                continue;
            }
            if claims.len() >= max {
                continue;
            }
            let Some(run) = self.get::<RunDoc>(&self.inner.runs, &key).await? else { continue };
            let mine = HoldDoc { owner: owner.to_owned(), until_ms: until };
            if self.update(&self.inner.holds, &key, &mine, hold.revision).await?.is_some() {
                claims.push(Claim::Run(run.value.run_id));
            }
        }
        if claims.len() >= max {
            self.swept(swept);
            return Ok((claims, next_due));
        }
        let mut free = Vec::new();
        let tasks = self.scan::<TaskDoc>(&self.inner.tasks, "").await?;
        self.swept(swept);
        for (key, task) in tasks {
            let doc = &task.value;
            let due = if doc.until_ms > now { doc.until_ms } else { doc.task.not_before_ms };
            if due > now {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
            } else {
                free.push((doc.task.not_before_ms, task.revision, key, task.value));
            }
        }
        free.sort_by_key(|(not_before, revision, _, _)| (*not_before, *revision));
        for (_, revision, key, doc) in free {
            if claims.len() >= max {
                break;
            }
            if let Some(lease) = self.lease(&key, doc, revision, owner, until).await? {
                claims.push(Claim::Task(lease));
            }
        }
        Ok((claims, next_due))
    }
}
