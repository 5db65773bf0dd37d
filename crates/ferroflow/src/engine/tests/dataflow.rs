//! Dataflow: values flow along the graph's edges, maps and joins.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_passes_each_output_to_the_next_node() {
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])],
        vec![
            (
                "a",
                Body::blocking(|call: NodeCall| {
                    assert!(call.deps.is_empty());
                    let x = j(&call.input)["x"].as_i64().unwrap();
                    ok(json!(x + 1))
                }),
            ),
            (
                "b",
                Body::from_async(|call: NodeCall| async move {
                    let a = j(&call.deps[0]).as_i64().unwrap();
                    ok(json!(a * 10))
                }),
            ),
            (
                "c",
                Body::blocking(|call: NodeCall| {
                    assert_eq!(j(&call.input), json!({"x": 1}));
                    let b = j(&call.deps[0]).as_i64().unwrap();
                    ok(json!({"result": b + 5}))
                }),
            ),
        ],
    );
    let engine = engine();
    let snap = finish(&engine, &wf, json!({"x": 1})).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!({"result": 25}));
    assert!(snap.failure.is_none());
    let reports = engine.nodes(&snap.run_id).unwrap();
    for name in ["a", "b", "c"] {
        let r = report(&reports, name);
        assert_eq!(r.status, "completed", "{name}");
        assert_eq!(r.attempts, 1, "{name}");
    }
    assert_eq!(j(report(&reports, "b").output.as_ref().unwrap()), json!(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_receives_its_deps_in_dependency_order() {
    // c finishes before b, but d declares b first.
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), task("d", &["b", "c"])],
        vec![
            ("a", constant(json!(1))),
            (
                "b",
                Body::from_async(|call: NodeCall| async move {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    ok(json!({"b": j(&call.deps[0])}))
                }),
            ),
            ("c", Body::from_async(|call: NodeCall| async move { ok(json!({"c": j(&call.deps[0])})) })),
            ("d", Body::blocking(|call: NodeCall| ok(serde_json::Value::Array(call.deps.iter().map(j).collect())))),
        ],
    );
    let engine = engine();
    let snap = finish(&engine, &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!([{"b": 1}, {"c": 1}]));
    // c was recorded before b, so the order really came from the declaration.
    let order: Vec<String> = entries(&engine, &snap.run_id)
        .iter()
        .filter_map(|e| match e {
            JournalEntry::NodeCompleted { node, .. } => Some(node.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["a", "c", "b", "d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sinks_give_a_record_output() {
    let wf = workflow(
        vec![task("a", &[]), task("x", &["a"]), task("y", &["a"])],
        vec![("a", constant(json!(0))), ("x", constant(json!("X"))), ("y", constant(json!("Y")))],
    );
    let snap = finish(&engine(), &wf, json!(null)).await;
    assert_eq!(j(snap.output.as_ref().unwrap()), json!({"x": "X", "y": "Y"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_runs_only_the_chosen_successor() {
    let left = Arc::new(AtomicUsize::new(0));
    let right = Arc::new(AtomicUsize::new(0));
    let wf = workflow(
        vec![
            NodeSpec::new("route", NodeKind::Branch),
            NodeSpec::new("left", NodeKind::Task).dep(Dependency::on("route").when(["left"])),
            NodeSpec::new("right", NodeKind::Task).dep(Dependency::on("route").when(["right"])),
            task("join", &["left", "right"]),
        ],
        vec![
            ("route", Body::blocking(|call: NodeCall| ok(json!(j(&call.input)["go"])))),
            ("left", counted(&left, json!("L"))),
            ("right", counted(&right, json!("R"))),
            ("join", Body::blocking(|call: NodeCall| ok(serde_json::Value::Array(call.deps.iter().map(j).collect())))),
        ],
    );
    let engine = engine();
    let snap = finish(&engine, &wf, json!({"go": "right"})).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!([null, "R"]));
    assert_eq!(left.load(Ordering::SeqCst), 0);
    assert_eq!(right.load(Ordering::SeqCst), 1);
    let reports = engine.nodes(&snap.run_id).unwrap();
    assert_eq!(report(&reports, "left").status, "skipped");

    // A label no edge knows fails the run, permanently.
    let snap = finish(&engine, &wf, json!({"go": "up"})).await;
    assert_eq!(snap.status, RunStatus::Failed);
    let failure = snap.failure.unwrap();
    assert_eq!(&*failure.node, "route");
    assert_eq!(failure.error.kind, "InvalidBranchOutput");
    assert_eq!(right.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_runs_each_item_and_keeps_input_order() {
    let wf = workflow(
        vec![task("src", &[]), NodeSpec::new("m", NodeKind::Map).dep(Dependency::on("src")).over("src")],
        vec![
            ("src", constant(json!([30, 10, 20, 0]))),
            (
                "m",
                Body::from_async(|call: NodeCall| async move {
                    let (i, item) = call.item.clone().expect("map calls carry an item");
                    let ms = j(&item).as_u64().unwrap();
                    // Later items finish first.
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    assert_eq!(call.idempotency_base(), format!("{}/m/{i}", call.run_id));
                    ok(json!({"i": i, "ms": ms}))
                }),
            ),
        ],
    );
    let snap = finish(&engine(), &wf, json!(null)).await;
    assert_eq!(snap.status, RunStatus::Completed, "{:?}", snap.failure);
    assert_eq!(
        j(snap.output.as_ref().unwrap()),
        json!([
            {"i": 0, "ms": 30},
            {"i": 1, "ms": 10},
            {"i": 2, "ms": 20},
            {"i": 3, "ms": 0}
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_receive_the_attachment_given_at_start() {
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"])],
        vec![
            (
                "a",
                Body::blocking(|call: NodeCall| {
                    let tag = call.attachment.as_ref().and_then(|a| a.downcast_ref::<String>()).cloned();
                    ok(json!(tag))
                }),
            ),
            (
                "b",
                Body::from_async(|call: NodeCall| async move {
                    let tag = call.attachment.as_ref().and_then(|a| a.downcast_ref::<String>()).cloned();
                    ok(json!([j(&call.deps[0]), tag]))
                }),
            ),
        ],
    );
    let engine = engine();
    let attachment: Attachment = Arc::new("loop-1".to_owned());
    let run = engine.start(&wf, Value::null(), StartOptions { run_id: None, attachment: Some(attachment) }).unwrap();
    let snap = run.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(j(snap.output.as_ref().unwrap()), json!(["loop-1", "loop-1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_drive_runs_a_blocking_chain_on_the_calling_thread() {
    let threads: Arc<Mutex<Vec<std::thread::ThreadId>>> = Arc::default();
    let body = |threads: &Arc<Mutex<Vec<std::thread::ThreadId>>>| {
        let threads = Arc::clone(threads);
        Body::blocking(move |call: NodeCall| {
            threads.lock().unwrap().push(std::thread::current().id());
            ok(json!(call.deps.first().map(j).and_then(|v| v.as_i64()).unwrap_or(0) + 1))
        })
    };
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])],
        vec![("a", body(&threads)), ("b", body(&threads)), ("c", body(&threads))],
    );
    let engine = engine();
    let driver = engine.clone();
    let (caller, run) = tokio::task::spawn_blocking(move || {
        let run = driver.start_and_drive(&wf, Value::null(), StartOptions::default()).unwrap();
        (std::thread::current().id(), run)
    })
    .await
    .unwrap();
    // The chain is done by the time the call returns.
    let snap = run.snapshot();
    assert_eq!(snap.status, RunStatus::Completed);
    assert_eq!(j(snap.output.as_ref().unwrap()), json!(3));
    assert_eq!(*threads.lock().unwrap(), [caller, caller, caller]);
}
