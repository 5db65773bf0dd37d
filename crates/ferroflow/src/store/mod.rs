//! The context abstraction: where journals live ([`JournalStore`]), where ready tasks
//! wait for a worker and who holds what ([`TaskQueue`]), and the writes that change both
//! ([`DurableStore`]).
//!
//! The scheduler is written once against these traits, and the traits carry what the
//! engine, the server and the bindings call, nothing more. Every write goes through
//! [`DurableStore`], one atomic write per step: [`DurableStore::create`] makes a run (its
//! first entries, and its ready tasks held or queued) and [`DurableStore::commit`] appends a
//! step's entries at an expected position, records the run's status and applies the step's
//! tasks and hold. [`JournalStore`] is the reading side of journals (a run, a page of runs)
//! and [`TaskQueue`] the worker's side of the queue (claim, renew, acknowledge, hand back);
//! neither writes entries, statuses or new tasks by itself. [`MemoryStore`] implements all
//! three in memory: the reference that durable implementations (SQLite, Redis, NATS) are
//! tested against. Real-time runs do not go through a queue at all: the in-memory engine
//! spawns a ready task on the tokio runtime at once, so they have no queue hop.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::journal::{JournalEntry, RunStatus};

mod changes;
mod context;
mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod url;

pub(crate) use changes::Followers;
pub use changes::{Changed, Changes};
pub use context::{ContextError, ContextUrl, open};
pub use memory::MemoryStore;
pub use url::{redact_url, scrub};

/// One journal entry with its position and time.
#[derive(Clone, Debug)]
pub struct StoredEntry {
    /// Position in the run's journal, from 0 (the `RunStarted` entry).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The entry itself.
    pub entry: JournalEntry,
}

/// What a store knows of a run without reading its journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    /// The run's id, unique in the store.
    pub run_id: String,
    /// The graph's name.
    pub graph: String,
    /// The graph's version ([`Graph::version`](crate::Graph::version)) the run was
    /// started with.
    pub version: String,
    /// The run's status as last recorded: the record's at creation, then
    /// [`Step::status`] of each step written.
    pub status: RunStatus,
    /// When the run was created, in milliseconds since the Unix epoch; it never changes.
    pub created_ms: u64,
    /// When the run last changed, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

/// The outcome of [`DurableStore::create`].
#[derive(Debug)]
pub enum Created {
    /// The run is new; its journal holds the given first entries.
    New,
    /// A run with that id exists already; here is its journal.
    Existing {
        /// The existing run's record.
        record: RunRecord,
        /// The existing run's whole journal.
        journal: Vec<StoredEntry>,
    },
}

/// Durable home of run journals: the reading side. Runs are created and their journals
/// written by [`DurableStore::create`] and [`DurableStore::commit`].
///
/// Contract, for every implementation:
/// - `load` returns a run's entries in the order they were written, with the `seq` and
///   `at_ms` they were written with; nothing is ever rewritten.
/// - The record `load` and `list_runs` return holds the status the last step written
///   left the run in ([`Step::status`]; before any step, the status it was created with),
///   and when it last changed (`updated_ms`).
#[async_trait]
pub trait JournalStore: Send + Sync + 'static {
    /// The run's record and whole journal, in order; `None` if there is no such run.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptJournal`](crate::Error::CorruptJournal) if a stored entry cannot be read, and [`Error::Store`](crate::Error::Store)
    /// or [`Error::Unavailable`](crate::Error::Unavailable) if the store fails.
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>>;
    /// One page of the records matching `query.graph` and `query.status` (all when `None`),
    /// newest first: by creation time, and runs created in the same millisecond in the
    /// reverse order of creation (the store's creation counter, [`RunCursor::order`]).
    ///
    /// Paging is by keyset, not offset: a page starts right after the position
    /// `query.after`, so its cost does not grow with how deep into the listing it is, and
    /// a run's position never changes (its creation time and counter are fixed when it is
    /// created). Paging through therefore returns every matching run that exists
    /// throughout exactly once, whatever is created meanwhile: a new run sorts before the
    /// cursor, in pages already read (unless its writer's clock is behind, or it was
    /// given an older `created_ms`: then it shows up once, in its place). Only the status
    /// changes under a cursor: with a status filter, a run is listed if it has that status
    /// when its page is read. `next` is exact: it is `None` if and only if no run matching
    /// the query follows the page (implementations look for `limit + 1` matches).
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage>;
}

/// Which runs [`JournalStore::list_runs`] returns, and from where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Only runs of this graph (any version).
    pub graph: Option<String>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// At most this many runs (0 returns none: an empty page, whose `next` is `None`,
    /// without reading the store).
    pub limit: usize,
    /// Only runs after this position in the listing order: where the previous page ended
    /// ([`RunPage::next`]). `None` starts from the newest run.
    pub after: Option<RunCursor>,
}

impl RunQuery {
    /// Whether a run whose record is `record`, at position `at`, belongs to the result:
    /// it matches the filters and comes after the cursor.
    pub(crate) fn admits(&self, record: &RunRecord, at: RunCursor) -> bool {
        self.graph.as_ref().is_none_or(|g| record.graph == *g)
            && self.status.is_none_or(|s| record.status == s)
            && self.after.is_none_or(|after| at.is_after(&after))
    }
}

/// A run's position in the listing order (newest first): its creation time and the
/// store's creation counter.
///
/// `order` is the store's own counter (SQLite's row id, Redis's `created` counter, the
/// revision of the run's first journal step in NATS, the order of insertion in
/// [`MemoryStore`], the order runs were taken on in an engine without a store), so a cursor
/// means something only to the store that returned it. It is not a secret: a client
/// handing back any cursor gets the runs after that position, nothing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunCursor {
    /// The run's creation time ([`RunRecord::created_ms`]).
    pub created_ms: u64,
    /// The run's place in the store's order of creation (see above).
    pub order: u64,
}

impl RunCursor {
    /// Whether a run at this position is listed after one at `other`: it was created
    /// earlier, or in the same millisecond and earlier in the store's order.
    pub fn is_after(&self, other: &RunCursor) -> bool {
        (self.created_ms, self.order) < (other.created_ms, other.order)
    }
}

/// One page of runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunPage {
    /// The runs, newest first.
    pub runs: Vec<RunRecord>,
    /// Where the next page starts (pass it as [`RunQuery::after`]); `None` on the last page,
    /// i.e. when no run matching the query follows the last one returned. A page that is
    /// exactly full and ends the listing has `None` too: no empty page follows.
    pub next: Option<RunCursor>,
}

impl RunPage {
    /// The page of `limit` runs from `matching`: the runs the query admits, in listing
    /// order, each with its position. Takes at most `limit + 1` of them, the last to know
    /// whether another page follows.
    pub(crate) fn of(matching: impl IntoIterator<Item = (RunCursor, RunRecord)>, limit: usize) -> RunPage {
        let mut page = RunPage::default();
        if limit == 0 {
            return page;
        }
        let mut last = None;
        for (at, record) in matching {
            if page.runs.len() == limit {
                page.next = last;
                break;
            }
            page.runs.push(record);
            last = Some(at);
        }
        page
    }
}

/// A task as queues carry it: enough to find the run and the node attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedTask {
    /// The run's id.
    pub run_id: String,
    /// The node's name.
    pub node: String,
    /// For a map node: the index of the element.
    pub item: Option<u32>,
    /// The attempt, counting from 1.
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

    /// Whether `other` is the same attempt (the same key), whatever its `not_before_ms`.
    pub fn same_attempt(&self, other: &QueuedTask) -> bool {
        self.run_id == other.run_id
            && self.node == other.node
            && self.item == other.item
            && self.attempt == other.attempt
    }
}

/// A task handed to a worker, held until acknowledged or until the lease runs out.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The task leased.
    pub task: QueuedTask,
    /// How many times the task was handed out, this time included: a task delivered more
    /// than once may have started before.
    pub deliveries: u32,
}

/// What a worker claimed from the queue.
#[derive(Clone, Debug)]
pub enum Claim {
    /// A task queued for any worker.
    Task(Lease),
    /// A run whose holder stopped renewing its hold (the process died, most likely): the
    /// claimant holds it now, and every outstanding task of it that has no row in the queue
    /// is the claimant's to run; any of them may have started.
    Run(String),
}

/// Where the work of durable runs waits for a worker, and who holds it: the worker's side.
/// Tasks are queued by the writes that make them ready, [`DurableStore::create`] and
/// [`DurableStore::commit`] without an owner (or with one that cannot hold the run).
///
/// Work is held two ways. A run executing in an engine is **held** by it as a whole: the
/// engine runs the tasks the run's steps make ready itself, without a row per task (see
/// [`Step::ready`]), and renews its holds in the background. Tasks for any worker (a run
/// submitted without being executed, a task handed back) are **queued**, one row each,
/// and leased one by one. A worker is identified by an `owner` string (an engine's id);
/// one renewal keeps all of its holds and leases.
///
/// Contract, for every implementation:
/// - Queueing a task is idempotent on [`QueuedTask::key`] while the task is queued or
///   leased: a write that makes ready a task queued or leased already leaves it as it is.
///   (Once acknowledged, a task is gone: whether an attempt still needs to run is the
///   journal's business, and durable writers only queue what the journal says is ready.)
/// - `claim` hands each queued task to one owner at a time, never before `not_before_ms`,
///   and each run whose hold expired to one owner; it waits at most `wait` for something
///   to claim (returning an empty list then).
/// - A lease or hold that is not renewed within `lease_for` expires and can be claimed
///   again; a task's `deliveries` then grows: delivery is at-least-once, and the scheduler
///   drops duplicates against the journal.
/// - `ack` removes a task the owner holds; acknowledging a task the owner no longer holds
///   is an error, since another worker may hold it now.
/// - `release` hands tasks the owner holds back to the queue at once, to be claimed no
///   earlier than `not_before_ms`, without counting a delivery.
#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// Claims up to `max` things for `owner`, each held for `lease_for` unless renewed:
    /// runs whose hold expired ([`Claim::Run`]) and queued tasks that are due
    /// ([`Claim::Task`]). Waits up to `wait` for something to claim, and returns an empty
    /// list if nothing came.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) or [`Error::Unavailable`](crate::Error::Unavailable) if the store fails. A claim that failed
    /// may have been granted all the same (see [`TaskQueue::holdings`]).
    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>>;
    /// Takes a run over at once, whoever holds it: `owner` holds the run from now on, and
    /// gets every queued task of it, leased, due or not (the claimant waits out
    /// `not_before_ms` itself). A holder that is still alive finds out when it next writes
    /// to the run.
    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>>;
    /// Extends every hold and lease of `owner`.
    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()>;
    /// Removes `task`, which `owner` leases, from the queue: it is done.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if `owner` does not hold the task (its lease expired, or it was
    /// acknowledged already): another worker may hold it now. Also [`Error::Store`](crate::Error::Store) or
    /// [`Error::Unavailable`](crate::Error::Unavailable) if the store fails.
    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()>;
    /// Hands `tasks` that `owner` leases back to the queue, to be claimed no earlier than
    /// `not_before_ms`, without counting a delivery. Tasks `owner` does not hold are left
    /// alone.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) or [`Error::Unavailable`](crate::Error::Unavailable) if the store fails.
    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()>;
    /// Ends `owner`'s hold on a run so that another worker claims it, no earlier than
    /// `not_before_ms`.
    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()>;
    /// Who holds the run now, if anyone: an expired hold still names its holder until
    /// another owner claims the run, and a run handed back is held by [`RELEASED`].
    async fn holder(&self, run_id: &str) -> Result<Option<String>>;
    /// Everything `owner` holds, as the store sees it. A claim whose reply was lost (the
    /// connection dropped after the store granted it) leaves holds and leases their owner
    /// does not know of, which its renewals would keep forever: an owner that saw a claim
    /// fail compares this with what it runs and releases the rest.
    async fn holdings(&self, owner: &str) -> Result<Holdings>;
}

/// The runs an owner holds and the queued tasks it leases ([`TaskQueue::holdings`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// The ids of the runs the owner holds.
    pub runs: Vec<String>,
    /// The queued tasks the owner leases.
    pub tasks: Vec<QueuedTask>,
}

/// The holder of a run handed back by its worker, until another claims it.
pub const RELEASED: &str = "(released)";

/// One step of a durable run, written all or nothing by [`DurableStore::commit`]: the
/// journal entries an event produced, the run's status after them, the tasks that became
/// ready, and the tasks the step finishes.
#[derive(Debug)]
pub struct Step<'a> {
    /// The run's id.
    pub run_id: &'a str,
    /// How many entries the writer's view of the journal holds: the step applies only if
    /// the stored journal holds exactly these (optimistic concurrency between writers).
    pub expected_seq: u64,
    /// The entries to append, numbered from `expected_seq` on.
    pub entries: &'a [StoredEntry],
    /// The run's status once the entries are applied, recorded with them.
    pub status: RunStatus,
    /// Tasks that became ready. With an owner, the owner holds the run (if it held it
    /// already, or nobody did) and runs them itself: nothing is written per task.
    /// Otherwise they are queued for any worker. A step never takes another owner's hold,
    /// even an expired one: a run whose holder stopped is claimed whole by
    /// [`TaskQueue::claim`], so that the tasks its holder was running (which have no row
    /// in the queue) run again too.
    pub ready: &'a [QueuedTask],
    /// Tasks the step resolves (completed, failed, interrupted, superseded), removed from
    /// the queue whoever holds them: the journal now says they are done. A step that
    /// finishes the run removes all of the run's tasks instead, and one that leaves the
    /// run waiting for a person, or finished, ends its hold.
    pub done: &'a [QueuedTask],
}

/// A journal store and task queue in one, with the completion step as one atomic write.
/// This is what a durable context is to the engine, and the only way runs, entries,
/// statuses and queued tasks are written.
///
/// Contract, for every implementation:
/// - `create` is idempotent on the run id: starting a run twice yields one run; the
///   second caller learns of the first ([`Created::Existing`]), and nothing of its own is
///   written (no entries, no tasks, no hold).
/// - A step (`commit`, or one step of `commit_batch`) is all or nothing, and only applies
///   if the journal holds exactly [`Step::expected_seq`] entries before it (optimistic
///   concurrency, so two writers cannot interleave one run's journal): otherwise nothing is
///   written and the error is [`Error::Conflict`](crate::Error::Conflict). A step of a run that does not exist is
///   [`Error::RunNotFound`](crate::Error::RunNotFound).
/// - A step records [`Step::status`] in the run's record (with the time of its last entry,
///   if it has entries, as `updated_ms`), and applies its tasks and hold as [`Step`]
///   describes.
#[async_trait]
pub trait DurableStore: JournalStore + TaskQueue {
    /// Creates the run `record` describes, atomically: its journal holding `first` (which
    /// begins with `RunStarted`) and its ready tasks. With an owner, the owner holds the
    /// new run and runs the tasks; otherwise they are queued for any worker. If a run with
    /// `record.run_id` exists, nothing is written and [`Created::Existing`] returns that
    /// run.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) if an entry has no JSON form (durable stores), and
    /// [`Error::Store`](crate::Error::Store) or [`Error::Unavailable`](crate::Error::Unavailable) if the store fails.
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created>;
    /// Writes one step, atomically, and says whether `owner` holds the run (and so runs
    /// the ready tasks itself) afterwards; `false` means they were queued.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`](crate::Error::Conflict) if the journal does not hold exactly `step.expected_seq`
    /// entries, [`Error::RunNotFound`](crate::Error::RunNotFound) if there is no such run, [`Error::InvalidInput`](crate::Error::InvalidInput) if
    /// an entry has no JSON form and [`Error::ValueTooLarge`](crate::Error::ValueTooLarge) if the write is larger than
    /// the store takes (durable stores), and [`Error::Store`](crate::Error::Store) or [`Error::Unavailable`](crate::Error::Unavailable) if
    /// the store fails. Nothing is written then.
    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool>;
    /// Writes several steps, in order, as one write where the store can (group commit):
    /// the outcome of each is that of [`DurableStore::commit`], and a step that fails
    /// leaves the others written. The error is for the write as a whole.
    async fn commit_batch(&self, steps: &[Step<'_>], owner: Option<(&str, Duration)>) -> Result<Vec<Result<bool>>> {
        let mut outcomes = Vec::with_capacity(steps.len());
        for step in steps {
            outcomes.push(self.commit(step, owner).await);
        }
        Ok(outcomes)
    }
    /// The journal entries from `seq` on (to catch up with other writers).
    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>>;
    /// Deletes a finished run (completed, failed or cancelled) with its journal, at once:
    /// what pruning old runs does. `Ok(false)`, deleting nothing, for a run that is not
    /// finished (running, waiting or pending runs are never deleted).
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`](crate::Error::RunNotFound) if there is no such run, and the store's errors.
    async fn delete_finished(&self, run_id: &str) -> Result<bool>;
    /// The most bytes one step's write may hold, when the store's limit is small enough
    /// that values meet it (a NATS message: 1 MB by default); `None` for stores whose limit
    /// is far beyond what a value holds (they still refuse a larger write, with
    /// [`Error::ValueTooLarge`](crate::Error::ValueTooLarge)). An engine that dispatches before it writes
    /// ([`Durability::Batch`](crate::Durability::Batch)) checks outputs against it first.
    fn max_write_bytes(&self) -> Option<usize> {
        None
    }
    /// Records a graph's structure under its name and version. With
    /// [`GraphRecord::worker`], a worker says it executes the graph: the record replaces any
    /// earlier one of that version (its time included), and stays a worker's. Without it, a
    /// process that started a run of the graph says what the graph is (so that its runs can
    /// be shown from the store alone): written only if the version has no record yet.
    async fn register_graph(&self, graph: &GraphRecord) -> Result<()>;
    /// Every graph registered, by name, then newest first.
    async fn graphs(&self) -> Result<Vec<GraphRecord>>;
    /// Notices of runs that settled (left running: completed, failed, cancelled, waiting),
    /// for an engine that follows runs it does not execute: it reads a run when it settles
    /// instead of polling each. `None` (the
    /// default) when the store gives none; followers then poll. Notices are hints (see
    /// [`Changes`]): they may be lost, and a follower still polls now and then.
    async fn changes(&self) -> Option<Changes> {
        None
    }
}

/// A graph some worker can execute, as the store keeps it ([`DurableStore::register_graph`]):
/// what the server and other processes read to know a graph without its code.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GraphRecord {
    /// The graph's name.
    pub name: String,
    /// The graph's version ([`Graph::version`](crate::Graph::version)).
    pub version: String,
    /// The graph's structure as JSON ([`crate::GraphSpec`]).
    pub spec: String,
    /// When it was last registered, in milliseconds since the Unix epoch.
    pub registered_ms: u64,
    /// Whether a worker registered it, to execute its runs ([`Engine::work`](crate::Engine::work));
    /// otherwise only its structure is known, from a process that started runs of it.
    /// Records written before this existed were all workers'.
    #[serde(default = "registered_by_a_worker")]
    pub worker: bool,
}

fn registered_by_a_worker() -> bool {
    true
}

/// Sorts graph records by name, then newest first.
pub(crate) fn sort_graphs(graphs: &mut [GraphRecord]) {
    graphs.sort_by(|a, b| {
        a.name.cmp(&b.name).then(b.registered_ms.cmp(&a.registered_ms)).then(a.version.cmp(&b.version))
    });
}

/// Whether a step leaving a run in `status` keeps it held: only while it has tasks to run.
pub fn holds(status: RunStatus) -> bool {
    matches!(status, RunStatus::Pending | RunStatus::Running)
}

/// A shared store is a store.
#[async_trait]
impl<T: JournalStore + ?Sized> JournalStore for std::sync::Arc<T> {
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        (**self).load(run_id).await
    }
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        (**self).list_runs(query).await
    }
}

/// A shared queue is a queue.
#[async_trait]
impl<T: TaskQueue + ?Sized> TaskQueue for std::sync::Arc<T> {
    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>> {
        (**self).claim(owner, max, lease_for, wait).await
    }
    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>> {
        (**self).claim_run(owner, run_id, lease_for).await
    }
    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()> {
        (**self).renew(owner, lease_for).await
    }
    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()> {
        (**self).ack(owner, task).await
    }
    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()> {
        (**self).release(owner, tasks, not_before_ms).await
    }
    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()> {
        (**self).release_run(owner, run_id, not_before_ms).await
    }
    async fn holder(&self, run_id: &str) -> Result<Option<String>> {
        (**self).holder(run_id).await
    }
    async fn holdings(&self, owner: &str) -> Result<Holdings> {
        (**self).holdings(owner).await
    }
}

/// A shared durable store is a durable store.
#[async_trait]
impl<T: DurableStore + ?Sized> DurableStore for std::sync::Arc<T> {
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        (**self).create(record, first, ready, owner).await
    }
    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        (**self).commit(step, owner).await
    }
    async fn commit_batch(&self, steps: &[Step<'_>], owner: Option<(&str, Duration)>) -> Result<Vec<Result<bool>>> {
        (**self).commit_batch(steps, owner).await
    }
    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>> {
        (**self).load_since(run_id, seq).await
    }
    async fn delete_finished(&self, run_id: &str) -> Result<bool> {
        (**self).delete_finished(run_id).await
    }
    fn max_write_bytes(&self) -> Option<usize> {
        (**self).max_write_bytes()
    }
    async fn register_graph(&self, graph: &GraphRecord) -> Result<()> {
        (**self).register_graph(graph).await
    }
    async fn graphs(&self) -> Result<Vec<GraphRecord>> {
        (**self).graphs().await
    }
    async fn changes(&self) -> Option<Changes> {
        (**self).changes().await
    }
}
