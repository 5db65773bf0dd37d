//! The scheduler: starts runs, executes ready tasks, records what happened, and wakes
//! whoever waits on a run.
//!
//! Completing a task is one step: build the journal entry from the body's result, apply
//! it to the run's [`RunState`](crate::state::RunState), record it with the entries it implies, then dispatch
//! what became ready. The step runs under the run's lock, so two dependencies finishing
//! at once on two threads cannot lose a join's wake-up.
//!
//! Blocking bodies run on tokio's blocking threads. A thread that completes a node keeps
//! one newly ready blocking task for itself and runs it next, so a chain of blocking
//! nodes costs no thread hand-off per node. Async bodies are spawned on the runtime.
//!
//! The engine's parts, one concern per module:
//! - this module: the configuration, the public types, and [`Engine`] itself;
//! - `run.rs`: a run held in memory and its watchers;
//! - `run_handle.rs`: a run wherever it lives ([`Engine::open_run`]) and the handle on it;
//! - `start.rs` and `recovery.rs`: starting runs, and taking on runs the store has;
//! - `dispatch.rs`: running bodies and completing their tasks;
//! - `durable.rs` and `outage.rs`: writing steps to the store, and riding out its outages;
//! - `worker.rs`: the worker loop and the lease that keeps its work its own;
//! - `follow.rs`: runs executed elsewhere, followed from the store;
//! - `ops.rs`: inspection, resume, cancel and watch;
//! - `retry.rs`: retrying a failed run from where it failed; `fork.rs`: forking a run at a node;
//!   `replay.rs`: running a recorded run again with its recorded steps and answers;
//!   `prune.rs`: deleting old finished runs;
//! - `transfer.rs`: moving runs between contexts (export and import);
//! - `handle.rs`: what a running body can do to its run.

mod dispatch;
mod durable;
mod follow;
mod fork;
mod handle;
mod ops;
mod outage;
mod prune;
mod recovery;
mod replay;
mod retry;
mod run;
mod run_handle;
mod start;
mod transfer;
mod worker;

pub use crate::body::NodeHandle;
pub use fork::ForkOptions;
pub use prune::{PruneQuery, Pruned};
pub use run_handle::RunHandle;
pub use transfer::{EXPORT_FORMAT, ExportedEntry, ExportedRun};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::body::Attachment;
use crate::error::{Error, NodeError, Result};
use crate::graph::NodeKind;
use crate::journal::{RunFailure, RunStatus};
use crate::lease::LeaseClock;
use crate::limits;
use crate::store::DurableStore;
use crate::value::Value;

use self::durable::{Pending, group_commit};
use self::follow::follow_runs;
use self::run::{LiveRun, RunTable};
use self::worker::heartbeat;

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
    /// How long the store keeps a finished run (completed, failed or cancelled) after it
    /// finished: a durable engine deletes older ones in the background, about every tenth
    /// of this (at least every second, at most every hour), as [`Engine::prune`] does.
    /// `None` (the default) keeps them until pruned. Running and waiting runs are never
    /// deleted.
    pub retention: Option<Duration>,
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
            retention: None,
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
    /// Per-run data every body call of the run receives ([`NodeCall::attachment`](crate::NodeCall::attachment)).
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

/// The scheduler. Cheap to clone: clones share the runs.
///
/// Without a store ([`EngineConfig::store`]) runs live in memory only (real-time mode);
/// with one, every step of a run is written to the store, and the run survives the
/// process.
///
/// A durable engine's methods that reach the store block the calling thread until the
/// store answers. Call them from a thread that may block, or from a task on tokio's
/// multi-thread runtime (they use [`tokio::task::block_in_place`] there, which panics on
/// the current-thread runtime). [`Flow`](crate::Flow)'s async methods do this for you: they
/// call a durable engine from a blocking thread, so they work on either runtime.
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
    _handles: Arc<Handles>,
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
    /// Cancelled when the engine is closed ([`Engine::close`]) or its last handle dropped:
    /// the background tasks stop at once.
    closed: CancellationToken,
    /// The background tasks (lease renewal, group commit, following runs), which
    /// [`Engine::close`] waits for.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Hand-backs of runs failed in memory still trying, by run id ([`Inner::release_failed`]).
    failed_releases: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// Shared by every clone of an [`Engine`]: when the last one is dropped, the engine's
/// background tasks stop, and the runs it held expire at their lease for other workers.
struct Handles(CancellationToken);

impl Drop for Handles {
    fn drop(&mut self) {
        self.0.cancel();
    }
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
            closed: CancellationToken::new(),
            background: Mutex::new(Vec::new()),
            failed_releases: Mutex::new(HashMap::new()),
        });
        if let Some(store) = &inner.config.store {
            let closed = inner.closed.clone();
            let renew =
                heartbeat(closed, Arc::clone(store), inner.owner.clone(), inner.config.lease, inner.clock.clone());
            let mut background = vec![inner.runtime.spawn(renew)];
            if let Durability::Batch { window } = inner.config.durability {
                background.push(inner.runtime.spawn(group_commit(Arc::downgrade(&inner), window)));
            }
            background.push(inner.runtime.spawn(follow_runs(Arc::downgrade(&inner))));
            if let Some(retention) = inner.config.retention {
                background.push(inner.runtime.spawn(prune::keep_for(Arc::downgrade(&inner), retention)));
            }
            *inner.background.lock().expect("background lock") = background;
        }
        let handles = Arc::new(Handles(inner.closed.clone()));
        Engine { inner, _handles: handles }
    }

    /// Closes the engine: writes the steps waiting for their group commit, stops renewing
    /// leases, committing in groups and following runs, and refuses every later call with
    /// [`Error::Closed`]. Its store (a SQLite file, a connection) is released when the last
    /// clone of the engine is dropped and the bodies still running finish; the runs it held
    /// expire at their lease, for other workers to take over. Closing again does nothing.
    pub fn close(&self) {
        if self.inner.closed.is_cancelled() {
            return;
        }
        let _ = self.inner.flush(None);
        self.inner.closed.cancel();
        let background = std::mem::take(&mut *self.inner.background.lock().unwrap_or_else(|p| p.into_inner()));
        // On a current-thread runtime the caller may be the one thread that would run the
        // tasks, which cannot wait for them here; they stop at their next await all the same.
        let current_thread = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
        if !background.is_empty() && !current_thread {
            self.inner.block_on(async {
                for task in background {
                    // A task stops at its next await; one stuck in a store call is left behind.
                    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                }
            });
        }
        // Steps recorded while the background tasks stopped.
        let _ = self.inner.flush(None);
    }

    /// Whether [`Engine::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Writes the steps waiting for their group commit now ([`Durability::Batch`]); call it
    /// before the process exits. Runs whose steps cannot be written fail in memory.
    pub fn flush(&self) {
        let _ = self.inner.flush(None);
    }

    /// The settings the engine was made with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The name this engine holds durable tasks under.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }
}

impl Inner {
    /// A handle on `run` for callers.
    fn handle_of(self: &Arc<Self>, run: Arc<LiveRun>) -> RunHandle {
        RunHandle { run, engine: Arc::downgrade(self) }
    }

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

    /// Whether the engine was closed. (Dropping its last handle cancels the same token, but
    /// then nobody is left to ask.)
    fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// [`Error::Closed`] once the engine is closed: what every public operation checks first.
    fn check_open(&self) -> Result<()> {
        if self.is_closed() { Err(Error::Closed) } else { Ok(()) }
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
}

/// Refuses a run id that no run can have ([`limits::check_name`]) before it reaches a store.
fn check_run_id(run_id: &str) -> Result<()> {
    limits::check_name("run id", run_id)
        .map_err(|reason| Error::InvalidInput { run_id: limits::shorten(run_id, limits::MAX_NAME_BYTES), reason })
}

/// Whether a run in `status` is cancelled already (cancelling it again does nothing); an
/// error if it finished otherwise.
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

#[cfg(test)]
mod tests;
