//! Forking a run at a node (`Engine::fork`).

use super::*;
use crate::engine::ForkOptions;

/// `prep` → branch `classify` → `billing` | `tech` → `reply`; every body counts its calls.
fn support(counts: &Arc<Mutex<HashMap<String, usize>>>) -> Workflow {
    let body = |name: &'static str, f: fn(&NodeCall) -> serde_json::Value| {
        let counts = Arc::clone(counts);
        Body::blocking(move |call: NodeCall| {
            *counts.lock().unwrap().entry(name.to_owned()).or_default() += 1;
            ok(f(&call))
        })
    };
    workflow(
        vec![
            task("prep", &[]),
            NodeSpec::new("classify", NodeKind::Branch).dep(Dependency::on("prep")),
            NodeSpec::new("billing", NodeKind::Task).dep(Dependency::on("classify").when(["billing"])),
            NodeSpec::new("tech", NodeKind::Task).dep(Dependency::on("classify").when(["tech"])),
            task("reply", &["billing", "tech"]),
        ],
        vec![
            ("prep", body("prep", |call| json!(format!("ticket {}", j(&call.input))))),
            ("classify", body("classify", |_| json!("tech"))),
            ("billing", body("billing", |_| json!("refund"))),
            ("tech", body("tech", |_| json!("reboot"))),
            ("reply", body("reply", |call| serde_json::Value::Array(call.deps.iter().map(j).collect()))),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_with_another_output_for_a_branch_runs_only_what_depends_on_it() {
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let wf = support(&counts);
    let engine = engine();
    let parent = engine.start(&wf, Value::from(json!(7)), id("parent")).unwrap().wait(Some(LIMIT)).await.unwrap();
    assert_eq!(j(parent.output.as_ref().unwrap()), json!([null, "reboot"]));
    let parent_journal = entries(&engine, "parent").len();

    // What if the classifier had said billing?
    let options = ForkOptions {
        run_id: Some("what-if".into()),
        output: Some(Value::from(json!("billing"))),
        by: "tester".into(),
        ..ForkOptions::default()
    };
    let fork = engine.fork(&wf, "parent", "classify", options).unwrap().wait(Some(LIMIT)).await.unwrap();
    assert_eq!(fork.status, RunStatus::Completed, "{:?}", fork.failure);
    assert_eq!(j(fork.output.as_ref().unwrap()), json!(["refund", null]));
    let counts_now = counts.lock().unwrap().clone();
    assert_eq!(counts_now.get("prep"), Some(&1), "prep kept its output");
    assert_eq!(counts_now.get("classify"), Some(&1), "classify took the given output");
    assert_eq!(counts_now.get("billing"), Some(&1));
    assert_eq!(counts_now.get("tech"), Some(&1), "only the parent ran tech");
    assert_eq!(counts_now.get("reply"), Some(&2));
    let forked = entries(&engine, "what-if");
    assert!(
        matches!(&forked[1], JournalEntry::RunForked { parent, at, by } if &**parent == "parent" && &**at == "classify" && &**by == "tester")
    );
    assert_eq!(report(&engine.nodes("what-if").unwrap(), "tech").status, "skipped");
    // The parent is left as it was.
    assert_eq!(entries(&engine, "parent").len(), parent_journal);
    assert_eq!(j(engine.snapshot("parent").unwrap().output.as_ref().unwrap()), json!([null, "reboot"]));

    // Without an output, the node itself runs again; with another input, what it needs keeps
    // the parent's outputs all the same.
    let options = ForkOptions { input: Some(Value::from(json!(8))), ..ForkOptions::default() };
    let again = engine.fork(&wf, "parent", "classify", options).unwrap().wait(Some(LIMIT)).await.unwrap();
    assert_eq!(j(again.output.as_ref().unwrap()), json!([null, "reboot"]));
    assert_eq!(counts.lock().unwrap().get("classify"), Some(&2));
    assert_eq!(counts.lock().unwrap().get("prep"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_that_cannot_be_made_is_refused_naming_why() {
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let wf = support(&counts);
    let engine = engine();
    engine.start(&wf, Value::from(json!(1)), id("p")).unwrap().wait(Some(LIMIT)).await.unwrap();
    let refused = |at: &str, options: ForkOptions| match engine.fork(&wf, "p", at, options) {
        Err(Error::InvalidInput { reason, .. }) => reason,
        other => panic!("expected InvalidInput, got {:?}", other.map(|r| r.id().clone())),
    };
    assert!(refused("nosuch", ForkOptions::default()).contains("no node 'nosuch'"));
    let taken = ForkOptions { run_id: Some("p".into()), ..ForkOptions::default() };
    assert!(refused("prep", taken).contains("exists in this context already"));
    assert!(matches!(engine.fork(&wf, "nobody", "prep", ForkOptions::default()), Err(Error::RunNotFound { .. })));
}
