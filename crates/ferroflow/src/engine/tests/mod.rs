//! The engine's tests, one file per concern; the helpers they share are here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::json;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::body::{Attachment, Body, BodyResult, NodeCall, Workflow};
use crate::error::{Error, NodeError, Result};
use crate::graph::{Dependency, Graph, GraphSpec, NodeKind, NodeSpec, RetryPolicy};
use crate::journal::{Event, EventKind, JournalEntry, RunStatus, now_ms};
use crate::store::{
    Claim, Created, DurableStore, JournalStore, Lease, QueuedTask, RunPage, RunQuery, RunRecord, Step, StoredEntry,
    TaskQueue,
};
use crate::value::Value;

use super::run::STATUSES;
use super::*;

mod cancel;
mod concurrency;
mod dataflow;
mod events;
mod failures;
mod fork;
mod human;
mod lease;
mod open_run;
mod outage;
mod prune;
mod replay;
mod retry;
mod run_ids;
mod settle_hooks;
mod transfer;

const LIMIT: Duration = Duration::from_secs(5);

fn graph_named(name: &str, nodes: Vec<NodeSpec>) -> Graph {
    GraphSpec { name: name.into(), nodes, output: None }.build().expect("test graph builds")
}

fn task(name: &str, deps: &[&str]) -> NodeSpec {
    deps.iter().fold(NodeSpec::new(name, NodeKind::Task), |n, d| n.dep(Dependency::on(*d)))
}

fn workflow(nodes: Vec<NodeSpec>, bodies: Vec<(&str, Body)>) -> Workflow {
    workflow_named("g", nodes, bodies)
}

fn workflow_named(name: &str, nodes: Vec<NodeSpec>, bodies: Vec<(&str, Body)>) -> Workflow {
    let bodies: HashMap<String, Body> = bodies.into_iter().map(|(n, b)| (n.to_owned(), b)).collect();
    Workflow::new(graph_named(name, nodes), bodies).expect("every node has a body")
}

fn engine() -> Engine {
    Engine::new(Handle::current(), EngineConfig::default())
}

fn j(value: &Value) -> serde_json::Value {
    value.to_json().expect("test values are JSON")
}

fn ok(value: serde_json::Value) -> BodyResult {
    Ok(Value::from(value))
}

/// A body returning a constant.
fn constant(value: serde_json::Value) -> Body {
    Body::blocking(move |_| ok(value.clone()))
}

/// A body that counts its calls and returns a constant.
fn counted(counter: &Arc<AtomicUsize>, value: serde_json::Value) -> Body {
    let counter = Arc::clone(counter);
    Body::blocking(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        ok(value.clone())
    })
}

fn id(run_id: &str) -> StartOptions {
    StartOptions { run_id: Some(run_id.to_owned()), attachment: None }
}

async fn finish(engine: &Engine, wf: &Workflow, input: serde_json::Value) -> RunSnapshot {
    let run = engine.start(wf, Value::from(input), StartOptions::default()).expect("start");
    run.wait(Some(LIMIT)).await.expect("run settles")
}

/// Polls `cond` until it holds, failing the test after [`LIMIT`].
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sets its flag when dropped: placed inside an async body, it tells whether the body's
/// future was dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        multiplier: 1.0,
        max_backoff: Duration::from_secs(1),
        jitter: 0.0,
    }
}

fn entries(engine: &Engine, run: &str) -> Vec<JournalEntry> {
    engine.journal(run).unwrap().into_iter().map(|s| s.entry).collect()
}

fn report<'a>(reports: &'a [crate::engine::NodeReport], name: &str) -> &'a NodeReport {
    reports.iter().find(|r| &*r.name == name).unwrap_or_else(|| panic!("no node {name}"))
}

/// Receives events until the stream ends.
async fn drain(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, rx.recv()).await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return events,
            Err(_) => panic!("the event stream did not end; got {events:?}"),
        }
    }
}

fn human_workflow() -> Workflow {
    workflow(
        vec![NodeSpec::new("ask", NodeKind::Human), task("after", &["ask"])],
        vec![
            ("ask", Body::blocking(|call: NodeCall| ok(json!({"question": j(&call.input)})))),
            ("after", Body::blocking(|call: NodeCall| ok(json!(format!("{}!", j(&call.deps[0]).as_str().unwrap()))))),
        ],
    )
}

fn durable_with_lease(store: &Arc<crate::store::MemoryStore>, lease: Duration) -> Engine {
    let store: Arc<dyn DurableStore> = store.clone();
    Engine::new(Handle::current(), EngineConfig { store: Some(store), lease, ..EngineConfig::default() })
}

/// a -> slow -> c, where `slow` parks until `release` is notified (standing for a process
/// that stopped in the middle of it), counting the calls of each node.
fn parking_workflow(calls: &Arc<Mutex<Vec<String>>>, release: &Arc<Notify>) -> Workflow {
    let log = |name: &'static str| {
        let calls = Arc::clone(calls);
        Body::blocking(move |call: NodeCall| {
            calls.lock().unwrap().push(format!("{name}#{}", call.attempt));
            ok(json!(name))
        })
    };
    let slow = {
        let (calls, release) = (Arc::clone(calls), Arc::clone(release));
        Body::from_async(move |call: NodeCall| {
            calls.lock().unwrap().push(format!("slow#{}", call.attempt));
            let release = Arc::clone(&release);
            async move {
                if call.attempt == 1 {
                    release.notified().await;
                }
                ok(json!("slow"))
            }
        })
    };
    workflow(
        vec![task("a", &[]), task("slow", &["a"]), task("c", &["slow"])],
        vec![("a", log("a")), ("slow", slow), ("c", log("c"))],
    )
}
