//! The scheduler: starts runs, executes ready tasks, records what happened, and wakes
//! whoever waits on a run.
//!
//! Completing a task is one step: build the journal entry from the body's result, apply
//! it to the run's [`RunState`], record it with the entries it implies, then dispatch
//! what became ready. The step runs under the run's lock, so two dependencies finishing
//! at once on two threads cannot lose a join's wake-up.
//!
//! Blocking bodies run on tokio's blocking threads. A thread that completes a node keeps
//! one newly ready blocking task for itself and runs it next, so a chain of blocking
//! nodes costs no thread hand-off per node. Async bodies are spawned on the runtime.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::FutureExt as _;
use serde::de::DeserializeOwned;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::body::{Attachment, Body, BodyResult, NodeCall, Workflow};
use crate::error::{Error, NodeError, Result};
use crate::graph::{Graph, NodeId, NodeKind};
use crate::journal::{Event, EventKind, JournalEntry, RunFailure, RunStatus, now_ms};
use crate::lease::LeaseClock;
use crate::limits;
use crate::state::{Rejected, RunState, Task};
use crate::store::{
    Claim, Created, DurableStore, GraphRecord, Lease, QueuedTask, RunCursor, RunPage, RunQuery, RunRecord, Step,
    StoredEntry, holds,
};
use crate::value::Value;

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// Finished runs kept in memory for inspection; the oldest are dropped beyond this.
    pub retain_finished: usize,
    /// Where journals and tasks are made durable. With a store, every step of a run (a
    /// node's result, the entries it implies, the tasks that became ready, the task it
    /// finishes) is written to it in one atomic write before anything that follows from it
    /// is dispatched (the run lock is held while it is written, which keeps each run's
    /// journal in order); node outputs, inputs and answers are converted to JSON (a value
    /// that has none fails its node). Tasks this engine runs are held in the store's queue
    /// under its lease, renewed in the background: if the process dies, another engine on
    /// the same store (a worker, see [`Engine::work`]) claims them once the lease expires,
    /// or at once with [`Engine::recover`]. Without a store, journals live in memory only.
    ///
    /// A durable engine blocks on the store from the thread that completes a node; it needs
    /// tokio's multi-thread runtime.
    pub store: Option<Arc<dyn DurableStore>>,
    /// How long a durable task stays held by this engine without a renewal; renewed every
    /// third of it. A worker picks up the tasks of a process that died after this long.
    pub lease: Duration,
    /// When a durable step is written, relative to what follows from it.
    pub durability: Durability,
    /// Whether this engine executes the runs it starts. A durable engine that does not
    /// queues their tasks for workers ([`Engine::work`], in any process on the same store)
    /// and follows the runs from the store: waiting and watching work as usual.
    pub execute: bool,
    /// How long a durable engine waits for a store that is unavailable ([`Error::Unavailable`]:
    /// its server restarting, failing over or out of reach) before giving up on what it
    /// was doing. Meanwhile the work pauses: a node that completes waits, with its run
    /// locked, to write its step, and nothing follows from it until the step is written;
    /// starting a run waits to create it. Once the store answers, work resumes where it
    /// was. A step whose write failed that way may have landed all the same; the retry
    /// finds out (the journal holds it) and carries on from it. Past the limit, a step's
    /// run fails in memory as with any store error (the store keeps the run, for a worker
    /// or [`Engine::recover`] to continue), and a start returns the error.
    pub outage_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            retain_finished: 10_000,
            store: None,
            lease: Duration::from_secs(10),
            durability: Durability::Commit,
            execute: true,
            outage_timeout: Duration::from_secs(300),
        }
    }
}

/// When a durable engine writes a run's steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every step is committed before anything that follows from it is dispatched (the
    /// default). A crash loses no completed node; each node costs one transaction.
    Commit,
    /// Steps are committed together, at most `window` after they happen (group commit),
    /// and at once when a run settles (finishes, or waits for a person), so that a run's
    /// result is durable before anyone learns of it. What follows from a step is dispatched
    /// before the step is durable. Throughput: one transaction per window, not per node.
    /// Risk: a crash loses the steps of the last window. Their nodes run again when the run
    /// is recovered (their effects repeat, as an interrupted attempt's do), and a successor
    /// may already have acted on a result that is then computed again. If a batch cannot be
    /// written (a full disk, or another process took a run over), the runs in it fail in
    /// memory, back to what the store holds.
    Batch {
        /// The longest a step waits for its commit.
        window: Duration,
    },
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("retain_finished", &self.retain_finished)
            .field("durable", &self.store.is_some())
            .finish()
    }
}

/// How to start a run.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Caller-chosen id; starting the same id twice returns the first run. Generated
    /// (time-ordered) when absent.
    pub run_id: Option<String>,
    /// Per-run data every body call of the run receives ([`NodeCall::attachment`]).
    /// It is not stored: a run recovered elsewhere gets what its recoverer attaches.
    pub attachment: Option<Attachment>,
}

/// A run's state as callers see it.
#[derive(Clone, Debug)]
pub struct RunSnapshot {
    /// The run's id.
    pub run_id: Arc<str>,
    /// The graph's name.
    pub graph: Arc<str>,
    /// Where the run is.
    pub status: RunStatus,
    /// The run's output, once it completed.
    pub output: Option<Value>,
    /// Which node failed and why, once the run failed.
    pub failure: Option<RunFailure>,
    /// Human nodes waiting for an answer, with their payloads.
    pub waiting: Vec<(Arc<str>, Value)>,
}

impl RunSnapshot {
    /// The run's output as `T`; an error if the run has none (it did not complete) or it
    /// is not a `T`.
    pub fn output_as<T: DeserializeOwned>(&self) -> Result<T> {
        let invalid = |reason: String| Error::InvalidInput { run_id: self.run_id.to_string(), reason };
        let output =
            self.output.as_ref().ok_or_else(|| invalid(format!("the run is {}: it has no output", self.status)))?;
        let json = output.to_json().map_err(invalid)?;
        serde_json::from_value(json)
            .map_err(|e| invalid(format!("its output does not read as `{}`: {e}", std::any::type_name::<T>())))
    }

    /// What the human step `node` asked, as `T`, while the run waits there.
    pub fn waiting_at<T: DeserializeOwned>(&self, node: &str) -> Option<T> {
        let (_, payload) = self.waiting.iter().find(|(n, _)| &**n == node)?;
        serde_json::from_value(payload.to_json().ok()?).ok()
    }
}

/// The state of one node, for inspection.
#[derive(Clone, Debug)]
pub struct NodeReport {
    /// The node's name.
    pub name: Arc<str>,
    /// What the node does.
    pub kind: NodeKind,
    /// pending, running, waiting, completed, skipped, failed, or cancelled (started, and left
    /// unfinished by a run that ended).
    pub status: &'static str,
    /// Attempts made so far (for a map node, the most any element needed).
    pub attempts: u32,
    /// The node's output, once completed; for a human node waiting for an answer, what it
    /// shows the person (its payload).
    pub output: Option<Value>,
    /// The last attempt's error, once the node failed for good.
    pub error: Option<NodeError>,
    /// When the journal last recorded something of the node (an attempt's outcome, a
    /// step, a skip), in milliseconds since the Unix epoch; `None` if it has recorded nothing.
    pub last_ms: Option<u64>,
}

/// When a watcher's event stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchUntil {
    /// At the first pause (waiting for a person) or at the end of the run.
    Settled,
    /// Only at the end of the run.
    Finished,
}

/// A started run. Waiting through the handle cannot miss the run's end, even when the
/// engine has already forgotten the run (finished runs are retained only up to a limit).
#[derive(Clone)]
pub struct RunHandle {
    run: Arc<LiveRun>,
    /// The engine, to read the run from its store when another process may have moved it.
    engine: Weak<Inner>,
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> &Arc<str> {
        &self.run.run_id
    }

    /// Waits until the run is settled (waiting for a person, or finished) or `timeout`
    /// passes, and returns its state then. A run that is settled already returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::WaitTimeout`] if `timeout` passes first; the run goes on.
    pub async fn wait(&self, timeout: Option<Duration>) -> Result<RunSnapshot> {
        // A run this engine does not execute (waiting for a person, or executed elsewhere)
        // may have moved on in another process: read what is new first.
        if let Some(engine) = self.engine.upgrade()
            && engine.may_be_stale(&self.run)
        {
            let run = Arc::clone(&self.run);
            engine.off_workers(move |engine| engine.refresh(&run)).await;
        }
        let settled = self.run.settled();
        match timeout {
            Some(limit) => {
                if tokio::time::timeout(limit, settled).await.is_err() {
                    return Err(self.timed_out(limit).await);
                }
            }
            None => {
                let _ = settled.await;
            }
        }
        match self.run.interruption() {
            Some(interrupted) => Err(interrupted),
            None => Ok(self.run.snapshot()),
        }
    }

    /// The run's state now.
    pub fn snapshot(&self) -> RunSnapshot {
        self.run.snapshot()
    }

    /// The error of a wait that timed out: it says why nothing happened when a run
    /// submitted for workers was never taken up because no worker registered its graph's
    /// version (the store knows the registrations).
    async fn timed_out(&self, limit: Duration) -> Error {
        let mut detail = String::new();
        if let Some(engine) = self.engine.upgrade()
            && self.run.followed.load(Ordering::Acquire)
        {
            let graph = self.run.workflow.graph();
            let (name, version) = (graph.name().to_owned(), graph.version().to_owned());
            let graphs =
                engine.off_workers(|engine| engine.config.store.as_ref().map(|s| engine.block_on(s.graphs()))).await;
            if let Some(Ok(graphs)) = graphs
                && !graphs.iter().any(|g| g.worker && g.name == name && g.version == version)
            {
                let others: Vec<&str> =
                    graphs.iter().filter(|g| g.worker && g.name == name).map(|g| g.version.as_str()).collect();
                detail = format!(
                    "; no worker registered graph '{name}' version {version} in this context, so no worker runs it{}. \
                     Start one with this version of the graph (`ferroflow worker MODULE:GRAPH --context ...`)",
                    if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (workers registered versions {})", others.join(", "))
                    }
                );
            }
        }
        Error::WaitTimeout { run_id: self.run.run_id.to_string(), seconds: limit.as_secs_f64(), detail }
    }
}

/// The scheduler. Cheap to clone: clones share the runs.
///
/// Without a store ([`EngineConfig::store`]) runs live in memory only (real-time mode);
/// with one, every step of a run is written to the store, and the run survives the
/// process.
///
/// A durable engine's methods that reach the store block the calling thread until the
/// store answers. Call them from a thread that may block, or from a task on tokio's
/// multi-thread runtime (they use [`tokio::task::block_in_place`] there, which panics on
/// the current-thread runtime).
///
/// ```
/// use std::collections::HashMap;
///
/// use ferroflow::{
///     Body, Dependency, Engine, EngineConfig, GraphSpec, NodeError, NodeKind, NodeSpec, RunStatus,
///     StartOptions, Value, Workflow,
/// };
/// use serde_json::json;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut spec = GraphSpec::new("greet");
/// spec.nodes = vec![
///     NodeSpec::new("name", NodeKind::Task),
///     NodeSpec::new("greeting", NodeKind::Task).dep(Dependency::on("name")),
/// ];
/// let mut bodies = HashMap::new();
/// bodies.insert(
///     "name".to_owned(),
///     Body::blocking(|call| {
///         let input = call.input.to_json().map_err(|e| NodeError::permanent("BadInput", e))?;
///         Ok(Value::from(input["name"].clone()))
///     }),
/// );
/// bodies.insert(
///     "greeting".to_owned(),
///     Body::from_async(|call| async move {
///         let name = call.deps[0].to_json().map_err(|e| NodeError::permanent("BadInput", e))?;
///         Ok(Value::from(json!(format!("Hello, {}!", name.as_str().unwrap_or("stranger")))))
///     }),
/// );
/// let workflow = Workflow::new(spec.build()?, bodies)?;
///
/// let engine = Engine::new(tokio::runtime::Handle::current(), EngineConfig::default());
/// let run = engine.start(&workflow, Value::from(json!({"name": "Ada"})), StartOptions::default())?;
/// let done = run.wait(None).await?;
/// assert_eq!(done.status, RunStatus::Completed);
/// assert_eq!(done.output.unwrap().to_json()?, json!("Hello, Ada!"));
/// assert_eq!(engine.nodes(run.id())?[1].status, "completed");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    /// Alive while any clone of this engine is: the engine renews the leases of its durable
    /// tasks only as long as someone holds it. Dropping every handle is how a process gives
    /// its tasks up (they expire and other workers take them over), even if bodies still run.
    _handles: Arc<()>,
}

struct Inner {
    runtime: Handle,
    config: EngineConfig,
    runs: Mutex<RunTable>,
    /// Identifies this engine to the store as the holder of the tasks it runs.
    owner: String,
    /// Tasks executing here, or waiting out a backoff here.
    in_flight: AtomicUsize,
    /// Woken whenever a task finishes here.
    task_done: Notify,
    /// Steps waiting for the next group commit ([`Durability::Batch`]).
    batch: Mutex<Vec<Pending>>,
    /// Held while a group commit is written, so that batches land in the order they were
    /// taken (a run's later steps never before its earlier ones).
    flushing: Mutex<()>,
    /// Runs executed elsewhere that this engine follows from the store, until they finish.
    followed: Mutex<Vec<Weak<LiveRun>>>,
    /// Woken when a run is added to `followed`.
    follow_added: Notify,
    /// The graph versions this engine registered in its store ([`Inner::register`]).
    registered: Mutex<HashSet<Arc<str>>>,
    /// What this engine knows of its holds, from its renewals (a durable engine that
    /// executes): checked before every body starts ([`Inner::may_start`]).
    clock: Option<Arc<LeaseClock>>,
}

/// A step written to memory and waiting for its group commit.
struct Pending {
    run: Arc<LiveRun>,
    expected_seq: u64,
    entries: Vec<StoredEntry>,
    status: RunStatus,
    ready: Vec<QueuedTask>,
    done: Vec<QueuedTask>,
}

#[derive(Default)]
struct RunTable {
    runs: HashMap<Arc<str>, Arc<LiveRun>>,
    /// Finished runs by the order they finished in, for retention.
    finished: BTreeMap<u64, Arc<str>>,
}

struct LiveRun {
    run_id: Arc<str>,
    workflow: Workflow,
    core: Mutex<RunCore>,
    /// The run's status, mirrored from its state on every change (under the run lock).
    status: AtomicU8,
    /// Woken whenever the run settles (waits for a person, or finishes).
    settle: Notify,
    cancel: CancellationToken,
    has_watchers: AtomicBool,
    retired: AtomicBool,
    /// Failed in memory only, because the store could not record a step.
    store_failed: AtomicBool,
    /// How many of the journal's entries the store holds.
    durable: AtomicU64,
    /// When the run finished, on [`FINISH_ORDER`]; 0 while it has not.
    finished_at: AtomicU64,
    /// When this engine took the run on (started or recovered it), on [`CREATION_ORDER`].
    created: u64,
    /// The lease epoch in which this engine last knew it held the run, or the leases of the
    /// tasks it runs of it ([`crate::lease`]); 0 if it never did.
    confirmed: AtomicU64,
    /// The run is executed elsewhere (or by nobody yet): this engine follows it from the
    /// store, and runs none of its tasks until it takes the run over.
    followed: AtomicBool,
    /// The run is in the list of runs polled from the store ([`Inner::follow`]).
    polled: AtomicBool,
    /// Set when this process gave up an attempt of the run, until the run is resumed:
    /// waiting for the run then ends with [`Error::Interrupted`].
    interrupted: Mutex<Option<Interruption>>,
    /// Whether `interrupted` is set, readable without its lock.
    is_interrupted: AtomicBool,
}

/// Orders runs by when they were taken on, for listing.
static CREATION_ORDER: AtomicU64 = AtomicU64::new(1);

/// Every status, indexed by its `u8` form (see [`LiveRun::status`]).
const STATUSES: [RunStatus; 6] = [
    RunStatus::Pending,
    RunStatus::Running,
    RunStatus::Waiting,
    RunStatus::Completed,
    RunStatus::Failed,
    RunStatus::Cancelled,
];

/// Orders finished runs across threads, so that retention drops the oldest first.
static FINISH_ORDER: AtomicU64 = AtomicU64::new(1);

struct RunCore {
    state: RunState,
    journal: Vec<StoredEntry>,
    attachment: Option<Attachment>,
    watchers: Vec<Watcher>,
    /// Tasks running here that came from a row of the store's queue, which their step must
    /// remove; the others run under the run's hold and have no row.
    from_queue: HashSet<(NodeId, Option<u32>, u32)>,
    /// Attempts this process gave up ([`NodeError::abandoned`]), in an engine without a
    /// store: [`Engine::recover`] runs them again. (A durable engine hands the run back to
    /// the store instead, where taking it over finds them.)
    abandoned: Vec<Task>,
}

/// Why a run's attempt was given up here ([`NodeError::abandoned`]).
struct Interruption {
    node: Arc<str>,
    kind: String,
    message: String,
}

struct Watcher {
    tx: mpsc::UnboundedSender<Event>,
    until: WatchUntil,
}

/// A task with its call prepared under the run lock.
struct Ready {
    task: Task,
    call: NodeCall,
}

impl Engine {
    /// An engine that runs async bodies and timers on `runtime`.
    pub fn new(runtime: Handle, config: EngineConfig) -> Self {
        let clock = (config.store.is_some() && config.execute).then(|| Arc::new(LeaseClock::new(config.lease)));
        let inner = Arc::new(Inner {
            runtime,
            config,
            runs: Mutex::new(RunTable::default()),
            owner: format!("engine-{}", uuid::Uuid::now_v7()),
            in_flight: AtomicUsize::new(0),
            task_done: Notify::new(),
            batch: Mutex::new(Vec::new()),
            flushing: Mutex::new(()),
            followed: Mutex::new(Vec::new()),
            follow_added: Notify::new(),
            registered: Mutex::new(HashSet::new()),
            clock,
        });
        let handles = Arc::new(());
        if let Some(store) = &inner.config.store {
            let renew = heartbeat(
                Arc::downgrade(&handles),
                Arc::clone(store),
                inner.owner.clone(),
                inner.config.lease,
                inner.clock.clone(),
            );
            inner.runtime.spawn(renew);
            if let Durability::Batch { window } = inner.config.durability {
                inner.runtime.spawn(group_commit(Arc::downgrade(&inner), window));
            }
            inner.runtime.spawn(follow_runs(Arc::downgrade(&inner)));
        }
        Engine { inner, _handles: handles }
    }

    /// Writes the steps waiting for their group commit now ([`Durability::Batch`]); call it
    /// before the process exits. Runs whose steps cannot be written fail in memory.
    pub fn flush(&self) {
        let _ = self.inner.flush(None);
    }

    fn handle_of(&self, run: Arc<LiveRun>) -> RunHandle {
        RunHandle { run, engine: Arc::downgrade(&self.inner) }
    }

    /// The settings the engine was made with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The name this engine holds durable tasks under.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Starts a run of `workflow` on `input` and returns a handle on it at once, without
    /// waiting for any node. Starting an id that exists ([`StartOptions::run_id`]) returns
    /// that run again (recovered from the store if this engine does not hold it), unless
    /// it belongs to another graph or graph version.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidInput`] if the requested run id is empty, or if a durable engine
    ///   cannot convert `input` to JSON.
    /// - [`Error::RunIdConflict`] if the id belongs to a run of another graph or version.
    /// - In a durable engine, the store's errors (an outage is waited out for up to
    ///   [`EngineConfig::outage_timeout`] first), and those of [`Engine::recover`] for a
    ///   run the store has already.
    pub fn start(&self, workflow: &Workflow, input: Value, options: StartOptions) -> Result<RunHandle> {
        self.start_inner(workflow, input, options, None, false).map(|(run, _, _)| run)
    }

    /// Like [`Engine::start`], and says whether this call created the run: `false` when a
    /// run with the requested id existed already (in memory or in the store), in which
    /// case the handle is on that run and `input` was not used. Two callers racing to
    /// create the same id get `true` once.
    ///
    /// # Errors
    ///
    /// As for [`Engine::start`].
    pub fn start_or_get(&self, workflow: &Workflow, input: Value, options: StartOptions) -> Result<(RunHandle, bool)> {
        self.start_inner(workflow, input, options, None, false).map(|(run, _, created)| (run, created))
    }

    /// Starts a run and executes its blocking tasks on the calling thread for as long as
    /// a chain of them lasts, returning when none is left for this thread (the rest of the
    /// run goes on elsewhere). A synchronous caller that would block waiting for the run
    /// anyway saves the thread hand-offs. Call it from a thread that may block, never
    /// from an async task.
    ///
    /// # Errors
    ///
    /// As for [`Engine::start`].
    pub fn start_and_drive(&self, workflow: &Workflow, input: Value, options: StartOptions) -> Result<RunHandle> {
        self.start_inner(workflow, input, options, None, true).map(|(run, _, _)| run)
    }

    /// Like [`Engine::start`], and returns the run's events from its first one, until
    /// `until` (see [`Engine::watch`]).
    ///
    /// # Errors
    ///
    /// As for [`Engine::start`].
    pub fn start_watched(
        &self,
        workflow: &Workflow,
        input: Value,
        options: StartOptions,
        until: WatchUntil,
    ) -> Result<(RunHandle, mpsc::UnboundedReceiver<Event>)> {
        self.start_inner(workflow, input, options, Some(until), false)
            .map(|(run, rx, _)| (run, rx.expect("asked for events")))
    }

    fn start_inner(
        &self,
        workflow: &Workflow,
        input: Value,
        options: StartOptions,
        until: Option<WatchUntil>,
        drive: bool,
    ) -> Result<(RunHandle, Option<mpsc::UnboundedReceiver<Event>>, bool)> {
        let run_id: Arc<str> = match options.run_id {
            Some(id) => {
                check_run_id(&id)?;
                id.into()
            }
            None => uuid::Uuid::now_v7().to_string().into(),
        };
        let graph = workflow.graph();
        let table = self.inner.runs.lock().expect("run table lock");
        if let Some(existing) = table.runs.get(&run_id) {
            let existing_graph = existing.workflow.graph();
            if existing_graph.name() != graph.name() || existing_graph.version() != graph.version() {
                return Err(Error::RunIdConflict {
                    run_id: run_id.to_string(),
                    existing: format!("{}@{}", existing_graph.name(), existing_graph.version()),
                    requested: format!("{}@{}", graph.name(), graph.version()),
                });
            }
            let rx = until.map(|u| existing.watch(u));
            return Ok((self.handle_of(Arc::clone(existing)), rx, false));
        }

        drop(table);
        let input = self.inner.accept(input).map_err(|reason| Error::InvalidInput {
            run_id: run_id.to_string(),
            reason: format!("the run input cannot be stored: {reason}"),
        })?;

        let (state, effects) = RunState::start(Arc::clone(graph), input.clone());
        let started = JournalEntry::RunStarted { graph: graph.name().into(), version: graph.version().into(), input };
        let run = LiveRun::new(Arc::clone(&run_id), workflow.clone(), state, Vec::new(), options.attachment.clone());
        let ready = {
            let mut core = run.lock();
            run.record(&mut core, std::iter::once(started).chain(effects.derived));
            run.prepare(&core, effects.ready)
        };
        if let Some(store) = &self.inner.config.store {
            self.inner.register(workflow, false)?;
            let journal = run.lock().journal.clone();
            let queued: Vec<QueuedTask> = ready.iter().map(|r| run.queued(&r.task)).collect();
            let now = journal.first().map_or_else(now_ms, |e| e.at_ms);
            let record = RunRecord {
                run_id: run_id.to_string(),
                graph: graph.name().to_owned(),
                version: graph.version().to_owned(),
                status: run.status(),
                created_ms: now,
                updated_ms: now,
            };
            let holder = if self.inner.config.execute { self.inner.holder() } else { None };
            let epoch = self.inner.epoch();
            let created = self
                .inner
                .patiently(&run_id, "creating the run", || store.create(&record, &journal, &queued, holder))
                .map_err(|error| match error {
                    Error::ValueTooLarge { .. } => Error::InvalidInput {
                        run_id: run_id.to_string(),
                        reason: format!("the run input cannot be stored: {error}"),
                    },
                    error => error,
                })?;
            run.durable.store(journal.len() as u64, Ordering::Release);
            if let Created::Existing { .. } = created {
                // Started before, by this process or another: carry on with that run.
                let run = self.recover(workflow, &run_id, options.attachment)?;
                let rx = until.map(|u| run.run.watch(u));
                return Ok((run, rx, false));
            }
            if !self.inner.config.execute {
                // Queued for the workers; this engine follows the run from the store.
                let run = self.inner.adopt_followed(run);
                let rx = until.map(|u| run.watch(u));
                return Ok((self.handle_of(run), rx, true));
            }
            self.inner.confirm(&run, epoch);
        }
        let run = {
            let mut table = self.inner.runs.lock().expect("run table lock");
            match table.runs.get(&run_id) {
                // Another thread recovered this very run meanwhile; it dispatches its tasks.
                Some(existing) => {
                    let rx = until.map(|u| existing.watch(u));
                    return Ok((self.handle_of(Arc::clone(existing)), rx, true));
                }
                None => {
                    table.runs.insert(Arc::clone(&run_id), Arc::clone(&run));
                    run
                }
            }
        };
        let rx = until.map(|u| run.watch(u));
        self.inner.after_change(&run);
        self.inner.dispatch_or_drive(&run, ready, drive);
        Ok((self.handle_of(run), rx, true))
    }

    /// Continues a run from the engine's store: its journal is replayed and whatever was
    /// outstanding (running, queued or waiting out a backoff when its process stopped) is
    /// dispatched again. Completed nodes never run again. A run this engine already holds is
    /// returned as it is. Without a store, only runs in memory are known.
    ///
    /// A run this engine failed because its store could not record a step is read from the
    /// store again: the store may work by now (space freed, permissions fixed).
    ///
    /// `attachment`, when given, replaces the run's attachment for the calls that follow.
    ///
    /// # Errors
    ///
    /// - [`Error::RunNotFound`] if neither this engine nor its store knows the run.
    /// - [`Error::RunIdConflict`] if the stored run belongs to another graph, and
    ///   [`Error::VersionMismatch`] if it was started with another version of it.
    /// - [`Error::CorruptJournal`] if its journal does not replay over the graph.
    /// - The store's errors, once an outage has lasted [`EngineConfig::outage_timeout`].
    pub fn recover(&self, workflow: &Workflow, run_id: &str, attachment: Option<Attachment>) -> Result<RunHandle> {
        if let Ok(run) = self.inner.live(run_id)
            && run.store_failed.load(Ordering::Acquire)
        {
            let mut table = self.inner.runs.lock().expect("run table lock");
            if table.runs.get(run_id).is_some_and(|held| Arc::ptr_eq(held, &run)) {
                table.runs.remove(run_id);
            }
        }
        if let Ok(run) = self.inner.live(run_id) {
            let mut core = run.lock();
            if attachment.is_some() {
                core.attachment = attachment;
            }
            drop(core);
            if self.inner.config.execute && !run.status().is_terminal() {
                if self.inner.config.store.is_some() && run.followed.load(Ordering::Acquire) {
                    // Executed elsewhere, handed back, or lost to another engine: take it over.
                    return self.take_over(run, false);
                }
                if self.inner.config.store.is_none() && run.is_interrupted.load(Ordering::Acquire) {
                    return Ok(self.run_abandoned(run));
                }
            }
            return Ok(self.handle_of(run));
        }
        self.recover_inner(workflow, run_id, attachment, false)
    }

    /// Runs again, as their next attempts, the attempts this process gave up of a run it
    /// keeps in memory ([`NodeError::abandoned`]); the journal records each as interrupted.
    fn run_abandoned(&self, run: Arc<LiveRun>) -> RunHandle {
        let ready = {
            let mut core = run.lock();
            run.resumed();
            let mut ready = Vec::new();
            for task in std::mem::take(&mut core.abandoned) {
                let entry = JournalEntry::NodeFailed {
                    node: Arc::clone(run.workflow.name(task.node)),
                    item: task.item,
                    attempt: task.attempt,
                    error: NodeError::new("Interrupted", "this process gave the attempt up; it runs again"),
                    retry_in_ms: Some(0),
                };
                if let Ok(next) = self.inner.step(&run, &mut core, entry, &[]) {
                    ready.extend(next.into_iter().map(|t| Task { delay: None, ..t }));
                }
            }
            run.prepare(&core, ready)
        };
        self.inner.after_change(&run);
        self.inner.dispatch(&run, ready);
        self.handle_of(run)
    }

    /// Takes over a run this engine holds in memory but does not execute (see
    /// [`Engine::recover`]): claims it in the store, catches up with its journal, and runs
    /// what is outstanding, the attempts that may have been running elsewhere as their
    /// next ones.
    fn take_over(&self, run: Arc<LiveRun>, drive: bool) -> Result<RunHandle> {
        let store = self.inner.store();
        let (owner, lease) = (&self.inner.owner, self.inner.config.lease);
        let epoch = self.inner.epoch();
        let leases =
            self.inner.patiently(&run.run_id, "taking the run over", || store.claim_run(owner, &run.run_id, lease))?;
        self.inner.executes(&run, epoch);
        run.resumed();
        let ready = {
            let mut core = run.lock();
            self.inner.catch_up(&run, &mut core, false)?;
            self.inner.adopt(&run, &mut core, leases, true)
        };
        self.inner.after_change(&run);
        self.inner.dispatch_or_drive(&run, ready, drive);
        Ok(self.handle_of(run))
    }

    /// A handle on a run, without taking it over: a run this engine holds as it is; a run
    /// only the store knows (executed by a worker, or by another process) is loaded and
    /// followed from the store, so that waiting for it and watching it work from here.
    ///
    /// # Errors
    ///
    /// As for [`Engine::recover`].
    pub fn follow(&self, workflow: &Workflow, run_id: &str) -> Result<RunHandle> {
        let (run, loaded) = self.inner.load_run(run_id, |_| Some(workflow.clone()), None)?;
        if loaded && !run.status().is_terminal() {
            self.inner.follow(&run);
        } else if !loaded {
            self.inner.refresh(&run);
        }
        Ok(self.handle_of(run))
    }

    fn recover_inner(
        &self,
        workflow: &Workflow,
        run_id: &str,
        attachment: Option<Attachment>,
        drive: bool,
    ) -> Result<RunHandle> {
        let (run, loaded) = self.inner.load_run(run_id, |_| Some(workflow.clone()), attachment)?;
        if !loaded {
            return Ok(self.handle_of(run));
        }
        if !self.inner.config.execute {
            // The workers execute it (taking it over when its holder stops); follow it.
            self.inner.follow(&run);
            return Ok(self.handle_of(run));
        }
        self.take_over(run, drive)
    }

    /// Works as a worker on the engine's store until `stop` is cancelled: claims queued
    /// tasks (submitted for any worker, or held by an engine whose lease expired) of runs
    /// of the given graphs, at most `concurrency` executing here at once, and runs them
    /// with everything that follows from them. A task that may have started before (its
    /// holder died) runs again as its next attempt (see [`Engine::recover`]). A task of a
    /// graph or graph version this worker does not have is handed back, with a log line,
    /// for another worker.
    ///
    /// Runs it loads get `attachment` (what their bodies need from the host, such as an
    /// event loop).
    ///
    /// When stopped, it claims nothing more and returns once the tasks executing here have
    /// finished, or `grace` has passed; tasks still held then are released to other workers.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the engine has no store, and the store's errors when registering
    /// the graphs ([`DurableStore::register_graph`]) fail past
    /// [`EngineConfig::outage_timeout`]. Failures while working are logged and retried,
    /// not returned; so is the final release of what is still held.
    pub async fn work(
        &self,
        workflows: &[Workflow],
        concurrency: usize,
        attachment: Option<Attachment>,
        stop: CancellationToken,
        grace: Duration,
    ) -> Result<()> {
        let store = self.inner.config.store.clone().ok_or_else(|| {
            Error::Store("a worker needs a durable store; this engine keeps runs in memory".to_owned())
        })?;
        // Registered first, so that other processes (the server, a submitter without the
        // code) know the graphs' structure; an unavailable store is waited for.
        for workflow in workflows {
            let (engine, workflow) = (self.clone(), workflow.clone());
            tokio::task::spawn_blocking(move || engine.inner.register(&workflow, true))
                .await
                .map_err(|join| Error::Store(format!("registering the graphs failed: {join}")))??;
        }
        let graphs: Arc<HashMap<String, Workflow>> =
            Arc::new(workflows.iter().map(|w| (w.graph().name().to_owned(), w.clone())).collect());
        let lease = self.inner.config.lease;
        let concurrency = concurrency.max(1);
        // Whether a claim failed since the holdings were last checked: the store may have
        // granted it all the same.
        let mut unsure = false;
        while !stop.is_cancelled() {
            let free = concurrency.saturating_sub(self.inner.in_flight.load(Ordering::Acquire));
            if free == 0 {
                let done = self.inner.task_done.notified();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::timeout(Duration::from_millis(100), done) => continue,
                }
            }
            let epoch = self.inner.epoch();
            let claimed = tokio::select! {
                _ = stop.cancelled() => break,
                claimed = store.claim(&self.inner.owner, free, lease, Duration::from_secs(1)) => claimed,
            };
            match claimed {
                Ok(claims) => {
                    for claim in claims {
                        let (engine, graphs, attachment) = (self.clone(), Arc::clone(&graphs), attachment.clone());
                        let taken = tokio::task::spawn_blocking(move || engine.take(&graphs, claim, attachment, epoch));
                        if let Err(join) = taken.await {
                            tracing::error!(%join, "taking on claimed work failed");
                        }
                    }
                    if unsure {
                        let engine = self.clone();
                        match tokio::task::spawn_blocking(move || engine.release_unknown()).await {
                            Ok(Ok(())) => unsure = false,
                            Ok(Err(error)) => {
                                tracing::warn!(%error, "cannot check what this worker holds; trying again")
                            }
                            Err(join) => tracing::error!(%join, "checking what this worker holds failed"),
                        }
                    }
                }
                Err(error) => {
                    unsure = true;
                    tracing::warn!(%error, "cannot claim tasks; trying again in a second");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            let done = self.inner.task_done.notified();
            let _ = tokio::time::timeout(Duration::from_millis(50), done).await;
        }
        // Whatever is still held (bodies that outlived the grace period, retries waiting out
        // a backoff) goes to the next worker now rather than when the lease runs out.
        store.renew(&self.inner.owner, Duration::ZERO).await
    }

    /// Releases what the store says this engine holds but the engine does not know of: runs
    /// and task leases that a claim granted although its reply was lost (the connection
    /// dropped, the store restarted). Renewals would keep them held forever, and nobody
    /// would run them. A released task is queued again as never delivered; a released run
    /// is claimed whole, its outstanding tasks running again as interrupted.
    fn release_unknown(&self) -> Result<()> {
        let (store, owner) = (self.inner.store(), &self.inner.owner);
        let held = self.inner.block_on(store.holdings(owner))?;
        let live: HashMap<Arc<str>, Arc<LiveRun>> = self
            .inner
            .runs
            .lock()
            .expect("run table lock")
            .runs
            .iter()
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect();
        for run_id in held.runs.iter().filter(|run_id| !live.contains_key(run_id.as_str())) {
            tracing::warn!(run_id = %run_id, "releasing a run a lost claim granted to this worker");
            self.inner.block_on(store.release_run(owner, run_id, 0))?;
        }
        for task in held.tasks {
            let known = live.get(task.run_id.as_str()).is_some_and(|run| {
                let core = run.lock();
                core.from_queue.iter().any(|&(node, item, attempt)| {
                    item == task.item && attempt == task.attempt && run.workflow.name(node).as_ref() == task.node
                })
            });
            if !known {
                tracing::warn!(run_id = %task.run_id, task = %task.key(), "releasing a task a lost claim granted to this worker");
                self.inner.block_on(store.release(owner, std::slice::from_ref(&task), 0))?;
            }
        }
        Ok(())
    }

    /// Gives claimed work back for another worker (or for later), saying why. It can be
    /// claimed again after a second or so (jittered, so that workers of different versions
    /// do not keep meeting), which is also how soon a worker that has the graph gets it.
    /// (Claiming only the work of one's own graphs, in the store, would spare the round
    /// trips; the queue does not filter by graph yet.)
    fn hand_back(&self, run_id: &str, lease: Option<&Lease>, reason: String) {
        tracing::warn!(run_id = %run_id, "handing the work back: {reason}");
        let later = now_ms() + 500 + fastrand::u64(0..1_000);
        let store = self.inner.store();
        let handed_back = match lease {
            Some(lease) => {
                self.inner.block_on(store.release(&self.inner.owner, std::slice::from_ref(&lease.task), later))
            }
            None => self.inner.block_on(store.release_run(&self.inner.owner, run_id, later)),
        };
        if let Err(error) = handed_back {
            tracing::warn!(%error, "cannot hand the task back; its lease will expire");
        }
    }

    /// Takes on what a worker claimed: a queued task, or a run whose holder stopped. Catches
    /// up with the run's journal (loading the run if this engine does not hold it) and
    /// runs the task (or every outstanding task of the run), or records that it was
    /// interrupted and runs its next attempt, or drops it if the journal has moved past it.
    ///
    /// Runs on a blocking thread: it waits for the store with runs locked, and the
    /// runtime's workers must stay free to drive the store's I/O.
    fn take(&self, graphs: &HashMap<String, Workflow>, claim: Claim, attachment: Option<Attachment>, epoch: u64) {
        let (run_id, lease) = match claim {
            Claim::Task(lease) => (lease.task.run_id.clone(), Some(lease)),
            Claim::Run(run_id) => (run_id, None),
        };
        let (run, loaded) = match self.inner.load_run(&run_id, |graph| graphs.get(graph).cloned(), attachment) {
            Ok(found) => found,
            Err(error @ (Error::UnknownGraph { .. } | Error::VersionMismatch { .. })) => {
                return self.hand_back(&run_id, lease.as_ref(), error.to_string());
            }
            Err(error) => {
                return self.hand_back(&run_id, lease.as_ref(), format!("the run cannot be loaded: {error}"));
            }
        };
        // A run whose holder stopped is taken over whole, with its queued tasks. The lease
        // epoch is the one before the claim that granted the work: a pause since then
        // makes the engine ask the store again before running it.
        let (leases, epoch) = match &lease {
            Some(lease) => (Ok(vec![lease.clone()]), epoch),
            None => {
                let (store, owner, lease) = (self.inner.store(), &self.inner.owner, self.inner.config.lease);
                let epoch = self.inner.epoch();
                (self.inner.patiently(&run_id, "taking the run over", || store.claim_run(owner, &run_id, lease)), epoch)
            }
        };
        if leases.is_ok() {
            self.inner.confirm(&run, epoch);
        }
        let adopted = leases.and_then(|leases| {
            let mut core = run.lock();
            let caught_up = if loaded { Ok(()) } else { self.inner.catch_up(&run, &mut core, false) };
            caught_up.map(|()| self.inner.adopt(&run, &mut core, leases, lease.is_none()))
        });
        match adopted {
            Ok(ready) => {
                if !ready.is_empty() {
                    self.inner.executes(&run, epoch);
                }
                self.inner.after_change(&run);
                self.inner.dispatch(&run, ready);
            }
            Err(error) => self.hand_back(&run_id, lease.as_ref(), format!("the run cannot be read: {error}")),
        }
    }

    /// Waits until the run is settled (waiting for a person, or finished) or `timeout`
    /// passes; the same as [`RunHandle::wait`] on [`Engine::handle`].
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if this engine does not hold the run, and
    /// [`Error::WaitTimeout`] if `timeout` passes first.
    pub async fn wait(&self, run_id: &str, timeout: Option<Duration>) -> Result<RunSnapshot> {
        self.handle(run_id)?.wait(timeout).await
    }

    /// A handle on a run this engine holds in memory.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if it holds no such run; a run only the store knows needs
    /// [`Engine::follow`] or [`Engine::recover`].
    pub fn handle(&self, run_id: &str) -> Result<RunHandle> {
        self.inner.live(run_id).map(|run| self.handle_of(run))
    }

    /// The run's current state.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if this engine does not hold the run in memory.
    pub fn snapshot(&self, run_id: &str) -> Result<RunSnapshot> {
        Ok(self.current(run_id)?.snapshot())
    }

    /// A run this engine holds, brought up to date with the store if another process may
    /// have moved it on ([`Inner::refresh`]).
    fn current(&self, run_id: &str) -> Result<Arc<LiveRun>> {
        let run = self.inner.live(run_id)?;
        self.inner.refresh(&run);
        Ok(run)
    }

    /// Per-node state of the run, in topological order: of a run this engine holds, or, in
    /// a durable engine, of a run only the store knows, derived from its journal over the
    /// graph's structure as the store records it (every durable engine that starts a run
    /// records its graph's structure, and every worker its graphs'), by the same function
    /// in either case.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if neither this engine nor its store knows the run,
    /// [`Error::UnknownGraph`] if the store has no structure for the run's graph version
    /// (a run written by a version of ferroflow that did not record it), and the store's
    /// errors.
    pub fn nodes(&self, run_id: &str) -> Result<Vec<NodeReport>> {
        if let Ok(run) = self.current(run_id) {
            return Ok(run.node_reports());
        }
        let (record, journal) = self.stored(run_id)?;
        let graph = self.registered_graph(&record.graph, &record.version)?;
        let entries: Vec<JournalEntry> = journal.iter().map(|stored| stored.entry.clone()).collect();
        let state = RunState::replay(Arc::clone(&graph), &entries).map_err(|reason| Error::CorruptJournal {
            run_id: run_id.to_owned(),
            graph: record.graph.clone(),
            reason,
        })?;
        Ok(node_reports(&graph, &state, &journal))
    }

    /// The graph `name` at `version` as the store records its structure.
    fn registered_graph(&self, name: &str, version: &str) -> Result<Arc<Graph>> {
        let unknown = || Error::UnknownGraph { name: name.to_owned(), version: Some(version.to_owned()) };
        let record = self.graphs()?.into_iter().find(|g| g.name == name && g.version == version).ok_or_else(unknown)?;
        let spec: crate::graph::GraphSpec = serde_json::from_str(&record.spec).map_err(|e| {
            Error::Store(format!(
                "graph '{name}' version {version} is recorded with a structure that cannot be read: {e}"
            ))
        })?;
        Ok(Arc::new(spec.build()?))
    }

    /// The run's journal so far: from memory if this engine holds the run, else from the
    /// store.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if neither knows the run, and the store's errors.
    pub fn journal(&self, run_id: &str) -> Result<Vec<StoredEntry>> {
        if let Ok(run) = self.current(run_id) {
            return Ok(run.lock().journal.clone());
        }
        self.stored(run_id).map(|(_, journal)| journal)
    }

    /// The run's record and journal, without taking the run over: from the store in a
    /// durable engine (what every process sees), from memory otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if there is no such run there, and the store's errors.
    pub fn load(&self, run_id: &str) -> Result<(RunRecord, Vec<StoredEntry>)> {
        if self.inner.config.store.is_some() {
            return self.stored(run_id);
        }
        let run = self.inner.live(run_id)?;
        let core = run.lock();
        let record = run.run_record(&core).ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
        Ok((record, core.journal.clone()))
    }

    /// The run's record and journal from the store, without taking the run over.
    fn stored(&self, run_id: &str) -> Result<(RunRecord, Vec<StoredEntry>)> {
        check_run_id(run_id)?;
        let not_found = || Error::RunNotFound { run_id: run_id.to_owned() };
        let store = self.inner.config.store.as_ref().ok_or_else(not_found)?;
        self.inner.block_on(store.load(run_id))?.ok_or_else(not_found)
    }

    /// The graphs workers registered in the engine's store ([`Engine::work`] registers its
    /// own), by name, newest first; none without a store.
    ///
    /// # Errors
    ///
    /// The store's errors.
    pub fn graphs(&self) -> Result<Vec<GraphRecord>> {
        match &self.inner.config.store {
            Some(store) => self.inner.block_on(store.graphs()),
            None => Ok(Vec::new()),
        }
    }

    /// One page of the runs matching `query`, newest first ([`JournalStore::list_runs`]):
    /// from the store in a durable engine, from memory otherwise.
    ///
    /// In memory, runs are ordered by the time of their first journal entry, then by the
    /// order this engine took them on (newest first), which is the cursor's `order`;
    /// paging follows the store's rules, over the runs the engine holds when each page is
    /// read.
    ///
    /// # Errors
    ///
    /// The store's errors; none without a store.
    ///
    /// [`JournalStore::list_runs`]: crate::store::JournalStore::list_runs
    pub fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        if let Some(store) = &self.inner.config.store {
            return self.inner.block_on(store.list_runs(query));
        }
        if query.limit == 0 {
            return Ok(RunPage::default());
        }
        let live: Vec<Arc<LiveRun>> = self.inner.runs.lock().expect("run table lock").runs.values().cloned().collect();
        let mut matching: Vec<(RunCursor, RunRecord)> = live
            .iter()
            .filter_map(|run| {
                let record = run.run_record(&run.lock())?;
                let at = RunCursor { created_ms: record.created_ms, order: run.created };
                query.admits(&record, at).then_some((at, record))
            })
            .collect();
        matching.sort_by(|(a, _), (b, _)| b.created_ms.cmp(&a.created_ms).then(b.order.cmp(&a.order)));
        Ok(RunPage::of(matching, query.limit))
    }

    /// Ids of the runs held in memory, oldest first.
    pub fn run_ids(&self) -> Vec<Arc<str>> {
        let mut runs: Vec<(u64, Arc<str>)> = self
            .inner
            .runs
            .lock()
            .expect("run table lock")
            .runs
            .values()
            .map(|r| (r.created, Arc::clone(&r.run_id)))
            .collect();
        runs.sort();
        runs.into_iter().map(|(_, id)| id).collect()
    }

    /// Answers a human node: `value` becomes its output and the run continues. `node` may
    /// be left out when exactly one node is waiting. `attachment`, when given, replaces the
    /// run's attachment for the calls that follow.
    ///
    /// # Errors
    ///
    /// - [`Error::RunNotFound`] if this engine does not hold the run in memory.
    /// - [`Error::InvalidRunState`] if the run waits for nobody.
    /// - [`Error::NotWaitingAt`] if `node` is not waiting, and
    ///   [`Error::AmbiguousResume`] if `node` is `None` and several nodes are.
    /// - [`Error::InvalidInput`] if a durable engine cannot convert `value` to JSON.
    /// - In a durable engine, the store's errors while catching up with the journal.
    pub fn resume(
        &self,
        run_id: &str,
        node: Option<&str>,
        value: Value,
        attachment: Option<Attachment>,
    ) -> Result<RunHandle> {
        let run = self.inner.live(run_id)?;
        let ready = {
            let mut core = run.lock();
            // The person may have answered through another process already.
            self.inner.catch_up(&run, &mut core, false)?;
            let waiting: Vec<String> =
                core.state.waiting().map(|(id, _)| run.workflow.graph().node(id).name.clone()).collect();
            if waiting.is_empty() {
                return Err(Error::InvalidRunState {
                    run_id: run_id.to_owned(),
                    status: core.state.status(),
                    action: "resume",
                    expected: "waiting",
                });
            }
            let node = match node {
                Some(node) if waiting.iter().any(|w| w == node) => node.to_owned(),
                Some(node) => {
                    return Err(Error::NotWaitingAt { run_id: run_id.to_owned(), node: node.to_owned(), waiting });
                }
                None if waiting.len() == 1 => waiting[0].clone(),
                None => {
                    return Err(Error::AmbiguousResume { run_id: run_id.to_owned(), waiting });
                }
            };
            if attachment.is_some() {
                core.attachment = attachment;
            }
            let value = self.inner.accept(value).and_then(|value| self.inner.fits_in_a_write(&value).map(|()| value));
            let value = value.map_err(|reason| Error::InvalidInput {
                run_id: run_id.to_owned(),
                reason: format!("the answer for node '{node}' cannot be stored: {reason}"),
            })?;
            let entry = JournalEntry::Resumed { node: node.as_str().into(), value };
            match self.inner.step(&run, &mut core, entry, &[]) {
                Ok(ready) => run.prepare(&core, ready),
                Err(StepError::Rejected(rejected)) => {
                    return Err(Error::InvalidRunState {
                        run_id: run_id.to_owned(),
                        status: core.state.status(),
                        action: "resume",
                        expected: if matches!(rejected, Rejected::Stale) { "waiting" } else { "consistent" },
                    });
                }
                Err(StepError::TooLarge(error)) => {
                    return Err(Error::InvalidInput {
                        run_id: run_id.to_owned(),
                        reason: format!("the answer for node '{node}' cannot be stored: {error}"),
                    });
                }
                Err(StepError::Failed) => Vec::new(),
            }
        };
        self.inner.after_change(&run);
        self.inner.dispatch(&run, ready);
        Ok(self.handle_of(run))
    }

    /// Cancels a run: it is marked cancelled at once, async bodies in flight are
    /// cancelled, and results still arriving are dropped. Cancelling a cancelled run does
    /// nothing. In a durable engine, a run only the store holds is cancelled in the store;
    /// a process executing it stops when it next writes to it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRunState`] if the run completed or failed, [`Error::RunNotFound`] if
    /// there is no such run, and the store's errors.
    pub fn cancel(&self, run_id: &str) -> Result<()> {
        let run = match self.inner.live(run_id) {
            Ok(run) => run,
            Err(not_here) if self.inner.config.store.is_none() => return Err(not_here),
            Err(_) => return self.cancel_stored(run_id),
        };
        {
            let mut core = run.lock();
            self.inner.catch_up(&run, &mut core, false)?;
            if already_cancelled(run_id, core.state.status())? {
                return Ok(());
            }
            let entry = JournalEntry::RunFinished { status: RunStatus::Cancelled, output: None, failure: None };
            if let Err(StepError::Rejected(_)) = self.inner.step(&run, &mut core, entry, &[]) {
                // Another process finished the run meanwhile.
                already_cancelled(run_id, core.state.status())?;
            }
        }
        run.cancel.cancel();
        self.inner.after_change(&run);
        Ok(())
    }

    /// Cancels a run that only the store holds: a `RunFinished` entry is appended to its
    /// journal. A process still executing the run finds the journal moved on when it next
    /// writes, and stops.
    fn cancel_stored(&self, run_id: &str) -> Result<()> {
        loop {
            let (record, journal) = self.stored(run_id)?;
            if already_cancelled(run_id, record.status)? {
                return Ok(());
            }
            let entry = JournalEntry::RunFinished { status: RunStatus::Cancelled, output: None, failure: None };
            let stored = [StoredEntry { seq: journal.len() as u64, at_ms: now_ms(), entry }];
            let step = Step {
                run_id,
                expected_seq: journal.len() as u64,
                entries: &stored,
                status: RunStatus::Cancelled,
                ready: &[],
                done: &[],
            };
            match self.inner.block_on(self.inner.store().commit(&step, None)) {
                Err(Error::Conflict { .. }) => continue,
                written => return written.map(drop),
            }
        }
    }

    /// The run's events so far, then live ones until `until`; the channel closes then.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if this engine does not hold the run in memory.
    ///
    /// A watch until the end of a run this engine does not execute (one that waits for a
    /// person, in a durable engine) follows the run from the store while it lasts, so that
    /// the watcher sees what other processes record.
    pub fn watch(&self, run_id: &str, until: WatchUntil) -> Result<mpsc::UnboundedReceiver<Event>> {
        let run = self.current(run_id)?;
        let rx = run.watch(until);
        if until == WatchUntil::Finished && self.inner.may_be_stale(&run) && !run.status().is_terminal() {
            self.inner.follow(&run);
        }
        Ok(rx)
    }
}

impl Inner {
    /// A value entering a run (its input, a node's output, a person's answer, a recorded
    /// step) as the run keeps it: in a durable engine its JSON form (what the store keeps,
    /// and what a recovered run would see), otherwise the value as it is. Plain data is held
    /// to the nesting limit ([`crate::limits`]) in every engine, so that what runs in memory
    /// also runs durably; a native value's binding checks the limit as it converts the value
    /// (in memory, that is its strict mode). The error says why the value is refused.
    fn accept(&self, value: Value) -> std::result::Result<Value, String> {
        let value = match (&self.config.store, value) {
            (Some(_), value @ (Value::Native(_) | Value::List(_) | Value::Record(_))) => Value::from(value.to_json()?),
            (_, value) => value,
        };
        if let Value::Json(json) = &value {
            limits::check_depth(json, limits::MAX_DEPTH)?;
        }
        Ok(value)
    }

    /// Records a graph's structure in the store, once per version and engine: as a worker
    /// that executes it (`worker`), or as the graph of runs this engine starts, so that its
    /// runs can be shown from the store alone ([`DurableStore::register_graph`]). Does
    /// nothing without a store.
    fn register(&self, workflow: &Workflow, worker: bool) -> Result<()> {
        let Some(store) = &self.config.store else { return Ok(()) };
        let graph = workflow.graph();
        if !worker && self.registered.lock().expect("registered lock").contains(graph.version()) {
            return Ok(());
        }
        let spec = serde_json::to_string(&graph.spec())
            .map_err(|e| Error::Store(format!("graph '{}' cannot be written as JSON: {e}", graph.name())))?;
        let record = GraphRecord {
            name: graph.name().to_owned(),
            version: graph.version().to_owned(),
            spec,
            registered_ms: now_ms(),
            worker,
        };
        self.patiently(graph.name(), "registering the graph", || store.register_graph(&record))?;
        self.registered.lock().expect("registered lock").insert(Arc::from(graph.version()));
        Ok(())
    }

    /// Waits for a store operation from whatever thread the engine is on: a runtime worker
    /// hands its other tasks off while it blocks; any other thread just blocks.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        if Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.runtime.block_on(future))
        } else {
            self.runtime.block_on(future)
        }
    }

    /// Calls the store for `run_id` (doing `what`, for the log), riding out an outage: while
    /// the store is unavailable, calls again with backoff (50 ms doubling to 2 s) for up to
    /// [`EngineConfig::outage_timeout`], with one log line when the work pauses and one when
    /// it resumes. Any other outcome, or the last one past the limit, is returned.
    fn patiently<T, F: Future<Output = Result<T>>>(&self, run_id: &str, what: &str, call: impl Fn() -> F) -> Result<T> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        let mut paused = false;
        loop {
            match self.block_on(call()) {
                Err(Error::Unavailable(reason)) if started.elapsed() < self.config.outage_timeout => {
                    if !paused {
                        tracing::warn!(run_id = %run_id, "{what}: the store is unavailable; waiting for it: {reason}");
                        paused = true;
                    }
                    let nap = pause.min(self.config.outage_timeout.saturating_sub(started.elapsed()));
                    // Made inside the runtime: a timer needs one, and the caller may be outside it.
                    self.block_on(async move { tokio::time::sleep(nap).await });
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                outcome => {
                    if paused {
                        tracing::warn!(
                            run_id = %run_id,
                            "{what}: the store answered again after {:.1}s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return outcome;
                }
            }
        }
    }

    /// Commits `step`, riding out an outage ([`Inner::patiently`]), and says whether this
    /// engine holds the run. A commit that failed with the store unavailable may have
    /// landed (`uncertain`: one may have failed so before): if a retry then conflicts and
    /// the journal holds this very step, it did, and whether this engine holds the run (and
    /// so runs the tasks the step made ready, which are not queued otherwise) is asked of
    /// the store.
    fn commit(&self, store: &Arc<dyn DurableStore>, step: &Step<'_>, uncertain: bool) -> Result<bool> {
        let attempts = std::cell::Cell::new(0u32);
        let outcome = self.patiently(step.run_id, "writing a step", || {
            attempts.set(attempts.get() + 1);
            store.commit(step, self.holder())
        });
        let conflict = match outcome {
            Err(conflict @ Error::Conflict { .. }) if uncertain || attempts.get() > 1 => conflict,
            other => return other,
        };
        let (run_id, seq) = (step.run_id, step.expected_seq);
        let stored = self.patiently(run_id, "reading the journal", || store.load_since(run_id, seq))?;
        if !begins_with(&stored, step.entries) {
            return Err(conflict);
        }
        tracing::info!(run_id = %run_id, seq, "a step written while the store was unavailable had landed");
        let holder = self.patiently(run_id, "reading who holds the run", || store.holder(run_id))?;
        Ok(self.holder().is_some_and(|(me, _)| holder.as_deref() == Some(me)))
    }

    /// Runs `f`, which may lock a run and then wait for the store, from an async task: in a
    /// durable engine on a blocking thread, so that no runtime worker ever waits for a run's
    /// lock or for the store. A networked store (Redis, NATS) needs the workers to drive its
    /// I/O: a worker blocked on a lock held by a thread that waits for the store would stall
    /// both (and `block_in_place` cannot help once the blocking threads are all taken).
    async fn off_workers<R: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&Arc<Inner>) -> R + Send + 'static) -> R {
        if self.config.store.is_none() {
            return f(self);
        }
        let inner = Arc::clone(self);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(value) => value,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// The durable store; only called on paths that exist in durable engines.
    fn store(&self) -> &Arc<dyn DurableStore> {
        self.config.store.as_ref().expect("a durable engine")
    }

    /// Who holds the tasks this engine makes ready, and for how long.
    fn holder(&self) -> Option<(&str, Duration)> {
        self.config.execute.then_some((self.owner.as_str(), self.config.lease))
    }

    /// Applies `entry` to the run and records it with what it implies, writing it first in
    /// a durable engine (with the tasks that became ready, held by this engine, and the
    /// tasks in `done` removed from the queue). If another process wrote to the run
    /// meanwhile, catches up with the journal and tries again. Returns the ready tasks.
    ///
    /// A step larger than the store takes in one write is not written: a node's output (or
    /// a human node's payload) that makes it so fails the node instead, with a permanent
    /// error of kind `ValueTooLarge` naming the limit, and any other entry (a person's
    /// answer, a recorded step) is refused with [`StepError::TooLarge`].
    fn step(
        &self,
        run: &Arc<LiveRun>,
        core: &mut RunCore,
        mut entry: JournalEntry,
        done: &[QueuedTask],
    ) -> std::result::Result<Vec<Task>, StepError> {
        for _ in 0..MAX_CONFLICTS {
            let effects = core.state.apply(&entry).map_err(StepError::Rejected)?;
            let entries: Vec<JournalEntry> = std::iter::once(entry.clone()).chain(effects.derived).collect();
            match self.write(run, core, entries, &effects.ready, done) {
                Written::Yes(true) => return Ok(effects.ready),
                Written::Yes(false) => return Ok(Vec::new()),
                Written::Failed => return Err(StepError::Failed),
                Written::Conflict => {
                    if let Err(error) = self.catch_up(run, core, true) {
                        self.store_failed(run, core, error);
                        return Err(StepError::Failed);
                    }
                }
                Written::TooLarge(error) => {
                    // Back to the state the journal gives, without the step.
                    let entries: Vec<JournalEntry> = core.journal.iter().map(|s| s.entry.clone()).collect();
                    match RunState::replay(Arc::clone(run.workflow.graph()), &entries) {
                        Ok(state) => core.state = state,
                        Err(reason) => {
                            let error = Error::CorruptJournal {
                                run_id: run.run_id.to_string(),
                                graph: run.workflow.graph().name().to_owned(),
                                reason,
                            };
                            self.store_failed(run, core, error);
                            return Err(StepError::Failed);
                        }
                    }
                    match too_large_instead(&entry, &error) {
                        Some(failed) => entry = failed,
                        None => return Err(StepError::TooLarge(error)),
                    }
                }
            }
        }
        tracing::warn!(run_id = %run.run_id, "giving up a step: other processes kept writing to the run");
        Err(StepError::Failed)
    }

    /// Records entries already applied to the run's state; in a durable engine, writes
    /// them first, in one step with the tasks they make ready and the tasks they finish.
    /// If the store fails, the run is failed in memory (the store cannot record that
    /// either): nothing that followed from the entries may be dispatched. The store still
    /// holds the run as it was, so recovering it later repeats the lost work.
    fn write(
        &self,
        run: &Arc<LiveRun>,
        core: &mut RunCore,
        entries: Vec<JournalEntry>,
        ready: &[Task],
        done: &[QueuedTask],
    ) -> Written {
        let Some(store) = &self.config.store else {
            run.record(core, entries);
            return Written::Yes(true);
        };
        let stored = run.stamp(core, entries);
        let ready: Vec<QueuedTask> = ready.iter().map(|task| run.queued(task)).collect();
        let status = core.state.status();
        let expected_seq = core.journal.len() as u64;
        let written = expected_seq + stored.len() as u64;
        if let Durability::Batch { .. } = self.config.durability {
            let pending = Pending {
                run: Arc::clone(run),
                expected_seq,
                entries: stored.clone(),
                status,
                ready,
                done: done.to_vec(),
            };
            self.batch.lock().expect("batch lock").push(pending);
            if holds(status) {
                run.publish(core, stored);
                return Written::Yes(true);
            }
            // A run that settles is durable before anyone learns of it.
            return match self.flush(Some(run)) {
                Ok(()) => {
                    run.publish(core, stored);
                    Written::Yes(true)
                }
                Err(error) => {
                    self.store_failed(run, core, error);
                    Written::Failed
                }
            };
        }
        let step = Step { run_id: &run.run_id, expected_seq, entries: &stored, status, ready: &ready, done };
        let epoch = self.epoch();
        match self.commit(store, &step, false) {
            Ok(held) => {
                if held {
                    self.executes(run, epoch);
                }
                run.durable.store(written, Ordering::Release);
                run.publish(core, stored);
                Written::Yes(held)
            }
            Err(Error::Conflict { .. }) => Written::Conflict,
            Err(error @ Error::ValueTooLarge { .. }) => Written::TooLarge(error),
            Err(error) => {
                self.store_failed(run, core, error);
                Written::Failed
            }
        }
    }

    /// Writes the steps waiting for their group commit, in one write. A run whose step
    /// cannot be written fails in memory, back to what the store holds; for `current`,
    /// whose lock the caller holds, the error is returned instead.
    fn flush(&self, current: Option<&Arc<LiveRun>>) -> Result<()> {
        let _flushing = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut *self.batch.lock().expect("batch lock"));
        if pending.is_empty() {
            return Ok(());
        }
        let steps: Vec<Step<'_>> = pending
            .iter()
            .map(|p| Step {
                run_id: &p.run.run_id,
                expected_seq: p.expected_seq,
                entries: &p.entries,
                status: p.status,
                ready: &p.ready,
                done: &p.done,
            })
            .collect();
        let store = self.store();
        let outcomes: Vec<Result<bool>> = match self.block_on(store.commit_batch(&steps, self.holder())) {
            Ok(outcomes) => outcomes,
            Err(error @ Error::Unavailable(_)) => {
                steps.iter().map(|_| Err(Error::Unavailable(error.to_string()))).collect()
            }
            Err(error) => steps.iter().map(|_| Err(Error::Store(error.to_string()))).collect(),
        };
        // Steps the store could not be reached for are written one by one once it is back
        // (each may have landed already).
        let outcomes: Vec<Result<bool>> = outcomes
            .into_iter()
            .zip(&steps)
            .map(|(outcome, step)| match outcome {
                Err(Error::Unavailable(_)) => self.commit(store, step, true),
                other => other,
            })
            .collect();
        drop(steps);
        let mut mine = Ok(());
        for (step, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Ok(_) => {
                    step.run.durable.fetch_max(step.expected_seq + step.entries.len() as u64, Ordering::AcqRel);
                }
                Err(error) if current.is_some_and(|c| Arc::ptr_eq(c, &step.run)) => {
                    if mine.is_ok() {
                        mine = Err(error);
                    }
                }
                Err(error) => {
                    // Its lock may be held by a thread waiting for this very flush.
                    let run = step.run;
                    self.release_failed(&run.run_id);
                    self.runtime.spawn_blocking(move || {
                        let mut core = run.lock();
                        run.fail_from_store(&mut core, error);
                    });
                }
            }
        }
        mine
    }

    /// Brings a run up to date with entries other processes wrote to its journal, which
    /// watchers then receive like any other. With `replay`, the state is rebuilt from the
    /// journal even when nothing is new (it may hold entries that were applied but not
    /// written). Does nothing in an engine without a store.
    fn catch_up(&self, run: &LiveRun, core: &mut RunCore, replay: bool) -> Result<()> {
        let Some(store) = &self.config.store else { return Ok(()) };
        let seq = core.journal.len() as u64;
        let newer = self.patiently(&run.run_id, "reading the journal", || store.load_since(&run.run_id, seq))?;
        if newer.is_empty() && !replay {
            return Ok(());
        }
        let graph = run.workflow.graph();
        let entries: Vec<JournalEntry> = core.journal.iter().chain(&newer).map(|s| s.entry.clone()).collect();
        core.state = RunState::replay(Arc::clone(graph), &entries).map_err(|reason| Error::CorruptJournal {
            run_id: run.run_id.to_string(),
            graph: graph.name().to_owned(),
            reason,
        })?;
        run.publish(core, newer);
        run.durable.fetch_max(core.journal.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Registers a run started here for workers: it joins the run table and is followed.
    fn adopt_followed(&self, run: Arc<LiveRun>) -> Arc<LiveRun> {
        let run = {
            let mut table = self.runs.lock().expect("run table lock");
            match table.runs.get(&run.run_id) {
                Some(existing) => return Arc::clone(existing),
                None => {
                    table.runs.insert(Arc::clone(&run.run_id), Arc::clone(&run));
                    run
                }
            }
        };
        self.follow(&run);
        run
    }

    /// Follows a run executed elsewhere: its new journal entries are read from the store
    /// (and reach watchers and waiters) until it finishes.
    ///
    /// A run that waits for a person is polled only while someone watches it to its end: a
    /// look at it ([`Inner::refresh`]) reads what is new anyway.
    fn follow(&self, run: &Arc<LiveRun>) {
        run.followed.store(true, Ordering::Release);
        if !run.polled.swap(true, Ordering::AcqRel) {
            self.followed.lock().expect("followed lock").push(Arc::downgrade(run));
        }
        self.follow_added.notify_one();
    }

    /// Reads what is new of every followed run; forgets those that finished. Returns
    /// whether anything was new.
    fn poll_followed(&self) -> bool {
        let followed: Vec<Arc<LiveRun>> = self
            .followed
            .lock()
            .expect("followed lock")
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|run| run.followed.load(Ordering::Acquire))
            .collect();
        let mut news = false;
        for run in &followed {
            let mut core = run.lock();
            let before = core.journal.len();
            if let Err(error) = self.catch_up(run, &mut core, false) {
                tracing::warn!(run_id = %run.run_id, %error, "cannot follow the run; trying again");
            }
            news |= core.journal.len() > before;
            drop(core);
            self.after_change(run);
        }
        let mut seen = HashSet::new();
        self.followed.lock().expect("followed lock").retain(|weak| {
            let Some(run) = weak.upgrade() else { return false };
            if !seen.insert(Arc::as_ptr(&run)) {
                return false;
            }
            let status = run.status();
            let watched = run.has_watchers.load(Ordering::Relaxed);
            let keep = run.followed.load(Ordering::Acquire)
                && !status.is_terminal()
                && (status != RunStatus::Waiting || watched);
            run.polled.store(keep, Ordering::Release);
            keep
        });
        news
    }

    /// A run this engine holds, or else the run loaded from the store with the workflow
    /// `pick` gives for its graph's name; `true` when it was loaded. A loaded run is held
    /// from then on; nothing of it is dispatched yet.
    fn load_run(
        &self,
        run_id: &str,
        pick: impl FnOnce(&str) -> Option<Workflow>,
        attachment: Option<Attachment>,
    ) -> Result<(Arc<LiveRun>, bool)> {
        check_run_id(run_id)?;
        if let Ok(run) = self.live(run_id) {
            if !run.store_failed.load(Ordering::Acquire) {
                return Ok((run, false));
            }
            // Failed here because the store could not record a step: read it again.
            let mut table = self.runs.lock().expect("run table lock");
            if table.runs.get(run_id).is_some_and(|held| Arc::ptr_eq(held, &run)) {
                table.runs.remove(run_id);
            }
        }
        let not_found = || Error::RunNotFound { run_id: run_id.to_owned() };
        let store = self.config.store.as_ref().ok_or_else(not_found)?;
        let (record, journal) =
            self.patiently(run_id, "loading the run", || store.load(run_id))?.ok_or_else(not_found)?;
        let workflow =
            pick(&record.graph).ok_or_else(|| Error::UnknownGraph { name: record.graph.clone(), version: None })?;
        let graph = workflow.graph();
        if record.graph != graph.name() {
            return Err(Error::RunIdConflict {
                run_id: run_id.to_owned(),
                existing: format!("{}@{}", record.graph, record.version),
                requested: format!("{}@{}", graph.name(), graph.version()),
            });
        }
        if record.version != graph.version() {
            return Err(Error::VersionMismatch {
                run_id: run_id.to_owned(),
                graph: record.graph,
                expected: record.version,
                found: graph.version().to_owned(),
            });
        }
        let entries: Vec<JournalEntry> = journal.iter().map(|stored| stored.entry.clone()).collect();
        let state = RunState::replay(Arc::clone(graph), &entries).map_err(|reason| Error::CorruptJournal {
            run_id: run_id.to_owned(),
            graph: graph.name().to_owned(),
            reason,
        })?;
        let run = LiveRun::new(Arc::from(run_id), workflow.clone(), state, journal, attachment);
        let mut table = self.runs.lock().expect("run table lock");
        if let Some(existing) = table.runs.get(run_id) {
            return Ok((Arc::clone(existing), false));
        }
        table.runs.insert(Arc::clone(&run.run_id), Arc::clone(&run));
        Ok((run, true))
    }

    /// Takes on claimed tasks of a run (and, with `all`, every other outstanding task of
    /// it that nobody holds in the queue). A task the journal has moved past is dropped. A
    /// task that cannot have started (never handed out before, or still waiting out its
    /// backoff) runs as it is. One that may have started (its holder died) is recorded as
    /// interrupted and runs again as attempt + 1 with the same idempotency base, so its
    /// body can tell, and the journal shows why. This is not a failure under the retry
    /// policy: execution is at-least-once, and a lost process is not the body's doing.
    fn adopt(&self, run: &Arc<LiveRun>, core: &mut RunCore, leases: Vec<Lease>, all: bool) -> Vec<Ready> {
        for _ in 0..MAX_CONFLICTS {
            let now = now_ms();
            let outstanding = core.state.outstanding();
            let mut held = vec![false; outstanding.len()];
            let (mut fresh, mut interrupted, mut done) = (Vec::new(), Vec::new(), Vec::new());
            for lease in &leases {
                let found = outstanding.iter().position(|t| run.queued(t).same_attempt(&lease.task));
                let Some(i) = found else {
                    done.push(lease.task.clone());
                    continue;
                };
                held[i] = true;
                let task = outstanding[i].clone();
                if lease.task.not_before_ms > now {
                    core.from_queue.insert((task.node, task.item, task.attempt));
                    fresh.push(Task { delay: Some(Duration::from_millis(lease.task.not_before_ms - now)), ..task });
                } else if lease.deliveries <= 1 {
                    core.from_queue.insert((task.node, task.item, task.attempt));
                    fresh.push(task);
                } else {
                    interrupted.push(task);
                }
            }
            // Outstanding tasks without a row in the queue: runs written before the queue
            // held every task.
            let mut unqueued = Vec::new();
            if all {
                let missing = outstanding.iter().zip(&held).filter(|(_, held)| !**held).map(|(t, _)| t.clone());
                for task in with_remaining_backoff(missing.collect(), run.workflow.graph(), &core.journal) {
                    if task.delay.is_some() {
                        unqueued.push(task);
                    } else {
                        interrupted.push(task);
                    }
                }
            }
            let mut entries = Vec::new();
            let mut next = unqueued.clone();
            for task in interrupted {
                let entry = JournalEntry::NodeFailed {
                    node: Arc::clone(run.workflow.name(task.node)),
                    item: task.item,
                    attempt: task.attempt,
                    error: NodeError::new(
                        "Interrupted",
                        "the process running this attempt stopped before recording its result; it runs again",
                    ),
                    retry_in_ms: Some(0),
                };
                match core.state.apply(&entry) {
                    Ok(effects) => {
                        done.push(run.queued(&task));
                        entries.push(entry);
                        entries.extend(effects.derived);
                        next.extend(effects.ready.into_iter().map(|t| Task { delay: None, ..t }));
                    }
                    Err(_) => fresh.push(task),
                }
            }
            if entries.is_empty() && next.is_empty() {
                // Only stale leases to drop: acknowledged, not written as a step, which
                // would make this engine hold a run it has nothing to run of.
                self.drop_stale(&run.run_id, &done);
                return run.prepare(core, fresh);
            }
            match self.write(run, core, entries, &next, &done) {
                Written::Yes(held) => {
                    if held {
                        fresh.append(&mut next);
                    }
                    return run.prepare(core, fresh);
                }
                Written::Failed => return Vec::new(),
                // Interruption records are small: only a store failing oddly gets here.
                Written::TooLarge(error) => {
                    self.store_failed(run, core, error);
                    return Vec::new();
                }
                Written::Conflict => {
                    if let Err(error) = self.catch_up(run, core, true) {
                        self.store_failed(run, core, error);
                        return Vec::new();
                    }
                }
            }
        }
        tracing::warn!(run_id = %run.run_id, "not taking the run on: other processes kept writing to it");
        Vec::new()
    }

    /// Acknowledges leased tasks the journal has moved past. One whose lease was lost, or
    /// whose row a repair already removed, needs nothing more.
    fn drop_stale(&self, run_id: &str, tasks: &[QueuedTask]) {
        for task in tasks {
            if let Err(error) = self.block_on(self.store().ack(&self.owner, task)) {
                tracing::debug!(run_id = %run_id, task = %task.key(), %error, "a stale task was not acknowledged");
            }
        }
    }

    /// Fails a run in memory because the store could not record its step (see
    /// [`LiveRun::fail_from_store`]), and hands its hold back for another worker.
    fn store_failed(&self, run: &LiveRun, core: &mut RunCore, error: Error) {
        run.fail_from_store(core, error);
        self.release_failed(&run.run_id);
    }

    /// Hands back the hold of a run this engine failed in memory, in the background, trying
    /// until the store answers (for up to [`EngineConfig::outage_timeout`]): its renewals
    /// would otherwise keep the run held, and nobody would continue it. A worker that
    /// claims it (this one included) reads it from the store again.
    fn release_failed(&self, run_id: &str) {
        let Some((owner, _)) = self.holder() else { return };
        let (store, owner, run_id) = (Arc::clone(self.store()), owner.to_owned(), run_id.to_owned());
        let limit = self.config.outage_timeout;
        self.runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                match store.release_run(&owner, &run_id, now_ms()).await {
                    Ok(()) => return,
                    Err(error) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(run_id = %run_id, %error, "cannot hand back a failed run yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(error) => {
                        tracing::warn!(run_id = %run_id, %error, "cannot hand back a failed run; its hold stays");
                        return;
                    }
                }
            }
        });
    }

    /// Whether this engine's view of `run` may be behind its store: the engine is durable
    /// and does not execute the run (it waits for a person, or another process executes it,
    /// or nobody does yet), so another process may have moved it on.
    fn may_be_stale(&self, run: &LiveRun) -> bool {
        self.config.store.is_some() && (run.followed.load(Ordering::Acquire) || run.status() == RunStatus::Waiting)
    }

    /// Brings the view of a run this engine does not execute up to date with its store
    /// (see [`Inner::may_be_stale`]); watchers get what is new. A waiting run another
    /// process answered is followed from then on, so that waiting for it here sees it
    /// settle again.
    fn refresh(&self, run: &Arc<LiveRun>) {
        if !self.may_be_stale(run) {
            return;
        }
        let mut core = run.lock();
        let was_waiting = core.state.status() == RunStatus::Waiting;
        if let Err(error) = self.catch_up(run, &mut core, false) {
            tracing::warn!(run_id = %run.run_id, %error, "cannot read the run from the store; showing what is known");
            return;
        }
        let status = core.state.status();
        drop(core);
        self.after_change(run);
        if was_waiting && !status.is_terminal() && status != RunStatus::Waiting {
            self.follow(run);
        }
    }

    /// The current lease epoch (0 in an engine without a lease clock).
    fn epoch(&self) -> u64 {
        self.clock.as_ref().map_or(0, |clock| clock.epoch())
    }

    /// Records that this engine held `run` (or leased the tasks it runs of it) in `epoch`.
    fn confirm(&self, run: &LiveRun, epoch: u64) {
        run.confirmed.fetch_max(epoch, Ordering::AcqRel);
        if let Some(clock) = &self.clock {
            clock.acquired();
        }
    }

    /// Records that this engine executes `run` (it holds it, and runs its tasks): it is not
    /// followed from the store any more.
    fn executes(&self, run: &LiveRun, epoch: u64) {
        self.confirm(run, epoch);
        run.followed.store(false, Ordering::Release);
    }

    /// Whether this engine may start a body of `task` now: it still holds the run (or
    /// leases the task) as far as it knows (see [`crate::lease`]). The check is local and
    /// costs two atomic loads, unless the lease is about to run out or ran out since the run
    /// was confirmed: then the engine renews at once and asks the store what it holds. A run
    /// it no longer holds is followed from the store instead, and the task is dropped.
    /// Blocks on the store in that case: call it from a thread that may block.
    ///
    /// The task must also still be the run's outstanding attempt of its node: a task this
    /// engine dispatched before it was paused may have been taken over and superseded
    /// meanwhile, by this very engine claiming the run again (its journal then says so).
    fn may_start(&self, run: &Arc<LiveRun>, task: &Task) -> bool {
        let Some(clock) = &self.clock else { return true };
        if !run.lock().state.is_current(task) {
            tracing::debug!(run_id = %run.run_id, attempt = task.attempt, "not starting an attempt the journal has moved past");
            return false;
        }
        if run.followed.load(Ordering::Acquire) {
            // Let go of (see `lose`): its tasks still queued here belong to whoever runs it.
            return false;
        }
        if clock.fresh(run.confirmed.load(Ordering::Acquire)) {
            return true;
        }
        let store = self.store();
        let renewed = clock.renew_if_running_out(|| {
            self.patiently(&run.run_id, "renewing this engine's holds", || store.renew(&self.owner, self.config.lease))
        });
        if let Err(error) = renewed {
            tracing::warn!(run_id = %run.run_id, %error, "cannot renew this engine's holds; not starting the task");
            self.lose(run, "its holds could not be renewed");
            return false;
        }
        if run.confirmed.load(Ordering::Acquire) == clock.epoch() {
            return true;
        }
        let key = run.lock().from_queue.contains(&(task.node, task.item, task.attempt)).then(|| run.queued(task).key());
        let asked = clock.held(
            || self.patiently(&run.run_id, "reading what this engine holds", || store.holdings(&self.owner)),
            |held| held.has(&run.run_id, key.as_deref()),
        );
        match asked {
            Ok((epoch, true)) => {
                if key.is_none() {
                    self.confirm(run, epoch);
                }
                true
            }
            Ok((_, false)) => {
                self.lose(run, "another engine took it over while this one did not renew its lease");
                false
            }
            Err(error) => {
                tracing::warn!(run_id = %run.run_id, %error, "cannot read what this engine holds; not starting the task");
                self.lose(run, "what this engine holds could not be read");
                false
            }
        }
    }

    /// Stops executing a run this engine no longer holds (its lease ran out: the process
    /// was paused, or could not reach the store): it starts none of its tasks from now on,
    /// and follows the run from the store, so that whoever waits for it here sees how it
    /// ends. Taking the run over again (a claim, `recover`) resumes executing it.
    fn lose(&self, run: &Arc<LiveRun>, why: &str) {
        if run.followed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(run_id = %run.run_id, "not running the run's tasks any more: {why}; following it instead");
        let leased: Vec<QueuedTask> = {
            let mut core = run.lock();
            let tasks = core.from_queue.drain().collect::<Vec<_>>();
            tasks
                .into_iter()
                .map(|(node, item, attempt)| QueuedTask {
                    run_id: run.run_id.to_string(),
                    node: run.workflow.name(node).to_string(),
                    item,
                    attempt,
                    not_before_ms: 0,
                })
                .collect()
        };
        // Whatever the store still says this engine holds of the run (what it was told was out
        // of date, or a renewal failed though the store kept the holds) goes back to the
        // store, so that a worker (this one, maybe) takes it on: this engine's renewals
        // would otherwise keep it, and nobody would run it. A hold or lease another engine
        // has is left alone.
        let store = self.store();
        let now = now_ms();
        if let Err(error) = self.block_on(store.release_run(&self.owner, &run.run_id, now)) {
            tracing::warn!(run_id = %run.run_id, %error, "cannot hand the run back; its hold will expire");
        }
        if !leased.is_empty()
            && let Err(error) = self.block_on(store.release(&self.owner, &leased, now))
        {
            tracing::warn!(run_id = %run.run_id, %error, "cannot hand the run's tasks back; their leases will expire");
        }
        self.follow(run);
    }

    fn live(&self, run_id: &str) -> Result<Arc<LiveRun>> {
        check_run_id(run_id)?;
        self.runs
            .lock()
            .expect("run table lock")
            .runs
            .get(run_id)
            .cloned()
            .ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })
    }

    /// Retires a finished run: it is kept for inspection until `retain_finished` runs
    /// finished after it.
    ///
    /// A run this engine follows that left waiting (answered here, or seen answered) is
    /// polled from the store again, so that waiting for it sees it settle.
    fn after_change(&self, run: &Arc<LiveRun>) {
        let status = run.status();
        if matches!(status, RunStatus::Running | RunStatus::Pending)
            && run.followed.load(Ordering::Acquire)
            && !run.polled.load(Ordering::Acquire)
        {
            self.follow(run);
        }
        if status.is_terminal() && !run.retired.swap(true, Ordering::AcqRel) {
            let finished_at = run.finished_at.load(Ordering::Acquire);
            let mut table = self.runs.lock().expect("run table lock");
            table.finished.insert(finished_at, Arc::clone(&run.run_id));
            while table.finished.len() > self.config.retain_finished {
                if let Some((_, old)) = table.finished.pop_first() {
                    table.runs.remove(&old);
                }
            }
        }
    }

    /// Dispatches ready tasks; when `drive`, this (blocking) thread keeps one blocking task
    /// and runs the chain that follows from it before returning.
    fn dispatch_or_drive(self: &Arc<Self>, run: &Arc<LiveRun>, mut ready: Vec<Ready>, drive: bool) {
        let mine = if drive { ready.iter().position(|r| run.runs_inline(&r.task)) } else { None };
        let mine = mine.map(|i| ready.swap_remove(i));
        self.dispatch(run, ready);
        if let Some(task) = mine {
            let _counted = InFlight::new(self);
            Arc::clone(self).run_blocking_chain(Arc::clone(run), task);
        }
    }

    fn dispatch(self: &Arc<Self>, run: &Arc<LiveRun>, ready: Vec<Ready>) {
        for task in ready {
            self.spawn(Arc::clone(run), task);
        }
    }

    fn spawn(self: &Arc<Self>, run: Arc<LiveRun>, ready: Ready) {
        let inner = Arc::clone(self);
        let counted = InFlight::new(self);
        if let Some(delay) = ready.task.delay {
            self.runtime.spawn(async move {
                let _counted = counted;
                tokio::select! {
                    _ = run.cancel.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {
                        let ready = Ready { task: Task { delay: None, ..ready.task }, call: ready.call };
                        inner.spawn(run, ready);
                    }
                }
            });
            return;
        }
        if run.runs_inline(&ready.task) {
            self.runtime.spawn_blocking(move || {
                let _counted = counted;
                inner.run_blocking_chain(run, ready)
            });
        } else {
            self.runtime.spawn(async move {
                let _counted = counted;
                inner.run_async(run, ready).await
            });
        }
    }

    /// Runs blocking tasks on this (blocking) thread, continuing with one newly ready
    /// blocking task after each, until none is left for it.
    fn run_blocking_chain(self: Arc<Self>, run: Arc<LiveRun>, mut ready: Ready) {
        loop {
            if run.cancel.is_cancelled() || !self.may_start(&run, &ready.task) {
                return;
            }
            run.started(&ready.task);
            let Body::Blocking(body) = run.workflow.body(ready.task.node) else {
                unreachable!("only blocking bodies run inline")
            };
            let call = NodeCall { handle: Some(NodeHandle::new(&self, &run, &ready.task)), ..ready.call };
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| body.call(call)))
                .unwrap_or_else(|panic| Err(panic_error(panic)));
            let mut next = self.complete(&run, &ready.task, result);
            let keep = next.iter().position(|r| run.runs_inline(&r.task));
            let mine = keep.map(|i| next.swap_remove(i));
            self.dispatch(&run, next);
            match mine {
                Some(task) => ready = task,
                None => return,
            }
        }
    }

    async fn run_async(self: Arc<Self>, run: Arc<LiveRun>, ready: Ready) {
        if let Some(clock) = &self.clock {
            // Checked here when that needs neither the store nor a wait for the run's lock
            // (a runtime worker must wait for neither); otherwise on a blocking thread.
            let current = run.core.try_lock().ok().map(|core| core.state.is_current(&ready.task));
            match current {
                Some(false) => return,
                Some(true) if clock.fresh(run.confirmed.load(Ordering::Acquire)) => {}
                _ => {
                    let (checked, task) = (Arc::clone(&run), ready.task.clone());
                    if !self.off_workers(move |inner| inner.may_start(&checked, &task)).await {
                        return;
                    }
                }
            }
        }
        run.started(&ready.task);
        let body = run.workflow.body(ready.task.node).clone();
        let timeout = run.workflow.graph().node(ready.task.node).timeout;
        let call = NodeCall { handle: Some(NodeHandle::new(&self, &run, &ready.task)), ..ready.call };
        let attempt = async move {
            match body {
                Body::Async(body) => AssertUnwindSafe(body.call(call))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(panic_error(panic))),
                // A blocking body with a timeout: on timeout the thread cannot be stopped;
                // it finishes in the background and its result is dropped as stale.
                Body::Blocking(body) => tokio::task::spawn_blocking(move || body.call(call))
                    .await
                    .unwrap_or_else(|join| Err(panic_error(join.into_panic()))),
            }
        };
        let result = tokio::select! {
            _ = run.cancel.cancelled() => return,
            result = with_timeout(timeout, attempt) => result,
        };
        let task = ready.task;
        let next = {
            let run = Arc::clone(&run);
            self.off_workers(move |inner| inner.complete(&run, &task, result)).await
        };
        self.dispatch(&run, next);
    }

    /// Gives up an attempt its process abandoned ([`NodeError::abandoned`]): nothing is
    /// recorded for it, whoever waits for the run here gets [`Error::Interrupted`], and the
    /// run stays resumable. A durable engine hands the run (and the task's lease, for a
    /// queued task) back to the store and follows it from there, so that a worker, or
    /// [`Engine::recover`] in any process, takes it over and runs the attempt again; without a
    /// store, [`Engine::recover`] here does.
    fn abandon(&self, run: &Arc<LiveRun>, task: &Task, error: &NodeError) {
        if run.followed.load(Ordering::Acquire) {
            // Not executed here any more (lost to another engine, or handed back): the
            // attempt never started, and nothing of the run is this engine's to report.
            tracing::debug!(run_id = %run.run_id, "an attempt of a run this engine no longer executes did not start");
            return;
        }
        let node = Arc::clone(run.workflow.name(task.node));
        tracing::warn!(
            run_id = %run.run_id,
            node = %node,
            "the attempt was given up ({}: {}); nothing is recorded for it, and the run can be resumed",
            error.kind,
            error.message
        );
        let queued = {
            let mut core = run.lock();
            if self.config.store.is_none() {
                core.abandoned.push(Task { delay: None, ..task.clone() });
            }
            core.from_queue.remove(&(task.node, task.item, task.attempt))
        };
        // Handed back first, on this thread, and only then are waiters told: the caller may
        // take the run over as soon as it knows, and a release still in flight would end the
        // new hold.
        if self.config.store.is_some() && self.config.execute {
            self.follow(run);
            let store = self.store();
            if queued {
                let task = run.queued(task);
                if let Err(error) = self.block_on(store.release(&self.owner, std::slice::from_ref(&task), now_ms())) {
                    tracing::debug!(run_id = %run.run_id, %error, "cannot hand back a given-up task; its lease will expire");
                }
            }
            if let Err(error) = self.block_on(store.release_run(&self.owner, &run.run_id, now_ms())) {
                tracing::debug!(run_id = %run.run_id, %error, "cannot hand back a given-up run; its hold will expire");
            }
        }
        *run.interrupted.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Interruption { node, kind: error.kind.clone(), message: error.message.clone() });
        run.is_interrupted.store(true, Ordering::Release);
        run.settle.notify_waiters();
    }

    /// Whether a node's output fits in one write of a store with a small write limit
    /// ([`DurableStore::max_write_bytes`]), checked before the step is applied when steps
    /// are dispatched before they are written ([`Durability::Batch`]): by the time such a
    /// step failed to be written, its successors would have run. With [`Durability::Commit`]
    /// the store's own refusal is turned into the node's failure instead, at no cost to the
    /// steps that fit.
    fn fits(&self, run: &LiveRun, task: &Task, output: &Value) -> std::result::Result<(), NodeError> {
        self.fits_in_a_write(output).map_err(|reason| {
            NodeError::permanent(
                "ValueTooLarge",
                format!("node '{}' returned a value that cannot be stored: {reason}", run.workflow.name(task.node)),
            )
        })
    }

    /// Whether `value` fits in one write of a store with a small write limit, when steps
    /// are written after they are dispatched ([`Durability::Batch`]; see [`Inner::fits`]):
    /// the error says how large it is and what the limit is.
    fn fits_in_a_write(&self, value: &Value) -> std::result::Result<(), String> {
        let (Some(store), Durability::Batch { .. }) = (&self.config.store, self.config.durability) else {
            return Ok(());
        };
        let Some(limit) = store.max_write_bytes() else { return Ok(()) };
        // Room for the entry around the value (names, attempt, times).
        const ENVELOPE: usize = 1024;
        let bytes = json_len(value);
        if bytes + ENVELOPE <= limit {
            return Ok(());
        }
        Err(format!(
            "it is {bytes} bytes of JSON, and the store takes at most {limit} bytes per write (a NATS server's \
             max_payload, less room for the entry around the value)"
        ))
    }

    /// The completion step: record the attempt's outcome and what it implies, and return
    /// the tasks that became ready.
    fn complete(&self, run: &Arc<LiveRun>, task: &Task, result: BodyResult) -> Vec<Ready> {
        if let Err(error) = &result
            && error.abandoned
        {
            self.abandon(run, task, error);
            return Vec::new();
        }
        let result = result.and_then(|output| {
            let output = self.accept(output).map_err(|reason| {
                NodeError::permanent(
                    "SerializationError",
                    format!(
                        "node '{}' returned a value a durable context cannot store: {reason}",
                        run.workflow.name(task.node)
                    ),
                )
            })?;
            self.fits(run, task, &output)?;
            Ok(output)
        });
        let ready = {
            let mut core = run.lock();
            let graph = run.workflow.graph();
            let spec = graph.node(task.node);
            let node = Arc::clone(run.workflow.name(task.node));
            let checked = match (spec.kind, result) {
                (NodeKind::Branch, Ok(output)) => core.state.check_branch_output(task.node, &output).map(|()| output),
                (_, result) => result,
            };
            let entry = match checked {
                Ok(payload) if spec.kind == NodeKind::Human => {
                    JournalEntry::Interrupted { node, attempt: task.attempt, payload }
                }
                Ok(output) => JournalEntry::NodeCompleted { node, item: task.item, attempt: task.attempt, output },
                Err(error) => {
                    let retry_in_ms = if error.retryable {
                        spec.retry.delay_after(task.attempt).map(|d| d.as_millis() as u64)
                    } else {
                        None
                    };
                    JournalEntry::NodeFailed { node, item: task.item, attempt: task.attempt, error, retry_in_ms }
                }
            };
            let queued = !core.from_queue.is_empty() && core.from_queue.remove(&(task.node, task.item, task.attempt));
            let done = if queued { vec![run.queued(task)] } else { Vec::new() };
            match self.step(run, &mut core, entry, &done) {
                Ok(ready) => run.prepare(&core, ready),
                Err(StepError::Rejected(Rejected::Stale)) => return Vec::new(),
                Err(StepError::Rejected(Rejected::Inconsistent(reason))) => {
                    tracing::error!(run_id = %run.run_id, %reason, "dropping an inconsistent result");
                    return Vec::new();
                }
                // A failure too large for the store even shortened.
                Err(StepError::TooLarge(error)) => {
                    self.store_failed(run, &mut core, error);
                    Vec::new()
                }
                Err(StepError::Failed) => Vec::new(),
            }
        };
        self.after_change(run);
        ready
    }
}

impl LiveRun {
    /// What a store would know of the run, from its journal in memory.
    fn run_record(&self, core: &RunCore) -> Option<RunRecord> {
        let (first, last) = (core.journal.first()?, core.journal.last()?);
        let graph = self.workflow.graph();
        Some(RunRecord {
            run_id: self.run_id.to_string(),
            graph: graph.name().to_owned(),
            version: graph.version().to_owned(),
            status: core.state.status(),
            created_ms: first.at_ms,
            updated_ms: last.at_ms,
        })
    }

    fn new(
        run_id: Arc<str>,
        workflow: Workflow,
        state: RunState,
        journal: Vec<StoredEntry>,
        attachment: Option<Attachment>,
    ) -> Arc<LiveRun> {
        let status = state.status();
        let durable = journal.len() as u64;
        Arc::new(LiveRun {
            run_id,
            workflow,
            core: Mutex::new(RunCore {
                state,
                journal,
                attachment,
                watchers: Vec::new(),
                from_queue: HashSet::new(),
                abandoned: Vec::new(),
            }),
            status: AtomicU8::new(status as u8),
            settle: Notify::new(),
            cancel: CancellationToken::new(),
            has_watchers: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            store_failed: AtomicBool::new(false),
            durable: AtomicU64::new(durable),
            finished_at: AtomicU64::new(0),
            created: CREATION_ORDER.fetch_add(1, Ordering::Relaxed),
            confirmed: AtomicU64::new(0),
            followed: AtomicBool::new(false),
            polled: AtomicBool::new(false),
            interrupted: Mutex::new(None),
            is_interrupted: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RunCore> {
        // A panic while holding the lock can only come from a bug in the engine itself;
        // the state it guards is still the last consistent one, so keep serving it.
        self.core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a task runs on a blocking thread that may continue with its successors.
    fn runs_inline(&self, task: &Task) -> bool {
        task.delay.is_none()
            && matches!(self.workflow.body(task.node), Body::Blocking(_))
            && self.workflow.graph().node(task.node).timeout.is_none()
    }

    /// Appends entries to the journal, sends them to watchers, and publishes the run's
    /// status. Called with the run locked, so statuses are published in journal order.
    fn record(&self, core: &mut RunCore, entries: impl IntoIterator<Item = JournalEntry>) {
        let stored = self.stamp(core, entries);
        self.publish(core, stored);
    }

    /// Gives entries their place after the journal so far, and the time.
    fn stamp(&self, core: &RunCore, entries: impl IntoIterator<Item = JournalEntry>) -> Vec<StoredEntry> {
        let at_ms = now_ms();
        let next = core.journal.len() as u64;
        entries.into_iter().enumerate().map(|(i, entry)| StoredEntry { seq: next + i as u64, at_ms, entry }).collect()
    }

    /// [`LiveRun::record`] for entries stamped already (and applied to the state).
    fn publish(&self, core: &mut RunCore, stored: Vec<StoredEntry>) {
        for stored in stored {
            if !core.watchers.is_empty() {
                let event = Event {
                    run_id: Arc::clone(&self.run_id),
                    seq: stored.seq,
                    at_ms: stored.at_ms,
                    kind: EventKind::Journal(stored.entry.clone()),
                };
                core.watchers.retain(|w| w.tx.send(event.clone()).is_ok());
            }
            core.journal.push(stored);
        }
        let status = core.state.status();
        if !core.watchers.is_empty() && (status.is_terminal() || status == RunStatus::Waiting) {
            core.watchers.retain(|w| !(status.is_terminal() || w.until == WatchUntil::Settled));
            self.has_watchers.store(!core.watchers.is_empty(), Ordering::Relaxed);
        }
        if status == RunStatus::Failed {
            // Nothing a failed run still has in flight can matter any more.
            self.cancel.cancel();
        }
        if status.is_terminal() && self.finished_at.load(Ordering::Relaxed) == 0 {
            self.finished_at.store(FINISH_ORDER.fetch_add(1, Ordering::Relaxed), Ordering::Release);
        }
        let previous = self.status.swap(status as u8, Ordering::AcqRel);
        if previous != status as u8 && (status.is_terminal() || status == RunStatus::Waiting) {
            self.settle.notify_waiters();
        }
    }

    /// Fails the run in memory because its store could not record a step: its journal and
    /// state go back to what the store holds (so that the failure, not the lost steps, is
    /// what callers see), then it is failed. The store still holds the run as it was:
    /// recovering it once the store works again continues from there.
    fn fail_from_store(&self, core: &mut RunCore, error: Error) {
        tracing::error!(run_id = %self.run_id, %error, "the store failed; failing the run");
        self.store_failed.store(true, Ordering::Release);
        // The state may hold steps applied but not written, and the journal steps published
        // but not written (group commit): both go back to what the store holds.
        core.journal.truncate(self.durable.load(Ordering::Acquire) as usize);
        let entries: Vec<JournalEntry> = core.journal.iter().map(|s| s.entry.clone()).collect();
        match RunState::replay(Arc::clone(self.workflow.graph()), &entries) {
            Ok(state) => core.state = state,
            Err(reason) => tracing::error!(run_id = %self.run_id, %reason, "cannot roll the run's state back"),
        }
        let failure = RunFailure {
            node: Arc::from("(store)"),
            item: None,
            error: NodeError::permanent("StoreError", format!("the journal could not be written: {error}")),
        };
        let entry = JournalEntry::RunFinished { status: RunStatus::Failed, output: None, failure: Some(failure) };
        if core.state.apply(&entry).is_ok() {
            self.record(core, std::iter::once(entry));
        }
    }

    /// A task as the store's queue knows it.
    fn queued(&self, task: &Task) -> QueuedTask {
        QueuedTask {
            run_id: self.run_id.to_string(),
            node: self.workflow.name(task.node).to_string(),
            item: task.item,
            attempt: task.attempt,
            not_before_ms: task.delay.map_or(0, |delay| now_ms() + delay.as_millis() as u64),
        }
    }

    fn status(&self) -> RunStatus {
        STATUSES[usize::from(self.status.load(Ordering::Acquire))]
    }

    /// Resolves once the run is settled: waiting for a person, or finished.
    async fn settled(&self) {
        loop {
            // Register for the wake-up before looking, so that a change in between is seen.
            let notified = self.settle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let status = self.status();
            if status.is_terminal() || status == RunStatus::Waiting || self.is_interrupted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The error waiting for the run ends with while an attempt of it given up here is not
    /// resumed ([`NodeError::abandoned`]).
    fn interruption(&self) -> Option<Error> {
        if !self.is_interrupted.load(Ordering::Acquire) {
            return None;
        }
        let interrupted = self.interrupted.lock().unwrap_or_else(|p| p.into_inner());
        interrupted.as_ref().map(|why| Error::Interrupted {
            run_id: self.run_id.to_string(),
            node: why.node.to_string(),
            kind: why.kind.clone(),
            message: why.message.clone(),
        })
    }

    /// Forgets an interruption: the run is resumed.
    fn resumed(&self) {
        *self.interrupted.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.is_interrupted.store(false, Ordering::Release);
    }

    /// Tells watchers that an attempt starts. Costs nothing when nobody watches.
    fn started(&self, task: &Task) {
        self.announce(task, |node| EventKind::NodeStarted { node, item: task.item, attempt: task.attempt });
    }

    /// Sends a body's progress report to the run's watchers.
    fn progress(&self, task: &Task, data: Value) {
        self.announce(task, |node| EventKind::NodeProgress { node, item: task.item, attempt: task.attempt, data });
    }

    /// Sends watchers an event that is not journaled, about `task`'s node (`kind` gets its
    /// name), numbered with the seq of the next journal event. Costs nothing when nobody
    /// watches.
    fn announce(&self, task: &Task, kind: impl FnOnce(Arc<str>) -> EventKind) {
        if !self.has_watchers.load(Ordering::Relaxed) {
            return;
        }
        let mut core = self.lock();
        let event = Event {
            run_id: Arc::clone(&self.run_id),
            seq: core.journal.len() as u64,
            at_ms: now_ms(),
            kind: kind(Arc::clone(self.workflow.name(task.node))),
        };
        core.watchers.retain(|w| w.tx.send(event.clone()).is_ok());
    }

    fn watch(&self, until: WatchUntil) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut core = self.lock();
        for stored in &core.journal {
            let event = Event {
                run_id: Arc::clone(&self.run_id),
                seq: stored.seq,
                at_ms: stored.at_ms,
                kind: EventKind::Journal(stored.entry.clone()),
            };
            let _ = tx.send(event);
        }
        let status = core.state.status();
        let ended = status.is_terminal() || (status == RunStatus::Waiting && until == WatchUntil::Settled);
        if !ended {
            core.watchers.push(Watcher { tx, until });
            self.has_watchers.store(true, Ordering::Relaxed);
        }
        rx
    }

    fn prepare(&self, core: &RunCore, tasks: Vec<Task>) -> Vec<Ready> {
        tasks
            .into_iter()
            .map(|task| {
                let item =
                    task.item.map(|i| (i, core.state.map_item(task.node, i).cloned().unwrap_or_else(Value::null)));
                let call = NodeCall {
                    run_id: Arc::clone(&self.run_id),
                    node: Arc::clone(self.workflow.name(task.node)),
                    node_id: task.node,
                    attempt: task.attempt,
                    item,
                    input: core.state.input().clone(),
                    deps: core.state.dependency_values(task.node),
                    attachment: core.attachment.clone(),
                    recorded: core.state.recorded(task.node, task.item).to_vec(),
                    handle: None,
                };
                Ready { task, call }
            })
            .collect()
    }

    fn snapshot(&self) -> RunSnapshot {
        let core = self.lock();
        let graph = self.workflow.graph();
        RunSnapshot {
            run_id: Arc::clone(&self.run_id),
            graph: graph.name().into(),
            status: core.state.status(),
            output: core.state.output().cloned(),
            failure: core.state.failure().cloned(),
            waiting: core.state.waiting().map(|(id, p)| (Arc::clone(self.workflow.name(id)), p.clone())).collect(),
        }
    }

    fn node_reports(&self) -> Vec<NodeReport> {
        let core = self.lock();
        node_reports(self.workflow.graph(), &core.state, &core.journal)
    }
}

/// The state of every node of a run, in topological order, from the run's state and
/// journal: the one derivation every view of a run shares (memory, every store, the CLI,
/// the server).
pub(crate) fn node_reports(graph: &Graph, state: &RunState, journal: &[StoredEntry]) -> Vec<NodeReport> {
    use crate::state::NodeState;
    let mut attempts: Vec<u32> = vec![0; graph.nodes().len()];
    let mut last_ms: Vec<Option<u64>> = vec![None; graph.nodes().len()];
    for stored in journal {
        let Some(id) = stored.entry.node().and_then(|n| graph.id(n)) else { continue };
        last_ms[id] = Some(stored.at_ms);
        let attempt = match &stored.entry {
            JournalEntry::NodeCompleted { attempt, .. }
            | JournalEntry::NodeFailed { attempt, .. }
            | JournalEntry::Interrupted { attempt, .. } => *attempt,
            _ => continue,
        };
        attempts[id] = attempts[id].max(attempt);
    }
    // In a finished run, nodes that had started and not finished never will: they were
    // cancelled (by the user, or because another node failed). Nodes never reached stay
    // pending.
    let finished = state.status().is_terminal();
    (0..graph.nodes().len())
        .map(|id: NodeId| {
            let (status, output, error) = match state.node_state(id) {
                NodeState::Active { .. } | NodeState::Mapping(_) | NodeState::Waiting { .. } if finished => {
                    ("cancelled", None, None)
                }
                NodeState::Pending => ("pending", None, None),
                NodeState::Active { .. } | NodeState::Mapping(_) => ("running", None, None),
                NodeState::Waiting { payload, .. } => ("waiting", Some(payload.clone()), None),
                NodeState::Completed { output } => ("completed", Some(output.clone()), None),
                NodeState::Skipped => ("skipped", None, None),
                NodeState::Failed { error } => ("failed", None, Some(error.clone())),
            };
            let node = graph.node(id);
            NodeReport {
                name: Arc::from(node.name.as_str()),
                kind: node.kind,
                status,
                attempts: attempts[id],
                output,
                error,
                last_ms: last_ms[id],
            }
        })
        .collect()
}

/// How often a step is tried again when other processes keep writing to the same run.
const MAX_CONFLICTS: usize = 16;

/// The outcome of [`Inner::write`].
enum Written {
    /// Written; with `true`, this engine holds the run and runs the ready tasks itself,
    /// otherwise they were queued for any worker.
    Yes(bool),
    /// Another process wrote to the run first; nothing was written.
    Conflict,
    /// The step is larger than the store takes in one write ([`Error::ValueTooLarge`]);
    /// nothing was written, and the run's state still has the step applied.
    TooLarge(Error),
    /// The store failed; the run was failed in memory.
    Failed,
}

/// What a running body can do to its run: record the results of its own steps durably,
/// and report progress to the run's watchers. Handed to every body call
/// ([`NodeCall::handle`]); it refers to the run weakly, so a body that outlives its run
/// holds nothing up.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Weak<Inner>,
    run: Weak<LiveRun>,
    run_id: Arc<str>,
    task: Task,
}

impl NodeHandle {
    fn new(inner: &Arc<Inner>, run: &Arc<LiveRun>, task: &Task) -> NodeHandle {
        NodeHandle {
            inner: Arc::downgrade(inner),
            run: Arc::downgrade(run),
            run_id: Arc::clone(&run.run_id),
            task: Task { delay: None, ..task.clone() },
        }
    }

    /// The id of the run the body runs for.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Whether the engine may still start this attempt's body: in a durable engine, that it
    /// still holds the run, as far as its lease tells (see [`crate::lease`]); a run it lost
    /// meanwhile is followed instead. The engine checks before it calls a body; a body that
    /// does work of its own before running the user's code (a binding taking a lock and
    /// building arguments, say) asks again right before, which narrows the moment a paused
    /// process cannot see. Answers at once when [`NodeHandle::may_start_now`] does, and
    /// otherwise asks the store, blocking: call it from a thread that may block.
    pub fn may_start(&self) -> bool {
        let (Some(inner), Some(run)) = (self.inner.upgrade(), self.run.upgrade()) else { return false };
        inner.may_start(&run, &self.task)
    }

    /// [`NodeHandle::may_start`] without asking the store: `Some(true)` when the lease is
    /// known to hold (or the engine has no store), `Some(false)` when the run was lost
    /// already, `None` when only the store can tell.
    pub fn may_start_now(&self) -> Option<bool> {
        let (Some(inner), Some(run)) = (self.inner.upgrade(), self.run.upgrade()) else { return Some(false) };
        if run.followed.load(Ordering::Acquire) {
            return Some(false);
        }
        match &inner.clock {
            None => Some(true),
            Some(clock) => clock.fresh(run.confirmed.load(Ordering::Acquire)).then_some(true),
        }
    }

    /// Whether [`NodeHandle::record`] writes to a store (and may wait for it), rather than
    /// to memory.
    pub fn durable(&self) -> bool {
        self.inner.upgrade().is_some_and(|inner| inner.config.store.is_some())
    }

    /// Reports `data` to whoever watches the run now, as a [`EventKind::NodeProgress`]
    /// event (an LLM node's token deltas, say). It is not journaled.
    pub fn emit(&self, data: Value) {
        if let Some(run) = self.run.upgrade() {
            run.progress(&self.task, data);
        }
    }

    /// Records `value` as the result of the body's step `key` (a model call, a tool call)
    /// in the run's journal, durably in a durable context, before the body goes on: if the
    /// attempt is interrupted (a crash, a failure that is retried), the next attempt gets
    /// it in [`NodeCall::recorded`] and need not do the step again. Fails if the attempt is
    /// no longer current (the run moved on: finished, cancelled, or the attempt timed out),
    /// if the value cannot be stored, or if the store fails.
    pub fn record(&self, key: &str, value: Value) -> Result<()> {
        let (Some(inner), Some(run)) = (self.inner.upgrade(), self.run.upgrade()) else {
            return Err(Error::ShuttingDown);
        };
        let node = Arc::clone(run.workflow.name(self.task.node));
        let invalid = |reason: String| Error::InvalidInput { run_id: run.run_id.to_string(), reason };
        limits::check_name("step key", key).map_err(|reason| invalid(format!("node '{node}': {reason}")))?;
        let value = inner
            .accept(value)
            .and_then(|value| inner.fits_in_a_write(&value).map(|()| value))
            .map_err(|reason| invalid(format!("step '{key}' of node '{node}' cannot be stored: {reason}")))?;
        let entry = JournalEntry::StepRecorded {
            node: Arc::clone(&node),
            item: self.task.item,
            attempt: self.task.attempt,
            key: Arc::from(key),
            value,
        };
        let mut core = run.lock();
        match inner.step(&run, &mut core, entry, &[]) {
            Ok(_) => Ok(()),
            Err(StepError::Rejected(_)) => Err(Error::InvalidRunState {
                run_id: run.run_id.to_string(),
                status: core.state.status(),
                action: "recording a step",
                expected: "still running this attempt of the node",
            }),
            Err(StepError::TooLarge(error)) => Err(Error::InvalidInput {
                run_id: run.run_id.to_string(),
                reason: format!("step '{key}' of node '{node}' cannot be stored: {error}"),
            }),
            Err(StepError::Failed) => Err(Error::Store(format!(
                "run '{}': the step '{key}' of node '{node}' could not be recorded",
                run.run_id
            ))),
        }
    }
}

/// Why [`Inner::step`] recorded nothing.
enum StepError {
    Rejected(Rejected),
    /// The step is larger than the store takes ([`Error::ValueTooLarge`]), and the entry is
    /// not one a node's failure can stand for.
    TooLarge(Error),
    /// The store failed (the run was failed in memory), or kept conflicting.
    Failed,
}

/// Counts a task executing (or waiting out a backoff) on this engine, until dropped: what
/// a worker ([`Engine::work`]) measures its concurrency by. Engines without a store have no
/// workers, and their tasks are not counted (a wake-up per task is not free).
struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(inner: &Arc<Inner>) -> Option<InFlight> {
        inner.config.store.as_ref()?;
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(InFlight(Arc::clone(inner)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.task_done.notify_waiters();
    }
}

/// Follows the runs an engine does not execute, polling the store: every 5 ms while they
/// change, backing off to every 200 ms while they do not, asleep while there are none.
async fn follow_runs(inner: Weak<Inner>) {
    const FAST: Duration = Duration::from_millis(5);
    const SLOW: Duration = Duration::from_millis(200);
    let mut pause = FAST;
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let idle = strong.followed.lock().expect("followed lock").is_empty();
        if idle {
            pause = FAST;
            // Wakes at the next follow, or now and then to notice the engine is gone.
            let added = strong.follow_added.notified();
            let _ = tokio::time::timeout(Duration::from_secs(1), added).await;
            continue;
        }
        let news = strong.off_workers(|inner| inner.poll_followed()).await;
        drop(strong);
        pause = if news { FAST } else { (pause * 2).min(SLOW) };
        tokio::time::sleep(pause).await;
    }
}

/// Writes the steps waiting for their group commit every `window`, for as long as the
/// engine exists.
async fn group_commit(inner: Weak<Inner>, window: Duration) {
    loop {
        tokio::time::sleep(window).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.off_workers(|inner| drop(inner.flush(None))).await;
    }
}

/// Renews the leases of an engine's durable tasks every third of the lease, for as long
/// as a handle on the engine exists, and tells the engine's lease clock (see
/// [`crate::lease`]).
async fn heartbeat(
    handles: Weak<()>,
    store: Arc<dyn DurableStore>,
    owner: String,
    lease: Duration,
    clock: Option<Arc<LeaseClock>>,
) {
    loop {
        tokio::time::sleep(lease / 3).await;
        if handles.strong_count() == 0 {
            return;
        }
        let started = clock.as_ref().map(|clock| clock.now());
        match store.renew(&owner, lease).await {
            Ok(()) => {
                if let (Some(clock), Some(started)) = (&clock, started) {
                    clock.renewed(started);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot renew the leases of this engine's tasks"),
        }
    }
}

/// Whether a run in `status` is cancelled already (cancelling it again does nothing); an
/// error if it finished otherwise.
/// Whether `stored`, a journal read from the first seq of `entries`, begins with them: the
/// same positions, times and entries.
fn begins_with(stored: &[StoredEntry], entries: &[StoredEntry]) -> bool {
    let same = |a: &StoredEntry, b: &StoredEntry| {
        a.seq == b.seq
            && a.at_ms == b.at_ms
            && matches!((serde_json::to_string(&a.entry), serde_json::to_string(&b.entry)), (Ok(x), Ok(y)) if x == y)
    };
    !entries.is_empty() && stored.len() >= entries.len() && stored.iter().zip(entries).all(|(a, b)| same(a, b))
}

/// What to record instead of `entry` when its step is larger than the store takes: a
/// node's output or a human node's payload fails the node, permanently (running the body
/// again would return as much); a failure whose error is that large is recorded with its
/// message and traceback shortened. `None` for anything else.
fn too_large_instead(entry: &JournalEntry, error: &Error) -> Option<JournalEntry> {
    let failed = |node: &Arc<str>, item: Option<u32>, attempt: u32, what: &str| JournalEntry::NodeFailed {
        node: Arc::clone(node),
        item,
        attempt,
        error: NodeError::permanent("ValueTooLarge", format!("node '{node}' {what} that cannot be stored: {error}")),
        retry_in_ms: None,
    };
    match entry {
        JournalEntry::NodeCompleted { node, item, attempt, .. } => {
            Some(failed(node, *item, *attempt, "returned a value"))
        }
        JournalEntry::Interrupted { node, attempt, .. } => {
            Some(failed(node, None, *attempt, "asked a person with a payload"))
        }
        JournalEntry::NodeFailed { node, item, attempt, error: cause, retry_in_ms } => {
            const KEEP: usize = 16 * 1024;
            if cause.message.len() <= KEEP && cause.traceback.as_ref().is_none_or(|t| t.len() <= KEEP) {
                return None;
            }
            let error = NodeError {
                message: limits::shorten(&cause.message, KEEP),
                traceback: cause.traceback.as_deref().map(|t| limits::shorten(t, KEEP)),
                ..cause.clone()
            };
            Some(JournalEntry::NodeFailed {
                node: Arc::clone(node),
                item: *item,
                attempt: *attempt,
                error,
                retry_in_ms: *retry_in_ms,
            })
        }
        _ => None,
    }
}

/// Refuses a run id that no run can have ([`limits::check_name`]) before it reaches a store.
fn check_run_id(run_id: &str) -> Result<()> {
    limits::check_name("run id", run_id)
        .map_err(|reason| Error::InvalidInput { run_id: limits::shorten(run_id, limits::MAX_NAME_BYTES), reason })
}

fn already_cancelled(run_id: &str, status: RunStatus) -> Result<bool> {
    match status {
        RunStatus::Cancelled => Ok(true),
        status if status.is_terminal() => Err(Error::InvalidRunState {
            run_id: run_id.to_owned(),
            status,
            action: "cancel",
            expected: "pending, running or waiting",
        }),
        _ => Ok(false),
    }
}

/// Gives each outstanding retry the part of its backoff still to wait, from the time and
/// delay its failure recorded: a run recovered mid-backoff does not retry early. A retry
/// whose backoff is over is left as it is: it may have started, and recovery treats it as
/// interrupted.
fn with_remaining_backoff(tasks: Vec<Task>, graph: &Graph, journal: &[StoredEntry]) -> Vec<Task> {
    let now = now_ms();
    tasks
        .into_iter()
        .map(|task| {
            let retry_at = journal.iter().rev().find_map(|stored| match &stored.entry {
                JournalEntry::NodeFailed { node, item, attempt, retry_in_ms: Some(ms), .. }
                    if graph.id(node) == Some(task.node) && *item == task.item && attempt + 1 == task.attempt =>
                {
                    Some(stored.at_ms + ms)
                }
                _ => None,
            });
            match retry_at {
                // Still waiting out its backoff, so it cannot have started.
                Some(at) if at > now => Task { delay: Some(Duration::from_millis(at - now)), ..task },
                // Due already: it may have been running when its process stopped.
                _ => task,
            }
        })
        .collect()
}

/// How many bytes of JSON `value` is, counted without keeping them.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

async fn with_timeout(limit: Option<Duration>, attempt: impl Future<Output = BodyResult>) -> BodyResult {
    match limit {
        None => attempt.await,
        Some(limit) => tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| {
            Err(NodeError::new("Timeout", format!("the attempt did not finish within {:.3}s", limit.as_secs_f64())))
        }),
    }
}

fn panic_error(panic: Box<dyn std::any::Any + Send>) -> NodeError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a body panicked".to_owned());
    NodeError::permanent("Panic", message)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
