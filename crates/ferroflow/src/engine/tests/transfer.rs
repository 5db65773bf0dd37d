//! Moving runs between engines (`Engine::export_run`, `Engine::import_run`).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_exported_from_one_engine_is_answered_in_another() {
    let wf = human_workflow();
    let (from, to) = (engine(), engine());
    let run = from.start(&wf, Value::from(json!("proceed?")), id("moved")).unwrap();
    assert_eq!(run.wait(Some(LIMIT)).await.unwrap().status, RunStatus::Waiting);
    let exported = from.export_run("moved").unwrap();
    assert_eq!(exported.format, crate::engine::EXPORT_FORMAT);
    // Through its JSON, as the command line moves it.
    let text = serde_json::to_string(&exported).unwrap();
    let moved = to.import_run(&wf, serde_json::from_str(&text).unwrap(), None).unwrap();
    assert_eq!(moved.snapshot().status, RunStatus::Waiting);
    to.resume("moved", None, Value::from(json!("yes")), None).unwrap();
    let done = to.wait("moved", Some(LIMIT)).await.unwrap();
    assert_eq!(j(done.output.as_ref().unwrap()), json!("yes!"));
    // The same journal, then the answer and what followed; the source is left as it was.
    let (before, after) = (entries(&from, "moved"), entries(&to, "moved"));
    assert_eq!(after.len(), before.len() + 3, "{after:?}");
    assert_eq!(from.snapshot("moved").unwrap().status, RunStatus::Waiting);
    // Importing it again is refused, and so is another format.
    match to.import_run(&wf, exported.clone(), None) {
        Err(Error::InvalidInput { reason, .. }) => {
            assert!(reason.contains("exists in this context already"), "{reason}")
        }
        other => panic!("expected InvalidInput, got {:?}", other.map(|r| r.id().clone())),
    }
    let other = crate::engine::ExportedRun { format: "ferroflow.run/0".into(), run_id: "other".into(), ..exported };
    assert!(matches!(to.import_run(&wf, other, None), Err(Error::InvalidInput { .. })));
    assert!(matches!(to.snapshot("other"), Err(Error::RunNotFound { .. })));
}
