//! Human nodes.

use super::*;

fn human_graph() -> Arc<Graph> {
    build(vec![NodeSpec::new("ask", NodeKind::Human), task("slow", &[]), task("after", &["ask"])], Some("after"))
}

#[test]
fn a_human_node_waits_once_nothing_else_is_in_flight_and_resume_continues() {
    let graph = human_graph();
    let ask = graph.id("ask").unwrap();
    let (mut state, effects) = RunState::start(Arc::clone(&graph), Value::null());
    assert_eq!(ready_names(&graph, &effects), ["ask", "slow"]);

    state.apply(&interrupted("ask", json!({"q": "ok?"}))).unwrap();
    // `slow` is still running: not waiting yet.
    assert_eq!(state.status(), RunStatus::Running);
    let waiting: Vec<_> = state.waiting().map(|(id, p)| (id, j(p))).collect();
    assert_eq!(waiting, [(ask, json!({"q": "ok?"}))]);

    state.apply(&completed("slow", 1, json!(1))).unwrap();
    assert_eq!(state.status(), RunStatus::Waiting);
    assert!(state.outstanding().is_empty());

    let effects = state.apply(&resumed("ask", json!("yes"))).unwrap();
    assert_eq!(state.status(), RunStatus::Running);
    assert_eq!(ready_names(&graph, &effects), ["after"]);
    assert_eq!(completed_output(&state, "ask"), Some(json!("yes")));
    assert_eq!(state.waiting().count(), 0);
    let deps: Vec<_> = state.dependency_values(graph.id("after").unwrap()).iter().map(j).collect();
    assert_eq!(deps, [json!("yes")]);

    // A second answer is stale.
    assert_eq!(state.apply(&resumed("ask", json!("no"))).err(), Some(Rejected::Stale));
    state.apply(&completed("after", 1, json!("fin"))).unwrap();
    assert_eq!(state.status(), RunStatus::Completed);
    assert_eq!(j(state.output().unwrap()), json!("fin"));
}

#[test]
fn a_human_sink_s_answer_is_the_run_output() {
    let graph = build(vec![NodeSpec::new("ask", NodeKind::Human)], None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&interrupted("ask", json!("?"))).unwrap();
    assert_eq!(state.status(), RunStatus::Waiting);
    let effects = state.apply(&resumed("ask", json!({"a": 42}))).unwrap();
    assert_eq!(state.status(), RunStatus::Completed);
    assert_eq!(finished(&effects), Some((RunStatus::Completed, Some(json!({"a": 42})), None)));
}

#[test]
fn with_two_people_to_ask_the_run_waits_until_both_answer() {
    let graph = build(
        vec![
            NodeSpec::new("ask1", NodeKind::Human),
            NodeSpec::new("ask2", NodeKind::Human),
            task("end", &["ask1", "ask2"]),
        ],
        None,
    );
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&interrupted("ask1", json!(1))).unwrap();
    assert_eq!(state.status(), RunStatus::Running);
    state.apply(&interrupted("ask2", json!(2))).unwrap();
    assert_eq!(state.status(), RunStatus::Waiting);
    assert_eq!(state.waiting().count(), 2);

    let effects = state.apply(&resumed("ask2", json!("b"))).unwrap();
    assert!(effects.ready.is_empty());
    assert_eq!(state.status(), RunStatus::Waiting, "ask1 still waits");
    let waiting: Vec<_> = state.waiting().map(|(id, _)| id).collect();
    assert_eq!(waiting, [graph.id("ask1").unwrap()]);

    let effects = state.apply(&resumed("ask1", json!("a"))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["end"]);
    assert_eq!(state.status(), RunStatus::Running);
    let deps: Vec<_> = state.dependency_values(graph.id("end").unwrap()).iter().map(j).collect();
    assert_eq!(deps, [json!("a"), json!("b")]);
}

#[test]
fn resuming_a_node_that_is_not_waiting_is_stale() {
    let graph = human_graph();
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    assert_eq!(state.apply(&resumed("ask", json!(1))).err(), Some(Rejected::Stale));
    assert_eq!(state.apply(&resumed("slow", json!(1))).err(), Some(Rejected::Stale));
    assert_eq!(state.status(), RunStatus::Running);
}
