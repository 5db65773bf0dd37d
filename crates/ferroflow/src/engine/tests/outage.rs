//! Store outages: work pauses and resumes, nothing is lost.

use super::*;

/// A real [`MemoryStore`] behind a switch that makes it unavailable, as a networked store
/// is while its server restarts: every call fails with [`Error::Unavailable`] while it is
/// down, and the next `lost_replies` commits (and `lost_claims` claims that grant something)
/// land but answer with that error, as a reply lost with the connection would; the next
/// `broken_commits` commits fail outright, as a full disk would.
struct Outage {
    store: crate::store::MemoryStore,
    down: AtomicBool,
    lost_replies: AtomicUsize,
    lost_claims: AtomicUsize,
    broken_commits: AtomicUsize,
}

impl Outage {
    fn new() -> Arc<Outage> {
        Arc::new(Outage {
            store: crate::store::MemoryStore::new(),
            down: AtomicBool::new(false),
            lost_replies: AtomicUsize::new(0),
            lost_claims: AtomicUsize::new(0),
            broken_commits: AtomicUsize::new(0),
        })
    }

    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("the test's store is down".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl JournalStore for Outage {
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        self.check()?;
        self.store.load(run_id).await
    }
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        self.check()?;
        self.store.list_runs(query).await
    }
}

#[async_trait::async_trait]
impl TaskQueue for Outage {
    async fn claim(&self, owner: &str, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Claim>> {
        self.check()?;
        let claims = self.store.claim(owner, max, lease_for, wait).await?;
        if !claims.is_empty()
            && self.lost_claims.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(Error::Unavailable("the reply was lost".into()));
        }
        Ok(claims)
    }
    async fn claim_run(&self, owner: &str, run_id: &str, lease_for: Duration) -> Result<Vec<Lease>> {
        self.check()?;
        self.store.claim_run(owner, run_id, lease_for).await
    }
    async fn renew(&self, owner: &str, lease_for: Duration) -> Result<()> {
        self.check()?;
        self.store.renew(owner, lease_for).await
    }
    async fn ack(&self, owner: &str, task: &QueuedTask) -> Result<()> {
        self.check()?;
        self.store.ack(owner, task).await
    }
    async fn release(&self, owner: &str, tasks: &[QueuedTask], not_before_ms: u64) -> Result<()> {
        self.check()?;
        self.store.release(owner, tasks, not_before_ms).await
    }
    async fn release_run(&self, owner: &str, run_id: &str, not_before_ms: u64) -> Result<()> {
        self.check()?;
        self.store.release_run(owner, run_id, not_before_ms).await
    }
    async fn holder(&self, run_id: &str) -> Result<Option<String>> {
        self.check()?;
        self.store.holder(run_id).await
    }
    async fn holdings(&self, owner: &str) -> Result<crate::store::Holdings> {
        self.check()?;
        self.store.holdings(owner).await
    }
}

#[async_trait::async_trait]
impl DurableStore for Outage {
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        self.check()?;
        self.store.create(record, first, ready, owner).await
    }
    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        self.check()?;
        if self.broken_commits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(Error::Store("the test's store cannot write".into()));
        }
        let held = self.store.commit(step, owner).await?;
        if self.lost_replies.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(Error::Unavailable("the reply was lost".into()));
        }
        Ok(held)
    }
    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>> {
        self.check()?;
        self.store.load_since(run_id, seq).await
    }
    async fn delete_finished(&self, run_id: &str) -> Result<bool> {
        self.check()?;
        self.store.delete_finished(run_id).await
    }
    async fn register_graph(&self, graph: &crate::store::GraphRecord) -> Result<()> {
        self.check()?;
        self.store.register_graph(graph).await
    }
    async fn graphs(&self) -> Result<Vec<crate::store::GraphRecord>> {
        self.check()?;
        self.store.graphs().await
    }
}

fn durable_on(store: &Arc<Outage>, outage_timeout: Duration) -> Engine {
    let store: Arc<dyn DurableStore> = store.clone();
    Engine::new(Handle::current(), EngineConfig { store: Some(store), outage_timeout, ..EngineConfig::default() })
}

/// a -> b -> c, counting the calls of each node.
fn counted_chain(calls: &Arc<Mutex<Vec<String>>>) -> Workflow {
    let body = |name: &'static str| {
        let calls = Arc::clone(calls);
        Body::blocking(move |_| {
            calls.lock().unwrap().push(name.to_owned());
            ok(json!(name))
        })
    };
    workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])],
        vec![("a", body("a")), ("b", body("b")), ("c", body("c"))],
    )
}

fn completions(journal: &[StoredEntry]) -> Vec<String> {
    journal
        .iter()
        .filter_map(|e| match &e.entry {
            JournalEntry::NodeCompleted { node, .. } => Some(node.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_reply_was_lost_is_found_in_the_journal_and_the_run_goes_on() {
    let store = Outage::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = durable_on(&store, Duration::from_secs(5));
    // The steps of a and b land, but their writer hears only that the store is unavailable.
    store.lost_replies.store(2, Ordering::SeqCst);
    let run = engine.start(&counted_chain(&calls), Value::from(json!(0)), id("lost")).unwrap();
    let snapshot = run.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(snapshot.status, RunStatus::Completed);
    assert_eq!(*calls.lock().unwrap(), ["a", "b", "c"], "every node ran once");
    assert_eq!(store.lost_replies.load(Ordering::SeqCst), 0, "both replies were lost");
    let (_, journal) = store.store.load("lost").await.unwrap().unwrap();
    assert_eq!(completions(&journal), ["a", "b", "c"], "each step is in the journal once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_pauses_while_the_store_is_down_and_resumes_when_it_is_back() {
    let store = Outage::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = durable_on(&store, Duration::from_secs(5));
    let wf = counted_chain(&calls);
    store.down.store(true, Ordering::SeqCst);
    // Starting waits for the store, on a thread of its own here.
    let starter = {
        let (engine, wf) = (engine.clone(), wf.clone());
        std::thread::spawn(move || engine.start(&wf, Value::from(json!(0)), id("paused")).map(|run| run.id().clone()))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(calls.lock().unwrap().is_empty(), "nothing runs while the store is down");
    assert!(!starter.is_finished(), "the start waits for the store");
    store.down.store(false, Ordering::SeqCst);
    let run_id = tokio::task::spawn_blocking(move || starter.join().unwrap()).await.unwrap().unwrap();
    let snapshot = engine.wait(&run_id, Some(LIMIT)).await.unwrap();
    assert_eq!(snapshot.status, RunStatus::Completed);
    assert_eq!(*calls.lock().unwrap(), ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_longer_than_the_outage_timeout_fails_the_run_here_and_keeps_it_stored() {
    let store = Outage::new();
    let release = Arc::new(Notify::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = durable_on(&store, Duration::from_millis(200));
    let wf = parking_workflow(&calls, &release);
    let run = engine.start(&wf, Value::from(json!(0)), id("gone")).unwrap();
    eventually("slow to start", || calls.lock().unwrap().iter().any(|c| c == "slow#1")).await;
    store.down.store(true, Ordering::SeqCst);
    release.notify_one();
    let snapshot = run.wait(Some(LIMIT)).await.unwrap();
    assert_eq!(snapshot.status, RunStatus::Failed, "{snapshot:?}");
    store.down.store(false, Ordering::SeqCst);
    let (record, journal) = store.store.load("gone").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Running, "the store keeps the run to continue");
    assert_eq!(completions(&journal), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_releases_what_a_claim_with_a_lost_reply_granted_it() {
    let store = Outage::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let wf = counted_chain(&calls);
    let submitter = {
        let store: Arc<dyn DurableStore> = store.clone();
        Engine::new(Handle::current(), EngineConfig { store: Some(store), execute: false, ..EngineConfig::default() })
    };
    // The worker's first claim is granted its task, but the reply never reaches it: the
    // task stays leased to it, renewed by its heartbeat, until it notices and lets go.
    store.lost_claims.store(1, Ordering::SeqCst);
    let run = submitter.start(&wf, Value::from(json!(0)), id("granted")).unwrap();
    let worker = durable_on(&store, Duration::from_secs(5));
    let stop = CancellationToken::new();
    let working = {
        let (worker, wf, stop) = (worker.clone(), wf.clone(), stop.clone());
        tokio::spawn(async move { worker.work(&[wf], 4, None, stop, Duration::from_secs(1)).await })
    };
    let snapshot = run.wait(Some(LIMIT)).await.unwrap();
    stop.cancel();
    working.await.unwrap().unwrap();
    assert_eq!(store.lost_claims.load(Ordering::SeqCst), 0, "a claim's reply was lost");
    assert_eq!(snapshot.status, RunStatus::Completed);
    assert_eq!(*calls.lock().unwrap(), ["a", "b", "c"], "every node ran once");
    let (_, journal) = store.store.load("granted").await.unwrap().unwrap();
    assert_eq!(journal.iter().filter(|e| matches!(e.entry, JournalEntry::NodeFailed { .. })).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failed_by_its_store_is_handed_back_and_a_worker_continues_it() {
    let store = Outage::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let wf = counted_chain(&calls);
    let first = durable_on(&store, Duration::from_secs(5));
    // a's step cannot be written (nor the next one): the run fails here, and would stay
    // held by `first`, renewed by its heartbeat, with nobody to continue it.
    store.broken_commits.store(2, Ordering::SeqCst);
    let run = first.start(&wf, Value::from(json!(0)), id("broken")).unwrap();
    assert_eq!(run.wait(Some(LIMIT)).await.unwrap().status, RunStatus::Failed);
    eventually("the hold to be handed back", || {
        tokio::task::block_in_place(|| {
            Handle::current().block_on(store.store.holder("broken")).unwrap().as_deref() == Some(crate::store::RELEASED)
        })
    })
    .await;
    // The first engine, working, claims it back and reads it from the store again.
    let stop = CancellationToken::new();
    let working = {
        let (first, wf, stop) = (first.clone(), wf.clone(), stop.clone());
        tokio::spawn(async move { first.work(&[wf], 4, None, stop, Duration::from_secs(1)).await })
    };
    eventually("the run to complete", || first.snapshot("broken").is_ok_and(|s| s.status == RunStatus::Completed))
        .await;
    stop.cancel();
    working.await.unwrap().unwrap();
    let (record, journal) = store.store.load("broken").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert_eq!(completions(&journal), ["a", "b", "c"]);
}

/// a -> slow -> c, where every attempt of `slow` parks until `release` is notified.
fn parking_every_attempt(calls: &Arc<Mutex<Vec<String>>>, release: &Arc<Notify>) -> Workflow {
    let slow = {
        let (calls, release) = (Arc::clone(calls), Arc::clone(release));
        Body::from_async(move |call: NodeCall| {
            calls.lock().unwrap().push(format!("slow#{}", call.attempt));
            let release = Arc::clone(&release);
            async move {
                release.notified().await;
                ok(json!("slow"))
            }
        })
    };
    workflow(
        vec![task("a", &[]), task("slow", &["a"]), task("c", &["slow"])],
        vec![("a", constant(json!("a"))), ("slow", slow), ("c", constant(json!("c")))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failed_by_its_store_and_recovered_here_keeps_the_hold_it_took_again() {
    // The hand-back of a run failed in memory retries while the store is down; the run
    // recovered here as soon as the store is back must not have its new hold handed back by
    // a retry landing after the recovery (its next steps would go to a queue nobody works).
    let store = Outage::new();
    let release = Arc::new(Notify::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let engine = durable_on(&store, Duration::from_secs(2));
    let wf = parking_every_attempt(&calls, &release);
    let run = engine.start(&wf, Value::from(json!(0)), id("again")).unwrap();
    eventually("slow to start", || calls.lock().unwrap().iter().any(|c| c == "slow#1")).await;
    store.down.store(true, Ordering::SeqCst);
    release.notify_one();
    assert_eq!(run.wait(Some(LIMIT)).await.unwrap().status, RunStatus::Failed);
    store.down.store(false, Ordering::SeqCst);

    let again = engine.recover(&wf, "again", None).unwrap();
    eventually("slow to start again", || calls.lock().unwrap().iter().any(|c| c == "slow#2")).await;
    // Longer than the hand-back's pause between tries.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.store.holder("again").await.unwrap().as_deref(), Some(engine.owner()));
    release.notify_one();
    assert_eq!(again.wait(Some(LIMIT)).await.unwrap().status, RunStatus::Completed);
}
