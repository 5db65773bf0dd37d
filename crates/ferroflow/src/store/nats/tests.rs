//! Crash recovery, which the contract tests cannot reach from outside. These need the NATS
//! server at `FERROFLOW_NATS_URL` (default `nats://127.0.0.1:4222`), like
//! `tests/nats_context.rs`.

use super::*;
use crate::store::{Changed, Claim, DurableStore, JournalStore, RunQuery, Step, TaskQueue};
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
    let step = |expected_seq| Step {
        run_id: "r1",
        expected_seq,
        entries: &[],
        status: RunStatus::Waiting,
        ready: &[],
        done: &[],
    };
    let err = store.commit(&step(1), None).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { expected: 1, found: 2, .. }), "{err:?}");
    store.commit(&step(2), None).await.unwrap();
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

/// Node `node`'s completion at `seq`.
fn completed(seq: u64, node: &str) -> StoredEntry {
    let output = Value::from(serde_json::json!(node));
    StoredEntry {
        seq,
        at_ms: 200 + seq,
        entry: JournalEntry::NodeCompleted { node: node.into(), item: None, attempt: 1, output },
    }
}

/// A step of run r1.
fn step<'a>(
    expected_seq: u64,
    entries: &'a [StoredEntry],
    status: RunStatus,
    ready: &'a [QueuedTask],
    done: &'a [QueuedTask],
) -> Step<'a> {
    Step { run_id: "r1", expected_seq, entries, status, ready, done }
}

#[tokio::test]
async fn a_writer_that_skips_its_reads_still_loses_to_a_step_another_writer_wrote() {
    let (store, guard) = a_run_with_a_leased().await;
    let other = NatsStore::connect(&url(), &guard.0).await.unwrap();
    let lease = Duration::from_secs(30);
    let (b, c) = ([task("b")], [task("c")]);
    // w completes a and holds the run, knowing where its step ended the journal.
    let step1 = [completed(1, "a")];
    let a = [task("a")];
    let first = step(1, &step1, RunStatus::Running, &b, &a);
    assert!(store.commit(&first, Some(("w", lease))).await.unwrap());
    // Another process takes the run over and writes the next step itself.
    other.claim_run("x", "r1", lease).await.unwrap();
    let theirs = [completed(2, "b")];
    let theirs_step = step(2, &theirs, RunStatus::Running, &c, &b);
    other.commit(&theirs_step, Some(("x", lease))).await.unwrap();
    // w's next step, where its own ended, conflicts: nothing of it is written.
    let mine = [completed(2, "b"), completed(3, "c")];
    let late = step(2, &mine, RunStatus::Completed, &[], &b);
    let err = store.commit(&late, Some(("w", lease))).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { expected: 2, found: 3, .. }), "{err:?}");
    let (record, journal) = store.load("r1").await.unwrap().unwrap();
    assert_eq!(journal.len(), 3);
    assert_eq!(record.status, RunStatus::Running);
    assert_eq!(store.holder("r1").await.unwrap().as_deref(), Some("x"));
    // And it learns where the journal ends now: a step there is written.
    let after = [completed(3, "c")];
    let next = step(3, &after, RunStatus::Completed, &[], &c);
    store.commit(&next, Some(("w", lease))).await.unwrap();
    assert_eq!(store.load("r1").await.unwrap().unwrap().0.status, RunStatus::Completed);
}

#[tokio::test]
async fn a_follower_hears_of_a_run_that_settled_elsewhere_and_not_of_each_step() {
    let (store, guard) = a_run_with_a_leased().await;
    let follower = NatsStore::connect(&url(), &guard.0).await.unwrap();
    let changes = follower.changes().await.expect("notices on NATS");
    let lease = Duration::from_secs(30);
    let b = [task("b")];
    let step1 = [completed(1, "a")];
    let a = [task("a")];
    let first = step(1, &step1, RunStatus::Running, &b, &a);
    store.commit(&first, Some(("w", lease))).await.unwrap();
    assert_eq!(changes.next(Duration::from_millis(300)).await, Changed::Nothing, "a running step is not announced");
    let step2 = [completed(2, "b")];
    let last = step(2, &step2, RunStatus::Completed, &[], &b);
    store.commit(&last, Some(("w", lease))).await.unwrap();
    let heard = changes.next(Duration::from_secs(10)).await;
    assert_eq!(heard, Changed::Runs(std::collections::HashSet::from(["r1".to_owned()])));
}

#[tokio::test]
async fn a_batched_read_of_a_journal_gives_the_steps_a_walk_gives() {
    let (store, _guard) = a_run_with_a_leased().await;
    let lease = Duration::from_secs(30);
    let (b, c) = ([task("b")], [task("c")]);
    let one = [completed(1, "a")];
    let two = [completed(2, "b"), completed(3, "c")];
    let a = [task("a")];
    store.commit(&step(1, &one, RunStatus::Running, &b, &a), Some(("w", lease))).await.unwrap();
    store.commit(&step(2, &two, RunStatus::Running, &c, &b), Some(("w", lease))).await.unwrap();
    let firsts =
        |steps: Vec<(u64, StepDoc)>| steps.iter().map(|(first, step)| (*first, step.entries.len())).collect::<Vec<_>>();
    assert_eq!(firsts(store.walk("r1", 0).await.unwrap()), [(0, 1), (1, 1), (2, 2)]);
    assert_eq!(firsts(store.steps_from("r1", 0).await.unwrap()), [(0, 1), (1, 1), (2, 2)]);
    assert_eq!(firsts(store.steps_from("r1", 1).await.unwrap()), [(1, 1), (2, 2)]);
    assert!(store.steps_from("r1", 4).await.unwrap().is_empty());
    // The batched read is what a current server answers.
    let version = store.inner.client.server_info().version;
    let batched = store.batch_get::<StepDoc>(&store.inner.journal, &format!("{}.", token("r1"))).await.unwrap();
    assert_eq!(batched.is_some(), at_least(&version, (2, 11)), "server {version}");
    if let Some(batched) = batched {
        assert_eq!(batched.len(), 3);
    }
    assert!(store.batch_get::<StepDoc>(&store.inner.journal, "nothing.").await.unwrap().is_none_or(|b| b.is_empty()));
}
