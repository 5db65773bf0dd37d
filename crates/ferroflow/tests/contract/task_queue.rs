//! The TaskQueue and DurableStore contracts: `task_queue_contract!(make)` expands to the
//! tests every queue must pass and `durable_store_contract!(make)` to those of a journal
//! store and queue in one, where `make` evaluates to `(store, guard)`. Tasks are queued
//! the only way they are, by the writes that make them ready: a [`DurableStore`]'s
//! `create` and `commit` without an owner.

pub use std::sync::Arc;
pub use std::time::Duration;

pub use ferroflow::journal::now_ms;
pub use ferroflow::{Created, DurableStore, Error, JournalStore, QueuedTask, RunStatus, Step, TaskQueue};

pub use super::journal_store::{completed, finished, record, started};

/// Creates run `run_id` with `ready` queued for any worker, as a run submitted without
/// being executed is.
pub async fn submit(store: &impl DurableStore, run_id: &str, ready: &[QueuedTask]) {
    let created = store.create(&record(run_id, "g", 100), &[started(100)], ready, None).await.unwrap();
    assert!(matches!(created, Created::New), "{run_id} existed already");
}

/// Commits a step of run r1 at `expected_seq` (one entry, the run still running) that makes
/// `ready` ready, without an owner: they are queued for any worker.
pub async fn make_ready(store: &impl DurableStore, expected_seq: u64, ready: &[QueuedTask]) {
    let entries = [completed(expected_seq, 100 + expected_seq, "step")];
    let step = Step { run_id: "r1", expected_seq, entries: &entries, status: RunStatus::Running, ready, done: &[] };
    assert!(!store.commit(&step, None).await.unwrap(), "without an owner, nobody holds the run");
}

pub fn task(node: &str, attempt: u32, not_before_ms: u64) -> QueuedTask {
    QueuedTask { run_id: "r1".into(), node: node.into(), item: None, attempt, not_before_ms }
}

pub const LEASE: Duration = Duration::from_secs(30);
pub const NO_WAIT: Duration = Duration::ZERO;
pub const A: &str = "worker-a";
pub const B: &str = "worker-b";
pub const C: &str = "worker-c";

/// The task leases among claims; a claimed run fails the test.
pub fn leases(claims: Vec<ferroflow::Claim>) -> Vec<ferroflow::Lease> {
    claims
        .into_iter()
        .map(|claim| match claim {
            ferroflow::Claim::Task(lease) => lease,
            ferroflow::Claim::Run(run_id) => panic!("claimed run {run_id}, expected tasks only"),
        })
        .collect()
}

/// Queues `n` tasks through `first` (a run submitted with them ready), then drains the
/// queue from `first` and `second` at once (two handles on one store stand for two worker
/// processes), and checks that every task was leased exactly once across both.
pub async fn two_handles_never_lease_the_same_task<Q: DurableStore + 'static>(first: Q, second: Q, n: usize) {
    let tasks: Vec<QueuedTask> = (0..n)
        .map(|i| QueuedTask { run_id: "r".into(), node: format!("n{i}"), item: None, attempt: 1, not_before_ms: 0 })
        .collect();
    submit(&first, "r", &tasks).await;
    let drain = |store: Q, owner: &'static str| {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let leases = leases(store.claim(owner, 7, Duration::from_secs(30), Duration::ZERO).await.unwrap());
                if leases.is_empty() {
                    return seen;
                }
                for lease in leases {
                    store.ack(owner, &lease.task).await.unwrap();
                    seen.push(lease.task.node);
                }
            }
        })
    };
    let (a, b) = (drain(first, "a"), drain(second, "b"));
    let mut all = a.await.unwrap();
    all.extend(b.await.unwrap());
    all.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    expected.sort();
    assert_eq!(all, expected, "every task leased exactly once across both handles");
}

/// The nodes of `leases`, sorted.
pub fn nodes(leases: &[ferroflow::Lease]) -> Vec<String> {
    let mut nodes: Vec<String> = leases.iter().map(|l| l.task.node.clone()).collect();
    nodes.sort();
    nodes
}

macro_rules! task_queue_contract {
    ($make:expr) => {
        #[::tokio::test]
        async fn queueing_is_idempotent_while_a_task_is_queued_or_held() {
            let (queue, _guard) = $make;
            submit(&queue, "r1", &[task("a", 1, 0), task("a", 1, 0)]).await;
            let held = leases(queue.claim(A, 10, LEASE, NO_WAIT).await.unwrap());
            assert_eq!(held.len(), 1);
            make_ready(&queue, 1, &[task("a", 1, 0)]).await;
            assert!(leases(queue.claim(B, 10, LEASE, NO_WAIT).await.unwrap()).is_empty(), "held, not queued twice");
            // Another attempt is another task.
            make_ready(&queue, 2, &[task("a", 2, 0)]).await;
            assert_eq!(leases(queue.claim(B, 10, LEASE, NO_WAIT).await.unwrap())[0].task.attempt, 2);
        }

        #[::tokio::test]
        async fn a_task_is_held_by_one_owner_at_a_time() {
            let (queue, _guard) = $make;
            submit(&queue, "r1", &[task("a", 1, 0), task("b", 1, 0)]).await;
            let first = leases(queue.claim(A, 1, LEASE, NO_WAIT).await.unwrap());
            let second = leases(queue.claim(B, 10, LEASE, NO_WAIT).await.unwrap());
            assert_eq!(first.len(), 1);
            assert_eq!(second.len(), 1);
            assert_ne!(first[0].task.node, second[0].task.node);
            assert!(leases(queue.claim(A, 10, LEASE, NO_WAIT).await.unwrap()).is_empty());
            assert!(queue.ack(B, &first[0].task).await.is_err(), "B does not hold A's task");
            queue.ack(A, &first[0].task).await.unwrap();
            queue.ack(B, &second[0].task).await.unwrap();
        }

        #[::tokio::test]
        async fn an_expired_lease_is_delivered_again_and_the_old_holder_cannot_ack() {
            let (queue, _guard) = $make;
            submit(&queue, "r1", &[task("a", 1, 0)]).await;
            let first = leases(queue.claim(A, 1, Duration::from_millis(30), NO_WAIT).await.unwrap()).remove(0);
            assert_eq!(first.deliveries, 1);
            let again = leases(queue.claim(B, 1, LEASE, Duration::from_secs(2)).await.unwrap()).remove(0);
            assert_eq!(again.task, first.task);
            assert_eq!(again.deliveries, 2);
            assert!(queue.ack(A, &first.task).await.is_err(), "A's lease expired and B holds the task");
            // A renewing its leases does not take the task back.
            queue.renew(A, LEASE).await.unwrap();
            queue.ack(B, &again.task).await.unwrap();
            assert!(
                leases(queue.claim(A, 10, LEASE, NO_WAIT).await.unwrap()).is_empty(),
                "nothing is left after the ack"
            );
        }

        #[::tokio::test]
        async fn renewing_keeps_every_task_of_the_owner() {
            let (queue, _guard) = $make;
            submit(&queue, "r1", &[task("a", 1, 0), task("b", 1, 0)]).await;
            let held = leases(queue.claim(A, 2, Duration::from_millis(60), NO_WAIT).await.unwrap());
            assert_eq!(held.len(), 2);
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(25)).await;
                queue.renew(A, Duration::from_millis(60)).await.unwrap();
            }
            assert!(leases(queue.claim(B, 10, LEASE, NO_WAIT).await.unwrap()).is_empty());
            // A renewal to zero lets the tasks go at once (a worker shutting down).
            queue.renew(A, Duration::ZERO).await.unwrap();
            assert_eq!(nodes(&leases(queue.claim(B, 10, LEASE, NO_WAIT).await.unwrap())), ["a", "b"]);
        }

        #[::tokio::test]
        async fn tasks_are_not_handed_out_before_not_before() {
            let (queue, _guard) = $make;
            let later = now_ms() + 80;
            submit(&queue, "r1", &[task("a", 2, later)]).await;
            assert!(leases(queue.claim(A, 1, LEASE, NO_WAIT).await.unwrap()).is_empty());
            let due = leases(queue.claim(A, 1, LEASE, Duration::from_secs(2)).await.unwrap());
            assert_eq!(due.len(), 1);
            assert!(now_ms() >= later);
        }

        #[::tokio::test]
        async fn a_released_task_is_queued_again_without_counting_a_delivery() {
            let (queue, _guard) = $make;
            submit(&queue, "r1", &[task("a", 1, 0)]).await;
            let lease = leases(queue.claim(A, 1, LEASE, NO_WAIT).await.unwrap()).remove(0);
            queue.release(B, std::slice::from_ref(&lease.task), 0).await.unwrap();
            assert!(leases(queue.claim(B, 1, LEASE, NO_WAIT).await.unwrap()).is_empty(), "B cannot release A's task");
            let later = now_ms() + 60;
            queue.release(A, std::slice::from_ref(&lease.task), later).await.unwrap();
            assert!(leases(queue.claim(B, 1, LEASE, NO_WAIT).await.unwrap()).is_empty(), "released for later");
            let again = leases(queue.claim(B, 1, LEASE, Duration::from_secs(2)).await.unwrap()).remove(0);
            assert_eq!(again.deliveries, 1);
        }

        #[::tokio::test]
        async fn claiming_a_run_takes_its_tasks_from_any_holder() {
            let (queue, _guard) = $make;
            let other = QueuedTask { run_id: "r2".into(), ..task("x", 1, 0) };
            submit(&queue, "r1", &[task("a", 1, 0), task("b", 1, now_ms() + 60_000)]).await;
            submit(&queue, "r2", &[other]).await;
            let held_by_a = leases(queue.claim(A, 1, LEASE, NO_WAIT).await.unwrap());
            assert_eq!(nodes(&held_by_a), ["a"]);
            let taken = queue.claim_run(B, "r1", LEASE).await.unwrap();
            assert_eq!(nodes(&taken), ["a", "b"], "held and not yet due alike");
            let a = taken.iter().find(|l| l.task.node == "a").unwrap();
            assert_eq!(a.deliveries, 2);
            assert!(queue.ack(A, &held_by_a[0].task).await.is_err());
            assert_eq!(nodes(&leases(queue.claim(A, 10, LEASE, NO_WAIT).await.unwrap())), ["x"], "r2 is untouched");
        }

        #[::tokio::test]
        async fn a_waiting_claim_wakes_when_a_task_is_queued_and_times_out_otherwise() {
            let (queue, _guard) = $make;
            let queue = Arc::new(queue);
            let started = std::time::Instant::now();
            assert!(leases(queue.claim(A, 1, LEASE, Duration::from_millis(50)).await.unwrap()).is_empty());
            assert!(started.elapsed() >= Duration::from_millis(50));

            let waiter = {
                let queue = Arc::clone(&queue);
                tokio::spawn(async move { queue.claim(A, 1, LEASE, Duration::from_secs(5)).await })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            submit(&*queue, "r1", &[task("a", 1, 0)]).await;
            let claims = tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap().unwrap();
            assert_eq!(leases(claims).len(), 1);
        }
    };
}

macro_rules! durable_store_contract {
    ($make:expr) => {
        #[::tokio::test]
        async fn a_run_created_by_an_owner_is_held_and_claimed_whole_once_the_hold_expires() {
            let (store, _guard) = $make;
            let lease = Duration::from_millis(80);
            let created = store.create(&record("r1", "g", 100), &[started(100)], &[task("a", 1, 0)], Some((A, lease))).await;
            assert!(matches!(created.unwrap(), Created::New));
            assert!(store.claim(B, 10, LEASE, NO_WAIT).await.unwrap().is_empty(), "held by A, nothing queued");
            // Creating it again changes nothing, and queues nothing.
            let again = store.create(&record("r1", "g", 100), &[started(100)], &[task("z", 1, 0)], None).await;
            assert!(matches!(again.unwrap(), Created::Existing { .. }));
            // A renews its hold for a while, then stops, as a process that died would.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                store.renew(A, lease).await.unwrap();
                assert!(store.claim(B, 10, LEASE, NO_WAIT).await.unwrap().is_empty(), "A's hold is live");
            }
            // An expired hold still names its holder until someone claims the run.
            tokio::time::sleep(lease + Duration::from_millis(20)).await;
            assert_eq!(store.holder("r1").await.unwrap().as_deref(), Some(A));
            let claims = store.claim(B, 10, LEASE, Duration::from_secs(2)).await.unwrap();
            assert!(matches!(&claims[..], [ferroflow::Claim::Run(run)] if run == "r1"), "{claims:?}");
            assert_eq!(store.holder("r1").await.unwrap().as_deref(), Some(B));
            assert!(store.claim(A, 10, LEASE, NO_WAIT).await.unwrap().is_empty(), "B holds it now");
            // A step by A, the old holder, does not take the run back: its ready tasks are queued.
            let entries = [completed(1, 110, "a")];
            let ready = [task("b", 1, 0)];
            let step =
                Step { run_id: "r1", expected_seq: 1, entries: &entries, status: RunStatus::Running, ready: &ready, done: &[] };
            assert!(!store.commit(&step, Some((A, LEASE))).await.unwrap());
            assert_eq!(nodes(&leases(store.claim(A, 10, LEASE, NO_WAIT).await.unwrap())), ["b"]);
        }

        #[::tokio::test]
        async fn a_failed_run_written_to_again_runs_again_its_tasks_queued_or_held() {
            let (store, _guard) = $make;
            let retried = |seq: u64, at_ms: u64| ferroflow::StoredEntry {
                seq,
                at_ms,
                entry: ferroflow::JournalEntry::RunRetried { by: "ops".into() },
            };
            for (run_id, owner) in [("r1", None), ("r2", Some((A, LEASE)))] {
                store.create(&record(run_id, "g", 100), &[started(100)], &[], Some((B, LEASE))).await.unwrap();
                // B fails the run: its hold ends with it.
                let entries = [finished(1, 110, RunStatus::Failed)];
                let step = Step { run_id, expected_seq: 1, entries: &entries, status: RunStatus::Failed, ready: &[], done: &[] };
                assert!(!store.commit(&step, Some((B, LEASE))).await.unwrap());
                let (listed, _) = store.load(run_id).await.unwrap().expect("the run exists");
                assert_eq!(listed.status, RunStatus::Failed);
                // Retried: running again, with the failed node ready as its next attempt.
                let entries = [retried(2, 120)];
                let ready = [QueuedTask { run_id: run_id.into(), node: "a".into(), item: None, attempt: 2, not_before_ms: 0 }];
                let step = Step { run_id, expected_seq: 2, entries: &entries, status: RunStatus::Running, ready: &ready, done: &[] };
                let held = store.commit(&step, owner).await.unwrap();
                assert_eq!(held, owner.is_some(), "{run_id}: an owner holds the run it retries");
                let (listed, journal) = store.load(run_id).await.unwrap().expect("the run exists");
                assert_eq!(listed.status, RunStatus::Running, "{run_id}");
                assert_eq!(journal.len(), 3, "{run_id}");
                assert!(matches!(journal[2].entry, ferroflow::JournalEntry::RunRetried { ref by } if &**by == "ops"));
                match owner {
                    None => {
                        let leased = leases(store.claim(C, 10, LEASE, NO_WAIT).await.unwrap());
                        assert_eq!(leased.iter().map(|l| (l.task.node.as_str(), l.task.attempt)).collect::<Vec<_>>(), [("a", 2)]);
                    }
                    Some((owner, _)) => {
                        assert_eq!(store.holder(run_id).await.unwrap().as_deref(), Some(owner));
                        assert!(store.claim(C, 10, LEASE, NO_WAIT).await.unwrap().is_empty(), "{run_id} is held");
                    }
                }
                // And it finishes again, for good this time.
                let entries = [completed(3, 130, "a"), finished(4, 130, RunStatus::Completed)];
                let step = Step { run_id, expected_seq: 3, entries: &entries, status: RunStatus::Completed, ready: &[], done: &[] };
                store.commit(&step, owner).await.unwrap();
                let (listed, journal) = store.load(run_id).await.unwrap().expect("the run exists");
                assert_eq!(listed.status, RunStatus::Completed, "{run_id}");
                assert_eq!(journal.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
                assert_eq!(store.load_since(run_id, 2).await.unwrap().len(), 3);
            }
        }

        #[::tokio::test]
        async fn only_a_finished_run_is_deleted_with_its_journal_and_nothing_else() {
            let (store, _guard) = $make;
            for run_id in ["r1", "r2"] {
                let ready = [QueuedTask { run_id: run_id.into(), node: "a".into(), item: None, attempt: 1, not_before_ms: 0 }];
                store.create(&record(run_id, "g", 100), &[started(100)], &ready, None).await.unwrap();
            }
            // Running (with a queued task), it stays.
            assert!(!store.delete_finished("r1").await.unwrap());
            assert!(store.load("r1").await.unwrap().is_some());
            let entries = [completed(1, 110, "a"), finished(2, 110, RunStatus::Completed)];
            let done = [QueuedTask { run_id: "r1".into(), node: "a".into(), item: None, attempt: 1, not_before_ms: 0 }];
            let step = Step { run_id: "r1", expected_seq: 1, entries: &entries, status: RunStatus::Completed, ready: &[], done: &done };
            store.commit(&step, None).await.unwrap();
            assert!(store.delete_finished("r1").await.unwrap());
            assert!(store.load("r1").await.unwrap().is_none());
            assert!(matches!(store.load_since("r1", 0).await, Err(Error::RunNotFound { .. })));
            assert!(matches!(store.delete_finished("r1").await, Err(Error::RunNotFound { .. })));
            assert!(matches!(store.delete_finished("nobody").await, Err(Error::RunNotFound { .. })));
            let listed: Vec<String> = store
                .list_runs(&ferroflow::RunQuery { limit: 10, ..ferroflow::RunQuery::default() })
                .await
                .unwrap()
                .runs
                .into_iter()
                .map(|r| r.run_id)
                .collect();
            assert_eq!(listed, ["r2"]);
            // The other run, and its task, are untouched.
            assert_eq!(store.load("r2").await.unwrap().expect("r2").1.len(), 1);
            let leased = leases(store.claim(A, 10, LEASE, NO_WAIT).await.unwrap());
            assert_eq!(leased.iter().map(|l| l.task.run_id.as_str()).collect::<Vec<_>>(), ["r2"]);
            // A run created again under a deleted id starts afresh.
            let again = store.create(&record("r1", "g", 200), &[started(200)], &[], None).await.unwrap();
            assert!(matches!(again, Created::New));
            assert_eq!(store.load("r1").await.unwrap().expect("r1").1.len(), 1);
        }

        #[::tokio::test]
        async fn registered_graphs_are_listed_by_name_then_newest_first() {
            let (store, _guard) = $make;
            assert!(store.graphs().await.unwrap().is_empty());
            let graph = |name: &str, version: &str, at: u64| ferroflow::GraphRecord {
                name: name.into(),
                version: version.into(),
                spec: format!("{{\"name\": \"{name}\", \"nodes\": []}}"),
                registered_ms: at,
                worker: true,
            };
            store.register_graph(&graph("b", "v1", 100)).await.unwrap();
            store.register_graph(&graph("a", "v1", 100)).await.unwrap();
            store.register_graph(&graph("a", "v2", 200)).await.unwrap();
            // Registering a version again replaces it, time and all.
            store.register_graph(&graph("a", "v1", 300)).await.unwrap();
            let listed: Vec<(String, String, u64)> =
                store.graphs().await.unwrap().into_iter().map(|g| (g.name, g.version, g.registered_ms)).collect();
            let expected = [("a", "v1", 300), ("a", "v2", 200), ("b", "v1", 100)];
            assert_eq!(listed, expected.map(|(n, v, t)| (n.to_owned(), v.to_owned(), t)));
            assert_eq!(store.graphs().await.unwrap()[2].spec, graph("b", "v1", 0).spec);
        }

        #[::tokio::test]
        async fn a_structure_only_registration_never_replaces_a_workers() {
            let (store, _guard) = $make;
            let graph = |at: u64, worker: bool| ferroflow::GraphRecord {
                name: "g".into(),
                version: "v1".into(),
                spec: format!("{{\"at\": {at}}}"),
                registered_ms: at,
                worker,
            };
            // The structure, from a process that started a run: written when nothing is there.
            store.register_graph(&graph(100, false)).await.unwrap();
            store.register_graph(&graph(150, false)).await.unwrap();
            assert_eq!(store.graphs().await.unwrap(), [graph(100, false)]);
            // A worker's registration replaces it, and a later structure-only one leaves it.
            store.register_graph(&graph(200, true)).await.unwrap();
            store.register_graph(&graph(300, false)).await.unwrap();
            assert_eq!(store.graphs().await.unwrap(), [graph(200, true)]);
        }

        #[::tokio::test]
        async fn holdings_list_the_runs_an_owner_holds_and_the_tasks_it_leases() {
            let (store, _guard) = $make;
            store.create(&record("r1", "g", 100), &[started(100)], &[], Some((A, LEASE))).await.unwrap();
            store.create(&record("r2", "g", 101), &[started(101)], &[task("a", 1, 0)], None).await.unwrap();
            assert_eq!(store.holdings(A).await.unwrap(), ferroflow::Holdings { runs: vec!["r1".into()], tasks: vec![] });
            let leased = leases(store.claim(A, 10, LEASE, NO_WAIT).await.unwrap());
            let held = store.holdings(A).await.unwrap();
            assert_eq!(held.runs, ["r1"]);
            assert_eq!(held.tasks.iter().map(|t| t.key()).collect::<Vec<_>>(), [leased[0].task.key()]);
            assert_eq!(store.holdings(B).await.unwrap(), ferroflow::Holdings::default());
            // What is released is no longer held.
            store.release_run(A, "r1", 0).await.unwrap();
            store.release(A, &[leased[0].task.clone()], 0).await.unwrap();
            assert_eq!(store.holdings(A).await.unwrap(), ferroflow::Holdings::default());
        }

        #[::tokio::test]
        async fn a_step_leaves_an_expired_hold_of_another_owner_to_be_claimed_whole() {
            let (store, _guard) = $make;
            let lease = Duration::from_millis(30);
            store.create(&record("r1", "g", 100), &[started(100)], &[task("a", 1, 0)], None).await.unwrap();
            let a = leases(store.claim(B, 10, LEASE, NO_WAIT).await.unwrap()).remove(0);
            // A takes the run over and stops: its hold expires with its tasks unrecorded.
            store.claim_run(A, "r1", lease).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
            // B, still running a, records it: B does not take the run, b is queued.
            let entries = [completed(1, 110, "a")];
            let ready = [task("b", 1, 0)];
            let done = [a.task.clone()];
            let step =
                Step { run_id: "r1", expected_seq: 1, entries: &entries, status: RunStatus::Running, ready: &ready, done: &done };
            assert!(!store.commit(&step, Some((B, LEASE))).await.unwrap(), "A's expired hold is not B's to take");
            // The run is claimed whole (A's unrecorded tasks run again), with b queued.
            let mut claims = store.claim(C, 10, LEASE, NO_WAIT).await.unwrap();
            assert!(matches!(claims.first(), Some(ferroflow::Claim::Run(run)) if run == "r1"), "{claims:?}");
            assert_eq!(nodes(&leases(claims.split_off(1))), ["b"]);
        }

        #[::tokio::test]
        async fn a_holder_keeps_its_hold_through_its_steps_and_loses_it_when_the_run_waits() {
            let (store, _guard) = $make;
            store.create(&record("r1", "g", 100), &[started(100)], &[], Some((A, LEASE))).await.unwrap();
            assert_eq!(store.holder("r1").await.unwrap().as_deref(), Some(A));
            let entries = [completed(1, 110, "a")];
            let ready = [task("b", 1, 0)];
            let step = |status| Step { run_id: "r1", expected_seq: 1, entries: &entries, status, ready: &ready, done: &[] };
            assert!(store.commit(&step(RunStatus::Running), Some((A, LEASE))).await.unwrap(), "A still holds it");
            let later = [completed(2, 120, "b")];
            let step = Step { expected_seq: 2, entries: &later, ready: &[], ..step(RunStatus::Waiting) };
            assert!(!store.commit(&step, Some((A, LEASE))).await.unwrap(), "a waiting run is held by nobody");
            assert_eq!(store.holder("r1").await.unwrap(), None);
            // Nobody can claim it either: it waits for a person, not for a worker.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(store.claim(B, 10, Duration::from_millis(10), NO_WAIT).await.unwrap().is_empty());
            // A takeover does not hold it either.
            store.claim_run(B, "r1", Duration::from_millis(10)).await.unwrap();
            assert_eq!(store.holder("r1").await.unwrap(), None);
            assert_eq!(store.holder("unknown").await.unwrap(), None);
        }

        #[::tokio::test]
        async fn a_run_handed_back_is_claimed_by_another_worker_later() {
            let (store, _guard) = $make;
            store.create(&record("r1", "g", 100), &[started(100)], &[], Some((A, LEASE))).await.unwrap();
            store.claim_run(B, "r1", LEASE).await.unwrap();
            store.release_run(A, "r1", 0).await.unwrap();
            assert!(store.claim(A, 10, LEASE, NO_WAIT).await.unwrap().is_empty(), "only the holder can hand it back");
            store.release_run(B, "r1", now_ms() + 60).await.unwrap();
            assert_eq!(store.holder("r1").await.unwrap().as_deref(), Some(ferroflow::RELEASED));
            store.renew(B, LEASE).await.unwrap();
            assert!(store.claim(A, 10, LEASE, NO_WAIT).await.unwrap().is_empty(), "not before the given time");
            let claims = store.claim(A, 10, LEASE, Duration::from_secs(2)).await.unwrap();
            assert!(matches!(&claims[..], [ferroflow::Claim::Run(run)] if run == "r1"), "{claims:?}");
        }

        #[::tokio::test]
        async fn a_step_records_entries_and_status_queues_what_is_ready_and_removes_what_is_done() {
            let (store, _guard) = $make;
            store.create(&record("r1", "g", 100), &[started(100)], &[task("a", 1, 0)], None).await.unwrap();
            let a = leases(store.claim(A, 10, LEASE, NO_WAIT).await.unwrap()).remove(0);
            let entries = [completed(1, 110, "a")];
            let step = Step {
                run_id: "r1",
                expected_seq: 1,
                entries: &entries,
                status: RunStatus::Waiting,
                ready: &[task("b", 1, 0), task("c", 1, 0)],
                done: std::slice::from_ref(&a.task),
            };
            store.commit(&step, None).await.unwrap();
            let (rec, journal) = store.load("r1").await.unwrap().unwrap();
            assert_eq!(rec.status, RunStatus::Waiting);
            assert_eq!(journal.len(), 2);
            assert_eq!(store.load_since("r1", 1).await.unwrap().len(), 1);
            assert!(store.load_since("r1", 2).await.unwrap().is_empty());
            // a is gone; b and c are queued for anyone.
            assert_eq!(nodes(&leases(store.claim(B, 10, LEASE, NO_WAIT).await.unwrap())), ["b", "c"]);
        }

        #[::tokio::test]
        async fn a_step_on_a_stale_journal_writes_nothing() {
            let (store, _guard) = $make;
            store.create(&record("r1", "g", 100), &[started(100)], &[task("a", 1, 0)], None).await.unwrap();
            let entries = [completed(1, 110, "a")];
            let ready = [task("b", 1, 0)];
            let step = |expected_seq| Step {
                run_id: "r1",
                expected_seq,
                entries: &entries,
                status: RunStatus::Running,
                ready: &ready,
                done: &[],
            };
            store.commit(&step(1), Some((A, LEASE))).await.unwrap();
            for stale in [0, 1, 3] {
                let err = store.commit(&step(stale), None).await.unwrap_err();
                assert!(matches!(err, Error::Conflict { expected, found: 2, .. } if expected == stale), "{err:?}");
            }
            assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 2);
            // A holds the run from its step on, so b has no row; a is still queued.
            assert_eq!(nodes(&leases(store.claim(B, 10, LEASE, NO_WAIT).await.unwrap())), ["a"]);
            assert_eq!(nodes(&store.claim_run(B, "r1", LEASE).await.unwrap()), ["a"]);
        }

        #[::tokio::test]
        async fn a_step_that_finishes_the_run_removes_all_its_tasks() {
            let (store, _guard) = $make;
            let ready = [task("a", 1, 0), task("b", 1, now_ms() + 60_000)];
            store.create(&record("r1", "g", 100), &[started(100)], &ready, Some((A, LEASE))).await.unwrap();
            let other = QueuedTask { run_id: "r2".into(), ..task("x", 1, 0) };
            submit(&store, "r2", &[other]).await;
            let entries = [finished(1, 120, RunStatus::Cancelled)];
            let step =
                Step { run_id: "r1", expected_seq: 1, entries: &entries, status: RunStatus::Cancelled, ready: &ready, done: &[] };
            store.commit(&step, None).await.unwrap();
            assert_eq!(store.load("r1").await.unwrap().unwrap().0.status, RunStatus::Cancelled);
            assert!(store.claim_run(B, "r1", LEASE).await.unwrap().is_empty());
            assert_eq!(nodes(&leases(store.claim(B, 10, LEASE, NO_WAIT).await.unwrap())), ["x"]);
        }

        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn of_steps_racing_on_one_join_exactly_one_wins() {
            // Two workers finish the two inputs of a join at once, from the same journal
            // position: one step lands, the other learns of it and must catch up.
            let (store, _guard) = $make;
            let store = Arc::new(store);
            store.create(&record("r1", "g", 100), &[started(100)], &[task("a", 1, 0), task("b", 1, 0)], None).await.unwrap();
            let writers: Vec<_> = ["a", "b"]
                .into_iter()
                .map(|node| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        let entries = [completed(1, 110, node)];
                        let done = [task(node, 1, 0)];
                        let step = Step {
                            run_id: "r1",
                            expected_seq: 1,
                            entries: &entries,
                            status: RunStatus::Running,
                            ready: &[],
                            done: &done,
                        };
                        store.commit(&step, None).await
                    })
                })
                .collect();
            let mut outcomes = Vec::new();
            for writer in writers {
                outcomes.push(writer.await.unwrap());
            }
            assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
            assert!(outcomes.iter().any(|o| matches!(o, Err(Error::Conflict { .. }))));
            assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 2);
        }
    };
}
