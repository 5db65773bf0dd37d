//! The in-memory store ([`MemoryStore`]): the in-memory context's, and the reference the
//! conformance tests hold the durable stores to.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::journal::now_ms;

use super::{
    Claim, Created, DurableStore, GraphRecord, Holdings, JournalStore, Lease, QueuedTask, RELEASED, RunCursor, RunPage,
    RunQuery, RunRecord, Step, StoredEntry, TaskQueue, holds, sort_graphs,
};
/// Journals in process memory: the store of the in-memory context, and the reference
/// the conformance tests hold durable stores to.
#[derive(Default)]
pub struct MemoryStore {
    runs: Mutex<MemoryState>,
    graphs: Mutex<HashMap<(String, String), GraphRecord>>,
    /// Woken when tasks are queued.
    ready: Notify,
}

#[derive(Default)]
struct MemoryState {
    runs: HashMap<String, MemoryRun>,
    tasks: MemoryTasks,
    /// Who holds which run, and until when.
    holds: HashMap<String, (String, u64)>,
}

impl MemoryState {
    /// Makes `owner` hold the run unless another owner holds it (see [`Step::ready`]);
    /// says whether it does.
    fn hold(&mut self, run_id: &str, owner: &str, lease_for: Duration, now: u64) -> bool {
        match self.holds.get(run_id) {
            Some((holder, _)) => holder == owner,
            None => {
                self.holds.insert(run_id.to_owned(), (owner.to_owned(), now + lease_for.as_millis() as u64));
                true
            }
        }
    }
}

struct MemoryRun {
    record: RunRecord,
    journal: Vec<StoredEntry>,
    /// Its place in the order of creation.
    order: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl JournalStore for MemoryStore {
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        Ok(self.runs.lock().expect("store lock").runs.get(run_id).map(|run| (run.record.clone(), run.journal.clone())))
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        if query.limit == 0 {
            return Ok(RunPage::default());
        }
        let runs = &self.runs.lock().expect("store lock").runs;
        let mut matching: Vec<(RunCursor, &RunRecord)> = runs
            .values()
            .map(|run| (RunCursor { created_ms: run.record.created_ms, order: run.order }, &run.record))
            .filter(|(at, record)| query.admits(record, *at))
            .collect();
        matching.sort_by(|(a, _), (b, _)| b.created_ms.cmp(&a.created_ms).then(b.order.cmp(&a.order)));
        Ok(RunPage::of(matching.into_iter().map(|(at, record)| (at, record.clone())), query.limit))
    }
}

#[async_trait]
impl TaskQueue for MemoryStore {
    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so tasks queued in between are not missed.
            let notified = self.ready.notified();
            let (claims, next_due) = {
                let mut state = self.runs.lock().expect("store lock");
                let now = now_ms();
                let until = now + lease_for.as_millis() as u64;
                let mut claims: Vec<Claim> = Vec::new();
                for (run_id, (holder, expires)) in state.holds.iter_mut() {
                    if claims.len() < max && *expires <= now {
                        *holder = owner.to_owned();
                        *expires = until;
                        claims.push(Claim::Run(run_id.clone()));
                    }
                }
                let room = max - claims.len();
                claims.extend(state.tasks.claim(owner, now, until, room, |_| true, false).into_iter().map(Claim::Task));
                let next_hold = state.holds.values().map(|(_, expires)| *expires).min();
                (claims, state.tasks.next_due().into_iter().chain(next_hold).min())
            };
            if !claims.is_empty() {
                return Ok(claims);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let until_due = next_due.map(|at| Duration::from_millis(at.saturating_sub(now_ms()).max(1)));
            let nap = until_due.map_or(deadline - now, |d| d.min(deadline - now));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>> {
        let mut state = self.runs.lock().expect("store lock");
        let now = now_ms();
        let until = now + lease_for.as_millis() as u64;
        if state.runs.get(run_id).is_some_and(|run| holds(run.record.status)) {
            state.holds.insert(run_id.to_owned(), (owner.to_owned(), until));
        }
        Ok(state.tasks.claim(owner, now, until, usize::MAX, |t| t.run_id == run_id, true))
    }

    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()> {
        let mut state = self.runs.lock().expect("store lock");
        let until = now_ms() + lease_for.as_millis() as u64;
        for held in state.tasks.rows.values_mut() {
            if held.owner.as_deref() == Some(owner) {
                held.until_ms = until;
            }
        }
        for (holder, expires) in state.holds.values_mut() {
            if holder == owner {
                *expires = until;
            }
        }
        Ok(())
    }

    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()> {
        let mut state = self.runs.lock().expect("store lock");
        let key = task.key();
        match state.tasks.rows.get(&key) {
            Some(held) if held.owner.as_deref() == Some(owner) && held.until_ms > now_ms() => {
                state.tasks.rows.remove(&key);
                Ok(())
            }
            _ => Err(Error::Store(format!(
                "task {key} is not held by {owner}: its lease expired, or it was acknowledged"
            ))),
        }
    }

    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()> {
        let mut state = self.runs.lock().expect("store lock");
        for task in tasks {
            if let Some(held) = state.tasks.rows.get_mut(&task.key())
                && held.owner.as_deref() == Some(owner)
            {
                held.owner = None;
                held.until_ms = 0;
                held.task.not_before_ms = not_before_ms;
                held.deliveries = held.deliveries.saturating_sub(1);
            }
        }
        drop(state);
        self.ready.notify_waiters();
        Ok(())
    }

    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()> {
        let mut state = self.runs.lock().expect("store lock");
        if let Some((holder, until)) = state.holds.get_mut(run_id)
            && holder == owner
        {
            *holder = RELEASED.to_owned();
            *until = not_before_ms;
        }
        Ok(())
    }

    async fn holder(&self, run_id: &str) -> Result<Option<String>> {
        Ok(self.runs.lock().expect("store lock").holds.get(run_id).map(|(holder, _)| holder.clone()))
    }

    async fn holdings(&self, owner: &str) -> Result<Holdings> {
        let state = self.runs.lock().expect("store lock");
        let mut runs: Vec<String> =
            state.holds.iter().filter(|(_, (holder, _))| holder == owner).map(|(run, _)| run.clone()).collect();
        runs.sort();
        let tasks = state
            .tasks
            .rows
            .values()
            .filter(|held| held.owner.as_deref() == Some(owner))
            .map(|held| held.task.clone())
            .collect();
        Ok(Holdings { runs, tasks })
    }
}

#[async_trait]
impl DurableStore for MemoryStore {
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        let mut state = self.runs.lock().expect("store lock");
        if let Some(existing) = state.runs.get(&record.run_id) {
            return Ok(Created::Existing { record: existing.record.clone(), journal: existing.journal.clone() });
        }
        let order = state.runs.len() as u64;
        state.runs.insert(record.run_id.clone(), MemoryRun { record: record.clone(), journal: first.to_vec(), order });
        match owner {
            Some((owner, lease_for)) => {
                state.hold(&record.run_id, owner, lease_for, now_ms());
            }
            None => state.tasks.insert(ready),
        }
        drop(state);
        self.ready.notify_waiters();
        Ok(Created::New)
    }

    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        let mut state = self.runs.lock().expect("store lock");
        let run =
            state.runs.get_mut(step.run_id).ok_or_else(|| Error::RunNotFound { run_id: step.run_id.to_owned() })?;
        let found = run.journal.len() as u64;
        if found != step.expected_seq {
            return Err(Error::Conflict { run_id: step.run_id.to_owned(), expected: step.expected_seq, found });
        }
        run.journal.extend_from_slice(step.entries);
        run.record.status = step.status;
        if let Some(last) = step.entries.last() {
            run.record.updated_ms = last.at_ms;
        }
        if !holds(step.status) {
            state.holds.remove(step.run_id);
        }
        if step.status.is_terminal() {
            // A finished run has nothing left to run, whoever holds its tasks.
            state.tasks.rows.retain(|_, held| held.task.run_id != step.run_id);
            return Ok(false);
        }
        for task in step.done {
            state.tasks.rows.remove(&task.key());
        }
        let held = match owner {
            Some((owner, lease_for)) if holds(step.status) => state.hold(step.run_id, owner, lease_for, now_ms()),
            _ => false,
        };
        if !held && !step.ready.is_empty() {
            state.tasks.insert(step.ready);
            drop(state);
            self.ready.notify_waiters();
        }
        Ok(held)
    }

    async fn delete_finished(&self, run_id: &str) -> Result<bool> {
        let mut state = self.runs.lock().expect("store lock");
        let run = state.runs.get(run_id).ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
        if !run.record.status.is_terminal() {
            return Ok(false);
        }
        state.runs.remove(run_id);
        state.holds.remove(run_id);
        state.tasks.rows.retain(|_, held| held.task.run_id != run_id);
        Ok(true)
    }

    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>> {
        let state = self.runs.lock().expect("store lock");
        let run = state.runs.get(run_id).ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
        Ok(run.journal.iter().skip(seq as usize).cloned().collect())
    }

    async fn register_graph(&self, graph: &GraphRecord) -> Result<()> {
        let key = (graph.name.clone(), graph.version.clone());
        let mut graphs = self.graphs.lock().expect("store lock");
        if graph.worker {
            graphs.insert(key, graph.clone());
        } else {
            graphs.entry(key).or_insert_with(|| graph.clone());
        }
        Ok(())
    }

    async fn graphs(&self) -> Result<Vec<GraphRecord>> {
        let mut graphs: Vec<GraphRecord> = self.graphs.lock().expect("store lock").values().cloned().collect();
        sort_graphs(&mut graphs);
        Ok(graphs)
    }
}

/// The task queue of a [`MemoryStore`].
#[derive(Default)]
struct MemoryTasks {
    rows: HashMap<String, HeldTask>,
    /// Insertion order, so that tasks are handed out first in, first out.
    counter: u64,
}

struct HeldTask {
    task: QueuedTask,
    owner: Option<String>,
    /// When the lease expires; 0 while queued.
    until_ms: u64,
    deliveries: u32,
    order: u64,
}

impl MemoryTasks {
    /// Queues tasks that are not queued already.
    fn insert(&mut self, tasks: &[QueuedTask]) {
        for task in tasks {
            let key = task.key();
            if self.rows.contains_key(&key) {
                continue;
            }
            self.counter += 1;
            let held = HeldTask { task: task.clone(), owner: None, until_ms: 0, deliveries: 0, order: self.counter };
            self.rows.insert(key, held);
        }
    }

    /// Leases up to `max` tasks that `pick` accepts, oldest first: unless it is a
    /// `takeover`, only those that nobody holds and that are due.
    fn claim(
        &mut self,
        owner: &str,
        now: u64,
        until: u64,
        max: usize,
        pick: impl Fn(&QueuedTask) -> bool,
        takeover: bool,
    ) -> Vec<Lease> {
        let mut free: Vec<(u64, u64, String)> = self
            .rows
            .iter()
            .filter(|(_, h)| pick(&h.task) && (takeover || (h.until_ms <= now && h.task.not_before_ms <= now)))
            .map(|(key, h)| (h.task.not_before_ms, h.order, key.clone()))
            .collect();
        free.sort();
        free.into_iter()
            .take(max)
            .map(|(_, _, key)| {
                let held = self.rows.get_mut(&key).expect("listed");
                held.owner = Some(owner.to_owned());
                held.until_ms = until;
                held.deliveries += 1;
                Lease { task: held.task.clone(), deliveries: held.deliveries }
            })
            .collect()
    }

    /// When the next task becomes claimable, if any task is queued or leased.
    fn next_due(&self) -> Option<u64> {
        self.rows.values().map(|h| if h.until_ms > 0 { h.until_ms } else { h.task.not_before_ms }).min()
    }
}
