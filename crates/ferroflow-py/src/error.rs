//! The one place engine errors become Python exceptions.
//!
//! The exception classes are declared once, in `ferroflow/errors.py`, with their
//! attributes and docs; this module only picks the class and fills in the attributes.

use ferroflow::{Error, GraphError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Builds an instance of `ferroflow.errors.<class>` with `message` and keyword attributes.
pub fn new_error(py: Python<'_>, class: &str, message: String, attrs: &[(&str, Option<String>)]) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let module = ERRORS.get_or_try_init(py, || py.import("ferroflow.errors").map(Bound::unbind))?;
        let cls = module.bind(py).getattr(class)?;
        let kwargs = PyDict::new(py);
        for (key, value) in attrs {
            kwargs.set_item(key, value)?;
        }
        Ok(PyErr::from_value(cls.call((message.clone(),), Some(&kwargs))?))
    };
    build().unwrap_or_else(|e| e)
}

/// Maps an engine error to its Python exception.
pub fn to_py_err(err: Error) -> PyErr {
    Python::attach(|py| {
        let message = err.to_string();
        let s = |v: &str| Some(v.to_owned());
        match &err {
            Error::Graph(graph) => graph_error(py, graph),
            Error::UnknownGraph { name, .. } => new_error(py, "UnknownGraphError", message, &[("graph", s(name))]),
            Error::RunNotFound { run_id } => new_error(py, "RunNotFoundError", message, &[("run_id", s(run_id))]),
            Error::RunIdConflict { run_id, .. } => {
                new_error(py, "RunIdConflictError", message, &[("run_id", s(run_id))])
            }
            Error::InvalidRunState { run_id, status, .. } => {
                new_error(py, "InvalidRunStateError", message, &[("run_id", s(run_id)), ("status", s(status.as_str()))])
            }
            Error::NotWaitingAt { run_id, node, .. } => {
                new_error(py, "InvalidRunStateError", message, &[("run_id", s(run_id)), ("node", s(node))])
            }
            Error::AmbiguousResume { run_id, .. } => {
                new_error(py, "InvalidRunStateError", message, &[("run_id", s(run_id)), ("status", s("waiting"))])
            }
            Error::InvalidInput { run_id, .. } => new_error(py, "InvalidInputError", message, &[("run_id", s(run_id))]),
            Error::WaitTimeout { run_id, .. } => new_error(py, "WaitTimeoutError", message, &[("run_id", s(run_id))]),
            Error::VersionMismatch { run_id, .. } | Error::CorruptJournal { run_id, .. } => {
                new_error(py, "StoreError", message, &[("run_id", s(run_id))])
            }
            Error::ValueTooLarge { .. } => new_error(py, "InvalidInputError", message, &[]),
            Error::Store(_) | Error::Conflict { .. } => new_error(py, "StoreError", message, &[]),
            Error::Unavailable(_) => new_error(py, "StoreUnavailableError", message, &[]),
            // The body's own exception, raised again where the run is waited for: Ctrl-C
            // in a body interrupts the caller, and `sys.exit(code)` exits it.
            Error::Interrupted { kind, message: text, .. } if kind == "SystemExit" => match text.parse::<i64>() {
                Ok(code) => pyo3::exceptions::PySystemExit::new_err(code),
                Err(_) if text.is_empty() => pyo3::exceptions::PySystemExit::new_err(()),
                Err(_) => pyo3::exceptions::PySystemExit::new_err(text.clone()),
            },
            Error::Interrupted { .. } => pyo3::exceptions::PyKeyboardInterrupt::new_err(message),
            Error::Closed => new_error(py, "ContextClosedError", message, &[]),
            _ => new_error(py, "FerroflowError", message, &[]),
        }
    })
}

fn graph_error(py: Python<'_>, err: &GraphError) -> PyErr {
    let message = err.to_string();
    let (class, graph, node) = match err {
        GraphError::Cycle { graph, cycle } => ("CycleError", graph, cycle.first()),
        GraphError::DuplicateNode { graph, node } => ("DuplicateNodeError", graph, Some(node)),
        GraphError::UnknownDependency { graph, node, .. } => ("UnknownDependencyError", graph, Some(node)),
        GraphError::UnresolvedParameter { graph, node, .. } => ("UnresolvedParameterError", graph, Some(node)),
        GraphError::DuplicateDependency { graph, node, .. }
        | GraphError::LabelOnPlainEdge { graph, node, .. }
        | GraphError::InvalidNodeName { graph, node, .. }
        | GraphError::UnknownOutput { graph, node }
        | GraphError::Invalid { graph, node, .. } => ("GraphError", graph, Some(node)),
        GraphError::InvalidName { name, .. } => ("GraphError", name, None),
        _ => ("GraphError", &String::new(), None),
    };
    new_error(py, class, message, &[("graph", Some(graph.clone())), ("node", node.cloned())])
}
