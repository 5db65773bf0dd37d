//! Branches.

use super::*;

#[test]
fn a_branch_runs_only_matching_successors_and_skipping_propagates() {
    let graph = branch_graph();
    let (mut state, effects) = RunState::start(Arc::clone(&graph), Value::null());
    assert_eq!(ready_names(&graph, &effects), ["route"]);

    let effects = state.apply(&completed("route", 1, json!("yes"))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["yes"]);
    assert_eq!(skipped_names(&effects), ["no", "no2", "no3"]);
    for name in ["no", "no2", "no3"] {
        assert!(is_skipped(&state, name), "{name}");
    }
    assert!(finished(&effects).is_none());
    assert_eq!(state.status(), RunStatus::Running);

    let effects = state.apply(&completed("yes", 1, json!(1))).unwrap();
    assert_eq!(state.status(), RunStatus::Completed);
    // Two sinks, one of them skipped: an object with null for the skipped one.
    assert_eq!(finished(&effects), Some((RunStatus::Completed, Some(json!({"yes": 1, "no3": null})), None)));
}

#[test]
fn a_declared_label_without_edges_skips_every_labelled_successor() {
    let graph = build(
        vec![
            branch("route", &[]).labels(["a", "none"]),
            NodeSpec::new("a", NodeKind::Task).dep(Dependency::on("route").when(["a"])),
        ],
        None,
    );
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("route", 1, json!("none"))).unwrap();
    assert!(effects.ready.is_empty());
    assert_eq!(skipped_names(&effects), ["a"]);
    assert_eq!(state.status(), RunStatus::Completed);
    assert_eq!(j(state.output().unwrap()), json!(null));
}

#[test]
fn a_labelled_edge_gates_a_node_that_also_has_a_plain_edge() {
    let specs = || {
        vec![
            task("a", &[]),
            branch("route", &[]).labels(["go", "stop"]),
            NodeSpec::new("x", NodeKind::Task).dep(Dependency::on("a")).dep(Dependency::on("route").when(["go"])),
        ]
    };

    // The plain dependency completed, the branch said "stop": skipped.
    let graph = build(specs(), None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("a", 1, json!(1))).unwrap();
    assert!(effects.ready.is_empty());
    let effects = state.apply(&completed("route", 1, json!("stop"))).unwrap();
    assert!(effects.ready.is_empty(), "{:?}", effects.ready);
    assert_eq!(skipped_names(&effects), ["x"]);
    assert_eq!(state.status(), RunStatus::Completed);

    // Branch first: the skip waits for the plain dependency to resolve too.
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("route", 1, json!("stop"))).unwrap();
    assert!(effects.derived.is_empty(), "{:?}", effects.derived);
    assert!(matches!(state.node_state(graph.id("x").unwrap()), NodeState::Pending));
    let effects = state.apply(&completed("a", 1, json!(1))).unwrap();
    assert_eq!(skipped_names(&effects), ["x"]);

    // "go": it runs, and receives both inputs.
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&completed("route", 1, json!("go"))).unwrap();
    let effects = state.apply(&completed("a", 1, json!(7))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["x"]);
    let deps: Vec<_> = state.dependency_values(graph.id("x").unwrap()).iter().map(j).collect();
    assert_eq!(deps, [json!(7), json!("go")]);
}

#[test]
fn a_join_after_a_branch_runs_with_null_for_the_skipped_input() {
    let graph = build(
        vec![
            branch("route", &[]),
            NodeSpec::new("b", NodeKind::Task).dep(Dependency::on("route").when(["b"])),
            NodeSpec::new("c", NodeKind::Task).dep(Dependency::on("route").when(["c"])),
            task("d", &["b", "c"]),
        ],
        None,
    );
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("route", 1, json!("b"))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["b"]);
    assert_eq!(skipped_names(&effects), ["c"]);

    let effects = state.apply(&completed("b", 1, json!({"from": "b"}))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["d"]);
    let deps: Vec<_> = state.dependency_values(graph.id("d").unwrap()).iter().map(j).collect();
    assert_eq!(deps, [json!({"from": "b"}), json!(null)]);

    state.apply(&completed("d", 1, json!("joined"))).unwrap();
    assert_eq!(state.status(), RunStatus::Completed);
    assert_eq!(j(state.output().unwrap()), json!("joined"));
}

#[test]
fn skipping_a_long_chain_does_not_overflow_the_stack() {
    let mut nodes = vec![
        branch("route", &[]).labels(["on", "off"]),
        NodeSpec::new("n0", NodeKind::Task).dep(Dependency::on("route").when(["on"])),
    ];
    let names: Vec<String> = (0..5_000).map(|i| format!("n{i}")).collect();
    for pair in names.windows(2) {
        nodes.push(task(&pair[1], &[&pair[0]]));
    }
    let graph = build(nodes, None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("route", 1, json!("off"))).unwrap();
    assert_eq!(skipped_names(&effects).len(), 5_000);
    assert_eq!(state.status(), RunStatus::Completed);
    assert_eq!(j(state.output().unwrap()), json!(null));
}

#[test]
fn a_join_whose_inputs_are_all_skipped_is_skipped() {
    let graph = build(
        vec![
            branch("route", &[]).labels(["b", "c", "neither"]),
            NodeSpec::new("b", NodeKind::Task).dep(Dependency::on("route").when(["b"])),
            NodeSpec::new("c", NodeKind::Task).dep(Dependency::on("route").when(["c"])),
            task("d", &["b", "c"]),
        ],
        None,
    );
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("route", 1, json!("neither"))).unwrap();
    assert!(effects.ready.is_empty());
    assert_eq!(skipped_names(&effects), ["b", "c", "d"]);
    assert_eq!(state.status(), RunStatus::Completed);
}

#[test]
fn a_branch_returning_several_labels_activates_several_edges() {
    let graph = build(
        vec![
            branch("route", &[]),
            NodeSpec::new("x", NodeKind::Task).dep(Dependency::on("route").when(["x"])),
            NodeSpec::new("y", NodeKind::Task).dep(Dependency::on("route").when(["y"])),
            NodeSpec::new("z", NodeKind::Task).dep(Dependency::on("route").when(["z"])),
            NodeSpec::new("yz", NodeKind::Task).dep(Dependency::on("route").when(["y", "z"])),
        ],
        None,
    );
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let effects = state.apply(&completed("route", 1, json!(["x", "y"]))).unwrap();
    assert_eq!(ready_names(&graph, &effects), ["x", "y", "yz"]);
    assert_eq!(skipped_names(&effects), ["z"]);
}

#[test]
fn branch_output_is_checked_against_the_known_labels() {
    let graph = build(
        vec![
            branch("route", &[]).labels(["a", "b", "spare"]),
            NodeSpec::new("a", NodeKind::Task).dep(Dependency::on("route").when(["a"])),
            NodeSpec::new("b", NodeKind::Task).dep(Dependency::on("route").when(["b"])),
        ],
        None,
    );
    let (state, _) = RunState::start(Arc::clone(&graph), Value::null());
    let route = graph.id("route").unwrap();
    assert_eq!(state.branch_labels(route), ["a", "b", "spare"]);
    assert!(state.check_branch_output(route, &Value::from(json!("a"))).is_ok());
    assert!(state.check_branch_output(route, &Value::from(json!(["b", "spare"]))).is_ok());
    let err = state.check_branch_output(route, &Value::from(json!("c"))).unwrap_err();
    assert_eq!(err.kind, "InvalidBranchOutput");
    assert!(!err.retryable);
    assert!(err.message.contains("'c'"), "{}", err.message);
    let err = state.check_branch_output(route, &Value::from(json!(3))).unwrap_err();
    assert_eq!(err.kind, "InvalidBranchOutput");
    assert!(err.message.contains("route"), "{}", err.message);
}
