//! The handle a running body gets on its run ([`NodeHandle`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::error::{Error, Result};
use crate::journal::JournalEntry;
use crate::limits;
use crate::state::Task;
use crate::value::Value;

use super::Inner;
use super::durable::StepError;
use super::run::LiveRun;

/// What a running body can do to its run: record the results of its own steps durably,
/// and report progress to the run's watchers. Handed to every body call
/// ([`NodeCall::handle`]); it refers to the run weakly, so a body that outlives its run
/// holds nothing up.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) inner: Weak<Inner>,
    pub(super) run: Weak<LiveRun>,
    pub(super) run_id: Arc<str>,
    pub(super) task: Task,
}

impl NodeHandle {
    pub(super) fn new(inner: &Arc<Inner>, run: &Arc<LiveRun>, task: &Task) -> NodeHandle {
        NodeHandle {
            inner: Arc::downgrade(inner),
            run: Arc::downgrade(run),
            run_id: Arc::clone(&run.run_id),
            task: Task { delay: None, ..task.clone() },
        }
    }

    /// The id of the run the body runs for.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Whether the engine may still start this attempt's body: in a durable engine, that it
    /// still holds the run, as far as its lease tells (see [`crate::lease`]); a run it lost
    /// meanwhile is followed instead. The engine checks before it calls a body; a body that
    /// does work of its own before running the user's code (a binding taking a lock and
    /// building arguments, say) asks again right before, which narrows the moment a paused
    /// process cannot see. Answers at once when [`NodeHandle::may_start_now`] does, and
    /// otherwise asks the store, blocking: call it from a thread that may block.
    pub fn may_start(&self) -> bool {
        let (Some(inner), Some(run)) = (self.inner.upgrade(), self.run.upgrade()) else { return false };
        inner.may_start(&run, &self.task)
    }

    /// [`NodeHandle::may_start`] without asking the store: `Some(true)` when the lease is
    /// known to hold (or the engine has no store), `Some(false)` when the run was lost
    /// already, `None` when only the store can tell.
    pub fn may_start_now(&self) -> Option<bool> {
        let (Some(inner), Some(run)) = (self.inner.upgrade(), self.run.upgrade()) else { return Some(false) };
        if run.followed.load(Ordering::Acquire) {
            return Some(false);
        }
        match &inner.clock {
            None => Some(true),
            Some(clock) => clock.fresh(run.confirmed.load(Ordering::Acquire)).then_some(true),
        }
    }

    /// Whether [`NodeHandle::record`] writes to a store (and may wait for it), rather than
    /// to memory.
    pub fn durable(&self) -> bool {
        self.inner.upgrade().is_some_and(|inner| inner.config.store.is_some())
    }

    /// Reports `data` to whoever watches the run now, as a [`EventKind::NodeProgress`]
    /// event (an LLM node's token deltas, say). It is not journaled.
    pub fn emit(&self, data: Value) {
        if let Some(run) = self.run.upgrade() {
            run.progress(&self.task, data);
        }
    }

    /// Records `value` as the result of the body's step `key` (a model call, a tool call)
    /// in the run's journal, durably in a durable context, before the body goes on: if the
    /// attempt is interrupted (a crash, a failure that is retried), the next attempt gets
    /// it in [`NodeCall::recorded`] and need not do the step again. Fails if the attempt is
    /// no longer current (the run moved on: finished, cancelled, or the attempt timed out),
    /// if the value cannot be stored, or if the store fails.
    pub fn record(&self, key: &str, value: Value) -> Result<()> {
        let (Some(inner), Some(run)) = (self.inner.upgrade(), self.run.upgrade()) else {
            return Err(Error::ShuttingDown);
        };
        let node = Arc::clone(run.workflow.name(self.task.node));
        let invalid = |reason: String| Error::InvalidInput { run_id: run.run_id.to_string(), reason };
        limits::check_name("step key", key).map_err(|reason| invalid(format!("node '{node}': {reason}")))?;
        let value = inner
            .accept(value)
            .and_then(|value| inner.fits_in_a_write(&value).map(|()| value))
            .map_err(|reason| invalid(format!("step '{key}' of node '{node}' cannot be stored: {reason}")))?;
        let entry = JournalEntry::StepRecorded {
            node: Arc::clone(&node),
            item: self.task.item,
            attempt: self.task.attempt,
            key: Arc::from(key),
            value,
        };
        let mut core = run.lock();
        match inner.step(&run, &mut core, entry, &[]) {
            Ok(_) => Ok(()),
            Err(StepError::Rejected(_)) => Err(Error::InvalidRunState {
                run_id: run.run_id.to_string(),
                status: core.state.status(),
                action: "recording a step",
                expected: "still running this attempt of the node",
            }),
            Err(StepError::TooLarge(error)) => Err(Error::InvalidInput {
                run_id: run.run_id.to_string(),
                reason: format!("step '{key}' of node '{node}' cannot be stored: {error}"),
            }),
            Err(StepError::Failed) => Err(Error::Store(format!(
                "run '{}': the step '{key}' of node '{node}' could not be recorded",
                run.run_id
            ))),
        }
    }
}
