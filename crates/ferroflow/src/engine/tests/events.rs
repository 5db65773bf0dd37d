//! Events: what watchers see, in order.

use super::*;

fn journal_events(events: &[Event]) -> Vec<(u64, &JournalEntry)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Journal(entry) => Some((e.seq, entry)),
            EventKind::NodeStarted { .. } | EventKind::NodeProgress { .. } => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_event_in_order() {
    let wf = workflow(
        vec![task("a", &[]), task("b", &["a"]), task("c", &["b"])],
        vec![
            ("a", constant(json!(1))),
            (
                "b",
                Body::from_async(|_| async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    ok(json!(2))
                }),
            ),
            ("c", constant(json!(3))),
        ],
    );
    let engine = engine();
    let (run, mut rx) =
        engine.start_watched(&wf, Value::null(), StartOptions::default(), WatchUntil::Finished).unwrap();
    let run = run.id().clone();
    let events = drain(&mut rx).await;
    assert!(events.iter().all(|e| e.run_id == run));

    let journal = journal_events(&events);
    let seqs: Vec<u64> = journal.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(matches!(events.first().map(|e| &e.kind), Some(EventKind::Journal(JournalEntry::RunStarted { .. }))));
    match &events.last().unwrap().kind {
        EventKind::Journal(JournalEntry::RunFinished { status, output, .. }) => {
            assert_eq!(*status, RunStatus::Completed);
            assert_eq!(j(output.as_ref().unwrap()), json!(3));
        }
        other => panic!("the last event is {other:?}"),
    }
    // The journal events are the journal.
    assert_eq!(journal.len(), engine.journal(&run).unwrap().len());

    // Each node starts before it completes.
    for name in ["a", "b", "c"] {
        let started = events
            .iter()
            .position(|e| matches!(&e.kind, EventKind::NodeStarted { node, attempt: 1, .. } if &**node == name));
        let completed = events.iter().position(
            |e| matches!(&e.kind, EventKind::Journal(JournalEntry::NodeCompleted { node, .. }) if &**node == name),
        );
        let (started, completed) = (started.expect(name), completed.expect(name));
        assert!(started < completed, "{name}");
    }

    // Watching a finished run replays its journal and ends.
    let mut rx = engine.watch(&run, WatchUntil::Finished).unwrap();
    let replayed = drain(&mut rx).await;
    let replayed_seqs: Vec<u64> = journal_events(&replayed).iter().map(|(s, _)| *s).collect();
    assert_eq!(replayed_seqs, seqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_watch_ends_at_the_pause() {
    let wf = human_workflow();
    let engine = engine();
    let (run, mut rx) =
        engine.start_watched(&wf, Value::from(json!("?")), StartOptions::default(), WatchUntil::Settled).unwrap();
    let run = run.id().clone();
    let events = drain(&mut rx).await;
    let journal = journal_events(&events);
    assert!(matches!(
        journal.last(),
        Some((_, JournalEntry::Interrupted { node, .. })) if &**node == "ask"
    ));
    assert_eq!(engine.snapshot(&run).unwrap().status, RunStatus::Waiting);

    let mut rx = engine.watch(&run, WatchUntil::Finished).unwrap();
    engine.resume(&run, Some("ask"), Value::from(json!("go")), None).unwrap();
    let events = drain(&mut rx).await;
    let journal = journal_events(&events);
    let seqs: Vec<u64> = journal.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(matches!(journal.last(), Some((_, JournalEntry::RunFinished { status: RunStatus::Completed, .. }))));
}
