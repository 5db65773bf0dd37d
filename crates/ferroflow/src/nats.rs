//! The NATS context's store: journals, run records, holds and the task queue in JetStream
//! key-value buckets on a NATS server (2.9 or later, JetStream enabled).
//!
//! # Buckets and keys
//!
//! A store lives in a *namespace* (a name of letters, digits, `_` and `-`); several stores
//! (test suites, deployments) share a server without seeing each other's data. Each
//! namespace has four KV buckets, created on [`NatsStore::connect`] if missing and removed
//! by [`NatsStore::delete_namespace`]:
//!
//! | bucket | key | value (JSON) |
//! |---|---|---|
//! | `ff_{ns}_journal` | `{run}.{first seq}` | one **step**: its entries, the status it leaves the run in, and the tasks it queues and resolves |
//! | `ff_{ns}_runs` | `{run}` | the run record: graph, version, status, times, the journal length applied, the creation order |
//! | `ff_{ns}_holds` | `{run}` | who holds a run and until when, present only while the run is held |
//! | `ff_{ns}_tasks` | `{run}.{task key}` | a queued or leased task: the task, its owner and lease end, its deliveries |
//! | `ff_{ns}_graphs` | `{name}.{version}` | a graph a worker registered: its structure and when |
//!
//! Run ids and task keys are escaped into key tokens: letters, digits, `_` and `-` stay,
//! every other byte becomes `=XX` (hexadecimal). Every bucket keeps one revision per key.
//! Values are JSON, never pickled: the buckets are shared with other processes.
//!
//! Holds are not kept in the run record, although they belong to the run: a claim looks
//! for expired holds and a renewal for an owner's, and with holds in their own bucket
//! both read only the runs held now instead of every run ever created.
//!
//! The buckets' streams are created by this module with the configuration async-nats
//! gives a KV bucket (one message per subject, rollups allowed, direct gets, discard new)
//! rather than through `create_key_value`: that call first reads the account's JetStream
//! limits, which async-nats 0.51 cannot parse from a 2.9 server (it expects
//! `reserved_memory`). Nothing newer than 2.9 is used: no batch publish, no per-message
//! TTL, no multi-subject consumer filters.
//!
//! # The journal: one KV value per step, written with `create`
//!
//! A step (the entries of one [`JournalStore::append`] or [`DurableStore::commit`]) is one
//! value keyed by the run and the step's first `seq`, written with KV `create` (which fails
//! if the key exists). A step is therefore all or nothing, and two writers racing on one
//! position conflict: the second `create` fails and the writer gets [`Error::Conflict`].
//!
//! A step may only start where the journal ends. Steps are never rewritten or deleted, and
//! each is created only at the end of the chain of steps from seq 0, so the steps of a run
//! form one chain, and the journal is that chain. Where it ends is found by walking it:
//! the run record caches the length of the chain applied so far (`len`, always a step
//! boundary, never beyond the real end), and a writer reads the record, then probes keys
//! from `len` on until one is missing. In the common case that is one lookup that finds
//! nothing. A writer whose `expected_seq` is not that end fails with `Conflict`; otherwise
//! it creates its step, which only fails if another writer created the same key first.
//!
//! After the step come its effects, in this order: the hold (compare-and-set on the hold's
//! revision), the tasks (resolved tasks removed, ready tasks queued when the writer does
//! not hold the run, all of the run's tasks removed when the step finishes it), and last
//! the run record (compare-and-set: `len`, status, `updated_ms`). The record's `len` thus
//! marks the steps whose effects are applied.
//!
//! **A crash between the step and its effects** leaves steps beyond the record's `len`.
//! Whoever next reads or writes the run (a load, a step, `load_since`) finds them while
//! walking and applies their effects again from the step value, which records the status
//! and the tasks to queue and remove: queueing is idempotent and removing is too, so an
//! effect applied twice (by the repair and a slow but live writer) does no harm, except that
//! a task queued, leased and acknowledged in between may be queued once more; the
//! scheduler drops such duplicates against the journal, as it does every redelivery.
//! A writer that dies holding the run leaves a hold that expires and is claimed as
//! [`Claim::Run`], so the hold needs no repair. One that dies after its step but before
//! taking its first hold on the run (a worker's first step on a queued task) leaves
//! neither a hold nor its ready tasks in the queue: the step says it meant to hold the run
//! (`hold`), and the repair creates a [`RELEASED`] hold if there is none, so that the run
//! is claimed whole and those tasks run. Only for a step older than a grace period (10 s):
//! a younger one's writer is most likely alive and applying its effects, and a worker that
//! claimed the run in between would record the attempts the writer is starting as
//! interrupted and run them again. A writer that finds such a hand-out of its own step
//! (a [`RELEASED`] hold without a time) takes it while the journal still ends with its
//! step; one that finds the run moved on, or held by another, queues its ready tasks
//! instead, and whichever of the two runs a task first, the other is dropped against the
//! journal. A writer paused between its step and its hold (past its lease) never creates a
//! hold for a run that moved on meanwhile (it may have finished, and its hold gone).
//!
//! `load` walks the chain from step 0, one key lookup per step: a filtered scan of the
//! run's keys (an ordered consumer on `$KV.ff_{ns}_journal.{run}.>`) would be one request,
//! but nats-server 2.9 spends time on it in proportion to the whole bucket, every run's
//! steps, so loads slowed down as a batch grew (measured: 2.6 ms at 1,000 messages, 55 ms
//! at 60,000). `load_since(seq)` looks up the step starting at `seq` (engines ask from
//! where their view ends, a step boundary) and walks from there; only a `seq` in the
//! middle of a step falls back to the scan.
//!
//! Creating a run writes step 0 first (with `create`: this is what makes `create_run`
//! idempotent), then its hold or tasks, then the run record, whose `order` is step 0's
//! revision (JetStream sequences grow across the bucket, so this orders runs by creation:
//! `list_runs` sorts by `created_ms`, then `order`, both descending, and its page cursors
//! are these two numbers). A run whose step 0 exists but whose record does not is being
//! created, or its creator died: until the record exists the run is not found, and a
//! second `create` waits briefly for the record, then writes it itself, behind step 0 so
//! that loading the run queues step 0's tasks; if the creator meant to hold the run, the
//! second `create` leaves it released, for any worker to claim. (A run created without
//! entries has no step 0: its record is its creation, with `order` 0, and it sorts before
//! the runs created in the same millisecond.)
//!
//! A status recorded by `set_status` while a step is between its value and its record
//! update is overwritten by the step's status: the record follows the last step applied.
//! A step's value must fit in one NATS message (`max_payload`, 1 MB by default); a larger
//! one fails with a store error that says so.
//!
//! # Holds and tasks: KV records, not a work-queue stream
//!
//! The queue contract needs things a JetStream work-queue stream with pull consumers
//! cannot give: a lease length chosen per claim (AckWait is per consumer), one renewal for
//! all the leases of an owner across processes (in-progress acks need the message handles
//! of the process that received them), `claim_run` taking a run's tasks from whichever
//! consumer holds them, `release` that does not count a delivery (a NAK does), an `ack`
//! that fails when the lease expired and another worker holds the task, `not_before_ms`
//! (NATS 2.9 has no delayed delivery), and deduplication for as long as a task is queued
//! (`Nats-Msg-Id` deduplicates within the stream's duplicate window only). So the
//! authoritative task state is one KV record per task, changed by compare-and-set on its
//! revision: `enqueue` is a KV `create` (idempotent while the task is queued or leased,
//! exactly), a claim is an `update` from the revision the claimant read (two claimants of
//! one task: one update fails), `ack` writes a delete marker expecting the revision it
//! read and then purges the key's messages up to that marker (so deleted tasks do not
//! accumulate in the bucket), and leases expire by time, as holds do.
//!
//! Claiming scans the tasks and holds buckets (one ordered consumer each, latest value per
//! key, deleted when the scan ends): the buckets hold only queued and leased tasks and
//! held runs, since finished work is purged, so a claim reads what is outstanding, not
//! the history. `renew` scans them for the owner's records too. A waiting claim sleeps
//! until the next task, lease or hold it saw falls due, or until a wake-up arrives on the
//! core NATS subject `ff.{ns}.wake`, which `enqueue`, `release`, `release_run`, a renewal
//! to zero and steps that queue tasks publish to, and at most a second: wake-ups need no
//! durability (a claimant that misses one finds the work on its next scan), so they use
//! plain publish/subscribe, not a stream. The cost of a claim grows with the number of
//! outstanding tasks; the next step for large batches is an index that avoids the scan
//! (a work-queue stream of task keys as hints, the KV record staying the truth).
//!
//! # Failure modes
//!
//! Every call has a time limit ([`NatsStore::with_timeout`], 10 s by default; a claim
//! waits at most its `wait`, and each of its passes over the buckets has the limit); errors
//! name the server and what failed. They are [`Error::Unavailable`] while the client is
//! not connected, or when a request timed out or found nobody to answer it (as while the
//! server restarts), and [`Error::Store`] otherwise.
//! A compare-and-set that loses a race is retried from a fresh read where the operation
//! allows it (record and hold updates), or means that someone else got there first (a
//! claim, an ack). While the server is unreachable calls fail (the client reconnects in
//! the background); a write that timed out may or may not have landed, which the next read
//! of the run shows, as with any server (the engine's retries look, see
//! `EngineConfig::outage_timeout`).

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::journal::{JournalEntry, RunStatus, now_ms};
use crate::store::{
    Claim, Created, DurableStore, GraphRecord, Holdings, JournalStore, Lease, QueuedTask, RELEASED, RunCursor, RunPage,
    RunQuery, RunRecord, Step, StoredEntry, TaskQueue, holds, redact_url, scrub,
};

/// The namespace of a context given only a server URL.
pub const DEFAULT_NAMESPACE: &str = "ferroflow";

/// How long a call may take by default.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a waiting claim sleeps at most between two scans when nothing wakes it: the
/// bound on how late it sees work a wake-up it missed announced.
const POLL: Duration = Duration::from_secs(1);
/// How long a scan waits for its next message before asking the server whether it has
/// delivered everything (messages pending when it started may have been purged since).
const SCAN_IDLE: Duration = Duration::from_millis(50);
/// How old a step must be before a reader that finds its effects unapplied hands its run out
/// to any worker ([`NatsStore::repair`]): its writer most likely died. A live writer applies
/// them within milliseconds.
const HOLD_REPAIR_GRACE: Duration = Duration::from_secs(10);
/// What a write keeps of the server's `max_payload` for its headers (KV operations and
/// expected revisions).
const HEADER_ROOM: usize = 512;
/// How many times a compare-and-set that lost a race is retried from a fresh read.
const RETRIES: usize = 64;

/// Journals, holds and tasks in JetStream KV buckets on a NATS server.
#[derive(Clone)]
pub struct NatsStore {
    inner: Arc<Inner>,
    /// The time limit of a call.
    timeout: Duration,
}

struct Inner {
    url: String,
    namespace: String,
    client: async_nats::Client,
    js: jetstream::Context,
    journal: kv::Store,
    runs: kv::Store,
    holds: kv::Store,
    tasks: kv::Store,
    graphs: kv::Store,
    /// The core NATS subject wake-ups go to.
    wake_subject: String,
    /// Woken when a wake-up arrives, or this handle queued tasks.
    ready: Arc<Notify>,
    /// The task forwarding wake-ups to `ready`.
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// A run record as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunDoc {
    run_id: String,
    graph: String,
    version: String,
    status: RunStatus,
    created_ms: u64,
    updated_ms: u64,
    /// The journal length whose steps' effects are applied: a step boundary, never beyond
    /// the journal's end (the steps are the truth).
    len: u64,
    /// The revision of the run's step 0: the order of creation.
    order: u64,
}

impl RunDoc {
    fn record(&self) -> RunRecord {
        RunRecord {
            run_id: self.run_id.clone(),
            graph: self.graph.clone(),
            version: self.version.clone(),
            status: self.status,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        }
    }
}

/// A task as stored, in steps and task records.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TaskJson {
    run_id: String,
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    item: Option<u32>,
    attempt: u32,
    not_before_ms: u64,
}

impl From<&QueuedTask> for TaskJson {
    fn from(t: &QueuedTask) -> Self {
        TaskJson {
            run_id: t.run_id.clone(),
            node: t.node.clone(),
            item: t.item,
            attempt: t.attempt,
            not_before_ms: t.not_before_ms,
        }
    }
}

impl From<&TaskJson> for QueuedTask {
    fn from(t: &TaskJson) -> Self {
        QueuedTask {
            run_id: t.run_id.clone(),
            node: t.node.clone(),
            item: t.item,
            attempt: t.attempt,
            not_before_ms: t.not_before_ms,
        }
    }
}

/// A queued or leased task.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TaskDoc {
    task: TaskJson,
    /// Who holds the lease; `None` while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// When the lease expires; 0 while queued.
    until_ms: u64,
    deliveries: u32,
}

/// Who holds a run, until when.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct HoldDoc {
    owner: String,
    until_ms: u64,
}

/// One journal entry as stored in a step.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct EntryJson {
    seq: u64,
    at_ms: u64,
    entry: JournalEntry,
}

/// One step: the entries written together, and the effects to apply after them (again,
/// after a crash).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StepDoc {
    entries: Vec<EntryJson>,
    /// The run's status after the step; `None` leaves it as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<RunStatus>,
    /// Tasks to queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    queue: Vec<TaskJson>,
    /// Tasks to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    done: Vec<TaskJson>,
    /// Whether the step applies the effects of a durable step on holds and tasks (those of
    /// [`JournalStore::append`] touch neither).
    #[serde(default)]
    effects: bool,
    /// Whether the writer meant to hold the run and run the ready tasks itself (they are
    /// not in `queue`). If it died before taking the hold, the repair hands the run to
    /// whoever claims it, as [`RELEASED`], so that those tasks are not lost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    hold: bool,
}

impl StepDoc {
    /// The seq after the step's last entry.
    fn end(&self, first: u64) -> u64 {
        first + self.entries.len() as u64
    }

    /// Whether the step was written more than `age` ago (by its writer's clock).
    fn older_than(&self, age: Duration) -> bool {
        self.entries.last().is_none_or(|e| e.at_ms + age.as_millis() as u64 <= now_ms())
    }
}

/// What a durable step does besides its entries.
#[derive(Clone, Copy)]
struct StepEffects<'a> {
    ready: &'a [QueuedTask],
    done: &'a [QueuedTask],
    owner: Option<(&'a str, Duration)>,
}

/// A value read from a bucket, with its revision.
struct Versioned<T> {
    value: T,
    revision: u64,
}

/// Escapes `text` into one KV key token: letters, digits, `_` and `-` stay, every other
/// byte becomes `=XX`.
fn token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("={byte:02X}"));
        }
    }
    if out.is_empty() {
        out.push('=');
    }
    out
}

/// Refuses a namespace that is not letters, digits, `_` and `-` (at most 64 of them): the
/// namespace names buckets and subjects, where `.`, `*` and `>` would be read as
/// separators and wildcards.
fn check_namespace(namespace: &str) -> Result<()> {
    let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if namespace.is_empty() || namespace.len() > 64 || !namespace.bytes().all(valid) {
        return Err(Error::Store(format!(
            "NATS namespace {} is not valid: use 1 to 64 letters, digits, '_' and '-'",
            crate::limits::quote(namespace)
        )));
    }
    Ok(())
}

fn step_key(run_id: &str, first: u64) -> String {
    format!("{}.{first}", token(run_id))
}

fn task_key(task: &QueuedTask) -> String {
    format!("{}.{}", token(&task.run_id), token(&task.key()))
}

/// Whether a KV message is a delete or purge marker.
fn is_marker(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
}

impl NatsStore {
    /// Connects to the NATS server at `url` and opens (creating if needed) the buckets of
    /// `namespace`. Fails with a message naming the server when it cannot be reached, has
    /// no JetStream, or the namespace is not a valid name.
    pub async fn connect(url: &str, namespace: &str) -> Result<NatsStore> {
        let fail = |what: &str, e: &dyn Display| {
            Error::Store(scrub(&format!("NATS server {}: {what}: {e}", redact_url(url)), url))
        };
        check_namespace(namespace)?;
        let connect =
            async_nats::ConnectOptions::new().connection_timeout(TIMEOUT).request_timeout(Some(TIMEOUT)).connect(url);
        let client = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| fail("cannot connect", &format!("timed out after {}s", TIMEOUT.as_secs())))?
            .map_err(|e| fail("cannot connect", &e))?;
        let js = jetstream::new(client.clone());
        // The bucket's stream is created by hand, with the configuration `create_key_value`
        // would give it: that call first reads the account's JetStream info, which async-nats
        // 0.51 cannot parse from a 2.9 server (it lacks `reserved_memory`).
        let open = |bucket: String| {
            let js = js.clone();
            async move {
                if let Ok(store) = js.get_key_value(bucket.clone()).await {
                    return Ok(store);
                }
                let config = jetstream::stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some(format!("ferroflow namespace {namespace}")),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    max_bytes: -1,
                    max_messages: -1,
                    max_message_size: -1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: 1,
                    allow_rollup: true,
                    deny_delete: true,
                    deny_purge: false,
                    allow_direct: true,
                    discard: jetstream::stream::DiscardPolicy::New,
                    ..Default::default()
                };
                let cannot =
                    |e: &dyn Display| fail(&format!("cannot create the KV bucket {bucket} (is JetStream enabled?)"), e);
                // The server has been seen failing to create a stream's files now and then
                // ("error creating store for stream") when many are created at once: retry.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match js.get_or_create_stream(config.clone()).await {
                        Ok(_) => break,
                        Err(_) if attempt < 5 => tokio::time::sleep(Duration::from_millis(20 * attempt)).await,
                        Err(e) => return Err(cannot(&e)),
                    }
                }
                js.get_key_value(bucket.clone()).await.map_err(|e| cannot(&e))
            }
        };
        let journal = open(format!("ff_{namespace}_journal")).await?;
        let runs = open(format!("ff_{namespace}_runs")).await?;
        let holds = open(format!("ff_{namespace}_holds")).await?;
        let tasks = open(format!("ff_{namespace}_tasks")).await?;
        let graphs = open(format!("ff_{namespace}_graphs")).await?;
        let wake_subject = format!("ff.{namespace}.wake");
        let mut wakes =
            client.subscribe(wake_subject.clone()).await.map_err(|e| fail("cannot subscribe to wake-ups", &e))?;
        let ready = Arc::new(Notify::new());
        let listener = {
            let ready = Arc::clone(&ready);
            tokio::spawn(async move {
                while wakes.next().await.is_some() {
                    ready.notify_waiters();
                }
            })
        };
        client.flush().await.map_err(|e| fail("cannot subscribe to wake-ups", &e))?;
        Ok(NatsStore {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                namespace: namespace.to_owned(),
                client,
                js,
                journal,
                runs,
                holds,
                tasks,
                graphs,
                wake_subject,
                ready,
                listener,
            }),
            timeout: TIMEOUT,
        })
    }

    /// The same store with another time limit per call.
    pub fn with_timeout(mut self, timeout: Duration) -> NatsStore {
        self.timeout = timeout;
        self
    }

    /// The server's URL, as given (credentials included: show [`redact_url`] of it).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The namespace the store's buckets belong to.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Deletes the buckets of `namespace` (all its runs, holds and tasks) on the server at
    /// `url`: exactly its five buckets, named from the namespace (whose name holds no
    /// character a bucket name or a subject could read as a pattern or a separator, so
    /// no other namespace's bucket has one of these names). Buckets that do not exist are fine.
    pub async fn delete_namespace(url: &str, namespace: &str) -> Result<()> {
        check_namespace(namespace)?;
        let fail = |what: &str, e: &dyn Display| {
            Error::Store(scrub(&format!("NATS server {}: {what}: {e}", redact_url(url)), url))
        };
        let client = tokio::time::timeout(TIMEOUT, async_nats::connect(url))
            .await
            .map_err(|_| fail("cannot connect", &"timed out"))?
            .map_err(|e| fail("cannot connect", &e))?;
        let js = jetstream::new(client);
        for part in ["journal", "runs", "holds", "tasks", "graphs"] {
            let bucket = format!("ff_{namespace}_{part}");
            if js.get_key_value(bucket.clone()).await.is_ok() {
                js.delete_key_value(bucket.clone())
                    .await
                    .map_err(|e| fail(&format!("cannot delete the KV bucket {bucket}"), &e))?;
            }
        }
        Ok(())
    }

    /// The error `e` met doing `what`, naming the server. It is [`Error::Unavailable`] when
    /// the server is out of reach for now: the client is not connected (it reconnects by
    /// itself), or the request timed out, found nobody to answer it or found JetStream not
    /// ready (a server restarting answers before its JetStream does). async-nats gives each call its own error kinds,
    /// so these are recognised by what they say.
    fn fail(&self, what: &str, e: impl Display) -> Error {
        let text = e.to_string();
        let message = scrub(&format!("NATS server {}: {what}: {text}", redact_url(&self.inner.url)), &self.inner.url);
        let connected = self.inner.client.connection_state() == async_nats::connection::State::Connected;
        // A scan's consumer vanishes when the server restarts under it ("consumer not found").
        let outage = [
            "timed out",
            "no responders",
            "broken pipe",
            "disconnected",
            "connection",
            "jetstream not enabled",
            "503",
            "consumer not found",
        ];
        if !connected || outage.iter().any(|sign| text.contains(sign)) {
            Error::Unavailable(message)
        } else {
            Error::Store(message)
        }
    }

    /// Runs `f` within the store's time limit (plus `extra`).
    async fn timed<T>(&self, what: &str, extra: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
        let limit = self.timeout + extra;
        match tokio::time::timeout(limit, f).await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.fail(what, format!("timed out after {:.3}s", limit.as_secs_f64()))),
        }
    }

    /// The JSON of a value for `key`, if it fits in a message of the server's
    /// ([`NatsStore::max_write_bytes`]); [`Error::ValueTooLarge`] otherwise, before anything
    /// is sent.
    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.fail(&format!("cannot encode {key}"), e))?;
        let limit = self.max_write_bytes();
        if bytes.len() > limit {
            return Err(Error::ValueTooLarge {
                what: format!("the value of key {}", crate::limits::shorten(key, 80)),
                bytes: bytes.len(),
                limit,
                store: format!("NATS server {}: its max_payload, less room for headers", redact_url(&self.inner.url)),
            });
        }
        Ok(bytes)
    }

    /// The largest value one write takes: the server's `max_payload` (1 MB by default, set
    /// in its configuration), less room for the headers a write carries.
    pub fn max_write_bytes(&self) -> usize {
        self.inner.client.server_info().max_payload.saturating_sub(HEADER_ROOM)
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, bucket: &kv::Store, key: &str, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.fail(&format!("the value of key {key} in bucket {} cannot be read", bucket.name), e))
    }

    /// The value of `key` and its revision, if the key exists.
    async fn get<T: for<'de> Deserialize<'de>>(&self, bucket: &kv::Store, key: &str) -> Result<Option<Versioned<T>>> {
        let entry = bucket
            .entry(key)
            .await
            .map_err(|e| self.fail(&format!("cannot read key {key} of bucket {}", bucket.name), e))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok(Some(Versioned { value: self.decode(bucket, key, &entry.value)?, revision: entry.revision }))
            }
            _ => Ok(None),
        }
    }

    /// Creates `key`; `Ok(None)` if it exists already.
    ///
    /// A compare-and-set from revision 0 (the key has no message), not async-nats's
    /// `create`: that one, when its write fails for any reason (a reply lost to a restart),
    /// looks the key up and says "already exists" if it finds it, which it does when the
    /// failed write had in fact landed. A writer would then take its own step for another
    /// writer's. Here a failure stays a failure, whose outcome the caller finds out. (Keys
    /// are only ever removed with their messages purged, so a removed key has revision 0.)
    async fn kv_create<T: Serialize>(&self, bucket: &kv::Store, key: &str, value: &T) -> Result<Option<u64>> {
        let bytes = self.encode(key, value)?;
        match bucket.update(key, bytes.into(), 0).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(self.fail(&format!("cannot create key {key} in bucket {}", bucket.name), e)),
        }
    }

    /// Updates `key` if its revision is still `revision`; `Ok(None)` if it is not.
    async fn update<T: Serialize>(
        &self,
        bucket: &kv::Store,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<Option<u64>> {
        let bytes = self.encode(key, value)?;
        match bucket.update(key, bytes.into(), revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(self.fail(&format!("cannot update key {key} in bucket {}", bucket.name), e)),
        }
    }

    /// Sets `key` whatever it holds.
    async fn put<T: Serialize>(&self, bucket: &kv::Store, key: &str, value: &T) -> Result<()> {
        let bytes = self.encode(key, value)?;
        bucket
            .put(key, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| self.fail(&format!("cannot write key {key} in bucket {}", bucket.name), e))
    }

    /// Removes `key` and its messages, unconditionally.
    async fn remove(&self, bucket: &kv::Store, key: &str) -> Result<()> {
        bucket
            .stream
            .purge()
            .filter(format!("{}{key}", bucket.prefix))
            .await
            .map(|_| ())
            .map_err(|e| self.fail(&format!("cannot delete key {key} of bucket {}", bucket.name), e))
    }

    /// Removes `key` if its revision is still `revision`: a delete marker expecting that
    /// revision, then a purge of the key's messages up to the marker (a key re-created in
    /// between keeps its new value). Says whether the key was removed.
    async fn remove_if(&self, bucket: &kv::Store, key: &str, revision: u64) -> Result<bool> {
        let subject = format!("{}{key}", bucket.prefix);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, revision.to_string().as_str());
        let failed = |e: &dyn Display| self.fail(&format!("cannot delete key {key} of bucket {}", bucket.name), e);
        let published = self.inner.js.publish_with_headers(subject.clone(), headers, Vec::new().into()).await;
        let ack = match published {
            Ok(ack) => ack.await,
            Err(e) => return Err(failed(&e)),
        };
        let marker = match ack {
            Ok(ack) => ack.sequence,
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => return Ok(false),
            Err(e) => return Err(failed(&e)),
        };
        bucket.stream.purge().filter(subject).sequence(marker + 1).await.map_err(|e| failed(&e))?;
        Ok(true)
    }

    /// The latest value of every key of `bucket` under `prefix` (all keys for `""`), with
    /// its key (without the prefix) and revision, in the order last written: one ordered
    /// consumer delivering the last message per key.
    async fn scan<T: for<'de> Deserialize<'de>>(
        &self,
        bucket: &kv::Store,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned<T>)>> {
        let failed = |e: &dyn Display| self.fail(&format!("cannot list the keys of bucket {}", bucket.name), e);
        let consumer = bucket
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.inner.client.new_inbox(),
                filter_subject: format!("{}{prefix}>", bucket.prefix),
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        // The consumer is deleted once the scan is done (the server would keep it for 30 s
        // after its subscription ends), without waiting for the reply.
        let cleanup = {
            let (stream, name) = (bucket.stream.clone(), consumer.cached_info().name.clone());
            move || {
                tokio::spawn(async move {
                    let _ = stream.delete_consumer(&name).await;
                });
            }
        };
        if consumer.cached_info().num_pending == 0 {
            cleanup();
            return Ok(Vec::new());
        }
        // The latest message per key; a key written again during the scan is delivered
        // twice, and the later message wins.
        let mut latest: HashMap<String, (u64, Option<T>)> = HashMap::new();
        let probe = consumer.clone();
        let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
        let mut received = 0;
        loop {
            let message = match tokio::time::timeout(SCAN_IDLE, messages.next()).await {
                Ok(Some(message)) => message.map_err(|e| failed(&e))?,
                Ok(None) => break,
                Err(_) => {
                    // Messages counted as pending when the consumer started may have been
                    // purged since: ask the server whether anything is left to deliver.
                    let info = probe.get_info().await.map_err(|e| failed(&e))?;
                    if info.num_pending == 0 && info.delivered.consumer_sequence <= received {
                        break;
                    }
                    continue;
                }
            };
            received += 1;
            let info = message.info().map_err(|e| failed(&e))?;
            let (revision, pending) = (info.stream_sequence, info.pending);
            let key = message.subject.strip_prefix(bucket.prefix.as_str()).unwrap_or(&message.subject).to_owned();
            let value = if is_marker(&message) { None } else { Some(self.decode(bucket, &key, &message.payload)?) };
            if latest.get(&key).is_none_or(|(known, _)| *known < revision) {
                latest.insert(key, (revision, value));
            }
            if pending == 0 {
                break;
            }
        }
        drop(messages);
        cleanup();
        let mut found: Vec<(String, Versioned<T>)> = latest
            .into_iter()
            .filter_map(|(key, (revision, value))| value.map(|value| (key, Versioned { value, revision })))
            .collect();
        found.sort_by_key(|(_, v)| v.revision);
        Ok(found)
    }

    /// Tells waiting claimants, here and elsewhere, that tasks were queued.
    async fn wake(&self) {
        self.inner.ready.notify_waiters();
        // A lost wake-up only delays a claimant until its next scan.
        let _ = self.inner.client.publish(self.inner.wake_subject.clone(), Vec::new().into()).await;
    }

    async fn record(&self, run_id: &str) -> Result<Option<Versioned<RunDoc>>> {
        self.get(&self.inner.runs, &token(run_id)).await
    }

    /// The steps of `run_id` from the boundary `from` on, looked up one by one.
    async fn walk(&self, run_id: &str, mut from: u64) -> Result<Vec<(u64, StepDoc)>> {
        let mut steps = Vec::new();
        while let Some(step) = self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, from)).await? {
            let next = step.value.end(from);
            if next == from {
                break;
            }
            steps.push((from, step.value));
            from = next;
        }
        Ok(steps)
    }

    /// Every step of `run_id`, by one scan of its keys, in chain order.
    async fn all_steps(&self, run_id: &str) -> Result<Vec<(u64, StepDoc)>> {
        let prefix = format!("{}.", token(run_id));
        let mut by_first: HashMap<u64, StepDoc> = HashMap::new();
        for (key, step) in self.scan::<StepDoc>(&self.inner.journal, &prefix).await? {
            if let Some(first) = key.strip_prefix(&prefix).and_then(|seq| seq.parse::<u64>().ok()) {
                by_first.insert(first, step.value);
            }
        }
        let mut steps = Vec::new();
        let mut at = 0;
        while let Some(step) = by_first.remove(&at) {
            let next = step.end(at);
            steps.push((at, step));
            if next == at {
                break;
            }
            at = next;
        }
        Ok(steps)
    }

    /// The end of `run_id`'s journal, applying the effects of steps beyond the record's
    /// `len` (left by a writer that crashed, or is still writing them).
    async fn journal_end(&self, run_id: &str, record: &Versioned<RunDoc>) -> Result<u64> {
        let steps = self.walk(run_id, record.value.len).await?;
        let Some((first, last)) = steps.last() else { return Ok(record.value.len) };
        let end = last.end(*first);
        self.repair(run_id, &steps).await?;
        Ok(end)
    }

    /// The record of a run, repaired first if a step lies beyond it. A finished run has no
    /// step beyond the one that finished it, so its record is taken as it is.
    async fn up_to_date(&self, record: Versioned<RunDoc>) -> Result<RunDoc> {
        if record.value.status.is_terminal() {
            return Ok(record.value);
        }
        let run_id = record.value.run_id.clone();
        if self.get::<StepDoc>(&self.inner.journal, &step_key(&run_id, record.value.len)).await?.is_none() {
            return Ok(record.value);
        }
        self.journal_end(&run_id, &record).await?;
        Ok(self.record(&run_id).await?.map_or(record.value, |fresh| fresh.value))
    }

    /// Applies the effects of `steps` again, then advances the record past them.
    ///
    /// A last step that means to hold the run, younger than [`HOLD_REPAIR_GRACE`] and with no
    /// hold yet, is left unrepaired (the record stays before it): its writer is most likely
    /// alive and about to take the hold, and handing the run out now would make a worker take
    /// over a run that writer is about to execute (its attempts then journaled as
    /// interrupted). A reader after the grace repairs it, and hands the run out if its writer
    /// died. The record never moves past a step whose run nobody may claim.
    async fn repair(&self, run_id: &str, steps: &[(u64, StepDoc)]) -> Result<()> {
        let mut repaired = 0;
        for (i, (_, step)) in steps.iter().enumerate() {
            if step.effects {
                self.apply_tasks(run_id, step.status, &step.done, &step.queue).await?;
                if step.status.is_some_and(|s| !holds(s)) {
                    self.remove(&self.inner.holds, &token(run_id)).await?;
                } else if step.hold {
                    // Whatever hold there is (the writer's, most likely) stays.
                    let key = token(run_id);
                    let last = i + 1 == steps.len();
                    if last && !step.older_than(HOLD_REPAIR_GRACE) {
                        if self.get::<HoldDoc>(&self.inner.holds, &key).await?.is_none() {
                            break;
                        }
                    } else {
                        let released = HoldDoc { owner: RELEASED.to_owned(), until_ms: 0 };
                        if self.kv_create(&self.inner.holds, &key, &released).await?.is_some() {
                            self.wake().await;
                        }
                    }
                }
            }
            repaired = i + 1;
        }
        let steps = &steps[..repaired];
        if let Some((first, last)) = steps.last() {
            let status = steps.iter().rev().find_map(|(_, s)| s.status);
            let updated = last.entries.last().map(|e| e.at_ms);
            self.advance(run_id, last.end(*first), status, updated, None).await?;
        }
        Ok(())
    }

    /// Moves the record's `len` to `end` (unless it is there already) with the status and
    /// time of the step that ends there.
    /// `known` is the record as the caller last read it, tried first.
    async fn advance(
        &self,
        run_id: &str,
        end: u64,
        status: Option<RunStatus>,
        updated_ms: Option<u64>,
        known: Option<Versioned<RunDoc>>,
    ) -> Result<()> {
        self.change_record(run_id, known, |doc| {
            if doc.len >= end {
                return false;
            }
            doc.len = end;
            if let Some(status) = status {
                doc.status = status;
            }
            if let Some(at) = updated_ms {
                doc.updated_ms = at;
            }
            true
        })
        .await
    }

    /// Changes the run record by compare-and-set: `change` edits it, or says there is
    /// nothing to write (`false`). Tried first on `known` (the record as the caller last
    /// read it), then on fresh reads for as long as other writers get there first.
    async fn change_record(
        &self,
        run_id: &str,
        mut known: Option<Versioned<RunDoc>>,
        change: impl Fn(&mut RunDoc) -> bool,
    ) -> Result<()> {
        let key = token(run_id);
        for _ in 0..RETRIES {
            let current = match known.take() {
                Some(record) => Some(record),
                None => self.record(run_id).await?,
            };
            let Some(Versioned { value: mut doc, revision }) = current else {
                return Err(Error::RunNotFound { run_id: run_id.to_owned() });
            };
            if !change(&mut doc) || self.update(&self.inner.runs, &key, &doc, revision).await?.is_some() {
                return Ok(());
            }
        }
        Err(self.fail(&format!("cannot update the record of run '{run_id}'"), "too many concurrent writers"))
    }

    /// Removes resolved tasks (all of the run's when `status` is terminal) and queues
    /// `queue`; says whether anything was queued.
    async fn apply_tasks(
        &self,
        run_id: &str,
        status: Option<RunStatus>,
        done: &[TaskJson],
        queue: &[TaskJson],
    ) -> Result<bool> {
        if status.is_some_and(RunStatus::is_terminal) {
            let prefix = format!("{}.", token(run_id));
            for (key, _) in self.scan::<TaskDoc>(&self.inner.tasks, &prefix).await? {
                self.remove(&self.inner.tasks, &key).await?;
            }
            return Ok(false);
        }
        for task in done {
            self.remove(&self.inner.tasks, &task_key(&QueuedTask::from(task))).await?;
        }
        let mut queued = false;
        for task in queue {
            let doc = TaskDoc { task: task.clone(), owner: None, until_ms: 0, deliveries: 0 };
            queued |= self.kv_create(&self.inner.tasks, &task_key(&QueuedTask::from(task)), &doc).await?.is_some();
        }
        Ok(queued)
    }

    /// Makes `owner` hold the run unless another owner holds it, even with an expired hold
    /// (see [`Step::ready`]); says whether it does. The decision is a compare-and-set on
    /// the hold, so it is the hold's state when written.
    /// `known` is the hold as the caller last read it (`Some(None)`: there was none), tried
    /// first. `end` is where the caller's step ends the journal.
    ///
    /// A hold is created only while the journal still ends with the caller's step: a writer
    /// paused between its step and this (past its lease) finds the run moved on by whoever
    /// took it over, perhaps finished and its hold removed, and must not hold it again.
    async fn take_hold(
        &self,
        run_id: &str,
        owner: &str,
        lease_for: Duration,
        mut known: Option<Option<Versioned<HoldDoc>>>,
        end: u64,
    ) -> Result<bool> {
        let key = token(run_id);
        for _ in 0..RETRIES {
            let current = match known.take() {
                Some(hold) => hold,
                None => self.get::<HoldDoc>(&self.inner.holds, &key).await?,
            };
            match current {
                None => {
                    // Steps form one chain: one that starts at `end` means the run moved on.
                    if self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, end)).await?.is_some() {
                        return Ok(false);
                    }
                    let mine = HoldDoc { owner: owner.to_owned(), until_ms: now_ms() + lease_for.as_millis() as u64 };
                    if self.kv_create(&self.inner.holds, &key, &mine).await?.is_some() {
                        return Ok(true);
                    }
                }
                // Handed out by a reader's repair of this very step while this writer applied its
                // effects (a repair's hand-out has no time; a worker's own hand-back has one):
                // still nobody's, so the writer takes it, if the run has not moved on.
                Some(Versioned { value, revision }) if value.owner == RELEASED && value.until_ms == 0 => {
                    if self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, end)).await?.is_some() {
                        return Ok(false);
                    }
                    let mine = HoldDoc { owner: owner.to_owned(), until_ms: now_ms() + lease_for.as_millis() as u64 };
                    if self.update(&self.inner.holds, &key, &mine, revision).await?.is_some() {
                        return Ok(true);
                    }
                }
                Some(Versioned { value, .. }) if value.owner != owner => return Ok(false),
                Some(Versioned { value, revision }) => {
                    // Confirm it by writing it back: a claim in between wins.
                    if self.update(&self.inner.holds, &key, &value, revision).await?.is_some() {
                        return Ok(true);
                    }
                }
            }
        }
        Err(self.fail(&format!("cannot update the hold of run '{run_id}'"), "too many concurrent writers"))
    }

    /// Writes one step; see the module documentation for the protocol. `effects` carries a
    /// durable step's ready and resolved tasks and owner; without it (an append), holds and
    /// tasks are left alone.
    async fn write_step(
        &self,
        run_id: &str,
        expected_seq: u64,
        entries: &[StoredEntry],
        status: Option<RunStatus>,
        effects: Option<StepEffects<'_>>,
    ) -> Result<bool> {
        let Some(record) = self.record(run_id).await? else {
            return Err(Error::RunNotFound { run_id: run_id.to_owned() });
        };
        let conflict = |found| Error::Conflict { run_id: run_id.to_owned(), expected: expected_seq, found };
        let end = self.journal_end(run_id, &record).await?;
        // Unless the walk found steps beyond it, the record is likely unchanged when the
        // step is written: its update is tried from this read first.
        let known = (end == record.value.len).then_some(record);
        if end != expected_seq {
            return Err(conflict(end));
        }
        let mut stored = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            if e.seq != expected_seq + i as u64 {
                return Err(Error::Store(format!(
                    "run '{run_id}': entry {i} of a step at {expected_seq} has seq {}",
                    e.seq
                )));
            }
            stored.push(EntryJson { seq: e.seq, at_ms: e.at_ms, entry: e.entry.clone() });
        }
        let StepEffects { ready, done, owner } = effects.unwrap_or(StepEffects { ready: &[], done: &[], owner: None });
        let terminal = status.is_some_and(RunStatus::is_terminal);
        let holdable = status.is_none_or(holds);
        // Whether the writer means to hold the run: if so its ready tasks are not queued.
        let mut hold = None;
        let wants_hold = match owner {
            Some((me, _)) if holdable && !terminal => {
                let current = self.get::<HoldDoc>(&self.inner.holds, &token(run_id)).await?;
                let wants = current.as_ref().is_none_or(|h| h.value.owner == me);
                hold = Some(current);
                wants
            }
            _ => false,
        };
        let doc = StepDoc {
            entries: stored,
            status,
            queue: if wants_hold || terminal { Vec::new() } else { ready.iter().map(TaskJson::from).collect() },
            done: done.iter().map(TaskJson::from).collect(),
            effects: effects.is_some(),
            hold: wants_hold,
        };
        if !entries.is_empty()
            && self.kv_create(&self.inner.journal, &step_key(run_id, expected_seq), &doc).await?.is_none()
            && !self.is_ours(run_id, expected_seq, &doc).await?
        {
            let found = match self.record(run_id).await? {
                Some(record) => self.journal_end(run_id, &record).await?,
                None => expected_seq,
            };
            return Err(conflict(found.max(expected_seq + 1)));
        }
        // The step is written; now its effects.
        let mut held = false;
        if effects.is_some() {
            if !holdable || terminal {
                self.remove(&self.inner.holds, &token(run_id)).await?;
            } else if let (true, Some((me, lease_for))) = (wants_hold, owner) {
                let end = expected_seq + entries.len() as u64;
                held = self.take_hold(run_id, me, lease_for, hold, end).await?;
            }
            let queue: Vec<TaskJson> =
                if held || terminal { Vec::new() } else { ready.iter().map(TaskJson::from).collect() };
            if self.apply_tasks(run_id, status, &doc.done, &queue).await? {
                self.wake().await;
            }
        }
        if !entries.is_empty() {
            let end = expected_seq + entries.len() as u64;
            self.advance(run_id, end, status, entries.last().map(|e| e.at_ms), known).await?;
        } else if let Some(status) = status {
            self.set_status_doc(run_id, status, None).await?;
        }
        Ok(held)
    }

    /// Whether the step stored at `first` is `doc`: an earlier try of this very write that
    /// landed although its caller heard otherwise (its reply was lost).
    async fn is_ours(&self, run_id: &str, first: u64, doc: &StepDoc) -> Result<bool> {
        let Some(stored) = self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, first)).await? else {
            return Ok(false);
        };
        let json = |step: &StepDoc| serde_json::to_string(&step.entries).ok();
        Ok(json(&stored.value).is_some() && json(&stored.value) == json(doc))
    }

    /// Sets the record's status (and `updated_ms`, if given) by compare-and-set.
    async fn set_status_doc(&self, run_id: &str, status: RunStatus, updated_ms: Option<u64>) -> Result<()> {
        self.change_record(run_id, None, |doc| {
            doc.status = status;
            if let Some(at) = updated_ms {
                doc.updated_ms = at;
            }
            true
        })
        .await
    }

    /// The record and whole journal of a run, repairing effects a crashed writer left out.
    /// The steps are read key by key ([`NatsStore::walk`]): a filtered scan of the bucket
    /// costs the server time in proportion to the whole bucket (every run's steps) on
    /// nats-server 2.9, which made loading runs slower as a batch grew.
    async fn load_run(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        let Some(record) = self.record(run_id).await? else { return Ok(None) };
        let steps = self.walk(run_id, 0).await?;
        let end = steps.last().map_or(0, |(first, step)| step.end(*first));
        let mut doc = record.value;
        if end > doc.len {
            let beyond: Vec<(u64, StepDoc)> = steps.iter().filter(|(first, _)| *first >= doc.len).cloned().collect();
            self.repair(run_id, &beyond).await?;
            if let Some(fresh) = self.record(run_id).await? {
                doc = fresh.value;
            }
        }
        Ok(Some((doc.record(), entries_of(steps, 0))))
    }

    /// Creates a run: step 0, then its hold or tasks, then its record.
    async fn create_run_with(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
        effects: bool,
    ) -> Result<Created> {
        let run_id = record.run_id.as_str();
        let run = |len: u64, order: u64| RunDoc {
            run_id: run_id.to_owned(),
            graph: record.graph.clone(),
            version: record.version.clone(),
            status: record.status,
            created_ms: record.created_ms,
            updated_ms: record.updated_ms,
            len,
            order,
        };
        let queue: Vec<TaskJson> =
            if effects && owner.is_none() { ready.iter().map(TaskJson::from).collect() } else { Vec::new() };
        if first.is_empty() {
            // No step 0 to create (an empty one would stand where the first append goes):
            // the record is the run's creation, and sorts before the runs created in the
            // same millisecond.
            if self.kv_create(&self.inner.runs, &token(run_id), &run(0, 0)).await?.is_none() {
                let (record, journal) =
                    self.load_run(run_id).await?.ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
                return Ok(Created::Existing { record, journal });
            }
            self.create_effects(run_id, &queue, owner, effects).await?;
            return Ok(Created::New);
        }
        let doc = StepDoc {
            entries: first.iter().map(|e| EntryJson { seq: e.seq, at_ms: e.at_ms, entry: e.entry.clone() }).collect(),
            status: None,
            queue,
            done: Vec::new(),
            effects,
            // A creator that dies before holding the run is handled below, with the record.
            hold: false,
        };
        let Some(order) = self.kv_create(&self.inner.journal, &step_key(run_id, 0), &doc).await? else {
            // The run exists, or is being created: its creator writes the record next.
            for _ in 0..20 {
                if let Some((record, journal)) = self.load_run(run_id).await? {
                    return Ok(Created::Existing { record, journal });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Its creator died between step 0 and the record. Write the record, behind
            // step 0, so that loading it applies step 0's effects (queues its tasks); if
            // the creator meant to hold the run, hand it to whoever claims it.
            let step0 = self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, 0)).await?;
            if let Some(step0) = &step0
                && step0.value.effects
                && step0.value.queue.is_empty()
            {
                let released = HoldDoc { owner: RELEASED.to_owned(), until_ms: 0 };
                self.kv_create(&self.inner.holds, &token(run_id), &released).await?;
            }
            self.kv_create(&self.inner.runs, &token(run_id), &run(0, step0.map_or(0, |s| s.revision))).await?;
            let (record, journal) =
                self.load_run(run_id).await?.ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
            return Ok(Created::Existing { record, journal });
        };
        self.create_effects(run_id, &doc.queue, owner, effects).await?;
        self.kv_create(&self.inner.runs, &token(run_id), &run(first.len() as u64, order)).await?;
        Ok(Created::New)
    }

    /// A new run's hold (with an owner) or queued tasks (without).
    async fn create_effects(
        &self,
        run_id: &str,
        queue: &[TaskJson],
        owner: Option<(&str, Duration)>,
        effects: bool,
    ) -> Result<()> {
        if !effects {
            return Ok(());
        }
        match owner {
            Some((owner, lease_for)) => {
                let hold = HoldDoc { owner: owner.to_owned(), until_ms: now_ms() + lease_for.as_millis() as u64 };
                self.put(&self.inner.holds, &token(run_id), &hold).await
            }
            None => {
                if self.apply_tasks(run_id, None, &[], queue).await? {
                    self.wake().await;
                }
                Ok(())
            }
        }
    }

    /// Leases the task record `key` (read at `revision`) to `owner`; `None` if it changed.
    async fn lease(
        &self,
        key: &str,
        mut doc: TaskDoc,
        revision: u64,
        owner: &str,
        until_ms: u64,
    ) -> Result<Option<Lease>> {
        doc.owner = Some(owner.to_owned());
        doc.until_ms = until_ms;
        doc.deliveries += 1;
        Ok(self
            .update(&self.inner.tasks, key, &doc, revision)
            .await?
            .map(|_| Lease { task: QueuedTask::from(&doc.task), deliveries: doc.deliveries }))
    }

    /// One pass of a claim: expired holds, then due tasks; also when the next thing falls due.
    async fn claim_once(&self, owner: &str, max: usize, lease_for: Duration) -> Result<(Vec<Claim>, Option<u64>)> {
        let now = now_ms();
        let until = now + lease_for.as_millis() as u64;
        let mut claims = Vec::new();
        let mut next_due: Option<u64> = None;
        for (key, hold) in self.scan::<HoldDoc>(&self.inner.holds, "").await? {
            if hold.value.until_ms > now {
                next_due = Some(next_due.map_or(hold.value.until_ms, |d| d.min(hold.value.until_ms)));
                continue;
            }
            if claims.len() >= max {
                continue;
            }
            let Some(run) = self.get::<RunDoc>(&self.inner.runs, &key).await? else { continue };
            let mine = HoldDoc { owner: owner.to_owned(), until_ms: until };
            if self.update(&self.inner.holds, &key, &mine, hold.revision).await?.is_some() {
                claims.push(Claim::Run(run.value.run_id));
            }
        }
        if claims.len() >= max {
            return Ok((claims, next_due));
        }
        let mut free = Vec::new();
        for (key, task) in self.scan::<TaskDoc>(&self.inner.tasks, "").await? {
            let doc = &task.value;
            let due = if doc.until_ms > now { doc.until_ms } else { doc.task.not_before_ms };
            if due > now {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
            } else {
                free.push((doc.task.not_before_ms, task.revision, key, task.value));
            }
        }
        free.sort_by_key(|(not_before, revision, _, _)| (*not_before, *revision));
        for (_, revision, key, doc) in free {
            if claims.len() >= max {
                break;
            }
            if let Some(lease) = self.lease(&key, doc, revision, owner, until).await? {
                claims.push(Claim::Task(lease));
            }
        }
        Ok((claims, next_due))
    }
}

/// The entries of `steps` from `from` on.
fn entries_of(steps: Vec<(u64, StepDoc)>, from: u64) -> Vec<StoredEntry> {
    steps
        .into_iter()
        .flat_map(|(_, step)| step.entries)
        .filter(|e| e.seq >= from)
        .map(|e| StoredEntry { seq: e.seq, at_ms: e.at_ms, entry: e.entry })
        .collect()
}

#[async_trait]
impl JournalStore for NatsStore {
    async fn create_run(&self, record: &RunRecord, first: &[StoredEntry]) -> Result<Created> {
        self.timed("cannot create a run", Duration::ZERO, self.create_run_with(record, first, &[], None, false)).await
    }

    async fn append(&self, run_id: &str, expected_seq: u64, entries: &[StoredEntry]) -> Result<()> {
        let status = entries.iter().rev().find_map(|s| match &s.entry {
            JournalEntry::RunFinished { status, .. } => Some(*status),
            _ => None,
        });
        self.timed(
            "cannot append to a journal",
            Duration::ZERO,
            self.write_step(run_id, expected_seq, entries, status, None),
        )
        .await
        .map(|_| ())
    }

    /// A run whose step 0 exists without its record is being created (its tasks may be
    /// queued already, and claimed): the record is waited for, up to half a second, rather
    /// than the run reported missing.
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        self.timed("cannot load a run", Duration::ZERO, async {
            for _ in 0..20 {
                if let Some(found) = self.load_run(run_id).await? {
                    return Ok(Some(found));
                }
                if self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, 0)).await?.is_none() {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok(None)
        })
        .await
    }

    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        self.timed("cannot set a run's status", Duration::ZERO, self.set_status_doc(run_id, status, Some(now_ms())))
            .await
    }

    /// Scans the run records (there is no index to seek in: every page reads the bucket's
    /// latest records) and keeps those after the cursor that match, with the status
    /// filter loose at first: a record that has not finished may be behind its journal
    /// (its writer died before updating it), so one whose status differs is kept if that
    /// status is not final. The candidates are then sorted and brought up to date in
    /// listing order, 16 at a time, until `limit + 1` have the status asked for, so that
    /// no run shows a status it has left; a page brings up to date only the runs it looks
    /// at, not the whole listing. A record's position (`created_ms`, `order`) never changes
    /// when it is brought up to date.
    ///
    /// Runs created without journal entries (the engine never does: a run starts with
    /// `RunStarted`) have `order` 0, so such runs created in the same millisecond share a
    /// position and a page boundary falling among them skips the rest of them.
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        self.timed("cannot list runs", Duration::ZERO, async {
            if query.limit == 0 {
                return Ok(RunPage::default());
            }
            let position = |run: &RunDoc| RunCursor { created_ms: run.created_ms, order: run.order };
            let mut candidates: Vec<Versioned<RunDoc>> = self
                .scan::<RunDoc>(&self.inner.runs, "")
                .await?
                .into_iter()
                .map(|(_, run)| run)
                .filter(|run| {
                    query.graph.as_ref().is_none_or(|g| run.value.graph == *g)
                        && query.status.is_none_or(|s| run.value.status == s || !run.value.status.is_terminal())
                        && query.after.is_none_or(|after| position(&run.value).is_after(&after))
                })
                .collect();
            candidates
                .sort_by(|a, b| b.value.created_ms.cmp(&a.value.created_ms).then(b.value.order.cmp(&a.value.order)));
            let matching: Vec<(RunCursor, RunRecord)> = futures_util::stream::iter(candidates)
                .map(|run| self.up_to_date(run))
                .buffered(16)
                .try_filter(|run| std::future::ready(query.status.is_none_or(|s| run.status == s)))
                .map_ok(|run| (position(&run), run.record()))
                .take(query.limit.saturating_add(1))
                .try_collect()
                .await?;
            Ok(RunPage::of(matching, query.limit))
        })
        .await
    }
}

#[async_trait]
impl TaskQueue for NatsStore {
    async fn enqueue(&self, tasks: &[QueuedTask]) -> Result<()> {
        self.timed("cannot queue tasks", Duration::ZERO, async {
            let mut queued = false;
            for task in tasks {
                let doc = TaskDoc { task: TaskJson::from(task), owner: None, until_ms: 0, deliveries: 0 };
                queued |= self.kv_create(&self.inner.tasks, &task_key(task), &doc).await?.is_some();
            }
            if queued {
                self.wake().await;
            }
            Ok(())
        })
        .await
    }

    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a wake-up in between is not missed.
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (claims, next_due) =
                self.timed("cannot claim tasks", Duration::ZERO, self.claim_once(owner, max, lease_for)).await?;
            if !claims.is_empty() || max == 0 {
                return Ok(claims);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let until_due = next_due.map(|at| Duration::from_millis(at.saturating_sub(now_ms()).max(1)));
            let nap = until_due.map_or(POLL, |d| d.min(POLL)).min(deadline - now);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>> {
        self.timed("cannot take a run over", Duration::ZERO, async {
            let until = now_ms() + lease_for.as_millis() as u64;
            if let Some(run) = self.record(run_id).await?
                && holds(run.value.status)
            {
                let hold = HoldDoc { owner: owner.to_owned(), until_ms: until };
                self.put(&self.inner.holds, &token(run_id), &hold).await?;
            }
            let prefix = format!("{}.", token(run_id));
            let mut leases = Vec::new();
            for (key, task) in self.scan::<TaskDoc>(&self.inner.tasks, &prefix).await? {
                let (mut doc, mut revision) = (task.value, task.revision);
                for _ in 0..RETRIES {
                    if let Some(lease) = self.lease(&key, doc.clone(), revision, owner, until).await? {
                        leases.push(lease);
                        break;
                    }
                    // Changed since the scan: take what it is now, if it is still there.
                    match self.get::<TaskDoc>(&self.inner.tasks, &key).await? {
                        Some(fresh) => (doc, revision) = (fresh.value, fresh.revision),
                        None => break,
                    }
                }
            }
            Ok(leases)
        })
        .await
    }

    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()> {
        self.timed("cannot renew leases", Duration::ZERO, async {
            let until = now_ms() + lease_for.as_millis() as u64;
            // A record that changed since the scan was taken by someone else: it is no
            // longer the owner's to renew.
            let mut freed = false;
            for (key, hold) in self.scan::<HoldDoc>(&self.inner.holds, "").await? {
                if hold.value.owner == owner {
                    let renewed = HoldDoc { owner: owner.to_owned(), until_ms: until };
                    freed |= self.update(&self.inner.holds, &key, &renewed, hold.revision).await?.is_some()
                        && lease_for.is_zero();
                }
            }
            for (key, task) in self.scan::<TaskDoc>(&self.inner.tasks, "").await? {
                if task.value.owner.as_deref() == Some(owner) {
                    let mut doc = task.value;
                    doc.until_ms = until;
                    freed |= self.update(&self.inner.tasks, &key, &doc, task.revision).await?.is_some()
                        && lease_for.is_zero();
                }
            }
            if freed {
                self.wake().await;
            }
            Ok(())
        })
        .await
    }

    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()> {
        self.timed("cannot acknowledge a task", Duration::ZERO, async {
            let key = task_key(task);
            let not_held = || {
                Error::Store(format!(
                    "task {} is not held by {owner}: its lease expired, or it was acknowledged",
                    task.key()
                ))
            };
            match self.get::<TaskDoc>(&self.inner.tasks, &key).await? {
                Some(held) if held.value.owner.as_deref() == Some(owner) && held.value.until_ms > now_ms() => {
                    if self.remove_if(&self.inner.tasks, &key, held.revision).await? { Ok(()) } else { Err(not_held()) }
                }
                _ => Err(not_held()),
            }
        })
        .await
    }

    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()> {
        self.timed("cannot release tasks", Duration::ZERO, async {
            let mut released = false;
            for task in tasks {
                let key = task_key(task);
                for _ in 0..RETRIES {
                    let Some(held) = self.get::<TaskDoc>(&self.inner.tasks, &key).await? else { break };
                    if held.value.owner.as_deref() != Some(owner) {
                        break;
                    }
                    let mut doc = held.value;
                    doc.owner = None;
                    doc.until_ms = 0;
                    doc.task.not_before_ms = not_before_ms;
                    doc.deliveries = doc.deliveries.saturating_sub(1);
                    if self.update(&self.inner.tasks, &key, &doc, held.revision).await?.is_some() {
                        released = true;
                        break;
                    }
                }
            }
            if released {
                self.wake().await;
            }
            Ok(())
        })
        .await
    }

    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()> {
        self.timed("cannot release a run", Duration::ZERO, async {
            let key = token(run_id);
            for _ in 0..RETRIES {
                let Some(hold) = self.get::<HoldDoc>(&self.inner.holds, &key).await? else { return Ok(()) };
                if hold.value.owner != owner {
                    return Ok(());
                }
                let released = HoldDoc { owner: RELEASED.to_owned(), until_ms: not_before_ms };
                if self.update(&self.inner.holds, &key, &released, hold.revision).await?.is_some() {
                    self.wake().await;
                    return Ok(());
                }
            }
            Err(self.fail(&format!("cannot release run '{run_id}'"), "too many concurrent writers"))
        })
        .await
    }

    async fn holdings(&self, owner: &str) -> Result<Holdings> {
        self.timed("cannot read what an owner holds", Duration::ZERO, async {
            let mut held = Holdings::default();
            // Hold keys are escaped run ids; the run record has the id itself.
            for (key, hold) in self.scan::<HoldDoc>(&self.inner.holds, "").await? {
                if hold.value.owner == owner
                    && let Some(run) = self.get::<RunDoc>(&self.inner.runs, &key).await?
                {
                    held.runs.push(run.value.run_id);
                }
            }
            held.runs.sort();
            for (_, task) in self.scan::<TaskDoc>(&self.inner.tasks, "").await? {
                if task.value.owner.as_deref() == Some(owner) {
                    held.tasks.push(QueuedTask::from(&task.value.task));
                }
            }
            Ok(held)
        })
        .await
    }

    async fn holder(&self, run_id: &str) -> Result<Option<String>> {
        self.timed("cannot read who holds a run", Duration::ZERO, async {
            Ok(self.get::<HoldDoc>(&self.inner.holds, &token(run_id)).await?.map(|hold| hold.value.owner))
        })
        .await
    }
}

#[async_trait]
impl DurableStore for NatsStore {
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        self.timed("cannot create a run", Duration::ZERO, self.create_run_with(record, first, ready, owner, true)).await
    }

    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        self.timed(
            "cannot write a step",
            Duration::ZERO,
            self.write_step(
                step.run_id,
                step.expected_seq,
                step.entries,
                Some(step.status),
                Some(StepEffects { ready: step.ready, done: step.done, owner }),
            ),
        )
        .await
    }

    /// One bucket, `ff_{ns}_graphs`, key `{name}.{version}` (escaped), value the record.
    async fn register_graph(&self, graph: &GraphRecord) -> Result<()> {
        self.timed("cannot register a graph", Duration::ZERO, async {
            let key = format!("{}.{}", token(&graph.name), token(&graph.version));
            // A worker's record replaces any; a structure-only one is written only if none is there.
            if graph.worker {
                self.put(&self.inner.graphs, &key, graph).await
            } else {
                self.kv_create(&self.inner.graphs, &key, graph).await.map(drop)
            }
        })
        .await
    }

    async fn graphs(&self) -> Result<Vec<GraphRecord>> {
        self.timed("cannot list the registered graphs", Duration::ZERO, async {
            let mut graphs: Vec<GraphRecord> = self
                .scan::<GraphRecord>(&self.inner.graphs, "")
                .await?
                .into_iter()
                .map(|(_, graph)| graph.value)
                .collect();
            crate::store::sort_graphs(&mut graphs);
            Ok(graphs)
        })
        .await
    }

    fn max_write_bytes(&self) -> Option<usize> {
        Some(NatsStore::max_write_bytes(self))
    }

    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>> {
        self.timed("cannot load a journal", Duration::ZERO, async {
            let Some(record) = self.record(run_id).await? else {
                return Err(Error::RunNotFound { run_id: run_id.to_owned() });
            };
            // From the step starting at `seq`, or the record's boundary if it is not past it.
            let from = if record.value.len <= seq { record.value.len } else { seq };
            let steps = self.walk(run_id, from).await?;
            if from < record.value.len && steps.is_empty() {
                // `seq` is inside a step: read the whole chain.
                return Ok(entries_of(self.all_steps(run_id).await?, seq));
            }
            if let Some((first, last)) = steps.last()
                && last.end(*first) > record.value.len
            {
                let beyond: Vec<(u64, StepDoc)> =
                    steps.iter().filter(|(first, _)| *first >= record.value.len).cloned().collect();
                self.repair(run_id, &beyond).await?;
            }
            Ok(entries_of(steps, seq))
        })
        .await
    }
}

/// Crash recovery, which the contract tests cannot reach from outside. These need the NATS
/// server at `FERROFLOW_NATS_URL` (default `nats://127.0.0.1:4222`), like
/// `tests/nats_context.rs`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn url() -> String {
        std::env::var("FERROFLOW_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
    }

    /// Deletes the namespace's buckets when dropped.
    struct Namespace(String);

    impl Drop for Namespace {
        fn drop(&mut self) {
            let namespace = self.0.clone();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                runtime.block_on(NatsStore::delete_namespace(&url(), &namespace))
            })
            .join();
        }
    }

    fn task(node: &str) -> QueuedTask {
        QueuedTask { run_id: "r1".into(), node: node.into(), item: None, attempt: 1, not_before_ms: 0 }
    }

    /// A store in a namespace of its own, deleted with the guard, holding run r1 with its
    /// task a queued and leased to "w".
    async fn a_run_with_a_leased() -> (NatsStore, Namespace) {
        let namespace = format!("unit{}", uuid::Uuid::now_v7().simple());
        let store = NatsStore::connect(&url(), &namespace).await.unwrap();
        let guard = Namespace(namespace);
        let record = RunRecord {
            run_id: "r1".into(),
            graph: "g".into(),
            version: "v1".into(),
            status: RunStatus::Running,
            created_ms: 100,
            updated_ms: 100,
        };
        let input = Value::from(serde_json::json!(1));
        let started = StoredEntry {
            seq: 0,
            at_ms: 100,
            entry: JournalEntry::RunStarted { graph: "g".into(), version: "v1".into(), input },
        };
        store.create(&record, &[started], &[task("a")], None).await.unwrap();
        assert_eq!(store.claim("w", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap().len(), 1);
        (store, guard)
    }

    /// Writes the step completing a (as its writer would, then dies): only the step.
    async fn write_only_the_step(store: &NatsStore, status: RunStatus, queue: &[&str], hold: bool) {
        let output = Value::from(serde_json::json!("a"));
        let completed = JournalEntry::NodeCompleted { node: "a".into(), item: None, attempt: 1, output };
        let step = StepDoc {
            entries: vec![EntryJson { seq: 1, at_ms: 110, entry: completed }],
            status: Some(status),
            queue: queue.iter().map(|node| TaskJson::from(&task(node))).collect(),
            done: vec![TaskJson::from(&task("a"))],
            effects: true,
            hold,
        };
        store.kv_create(&store.inner.journal, &step_key("r1", 1), &step).await.unwrap().unwrap();
        assert_eq!(store.record("r1").await.unwrap().unwrap().value.len, 1, "the record is behind");
    }

    #[tokio::test]
    async fn a_step_whose_writer_died_before_its_effects_is_repaired_by_the_next_reader() {
        let (store, _guard) = a_run_with_a_leased().await;
        write_only_the_step(&store, RunStatus::Waiting, &["b"], false).await;

        // The next reader applies them: status, length, a removed and b queued.
        let (record, journal) = store.load("r1").await.unwrap().unwrap();
        assert_eq!((record.status, record.updated_ms, journal.len()), (RunStatus::Waiting, 110, 2));
        assert_eq!(store.record("r1").await.unwrap().unwrap().value.len, 2);
        let claims = store.claim("w2", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap();
        let nodes: Vec<String> = claims
            .into_iter()
            .map(|claim| match claim {
                Claim::Task(lease) => lease.task.node,
                Claim::Run(run) => panic!("claimed run {run}"),
            })
            .collect();
        assert_eq!(nodes, ["b"]);
        // Writers see the step: the journal holds 2 entries.
        let err = store.append("r1", 1, &[]).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { expected: 1, found: 2, .. }), "{err:?}");
        store.append("r1", 2, &[]).await.unwrap();
    }

    #[tokio::test]
    async fn listing_runs_repairs_a_record_left_behind_its_journal() {
        let (store, _guard) = a_run_with_a_leased().await;
        write_only_the_step(&store, RunStatus::Completed, &[], false).await;
        let query = |status| RunQuery { status: Some(status), limit: 10, ..RunQuery::default() };
        let listed = store.list_runs(&query(RunStatus::Completed)).await.unwrap();
        assert_eq!(listed.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["r1"]);
        assert_eq!(listed.next, None);
        assert!(store.list_runs(&query(RunStatus::Running)).await.unwrap().runs.is_empty());
        assert_eq!(store.record("r1").await.unwrap().unwrap().value.len, 2);
    }

    #[tokio::test]
    async fn a_run_whose_writer_died_before_taking_its_hold_is_claimed_whole() {
        let (store, _guard) = a_run_with_a_leased().await;
        // w completes a and writes its step, meaning to hold the run and run b itself (b is
        // not queued), and dies before taking the hold.
        write_only_the_step(&store, RunStatus::Running, &[], true).await;

        // The next reader repairs the step: the run goes to whoever claims it, whole, so
        // that b is not lost; a's row is gone.
        assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 2);
        let claims = store.claim("w2", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap();
        assert!(matches!(&claims[..], [Claim::Run(run)] if run == "r1"), "{claims:?}");
        assert!(store.claim_run("w2", "r1", Duration::from_secs(30)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_young_step_that_means_to_hold_its_run_is_left_to_its_writer_and_a_later_reader() {
        let (store, _guard) = a_run_with_a_leased().await;
        // As in the test above, but the step was written just now: its writer is most likely
        // alive, about to take its hold.
        let output = Value::from(serde_json::json!("a"));
        let completed = JournalEntry::NodeCompleted { node: "a".into(), item: None, attempt: 1, output };
        let step = StepDoc {
            entries: vec![EntryJson { seq: 1, at_ms: now_ms(), entry: completed }],
            status: Some(RunStatus::Running),
            queue: vec![],
            done: vec![TaskJson::from(&task("a"))],
            effects: true,
            hold: true,
        };
        store.kv_create(&store.inner.journal, &step_key("r1", 1), &step).await.unwrap().unwrap();

        // A reader sees the step, hands nothing out and leaves the record before the step,
        // so that a reader after the grace still repairs it.
        assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 2);
        assert!(store.holder("r1").await.unwrap().is_none());
        assert_eq!(store.record("r1").await.unwrap().unwrap().value.len, 1, "the record stays behind");
        assert!(store.claim("w2", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_namespace_that_is_not_a_bucket_name_is_refused() {
        let message = match NatsStore::connect(&url(), "a.b").await {
            Err(Error::Store(message)) => message,
            other => panic!("{:?}", other.map(|_| ())),
        };
        assert!(message.contains("\"a.b\""), "{message}");
    }
}
