//! Following runs executed elsewhere: a run this engine holds in memory but does not
//! execute is polled from the store until it finishes, and brought up to date before it is
//! read if another process may have moved it on.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::journal::RunStatus;
use tokio_util::sync::CancellationToken;

use crate::store::{Changed, Changes, DurableStore};

use super::Inner;
use super::run::LiveRun;

impl Inner {
    /// Follows a run executed elsewhere: its new journal entries are read from the store
    /// (and reach watchers and waiters) until it finishes.
    ///
    /// A run that waits for a person is polled only while someone watches it to its end: a
    /// look at it ([`Inner::refresh`]) reads what is new anyway.
    pub(super) fn follow(&self, run: &Arc<LiveRun>) {
        run.followed.store(true, Ordering::Release);
        if !run.polled.swap(true, Ordering::AcqRel) {
            self.followed.lock().expect("followed lock").push(Arc::downgrade(run));
        }
        self.follow_added.notify_one();
    }

    /// The followed runs `look` reads.
    fn to_read(&self, look: &Look) -> Vec<Arc<LiveRun>> {
        let watched = |run: &Arc<LiveRun>| matches!(look, Look::All) || run.has_watchers.load(Ordering::Relaxed);
        let mut runs: Vec<Arc<LiveRun>> = self
            .followed
            .lock()
            .expect("followed lock")
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|run| run.followed.load(Ordering::Acquire) && watched(run))
            .collect();
        let Look::Settled(settled) = look else { return runs };
        let table = self.runs.lock().expect("run table lock");
        runs.extend(settled.iter().filter_map(|run_id| {
            let run = table.runs.get(run_id.as_str())?;
            let read = run.followed.load(Ordering::Acquire) && !run.has_watchers.load(Ordering::Relaxed);
            read.then(|| Arc::clone(run))
        }));
        runs
    }

    /// Whether someone watches a followed run (its steps are then read as they come).
    fn watches_followed(&self) -> bool {
        self.followed
            .lock()
            .expect("followed lock")
            .iter()
            .filter_map(Weak::upgrade)
            .any(|run| run.followed.load(Ordering::Acquire) && run.has_watchers.load(Ordering::Relaxed))
    }

    /// Reads what is new of `followed` (see [`Inner::to_read`]); forgets the followed runs
    /// that finished. Returns whether anything was new.
    fn poll_followed(&self, followed: Vec<Arc<LiveRun>>) -> bool {
        let mut news = false;
        for run in &followed {
            let mut core = run.lock();
            let before = core.journal.len();
            if let Err(error) = self.catch_up(run, &mut core, false) {
                tracing::warn!(run_id = %run.run_id, %error, "cannot follow the run; trying again");
            }
            news |= core.journal.len() > before;
            drop(core);
            self.after_change(run);
        }
        let mut seen = HashSet::new();
        self.followed.lock().expect("followed lock").retain(|weak| {
            let Some(run) = weak.upgrade() else { return false };
            if !seen.insert(Arc::as_ptr(&run)) {
                return false;
            }
            let status = run.status();
            let watched = run.has_watchers.load(Ordering::Relaxed);
            let keep = run.followed.load(Ordering::Acquire)
                && !status.is_terminal()
                && (status != RunStatus::Waiting || watched);
            run.polled.store(keep, Ordering::Release);
            keep
        });
        news
    }

    /// Whether this engine's view of `run` may be behind its store: the engine is durable
    /// and does not execute the run (it waits for a person, or failed and may have been
    /// retried elsewhere, or another process executes it, or nobody does yet), so another
    /// process may have moved it on.
    pub(super) fn may_be_stale(&self, run: &LiveRun) -> bool {
        self.config.store.is_some()
            && (run.followed.load(Ordering::Acquire) || matches!(run.status(), RunStatus::Waiting | RunStatus::Failed))
    }

    /// Brings the view of a run this engine does not execute up to date with its store
    /// (see [`Inner::may_be_stale`]); watchers get what is new. A waiting run another
    /// process answered, or a failed run another process retried, is followed from then on,
    /// so that waiting for it here sees it settle again.
    pub(super) fn refresh(&self, run: &Arc<LiveRun>) {
        if !self.may_be_stale(run) {
            return;
        }
        let mut core = run.lock();
        let was_settled = matches!(core.state.status(), RunStatus::Waiting | RunStatus::Failed);
        if let Err(error) = self.catch_up(run, &mut core, false) {
            tracing::warn!(run_id = %run.run_id, %error, "cannot read the run from the store; showing what is known");
            return;
        }
        let status = core.state.status();
        drop(core);
        self.after_change(run);
        if was_settled && !status.is_terminal() && status != RunStatus::Waiting {
            self.follow(run);
        }
    }
}

/// Which followed runs one look reads.
enum Look {
    /// Every one.
    All,
    /// Those someone watches (their steps are shown as they come), and those named, which
    /// settled: a run nobody watches is only waited for, and its steps before it settles
    /// concern nobody yet.
    Settled(HashSet<String>),
}

const FAST: Duration = Duration::from_millis(5);
const SLOW: Duration = Duration::from_millis(200);

/// Follows the runs an engine does not execute, asleep while there are none. With a store
/// that gives notices of the runs that settled ([`DurableStore::changes`]), by notices
/// ([`follow_by_notices`]); otherwise by polling ([`follow_by_polling`]). The store is
/// asked for notices when the first run is followed: a worker that never follows one never
/// hears of every run the others settle.
pub(super) async fn follow_runs(inner: Weak<Inner>) {
    let Some((closed, store)) = inner.upgrade().map(|inner| (inner.closed.clone(), inner.config.store.clone())) else {
        return;
    };
    if until_followed(&inner, &closed).await.is_none() {
        return;
    }
    let changes = match store {
        Some(store) => store.changes().await,
        None => None,
    };
    match changes {
        Some(changes) => follow_by_notices(inner, closed, changes).await,
        None => follow_by_polling(inner, closed).await,
    }
}

/// Waits until the engine follows a run. `None` when it closes (or is gone); otherwise
/// whether it had to wait.
async fn until_followed(inner: &Weak<Inner>, closed: &CancellationToken) -> Option<bool> {
    let mut waited = false;
    loop {
        let strong = inner.upgrade()?;
        if !strong.followed.lock().expect("followed lock").is_empty() {
            return Some(waited);
        }
        waited = true;
        // Wakes at the next follow, when the engine closes, or now and then.
        let added = strong.follow_added.notified();
        tokio::select! {
            () = closed.cancelled() => return None,
            _ = tokio::time::timeout(Duration::from_secs(1), added) => {}
        }
    }
}

/// Polls every followed run: every 5 ms while they change, backing off to every 200 ms
/// while they do not.
async fn follow_by_polling(inner: Weak<Inner>, closed: CancellationToken) {
    let mut pause = FAST;
    loop {
        match until_followed(&inner, &closed).await {
            None => return,
            Some(true) => pause = FAST,
            Some(false) => {}
        }
        let Some(strong) = inner.upgrade() else { return };
        let news = strong.off_workers(|inner| inner.poll_followed(inner.to_read(&Look::All))).await;
        drop(strong);
        pause = if news { FAST } else { (pause * 2).min(SLOW) };
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Reads a run when a notice says it settled, the runs someone watches every 5 ms, and
/// every followed run at least every 200 ms (a notice may be lost).
async fn follow_by_notices(inner: Weak<Inner>, closed: CancellationToken, changes: Changes) {
    // When every followed run was last read; `None`: read them all next.
    let mut looked_at_all: Option<tokio::time::Instant> = None;
    loop {
        match until_followed(&inner, &closed).await {
            None => return,
            // What settled meanwhile concerns no run followed now; look at every run first.
            Some(true) => {
                changes.clear();
                looked_at_all = None;
            }
            Some(false) => {}
        }
        let Some(strong) = inner.upgrade() else { return };
        let watched = strong.watches_followed();
        drop(strong);
        let until_all = looked_at_all.map_or(Duration::ZERO, |at| SLOW.saturating_sub(at.elapsed()));
        let look = if until_all.is_zero() {
            Look::All
        } else {
            let wait = if watched { FAST.min(until_all) } else { until_all };
            let changed = tokio::select! {
                () = closed.cancelled() => return,
                changed = changes.next(wait) => changed,
            };
            match changed {
                Changed::Runs(runs) => Look::Settled(runs),
                Changed::Nothing => Look::Settled(HashSet::new()),
                Changed::All => Look::All,
            }
        };
        if matches!(look, Look::All) {
            looked_at_all = Some(tokio::time::Instant::now());
        }
        let Some(strong) = inner.upgrade() else { return };
        // Picked here, so that notices of runs nobody needs to read cost no thread hop.
        let runs = strong.to_read(&look);
        if !runs.is_empty() {
            strong.off_workers(move |inner| inner.poll_followed(runs)).await;
        }
    }
}
