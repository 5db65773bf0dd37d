//! A paused engine (its lease ran out) starts no body of a run taken over meanwhile.

use super::*;

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
