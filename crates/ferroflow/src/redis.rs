//! The Redis context's store: journals, run holds and the task queue on a Redis server,
//! for workers on many machines.
//!
//! [`RedisStore::connect`] takes a server URL and a **namespace**: every key the store
//! writes starts with `ff:<namespace>:`, so several deployments (or test cases) share one
//! server without seeing each other's runs. In key names the namespace is escaped (`%` as
//! `%25`, `:` as `%3A`), so that it ends at the key's second `:` and two namespaces never
//! share a key: `prod` and `prod:eu` are apart, and deleting one leaves the other. Values are stored as JSON text, never
//! pickled: the data is shared with other processes and other languages.
//!
//! # Key layout
//!
//! One run's keys share a hash tag, `{<run_id>}`, so that they live in one hash slot:
//!
//! - `ff:<ns>:{<run>}:run`, a hash: `graph`, `version`, `status`, `created_ms`,
//!   `updated_ms`, `order` (its place in the order of creation), `owner` (the run's
//!   holder; absent when nobody holds it) and `until_ms` (when the hold expires).
//! - `ff:<ns>:{<run>}:journal`, a list: one JSON record `{"seq", "at_ms", "entry"}` per
//!   journal entry, in order. The list's length is the journal's length.
//! - `ff:<ns>:{<run>}:tasks`, a set: the key names of the run's queued or leased tasks.
//! - `ff:<ns>:{<run>}:task:<task key>`, a hash per queued or leased task: `run`, `task`
//!   (JSON: run id, node, item, attempt), `nbf` (not before, ms), `deliveries`, and
//!   `owner` while it is leased.
//!
//! Keys of the namespace as a whole:
//!
//! - `ff:<ns>:runs`, a sorted set of every run, all scored 0 and ordered by member,
//!   `<created_ms, 20 digits>:<order, 20 digits>:<run id>`: a reverse range by member
//!   lists runs newest first, ties in reverse order of creation, exactly (one float score
//!   cannot hold both numbers), and a page of them starts below the exclusive bound
//!   `(<created_ms>:<order>:` of its cursor. `ff:<ns>:created` is the counter behind `order`.
//! - `ff:<ns>:holds`, a sorted set of held runs (members run ids) scored by when their
//!   hold expires. A run handed back is held by [`RELEASED`] until it may be claimed.
//! - `ff:<ns>:free`, a sorted set of the tasks nobody leases (members their key names),
//!   scored by `not_before_ms`; `ff:<ns>:leased`, the leased tasks, scored by when their
//!   lease expires.
//! - `ff:<ns>:owner:<owner>:leases` and `ff:<ns>:owner:<owner>:holds`, sets: what each
//!   owner leases and holds, so that [`TaskQueue::renew`] touches only those.
//! - `ff:<ns>:graphs`, a hash: the graphs workers registered (`name@version`, the
//!   [`GraphRecord`] as JSON).
//! - `ff:<ns>:layout`, a string: `2`, the namespace's keys are escaped (see above).
//!
//! # Scripts
//!
//! Every write is one Lua script run with EVALSHA through [`redis::Script`] (which loads
//! it again after a server restart), so each operation is atomic: no other client sees
//! half of it. [`DurableStore::commit`] checks the journal's length against
//! `expected_seq` (else [`Error::Conflict`], and nothing is written), appends the
//! entries, records the status and `updated_ms`, applies the hold logic of
//! [`MemoryStore`](crate::MemoryStore) (a step leaving the run waiting or finished ends its
//! hold; a finished run loses all its tasks; a live hold of another owner keeps the run and
//! the ready tasks are queued instead), removes the `done` tasks and queues the ready ones
//! when the owner does not hold the run. [`DurableStore::commit_batch`] sends all its steps
//! to the same script in one round trip; each step is checked before any of its writes, so
//! a step that fails writes nothing and the others are written. `create` and the queue's
//! operations are scripts too. The scripts start with a `#!lua` shebang (Redis 7 or newer):
//! a server out of memory then refuses a script before it runs instead of failing it
//! halfway, since Redis does not roll a script back.
//!
//! Time is the server's (`TIME` inside the scripts): leases and holds expire by one clock
//! for every worker, whatever the skew between their machines. `not_before_ms` and the
//! times given to `release` are absolute times from the caller's clock, compared with the
//! server's; the `at_ms` of journal entries are the writers'.
//!
//! # Why the task queue is not a stream
//!
//! The issue asked for a Redis Stream read through a consumer group (XREADGROUP, XACK,
//! XAUTOCLAIM). The [`TaskQueue`] contract does not fit that model, and the queue is built
//! from sorted sets and hashes instead, all of it inside the scripts:
//! - a lease lasts as long as its **holder** says (`lease_for` of `claim` and `renew`), but
//!   XAUTOCLAIM decides expiry by a minimum idle time the **claimant** gives; a renewal to
//!   zero must free the tasks at once;
//! - a task may not be handed out before its `not_before_ms`, and `release` hands a task
//!   back for later without counting a delivery: a stream hands entries out in order, at
//!   once, so these would wait in a sorted set beside it anyway;
//! - `ack` must fail once the lease expired, or when another owner holds the task: XACK
//!   checks neither, it succeeds while the entry is pending, whoever holds it;
//! - `claim_run` takes all of one run's tasks from any holder, due or not, and a finished
//!   run removes all its tasks: both need an index of a run's tasks by key, with the stream
//!   entry ids beside it.
//!
//! Each point needs state next to the stream's pending entries list, and then two
//! structures describe one lease and must be kept in step. With sorted sets every
//! operation is one script over one description of the queue, and the contract holds
//! exactly: leases by expiry (`leased`), due tasks by `not_before_ms` (`free`), holds by
//! expiry (`holds`). A claim waiting for work runs the claim script every [`POLL`] (or
//! sooner, when the script reports that a task, lease or hold falls due before) instead of
//! blocking in XREADGROUP; a waiting worker costs the server one short script per poll.
//!
//! # Redis Cluster
//!
//! The key names are ready for a cluster: a run's keys share a slot. The scripts are not:
//! on one server a script may touch the namespace's keys and several runs' keys at once,
//! and they build key names instead of declaring them all. A cluster would need the queue
//! and holds per slot (or per run), scripts that declare their keys and touch one slot
//! each, and `commit_batch` split by slot. Namespaces and run ids must then not contain
//! `{` or `}` (a namespace with them is refused already).
//!
//! # Failures
//!
//! The connection is a [`ConnectionManager`]: when the server goes away, the call in
//! flight fails, and the manager reconnects in the background (with exponential backoff)
//! for the calls that follow. Every call is bounded by the store's timeout. Errors name
//! the server (its address, never the password) and what failed: [`Error::Unavailable`]
//! when the server cannot be reached, is loading its data after a restart, or did not
//! answer in time (the engine waits for it, see `EngineConfig::outage_timeout`), and
//! [`Error::Store`] otherwise; conflicts and unknown runs are [`Error::Conflict`] and
//! [`Error::RunNotFound`] as in every store. A script is atomic, so a step either happened
//! or not; a call whose reply was lost may still have happened, which the engine finds
//! out: a retried step conflicts and finds itself in the journal, and a worker whose claim
//! failed compares [`TaskQueue::holdings`] with what it runs and releases the rest. A
//! claim abandoned mid-call (its future dropped) may have leased tasks nobody runs: they
//! are delivered again once that lease expires.
//!
//! Runs are never deleted: a finished run keeps its record and journal (its tasks are
//! removed), as in the SQLite store. Redis must therefore be configured not to evict keys
//! (`maxmemory-policy noeviction`, the default) and to persist them (AOF or RDB snapshots)
//! for the runs to be durable at all.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::journal::{JournalEntry, RunStatus, now_ms};
use crate::store::{
    Claim, Created, DurableStore, GraphRecord, Holdings, JournalStore, Lease, QueuedTask, RELEASED, RunCursor, RunPage,
    RunQuery, RunRecord, Step, StoredEntry, TaskQueue, holds,
};

/// How often a waiting [`TaskQueue::claim`] looks for work (sooner when something falls
/// due before).
pub const POLL: Duration = Duration::from_millis(20);
/// How long a call may take by default before it fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most claims one `claim` call hands out, whatever `max` says.
const MAX_CLAIMS: usize = 1 << 20;
/// The longest string Redis takes in a request by default (`proto-max-bulk-len`, 512 MiB):
/// a longer journal entry is refused before it is sent.
const MAX_BULK_BYTES: usize = 512 << 20;
/// How many members of the index of runs `list_runs` reads at most per round trip.
const MAX_BATCH: usize = 500;

/// Helpers shared by the scripts. `P` is the key prefix, `ff:<ns>`, always `ARGV[1]`.
macro_rules! lua_common {
    () => {
        r#"#!lua
local P = ARGV[1]
local FREE = P .. ':free'
local LEASED = P .. ':leased'
local HOLDS = P .. ':holds'
local function run_key(run) return P .. ':{' .. run .. '}:run' end
local function journal_key(run) return P .. ':{' .. run .. '}:journal' end
local function tasks_of(run) return P .. ':{' .. run .. '}:tasks' end
local function leases_of(owner) return P .. ':owner:' .. owner .. ':leases' end
local function holds_of(owner) return P .. ':owner:' .. owner .. ':holds' end
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Queues a task unless it is queued or leased already.
local function enqueue(tkey, run, json, nbf)
  if redis.call('EXISTS', tkey) == 1 then return end
  redis.call('HSET', tkey, 'run', run, 'task', json, 'nbf', nbf, 'deliveries', 0)
  redis.call('ZADD', FREE, nbf, tkey)
  redis.call('SADD', tasks_of(run), tkey)
end
-- Removes a task, whoever leases it.
local function drop_task(tkey)
  local t = redis.call('HMGET', tkey, 'run', 'owner')
  if not t[1] then return end
  if t[2] then redis.call('SREM', leases_of(t[2]), tkey) end
  redis.call('ZREM', FREE, tkey)
  redis.call('ZREM', LEASED, tkey)
  redis.call('SREM', tasks_of(t[1]), tkey)
  redis.call('DEL', tkey)
end
-- Leases a task to owner until `till`, whoever held it; returns {task, nbf, deliveries}.
local function lease(tkey, owner, till)
  local t = redis.call('HMGET', tkey, 'owner', 'task', 'nbf')
  if t[1] then redis.call('SREM', leases_of(t[1]), tkey) end
  redis.call('ZREM', FREE, tkey)
  redis.call('ZADD', LEASED, till, tkey)
  redis.call('SADD', leases_of(owner), tkey)
  redis.call('HSET', tkey, 'owner', owner)
  local d = redis.call('HINCRBY', tkey, 'deliveries', 1)
  return {t[2], tonumber(t[3]), d}
end
-- Makes `holder` hold the run until `till`; with holder false, ends the hold.
local function set_hold(run, holder, till)
  local rk = run_key(run)
  local old = redis.call('HGET', rk, 'owner')
  if old then redis.call('SREM', holds_of(old), run) end
  if holder then
    redis.call('HSET', rk, 'owner', holder, 'until_ms', till)
    redis.call('ZADD', HOLDS, till, run)
    redis.call('SADD', holds_of(holder), run)
  elseif old then
    redis.call('HDEL', rk, 'owner')
    redis.call('HSET', rk, 'until_ms', 0)
    redis.call('ZREM', HOLDS, run)
  end
end
-- Makes owner hold the run unless another owner holds it, even with an expired hold
-- (Step::ready); says whether it does.
local function hold(run, owner, lease_ms, now)
  local holder = redis.call('HGET', run_key(run), 'owner')
  if holder == owner then return true end
  if holder then return false end
  set_hold(run, owner, now + lease_ms)
  return true
end
"#
    };
}

/// `create`: ARGV = P, run, graph, version, status, created_ms, updated_ms, created_ms
/// as 20 digits, owner ('' for none), lease_ms, n entries, entries..., n ready,
/// (task key, run, task JSON, nbf)... Returns 1 when the run is new, 0 when it existed.
const CREATE: &str = concat!(
    lua_common!(),
    r#"
local run = ARGV[2]
local rk = run_key(run)
if redis.call('EXISTS', rk) == 1 then return 0 end
local order = redis.call('INCR', P .. ':created')
redis.call('HSET', rk, 'graph', ARGV[3], 'version', ARGV[4], 'status', ARGV[5], 'created_ms', ARGV[6],
  'updated_ms', ARGV[7], 'order', order, 'until_ms', 0)
redis.call('ZADD', P .. ':runs', 0, ARGV[8] .. ':' .. string.format('%020d', order) .. ':' .. run)
local n = tonumber(ARGV[11])
for k = 12, 11 + n do redis.call('RPUSH', journal_key(run), ARGV[k]) end
local i = 12 + n
local nr = tonumber(ARGV[i])
if ARGV[9] ~= '' then
  hold(run, ARGV[9], tonumber(ARGV[10]), server_ms())
else
  for k = 0, nr - 1 do
    local b = i + 1 + 4 * k
    enqueue(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3])
  end
end
return 1
"#
);

/// `append`: ARGV = P, run, expected_seq, finished status ('' for none), updated_ms (''
/// for none), entries... Returns {0, 0} when written, {2, 0} for an unknown run, {3,
/// found} for a conflict.
const APPEND: &str = concat!(
    lua_common!(),
    r#"
local run = ARGV[2]
local rk = run_key(run)
if redis.call('EXISTS', rk) == 0 then return {2, 0} end
local found = redis.call('LLEN', journal_key(run))
if found ~= tonumber(ARGV[3]) then return {3, found} end
for k = 6, #ARGV do redis.call('RPUSH', journal_key(run), ARGV[k]) end
if ARGV[4] ~= '' then redis.call('HSET', rk, 'status', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', rk, 'updated_ms', ARGV[5]) end
return {0, 0}
"#
);

/// `commit` and `commit_batch`: ARGV = P, owner ('' for none), lease_ms, n steps, then per
/// step: run, expected_seq, status, holds (1/0), terminal (1/0), updated_ms ('' for none),
/// n entries, entries..., n done, done task keys..., n ready, (task key, run, task JSON,
/// nbf)... Returns per step {1 or 0 (whether the owner holds the run), 0}, {2, 0} for an
/// unknown run, or {3, found} for a conflict.
const COMMIT: &str = concat!(
    lua_common!(),
    r#"
local owner = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local now = server_ms()
local out = {}
local i = 5
for s = 1, tonumber(ARGV[4]) do
  local run, expected, status = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local keeps, terminal, updated = ARGV[i + 3] == '1', ARGV[i + 4] == '1', ARGV[i + 5]
  local ne = tonumber(ARGV[i + 6])
  local entries_from = i + 7
  i = entries_from + ne
  local nd = tonumber(ARGV[i])
  local done_from = i + 1
  i = done_from + nd
  local nr = tonumber(ARGV[i])
  local ready_from = i + 1
  i = ready_from + 4 * nr
  local rk = run_key(run)
  if redis.call('EXISTS', rk) == 0 then
    out[s] = {2, 0}
  else
    local found = redis.call('LLEN', journal_key(run))
    if found ~= expected then
      out[s] = {3, found}
    else
      for k = entries_from, entries_from + ne - 1 do redis.call('RPUSH', journal_key(run), ARGV[k]) end
      redis.call('HSET', rk, 'status', status)
      if updated ~= '' then redis.call('HSET', rk, 'updated_ms', updated) end
      if not keeps then set_hold(run, false, 0) end
      if terminal then
        -- A finished run has nothing left to run, whoever holds its tasks.
        for _, tkey in ipairs(redis.call('SMEMBERS', tasks_of(run))) do drop_task(tkey) end
        out[s] = {0, 0}
      else
        for k = done_from, done_from + nd - 1 do drop_task(ARGV[k]) end
        local held = false
        if owner ~= '' and keeps then held = hold(run, owner, lease_ms, now) end
        if not held then
          for k = 0, nr - 1 do
            local b = ready_from + 4 * k
            enqueue(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3])
          end
        end
        out[s] = {held and 1 or 0, 0}
      end
    end
  end
end
return out
"#
);

/// `set_status`: ARGV = P, run, status, updated_ms. Returns 0 for an unknown run.
const SET_STATUS: &str = concat!(
    lua_common!(),
    r#"
local rk = run_key(ARGV[2])
if redis.call('EXISTS', rk) == 0 then return 0 end
redis.call('HSET', rk, 'status', ARGV[3], 'updated_ms', ARGV[4])
return 1
"#
);

/// `enqueue`: ARGV = P, (task key, run, task JSON, nbf)...
const ENQUEUE: &str = concat!(
    lua_common!(),
    r#"
for b = 2, #ARGV, 4 do enqueue(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]) end
return 0
"#
);

/// `claim`: ARGV = P, owner, max, lease_ms. Returns {server now, when the next hold, lease
/// or task falls due (-1 if nothing is held or queued), runs claimed, {task, nbf,
/// deliveries} of tasks leased}: expired holds first, then expired leases, then due tasks.
const CLAIM: &str = concat!(
    lua_common!(),
    r#"
local owner, max, lease_ms = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = server_ms()
local till = now + lease_ms
local runs, tasks = {}, {}
if max > 0 then
  for _, run in ipairs(redis.call('ZRANGE', HOLDS, '-inf', now, 'BYSCORE', 'LIMIT', 0, max)) do
    set_hold(run, owner, till)
    runs[#runs + 1] = run
  end
end
for _, z in ipairs({LEASED, FREE}) do
  local room = max - #runs - #tasks
  if room > 0 then
    for _, tkey in ipairs(redis.call('ZRANGE', z, '-inf', now, 'BYSCORE', 'LIMIT', 0, room)) do
      tasks[#tasks + 1] = lease(tkey, owner, till)
    end
  end
end
local next_due = -1
for _, z in ipairs({HOLDS, LEASED, FREE}) do
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if first[2] then
    local at = tonumber(first[2])
    if next_due < 0 or at < next_due then next_due = at end
  end
end
return {now, next_due, runs, tasks}
"#
);

/// `claim_run`: ARGV = P, owner, run, lease_ms. Returns {task, nbf, deliveries} of every
/// task of the run, now leased to the owner.
const CLAIM_RUN: &str = concat!(
    lua_common!(),
    r#"
local owner, run = ARGV[2], ARGV[3]
local till = server_ms() + tonumber(ARGV[4])
local status = redis.call('HGET', run_key(run), 'status')
if status == 'pending' or status == 'running' then set_hold(run, owner, till) end
local out = {}
for _, tkey in ipairs(redis.call('SMEMBERS', tasks_of(run))) do out[#out + 1] = lease(tkey, owner, till) end
return out
"#
);

/// `renew`: ARGV = P, owner, lease_ms.
const RENEW: &str = concat!(
    lua_common!(),
    r#"
local owner = ARGV[2]
local till = server_ms() + tonumber(ARGV[3])
for _, tkey in ipairs(redis.call('SMEMBERS', leases_of(owner))) do redis.call('ZADD', LEASED, 'XX', till, tkey) end
for _, run in ipairs(redis.call('SMEMBERS', holds_of(owner))) do
  redis.call('ZADD', HOLDS, 'XX', till, run)
  redis.call('HSET', run_key(run), 'until_ms', till)
end
return 0
"#
);

/// `ack`: ARGV = P, owner, task key. Returns 1 when removed, 0 when the owner does not
/// hold the task (any more).
const ACK: &str = concat!(
    lua_common!(),
    r#"
local owner, tkey = ARGV[2], ARGV[3]
if redis.call('HGET', tkey, 'owner') ~= owner then return 0 end
local till = redis.call('ZSCORE', LEASED, tkey)
if not till or tonumber(till) <= server_ms() then return 0 end
drop_task(tkey)
return 1
"#
);

/// `release`: ARGV = P, owner, nbf, task keys...
const RELEASE: &str = concat!(
    lua_common!(),
    r#"
local owner, nbf = ARGV[2], ARGV[3]
for k = 4, #ARGV do
  local tkey = ARGV[k]
  if redis.call('HGET', tkey, 'owner') == owner then
    redis.call('SREM', leases_of(owner), tkey)
    redis.call('HDEL', tkey, 'owner')
    redis.call('ZREM', LEASED, tkey)
    local d = tonumber(redis.call('HGET', tkey, 'deliveries'))
    redis.call('HSET', tkey, 'nbf', nbf, 'deliveries', math.max(d - 1, 0))
    redis.call('ZADD', FREE, nbf, tkey)
  end
end
return 0
"#
);

/// `release_run`: ARGV = P, owner, run, nbf, the name of a released holder.
const RELEASE_RUN: &str = concat!(
    lua_common!(),
    r#"
local owner, run = ARGV[2], ARGV[3]
if redis.call('HGET', run_key(run), 'owner') == owner then set_hold(run, ARGV[5], tonumber(ARGV[4])) end
return 0
"#
);

/// `holdings`: ARGV = P, owner. Returns {runs held, {task JSON, nbf, deliveries} leased}.
const HOLDINGS: &str = concat!(
    lua_common!(),
    r#"
local owner = ARGV[2]
local leased = {}
for _, tkey in ipairs(redis.call('SMEMBERS', leases_of(owner))) do
  local t = redis.call('HMGET', tkey, 'task', 'nbf', 'deliveries')
  if t[1] then table.insert(leased, {t[1], tonumber(t[2]), tonumber(t[3])}) end
end
return {redis.call('SMEMBERS', holds_of(owner)), leased}
"#
);

/// The scripts, hashed once per store.
struct Scripts {
    create: Script,
    append: Script,
    commit: Script,
    set_status: Script,
    enqueue: Script,
    claim: Script,
    claim_run: Script,
    renew: Script,
    ack: Script,
    release: Script,
    release_run: Script,
    holdings: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            create: Script::new(CREATE),
            append: Script::new(APPEND),
            commit: Script::new(COMMIT),
            set_status: Script::new(SET_STATUS),
            enqueue: Script::new(ENQUEUE),
            claim: Script::new(CLAIM),
            claim_run: Script::new(CLAIM_RUN),
            renew: Script::new(RENEW),
            ack: Script::new(ACK),
            release: Script::new(RELEASE),
            release_run: Script::new(RELEASE_RUN),
            holdings: Script::new(HOLDINGS),
        }
    }

    fn all(&self) -> [&Script; 12] {
        [
            &self.create,
            &self.append,
            &self.commit,
            &self.set_status,
            &self.enqueue,
            &self.claim,
            &self.claim_run,
            &self.renew,
            &self.ack,
            &self.release,
            &self.release_run,
            &self.holdings,
        ]
    }
}

/// Journals, holds and the task queue on a Redis server (7.0 or newer), under one
/// namespace. Cloning is cheap: clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    inner: std::sync::Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("server", &self.inner.server).field("prefix", &self.inner.prefix).finish()
    }
}

struct Inner {
    /// The server as errors name it: `redis://host:port`, without credentials.
    server: String,
    /// `ff:<namespace>`.
    prefix: String,
    timeout: Duration,
    scripts: Scripts,
}

/// A step's outcome as the scripts report it.
const WRITTEN: i64 = 0;
const HELD: i64 = 1;
const NOT_FOUND: i64 = 2;
const CONFLICT: i64 = 3;

/// A journal entry as stored: one JSON text per list element.
#[derive(Serialize)]
struct EntryOut<'a> {
    seq: u64,
    at_ms: u64,
    entry: &'a JournalEntry,
}

#[derive(Deserialize)]
struct EntryIn {
    seq: u64,
    at_ms: u64,
    entry: JournalEntry,
}

/// A task's identity as stored (its `not_before_ms` changes, and is kept beside it).
#[derive(Serialize)]
struct TaskOut<'a> {
    run_id: &'a str,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<u32>,
    attempt: u32,
}

#[derive(Deserialize)]
struct TaskIn {
    run_id: String,
    node: String,
    #[serde(default)]
    item: Option<u32>,
    attempt: u32,
}

/// What the claim script returns: server time, next due time, runs, tasks.
type ClaimReply = (i64, i64, Vec<String>, Vec<(String, u64, u32)>);

impl RedisStore {
    /// Connects to the server at `url` (`redis://[:password@]host[:port][/db]`, or
    /// `rediss://` for TLS if the crate is built with it) and uses the keys under
    /// `ff:<namespace>:`. Fails with a message naming the server when the URL is invalid,
    /// the server cannot be reached within [`DEFAULT_TIMEOUT`], or it cannot run the
    /// store's scripts (Redis older than 7.0).
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisStore> {
        Self::connect_with_timeout(url, namespace, DEFAULT_TIMEOUT).await
    }

    /// [`RedisStore::connect`], with every call (connecting included) bounded by `timeout`
    /// instead of [`DEFAULT_TIMEOUT`].
    pub async fn connect_with_timeout(url: &str, namespace: &str, timeout: Duration) -> Result<RedisStore> {
        if namespace.is_empty() || namespace.contains(['{', '}']) || namespace.chars().any(char::is_whitespace) {
            return Err(Error::Store(format!(
                "Redis namespace {} is not valid: give a non-empty name without braces or spaces",
                crate::limits::quote(namespace)
            )));
        }
        let client = redis::Client::open(url).map_err(|e| {
            Error::Store(format!("{} is not a valid Redis URL: {}", crate::store::redact_url(url), describe(&e)))
        })?;
        let server = format!("redis://{}", client.get_connection_info().addr());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(6)
            .set_max_delay(Duration::from_secs(2));
        let connecting = ConnectionManager::new_with_config(client, config);
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(Error::Store(format!("{server}: cannot connect: {}", describe(&e)))),
            Err(_) => {
                return Err(Error::Store(format!("{server}: cannot connect: no answer within {timeout:?}")));
            }
        };
        let store = RedisStore {
            conn,
            inner: std::sync::Arc::new(Inner {
                server,
                prefix: prefix_of(namespace),
                timeout,
                scripts: Scripts::new(),
            }),
        };
        store.refuse_old_layout(namespace).await?;
        for script in store.inner.scripts.all() {
            let mut conn = store.conn.clone();
            store
                .call("cannot load the store's Lua scripts (ferroflow needs Redis 7.0 or newer)", async move {
                    script.load_async(&mut conn).await
                })
                .await?;
        }
        Ok(store)
    }

    /// The server, as errors name it (`redis://host:port`, without credentials).
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The prefix of every key of this store: `ff:` and the namespace, escaped (see
    /// [`RedisStore::connect`]).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Refuses a namespace whose keys an earlier ferroflow wrote unescaped (see
    /// [`prefix_of`]): a namespace with `:` or `%` in its name had keys that another
    /// namespace's could share, and this code would not see them.
    ///
    /// Every store marks its namespace's keys as escaped (`<prefix>:layout`), which tells
    /// the unescaped keys of an earlier version from the escaped ones of another namespace
    /// (`ff:a%3Ab` is namespace `a:b` today, and was namespace `a%3Ab` before).
    async fn refuse_old_layout(&self, namespace: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let marker = format!("{}:layout", self.inner.prefix);
        self.call("cannot mark the namespace's keys", async move {
            redis::cmd("SET").arg(&marker).arg(KEY_LAYOUT).arg("NX").query_async::<()>(&mut conn).await
        })
        .await?;
        let old = format!("ff:{namespace}");
        if old == self.inner.prefix {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let keys = [format!("{old}:runs"), format!("{old}:graphs"), format!("{old}:holds")];
        let escaped = format!("{old}:layout");
        let (found, marked): (u64, u64) = self
            .call("cannot look for the namespace's keys", async move {
                redis::pipe().cmd("EXISTS").arg(&keys).cmd("EXISTS").arg(&escaped).query_async(&mut conn).await
            })
            .await?;
        if found == 0 || marked > 0 {
            return Ok(());
        }
        Err(Error::Store(format!(
            "{}: namespace {} holds runs under keys {old}:*, the layout of an earlier ferroflow, in which a \
             namespace with ':' or '%' in its name could share keys with another namespace. This version \
             keeps them under {}:*. Finish or cancel those runs with the earlier version, or use a namespace \
             without ':' and '%'",
            self.inner.server,
            crate::limits::quote(namespace),
            self.inner.prefix
        )))
    }

    /// Deletes every key of this store's namespace (runs, journals, holds, tasks, graphs)
    /// and returns how many there were: exactly those keys, whatever the namespace's name
    /// holds (another namespace never shares a key with this one, see [`prefix_of`], and
    /// the name is escaped out of the scan's glob pattern). For tests and for retiring a
    /// deployment: workers still using the namespace lose their work.
    pub async fn delete_namespace(&self) -> Result<u64> {
        let pattern = format!("{}:*", glob_escape(&self.inner.prefix));
        let mut conn = self.conn.clone();
        let keys: Vec<String> = self
            .call("cannot list the namespace's keys", async move {
                let mut keys = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await?;
                    keys.extend(batch);
                    if next == 0 {
                        return Ok(keys);
                    }
                    cursor = next;
                }
            })
            .await?;
        let mut deleted = 0;
        for chunk in keys.chunks(500) {
            let mut conn = self.conn.clone();
            let chunk = chunk.to_vec();
            deleted += self
                .call("cannot delete the namespace's keys", async move {
                    redis::cmd("UNLINK").arg(&chunk).query_async::<u64>(&mut conn).await
                })
                .await?;
        }
        Ok(deleted)
    }

    /// Runs one request, bounded by the store's timeout; errors name the server and `what`
    /// failed. A server that cannot be reached, is loading its data after a restart, or
    /// does not answer in time is [`Error::Unavailable`].
    async fn call<T>(&self, what: &str, request: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.inner.timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if is_outage(&e) => {
                Err(Error::Unavailable(format!("{}: {what}: {}", self.inner.server, describe(&e))))
            }
            Ok(Err(e)) => Err(Error::Store(format!("{}: {what}: {}", self.inner.server, describe(&e)))),
            Err(_) => Err(Error::Unavailable(format!(
                "{}: {what}: no answer within {:?} (the server is down, unreachable or overloaded)",
                self.inner.server, self.inner.timeout
            ))),
        }
    }

    fn run_key(&self, run_id: &str) -> String {
        format!("{}:{{{run_id}}}:run", self.inner.prefix)
    }

    fn journal_key(&self, run_id: &str) -> String {
        format!("{}:{{{run_id}}}:journal", self.inner.prefix)
    }

    /// The name of a task's hash, in its run's slot.
    fn task_key(&self, task: &QueuedTask) -> String {
        format!("{}:{{{}}}:task:{}", self.inner.prefix, task.run_id, task.key())
    }

    /// Adds `(task key, run, task JSON, nbf)` of each task to a script's arguments.
    fn task_args(&self, invocation: &mut redis::ScriptInvocation<'_>, tasks: &[QueuedTask]) -> Result<()> {
        for task in tasks {
            let json = serde_json::to_string(&TaskOut {
                run_id: &task.run_id,
                node: &task.node,
                item: task.item,
                attempt: task.attempt,
            })
            .map_err(|e| Error::Store(format!("task {} cannot be written as JSON: {e}", task.key())))?;
            invocation.arg(self.task_key(task)).arg(&task.run_id).arg(json).arg(task.not_before_ms);
        }
        Ok(())
    }

    /// Reads the leases a script returned, `{task JSON, nbf, deliveries}` each.
    fn leases(&self, rows: Vec<(String, u64, u32)>) -> Result<Vec<Lease>> {
        rows.into_iter()
            .map(|(json, not_before_ms, deliveries)| {
                let task: TaskIn = serde_json::from_str(&json).map_err(|e| {
                    Error::Store(format!("{}: a queued task cannot be read ({e}): {json}", self.inner.server))
                })?;
                Ok(Lease {
                    task: QueuedTask {
                        run_id: task.run_id,
                        node: task.node,
                        item: task.item,
                        attempt: task.attempt,
                        not_before_ms,
                    },
                    deliveries,
                })
            })
            .collect()
    }

    /// The record and journal of a run, read in one atomic round trip.
    async fn load_run(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        let mut conn = self.conn.clone();
        let (fields, rows): (HashMap<String, String>, Vec<String>) = self
            .call(&format!("cannot read run '{run_id}'"), async {
                redis::pipe()
                    .atomic()
                    .hgetall(self.run_key(run_id))
                    .lrange(self.journal_key(run_id), 0, -1)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let record = self.record(run_id, &fields)?;
        let journal = decode_journal(run_id, &record.graph, 0, rows)?;
        Ok(Some((record, journal)))
    }

    /// The position and run id of a member of the creation index,
    /// `<created_ms, 20 digits>:<order, 20 digits>:<run id>`.
    fn index_member<'m>(&self, member: &'m str) -> Result<(RunCursor, &'m str)> {
        let parsed = || {
            let number = |digits: &str| digits.parse::<u64>().ok().filter(|_| digits.len() == 20);
            let at = RunCursor { created_ms: number(member.get(..20)?)?, order: number(member.get(21..41)?)? };
            let run_id = member.get(42..)?;
            (member.get(20..21)? == ":" && member.get(41..42)? == ":").then_some((at, run_id))
        };
        parsed().ok_or_else(|| {
            Error::Store(format!(
                "{}: {:?} in the index of runs was not written by ferroflow \
                 (members are <created_ms>:<order>:<run id>, with 20 digits for each number)",
                self.inner.server, member
            ))
        })
    }

    /// A run record from its hash's fields.
    fn record(&self, run_id: &str, fields: &HashMap<String, String>) -> Result<RunRecord> {
        let field = |name: &str| {
            fields.get(name).ok_or_else(|| {
                Error::Store(format!(
                    "{}: run '{run_id}' has no field '{name}': it was not written by ferroflow",
                    self.inner.server
                ))
            })
        };
        let number = |name: &str| -> Result<u64> {
            let text = field(name)?;
            text.parse().map_err(|_| {
                Error::Store(format!("{}: run '{run_id}': field '{name}' is not a number: {text:?}", self.inner.server))
            })
        };
        Ok(RunRecord {
            run_id: run_id.to_owned(),
            graph: field("graph")?.clone(),
            version: field("version")?.clone(),
            status: status_of(&self.inner.server, field("status")?)?,
            created_ms: number("created_ms")?,
            updated_ms: number("updated_ms")?,
        })
    }

    /// Runs the commit script over `steps` (encoded already) and returns its replies.
    async fn commit_steps(
        &self,
        steps: &[(&Step<'_>, Vec<String>)],
        owner: Option<(&str, Duration)>,
    ) -> Result<Vec<(i64, u64)>> {
        let mut invocation = self.inner.scripts.commit.prepare_invoke();
        invocation
            .arg(&self.inner.prefix)
            .arg(owner.map_or("", |(owner, _)| owner))
            .arg(owner.map_or(0, |(_, lease_for)| lease_for.as_millis() as u64))
            .arg(steps.len());
        for (step, entries) in steps {
            invocation
                .arg(step.run_id)
                .arg(step.expected_seq)
                .arg(step.status.as_str())
                .arg(u8::from(holds(step.status)))
                .arg(u8::from(step.status.is_terminal()))
                .arg(step.entries.last().map_or(String::new(), |e| e.at_ms.to_string()))
                .arg(entries.len());
            for entry in entries {
                invocation.arg(entry);
            }
            invocation.arg(step.done.len());
            for task in step.done {
                invocation.arg(self.task_key(task));
            }
            invocation.arg(step.ready.len());
            self.task_args(&mut invocation, step.ready)?;
        }
        let what = match steps {
            [(step, _)] => format!("cannot write a step of run '{}'", step.run_id),
            _ => format!("cannot write {} steps", steps.len()),
        };
        let mut conn = self.conn.clone();
        self.call(&what, async move { invocation.invoke_async(&mut conn).await }).await
    }
}

/// Whether `e` says the server is out of reach for now (down, restarting, loading its data,
/// failing over), rather than that the request was wrong.
/// What `<prefix>:layout` holds: the namespace's keys are escaped ([`prefix_of`]).
const KEY_LAYOUT: &str = "2";

/// The prefix of every key of `namespace`: `ff:` and the name with `%` and `:` escaped
/// (as `%25` and `%3A`), then the keys' own parts after a `:`. The escaped name holds no
/// `:`, so a key's namespace ends at its second `:`, and no two namespaces share a key
/// (unescaped, namespace `prod` with an owner `x` had the key `ff:prod:owner:x:holds`,
/// which is also the holds of namespace `prod:owner:x`). A name without `%` and `:` keeps
/// the key names of earlier versions.
fn prefix_of(namespace: &str) -> String {
    let mut prefix = String::with_capacity(namespace.len() + 3);
    prefix.push_str("ff:");
    for c in namespace.chars() {
        match c {
            '%' => prefix.push_str("%25"),
            ':' => prefix.push_str("%3A"),
            c => prefix.push(c),
        }
    }
    prefix
}

/// `text` as a glob pattern (SCAN's MATCH) that matches only itself.
fn glob_escape(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.retry_method(),
            redis::RetryMethod::Reconnect
                | redis::RetryMethod::ReconnectFromInitialConnections
                | redis::RetryMethod::WaitAndRetry
        )
}

/// Redis's own words, with the cases people hit most spelled out.
fn describe(e: &RedisError) -> String {
    if e.is_connection_refusal() {
        format!("connection refused (is the Redis server running there?): {e}")
    } else if e.is_timeout() {
        format!("the server did not answer in time: {e}")
    } else if e.is_connection_dropped() {
        format!("the connection was lost (the server restarted or went away); it is being re-established: {e}")
    } else {
        e.to_string()
    }
}

fn status_of(server: &str, text: &str) -> Result<RunStatus> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| Error::Store(format!("{server}: unknown run status '{text}' in a run record")))
}

fn encode(run_id: &str, stored: &StoredEntry) -> Result<String> {
    let text = serde_json::to_string(&EntryOut { seq: stored.seq, at_ms: stored.at_ms, entry: &stored.entry })
        .map_err(|e| Error::InvalidInput {
            run_id: run_id.to_owned(),
            reason: match stored.entry.node() {
                Some(node) => format!("node '{node}': its value cannot be stored as JSON: {e}"),
                None => format!("a value cannot be stored as JSON: {e}"),
            },
        })?;
    if text.len() > MAX_BULK_BYTES {
        return Err(Error::ValueTooLarge {
            what: format!("a journal entry of run '{run_id}'"),
            bytes: text.len(),
            limit: MAX_BULK_BYTES,
            store: "Redis: the longest string a request carries, proto-max-bulk-len".to_owned(),
        });
    }
    Ok(text)
}

fn encode_all(run_id: &str, entries: &[StoredEntry]) -> Result<Vec<String>> {
    entries.iter().map(|stored| encode(run_id, stored)).collect()
}

/// Decodes journal records; `from` is the position of the first.
fn decode_journal(run_id: &str, graph: &str, from: u64, rows: Vec<String>) -> Result<Vec<StoredEntry>> {
    rows.into_iter()
        .enumerate()
        .map(|(position, text)| {
            let row: EntryIn = serde_json::from_str(&text).map_err(|e| Error::CorruptJournal {
                run_id: run_id.to_owned(),
                graph: graph.to_owned(),
                reason: format!("entry {} cannot be read: {e}", from + position as u64),
            })?;
            Ok(StoredEntry { seq: row.seq, at_ms: row.at_ms, entry: row.entry })
        })
        .collect()
}

/// The outcome of one step from the script's reply.
fn outcome(run_id: &str, expected: u64, (code, found): (i64, u64)) -> Result<bool> {
    match code {
        HELD => Ok(true),
        WRITTEN => Ok(false),
        NOT_FOUND => Err(Error::RunNotFound { run_id: run_id.to_owned() }),
        CONFLICT => Err(Error::Conflict { run_id: run_id.to_owned(), expected, found }),
        other => Err(Error::Store(format!("run '{run_id}': unexpected reply {other} from the commit script"))),
    }
}

#[async_trait]
impl JournalStore for RedisStore {
    async fn create_run(&self, record: &RunRecord, first: &[StoredEntry]) -> Result<Created> {
        self.create(record, first, &[], None).await
    }

    async fn append(&self, run_id: &str, expected_seq: u64, entries: &[StoredEntry]) -> Result<()> {
        let encoded = encode_all(run_id, entries)?;
        let finished = entries.iter().rev().find_map(|s| match &s.entry {
            JournalEntry::RunFinished { status, .. } => Some(status.as_str()),
            _ => None,
        });
        let mut invocation = self.inner.scripts.append.prepare_invoke();
        invocation
            .arg(&self.inner.prefix)
            .arg(run_id)
            .arg(expected_seq)
            .arg(finished.unwrap_or(""))
            .arg(entries.last().map_or(String::new(), |e| e.at_ms.to_string()));
        for entry in &encoded {
            invocation.arg(entry);
        }
        let mut conn = self.conn.clone();
        let reply: (i64, u64) = self
            .call(&format!("cannot append to run '{run_id}'"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        outcome(run_id, expected_seq, reply).map(|_| ())
    }

    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        self.load_run(run_id).await
    }

    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        let mut invocation = self.inner.scripts.set_status.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(run_id).arg(status.as_str()).arg(now_ms());
        let mut conn = self.conn.clone();
        let found: i64 = self
            .call(&format!("cannot set the status of run '{run_id}'"), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if found == 0 {
            return Err(Error::RunNotFound { run_id: run_id.to_owned() });
        }
        Ok(())
    }

    /// Walks the creation index newest first, a batch of members at a time, reading the
    /// records of a batch in one round trip and keeping those that match, until it has
    /// `limit + 1` (the last only says that another page follows) or the index ends.
    /// Without a filter that is one batch; a filter reads the records of the runs it skips
    /// (there is no index by graph or status: a status index would be one more write per
    /// step), in batches that grow while they find too little.
    ///
    /// A page starts below its cursor: the range's exclusive maximum is
    /// `(<created_ms, 20 digits>:<order, 20 digits>:`, which every member of the cursor's
    /// run and of newer runs is above, and each batch starts below the last member of the
    /// one before (no offsets, which cost Redis a walk over the members they skip). A
    /// member's position is read from its prefix.
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        if query.limit == 0 {
            return Ok(RunPage::default());
        }
        let wanted = query.limit.saturating_add(1);
        let index = format!("{}:runs", self.inner.prefix);
        let mut max = match query.after {
            Some(after) => format!("({:020}:{:020}:", after.created_ms, after.order),
            None => "+".to_owned(),
        };
        let mut batch = wanted.min(MAX_BATCH);
        let mut matching = Vec::new();
        while matching.len() < wanted {
            let mut conn = self.conn.clone();
            let members: Vec<String> = self
                .call("cannot list runs", async {
                    redis::cmd("ZRANGE")
                        .arg(&index)
                        .arg(&max)
                        .arg("-")
                        .arg("BYLEX")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(batch)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let Some(last) = members.last() else { break };
            max = format!("({last}");
            let runs: Vec<(RunCursor, &str)> =
                members.iter().map(|member| self.index_member(member)).collect::<Result<_>>()?;
            let mut pipe = redis::pipe();
            for (_, run_id) in &runs {
                pipe.hgetall(self.run_key(run_id));
            }
            let mut conn = self.conn.clone();
            let records: Vec<HashMap<String, String>> =
                self.call("cannot list runs", async { pipe.query_async(&mut conn).await }).await?;
            for ((at, run_id), fields) in runs.into_iter().zip(records) {
                if fields.is_empty() {
                    continue;
                }
                let record = self.record(run_id, &fields)?;
                if query.admits(&record, at) {
                    matching.push((at, record));
                    if matching.len() == wanted {
                        break;
                    }
                }
            }
            if members.len() < batch {
                break;
            }
            batch = (batch * 2).min(MAX_BATCH);
        }
        Ok(RunPage::of(matching, query.limit))
    }
}

#[async_trait]
impl TaskQueue for RedisStore {
    async fn enqueue(&self, tasks: &[QueuedTask]) -> Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut invocation = self.inner.scripts.enqueue.prepare_invoke();
        invocation.arg(&self.inner.prefix);
        self.task_args(&mut invocation, tasks)?;
        let mut conn = self.conn.clone();
        let _: i64 = self.call("cannot queue tasks", async move { invocation.invoke_async(&mut conn).await }).await?;
        Ok(())
    }

    /// Polls every [`POLL`] while it waits, or sooner when the server says a task, lease or
    /// hold falls due before.
    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut invocation = self.inner.scripts.claim.prepare_invoke();
            invocation.arg(&self.inner.prefix).arg(owner).arg(max.min(MAX_CLAIMS)).arg(lease_for.as_millis() as u64);
            let mut conn = self.conn.clone();
            let (now, next_due, runs, tasks): ClaimReply =
                self.call("cannot claim work", async move { invocation.invoke_async(&mut conn).await }).await?;
            if !runs.is_empty() || !tasks.is_empty() {
                let mut claims: Vec<Claim> = runs.into_iter().map(Claim::Run).collect();
                claims.extend(self.leases(tasks)?.into_iter().map(Claim::Task));
                return Ok(claims);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let mut nap = POLL.min(left);
            if next_due >= 0 {
                nap = nap.min(Duration::from_millis((next_due - now).max(1) as u64));
            }
            tokio::time::sleep(nap).await;
        }
    }

    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>> {
        let mut invocation = self.inner.scripts.claim_run.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(run_id).arg(lease_for.as_millis() as u64);
        let mut conn = self.conn.clone();
        let rows: Vec<(String, u64, u32)> = self
            .call(&format!("cannot take run '{run_id}' over"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        let mut leases = self.leases(rows)?;
        leases.sort_by_key(|lease| lease.task.not_before_ms);
        Ok(leases)
    }

    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()> {
        let mut invocation = self.inner.scripts.renew.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(lease_for.as_millis() as u64);
        let mut conn = self.conn.clone();
        let _: i64 =
            self.call(&format!("cannot renew the leases of {owner}"), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()> {
        let mut invocation = self.inner.scripts.ack.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(self.task_key(task));
        let mut conn = self.conn.clone();
        let removed: i64 = self
            .call(&format!("cannot acknowledge task {}", task.key()), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if removed == 0 {
            return Err(Error::Store(format!(
                "task {} is not held by {owner}: its lease expired, or it was acknowledged",
                task.key()
            )));
        }
        Ok(())
    }

    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut invocation = self.inner.scripts.release.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(not_before_ms);
        for task in tasks {
            invocation.arg(self.task_key(task));
        }
        let mut conn = self.conn.clone();
        let _: i64 =
            self.call(&format!("cannot hand back tasks of {owner}"), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()> {
        let mut invocation = self.inner.scripts.release_run.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner).arg(run_id).arg(not_before_ms).arg(RELEASED);
        let mut conn = self.conn.clone();
        let _: i64 = self
            .call(&format!("cannot hand back run '{run_id}'"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    async fn holdings(&self, owner: &str) -> Result<Holdings> {
        let mut invocation = self.inner.scripts.holdings.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(owner);
        let mut conn = self.conn.clone();
        let (mut runs, rows): (Vec<String>, Vec<(String, u64, u32)>) = self
            .call(&format!("cannot read what {owner} holds"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        runs.sort();
        Ok(Holdings { runs, tasks: self.leases(rows)?.into_iter().map(|lease| lease.task).collect() })
    }

    async fn holder(&self, run_id: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        self.call(&format!("cannot read who holds run '{run_id}'"), async {
            redis::cmd("HGET").arg(self.run_key(run_id)).arg("owner").query_async(&mut conn).await
        })
        .await
    }
}

#[async_trait]
impl DurableStore for RedisStore {
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        let run_id = record.run_id.as_str();
        let encoded = encode_all(run_id, first)?;
        let mut invocation = self.inner.scripts.create.prepare_invoke();
        invocation
            .arg(&self.inner.prefix)
            .arg(run_id)
            .arg(&record.graph)
            .arg(&record.version)
            .arg(record.status.as_str())
            .arg(record.created_ms)
            .arg(record.updated_ms)
            .arg(format!("{:020}", record.created_ms))
            .arg(owner.map_or("", |(owner, _)| owner))
            .arg(owner.map_or(0, |(_, lease_for)| lease_for.as_millis() as u64))
            .arg(encoded.len());
        for entry in &encoded {
            invocation.arg(entry);
        }
        invocation.arg(ready.len());
        self.task_args(&mut invocation, ready)?;
        let mut conn = self.conn.clone();
        let new: i64 = self
            .call(&format!("cannot create run '{run_id}'"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        if new == 1 {
            return Ok(Created::New);
        }
        match self.load_run(run_id).await? {
            Some((record, journal)) => Ok(Created::Existing { record, journal }),
            None => Err(Error::Store(format!(
                "{}: run '{run_id}' existed and then vanished (were its keys deleted by hand?)",
                self.inner.server
            ))),
        }
    }

    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        let encoded = encode_all(step.run_id, step.entries)?;
        let replies = self.commit_steps(&[(step, encoded)], owner).await?;
        match replies.first() {
            Some(reply) => outcome(step.run_id, step.expected_seq, *reply),
            None => Err(Error::Store(format!("{}: the commit script answered nothing", self.inner.server))),
        }
    }

    /// All steps go to one script call: one round trip, each step atomic and checked
    /// before it writes. A step whose entries cannot be encoded fails alone.
    async fn commit_batch(&self, steps: &[Step<'_>], owner: Option<(&str, Duration)>) -> Result<Vec<Result<bool>>> {
        let mut outcomes: Vec<Option<Result<bool>>> = Vec::with_capacity(steps.len());
        let mut sent = Vec::with_capacity(steps.len());
        for step in steps {
            match encode_all(step.run_id, step.entries) {
                Ok(encoded) => {
                    sent.push((step, encoded));
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let replies = if sent.is_empty() { Vec::new() } else { self.commit_steps(&sent, owner).await? };
        if replies.len() != sent.len() {
            return Err(Error::Store(format!(
                "{}: the commit script answered {} of {} steps",
                self.inner.server,
                replies.len(),
                sent.len()
            )));
        }
        let mut replies =
            sent.iter().zip(replies).map(|((step, _), reply)| outcome(step.run_id, step.expected_seq, reply));
        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Some(failed) => failed,
                None => replies.next().unwrap_or_else(|| Err(Error::Store("a step lost its outcome".into()))),
            })
            .collect())
    }

    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>> {
        let mut conn = self.conn.clone();
        let start = isize::try_from(seq).unwrap_or(isize::MAX);
        let (graph, rows): (Option<String>, Vec<String>) = self
            .call(&format!("cannot read run '{run_id}'"), async {
                redis::pipe()
                    .atomic()
                    .hget(self.run_key(run_id), "graph")
                    .lrange(self.journal_key(run_id), start, -1)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let Some(graph) = graph else {
            return Err(Error::RunNotFound { run_id: run_id.to_owned() });
        };
        decode_journal(run_id, &graph, seq, rows)
    }

    /// One hash, `<prefix>:graphs`, field `name@version`, value the record as JSON.
    async fn register_graph(&self, graph: &GraphRecord) -> Result<()> {
        let json = serde_json::to_string(graph)
            .map_err(|e| Error::Store(format!("graph '{}' cannot be written as JSON: {e}", graph.name)))?;
        let mut conn = self.conn.clone();
        let key = format!("{}:graphs", self.inner.prefix);
        let field = format!("{}@{}", graph.name, graph.version);
        // A worker's record replaces any; a structure-only one is written only if none is there.
        let command = if graph.worker { "HSET" } else { "HSETNX" };
        let _: i64 = self
            .call(&format!("cannot register graph '{}'", graph.name), async move {
                redis::cmd(command).arg(key).arg(field).arg(json).query_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    async fn graphs(&self) -> Result<Vec<GraphRecord>> {
        let mut conn = self.conn.clone();
        let key = format!("{}:graphs", self.inner.prefix);
        let rows: Vec<String> = self
            .call("cannot list the registered graphs", async move {
                redis::cmd("HVALS").arg(key).query_async(&mut conn).await
            })
            .await?;
        let mut graphs = rows
            .iter()
            .map(|json| {
                serde_json::from_str(json).map_err(|e| {
                    Error::Store(format!("{}: a registered graph cannot be read ({e}): {json}", self.inner.server))
                })
            })
            .collect::<Result<Vec<GraphRecord>>>()?;
        crate::store::sort_graphs(&mut graphs);
        Ok(graphs)
    }
}
