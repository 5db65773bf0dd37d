//! The graph model: nodes, their dependencies, and build-time validation.
//!
//! A [`Graph`] is structure only (names, kinds, edges, policies). It is immutable once
//! built, serialisable, and identified by a version hash of that structure, so a worker
//! process can check that the graph it executes is the one a run was started with.
//! Node bodies live beside it in a [`Workflow`](crate::Workflow).
//!
//! - `spec`: what is declared ([`GraphSpec`], [`NodeSpec`], [`RetryPolicy`]) and its JSON
//!   form, read with messages that name the node ([`GraphSpec::from_json`]);
//! - `validate`: the build-time rules, the only copy of them (the Python bindings ask the
//!   core rather than checking again);
//! - this module: the built [`Graph`] and its queries, its version and its Mermaid drawing.

mod spec;
mod validate;

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::GraphError;
use crate::limits;

pub use spec::{Dependency, GraphSpec, NodeKind, NodeSpec, RetryPolicy};
use validate::{check_node_name, topological_order, validate_node};

/// Index of a node in [`Graph::nodes`]. Nodes are stored in a topological order.
pub type NodeId = usize;

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
            check_node_name(&name, &node.name)?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
