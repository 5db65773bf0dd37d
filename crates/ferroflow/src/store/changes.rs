//! Notices of runs that settled, for engines that follow runs executed elsewhere.
//!
//! A store that can tell other processes about its writes (NATS, by a core publish after a
//! step that leaves its run other than running: completed, failed, cancelled or waiting for
//! a person) gives each follower a [`Changes`]
//! ([`DurableStore::changes`](super::DurableStore::changes)): the follower then reads a run
//! when it settles instead of polling every run it follows. A notice is a hint, never the
//! truth: the follower still reads the journal, and still looks at every run now and then,
//! because notices may be lost (a reconnect, a writer of an older version, a full set).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

/// How many distinct runs a set of notices holds before it gives up naming them and says
/// "look at everything" instead (a follower far behind, or not reading).
const MOST_RUNS: usize = 100_000;

/// One follower's notices: the runs named since it last took them.
#[derive(Clone, Default)]
pub struct Changes {
    inner: Arc<Pending>,
}

#[derive(Default)]
struct Pending {
    /// The runs named.
    runs: Mutex<HashSet<String>>,
    /// Set when more runs changed than [`MOST_RUNS`]: the follower should look at all.
    overflow: AtomicBool,
    notify: Notify,
}

/// What a follower learns from [`Changes::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    /// These runs settled.
    Runs(HashSet<String>),
    /// Too many to name: every run may have changed.
    All,
    /// Nothing within the wait.
    Nothing,
}

impl Changes {
    /// Waits up to `wait` for a notice, and takes every notice that arrived since the last
    /// call.
    pub async fn next(&self, wait: Duration) -> Changed {
        let notified = self.inner.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(changed) = self.take() {
            return changed;
        }
        let _ = tokio::time::timeout(wait, notified).await;
        self.take().unwrap_or(Changed::Nothing)
    }

    /// Forgets the notices taken so far.
    pub fn clear(&self) {
        self.inner.overflow.store(false, Ordering::Release);
        self.inner.runs.lock().expect("changes lock").clear();
    }

    fn take(&self) -> Option<Changed> {
        if self.inner.overflow.swap(false, Ordering::AcqRel) {
            self.inner.runs.lock().expect("changes lock").clear();
            return Some(Changed::All);
        }
        let runs = std::mem::take(&mut *self.inner.runs.lock().expect("changes lock"));
        (!runs.is_empty()).then_some(Changed::Runs(runs))
    }

    fn note(&self, run_id: &str) {
        let mut runs = self.inner.runs.lock().expect("changes lock");
        if runs.len() >= MOST_RUNS && !runs.contains(run_id) {
            self.inner.overflow.store(true, Ordering::Release);
        } else {
            runs.insert(run_id.to_owned());
        }
        drop(runs);
        self.inner.notify.notify_one();
    }
}

/// The followers of one store handle: a store keeps one, hands a [`Changes`] to each
/// follower that asks, and passes every notice it hears to all of them.
#[derive(Default)]
pub(crate) struct Followers {
    list: Mutex<Vec<Weak<Pending>>>,
}

impl Followers {
    /// A new follower's notices.
    pub(crate) fn subscribe(&self) -> Changes {
        let changes = Changes::default();
        let mut list = self.list.lock().expect("followers lock");
        list.retain(|weak| weak.strong_count() > 0);
        list.push(Arc::downgrade(&changes.inner));
        changes
    }

    /// Tells every follower still there that `run_id` settled.
    pub(crate) fn note(&self, run_id: &str) {
        let list = self.list.lock().expect("followers lock");
        for pending in list.iter().filter_map(Weak::upgrade) {
            Changes { inner: pending }.note(run_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(named: &[&str]) -> Changed {
        Changed::Runs(named.iter().map(|run| (*run).to_owned()).collect())
    }

    #[tokio::test]
    async fn a_follower_takes_the_runs_named_since_it_last_looked() {
        let followers = Followers::default();
        let (a, b) = (followers.subscribe(), followers.subscribe());
        assert_eq!(a.next(Duration::from_millis(5)).await, Changed::Nothing);
        followers.note("r1");
        followers.note("r2");
        followers.note("r1");
        let expected = runs(&["r1", "r2"]);
        assert_eq!(a.next(Duration::from_secs(5)).await, expected);
        assert_eq!(b.next(Duration::from_secs(5)).await, expected);
        assert_eq!(a.next(Duration::from_millis(5)).await, Changed::Nothing);
        drop(b);
        followers.note("r3");
        assert_eq!(a.next(Duration::from_secs(5)).await, runs(&["r3"]));
        drop(a);
        let c = followers.subscribe();
        assert_eq!(followers.list.lock().unwrap().len(), 1, "the followers that went are forgotten");
        drop(c);
    }

    #[tokio::test]
    async fn a_notice_wakes_a_waiting_follower() {
        let followers = Arc::new(Followers::default());
        let changes = followers.subscribe();
        let noter = Arc::clone(&followers);
        let waiter = tokio::spawn(async move { changes.next(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        noter.note("r");
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("joined");
        assert_eq!(got, runs(&["r"]));
    }

    #[tokio::test]
    async fn too_many_runs_to_name_is_everything() {
        let followers = Followers::default();
        let changes = followers.subscribe();
        for i in 0..=MOST_RUNS {
            followers.note(&i.to_string());
        }
        assert_eq!(changes.next(Duration::from_secs(5)).await, Changed::All);
        followers.note("r");
        assert_eq!(changes.next(Duration::from_secs(5)).await, runs(&["r"]));
    }
}
