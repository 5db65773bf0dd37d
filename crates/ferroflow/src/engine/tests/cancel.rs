//! Cancellation.

use super::*;

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
