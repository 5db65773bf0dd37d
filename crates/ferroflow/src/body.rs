//! Node bodies: what the scheduler calls, and what it hands them.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::error::{GraphError, NodeError, Result};
use crate::graph::{Graph, NodeId};
use crate::state::Task;
use crate::value::Value;

/// Per-run data a caller attaches when starting or resuming a run and that every body
/// call of the run receives (the Python bindings attach the event loop that async bodies
/// run on, for instance).
pub type Attachment = Arc<dyn Any + Send + Sync>;

/// What a running body can do to its run: record the results of its own steps durably,
/// and report progress to the run's watchers. Handed to every body call
/// ([`NodeCall::handle`]); it refers to the run weakly, so a body that outlives its run
/// holds nothing up.
#[derive(Clone)]
pub struct NodeHandle {
    run: Arc<dyn RunAccess>,
    task: Task,
}

/// The engine's side of a [`NodeHandle`]: what an attempt (`task`) can reach of its run, one
/// per run, shared by its attempts' handles. Implemented by the engine only
/// (`engine/handle.rs`); the trait keeps this module, the contract between the engine and
/// bodies, free of the engine's internals.
pub(crate) trait RunAccess: Send + Sync {
    fn run_id(&self) -> &str;
    fn may_start(&self, task: &Task) -> bool;
    fn may_start_now(&self) -> Option<bool>;
    fn durable(&self) -> bool;
    fn emit(&self, task: &Task, data: Value);
    fn record(&self, task: &Task, key: &str, value: Value) -> Result<()>;
}

impl NodeHandle {
    pub(crate) fn new(run: Arc<dyn RunAccess>, task: Task) -> NodeHandle {
        NodeHandle { run, task }
    }

    /// The id of the run the body runs for.
    pub fn run_id(&self) -> &str {
        self.run.run_id()
    }

    /// Whether the engine may still start this attempt's body: in a durable engine, that it
    /// still holds the run, as far as its lease tells (see the engine's lease module); a run it lost
    /// meanwhile is followed instead. The engine checks before it calls a body; a body that
    /// does work of its own before running the user's code (a binding taking a lock and
    /// building arguments, say) asks again right before, which narrows the moment a paused
    /// process cannot see. Answers at once when [`NodeHandle::may_start_now`] does, and
    /// otherwise asks the store, blocking: call it from a thread that may block.
    pub fn may_start(&self) -> bool {
        self.run.may_start(&self.task)
    }

    /// [`NodeHandle::may_start`] without asking the store: `Some(true)` when the lease is
    /// known to hold (or the engine has no store), `Some(false)` when the run was lost
    /// already, `None` when only the store can tell.
    pub fn may_start_now(&self) -> Option<bool> {
        self.run.may_start_now()
    }

    /// Whether [`NodeHandle::record`] writes to a store (and may wait for it), rather than
    /// to memory.
    pub fn durable(&self) -> bool {
        self.run.durable()
    }

    /// Reports `data` to whoever watches the run now, as a [`EventKind::NodeProgress`](crate::EventKind::NodeProgress)
    /// event (an LLM node's token deltas, say). It is not journaled.
    pub fn emit(&self, data: Value) {
        self.run.emit(&self.task, data)
    }

    /// Records `value` as the result of the body's step `key` (a model call, a tool call)
    /// in the run's journal, durably in a durable context, before the body goes on: if the
    /// attempt is interrupted (a crash, a failure that is retried), the next attempt gets
    /// it in [`NodeCall::recorded`] and need not do the step again. Fails if the attempt is
    /// no longer current (the run moved on: finished, cancelled, or the attempt timed out),
    /// if the value cannot be stored, or if the store fails.
    pub fn record(&self, key: &str, value: Value) -> Result<()> {
        self.run.record(&self.task, key, value)
    }
}

/// Everything a body receives for one attempt.
#[derive(Clone)]
pub struct NodeCall {
    /// The id of the run the attempt belongs to.
    pub run_id: Arc<str>,
    /// The node's name.
    pub node: Arc<str>,
    /// The node's index in [`Graph::nodes`].
    pub node_id: NodeId,
    /// Counts from 1; a retry or a redelivery gets the next number.
    pub attempt: u32,
    /// For a map node: the element's index and value.
    pub item: Option<(u32, Value)>,
    /// The run's input.
    pub input: Value,
    /// The dependencies' outputs, in the order of the node's dependencies; `null` for a
    /// skipped one.
    pub deps: Vec<Value>,
    /// What the caller attached to the run when it started, recovered or resumed it
    /// ([`StartOptions::attachment`](crate::StartOptions::attachment)), if anything.
    pub attachment: Option<Attachment>,
    /// The steps this node's (or map element's) earlier attempts recorded with
    /// [`NodeHandle::record`], by key, in the order recorded: a body reuses them rather
    /// than doing them again.
    pub recorded: Vec<(Arc<str>, Value)>,
    /// The attempt replays a recorded run ([`Engine::replay`](crate::Engine::replay)): every
    /// step it may take is in `recorded`, and a body refuses a step that is not (it does
    /// not call a model or a tool a replay was not given), failing with kind
    /// `StepNotRecorded`.
    pub replaying: bool,
    /// What the body can do to its run while it runs: record its steps, report progress.
    /// Set by the engine when it calls the body.
    pub handle: Option<NodeHandle>,
}

impl NodeCall {
    /// The same for every attempt of this node (or map element) in this run: a body that
    /// makes an external effect can use it to make the effect happen once.
    pub fn idempotency_base(&self) -> String {
        match &self.item {
            Some((i, _)) => format!("{}/{}/{i}", self.run_id, self.node),
            None => format!("{}/{}", self.run_id, self.node),
        }
    }

    /// `(run_id, node, attempt)` as one string: unique to this attempt.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.idempotency_base(), self.attempt)
    }
}

/// What a body returns.
pub type BodyResult = Result<Value, NodeError>;

/// A body that blocks the thread it runs on. The scheduler calls it on a blocking thread,
/// never on an async worker thread.
pub trait BlockingBody: Send + Sync + 'static {
    /// Runs one attempt. An `Err` fails the attempt; the node's retry policy decides
    /// whether another follows (see [`NodeError::retryable`]). A panic fails the attempt
    /// with a permanent error of kind `Panic`, which is not retried.
    fn call(&self, call: NodeCall) -> BodyResult;
}

/// A body that runs as a future on the runtime. Dropping the future cancels the attempt
/// (on timeout or run cancellation), so implementations must stop their work on drop.
pub trait AsyncBody: Send + Sync + 'static {
    /// Starts one attempt; the future resolves to its result, with the same meaning as
    /// for [`BlockingBody::call`] (a panic while polling is a permanent `Panic` error).
    /// It must not block the thread it is polled on.
    fn call(&self, call: NodeCall) -> BoxFuture<'static, BodyResult>;
}

impl<F> BlockingBody for F
where
    F: Fn(NodeCall) -> BodyResult + Send + Sync + 'static,
{
    fn call(&self, call: NodeCall) -> BodyResult {
        self(call)
    }
}

struct AsyncFn<F>(F);

impl<F, Fut> AsyncBody for AsyncFn<F>
where
    F: Fn(NodeCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BodyResult> + Send + 'static,
{
    fn call(&self, call: NodeCall) -> BoxFuture<'static, BodyResult> {
        Box::pin((self.0)(call))
    }
}

/// A node body.
#[derive(Clone)]
pub enum Body {
    /// Called on one of tokio's blocking threads ([`Body::blocking`]).
    Blocking(Arc<dyn BlockingBody>),
    /// Polled on the engine's runtime ([`Body::from_async`]).
    Async(Arc<dyn AsyncBody>),
}

impl Body {
    /// A body from a blocking closure.
    pub fn blocking(f: impl Fn(NodeCall) -> BodyResult + Send + Sync + 'static) -> Self {
        Body::Blocking(Arc::new(f))
    }

    /// A body from an async closure.
    pub fn from_async<F, Fut>(f: F) -> Self
    where
        F: Fn(NodeCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = BodyResult> + Send + 'static,
    {
        Body::Async(Arc::new(AsyncFn(f)))
    }
}

/// A graph with a body for each node: what a process can execute.
#[derive(Clone)]
pub struct Workflow {
    graph: Arc<Graph>,
    bodies: Arc<[Body]>,
    names: Arc<[Arc<str>]>,
}

impl Workflow {
    /// Pairs `graph` with its bodies, keyed by node name.
    ///
    /// # Errors
    ///
    /// [`GraphError::Invalid`], naming the node, when a node has no body or a body is keyed
    /// by a name the graph has no node for.
    pub fn new(graph: Graph, mut bodies: HashMap<String, Body>) -> Result<Workflow, GraphError> {
        let mut ordered = Vec::with_capacity(graph.nodes().len());
        for node in graph.nodes() {
            let body = bodies.remove(&node.name).ok_or_else(|| GraphError::Invalid {
                graph: graph.name().to_owned(),
                node: node.name.clone(),
                reason: "it has no body".into(),
            })?;
            ordered.push(body);
        }
        if let Some(extra) = bodies.into_keys().next() {
            return Err(GraphError::Invalid {
                graph: graph.name().to_owned(),
                node: extra,
                reason: "a body is given for it, but the graph has no node of that name".into(),
            });
        }
        let names = graph.nodes().iter().map(|n| Arc::from(n.name.as_str())).collect();
        Ok(Workflow { graph: Arc::new(graph), bodies: ordered.into(), names })
    }

    /// The graph the bodies belong to.
    pub fn graph(&self) -> &Arc<Graph> {
        &self.graph
    }

    /// The body of node `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not a node of the graph (`id >= graph().nodes().len()`).
    pub fn body(&self, id: NodeId) -> &Body {
        &self.bodies[id]
    }

    /// How many `Workflow` values share these bodies (this one included). Bindings use it
    /// to tell whether something else, such as a live run, still needs the bodies.
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.bodies)
    }

    /// The node's name, shared.
    ///
    /// # Panics
    ///
    /// If `id` is not a node of the graph.
    pub fn name(&self, id: NodeId) -> &Arc<str> {
        &self.names[id]
    }
}
