//! What an engine knows of its holds, so that a paused engine starts no body for a run
//! another engine may have taken over.
//!
//! A durable engine holds the runs it executes under a lease it renews in the background
//! (every third of the lease). A process paused past its lease (SIGSTOP, a long GC pause, a
//! frozen VM) loses its holds: another worker claims the runs and runs their outstanding
//! tasks. When the paused process wakes up, tasks it had dispatched before the pause are
//! still queued on its threads and timers; started, they would run bodies of nodes
//! completed elsewhere meanwhile.
//!
//! The clock here tells when that may have happened, from the engine's own renewals:
//! - A successful renewal that started at time `t` and ended before the holds it renews could
//!   run out proves that every hold the engine had at `t` lasts until at least `t + lease`
//!   ([`LeaseClock::valid_until`]): the store extends each at some time after `t`, by
//!   `lease`, while it is still the engine's.
//! - A renewal that ends after that bound (the previous lease ran out first: a pause, a
//!   store that could not be reached, or one so slow that a hold ran out while the renewal
//!   was on its way to it) begins a new **epoch**: holds taken before may have been claimed
//!   by others meanwhile, and the renewal then found them taken.
//! - Each run remembers the epoch in which the engine last knew it held the run (or the
//!   leases of the tasks it runs): when it took the run on, or when a step confirmed the
//!   hold. Before starting a body, the engine checks locally (two atomic loads) that the
//!   run was confirmed in the current epoch and the lease is not about to run out; if not,
//!   it renews now and asks the store what it holds ([`crate::TaskQueue::holdings`], once
//!   per epoch, and again for a run the answer lacks if the engine took anything on since),
//!   and starts no body of a run it no longer holds. It hands back to the store whatever
//!   the store still says it holds of that run, so that a wrong conclusion costs a
//!   hand-back, never a run nobody executes.
//!
//! What remains at-least-once: a body already running when the pause began finishes
//! after it (its result is then dropped against the journal, or recorded if nobody else got
//! there first), and a pause that begins between this check and the body's first effect is
//! not seen. Bindings narrow that moment by asking again right before the user's code runs
//! ([`crate::NodeHandle::may_start`]; the Python one does, with the GIL taken and the
//! arguments built), so that it is the few microseconds of a function call. Both are the
//! ordinary at-least-once execution of a crashed attempt; the idempotency key, whose base (`run/node`) is the same whoever runs the node, makes
//! effects safe.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::Holdings;

/// An engine's knowledge of its lease (see the module documentation).
pub(crate) struct LeaseClock {
    origin: Instant,
    lease: Duration,
    /// Nanoseconds since `origin` until which every hold the engine had at its last
    /// successful renewal is surely still its own.
    valid_until: AtomicU64,
    /// Starts at 1 (0 means "never confirmed"); grows by one at each gap.
    epoch: AtomicU64,
    /// What the store said the engine holds, in which epoch and at which acquisition it
    /// was asked.
    holdings: Mutex<Option<(u64, u64, Held)>>,
    /// How many times the engine learnt it holds something new: an answer of the store
    /// asked before the last time says nothing of what came after.
    acquisitions: AtomicU64,
    /// Taken by a renewal a body waits for, so that bodies due at once share one.
    renewing: Mutex<()>,
}

/// [`Holdings`] as sets, to look runs and tasks up in.
pub(crate) struct Held {
    runs: HashSet<String>,
    tasks: HashSet<String>,
}

impl Held {
    /// Whether the engine holds the run `run_id`, or leases the task whose key is `task`.
    pub(crate) fn has(&self, run_id: &str, task: Option<&str>) -> bool {
        self.runs.contains(run_id) || task.is_some_and(|key| self.tasks.contains(key))
    }
}

impl From<Holdings> for Held {
    fn from(holdings: Holdings) -> Held {
        Held {
            runs: holdings.runs.into_iter().collect(),
            tasks: holdings.tasks.iter().map(crate::store::QueuedTask::key).collect(),
        }
    }
}

impl LeaseClock {
    /// The clock of an engine made now: it holds nothing yet, and what it takes from now
    /// on lasts at least `lease`.
    pub(crate) fn new(lease: Duration) -> LeaseClock {
        LeaseClock {
            origin: Instant::now(),
            lease,
            valid_until: AtomicU64::new(nanos(lease)),
            epoch: AtomicU64::new(1),
            holdings: Mutex::new(None),
            acquisitions: AtomicU64::new(0),
            renewing: Mutex::new(()),
        }
    }

    /// Now, on this clock: what a renewal records when it starts.
    pub(crate) fn now(&self) -> u64 {
        nanos(self.origin.elapsed())
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// How close to the end of the lease a body may still start without asking the store:
    /// a quarter of the lease. Renewals come every third of it, so an engine whose renewals
    /// take less than five twelfths of the lease never gets that close; one that does (its
    /// renewals late: a starved or paused process, a slow store) renews and checks first,
    /// which leaves room for the moment between the check and the body.
    fn margin(&self) -> u64 {
        nanos(self.lease / 4).max(1)
    }

    /// Renews with `renew` if the lease runs out within the margin, as one renewal however
    /// many bodies are due at once: a caller that waited for another's renewal checks again
    /// and returns if it made the lease fresh.
    pub(crate) fn renew_if_running_out<E>(&self, renew: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let _one = self.renewing.lock().unwrap_or_else(|p| p.into_inner());
        if self.running_out() {
            let started = self.now();
            renew()?;
            self.renewed(started);
        }
        Ok(())
    }

    /// Records a successful renewal that started at `started` ([`LeaseClock::now`]) and ends
    /// now. If the lease ran out before it ended, a new epoch begins: a hold may have been
    /// claimed by another engine before the renewal reached it.
    pub(crate) fn renewed(&self, started: u64) {
        if self.now() >= self.valid_until.load(Ordering::Acquire) {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.valid_until.fetch_max(started + nanos(self.lease), Ordering::AcqRel);
    }

    /// Begins a new epoch, as a renewal that ended after the lease ran out does: for tests of
    /// what an engine does after a gap it cannot be made to have in a test's time.
    #[cfg(test)]
    pub(crate) fn gap(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether the lease runs out within the margin: a renewal is due before a body starts.
    pub(crate) fn running_out(&self) -> bool {
        self.now() + self.margin() >= self.valid_until.load(Ordering::Acquire)
    }

    /// Whether a body of a run confirmed in `confirmed` may start without asking the store.
    pub(crate) fn fresh(&self, confirmed: u64) -> bool {
        confirmed == self.epoch() && !self.running_out()
    }

    /// Records that the engine took a run or a task on (after the store granted it).
    pub(crate) fn acquired(&self) {
        self.acquisitions.fetch_add(1, Ordering::AcqRel);
    }

    /// What the engine holds, as the store said in the current epoch: read with `ask`
    /// once per epoch (callers in the same epoch share the answer). An answer that says
    /// the engine does not hold something is asked again if the engine took anything on
    /// since (it may be that).
    pub(crate) fn held<E>(
        &self,
        ask: impl FnOnce() -> Result<Holdings, E>,
        check: impl Fn(&Held) -> bool,
    ) -> Result<(u64, bool), E> {
        let mut cached = self.holdings.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch();
        if let Some((asked, at, held)) = cached.as_ref()
            && *asked == epoch
            && (check(held) || *at == self.acquisitions.load(Ordering::Acquire))
        {
            return Ok((epoch, check(held)));
        }
        let at = self.acquisitions.load(Ordering::Acquire);
        let held = Held::from(ask()?);
        let answer = check(&held);
        *cached = Some((epoch, at, held));
        Ok((epoch, answer))
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_in_time_keeps_the_epoch_and_a_late_one_begins_the_next() {
        let clock = LeaseClock::new(Duration::from_secs(10));
        assert_eq!(clock.epoch(), 1);
        assert!(clock.fresh(1), "a new engine's runs start at once");
        assert!(!clock.fresh(0), "a run never confirmed is checked");
        clock.renewed(clock.now());
        assert_eq!(clock.epoch(), 1, "renewed before the lease ran out");
        assert!(clock.fresh(1));
    }

    #[test]
    fn a_renewal_that_ends_after_the_lease_ran_out_begins_the_next_epoch() {
        let clock = LeaseClock::new(Duration::from_millis(50));
        // Started in time, but so slow (or paused on its way) that it ended after the lease
        // ran out: a hold may have been claimed before it got there.
        let started = clock.now();
        std::thread::sleep(Duration::from_millis(80));
        clock.renewed(started);
        assert_eq!(clock.epoch(), 2);
        assert!(!clock.fresh(1), "runs confirmed before the gap are checked");
        assert!(clock.running_out(), "the slow renewal proves nothing past its start plus the lease");
    }

    #[test]
    fn the_store_is_asked_once_per_epoch() {
        let clock = LeaseClock::new(Duration::from_secs(10));
        let holdings = || Holdings { runs: vec!["r1".into()], tasks: vec![] };
        let mut asked = 0;
        for _ in 0..3 {
            let (epoch, held) = clock
                .held(
                    || {
                        asked += 1;
                        Ok::<_, ()>(holdings())
                    },
                    |held| held.has("r1", None),
                )
                .unwrap();
            assert_eq!((epoch, held), (1, true));
        }
        assert_eq!(asked, 1);
        // Not held as of the answer (the same answer: nothing was taken on since), then
        // taken on since: asked again.
        let asked = std::cell::Cell::new(0);
        let ask = || -> Result<Holdings, ()> {
            asked.set(asked.get() + 1);
            Ok(holdings())
        };
        assert!(!clock.held(ask, |held| held.has("r2", None)).unwrap().1);
        assert!(!clock.held(ask, |held| held.has("r2", None)).unwrap().1);
        assert_eq!(asked.get(), 0, "nothing was taken on since the first answer");
        clock.acquired();
        assert!(!clock.held(ask, |held| held.has("r2", None)).unwrap().1);
        assert!(!clock.held(ask, |held| held.has("r2", None)).unwrap().1);
        assert_eq!(asked.get(), 1, "asked again once, after something was taken on");
        clock.gap();
        let (_, held) = clock.held(|| Ok::<_, ()>(Holdings::default()), |held| held.has("r1", None)).unwrap();
        assert!(!held, "asked again in the new epoch");
    }
}
