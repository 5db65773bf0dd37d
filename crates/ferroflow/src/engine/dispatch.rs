//! Dispatch: running ready tasks' bodies (blocking ones on tokio's blocking threads, a
//! chain of them on one thread; async ones spawned on the runtime) and completing them as
//! one step under the run's lock.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt as _;

use crate::body::{Body, BodyResult, NodeCall};
use crate::error::NodeError;
use crate::graph::NodeKind;
use crate::journal::{JournalEntry, now_ms};
use crate::state::{Rejected, Task};

use super::Inner;
use super::durable::StepError;
use super::handle::RunSide;
use super::run::{Interruption, LiveRun, Ready};

impl Inner {
    /// Dispatches ready tasks; when `drive`, this (blocking) thread keeps one blocking task
    /// and runs the chain that follows from it before returning.
    pub(super) fn dispatch_or_drive(self: &Arc<Self>, run: &Arc<LiveRun>, mut ready: Vec<Ready>, drive: bool) {
        let mine = if drive { ready.iter().position(|r| run.runs_inline(&r.task)) } else { None };
        let mine = mine.map(|i| ready.swap_remove(i));
        self.dispatch(run, ready);
        if let Some(task) = mine {
            let _counted = InFlight::new(self);
            Arc::clone(self).run_blocking_chain(Arc::clone(run), task);
        }
    }

    pub(super) fn dispatch(self: &Arc<Self>, run: &Arc<LiveRun>, ready: Vec<Ready>) {
        for task in ready {
            self.spawn(Arc::clone(run), task);
        }
    }

    pub(super) fn spawn(self: &Arc<Self>, run: Arc<LiveRun>, ready: Ready) {
        let inner = Arc::clone(self);
        let counted = InFlight::new(self);
        if let Some(delay) = ready.task.delay {
            self.runtime.spawn(async move {
                let _counted = counted;
                tokio::select! {
                    _ = ready.cancel.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {
                        let ready = Ready { task: Task { delay: None, ..ready.task }, ..ready };
                        inner.spawn(run, ready);
                    }
                }
            });
            return;
        }
        if run.runs_inline(&ready.task) {
            self.runtime.spawn_blocking(move || {
                let _counted = counted;
                inner.run_blocking_chain(run, ready)
            });
        } else {
            self.runtime.spawn(async move {
                let _counted = counted;
                inner.run_async(run, ready).await
            });
        }
    }

    /// Runs blocking tasks on this (blocking) thread, continuing with one newly ready
    /// blocking task after each, until none is left for it.
    pub(super) fn run_blocking_chain(self: Arc<Self>, run: Arc<LiveRun>, mut ready: Ready) {
        loop {
            if ready.cancel.is_cancelled() || !self.may_start(&run, &ready.task) {
                return;
            }
            run.started(&ready.task);
            let Body::Blocking(body) = run.workflow.body(ready.task.node) else {
                unreachable!("only blocking bodies run inline")
            };
            let call = NodeCall { handle: Some(RunSide::handle(&self, &run, &ready.task)), ..ready.call };
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| body.call(call)))
                .unwrap_or_else(|panic| Err(panic_error(panic)));
            let mut next = self.complete(&run, &ready.task, result);
            let keep = next.iter().position(|r| run.runs_inline(&r.task));
            let mine = keep.map(|i| next.swap_remove(i));
            self.dispatch(&run, next);
            match mine {
                Some(task) => ready = task,
                None => return,
            }
        }
    }

    pub(super) async fn run_async(self: Arc<Self>, run: Arc<LiveRun>, ready: Ready) {
        if let Some(clock) = &self.clock {
            // Checked here when that needs neither the store nor a wait for the run's lock
            // (a runtime worker must wait for neither); otherwise on a blocking thread.
            let current = run.core.try_lock().ok().map(|core| core.state.is_current(&ready.task));
            match current {
                Some(false) => return,
                Some(true) if clock.fresh(run.confirmed.load(Ordering::Acquire)) => {}
                _ => {
                    let (checked, task) = (Arc::clone(&run), ready.task.clone());
                    if !self.off_workers(move |inner| inner.may_start(&checked, &task)).await {
                        return;
                    }
                }
            }
        }
        run.started(&ready.task);
        let cancel = ready.cancel.clone();
        let body = run.workflow.body(ready.task.node).clone();
        let timeout = run.workflow.graph().node(ready.task.node).timeout;
        let call = NodeCall { handle: Some(RunSide::handle(&self, &run, &ready.task)), ..ready.call };
        let attempt = async move {
            match body {
                Body::Async(body) => AssertUnwindSafe(body.call(call))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(panic_error(panic))),
                // A blocking body with a timeout: on timeout the thread cannot be stopped;
                // it finishes in the background and its result is dropped as stale.
                Body::Blocking(body) => tokio::task::spawn_blocking(move || body.call(call))
                    .await
                    .unwrap_or_else(|join| Err(panic_error(join.into_panic()))),
            }
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            result = with_timeout(timeout, attempt) => result,
        };
        let task = ready.task;
        let next = {
            let run = Arc::clone(&run);
            self.off_workers(move |inner| inner.complete(&run, &task, result)).await
        };
        self.dispatch(&run, next);
    }

    /// Gives up an attempt its process abandoned ([`NodeError::abandoned`]): nothing is
    /// recorded for it, whoever waits for the run here gets [`Error::Interrupted`], and the
    /// run stays resumable. A durable engine hands the run (and the task's lease, for a
    /// queued task) back to the store and follows it from there, so that a worker, or
    /// [`Engine::recover`] in any process, takes it over and runs the attempt again; without a
    /// store, [`Engine::recover`] here does.
    pub(super) fn abandon(&self, run: &Arc<LiveRun>, task: &Task, error: &NodeError) {
        if run.followed.load(Ordering::Acquire) {
            // Not executed here any more (lost to another engine, or handed back): the
            // attempt never started, and nothing of the run is this engine's to report.
            tracing::debug!(run_id = %run.run_id, "an attempt of a run this engine no longer executes did not start");
            return;
        }
        let node = Arc::clone(run.workflow.name(task.node));
        tracing::warn!(
            run_id = %run.run_id,
            node = %node,
            "the attempt was given up ({}: {}); nothing is recorded for it, and the run can be resumed",
            error.kind,
            error.message
        );
        let queued = {
            let mut core = run.lock();
            if self.config.store.is_none() {
                core.abandoned.push(Task { delay: None, ..task.clone() });
            }
            core.from_queue.remove(&(task.node, task.item, task.attempt))
        };
        // Handed back first, on this thread, and only then are waiters told: the caller may
        // take the run over as soon as it knows, and a release still in flight would end the
        // new hold.
        if self.config.store.is_some() && self.config.execute {
            self.follow(run);
            let store = self.store();
            if queued {
                let task = run.queued(task);
                if let Err(error) = self.block_on(store.release(&self.owner, std::slice::from_ref(&task), now_ms())) {
                    tracing::debug!(run_id = %run.run_id, %error, "cannot hand back a given-up task; its lease will expire");
                }
            }
            if let Err(error) = self.block_on(store.release_run(&self.owner, &run.run_id, now_ms())) {
                tracing::debug!(run_id = %run.run_id, %error, "cannot hand back a given-up run; its hold will expire");
            }
        }
        *run.interrupted.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Interruption { node, kind: error.kind.clone(), message: error.message.clone() });
        run.is_interrupted.store(true, Ordering::Release);
        run.wake_settled(None);
    }

    /// The completion step: record the attempt's outcome and what it implies, and return
    /// the tasks that became ready.
    pub(super) fn complete(&self, run: &Arc<LiveRun>, task: &Task, result: BodyResult) -> Vec<Ready> {
        if let Err(error) = &result
            && error.abandoned
        {
            self.abandon(run, task, error);
            return Vec::new();
        }
        let result = result.and_then(|output| {
            let output = self.accept(output).map_err(|reason| {
                NodeError::permanent(
                    "SerializationError",
                    format!(
                        "node '{}' returned a value a durable context cannot store: {reason}",
                        run.workflow.name(task.node)
                    ),
                )
            })?;
            self.fits(run, task, &output)?;
            Ok(output)
        });
        let ready = {
            let mut core = run.lock();
            let graph = run.workflow.graph();
            let spec = graph.node(task.node);
            let node = Arc::clone(run.workflow.name(task.node));
            let answer = match (&core.replay, spec.kind) {
                (Some(replay), NodeKind::Human) => replay.answers.get(&node).cloned(),
                _ => None,
            };
            let checked = match (spec.kind, result) {
                (NodeKind::Branch, Ok(output)) => core.state.check_branch_output(task.node, &output).map(|()| output),
                (_, result) => result,
            };
            let entry = match checked {
                // A replay answers a human node as the person answered in the recorded run.
                Ok(_) if answer.is_some() => JournalEntry::NodeCompleted {
                    node,
                    item: None,
                    attempt: task.attempt,
                    output: answer.expect("checked"),
                },
                Ok(payload) if spec.kind == NodeKind::Human => {
                    JournalEntry::Interrupted { node, attempt: task.attempt, payload }
                }
                Ok(output) => JournalEntry::NodeCompleted { node, item: task.item, attempt: task.attempt, output },
                Err(error) => {
                    let retry_in_ms = if error.retryable {
                        spec.retry.delay_after(core.state.attempts_since_retry(task)).map(|d| d.as_millis() as u64)
                    } else {
                        None
                    };
                    JournalEntry::NodeFailed { node, item: task.item, attempt: task.attempt, error, retry_in_ms }
                }
            };
            let queued = !core.from_queue.is_empty() && core.from_queue.remove(&(task.node, task.item, task.attempt));
            let done = if queued { vec![run.queued(task)] } else { Vec::new() };
            match self.step(run, &mut core, entry, &done) {
                Ok(ready) => run.prepare(&core, ready),
                Err(StepError::Rejected(Rejected::Stale)) => return Vec::new(),
                Err(StepError::Rejected(Rejected::Inconsistent(reason))) => {
                    tracing::error!(run_id = %run.run_id, %reason, "dropping an inconsistent result");
                    return Vec::new();
                }
                // A failure too large for the store even shortened.
                Err(StepError::TooLarge(error)) => {
                    self.store_failed(run, &mut core, error);
                    Vec::new()
                }
                Err(StepError::Failed) => Vec::new(),
            }
        };
        self.after_change(run);
        ready
    }
}

/// Counts a task executing (or waiting out a backoff) on this engine, until dropped: what
/// a worker ([`Engine::work`]) measures its concurrency by. Engines without a store have no
/// workers, and their tasks are not counted (a wake-up per task is not free).
pub(super) struct InFlight(pub(super) Arc<Inner>);

impl InFlight {
    pub(super) fn new(inner: &Arc<Inner>) -> Option<InFlight> {
        inner.config.store.as_ref()?;
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(InFlight(Arc::clone(inner)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.task_done.notify_waiters();
    }
}

pub(super) async fn with_timeout(limit: Option<Duration>, attempt: impl Future<Output = BodyResult>) -> BodyResult {
    match limit {
        None => attempt.await,
        Some(limit) => tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| {
            Err(NodeError::new("Timeout", format!("the attempt did not finish within {:.3}s", limit.as_secs_f64())))
        }),
    }
}

pub(super) fn panic_error(panic: Box<dyn std::any::Any + Send>) -> NodeError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a body panicked".to_owned());
    NodeError::permanent("Panic", message)
}
