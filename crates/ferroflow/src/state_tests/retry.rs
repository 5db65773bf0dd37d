//! Retrying a failed run (`RunRetried`).

use super::*;

fn retried() -> JournalEntry {
    JournalEntry::RunRetried { by: "ops".into() }
}

fn recorded_step(node: &str, attempt: u32, key: &str) -> JournalEntry {
    JournalEntry::StepRecorded {
        node: node.into(),
        item: None,
        attempt,
        key: key.into(),
        value: Value::from(json!(key)),
    }
}

#[test]
fn a_retry_runs_the_failed_node_and_what_its_failure_cut_short_as_their_next_attempts() {
    // a completes; b fails for good while its sibling c is still running.
    let graph = build(vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), task("d", &["b", "c"])], None);
    let id = |n: &str| graph.id(n).unwrap();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&completed("a", 1, json!(1))).unwrap();
    state.apply(&recorded_step("b", 1, "model")).unwrap();
    state.apply(&failed("b", None, 1, Some(10))).unwrap();
    state.apply(&failed("b", None, 2, None)).unwrap();
    assert_eq!(state.status(), RunStatus::Failed);

    let effects = state.apply(&retried()).unwrap();
    assert_eq!(state.status(), RunStatus::Running);
    assert_eq!(state.failure(), None);
    assert!(effects.derived.is_empty());
    let mut ready: Vec<(String, u32)> =
        effects.ready.iter().map(|t| (graph.node(t.node).name.clone(), t.attempt)).collect();
    ready.sort();
    assert_eq!(ready, [("b".to_owned(), 3), ("c".to_owned(), 2)], "a completed and does not run again");
    assert!(effects.ready.iter().all(|t| t.delay.is_none()));
    assert!(matches!(state.node_state(id("a")), NodeState::Completed { .. }));
    // The policy counts from the retry; the steps the failed attempts recorded are handed on.
    assert_eq!(state.attempts_since_retry(&effects.ready.iter().find(|t| t.node == id("b")).unwrap().clone()), 1);
    assert_eq!(state.recorded(id("b"), None).len(), 1);
    // c's cut-short attempt 1 is superseded; its late result is dropped.
    assert_eq!(state.apply(&completed("c", 1, json!(0))).err(), Some(Rejected::Stale));

    state.apply(&completed("b", 3, json!(2))).unwrap();
    let effects = state.apply(&completed("c", 2, json!(3))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["d"]);
    let effects = state.apply(&completed("d", 1, json!("done"))).unwrap();
    assert_eq!(finished(&effects).map(|(s, o, _)| (s, o)), Some((RunStatus::Completed, Some(json!("done")))));
}

#[test]
fn a_retried_map_element_runs_again_and_the_completed_elements_keep_their_outputs() {
    let graph = build(vec![task("src", &[]), map_over("m", "src")], None);
    let m = graph.id("m").unwrap();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&completed("src", 1, json!([10, 20, 30]))).unwrap();
    state.apply(&item_completed("m", 0, 1, json!(11))).unwrap();
    state.apply(&failed("m", Some(1), 1, None)).unwrap();
    assert_eq!(state.status(), RunStatus::Failed);

    let effects = state.apply(&retried()).unwrap();
    let mut ready: Vec<(Option<u32>, u32)> = effects.ready.iter().map(|t| (t.item, t.attempt)).collect();
    ready.sort();
    assert_eq!(ready, [(Some(1), 2), (Some(2), 2)], "element 0 completed; 1 failed; 2 was cut short");
    state.apply(&item_completed("m", 1, 2, json!(21))).unwrap();
    let effects = state.apply(&item_completed("m", 2, 2, json!(31))).unwrap();
    let (status, output, _) = finished(&effects).expect("the run finishes");
    assert_eq!((status, output), (RunStatus::Completed, Some(json!([11, 21, 31]))));
    assert!(matches!(state.node_state(m), NodeState::Completed { .. }));
}

#[test]
fn a_retried_run_replays_to_the_state_it_had_live_and_can_fail_and_be_retried_again() {
    let graph = build(vec![task("a", &[]), task("b", &["a"])], None);
    let journal = vec![
        JournalEntry::RunStarted { graph: "g".into(), version: graph.version().into(), input: Value::null() },
        completed("a", 1, json!(1)),
        failed("b", None, 1, None),
        JournalEntry::RunFinished {
            status: RunStatus::Failed,
            output: None,
            failure: Some(RunFailure { node: "b".into(), item: None, error: NodeError::new("ValueError", "b broke") }),
        },
        retried(),
        failed("b", None, 2, None),
    ];
    let (mut live, _) = RunState::start(Arc::clone(&graph), Value::null());
    for entry in &journal[1..] {
        live.apply(entry).unwrap();
    }
    let replayed = RunState::replay(Arc::clone(&graph), &journal).unwrap();
    assert_eq!(live.status(), RunStatus::Failed);
    assert_eq!(replayed.status(), RunStatus::Failed);
    assert_eq!(replayed.failure(), live.failure());
    let mut again = replayed;
    let effects = again.apply(&retried()).unwrap();
    assert_eq!(effects.ready.iter().map(|t| t.attempt).collect::<Vec<_>>(), [3]);
}

#[test]
fn only_a_failed_run_is_retried() {
    let graph = build(vec![task("a", &[])], None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    assert_eq!(state.apply(&retried()).err(), Some(Rejected::Stale), "a running run");
    state.apply(&completed("a", 1, json!(1))).unwrap();
    assert_eq!(state.status(), RunStatus::Completed);
    assert_eq!(state.apply(&retried()).err(), Some(Rejected::Stale), "a completed run");
    assert_eq!(state.status(), RunStatus::Completed);
}

#[test]
fn a_map_over_a_value_that_is_not_a_list_fails_again_when_retried() {
    let graph = build(vec![task("src", &[]), map_over("m", "src")], None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&completed("src", 1, json!("not a list"))).unwrap();
    assert_eq!(state.status(), RunStatus::Failed);
    let effects = state.apply(&retried()).unwrap();
    assert_eq!(state.status(), RunStatus::Failed);
    assert!(effects.ready.is_empty());
    assert_eq!(
        finished(&effects).map(|(s, _, f)| (s, f.map(|f| f.error.kind))),
        Some((RunStatus::Failed, Some("InvalidMapInput".to_owned())))
    );
}
