//! Operations on runs the engine is asked about by id: inspection (snapshots, node states,
//! journals, listings), resume, cancel and watch. Each works on a run held in memory or,
//! where it can, one only the store has.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::body::Attachment;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::journal::{Event, JournalEntry, RunStatus, now_ms};
use crate::state::{Rejected, RunState};
use crate::store::{GraphRecord, RunCursor, RunPage, RunQuery, RunRecord, Step, StoredEntry};
use crate::value::Value;

use super::durable::StepError;
use super::run::{LiveRun, node_reports};
use super::run_handle::RunHandle;
use super::{Engine, Inner, NodeReport, RunSnapshot, WatchUntil, already_cancelled, check_run_id};

impl Engine {
    /// Waits until the run is settled (waiting for a person, or finished) or `timeout`
    /// passes; the same as [`RunHandle::wait`] on [`Engine::handle`].
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if this engine does not hold the run, and
    /// [`Error::WaitTimeout`] if `timeout` passes first.
    pub async fn wait(&self, run_id: &str, timeout: Option<Duration>) -> Result<RunSnapshot> {
        self.handle(run_id)?.wait(timeout).await
    }

    /// A handle on a run this engine holds in memory.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if it holds no such run; a run only the store knows needs
    /// [`Engine::follow`] or [`Engine::recover`].
    pub fn handle(&self, run_id: &str) -> Result<RunHandle> {
        self.inner.check_open()?;
        self.inner.live(run_id).map(|run| self.inner.handle_of(run))
    }

    /// The run's current state.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if this engine does not hold the run in memory.
    pub fn snapshot(&self, run_id: &str) -> Result<RunSnapshot> {
        self.inner.check_open()?;
        Ok(self.current(run_id)?.snapshot())
    }

    /// A run this engine holds, brought up to date with the store if another process may
    /// have moved it on ([`Inner::refresh`]).
    pub(super) fn current(&self, run_id: &str) -> Result<Arc<LiveRun>> {
        let run = self.inner.live(run_id)?;
        self.inner.refresh(&run);
        Ok(run)
    }

    /// Per-node state of the run, in topological order: of a run this engine holds, or, in
    /// a durable engine, of a run only the store knows, derived from its journal over the
    /// graph's structure as the store records it (every durable engine that starts a run
    /// records its graph's structure, and every worker its graphs'), by the same function
    /// in either case.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if neither this engine nor its store knows the run,
    /// [`Error::UnknownGraph`] if the store has no structure for the run's graph version
    /// (a run written by a version of ferroflow that did not record it), and the store's
    /// errors.
    pub fn nodes(&self, run_id: &str) -> Result<Vec<NodeReport>> {
        self.inner.check_open()?;
        if let Ok(run) = self.current(run_id) {
            return Ok(run.node_reports());
        }
        let (record, journal) = self.inner.stored(run_id)?;
        let graph = self.registered_graph(&record.graph, &record.version)?;
        let entries: Vec<JournalEntry> = journal.iter().map(|stored| stored.entry.clone()).collect();
        let state = RunState::replay(Arc::clone(&graph), &entries).map_err(|reason| Error::CorruptJournal {
            run_id: run_id.to_owned(),
            graph: record.graph.clone(),
            reason,
        })?;
        Ok(node_reports(&graph, &state, &journal))
    }

    /// The graph `name` at `version` as the store records its structure.
    pub(super) fn registered_graph(&self, name: &str, version: &str) -> Result<Arc<Graph>> {
        let unknown = || Error::UnknownGraph { name: name.to_owned(), version: Some(version.to_owned()) };
        let record = self.graphs()?.into_iter().find(|g| g.name == name && g.version == version).ok_or_else(unknown)?;
        let spec = crate::graph::GraphSpec::from_json(&record.spec).map_err(|e| {
            Error::Store(format!(
                "graph '{name}' version {version} is recorded with a structure that cannot be read: {e}"
            ))
        })?;
        Ok(Arc::new(spec.build()?))
    }

    /// The run's journal so far: from memory if this engine holds the run, else from the
    /// store.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if neither knows the run, and the store's errors.
    pub fn journal(&self, run_id: &str) -> Result<Vec<StoredEntry>> {
        self.inner.check_open()?;
        if let Ok(run) = self.current(run_id) {
            return Ok(run.lock().journal.clone());
        }
        self.inner.stored(run_id).map(|(_, journal)| journal)
    }

    /// The run's record and journal, without taking the run over: from the store in a
    /// durable engine (what every process sees), from memory otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if there is no such run there, and the store's errors.
    pub fn load(&self, run_id: &str) -> Result<(RunRecord, Vec<StoredEntry>)> {
        self.inner.check_open()?;
        if self.inner.config.store.is_some() {
            return self.inner.stored(run_id);
        }
        let run = self.inner.live(run_id)?;
        let core = run.lock();
        let record = run.run_record(&core).ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
        Ok((record, core.journal.clone()))
    }

    /// The graphs workers registered in the engine's store ([`Engine::work`] registers its
    /// own), by name, newest first; none without a store.
    ///
    /// # Errors
    ///
    /// The store's errors.
    pub fn graphs(&self) -> Result<Vec<GraphRecord>> {
        self.inner.check_open()?;
        match &self.inner.config.store {
            Some(store) => self.inner.block_on(store.graphs()),
            None => Ok(Vec::new()),
        }
    }

    /// One page of the runs matching `query`, newest first ([`JournalStore::list_runs`]):
    /// from the store in a durable engine, from memory otherwise.
    ///
    /// In memory, runs are ordered by the time of their first journal entry, then by the
    /// order this engine took them on (newest first), which is the cursor's `order`;
    /// paging follows the store's rules, over the runs the engine holds when each page is
    /// read.
    ///
    /// # Errors
    ///
    /// The store's errors; none without a store.
    ///
    /// [`JournalStore::list_runs`]: crate::store::JournalStore::list_runs
    pub fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        self.inner.check_open()?;
        if let Some(store) = &self.inner.config.store {
            return self.inner.block_on(store.list_runs(query));
        }
        if query.limit == 0 {
            return Ok(RunPage::default());
        }
        let live: Vec<Arc<LiveRun>> = self.inner.runs.lock().expect("run table lock").runs.values().cloned().collect();
        let mut matching: Vec<(RunCursor, RunRecord)> = live
            .iter()
            .filter_map(|run| {
                let record = run.run_record(&run.lock())?;
                let at = RunCursor { created_ms: record.created_ms, order: run.created };
                query.admits(&record, at).then_some((at, record))
            })
            .collect();
        matching.sort_by(|(a, _), (b, _)| b.created_ms.cmp(&a.created_ms).then(b.order.cmp(&a.order)));
        Ok(RunPage::of(matching, query.limit))
    }

    /// Ids of the runs held in memory, oldest first.
    pub fn run_ids(&self) -> Vec<Arc<str>> {
        let mut runs: Vec<(u64, Arc<str>)> = self
            .inner
            .runs
            .lock()
            .expect("run table lock")
            .runs
            .values()
            .map(|r| (r.created, Arc::clone(&r.run_id)))
            .collect();
        runs.sort();
        runs.into_iter().map(|(_, id)| id).collect()
    }

    /// Answers a human node: `value` becomes its output and the run continues. `node` may
    /// be left out when exactly one node is waiting. `attachment`, when given, replaces the
    /// run's attachment for the calls that follow.
    ///
    /// # Errors
    ///
    /// - [`Error::RunNotFound`] if this engine does not hold the run in memory.
    /// - [`Error::InvalidRunState`] if the run waits for nobody.
    /// - [`Error::NotWaitingAt`] if `node` is not waiting, and
    ///   [`Error::AmbiguousResume`] if `node` is `None` and several nodes are.
    /// - [`Error::InvalidInput`] if a durable engine cannot convert `value` to JSON.
    /// - In a durable engine, the store's errors while catching up with the journal.
    pub fn resume(
        &self,
        run_id: &str,
        node: Option<&str>,
        value: Value,
        attachment: Option<Attachment>,
    ) -> Result<RunHandle> {
        self.inner.check_open()?;
        self.inner.resume(run_id, node, value, attachment).map(|run| self.inner.handle_of(run))
    }

    /// Cancels a run: it is marked cancelled at once, async bodies in flight are
    /// cancelled, and results still arriving are dropped. Cancelling a cancelled run does
    /// nothing. In a durable engine, a run only the store holds is cancelled in the store;
    /// a process executing it stops when it next writes to it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRunState`] if the run completed or failed, [`Error::RunNotFound`] if
    /// there is no such run, and the store's errors.
    pub fn cancel(&self, run_id: &str) -> Result<()> {
        self.inner.check_open()?;
        self.inner.cancel(run_id)
    }

    /// The run's events so far, then live ones until `until`; the channel closes then.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if this engine does not hold the run in memory.
    ///
    /// A watch until the end of a run this engine does not execute (one that waits for a
    /// person, in a durable engine) follows the run from the store while it lasts, so that
    /// the watcher sees what other processes record.
    pub fn watch(&self, run_id: &str, until: WatchUntil) -> Result<mpsc::UnboundedReceiver<Event>> {
        self.inner.check_open()?;
        let run = self.inner.live(run_id)?;
        Ok(self.inner.watch(&run, until))
    }
}

impl Inner {
    /// The run's record and journal from the store, without taking the run over.
    pub(super) fn stored(&self, run_id: &str) -> Result<(RunRecord, Vec<StoredEntry>)> {
        check_run_id(run_id)?;
        let not_found = || Error::RunNotFound { run_id: run_id.to_owned() };
        let store = self.config.store.as_ref().ok_or_else(not_found)?;
        self.block_on(store.load(run_id))?.ok_or_else(not_found)
    }

    /// [`Engine::resume`].
    pub(super) fn resume(
        self: &Arc<Self>,
        run_id: &str,
        node: Option<&str>,
        value: Value,
        attachment: Option<Attachment>,
    ) -> Result<Arc<LiveRun>> {
        let run = self.live(run_id)?;
        let ready = {
            let mut core = run.lock();
            // The person may have answered through another process already.
            self.catch_up(&run, &mut core, false)?;
            let waiting: Vec<String> =
                core.state.waiting().map(|(id, _)| run.workflow.graph().node(id).name.clone()).collect();
            if waiting.is_empty() {
                return Err(Error::InvalidRunState {
                    run_id: run_id.to_owned(),
                    status: core.state.status(),
                    action: "resume",
                    expected: "waiting",
                });
            }
            let node = match node {
                Some(node) if waiting.iter().any(|w| w == node) => node.to_owned(),
                Some(node) => {
                    return Err(Error::NotWaitingAt { run_id: run_id.to_owned(), node: node.to_owned(), waiting });
                }
                None if waiting.len() == 1 => waiting[0].clone(),
                None => {
                    return Err(Error::AmbiguousResume { run_id: run_id.to_owned(), waiting });
                }
            };
            if attachment.is_some() {
                core.attachment = attachment;
            }
            let value = self.accept(value).and_then(|value| self.fits_in_a_write(&value).map(|()| value));
            let value = value.map_err(|reason| Error::InvalidInput {
                run_id: run_id.to_owned(),
                reason: format!("the answer for node '{node}' cannot be stored: {reason}"),
            })?;
            let entry = JournalEntry::Resumed { node: node.as_str().into(), value };
            match self.step(&run, &mut core, entry, &[]) {
                Ok(ready) => run.prepare(&core, ready),
                Err(StepError::Rejected(rejected)) => {
                    return Err(Error::InvalidRunState {
                        run_id: run_id.to_owned(),
                        status: core.state.status(),
                        action: "resume",
                        expected: if matches!(rejected, Rejected::Stale) { "waiting" } else { "consistent" },
                    });
                }
                Err(StepError::TooLarge(error)) => {
                    return Err(Error::InvalidInput {
                        run_id: run_id.to_owned(),
                        reason: format!("the answer for node '{node}' cannot be stored: {error}"),
                    });
                }
                Err(StepError::Failed) => Vec::new(),
            }
        };
        self.after_change(&run);
        self.dispatch(&run, ready);
        Ok(run)
    }

    /// [`Engine::cancel`].
    pub(super) fn cancel(&self, run_id: &str) -> Result<()> {
        let run = match self.live(run_id) {
            Ok(run) => run,
            Err(not_here) if self.config.store.is_none() => return Err(not_here),
            Err(_) => return self.cancel_stored(run_id),
        };
        {
            let mut core = run.lock();
            self.catch_up(&run, &mut core, false)?;
            if already_cancelled(run_id, core.state.status())? {
                return Ok(());
            }
            let entry = JournalEntry::RunFinished { status: RunStatus::Cancelled, output: None, failure: None };
            if let Err(StepError::Rejected(_)) = self.step(&run, &mut core, entry, &[]) {
                // Another process finished the run meanwhile.
                already_cancelled(run_id, core.state.status())?;
            }
        }
        run.cancel.cancel();
        self.after_change(&run);
        Ok(())
    }

    /// Cancels a run that only the store holds: a `RunFinished` entry is appended to its
    /// journal. A process still executing the run finds the journal moved on when it next
    /// writes, and stops.
    pub(super) fn cancel_stored(&self, run_id: &str) -> Result<()> {
        loop {
            let (record, journal) = self.stored(run_id)?;
            if already_cancelled(run_id, record.status)? {
                return Ok(());
            }
            let entry = JournalEntry::RunFinished { status: RunStatus::Cancelled, output: None, failure: None };
            let stored = [StoredEntry { seq: journal.len() as u64, at_ms: now_ms(), entry }];
            let step = Step {
                run_id,
                expected_seq: journal.len() as u64,
                entries: &stored,
                status: RunStatus::Cancelled,
                ready: &[],
                done: &[],
            };
            match self.block_on(self.store().commit(&step, None)) {
                Err(Error::Conflict { .. }) => continue,
                written => return written.map(drop),
            }
        }
    }

    /// What [`Engine::watch`] does, for a run this engine holds.
    pub(super) fn watch(&self, run: &Arc<LiveRun>, until: WatchUntil) -> mpsc::UnboundedReceiver<Event> {
        self.refresh(run);
        let rx = run.watch(until);
        if until == WatchUntil::Finished && self.may_be_stale(run) && !run.status().is_terminal() {
            self.follow(run);
        }
        rx
    }
}
