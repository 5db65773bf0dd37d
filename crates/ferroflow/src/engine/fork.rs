//! Forking a run at a node ([`Engine::fork`]): a new run that keeps what its parent did
//! before that node and runs from there, optionally with another output for the node or
//! another input ("what if the classifier had said billing?"). The parent is left as it is.
//!
//! The fork's journal is made by the state function, not copied: on a fresh state of the
//! fork's graph, each node the parent resolved that does not depend on `at` (`at` itself
//! excluded) is resolved again with the parent's output, in the parent's order, as a first
//! attempt: a task's completion, each map element's, a human node's question and answer.
//! What that derives (skips, the nodes it makes ready) is recorded with it, as in any run.
//! An entry the fork's state does not take (its graph is another version, whose node depends
//! on something else now) is left out, and that node runs in the fork. With `output`, `at`
//! completes with it, so that only what depends on it runs. Nothing of the parent's failures,
//! retries or recorded steps is carried over: the fork's journal says where it came from
//! ([`JournalEntry::RunForked`]), and the parent's journal keeps the history.

use std::collections::HashSet;
use std::sync::Arc;

use crate::body::{Attachment, Workflow};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, NodeKind};
use crate::journal::{JournalEntry, now_ms};
use crate::state::{NodeState, RunState};
use crate::store::StoredEntry;
use crate::value::Value;

use super::transfer::NewRun;
use super::{Engine, RunHandle, check_run_id};

/// What to fork, and how: the parent, the node to run from, and what changes.
#[derive(Clone, Debug, Default)]
pub struct ForkOptions {
    /// The fork's run id; a new one when `None`.
    pub run_id: Option<String>,
    /// The output `at` is taken to have returned instead of running it: only what depends
    /// on it runs. Not for a map node (its output is its elements').
    pub output: Option<Value>,
    /// The fork's input, instead of the parent's. Nodes that do not depend on `at` keep
    /// the outputs they had in the parent all the same.
    pub input: Option<Value>,
    /// Who forks, for the journal (may be empty).
    pub by: String,
    /// The fork's attachment, as for a start.
    pub attachment: Option<Attachment>,
}

impl Engine {
    /// Forks run `parent` at node `at`: a new run of `workflow` (a graph of the same name,
    /// of any version) that begins with the outputs the parent recorded for every node that
    /// does not depend on `at`, and runs `at` and what depends on it (only what depends on
    /// it, with [`ForkOptions::output`]). See the module docs for how its journal is made.
    /// The parent, in any context this engine reads, is left as it is.
    ///
    /// # Errors
    ///
    /// - [`Error::RunNotFound`] if there is no run `parent`.
    /// - [`Error::InvalidInput`] if `at` is not a node of the graph, the parent is of another
    ///   graph, `output` is given for a map node or for a node the fork does not reach with
    ///   the parent's outputs, a value cannot be stored, or the fork's id is taken.
    /// - The store's errors.
    pub fn fork(&self, workflow: &Workflow, parent: &str, at: &str, options: ForkOptions) -> Result<RunHandle> {
        self.inner.check_open()?;
        check_run_id(parent)?;
        let run_id: String = match options.run_id {
            Some(id) => {
                check_run_id(&id)?;
                id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let refused = |reason: String| Error::InvalidInput { run_id: run_id.clone(), reason };
        if !options.by.is_empty() {
            crate::limits::check_name("the forker's name", &options.by).map_err(&refused)?;
        }
        let (record, journal) = self.load(parent)?;
        let graph = workflow.graph();
        if record.graph != graph.name() {
            return Err(refused(format!(
                "run '{parent}' is of graph '{}', not '{}': a fork runs the parent's graph",
                record.graph,
                graph.name()
            )));
        }
        let at_id =
            graph.id(at).ok_or_else(|| refused(format!("graph '{}' has no node '{at}' to fork at", graph.name())))?;
        let accept = |what: &str, value: Value| {
            self.inner.accept(value).map_err(|reason| refused(format!("the {what} cannot be stored: {reason}")))
        };
        let Some(JournalEntry::RunStarted { input: parent_input, .. }) = journal.first().map(|e| &e.entry) else {
            return Err(refused(format!("run '{parent}' has no RunStarted entry")));
        };
        let input = match options.input {
            Some(input) => accept("fork's input", input)?,
            None => parent_input.clone(),
        };
        let output = options.output.map(|output| accept("output for the node", output)).transpose()?;

        let now = now_ms();
        let (mut state, effects) = RunState::start(Arc::clone(graph), input.clone());
        let mut entries = vec![
            JournalEntry::RunStarted { graph: graph.name().into(), version: graph.version().into(), input },
            JournalEntry::RunForked {
                parent: Arc::from(parent),
                at: Arc::from(at),
                by: Arc::from(options.by.as_str()),
            },
        ];
        entries.extend(effects.derived);
        let rerun = depends_on(graph, at_id);
        for stored in &journal {
            let Some(entry) = kept(graph, &state, &rerun, &stored.entry) else { continue };
            if let Ok(effects) = state.apply(&entry) {
                entries.push(entry);
                entries.extend(effects.derived);
            }
        }
        if let Some(output) = output {
            let attempt = match (graph.node(at_id).kind, state.node_state(at_id)) {
                (NodeKind::Map, _) => {
                    return Err(refused(format!(
                        "'{at}' is a map node: its output is its elements', so fork at it without an output"
                    )));
                }
                (_, NodeState::Active { attempt }) => *attempt,
                _ => {
                    return Err(refused(format!(
                        "the fork does not reach '{at}' with what run '{parent}' recorded (a node it depends on did \
                         not complete), so it cannot take an output for it"
                    )));
                }
            };
            let entry = JournalEntry::NodeCompleted { node: Arc::from(at), item: None, attempt, output };
            let effects = state.apply(&entry).map_err(|e| refused(format!("the output for '{at}': {e:?}")))?;
            entries.push(entry);
            entries.extend(effects.derived);
        }
        let ready = state.outstanding();
        let journal: Vec<StoredEntry> = entries
            .into_iter()
            .enumerate()
            .map(|(seq, entry)| StoredEntry { seq: seq as u64, at_ms: now, entry })
            .collect();
        let created = NewRun { run_id: &run_id, state, journal, ready, created_ms: now, replay: None };
        self.inner.create_whole(workflow, created, options.attachment, "creating the fork")
    }
}

/// `at` and every node that depends on it, directly or not.
fn depends_on(graph: &Graph, at: NodeId) -> HashSet<NodeId> {
    let mut found = HashSet::from([at]);
    let mut work = vec![at];
    while let Some(id) = work.pop() {
        for &next in graph.outgoing(id) {
            if found.insert(next) {
                work.push(next);
            }
        }
    }
    found
}

/// The entry that resolves a node of the fork the way `entry` resolved it in the parent, as
/// the fork's current attempt; `None` for an entry the fork does not carry over (it is about
/// a node that runs again, or is not a resolution: failures, retries, recorded steps,
/// derived entries, which the fork derives itself).
fn kept(graph: &Graph, state: &RunState, rerun: &HashSet<NodeId>, entry: &JournalEntry) -> Option<JournalEntry> {
    let id = graph.id(entry.node()?)?;
    if rerun.contains(&id) {
        return None;
    }
    let current = |item: Option<u32>| match (state.node_state(id), item) {
        (NodeState::Active { attempt }, None) => Some(*attempt),
        (NodeState::Mapping(map), Some(i)) => map.attempts.get(i as usize).copied(),
        _ => None,
    };
    match entry {
        JournalEntry::NodeCompleted { node, item, output, .. } => Some(JournalEntry::NodeCompleted {
            node: Arc::clone(node),
            item: *item,
            attempt: current(*item)?,
            output: output.clone(),
        }),
        JournalEntry::Interrupted { node, payload, .. } => Some(JournalEntry::Interrupted {
            node: Arc::clone(node),
            attempt: current(None)?,
            payload: payload.clone(),
        }),
        JournalEntry::Resumed { .. } => Some(entry.clone()),
        _ => None,
    }
}
