//! The graph model: nodes, their dependencies, and build-time validation.
//!
//! A [`Graph`] is structure only (names, kinds, edges, policies). It is immutable once
//! built, serialisable, and identified by a version hash of that structure, so a worker
//! process can check that the graph it executes is the one a run was started with.
//! Node bodies live beside it in a [`Workflow`](crate::Workflow).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::GraphError;
use crate::limits;

/// Index of a node in [`Graph::nodes`]. Nodes are stored in a topological order.
pub type NodeId = usize;

/// What a node does; it decides how the scheduler treats the node's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A plain function.
    Task,
    /// A call to a language model.
    Llm,
    /// A tool call.
    Tool,
    /// Returns one label (or several); only successors on edges with those labels run.
    Branch,
    /// Runs its body once per element of a list produced upstream.
    Map,
    /// Pauses the run until a person answers with `resume`.
    Human,
}

impl NodeKind {
    /// The name used in serialised graphs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Task => "task",
            NodeKind::Llm => "llm",
            NodeKind::Tool => "tool",
            NodeKind::Branch => "branch",
            NodeKind::Map => "map",
            NodeKind::Human => "human",
        }
    }
}

/// One incoming edge of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The node the edge comes from.
    pub node: String,
    /// The parameter of the body that receives the dependency's output, if any. Kept so
    /// that an unresolvable parameter is reported as such, not as an unknown node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// For an edge out of a branch: the labels that activate it. `None` means the edge
    /// is active whenever the dependency completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Vec<String>>,
}

impl Dependency {
    /// An edge whose output is passed to the body.
    pub fn on(node: impl Into<String>) -> Self {
        Dependency { node: node.into(), param: None, when: None }
    }

    /// Records the body parameter that receives this dependency.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Makes the edge conditional on the dependency (a branch) returning one of `labels`.
    pub fn when<I, S>(mut self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when = Some(labels.into_iter().map(Into::into).collect());
        self
    }
}

/// How a failed node is retried.
///
/// Attempt `n` (counting from 1) that fails with a retryable error is followed by
/// attempt `n + 1` after `initial_backoff * multiplier^(n-1)`, capped at `max_backoff`,
/// with up to `jitter` (a fraction) of random spread so that many runs failing together
/// do not retry in lockstep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts, the first included. `1` means no retry.
    pub max_attempts: u32,
    /// The delay after the first failed attempt. Serialised in milliseconds.
    #[serde(with = "duration_ms")]
    pub initial_backoff: Duration,
    /// What each further delay is multiplied by; a finite number `>= 1`.
    pub multiplier: f64,
    /// The longest delay, before jitter. Serialised in milliseconds.
    #[serde(with = "duration_ms")]
    pub max_backoff: Duration,
    /// Fraction of the delay added or removed at random, in `[0, 1]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// One attempt: nodes do not retry unless asked to.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(30),
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt that follows failed attempt `attempt`, or `None` if
    /// the policy allows no further attempt (`attempt >= max_attempts`). Jitter makes the
    /// delay random within `jitter` of its nominal value; it is never negative.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ferroflow::RetryPolicy;
    ///
    /// let policy = RetryPolicy {
    ///     max_attempts: 3,
    ///     initial_backoff: Duration::from_millis(100),
    ///     multiplier: 2.0,
    ///     max_backoff: Duration::from_secs(1),
    ///     jitter: 0.0,
    /// };
    /// assert_eq!(policy.delay_after(1), Some(Duration::from_millis(100)));
    /// assert_eq!(policy.delay_after(2), Some(Duration::from_millis(200)));
    /// assert_eq!(policy.delay_after(3), None); // the third attempt was the last
    /// ```
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let spread = capped * self.jitter * (fastrand::f64() * 2.0 - 1.0);
        Some(Duration::from_secs_f64((capped + spread).max(0.0)))
    }
}

/// A node as declared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Unique within the graph; not empty, and on one line.
    pub name: String,
    /// What the node does.
    pub kind: NodeKind,
    /// Incoming edges, in the order the body receives their outputs.
    #[serde(default)]
    pub deps: Vec<Dependency>,
    /// For a map node: the dependency whose output (a list) it runs over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<String>,
    /// For a branch: every label it may return. Optional; when given, a label that no
    /// edge uses is a valid way to run none of the labelled successors, and an edge with
    /// a label outside the list is a build error (a typo, usually).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// How failed attempts are retried; by default they are not.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Limit on one attempt; an attempt that exceeds it fails with a retryable error of
    /// kind `Timeout`. `None` (the default) sets no limit. Serialised in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_duration_ms")]
    pub timeout: Option<Duration>,
}

impl NodeSpec {
    /// A node of `kind` with no dependencies and the default policies.
    pub fn new(name: impl Into<String>, kind: NodeKind) -> Self {
        NodeSpec {
            name: name.into(),
            kind,
            deps: Vec::new(),
            over: None,
            labels: None,
            retry: RetryPolicy::default(),
            timeout: None,
        }
    }

    /// Adds an incoming edge. The body receives the dependencies' outputs in the order
    /// they are added.
    pub fn dep(mut self, dep: Dependency) -> Self {
        self.deps.push(dep);
        self
    }

    /// For a map node: runs the body once per element of the list `node` returns. `node`
    /// must also be one of the node's dependencies ([`NodeSpec::dep`]).
    pub fn over(mut self, node: impl Into<String>) -> Self {
        self.over = Some(node.into());
        self
    }

    /// Declares the labels a branch may return.
    pub fn labels<I, S>(mut self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.labels = Some(labels.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Limits each attempt to `timeout`, which must be greater than zero (checked when the
    /// graph is built).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// An incoming edge resolved to node ids.
#[derive(Clone, Debug)]
pub struct InEdge {
    /// The node the edge comes from.
    pub from: NodeId,
    /// The labels that activate the edge, as in [`Dependency::when`].
    pub when: Option<Vec<String>>,
}

/// A validated, immutable graph.
#[derive(Clone, Debug)]
pub struct Graph {
    name: String,
    version: String,
    nodes: Vec<NodeSpec>,
    index: HashMap<String, NodeId>,
    incoming: Vec<Vec<InEdge>>,
    outgoing: Vec<Vec<NodeId>>,
    /// For a map node, the position in `incoming` of the edge it runs over.
    over: Vec<Option<usize>>,
    /// Whether a node has labelled incoming edges, which then alone decide if it runs.
    gated: Vec<bool>,
    output: Option<NodeId>,
}

/// The serialisable form of a graph: what [`GraphSpec::build`] validates into a [`Graph`].
///
/// ```
/// use ferroflow::{Dependency, GraphSpec, NodeKind, NodeSpec};
///
/// let mut spec = GraphSpec::new("support");
/// spec.nodes = vec![
///     NodeSpec::new("classify", NodeKind::Branch).labels(["refund", "question"]),
///     NodeSpec::new("refund", NodeKind::Tool).dep(Dependency::on("classify").when(["refund"])),
///     NodeSpec::new("answer", NodeKind::Llm).dep(Dependency::on("classify").when(["question"])),
/// ];
/// let graph = spec.build()?;
/// assert_eq!(graph.nodes().len(), 3);
/// assert_eq!(graph.id("classify"), Some(0));
/// assert_eq!(graph.sinks().count(), 2);
///
/// // Validation names the graph and the node at fault.
/// let mut broken = GraphSpec::new("broken");
/// broken.nodes = vec![NodeSpec::new("a", NodeKind::Task).dep(Dependency::on("missing"))];
/// let error = broken.build().unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "graph 'broken': node 'a' depends on 'missing', which is not a node of the graph"
/// );
/// # Ok::<(), ferroflow::GraphError>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphSpec {
    /// The graph's name; not empty. Runs and stores know a graph by it.
    pub name: String,
    /// The nodes, in any order (the graph stores them in a topological order).
    pub nodes: Vec<NodeSpec>,
    /// The node whose output is the run's output. Without one, a graph with a single
    /// sink returns that sink's output, and one with several returns an object keyed by
    /// sink name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl GraphSpec {
    /// An empty spec named `name`, without an explicit output node.
    pub fn new(name: impl Into<String>) -> Self {
        GraphSpec { name: name.into(), nodes: Vec::new(), output: None }
    }

    /// Validates the spec and builds the graph; the same as [`Graph::new`].
    ///
    /// # Errors
    ///
    /// The first problem found, as a [`GraphError`] naming the graph and the node.
    pub fn build(self) -> Result<Graph, GraphError> {
        Graph::new(self)
    }
}

impl Graph {
    /// Validates `spec`: names unique and non-empty, every dependency known, labels only on
    /// edges out of branches, map nodes over one of their dependencies, no cycle.
    ///
    /// # Errors
    ///
    /// The first problem found, as a [`GraphError`] naming the graph and the node.
    pub fn new(spec: GraphSpec) -> Result<Graph, GraphError> {
        let GraphSpec { name, nodes, output } = spec;
        if let Err(reason) = limits::check_name("graph name", &name) {
            return Err(GraphError::InvalidName { name: limits::shorten(&name, limits::MAX_NAME_BYTES), reason });
        }
        let mut declared: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            if let Err(reason) = limits::check_name("node name", &node.name) {
                let node = limits::shorten(&node.name, limits::MAX_NAME_BYTES);
                return Err(GraphError::InvalidNodeName { graph: name.clone(), node, reason });
            }
            if declared.insert(&node.name, i).is_some() {
                return Err(GraphError::DuplicateNode { graph: name.clone(), node: node.name.clone() });
            }
        }
        for node in &nodes {
            validate_node(&name, node, &nodes, &declared)?;
        }
        let order = topological_order(&name, &nodes, &declared)?;

        // Re-index in topological order so that ids grow along every edge.
        let mut position = vec![0; nodes.len()];
        for (new, &old) in order.iter().enumerate() {
            position[old] = new;
        }
        let mut slots: Vec<Option<NodeSpec>> = nodes.into_iter().map(Some).collect();
        let nodes: Vec<NodeSpec> = order.iter().map(|&old| slots[old].take().expect("each node once")).collect();
        let index: HashMap<String, NodeId> = nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();

        let mut incoming = Vec::with_capacity(nodes.len());
        let mut outgoing = vec![Vec::new(); nodes.len()];
        let mut over = Vec::with_capacity(nodes.len());
        for (id, node) in nodes.iter().enumerate() {
            let edges: Vec<InEdge> =
                node.deps.iter().map(|d| InEdge { from: index[&d.node], when: d.when.clone() }).collect();
            for edge in &edges {
                if !outgoing[edge.from].contains(&id) {
                    outgoing[edge.from].push(id);
                }
            }
            over.push(node.over.as_ref().map(|o| node.deps.iter().position(|d| &d.node == o).expect("validated")));
            incoming.push(edges);
        }
        let output = match output {
            Some(out) => Some(
                *index.get(&out).ok_or_else(|| GraphError::UnknownOutput { graph: name.clone(), node: out.clone() })?,
            ),
            None => None,
        };
        let version = version_of(&name, &nodes, output.map(|o| nodes[o].name.as_str()));
        let gated = incoming.iter().map(|edges: &Vec<InEdge>| edges.iter().any(|e| e.when.is_some())).collect();
        Ok(Graph { name, version, nodes, index, incoming, outgoing, over, gated, output })
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hex digest of the graph's structure: two graphs with the same version have the
    /// same nodes, edges and policies.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Nodes in topological order.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The node with id `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not a node of the graph (`id >= nodes().len()`); so do the other
    /// methods that take a [`NodeId`].
    pub fn node(&self, id: NodeId) -> &NodeSpec {
        &self.nodes[id]
    }

    /// The id of the node named `name`, if the graph has one.
    pub fn id(&self, name: &str) -> Option<NodeId> {
        self.index.get(name).copied()
    }

    /// The node's incoming edges, in the order of its dependencies.
    pub fn incoming(&self, id: NodeId) -> &[InEdge] {
        &self.incoming[id]
    }

    /// The nodes that depend on the node, each once.
    pub fn outgoing(&self, id: NodeId) -> &[NodeId] {
        &self.outgoing[id]
    }

    /// For a map node, the index in [`Graph::incoming`] of the edge it runs over.
    pub fn over_edge(&self, id: NodeId) -> Option<usize> {
        self.over[id]
    }

    /// Whether the node has labelled incoming edges: if so, it runs only when one of them is
    /// active, whatever its plain edges say.
    pub fn is_gated(&self, id: NodeId) -> bool {
        self.gated[id]
    }

    /// The explicit output node, if one was named.
    pub fn output_node(&self) -> Option<NodeId> {
        self.output
    }

    /// Nodes nothing depends on.
    pub fn sinks(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len()).filter(|&id| self.outgoing[id].is_empty())
    }

    /// The serialisable structure.
    pub fn spec(&self) -> GraphSpec {
        GraphSpec {
            name: self.name.clone(),
            nodes: self.nodes.clone(),
            output: self.output.map(|o| self.nodes[o].name.clone()),
        }
    }

    /// The graph as a Mermaid flowchart: labelled edges out of branches, map and human
    /// nodes drawn in their own shapes.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        for (id, node) in self.nodes.iter().enumerate() {
            let label = format!("{}<br/><i>{}</i>", escape_mermaid(&node.name), node.kind.as_str());
            let shape = match node.kind {
                NodeKind::Branch => format!("{{\"{label}\"}}"),
                NodeKind::Map => format!("[[\"{label}\"]]"),
                NodeKind::Human => format!("([\"{label}\"])"),
                _ => format!("[\"{label}\"]"),
            };
            let _ = writeln!(out, "    n{id}{shape}");
        }
        for (id, edges) in self.incoming.iter().enumerate() {
            for edge in edges {
                match &edge.when {
                    Some(labels) => {
                        let _ = writeln!(
                            out,
                            "    n{} -- \"{}\" --> n{id}",
                            edge.from,
                            escape_mermaid(&labels.join(" | "))
                        );
                    }
                    None => {
                        let _ = writeln!(out, "    n{} --> n{id}", edge.from);
                    }
                }
            }
        }
        out
    }
}

fn escape_mermaid(text: &str) -> String {
    text.replace('"', "#quot;")
}

fn validate_node(
    graph: &str,
    node: &NodeSpec,
    nodes: &[NodeSpec],
    declared: &HashMap<&str, usize>,
) -> Result<(), GraphError> {
    let mut seen = BTreeSet::new();
    for dep in &node.deps {
        let Some(&source) = declared.get(dep.node.as_str()) else {
            return Err(match &dep.param {
                Some(param) => GraphError::UnresolvedParameter {
                    graph: graph.to_owned(),
                    node: node.name.clone(),
                    param: param.clone(),
                },
                None => GraphError::UnknownDependency {
                    graph: graph.to_owned(),
                    node: node.name.clone(),
                    dependency: dep.node.clone(),
                },
            });
        };
        if !seen.insert(dep.node.as_str()) {
            return Err(GraphError::DuplicateDependency {
                graph: graph.to_owned(),
                node: node.name.clone(),
                dependency: dep.node.clone(),
            });
        }
        if let Some(labels) = &dep.when {
            if nodes[source].kind != NodeKind::Branch {
                return Err(GraphError::LabelOnPlainEdge {
                    graph: graph.to_owned(),
                    node: node.name.clone(),
                    dependency: dep.node.clone(),
                });
            }
            if labels.is_empty() {
                return Err(GraphError::Invalid {
                    graph: graph.to_owned(),
                    node: node.name.clone(),
                    reason: format!("the edge from branch '{}' lists no label", dep.node),
                });
            }
            if let Some(declared) = &nodes[source].labels {
                if let Some(unknown) = labels.iter().find(|l| !declared.contains(l)) {
                    return Err(GraphError::Invalid {
                        graph: graph.to_owned(),
                        node: node.name.clone(),
                        reason: format!(
                            "its edge from branch '{}' is labelled '{unknown}', which is not among the branch's labels {declared:?}",
                            dep.node
                        ),
                    });
                }
            }
        }
    }
    if node.labels.is_some() && node.kind != NodeKind::Branch {
        return Err(GraphError::Invalid {
            graph: graph.to_owned(),
            node: node.name.clone(),
            reason: "only branch nodes declare labels".into(),
        });
    }
    match (node.kind, &node.over) {
        (NodeKind::Map, None) => {
            return Err(GraphError::Invalid {
                graph: graph.to_owned(),
                node: node.name.clone(),
                reason: "a map node needs `over`: the dependency whose list it runs over".into(),
            });
        }
        (NodeKind::Map, Some(over)) if !node.deps.iter().any(|d| &d.node == over) => {
            return Err(GraphError::Invalid {
                graph: graph.to_owned(),
                node: node.name.clone(),
                reason: format!("it maps over '{over}', which is not one of its dependencies"),
            });
        }
        (kind, Some(_)) if kind != NodeKind::Map => {
            return Err(GraphError::Invalid {
                graph: graph.to_owned(),
                node: node.name.clone(),
                reason: "only map nodes take `over`".into(),
            });
        }
        _ => {}
    }
    if node.retry.max_attempts == 0 {
        return Err(GraphError::Invalid {
            graph: graph.to_owned(),
            node: node.name.clone(),
            reason: "retry.max_attempts must be at least 1".into(),
        });
    }
    let retry = &node.retry;
    let valid_retry = retry.multiplier >= 1.0 && retry.multiplier.is_finite() && (0.0..=1.0).contains(&retry.jitter);
    if !valid_retry {
        return Err(GraphError::Invalid {
            graph: graph.to_owned(),
            node: node.name.clone(),
            reason: "retry.multiplier must be a finite number >= 1 and retry.jitter within [0, 1]".into(),
        });
    }
    if node.timeout == Some(Duration::ZERO) {
        return Err(GraphError::Invalid {
            graph: graph.to_owned(),
            node: node.name.clone(),
            reason: "timeout must be greater than zero".into(),
        });
    }
    Ok(())
}

/// Kahn's algorithm, keeping declaration order among nodes that are ready together so
/// that the order (and so the version) is deterministic. On a cycle, reports one.
fn topological_order(
    graph: &str,
    nodes: &[NodeSpec],
    declared: &HashMap<&str, usize>,
) -> Result<Vec<usize>, GraphError> {
    let mut indegree: Vec<usize> = nodes.iter().map(|n| n.deps.len()).collect();
    let mut successors = vec![Vec::new(); nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        for dep in &node.deps {
            successors[declared[dep.node.as_str()]].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &s in &successors[next] {
            indegree[s] -= 1;
            if indegree[s] == 0 {
                ready.insert(s);
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    // Walk dependencies from a node left over until one repeats: that is a cycle.
    let start = (0..nodes.len()).find(|&i| indegree[i] > 0).expect("a node is left");
    let mut path = vec![start];
    let mut on_path = HashMap::from([(start, 0usize)]);
    let mut current = start;
    loop {
        let next = nodes[current]
            .deps
            .iter()
            .map(|d| declared[d.node.as_str()])
            .find(|&d| indegree[d] > 0)
            .expect("a node in a cycle has a dependency in it");
        if let Some(&at) = on_path.get(&next) {
            let mut cycle: Vec<String> = path[at..].iter().rev().map(|&i| nodes[i].name.clone()).collect();
            cycle.push(cycle[0].clone());
            return Err(GraphError::Cycle { graph: graph.to_owned(), cycle });
        }
        on_path.insert(next, path.len());
        path.push(next);
        current = next;
    }
}

fn version_of(name: &str, nodes: &[NodeSpec], output: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        name: &'a str,
        nodes: &'a [NodeSpec],
        output: Option<&'a str>,
    }
    let bytes = serde_json::to_vec(&Canonical { name, nodes, output }).expect("graph specs serialise");
    let digest = Sha256::digest(bytes);
    digest[..8].iter().fold(String::with_capacity(16), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|ms| ms.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, deps: &[&str]) -> NodeSpec {
        deps.iter().fold(NodeSpec::new(name, NodeKind::Task), |n, d| n.dep(Dependency::on(*d)))
    }

    fn graph(nodes: Vec<NodeSpec>) -> Result<Graph, GraphError> {
        GraphSpec { name: "g".into(), nodes, output: None }.build()
    }

    #[test]
    fn nodes_are_ordered_topologically_whatever_the_declaration_order() {
        let g = graph(vec![task("c", &["b"]), task("b", &["a"]), task("a", &[])]).unwrap();
        let names: Vec<_> = g.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(g.outgoing(0), &[1]);
    }

    #[test]
    fn a_cycle_is_reported_with_its_path() {
        let err = graph(vec![task("a", &["c"]), task("b", &["a"]), task("c", &["b"]), task("d", &[])]).unwrap_err();
        match err {
            GraphError::Cycle { cycle, .. } => {
                assert_eq!(cycle.first(), cycle.last());
                assert_eq!(cycle.len(), 4);
            }
            other => panic!("expected a cycle, got {other:?}"),
        }
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        assert!(matches!(graph(vec![task("a", &["a"])]), Err(GraphError::Cycle { .. })));
    }

    #[test]
    fn unknown_and_duplicate_names_name_the_node() {
        let err = graph(vec![task("a", &["nope"])]).unwrap_err();
        assert!(
            matches!(&err, GraphError::UnknownDependency { node, dependency, .. } if node == "a" && dependency == "nope")
        );
        assert!(err.to_string().contains("'a'"), "{err}");
        let err = graph(vec![task("a", &[]), task("a", &[])]).unwrap_err();
        assert!(matches!(err, GraphError::DuplicateNode { node, .. } if node == "a"));
        let err = graph(vec![NodeSpec::new("b", NodeKind::Task).dep(Dependency::on("x").param("x"))]).unwrap_err();
        assert!(matches!(err, GraphError::UnresolvedParameter { node, param, .. } if node == "b" && param == "x"));
    }

    #[test]
    fn labels_only_on_edges_out_of_branches() {
        let err = graph(vec![task("a", &[]), NodeSpec::new("b", NodeKind::Task).dep(Dependency::on("a").when(["x"]))])
            .unwrap_err();
        assert!(matches!(err, GraphError::LabelOnPlainEdge { .. }));
    }

    #[test]
    fn map_nodes_must_run_over_a_dependency() {
        let err = graph(vec![task("a", &[]), NodeSpec::new("m", NodeKind::Map).dep(Dependency::on("a"))]).unwrap_err();
        assert!(matches!(err, GraphError::Invalid { node, .. } if node == "m"));
        let ok = graph(vec![task("a", &[]), NodeSpec::new("m", NodeKind::Map).dep(Dependency::on("a")).over("a")]);
        assert!(ok.is_ok());
    }

    #[test]
    fn version_follows_structure_not_declaration_order() {
        let a = graph(vec![task("a", &[]), task("b", &["a"])]).unwrap();
        let b = graph(vec![task("b", &["a"]), task("a", &[])]).unwrap();
        let c = graph(vec![task("a", &[]), task("b", &[])]).unwrap();
        assert_eq!(a.version(), b.version());
        assert_ne!(a.version(), c.version());
    }

    #[test]
    fn spec_round_trips_through_json() {
        let g = graph(vec![task("a", &[]), task("b", &["a"]).timeout(Duration::from_secs(2))]).unwrap();
        let json = serde_json::to_string(&g.spec()).unwrap();
        let back: GraphSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.build().unwrap().version(), g.version());
    }

    #[test]
    fn retry_delays_grow_and_stop_at_the_last_attempt() {
        let policy = RetryPolicy { max_attempts: 4, jitter: 0.0, ..RetryPolicy::default() };
        assert_eq!(policy.delay_after(1), Some(Duration::from_millis(100)));
        assert_eq!(policy.delay_after(2), Some(Duration::from_millis(200)));
        assert_eq!(policy.delay_after(3), Some(Duration::from_millis(400)));
        assert_eq!(policy.delay_after(4), None);
        let jittered = RetryPolicy { max_attempts: 2, jitter: 0.5, ..RetryPolicy::default() };
        for _ in 0..100 {
            let d = jittered.delay_after(1).unwrap();
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150), "{d:?}");
        }
    }

    #[test]
    fn mermaid_draws_labelled_edges() {
        let g = graph(vec![
            NodeSpec::new("route", NodeKind::Branch),
            NodeSpec::new("refund", NodeKind::Task).dep(Dependency::on("route").when(["refund"])),
        ])
        .unwrap();
        let m = g.to_mermaid();
        assert!(m.starts_with("flowchart TD"));
        assert!(m.contains("n0 -- \"refund\" --> n1"), "{m}");
    }
}
