//! Replay.

use super::*;

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
