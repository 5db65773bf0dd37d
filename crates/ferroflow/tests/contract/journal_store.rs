//! The JournalStore contract: `journal_store_contract!(make)` expands to the tests every
//! implementation must pass, where `make` evaluates to `(store, guard)`. Journals are
//! written the only way they are, through a [`DurableStore`]: `create` and `commit`.

pub use std::sync::Arc;

pub use ferroflow::{
    Created, DurableStore, Error, JournalEntry, JournalStore, RunPage, RunQuery, RunRecord, RunStatus, Step,
    StoredEntry, Value,
};
pub use serde_json::json;

pub fn record(run_id: &str, graph: &str, created_ms: u64) -> RunRecord {
    RunRecord {
        run_id: run_id.into(),
        graph: graph.into(),
        version: "v1".into(),
        status: RunStatus::Running,
        created_ms,
        updated_ms: created_ms,
    }
}

pub fn started(at_ms: u64) -> StoredEntry {
    StoredEntry {
        seq: 0,
        at_ms,
        entry: JournalEntry::RunStarted {
            graph: "g".into(),
            version: "v1".into(),
            input: Value::from(json!({"in": 1})),
        },
    }
}

pub fn completed(seq: u64, at_ms: u64, node: &str) -> StoredEntry {
    StoredEntry {
        seq,
        at_ms,
        entry: JournalEntry::NodeCompleted {
            node: node.into(),
            item: None,
            attempt: 1,
            output: Value::from(json!(node)),
        },
    }
}

pub fn finished(seq: u64, at_ms: u64, status: RunStatus) -> StoredEntry {
    StoredEntry { seq, at_ms, entry: JournalEntry::RunFinished { status, output: None, failure: None } }
}

/// (seq, at_ms, node or entry type) of each entry, for comparisons.
pub fn summary(journal: &[StoredEntry]) -> Vec<(u64, u64, String)> {
    journal
        .iter()
        .map(|s| {
            let what = match &s.entry {
                JournalEntry::RunStarted { .. } => "RunStarted".to_owned(),
                JournalEntry::RunFinished { status, .. } => format!("RunFinished:{status}"),
                other => other.node().map(|n| n.to_string()).unwrap_or_default(),
            };
            (s.seq, s.at_ms, what)
        })
        .collect()
}

/// Creates run `run_id` (status running) with its `RunStarted` entry, and no tasks.
pub async fn new_run(store: &impl DurableStore, run_id: &str, graph: &str, created_ms: u64) {
    let created = store.create(&record(run_id, graph, created_ms), &[started(created_ms)], &[], None).await.unwrap();
    assert!(matches!(created, Created::New), "{run_id} existed already");
}

/// Commits `entries` as one step of `run_id` at `expected_seq` that leaves the run in
/// `status`, with no tasks and no owner: a journal write and nothing else.
pub async fn write(
    store: &impl DurableStore,
    run_id: &str,
    expected_seq: u64,
    entries: &[StoredEntry],
    status: RunStatus,
) -> ferroflow::Result<()> {
    let step = Step { run_id, expected_seq, entries, status, ready: &[], done: &[] };
    store.commit(&step, None).await.map(drop)
}

/// A query for `limit` runs of `graph` in `status`, from the start.
pub fn query(graph: Option<&str>, status: Option<RunStatus>, limit: usize) -> RunQuery {
    RunQuery { graph: graph.map(str::to_owned), status, limit, after: None }
}

/// The ids of the runs `query` lists, in one page (which must be the last).
pub async fn listed(store: &impl JournalStore, query: &RunQuery) -> Vec<String> {
    let page = store.list_runs(query).await.unwrap();
    assert_eq!(page.next, None, "{query:?}: more runs follow");
    page.runs.into_iter().map(|r| r.run_id).collect()
}

/// Pages through `query` (from its `after`), checking each page: full but for the last,
/// `next` where the page's last run is and `None` only on the last page. Returns the pages.
pub async fn pages(store: &impl JournalStore, query: &RunQuery) -> Vec<RunPage> {
    let mut pages: Vec<RunPage> = Vec::new();
    let mut query = query.clone();
    loop {
        let page = store.list_runs(&query).await.unwrap();
        assert!(page.runs.len() <= query.limit, "{query:?}: {} runs", page.runs.len());
        let next = page.next;
        pages.push(page);
        let Some(next) = next else { break };
        let page = pages.last().unwrap();
        assert_eq!(page.runs.len(), query.limit, "{query:?}: a page that is not the last is full");
        assert_eq!(next.created_ms, page.runs.last().unwrap().created_ms, "{query:?}: next is at the last run");
        assert_ne!(query.after, Some(next), "{query:?}: the cursor did not move");
        assert!(pages.len() <= 1000, "{query:?}: too many pages");
        query.after = Some(next);
    }
    pages
}

/// The ids of the runs of `pages`, in order.
pub fn ids_of(pages: &[RunPage]) -> Vec<String> {
    pages.iter().flat_map(|page| page.runs.iter().map(|r| r.run_id.clone())).collect()
}

macro_rules! journal_store_contract {
    ($make:expr) => {
        #[::tokio::test]
        async fn create_is_idempotent_and_returns_the_existing_journal() {
            let (store, _guard) = $make;
            new_run(&store, "r1", "g", 100).await;
            write(&store, "r1", 1, &[completed(1, 110, "a")], RunStatus::Running).await.unwrap();

            // A second start, even with another record, learns of the first and changes nothing.
            let mut other = record("r1", "other-graph", 999);
            other.status = RunStatus::Pending;
            match store.create(&other, &[started(999)], &[], None).await.unwrap() {
                Created::Existing { record, journal } => {
                    assert_eq!(record.graph, "g");
                    assert_eq!(record.created_ms, 100);
                    assert_eq!(record.status, RunStatus::Running);
                    assert_eq!(summary(&journal), [(0, 100, "RunStarted".to_owned()), (1, 110, "a".to_owned())]);
                }
                Created::New => panic!("the run was created twice"),
            }
            let (record, journal) = store.load("r1").await.unwrap().unwrap();
            assert_eq!(record.graph, "g");
            assert_eq!(journal.len(), 2);
        }

        #[::tokio::test]
        async fn a_step_with_the_wrong_expected_seq_fails_and_writes_nothing() {
            let (store, _guard) = $make;
            new_run(&store, "r1", "g", 100).await;
            write(&store, "r1", 1, &[completed(1, 110, "a"), completed(2, 111, "b")], RunStatus::Running).await.unwrap();

            for expected in [0, 1, 2, 4, 100] {
                let entries = [completed(expected, 120, "x"), completed(expected + 1, 121, "y")];
                let err = write(&store, "r1", expected, &entries, RunStatus::Running).await.unwrap_err();
                assert!(matches!(err, Error::Conflict { .. }), "{expected}: {err:?}");
                assert!(err.to_string().contains("r1"), "{err}");
            }
            let (_, journal) = store.load("r1").await.unwrap().unwrap();
            assert_eq!(
                summary(&journal),
                [(0, 100, "RunStarted".to_owned()), (1, 110, "a".to_owned()), (2, 111, "b".to_owned())]
            );
            // The right sequence number still works afterwards.
            write(&store, "r1", 3, &[completed(3, 130, "c")], RunStatus::Running).await.unwrap();
            assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 4);
        }

        #[::tokio::test]
        async fn a_batch_of_steps_keeps_each_run_s_order_and_gives_each_step_its_own_outcome() {
            let (store, _guard) = $make;
            new_run(&store, "r1", "g", 100).await;
            new_run(&store, "r2", "g", 100).await;
            let (one, two) = ([completed(1, 110, "a")], [completed(2, 120, "b")]);
            let step = |run_id, expected_seq, entries| Step {
                run_id,
                expected_seq,
                entries,
                status: RunStatus::Running,
                ready: &[],
                done: &[],
            };
            // r1's two steps in order, r2's at a wrong position, and a run that does not exist.
            let steps = [step("r1", 1, &one[..]), step("r2", 5, &one[..]), step("r1", 2, &two[..]), step("ghost", 1, &one[..])];
            let outcomes = store.commit_batch(&steps, None).await.unwrap();
            assert_eq!(outcomes.len(), 4);
            assert!(outcomes[0].is_ok(), "{outcomes:?}");
            assert!(matches!(outcomes[1], Err(Error::Conflict { expected: 5, found: 1, .. })), "{outcomes:?}");
            assert!(outcomes[2].is_ok(), "{outcomes:?}");
            assert!(matches!(&outcomes[3], Err(Error::RunNotFound { run_id }) if run_id == "ghost"), "{outcomes:?}");
            assert_eq!(summary(&store.load("r1").await.unwrap().unwrap().1).len(), 3);
            assert_eq!(store.load("r2").await.unwrap().unwrap().1.len(), 1);
        }

        #[::tokio::test]
        async fn a_step_of_an_unknown_run_is_not_found() {
            let (store, _guard) = $make;
            let err = write(&store, "ghost", 0, &[started(1)], RunStatus::Running).await.unwrap_err();
            assert!(matches!(err, Error::RunNotFound { run_id } if run_id == "ghost"));
            let err = write(&store, "ghost", 0, &[], RunStatus::Waiting).await.unwrap_err();
            assert!(matches!(err, Error::RunNotFound { run_id } if run_id == "ghost"), "a status alone too");
            assert!(store.load("ghost").await.unwrap().is_none());
        }

        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn of_writers_racing_on_one_seq_exactly_one_wins() {
            let (store, _guard) = $make;
            let store = Arc::new(store);
            new_run(&store, "r1", "g", 100).await;
            let writers: Vec<_> = (0..8)
                .map(|i| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        let entries = [completed(1, 200 + i, &format!("w{i}"))];
                        write(&store, "r1", 1, &entries, RunStatus::Running).await
                    })
                })
                .collect();
            let mut wins = 0;
            for writer in writers {
                if writer.await.unwrap().is_ok() {
                    wins += 1;
                }
            }
            assert_eq!(wins, 1);
            assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 2);
        }

        #[::tokio::test]
        async fn load_returns_entries_in_the_order_written_with_their_seq_and_time() {
            let (store, _guard) = $make;
            new_run(&store, "r1", "g", 100).await;
            write(&store, "r1", 1, &[completed(1, 105, "b")], RunStatus::Running).await.unwrap();
            write(&store, "r1", 2, &[completed(2, 107, "a"), completed(3, 107, "c")], RunStatus::Running).await.unwrap();
            write(&store, "r1", 4, &[finished(4, 108, RunStatus::Completed)], RunStatus::Completed).await.unwrap();
            let (record, journal) = store.load("r1").await.unwrap().unwrap();
            assert_eq!(record.run_id, "r1");
            assert_eq!(
                summary(&journal),
                [
                    (0, 100, "RunStarted".to_owned()),
                    (1, 105, "b".to_owned()),
                    (2, 107, "a".to_owned()),
                    (3, 107, "c".to_owned()),
                    (4, 108, "RunFinished:completed".to_owned()),
                ]
            );
            // The entries themselves survive intact.
            match &journal[0].entry {
                JournalEntry::RunStarted { input, .. } => assert_eq!(input.to_json().unwrap(), json!({"in": 1})),
                other => panic!("{other:?}"),
            }
            // A step without entries is fine and adds nothing to the journal.
            write(&store, "r1", 5, &[], RunStatus::Completed).await.unwrap();
            assert_eq!(store.load("r1").await.unwrap().unwrap().1.len(), 5);
        }

        #[::tokio::test]
        async fn a_step_that_leaves_the_run_waiting_records_it_for_listing() {
            let (store, _guard) = $make;
            new_run(&store, "r1", "g", 100).await;
            write(&store, "r1", 1, &[completed(1, 110, "a")], RunStatus::Waiting).await.unwrap();
            assert_eq!(store.load("r1").await.unwrap().unwrap().0.status, RunStatus::Waiting);
            assert_eq!(listed(&store, &query(None, Some(RunStatus::Waiting), 10)).await, ["r1"]);
            assert!(listed(&store, &query(None, Some(RunStatus::Running), 10)).await.is_empty());
        }

        #[::tokio::test]
        async fn a_step_records_the_status_it_leaves_the_run_in_and_when() {
            let (store, _guard) = $make;
            new_run(&store, "done", "g", 100).await;
            new_run(&store, "failed", "g", 101).await;
            new_run(&store, "cancelled", "g", 102).await;
            write(&store, "done", 1, &[completed(1, 150, "a")], RunStatus::Running).await.unwrap();
            let (record, _) = store.load("done").await.unwrap().unwrap();
            assert_eq!(record.status, RunStatus::Running);
            assert_eq!(record.updated_ms, 150);

            write(&store, "done", 2, &[finished(2, 160, RunStatus::Completed)], RunStatus::Completed).await.unwrap();
            write(&store, "failed", 1, &[finished(1, 170, RunStatus::Failed)], RunStatus::Failed).await.unwrap();
            write(&store, "cancelled", 1, &[finished(1, 180, RunStatus::Cancelled)], RunStatus::Cancelled)
                .await
                .unwrap();
            for (run, status, created, updated) in [
                ("done", RunStatus::Completed, 100, 160),
                ("failed", RunStatus::Failed, 101, 170),
                ("cancelled", RunStatus::Cancelled, 102, 180),
            ] {
                let (record, _) = store.load(run).await.unwrap().unwrap();
                assert_eq!(record.status, status, "{run}");
                assert_eq!(record.updated_ms, updated, "{run}");
                assert_eq!(record.created_ms, created, "{run}");
            }
        }

        #[::tokio::test]
        async fn list_runs_filters_by_graph_and_status_newest_first() {
            let (store, _guard) = $make;
            new_run(&store, "a1", "alpha", 100).await;
            new_run(&store, "b1", "beta", 200).await;
            new_run(&store, "a2", "alpha", 300).await;
            new_run(&store, "a3", "alpha", 400).await;
            write(&store, "a2", 1, &[finished(1, 310, RunStatus::Completed)], RunStatus::Completed).await.unwrap();
            write(&store, "b1", 1, &[finished(1, 210, RunStatus::Completed)], RunStatus::Completed).await.unwrap();

            assert_eq!(listed(&store, &query(None, None, 100)).await, ["a3", "a2", "b1", "a1"]);
            assert_eq!(listed(&store, &query(Some("alpha"), None, 100)).await, ["a3", "a2", "a1"]);
            assert_eq!(listed(&store, &query(None, Some(RunStatus::Completed), 100)).await, ["a2", "b1"]);
            assert_eq!(listed(&store, &query(Some("alpha"), Some(RunStatus::Running), 100)).await, ["a3", "a1"]);
            let first_two = store.list_runs(&query(Some("alpha"), None, 2)).await.unwrap();
            assert_eq!(first_two.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["a3", "a2"]);
            assert_eq!(first_two.next.map(|next| next.created_ms), Some(300));
            assert!(listed(&store, &query(Some("gamma"), None, 100)).await.is_empty());
            assert!(listed(&store, &query(None, Some(RunStatus::Waiting), 100)).await.is_empty());
            assert!(listed(&store, &query(None, None, 0)).await.is_empty());
        }

        #[::tokio::test]
        async fn list_runs_pages_through_every_matching_run_exactly_once() {
            let (store, _guard) = $make;
            // 25 runs created in quick succession, over two graphs, four to a millisecond
            // for the first four milliseconds (ties, ordered by creation) and with times
            // that go back and forth (the listing orders by time first): run i at
            // 1000 + i % 7.
            let mut expected: Vec<(u64, usize, String, String, RunStatus)> = Vec::new();
            for i in 0..25_usize {
                let run_id = format!("run{i:02}");
                let graph = if i % 3 == 0 { "beta" } else { "alpha" };
                let created_ms = 1000 + (i % 7) as u64;
                new_run(&store, &run_id, graph, created_ms).await;
                let status = if i % 4 == 1 {
                    write(&store, &run_id, 1, &[finished(1, 1100, RunStatus::Completed)], RunStatus::Completed)
                        .await
                        .unwrap();
                    RunStatus::Completed
                } else if i % 5 == 2 {
                    write(&store, &run_id, 1, &[completed(1, 1100, "ask")], RunStatus::Waiting).await.unwrap();
                    RunStatus::Waiting
                } else if i % 6 == 3 {
                    write(&store, &run_id, 1, &[finished(1, 1100, RunStatus::Failed)], RunStatus::Failed)
                        .await
                        .unwrap();
                    RunStatus::Failed
                } else {
                    RunStatus::Running
                };
                expected.push((created_ms, i, run_id, graph.to_owned(), status));
            }
            // Newest first; in one millisecond, the last created first.
            expected.sort_by_key(|r| std::cmp::Reverse((r.0, r.1)));

            let queries = [
                (None, None),
                (Some("alpha"), None),
                (Some("beta"), None),
                (None, Some(RunStatus::Running)),
                (None, Some(RunStatus::Completed)),
                (Some("alpha"), Some(RunStatus::Running)),
                (Some("beta"), Some(RunStatus::Waiting)),
                (Some("gamma"), None),
            ];
            for (graph, status) in queries {
                let matching: Vec<String> = expected
                    .iter()
                    .filter(|(_, _, _, g, s)| graph.is_none_or(|graph| g == graph) && status.is_none_or(|st| *s == st))
                    .map(|(_, _, run_id, _, _)| run_id.clone())
                    .collect();
                // One unpaged listing: every matching run, in order.
                assert_eq!(listed(&store, &query(graph, status, 1000)).await, matching, "{graph:?} {status:?}");
                let count = matching.len();
                // Limits that leave a partial last page, that fill the last page exactly
                // (5 into 25, the count itself), and larger than the count.
                for limit in [1, 3, 5, 10, count.max(1), count + 1] {
                    let q = query(graph, status, limit);
                    let pages = pages(&store, &q).await;
                    assert_eq!(ids_of(&pages), matching, "{q:?}");
                    // No empty page after a full one: exactly ceil(count / limit) pages.
                    assert_eq!(pages.len(), count.div_ceil(limit).max(1), "{q:?}");
                    // Limit 0 returns nothing, from anywhere.
                    let nothing = RunQuery { limit: 0, after: pages[0].next, ..q.clone() };
                    assert_eq!(store.list_runs(&nothing).await.unwrap(), RunPage::default(), "{q:?}");
                }
            }
            assert_eq!(store.list_runs(&query(None, None, 0)).await.unwrap(), RunPage::default());

            // Runs created while a client pages through: a newer one sorts before the
            // cursor and is not listed; one with an older time shows up once, at its place.
            // Nothing is repeated or skipped.
            let all = query(None, None, 10);
            let first = store.list_runs(&all).await.unwrap();
            new_run(&store, "newer", "alpha", 2000).await;
            new_run(&store, "older", "alpha", 999).await;
            let rest = pages(&store, &RunQuery { after: first.next, ..all.clone() }).await;
            let mut seen = ids_of(&[first]);
            seen.extend(ids_of(&rest));
            let mut then: Vec<String> = expected.iter().map(|(_, _, run_id, _, _)| run_id.clone()).collect();
            then.push("older".to_owned());
            assert_eq!(seen, then);
            // From the start, the new runs are where they belong.
            let now = ids_of(&pages(&store, &all).await);
            assert_eq!(now.first().map(String::as_str), Some("newer"));
            assert_eq!(now.last().map(String::as_str), Some("older"));
            assert_eq!(now.len(), 27);
        }
    };
}
