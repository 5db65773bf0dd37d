//! The journal: a run's durable state as an append-only list of entries.
//!
//! Checkpointing is incremental: completing a node appends one entry the size of its
//! output. Everything else (what is ready, what is done) is derived from graph and
//! journal by [`RunState`](crate::state::RunState).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::NodeError;
use crate::value::Value;

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Known but not started yet.
    Pending,
    Running,
    /// Paused at one or more human steps; `resume` continues it.
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    /// Completed, failed or cancelled: nothing will change the run any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }

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
    pub node: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    pub error: NodeError,
}

/// One record of a run's journal.
///
/// `item` is set on the entries of one element of a map node; the map node itself
/// completes, without an entry of its own, once every element has.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum JournalEntry {
    RunStarted {
        graph: Arc<str>,
        version: Arc<str>,
        input: Value,
    },
    NodeCompleted {
        node: Arc<str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        attempt: u32,
        output: Value,
    },
    NodeFailed {
        node: Arc<str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        attempt: u32,
        error: NodeError,
        /// Milliseconds until the next attempt; absent when this failure is final.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
    },
    NodeSkipped {
        node: Arc<str>,
    },
    /// A body recorded the result of one of its own steps (a model call, a tool call)
    /// under `key`, before finishing: a later attempt of the same node (or map element),
    /// after a crash or a failure, is handed the recorded steps and reuses them instead of
    /// doing them again. Recording changes nothing else in the run.
    StepRecorded {
        node: Arc<str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        attempt: u32,
        key: Arc<str>,
        value: Value,
    },
    /// A human node is waiting for a person; `payload` is what they are shown.
    Interrupted {
        node: Arc<str>,
        attempt: u32,
        payload: Value,
    },
    /// A person answered; `value` becomes the node's output.
    Resumed {
        node: Arc<str>,
        value: Value,
    },
    RunFinished {
        status: RunStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<RunFailure>,
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
            JournalEntry::RunStarted { .. } | JournalEntry::RunFinished { .. } => None,
        }
    }
}

/// What watchers of a run see: journal entries as they are recorded, plus the moments
/// a node attempt starts (which the journal does not need).
#[derive(Clone, Debug)]
pub enum EventKind {
    Journal(JournalEntry),
    NodeStarted {
        node: Arc<str>,
        item: Option<u32>,
        attempt: u32,
    },
    /// Something a running body reported (an LLM node's token deltas, say). Not journaled:
    /// only watchers connected while it happens see it.
    NodeProgress {
        node: Arc<str>,
        item: Option<u32>,
        attempt: u32,
        data: Value,
    },
}

/// One event of a run. Journal events carry their position in the journal as `seq`
/// (0, 1, 2, ... without gaps, so a watcher can tell that it missed nothing);
/// `NodeStarted`, which the journal does not record, carries the `seq` of the journal
/// event that follows it.
#[derive(Clone, Debug)]
pub struct Event {
    pub run_id: Arc<str>,
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: EventKind,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
