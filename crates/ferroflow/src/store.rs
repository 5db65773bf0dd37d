//! The context abstraction: where journals live ([`JournalStore`]) and where ready tasks
//! wait for a worker ([`TaskQueue`]).
//!
//! The scheduler is written once against these traits. [`MemoryStore`] and [`MemoryQueue`]
//! are their in-memory implementations: the reference that durable implementations (SQLite,
//! Redis, NATS) are tested against. Real-time runs do not go through a queue at all: the
//! in-memory engine spawns a ready task on the tokio runtime at once, so they have no
//! queue hop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::journal::{JournalEntry, RunStatus, now_ms};

/// One journal entry with its position and time.
#[derive(Clone, Debug)]
pub struct StoredEntry {
    /// Position in the run's journal, from 0 (the `RunStarted` entry).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub entry: JournalEntry,
}

/// What a store knows of a run without reading its journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub run_id: String,
    pub graph: String,
    pub version: String,
    pub status: RunStatus,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// The outcome of [`JournalStore::create_run`].
#[derive(Debug)]
pub enum Created {
    /// The run is new; its journal holds the given first entries.
    New,
    /// A run with that id exists already; here is its journal.
    Existing { record: RunRecord, journal: Vec<StoredEntry> },
}

/// Durable home of run journals.
///
/// Contract, for every implementation:
/// - `create_run` is idempotent on `run_id`: starting a run twice yields one run; the
///   second caller learns of the first.
/// - `append` is all-or-nothing for the entries of one call, and only succeeds if the
///   journal holds exactly `expected_seq` entries before it (optimistic concurrency, so
///   two writers cannot interleave one run's journal). A conflict is an error that says so.
/// - Entries are returned by `load` in the order appended, with the `seq` and `at_ms`
///   given at append time; nothing is ever rewritten.
/// - `append` of a `RunFinished` entry also updates the run record's status.
#[async_trait]
pub trait JournalStore: Send + Sync + 'static {
    async fn create_run(&self, record: &RunRecord, first: &[StoredEntry]) -> Result<Created>;
    async fn append(&self, run_id: &str, expected_seq: u64, entries: &[StoredEntry]) -> Result<()>;
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>>;
    /// Records a status the journal implies without an entry of its own (a run starting or
    /// stopping to wait for a person), so that listing runs shows it. `RunFinished` entries
    /// set the final status by themselves.
    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()>;
    /// Records matching `graph` and `status` (all when `None`), newest first: by creation
    /// time, and runs created in the same millisecond in the reverse order of creation.
    async fn list_runs(&self, graph: Option<&str>, status: Option<RunStatus>, limit: usize) -> Result<Vec<RunRecord>>;
}

/// A task as queues carry it: enough to find the run and the node attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedTask {
    pub run_id: String,
    pub node: String,
    pub item: Option<u32>,
    pub attempt: u32,
    /// Milliseconds since the Unix epoch before which the task must not be handed out.
    pub not_before_ms: u64,
}

impl QueuedTask {
    /// The key queues deduplicate on: one task per `(run, node, item, attempt)`.
    pub fn key(&self) -> String {
        match self.item {
            Some(i) => format!("{}/{}/{i}/{}", self.run_id, self.node, self.attempt),
            None => format!("{}/{}/{}", self.run_id, self.node, self.attempt),
        }
    }
}

/// A task handed to a worker, held until acknowledged or until the lease runs out.
#[derive(Clone, Debug)]
pub struct Lease {
    pub task: QueuedTask,
    /// Identifies this delivery to `ack` and `extend`.
    pub token: String,
    /// How many times the task was handed out, this time included.
    pub deliveries: u32,
}

/// Where ready tasks wait for workers in durable contexts.
///
/// Contract, for every implementation:
/// - `enqueue` is idempotent on [`QueuedTask::key`]: enqueuing a task that is queued,
///   leased or was acknowledged does nothing.
/// - `lease` hands each task to one worker at a time, never before `not_before_ms`, and
///   waits at most `wait` for one to appear (returning an empty list then).
/// - A lease that is neither acknowledged nor extended within `lease_for` expires and the
///   task is handed out again, with `deliveries` increased: delivery is at-least-once,
///   and duplicates are dropped against the journal by the scheduler.
/// - `ack` removes the task for good; acknowledging an expired lease is an error, since
///   another worker may hold the task now.
#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    async fn enqueue(&self, tasks: &[QueuedTask]) -> Result<()>;
    async fn lease(&self, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Lease>>;
    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<()>;
    async fn ack(&self, lease: &Lease) -> Result<()>;
}

/// Journals in process memory: the store of the in-memory context, and the reference
/// the conformance tests hold durable stores to.
#[derive(Default)]
pub struct MemoryStore {
    runs: Mutex<HashMap<String, MemoryRun>>,
}

struct MemoryRun {
    record: RunRecord,
    journal: Vec<StoredEntry>,
    /// Its place in the order of creation.
    order: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl JournalStore for MemoryStore {
    async fn create_run(&self, record: &RunRecord, first: &[StoredEntry]) -> Result<Created> {
        let mut runs = self.runs.lock().expect("store lock");
        if let Some(existing) = runs.get(&record.run_id) {
            return Ok(Created::Existing { record: existing.record.clone(), journal: existing.journal.clone() });
        }
        let order = runs.len() as u64;
        runs.insert(record.run_id.clone(), MemoryRun { record: record.clone(), journal: first.to_vec(), order });
        Ok(Created::New)
    }

    async fn append(&self, run_id: &str, expected_seq: u64, entries: &[StoredEntry]) -> Result<()> {
        let mut runs = self.runs.lock().expect("store lock");
        let MemoryRun { record, journal, .. } =
            runs.get_mut(run_id).ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
        if journal.len() as u64 != expected_seq {
            return Err(Error::Store(format!(
                "run '{run_id}': journal has {} entries, the writer expected {expected_seq}: another writer got there first",
                journal.len()
            )));
        }
        for stored in entries {
            if let JournalEntry::RunFinished { status, .. } = &stored.entry {
                record.status = *status;
            }
            record.updated_ms = stored.at_ms;
        }
        journal.extend_from_slice(entries);
        Ok(())
    }

    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        Ok(self.runs.lock().expect("store lock").get(run_id).map(|run| (run.record.clone(), run.journal.clone())))
    }

    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        let mut runs = self.runs.lock().expect("store lock");
        let run = runs.get_mut(run_id).ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
        run.record.status = status;
        Ok(())
    }

    async fn list_runs(&self, graph: Option<&str>, status: Option<RunStatus>, limit: usize) -> Result<Vec<RunRecord>> {
        let runs = self.runs.lock().expect("store lock");
        let mut matching: Vec<&MemoryRun> = runs
            .values()
            .filter(|run| graph.is_none_or(|g| run.record.graph == g) && status.is_none_or(|s| run.record.status == s))
            .collect();
        matching.sort_by(|a, b| b.record.created_ms.cmp(&a.record.created_ms).then(b.order.cmp(&a.order)));
        Ok(matching.into_iter().take(limit).map(|run| run.record.clone()).collect())
    }
}

/// Tasks in process memory, with leases: the in-memory [`TaskQueue`].
///
/// Timestamps are wall-clock milliseconds, like the durable queues', so `not_before_ms`
/// means the same everywhere.
#[derive(Default)]
pub struct MemoryQueue {
    inner: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    /// Every key ever enqueued: enqueuing is idempotent even after acknowledgement.
    known: HashSet<String>,
    /// Tasks waiting, by (not_before_ms, insertion order).
    waiting: BTreeMap<(u64, u64), (QueuedTask, u32)>,
    /// Tasks handed out, by lease token: the task, its deliveries, and the lease expiry.
    leased: HashMap<String, (QueuedTask, u32, u64)>,
    counter: u64,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tasks waiting or leased.
    pub fn len(&self) -> usize {
        let state = self.inner.lock().expect("queue lock");
        state.waiting.len() + state.leased.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves expired leases back to waiting, then takes up to `max` tasks that are due.
    fn take_due(&self, max: usize, lease_for: Duration) -> (Vec<Lease>, Option<u64>) {
        let now = now_ms();
        let mut state = self.inner.lock().expect("queue lock");
        let expired: Vec<String> =
            state.leased.iter().filter(|(_, (_, _, until))| *until <= now).map(|(token, _)| token.clone()).collect();
        for token in expired {
            let (task, deliveries, _) = state.leased.remove(&token).expect("listed");
            state.counter += 1;
            let key = (task.not_before_ms, state.counter);
            state.waiting.insert(key, (task, deliveries));
        }
        let mut leases = Vec::new();
        while leases.len() < max {
            let Some(entry) = state.waiting.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            let (task, deliveries) = entry.remove();
            state.counter += 1;
            let token = format!("{}#{}", task.key(), state.counter);
            let deliveries = deliveries + 1;
            let until = now + lease_for.as_millis() as u64;
            state.leased.insert(token.clone(), (task.clone(), deliveries, until));
            leases.push(Lease { task, token, deliveries });
        }
        let next_due = state
            .waiting
            .keys()
            .next()
            .map(|(at, _)| *at)
            .into_iter()
            .chain(state.leased.values().map(|(_, _, until)| *until))
            .min();
        (leases, next_due)
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    async fn enqueue(&self, tasks: &[QueuedTask]) -> Result<()> {
        let mut state = self.inner.lock().expect("queue lock");
        for task in tasks {
            if state.known.insert(task.key()) {
                state.counter += 1;
                let key = (task.not_before_ms, state.counter);
                state.waiting.insert(key, (task.clone(), 0));
            }
        }
        drop(state);
        self.ready.notify_waiters();
        Ok(())
    }

    async fn lease(&self, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Lease>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so an enqueue in between is not missed.
            let notified = self.ready.notified();
            let (leases, next_due) = self.take_due(max, lease_for);
            if !leases.is_empty() {
                return Ok(leases);
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

    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<()> {
        let mut state = self.inner.lock().expect("queue lock");
        match state.leased.get_mut(&lease.token) {
            Some((_, _, until)) => {
                *until = now_ms() + lease_for.as_millis() as u64;
                Ok(())
            }
            None => Err(Error::Store(format!("the lease of task {} has expired", lease.task.key()))),
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<()> {
        let mut state = self.inner.lock().expect("queue lock");
        let now = now_ms();
        match state.leased.get(&lease.token) {
            Some((_, _, until)) if *until > now => {
                state.leased.remove(&lease.token);
                Ok(())
            }
            _ => Err(Error::Store(format!(
                "the lease of task {} has expired; another worker may hold the task now",
                lease.task.key()
            ))),
        }
    }
}

/// A shared store is a store.
#[async_trait]
impl<T: JournalStore + ?Sized> JournalStore for std::sync::Arc<T> {
    async fn create_run(&self, record: &RunRecord, first: &[StoredEntry]) -> Result<Created> {
        (**self).create_run(record, first).await
    }
    async fn append(&self, run_id: &str, expected_seq: u64, entries: &[StoredEntry]) -> Result<()> {
        (**self).append(run_id, expected_seq, entries).await
    }
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        (**self).load(run_id).await
    }
    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        (**self).set_status(run_id, status).await
    }
    async fn list_runs(&self, graph: Option<&str>, status: Option<RunStatus>, limit: usize) -> Result<Vec<RunRecord>> {
        (**self).list_runs(graph, status, limit).await
    }
}

/// A shared queue is a queue.
#[async_trait]
impl<T: TaskQueue + ?Sized> TaskQueue for std::sync::Arc<T> {
    async fn enqueue(&self, tasks: &[QueuedTask]) -> Result<()> {
        (**self).enqueue(tasks).await
    }
    async fn lease(&self, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Lease>> {
        (**self).lease(max, lease_for, wait).await
    }
    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<()> {
        (**self).extend(lease, lease_for).await
    }
    async fn ack(&self, lease: &Lease) -> Result<()> {
        (**self).ack(lease).await
    }
}
