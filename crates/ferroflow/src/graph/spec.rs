//! What a graph is declared as: [`GraphSpec`] and its [`NodeSpec`]s with their edges and
//! policies, and their JSON form (the stored graph record, the Python bindings' and the
//! server's input).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Graph, validate};
use crate::error::GraphError;

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
///
/// In JSON the delays are milliseconds; a number that is not a whole, non-negative count
/// of them (or not a number) is refused with the field's name, and so is an attempt count
/// that is not a whole number `>= 0`. The remaining rules (at least one attempt, the
/// multiplier and jitter ranges) are the graph's, checked when it is built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RetryWire")]
pub struct RetryPolicy {
    /// Total attempts, the first included. `1` means no retry.
    pub max_attempts: u32,
    /// The delay after the first failed attempt. Serialised in milliseconds.
    #[serde(serialize_with = "duration_ms::serialize")]
    pub initial_backoff: Duration,
    /// What each further delay is multiplied by; a finite number `>= 1`.
    pub multiplier: f64,
    /// The longest delay, before jitter. Serialised in milliseconds.
    #[serde(serialize_with = "duration_ms::serialize")]
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

/// A [`RetryPolicy`] as JSON holds it, before its numbers are read.
#[derive(Deserialize)]
struct RetryWire {
    max_attempts: Value,
    initial_backoff: Value,
    multiplier: Value,
    max_backoff: Value,
    jitter: Value,
}

impl TryFrom<RetryWire> for RetryPolicy {
    type Error = String;

    fn try_from(wire: RetryWire) -> Result<Self, String> {
        let max_attempts = wire.max_attempts.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
            format!("retry.max_attempts must be a whole number from 1 to {}, not {}", u32::MAX, wire.max_attempts)
        })?;
        Ok(RetryPolicy {
            max_attempts,
            initial_backoff: duration_ms::read("retry.initial_backoff", &wire.initial_backoff)?,
            multiplier: number("retry.multiplier", &wire.multiplier)?,
            max_backoff: duration_ms::read("retry.max_backoff", &wire.max_backoff)?,
            jitter: number("retry.jitter", &wire.jitter)?,
        })
    }
}

/// A JSON number as an `f64`; what it may be is the graph's rule, checked at build.
fn number(what: &str, value: &Value) -> Result<f64, String> {
    value.as_f64().ok_or_else(|| format!("{what} must be a number, not {value}"))
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

    /// Reads a spec from its JSON form (what a [`GraphSpec`] serialises to). A node whose
    /// part cannot be read is named in the error, with the field at fault; the rules a
    /// readable spec must still meet are [`GraphSpec::build`]'s.
    ///
    /// ```
    /// use ferroflow::GraphSpec;
    ///
    /// let json = r#"{"name": "g", "nodes": [{"name": "flaky", "kind": "task",
    ///     "retry": {"max_attempts": 3, "initial_backoff": -5, "multiplier": 2,
    ///               "max_backoff": 1000, "jitter": 0}}]}"#;
    /// let error = GraphSpec::from_json(json).unwrap_err();
    /// assert_eq!(error.to_string(), "graph 'g': node 'flaky': retry.initial_backoff must not be negative, not -5 ms");
    /// ```
    ///
    /// # Errors
    ///
    /// [`GraphError::Invalid`] naming the node, or [`GraphError::InvalidSpec`] when the
    /// JSON is not a graph's at all.
    pub fn from_json(json: &str) -> Result<GraphSpec, GraphError> {
        #[derive(Deserialize)]
        struct Outline {
            name: String,
            nodes: Vec<Value>,
            #[serde(default)]
            output: Option<String>,
        }
        let outline: Outline =
            serde_json::from_str(json).map_err(|e| GraphError::InvalidSpec { reason: e.to_string() })?;
        let nodes = outline
            .nodes
            .into_iter()
            .enumerate()
            .map(|(i, node)| node_from_value(&outline.name, i, node))
            .collect::<Result<_, _>>()?;
        Ok(GraphSpec { name: outline.name, nodes, output: outline.output })
    }
}

impl NodeSpec {
    /// Reads one node of graph `graph` from its JSON form and checks its own policies: the
    /// retry policy and the timeout. This is how a binding
    /// reports a bad policy where the node is declared; [`GraphSpec::build`] checks the
    /// rest (edges, labels, cycles) once the graph is complete.
    ///
    /// # Errors
    ///
    /// As [`GraphSpec::from_json`], and the [`GraphError`] of the first rule broken.
    pub fn from_json(graph: &str, json: &str) -> Result<NodeSpec, GraphError> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| GraphError::InvalidSpec { reason: format!("graph '{graph}': a node: {e}") })?;
        let node = node_from_value(graph, 0, value)?;
        validate::check_policies(graph, &node)?;
        Ok(node)
    }
}

/// The node at `index` of graph `graph`, read from JSON, with errors naming it.
fn node_from_value(graph: &str, index: usize, value: Value) -> Result<NodeSpec, GraphError> {
    let name = value.get("name").and_then(Value::as_str).map(str::to_owned);
    serde_json::from_value(value).map_err(|e| match name {
        Some(node) => GraphError::Invalid { graph: graph.to_owned(), node, reason: e.to_string() },
        None => GraphError::InvalidSpec { reason: format!("graph '{graph}': node #{}: {e}", index + 1) },
    })
}

/// Durations as JSON holds them: whole milliseconds. Reading takes any non-negative number
/// and rounds it to the nearest millisecond (ties to even, as Python's `round`: the Python
/// bindings hand over seconds times 1,000). A positive timeout never rounds to zero.
mod duration_ms {
    use serde::Serializer;
    use serde_json::Value;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    /// `value` as a duration, or a message naming `what`.
    pub fn read(what: &str, value: &Value) -> Result<Duration, String> {
        if let Some(ms) = value.as_u64() {
            return Ok(Duration::from_millis(ms));
        }
        match value.as_f64() {
            Some(ms) if ms >= 0.0 && ms < u64::MAX as f64 => Ok(Duration::from_millis(ms.round_ties_even() as u64)),
            Some(ms) if ms < 0.0 => Err(format!("{what} must not be negative, not {ms} ms")),
            _ => Err(format!("{what} must be a number of milliseconds, not {value}")),
        }
    }
}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use serde_json::Value;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(ms) => {
                let timeout = super::duration_ms::read("timeout", &ms).map_err(de::Error::custom)?;
                let positive = ms.as_f64().is_some_and(|ms| ms > 0.0);
                Ok(Some(if timeout.is_zero() && positive { Duration::from_millis(1) } else { timeout }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_json(retry: &str, extra: &str) -> String {
        format!(r#"{{"name": "g", "nodes": [{{"name": "flaky", "kind": "task", "retry": {retry}{extra}}}]}}"#)
    }

    const RETRY: &str =
        r#"{"max_attempts": 3, "initial_backoff": 100, "multiplier": 2, "max_backoff": 1000, "jitter": 0.1}"#;

    fn error_of(json: &str) -> GraphError {
        GraphSpec::from_json(json).and_then(GraphSpec::build).unwrap_err()
    }

    #[test]
    fn a_spec_reads_back_what_it_serialised_to() {
        let spec = GraphSpec::from_json(&node_json(RETRY, r#", "timeout": 2500"#)).unwrap();
        let graph = spec.clone().build().unwrap();
        let again = GraphSpec::from_json(&serde_json::to_string(&graph.spec()).unwrap()).unwrap().build().unwrap();
        assert_eq!(graph.version(), again.version());
        assert_eq!(spec.nodes[0].timeout, Some(Duration::from_millis(2500)));
        assert_eq!(spec.nodes[0].retry.initial_backoff, Duration::from_millis(100));
    }

    #[test]
    fn unreadable_numbers_name_the_node_and_the_field() {
        let cases = [
            (RETRY.replace("100", "-100"), "retry.initial_backoff must not be negative"),
            (RETRY.replace("1000", "-1"), "retry.max_backoff must not be negative"),
            (
                RETRY.replace(r#""max_attempts": 3"#, r#""max_attempts": -3"#),
                "retry.max_attempts must be a whole number",
            ),
            (
                RETRY.replace(r#""max_attempts": 3"#, r#""max_attempts": 2.5"#),
                "retry.max_attempts must be a whole number",
            ),
            (RETRY.replace(r#""multiplier": 2"#, r#""multiplier": "nan""#), "retry.multiplier must be a number"),
            (RETRY.replace(r#""jitter": 0.1"#, r#""jitter": true"#), "retry.jitter must be a number"),
        ];
        for (retry, expected) in cases {
            match error_of(&node_json(&retry, "")) {
                GraphError::Invalid { graph, node, reason } => {
                    assert_eq!((graph.as_str(), node.as_str()), ("g", "flaky"));
                    assert!(reason.contains(expected), "{reason:?} should say {expected:?}");
                }
                other => panic!("{retry}: expected an invalid node, got {other:?}"),
            }
        }
        let negative = error_of(&node_json(RETRY, r#", "timeout": -1000"#));
        assert_eq!(negative.to_string(), "graph 'g': node 'flaky': timeout must not be negative, not -1000 ms");
    }

    #[test]
    fn the_rules_on_readable_numbers_are_the_graphs() {
        let zero_attempts = error_of(&node_json(&RETRY.replace(r#""max_attempts": 3"#, r#""max_attempts": 0"#), ""));
        assert_eq!(zero_attempts.to_string(), "graph 'g': node 'flaky': retry.max_attempts must be at least 1");
        let slow = error_of(&node_json(&RETRY.replace(r#""multiplier": 2"#, r#""multiplier": 0.5"#), ""));
        assert!(slow.to_string().contains("retry.multiplier must be a finite number >= 1, not 0.5"), "{slow}");
        let zero = error_of(&node_json(RETRY, r#", "timeout": 0"#));
        assert!(zero.to_string().ends_with("timeout must be greater than zero"), "{zero}");
        let checked_alone = NodeSpec::from_json("g", r#"{"name": "n", "kind": "task", "timeout": 0}"#).unwrap_err();
        assert_eq!(checked_alone, invalid("n", "timeout must be greater than zero"));
    }

    fn invalid(node: &str, reason: &str) -> GraphError {
        GraphError::Invalid { graph: "g".into(), node: node.into(), reason: reason.into() }
    }

    #[test]
    fn fractions_of_a_millisecond_round_as_python_does_and_a_positive_timeout_stays_positive() {
        let retry = RETRY.replace(r#""initial_backoff": 100"#, r#""initial_backoff": 2.5"#);
        let spec = GraphSpec::from_json(&node_json(&retry, r#", "timeout": 0.1"#)).unwrap();
        assert_eq!(spec.nodes[0].retry.initial_backoff, Duration::from_millis(2), "ties to even");
        assert_eq!(spec.nodes[0].timeout, Some(Duration::from_millis(1)));
    }

    #[test]
    fn json_that_is_not_a_graph_says_so() {
        assert!(matches!(GraphSpec::from_json("[1, 2]"), Err(GraphError::InvalidSpec { .. })));
        let nameless = GraphSpec::from_json(r#"{"name": "g", "nodes": [{"kind": "task"}]}"#).unwrap_err();
        assert!(nameless.to_string().contains("graph 'g': node #1"), "{nameless}");
    }
}
