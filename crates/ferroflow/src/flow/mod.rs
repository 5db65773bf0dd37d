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
//! [`NodeError`](crate::NodeError) with `?`.
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

mod builder;
mod cx;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::body::Workflow;
use crate::engine::{Engine, RunHandle, RunSnapshot, StartOptions, WatchUntil};
use crate::error::{Error, Result};
use crate::journal::Event;
use crate::value::Value;

pub use builder::{FlowBuilder, NodeBody, NodeOptions};
pub use cx::Cx;

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
    /// its process). A durable engine blocks here while it writes the run: call it from a
    /// thread that may block or a multi-thread runtime, or use the async [`Flow::run`].
    pub fn start(&self, engine: &Engine, input: impl Serialize, run_id: Option<&str>) -> Result<RunHandle> {
        let input = input_value(&input, run_id)?;
        let options = StartOptions { run_id: run_id.map(str::to_owned), attachment: None };
        engine.start(&self.workflow, input, options)
    }

    /// Runs on `input` until the run completes, fails, or waits for a person; returns its
    /// state then. A failed run is returned as such (its `failure` says which node failed
    /// and why), not as an error. Works on either tokio runtime.
    pub async fn run(&self, engine: &Engine, input: impl Serialize) -> Result<RunSnapshot> {
        self.run_as(engine, input, None).await
    }

    /// [`Flow::run`] with a run id of your own (see [`Flow::start`]).
    pub async fn run_with_id(&self, engine: &Engine, input: impl Serialize, run_id: &str) -> Result<RunSnapshot> {
        self.run_as(engine, input, Some(run_id)).await
    }

    async fn run_as(&self, engine: &Engine, input: impl Serialize, run_id: Option<&str>) -> Result<RunSnapshot> {
        let input = input_value(&input, run_id)?;
        let options = StartOptions { run_id: run_id.map(str::to_owned), attachment: None };
        let workflow = self.workflow.clone();
        off_runtime(engine, move |engine| engine.start(&workflow, input, options)).await?.wait(None).await
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
        let (workflow, run_id, node) = (self.workflow.clone(), run_id.to_owned(), node.map(str::to_owned));
        let answered = off_runtime(engine, move |engine| {
            engine.open_run(&workflow, &run_id)?.resume(node.as_deref(), value, None)
        });
        answered.await?.wait(None).await
    }

    /// Retries a failed run from the node that failed ([`Engine::retry`]), and waits until it
    /// settles again. `by` names who retries, for the journal.
    pub async fn retry(&self, engine: &Engine, run_id: &str, by: &str) -> Result<RunSnapshot> {
        let (workflow, run_id, by) = (self.workflow.clone(), run_id.to_owned(), by.to_owned());
        off_runtime(engine, move |engine| engine.retry(&workflow, &run_id, &by, None)).await?.wait(None).await
    }

    /// Continues a run that stopped with its process (or any run of the store this engine
    /// does not hold), and waits until it settles. Completed nodes do not run again.
    pub async fn recover(&self, engine: &Engine, run_id: &str) -> Result<RunSnapshot> {
        let (workflow, run_id) = (self.workflow.clone(), run_id.to_owned());
        off_runtime(engine, move |engine| engine.recover(&workflow, &run_id, None)).await?.wait(None).await
    }
}

/// Calls `call` where a durable engine may block on its store: on a blocking thread, so
/// that the async methods work on either tokio runtime (a current-thread runtime has no
/// worker to spare, and blocking its one thread would also stall the store's own I/O) and
/// never hold a multi-thread runtime's workers up. In memory nothing blocks: it runs here.
async fn off_runtime<T: Send + 'static>(
    engine: &Engine,
    call: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
) -> Result<T> {
    if engine.config().store.is_none() {
        return call(engine);
    }
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || call(&engine)).await {
        Ok(outcome) => outcome,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(Error::Closed),
    }
}

fn input_value(input: &impl Serialize, run_id: Option<&str>) -> Result<Value> {
    serde_json::to_value(input).map(Value::from).map_err(|e| Error::InvalidInput {
        run_id: run_id.unwrap_or_default().to_owned(),
        reason: format!("the value cannot be written as JSON: {e}"),
    })
}
