//! The build-time rules of a graph, in one place: [`Graph::new`](super::Graph::new) applies
//! them all, [`NodeSpec::from_json`](super::NodeSpec::from_json) the ones a node can be held to
//! on its own (its policies), which is how the Python bindings report a bad
//! `retry=` or `timeout=` where the node is declared without a second copy of the rules.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::{NodeKind, NodeSpec};
use crate::error::GraphError;
use crate::limits;

/// A node's name is not empty, on one line and within the name limit.
pub(super) fn check_node_name(graph: &str, node: &str) -> Result<(), GraphError> {
    limits::check_name("node name", node).map_err(|reason| GraphError::InvalidNodeName {
        graph: graph.to_owned(),
        node: limits::shorten(node, limits::MAX_NAME_BYTES),
        reason,
    })
}

/// The rules on a node's own policies: its retry policy and its timeout.
pub(super) fn check_policies(graph: &str, node: &NodeSpec) -> Result<(), GraphError> {
    let invalid = |reason: String| GraphError::Invalid { graph: graph.to_owned(), node: node.name.clone(), reason };
    let retry = &node.retry;
    if retry.max_attempts == 0 {
        return Err(invalid("retry.max_attempts must be at least 1".into()));
    }
    if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
        return Err(invalid(format!("retry.multiplier must be a finite number >= 1, not {}", retry.multiplier)));
    }
    if !(0.0..=1.0).contains(&retry.jitter) {
        return Err(invalid(format!("retry.jitter must be within [0, 1], not {}", retry.jitter)));
    }
    if node.timeout == Some(Duration::ZERO) {
        return Err(invalid("timeout must be greater than zero".into()));
    }
    Ok(())
}

pub(super) fn validate_node(
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
    check_policies(graph, node)
}

/// Kahn's algorithm, keeping declaration order among nodes that are ready together so
/// that the order (and so the version) is deterministic. On a cycle, reports one.
pub(super) fn topological_order(
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
