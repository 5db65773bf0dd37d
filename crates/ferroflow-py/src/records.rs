//! What crosses into Python from the engine: run records, node errors, snapshots and events,
//! each built in this one place as the plain objects `ferroflow.types` and `ferroflow.events`
//! read.

use ferroflow::{Event, EventKind, JournalEntry, NodeError, RunSnapshot};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::value::to_py;

pub fn record_to_py(py: Python<'_>, r: &ferroflow::RunRecord) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("run_id", &r.run_id)?;
    d.set_item("graph", &r.graph)?;
    d.set_item("version", &r.version)?;
    d.set_item("status", r.status.as_str())?;
    d.set_item("created_ms", r.created_ms)?;
    d.set_item("updated_ms", r.updated_ms)?;
    Ok(d.into_any().unbind())
}

pub fn error_to_py(py: Python<'_>, error: &NodeError) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("type", &error.kind)?;
    d.set_item("message", &error.message)?;
    d.set_item("traceback", error.traceback.as_deref())?;
    d.set_item("retryable", error.retryable)?;
    Ok(d.into_any().unbind())
}

pub fn snapshot_to_py(py: Python<'_>, s: &RunSnapshot) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("run_id", s.run_id.as_ref())?;
    d.set_item("graph", s.graph.as_ref())?;
    d.set_item("status", s.status.as_str())?;
    d.set_item("output", s.output.as_ref().map(|v| to_py(py, v)).transpose()?)?;
    match &s.failure {
        Some(f) => {
            let failure = PyDict::new(py);
            failure.set_item("node", f.node.as_ref())?;
            failure.set_item("item", f.item)?;
            failure.set_item("error", error_to_py(py, &f.error)?)?;
            d.set_item("failure", failure)?;
        }
        None => d.set_item("failure", py.None())?,
    }
    let waiting = PyDict::new(py);
    for (node, payload) in &s.waiting {
        waiting.set_item(node.as_ref(), to_py(py, payload)?)?;
    }
    d.set_item("waiting", waiting)?;
    Ok(d.into_any().unbind())
}

pub fn event_to_py(py: Python<'_>, event: &Event) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("run_id", event.run_id.as_ref())?;
    d.set_item("seq", event.seq)?;
    d.set_item("at_ms", event.at_ms)?;
    let set_node = |node: &str| d.set_item("node", node);
    match &event.kind {
        EventKind::NodeStarted { node, item, attempt } => {
            d.set_item("type", "node_started")?;
            set_node(node)?;
            d.set_item("item", *item)?;
            d.set_item("attempt", *attempt)?;
        }
        EventKind::NodeProgress { node, item, attempt, data } => {
            d.set_item("type", "node_progress")?;
            set_node(node)?;
            d.set_item("item", *item)?;
            d.set_item("attempt", *attempt)?;
            d.set_item("data", to_py(py, data)?)?;
        }
        EventKind::Journal(entry) => match entry {
            JournalEntry::RunStarted { graph, version, input } => {
                d.set_item("type", "run_started")?;
                d.set_item("graph", graph.as_ref())?;
                d.set_item("version", version.as_ref())?;
                d.set_item("input", to_py(py, input)?)?;
            }
            JournalEntry::NodeCompleted { node, item, attempt, output } => {
                d.set_item("type", "node_completed")?;
                set_node(node)?;
                d.set_item("item", *item)?;
                d.set_item("attempt", *attempt)?;
                d.set_item("output", to_py(py, output)?)?;
            }
            JournalEntry::NodeFailed { node, item, attempt, error, retry_in_ms } => {
                d.set_item("type", "node_failed")?;
                set_node(node)?;
                d.set_item("item", *item)?;
                d.set_item("attempt", *attempt)?;
                d.set_item("error", error_to_py(py, error)?)?;
                d.set_item("retry_in", retry_in_ms.map(|ms| ms as f64 / 1000.0))?;
            }
            JournalEntry::NodeSkipped { node } => {
                d.set_item("type", "node_skipped")?;
                set_node(node)?;
            }
            JournalEntry::StepRecorded { node, item, attempt, key, value } => {
                d.set_item("type", "step_recorded")?;
                set_node(node)?;
                d.set_item("item", *item)?;
                d.set_item("attempt", *attempt)?;
                d.set_item("key", key.as_ref())?;
                d.set_item("value", to_py(py, value)?)?;
            }
            JournalEntry::Interrupted { node, attempt, payload } => {
                d.set_item("type", "interrupted")?;
                set_node(node)?;
                d.set_item("attempt", *attempt)?;
                d.set_item("payload", to_py(py, payload)?)?;
            }
            JournalEntry::Resumed { node, value } => {
                d.set_item("type", "resumed")?;
                set_node(node)?;
                d.set_item("value", to_py(py, value)?)?;
            }
            JournalEntry::RunFinished { status, output, failure } => {
                d.set_item("type", "run_finished")?;
                d.set_item("status", status.as_str())?;
                d.set_item("output", output.as_ref().map(|v| to_py(py, v)).transpose()?)?;
                match failure {
                    Some(f) => {
                        d.set_item("node", f.node.as_ref())?;
                        d.set_item("error", error_to_py(py, &f.error)?)?;
                    }
                    None => d.set_item("error", py.None())?,
                }
            }
        },
    }
    Ok(d.into_any().unbind())
}
