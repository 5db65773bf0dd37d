//! A run wherever it lives: [`Engine::open_run`] and what its handle does, for a run only
//! the store holds (started by another engine that stopped, or that never executes).

use super::*;

fn durable(store: &Arc<crate::store::MemoryStore>) -> Engine {
    durable_with_lease(store, Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_only_the_store_holds_is_waited_on_watched_and_answered_through_its_handle() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let wf = human_workflow();
    {
        let first = durable(&store);
        let run = first.start(&wf, Value::from(json!("ship it?")), id("h1")).unwrap();
        assert_eq!(run.wait(Some(LIMIT)).await.unwrap().status, RunStatus::Waiting);
        first.close();
    }

    let second = durable(&store);
    assert!(matches!(second.handle("h1"), Err(Error::RunNotFound { .. })), "only the store holds the run");
    let run = second.open_run(&wf, "h1").unwrap();
    assert_eq!(&**run.id(), "h1");
    assert_eq!(run.workflow().graph().name(), "g");
    let snap = run.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Waiting);
    assert_eq!(snap.waiting_at::<serde_json::Value>("ask"), Some(json!({"question": "ship it?"})));

    let mut events = run.events(WatchUntil::Finished).unwrap();
    let answered = run.resume(None, Value::from(json!("yes")), None).unwrap();
    let snap = answered.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(snap.output_as::<String>().unwrap(), "yes!");
    let kinds: Vec<&'static str> = drain(&mut events)
        .await
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Journal(JournalEntry::RunStarted { .. }) => Some("started"),
            EventKind::Journal(JournalEntry::Resumed { .. }) => Some("resumed"),
            EventKind::Journal(JournalEntry::RunFinished { .. }) => Some("finished"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["started", "resumed", "finished"], "the watch sees the run from its first event to its end");

    // The store holds the answer and the end, for every process.
    let (record, journal) = durable(&store).load("h1").unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert!(journal.iter().any(|s| matches!(&s.entry, JournalEntry::Resumed { node, .. } if &**node == "ask")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_cancels_a_run_only_the_store_holds_and_refuses_what_cannot_be() {
    let store = Arc::new(crate::store::MemoryStore::new());
    let wf = human_workflow();
    let first = durable(&store);
    first.start(&wf, Value::null(), id("h2")).unwrap().wait(Some(LIMIT)).await.unwrap();
    first.close();

    let second = durable(&store);
    let run = second.open_run(&wf, "h2").unwrap();
    run.cancel().unwrap();
    run.cancel().unwrap();
    assert_eq!(durable(&store).load("h2").unwrap().0.status, RunStatus::Cancelled);
    let late = run.resume(None, Value::from(json!("late")), None).err();
    assert!(matches!(late, Some(Error::InvalidRunState { status: RunStatus::Cancelled, .. })), "{late:?}");

    // Unknown runs, other graphs, and a closed engine are refused by name.
    assert!(matches!(second.open_run(&wf, "nope"), Err(Error::RunNotFound { run_id }) if run_id == "nope"));
    let other = workflow_named("other", vec![task("a", &[])], vec![("a", constant(json!(1)))]);
    assert!(matches!(second.open_run(&other, "h2"), Err(Error::RunIdConflict { .. })));
    second.close();
    assert!(matches!(run.cancel(), Err(Error::Closed)));
    assert!(matches!(run.events(WatchUntil::Settled), Err(Error::Closed)));
    assert!(matches!(second.open_run(&wf, "h2"), Err(Error::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_a_handle_outlives_the_engine_forgetting_its_finished_run() {
    let engine = Engine::new(Handle::current(), EngineConfig { retain_finished: 1, ..EngineConfig::default() });
    let wf = workflow(vec![task("a", &[])], vec![("a", constant(json!("done")))]);
    let first = engine.start(&wf, Value::null(), id("m1")).unwrap();
    first.wait(Some(LIMIT)).await.unwrap();
    engine.start(&wf, Value::null(), id("m2")).unwrap().wait(Some(LIMIT)).await.unwrap();
    engine.start(&wf, Value::null(), id("m3")).unwrap().wait(Some(LIMIT)).await.unwrap();
    assert!(matches!(engine.open_run(&wf, "m1"), Err(Error::RunNotFound { .. })), "retention dropped m1");
    // The handle still has the run: its end, and its events.
    assert_eq!(first.wait(Some(LIMIT)).await.unwrap().output_as::<String>().unwrap(), "done");
    let events = drain(&mut first.events(WatchUntil::Finished).unwrap()).await;
    assert!(matches!(events.last().map(|e| &e.kind), Some(EventKind::Journal(JournalEntry::RunFinished { .. }))));
}
