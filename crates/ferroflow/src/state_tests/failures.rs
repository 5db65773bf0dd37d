//! Retries and failures.

use super::*;

#[test]
fn a_retryable_failure_schedules_the_next_attempt_with_its_delay() {
    let graph = build(vec![task("a", &[]), task("b", &["a"])], None);
    let a = graph.id("a").unwrap();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&failed("a", None, 1, Some(250))).unwrap();
    assert_eq!(effects.ready, [Task { node: a, item: None, attempt: 2, delay: Some(Duration::from_millis(250)) }]);
    assert!(effects.derived.is_empty());
    assert_eq!(state.status(), RunStatus::Running);
    assert!(matches!(state.node_state(a), NodeState::Active { attempt: 2 }));

    let effects = state.apply(&failed("a", None, 2, Some(500))).unwrap();
    assert_eq!(effects.ready[0].attempt, 3);
    assert_eq!(effects.ready[0].delay, Some(Duration::from_millis(500)));

    let effects = state.apply(&completed("a", 3, json!("ok"))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["b"]);
}

#[test]
fn a_final_failure_fails_the_run_naming_the_node() {
    let graph = build(vec![task("a", &[]), task("other", &[]), task("b", &["a"])], None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&failed("a", None, 1, Some(10))).unwrap();
    let effects = state.apply(&failed("a", None, 2, None)).unwrap();
    assert!(effects.ready.is_empty());
    let (status, output, failure) = finished(&effects).expect("the run finishes");
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(output, None);
    let failure = failure.unwrap();
    assert_eq!(&*failure.node, "a");
    assert_eq!(failure.item, None);
    assert_eq!(failure.error.kind, "ValueError");
    assert_eq!(failure.error.message, "a broke");
    assert_eq!(state.status(), RunStatus::Failed);
    assert_eq!(state.failure(), Some(&failure));
    assert!(matches!(state.node_state(graph.id("a").unwrap()), NodeState::Failed { .. }));
    // Nothing is outstanding in a finished run, and a late sibling result is dropped.
    assert!(state.outstanding().is_empty());
    assert_eq!(state.apply(&completed("other", 1, json!(1))).err(), Some(Rejected::Stale));
    assert!(state.output().is_none());
}
