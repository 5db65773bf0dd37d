//! Deleting old finished runs (`Engine::prune`).

use super::*;
use crate::engine::PruneQuery;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_old_finished_runs_and_never_a_running_or_waiting_one() {
    let store = Arc::new(crate::store::MemoryStore::new());
    for engine in [self::engine(), durable_with_lease(&store, Duration::from_secs(10))] {
        let (done, failing, waiting) = (
            workflow(vec![task("a", &[])], vec![("a", constant(json!(1)))]),
            workflow_named("f", vec![task("a", &[])], vec![("a", Body::blocking(|_| Err(NodeError::new("E", "no"))))]),
            human_workflow(),
        );
        engine.start(&done, Value::null(), id("done")).unwrap().wait(Some(LIMIT)).await.unwrap();
        engine.start(&failing, Value::null(), id("failed")).unwrap().wait(Some(LIMIT)).await.unwrap();
        engine.start(&waiting, Value::null(), id("waiting")).unwrap().wait(Some(LIMIT)).await.unwrap();
        let recent = PruneQuery { older_than: Duration::from_secs(3600), ..PruneQuery::default() };
        assert!(engine.prune(&recent).unwrap().runs.is_empty(), "nothing is an hour old");
        let failed_only = PruneQuery { status: Some(RunStatus::Failed), dry_run: true, ..PruneQuery::default() };
        assert_eq!(engine.prune(&failed_only).unwrap().runs, ["failed"]);
        assert!(engine.snapshot("failed").is_ok(), "a dry run deletes nothing");
        let pruned = engine.prune(&PruneQuery::default()).unwrap();
        let mut deleted = pruned.runs.clone();
        deleted.sort();
        assert_eq!(deleted, ["done", "failed"]);
        assert!(matches!(engine.snapshot("done"), Err(Error::RunNotFound { .. })));
        assert!(matches!(engine.load("failed"), Err(Error::RunNotFound { .. })));
        assert_eq!(engine.snapshot("waiting").unwrap().status, RunStatus::Waiting, "a waiting run stays");
        let running = PruneQuery { status: Some(RunStatus::Waiting), ..PruneQuery::default() };
        assert!(matches!(engine.prune(&running), Err(Error::InvalidInput { .. })));
    }
}
