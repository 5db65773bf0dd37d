//! Stale and inconsistent entries.

use super::*;

#[test]
fn stale_results_are_rejected_and_change_nothing() {
    let graph = build(vec![task("a", &[]), task("b", &["a"])], None);
    let a = graph.id("a").unwrap();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&failed("a", None, 1, Some(5))).unwrap();

    // An old attempt.
    assert_eq!(state.apply(&completed("a", 1, json!("old"))).err(), Some(Rejected::Stale));
    assert!(matches!(state.node_state(a), NodeState::Active { attempt: 2 }));
    // A future attempt is not accepted either.
    assert_eq!(state.apply(&completed("a", 3, json!("future"))).err(), Some(Rejected::Stale));

    let effects = state.apply(&completed("a", 2, json!("new"))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["b"]);

    // A duplicate delivery: rejected, and b is not made ready twice.
    assert_eq!(state.apply(&completed("a", 2, json!("dup"))).err(), Some(Rejected::Stale));
    assert_eq!(completed_output(&state, "a"), Some(json!("new")));
    assert_eq!(state.outstanding(), [Task { node: graph.id("b").unwrap(), item: None, attempt: 1, delay: None }]);

    state.apply(&completed("b", 1, json!("end"))).unwrap();
    assert_eq!(state.status(), RunStatus::Completed);

    // After the run finished.
    for entry in [
        completed("b", 1, json!("again")),
        failed("b", None, 1, None),
        JournalEntry::RunFinished { status: RunStatus::Cancelled, output: None, failure: None },
    ] {
        assert_eq!(state.apply(&entry).err(), Some(Rejected::Stale), "{entry:?}");
    }
    assert_eq!(state.status(), RunStatus::Completed);
    assert_eq!(j(state.output().unwrap()), json!("end"));
}

#[test]
fn results_after_cancellation_are_stale() {
    let graph = build(vec![task("a", &[]), task("b", &["a"])], None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let cancel = JournalEntry::RunFinished { status: RunStatus::Cancelled, output: None, failure: None };
    let effects = state.apply(&cancel).unwrap();
    assert!(effects.ready.is_empty() && effects.derived.is_empty());
    assert_eq!(state.status(), RunStatus::Cancelled);
    assert!(state.outstanding().is_empty());
    assert_eq!(state.apply(&completed("a", 1, json!(1))).err(), Some(Rejected::Stale));
    // Cancelling again is accepted and changes nothing.
    assert!(state.apply(&cancel).is_ok());
    assert_eq!(state.status(), RunStatus::Cancelled);
}

#[test]
fn entries_that_contradict_the_graph_are_inconsistent() {
    let graph = build(vec![task("a", &[]), task("b", &["a"])], None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    assert!(matches!(state.apply(&completed("nope", 1, json!(1))), Err(Rejected::Inconsistent(_))));
    assert!(matches!(
        state.apply(&JournalEntry::RunStarted {
            graph: "g".into(),
            version: graph.version().into(),
            input: Value::null(),
        }),
        Err(Rejected::Inconsistent(_))
    ));
    assert!(matches!(state.apply(&JournalEntry::NodeSkipped { node: "a".into() }), Err(Rejected::Inconsistent(_))));
    assert!(matches!(
        state.apply(&JournalEntry::Interrupted { node: "a".into(), attempt: 1, payload: Value::null() }),
        Err(Rejected::Inconsistent(_))
    ));
    // None of it changed the state.
    assert_eq!(state.status(), RunStatus::Running);
    assert_eq!(state.outstanding().len(), 1);
    let effects = state.apply(&completed("a", 1, json!(1))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["b"]);
}

#[test]
fn derived_entries_applied_again_change_nothing() {
    let graph = branch_graph();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("route", 1, json!("yes"))).unwrap();
    for entry in &effects.derived {
        let again = state.apply(entry).unwrap();
        assert!(again.ready.is_empty() && again.derived.is_empty(), "{entry:?}");
    }
    assert_eq!(state.status(), RunStatus::Running);
    assert_eq!(state.outstanding().len(), 1);
}
