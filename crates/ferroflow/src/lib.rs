//! ferroflow: a durable workflow engine for LLM applications.
//!
//! A workflow is a graph of nodes: plain functions, model calls, tool calls, branches, map
//! nodes (one task per element of a list) and human steps. The same graph runs
//! **real-time** (in memory, events streamed as they happen) or **durable** (every
//! completed node checkpointed in SQLite, Redis or NATS JetStream, so that a run whose
//! process dies continues where it stopped and never pays for a model call twice), chosen
//! by the [`Engine`] it runs on, with no change to the graph.
//!
//! # A tour
//!
//! Build the graph with [`FlowBuilder`]: each node is an async closure taking a [`Cx`],
//! which hands the run's input and the dependencies' outputs over as your own serde types.
//! Dependencies are declared by name ([`NodeOptions::after`], [`NodeOptions::when`] for the
//! edges out of a branch).
//!
//! ```
//! use std::sync::Arc;
//!
//! # #[cfg(feature = "sqlite")]
//! use ferroflow::{Cx, Engine, EngineConfig, FlowBuilder, RunStatus, SqliteStore};
//! use serde::{Deserialize, Serialize};
//! use tokio::runtime::Handle;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Ticket {
//!     text: String,
//! }
//!
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut g = FlowBuilder::new("triage");
//! g.task("words", |cx: Cx| async move {
//!     let ticket: Ticket = cx.input()?;
//!     Ok(ticket.text.split_whitespace().count())
//! });
//! g.branch("route", |cx: Cx| async move {
//!     Ok(if cx.dep::<usize>("words")? > 3 { "long" } else { "short" })
//! })
//! .after("words")
//! .labels(["long", "short"]);
//! // A human step: the run waits for a person's answer, which becomes the node's output.
//! g.human("review", |cx: Cx| async move {
//!     Ok(serde_json::json!({"question": "Is it urgent?", "words": cx.dep::<usize>("words")?}))
//! })
//! .after("words")
//! .when("route", ["long"]);
//! g.task("report", |cx: Cx| async move {
//!     // A skipped dependency's output is null: read it as an Option.
//!     let urgent: Option<bool> = cx.dep("review")?;
//!     Ok(format!("{} words, urgent: {urgent:?}", cx.dep::<usize>("words")?))
//! })
//! .after_all(["words", "review"]);
//! let flow = g.build()?;
//!
//! // Real time, in memory.
//! let memory = Engine::new(Handle::current(), EngineConfig::default());
//! let done = flow.run(&memory, Ticket { text: "hi there".into() }).await?;
//! assert_eq!(done.output_as::<String>()?, "2 words, urgent: None");
//!
//! // Durable, on SQLite: the same graph; only the engine's store differs.
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("runs.db");
//! let on_sqlite = |path: &std::path::Path| -> ferroflow::Result<Engine> {
//!     let store = Arc::new(SqliteStore::open(path)?);
//!     Ok(Engine::new(Handle::current(), EngineConfig { store: Some(store), ..EngineConfig::default() }))
//! };
//! let engine = on_sqlite(&path)?;
//! let ticket = Ticket { text: "the printer is on fire".into() };
//! let waiting = flow.run_with_id(&engine, ticket, "ticket-1").await?;
//! assert_eq!(waiting.status, RunStatus::Waiting);
//! drop(engine); // this process is done; the run waits in the file
//!
//! // Later, in another process, a person answers.
//! let engine = on_sqlite(&path)?;
//! let done = flow.resume(&engine, "ticket-1", Some("review"), true).await?;
//! assert_eq!(done.output_as::<String>()?, "5 words, urgent: Some(true)");
//! # Ok(())
//! # }
//! ```
//!
//! # Running
//!
//! - [`Flow::run`] starts a run and waits until it completes, fails or waits for a person;
//!   [`Flow::start`] returns a [`RunHandle`] at once (with a run id of yours, starting is
//!   idempotent); [`Flow::stream`] also returns the run's [`Event`]s as they happen
//!   (including the token deltas of streamed model calls, as `NodeProgress`).
//! - [`Flow::resume`] answers a human step, from any process on the same store;
//!   [`Engine::cancel`] cancels a run (its completed nodes stay recorded).
//! - A failed node is retried under its [`RetryPolicy`] ([`NodeOptions::retry`],
//!   [`NodeOptions::attempts`]) and its attempt limited by [`NodeOptions::timeout`]; a run
//!   that fails for good says which node failed and why ([`RunSnapshot::failure`]).
//! - Crash recovery: starting the same run id again in a new process (or [`Flow::recover`])
//!   continues a run from its journal; nodes it recorded as completed do not run again.
//!   [`Engine::work`] makes a process a worker: it takes over the runs of processes that
//!   died and executes runs others submitted (the `ferroflow-server` binary submits runs
//!   for workers).
//! - Node execution is at least once. A body makes an external effect happen once with
//!   [`Cx::idempotency_key`], and records costly steps with [`Cx::step`]: a later attempt
//!   gets the recorded result back instead of doing the step again.
//!
//! # Contexts (cargo features)
//!
//! | Context | Feature | Store |
//! |---|---|---|
//! | in memory | (always) | none: [`EngineConfig::default`] |
//! | SQLite file | `sqlite` | [`SqliteStore`] |
//! | Redis | `redis` | [`RedisStore`] |
//! | NATS JetStream | `nats` | [`NatsStore`] |
//!
//! # Model calls
//!
//! [`Cx::chat`] and [`Cx::chat_stream`] call any [`llm::Provider`] and record the reply as
//! a step of the node. With the `openai` feature, [`openai::OpenAiClient`] talks to any
//! OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama), with retries that honour
//! `Retry-After`. `examples/support_bot.rs` is a whole support bot in Rust, and
//! `examples/durable_batch.rs` a batch on SQLite that survives `kill -9`.
//!
//! # Lower level
//!
//! A [`FlowBuilder`] produces a [`GraphSpec`] (the serialisable structure, versioned by a
//! hash of it) and a [`Body`] per node, paired in a [`Workflow`]: what the [`Engine`] runs
//! and what the Python bindings build too. The journal ([`JournalEntry`]) is a run's whole
//! durable state; [`RunState`] derives what runs next from graph and journal, the same in
//! every context.

#![warn(missing_docs)]
pub mod body;
pub mod engine;
pub mod error;
pub mod flow;
pub mod graph;
pub mod journal;
mod lease;
pub mod limits;
pub mod llm;
#[cfg(feature = "openai")]
pub use llm::openai;
pub mod state;
pub mod store;
pub mod value;

// The stores live under `store`; their modules are also at the crate root, where they were.
#[cfg(feature = "nats")]
pub use store::nats;
#[cfg(feature = "redis")]
pub use store::redis;
#[cfg(feature = "sqlite")]
pub use store::sqlite;

#[cfg(feature = "redis")]
pub use crate::redis::RedisStore;
pub use body::{AsyncBody, Attachment, BlockingBody, Body, BodyResult, NodeCall, Workflow};
pub use engine::{
    Durability, EXPORT_FORMAT, Engine, EngineConfig, ExportedEntry, ExportedRun, ForkOptions, NodeHandle, NodeReport,
    PruneQuery, Pruned, RunHandle, RunSnapshot, StartOptions, WatchUntil,
};
pub use error::{Error, GraphError, NodeError, Result};
pub use flow::{Cx, Flow, FlowBuilder, NodeBody, NodeOptions};
pub use graph::{Dependency, Graph, GraphSpec, NodeId, NodeKind, NodeSpec, RetryPolicy};
pub use journal::{Event, EventKind, JournalEntry, RunFailure, RunStatus};
#[cfg(feature = "nats")]
pub use nats::NatsStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
pub use state::{NodeState, RunState};
pub use store::{DurableStore, GraphRecord, MemoryStore, RunCursor, RunPage, RunQuery, RunRecord};
pub use value::{NativeValue, Value};

// What only a store's or a scheduler's implementer names lives under `store` and `state`;
// these root paths are kept, out of the documentation, for code written against them.
#[doc(hidden)]
pub use state::{Effects, Rejected, Task};
#[doc(hidden)]
pub use store::{Claim, Created, Holdings, JournalStore, Lease, QueuedTask, RELEASED, Step, StoredEntry, TaskQueue};
