//! Retrying a failed run (`Engine::retry`).

use super::*;

/// `first` counts its calls; `flaky` fails (for good: no retry policy) while `down` is set.
fn flaky_workflow(first: &Arc<AtomicUsize>, down: &Arc<AtomicBool>, keys: &Arc<Mutex<Vec<String>>>) -> Workflow {
    let (down, keys) = (Arc::clone(down), Arc::clone(keys));
    workflow(
        vec![task("first", &[]), task("flaky", &["first"]), task("last", &["flaky"])],
        vec![
            ("first", counted(first, json!(1))),
            (
                "flaky",
                Body::blocking(move |call: NodeCall| {
                    keys.lock().unwrap().push(call.idempotency_key());
                    if down.load(Ordering::SeqCst) {
                        Err(NodeError::new("ConnectionError", "the model server is down"))
                    } else {
                        ok(json!(2))
                    }
                }),
            ),
            ("last", Body::blocking(|call: NodeCall| ok(json!([j(&call.deps[0]), "done"])))),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_retried_from_the_node_that_failed() {
    let (first, down, keys) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(true)), Arc::default());
    let wf = flaky_workflow(&first, &down, &keys);
    let engine = engine();
    let run = engine.start(&wf, Value::null(), id("retried")).unwrap();
    let failed = run.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.failure.as_ref().map(|f| &*f.node), Some("flaky"));

    down.store(false, Ordering::SeqCst);
    let again = engine.retry(&wf, "retried", "tester", None).unwrap();
    let done = again.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.failure);
    assert_eq!(j(done.output.as_ref().unwrap()), json!([2, "done"]));
    assert_eq!(first.load(Ordering::SeqCst), 1, "a completed node does not run again");
    assert_eq!(*keys.lock().unwrap(), ["retried/flaky/1", "retried/flaky/2"], "the next attempt, same base");
    // The journal says who retried; the run's view shows it running again, then done.
    let retried: Vec<String> = entries(&engine, "retried")
        .iter()
        .filter_map(|e| match e {
            JournalEntry::RunRetried { by } => Some(by.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(retried, ["tester"]);
    assert_eq!(report(&engine.nodes("retried").unwrap(), "flaky").attempts, 2);
    // A completed run is not retried.
    match engine.retry(&wf, "retried", "tester", None) {
        Err(Error::InvalidRunState { status: RunStatus::Completed, action: "retry", .. }) => {}
        other => panic!("expected InvalidRunState, got {:?}", other.map(|r| r.id().clone())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_run_that_fails_again_can_be_retried_again_and_unknown_runs_are_not_found() {
    let (first, down, keys) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(true)), Arc::default());
    let wf = flaky_workflow(&first, &down, &keys);
    let engine = engine();
    engine.start(&wf, Value::null(), id("twice")).unwrap().wait(Some(LIMIT)).await.unwrap();
    let again = engine.retry(&wf, "twice", "", None).unwrap().wait(Some(LIMIT)).await.unwrap();
    assert_eq!(again.status, RunStatus::Failed, "still down");
    down.store(false, Ordering::SeqCst);
    let done = engine.retry(&wf, "twice", "", None).unwrap().wait(Some(LIMIT)).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(keys.lock().unwrap().len(), 3);
    assert_eq!(first.load(Ordering::SeqCst), 1);
    assert!(matches!(engine.retry(&wf, "nobody", "", None), Err(Error::RunNotFound { .. })));
}
