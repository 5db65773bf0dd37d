//! The NATS store against the contracts of the context traits, on the real server at
//! `FERROFLOW_NATS_URL` (default `nats://127.0.0.1:4222`, JetStream enabled). Each test
//! gets a namespace of its own, whose buckets its guard deletes at the end.
#![cfg(feature = "nats")]

#[macro_use]
mod contract;

use std::sync::atomic::{AtomicU32, Ordering};

use ferroflow::nats::NatsStore;

fn url() -> String {
    std::env::var("FERROFLOW_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Deletes its namespace's buckets when dropped.
pub struct Guard {
    namespace: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The test's runtime may be a current-thread one that is busy dropping us: delete
        // on a thread with a runtime of its own.
        let (url, namespace) = (url(), self.namespace.clone());
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(NatsStore::delete_namespace(&url, &namespace))
        })
        .join();
        if let Ok(Err(e)) = deleted {
            eprintln!("cannot delete the test namespace {}: {e}", self.namespace);
        }
    }
}

/// A namespace unique to this test process and call.
fn namespace() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("test{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A store in a fresh namespace; the namespace lives as long as the guard.
async fn fresh() -> (NatsStore, Guard) {
    let namespace = namespace();
    let store = NatsStore::connect(&url(), &namespace).await.expect("the NATS server at FERROFLOW_NATS_URL");
    (store, Guard { namespace })
}

mod journal_store {
    use super::contract::journal_store::*;

    journal_store_contract!(super::fresh().await);
}

mod task_queue {
    use super::contract::task_queue::*;

    task_queue_contract!(super::fresh().await);
}

mod durable_store {
    use super::contract::task_queue::*;

    durable_store_contract!(super::fresh().await);
}

mod server {
    use std::time::Duration;

    use ferroflow::nats::NatsStore;
    use ferroflow::{
        DurableStore, Error, JournalEntry, JournalStore, QueuedTask, RunStatus, Step, StoredEntry, TaskQueue,
    };

    use super::contract::journal_store::{completed, new_run, started, write};
    use super::contract::task_queue::{leases, submit};

    #[tokio::test]
    async fn an_unreachable_server_gives_a_clear_error() {
        let message = match NatsStore::connect("nats://127.0.0.1:1", "unreachable").await {
            Ok(_) => panic!("connected to nothing"),
            Err(Error::Store(message)) => message,
            Err(other) => panic!("expected a store error, got {other:?}"),
        };
        assert!(message.contains("nats://127.0.0.1:1"), "the error names the server: {message}");
        assert!(message.contains("cannot connect"), "{message}");
    }

    #[tokio::test]
    async fn credentials_never_appear_in_errors() {
        for url in ["nats://alice:SECRETPW@127.0.0.1:1", "nats://SECRETTOKEN@127.0.0.1:1"] {
            let message = match NatsStore::connect(url, "unreachable").await {
                Ok(_) => panic!("connected to nothing"),
                Err(error) => error.to_string(),
            };
            assert!(!message.contains("SECRET"), "{message}");
            assert!(message.contains("127.0.0.1:1"), "the error still names the server: {message}");
        }
        let message =
            NatsStore::delete_namespace("nats://alice:SECRETPW@127.0.0.1:1", "x").await.unwrap_err().to_string();
        assert!(!message.contains("SECRET"), "{message}");
    }

    #[tokio::test]
    async fn run_ids_and_node_names_of_any_characters_are_stored() {
        let (store, _guard) = super::fresh().await;
        let run_id = "run with spaces/and.dots=é";
        let task = QueuedTask {
            run_id: run_id.into(),
            node: "nœud.1 > *".into(),
            item: Some(3),
            attempt: 1,
            not_before_ms: 0,
        };
        submit(&store, run_id, std::slice::from_ref(&task)).await;
        let (record, journal) = store.load(run_id).await.unwrap().unwrap();
        assert_eq!(record.run_id, run_id);
        assert_eq!(format!("{:?}", journal[0].entry), format!("{:?}", started(100).entry));
        let held = leases(store.claim("w", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap());
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].task, task);
        store.ack("w", &task).await.unwrap();
        // The acknowledged task is gone, and can be queued again (by a step making it ready).
        let step = Step {
            run_id,
            expected_seq: 1,
            entries: &[completed(1, 110, "a")],
            status: RunStatus::Running,
            ready: std::slice::from_ref(&task),
            done: &[],
        };
        store.commit(&step, None).await.unwrap();
        assert_eq!(leases(store.claim("w", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap()).len(), 1);
    }

    #[tokio::test]
    async fn an_entry_too_large_for_a_message_fails_clearly_and_writes_nothing() {
        let (store, _guard) = super::fresh().await;
        new_run(&store, "r1", "g", 100).await;
        let big = ferroflow::Value::from(serde_json::json!("x".repeat(2 << 20)));
        let entry = JournalEntry::NodeCompleted { node: "a".into(), item: None, attempt: 1, output: big };
        let err =
            write(&store, "r1", 1, &[StoredEntry { seq: 1, at_ms: 110, entry }], RunStatus::Running).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("nats://127.0.0.1:4222") || message.contains("NATS server"), "{message}");
        assert!(message.contains("payload"), "{message}");
        assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_connections_never_lease_the_same_task() {
        // Two connections stand for two processes.
        let (first, guard) = super::fresh().await;
        let second = NatsStore::connect(&super::url(), first.namespace()).await.unwrap();
        super::contract::task_queue::two_handles_never_lease_the_same_task(first, second, 60).await;
        drop(guard);
    }
}
