//! The Redis store against the contracts of the context traits, on the real server at
//! `redis://127.0.0.1:6379` (or `FERROFLOW_REDIS_URL`), and the failures only a server
//! can have. Each test works in a namespace of its own, deleted when it ends.
#![cfg(feature = "redis")]

#[macro_use]
mod contract;

use ferroflow::redis::RedisStore;

fn url() -> String {
    std::env::var("FERROFLOW_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Deletes a test's keys when the test ends, pass or fail.
struct Namespace {
    prefix: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        use redis::Commands;
        // Blocking I/O in a destructor is fine for a test: it runs once, at the end.
        let Ok(mut conn) = redis::Client::open(url()).and_then(|client| client.get_connection()) else { return };
        let keys: Vec<String> = match conn.scan_match(format!("{}:*", self.prefix)) {
            Ok(keys) => keys.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = conn.del(chunk);
        }
    }
}

/// A store in a fresh namespace; its keys live as long as the guard.
async fn fresh() -> (RedisStore, Namespace) {
    let namespace = format!("test-{:016x}", fastrand::u64(..));
    let store = RedisStore::connect(&url(), &namespace).await.unwrap();
    let guard = Namespace { prefix: store.prefix().to_owned() };
    (store, guard)
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

    use ferroflow::redis::RedisStore;
    use ferroflow::{DurableStore, Error, JournalStore, QueuedTask, RunPage, RunQuery, RunStatus, Step, TaskQueue};
    use redis::AsyncCommands;

    use super::contract::journal_store::{completed, new_run, record, started, write};
    use super::contract::task_queue::{leases, submit};

    fn message<T>(result: Result<T, Error>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(Error::Store(message)) => message,
            Err(other) => panic!("expected a store error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_gives_an_error_naming_it_without_the_password() {
        let started = std::time::Instant::now();
        let result =
            RedisStore::connect_with_timeout("redis://:secret@127.0.0.1:1", "ns", Duration::from_secs(2)).await;
        let message = message(result);
        assert!(message.contains("127.0.0.1:1"), "{message}");
        assert!(message.contains("cannot connect"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(5), "bounded by the timeout");
    }

    #[tokio::test]
    async fn a_bad_url_or_namespace_is_refused() {
        assert!(message(RedisStore::connect("http://example.com", "ns").await).contains("not a valid Redis URL"));
        assert!(message(RedisStore::connect(&super::url(), "a{b}").await).contains("namespace"));
        assert!(message(RedisStore::connect(&super::url(), "").await).contains("namespace"));
    }

    #[tokio::test]
    async fn namespaces_do_not_see_each_other() {
        let (first, _a) = super::fresh().await;
        let (second, _b) = super::fresh().await;
        let task = QueuedTask { run_id: "r1".into(), node: "a".into(), item: None, attempt: 1, not_before_ms: 0 };
        submit(&first, "r1", &[task]).await;
        assert!(second.load("r1").await.unwrap().is_none());
        let all = RunQuery { limit: 10, ..RunQuery::default() };
        assert_eq!(second.list_runs(&all).await.unwrap(), RunPage::default());
        assert!(second.claim("w", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(leases(first.claim("w", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap()).len(), 1);
    }

    /// Namespaces whose names are prefixes of each other, or hold glob characters, or `:`
    /// and `%`: deleting one deletes its own keys only, and none sees another's runs.
    #[tokio::test]
    async fn deleting_a_namespace_deletes_exactly_its_own_keys() {
        let base = format!("ns{:08x}", fastrand::u32(..));
        let names = [
            base.clone(),
            format!("{base}:eu"),
            format!("{base}:owner:x"),
            format!("{base}?"),
            format!("{base}1"),
            format!("{base}2"),
            format!("{base}*"),
            format!("{base}[12]"),
            format!("{base}%3Aeu"),
            format!("{base}\\"),
        ];
        let mut stores = Vec::new();
        let mut guards = Vec::new();
        for name in &names {
            let store = RedisStore::connect(&super::url(), name).await.unwrap();
            guards.push(super::Namespace { prefix: store.prefix().to_owned() });
            new_run(&store, "r1", "g", 100).await;
            stores.push(store);
        }
        let prefixes: std::collections::HashSet<&str> = stores.iter().map(RedisStore::prefix).collect();
        assert_eq!(prefixes.len(), names.len(), "every namespace has a prefix of its own");
        // Delete them one at a time: each time, the others keep their run.
        for (i, store) in stores.iter().enumerate() {
            assert!(store.delete_namespace().await.unwrap() > 0, "{} had keys", names[i]);
            assert!(store.load("r1").await.unwrap().is_none(), "{} is empty", names[i]);
            for (j, other) in stores.iter().enumerate().skip(i + 1) {
                assert!(
                    other.load("r1").await.unwrap().is_some(),
                    "deleting {:?} deleted {:?}'s run",
                    names[i],
                    names[j]
                );
            }
        }
    }

    #[tokio::test]
    async fn a_namespace_written_in_the_old_layout_is_refused_with_what_to_do() {
        // An earlier version kept namespace `x:y` under `ff:x:y:*`.
        let name = format!("old{:08x}:eu", fastrand::u32(..));
        let mut conn = redis::Client::open(super::url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let old_index = format!("ff:{name}:runs");
        let _: () = conn.zadd(&old_index, "00000000000000000100:00000000000000000001:r1", 0).await.unwrap();
        let refused = message(RedisStore::connect(&super::url(), &name).await);
        let _: () = conn.del(&old_index).await.unwrap();
        assert!(refused.contains("earlier ferroflow"), "{refused}");
        assert!(refused.contains("without ':' and '%'"), "{refused}");
    }

    #[tokio::test]
    async fn a_run_is_stored_as_json_under_keys_sharing_its_hash_slot() {
        let (store, _guard) = super::fresh().await;
        new_run(&store, "r1", "g", 100).await;
        write(&store, "r1", 1, &[completed(1, 110, "a")], RunStatus::Running).await.unwrap();
        let mut conn = redis::Client::open(super::url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let prefix = store.prefix();
        let status: String = conn.hget(format!("{prefix}:{{r1}}:run"), "status").await.unwrap();
        assert_eq!(status, "running");
        let journal: Vec<String> = conn.lrange(format!("{prefix}:{{r1}}:journal"), 0, -1).await.unwrap();
        assert_eq!(journal.len(), 2);
        let entry: serde_json::Value = serde_json::from_str(&journal[1]).unwrap();
        assert_eq!(entry["seq"], 1);
        assert_eq!(entry["entry"]["type"], "NodeCompleted");
        assert_eq!(entry["entry"]["output"], "a");
    }

    #[tokio::test]
    async fn a_batch_of_steps_is_written_in_one_call_each_with_its_own_outcome() {
        let (store, _guard) = super::fresh().await;
        for run in ["r1", "r2"] {
            store.create(&record(run, "g", 100), &[started(100)], &[], None).await.unwrap();
        }
        let entries = [completed(1, 110, "a")];
        let step = |run_id, expected_seq| Step {
            run_id,
            expected_seq,
            entries: &entries,
            status: RunStatus::Running,
            ready: &[],
            done: &[],
        };
        let steps = [step("r1", 1), step("r2", 5), step("ghost", 1)];
        let outcomes = store.commit_batch(&steps, Some(("w", Duration::from_secs(30)))).await.unwrap();
        assert!(matches!(outcomes[0], Ok(true)), "{outcomes:?}");
        assert!(matches!(outcomes[1], Err(Error::Conflict { expected: 5, found: 1, .. })), "{outcomes:?}");
        assert!(matches!(&outcomes[2], Err(Error::RunNotFound { run_id }) if run_id == "ghost"), "{outcomes:?}");
        assert_eq!(store.load_since("r1", 0).await.unwrap().len(), 2);
        assert_eq!(store.load_since("r2", 0).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_connections_never_lease_the_same_task() {
        // Two stores on one namespace stand for two worker processes.
        let (first, _guard) = super::fresh().await;
        let namespace = first.prefix().trim_start_matches("ff:").to_owned();
        let second = RedisStore::connect(&super::url(), &namespace).await.unwrap();
        super::contract::task_queue::two_handles_never_lease_the_same_task(first, second, 200).await;
    }

    #[tokio::test]
    async fn the_scripts_are_loaded_again_after_the_server_forgets_them() {
        let (store, _guard) = super::fresh().await;
        let mut conn = redis::Client::open(super::url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        // SCRIPT FLUSH is what a restarted server looks like to EVALSHA.
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
        new_run(&store, "r1", "g", 100).await;
        assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 1);
    }
}

/// The server going away and coming back, through a proxy the test can cut.
mod connection_loss {
    use std::io;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use ferroflow::redis::RedisStore;
    use ferroflow::{Error, JournalStore, RunStatus};

    use super::contract::journal_store::{completed, new_run, write};

    /// A TCP proxy in front of the server. `cut` drops every connection, as a server
    /// restart does; while `down`, new connections are dropped at once.
    struct Proxy {
        port: u16,
        open: Arc<Mutex<Vec<TcpStream>>>,
        down: Arc<AtomicBool>,
    }

    impl Proxy {
        fn start() -> Proxy {
            let upstream = redis::Client::open(super::url()).unwrap().get_connection_info().addr().to_string();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let open = Arc::new(Mutex::new(Vec::new()));
            let down = Arc::new(AtomicBool::new(false));
            let (accepted, refusing) = (Arc::clone(&open), Arc::clone(&down));
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if refusing.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream) else { continue };
                    let mut open = accepted.lock().unwrap();
                    for (mut from, mut to) in [(&client, &server), (&server, &client)]
                        .map(|(a, b)| (a.try_clone().unwrap(), b.try_clone().unwrap()))
                    {
                        std::thread::spawn(move || {
                            let _ = io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                        });
                    }
                    open.push(client);
                    open.push(server);
                }
            });
            Proxy { port, open, down }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        fn cut(&self) {
            for stream in self.open.lock().unwrap().drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Loads `r1` until it works, for at most `within`.
    async fn loads_again(store: &RedisStore, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            match store.load("r1").await {
                Ok(found) => return found.unwrap().1.len(),
                Err(e) if Instant::now() < deadline => {
                    assert!(matches!(e, Error::Unavailable(_)), "an outage, not a failure: {e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the store did not reconnect within {within:?}: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_reconnects_after_the_server_went_away_and_loses_nothing() {
        let proxy = Proxy::start();
        let (direct, _guard) = super::fresh().await;
        let namespace = direct.prefix().trim_start_matches("ff:").to_owned();
        let store = RedisStore::connect_with_timeout(&proxy.url(), &namespace, Duration::from_secs(1)).await.unwrap();
        new_run(&store, "r1", "g", 100).await;

        // The server restarts: the connection drops under the store.
        proxy.cut();
        assert_eq!(loads_again(&store, Duration::from_secs(10)).await, 1);

        // The server stays away for a while: calls fail as unavailable, each within the
        // timeout, naming it.
        proxy.down.store(true, Ordering::SeqCst);
        proxy.cut();
        for _ in 0..3 {
            let started = Instant::now();
            match write(&store, "r1", 1, &[completed(1, 110, "a")], RunStatus::Running).await {
                Err(Error::Unavailable(message)) => {
                    assert!(message.contains(&format!("127.0.0.1:{}", proxy.port)), "{message}");
                    assert!(message.contains("run 'r1'"), "{message}");
                }
                other => panic!("expected a store error while the server is away, got {other:?}"),
            }
            assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        }
        // It comes back: the store works again, and nothing written before was lost.
        proxy.down.store(false, Ordering::SeqCst);
        assert_eq!(loads_again(&store, Duration::from_secs(15)).await, 1);
        write(&store, "r1", 1, &[completed(1, 110, "a")], RunStatus::Running).await.unwrap();
        assert_eq!(direct.load("r1").await.unwrap().unwrap().1.len(), 2);
    }
}

/// The engine on a Redis store, end to end.
mod engine {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use ferroflow::redis::RedisStore;
    use ferroflow::{
        Body, Dependency, Durability, DurableStore, Engine, EngineConfig, GraphSpec, JournalStore, NodeCall, NodeKind,
        NodeSpec, RunQuery, RunStatus, StartOptions, Value, Workflow,
    };
    use serde_json::json;
    use tokio::runtime::Handle;
    use tokio_util::sync::CancellationToken;

    const RUNS: u64 = 30;

    fn number(value: &Value) -> i64 {
        value.to_json().unwrap().as_i64().unwrap()
    }

    /// a -> (b, c) -> d: d joins two nodes that may finish on two workers at once. Every
    /// body call is counted.
    fn diamond(calls: &Arc<AtomicUsize>) -> Workflow {
        let node = |name: &str, deps: &[&str]| {
            deps.iter().fold(NodeSpec::new(name, NodeKind::Task), |n, d| n.dep(Dependency::on(*d)))
        };
        let graph = GraphSpec {
            name: "diamond".into(),
            nodes: vec![node("a", &[]), node("b", &["a"]), node("c", &["a"]), node("d", &["b", "c"])],
            output: None,
        }
        .build()
        .unwrap();
        let body = |f: fn(&NodeCall) -> i64| {
            let calls = Arc::clone(calls);
            Body::blocking(move |call: NodeCall| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(Value::from(json!(f(&call))))
            })
        };
        let bodies: HashMap<String, Body> = [
            ("a", body(|call| number(&call.input))),
            ("b", body(|call| number(&call.deps[0]) + 1)),
            ("c", body(|call| number(&call.deps[0]) * 2)),
            ("d", body(|call| number(&call.deps[0]) + number(&call.deps[1]))),
        ]
        .into_iter()
        .map(|(name, body)| (name.to_owned(), body))
        .collect();
        Workflow::new(graph, bodies).unwrap()
    }

    fn engine(store: &RedisStore, durability: Durability, execute: bool) -> Engine {
        let store: Arc<dyn DurableStore> = Arc::new(store.clone());
        let config = EngineConfig {
            store: Some(store),
            durability,
            execute,
            lease: Duration::from_secs(5),
            ..Default::default()
        };
        Engine::new(Handle::current(), config)
    }

    /// Starts `RUNS` runs on `starter` and checks their results, in the engine and in Redis.
    async fn run_all(starter: &Engine, store: &RedisStore, wf: &Workflow, prefix: &str) {
        let runs: Vec<_> = (0..RUNS)
            .map(|i| {
                let options = StartOptions { run_id: Some(format!("{prefix}{i}")), attachment: None };
                starter.start(wf, Value::from(json!(i)), options).unwrap()
            })
            .collect();
        for (i, run) in runs.iter().enumerate() {
            let snapshot = run.wait(Some(Duration::from_secs(20))).await.unwrap();
            assert_eq!(snapshot.status, RunStatus::Completed, "run {i}: {:?}", snapshot.failure);
            let i = i as i64;
            assert_eq!(number(snapshot.output.as_ref().unwrap()), (i + 1) + 2 * i);
            let (record, journal) = store.load(&format!("{prefix}{i}")).await.unwrap().unwrap();
            assert_eq!(record.status, RunStatus::Completed);
            assert_eq!(journal.len(), 6, "started, 4 nodes, finished");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_engine_runs_graphs_durably_on_redis_step_by_step_and_by_group_commit() {
        let (store, _guard) = super::fresh().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let wf = diamond(&calls);
        run_all(&engine(&store, Durability::Commit, true), &store, &wf, "commit-").await;
        let window = Duration::from_millis(5);
        run_all(&engine(&store, Durability::Batch { window }, true), &store, &wf, "batch-").await;
        assert_eq!(calls.load(Ordering::SeqCst) as u64, 2 * 4 * RUNS, "every node ran once");
        let completed =
            RunQuery { graph: Some("diamond".into()), status: Some(RunStatus::Completed), limit: 1000, after: None };
        assert_eq!(store.list_runs(&completed).await.unwrap().runs.len(), 60);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_workers_on_their_own_connections_run_submitted_runs_once() {
        let (store, _guard) = super::fresh().await;
        let namespace = store.prefix().trim_start_matches("ff:").to_owned();
        let calls = Arc::new(AtomicUsize::new(0));
        let wf = diamond(&calls);
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        for _ in 0..2 {
            let own = RedisStore::connect(&super::url(), &namespace).await.unwrap();
            let (worker, wf, stop) = (engine(&own, Durability::Commit, true), wf.clone(), stop.clone());
            workers.push(tokio::spawn(async move { worker.work(&[wf], 4, None, stop, Duration::from_secs(1)).await }));
        }
        run_all(&engine(&store, Durability::Commit, false), &store, &wf, "w-").await;
        assert_eq!(calls.load(Ordering::SeqCst) as u64, 4 * RUNS, "every node ran once");
        stop.cancel();
        for worker in workers {
            tokio::time::timeout(Duration::from_secs(5), worker).await.unwrap().unwrap().unwrap();
        }
    }
}
