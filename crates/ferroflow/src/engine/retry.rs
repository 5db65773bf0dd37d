//! Retrying a failed run from where it failed ([`Engine::retry`]).
//!
//! A retry is one journal entry, [`JournalEntry::RunRetried`], written as a step like any
//! other: the state function puts the failed node back and makes every attempt the failure
//! cut short ready again, as its next attempt; completed nodes keep their outputs. The run
//! keeps its id, so idempotency keys keep their base, and its journal says who retried it
//! and when. What follows runs where any step of the run would: here in an engine that
//! executes runs (it takes the run's hold with the step), on the workers otherwise.

use std::sync::Arc;

use crate::body::{Attachment, Workflow};
use crate::error::{Error, Result};
use crate::journal::{JournalEntry, RunStatus};
use crate::state::Rejected;

use super::durable::StepError;
use super::recovery::check_graph;
use super::run::LiveRun;
use super::{Engine, Inner, RunHandle};

impl Engine {
    /// Retries a failed run from the node that failed: that node runs again as its next
    /// attempt (same idempotency base; its retry policy counts afresh), so do the attempts
    /// its failure cut short, and every completed node keeps its output and does not run
    /// again. Steps a failed attempt recorded (model and tool calls) are handed to the new
    /// one. `by` names who retries, for the journal (may be empty). Returns a handle to wait
    /// for the run to settle again. In a durable engine the run may have failed in any
    /// process; an engine that executes runs runs what follows itself, one that only
    /// submits leaves it to the workers.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRunState`] if the run has not failed (it completed, was cancelled,
    ///   or is running or waiting, perhaps retried already by someone else).
    /// - [`Error::InvalidInput`] if `by` is not a name (too long, or with control characters).
    /// - As for [`Engine::recover`]: [`Error::RunNotFound`], [`Error::RunIdConflict`],
    ///   [`Error::VersionMismatch`], [`Error::CorruptJournal`] and the store's errors.
    pub fn retry(
        &self,
        workflow: &Workflow,
        run_id: &str,
        by: &str,
        attachment: Option<Attachment>,
    ) -> Result<RunHandle> {
        self.inner.check_open()?;
        self.inner.retry(workflow, run_id, by, attachment).map(|run| self.inner.handle_of(run))
    }
}

impl RunHandle {
    /// Retries the run if it failed, as [`Engine::retry`] does.
    ///
    /// # Errors
    ///
    /// As for [`Engine::retry`].
    pub fn retry(&self, by: &str, attachment: Option<Attachment>) -> Result<RunHandle> {
        let engine = self.engine()?;
        let run = engine.retry(self.workflow(), self.id(), by, attachment)?;
        Ok(engine.handle_of(run))
    }
}

impl Inner {
    /// [`Engine::retry`].
    pub(super) fn retry(
        self: &Arc<Self>,
        workflow: &Workflow,
        run_id: &str,
        by: &str,
        attachment: Option<Attachment>,
    ) -> Result<Arc<LiveRun>> {
        if !by.is_empty() {
            crate::limits::check_name("the retrier's name", by)
                .map_err(|reason| Error::InvalidInput { run_id: run_id.to_owned(), reason })?;
        }
        // A hand-back of this run still trying would give away the hold the step takes.
        self.cancel_release(run_id);
        let (run, _) = self.load_run(run_id, |_| Some(workflow.clone()), None)?;
        let held = run.workflow.graph();
        check_graph(run_id, held.name(), held.version(), workflow.graph())?;
        let refused =
            |status| Error::InvalidRunState { run_id: run_id.to_owned(), status, action: "retry", expected: "failed" };
        let ready = {
            let mut core = run.lock();
            // It may have been retried (or even finished) through another process since.
            self.catch_up(&run, &mut core, false)?;
            if core.state.status() != RunStatus::Failed {
                return Err(refused(core.state.status()));
            }
            if attachment.is_some() {
                core.attachment = attachment;
            }
            let entry = JournalEntry::RunRetried { by: Arc::from(by) };
            let ready = match self.step(&run, &mut core, entry, &[]) {
                Ok(ready) => ready,
                Err(StepError::Rejected(Rejected::Stale | Rejected::Inconsistent(_))) => {
                    return Err(refused(core.state.status()));
                }
                Err(StepError::TooLarge(error)) => return Err(error),
                // The run was failed in memory with the store's error, which waiting for it gives.
                Err(StepError::Failed) => Vec::new(),
            };
            run.prepare(&core, ready)
        };
        run.resumed();
        if self.config.store.is_some() && ready.is_empty() && !run.status().is_terminal() {
            // Its tasks went to the queue: the workers run them, and this engine follows.
            self.follow(&run);
        }
        self.after_change(&run);
        self.dispatch(&run, ready);
        Ok(run)
    }
}
