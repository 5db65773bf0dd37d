//! The engine's side of the handle a running body gets on its run ([`NodeHandle`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::body::{NodeHandle, RunAccess};
use crate::error::{Error, Result};
use crate::journal::JournalEntry;
use crate::limits;
use crate::state::Task;
use crate::value::Value;

use super::Inner;
use super::durable::StepError;
use super::run::LiveRun;

/// A run as its bodies' [`NodeHandle`]s reach it: the handles' engine side, made once per run
/// and shared by its attempts. It refers to the run weakly, so a body that outlives its run
/// holds nothing up.
pub(super) struct RunSide {
    inner: Weak<Inner>,
    run: Weak<LiveRun>,
    run_id: Arc<str>,
}

impl RunSide {
    /// The handle on `run` for `task`'s attempt.
    pub(super) fn handle(inner: &Arc<Inner>, run: &Arc<LiveRun>, task: &Task) -> NodeHandle {
        let side = run.access.get_or_init(|| {
            Arc::new(RunSide {
                inner: Arc::downgrade(inner),
                run: Arc::downgrade(run),
                run_id: Arc::clone(&run.run_id),
            })
        });
        NodeHandle::new(Arc::clone(side) as Arc<dyn RunAccess>, Task { delay: None, ..task.clone() })
    }
}

impl RunAccess for RunSide {
    fn run_id(&self) -> &str {
        &self.run_id
    }

    fn may_start(&self, task: &Task) -> bool {
        let (Some(inner), Some(run)) = (self.inner.upgrade(), self.run.upgrade()) else { return false };
        inner.may_start(&run, task)
    }

    fn may_start_now(&self) -> Option<bool> {
        let (Some(inner), Some(run)) = (self.inner.upgrade(), self.run.upgrade()) else { return Some(false) };
        if run.followed.load(Ordering::Acquire) {
            return Some(false);
        }
        match &inner.clock {
            None => Some(true),
            Some(clock) => clock.fresh(run.confirmed.load(Ordering::Acquire)).then_some(true),
        }
    }

    fn durable(&self) -> bool {
        self.inner.upgrade().is_some_and(|inner| inner.config.store.is_some())
    }

    fn emit(&self, task: &Task, data: Value) {
        if let Some(run) = self.run.upgrade() {
            run.progress(task, data);
        }
    }

    fn record(&self, task: &Task, key: &str, value: Value) -> Result<()> {
        let (Some(inner), Some(run)) = (self.inner.upgrade(), self.run.upgrade()) else {
            return Err(Error::ShuttingDown);
        };
        let node = Arc::clone(run.workflow.name(task.node));
        let invalid = |reason: String| Error::InvalidInput { run_id: run.run_id.to_string(), reason };
        limits::check_name("step key", key).map_err(|reason| invalid(format!("node '{node}': {reason}")))?;
        let value = inner
            .accept(value)
            .and_then(|value| inner.fits_in_a_write(&value).map(|()| value))
            .map_err(|reason| invalid(format!("step '{key}' of node '{node}' cannot be stored: {reason}")))?;
        let entry = JournalEntry::StepRecorded {
            node: Arc::clone(&node),
            item: task.item,
            attempt: task.attempt,
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
