//! A run this engine holds in memory ([`LiveRun`]: its state, journal and watchers, under
//! one lock), and the retention of finished runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::body::{Attachment, Body, NodeCall, Workflow};
use crate::error::{Error, NodeError};
use crate::graph::{Graph, NodeId};
use crate::journal::{Event, EventKind, JournalEntry, RunFailure, RunStatus, now_ms};
use crate::state::{RunState, Task};
use crate::store::{QueuedTask, RunRecord, StoredEntry};
use crate::value::Value;

use super::{Inner, NodeReport, RunSnapshot, WatchUntil};

#[derive(Default)]
pub(super) struct RunTable {
    pub(super) runs: HashMap<Arc<str>, Arc<LiveRun>>,
    /// Finished runs by the order they finished in, for retention.
    pub(super) finished: BTreeMap<u64, Arc<str>>,
}

pub(super) struct LiveRun {
    pub(super) run_id: Arc<str>,
    /// What its bodies' handles reach it through, made at the first attempt
    /// ([`RunSide::handle`](super::handle::RunSide::handle)).
    pub(super) access: OnceLock<Arc<super::handle::RunSide>>,
    pub(super) workflow: Workflow,
    pub(super) core: Mutex<RunCore>,
    /// The run's status, mirrored from its state on every change (under the run lock).
    pub(super) status: AtomicU8,
    /// Woken whenever the run settles (waits for a person, or finishes).
    pub(super) settle: Notify,
    /// Called (and dropped) when the run next settles ([`RunHandle::on_settled`](super::RunHandle::on_settled)).
    pub(super) settle_hooks: Mutex<Vec<SettleHook>>,
    /// Cancelled when the run is: every attempt's token below is a child of it.
    pub(super) cancel: CancellationToken,
    pub(super) has_watchers: AtomicBool,
    pub(super) retired: AtomicBool,
    /// Failed in memory only, because the store could not record a step.
    pub(super) store_failed: AtomicBool,
    /// How many of the journal's entries the store holds.
    pub(super) durable: AtomicU64,
    /// When the run finished, on [`FINISH_ORDER`]; 0 while it has not.
    pub(super) finished_at: AtomicU64,
    /// When this engine took the run on (started or recovered it), on [`CREATION_ORDER`].
    pub(super) created: u64,
    /// The lease epoch in which this engine last knew it held the run, or the leases of the
    /// tasks it runs of it ([`crate::lease`]); 0 if it never did.
    pub(super) confirmed: AtomicU64,
    /// The run is executed elsewhere (or by nobody yet): this engine follows it from the
    /// store, and runs none of its tasks until it takes the run over.
    pub(super) followed: AtomicBool,
    /// The run is in the list of runs polled from the store ([`Inner::follow`]).
    pub(super) polled: AtomicBool,
    /// Set when this process gave up an attempt of the run, until the run is resumed:
    /// waiting for the run then ends with [`Error::Interrupted`].
    pub(super) interrupted: Mutex<Option<Interruption>>,
    /// Whether `interrupted` is set, readable without its lock.
    pub(super) is_interrupted: AtomicBool,
}

/// Orders runs by when they were taken on, for listing.
pub(super) static CREATION_ORDER: AtomicU64 = AtomicU64::new(1);

/// Every status, indexed by its `u8` form (see [`LiveRun::status`]).
pub(super) const STATUSES: [RunStatus; 6] = [
    RunStatus::Pending,
    RunStatus::Running,
    RunStatus::Waiting,
    RunStatus::Completed,
    RunStatus::Failed,
    RunStatus::Cancelled,
];

/// Orders finished runs across threads, so that retention drops the oldest first.
pub(super) static FINISH_ORDER: AtomicU64 = AtomicU64::new(1);

pub(super) struct RunCore {
    pub(super) state: RunState,
    pub(super) journal: Vec<StoredEntry>,
    pub(super) attachment: Option<Attachment>,
    pub(super) watchers: Vec<Watcher>,
    /// Tasks running here that came from a row of the store's queue, which their step must
    /// remove; the others run under the run's hold and have no row.
    pub(super) from_queue: HashSet<(NodeId, Option<u32>, u32)>,
    /// Attempts this process gave up ([`NodeError::abandoned`]), in an engine without a
    /// store: [`Engine::recover`] runs them again. (A durable engine hands the run back to
    /// the store instead, where taking it over finds them.)
    pub(super) abandoned: Vec<Task>,
    /// What the attempts dispatched since the run last started running hold ([`Ready`]):
    /// cancelled when the run fails (nothing it still has in flight can matter any more),
    /// and made anew when a retry runs it again; a child of [`LiveRun::cancel`].
    pub(super) attempts: CancellationToken,
    /// The recorded run this one replays ([`Engine::replay`](super::Engine::replay)), if any.
    pub(super) replay: Option<Box<Replay>>,
}

/// What a replay serves from the recorded run instead of doing it again.
#[derive(Default)]
pub(super) struct Replay {
    /// The steps the recorded run's attempts recorded, by node name and map element.
    pub(super) steps: HashMap<(Arc<str>, Option<u32>), Vec<crate::state::RecordedStep>>,
    /// What people answered its human nodes, by node name.
    pub(super) answers: HashMap<Arc<str>, Value>,
}

/// What [`LiveRun::on_settled`] calls: with the run's snapshot, or the error waiting for it
/// ends with (an attempt given up here).
pub(super) type SettleHook = Box<dyn FnOnce(Result<RunSnapshot, Error>) + Send>;

/// Why a run's attempt was given up here ([`NodeError::abandoned`]).
pub(super) struct Interruption {
    pub(super) node: Arc<str>,
    pub(super) kind: String,
    pub(super) message: String,
}

pub(super) struct Watcher {
    pub(super) tx: mpsc::UnboundedSender<Event>,
    pub(super) until: WatchUntil,
}

/// A task with its call prepared under the run lock.
pub(super) struct Ready {
    pub(super) task: Task,
    pub(super) call: NodeCall,
    /// Cancelled when the attempt cannot matter any more ([`RunCore::attempts`]).
    pub(super) cancel: CancellationToken,
}

impl Inner {
    /// Retires a finished run: it is kept for inspection until `retain_finished` runs
    /// finished after it.
    ///
    /// A run this engine follows that left waiting (answered here, or seen answered) is
    /// polled from the store again, so that waiting for it sees it settle.
    pub(super) fn after_change(&self, run: &Arc<LiveRun>) {
        let status = run.status();
        if matches!(status, RunStatus::Running | RunStatus::Pending)
            && run.followed.load(Ordering::Acquire)
            && !run.polled.load(Ordering::Acquire)
        {
            self.follow(run);
        }
        if !status.is_terminal() && run.retired.load(Ordering::Acquire) && run.retired.swap(false, Ordering::AcqRel) {
            // Retried: off the list of finished runs kept for inspection, so that it is not
            // dropped from memory while it runs, and listed again when it finishes.
            run.finished_at.store(0, Ordering::Release);
            let mut table = self.runs.lock().expect("run table lock");
            table.finished.retain(|_, id| **id != *run.run_id);
        }
        if status.is_terminal() && !run.retired.swap(true, Ordering::AcqRel) {
            let finished_at = run.finished_at.load(Ordering::Acquire);
            let mut table = self.runs.lock().expect("run table lock");
            table.finished.insert(finished_at, Arc::clone(&run.run_id));
            while table.finished.len() > self.config.retain_finished {
                if let Some((_, old)) = table.finished.pop_first() {
                    table.runs.remove(&old);
                }
            }
        }
    }
}

impl LiveRun {
    /// What a store would know of the run, from its journal in memory.
    pub(super) fn run_record(&self, core: &RunCore) -> Option<RunRecord> {
        let (first, last) = (core.journal.first()?, core.journal.last()?);
        let graph = self.workflow.graph();
        Some(RunRecord {
            run_id: self.run_id.to_string(),
            graph: graph.name().to_owned(),
            version: graph.version().to_owned(),
            status: core.state.status(),
            created_ms: first.at_ms,
            updated_ms: last.at_ms,
        })
    }

    pub(super) fn new(
        run_id: Arc<str>,
        workflow: Workflow,
        state: RunState,
        journal: Vec<StoredEntry>,
        attachment: Option<Attachment>,
    ) -> Arc<LiveRun> {
        let status = state.status();
        let durable = journal.len() as u64;
        let cancel = CancellationToken::new();
        let attempts = cancel.child_token();
        Arc::new(LiveRun {
            run_id,
            workflow,
            core: Mutex::new(RunCore {
                state,
                journal,
                attachment,
                watchers: Vec::new(),
                from_queue: HashSet::new(),
                abandoned: Vec::new(),
                attempts,
                replay: None,
            }),
            status: AtomicU8::new(status as u8),
            settle: Notify::new(),
            settle_hooks: Mutex::new(Vec::new()),
            cancel,
            has_watchers: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            store_failed: AtomicBool::new(false),
            durable: AtomicU64::new(durable),
            finished_at: AtomicU64::new(0),
            created: CREATION_ORDER.fetch_add(1, Ordering::Relaxed),
            confirmed: AtomicU64::new(0),
            followed: AtomicBool::new(false),
            polled: AtomicBool::new(false),
            interrupted: Mutex::new(None),
            is_interrupted: AtomicBool::new(false),
            access: OnceLock::new(),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, RunCore> {
        // A panic while holding the lock can only come from a bug in the engine itself;
        // the state it guards is still the last consistent one, so keep serving it.
        self.core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a task runs on a blocking thread that may continue with its successors.
    pub(super) fn runs_inline(&self, task: &Task) -> bool {
        task.delay.is_none()
            && matches!(self.workflow.body(task.node), Body::Blocking(_))
            && self.workflow.graph().node(task.node).timeout.is_none()
    }

    /// Appends entries to the journal, sends them to watchers, and publishes the run's
    /// status. Called with the run locked, so statuses are published in journal order.
    pub(super) fn record(&self, core: &mut RunCore, entries: impl IntoIterator<Item = JournalEntry>) {
        let stored = self.stamp(core, entries);
        self.publish(core, stored);
    }

    /// Gives entries their place after the journal so far, and the time.
    pub(super) fn stamp(&self, core: &RunCore, entries: impl IntoIterator<Item = JournalEntry>) -> Vec<StoredEntry> {
        let at_ms = now_ms();
        let next = core.journal.len() as u64;
        entries.into_iter().enumerate().map(|(i, entry)| StoredEntry { seq: next + i as u64, at_ms, entry }).collect()
    }

    /// [`LiveRun::record`] for entries stamped already (and applied to the state).
    pub(super) fn publish(&self, core: &mut RunCore, stored: Vec<StoredEntry>) {
        for stored in stored {
            if !core.watchers.is_empty() {
                let event = Event {
                    run_id: Arc::clone(&self.run_id),
                    seq: stored.seq,
                    at_ms: stored.at_ms,
                    kind: EventKind::Journal(stored.entry.clone()),
                };
                core.watchers.retain(|w| w.tx.send(event.clone()).is_ok());
            }
            core.journal.push(stored);
        }
        let status = core.state.status();
        if !core.watchers.is_empty() && (status.is_terminal() || status == RunStatus::Waiting) {
            core.watchers.retain(|w| !(status.is_terminal() || w.until == WatchUntil::Settled));
            self.has_watchers.store(!core.watchers.is_empty(), Ordering::Relaxed);
        }
        if status.is_terminal() && self.finished_at.load(Ordering::Relaxed) == 0 {
            self.finished_at.store(FINISH_ORDER.fetch_add(1, Ordering::Relaxed), Ordering::Release);
        }
        let previous = self.status.swap(status as u8, Ordering::AcqRel);
        if status == RunStatus::Failed {
            // Nothing a failed run still has in flight can matter any more.
            core.attempts.cancel();
        } else if previous == RunStatus::Failed as u8 && !status.is_terminal() {
            // Retried: what it dispatches from now on runs.
            core.attempts = self.cancel.child_token();
        }
        if previous != status as u8 && (status.is_terminal() || status == RunStatus::Waiting) {
            self.wake_settled(Some(core));
        }
    }

    /// Whether waiting for the run would end now: it waits for a person, has finished, or
    /// an attempt of it was given up here.
    pub(super) fn is_settled(&self) -> bool {
        let status = self.status();
        status.is_terminal() || status == RunStatus::Waiting || self.is_interrupted.load(Ordering::Acquire)
    }

    /// Tells everything waiting for the run that it settled: the waiters of
    /// [`LiveRun::settled`], and the hooks, with the snapshot of `core` (the run's state,
    /// when the caller holds its lock) or of the run.
    pub(super) fn wake_settled(&self, core: Option<&RunCore>) {
        self.settle.notify_waiters();
        let hooks = std::mem::take(&mut *self.settle_hooks.lock().unwrap_or_else(|p| p.into_inner()));
        for hook in hooks {
            hook(self.settled_outcome(core));
        }
    }

    /// Calls `hook` when the run next settles, or at once (on this thread) if it is settled.
    pub(super) fn on_settled(&self, hook: SettleHook) {
        {
            // Checked under the hooks' lock: a run settling meanwhile takes the hooks after
            // its status changed, so it finds this one, or this check sees the change.
            let mut hooks = self.settle_hooks.lock().unwrap_or_else(|p| p.into_inner());
            if !self.is_settled() {
                hooks.push(hook);
                return;
            }
        }
        hook(self.settled_outcome(None));
    }

    /// What waiting for the settled run gives: its snapshot, or the error of an attempt
    /// given up here.
    fn settled_outcome(&self, core: Option<&RunCore>) -> Result<RunSnapshot, Error> {
        match (self.interruption(), core) {
            (Some(interrupted), _) => Err(interrupted),
            (None, Some(core)) => Ok(self.snapshot_of(core)),
            (None, None) => Ok(self.snapshot()),
        }
    }

    /// Fails the run in memory because its store could not record a step: its journal and
    /// state go back to what the store holds (so that the failure, not the lost steps, is
    /// what callers see), then it is failed. The store still holds the run as it was:
    /// recovering it once the store works again continues from there.
    pub(super) fn fail_from_store(&self, core: &mut RunCore, error: Error) {
        tracing::error!(run_id = %self.run_id, %error, "the store failed; failing the run");
        self.store_failed.store(true, Ordering::Release);
        // The state may hold steps applied but not written, and the journal steps published
        // but not written (group commit): both go back to what the store holds.
        core.journal.truncate(self.durable.load(Ordering::Acquire) as usize);
        let entries: Vec<JournalEntry> = core.journal.iter().map(|s| s.entry.clone()).collect();
        match RunState::replay(Arc::clone(self.workflow.graph()), &entries) {
            Ok(state) => core.state = state,
            Err(reason) => tracing::error!(run_id = %self.run_id, %reason, "cannot roll the run's state back"),
        }
        let failure = RunFailure {
            node: Arc::from("(store)"),
            item: None,
            error: NodeError::permanent("StoreError", format!("the journal could not be written: {error}")),
        };
        let entry = JournalEntry::RunFinished { status: RunStatus::Failed, output: None, failure: Some(failure) };
        if core.state.apply(&entry).is_ok() {
            self.record(core, std::iter::once(entry));
        }
    }

    /// A task as the store's queue knows it.
    pub(super) fn queued(&self, task: &Task) -> QueuedTask {
        QueuedTask {
            run_id: self.run_id.to_string(),
            node: self.workflow.name(task.node).to_string(),
            item: task.item,
            attempt: task.attempt,
            not_before_ms: task.delay.map_or(0, |delay| now_ms() + delay.as_millis() as u64),
        }
    }

    pub(super) fn status(&self) -> RunStatus {
        STATUSES[usize::from(self.status.load(Ordering::Acquire))]
    }

    /// Resolves once the run is settled: waiting for a person, or finished.
    pub(super) async fn settled(&self) {
        loop {
            // Register for the wake-up before looking, so that a change in between is seen.
            let notified = self.settle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_settled() {
                return;
            }
            notified.await;
        }
    }

    /// The error waiting for the run ends with while an attempt of it given up here is not
    /// resumed ([`NodeError::abandoned`]).
    pub(super) fn interruption(&self) -> Option<Error> {
        if !self.is_interrupted.load(Ordering::Acquire) {
            return None;
        }
        let interrupted = self.interrupted.lock().unwrap_or_else(|p| p.into_inner());
        interrupted.as_ref().map(|why| Error::Interrupted {
            run_id: self.run_id.to_string(),
            node: why.node.to_string(),
            kind: why.kind.clone(),
            message: why.message.clone(),
        })
    }

    /// Forgets an interruption: the run is resumed.
    pub(super) fn resumed(&self) {
        *self.interrupted.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.is_interrupted.store(false, Ordering::Release);
    }

    /// Tells watchers that an attempt starts. Costs nothing when nobody watches.
    pub(super) fn started(&self, task: &Task) {
        self.announce(task, |node| EventKind::NodeStarted { node, item: task.item, attempt: task.attempt });
    }

    /// Sends a body's progress report to the run's watchers.
    pub(super) fn progress(&self, task: &Task, data: Value) {
        self.announce(task, |node| EventKind::NodeProgress { node, item: task.item, attempt: task.attempt, data });
    }

    /// Sends watchers an event that is not journaled, about `task`'s node (`kind` gets its
    /// name), numbered with the seq of the next journal event. Costs nothing when nobody
    /// watches.
    pub(super) fn announce(&self, task: &Task, kind: impl FnOnce(Arc<str>) -> EventKind) {
        if !self.has_watchers.load(Ordering::Relaxed) {
            return;
        }
        let mut core = self.lock();
        let event = Event {
            run_id: Arc::clone(&self.run_id),
            seq: core.journal.len() as u64,
            at_ms: now_ms(),
            kind: kind(Arc::clone(self.workflow.name(task.node))),
        };
        core.watchers.retain(|w| w.tx.send(event.clone()).is_ok());
    }

    pub(super) fn watch(&self, until: WatchUntil) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut core = self.lock();
        for stored in &core.journal {
            let event = Event {
                run_id: Arc::clone(&self.run_id),
                seq: stored.seq,
                at_ms: stored.at_ms,
                kind: EventKind::Journal(stored.entry.clone()),
            };
            let _ = tx.send(event);
        }
        let status = core.state.status();
        let ended = status.is_terminal() || (status == RunStatus::Waiting && until == WatchUntil::Settled);
        if !ended {
            core.watchers.push(Watcher { tx, until });
            self.has_watchers.store(true, Ordering::Relaxed);
        }
        rx
    }

    pub(super) fn prepare(&self, core: &RunCore, tasks: Vec<Task>) -> Vec<Ready> {
        tasks
            .into_iter()
            .map(|task| {
                let item =
                    task.item.map(|i| (i, core.state.map_item(task.node, i).cloned().unwrap_or_else(Value::null)));
                let call = NodeCall {
                    run_id: Arc::clone(&self.run_id),
                    node: Arc::clone(self.workflow.name(task.node)),
                    node_id: task.node,
                    attempt: task.attempt,
                    item,
                    input: core.state.input().clone(),
                    deps: core.state.dependency_values(task.node),
                    attachment: core.attachment.clone(),
                    recorded: match &core.replay {
                        None => core.state.recorded(task.node, task.item).to_vec(),
                        Some(replay) => {
                            let name = self.workflow.name(task.node);
                            let served = replay.steps.get(&(Arc::clone(name), task.item)).into_iter().flatten();
                            served.chain(core.state.recorded(task.node, task.item)).cloned().collect()
                        }
                    },
                    replaying: core.replay.is_some(),
                    handle: None,
                };
                Ready { task, call, cancel: core.attempts.clone() }
            })
            .collect()
    }

    pub(super) fn snapshot(&self) -> RunSnapshot {
        self.snapshot_of(&self.lock())
    }

    /// [`LiveRun::snapshot`] of the run's state `core`, for a caller that holds its lock.
    pub(super) fn snapshot_of(&self, core: &RunCore) -> RunSnapshot {
        let graph = self.workflow.graph();
        RunSnapshot {
            run_id: Arc::clone(&self.run_id),
            graph: graph.name().into(),
            status: core.state.status(),
            output: core.state.output().cloned(),
            failure: core.state.failure().cloned(),
            waiting: core.state.waiting().map(|(id, p)| (Arc::clone(self.workflow.name(id)), p.clone())).collect(),
        }
    }

    pub(super) fn node_reports(&self) -> Vec<NodeReport> {
        let core = self.lock();
        node_reports(self.workflow.graph(), &core.state, &core.journal)
    }
}

/// The state of every node of a run, in topological order, from the run's state and
/// journal: the one derivation every view of a run shares (memory, every store, the CLI,
/// the server).
pub(super) fn node_reports(graph: &Graph, state: &RunState, journal: &[StoredEntry]) -> Vec<NodeReport> {
    use crate::state::NodeState;
    let mut attempts: Vec<u32> = vec![0; graph.nodes().len()];
    let mut last_ms: Vec<Option<u64>> = vec![None; graph.nodes().len()];
    for stored in journal {
        let Some(id) = stored.entry.node().and_then(|n| graph.id(n)) else { continue };
        last_ms[id] = Some(stored.at_ms);
        let attempt = match &stored.entry {
            JournalEntry::NodeCompleted { attempt, .. }
            | JournalEntry::NodeFailed { attempt, .. }
            | JournalEntry::Interrupted { attempt, .. } => *attempt,
            _ => continue,
        };
        attempts[id] = attempts[id].max(attempt);
    }
    // In a finished run, nodes that had started and not finished never will: they were
    // cancelled (by the user, or because another node failed). Nodes never reached stay
    // pending.
    let finished = state.status().is_terminal();
    (0..graph.nodes().len())
        .map(|id: NodeId| {
            let (status, output, error) = match state.node_state(id) {
                NodeState::Active { .. } | NodeState::Mapping(_) | NodeState::Waiting { .. } if finished => {
                    ("cancelled", None, None)
                }
                NodeState::Pending => ("pending", None, None),
                NodeState::Active { .. } | NodeState::Mapping(_) => ("running", None, None),
                NodeState::Waiting { payload, .. } => ("waiting", Some(payload.clone()), None),
                NodeState::Completed { output } => ("completed", Some(output.clone()), None),
                NodeState::Skipped => ("skipped", None, None),
                NodeState::Failed { error } => ("failed", None, Some(error.clone())),
            };
            let node = graph.node(id);
            NodeReport {
                name: Arc::from(node.name.as_str()),
                kind: node.kind,
                status,
                attempts: attempts[id],
                output,
                error,
                last_ms: last_ms[id],
            }
        })
        .collect()
}
