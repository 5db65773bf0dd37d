//! Maps.

use super::*;

#[test]
fn map_items_become_tasks_and_the_output_keeps_input_order() {
    let graph = map_graph();
    let m = graph.id("m").unwrap();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("src", 1, json!(["a", "b", "c"]))).unwrap();
    let mut items: Vec<(NodeId, Option<u32>, u32)> =
        effects.ready.iter().map(|t| (t.node, t.item, t.attempt)).collect();
    items.sort();
    assert_eq!(items, [(m, Some(0), 1), (m, Some(1), 1), (m, Some(2), 1)]);
    assert_eq!(j(state.map_item(m, 1).unwrap()), json!("b"));
    assert!(state.map_item(m, 3).is_none());

    // Out of order.
    for (i, out) in [(2, "C"), (0, "A")] {
        let effects = state.apply(&item_completed("m", i, 1, json!(out))).unwrap();
        assert!(effects.ready.is_empty());
        assert!(matches!(state.node_state(m), NodeState::Mapping(_)));
    }
    let effects = state.apply(&item_completed("m", 1, 1, json!("B"))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["after"]);
    assert_eq!(completed_output(&state, "m"), Some(json!(["A", "B", "C"])));
    let deps: Vec<_> = state.dependency_values(graph.id("after").unwrap()).iter().map(j).collect();
    assert_eq!(deps, [json!(["A", "B", "C"])]);
}

#[test]
fn a_map_over_an_empty_list_completes_at_once() {
    let graph = map_graph();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("src", 1, json!([]))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["after"]);
    assert_eq!(completed_output(&state, "m"), Some(json!([])));

    // As the sink, it completes the run.
    let graph = build(vec![task("src", &[]), map_over("m", "src")], None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("src", 1, json!([]))).unwrap();
    assert!(effects.ready.is_empty());
    assert_eq!(state.status(), RunStatus::Completed);
    assert_eq!(finished(&effects), Some((RunStatus::Completed, Some(json!([])), None)));
}

#[test]
fn a_map_over_a_non_list_fails_the_run() {
    let graph = map_graph();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("src", 1, json!({"a": 1}))).unwrap();
    assert!(effects.ready.is_empty());
    let node_failed = effects.derived.iter().find_map(|e| match e {
        JournalEntry::NodeFailed { node, error, retry_in_ms, item, .. } => {
            Some((node.to_string(), error.clone(), *retry_in_ms, *item))
        }
        _ => None,
    });
    let (node, error, retry, item) = node_failed.expect("a derived NodeFailed");
    assert_eq!(node, "m");
    assert_eq!(error.kind, "InvalidMapInput");
    assert!(error.message.contains("dict"), "{}", error.message);
    assert_eq!(retry, None);
    assert_eq!(item, None);
    // NodeFailed comes before RunFinished.
    assert!(matches!(effects.derived.last(), Some(JournalEntry::RunFinished { status: RunStatus::Failed, .. })));
    let (status, output, failure) = finished(&effects).unwrap();
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(output, None);
    assert_eq!(&*failure.unwrap().node, "m");
    assert_eq!(state.status(), RunStatus::Failed);
    assert_eq!(&*state.failure().unwrap().node, "m");
}

#[test]
fn a_map_item_retries_on_its_own() {
    let graph = map_graph();
    let m = graph.id("m").unwrap();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&completed("src", 1, json!([1, 2]))).unwrap();
    let effects = state.apply(&failed("m", Some(1), 1, Some(40))).unwrap();
    assert_eq!(effects.ready, [Task { node: m, item: Some(1), attempt: 2, delay: Some(Duration::from_millis(40)) }]);
    // The superseded attempt's late result is stale.
    assert_eq!(state.apply(&item_completed("m", 1, 1, json!("late"))).err(), Some(Rejected::Stale));
    state.apply(&item_completed("m", 0, 1, json!("x"))).unwrap();
    let effects = state.apply(&item_completed("m", 1, 2, json!("y"))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["after"]);
    assert_eq!(completed_output(&state, "m"), Some(json!(["x", "y"])));
    // A non-existent element is inconsistent, not stale.
    let graph2 = map_graph();
    let (mut state, _) = RunState::start(graph2, Value::null());
    state.apply(&completed("src", 1, json!([1]))).unwrap();
    assert!(matches!(state.apply(&item_completed("m", 5, 1, json!(0))), Err(Rejected::Inconsistent(_))));
}

#[test]
fn a_final_map_item_failure_fails_the_run_naming_the_item() {
    let graph = map_graph();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&completed("src", 1, json!([1, 2, 3]))).unwrap();
    let effects = state.apply(&failed("m", Some(2), 1, None)).unwrap();
    let (status, _, failure) = finished(&effects).unwrap();
    assert_eq!(status, RunStatus::Failed);
    let failure = failure.unwrap();
    assert_eq!(&*failure.node, "m");
    assert_eq!(failure.item, Some(2));
    assert_eq!(state.apply(&item_completed("m", 0, 1, json!(0))).err(), Some(Rejected::Stale));
}
