//! The journal: a run's durable state as an append-only list of entries.
//!
//! Checkpointing is incremental: completing a node appends one entry the size of its
//! output. Everything else (what is ready, what is done) is derived from graph and
//! journal by [`RunState`](crate::state::RunState).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// Why a node attempt failed. Recorded in the journal and shown to users, so it carries
/// what a person needs: the error's type, its message and, from Python, the traceback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeError {
    /// The error's type, e.g. `ValueError` or `Timeout`.
    pub kind: String,
    /// What went wrong, for people.
    pub message: String,
    /// Where it went wrong, when the body's language has a traceback to give (Python).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// Whether the retry policy may try again. Invalid output, for instance, is not
    /// retryable: running the same body again would produce it again.
    #[serde(default = "yes")]
    pub retryable: bool,
    /// The attempt was given up by the body's process rather than failed by the body: a
    /// Python body that raised `KeyboardInterrupt` (Ctrl-C) or `SystemExit`. Nothing is
    /// recorded for such an attempt: the run stays as it was, resumable
    /// ([`Engine::recover`](crate::Engine::recover)), and whoever waits for it here gets
    /// [`Error::Interrupted`](crate::Error::Interrupted). Never stored.
    #[serde(skip)]
    pub abandoned: bool,
}

fn yes() -> bool {
    true
}

impl NodeError {
    /// A retryable failure of type `kind`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        NodeError { kind: kind.into(), message: message.into(), traceback: None, retryable: true, abandoned: false }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(kind: impl Into<String>, message: impl Into<String>) -> Self {
        NodeError { retryable: false, ..NodeError::new(kind, message) }
    }

    /// What a body replaying a recorded run ([`Engine::replay`](crate::Engine::replay)) fails
    /// with when it asks for step `key`, which the recording does not hold: the code
    /// diverges there, and a replay calls nothing outside. Permanent, of kind
    /// `StepNotRecorded`.
    pub fn not_recorded(node: &str, key: &str) -> Self {
        NodeError::permanent(
            "StepNotRecorded",
            format!(
                "node '{node}' asked for step '{key}', which the recorded run did not take: the code diverges here, \
                 and a replay calls no model or tool"
            ),
        )
    }

    /// An attempt its process gave up (see [`NodeError::abandoned`]): `kind` says why
    /// (`KeyboardInterrupt`, `SystemExit`).
    pub fn abandoned(kind: impl Into<String>, message: impl Into<String>) -> Self {
        NodeError { abandoned: true, ..NodeError::permanent(kind, message) }
    }

    /// The same error with `traceback` attached.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for NodeError {
    /// Any error fails the node (retryably: the node's [`RetryPolicy`](crate::RetryPolicy) decides), its type
    /// the error's type name and its message the error's.
    fn from(error: E) -> NodeError {
        let kind = std::any::type_name::<E>();
        NodeError::new(kind, error.to_string())
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Known but not started yet.
    Pending,
    /// Started, with work outstanding.
    Running,
    /// Paused at one or more human steps; `resume` continues it.
    Waiting,
    /// Every node resolved; the run has its output.
    Completed,
    /// A node failed for good (its last attempt failed, or its error was not retryable);
    /// see [`RunFailure`].
    Failed,
    /// Cancelled by a caller before it finished.
    Cancelled,
}

impl RunStatus {
    /// Completed, failed or cancelled: nothing will change the run any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }

    /// The lower-case name used in serialised runs and messages: `pending`, `running`,
    /// `waiting`, `completed`, `failed` or `cancelled` (also what `Display` writes).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run failed: the node whose last attempt failed, and that attempt's error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFailure {
    /// The node's name.
    pub node: Arc<str>,
    /// For a map node: the index of the element that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    /// The last attempt's error.
    pub error: NodeError,
}

/// One record of a run's journal.
///
/// In every variant, `node` is the node's name and `attempt` counts from 1. `item` is set
/// on the entries of one element of a map node (its index in the list); the map node
/// itself completes, without an entry of its own, once every element has. Serialised
/// with the variant's name in a `type` field.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum JournalEntry {
    /// The first entry of every journal, and only there.
    RunStarted {
        /// The graph's name.
        graph: Arc<str>,
        /// The graph's version ([`Graph::version`](crate::Graph::version)): a run is
        /// continued only by a process that has the same version.
        version: Arc<str>,
        /// The run's input.
        input: Value,
    },
    /// An attempt succeeded.
    NodeCompleted {
        /// The node's name.
        node: Arc<str>,
        /// For a map element: its index.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        /// The attempt that succeeded.
        attempt: u32,
        /// What the body returned.
        output: Value,
    },
    /// An attempt failed; `retry_in_ms` says whether another follows.
    NodeFailed {
        /// The node's name.
        node: Arc<str>,
        /// For a map element: its index.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        /// The attempt that failed.
        attempt: u32,
        /// Why it failed.
        error: NodeError,
        /// Milliseconds until the next attempt; absent when this failure is final.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
    },
    /// The node will not run: none of its incoming edges is active (see
    /// [`crate::state`]).
    NodeSkipped {
        /// The node's name.
        node: Arc<str>,
    },
    /// A body recorded the result of one of its own steps (a model call, a tool call)
    /// under `key`, before finishing: a later attempt of the same node (or map element),
    /// after a crash or a failure, is handed the recorded steps and reuses them instead of
    /// doing them again. Recording changes nothing else in the run.
    StepRecorded {
        /// The node's name.
        node: Arc<str>,
        /// For a map element: its index.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        /// The attempt that recorded the step.
        attempt: u32,
        /// The body's name for the step.
        key: Arc<str>,
        /// The step's result.
        value: Value,
    },
    /// A human node is waiting for a person; `payload` is what they are shown.
    Interrupted {
        /// The human node's name.
        node: Arc<str>,
        /// The attempt that produced the payload.
        attempt: u32,
        /// What the person is shown: the body's return value.
        payload: Value,
    },
    /// A person answered; `value` becomes the node's output.
    Resumed {
        /// The human node's name.
        node: Arc<str>,
        /// The answer.
        value: Value,
    },
    /// The last entry of a finished journal: the run completed, failed or was cancelled.
    RunFinished {
        /// [`RunStatus::Completed`], [`RunStatus::Failed`] or [`RunStatus::Cancelled`].
        status: RunStatus,
        /// The run's output, when it completed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        /// Which node failed and why, when it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<RunFailure>,
    },
    /// A failed run was retried: it runs again from where it failed. The node that failed,
    /// and any attempt its failure cut short, run as their next attempts (with the same
    /// idempotency base, and their retry policies counted afresh); completed nodes keep
    /// their outputs and do not run again. Only after `RunFinished` with
    /// [`RunStatus::Failed`]; the stored entry's time says when.
    RunRetried {
        /// Who retried the run, as the caller named themselves (a user, a tool, a host);
        /// empty when they did not.
        #[serde(default)]
        by: Arc<str>,
    },
    /// The run is a fork of another ([`Engine::fork`](crate::Engine::fork)): it began with
    /// the outputs its parent's journal holds for every node that does not depend on `at`,
    /// and runs from `at`. Recorded once, right after `RunStarted`; it changes nothing in
    /// the run's state.
    RunForked {
        /// The run it was forked from, which is left as it was.
        parent: Arc<str>,
        /// The node it runs from.
        at: Arc<str>,
        /// Who forked it, as they named themselves; empty when they did not.
        #[serde(default)]
        by: Arc<str>,
    },
}

impl JournalEntry {
    /// The node the entry is about, if any.
    pub fn node(&self) -> Option<&Arc<str>> {
        match self {
            JournalEntry::NodeCompleted { node, .. }
            | JournalEntry::NodeFailed { node, .. }
            | JournalEntry::NodeSkipped { node }
            | JournalEntry::StepRecorded { node, .. }
            | JournalEntry::Interrupted { node, .. }
            | JournalEntry::Resumed { node, .. } => Some(node),
            JournalEntry::RunStarted { .. }
            | JournalEntry::RunFinished { .. }
            | JournalEntry::RunRetried { .. }
            | JournalEntry::RunForked { .. } => None,
        }
    }
}

/// What watchers of a run see: journal entries as they are recorded, plus the moments
/// a node attempt starts (which the journal does not need).
#[derive(Clone, Debug)]
pub enum EventKind {
    /// An entry recorded in the run's journal.
    Journal(JournalEntry),
    /// An attempt's body is about to be called. Not journaled: only watchers connected
    /// while it happens see it.
    NodeStarted {
        /// The node's name.
        node: Arc<str>,
        /// For a map element: its index.
        item: Option<u32>,
        /// The attempt, counting from 1.
        attempt: u32,
    },
    /// Something a running body reported (an LLM node's token deltas, say). Not journaled:
    /// only watchers connected while it happens see it.
    NodeProgress {
        /// The node's name.
        node: Arc<str>,
        /// For a map element: its index.
        item: Option<u32>,
        /// The attempt that reported it.
        attempt: u32,
        /// What the body reported ([`NodeHandle::emit`](crate::NodeHandle::emit)).
        data: Value,
    },
}

/// One event of a run. Journal events carry their position in the journal as `seq`
/// (0, 1, 2, ... without gaps, so a watcher can tell that it missed nothing);
/// `NodeStarted` and `NodeProgress`, which the journal does not record, carry the `seq` of
/// the journal event that follows them.
#[derive(Clone, Debug)]
pub struct Event {
    /// The run's id.
    pub run_id: Arc<str>,
    /// The position in the journal, as described above.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
