//! Output rules.

use super::*;

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
