//! Concurrency: parallel branches, blocking chains, durable engines side by side.

use super::*;

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
    store.create(&record, &journal, &[], None).await.unwrap();
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
    store.create(&record, &journal, &[], None).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_engine_refuses_work_and_lets_its_store_go_at_once() {
    let store = Arc::new(crate::store::MemoryStore::new());
    for durability in [Durability::Commit, Durability::Batch { window: Duration::from_millis(50) }] {
        let config = EngineConfig { store: Some(store.clone()), durability, ..EngineConfig::default() };
        let engine = Engine::new(Handle::current(), config);
        let graph = workflow(vec![task("a", &[])], vec![("a", constant(json!(1)))]);
        let run = engine.start(&graph, Value::from(json!(null)), StartOptions::default()).unwrap();
        assert_eq!(run.wait(Some(LIMIT)).await.unwrap().status, RunStatus::Completed);

        engine.close();
        assert!(engine.is_closed());
        let refused = engine.start(&graph, Value::from(json!(null)), StartOptions::default());
        assert!(matches!(refused, Err(Error::Closed)), "{:?}", refused.err());
        assert!(matches!(engine.list_runs(&RunQuery::default()), Err(Error::Closed)));
        engine.close();

        // Its background tasks are gone: dropping the engine drops its store at once
        // (a SQLite file's connection, a server's), not at their next wake-up.
        drop(engine);
        assert_eq!(Arc::strong_count(&store), 1, "{durability:?}: the engine still holds the store");
    }
}
