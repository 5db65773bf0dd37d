//! The worker loop ([`Engine::work`]): claiming queued tasks and runs whose holder stopped,
//! and the lease that keeps them this engine's (renewed by [`heartbeat`], checked before
//! every body starts, see [`crate::lease`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::body::{Attachment, Workflow};
use crate::error::{Error, Result};
use crate::journal::now_ms;
use crate::lease::LeaseClock;
use crate::state::Task;
use crate::store::{Claim, DurableStore, Lease, QueuedTask};

use super::run::LiveRun;
use super::{Engine, Inner};

impl Engine {
    /// Works as a worker on the engine's store until `stop` is cancelled: claims queued
    /// tasks (submitted for any worker, or held by an engine whose lease expired) of runs
    /// of the given graphs, at most `concurrency` executing here at once, and runs them
    /// with everything that follows from them. A task that may have started before (its
    /// holder died) runs again as its next attempt (see [`Engine::recover`]). A task of a
    /// graph or graph version this worker does not have is handed back, with a log line,
    /// for another worker.
    ///
    /// Runs it loads get `attachment` (what their bodies need from the host, such as an
    /// event loop).
    ///
    /// When stopped, it claims nothing more and returns once the tasks executing here have
    /// finished, or `grace` has passed; tasks still held then are released to other workers.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the engine has no store, and the store's errors when registering
    /// the graphs ([`DurableStore::register_graph`]) fail past
    /// [`EngineConfig::outage_timeout`](crate::EngineConfig::outage_timeout). Failures while working are logged and retried,
    /// not returned; so is the final release of what is still held.
    pub async fn work(
        &self,
        workflows: &[Workflow],
        concurrency: usize,
        attachment: Option<Attachment>,
        stop: CancellationToken,
        grace: Duration,
    ) -> Result<()> {
        self.inner.check_open()?;
        // Closing the engine stops the worker as its own token does. The forwarding task
        // ends with the worker (the guard cancels `either` on every way out).
        let either = CancellationToken::new();
        let _ends_forwarding = either.clone().drop_guard();
        let stop = {
            let (forward, closed) = (either.clone(), self.inner.closed.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = closed.cancelled() => {}
                    () = forward.cancelled() => {}
                }
                forward.cancel();
            });
            either
        };
        let store = self.inner.config.store.clone().ok_or_else(|| {
            Error::Store("a worker needs a durable store; this engine keeps runs in memory".to_owned())
        })?;
        // Registered first, so that other processes (the server, a submitter without the
        // code) know the graphs' structure; an unavailable store is waited for.
        for workflow in workflows {
            let (engine, workflow) = (self.clone(), workflow.clone());
            tokio::task::spawn_blocking(move || engine.inner.register(&workflow, true))
                .await
                .map_err(|join| Error::Store(format!("registering the graphs failed: {join}")))??;
        }
        let graphs: Arc<HashMap<String, Workflow>> =
            Arc::new(workflows.iter().map(|w| (w.graph().name().to_owned(), w.clone())).collect());
        let lease = self.inner.config.lease;
        let concurrency = concurrency.max(1);
        // Whether a claim failed since the holdings were last checked: the store may have
        // granted it all the same.
        let mut unsure = false;
        while !stop.is_cancelled() {
            let free = concurrency.saturating_sub(self.inner.in_flight.load(Ordering::Acquire));
            if free == 0 {
                let done = self.inner.task_done.notified();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::timeout(Duration::from_millis(100), done) => continue,
                }
            }
            let epoch = self.inner.epoch();
            let claimed = tokio::select! {
                _ = stop.cancelled() => break,
                claimed = store.claim(&self.inner.owner, free, lease, Duration::from_secs(1)) => claimed,
            };
            match claimed {
                Ok(claims) => {
                    for claim in claims {
                        let (engine, graphs, attachment) = (self.clone(), Arc::clone(&graphs), attachment.clone());
                        let taken = tokio::task::spawn_blocking(move || engine.take(&graphs, claim, attachment, epoch));
                        if let Err(join) = taken.await {
                            tracing::error!(%join, "taking on claimed work failed");
                        }
                    }
                    if unsure {
                        let engine = self.clone();
                        match tokio::task::spawn_blocking(move || engine.release_unknown()).await {
                            Ok(Ok(())) => unsure = false,
                            Ok(Err(error)) => {
                                tracing::warn!(%error, "cannot check what this worker holds; trying again")
                            }
                            Err(join) => tracing::error!(%join, "checking what this worker holds failed"),
                        }
                    }
                }
                Err(error) => {
                    unsure = true;
                    tracing::warn!(%error, "cannot claim tasks; trying again in a second");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            let done = self.inner.task_done.notified();
            let _ = tokio::time::timeout(Duration::from_millis(50), done).await;
        }
        // Whatever is still held (bodies that outlived the grace period, retries waiting out
        // a backoff) goes to the next worker now rather than when the lease runs out.
        store.renew(&self.inner.owner, Duration::ZERO).await
    }

    /// Releases what the store says this engine holds but the engine does not know of: runs
    /// and task leases that a claim granted although its reply was lost (the connection
    /// dropped, the store restarted). Renewals would keep them held forever, and nobody
    /// would run them. A released task is queued again as never delivered; a released run
    /// is claimed whole, its outstanding tasks running again as interrupted.
    pub(super) fn release_unknown(&self) -> Result<()> {
        let (store, owner) = (self.inner.store(), &self.inner.owner);
        let held = self.inner.block_on(store.holdings(owner))?;
        let live: HashMap<Arc<str>, Arc<LiveRun>> = self
            .inner
            .runs
            .lock()
            .expect("run table lock")
            .runs
            .iter()
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect();
        for run_id in held.runs.iter().filter(|run_id| !live.contains_key(run_id.as_str())) {
            tracing::warn!(run_id = %run_id, "releasing a run a lost claim granted to this worker");
            self.inner.block_on(store.release_run(owner, run_id, 0))?;
        }
        for task in held.tasks {
            let known = live.get(task.run_id.as_str()).is_some_and(|run| {
                let core = run.lock();
                core.from_queue.iter().any(|&(node, item, attempt)| {
                    item == task.item && attempt == task.attempt && run.workflow.name(node).as_ref() == task.node
                })
            });
            if !known {
                tracing::warn!(run_id = %task.run_id, task = %task.key(), "releasing a task a lost claim granted to this worker");
                self.inner.block_on(store.release(owner, std::slice::from_ref(&task), 0))?;
            }
        }
        Ok(())
    }

    /// Gives claimed work back for another worker (or for later), saying why. It can be
    /// claimed again after a second or so (jittered, so that workers of different versions
    /// do not keep meeting), which is also how soon a worker that has the graph gets it.
    /// (Claiming only the work of one's own graphs, in the store, would spare the round
    /// trips; the queue does not filter by graph yet.)
    pub(super) fn hand_back(&self, run_id: &str, lease: Option<&Lease>, reason: String) {
        tracing::warn!(run_id = %run_id, "handing the work back: {reason}");
        let later = now_ms() + 500 + fastrand::u64(0..1_000);
        let store = self.inner.store();
        let handed_back = match lease {
            Some(lease) => {
                self.inner.block_on(store.release(&self.inner.owner, std::slice::from_ref(&lease.task), later))
            }
            None => self.inner.block_on(store.release_run(&self.inner.owner, run_id, later)),
        };
        if let Err(error) = handed_back {
            tracing::warn!(%error, "cannot hand the task back; its lease will expire");
        }
    }

    /// Takes on what a worker claimed: a queued task, or a run whose holder stopped. Catches
    /// up with the run's journal (loading the run if this engine does not hold it) and
    /// runs the task (or every outstanding task of the run), or records that it was
    /// interrupted and runs its next attempt, or drops it if the journal has moved past it.
    ///
    /// Runs on a blocking thread: it waits for the store with runs locked, and the
    /// runtime's workers must stay free to drive the store's I/O.
    pub(super) fn take(
        &self,
        graphs: &HashMap<String, Workflow>,
        claim: Claim,
        attachment: Option<Attachment>,
        epoch: u64,
    ) {
        let (run_id, lease) = match claim {
            Claim::Task(lease) => (lease.task.run_id.clone(), Some(lease)),
            Claim::Run(run_id) => (run_id, None),
        };
        let (run, loaded) = match self.inner.load_run(&run_id, |record| graphs.get(&record.graph).cloned(), attachment)
        {
            Ok(found) => found,
            Err(error @ (Error::UnknownGraph { .. } | Error::VersionMismatch { .. })) => {
                return self.hand_back(&run_id, lease.as_ref(), error.to_string());
            }
            Err(error) => {
                return self.hand_back(&run_id, lease.as_ref(), format!("the run cannot be loaded: {error}"));
            }
        };
        // A run whose holder stopped is taken over whole, with its queued tasks. The lease
        // epoch is the one before the claim that granted the work: a pause since then
        // makes the engine ask the store again before running it.
        let (leases, epoch) = match &lease {
            Some(lease) => (Ok(vec![lease.clone()]), epoch),
            None => {
                let (store, owner, lease) = (self.inner.store(), &self.inner.owner, self.inner.config.lease);
                let epoch = self.inner.epoch();
                (self.inner.patiently(&run_id, "taking the run over", || store.claim_run(owner, &run_id, lease)), epoch)
            }
        };
        if leases.is_ok() {
            self.inner.confirm(&run, epoch);
        }
        let adopted = leases.and_then(|leases| {
            let mut core = run.lock();
            let caught_up = if loaded { Ok(()) } else { self.inner.catch_up(&run, &mut core, false) };
            caught_up.map(|()| self.inner.adopt(&run, &mut core, leases, lease.is_none()))
        });
        match adopted {
            Ok(ready) => {
                if !ready.is_empty() {
                    self.inner.executes(&run, epoch);
                }
                self.inner.after_change(&run);
                self.inner.dispatch(&run, ready);
            }
            Err(error) => self.hand_back(&run_id, lease.as_ref(), format!("the run cannot be read: {error}")),
        }
    }
}

impl Inner {
    /// The current lease epoch (0 in an engine without a lease clock).
    pub(super) fn epoch(&self) -> u64 {
        self.clock.as_ref().map_or(0, |clock| clock.epoch())
    }

    /// Records that this engine held `run` (or leased the tasks it runs of it) in `epoch`.
    pub(super) fn confirm(&self, run: &LiveRun, epoch: u64) {
        run.confirmed.fetch_max(epoch, Ordering::AcqRel);
        if let Some(clock) = &self.clock {
            clock.acquired();
        }
    }

    /// Records that this engine executes `run` (it holds it, and runs its tasks): it is not
    /// followed from the store any more.
    pub(super) fn executes(&self, run: &LiveRun, epoch: u64) {
        self.confirm(run, epoch);
        run.followed.store(false, Ordering::Release);
    }

    /// Whether this engine may start a body of `task` now: it still holds the run (or
    /// leases the task) as far as it knows (see [`crate::lease`]). The check is local and
    /// costs two atomic loads, unless the lease is about to run out or ran out since the run
    /// was confirmed: then the engine renews at once and asks the store what it holds. A run
    /// it no longer holds is followed from the store instead, and the task is dropped.
    /// Blocks on the store in that case: call it from a thread that may block.
    ///
    /// The task must also still be the run's outstanding attempt of its node: a task this
    /// engine dispatched before it was paused may have been taken over and superseded
    /// meanwhile, by this very engine claiming the run again (its journal then says so).
    pub(super) fn may_start(&self, run: &Arc<LiveRun>, task: &Task) -> bool {
        let Some(clock) = &self.clock else { return true };
        if !run.lock().state.is_current(task) {
            tracing::debug!(run_id = %run.run_id, attempt = task.attempt, "not starting an attempt the journal has moved past");
            return false;
        }
        if run.followed.load(Ordering::Acquire) {
            // Let go of (see `lose`): its tasks still queued here belong to whoever runs it.
            return false;
        }
        if clock.fresh(run.confirmed.load(Ordering::Acquire)) {
            return true;
        }
        let store = self.store();
        let renewed = clock.renew_if_running_out(|| {
            self.patiently(&run.run_id, "renewing this engine's holds", || store.renew(&self.owner, self.config.lease))
        });
        if let Err(error) = renewed {
            tracing::warn!(run_id = %run.run_id, %error, "cannot renew this engine's holds; not starting the task");
            self.lose(run, "its holds could not be renewed");
            return false;
        }
        if run.confirmed.load(Ordering::Acquire) == clock.epoch() {
            return true;
        }
        let key = run.lock().from_queue.contains(&(task.node, task.item, task.attempt)).then(|| run.queued(task).key());
        let asked = clock.held(
            || self.patiently(&run.run_id, "reading what this engine holds", || store.holdings(&self.owner)),
            |held| held.has(&run.run_id, key.as_deref()),
        );
        match asked {
            Ok((epoch, true)) => {
                if key.is_none() {
                    self.confirm(run, epoch);
                }
                true
            }
            Ok((_, false)) => {
                self.lose(run, "another engine took it over while this one did not renew its lease");
                false
            }
            Err(error) => {
                tracing::warn!(run_id = %run.run_id, %error, "cannot read what this engine holds; not starting the task");
                self.lose(run, "what this engine holds could not be read");
                false
            }
        }
    }

    /// Stops executing a run this engine no longer holds (its lease ran out: the process
    /// was paused, or could not reach the store): it starts none of its tasks from now on,
    /// and follows the run from the store, so that whoever waits for it here sees how it
    /// ends. Taking the run over again (a claim, `recover`) resumes executing it.
    pub(super) fn lose(&self, run: &Arc<LiveRun>, why: &str) {
        if run.followed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(run_id = %run.run_id, "not running the run's tasks any more: {why}; following it instead");
        let leased: Vec<QueuedTask> = {
            let mut core = run.lock();
            let tasks = core.from_queue.drain().collect::<Vec<_>>();
            tasks
                .into_iter()
                .map(|(node, item, attempt)| QueuedTask {
                    run_id: run.run_id.to_string(),
                    node: run.workflow.name(node).to_string(),
                    item,
                    attempt,
                    not_before_ms: 0,
                })
                .collect()
        };
        // Whatever the store still says this engine holds of the run (what it was told was out
        // of date, or a renewal failed though the store kept the holds) goes back to the
        // store, so that a worker (this one, maybe) takes it on: this engine's renewals
        // would otherwise keep it, and nobody would run it. A hold or lease another engine
        // has is left alone.
        let store = self.store();
        let now = now_ms();
        if let Err(error) = self.block_on(store.release_run(&self.owner, &run.run_id, now)) {
            tracing::warn!(run_id = %run.run_id, %error, "cannot hand the run back; its hold will expire");
        }
        if !leased.is_empty()
            && let Err(error) = self.block_on(store.release(&self.owner, &leased, now))
        {
            tracing::warn!(run_id = %run.run_id, %error, "cannot hand the run's tasks back; their leases will expire");
        }
        self.follow(run);
    }
}

/// Renews the leases of an engine's durable tasks every third of the lease until the
/// engine is closed or its last handle dropped (`closed`), and tells the engine's lease
/// clock (see [`crate::lease`]).
pub(super) async fn heartbeat(
    closed: CancellationToken,
    store: Arc<dyn DurableStore>,
    owner: String,
    lease: Duration,
    clock: Option<Arc<LeaseClock>>,
) {
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(lease / 3) => {}
        }
        let started = clock.as_ref().map(|clock| clock.now());
        match store.renew(&owner, lease).await {
            Ok(()) => {
                if let (Some(clock), Some(started)) = (&clock, started) {
                    clock.renewed(started);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot renew the leases of this engine's tasks"),
        }
    }
}
