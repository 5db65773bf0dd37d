//! What crosses into Python from the engine, each built in this one place: events as the
//! typed classes of `ferroflow.events`, node errors as `ferroflow.types.ErrorInfo`, and run
//! records and snapshots as the plain dicts `ferroflow.types` and `ferroflow.context` read.

use ferroflow::{Event, EventKind, JournalEntry, NodeError, RunSnapshot};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
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

/// The Python classes events and errors are built as, imported once.
struct Classes {
    error_info: Py<PyAny>,
    run_status: Py<PyAny>,
    run_started: Py<PyAny>,
    node_started: Py<PyAny>,
    node_progress: Py<PyAny>,
    node_completed: Py<PyAny>,
    node_failed: Py<PyAny>,
    node_skipped: Py<PyAny>,
    step_recorded: Py<PyAny>,
    interrupted: Py<PyAny>,
    resumed: Py<PyAny>,
    run_finished: Py<PyAny>,
    run_retried: Py<PyAny>,
    run_forked: Py<PyAny>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn classes(py: Python<'_>) -> PyResult<&'static Classes> {
    CLASSES.get_or_try_init(py, || {
        let types = py.import("ferroflow.types")?;
        let events = py.import("ferroflow.events")?;
        let event = |name: &str| events.getattr(name).map(Bound::unbind);
        Ok(Classes {
            error_info: types.getattr("ErrorInfo")?.unbind(),
            run_status: types.getattr("RunStatus")?.unbind(),
            run_started: event("RunStarted")?,
            node_started: event("NodeStarted")?,
            node_progress: event("NodeProgress")?,
            node_completed: event("NodeCompleted")?,
            node_failed: event("NodeFailed")?,
            node_skipped: event("NodeSkipped")?,
            step_recorded: event("StepRecorded")?,
            interrupted: event("Interrupted")?,
            resumed: event("Resumed")?,
            run_finished: event("RunFinished")?,
            run_retried: event("RunRetried")?,
            run_forked: event("RunForked")?,
        })
    })
}

/// A node attempt's error as a `ferroflow.types.ErrorInfo`.
pub fn error_to_py(py: Python<'_>, error: &NodeError) -> PyResult<Py<PyAny>> {
    let args = (&error.kind, &error.message, error.traceback.as_deref(), error.retryable);
    classes(py)?.error_info.call1(py, args)
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

/// A run's event as the `ferroflow.events` class of its kind, built here and nowhere else.
pub fn event_to_py(py: Python<'_>, event: &Event) -> PyResult<Py<PyAny>> {
    let classes = classes(py)?;
    let d = PyDict::new(py);
    d.set_item("run_id", event.run_id.as_ref())?;
    d.set_item("seq", event.seq)?;
    d.set_item("at", event.at_ms as f64 / 1000.0)?;
    let attempt_of = |node: &str, item: Option<u32>, attempt: u32| -> PyResult<()> {
        d.set_item("node", node)?;
        d.set_item("item", item)?;
        d.set_item("attempt", attempt)
    };
    let class = match &event.kind {
        EventKind::NodeStarted { node, item, attempt } => {
            attempt_of(node, *item, *attempt)?;
            &classes.node_started
        }
        EventKind::NodeProgress { node, item, attempt, data } => {
            attempt_of(node, *item, *attempt)?;
            d.set_item("data", to_py(py, data)?)?;
            &classes.node_progress
        }
        EventKind::Journal(entry) => match entry {
            JournalEntry::RunStarted { graph, version, input } => {
                d.set_item("graph", graph.as_ref())?;
                d.set_item("version", version.as_ref())?;
                d.set_item("input", to_py(py, input)?)?;
                &classes.run_started
            }
            JournalEntry::NodeCompleted { node, item, attempt, output } => {
                attempt_of(node, *item, *attempt)?;
                d.set_item("output", to_py(py, output)?)?;
                &classes.node_completed
            }
            JournalEntry::NodeFailed { node, item, attempt, error, retry_in_ms } => {
                attempt_of(node, *item, *attempt)?;
                d.set_item("error", error_to_py(py, error)?)?;
                d.set_item("retry_in", retry_in_ms.map(|ms| ms as f64 / 1000.0))?;
                &classes.node_failed
            }
            JournalEntry::NodeSkipped { node } => {
                d.set_item("node", node.as_ref())?;
                &classes.node_skipped
            }
            JournalEntry::StepRecorded { node, item, attempt, key, value } => {
                attempt_of(node, *item, *attempt)?;
                d.set_item("key", key.as_ref())?;
                d.set_item("value", to_py(py, value)?)?;
                &classes.step_recorded
            }
            JournalEntry::Interrupted { node, attempt, payload } => {
                d.set_item("node", node.as_ref())?;
                d.set_item("attempt", *attempt)?;
                d.set_item("payload", to_py(py, payload)?)?;
                &classes.interrupted
            }
            JournalEntry::Resumed { node, value } => {
                d.set_item("node", node.as_ref())?;
                d.set_item("value", to_py(py, value)?)?;
                &classes.resumed
            }
            JournalEntry::RunFinished { status, output, failure } => {
                d.set_item("status", classes.run_status.call1(py, (status.as_str(),))?)?;
                d.set_item("output", output.as_ref().map(|v| to_py(py, v)).transpose()?)?;
                if let Some(f) = failure {
                    d.set_item("node", f.node.as_ref())?;
                    d.set_item("error", error_to_py(py, &f.error)?)?;
                }
                &classes.run_finished
            }
            JournalEntry::RunRetried { by } => {
                d.set_item("by", by.as_ref())?;
                &classes.run_retried
            }
            JournalEntry::RunForked { parent, at, by } => {
                d.set_item("parent", parent.as_ref())?;
                d.set_item("node", at.as_ref())?;
                d.set_item("by", by.as_ref())?;
                &classes.run_forked
            }
        },
    };
    class.call(py, (), Some(&d))
}
