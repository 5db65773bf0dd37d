//! Run ids: choosing, reusing and checking them.

use super::*;

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
