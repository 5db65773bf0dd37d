//! Following runs executed elsewhere: a run this engine holds in memory but does not
//! execute is polled from the store until it finishes, and brought up to date before it is
//! read if another process may have moved it on.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::journal::RunStatus;

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

    /// Reads what is new of every followed run; forgets those that finished. Returns
    /// whether anything was new.
    pub(super) fn poll_followed(&self) -> bool {
        let followed: Vec<Arc<LiveRun>> = self
            .followed
            .lock()
            .expect("followed lock")
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|run| run.followed.load(Ordering::Acquire))
            .collect();
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
    /// and does not execute the run (it waits for a person, or another process executes it,
    /// or nobody does yet), so another process may have moved it on.
    pub(super) fn may_be_stale(&self, run: &LiveRun) -> bool {
        self.config.store.is_some() && (run.followed.load(Ordering::Acquire) || run.status() == RunStatus::Waiting)
    }

    /// Brings the view of a run this engine does not execute up to date with its store
    /// (see [`Inner::may_be_stale`]); watchers get what is new. A waiting run another
    /// process answered is followed from then on, so that waiting for it here sees it
    /// settle again.
    pub(super) fn refresh(&self, run: &Arc<LiveRun>) {
        if !self.may_be_stale(run) {
            return;
        }
        let mut core = run.lock();
        let was_waiting = core.state.status() == RunStatus::Waiting;
        if let Err(error) = self.catch_up(run, &mut core, false) {
            tracing::warn!(run_id = %run.run_id, %error, "cannot read the run from the store; showing what is known");
            return;
        }
        let status = core.state.status();
        drop(core);
        self.after_change(run);
        if was_waiting && !status.is_terminal() && status != RunStatus::Waiting {
            self.follow(run);
        }
    }
}

/// Follows the runs an engine does not execute, polling the store: every 5 ms while they
/// change, backing off to every 200 ms while they do not, asleep while there are none.
pub(super) async fn follow_runs(inner: Weak<Inner>) {
    const FAST: Duration = Duration::from_millis(5);
    const SLOW: Duration = Duration::from_millis(200);
    let Some(closed) = inner.upgrade().map(|inner| inner.closed.clone()) else { return };
    let mut pause = FAST;
    while !closed.is_cancelled() {
        let Some(strong) = inner.upgrade() else { return };
        let idle = strong.followed.lock().expect("followed lock").is_empty();
        if idle {
            pause = FAST;
            // Wakes at the next follow, when the engine closes, or now and then.
            let added = strong.follow_added.notified();
            tokio::select! {
                () = closed.cancelled() => return,
                _ = tokio::time::timeout(Duration::from_secs(1), added) => continue,
            }
        }
        let news = strong.off_workers(|inner| inner.poll_followed()).await;
        drop(strong);
        pause = if news { FAST } else { (pause * 2).min(SLOW) };
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
