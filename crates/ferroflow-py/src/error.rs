//! The one place engine errors become Python exceptions.
//!
//! The exception classes are declared once, in `ferroflow/errors.py`, with their
//! attributes and docs. They are bound here once each ([`pyo3::import_exception!`]): every
//! use names a Rust type, so a misspelt class is a compile error rather than an
//! `AttributeError` at the moment of the failure (and `tests/test_errors.py` checks that
//! each bound name is a class of `ferroflow.errors`). This module picks the class and fills
//! in the attributes.

use ferroflow::llm::{LlmError, LlmErrorKind};
use ferroflow::{Error, GraphError};
use pyo3::PyTypeInfo;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};

/// The classes of `ferroflow/errors.py`, one line each.
pub mod classes {
    pyo3::import_exception!(ferroflow.errors, FerroflowError);
    pyo3::import_exception!(ferroflow.errors, GraphError);
    pyo3::import_exception!(ferroflow.errors, CycleError);
    pyo3::import_exception!(ferroflow.errors, DuplicateNodeError);
    pyo3::import_exception!(ferroflow.errors, UnknownDependencyError);
    pyo3::import_exception!(ferroflow.errors, UnresolvedParameterError);
    pyo3::import_exception!(ferroflow.errors, UnknownGraphError);
    pyo3::import_exception!(ferroflow.errors, ContextClosedError);
    pyo3::import_exception!(ferroflow.errors, StoreError);
    pyo3::import_exception!(ferroflow.errors, StoreUnavailableError);
    pyo3::import_exception!(ferroflow.errors, LLMError);
    pyo3::import_exception!(ferroflow.errors, LLMAuthenticationError);
    pyo3::import_exception!(ferroflow.errors, LLMNotFoundError);
    pyo3::import_exception!(ferroflow.errors, LLMRateLimitError);
    pyo3::import_exception!(ferroflow.errors, LLMServerError);
    pyo3::import_exception!(ferroflow.errors, LLMRejectedError);
    pyo3::import_exception!(ferroflow.errors, LLMConnectionError);
    pyo3::import_exception!(ferroflow.errors, LLMTimeoutError);
    pyo3::import_exception!(ferroflow.errors, MalformedReplyError);
    pyo3::import_exception!(ferroflow.errors, RunNotFoundError);
    pyo3::import_exception!(ferroflow.errors, RunIdConflictError);
    pyo3::import_exception!(ferroflow.errors, InvalidRunStateError);
    pyo3::import_exception!(ferroflow.errors, InvalidInputError);
    pyo3::import_exception!(ferroflow.errors, WaitTimeoutError);
}

use classes::*;

/// An instance of the exception class `E` with `message` and keyword attributes.
pub fn new_error<E: PyTypeInfo>(py: Python<'_>, message: String, attrs: &[(&str, Option<String>)]) -> PyErr {
    instance(&E::type_object(py), message, attrs)
}

fn instance(cls: &Bound<'_, PyType>, message: String, attrs: &[(&str, Option<String>)]) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let kwargs = PyDict::new(cls.py());
        for (key, value) in attrs {
            kwargs.set_item(key, value)?;
        }
        Ok(PyErr::from_value(cls.call((message.clone(),), Some(&kwargs))?))
    };
    build().unwrap_or_else(|e| e)
}

/// The `ferroflow.errors` class of a kind of model call failure.
pub fn llm_error_class(py: Python<'_>, kind: LlmErrorKind) -> Bound<'_, PyType> {
    match kind {
        LlmErrorKind::Authentication => LLMAuthenticationError::type_object(py),
        LlmErrorKind::NotFound => LLMNotFoundError::type_object(py),
        LlmErrorKind::RateLimited => LLMRateLimitError::type_object(py),
        LlmErrorKind::Server => LLMServerError::type_object(py),
        LlmErrorKind::Rejected => LLMRejectedError::type_object(py),
        LlmErrorKind::Timeout => LLMTimeoutError::type_object(py),
        LlmErrorKind::Connection => LLMConnectionError::type_object(py),
        LlmErrorKind::Malformed => MalformedReplyError::type_object(py),
        LlmErrorKind::Config => LLMError::type_object(py),
    }
}

/// A model client's error as its `ferroflow.errors` class, with the model and HTTP status.
pub fn llm_error(py: Python<'_>, err: &LlmError) -> PyErr {
    let cls = llm_error_class(py, err.kind());
    let model = err.model().map(str::to_owned);
    let status = err.status().map(|s| s.to_string());
    instance(&cls, err.to_string(), &[("model", model), ("http_status", status)])
}

/// Maps an engine error to its Python exception.
pub fn to_py_err(err: Error) -> PyErr {
    Python::attach(|py| {
        let message = err.to_string();
        let s = |v: &str| Some(v.to_owned());
        match &err {
            Error::Graph(graph) => graph_error(py, graph),
            Error::UnknownGraph { name, .. } => new_error::<UnknownGraphError>(py, message, &[("graph", s(name))]),
            Error::RunNotFound { run_id } => new_error::<RunNotFoundError>(py, message, &[("run_id", s(run_id))]),
            Error::RunIdConflict { run_id, .. } => {
                new_error::<RunIdConflictError>(py, message, &[("run_id", s(run_id))])
            }
            Error::InvalidRunState { run_id, status, .. } => {
                new_error::<InvalidRunStateError>(py, message, &[("run_id", s(run_id)), ("status", s(status.as_str()))])
            }
            Error::NotWaitingAt { run_id, node, .. } => {
                new_error::<InvalidRunStateError>(py, message, &[("run_id", s(run_id)), ("node", s(node))])
            }
            Error::AmbiguousResume { run_id, .. } => {
                new_error::<InvalidRunStateError>(py, message, &[("run_id", s(run_id)), ("status", s("waiting"))])
            }
            Error::InvalidInput { run_id, .. } => new_error::<InvalidInputError>(py, message, &[("run_id", s(run_id))]),
            Error::WaitTimeout { run_id, .. } => new_error::<WaitTimeoutError>(py, message, &[("run_id", s(run_id))]),
            Error::VersionMismatch { run_id, .. } | Error::CorruptJournal { run_id, .. } => {
                new_error::<StoreError>(py, message, &[("run_id", s(run_id))])
            }
            Error::ValueTooLarge { .. } => new_error::<InvalidInputError>(py, message, &[]),
            Error::Store(_) | Error::Conflict { .. } => new_error::<StoreError>(py, message, &[]),
            Error::Unavailable(_) => new_error::<StoreUnavailableError>(py, message, &[]),
            // The body's own exception, raised again where the run is waited for: Ctrl-C
            // in a body interrupts the caller, and `sys.exit(code)` exits it.
            Error::Interrupted { kind, message: text, .. } if kind == "SystemExit" => match text.parse::<i64>() {
                Ok(code) => pyo3::exceptions::PySystemExit::new_err(code),
                Err(_) if text.is_empty() => pyo3::exceptions::PySystemExit::new_err(()),
                Err(_) => pyo3::exceptions::PySystemExit::new_err(text.clone()),
            },
            Error::Interrupted { .. } => pyo3::exceptions::PyKeyboardInterrupt::new_err(message),
            Error::Closed => new_error::<ContextClosedError>(py, message, &[]),
            _ => new_error::<FerroflowError>(py, message, &[]),
        }
    })
}

fn graph_error(py: Python<'_>, err: &GraphError) -> PyErr {
    let message = err.to_string();
    let (cls, graph, node) = match err {
        GraphError::Cycle { graph, cycle } => (CycleError::type_object(py), graph, cycle.first()),
        GraphError::DuplicateNode { graph, node } => (DuplicateNodeError::type_object(py), graph, Some(node)),
        GraphError::UnknownDependency { graph, node, .. } => {
            (UnknownDependencyError::type_object(py), graph, Some(node))
        }
        GraphError::UnresolvedParameter { graph, node, .. } => {
            (UnresolvedParameterError::type_object(py), graph, Some(node))
        }
        GraphError::DuplicateDependency { graph, node, .. }
        | GraphError::LabelOnPlainEdge { graph, node, .. }
        | GraphError::InvalidNodeName { graph, node, .. }
        | GraphError::UnknownOutput { graph, node }
        | GraphError::Invalid { graph, node, .. } => (classes::GraphError::type_object(py), graph, Some(node)),
        GraphError::InvalidName { name, .. } => (classes::GraphError::type_object(py), name, None),
        _ => (classes::GraphError::type_object(py), &String::new(), None),
    };
    instance(&cls, message, &[("graph", Some(graph.clone())), ("node", node.cloned())])
}
