//! A run wherever it lives: [`Engine::open_run`] and the [`RunHandle`] callers hold. A
//! handle waits for its run, streams its events, answers it and cancels it, whether this
//! engine executes the run, follows it from the store, or has already forgotten it (a
//! finished run past [`EngineConfig::retain_finished`]).
//!
//! Every interface reaches a run that it did not just start this way (the Python bindings'
//! `Run`, [`crate::Flow`], the gRPC server), so that "load the run, or follow it from the
//! store, first" is written once, here.
//!
//! [`EngineConfig::retain_finished`]: super::EngineConfig::retain_finished

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::body::{Attachment, Workflow};
use crate::error::{Error, Result};
use crate::journal::Event;
use crate::store::RunRecord;
use crate::value::Value;

use super::recovery::check_graph;
use super::run::LiveRun;
use super::{Engine, Inner, RunSnapshot, WatchUntil};

impl Engine {
    /// A handle on the run `run_id` of `workflow`, wherever it lives: a run this engine
    /// holds, as it is; in a durable engine, a run only the store knows (executed by a
    /// worker or another process, waiting for a person, or stopped with its process) is
    /// loaded and followed from the store without being taken over, so that waiting for
    /// it, watching it, answering it and cancelling it work from here.
    ///
    /// # Errors
    ///
    /// - [`Error::RunNotFound`] if neither this engine nor its store knows the run.
    /// - [`Error::RunIdConflict`] if the stored run belongs to another graph, and
    ///   [`Error::VersionMismatch`] if it was started with another version of it.
    /// - [`Error::CorruptJournal`] if its journal does not replay over the graph.
    /// - The store's errors, once an outage has lasted
    ///   [`EngineConfig::outage_timeout`](super::EngineConfig::outage_timeout).
    pub fn open_run(&self, workflow: &Workflow, run_id: &str) -> Result<RunHandle> {
        let run = self.open_run_of(run_id, |_| Some(workflow.clone()))?;
        // A run loaded from the store was checked against `workflow` as it was read; one
        // held already is checked here, by the same rule.
        let held = run.workflow().graph();
        check_graph(run_id, held.name(), held.version(), workflow.graph())?;
        Ok(run)
    }

    /// [`Engine::open_run`] for a caller that knows its graphs by name and version (a
    /// server of several): a run only the store knows is loaded with the workflow `pick`
    /// gives for its record, and refused with [`Error::UnknownGraph`] if it gives none.
    ///
    /// # Errors
    ///
    /// As for [`Engine::open_run`].
    pub fn open_run_of(&self, run_id: &str, pick: impl FnOnce(&RunRecord) -> Option<Workflow>) -> Result<RunHandle> {
        self.inner.check_open()?;
        self.inner.open(run_id, pick).map(|run| self.inner.handle_of(run))
    }

    /// [`Engine::open_run`], by its earlier name.
    ///
    /// # Errors
    ///
    /// As for [`Engine::open_run`].
    pub fn follow(&self, workflow: &Workflow, run_id: &str) -> Result<RunHandle> {
        self.open_run(workflow, run_id)
    }
}

impl Inner {
    /// [`Engine::open_run`].
    pub(super) fn open(
        self: &Arc<Self>,
        run_id: &str,
        pick: impl FnOnce(&RunRecord) -> Option<Workflow>,
    ) -> Result<Arc<LiveRun>> {
        let (run, loaded) = self.load_run(run_id, pick, None)?;
        if loaded && !run.status().is_terminal() {
            self.follow(&run);
        } else if !loaded {
            self.refresh(&run);
        }
        Ok(run)
    }
}

/// A started run. Waiting through the handle cannot miss the run's end, even when the
/// engine has already forgotten the run (finished runs are retained only up to a limit).
#[derive(Clone)]
pub struct RunHandle {
    pub(super) run: Arc<LiveRun>,
    /// The engine, to read the run from its store when another process may have moved it.
    pub(super) engine: Weak<Inner>,
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> &Arc<str> {
        &self.run.run_id
    }

    /// The run's graph and its bodies.
    pub fn workflow(&self) -> &Workflow {
        &self.run.workflow
    }

    /// The engine, unless it was closed or dropped.
    pub(super) fn engine(&self) -> Result<Arc<Inner>> {
        self.engine.upgrade().filter(|engine| !engine.is_closed()).ok_or(Error::Closed)
    }

    /// The run as the engine holds it now (a run failed by its store and read again is a
    /// new one), or the handle's own once the engine has forgotten it.
    fn held(&self, engine: &Inner) -> Arc<LiveRun> {
        engine.live(&self.run.run_id).unwrap_or_else(|_| Arc::clone(&self.run))
    }

    /// The run's events so far, then live ones until `until`, when the channel closes. A
    /// watch to the end of a run this engine does not execute follows the run from the
    /// store while it lasts, so that the watcher sees what other processes record.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the engine is closed.
    pub fn events(&self, until: WatchUntil) -> Result<mpsc::UnboundedReceiver<Event>> {
        let engine = self.engine()?;
        Ok(engine.watch(&self.held(&engine), until))
    }

    /// Answers the human step `node` (`None`: the one the run waits at) with `value`, which
    /// becomes the node's output, and returns a handle to wait for the run to settle again.
    /// `attachment`, when given, replaces the run's attachment for the calls that follow.
    ///
    /// In an engine that executes runs, what follows the answer runs here: a run followed
    /// from the store is taken over first, as [`Engine::recover`] would. An engine that
    /// only submits ([`EngineConfig::execute`](super::EngineConfig::execute) off) records
    /// the answer and leaves the rest to the workers.
    ///
    /// # Errors
    ///
    /// As for [`Engine::resume`] and [`Engine::recover`].
    pub fn resume(&self, node: Option<&str>, value: Value, attachment: Option<Attachment>) -> Result<RunHandle> {
        let engine = self.engine()?;
        // Recovering sets the attachment already.
        engine.recover(&self.run.workflow, &self.run.run_id, attachment)?;
        engine.resume(&self.run.run_id, node, value, None).map(|run| engine.handle_of(run))
    }

    /// Continues the run if it stopped (its process died, or this engine gave an attempt
    /// up), as [`Engine::recover`] does, and returns a handle to wait for it on.
    ///
    /// # Errors
    ///
    /// As for [`Engine::recover`].
    pub fn recover(&self, attachment: Option<Attachment>) -> Result<RunHandle> {
        let engine = self.engine()?;
        engine.recover(&self.run.workflow, &self.run.run_id, attachment).map(|run| engine.handle_of(run))
    }

    /// Cancels the run, as [`Engine::cancel`] does.
    ///
    /// # Errors
    ///
    /// As for [`Engine::cancel`].
    pub fn cancel(&self) -> Result<()> {
        self.engine()?.cancel(&self.run.run_id)
    }

    /// Waits until the run is settled (waiting for a person, or finished) or `timeout`
    /// passes, and returns its state then. A run that is settled already returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::WaitTimeout`] if `timeout` passes first; the run goes on.
    pub async fn wait(&self, timeout: Option<Duration>) -> Result<RunSnapshot> {
        // A run this engine does not execute (waiting for a person, or executed elsewhere)
        // may have moved on in another process: read what is new first.
        if let Some(engine) = self.engine.upgrade()
            && engine.may_be_stale(&self.run)
        {
            let run = Arc::clone(&self.run);
            engine.off_workers(move |engine| engine.refresh(&run)).await;
        }
        let settled = self.run.settled();
        match timeout {
            Some(limit) => {
                if tokio::time::timeout(limit, settled).await.is_err() {
                    return Err(self.timed_out(limit).await);
                }
            }
            None => {
                let _ = settled.await;
            }
        }
        match self.run.interruption() {
            Some(interrupted) => Err(interrupted),
            None => Ok(self.run.snapshot()),
        }
    }

    /// Calls `hook` once with what [`RunHandle::wait`] (without a timeout) returns: at once,
    /// on this thread, if the run is settled; otherwise on the thread that settles it, within
    /// the step that did, which may be a runtime worker and may hold the run's lock. So a hook
    /// only passes the news on (a send on a channel, a byte to wake an event loop), quickly,
    /// and never blocks or calls the engine. This spares a waiter the wake-ups of a task that
    /// waits: the Python binding settles `arun`'s futures so. A run another process may move
    /// on (one this engine follows, or waits for a person in a durable engine) is waited for
    /// as [`RunHandle::wait`] does, by a task on the runtime that then calls `hook`.
    pub fn on_settled(&self, hook: impl FnOnce(Result<RunSnapshot>) + Send + 'static) {
        if let Some(engine) = self.engine.upgrade()
            && engine.may_be_stale(&self.run)
        {
            let handle = self.clone();
            engine.runtime.spawn(async move { hook(handle.wait(None).await) });
            return;
        }
        self.run.on_settled(Box::new(hook));
    }

    /// The run's state now.
    pub fn snapshot(&self) -> RunSnapshot {
        self.run.snapshot()
    }

    /// The error of a wait that timed out: it says why nothing happened when a run
    /// submitted for workers was never taken up because no worker registered its graph's
    /// version (the store knows the registrations).
    pub(super) async fn timed_out(&self, limit: Duration) -> Error {
        let mut detail = String::new();
        if let Some(engine) = self.engine.upgrade()
            && self.run.followed.load(Ordering::Acquire)
        {
            let graph = self.run.workflow.graph();
            let (name, version) = (graph.name().to_owned(), graph.version().to_owned());
            let graphs =
                engine.off_workers(|engine| engine.config.store.as_ref().map(|s| engine.block_on(s.graphs()))).await;
            if let Some(Ok(graphs)) = graphs
                && !graphs.iter().any(|g| g.worker && g.name == name && g.version == version)
            {
                let others: Vec<&str> =
                    graphs.iter().filter(|g| g.worker && g.name == name).map(|g| g.version.as_str()).collect();
                detail = format!(
                    "; no worker registered graph '{name}' version {version} in this context, so no worker runs it{}. \
                     Start one with this version of the graph (`ferroflow worker MODULE:GRAPH --context ...`)",
                    if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (workers registered versions {})", others.join(", "))
                    }
                );
            }
        }
        Error::WaitTimeout { run_id: self.run.run_id.to_string(), seconds: limit.as_secs_f64(), detail }
    }
}
