//! ferroflow: a workflow engine for LLM applications.
//!
//! A workflow is a [`Graph`] of nodes (tasks, LLM and tool calls, branches, maps, human
//! steps) with a [`Body`] per node. The [`Engine`] runs it: every node's completion is
//! recorded in the run's journal, from which [`RunState`] derives what runs next.

pub mod body;
pub mod engine;
pub mod error;
pub mod flow;
pub mod graph;
pub mod journal;
pub mod llm;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "openai")]
pub mod openai;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod state;
pub mod store;
pub mod value;

#[cfg(feature = "redis")]
pub use crate::redis::RedisStore;
pub use body::{AsyncBody, Attachment, BlockingBody, Body, BodyResult, NodeCall, Workflow};
pub use engine::{
    Durability, Engine, EngineConfig, NodeHandle, NodeReport, RunHandle, RunSnapshot, StartOptions, WatchUntil,
};
pub use error::{Error, GraphError, NodeError, Result};
pub use flow::{Cx, Flow, FlowBuilder, NodeOptions};
pub use graph::{Dependency, Graph, GraphSpec, NodeId, NodeKind, NodeSpec, RetryPolicy};
pub use journal::{Event, EventKind, JournalEntry, RunFailure, RunStatus};
#[cfg(feature = "nats")]
pub use nats::NatsStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
pub use state::{Effects, NodeState, Rejected, RunState, Task};
pub use store::{
    Claim, Created, DurableStore, GraphRecord, Holdings, JournalStore, Lease, MemoryStore, QueuedTask, RELEASED,
    RunCursor, RunPage, RunQuery, RunRecord, Step, StoredEntry, TaskQueue,
};
pub use value::{NativeValue, Value};
