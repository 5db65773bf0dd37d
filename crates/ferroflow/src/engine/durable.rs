//! Durable writes: one step per completed task, written at once ([`Durability::Commit`]) or
//! grouped ([`Durability::Batch`]), with the conflicts, size limits and failures a store
//! can answer with.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::body::Workflow;
use crate::error::{Error, NodeError, Result};
use crate::journal::{JournalEntry, RunStatus, now_ms};
use crate::limits;
use crate::state::{Rejected, RunState, Task};
use crate::store::{DurableStore, GraphRecord, QueuedTask, Step, StoredEntry, holds};
use crate::value::Value;

use super::run::{LiveRun, RunCore};
use super::{Durability, Inner};

/// A step written to memory and waiting for its group commit.
pub(super) struct Pending {
    pub(super) run: Arc<LiveRun>,
    pub(super) expected_seq: u64,
    pub(super) entries: Vec<StoredEntry>,
    pub(super) status: RunStatus,
    pub(super) ready: Vec<QueuedTask>,
    pub(super) done: Vec<QueuedTask>,
}

impl Inner {
    /// Records a graph's structure in the store, once per version and engine: as a worker
    /// that executes it (`worker`), or as the graph of runs this engine starts, so that its
    /// runs can be shown from the store alone ([`DurableStore::register_graph`]). Does
    /// nothing without a store.
    pub(super) fn register(&self, workflow: &Workflow, worker: bool) -> Result<()> {
        let Some(store) = &self.config.store else { return Ok(()) };
        let graph = workflow.graph();
        if !worker && self.registered.lock().expect("registered lock").contains(graph.version()) {
            return Ok(());
        }
        let spec = serde_json::to_string(&graph.spec())
            .map_err(|e| Error::Store(format!("graph '{}' cannot be written as JSON: {e}", graph.name())))?;
        let record = GraphRecord {
            name: graph.name().to_owned(),
            version: graph.version().to_owned(),
            spec,
            registered_ms: now_ms(),
            worker,
        };
        self.patiently(graph.name(), "registering the graph", || store.register_graph(&record))?;
        self.registered.lock().expect("registered lock").insert(Arc::from(graph.version()));
        Ok(())
    }

    /// Commits `step`, riding out an outage ([`Inner::patiently`]), and says whether this
    /// engine holds the run. A commit that failed with the store unavailable may have
    /// landed (`uncertain`: one may have failed so before): if a retry then conflicts and
    /// the journal holds this very step, it did, and whether this engine holds the run (and
    /// so runs the tasks the step made ready, which are not queued otherwise) is asked of
    /// the store.
    pub(super) fn commit(&self, store: &Arc<dyn DurableStore>, step: &Step<'_>, uncertain: bool) -> Result<bool> {
        let attempts = std::cell::Cell::new(0u32);
        let outcome = self.patiently(step.run_id, "writing a step", || {
            attempts.set(attempts.get() + 1);
            store.commit(step, self.holder())
        });
        let conflict = match outcome {
            Err(conflict @ Error::Conflict { .. }) if uncertain || attempts.get() > 1 => conflict,
            other => return other,
        };
        let (run_id, seq) = (step.run_id, step.expected_seq);
        let stored = self.patiently(run_id, "reading the journal", || store.load_since(run_id, seq))?;
        if !begins_with(&stored, step.entries) {
            return Err(conflict);
        }
        tracing::info!(run_id = %run_id, seq, "a step written while the store was unavailable had landed");
        let holder = self.patiently(run_id, "reading who holds the run", || store.holder(run_id))?;
        Ok(self.holder().is_some_and(|(me, _)| holder.as_deref() == Some(me)))
    }

    /// Who holds the tasks this engine makes ready, and for how long.
    pub(super) fn holder(&self) -> Option<(&str, Duration)> {
        self.config.execute.then_some((self.owner.as_str(), self.config.lease))
    }

    /// Applies `entry` to the run and records it with what it implies, writing it first in
    /// a durable engine (with the tasks that became ready, held by this engine, and the
    /// tasks in `done` removed from the queue). If another process wrote to the run
    /// meanwhile, catches up with the journal and tries again. Returns the ready tasks.
    ///
    /// A step larger than the store takes in one write is not written: a node's output (or
    /// a human node's payload) that makes it so fails the node instead, with a permanent
    /// error of kind `ValueTooLarge` naming the limit, and any other entry (a person's
    /// answer, a recorded step) is refused with [`StepError::TooLarge`].
    pub(super) fn step(
        &self,
        run: &Arc<LiveRun>,
        core: &mut RunCore,
        mut entry: JournalEntry,
        done: &[QueuedTask],
    ) -> std::result::Result<Vec<Task>, StepError> {
        for _ in 0..MAX_CONFLICTS {
            let effects = core.state.apply(&entry).map_err(StepError::Rejected)?;
            let entries: Vec<JournalEntry> = std::iter::once(entry.clone()).chain(effects.derived).collect();
            match self.write(run, core, entries, &effects.ready, done) {
                Written::Yes(true) => return Ok(effects.ready),
                Written::Yes(false) => return Ok(Vec::new()),
                Written::Failed => return Err(StepError::Failed),
                Written::Conflict => {
                    if let Err(error) = self.catch_up(run, core, true) {
                        self.store_failed(run, core, error);
                        return Err(StepError::Failed);
                    }
                }
                Written::TooLarge(error) => {
                    // Back to the state the journal gives, without the step.
                    let entries: Vec<JournalEntry> = core.journal.iter().map(|s| s.entry.clone()).collect();
                    match RunState::replay(Arc::clone(run.workflow.graph()), &entries) {
                        Ok(state) => core.state = state,
                        Err(reason) => {
                            let error = Error::CorruptJournal {
                                run_id: run.run_id.to_string(),
                                graph: run.workflow.graph().name().to_owned(),
                                reason,
                            };
                            self.store_failed(run, core, error);
                            return Err(StepError::Failed);
                        }
                    }
                    match too_large_instead(&entry, &error) {
                        Some(failed) => entry = failed,
                        None => return Err(StepError::TooLarge(error)),
                    }
                }
            }
        }
        tracing::warn!(run_id = %run.run_id, "giving up a step: other processes kept writing to the run");
        Err(StepError::Failed)
    }

    /// Records entries already applied to the run's state; in a durable engine, writes
    /// them first, in one step with the tasks they make ready and the tasks they finish.
    /// If the store fails, the run is failed in memory (the store cannot record that
    /// either): nothing that followed from the entries may be dispatched. The store still
    /// holds the run as it was, so recovering it later repeats the lost work.
    pub(super) fn write(
        &self,
        run: &Arc<LiveRun>,
        core: &mut RunCore,
        entries: Vec<JournalEntry>,
        ready: &[Task],
        done: &[QueuedTask],
    ) -> Written {
        let Some(store) = &self.config.store else {
            run.record(core, entries);
            return Written::Yes(true);
        };
        let stored = run.stamp(core, entries);
        let ready: Vec<QueuedTask> = ready.iter().map(|task| run.queued(task)).collect();
        let status = core.state.status();
        let expected_seq = core.journal.len() as u64;
        let written = expected_seq + stored.len() as u64;
        // A retry is written at once in either durability: it takes the hold of a run that
        // had none (it failed), which the steps that follow need.
        let retry = matches!(stored.first(), Some(StoredEntry { entry: JournalEntry::RunRetried { .. }, .. }));
        if let (Durability::Batch { .. }, false) = (self.config.durability, retry) {
            let pending = Pending {
                run: Arc::clone(run),
                expected_seq,
                entries: stored.clone(),
                status,
                ready,
                done: done.to_vec(),
            };
            self.batch.lock().expect("batch lock").push(pending);
            // After the engine closed, nobody commits the group: every step is written at once.
            if holds(status) && !self.is_closed() {
                run.publish(core, stored);
                return Written::Yes(true);
            }
            // A run that settles is durable before anyone learns of it.
            return match self.flush(Some(run)) {
                Ok(()) => {
                    run.publish(core, stored);
                    Written::Yes(true)
                }
                Err(error) => {
                    self.store_failed(run, core, error);
                    Written::Failed
                }
            };
        }
        let step = Step { run_id: &run.run_id, expected_seq, entries: &stored, status, ready: &ready, done };
        let epoch = self.epoch();
        match self.commit(store, &step, false) {
            Ok(held) => {
                if held {
                    self.executes(run, epoch);
                }
                run.durable.store(written, Ordering::Release);
                run.publish(core, stored);
                Written::Yes(held)
            }
            Err(Error::Conflict { .. }) => Written::Conflict,
            Err(error @ Error::ValueTooLarge { .. }) => Written::TooLarge(error),
            Err(error) => {
                self.store_failed(run, core, error);
                Written::Failed
            }
        }
    }

    /// Writes the steps waiting for their group commit, in one write. A run whose step
    /// cannot be written fails in memory, back to what the store holds; for `current`,
    /// whose lock the caller holds, the error is returned instead.
    pub(super) fn flush(&self, current: Option<&Arc<LiveRun>>) -> Result<()> {
        let _flushing = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut *self.batch.lock().expect("batch lock"));
        if pending.is_empty() {
            return Ok(());
        }
        let steps: Vec<Step<'_>> = pending
            .iter()
            .map(|p| Step {
                run_id: &p.run.run_id,
                expected_seq: p.expected_seq,
                entries: &p.entries,
                status: p.status,
                ready: &p.ready,
                done: &p.done,
            })
            .collect();
        let store = self.store();
        let outcomes: Vec<Result<bool>> = match self.block_on(store.commit_batch(&steps, self.holder())) {
            Ok(outcomes) => outcomes,
            Err(error @ Error::Unavailable(_)) => {
                steps.iter().map(|_| Err(Error::Unavailable(error.to_string()))).collect()
            }
            Err(error) => steps.iter().map(|_| Err(Error::Store(error.to_string()))).collect(),
        };
        // Steps the store could not be reached for are written one by one once it is back
        // (each may have landed already).
        let outcomes: Vec<Result<bool>> = outcomes
            .into_iter()
            .zip(&steps)
            .map(|(outcome, step)| match outcome {
                Err(Error::Unavailable(_)) => self.commit(store, step, true),
                other => other,
            })
            .collect();
        drop(steps);
        let mut mine = Ok(());
        for (step, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Ok(_) => {
                    step.run.durable.fetch_max(step.expected_seq + step.entries.len() as u64, Ordering::AcqRel);
                }
                Err(error) if current.is_some_and(|c| Arc::ptr_eq(c, &step.run)) => {
                    if mine.is_ok() {
                        mine = Err(error);
                    }
                }
                Err(error) => {
                    // Its lock may be held by a thread waiting for this very flush.
                    let run = step.run;
                    self.release_failed(&run.run_id);
                    self.runtime.spawn_blocking(move || {
                        let mut core = run.lock();
                        run.fail_from_store(&mut core, error);
                    });
                }
            }
        }
        mine
    }

    /// Fails a run in memory because the store could not record its step (see
    /// [`LiveRun::fail_from_store`]), and hands its hold back for another worker.
    pub(super) fn store_failed(&self, run: &LiveRun, core: &mut RunCore, error: Error) {
        run.fail_from_store(core, error);
        self.release_failed(&run.run_id);
    }

    /// Hands back the hold of a run this engine failed in memory, in the background, trying
    /// until the store answers (for up to [`EngineConfig::outage_timeout`]): its renewals
    /// would otherwise keep the run held, and nobody would continue it. A worker that
    /// claims it (this one included) reads it from the store again.
    ///
    /// The hand-back is remembered until it is done, so that taking the run on again here
    /// ([`Inner::cancel_release`]) first stops it: a hand-back landing after this engine
    /// claimed the run again would give away the new hold.
    pub(super) fn release_failed(&self, run_id: &str) {
        let Some((owner, _)) = self.holder() else { return };
        let (store, owner, key) = (Arc::clone(self.store()), owner.to_owned(), run_id.to_owned());
        let limit = self.config.outage_timeout;
        let mut pending = self.failed_releases.lock().unwrap_or_else(|p| p.into_inner());
        let task = self.runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                match store.release_run(&owner, &key, now_ms()).await {
                    Ok(()) => return,
                    Err(error) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(run_id = %key, %error, "cannot hand back a failed run yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(error) => {
                        tracing::warn!(run_id = %key, %error, "cannot hand back a failed run; its hold stays");
                        return;
                    }
                }
            }
        });
        pending.retain(|_, task| !task.is_finished());
        if let Some(older) = pending.insert(run_id.to_owned(), task) {
            older.abort();
        }
    }

    /// Stops the hand-back of a run this engine failed in memory ([`Inner::release_failed`])
    /// before it takes the run on again, and waits for a store call it has in flight.
    pub(super) fn cancel_release(&self, run_id: &str) {
        let task = self.failed_releases.lock().unwrap_or_else(|p| p.into_inner()).remove(run_id);
        if let Some(task) = task {
            task.abort();
            self.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            });
        }
    }

    /// Whether a node's output fits in one write of a store with a small write limit
    /// ([`DurableStore::max_write_bytes`]), checked before the step is applied when steps
    /// are dispatched before they are written ([`Durability::Batch`]): by the time such a
    /// step failed to be written, its successors would have run. With [`Durability::Commit`]
    /// the store's own refusal is turned into the node's failure instead, at no cost to the
    /// steps that fit.
    pub(super) fn fits(&self, run: &LiveRun, task: &Task, output: &Value) -> std::result::Result<(), NodeError> {
        self.fits_in_a_write(output).map_err(|reason| {
            NodeError::permanent(
                "ValueTooLarge",
                format!("node '{}' returned a value that cannot be stored: {reason}", run.workflow.name(task.node)),
            )
        })
    }

    /// Whether `value` fits in one write of a store with a small write limit, when steps
    /// are written after they are dispatched ([`Durability::Batch`]; see [`Inner::fits`]):
    /// the error says how large it is and what the limit is.
    pub(super) fn fits_in_a_write(&self, value: &Value) -> std::result::Result<(), String> {
        let (Some(store), Durability::Batch { .. }) = (&self.config.store, self.config.durability) else {
            return Ok(());
        };
        let Some(limit) = store.max_write_bytes() else { return Ok(()) };
        // Room for the entry around the value (names, attempt, times).
        const ENVELOPE: usize = 1024;
        let bytes = json_len(value);
        if bytes + ENVELOPE <= limit {
            return Ok(());
        }
        Err(format!(
            "it is {bytes} bytes of JSON, and the store takes at most {limit} bytes per write (a NATS server's \
             max_payload, less room for the entry around the value)"
        ))
    }
}

/// How often a step is tried again when other processes keep writing to the same run.
pub(super) const MAX_CONFLICTS: usize = 16;

/// The outcome of [`Inner::write`].
pub(super) enum Written {
    /// Written; with `true`, this engine holds the run and runs the ready tasks itself,
    /// otherwise they were queued for any worker.
    Yes(bool),
    /// Another process wrote to the run first; nothing was written.
    Conflict,
    /// The step is larger than the store takes in one write ([`Error::ValueTooLarge`]);
    /// nothing was written, and the run's state still has the step applied.
    TooLarge(Error),
    /// The store failed; the run was failed in memory.
    Failed,
}

/// Why [`Inner::step`] recorded nothing.
pub(super) enum StepError {
    Rejected(Rejected),
    /// The step is larger than the store takes ([`Error::ValueTooLarge`]), and the entry is
    /// not one a node's failure can stand for.
    TooLarge(Error),
    /// The store failed (the run was failed in memory), or kept conflicting.
    Failed,
}

/// Writes the steps waiting for their group commit every `window`, for as long as the
/// engine exists.
pub(super) async fn group_commit(inner: Weak<Inner>, window: Duration) {
    let Some(closed) = inner.upgrade().map(|inner| inner.closed.clone()) else { return };
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(window) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        inner.off_workers(|inner| drop(inner.flush(None))).await;
    }
}

/// Whether `stored`, a journal read from the first seq of `entries`, begins with them: the
/// same positions, times and entries.
pub(super) fn begins_with(stored: &[StoredEntry], entries: &[StoredEntry]) -> bool {
    let same = |a: &StoredEntry, b: &StoredEntry| {
        a.seq == b.seq
            && a.at_ms == b.at_ms
            && matches!((serde_json::to_string(&a.entry), serde_json::to_string(&b.entry)), (Ok(x), Ok(y)) if x == y)
    };
    !entries.is_empty() && stored.len() >= entries.len() && stored.iter().zip(entries).all(|(a, b)| same(a, b))
}

/// What to record instead of `entry` when its step is larger than the store takes: a
/// node's output or a human node's payload fails the node, permanently (running the body
/// again would return as much); a failure whose error is that large is recorded with its
/// message and traceback shortened. `None` for anything else.
pub(super) fn too_large_instead(entry: &JournalEntry, error: &Error) -> Option<JournalEntry> {
    let failed = |node: &Arc<str>, item: Option<u32>, attempt: u32, what: &str| JournalEntry::NodeFailed {
        node: Arc::clone(node),
        item,
        attempt,
        error: NodeError::permanent("ValueTooLarge", format!("node '{node}' {what} that cannot be stored: {error}")),
        retry_in_ms: None,
    };
    match entry {
        JournalEntry::NodeCompleted { node, item, attempt, .. } => {
            Some(failed(node, *item, *attempt, "returned a value"))
        }
        JournalEntry::Interrupted { node, attempt, .. } => {
            Some(failed(node, None, *attempt, "asked a person with a payload"))
        }
        JournalEntry::NodeFailed { node, item, attempt, error: cause, retry_in_ms } => {
            const KEEP: usize = 16 * 1024;
            if cause.message.len() <= KEEP && cause.traceback.as_ref().is_none_or(|t| t.len() <= KEEP) {
                return None;
            }
            let error = NodeError {
                message: limits::shorten(&cause.message, KEEP),
                traceback: cause.traceback.as_deref().map(|t| limits::shorten(t, KEEP)),
                ..cause.clone()
            };
            Some(JournalEntry::NodeFailed {
                node: Arc::clone(node),
                item: *item,
                attempt: *attempt,
                error,
                retry_in_ms: *retry_in_ms,
            })
        }
        _ => None,
    }
}

/// How many bytes of JSON `value` is, counted without keeping them.
pub(super) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
