//! [`RunHandle::on_settled`]: a hook gets what `wait` would give, once, whether the run
//! settles later (finishing, waiting for a person) or had settled already, in memory and in
//! a durable engine, and for a run only the store holds.

use super::*;

/// A hook that sends what it gets on a channel, and the receiver to await it with.
fn hooked(run: &RunHandle) -> tokio::sync::oneshot::Receiver<Result<RunSnapshot>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    run.on_settled(move |outcome| {
        let _ = tx.send(outcome);
    });
    rx
}

async fn settled(rx: tokio::sync::oneshot::Receiver<Result<RunSnapshot>>) -> Result<RunSnapshot> {
    tokio::time::timeout(LIMIT, rx).await.expect("the hook was called in time").expect("the hook was called")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_gets_the_settled_run_once_when_it_finishes_or_waits_and_at_once_after() {
    let release = Arc::new(Notify::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = engine();
    let wf = parking_workflow(&calls, &release);
    let run = engine.start(&wf, Value::null(), id("p1")).unwrap();
    let later = hooked(&run);
    eventually("the slow node runs", || calls.lock().unwrap().iter().any(|c| c.starts_with("slow"))).await;
    assert!(!run.snapshot().status.is_terminal(), "the run is still running when the hook is set");
    release.notify_one();
    let snap = settled(later).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    let waited = run.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(snap.output.as_ref().map(j), waited.output.as_ref().map(j), "the hook gets what wait gives");
    assert_eq!(snap.output.as_ref().map(j), Some(json!("c")));
    // Set on a settled run, the hook is called at once.
    let snap = settled(hooked(&run)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed);

    let wf = human_workflow();
    let run = engine.start(&wf, Value::from(json!("ship it?")), id("h1")).unwrap();
    let waiting = settled(hooked(&run)).await.unwrap();
    assert_eq!(waiting.status, RunStatus::Waiting);
    assert_eq!(waiting.waiting_at::<serde_json::Value>("ask"), Some(json!({"question": "ship it?"})));
    // The answered run settles again, and a hook set for that time gets its end.
    let answered = run.resume(None, Value::from(json!("yes")), None).unwrap();
    let snap = settled(hooked(&answered)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(snap.output_as::<String>().unwrap(), "yes!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_on_a_failed_run_gets_its_failure_and_on_a_run_only_the_store_holds_its_state() {
    let engine = engine();
    let wf =
        workflow(vec![task("boom", &[])], vec![("boom", Body::blocking(|_| Err(NodeError::permanent("Boom", "no"))))]);
    let run = engine.start(&wf, Value::null(), id("f1")).unwrap();
    let snap = settled(hooked(&run)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Failed);
    assert_eq!(snap.failure.as_ref().map(|f| &*f.node), Some("boom"));

    // A run another engine left waiting, opened from the store: the hook reads it first.
    let store = Arc::new(crate::store::MemoryStore::new());
    let wf = human_workflow();
    let first = durable_with_lease(&store, Duration::from_secs(10));
    first.start(&wf, Value::from(json!("ok?")), id("h2")).unwrap().wait(Some(LIMIT)).await.unwrap();
    first.close();
    let second = durable_with_lease(&store, Duration::from_secs(10));
    let run = second.open_run(&wf, "h2").unwrap();
    let snap = settled(hooked(&run)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Waiting);
    assert_eq!(snap.waiting_at::<serde_json::Value>("ask"), Some(json!({"question": "ok?"})));
    let answered = run.resume(None, Value::from(json!("yes")), None).unwrap();
    let snap = settled(hooked(&answered)).await.unwrap();
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(
        store.load("h2").await.unwrap().expect("the run is stored").0.status,
        RunStatus::Completed,
        "the end is in the store"
    );
}
