//! Replaying a recorded run (`Engine::replay`).

use super::*;

/// `fetch` records step "remote" (counting the real calls in `calls`), then a person is
/// asked, then `after` joins both; with `extra`, `fetch` asks for a second step too.
fn recorded_workflow(calls: &Arc<AtomicUsize>, extra: bool) -> Workflow {
    let calls = Arc::clone(calls);
    workflow(
        vec![
            task("fetch", &[]),
            NodeSpec::new("ask", NodeKind::Human).dep(Dependency::on("fetch")),
            task("after", &["fetch", "ask"]),
        ],
        vec![
            (
                "fetch",
                Body::blocking(move |call: NodeCall| {
                    let mut keys = vec!["remote"];
                    if extra {
                        keys.push("second");
                    }
                    let mut got = Vec::new();
                    for key in keys {
                        if let Some((_, value)) = call.recorded.iter().find(|(k, _)| &**k == key) {
                            got.push(j(value));
                            continue;
                        }
                        if call.replaying {
                            return Err(NodeError::not_recorded(&call.node, key));
                        }
                        calls.fetch_add(1, Ordering::SeqCst);
                        let value = Value::from(json!(format!("{key} result")));
                        call.handle.as_ref().unwrap().record(key, value.clone()).unwrap();
                        got.push(j(&value));
                    }
                    ok(json!(got))
                }),
            ),
            ("ask", Body::blocking(|call: NodeCall| ok(json!({"check": j(&call.deps[0])})))),
            ("after", Body::blocking(|call: NodeCall| ok(json!([j(&call.deps[0]), j(&call.deps[1])])))),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_serves_the_recorded_steps_and_answers_and_refuses_new_steps() {
    let calls = Arc::new(AtomicUsize::new(0));
    let wf = recorded_workflow(&calls, false);
    let engine = engine();
    engine.start(&wf, Value::null(), id("recorded")).unwrap().wait(Some(LIMIT)).await.unwrap();
    engine.resume("recorded", None, Value::from(json!("yes")), None).unwrap();
    let done = engine.wait("recorded", Some(LIMIT)).await.unwrap();
    assert_eq!(j(done.output.as_ref().unwrap()), json!([["remote result"], "yes"]));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let journal = engine.journal("recorded").unwrap();

    let other = self::engine();
    let replayed = other.replay(&wf, &journal, Some("again".into()), None).unwrap().wait(Some(LIMIT)).await.unwrap();
    assert_eq!(replayed.status, RunStatus::Completed, "{:?}", replayed.failure);
    assert_eq!(
        j(replayed.output.as_ref().unwrap()),
        json!([["remote result"], "yes"]),
        "the answer was given as recorded"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the replay took the recorded step");

    // New code that asks for a step the recording lacks fails there, taking nothing.
    let changed = recorded_workflow(&calls, true);
    let failed = other.replay(&changed, &journal, None, None).unwrap().wait(Some(LIMIT)).await.unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    let failure = failed.failure.unwrap();
    assert_eq!((&*failure.node, failure.error.kind.as_str()), ("fetch", "StepNotRecorded"));
    assert!(failure.error.message.contains("'second'"), "{}", failure.error.message);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
