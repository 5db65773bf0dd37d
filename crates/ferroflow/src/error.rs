//! Errors: building a graph ([`GraphError`]), driving runs ([`Error`]), and a body's own
//! failure ([`NodeError`], which is data recorded in the journal, not a Rust error).

use serde::{Deserialize, Serialize};

use crate::journal::RunStatus;

/// A graph definition that cannot be built. Every variant names the graph and the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    #[error("graph name {name:?} is empty")]
    InvalidName { name: String },
    #[error("graph '{graph}': node name {node:?} is empty or spans several lines")]
    InvalidNodeName { graph: String, node: String },
    #[error("graph '{graph}': node '{node}' is defined twice")]
    DuplicateNode { graph: String, node: String },
    #[error("graph '{graph}': node '{node}' depends on '{dependency}', which is not a node of the graph")]
    UnknownDependency { graph: String, node: String, dependency: String },
    #[error(
        "graph '{graph}': parameter '{param}' of node '{node}' is not provided: no node is called \
         '{param}'. Add that node, give the parameter a default, or map it to a node explicitly"
    )]
    UnresolvedParameter { graph: String, node: String, param: String },
    #[error("graph '{graph}': node '{node}' lists '{dependency}' twice among its dependencies")]
    DuplicateDependency { graph: String, node: String, dependency: String },
    #[error("graph '{graph}': node '{node}' has a labelled edge from '{dependency}', which is not a branch")]
    LabelOnPlainEdge { graph: String, node: String, dependency: String },
    #[error("graph '{graph}' has a cycle: {}", cycle.join(" -> "))]
    Cycle { graph: String, cycle: Vec<String> },
    #[error("graph '{graph}': the output node '{node}' is not a node of the graph")]
    UnknownOutput { graph: String, node: String },
    #[error("graph '{graph}': node '{node}': {reason}")]
    Invalid { graph: String, node: String, reason: String },
}

/// Why a node attempt failed. Recorded in the journal and shown to users, so it carries
/// what a person needs: the error's type, its message and, from Python, the traceback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeError {
    /// The error's type, e.g. `ValueError` or `Timeout`.
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// Whether the retry policy may try again. Invalid output, for instance, is not
    /// retryable: running the same body again would produce it again.
    #[serde(default = "yes")]
    pub retryable: bool,
}

fn yes() -> bool {
    true
}

impl NodeError {
    /// A retryable failure of type `kind`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        NodeError { kind: kind.into(), message: message.into(), traceback: None, retryable: true }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(kind: impl Into<String>, message: impl Into<String>) -> Self {
        NodeError { retryable: false, ..NodeError::new(kind, message) }
    }

    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// What went wrong driving a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("no graph named '{name}' is registered")]
    UnknownGraph { name: String },
    #[error("run '{run_id}' not found")]
    RunNotFound { run_id: String },
    #[error("run '{run_id}' exists with graph '{existing}', not '{requested}': run ids must be unique")]
    RunIdConflict { run_id: String, existing: String, requested: String },
    #[error("run '{run_id}' is {status}; {action} needs a run that is {expected}")]
    InvalidRunState { run_id: String, status: RunStatus, action: &'static str, expected: &'static str },
    #[error("run '{run_id}' is waiting at {waiting:?}, not at '{node}'")]
    NotWaitingAt { run_id: String, node: String, waiting: Vec<String> },
    #[error("run '{run_id}' is waiting at several nodes ({waiting:?}); say which one the value answers")]
    AmbiguousResume { run_id: String, waiting: Vec<String> },
    #[error("run '{run_id}': {reason}")]
    InvalidInput { run_id: String, reason: String },
    #[error("run '{run_id}' graph '{graph}' version {expected} is not the version {found} registered here")]
    VersionMismatch { run_id: String, graph: String, expected: String, found: String },
    #[error("run '{run_id}': the journal is inconsistent with graph '{graph}': {reason}")]
    CorruptJournal { run_id: String, graph: String, reason: String },
    #[error("store: {0}")]
    Store(String),
    /// The store's server cannot be reached, is restarting, or did not answer in time. What
    /// was asked may or may not have been done. A durable engine waits for the store to
    /// come back (up to its `outage_timeout`) rather than fail the run.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another writer appended to the run's journal first: the writer's view is stale.
    #[error(
        "run '{run_id}': the journal holds {found} entries where this writer expected {expected}; another process wrote to the run"
    )]
    Conflict { run_id: String, expected: u64, found: u64 },
    #[error("timed out after {seconds:.3}s waiting for run '{run_id}'")]
    WaitTimeout { run_id: String, seconds: f64 },
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
