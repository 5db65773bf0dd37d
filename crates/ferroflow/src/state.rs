//! The one pure function of the engine: what a run's journal means.
//!
//! [`RunState`] folds journal entries over a graph and answers what is ready, what is
//! skipped, what is waiting for a person and whether the run is finished. Every context
//! uses it unchanged: the live scheduler applies each entry as it records it, and
//! resuming a run replays the stored journal through the same code.
//!
//! Semantics (see DESIGN.md): a node runs when every dependency is resolved (completed or
//! skipped) and at least one incoming edge is active; otherwise it is skipped, and
//! skipping propagates. An edge is active when its source completed and, for an edge out
//! of a branch, the branch returned one of the edge's labels. A node with labelled edges
//! is gated by them: only those count, so a node that also takes a plain input still
//! runs only on its branch's say. A node without dependencies runs when the run starts.
//!
//! One file (~600 lines, its tests in `state_tests/`): the state function is one transition
//! over one `RunState`, and its rules read best side by side.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::NodeError;
use crate::graph::{Graph, NodeId, NodeKind};
use crate::journal::{JournalEntry, RunFailure, RunStatus};
use crate::value::Value;

/// One unit of work: an attempt at a node, or at one element of a map node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// The node to run.
    pub node: NodeId,
    /// For a map node: the index of the element to run on.
    pub item: Option<u32>,
    /// The attempt, counting from 1.
    pub attempt: u32,
    /// Wait this long before running (a retry's backoff).
    pub delay: Option<Duration>,
}

/// What applying an entry changed.
#[derive(Debug, Default)]
pub struct Effects {
    /// Tasks that became ready.
    pub ready: Vec<Task>,
    /// Entries the derivation implies and the caller must record after the applied one:
    /// skips, a map node failing on a non-list, the run finishing. Applying them again
    /// (when replaying the journal) changes nothing.
    pub derived: Vec<JournalEntry>,
}

/// Why an entry was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The entry is out of date: a duplicate delivery, an attempt that was superseded
    /// (timed out and retried), or a result arriving after the run finished. Drop it.
    Stale,
    /// The entry contradicts the graph or the journal so far.
    Inconsistent(String),
}

/// A node's place in the run.
#[derive(Clone, Debug)]
pub enum NodeState {
    /// Some dependency is unresolved.
    Pending,
    /// Attempt `attempt` is outstanding (running, queued or waiting out a backoff).
    Active {
        /// The outstanding attempt, counting from 1.
        attempt: u32,
    },
    /// A map node whose elements are outstanding.
    Mapping(Box<MapState>),
    /// A human node waiting for `resume`.
    Waiting {
        /// The attempt that produced the payload.
        attempt: u32,
        /// What the person is shown.
        payload: Value,
    },
    /// The node succeeded (or, for a human node, was answered).
    Completed {
        /// Its output: for a map node, the list of its elements' outputs.
        output: Value,
    },
    /// The node will not run: once its dependencies resolved, none of its incoming edges
    /// was active (see the module docs).
    Skipped,
    /// The node failed for good, which fails the run.
    Failed {
        /// The last attempt's error.
        error: NodeError,
    },
}

/// The elements of a map node in flight.
#[derive(Clone, Debug)]
pub struct MapState {
    /// The elements of the list the node runs over.
    pub items: Vec<Value>,
    /// Each element's output, once it has completed.
    pub outputs: Vec<Option<Value>>,
    /// Each element's current attempt, counting from 1.
    pub attempts: Vec<u32>,
    /// How many elements have not completed yet.
    pub remaining: usize,
}

/// A step a body recorded: its key and result.
pub type RecordedStep = (Arc<str>, Value);

/// A run's state as derived from its journal.
#[derive(Clone, Debug)]
pub struct RunState {
    graph: Arc<Graph>,
    input: Value,
    status: RunStatus,
    nodes: Vec<NodeState>,
    unresolved: Vec<u32>,
    activated: Vec<bool>,
    resolved: usize,
    in_flight: usize,
    output: Option<Value>,
    failure: Option<RunFailure>,
    /// The steps bodies recorded, by node and map element, until the node completes.
    recorded: HashMap<(NodeId, Option<u32>), Vec<RecordedStep>>,
    /// Where the run failed, with the failed node's state just before, so that a retry
    /// ([`JournalEntry::RunRetried`]) can put it back.
    failed_at: Option<Box<FailedAt>>,
    /// For the attempts a retry started: the attempt before it, by node and map element, so
    /// that a node's retry policy counts the attempts since the retry
    /// ([`RunState::attempts_since_retry`]). Empty unless the run was retried.
    retried_from: HashMap<(NodeId, Option<u32>), u32>,
}

/// The node whose failure failed the run, and its state before.
#[derive(Clone, Debug)]
struct FailedAt {
    node: NodeId,
    before: NodeState,
}

impl RunState {
    /// The state right after `RunStarted`, with the tasks of the root nodes.
    pub fn start(graph: Arc<Graph>, input: Value) -> (RunState, Effects) {
        let n = graph.nodes().len();
        let unresolved = (0..n).map(|id| graph.incoming(id).len() as u32).collect();
        let mut state = RunState {
            graph,
            input,
            status: RunStatus::Running,
            nodes: vec![NodeState::Pending; n],
            unresolved,
            activated: vec![false; n],
            resolved: 0,
            in_flight: 0,
            output: None,
            failure: None,
            recorded: HashMap::new(),
            failed_at: None,
            retried_from: HashMap::new(),
        };
        let mut effects = Effects::default();
        for id in 0..n {
            if state.graph.incoming(id).is_empty() {
                state.make_ready(id, &mut effects);
            }
        }
        state.settle(&mut effects);
        (state, effects)
    }

    /// Rebuilds the state from a whole journal. Entries the live run would have dropped
    /// as stale are skipped here too.
    ///
    /// # Errors
    ///
    /// Why the journal does not fit the graph: it does not begin with `RunStarted`, or an
    /// entry is [`Rejected::Inconsistent`].
    pub fn replay(graph: Arc<Graph>, journal: &[JournalEntry]) -> Result<RunState, String> {
        let Some(JournalEntry::RunStarted { input, .. }) = journal.first() else {
            return Err("the journal does not begin with RunStarted".into());
        };
        let (mut state, _) = RunState::start(graph, input.clone());
        for entry in &journal[1..] {
            match state.apply(entry) {
                Ok(_) | Err(Rejected::Stale) => {}
                Err(Rejected::Inconsistent(reason)) => return Err(reason),
            }
        }
        Ok(state)
    }

    /// The graph the run follows.
    pub fn graph(&self) -> &Arc<Graph> {
        &self.graph
    }

    /// The run's input.
    pub fn input(&self) -> &Value {
        &self.input
    }

    /// The run's status as the journal so far implies it.
    pub fn status(&self) -> RunStatus {
        self.status
    }

    /// Where node `id` is.
    ///
    /// # Panics
    ///
    /// If `id` is not a node of the graph; so do the other methods that take a
    /// [`NodeId`].
    pub fn node_state(&self, id: NodeId) -> &NodeState {
        &self.nodes[id]
    }

    /// The run's output, once completed.
    pub fn output(&self) -> Option<&Value> {
        self.output.as_ref()
    }

    /// Why the run failed, once failed.
    pub fn failure(&self) -> Option<&RunFailure> {
        self.failure.as_ref()
    }

    /// Human nodes waiting for an answer, with what they show the person. A finished run
    /// waits for nobody.
    pub fn waiting(&self) -> impl Iterator<Item = (NodeId, &Value)> {
        let active = !self.status.is_terminal();
        self.nodes.iter().enumerate().filter(move |_| active).filter_map(|(id, n)| match n {
            NodeState::Waiting { payload, .. } => Some((id, payload)),
            _ => None,
        })
    }

    /// Every outstanding task: what a process resuming the run must dispatch.
    pub fn outstanding(&self) -> Vec<Task> {
        let mut tasks = Vec::new();
        if self.status.is_terminal() {
            return tasks;
        }
        for (id, node) in self.nodes.iter().enumerate() {
            match node {
                NodeState::Active { attempt } => {
                    tasks.push(Task { node: id, item: None, attempt: *attempt, delay: None })
                }
                NodeState::Mapping(map) => {
                    for (i, out) in map.outputs.iter().enumerate() {
                        if out.is_none() {
                            tasks.push(Task { node: id, item: Some(i as u32), attempt: map.attempts[i], delay: None });
                        }
                    }
                }
                _ => {}
            }
        }
        tasks
    }

    /// The outputs a node's body receives, in the order of its dependencies; a skipped
    /// dependency gives `null`.
    pub fn dependency_values(&self, id: NodeId) -> Vec<Value> {
        self.graph
            .incoming(id)
            .iter()
            .map(|edge| match &self.nodes[edge.from] {
                NodeState::Completed { output } => output.clone(),
                _ => Value::null(),
            })
            .collect()
    }

    /// The element a map task runs on.
    pub fn map_item(&self, id: NodeId, item: u32) -> Option<&Value> {
        match &self.nodes[id] {
            NodeState::Mapping(map) => map.items.get(item as usize),
            _ => None,
        }
    }

    /// Checks a branch's output: one known label or a list of them.
    ///
    /// # Errors
    ///
    /// A permanent [`NodeError`] of kind `InvalidBranchOutput` if the output is not a
    /// label or a list of labels, or names a label the branch does not know (see
    /// [`RunState::branch_labels`]): the same body would return the same labels again.
    pub fn check_branch_output(&self, id: NodeId, output: &Value) -> Result<(), NodeError> {
        let Some(labels) = output.labels() else {
            return Err(NodeError::permanent(
                "InvalidBranchOutput",
                format!(
                    "branch '{}' must return a label (a string) or a list of labels, not {}",
                    self.graph.node(id).name,
                    output.type_name()
                ),
            ));
        };
        let known = self.branch_labels(id);
        if let Some(unknown) = labels.iter().find(|l| !known.contains(l)) {
            return Err(NodeError::permanent(
                "InvalidBranchOutput",
                format!(
                    "branch '{}' returned label '{unknown}', but its edges are labelled {known:?}",
                    self.graph.node(id).name
                ),
            ));
        }
        Ok(())
    }

    /// The labels a branch may return: those it declares and those on its edges, sorted.
    pub fn branch_labels(&self, id: NodeId) -> Vec<String> {
        let mut labels: Vec<String> = self
            .graph
            .outgoing(id)
            .iter()
            .flat_map(|&s| self.graph.incoming(s).iter().filter(|e| e.from == id))
            .flat_map(|e| e.when.iter().flatten().cloned())
            .chain(self.graph.node(id).labels.iter().flatten().cloned())
            .collect();
        labels.sort();
        labels.dedup();
        labels
    }

    /// Applies one journal entry. On success the state has changed and `Effects` says
    /// what follows; on rejection nothing changed.
    ///
    /// # Errors
    ///
    /// [`Rejected::Stale`] for an entry that is out of date (drop it), and
    /// [`Rejected::Inconsistent`] for one that contradicts the graph or the journal
    /// (a second `RunStarted`, an unknown node, a skip the state does not imply).
    pub fn apply(&mut self, entry: &JournalEntry) -> Result<Effects, Rejected> {
        let mut effects = Effects::default();
        match entry {
            JournalEntry::RunStarted { .. } => {
                return Err(Rejected::Inconsistent("RunStarted twice".into()));
            }
            JournalEntry::RunFinished { status, output, failure } => {
                if self.status.is_terminal() {
                    return if self.status == *status { Ok(effects) } else { Err(Rejected::Stale) };
                }
                self.status = *status;
                if output.is_some() {
                    self.output = output.clone();
                }
                if failure.is_some() {
                    self.failure = failure.clone();
                }
                return Ok(effects);
            }
            JournalEntry::RunForked { .. } => return Ok(effects),
            JournalEntry::RunRetried { .. } => {
                if self.status != RunStatus::Failed {
                    return Err(Rejected::Stale);
                }
                self.retry(&mut effects);
            }
            _ if self.status.is_terminal() => return Err(Rejected::Stale),
            JournalEntry::StepRecorded { node, item, attempt, key, value } => {
                let id = self.id(node)?;
                self.accept_attempt(id, *item, *attempt)?;
                self.recorded.entry((id, *item)).or_default().push((Arc::clone(key), value.clone()));
                return Ok(effects);
            }
            JournalEntry::NodeCompleted { node, item, attempt, output } => {
                let id = self.id(node)?;
                self.accept_attempt(id, *item, *attempt)?;
                self.in_flight -= 1;
                self.forget_steps(id, *item);
                match item {
                    None => self.complete(id, output.clone(), &mut effects),
                    Some(i) => {
                        let NodeState::Mapping(map) = &mut self.nodes[id] else { unreachable!("checked") };
                        map.outputs[*i as usize] = Some(output.clone());
                        map.remaining -= 1;
                        if map.remaining == 0 {
                            let outputs = map.outputs.iter_mut().map(|o| o.take().expect("all done")).collect();
                            self.complete(id, Value::List(outputs), &mut effects);
                        }
                    }
                }
            }
            JournalEntry::NodeFailed { node, item, attempt, error, retry_in_ms } => {
                let id = self.id(node)?;
                self.accept_attempt(id, *item, *attempt)?;
                match retry_in_ms {
                    Some(ms) => {
                        let next = attempt + 1;
                        match &mut self.nodes[id] {
                            NodeState::Mapping(map) => map.attempts[item.expect("checked") as usize] = next,
                            other => *other = NodeState::Active { attempt: next },
                        }
                        effects.ready.push(Task {
                            node: id,
                            item: *item,
                            attempt: next,
                            delay: Some(Duration::from_millis(*ms)),
                        });
                    }
                    None => {
                        // The steps it recorded stay: a retry of the run hands them on.
                        self.in_flight -= 1;
                        let before = std::mem::replace(&mut self.nodes[id], NodeState::Failed { error: error.clone() });
                        self.failed_at = Some(Box::new(FailedAt { node: id, before }));
                        self.fail(RunFailure { node: node.clone(), item: *item, error: error.clone() }, &mut effects);
                    }
                }
            }
            JournalEntry::NodeSkipped { node } => {
                let id = self.id(node)?;
                if !matches!(self.nodes[id], NodeState::Skipped) {
                    return Err(Rejected::Inconsistent(format!("node '{node}' recorded as skipped, but it is not")));
                }
            }
            JournalEntry::Interrupted { node, attempt, payload } => {
                let id = self.id(node)?;
                if self.graph.node(id).kind != NodeKind::Human {
                    return Err(Rejected::Inconsistent(format!("node '{node}' is not a human node")));
                }
                self.accept_attempt(id, None, *attempt)?;
                self.in_flight -= 1;
                self.nodes[id] = NodeState::Waiting { attempt: *attempt, payload: payload.clone() };
            }
            JournalEntry::Resumed { node, value } => {
                let id = self.id(node)?;
                if !matches!(self.nodes[id], NodeState::Waiting { .. }) {
                    return Err(Rejected::Stale);
                }
                self.status = RunStatus::Running;
                self.complete(id, value.clone(), &mut effects);
            }
        }
        self.settle(&mut effects);
        Ok(effects)
    }

    /// A failed run runs again ([`JournalEntry::RunRetried`]): the node that failed gets its
    /// state back, and every outstanding attempt (the failed one, and those the failure cut
    /// short) runs as its next one, with its node's retry policy counted afresh. Completed
    /// nodes keep their outputs, and the failed node keeps the steps it recorded.
    fn retry(&mut self, effects: &mut Effects) {
        self.status = RunStatus::Running;
        self.failure = None;
        let Some(failed) = self.failed_at.take() else { return };
        let FailedAt { node, before } = *failed;
        match before {
            // The map's input was not a list: deriving the node again fails it again.
            NodeState::Pending => {
                self.nodes[node] = NodeState::Pending;
                self.make_ready(node, effects);
            }
            before => {
                self.nodes[node] = before;
                self.in_flight += 1;
            }
        }
        if self.status.is_terminal() {
            return;
        }
        for task in self.outstanding() {
            let next = task.attempt + 1;
            match &mut self.nodes[task.node] {
                NodeState::Mapping(map) => map.attempts[task.item.expect("a map element") as usize] = next,
                other => *other = NodeState::Active { attempt: next },
            }
            self.retried_from.insert((task.node, task.item), task.attempt);
            effects.ready.push(Task { attempt: next, ..task });
        }
    }

    /// How many attempts of `task`'s node (or map element) ran since the run was last
    /// retried, this one included: what its retry policy counts. Without a retry, its
    /// attempt.
    pub fn attempts_since_retry(&self, task: &Task) -> u32 {
        if self.retried_from.is_empty() {
            return task.attempt;
        }
        let before = self.retried_from.get(&(task.node, task.item)).copied().unwrap_or(0);
        task.attempt.saturating_sub(before)
    }

    fn id(&self, node: &str) -> Result<NodeId, Rejected> {
        self.graph
            .id(node)
            .ok_or_else(|| Rejected::Inconsistent(format!("node '{node}' is not in graph '{}'", self.graph.name())))
    }

    /// The steps the body of `node` (element `item`) recorded in its attempts so far, in
    /// the order recorded.
    pub fn recorded(&self, node: NodeId, item: Option<u32>) -> &[RecordedStep] {
        if self.recorded.is_empty() {
            return &[];
        }
        self.recorded.get(&(node, item)).map_or(&[], Vec::as_slice)
    }

    /// Drops the steps recorded for a node that resolved. Most runs record none, and a
    /// node's completion is the scheduler's hot path: the map is not even hashed then.
    fn forget_steps(&mut self, id: NodeId, item: Option<u32>) {
        if !self.recorded.is_empty() {
            self.recorded.remove(&(id, item));
        }
    }

    /// Whether `task` is the outstanding attempt of its node (or map element): a task the
    /// journal has moved past (a delivery of an attempt already superseded, completed or
    /// interrupted) is not.
    pub fn is_current(&self, task: &Task) -> bool {
        !self.status.is_terminal() && self.accept_attempt(task.node, task.item, task.attempt).is_ok()
    }

    /// Accepts a result only for the outstanding attempt of the task.
    fn accept_attempt(&self, id: NodeId, item: Option<u32>, attempt: u32) -> Result<(), Rejected> {
        let current = match (&self.nodes[id], item) {
            (NodeState::Active { attempt }, None) => *attempt,
            (NodeState::Mapping(map), Some(i)) => match map.outputs.get(i as usize) {
                Some(None) => map.attempts[i as usize],
                Some(Some(_)) => return Err(Rejected::Stale),
                None => {
                    return Err(Rejected::Inconsistent(format!("map element {i} does not exist")));
                }
            },
            _ => return Err(Rejected::Stale),
        };
        if current == attempt { Ok(()) } else { Err(Rejected::Stale) }
    }

    fn complete(&mut self, id: NodeId, output: Value, effects: &mut Effects) {
        let labels = match self.graph.node(id).kind {
            NodeKind::Branch => output.labels(),
            _ => None,
        };
        self.nodes[id] = NodeState::Completed { output };
        self.resolved += 1;
        self.resolve(id, true, labels.as_deref(), effects);
    }

    /// Propagates the resolution of `from` to its successors, skipping those left with no
    /// active incoming edge. Iterative, so long chains of skips cannot overflow the stack.
    fn resolve(&mut self, from: NodeId, completed: bool, labels: Option<&[String]>, effects: &mut Effects) {
        let graph = Arc::clone(&self.graph);
        let mut work = vec![(from, completed, labels.map(<[String]>::to_vec))];
        while let Some((from, completed, labels)) = work.pop() {
            for &succ in graph.outgoing(from) {
                let edge = graph.incoming(succ).iter().find(|e| e.from == from).expect("edge exists");
                let counts = edge.when.is_some() || !graph.is_gated(succ);
                let active = counts
                    && completed
                    && match (&edge.when, &labels) {
                        (None, _) => true,
                        (Some(when), Some(got)) => when.iter().any(|w| got.contains(w)),
                        (Some(_), None) => false,
                    };
                self.activated[succ] |= active;
                self.unresolved[succ] -= 1;
                if self.unresolved[succ] > 0 {
                    continue;
                }
                if self.activated[succ] {
                    self.make_ready(succ, effects);
                } else {
                    self.nodes[succ] = NodeState::Skipped;
                    self.resolved += 1;
                    effects.derived.push(JournalEntry::NodeSkipped { node: graph.node(succ).name.as_str().into() });
                    work.push((succ, false, None));
                }
            }
        }
    }

    fn make_ready(&mut self, id: NodeId, effects: &mut Effects) {
        if self.graph.node(id).kind != NodeKind::Map {
            self.nodes[id] = NodeState::Active { attempt: 1 };
            self.in_flight += 1;
            effects.ready.push(Task { node: id, item: None, attempt: 1, delay: None });
            return;
        }
        let edge = self.graph.over_edge(id).expect("validated: map nodes have `over`");
        let source = self.graph.incoming(id)[edge].from;
        let list = match &self.nodes[source] {
            NodeState::Completed { output } => output.list_items().ok_or_else(|| output.type_name()),
            _ => Err("nothing (it was skipped)".to_owned()),
        };
        match list {
            Ok(items) if items.is_empty() => self.complete(id, Value::List(Arc::from([])), effects),
            Ok(items) => {
                let n = items.len();
                for i in 0..n {
                    effects.ready.push(Task { node: id, item: Some(i as u32), attempt: 1, delay: None });
                }
                self.in_flight += n;
                self.nodes[id] = NodeState::Mapping(Box::new(MapState {
                    items,
                    outputs: vec![None; n],
                    attempts: vec![1; n],
                    remaining: n,
                }));
            }
            Err(got) => {
                let node = &self.graph.node(id).name;
                let error = NodeError::permanent(
                    "InvalidMapInput",
                    format!(
                        "map '{node}' runs over '{}', which returned {got}, not a list",
                        self.graph.node(source).name
                    ),
                );
                effects.derived.push(JournalEntry::NodeFailed {
                    node: node.as_str().into(),
                    item: None,
                    attempt: 1,
                    error: error.clone(),
                    retry_in_ms: None,
                });
                let before = std::mem::replace(&mut self.nodes[id], NodeState::Failed { error: error.clone() });
                self.failed_at = Some(Box::new(FailedAt { node: id, before }));
                self.fail(RunFailure { node: node.as_str().into(), item: None, error }, effects);
            }
        }
    }

    fn fail(&mut self, failure: RunFailure, effects: &mut Effects) {
        if self.status.is_terminal() {
            return;
        }
        self.status = RunStatus::Failed;
        self.failure = Some(failure.clone());
        effects.ready.clear();
        effects.derived.push(JournalEntry::RunFinished {
            status: RunStatus::Failed,
            output: None,
            failure: Some(failure),
        });
    }

    /// Updates the run status after a change: completed when every node is resolved,
    /// waiting when nothing is outstanding but a person's answer.
    fn settle(&mut self, effects: &mut Effects) {
        if self.status.is_terminal() {
            return;
        }
        if self.resolved == self.nodes.len() {
            let output = self.run_output();
            self.status = RunStatus::Completed;
            self.output = Some(output.clone());
            effects.derived.push(JournalEntry::RunFinished {
                status: RunStatus::Completed,
                output: Some(output),
                failure: None,
            });
        } else if self.in_flight == 0 && matches!(self.status, RunStatus::Running) && self.waiting().next().is_some() {
            self.status = RunStatus::Waiting;
        }
    }

    fn run_output(&self) -> Value {
        let value_of = |id: NodeId| match &self.nodes[id] {
            NodeState::Completed { output } => output.clone(),
            _ => Value::null(),
        };
        if let Some(id) = self.graph.output_node() {
            return value_of(id);
        }
        let sinks: Vec<NodeId> = self.graph.sinks().collect();
        match sinks.as_slice() {
            [only] => value_of(*only),
            many => Value::Record(
                many.iter().map(|&id| (Arc::from(self.graph.node(id).name.as_str()), value_of(id))).collect(),
            ),
        }
    }
}

#[cfg(test)]
#[path = "state_tests/mod.rs"]
mod tests;
