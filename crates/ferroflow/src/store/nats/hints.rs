//! Claim hints: a JetStream work-queue stream of the keys of tasks (and runs) that became
//! claimable, so that a claim takes what is due in O(1) instead of scanning the buckets.
//!
//! The KV records stay the truth (see the module documentation): a hint only says where to
//! look. Whoever queues a task (a step, a new run, a repair), releases one or frees it by a
//! renewal to zero publishes a hint `t{task key}`; whoever releases a run, or hands a run
//! out in a repair, publishes `r{run key}`. The stream `ff_{ns}_hints` (work-queue
//! retention) has one durable pull consumer shared by every claimant, so each hint goes to
//! one claimant at a time. A claimant fetches at most as many hints as it has room for,
//! reads the record each names and leases it by compare-and-set as a scan would; a hint
//! whose task is not due yet is handed back with the delay until it is (a NAK with delay),
//! and every other hint is acknowledged (removed) once read: the task was leased, by this
//! claimant or another, or it is gone.
//!
//! A hint is stored before the call that queued its task returns (the publishes of one
//! call are pipelined, their acknowledgements awaited together), so a claim made after it
//! finds the hint. One can still be lost (the server failing the write), and expired
//! leases and holds have no hint at all: claims therefore still scan the buckets, but only when the hints gave
//! nothing or when this handle last scanned more than [`SWEEP`] ago. A claimant that dies
//! holding fetched hints has them redelivered after the consumer's ack wait.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;

use crate::error::Result;
use crate::journal::now_ms;
use crate::store::{Claim, QueuedTask, RELEASED};

use super::{HoldDoc, NatsStore, RunDoc, TaskDoc, task_key, token};

/// How often a claimant that is given work by hints still scans the buckets, for what no
/// hint names (expired leases and holds, hints lost).
pub(super) const SWEEP: Duration = Duration::from_secs(1);
/// How long a fetched hint stays with its claimant before the server gives it to another.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The durable consumer every claimant of a namespace shares.
const CONSUMER: &str = "claims";

/// The stream of hints of `namespace`.
pub(super) fn stream_name(namespace: &str) -> String {
    format!("ff_{namespace}_hints")
}

/// Opens (creating if needed) the hint stream of `namespace` and its consumer.
pub(super) async fn open(
    js: &jetstream::Context,
    namespace: &str,
    subject: &str,
) -> std::result::Result<jetstream::consumer::PullConsumer, async_nats::Error> {
    let config = jetstream::stream::Config {
        name: stream_name(namespace),
        description: Some(format!("ferroflow namespace {namespace}: claim hints")),
        subjects: vec![subject.to_owned()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    };
    let stream = js.get_or_create_stream(config).await?;
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            jetstream::consumer::pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: -1,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

impl NatsStore {
    /// Publishes hints that `tasks` can be claimed.
    pub(super) async fn hint_tasks<'a>(&self, tasks: impl IntoIterator<Item = &'a QueuedTask>) {
        let hints: Vec<(u8, String)> = tasks.into_iter().map(|task| (b't', task_key(task))).collect();
        self.hint(hints).await;
    }

    /// Publishes a hint that the run whose hold is `key` can be claimed.
    pub(super) async fn hint_run(&self, key: &str) {
        self.hint(vec![(b'r', key.to_owned())]).await;
    }

    /// Publishes the hints, all at once, then waits for the server to have stored them, so
    /// that a claim made after the call that queued them finds them. A hint that fails is
    /// left to the next sweep.
    async fn hint(&self, hints: Vec<(u8, String)>) {
        let mut stored = Vec::new();
        for (kind, key) in hints {
            let mut payload = Vec::with_capacity(key.len() + 1);
            payload.push(kind);
            payload.extend_from_slice(key.as_bytes());
            match self.inner.js.publish(self.inner.hint_subject.clone(), payload.into()).await {
                Ok(ack) => stored.push(ack.into_future()),
                Err(error) => tracing::debug!(%error, "a claim hint was not published"),
            }
        }
        for ack in futures_util::future::join_all(stored).await {
            if let Err(error) = ack {
                tracing::debug!(%error, "a claim hint was not stored");
            }
        }
    }

    /// Whether this handle's claims should scan the buckets now: when the hints gave
    /// nothing, or the last scan is [`SWEEP`] ago, or twenty times what that scan took if
    /// more (a scan reads every outstanding task: a large backlog makes it slow, and the
    /// hints serve it meanwhile).
    pub(super) fn sweep_due(&self, hinted_nothing: bool) -> bool {
        let last = *self.inner.last_sweep.lock().expect("sweep lock");
        hinted_nothing || last.is_none_or(|(at, took)| at.elapsed() >= SWEEP.max(took * 20))
    }

    /// Notes that a scan started at `at` is done.
    pub(super) fn swept(&self, at: Instant) {
        *self.inner.last_sweep.lock().expect("sweep lock") = Some((at, at.elapsed()));
    }

    /// Claims what up to `max` hints name, leased to `owner` until `until`. Returns the
    /// claims, how many hints there were, and when the first hint handed back falls due.
    pub(super) async fn claim_hinted(
        &self,
        owner: &str,
        max: usize,
        until: u64,
    ) -> Result<(Vec<Claim>, usize, Option<u64>)> {
        let failed = |e: &dyn std::fmt::Display| self.fail("cannot fetch claim hints", e);
        let mut batch = self.inner.hints.fetch().max_messages(max).messages().await.map_err(|e| failed(&e))?;
        let (mut claims, mut fetched, mut next_due) = (Vec::new(), 0, None::<u64>);
        // A claim takes runs with expired holds first, then tasks (as a scan does); the
        // runs a hinted task belongs to are looked at once each.
        let mut runs = Vec::new();
        let mut looked_at = std::collections::HashSet::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| failed(&e))?;
            fetched += 1;
            let Some((&kind, key)) = message.payload.split_first() else {
                let _ = message.ack().await;
                continue;
            };
            let key = String::from_utf8_lossy(key).into_owned();
            let now = now_ms();
            let mut later = None;
            if kind == b't' {
                if let Some(task) = self.get::<TaskDoc>(&self.inner.tasks, &key).await? {
                    let doc = &task.value;
                    if doc.owner.is_none() || doc.until_ms <= now {
                        if doc.task.not_before_ms > now {
                            later = Some(doc.task.not_before_ms);
                        } else if claims.len() + runs.len() >= max {
                            later = Some(now); // no room: handed back for the next claimant
                        } else {
                            let run_key = token(&doc.task.run_id);
                            if looked_at.insert(run_key.clone())
                                && let Some(run) = self.take_expired_hold(&run_key, owner, until, now).await?
                            {
                                runs.push(run);
                            }
                            if claims.len() + runs.len() < max
                                && let Some(lease) = self.lease(&key, task.value, task.revision, owner, until).await?
                            {
                                claims.push(Claim::Task(lease));
                            }
                        }
                    }
                }
            } else if kind == b'r'
                && let Some(hold) = self.get::<HoldDoc>(&self.inner.holds, &key).await?
            {
                if hold.value.until_ms > now {
                    // Handed back until a time: the hint waits for it. A live owner's hold
                    // that expires is found by a scan, having no hint.
                    if hold.value.owner == RELEASED {
                        later = Some(hold.value.until_ms);
                    }
                } else if claims.len() + runs.len() >= max {
                    later = Some(now);
                } else if looked_at.insert(key.clone())
                    && let Some(run) = self.take_expired_hold(&key, owner, until, now).await?
                {
                    runs.push(run);
                }
            }
            // Acknowledging is a publish with no reply to wait for; one lost is redelivered
            // after the ack wait and dropped then.
            match later {
                Some(at) => {
                    next_due = Some(next_due.map_or(at, |d| d.min(at)));
                    let delay = Duration::from_millis(at.saturating_sub(now));
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
                None => {
                    let _ = message.ack().await;
                }
            }
        }
        runs.append(&mut claims);
        Ok((runs, fetched, next_due))
    }

    /// Takes the run whose hold is `key` for `owner` if its hold expired (a scan's claim of
    /// a run, [`Claim::Run`]).
    async fn take_expired_hold(&self, key: &str, owner: &str, until: u64, now: u64) -> Result<Option<Claim>> {
        let Some(hold) = self.get::<HoldDoc>(&self.inner.holds, key).await? else { return Ok(None) };
        if hold.value.until_ms > now {
            return Ok(None);
        }
        let Some(run) = self.get::<RunDoc>(&self.inner.runs, key).await? else { return Ok(None) };
        let mine = HoldDoc { owner: owner.to_owned(), until_ms: until };
        Ok(self.update(&self.inner.holds, key, &mine, hold.revision).await?.map(|_| Claim::Run(run.value.run_id)))
    }
}
