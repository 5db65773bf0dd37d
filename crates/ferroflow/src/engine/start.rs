//! Starting runs: a new run, or one the store already has (recovered, followed or taken
//! over, whichever its state calls for).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use crate::body::Workflow;
use crate::error::{Error, Result};
use crate::journal::{Event, JournalEntry, now_ms};
use crate::state::RunState;
use crate::store::{Created, QueuedTask, RunRecord};
use crate::value::Value;

use super::run::LiveRun;
use super::run_handle::RunHandle;
use super::{Engine, StartOptions, WatchUntil, check_run_id};

impl Engine {
    /// Starts a run of `workflow` on `input` and returns a handle on it at once, without
    /// waiting for any node. Starting an id that exists ([`StartOptions::run_id`]) returns
    /// that run again (recovered from the store if this engine does not hold it), unless
    /// it belongs to another graph or graph version.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidInput`] if the requested run id is empty, or if a durable engine
    ///   cannot convert `input` to JSON.
    /// - [`Error::RunIdConflict`] if the id belongs to a run of another graph or version.
    /// - In a durable engine, the store's errors (an outage is waited out for up to
    ///   [`EngineConfig::outage_timeout`](crate::EngineConfig::outage_timeout) first), and those of [`Engine::recover`] for a
    ///   run the store has already.
    pub fn start(&self, workflow: &Workflow, input: Value, options: StartOptions) -> Result<RunHandle> {
        self.start_inner(workflow, input, options, None, false).map(|(run, _, _)| run)
    }

    /// Like [`Engine::start`], and says whether this call created the run: `false` when a
    /// run with the requested id existed already (in memory or in the store), in which
    /// case the handle is on that run and `input` was not used. Two callers racing to
    /// create the same id get `true` once.
    ///
    /// # Errors
    ///
    /// As for [`Engine::start`].
    pub fn start_or_get(&self, workflow: &Workflow, input: Value, options: StartOptions) -> Result<(RunHandle, bool)> {
        self.start_inner(workflow, input, options, None, false).map(|(run, _, created)| (run, created))
    }

    /// Starts a run and executes its blocking tasks on the calling thread for as long as
    /// a chain of them lasts, returning when none is left for this thread (the rest of the
    /// run goes on elsewhere). A synchronous caller that would block waiting for the run
    /// anyway saves the thread hand-offs. Call it from a thread that may block, never
    /// from an async task.
    ///
    /// # Errors
    ///
    /// As for [`Engine::start`].
    pub fn start_and_drive(&self, workflow: &Workflow, input: Value, options: StartOptions) -> Result<RunHandle> {
        self.start_inner(workflow, input, options, None, true).map(|(run, _, _)| run)
    }

    /// Like [`Engine::start`], and returns the run's events from its first one, until
    /// `until` (see [`Engine::watch`]).
    ///
    /// # Errors
    ///
    /// As for [`Engine::start`].
    pub fn start_watched(
        &self,
        workflow: &Workflow,
        input: Value,
        options: StartOptions,
        until: WatchUntil,
    ) -> Result<(RunHandle, mpsc::UnboundedReceiver<Event>)> {
        self.start_inner(workflow, input, options, Some(until), false)
            .map(|(run, rx, _)| (run, rx.expect("asked for events")))
    }

    pub(super) fn start_inner(
        &self,
        workflow: &Workflow,
        input: Value,
        options: StartOptions,
        until: Option<WatchUntil>,
        drive: bool,
    ) -> Result<(RunHandle, Option<mpsc::UnboundedReceiver<Event>>, bool)> {
        self.inner.check_open()?;
        let run_id: Arc<str> = match options.run_id {
            Some(id) => {
                check_run_id(&id)?;
                id.into()
            }
            None => uuid::Uuid::now_v7().to_string().into(),
        };
        let graph = workflow.graph();
        let table = self.inner.runs.lock().expect("run table lock");
        if let Some(existing) = table.runs.get(&run_id) {
            let existing_graph = existing.workflow.graph();
            if existing_graph.name() != graph.name() || existing_graph.version() != graph.version() {
                return Err(Error::RunIdConflict {
                    run_id: run_id.to_string(),
                    existing: format!("{}@{}", existing_graph.name(), existing_graph.version()),
                    requested: format!("{}@{}", graph.name(), graph.version()),
                });
            }
            let rx = until.map(|u| existing.watch(u));
            return Ok((self.inner.handle_of(Arc::clone(existing)), rx, false));
        }

        drop(table);
        let input = self.inner.accept(input).map_err(|reason| Error::InvalidInput {
            run_id: run_id.to_string(),
            reason: format!("the run input cannot be stored: {reason}"),
        })?;

        let (state, effects) = RunState::start(Arc::clone(graph), input.clone());
        let started = JournalEntry::RunStarted { graph: graph.name().into(), version: graph.version().into(), input };
        let run = LiveRun::new(Arc::clone(&run_id), workflow.clone(), state, Vec::new(), options.attachment.clone());
        let ready = {
            let mut core = run.lock();
            run.record(&mut core, std::iter::once(started).chain(effects.derived));
            run.prepare(&core, effects.ready)
        };
        if let Some(store) = &self.inner.config.store {
            self.inner.register(workflow, false)?;
            let journal = run.lock().journal.clone();
            let queued: Vec<QueuedTask> = ready.iter().map(|r| run.queued(&r.task)).collect();
            let now = journal.first().map_or_else(now_ms, |e| e.at_ms);
            let record = RunRecord {
                run_id: run_id.to_string(),
                graph: graph.name().to_owned(),
                version: graph.version().to_owned(),
                status: run.status(),
                created_ms: now,
                updated_ms: now,
            };
            let holder = if self.inner.config.execute { self.inner.holder() } else { None };
            let epoch = self.inner.epoch();
            let created = self
                .inner
                .patiently(&run_id, "creating the run", || store.create(&record, &journal, &queued, holder))
                .map_err(|error| match error {
                    Error::ValueTooLarge { .. } => Error::InvalidInput {
                        run_id: run_id.to_string(),
                        reason: format!("the run input cannot be stored: {error}"),
                    },
                    error => error,
                })?;
            run.durable.store(journal.len() as u64, Ordering::Release);
            if let Created::Existing { .. } = created {
                // Started before, by this process or another: carry on with that run.
                let run = self.inner.recover(workflow, &run_id, options.attachment)?;
                let rx = until.map(|u| run.watch(u));
                return Ok((self.inner.handle_of(run), rx, false));
            }
            if !self.inner.config.execute {
                // Queued for the workers; this engine follows the run from the store.
                let run = self.inner.adopt_followed(run);
                let rx = until.map(|u| run.watch(u));
                return Ok((self.inner.handle_of(run), rx, true));
            }
            self.inner.confirm(&run, epoch);
        }
        let run = {
            let mut table = self.inner.runs.lock().expect("run table lock");
            match table.runs.get(&run_id) {
                // Another thread recovered this very run meanwhile; it dispatches its tasks.
                Some(existing) => {
                    let rx = until.map(|u| existing.watch(u));
                    return Ok((self.inner.handle_of(Arc::clone(existing)), rx, true));
                }
                None => {
                    table.runs.insert(Arc::clone(&run_id), Arc::clone(&run));
                    run
                }
            }
        };
        let rx = until.map(|u| run.watch(u));
        self.inner.after_change(&run);
        self.inner.dispatch_or_drive(&run, ready, drive);
        Ok((self.inner.handle_of(run), rx, true))
    }
}
