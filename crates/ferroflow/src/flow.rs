//! Graphs written in Rust: [`FlowBuilder`] declares nodes with closures, [`Cx`] gives a
//! body its inputs as your own types (through serde), and [`Flow`] runs the graph on an
//! [`Engine`] in any context.
//!
//! A body is an async closure `Fn(Cx) -> impl Future<Output = Result<O, NodeError>>` whose
//! output `O` is anything [`Serialize`]; a blocking one is declared with
//! [`FlowBuilder::task_blocking`], and a body with state or configuration of its own can be a
//! type implementing [`NodeBody`] ([`FlowBuilder::node`]). Dependencies are declared by name with
//! [`NodeOptions::after`] (Rust closures have no parameter names to infer them from), and
//! their outputs read by name with [`Cx::dep`]. Any `std::error::Error` converts into a
//! [`NodeError`] with `?`.
//!
//! ```
//! use ferroflow::flow::{Cx, FlowBuilder};
//! use ferroflow::{Engine, EngineConfig, RunStatus};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut g = FlowBuilder::new("greet");
//! g.task("name", |cx: Cx| async move { Ok(cx.input::<String>()?.trim().to_owned()) });
//! g.task("hello", |cx: Cx| async move { Ok(format!("hello, {}", cx.dep::<String>("name")?)) })
//!     .after("name");
//! let flow = g.build()?;
//!
//! let engine = Engine::new(tokio::runtime::Handle::current(), EngineConfig::default());
//! let done = flow.run(&engine, " Ada ").await?;
//! assert_eq!(done.status, RunStatus::Completed);
//! assert_eq!(done.output_as::<String>()?, "hello, Ada");
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::body::{Body, BodyResult, NodeCall, Workflow};
use crate::engine::{Engine, RunHandle, RunSnapshot, StartOptions, WatchUntil};
use crate::error::{Error, GraphError, NodeError, Result};
use crate::graph::{Dependency, GraphSpec, NodeKind, NodeSpec, RetryPolicy};
use crate::journal::Event;
use crate::llm::{ChatRequest, LlmError, Provider, Reply, steps};
use crate::value::Value;

type AsyncFn = Arc<dyn Fn(Cx) -> BoxFuture<'static, BodyResult> + Send + Sync>;
type BlockingFn = Arc<dyn Fn(Cx) -> BodyResult + Send + Sync>;

enum BodyFn {
    Async(AsyncFn),
    Blocking(BlockingFn),
}

struct PendingNode {
    spec: NodeSpec,
    body: BodyFn,
}

/// Declares a graph node by node, each with its body. [`FlowBuilder::build`] validates the
/// whole (no cycles, no unknown dependency, ...) and returns the runnable [`Flow`].
pub struct FlowBuilder {
    name: String,
    output: Option<String>,
    nodes: Vec<PendingNode>,
}

/// Options of the node just declared: its dependencies, retry policy and timeout.
pub struct NodeOptions<'a> {
    node: &'a mut PendingNode,
}

impl NodeOptions<'_> {
    /// Depends on `node`: this node runs after it, and reads its output with [`Cx::dep`].
    pub fn after(self, node: &str) -> Self {
        self.node.spec.deps.push(Dependency::on(node).param(node));
        self
    }

    /// Depends on each of `nodes` (see [`NodeOptions::after`]).
    pub fn after_all<'n>(mut self, nodes: impl IntoIterator<Item = &'n str>) -> Self {
        for node in nodes {
            self = self.after(node);
        }
        self
    }

    /// Runs only when branch `branch` returns one of `labels` (and depends on it). A node
    /// whose every incoming edge is inactive is skipped, and its dependents receive `null`
    /// for it.
    pub fn when<I, S>(self, branch: &str, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.node.spec.deps.push(Dependency::on(branch).param(branch).when(labels));
        self
    }

    /// For a branch: every label it may return (a label outside them fails the node, and
    /// an edge on a label outside them is a build error).
    pub fn labels<I, S>(self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.node.spec.labels = Some(labels.into_iter().map(Into::into).collect());
        self
    }

    /// How failed attempts are retried (the default: not at all).
    pub fn retry(self, retry: RetryPolicy) -> Self {
        self.node.spec.retry = retry;
        self
    }

    /// Up to `attempts` attempts in all, with the default backoff (100 ms doubling, with
    /// jitter).
    pub fn attempts(self, attempts: u32) -> Self {
        self.node.spec.retry.max_attempts = attempts.max(1);
        self
    }

    /// For a node declared with [`FlowBuilder::node`] as a map: the node whose output (a
    /// list) it runs over, once per element (and depends on it).
    pub fn over(self, node: &str) -> Self {
        self.node.spec.over = Some(node.to_owned());
        self.after(node)
    }

    /// Fails an attempt that takes longer than `limit` (a retryable failure). An async
    /// body is dropped at the limit; a blocking one runs on, its result discarded.
    pub fn timeout(self, limit: Duration) -> Self {
        self.node.spec.timeout = Some(limit);
        self
    }
}

impl FlowBuilder {
    /// An empty graph named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        FlowBuilder { name: name.into(), output: None, nodes: Vec::new() }
    }

    /// Makes `node`'s output the run's output. Without it, a graph with one sink returns
    /// that sink's output, and one with several an object keyed by sink name.
    pub fn output(&mut self, node: impl Into<String>) -> &mut Self {
        self.output = Some(node.into());
        self
    }

    fn add(&mut self, name: &str, kind: NodeKind, body: BodyFn) -> NodeOptions<'_> {
        self.nodes.push(PendingNode { spec: NodeSpec::new(name, kind), body });
        NodeOptions { node: self.nodes.last_mut().expect("just pushed") }
    }

    /// A plain async function.
    pub fn task<F, Fut, O>(&mut self, name: &str, body: F) -> NodeOptions<'_>
    where
        F: Fn(Cx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, NodeError>> + Send + 'static,
        O: Serialize,
    {
        self.add(name, NodeKind::Task, async_body(body))
    }

    /// A plain function that blocks (CPU work, blocking I/O): it runs on a blocking
    /// thread, never on the runtime's workers.
    pub fn task_blocking<F, O>(&mut self, name: &str, body: F) -> NodeOptions<'_>
    where
        F: Fn(Cx) -> Result<O, NodeError> + Send + Sync + 'static,
        O: Serialize,
    {
        let body: BlockingFn = Arc::new(move |cx| body(cx).and_then(|out| to_value(&out)));
        self.add(name, NodeKind::Task, BodyFn::Blocking(body))
    }

    /// A tool call (a task that the graph's drawing and events show as a tool).
    pub fn tool<F, Fut, O>(&mut self, name: &str, body: F) -> NodeOptions<'_>
    where
        F: Fn(Cx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, NodeError>> + Send + 'static,
        O: Serialize,
    {
        self.add(name, NodeKind::Tool, async_body(body))
    }

    /// A model call: the body usually builds a [`ChatRequest`] and returns
    /// [`Cx::chat`]'s reply as JSON ([`Reply::to_json`]).
    pub fn llm<F, Fut, O>(&mut self, name: &str, body: F) -> NodeOptions<'_>
    where
        F: Fn(Cx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, NodeError>> + Send + 'static,
        O: Serialize,
    {
        self.add(name, NodeKind::Llm, async_body(body))
    }

    /// A branch: returns one label (a string) or several (a list of strings); only the
    /// nodes declared [`NodeOptions::when`] it returns one of theirs run.
    pub fn branch<F, Fut, O>(&mut self, name: &str, body: F) -> NodeOptions<'_>
    where
        F: Fn(Cx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, NodeError>> + Send + 'static,
        O: Serialize,
    {
        self.add(name, NodeKind::Branch, async_body(body))
    }

    /// A map node: runs `body` once per element of the list `over` outputs (each element
    /// its own task, retried and checkpointed on its own); [`Cx::item`] is the element.
    /// The node's output is the list of results, in order.
    pub fn map<F, Fut, O>(&mut self, name: &str, over: &str, body: F) -> NodeOptions<'_>
    where
        F: Fn(Cx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, NodeError>> + Send + 'static,
        O: Serialize,
    {
        let options = self.add(name, NodeKind::Map, async_body(body));
        options.node.spec.over = Some(over.to_owned());
        options.after(over)
    }

    /// A human step: `body` returns what the person is shown, and the run waits (status
    /// `waiting`) until [`Flow::resume`] gives the node its value, from this process or
    /// any other on the same store.
    pub fn human<F, Fut, O>(&mut self, name: &str, body: F) -> NodeOptions<'_>
    where
        F: Fn(Cx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, NodeError>> + Send + 'static,
        O: Serialize,
    {
        self.add(name, NodeKind::Human, async_body(body))
    }

    /// A node whose body is a type implementing [`NodeBody`], of any `kind` (a map node
    /// then needs [`NodeOptions::over`]).
    pub fn node<B: NodeBody>(&mut self, name: &str, kind: NodeKind, body: B) -> NodeOptions<'_> {
        let body = Arc::new(body);
        self.add(
            name,
            kind,
            async_body(move |cx| {
                let body = Arc::clone(&body);
                async move { body.run(cx).await }
            }),
        )
    }

    /// Validates the graph and pairs it with the bodies.
    pub fn build(self) -> Result<Flow, GraphError> {
        let spec = GraphSpec {
            name: self.name,
            nodes: self.nodes.iter().map(|n| n.spec.clone()).collect(),
            output: self.output,
        };
        let graph = spec.build()?;
        let bodies: HashMap<String, Body> = self
            .nodes
            .into_iter()
            .map(|node| {
                let deps: Arc<[Arc<str>]> = node.spec.deps.iter().map(|d| Arc::from(d.node.as_str())).collect();
                let body = match node.body {
                    BodyFn::Async(f) => Body::from_async(move |call| f(Cx::new(call, Arc::clone(&deps)))),
                    BodyFn::Blocking(f) => Body::blocking(move |call| f(Cx::new(call, Arc::clone(&deps)))),
                };
                (node.spec.name, body)
            })
            .collect();
        Ok(Flow { workflow: Workflow::new(graph, bodies)? })
    }
}

fn async_body<F, Fut, O>(body: F) -> BodyFn
where
    F: Fn(Cx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, NodeError>> + Send + 'static,
    O: Serialize,
{
    let body = Arc::new(body);
    BodyFn::Async(Arc::new(move |cx| {
        let future = body(cx);
        Box::pin(async move { future.await.and_then(|out| to_value(&out)) })
    }))
}

/// A body's output as a [`Value`]; one without a JSON form fails the node for good.
fn to_value<O: Serialize>(output: &O) -> BodyResult {
    serde_json::to_value(output).map(Value::from).map_err(|e| {
        NodeError::permanent("ferroflow.InvalidOutput", format!("the node's output cannot be written as JSON: {e}"))
    })
}

/// A node body as a type, for bodies that carry state or configuration (a client, a
/// prompt, limits): [`FlowBuilder::node`] declares a node with one.
///
/// ```
/// use ferroflow::flow::{Cx, FlowBuilder, NodeBody};
/// use ferroflow::{NodeError, NodeKind};
///
/// struct Multiply {
///     by: i64,
/// }
///
/// #[async_trait::async_trait]
/// impl NodeBody for Multiply {
///     type Output = i64;
///     async fn run(&self, cx: Cx) -> Result<i64, NodeError> {
///         Ok(cx.input::<i64>()? * self.by)
///     }
/// }
///
/// let mut g = FlowBuilder::new("times");
/// g.node("triple", NodeKind::Task, Multiply { by: 3 });
/// assert_eq!(g.build().unwrap().name(), "times");
/// ```
#[async_trait]
pub trait NodeBody: Send + Sync + 'static {
    /// What the node outputs.
    type Output: Serialize;
    /// One attempt of the node. Dropping the future cancels it (on timeout or when the run
    /// is cancelled).
    async fn run(&self, cx: Cx) -> Result<Self::Output, NodeError>;
}

/// What a body is given: the run's input, its dependencies' outputs, its map element, and
/// ways to record its steps and report progress.
pub struct Cx {
    call: NodeCall,
    deps: Arc<[Arc<str>]>,
    /// Model calls made so far by this attempt: the key of the next one's recorded step.
    calls: AtomicU32,
}

impl Cx {
    fn new(call: NodeCall, deps: Arc<[Arc<str>]>) -> Cx {
        Cx { call, deps, calls: AtomicU32::new(0) }
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.call.run_id
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.call.node
    }

    /// The attempt, from 1: a retry, or a rerun after the process running it died, gets
    /// the next number.
    pub fn attempt(&self) -> u32 {
        self.call.attempt
    }

    /// The same for every attempt of this node (or map element) in this run: give it to an
    /// external system so that an effect repeated by a retry happens once.
    pub fn idempotency_key(&self) -> String {
        self.call.idempotency_base()
    }

    /// The call as the engine made it (raw [`Value`]s, the node handle, the attachment).
    pub fn call(&self) -> &NodeCall {
        &self.call
    }

    /// The run's input, as `T`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, NodeError> {
        decode(&self.call.input, || "the run input".to_owned())
    }

    /// The output of dependency `node`, as `T`. A skipped dependency's output is `null`:
    /// read it as an `Option`.
    pub fn dep<T: DeserializeOwned>(&self, node: &str) -> Result<T, NodeError> {
        let index = self.deps.iter().position(|d| &**d == node).ok_or_else(|| {
            NodeError::permanent(
                "ferroflow.UnknownDependency",
                format!(
                    "node '{}' has no dependency '{node}' (it depends on {:?}); declare it with .after(\"{node}\")",
                    self.call.node, self.deps
                ),
            )
        })?;
        decode(&self.call.deps[index], || format!("the output of '{node}'"))
    }

    /// For a map node: the element this call is for, as `T`.
    pub fn item<T: DeserializeOwned>(&self) -> Result<T, NodeError> {
        match &self.call.item {
            Some((_, value)) => decode(value, || "the map element".to_owned()),
            None => Err(NodeError::permanent(
                "ferroflow.NotAMapNode",
                format!("node '{}' is not a map node: it has no element", self.call.node),
            )),
        }
    }

    /// For a map node: the index of this call's element.
    pub fn item_index(&self) -> Option<u32> {
        self.call.item.as_ref().map(|(i, _)| *i)
    }

    /// Reports progress to the run's watchers (an event that is not journaled).
    pub fn emit(&self, data: impl Serialize) {
        if let (Some(handle), Ok(json)) = (&self.call.handle, serde_json::to_value(data)) {
            handle.emit(Value::from(json));
        }
    }

    /// Does `step` once per run: if an earlier attempt of this node recorded a result
    /// under `key`, returns it; otherwise runs `step` and records its result (durably, in
    /// a durable context) before returning it. A node that fails after a costly step (or
    /// whose process dies) does not pay for the step again when it is retried. Keys are
    /// the node's own (each map element has its own); `llm/<n>` and `tool/<n>/<i>` are those
    /// of model and tool calls ([`crate::llm::steps`]): [`Cx::chat`] takes the first, and a
    /// tool loop written with this method should take the second, so that its journal
    /// replays in Python's LLM nodes too.
    pub async fn step<T, F, Fut>(&self, key: &str, step: F) -> Result<T, NodeError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        if let Some((_, value)) = self.call.recorded.iter().find(|(k, _)| &**k == key) {
            return decode(value, || format!("the recorded step '{key}'"));
        }
        let result = step().await?;
        let value = to_value(&result)?;
        self.record(key, value).await?;
        Ok(result)
    }

    async fn record(&self, key: &str, value: Value) -> Result<(), NodeError> {
        let Some(handle) = self.call.handle.clone() else { return Ok(()) };
        let key = key.to_owned();
        let written = if handle.durable() {
            // Recording writes to the store and blocks: off the runtime's workers.
            tokio::task::spawn_blocking(move || handle.record(&key, value))
                .await
                .map_err(|e| NodeError::new("ferroflow.StoreError", format!("recording a step failed: {e}")))?
        } else {
            handle.record(&key, value)
        };
        written.map_err(|e| NodeError::new("ferroflow.StoreError", format!("the step could not be recorded: {e}")))
    }

    /// One model call, recorded as a step of this node: a retried attempt (or one rerun
    /// after a crash) gets the recorded reply back instead of calling the model again.
    /// The calls of one attempt are keyed `llm/0`, `llm/1`, ... in the order made
    /// ([`crate::llm::steps::model_call`], the keys Python's LLM nodes use), so a tool loop
    /// replays call by call, in either language; a journal's `llm:<n>` steps (recorded
    /// before the keys were shared) are read as well.
    pub async fn chat(&self, provider: &dyn Provider, request: &ChatRequest) -> Result<Reply, NodeError> {
        self.model_call(provider, request, false).await
    }

    /// [`Cx::chat`], streamed: each text delta is reported to the run's watchers as it
    /// arrives, as progress `{"token": delta}`.
    pub async fn chat_stream(&self, provider: &dyn Provider, request: &ChatRequest) -> Result<Reply, NodeError> {
        self.model_call(provider, request, true).await
    }

    async fn model_call(
        &self,
        provider: &dyn Provider,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<Reply, NodeError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) as usize;
        let (key, legacy) = (steps::model_call(n), steps::legacy_model_call(n));
        if let Some((_, value)) = self.call.recorded.iter().find(|(k, _)| **k == *key || **k == *legacy) {
            let json = value.to_json().map_err(|e| NodeError::permanent("ferroflow.InvalidStep", e))?;
            return Reply::from_json(&json).ok_or_else(|| {
                NodeError::permanent("ferroflow.InvalidStep", format!("the recorded reply '{key}' is not a reply"))
            });
        }
        let reply = if stream {
            let handle = self.call.handle.clone();
            let mut on_delta = move |delta: &str| {
                if let Some(handle) = &handle {
                    handle.emit(Value::from(serde_json::json!({ "token": delta })));
                }
            };
            provider.stream(request, &mut on_delta).await
        } else {
            provider.complete(request).await
        }
        .map_err(llm_error)?;
        self.record(&key, Value::from(reply.to_json())).await?;
        Ok(reply)
    }
}

fn decode<T: DeserializeOwned>(value: &Value, what: impl Fn() -> String) -> Result<T, NodeError> {
    let json =
        value.to_json().map_err(|e| NodeError::permanent("ferroflow.InvalidInput", format!("{}: {e}", what())))?;
    serde_json::from_value(json).map_err(|e| {
        NodeError::permanent(
            "ferroflow.InvalidInput",
            format!("{} does not read as `{}`: {e}", what(), std::any::type_name::<T>()),
        )
    })
}

/// A model call's failure as the node's: retryable when the failure is transient. The
/// types are those the Python API raises, so that a journal reads the same.
fn llm_error(error: LlmError) -> NodeError {
    let node_error = NodeError::new(format!("ferroflow.errors.{}", error.class_name()), error.to_string());
    if error.is_transient() { node_error } else { NodeError { retryable: false, ..node_error } }
}

/// A graph with its bodies, ready to run on any [`Engine`]: in memory (real-time) or on
/// a durable store, with no change to the graph.
#[derive(Clone)]
pub struct Flow {
    workflow: Workflow,
}

impl Flow {
    /// The graph with its bodies, for the engine's lower-level calls ([`Engine::work`],
    /// [`Engine::recover`], ...).
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        self.workflow.graph().name()
    }

    /// The graph's version: a hash of its structure.
    pub fn version(&self) -> &str {
        self.workflow.graph().version()
    }

    /// The graph as a Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        self.workflow.graph().to_mermaid()
    }

    /// Starts a run on `input` and returns at once. With `run_id`, the start is
    /// idempotent: a run with that id is returned as it is (continued, if it stopped with
    /// its process). A durable engine blocks here while it writes the run: call it from
    /// a multi-thread runtime.
    pub fn start(&self, engine: &Engine, input: impl Serialize, run_id: Option<&str>) -> Result<RunHandle> {
        let input = input_value(&input, run_id)?;
        let options = StartOptions { run_id: run_id.map(str::to_owned), attachment: None };
        engine.start(&self.workflow, input, options)
    }

    /// Runs on `input` until the run completes, fails, or waits for a person; returns its
    /// state then. A failed run is returned as such (its `failure` says which node failed
    /// and why), not as an error.
    pub async fn run(&self, engine: &Engine, input: impl Serialize) -> Result<RunSnapshot> {
        self.start(engine, input, None)?.wait(None).await
    }

    /// [`Flow::run`] with a run id of your own (see [`Flow::start`]).
    pub async fn run_with_id(&self, engine: &Engine, input: impl Serialize, run_id: &str) -> Result<RunSnapshot> {
        self.start(engine, input, Some(run_id))?.wait(None).await
    }

    /// Starts a run and returns its events as they happen, until it completes, fails or
    /// waits for a person (the channel then closes).
    pub fn stream(
        &self,
        engine: &Engine,
        input: impl Serialize,
        run_id: Option<&str>,
    ) -> Result<(RunHandle, mpsc::UnboundedReceiver<Event>)> {
        let input = input_value(&input, run_id)?;
        let options = StartOptions { run_id: run_id.map(str::to_owned), attachment: None };
        engine.start_watched(&self.workflow, input, options, WatchUntil::Settled)
    }

    /// Answers the human step `node` of a waiting run (`None`: the one it waits at) with
    /// `value`, which becomes the node's output, and runs on until the run settles again.
    /// The run may have been started by another process on the same store.
    pub async fn resume(
        &self,
        engine: &Engine,
        run_id: &str,
        node: Option<&str>,
        value: impl Serialize,
    ) -> Result<RunSnapshot> {
        let value = input_value(&value, Some(run_id))?;
        self.hold(engine, run_id)?;
        engine.resume(run_id, node, value, None)?.wait(None).await
    }

    /// Continues a run that stopped with its process (or any run of the store this engine
    /// does not hold), and waits until it settles. Completed nodes do not run again.
    pub async fn recover(&self, engine: &Engine, run_id: &str) -> Result<RunSnapshot> {
        engine.recover(&self.workflow, run_id, None)?.wait(None).await
    }

    /// Makes sure `engine` holds the run (loading it from the store if need be).
    fn hold(&self, engine: &Engine, run_id: &str) -> Result<()> {
        if engine.handle(run_id).is_err() {
            engine.recover(&self.workflow, run_id, None)?;
        }
        Ok(())
    }
}

fn input_value(input: &impl Serialize, run_id: Option<&str>) -> Result<Value> {
    serde_json::to_value(input).map(Value::from).map_err(|e| Error::InvalidInput {
        run_id: run_id.unwrap_or_default().to_owned(),
        reason: format!("the value cannot be written as JSON: {e}"),
    })
}
