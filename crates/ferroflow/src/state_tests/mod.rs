//! The state function's cases, one file per concern; the helpers every file uses are here.

use super::*;

use crate::graph::{Dependency, GraphSpec, NodeSpec};
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn build(nodes: Vec<NodeSpec>, output: Option<&str>) -> Arc<Graph> {
    Arc::new(
        GraphSpec { name: "g".into(), nodes, output: output.map(str::to_owned) }.build().expect("test graph builds"),
    )
}

fn task(name: &str, deps: &[&str]) -> NodeSpec {
    deps.iter().fold(NodeSpec::new(name, NodeKind::Task), |n, d| n.dep(Dependency::on(*d)))
}

fn branch(name: &str, deps: &[&str]) -> NodeSpec {
    NodeSpec { kind: NodeKind::Branch, ..task(name, deps) }
}

fn map_over(name: &str, over: &str) -> NodeSpec {
    NodeSpec::new(name, NodeKind::Map).dep(Dependency::on(over)).over(over)
}

fn j(value: &Value) -> serde_json::Value {
    value.to_json().expect("test values are JSON")
}

fn completed(node: &str, attempt: u32, output: serde_json::Value) -> JournalEntry {
    JournalEntry::NodeCompleted { node: node.into(), item: None, attempt, output: Value::from(output) }
}

fn item_completed(node: &str, item: u32, attempt: u32, output: serde_json::Value) -> JournalEntry {
    JournalEntry::NodeCompleted { node: node.into(), item: Some(item), attempt, output: Value::from(output) }
}

fn failed(node: &str, item: Option<u32>, attempt: u32, retry_in_ms: Option<u64>) -> JournalEntry {
    JournalEntry::NodeFailed {
        node: node.into(),
        item,
        attempt,
        error: NodeError::new("ValueError", format!("{node} broke")),
        retry_in_ms,
    }
}

fn ready_names(graph: &Graph, effects: &Effects) -> Vec<String> {
    let mut names: Vec<String> = effects.ready.iter().map(|t| graph.node(t.node).name.clone()).collect();
    names.sort();
    names
}

fn skipped_names(effects: &Effects) -> Vec<String> {
    let mut names: Vec<String> = effects
        .derived
        .iter()
        .filter_map(|e| match e {
            JournalEntry::NodeSkipped { node } => Some(node.to_string()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// The `RunFinished` entry among the derived ones, as (status, output JSON, failure).
fn finished(effects: &Effects) -> Option<(RunStatus, Option<serde_json::Value>, Option<RunFailure>)> {
    effects.derived.iter().find_map(|e| match e {
        JournalEntry::RunFinished { status, output, failure } => {
            Some((*status, output.as_ref().map(j), failure.clone()))
        }
        _ => None,
    })
}

fn is_skipped(state: &RunState, name: &str) -> bool {
    matches!(state.node_state(state.graph().id(name).unwrap()), NodeState::Skipped)
}

fn completed_output(state: &RunState, name: &str) -> Option<serde_json::Value> {
    match state.node_state(state.graph().id(name).unwrap()) {
        NodeState::Completed { output } => Some(j(output)),
        _ => None,
    }
}

/// A run driven by hand that records its journal the way the engine does: each applied
/// entry followed by the entries it implies.
struct Harness {
    state: RunState,
    journal: Vec<JournalEntry>,
}

impl Harness {
    fn start(graph: Arc<Graph>, input: serde_json::Value) -> (Harness, Effects) {
        let input = Value::from(input);
        let started = JournalEntry::RunStarted {
            graph: graph.name().into(),
            version: graph.version().into(),
            input: input.clone(),
        };
        let (state, effects) = RunState::start(graph, input);
        let mut journal = vec![started];
        journal.extend(effects.derived.iter().cloned());
        (Harness { state, journal }, effects)
    }

    fn apply(&mut self, entry: JournalEntry) -> Effects {
        let effects = self.state.apply(&entry).unwrap_or_else(|e| panic!("{entry:?} rejected: {e:?}"));
        self.journal.push(entry);
        self.journal.extend(effects.derived.iter().cloned());
        effects
    }
}

fn branch_graph() -> Arc<Graph> {
    build(
        vec![
            branch("route", &[]).labels(["yes", "no"]),
            NodeSpec::new("yes", NodeKind::Task).dep(Dependency::on("route").when(["yes"])),
            NodeSpec::new("no", NodeKind::Task).dep(Dependency::on("route").when(["no"])),
            task("no2", &["no"]),
            task("no3", &["no2"]),
        ],
        None,
    )
}

fn map_graph() -> Arc<Graph> {
    build(vec![task("src", &[]), map_over("m", "src"), task("after", &["m"])], None)
}

fn interrupted(node: &str, payload: serde_json::Value) -> JournalEntry {
    JournalEntry::Interrupted { node: node.into(), attempt: 1, payload: Value::from(payload) }
}

fn resumed(node: &str, value: serde_json::Value) -> JournalEntry {
    JournalEntry::Resumed { node: node.into(), value: Value::from(value) }
}

mod branches;
mod failures;
mod human;
mod joins;
mod maps;
mod output;
mod replay;
mod retry;
mod stale;
