//! Failures, retries, timeouts and panics.

use super::*;

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
