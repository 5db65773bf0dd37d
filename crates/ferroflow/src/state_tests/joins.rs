//! Start and joins.

use super::*;

#[test]
fn roots_are_ready_at_start() {
    let graph = build(vec![task("a", &[]), task("b", &[]), task("c", &["a", "b"])], None);
    let (state, effects) = RunState::start(Arc::clone(&graph), Value::from(json!({"x": 1})));
    assert_eq!(state.status(), RunStatus::Running);
    assert_eq!(ready_names(&graph, &effects), ["a", "b"]);
    for task in &effects.ready {
        assert_eq!(task.item, None);
        assert_eq!(task.attempt, 1);
        assert_eq!(task.delay, None);
    }
    assert!(effects.derived.is_empty(), "{:?}", effects.derived);
    assert!(matches!(state.node_state(graph.id("c").unwrap()), NodeState::Pending));
    assert_eq!(j(state.input()), json!({"x": 1}));
    assert!(state.output().is_none());
}

#[test]
fn a_join_is_ready_only_after_both_deps_complete_in_either_order() {
    for order in [["a", "b"], ["b", "a"]] {
        let graph = build(vec![task("a", &[]), task("b", &[]), task("c", &["a", "b"])], None);
        let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
        let first = state.apply(&completed(order[0], 1, json!(order[0]))).unwrap();
        assert!(first.ready.is_empty(), "{order:?}: {:?}", first.ready);
        assert!(first.derived.is_empty());
        assert!(matches!(state.node_state(graph.id("c").unwrap()), NodeState::Pending));
        let second = state.apply(&completed(order[1], 1, json!(order[1]))).unwrap();
        assert_eq!(ready_names(&graph, &second), ["c"], "{order:?}");
        // Dependency values come in declaration order, whatever the completion order.
        let deps: Vec<_> = state.dependency_values(graph.id("c").unwrap()).iter().map(j).collect();
        assert_eq!(deps, [json!("a"), json!("b")], "{order:?}");
        let last = state.apply(&completed("c", 1, json!("done"))).unwrap();
        assert_eq!(state.status(), RunStatus::Completed);
        assert_eq!(finished(&last), Some((RunStatus::Completed, Some(json!("done")), None)));
    }
}
