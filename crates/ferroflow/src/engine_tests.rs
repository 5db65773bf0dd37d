use super::*;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;

use serde_json::json;

use crate::graph::{Dependency, Graph, GraphSpec, NodeSpec, RetryPolicy};
use crate::store::{JournalStore, TaskQueue};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const LIMIT: Duration = Duration::from_secs(5);

fn graph_named(name: &str, nodes: Vec<NodeSpec>) -> Graph {
    GraphSpec { name: name.into(), nodes, output: None }.build().expect("test graph builds")
}

fn task(name: &str, deps: &[&str]) -> NodeSpec {
    deps.iter().fold(NodeSpec::new(name, NodeKind::Task), |n, d| n.dep(Dependency::on(*d)))
}

fn workflow(nodes: Vec<NodeSpec>, bodies: Vec<(&str, Body)>) -> Workflow {
    workflow_named("g", nodes, bodies)
}

fn workflow_named(name: &str, nodes: Vec<NodeSpec>, bodies: Vec<(&str, Body)>) -> Workflow {
    let bodies: HashMap<String, Body> = bodies.into_iter().map(|(n, b)| (n.to_owned(), b)).collect();
    Workflow::new(graph_named(name, nodes), bodies).expect("every node has a body")
}

fn engine() -> Engine {
    Engine::new(Handle::current(), EngineConfig::default())
}

fn j(value: &Value) -> serde_json::Value {
    value.to_json().expect("test values are JSON")
}

fn ok(value: serde_json::Value) -> BodyResult {
    Ok(Value::from(value))
}

/// A body returning a constant.
fn constant(value: serde_json::Value) -> Body {
    Body::blocking(move |_| ok(value.clone()))
}

/// A body that counts its calls and returns a constant.
fn counted(counter: &Arc<AtomicUsize>, value: serde_json::Value) -> Body {
    let counter = Arc::clone(counter);
    Body::blocking(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        ok(value.clone())
    })
}

fn id(run_id: &str) -> StartOptions {
    StartOptions { run_id: Some(run_id.to_owned()), attachment: None }
}

async fn finish(engine: &Engine, wf: &Workflow, input: serde_json::Value) -> RunSnapshot {
    let run = engine.start(wf, Value::from(input), StartOptions::default()).expect("start");
    run.wait(Some(LIMIT)).await.expect("run settles")
}

/// Polls `cond` until it holds, failing the test after [`LIMIT`].
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sets its flag when dropped: placed inside an async body, it tells whether the body's
/// future was dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        multiplier: 1.0,
        max_backoff: Duration::from_secs(1),
        jitter: 0.0,
    }
}

fn entries(engine: &Engine, run: &str) -> Vec<JournalEntry> {
    engine.journal(run).unwrap().into_iter().map(|s| s.entry).collect()
}

fn report<'a>(reports: &'a [crate::engine::NodeReport], name: &str) -> &'a NodeReport {
    reports.iter().find(|r| &*r.name == name).unwrap_or_else(|| panic!("no node {name}"))
}

/// Receives events until the stream ends.
async fn drain(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, rx.recv()).await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return events,
            Err(_) => panic!("the event stream did not end; got {events:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dataflow
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_passes_each_output_to_the_next_node() {
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])],
        vec![
            (
                "a",
                Body::blocking(|call: NodeCall| {
                    assert!(call.deps.is_empty());
                    let x = j(&call.input)["x"].as_i64().unwrap();
                    ok(json!(x + 1))
                }),
            ),
            (
                "b",
                Body::from_async(|call: NodeCall| async move {
                    let a = j(&call.deps[0]).as_i64().unwrap();
                    ok(json!(a * 10))
                }),
            ),
            (
                "c",
                Body::blocking(|call: NodeCall| {
                    assert_eq!(j(&call.input), json!({"x": 1}));
                    let b = j(&call.deps[0]).as_i64().unwrap();
                    ok(json!({"result": b + 5}))
                }),
            ),
        ],
    );
    let engine = engine();
    let snap = finish(&engine, &wf, json!({"x": 1})).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!({"result": 25}));
    assert!(snap.failure.is_none());
    let reports = engine.nodes(&snap.run_id).unwrap();
    for name in ["a", "b", "c"] {
        let r = report(&reports, name);
        assert_eq!(r.status, "completed", "{name}");
        assert_eq!(r.attempts, 1, "{name}");
    }
    assert_eq!(j(report(&reports, "b").output.as_ref().unwrap()), json!(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_receives_its_deps_in_dependency_order() {
    // c finishes before b, but d declares b first.
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), task("d", &["b", "c"])],
        vec![
            ("a", constant(json!(1))),
            (
                "b",
                Body::from_async(|call: NodeCall| async move {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    ok(json!({"b": j(&call.deps[0])}))
                }),
            ),
            ("c", Body::from_async(|call: NodeCall| async move { ok(json!({"c": j(&call.deps[0])})) })),
            ("d", Body::blocking(|call: NodeCall| ok(serde_json::Value::Array(call.deps.iter().map(j).collect())))),
        ],
    );
    let engine = engine();
    let snap = finish(&engine, &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!([{"b": 1}, {"c": 1}]));
    // c was recorded before b, so the order really came from the declaration.
    let order: Vec<String> = entries(&engine, &snap.run_id)
        .iter()
        .filter_map(|e| match e {
            JournalEntry::NodeCompleted { node, .. } => Some(node.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["a", "c", "b", "d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sinks_give_a_record_output() {
    let wf = workflow(
        vec![task("a", &[]), task("x", &["a"]), task("y", &["a"])],
        vec![("a", constant(json!(0))), ("x", constant(json!("X"))), ("y", constant(json!("Y")))],
    );
    let snap = finish(&engine(), &wf, json!(null)).await;
    assert_eq!(j(snap.output.as_ref().unwrap()), json!({"x": "X", "y": "Y"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_runs_only_the_chosen_successor() {
    let left = Arc::new(AtomicUsize::new(0));
    let right = Arc::new(AtomicUsize::new(0));
    let wf = workflow(
        vec![
            NodeSpec::new("route", NodeKind::Branch),
            NodeSpec::new("left", NodeKind::Task).dep(Dependency::on("route").when(["left"])),
            NodeSpec::new("right", NodeKind::Task).dep(Dependency::on("route").when(["right"])),
            task("join", &["left", "right"]),
        ],
        vec![
            ("route", Body::blocking(|call: NodeCall| ok(json!(j(&call.input)["go"])))),
            ("left", counted(&left, json!("L"))),
            ("right", counted(&right, json!("R"))),
            ("join", Body::blocking(|call: NodeCall| ok(serde_json::Value::Array(call.deps.iter().map(j).collect())))),
        ],
    );
    let engine = engine();
    let snap = finish(&engine, &wf, json!({"go": "right"})).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!([null, "R"]));
    assert_eq!(left.load(Ordering::SeqCst), 0);
    assert_eq!(right.load(Ordering::SeqCst), 1);
    let reports = engine.nodes(&snap.run_id).unwrap();
    assert_eq!(report(&reports, "left").status, "skipped");

    // A label no edge knows fails the run, permanently.
    let snap = finish(&engine, &wf, json!({"go": "up"})).await;
    assert_eq!(snap.status, RunStatus::Failed);
    let failure = snap.failure.unwrap();
    assert_eq!(&*failure.node, "route");
    assert_eq!(failure.error.kind, "InvalidBranchOutput");
    assert_eq!(right.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_runs_each_item_and_keeps_input_order() {
    let wf = workflow(
        vec![task("src", &[]), NodeSpec::new("m", NodeKind::Map).dep(Dependency::on("src")).over("src")],
        vec![
            ("src", constant(json!([30, 10, 20, 0]))),
            (
                "m",
                Body::from_async(|call: NodeCall| async move {
                    let (i, item) = call.item.clone().expect("map calls carry an item");
                    let ms = j(&item).as_u64().unwrap();
                    // Later items finish first.
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    assert_eq!(call.idempotency_base(), format!("{}/m/{i}", call.run_id));
                    ok(json!({"i": i, "ms": ms}))
                }),
            ),
        ],
    );
    let snap = finish(&engine(), &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(
        j(snap.output.as_ref().unwrap()),
        json!([
            {"i": 0, "ms": 30},
            {"i": 1, "ms": 10},
            {"i": 2, "ms": 20},
            {"i": 3, "ms": 0}
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_receive_the_attachment_given_at_start() {
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"])],
        vec![
            (
                "a",
                Body::blocking(|call: NodeCall| {
                    let tag = call.attachment.as_ref().and_then(|a| a.downcast_ref::<String>()).cloned();
                    ok(json!(tag))
                }),
            ),
            (
                "b",
                Body::from_async(|call: NodeCall| async move {
                    let tag = call.attachment.as_ref().and_then(|a| a.downcast_ref::<String>()).cloned();
                    ok(json!([j(&call.deps[0]), tag]))
                }),
            ),
        ],
    );
    let engine = engine();
    let attachment: Attachment = Arc::new("loop-1".to_owned());
    let run = engine.start(&wf, Value::null(), StartOptions { run_id: None, attachment: Some(attachment) }).unwrap();
    let snap = run.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(j(snap.output.as_ref().unwrap()), json!(["loop-1", "loop-1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_drive_runs_a_blocking_chain_on_the_calling_thread() {
    let threads: Arc<Mutex<Vec<std::thread::ThreadId>>> = Arc::default();
    let body = |threads: &Arc<Mutex<Vec<std::thread::ThreadId>>>| {
        let threads = Arc::clone(threads);
        Body::blocking(move |call: NodeCall| {
            threads.lock().unwrap().push(std::thread::current().id());
            ok(json!(call.deps.first().map(j).and_then(|v| v.as_i64()).unwrap_or(0) + 1))
        })
    };
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])],
        vec![("a", body(&threads)), ("b", body(&threads)), ("c", body(&threads))],
    );
    let engine = engine();
    let driver = engine.clone();
    let (caller, run) = tokio::task::spawn_blocking(move || {
        let run = driver.start_and_drive(&wf, Value::null(), StartOptions::default()).unwrap();
        (std::thread::current().id(), run)
    })
    .await
    .unwrap();
    // The chain is done by the time the call returns.
    let snap = run.snapshot();
    assert_eq!(snap.status, RunStatus::Completed);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!(3));
    assert_eq!(*threads.lock().unwrap(), [caller, caller, caller]);
}

// ---------------------------------------------------------------------------------------
// Failures, retries, timeouts, panics
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_is_retried_with_a_fresh_idempotency_key() {
    let seen: Arc<Mutex<Vec<(u32, String, String)>>> = Arc::default();
    let recorder = Arc::clone(&seen);
    let wf = workflow(
        vec![task("flaky", &[]).retry(quick_retry(3)), task("after", &["flaky"])],
        vec![
            (
                "flaky",
                Body::blocking(move |call: NodeCall| {
                    recorder.lock().unwrap().push((call.attempt, call.idempotency_key(), call.idempotency_base()));
                    if call.attempt < 3 {
                        Err(NodeError::new("Flaky", format!("attempt {}", call.attempt)))
                    } else {
                        ok(json!("third time lucky"))
                    }
                }),
            ),
            ("after", Body::blocking(|call: NodeCall| ok(json!([j(&call.deps[0])])))),
        ],
    );
    let engine = engine();
    let run = engine.start(&wf, Value::null(), id("retry-run")).unwrap().id().clone();
    let snap = engine.wait(&run, Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!(["third time lucky"]));

    let seen = seen.lock().unwrap().clone();
    let attempts: Vec<u32> = seen.iter().map(|s| s.0).collect();
    assert_eq!(attempts, [1, 2, 3]);
    let keys: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(keys, ["retry-run/flaky/1", "retry-run/flaky/2", "retry-run/flaky/3"]);
    assert!(seen.iter().all(|s| s.2 == "retry-run/flaky"));

    let failures: Vec<(u32, Option<u64>)> = entries(&engine, &run)
        .iter()
        .filter_map(|e| match e {
            JournalEntry::NodeFailed { attempt, retry_in_ms, error, .. } => {
                assert_eq!(error.kind, "Flaky");
                Some((*attempt, *retry_in_ms))
            }
            _ => None,
        })
        .collect();
    assert_eq!(failures, [(1, Some(5)), (2, Some(5))]);
    let reports = engine.nodes(&run).unwrap();
    assert_eq!(report(&reports, "flaky").attempts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_item_is_retried_with_its_own_item() {
    let seen: Arc<Mutex<Vec<(u32, u32, serde_json::Value)>>> = Arc::default();
    let recorder = Arc::clone(&seen);
    let wf = workflow(
        vec![
            task("src", &[]),
            NodeSpec::new("m", NodeKind::Map).dep(Dependency::on("src")).over("src").retry(quick_retry(2)),
        ],
        vec![
            ("src", constant(json!(["x", "y", "z"]))),
            (
                "m",
                Body::blocking(move |call: NodeCall| {
                    let (i, item) = call.item.clone().unwrap();
                    recorder.lock().unwrap().push((i, call.attempt, j(&item)));
                    if i == 1 && call.attempt == 1 {
                        return Err(NodeError::new("Flaky", "once"));
                    }
                    ok(json!(format!("{}{}", j(&item).as_str().unwrap(), call.attempt)))
                }),
            ),
        ],
    );
    let snap = finish(&engine(), &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!(["x1", "y2", "z1"]));
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|s| (s.0, s.1));
    assert_eq!(seen, [(0, 1, json!("x")), (1, 1, json!("y")), (1, 2, json!("y")), (2, 1, json!("z"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let wf = workflow(
        vec![task("a", &[]).retry(quick_retry(5))],
        vec![(
            "a",
            Body::blocking(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                Err(NodeError::permanent("Invalid", "no use trying again"))
            }),
        )],
    );
    let snap = finish(&engine(), &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Failed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(snap.failure.unwrap().error.kind, "Invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_always_fails_fails_the_run_and_stops_its_descendants() {
    let downstream = Arc::new(AtomicUsize::new(0));
    let slow_done = Arc::new(AtomicBool::new(false));
    let slow_flag = Arc::clone(&slow_done);
    let wf = workflow(
        vec![
            task("quick", &[]),
            task("slow", &[]),
            task("bad", &[]).retry(quick_retry(2)),
            task("after_bad", &["bad"]),
            task("end", &["after_bad", "quick", "slow"]),
        ],
        vec![
            ("quick", constant(json!("q"))),
            (
                "slow",
                Body::blocking(move |_| {
                    std::thread::sleep(Duration::from_millis(150));
                    slow_flag.store(true, Ordering::SeqCst);
                    ok(json!("s"))
                }),
            ),
            (
                "bad",
                Body::from_async(|_| async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(NodeError::new("ValueError", "always"))
                }),
            ),
            ("after_bad", counted(&downstream, json!(1))),
            ("end", counted(&downstream, json!(2))),
        ],
    );
    let engine = engine();
    let snap = finish(&engine, &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Failed);
    assert!(snap.output.is_none());
    let failure = snap.failure.clone().unwrap();
    assert_eq!(&*failure.node, "bad");
    assert_eq!(failure.item, None);
    assert_eq!(failure.error.kind, "ValueError");
    assert_eq!(failure.error.message, "always");

    let reports = engine.nodes(&snap.run_id).unwrap();
    assert_eq!(report(&reports, "quick").status, "completed");
    assert_eq!(report(&reports, "bad").status, "failed");
    assert_eq!(report(&reports, "bad").attempts, 2);
    assert_eq!(report(&reports, "after_bad").status, "pending");

    // The slow sibling finishes in the background; its result is dropped, the journal
    // still ends with the failure.
    let journal_len = engine.journal(&snap.run_id).unwrap().len();
    eventually("the slow body", || slow_done.load(Ordering::SeqCst)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let journal = entries(&engine, &snap.run_id);
    assert_eq!(journal.len(), journal_len);
    assert!(matches!(journal.last(), Some(JournalEntry::RunFinished { status: RunStatus::Failed, .. })));
    assert_eq!(engine.snapshot(&snap.run_id).unwrap().status, RunStatus::Failed);
    assert_eq!(downstream.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_dropped_and_retried() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let wf = workflow(
        vec![task("slow", &[]).timeout(Duration::from_millis(50)).retry(quick_retry(2))],
        vec![(
            "slow",
            Body::from_async(move |call: NodeCall| {
                let flag = Arc::clone(&flag);
                async move {
                    if call.attempt == 1 {
                        let _guard = SetOnDrop(flag);
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return ok(json!("too late"));
                    }
                    ok(json!(call.attempt))
                }
            }),
        )],
    );
    let engine = engine();
    let snap = finish(&engine, &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!(2));
    assert!(dropped.load(Ordering::SeqCst), "the first attempt was not dropped");
    let timeouts: Vec<_> = entries(&engine, &snap.run_id)
        .into_iter()
        .filter_map(|e| match e {
            JournalEntry::NodeFailed { attempt, error, retry_in_ms, .. } => {
                Some((attempt, error.kind, error.retryable, retry_in_ms))
            }
            _ => None,
        })
        .collect();
    assert_eq!(timeouts, [(1, "Timeout".to_owned(), true, Some(5))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_without_retries_fails_the_run() {
    let wf = workflow(
        vec![
            task("slow", &[]).timeout(Duration::from_millis(30)),
            task("blocking_slow", &[]).timeout(Duration::from_millis(30)),
        ],
        vec![
            (
                "slow",
                Body::from_async(|_| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    ok(json!(null))
                }),
            ),
            (
                "blocking_slow",
                Body::blocking(|_| {
                    std::thread::sleep(Duration::from_millis(200));
                    ok(json!(null))
                }),
            ),
        ],
    );
    let started = std::time::Instant::now();
    let snap = finish(&engine(), &wf, json!(null)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(snap.status, RunStatus::Failed);
    let failure = snap.failure.unwrap();
    assert!(["slow", "blocking_slow"].contains(&&*failure.node), "{failure:?}");
    assert_eq!(failure.error.kind, "Timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_body_with_a_timeout_times_out() {
    let wf = workflow(
        vec![task("b", &[]).timeout(Duration::from_millis(30))],
        vec![(
            "b",
            Body::blocking(|_| {
                std::thread::sleep(Duration::from_millis(200));
                ok(json!(null))
            }),
        )],
    );
    let engine = engine();
    let snap = finish(&engine, &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Failed);
    assert_eq!(snap.failure.unwrap().error.kind, "Timeout");
    // The thread finishes later; its result is stale and recorded nowhere.
    let len = engine.journal(&snap.run_id).unwrap().len();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(engine.journal(&snap.run_id).unwrap().len(), len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_body_fails_its_node_instead_of_hanging() {
    let bodies: Vec<(&str, NodeSpec, Body)> = vec![
        ("blocking", task("boom", &[]), Body::blocking(|_| panic!("blocking boom"))),
        ("async", task("boom", &[]), Body::from_async(|_| async { panic!("async boom") })),
        (
            "blocking with timeout",
            task("boom", &[]).timeout(Duration::from_secs(5)),
            Body::blocking(|_| panic!("timed boom")),
        ),
    ];
    let engine = engine();
    for (what, spec, body) in bodies {
        let wf = workflow(vec![spec, task("next", &["boom"])], vec![("boom", body), ("next", constant(json!(1)))]);
        let snap = finish(&engine, &wf, json!(null)).await;
        assert_eq!(snap.status, RunStatus::Failed, "{what}");
        let failure = snap.failure.unwrap();
        assert_eq!(&*failure.node, "boom", "{what}");
        assert_eq!(failure.error.kind, "Panic", "{what}");
        assert!(failure.error.message.contains("boom"), "{what}: {failure:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_async_bodies_in_flight() {
    let started = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let downstream = Arc::new(AtomicUsize::new(0));
    let (s, d, f) = (Arc::clone(&started), Arc::clone(&dropped), Arc::clone(&finished));
    let wf = workflow(
        vec![task("long", &[]), task("after", &["long"])],
        vec![
            (
                "long",
                Body::from_async(move |_| {
                    let (s, d, f) = (Arc::clone(&s), Arc::clone(&d), Arc::clone(&f));
                    async move {
                        let _guard = SetOnDrop(d);
                        s.store(true, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        f.store(true, Ordering::SeqCst);
                        ok(json!(null))
                    }
                }),
            ),
            ("after", counted(&downstream, json!(null))),
        ],
    );
    let engine = engine();
    let run = engine.start(&wf, Value::null(), StartOptions::default()).unwrap().id().clone();
    eventually("the body to start", || started.load(Ordering::SeqCst)).await;
    assert_eq!(engine.snapshot(&run).unwrap().status, RunStatus::Running);

    engine.cancel(&run).unwrap();
    assert_eq!(engine.snapshot(&run).unwrap().status, RunStatus::Cancelled);
    let snap = engine.wait(&run, Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Cancelled);
    assert!(snap.output.is_none());
    eventually("the body's future to be dropped", || dropped.load(Ordering::SeqCst)).await;
    assert!(!finished.load(Ordering::SeqCst));
    assert_eq!(downstream.load(Ordering::SeqCst), 0);
    assert!(matches!(
        entries(&engine, &run).last(),
        Some(JournalEntry::RunFinished { status: RunStatus::Cancelled, .. })
    ));

    // Twice is fine.
    engine.cancel(&run).unwrap();
    assert_eq!(engine.snapshot(&run).unwrap().status, RunStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_the_result_of_a_blocking_body_in_flight() {
    let release = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let downstream = Arc::new(AtomicUsize::new(0));
    let (r, s) = (Arc::clone(&release), Arc::clone(&started));
    let wf = workflow(
        vec![task("block", &[]), task("after", &["block"])],
        vec![
            (
                "block",
                Body::blocking(move |_| {
                    s.store(true, Ordering::SeqCst);
                    let deadline = std::time::Instant::now() + LIMIT;
                    while !r.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    ok(json!("late"))
                }),
            ),
            ("after", counted(&downstream, json!(null))),
        ],
    );
    let engine = engine();
    let run = engine.start(&wf, Value::null(), StartOptions::default()).unwrap().id().clone();
    eventually("the body to start", || started.load(Ordering::SeqCst)).await;
    engine.cancel(&run).unwrap();
    let len = engine.journal(&run).unwrap().len();
    release.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(engine.journal(&run).unwrap().len(), len);
    assert_eq!(downstream.load(Ordering::SeqCst), 0);
    assert_eq!(engine.snapshot(&run).unwrap().status, RunStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_a_retry_waiting_out_its_backoff() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let wf = workflow(
        vec![task("a", &[]).retry(RetryPolicy { initial_backoff: Duration::from_millis(100), ..quick_retry(3) })],
        vec![(
            "a",
            Body::blocking(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                Err(NodeError::new("E", "fails"))
            }),
        )],
    );
    let engine = engine();
    let run = engine.start(&wf, Value::null(), StartOptions::default()).unwrap().id().clone();
    eventually("the first failure", || {
        entries(&engine, &run).iter().any(|e| matches!(e, JournalEntry::NodeFailed { .. }))
    })
    .await;
    engine.cancel(&run).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(engine.snapshot(&run).unwrap().status, RunStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_finished_or_unknown_run_is_an_error() {
    let wf = workflow(vec![task("a", &[])], vec![("a", constant(json!(1)))]);
    let engine = engine();
    let snap = finish(&engine, &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Completed);
    match engine.cancel(&snap.run_id) {
        Err(Error::InvalidRunState { status, action, .. }) => {
            assert_eq!(status, RunStatus::Completed);
            assert_eq!(action, "cancel");
        }
        other => panic!("expected InvalidRunState, got {other:?}"),
    }
    assert_eq!(engine.snapshot(&snap.run_id).unwrap().status, RunStatus::Completed);
    assert!(matches!(
        engine.cancel("no-such-run"),
        Err(Error::RunNotFound { run_id }) if run_id == "no-such-run"
    ));
}

// ---------------------------------------------------------------------------------------
// Human nodes and resume
// ---------------------------------------------------------------------------------------

fn human_workflow() -> Workflow {
    workflow(
        vec![NodeSpec::new("ask", NodeKind::Human), task("after", &["ask"])],
        vec![
            ("ask", Body::blocking(|call: NodeCall| ok(json!({"question": j(&call.input)})))),
            ("after", Body::blocking(|call: NodeCall| ok(json!(format!("{}!", j(&call.deps[0]).as_str().unwrap()))))),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_node_pauses_the_run_until_resumed() {
    let wf = human_workflow();
    let engine = engine();
    let run = engine.start(&wf, Value::from(json!("proceed?")), StartOptions::default()).unwrap().id().clone();
    let snap = engine.wait(&run, Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Waiting);
    let waiting: Vec<_> = snap.waiting.iter().map(|(n, p)| (n.to_string(), j(p))).collect();
    assert_eq!(waiting, [("ask".to_owned(), json!({"question": "proceed?"}))]);
    assert_eq!(report(&engine.nodes(&run).unwrap(), "ask").status, "waiting");

    match engine.resume(&run, Some("after"), Value::from(json!("x")), None).err() {
        Some(Error::NotWaitingAt { node, waiting, .. }) => {
            assert_eq!(node, "after");
            assert_eq!(waiting, ["ask"]);
        }
        other => panic!("expected NotWaitingAt, got {other:?}"),
    }

    engine.resume(&run, None, Value::from(json!("yes")), None).unwrap();
    let snap = engine.wait(&run, Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!("yes!"));
    assert!(snap.waiting.is_empty());
    assert!(entries(&engine, &run).iter().any(|e| matches!(e, JournalEntry::Resumed { node, .. } if &**node == "ask")));

    // Answering again is an error: nothing waits any more.
    assert!(matches!(
        engine.resume(&run, None, Value::from(json!("again")), None),
        Err(Error::InvalidRunState { status: RunStatus::Completed, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_an_unknown_or_running_run_is_an_error() {
    let engine = engine();
    assert!(matches!(
        engine.resume("nope", None, Value::null(), None),
        Err(Error::RunNotFound { run_id }) if run_id == "nope"
    ));

    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let wf = workflow(
        vec![task("a", &[])],
        vec![(
            "a",
            Body::from_async(move |_| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.notified().await;
                    ok(json!("done"))
                }
            }),
        )],
    );
    let run = engine.start(&wf, Value::null(), StartOptions::default()).unwrap().id().clone();
    match engine.resume(&run, None, Value::null(), None).err() {
        Some(Error::InvalidRunState { status, action, expected, .. }) => {
            assert_eq!(status, RunStatus::Running);
            assert_eq!(action, "resume");
            assert_eq!(expected, "waiting");
        }
        other => panic!("expected InvalidRunState, got {other:?}"),
    }
    release.notify_one();
    let snap = engine.wait(&run, Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed);
    assert!(matches!(
        engine.resume(&run, None, Value::null(), None),
        Err(Error::InvalidRunState { status: RunStatus::Completed, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_waits_for_nobody() {
    let wf = human_workflow();
    let engine = engine();
    let run = engine.start(&wf, Value::null(), StartOptions::default()).unwrap().id().clone();
    let snap = engine.wait(&run, Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Waiting);
    engine.cancel(&run).unwrap();
    let snap = engine.snapshot(&run).unwrap();
    assert_eq!(snap.status, RunStatus::Cancelled);
    let resumed = engine.resume(&run, None, Value::from(json!("late")), None).err();
    assert!(matches!(resumed, Some(Error::InvalidRunState { status: RunStatus::Cancelled, .. })), "{resumed:?}");
    assert!(snap.waiting.is_empty(), "{:?}", snap.waiting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_gives_up_after_its_timeout() {
    let wf = workflow(
        vec![task("a", &[])],
        vec![(
            "a",
            Body::from_async(|_| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                ok(json!(null))
            }),
        )],
    );
    let engine = engine();
    let run = engine.start(&wf, Value::null(), StartOptions::default()).unwrap().id().clone();
    assert!(matches!(engine.wait(&run, Some(Duration::from_millis(30))).await, Err(Error::WaitTimeout { .. })));
    engine.cancel(&run).unwrap();
    assert!(matches!(engine.wait("unknown", Some(LIMIT)).await, Err(Error::RunNotFound { .. })));
}

// ---------------------------------------------------------------------------------------
// Run ids
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_the_same_run_id_twice_runs_it_once() {
    let a_calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&a_calls);
    let b_calls = Arc::new(AtomicUsize::new(0));
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"])],
        vec![
            (
                "a",
                Body::from_async(move |call: NodeCall| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        ok(j(&call.input))
                    }
                }),
            ),
            ("b", counted(&b_calls, json!("b"))),
        ],
    );
    let engine = engine();
    let first = engine.start(&wf, Value::from(json!(1)), id("same")).unwrap().id().clone();
    // While the first is running, and with another input: the first run is returned.
    let second = engine.start(&wf, Value::from(json!(2)), id("same")).unwrap().id().clone();
    assert_eq!(&*first, "same");
    assert_eq!(first, second);
    let snap = engine.wait(&first, Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed);
    // And once it has finished.
    let third = engine.start(&wf, Value::from(json!(3)), id("same")).unwrap().id().clone();
    assert_eq!(third, first);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(a_calls.load(Ordering::SeqCst), 1);
    assert_eq!(b_calls.load(Ordering::SeqCst), 1);
    let started: Vec<_> = entries(&engine, &first)
        .into_iter()
        .filter_map(|e| match e {
            JournalEntry::RunStarted { input, .. } => Some(j(&input)),
            _ => None,
        })
        .collect();
    assert_eq!(started, [json!(1)]);
    assert_eq!(engine.run_ids(), [first]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_id_taken_by_another_graph_is_a_conflict() {
    let one = workflow_named("one", vec![task("a", &[])], vec![("a", constant(json!(1)))]);
    let two = workflow_named("two", vec![task("a", &[])], vec![("a", constant(json!(2)))]);
    // Same name, different structure (so a different version).
    let one_v2 = workflow_named(
        "one",
        vec![task("a", &[]), task("b", &["a"])],
        vec![("a", constant(json!(1))), ("b", constant(json!(1)))],
    );
    let engine = engine();
    engine.start(&one, Value::null(), id("shared")).unwrap();
    for other in [&two, &one_v2] {
        match engine.start(other, Value::null(), id("shared")).err() {
            Some(Error::RunIdConflict { run_id, existing, requested }) => {
                assert_eq!(run_id, "shared");
                assert!(existing.starts_with("one@"), "{existing}");
                assert_ne!(existing, requested);
            }
            other => panic!("expected RunIdConflict, got {other:?}"),
        }
    }
    let snap = engine.wait("shared", Some(LIMIT)).await.unwrap();
    assert_eq!(&*snap.graph, "one");
    assert_eq!(j(snap.output.as_ref().unwrap()), json!(1));
    assert!(matches!(engine.start(&one, Value::null(), id("  ")), Err(Error::InvalidInput { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_beyond_the_retention_limit_are_forgotten() {
    let wf = workflow(vec![task("a", &[])], vec![("a", constant(json!(1)))]);
    let engine = Engine::new(Handle::current(), EngineConfig { retain_finished: 1, ..EngineConfig::default() });
    let first = engine.start(&wf, Value::null(), id("first")).unwrap();
    first.wait(Some(LIMIT)).await.unwrap();
    let second = engine.start(&wf, Value::null(), id("second")).unwrap();
    second.wait(Some(LIMIT)).await.unwrap();
    // Retiring happens just after the status is published, so give it a moment.
    eventually("the first run to be forgotten", || matches!(engine.snapshot("first"), Err(Error::RunNotFound { .. })))
        .await;
    assert!(matches!(engine.wait("first", Some(LIMIT)).await, Err(Error::RunNotFound { .. })));
    assert_eq!(engine.snapshot("second").unwrap().status, RunStatus::Completed);
    // A handle outlives the engine's memory of the run.
    let snap = first.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_without_a_store_pages_through_its_runs_newest_first() {
    let one = workflow_named("one", vec![task("a", &[])], vec![("a", constant(json!(1)))]);
    let two = workflow_named("two", vec![task("a", &[])], vec![("a", constant(json!(2)))]);
    let engine = engine();
    // Started in quick succession: several in one millisecond, ordered by start then.
    let mut started: Vec<(u64, usize, String, &str)> = Vec::new();
    for i in 0..12 {
        let (wf, graph) = if i % 3 == 0 { (&two, "two") } else { (&one, "one") };
        let run = engine.start(wf, Value::null(), id(&format!("run{i:02}"))).unwrap();
        run.wait(Some(LIMIT)).await.unwrap();
        let created_ms = engine.journal(run.id()).unwrap()[0].at_ms;
        started.push((created_ms, i, run.id().to_string(), graph));
    }
    started.sort_by_key(|r| std::cmp::Reverse((r.0, r.1)));
    for graph in [None, Some("one"), Some("two")] {
        let expected: Vec<&str> =
            started.iter().filter(|r| graph.is_none_or(|g| r.3 == g)).map(|r| r.2.as_str()).collect();
        let query = RunQuery { graph: graph.map(str::to_owned), limit: 1000, ..RunQuery::default() };
        let all = engine.list_runs(&query).unwrap();
        assert_eq!(all.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), expected);
        assert_eq!(all.next, None);
        for limit in [1, 4, 5] {
            let mut query = RunQuery { limit, ..query.clone() };
            let mut paged = Vec::new();
            let mut pages = 0;
            loop {
                let page = engine.list_runs(&query).unwrap();
                pages += 1;
                paged.extend(page.runs.iter().map(|r| r.run_id.clone()));
                match page.next {
                    Some(next) => {
                        assert_eq!(page.runs.len(), limit);
                        query.after = Some(next);
                    }
                    None => break,
                }
            }
            assert_eq!(paged, expected, "{graph:?} by {limit}");
            assert_eq!(pages, expected.len().div_ceil(limit), "{graph:?} by {limit}");
        }
    }
    let none = engine.list_runs(&RunQuery::default()).unwrap();
    assert_eq!(none, RunPage::default());
    let completed = RunQuery { status: Some(RunStatus::Completed), limit: 100, ..RunQuery::default() };
    assert_eq!(engine.list_runs(&completed).unwrap().runs.len(), 12);
    let running = RunQuery { status: Some(RunStatus::Running), limit: 100, ..RunQuery::default() };
    assert!(engine.list_runs(&running).unwrap().runs.is_empty());
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

fn journal_events(events: &[Event]) -> Vec<(u64, &JournalEntry)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Journal(entry) => Some((e.seq, entry)),
            EventKind::NodeStarted { .. } | EventKind::NodeProgress { .. } => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_event_in_order() {
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])],
        vec![
            ("a", constant(json!(1))),
            (
                "b",
                Body::from_async(|_| async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    ok(json!(2))
                }),
            ),
            ("c", constant(json!(3))),
        ],
    );
    let engine = engine();
    let (run, mut rx) =
        engine.start_watched(&wf, Value::null(), StartOptions::default(), WatchUntil::Finished).unwrap();
    let run = run.id().clone();
    let events = drain(&mut rx).await;
    assert!(events.iter().all(|e| e.run_id == run));

    let journal = journal_events(&events);
    let seqs: Vec<u64> = journal.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(matches!(events.first().map(|e| &e.kind), Some(EventKind::Journal(JournalEntry::RunStarted { .. }))));
    match &events.last().unwrap().kind {
        EventKind::Journal(JournalEntry::RunFinished { status, output, .. }) => {
            assert_eq!(*status, RunStatus::Completed);
            assert_eq!(j(output.as_ref().unwrap()), json!(3));
        }
        other => panic!("the last event is {other:?}"),
    }
    // The journal events are the journal.
    assert_eq!(journal.len(), engine.journal(&run).unwrap().len());

    // Each node starts before it completes.
    for name in ["a", "b", "c"] {
        let started = events
            .iter()
            .position(|e| matches!(&e.kind, EventKind::NodeStarted { node, attempt: 1, .. } if &**node == name));
        let completed = events.iter().position(
            |e| matches!(&e.kind, EventKind::Journal(JournalEntry::NodeCompleted { node, .. }) if &**node == name),
        );
        let (started, completed) = (started.expect(name), completed.expect(name));
        assert!(started < completed, "{name}");
    }

    // Watching a finished run replays its journal and ends.
    let mut rx = engine.watch(&run, WatchUntil::Finished).unwrap();
    let replayed = drain(&mut rx).await;
    let replayed_seqs: Vec<u64> = journal_events(&replayed).iter().map(|(s, _)| *s).collect();
    assert_eq!(replayed_seqs, seqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_watch_ends_at_the_pause() {
    let wf = human_workflow();
    let engine = engine();
    let (run, mut rx) =
        engine.start_watched(&wf, Value::from(json!("?")), StartOptions::default(), WatchUntil::Settled).unwrap();
    let run = run.id().clone();
    let events = drain(&mut rx).await;
    let journal = journal_events(&events);
    assert!(matches!(
        journal.last(),
        Some((_, JournalEntry::Interrupted { node, .. })) if &**node == "ask"
    ));
    assert_eq!(engine.snapshot(&run).unwrap().status, RunStatus::Waiting);

    let mut rx = engine.watch(&run, WatchUntil::Finished).unwrap();
    engine.resume(&run, Some("ask"), Value::from(json!("go")), None).unwrap();
    let events = drain(&mut rx).await;
    let journal = journal_events(&events);
    let seqs: Vec<u64> = journal.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(matches!(journal.last(), Some((_, JournalEntry::RunFinished { status: RunStatus::Completed, .. }))));
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

fn jittery(value: serde_json::Value) -> Body {
    Body::blocking(move |_| {
        std::thread::sleep(Duration::from_micros(fastrand::u64(0..=2_000)));
        ok(value.clone())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_join_runs_once_per_run_under_racing_dependencies() {
    const RUNS: usize = 200;
    let d_calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let recorder = Arc::clone(&d_calls);
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), task("d", &["b", "c"])],
        vec![
            ("a", jittery(json!("a"))),
            ("b", jittery(json!("b"))),
            ("c", jittery(json!("c"))),
            (
                "d",
                Body::blocking(move |call: NodeCall| {
                    std::thread::sleep(Duration::from_micros(fastrand::u64(0..=2_000)));
                    *recorder.lock().unwrap().entry(call.run_id.to_string()).or_default() += 1;
                    ok(serde_json::Value::Array(call.deps.iter().map(j).collect()))
                }),
            ),
        ],
    );
    let engine = engine();
    let runs: Vec<Arc<str>> = (0..RUNS)
        .map(|i| engine.start(&wf, Value::from(json!(i)), StartOptions::default()).unwrap().id().clone())
        .collect();
    for run in &runs {
        let snap = engine.wait(run, Some(Duration::from_secs(10))).await.unwrap_or_else(|e| panic!("run {run}: {e}"));
        assert_eq!(snap.status, RunStatus::Completed, "{run}: {:?}", snap.failure);
        assert_eq!(j(snap.output.as_ref().unwrap()), json!(["b", "c"]));
    }
    let calls = d_calls.lock().unwrap();
    assert_eq!(calls.len(), RUNS);
    assert!(calls.values().all(|&n| n == 1), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_last_nodes_finish_together_is_seen_completed() {
    // Many sinks finishing at the same moment on many threads: whatever order their
    // completions publish in, waiters must see the final status. Fails most of the time
    // on a 2-core machine: the snapshot says Completed while wait() times out.
    const RUNS: usize = 400;
    const SINKS: usize = 16;
    let sinks: Vec<NodeSpec> = (0..SINKS).map(|i| task(&format!("s{i}"), &[])).collect();
    let bodies: Vec<(String, Body)> = (0..SINKS).map(|i| (format!("s{i}"), constant(json!(i)))).collect();
    let wf = workflow(sinks, bodies.iter().map(|(n, b)| (n.as_str(), b.clone())).collect());
    let engine = engine();
    let runs: Vec<Arc<str>> =
        (0..RUNS).map(|_| engine.start(&wf, Value::null(), StartOptions::default()).unwrap().id().clone()).collect();
    for run in &runs {
        let snap = engine
            .wait(run, Some(Duration::from_secs(2)))
            .await
            .unwrap_or_else(|e| panic!("run {run}: {e}; state: {:?}", engine.snapshot(run).map(|s| s.status)));
        assert_eq!(snap.status, RunStatus::Completed);
    }
}

#[test]
fn the_status_mirror_maps_every_status_back_to_itself() {
    for status in STATUSES {
        assert_eq!(STATUSES[status as usize], status);
    }
}

// -- durable engines -------------------------------------------------------------------

fn durable(store: &Arc<crate::store::MemoryStore>) -> Engine {
    let store: Arc<dyn DurableStore> = store.clone();
    Engine::new(Handle::current(), EngineConfig { store: Some(store), ..EngineConfig::default() })
}

/// prepare -> ask (human) -> finish, counting body calls.
fn durable_workflow(calls: &Arc<AtomicUsize>) -> Workflow {
    workflow(
        vec![
            task("prepare", &[]),
            NodeSpec::new("ask", NodeKind::Human).dep(Dependency::on("prepare")),
            task("finish", &["ask"]),
        ],
        vec![
            ("prepare", counted(calls, json!("prepared"))),
            ("ask", counted(calls, json!({"q": "ok?"}))),
            ("finish", Body::blocking(|call: NodeCall| ok(json!({"answer": j(&call.deps[0])})))),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_run_is_recovered_by_another_engine_without_repeating_work() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let wf = durable_workflow(&calls);
    {
        let first = durable(&store);
        let run = first.start(&wf, Value::from(json!(1)), id("d1")).unwrap();
        let snapshot = run.wait(Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(snapshot.status, RunStatus::Waiting);
        // `first` goes away here, as a process would.
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "prepare and ask ran once each");

    let second = durable(&store);
    assert!(matches!(second.snapshot("d1"), Err(Error::RunNotFound { .. })), "not in memory before recovery");
    let run = second.recover(&wf, "d1", None).unwrap();
    assert_eq!(run.snapshot().status, RunStatus::Waiting);
    second.resume("d1", None, Value::from(json!("yes")), None).unwrap();
    let snapshot = run.wait(Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!(snapshot.status, RunStatus::Completed);
    assert_eq!(j(snapshot.output.as_ref().unwrap()), json!({"answer": "yes"}));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "no completed node ran again");

    let (record, journal) = store.load("d1").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert_eq!(journal.len(), second.journal("d1").unwrap().len(), "the store holds the whole journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_start_of_an_existing_run_id_continues_that_run() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let wf = durable_workflow(&calls);
    durable(&store)
        .start(&wf, Value::from(json!(1)), id("d2"))
        .unwrap()
        .wait(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let again = durable(&store).start(&wf, Value::from(json!(1)), id("d2")).unwrap();
    assert_eq!(again.wait(Some(Duration::from_secs(5))).await.unwrap().status, RunStatus::Waiting);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the second start ran nothing again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_node_runs_again_after_recovery() {
    // The store holds a run whose `slow` node had started when its engine went away.
    let store = Arc::new(crate::store::MemoryStore::new());
    let started = Arc::new(AtomicUsize::new(0));
    let hang = {
        let started = Arc::clone(&started);
        Body::from_async(move |_| {
            started.fetch_add(1, Ordering::SeqCst);
            async { std::future::pending::<BodyResult>().await }
        })
    };
    let wf = workflow(vec![task("a", &[]), task("slow", &["a"])], vec![("a", constant(json!(1))), ("slow", hang)]);
    let first = durable(&store);
    first.start(&wf, Value::from(json!(0)), id("d3")).unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while started.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    first.cancel("d3").ok(); // stops the body; the store keeps the run as cancelled
    let (record, _) = store.load("d3").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Cancelled);

    // A run that stopped mid-node (no cancellation recorded) is picked up where it stood.
    let store = Arc::new(crate::store::MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"])],
        vec![
            ("a", counted(&calls, json!(1))),
            (
                "b",
                Body::blocking(|call: NodeCall| {
                    ok(json!([j(&call.deps[0]).as_i64().unwrap() + 1, call.attempt, call.idempotency_base()]))
                }),
            ),
        ],
    );
    let journal = vec![
        StoredEntry {
            seq: 0,
            at_ms: 1,
            entry: JournalEntry::RunStarted {
                graph: "g".into(),
                version: wf.graph().version().into(),
                input: Value::from(json!(0)),
            },
        },
        StoredEntry {
            seq: 1,
            at_ms: 2,
            entry: JournalEntry::NodeCompleted {
                node: "a".into(),
                item: None,
                attempt: 1,
                output: Value::from(json!(41)),
            },
        },
    ];
    let record = RunRecord {
        run_id: "d4".into(),
        graph: "g".into(),
        version: wf.graph().version().into(),
        status: RunStatus::Running,
        created_ms: 1,
        updated_ms: 2,
    };
    store.create_run(&record, &journal).await.unwrap();
    let run = durable(&store).recover(&wf, "d4", None).unwrap();
    let snapshot = run.wait(Some(Duration::from_secs(5))).await.unwrap();
    // b ran on a's recorded output, as attempt 2 (attempt 1 was outstanding when its process
    // stopped), with the idempotency base every attempt of b shares.
    assert_eq!(j(snapshot.output.as_ref().unwrap()), json!([42, 2, "d4/b"]));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "a, completed in the journal, did not run again");
    let interrupted = store.load("d4").await.unwrap().unwrap().1.into_iter().find_map(|s| match s.entry {
        JournalEntry::NodeFailed { node, attempt, error, .. } if &*node == "b" => Some((attempt, error.kind)),
        _ => None,
    });
    assert_eq!(interrupted, Some((1, "Interrupted".to_owned())), "the journal says why b ran again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovering_with_another_graph_version_is_refused() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    durable(&store).start(&durable_workflow(&calls), Value::from(json!(1)), id("d5")).unwrap();
    let changed = workflow(vec![task("prepare", &[])], vec![("prepare", constant(json!(0)))]);
    assert!(matches!(durable(&store).recover(&changed, "d5", None), Err(Error::VersionMismatch { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_recovered_mid_backoff_waits_out_the_rest_of_it() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let wf = workflow(vec![task("flaky", &[])], vec![("flaky", counted(&calls, json!("ok")))]);
    let version = wf.graph().version().to_owned();
    let now = now_ms();
    // Attempt 1 failed 100 ms ago and asked for a 600 ms backoff: 500 ms remain.
    let journal = vec![
        StoredEntry {
            seq: 0,
            at_ms: now - 100,
            entry: JournalEntry::RunStarted {
                graph: "g".into(),
                version: version.clone().into(),
                input: Value::null(),
            },
        },
        StoredEntry {
            seq: 1,
            at_ms: now - 100,
            entry: JournalEntry::NodeFailed {
                node: "flaky".into(),
                item: None,
                attempt: 1,
                error: NodeError::new("ValueError", "boom"),
                retry_in_ms: Some(600),
            },
        },
    ];
    let record = RunRecord {
        run_id: "backoff".into(),
        graph: "g".into(),
        version,
        status: RunStatus::Running,
        created_ms: now - 100,
        updated_ms: now - 100,
    };
    store.create_run(&record, &journal).await.unwrap();
    let started = std::time::Instant::now();
    let run = durable(&store).recover(&wf, "backoff", None).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the retry waited for its backoff");
    let snapshot = run.wait(Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!(snapshot.status, RunStatus::Completed);
    assert!(started.elapsed() >= Duration::from_millis(400), "retried after {:?}", started.elapsed());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let attempts: Vec<u32> = store
        .load("backoff")
        .await
        .unwrap()
        .unwrap()
        .1
        .iter()
        .filter_map(|s| match &s.entry {
            JournalEntry::NodeCompleted { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [2], "the retry is attempt 2, not an interrupted attempt 3");
}

fn durable_with_lease(store: &Arc<crate::store::MemoryStore>, lease: Duration) -> Engine {
    let store: Arc<dyn DurableStore> = store.clone();
    Engine::new(Handle::current(), EngineConfig { store: Some(store), lease, ..EngineConfig::default() })
}

/// a -> slow -> c, where `slow` parks until `release` is notified (standing for a process
/// that stopped in the middle of it), counting the calls of each node.
fn parking_workflow(calls: &Arc<Mutex<Vec<String>>>, release: &Arc<Notify>) -> Workflow {
    let log = |name: &'static str| {
        let calls = Arc::clone(calls);
        Body::blocking(move |call: NodeCall| {
            calls.lock().unwrap().push(format!("{name}#{}", call.attempt));
            ok(json!(name))
        })
    };
    let slow = {
        let (calls, release) = (Arc::clone(calls), Arc::clone(release));
        Body::from_async(move |call: NodeCall| {
            calls.lock().unwrap().push(format!("slow#{}", call.attempt));
            let release = Arc::clone(&release);
            async move {
                if call.attempt == 1 {
                    release.notified().await;
                }
                ok(json!("slow"))
            }
        })
    };
    workflow(
        vec![task("a", &[]), task("slow", &["a"]), task("c", &["slow"])],
        vec![("a", log("a")), ("slow", slow), ("c", log("c"))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_takes_over_the_tasks_of_a_holder_that_stopped_renewing() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(Notify::new());
    let wf = parking_workflow(&calls, &release);
    let lease = Duration::from_millis(300);

    // The first engine starts the run and parks in `slow`; then it stops renewing its
    // leases, as a process that died would (its heartbeat ends with the engine).
    let first = durable_with_lease(&store, lease);
    let run = first.start(&wf, Value::from(json!(0)), id("w1")).unwrap();
    eventually("slow started", || calls.lock().unwrap().contains(&"slow#1".to_owned())).await;
    let owner = first.owner().to_owned();
    assert!(store.claim("someone", 10, lease, Duration::ZERO).await.unwrap().is_empty(), "held by the first engine");
    drop(first);

    let second = durable_with_lease(&store, lease);
    let stop = CancellationToken::new();
    let worker = {
        let (second, wf, stop) = (second.clone(), wf.clone(), stop.clone());
        tokio::spawn(async move { second.work(&[wf], 4, None, stop, Duration::from_secs(1)).await })
    };
    eventually("the worker finished the run", || second.snapshot("w1").is_ok_and(|s| s.status == RunStatus::Completed))
        .await;
    assert_eq!(*calls.lock().unwrap(), ["a#1", "slow#1", "slow#2", "c#1"], "a ran once; slow again as attempt 2");
    let journal = entries(&second, "w1");
    assert!(
        journal.iter().any(|e| matches!(e, JournalEntry::NodeFailed { node, attempt: 1, error, .. }
            if &**node == "slow" && error.kind == "Interrupted")),
        "the journal says why slow ran again: {journal:?}"
    );

    // The first holder was only slow, not dead: its late result is dropped against the
    // journal, which is not rewritten.
    let before = store.load("w1").await.unwrap().unwrap().1.len();
    release.notify_waiters();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.load("w1").await.unwrap().unwrap().1.len(), before);
    assert_eq!(run.snapshot().status, RunStatus::Completed, "writing, the first engine caught up with the journal");
    assert_eq!(calls.lock().unwrap().len(), 4, "and ran nothing more");
    assert!(store.claim_run(&owner, "w1", lease).await.unwrap().is_empty(), "a finished run holds no tasks");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), worker).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_submitted_tasks_and_hands_back_unknown_graphs() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(Notify::new());
    let wf = parking_workflow(&calls, &release);
    // A run created for any worker: its first task queued, held by nobody.
    let record = RunRecord {
        run_id: "w2".into(),
        graph: wf.graph().name().into(),
        version: wf.graph().version().into(),
        status: RunStatus::Running,
        created_ms: 1,
        updated_ms: 1,
    };
    let started = StoredEntry {
        seq: 0,
        at_ms: 1,
        entry: JournalEntry::RunStarted {
            graph: wf.graph().name().into(),
            version: wf.graph().version().into(),
            input: Value::from(json!(0)),
        },
    };
    let first = QueuedTask { run_id: "w2".into(), node: "a".into(), item: None, attempt: 1, not_before_ms: 0 };
    store.create(&record, &[started], &[first], None).await.unwrap();
    // And a task of a graph this worker does not know.
    let stranger = QueuedTask { run_id: "other".into(), node: "x".into(), item: None, attempt: 1, not_before_ms: 0 };
    let other = RunRecord { run_id: "other".into(), graph: "unknown-graph".into(), ..record.clone() };
    store.create(&other, &[], &[stranger], None).await.unwrap();

    let engine = durable(&store);
    let stop = CancellationToken::new();
    let worker = {
        let (engine, wf, stop) = (engine.clone(), wf.clone(), stop.clone());
        tokio::spawn(async move { engine.work(&[wf], 4, None, stop, Duration::from_secs(1)).await })
    };
    eventually("slow started", || calls.lock().unwrap().contains(&"slow#1".to_owned())).await;
    release.notify_waiters();
    eventually("the run completed", || engine.snapshot("w2").is_ok_and(|s| s.status == RunStatus::Completed)).await;
    assert_eq!(*calls.lock().unwrap(), ["a#1", "slow#1", "c#1"], "fresh tasks run as their first attempt");
    // The stranger's task went back to the queue, for later, untouched.
    assert!(store.load("other").await.unwrap().unwrap().1.is_empty());
    let handed_back = store.claim_run("inspector", "other", Duration::from_secs(1)).await.unwrap();
    assert_eq!(handed_back.len(), 1);
    assert!(handed_back[0].task.not_before_ms > crate::journal::now_ms(), "handed back for later");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), worker).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_writes_steps_after_the_window_and_a_settled_run_at_once() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let window = Duration::from_secs(1);
    let engine = {
        let store: Arc<dyn DurableStore> = store.clone();
        let config =
            EngineConfig { store: Some(store), durability: Durability::Batch { window }, ..Default::default() };
        Engine::new(Handle::current(), config)
    };
    let calls = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(Notify::new());
    let wf = parking_workflow(&calls, &release);
    let run = engine.start(&wf, Value::from(json!(0)), id("g1")).unwrap();
    eventually("slow started", || calls.lock().unwrap().contains(&"slow#1".to_owned())).await;
    // `a` completed in memory (slow runs because of it) before its step is durable...
    let stored = || store.load("g1").now_or_never().unwrap().unwrap().unwrap().1.len();
    let created = stored();
    assert!(entries(&engine, "g1").len() > created, "the step is in memory");
    // ...and it is written within the window.
    eventually("the group commit", || stored() == entries(&engine, "g1").len()).await;

    release.notify_waiters();
    let snapshot = run.wait(Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!(snapshot.status, RunStatus::Completed);
    // The run settled: everything was written before anyone could learn of it.
    let (record, journal) = store.load("g1").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert_eq!(journal.len(), entries(&engine, "g1").len());
}

// ---------------------------------------------------------------------------------------
// Store outages
// ---------------------------------------------------------------------------------------

/// A real [`MemoryStore`] behind a switch that makes it unavailable, as a networked store
/// is while its server restarts: every call fails with [`Error::Unavailable`] while it is
/// down, and the next `lost_replies` commits (and `lost_claims` claims that grant something)
/// land but answer with that error, as a reply lost with the connection would; the next
/// `broken_commits` commits fail outright, as a full disk would.
struct Outage {
    store: crate::store::MemoryStore,
    down: AtomicBool,
    lost_replies: AtomicUsize,
    lost_claims: AtomicUsize,
    broken_commits: AtomicUsize,
}

impl Outage {
    fn new() -> Arc<Outage> {
        Arc::new(Outage {
            store: crate::store::MemoryStore::new(),
            down: AtomicBool::new(false),
            lost_replies: AtomicUsize::new(0),
            lost_claims: AtomicUsize::new(0),
            broken_commits: AtomicUsize::new(0),
        })
    }

    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("the test's store is down".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl JournalStore for Outage {
    async fn create_run(&self, record: &RunRecord, first: &[StoredEntry]) -> Result<Created> {
        self.check()?;
        self.store.create_run(record, first).await
    }
    async fn append(&self, run_id: &str, expected_seq: u64, entries: &[StoredEntry]) -> Result<()> {
        self.check()?;
        self.store.append(run_id, expected_seq, entries).await
    }
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        self.check()?;
        self.store.load(run_id).await
    }
    async fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        self.check()?;
        self.store.set_status(run_id, status).await
    }
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        self.check()?;
        self.store.list_runs(query).await
    }
}

#[async_trait::async_trait]
impl TaskQueue for Outage {
    async fn enqueue(&self, tasks: &[QueuedTask]) -> Result<()> {
        self.check()?;
        self.store.enqueue(tasks).await
    }
    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>> {
        self.check()?;
        let claims = self.store.claim(owner, max, lease_for, wait).await?;
        if !claims.is_empty()
            && self.lost_claims.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(Error::Unavailable("the reply was lost".into()));
        }
        Ok(claims)
    }
    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>> {
        self.check()?;
        self.store.claim_run(owner, run_id, lease_for).await
    }
    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()> {
        self.check()?;
        self.store.renew(owner, lease_for).await
    }
    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()> {
        self.check()?;
        self.store.ack(owner, task).await
    }
    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()> {
        self.check()?;
        self.store.release(owner, tasks, not_before_ms).await
    }
    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()> {
        self.check()?;
        self.store.release_run(owner, run_id, not_before_ms).await
    }
    async fn holder(&self, run_id: &str) -> Result<Option<String>> {
        self.check()?;
        self.store.holder(run_id).await
    }
    async fn holdings(&self, owner: &str) -> Result<crate::store::Holdings> {
        self.check()?;
        self.store.holdings(owner).await
    }
}

#[async_trait::async_trait]
impl DurableStore for Outage {
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        self.check()?;
        self.store.create(record, first, ready, owner).await
    }
    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        self.check()?;
        if self.broken_commits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(Error::Store("the test's store cannot write".into()));
        }
        let held = self.store.commit(step, owner).await?;
        if self.lost_replies.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(Error::Unavailable("the reply was lost".into()));
        }
        Ok(held)
    }
    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>> {
        self.check()?;
        self.store.load_since(run_id, seq).await
    }
    async fn register_graph(&self, graph: &crate::store::GraphRecord) -> Result<()> {
        self.check()?;
        self.store.register_graph(graph).await
    }
    async fn graphs(&self) -> Result<Vec<crate::store::GraphRecord>> {
        self.check()?;
        self.store.graphs().await
    }
}

fn durable_on(store: &Arc<Outage>, outage_timeout: Duration) -> Engine {
    let store: Arc<dyn DurableStore> = store.clone();
    Engine::new(Handle::current(), EngineConfig { store: Some(store), outage_timeout, ..EngineConfig::default() })
}

/// a -> b -> c, counting the calls of each node.
fn counted_chain(calls: &Arc<Mutex<Vec<String>>>) -> Workflow {
    let body = |name: &'static str| {
        let calls = Arc::clone(calls);
        Body::blocking(move |_| {
            calls.lock().unwrap().push(name.to_owned());
            ok(json!(name))
        })
    };
    workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])],
        vec![("a", body("a")), ("b", body("b")), ("c", body("c"))],
    )
}

fn completions(journal: &[StoredEntry]) -> Vec<String> {
    journal
        .iter()
        .filter_map(|e| match &e.entry {
            JournalEntry::NodeCompleted { node, .. } => Some(node.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_reply_was_lost_is_found_in_the_journal_and_the_run_goes_on() {
    let store = Outage::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = durable_on(&store, Duration::from_secs(5));
    // The steps of a and b land, but their writer hears only that the store is unavailable.
    store.lost_replies.store(2, Ordering::SeqCst);
    let run = engine.start(&counted_chain(&calls), Value::from(json!(0)), id("lost")).unwrap();
    let snapshot = run.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(snapshot.status, RunStatus::Completed);
    assert_eq!(*calls.lock().unwrap(), ["a", "b", "c"], "every node ran once");
    assert_eq!(store.lost_replies.load(Ordering::SeqCst), 0, "both replies were lost");
    let (_, journal) = store.store.load("lost").await.unwrap().unwrap();
    assert_eq!(completions(&journal), ["a", "b", "c"], "each step is in the journal once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_pauses_while_the_store_is_down_and_resumes_when_it_is_back() {
    let store = Outage::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = durable_on(&store, Duration::from_secs(5));
    let wf = counted_chain(&calls);
    store.down.store(true, Ordering::SeqCst);
    // Starting waits for the store, on a thread of its own here.
    let starter = {
        let (engine, wf) = (engine.clone(), wf.clone());
        std::thread::spawn(move || engine.start(&wf, Value::from(json!(0)), id("paused")).map(|run| run.id().clone()))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(calls.lock().unwrap().is_empty(), "nothing runs while the store is down");
    assert!(!starter.is_finished(), "the start waits for the store");
    store.down.store(false, Ordering::SeqCst);
    let run_id = tokio::task::spawn_blocking(move || starter.join().unwrap()).await.unwrap().unwrap();
    let snapshot = engine.wait(&run_id, Some(LIMIT)).await.unwrap();
    assert_eq!(snapshot.status, RunStatus::Completed);
    assert_eq!(*calls.lock().unwrap(), ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_longer_than_the_outage_timeout_fails_the_run_here_and_keeps_it_stored() {
    let store = Outage::new();
    let release = Arc::new(Notify::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = durable_on(&store, Duration::from_millis(200));
    let wf = parking_workflow(&calls, &release);
    let run = engine.start(&wf, Value::from(json!(0)), id("gone")).unwrap();
    eventually("slow to start", || calls.lock().unwrap().iter().any(|c| c == "slow#1")).await;
    store.down.store(true, Ordering::SeqCst);
    release.notify_one();
    let snapshot = run.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(snapshot.status, RunStatus::Failed, "{snapshot:?}");
    store.down.store(false, Ordering::SeqCst);
    let (record, journal) = store.store.load("gone").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Running, "the store keeps the run to continue");
    assert_eq!(completions(&journal), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_releases_what_a_claim_with_a_lost_reply_granted_it() {
    let store = Outage::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let wf = counted_chain(&calls);
    let submitter = {
        let store: Arc<dyn DurableStore> = store.clone();
        Engine::new(Handle::current(), EngineConfig { store: Some(store), execute: false, ..EngineConfig::default() })
    };
    // The worker's first claim is granted its task, but the reply never reaches it: the
    // task stays leased to it, renewed by its heartbeat, until it notices and lets go.
    store.lost_claims.store(1, Ordering::SeqCst);
    let run = submitter.start(&wf, Value::from(json!(0)), id("granted")).unwrap();
    let worker = durable_on(&store, Duration::from_secs(5));
    let stop = CancellationToken::new();
    let working = {
        let (worker, wf, stop) = (worker.clone(), wf.clone(), stop.clone());
        tokio::spawn(async move { worker.work(&[wf], 4, None, stop, Duration::from_secs(1)).await })
    };
    let snapshot = run.wait(Some(LIMIT)).await.unwrap();
    stop.cancel();
    working.await.unwrap().unwrap();
    assert_eq!(store.lost_claims.load(Ordering::SeqCst), 0, "a claim's reply was lost");
    assert_eq!(snapshot.status, RunStatus::Completed);
    assert_eq!(*calls.lock().unwrap(), ["a", "b", "c"], "every node ran once");
    let (_, journal) = store.store.load("granted").await.unwrap().unwrap();
    assert_eq!(journal.iter().filter(|e| matches!(e.entry, JournalEntry::NodeFailed { .. })).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failed_by_its_store_is_handed_back_and_a_worker_continues_it() {
    let store = Outage::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let wf = counted_chain(&calls);
    let first = durable_on(&store, Duration::from_secs(5));
    // a's step cannot be written (nor the next one): the run fails here, and would stay
    // held by `first`, renewed by its heartbeat, with nobody to continue it.
    store.broken_commits.store(2, Ordering::SeqCst);
    let run = first.start(&wf, Value::from(json!(0)), id("broken")).unwrap();
    assert_eq!(run.wait(Some(LIMIT)).await.unwrap().status, RunStatus::Failed);
    eventually("the hold to be handed back", || {
        tokio::task::block_in_place(|| {
            Handle::current().block_on(store.store.holder("broken")).unwrap().as_deref() == Some(crate::store::RELEASED)
        })
    })
    .await;
    // The first engine, working, claims it back and reads it from the store again.
    let stop = CancellationToken::new();
    let working = {
        let (first, wf, stop) = (first.clone(), wf.clone(), stop.clone());
        tokio::spawn(async move { first.work(&[wf], 4, None, stop, Duration::from_secs(1)).await })
    };
    eventually("the run to complete", || first.snapshot("broken").is_ok_and(|s| s.status == RunStatus::Completed))
        .await;
    stop.cancel();
    working.await.unwrap().unwrap();
    let (record, journal) = store.store.load("broken").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert_eq!(completions(&journal), ["a", "b", "c"]);
}

// ---------------------------------------------------------------------------------------
// A paused engine (its lease ran out) starts no body of a run taken over meanwhile
// ---------------------------------------------------------------------------------------

/// `first` -> `second`, whose first attempt fails and is retried after `backoff`; each call
/// of `second` is logged with its attempt.
fn retried_workflow(calls: &Arc<Mutex<Vec<u32>>>, backoff: Duration) -> Workflow {
    let calls = Arc::clone(calls);
    let second = Body::blocking(move |call| {
        calls.lock().unwrap().push(call.attempt);
        if call.attempt == 1 { Err(NodeError::new("Flaky", "fails once")) } else { ok(json!("done")) }
    });
    let retry = RetryPolicy { initial_backoff: backoff, ..quick_retry(2) };
    workflow_named(
        "paused",
        vec![task("first", &[]), task("second", &["first"]).retry(retry)],
        vec![("first", constant(json!(1))), ("second", second)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_lease_ran_out_runs_no_body_of_a_run_taken_over_meanwhile() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let (paused_calls, other_calls) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let paused = durable_with_lease(&store, Duration::from_secs(30));
    let backoff = Duration::from_millis(300);
    paused.start(&retried_workflow(&paused_calls, backoff), Value::from(json!(null)), id("r")).unwrap();
    eventually("the first attempt of `second` to fail", || *paused_calls.lock().unwrap() == [1]).await;
    // The engine learns of a gap in its renewals, as a renewal that ends after its lease ran
    // out does (the process was stopped), while another engine took the run over.
    paused.inner.clock.as_ref().unwrap().gap();
    let other = durable_with_lease(&store, Duration::from_secs(30));
    let taken = other.recover(&retried_workflow(&other_calls, backoff), "r", None).unwrap();
    let done = taken.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    // The paused engine's retry fell due meanwhile: it asked the store, found the run
    // taken over, and ran nothing.
    tokio::time::sleep(backoff * 2).await;
    assert_eq!(*other_calls.lock().unwrap(), [2]);
    assert_eq!(*paused_calls.lock().unwrap(), [1], "the paused engine ran the retry of a run it had lost");
    // It follows the run instead, and sees it finished.
    let seen = paused.handle("r").unwrap().wait(Some(LIMIT)).await.unwrap();
    assert_eq!(seen.status, RunStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_lease_ran_out_goes_on_with_the_runs_it_still_holds() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = durable_with_lease(&store, Duration::from_secs(30));
    let run =
        engine.start(&retried_workflow(&calls, Duration::from_millis(100)), Value::from(json!(null)), id("r")).unwrap();
    eventually("the first attempt of `second` to fail", || *calls.lock().unwrap() == [1]).await;
    engine.inner.clock.as_ref().unwrap().gap();
    // Nobody took the run: the store says it is still this engine's, and the retry runs.
    assert_eq!(run.wait(Some(LIMIT)).await.unwrap().status, RunStatus::Completed);
    assert_eq!(*calls.lock().unwrap(), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_wrongly_thinks_it_lost_a_run_hands_it_back_to_the_store() {
    // What an engine was told of its holds can be out of date; if it then stops running a
    // run the store still says it holds, its own renewals must not keep that run from
    // every other worker.
    let store = Arc::new(crate::store::MemoryStore::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let backoff = Duration::from_millis(300);
    let engine = durable_with_lease(&store, Duration::from_secs(30));
    engine.start(&retried_workflow(&calls, backoff), Value::from(json!(null)), id("r")).unwrap();
    eventually("the first attempt of `second` to fail", || *calls.lock().unwrap() == [1]).await;
    assert_eq!(store.holder("r").await.unwrap().as_deref(), Some(engine.inner.owner.as_str()));

    let run = engine.inner.live("r").unwrap();
    let inner = Arc::clone(&engine.inner);
    tokio::task::spawn_blocking(move || inner.lose(&run, "a test says so")).await.unwrap();
    assert_ne!(
        store.holder("r").await.unwrap().as_deref(),
        Some(engine.inner.owner.as_str()),
        "the run is still held by an engine that does not run it"
    );
    // Another engine claims the run and finishes it; the first runs nothing more of it.
    let other_calls = Arc::new(Mutex::new(Vec::new()));
    let other = durable_with_lease(&store, Duration::from_secs(30));
    let claims = store.claim(&other.inner.owner, 10, Duration::from_secs(30), Duration::from_secs(5)).await.unwrap();
    assert!(matches!(&claims[..], [Claim::Run(run)] if run == "r"), "{claims:?}");
    let taken = other.recover(&retried_workflow(&other_calls, backoff), "r", None).unwrap();
    assert_eq!(taken.wait(Some(LIMIT)).await.unwrap().status, RunStatus::Completed);
    tokio::time::sleep(backoff * 2).await;
    assert_eq!(*calls.lock().unwrap(), [1], "the engine that let the run go ran it all the same");
}
