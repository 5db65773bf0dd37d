//! Errors: building a graph ([`GraphError`]) and driving runs ([`Error`]). A body's own
//! failure, [`NodeError`], is data recorded in the journal, not a Rust error: it lives in
//! [`crate::journal`] and is re-exported here.

pub use crate::journal::NodeError;
use crate::journal::RunStatus;

/// A graph definition that cannot be built ([`GraphSpec::build`](crate::GraphSpec::build),
/// [`Workflow::new`](crate::Workflow::new)). Every variant but `InvalidName` names the
/// graph, and every one that concerns a node names it; the `Display` message says what to
/// fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// The graph's name is empty or only whitespace, too long, or holds a control
    /// character ([`crate::limits::check_name`]).
    #[error("{reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it, quoting it (shortened).
        reason: String,
    },
    /// A node's name is empty or only whitespace, too long, or holds a control character
    /// (a line break, say).
    #[error("graph '{graph}': {reason}")]
    InvalidNodeName {
        /// The graph's name.
        graph: String,
        /// The name given.
        node: String,
        /// What is wrong with it, quoting it (shortened).
        reason: String,
    },
    /// Two nodes have the same name.
    #[error("graph '{graph}': node '{node}' is defined twice")]
    DuplicateNode {
        /// The graph's name.
        graph: String,
        /// The repeated name.
        node: String,
    },
    /// A node depends on a name that is no node of the graph (and the edge names no
    /// parameter; see `UnresolvedParameter`). Also returned by
    /// [`Workflow::new`](crate::Workflow::new) for a body keyed by an unknown name, with
    /// that name in both `node` and `dependency`.
    #[error("graph '{graph}': node '{node}' depends on '{dependency}', which is not a node of the graph")]
    UnknownDependency {
        /// The graph's name.
        graph: String,
        /// The node whose dependency is unknown.
        node: String,
        /// The name it depends on.
        dependency: String,
    },
    /// A node's edge carries a body parameter ([`Dependency::param`](crate::Dependency::param))
    /// whose dependency names no node: the parameter has no source.
    #[error(
        "graph '{graph}': parameter '{param}' of node '{node}' is not provided: no node is called \
         '{param}'. Add that node, give the parameter a default, or map it to a node explicitly"
    )]
    UnresolvedParameter {
        /// The graph's name.
        graph: String,
        /// The node whose parameter is unresolved.
        node: String,
        /// The parameter's name.
        param: String,
    },
    /// A node lists the same dependency twice.
    #[error("graph '{graph}': node '{node}' lists '{dependency}' twice among its dependencies")]
    DuplicateDependency {
        /// The graph's name.
        graph: String,
        /// The node with the repeated dependency.
        node: String,
        /// The dependency listed twice.
        dependency: String,
    },
    /// An edge has labels ([`Dependency::when`](crate::Dependency::when)) but does not come
    /// out of a branch node.
    #[error("graph '{graph}': node '{node}' has a labelled edge from '{dependency}', which is not a branch")]
    LabelOnPlainEdge {
        /// The graph's name.
        graph: String,
        /// The node the edge goes to.
        node: String,
        /// The node the edge comes from, which is not a branch.
        dependency: String,
    },
    /// The dependencies form a cycle (a node depending on itself included).
    #[error("graph '{graph}' has a cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The graph's name.
        graph: String,
        /// The node names along one cycle, in edge direction; the first name is repeated
        /// at the end.
        cycle: Vec<String>,
    },
    /// [`GraphSpec::output`](crate::GraphSpec::output) names no node of the graph.
    #[error("graph '{graph}': the output node '{node}' is not a node of the graph")]
    UnknownOutput {
        /// The graph's name.
        graph: String,
        /// The output name given.
        node: String,
    },
    /// A graph spec's JSON is not a graph's: not an object with a name and a list of
    /// nodes, or a node without a name ([`GraphSpec::from_json`](crate::GraphSpec::from_json)).
    #[error("the graph spec cannot be read: {reason}")]
    InvalidSpec {
        /// What is wrong, naming the graph and the node's position where known.
        reason: String,
    },
    /// Any other problem with one node: a map node without a valid `over`, labels on a
    /// node that is not a branch, a label outside a branch's declared ones, an edge with
    /// an empty label list, an invalid retry policy or a zero timeout, a node without a
    /// body, a part of its JSON that cannot be read. `reason` says which.
    #[error("graph '{graph}': node '{node}': {reason}")]
    Invalid {
        /// The graph's name.
        graph: String,
        /// The node at fault.
        node: String,
        /// What is wrong, as a sentence for people.
        reason: String,
    },
}

/// What went wrong driving a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A graph cannot be built.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A stored run belongs to a graph this process has no workflow for (a worker hands
    /// such work back for another worker), or whose structure the store does not record
    /// (`version` then says which version was looked for).
    #[error("no graph named '{name}'{} is registered", version.as_ref().map(|v| format!(" at version {v}")).unwrap_or_default())]
    UnknownGraph {
        /// The graph's name, as the run records it.
        name: String,
        /// The version looked for, when one was.
        version: Option<String>,
    },
    /// No run has this id: the engine does not hold it in memory and, where the operation
    /// looks there, the store does not know it either. An engine keeps at most
    /// [`EngineConfig::retain_finished`](crate::EngineConfig::retain_finished) finished
    /// runs in memory; without a store, older ones are gone.
    #[error("run '{run_id}' not found")]
    RunNotFound {
        /// The id asked for.
        run_id: String,
    },
    /// A run with this id exists for another graph, or another version of it: run ids
    /// are unique across graphs.
    #[error("run '{run_id}' exists with graph '{existing}', not '{requested}': run ids must be unique")]
    RunIdConflict {
        /// The id asked for.
        run_id: String,
        /// The existing run's graph, as `name@version`.
        existing: String,
        /// The graph asked for, as `name@version`.
        requested: String,
    },
    /// The operation does not apply to the run in its current status: resuming a run that
    /// waits for nobody, cancelling a completed run, recording a step for an attempt that
    /// is no longer current.
    #[error("run '{run_id}' is {status}; {action} needs a run that is {expected}")]
    InvalidRunState {
        /// The run's id.
        run_id: String,
        /// The run's status when the operation was refused.
        status: RunStatus,
        /// The operation, such as `resume` or `cancel`.
        action: &'static str,
        /// What the operation needs, in words.
        expected: &'static str,
    },
    /// A resume named a node the run is not waiting at.
    #[error("run '{run_id}' is waiting at {waiting:?}, not at '{node}'")]
    NotWaitingAt {
        /// The run's id.
        run_id: String,
        /// The node named.
        node: String,
        /// The nodes the run is waiting at.
        waiting: Vec<String>,
    },
    /// A resume named no node, and the run waits at more than one.
    #[error("run '{run_id}' is waiting at several nodes ({waiting:?}); say which one the value answers")]
    AmbiguousResume {
        /// The run's id.
        run_id: String,
        /// The nodes the run is waiting at.
        waiting: Vec<String>,
    },
    /// A value given for the run cannot be used: an empty run id, or (in a durable
    /// engine or store) an input, output, answer or recorded step that has no JSON form.
    #[error("run '{run_id}': {reason}")]
    InvalidInput {
        /// The run's id (the empty id itself, for an empty id).
        run_id: String,
        /// What is wrong, for people.
        reason: String,
    },
    /// A stored run was started with another version of its graph than the one this
    /// process has. Completing it needs a process with that version.
    #[error("run '{run_id}' graph '{graph}' version {expected} is not the version {found} registered here")]
    VersionMismatch {
        /// The run's id.
        run_id: String,
        /// The graph's name.
        graph: String,
        /// The version the run was started with ([`Graph::version`](crate::Graph::version)).
        expected: String,
        /// The version this process has.
        found: String,
    },
    /// A stored journal cannot be read, or cannot be replayed over its graph: an entry
    /// that does not decode, a journal that does not start with `RunStarted`, entries
    /// naming nodes or attempts the graph cannot have.
    #[error("run '{run_id}': the journal is inconsistent with graph '{graph}': {reason}")]
    CorruptJournal {
        /// The run's id.
        run_id: String,
        /// The graph's name.
        graph: String,
        /// What does not fit, for people.
        reason: String,
    },
    /// The store failed in a way waiting will not fix (a bad file, a refused write, an
    /// operation that needs a store when the engine has none). The message says what.
    #[error("store: {0}")]
    Store(String),
    /// A write is larger than the store accepts in one write (a NATS server's
    /// `max_payload`, 1 MB by default; Redis's 512 MiB bulk strings; SQLite's 1 GB strings).
    /// Nothing was written. The engine turns it into what it is about: a node whose output
    /// (or a person's answer, a recorded step, a run input) is too large fails, or is
    /// refused, with a permanent error naming the limit.
    #[error("{what} is {bytes} bytes, over the store's limit of {limit} bytes per write ({store})")]
    ValueTooLarge {
        /// What was written, for people ("the step of run 'r'").
        what: String,
        /// Its size, in bytes of JSON.
        bytes: usize,
        /// The most the store takes.
        limit: usize,
        /// Which store, and which setting sets the limit.
        store: String,
    },
    /// The store's server cannot be reached, is restarting, or did not answer in time. What
    /// was asked may or may not have been done. A durable engine waits for the store to
    /// come back (up to its `outage_timeout`) rather than fail the run.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another writer appended to the run's journal first: the writer's view is stale.
    #[error(
        "run '{run_id}': the journal holds {found} entries where this writer expected {expected}; another process wrote to the run"
    )]
    Conflict {
        /// The run's id.
        run_id: String,
        /// How many entries the writer expected the journal to hold.
        expected: u64,
        /// How many it holds.
        found: u64,
    },
    /// The run did not settle within the time a caller was willing to wait
    /// ([`RunHandle::wait`](crate::RunHandle::wait)). The run itself goes on.
    #[error("timed out after {seconds:.3}s waiting for run '{run_id}'{detail}")]
    WaitTimeout {
        /// The run's id.
        run_id: String,
        /// How long the caller waited, in seconds.
        seconds: f64,
        /// Why nothing happened, when that is known (empty otherwise): for a run submitted
        /// for workers, that no worker registered its graph's version.
        detail: String,
    },
    /// An attempt of the run was given up by this process (a Python body raised
    /// `KeyboardInterrupt` or `SystemExit`, see [`NodeError::abandoned`]): nothing was
    /// recorded for it, and the run stays where it was, to be resumed
    /// ([`Engine::recover`](crate::Engine::recover), or a worker in a durable context).
    #[error("run '{run_id}': the attempt of node '{node}' was given up ({kind}{}); the run can be resumed", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Interrupted {
        /// The run's id.
        run_id: String,
        /// The node whose attempt was given up.
        node: String,
        /// Why: `KeyboardInterrupt` or `SystemExit`.
        kind: String,
        /// The exception's message (for `SystemExit`, its code).
        message: String,
    },
    /// The engine or run a [`NodeHandle`](crate::NodeHandle) refers to is gone (every
    /// handle on the engine was dropped, or the engine let go of the run).
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine was closed ([`Engine::close`](crate::Engine::close)): it takes no more
    /// work and answers no more questions.
    #[error("this engine is closed: open a new one to go on")]
    Closed,
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
