//! Recovery and adoption: loading a run from the store, catching up with its journal, and
//! taking on its outstanding tasks (as they are, or recorded as interrupted and run again).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::body::{Attachment, Workflow};
use crate::error::{Error, NodeError, Result};
use crate::graph::Graph;
use crate::journal::{JournalEntry, now_ms};
use crate::state::{RunState, Task};
use crate::store::{Lease, QueuedTask, RunRecord, StoredEntry};

use super::durable::{MAX_CONFLICTS, Written};
use super::run::{LiveRun, Ready, RunCore};
use super::run_handle::RunHandle;
use super::{Engine, Inner, check_run_id};

impl Engine {
    /// Continues a run from the engine's store: its journal is replayed and whatever was
    /// outstanding (running, queued or waiting out a backoff when its process stopped) is
    /// dispatched again. Completed nodes never run again. A run this engine already holds is
    /// returned as it is. Without a store, only runs in memory are known.
    ///
    /// A run this engine failed because its store could not record a step is read from the
    /// store again: the store may work by now (space freed, permissions fixed).
    ///
    /// `attachment`, when given, replaces the run's attachment for the calls that follow.
    ///
    /// # Errors
    ///
    /// - [`Error::RunNotFound`] if neither this engine nor its store knows the run.
    /// - [`Error::RunIdConflict`] if the stored run belongs to another graph, and
    ///   [`Error::VersionMismatch`] if it was started with another version of it.
    /// - [`Error::CorruptJournal`] if its journal does not replay over the graph.
    /// - The store's errors, once an outage has lasted [`EngineConfig::outage_timeout`](crate::EngineConfig::outage_timeout).
    pub fn recover(&self, workflow: &Workflow, run_id: &str, attachment: Option<Attachment>) -> Result<RunHandle> {
        self.inner.check_open()?;
        self.inner.recover(workflow, run_id, attachment).map(|run| self.inner.handle_of(run))
    }
}

impl Inner {
    /// [`Engine::recover`].
    pub(super) fn recover(
        self: &Arc<Self>,
        workflow: &Workflow,
        run_id: &str,
        attachment: Option<Attachment>,
    ) -> Result<Arc<LiveRun>> {
        // A hand-back of this run still trying would give away the hold taken again below.
        self.cancel_release(run_id);
        if let Ok(run) = self.live(run_id)
            && run.store_failed.load(Ordering::Acquire)
        {
            let mut table = self.runs.lock().expect("run table lock");
            if table.runs.get(run_id).is_some_and(|held| Arc::ptr_eq(held, &run)) {
                table.runs.remove(run_id);
            }
        }
        if let Ok(run) = self.live(run_id) {
            let mut core = run.lock();
            if attachment.is_some() {
                core.attachment = attachment;
            }
            drop(core);
            if self.config.execute && !run.status().is_terminal() {
                if self.config.store.is_some() && run.followed.load(Ordering::Acquire) {
                    // Executed elsewhere, handed back, or lost to another engine: take it over.
                    return self.take_over(run, false);
                }
                if self.config.store.is_none() && run.is_interrupted.load(Ordering::Acquire) {
                    return Ok(self.run_abandoned(run));
                }
            }
            return Ok(run);
        }
        self.recover_inner(workflow, run_id, attachment, false)
    }

    /// Runs again, as their next attempts, the attempts this process gave up of a run it
    /// keeps in memory ([`NodeError::abandoned`]); the journal records each as interrupted.
    pub(super) fn run_abandoned(self: &Arc<Self>, run: Arc<LiveRun>) -> Arc<LiveRun> {
        let ready = {
            let mut core = run.lock();
            run.resumed();
            let mut ready = Vec::new();
            for task in std::mem::take(&mut core.abandoned) {
                let entry = JournalEntry::NodeFailed {
                    node: Arc::clone(run.workflow.name(task.node)),
                    item: task.item,
                    attempt: task.attempt,
                    error: NodeError::new("Interrupted", "this process gave the attempt up; it runs again"),
                    retry_in_ms: Some(0),
                };
                if let Ok(next) = self.step(&run, &mut core, entry, &[]) {
                    ready.extend(next.into_iter().map(|t| Task { delay: None, ..t }));
                }
            }
            run.prepare(&core, ready)
        };
        self.after_change(&run);
        self.dispatch(&run, ready);
        run
    }

    /// Takes over a run this engine holds in memory but does not execute (see
    /// [`Engine::recover`]): claims it in the store, catches up with its journal, and runs
    /// what is outstanding, the attempts that may have been running elsewhere as their
    /// next ones.
    pub(super) fn take_over(self: &Arc<Self>, run: Arc<LiveRun>, drive: bool) -> Result<Arc<LiveRun>> {
        self.cancel_release(&run.run_id);
        let store = self.store();
        let (owner, lease) = (&self.owner, self.config.lease);
        let epoch = self.epoch();
        let leases =
            self.patiently(&run.run_id, "taking the run over", || store.claim_run(owner, &run.run_id, lease))?;
        self.executes(&run, epoch);
        run.resumed();
        let ready = {
            let mut core = run.lock();
            self.catch_up(&run, &mut core, false)?;
            self.adopt(&run, &mut core, leases, true)
        };
        self.after_change(&run);
        self.dispatch_or_drive(&run, ready, drive);
        Ok(run)
    }

    pub(super) fn recover_inner(
        self: &Arc<Self>,
        workflow: &Workflow,
        run_id: &str,
        attachment: Option<Attachment>,
        drive: bool,
    ) -> Result<Arc<LiveRun>> {
        self.cancel_release(run_id);
        let (run, loaded) = self.load_run(run_id, |_| Some(workflow.clone()), attachment)?;
        if !loaded {
            return Ok(run);
        }
        if !self.config.execute {
            // The workers execute it (taking it over when its holder stops); follow it.
            self.follow(&run);
            return Ok(run);
        }
        self.take_over(run, drive)
    }
}

impl Inner {
    /// Brings a run up to date with entries other processes wrote to its journal, which
    /// watchers then receive like any other. With `replay`, the state is rebuilt from the
    /// journal even when nothing is new (it may hold entries that were applied but not
    /// written). Does nothing in an engine without a store.
    pub(super) fn catch_up(&self, run: &LiveRun, core: &mut RunCore, replay: bool) -> Result<()> {
        let Some(store) = &self.config.store else { return Ok(()) };
        let seq = core.journal.len() as u64;
        let newer = self.patiently(&run.run_id, "reading the journal", || store.load_since(&run.run_id, seq))?;
        if newer.is_empty() && !replay {
            return Ok(());
        }
        let graph = run.workflow.graph();
        let entries: Vec<JournalEntry> = core.journal.iter().chain(&newer).map(|s| s.entry.clone()).collect();
        core.state = RunState::replay(Arc::clone(graph), &entries).map_err(|reason| Error::CorruptJournal {
            run_id: run.run_id.to_string(),
            graph: graph.name().to_owned(),
            reason,
        })?;
        run.publish(core, newer);
        run.durable.fetch_max(core.journal.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Registers a run started here for workers: it joins the run table and is followed.
    pub(super) fn adopt_followed(&self, run: Arc<LiveRun>) -> Arc<LiveRun> {
        let run = {
            let mut table = self.runs.lock().expect("run table lock");
            match table.runs.get(&run.run_id) {
                Some(existing) => return Arc::clone(existing),
                None => {
                    table.runs.insert(Arc::clone(&run.run_id), Arc::clone(&run));
                    run
                }
            }
        };
        self.follow(&run);
        run
    }

    /// A run this engine holds, or else the run loaded from the store with the workflow
    /// `pick` gives for its record (by its graph's name and version); `true` when it was
    /// loaded. A loaded run is held
    /// from then on; nothing of it is dispatched yet.
    pub(super) fn load_run(
        &self,
        run_id: &str,
        pick: impl FnOnce(&RunRecord) -> Option<Workflow>,
        attachment: Option<Attachment>,
    ) -> Result<(Arc<LiveRun>, bool)> {
        check_run_id(run_id)?;
        if let Ok(run) = self.live(run_id) {
            if !run.store_failed.load(Ordering::Acquire) {
                return Ok((run, false));
            }
            // Failed here because the store could not record a step: read it again.
            let mut table = self.runs.lock().expect("run table lock");
            if table.runs.get(run_id).is_some_and(|held| Arc::ptr_eq(held, &run)) {
                table.runs.remove(run_id);
            }
        }
        let not_found = || Error::RunNotFound { run_id: run_id.to_owned() };
        let store = self.config.store.as_ref().ok_or_else(not_found)?;
        let (record, journal) =
            self.patiently(run_id, "loading the run", || store.load(run_id))?.ok_or_else(not_found)?;
        let workflow =
            pick(&record).ok_or_else(|| Error::UnknownGraph { name: record.graph.clone(), version: None })?;
        let graph = workflow.graph();
        check_graph(run_id, &record.graph, &record.version, graph)?;
        let entries: Vec<JournalEntry> = journal.iter().map(|stored| stored.entry.clone()).collect();
        let state = RunState::replay(Arc::clone(graph), &entries).map_err(|reason| Error::CorruptJournal {
            run_id: run_id.to_owned(),
            graph: graph.name().to_owned(),
            reason,
        })?;
        let run = LiveRun::new(Arc::from(run_id), workflow.clone(), state, journal, attachment);
        let mut table = self.runs.lock().expect("run table lock");
        if let Some(existing) = table.runs.get(run_id) {
            return Ok((Arc::clone(existing), false));
        }
        table.runs.insert(Arc::clone(&run.run_id), Arc::clone(&run));
        Ok((run, true))
    }

    /// Takes on claimed tasks of a run (and, with `all`, every other outstanding task of
    /// it that nobody holds in the queue). A task the journal has moved past is dropped. A
    /// task that cannot have started (never handed out before, or still waiting out its
    /// backoff) runs as it is. One that may have started (its holder died) is recorded as
    /// interrupted and runs again as attempt + 1 with the same idempotency base, so its
    /// body can tell, and the journal shows why. This is not a failure under the retry
    /// policy: execution is at-least-once, and a lost process is not the body's doing.
    pub(super) fn adopt(&self, run: &Arc<LiveRun>, core: &mut RunCore, leases: Vec<Lease>, all: bool) -> Vec<Ready> {
        for _ in 0..MAX_CONFLICTS {
            let now = now_ms();
            let outstanding = core.state.outstanding();
            let mut held = vec![false; outstanding.len()];
            let (mut fresh, mut interrupted, mut done) = (Vec::new(), Vec::new(), Vec::new());
            for lease in &leases {
                let found = outstanding.iter().position(|t| run.queued(t).same_attempt(&lease.task));
                let Some(i) = found else {
                    done.push(lease.task.clone());
                    continue;
                };
                held[i] = true;
                let task = outstanding[i].clone();
                if lease.task.not_before_ms > now {
                    core.from_queue.insert((task.node, task.item, task.attempt));
                    fresh.push(Task { delay: Some(Duration::from_millis(lease.task.not_before_ms - now)), ..task });
                } else if lease.deliveries <= 1 {
                    core.from_queue.insert((task.node, task.item, task.attempt));
                    fresh.push(task);
                } else {
                    interrupted.push(task);
                }
            }
            // Outstanding tasks without a row in the queue: runs written before the queue
            // held every task.
            let mut unqueued = Vec::new();
            if all {
                let missing = outstanding.iter().zip(&held).filter(|(_, held)| !**held).map(|(t, _)| t.clone());
                for task in with_remaining_backoff(missing.collect(), run.workflow.graph(), &core.journal) {
                    if task.delay.is_some() {
                        unqueued.push(task);
                    } else {
                        interrupted.push(task);
                    }
                }
            }
            let mut entries = Vec::new();
            let mut next = unqueued.clone();
            for task in interrupted {
                let entry = JournalEntry::NodeFailed {
                    node: Arc::clone(run.workflow.name(task.node)),
                    item: task.item,
                    attempt: task.attempt,
                    error: NodeError::new(
                        "Interrupted",
                        "the process running this attempt stopped before recording its result; it runs again",
                    ),
                    retry_in_ms: Some(0),
                };
                match core.state.apply(&entry) {
                    Ok(effects) => {
                        done.push(run.queued(&task));
                        entries.push(entry);
                        entries.extend(effects.derived);
                        next.extend(effects.ready.into_iter().map(|t| Task { delay: None, ..t }));
                    }
                    Err(_) => fresh.push(task),
                }
            }
            if entries.is_empty() && next.is_empty() {
                // Only stale leases to drop: acknowledged, not written as a step, which
                // would make this engine hold a run it has nothing to run of.
                self.drop_stale(&run.run_id, &done);
                return run.prepare(core, fresh);
            }
            match self.write(run, core, entries, &next, &done) {
                Written::Yes(held) => {
                    if held {
                        fresh.append(&mut next);
                    }
                    return run.prepare(core, fresh);
                }
                Written::Failed => return Vec::new(),
                // Interruption records are small: only a store failing oddly gets here.
                Written::TooLarge(error) => {
                    self.store_failed(run, core, error);
                    return Vec::new();
                }
                Written::Conflict => {
                    if let Err(error) = self.catch_up(run, core, true) {
                        self.store_failed(run, core, error);
                        return Vec::new();
                    }
                }
            }
        }
        tracing::warn!(run_id = %run.run_id, "not taking the run on: other processes kept writing to it");
        Vec::new()
    }

    /// Acknowledges leased tasks the journal has moved past. One whose lease was lost, or
    /// whose row a repair already removed, needs nothing more.
    pub(super) fn drop_stale(&self, run_id: &str, tasks: &[QueuedTask]) {
        for task in tasks {
            if let Err(error) = self.block_on(self.store().ack(&self.owner, task)) {
                tracing::debug!(run_id = %run_id, task = %task.key(), %error, "a stale task was not acknowledged");
            }
        }
    }
}

/// Gives each outstanding retry the part of its backoff still to wait, from the time and
/// delay its failure recorded: a run recovered mid-backoff does not retry early. A retry
/// whose backoff is over is left as it is: it may have started, and recovery treats it as
/// interrupted.
pub(super) fn with_remaining_backoff(tasks: Vec<Task>, graph: &Graph, journal: &[StoredEntry]) -> Vec<Task> {
    let now = now_ms();
    tasks
        .into_iter()
        .map(|task| {
            let retry_at = journal.iter().rev().find_map(|stored| match &stored.entry {
                JournalEntry::NodeFailed { node, item, attempt, retry_in_ms: Some(ms), .. }
                    if graph.id(node) == Some(task.node) && *item == task.item && attempt + 1 == task.attempt =>
                {
                    Some(stored.at_ms + ms)
                }
                _ => None,
            });
            match retry_at {
                // Still waiting out its backoff, so it cannot have started.
                Some(at) if at > now => Task { delay: Some(Duration::from_millis(at - now)), ..task },
                // Due already: it may have been running when its process stopped.
                _ => task,
            }
        })
        .collect()
}

/// Refuses to take the run `run_id`, of graph `name` at `version`, as a run of `wanted`:
/// [`Error::RunIdConflict`] for another graph, [`Error::VersionMismatch`] for another version
/// of it.
pub(super) fn check_graph(run_id: &str, name: &str, version: &str, wanted: &Graph) -> Result<()> {
    if name != wanted.name() {
        return Err(Error::RunIdConflict {
            run_id: run_id.to_owned(),
            existing: format!("{name}@{version}"),
            requested: format!("{}@{}", wanted.name(), wanted.version()),
        });
    }
    if version != wanted.version() {
        return Err(Error::VersionMismatch {
            run_id: run_id.to_owned(),
            graph: name.to_owned(),
            expected: version.to_owned(),
            found: wanted.version().to_owned(),
        });
    }
    Ok(())
}
