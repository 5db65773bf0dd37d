use super::*;

use crate::graph::{Dependency, GraphSpec, NodeSpec};
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn build(nodes: Vec<NodeSpec>, output: Option<&str>) -> Arc<Graph> {
    Arc::new(
        GraphSpec { name: "g".into(), nodes, output: output.map(str::to_owned) }.build().expect("test graph builds"),
    )
}

fn task(name: &str, deps: &[&str]) -> NodeSpec {
    deps.iter().fold(NodeSpec::new(name, NodeKind::Task), |n, d| n.dep(Dependency::on(*d)))
}

fn branch(name: &str, deps: &[&str]) -> NodeSpec {
    NodeSpec { kind: NodeKind::Branch, ..task(name, deps) }
}

fn map_over(name: &str, over: &str) -> NodeSpec {
    NodeSpec::new(name, NodeKind::Map).dep(Dependency::on(over)).over(over)
}

fn j(value: &Value) -> serde_json::Value {
    value.to_json().expect("test values are JSON")
}

fn completed(node: &str, attempt: u32, output: serde_json::Value) -> JournalEntry {
    JournalEntry::NodeCompleted { node: node.into(), item: None, attempt, output: Value::from(output) }
}

fn item_completed(node: &str, item: u32, attempt: u32, output: serde_json::Value) -> JournalEntry {
    JournalEntry::NodeCompleted { node: node.into(), item: Some(item), attempt, output: Value::from(output) }
}

fn failed(node: &str, item: Option<u32>, attempt: u32, retry_in_ms: Option<u64>) -> JournalEntry {
    JournalEntry::NodeFailed {
        node: node.into(),
        item,
        attempt,
        error: NodeError::new("ValueError", format!("{node} broke")),
        retry_in_ms,
    }
}

fn ready_names(graph: &Graph, effects: &Effects) -> Vec<String> {
    let mut names: Vec<String> = effects.ready.iter().map(|t| graph.node(t.node).name.clone()).collect();
    names.sort();
    names
}

fn skipped_names(effects: &Effects) -> Vec<String> {
    let mut names: Vec<String> = effects
        .derived
        .iter()
        .filter_map(|e| match e {
            JournalEntry::NodeSkipped { node } => Some(node.to_string()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// The `RunFinished` entry among the derived ones, as (status, output JSON, failure).
fn finished(effects: &Effects) -> Option<(RunStatus, Option<serde_json::Value>, Option<RunFailure>)> {
    effects.derived.iter().find_map(|e| match e {
        JournalEntry::RunFinished { status, output, failure } => {
            Some((*status, output.as_ref().map(j), failure.clone()))
        }
        _ => None,
    })
}

fn is_skipped(state: &RunState, name: &str) -> bool {
    matches!(state.node_state(state.graph().id(name).unwrap()), NodeState::Skipped)
}

fn completed_output(state: &RunState, name: &str) -> Option<serde_json::Value> {
    match state.node_state(state.graph().id(name).unwrap()) {
        NodeState::Completed { output } => Some(j(output)),
        _ => None,
    }
}

/// A run driven by hand that records its journal the way the engine does: each applied
/// entry followed by the entries it implies.
struct Harness {
    state: RunState,
    journal: Vec<JournalEntry>,
}

impl Harness {
    fn start(graph: Arc<Graph>, input: serde_json::Value) -> (Harness, Effects) {
        let input = Value::from(input);
        let started = JournalEntry::RunStarted {
            graph: graph.name().into(),
            version: graph.version().into(),
            input: input.clone(),
        };
        let (state, effects) = RunState::start(graph, input);
        let mut journal = vec![started];
        journal.extend(effects.derived.iter().cloned());
        (Harness { state, journal }, effects)
    }

    fn apply(&mut self, entry: JournalEntry) -> Effects {
        let effects = self.state.apply(&entry).unwrap_or_else(|e| panic!("{entry:?} rejected: {e:?}"));
        self.journal.push(entry);
        self.journal.extend(effects.derived.iter().cloned());
        effects
    }
}

// ---------------------------------------------------------------------------------------
// Start and joins
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Branches
// ---------------------------------------------------------------------------------------

fn branch_graph() -> Arc<Graph> {
    build(
        vec![
            branch("route", &[]).labels(["yes", "no"]),
            NodeSpec::new("yes", NodeKind::Task).dep(Dependency::on("route").when(["yes"])),
            NodeSpec::new("no", NodeKind::Task).dep(Dependency::on("route").when(["no"])),
            task("no2", &["no"]),
            task("no3", &["no2"]),
        ],
        None,
    )
}

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

// ---------------------------------------------------------------------------------------
// Maps
// ---------------------------------------------------------------------------------------

fn map_graph() -> Arc<Graph> {
    build(vec![task("src", &[]), map_over("m", "src"), task("after", &["m"])], None)
}

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

// ---------------------------------------------------------------------------------------
// Retries and failures
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Stale and inconsistent entries
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Human nodes
// ---------------------------------------------------------------------------------------

fn human_graph() -> Arc<Graph> {
    build(vec![NodeSpec::new("ask", NodeKind::Human), task("slow", &[]), task("after", &["ask"])], Some("after"))
}

fn interrupted(node: &str, payload: serde_json::Value) -> JournalEntry {
    JournalEntry::Interrupted { node: node.into(), attempt: 1, payload: Value::from(payload) }
}

fn resumed(node: &str, value: serde_json::Value) -> JournalEntry {
    JournalEntry::Resumed { node: node.into(), value: Value::from(value) }
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

// ---------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------

/// A graph with every kind of step: a map with a retried element, a branch, a human node
/// and a retried node.
fn mixed_graph() -> Arc<Graph> {
    build(
        vec![
            task("src", &[]),
            map_over("m", "src"),
            branch("route", &["m"]),
            NodeSpec::new("left", NodeKind::Task).dep(Dependency::on("route").when(["left"])),
            NodeSpec::new("right", NodeKind::Task).dep(Dependency::on("route").when(["right"])),
            NodeSpec::new("ask", NodeKind::Human).dep(Dependency::on("left")),
            task("end", &["ask", "right"]),
        ],
        None,
    )
}

fn assert_same(replayed: &RunState, live: &RunState) {
    assert_eq!(replayed.status(), live.status());
    assert_eq!(replayed.output().map(j), live.output().map(j), "outputs differ");
    assert_eq!(replayed.failure(), live.failure());
    assert_eq!(replayed.outstanding(), live.outstanding());
    let waiting = |s: &RunState| -> Vec<_> { s.waiting().map(|(id, p)| (id, j(p))).collect() };
    assert_eq!(waiting(replayed), waiting(live));
}

#[test]
fn replay_reproduces_the_live_state_at_every_point() {
    let graph = mixed_graph();
    let m = graph.id("m").unwrap();
    let (mut run, _) = Harness::start(Arc::clone(&graph), json!({"in": 1}));
    let mut checkpoints = Vec::new();
    let mut check = |run: &Harness| {
        let replayed = RunState::replay(Arc::clone(&graph), &run.journal).unwrap();
        assert_same(&replayed, &run.state);
        checkpoints.push(replayed.status());
    };
    check(&run);
    run.apply(completed("src", 1, json!([1, 2, 3])));
    check(&run);
    run.apply(item_completed("m", 2, 1, json!(30)));
    run.apply(failed("m", Some(0), 1, Some(100)));
    check(&run);
    // The replayed state lists exactly the unfinished work, with the retried attempt.
    let replayed = RunState::replay(Arc::clone(&graph), &run.journal).unwrap();
    let mut outstanding = replayed.outstanding();
    outstanding.sort_by_key(|t| t.item);
    assert_eq!(
        outstanding,
        [
            Task { node: m, item: Some(0), attempt: 2, delay: None },
            Task { node: m, item: Some(1), attempt: 1, delay: None },
        ]
    );
    assert_eq!(j(replayed.map_item(m, 0).unwrap()), json!(1));
    run.apply(item_completed("m", 0, 2, json!(10)));
    run.apply(item_completed("m", 1, 1, json!(20)));
    check(&run);
    run.apply(completed("route", 1, json!("left")));
    check(&run);
    run.apply(failed("left", None, 1, Some(1)));
    check(&run);
    run.apply(completed("left", 2, json!("L")));
    run.apply(interrupted("ask", json!({"show": "L"})));
    check(&run);
    assert_eq!(run.state.status(), RunStatus::Waiting);
    run.apply(resumed("ask", json!("answer")));
    check(&run);
    run.apply(completed("end", 1, json!("the end")));
    check(&run);

    assert_eq!(run.state.status(), RunStatus::Completed);
    assert_eq!(j(run.state.output().unwrap()), json!("the end"));
    assert!(checkpoints.contains(&RunStatus::Waiting));
    assert_eq!(checkpoints.last(), Some(&RunStatus::Completed));

    // The replayed state has the same node results.
    let replayed = RunState::replay(Arc::clone(&graph), &run.journal).unwrap();
    assert_eq!(completed_output(&replayed, "m"), Some(json!([10, 20, 30])));
    assert_eq!(completed_output(&replayed, "ask"), Some(json!("answer")));
    assert!(is_skipped(&replayed, "right"));
    assert_eq!(j(replayed.input()), json!({"in": 1}));
}

#[test]
fn replay_of_a_failed_run_reproduces_the_failure() {
    let graph = map_graph();
    let (mut run, _) = Harness::start(Arc::clone(&graph), json!(null));
    run.apply(completed("src", 1, json!("not a list")));
    assert_eq!(run.state.status(), RunStatus::Failed);
    let replayed = RunState::replay(Arc::clone(&graph), &run.journal).unwrap();
    assert_same(&replayed, &run.state);
    assert_eq!(&*replayed.failure().unwrap().node, "m");
}

#[test]
fn replay_drops_stale_entries_and_rejects_bad_journals() {
    let graph = build(vec![task("a", &[]), task("b", &["a"])], None);
    let (mut run, _) = Harness::start(Arc::clone(&graph), json!(null));
    run.apply(completed("a", 1, json!(1)));
    // A duplicate delivery recorded by a buggy or racing writer.
    run.journal.push(completed("a", 1, json!("dup")));
    let replayed = RunState::replay(Arc::clone(&graph), &run.journal).unwrap();
    assert_eq!(completed_output(&replayed, "a"), Some(json!(1)));
    assert_eq!(replayed.outstanding().len(), 1);

    assert!(RunState::replay(Arc::clone(&graph), &[]).is_err());
    assert!(RunState::replay(Arc::clone(&graph), &[completed("a", 1, json!(1))]).is_err());
    let mut bad = run.journal.clone();
    bad.push(completed("zzz", 1, json!(1)));
    let err = RunState::replay(Arc::clone(&graph), &bad).unwrap_err();
    assert!(err.contains("zzz"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Output rules
// ---------------------------------------------------------------------------------------

#[test]
fn the_explicit_output_node_wins_over_sinks() {
    let graph = build(vec![task("a", &[]), task("b", &["a"])], Some("a"));
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&completed("a", 1, json!("from a"))).unwrap();
    let effects = state.apply(&completed("b", 1, json!("from b"))).unwrap();
    assert_eq!(finished(&effects), Some((RunStatus::Completed, Some(json!("from a")), None)));
    assert_eq!(j(state.output().unwrap()), json!("from a"));
}

#[test]
fn a_single_sink_s_output_is_the_run_output() {
    let graph = build(vec![task("a", &[]), task("b", &["a"]), task("c", &["a", "b"])], None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&completed("a", 1, json!(1))).unwrap();
    state.apply(&completed("b", 1, json!(2))).unwrap();
    state.apply(&completed("c", 1, json!([3]))).unwrap();
    assert_eq!(j(state.output().unwrap()), json!([3]));
}

#[test]
fn several_sinks_give_a_record_keyed_by_sink_name() {
    let graph = build(vec![task("a", &[]), task("x", &["a"]), task("y", &["a"])], None);
    let (mut state, _) = RunState::start(Arc::clone(&graph), Value::null());
    state.apply(&completed("a", 1, json!(0))).unwrap();
    state.apply(&completed("y", 1, json!("Y"))).unwrap();
    state.apply(&completed("x", 1, json!("X"))).unwrap();
    let output = state.output().expect("completed");
    match output {
        Value::Record(fields) => {
            let names: Vec<&str> = fields.iter().map(|(k, _)| &**k).collect();
            assert_eq!(names, ["x", "y"]);
        }
        other => panic!("expected a record, got {other:?}"),
    }
    assert_eq!(j(output), json!({"x": "X", "y": "Y"}));
}
