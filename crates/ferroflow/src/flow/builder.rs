//! Declaring a graph in Rust: [`FlowBuilder`], its [`NodeOptions`], and bodies as closures
//! or [`NodeBody`] types.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::body::{Body, BodyResult, Workflow};
use crate::error::{GraphError, NodeError, Result};
use crate::graph::{Dependency, GraphSpec, NodeKind, NodeSpec, RetryPolicy};
use crate::value::Value;

use super::Flow;
use super::cx::Cx;

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

    /// A model call: the body usually builds a [`ChatRequest`](crate::llm::ChatRequest) and returns
    /// [`Cx::chat`]'s reply as JSON ([`Reply::to_json`](crate::llm::Reply::to_json)).
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
pub(super) fn to_value<O: Serialize>(output: &O) -> BodyResult {
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
