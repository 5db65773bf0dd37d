//! Human nodes and resume.

use super::*;

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
