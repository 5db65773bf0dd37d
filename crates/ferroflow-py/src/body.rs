//! Python callables as node bodies.
//!
//! Sync callables run on the engine's blocking threads and hold the GIL only for the
//! call ([`SyncPyBody`]). Async callables are scheduled on the asyncio loop attached to the
//! run (the caller's loop for `arun`, a background loop for `run`) by
//! [`crate::asyncio::AsyncPyBody`], which builds their coroutines with [`PyBody`]; dropping
//! the engine's future cancels the task.

use std::sync::Arc;

use ferroflow::{BlockingBody, BodyResult, NodeCall, NodeError, NodeHandle, Value};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::error::to_py_err;
use crate::runtime;
use crate::value::{article, py_to_json, to_py, type_name, wrap};

/// How a body wants one node declared, mirrored by `ferroflow.graph._BodySpec`.
#[derive(FromPyObject)]
pub struct BodySpec {
    pub func: Py<PyAny>,
    pub is_async: bool,
    /// Where each positional argument comes from: a dependency's index, one of the
    /// negative codes of [`ArgSource`], or a list of dependency indexes (the argument is
    /// then the list of their outputs).
    pub plan: Vec<PlanItem>,
    /// Exception types that may be retried.
    pub retry_on: Py<PyAny>,
    /// Check that every output survives a JSON round trip.
    pub strict: bool,
    /// The node kind, e.g. "branch".
    pub kind: String,
}

/// One entry of a body's argument plan, as the Python package encodes it.
#[derive(FromPyObject)]
pub enum PlanItem {
    One(i64),
    Many(Vec<usize>),
}

#[derive(Clone)]
enum ArgSource {
    Dep(usize),
    Deps(Vec<usize>),
    Input,
    Context,
    Item,
}

impl ArgSource {
    fn decode(item: &PlanItem) -> PyResult<Self> {
        let code = match item {
            PlanItem::Many(indexes) => return Ok(ArgSource::Deps(indexes.clone())),
            PlanItem::One(code) => *code,
        };
        Ok(match code {
            0.. => ArgSource::Dep(code as usize),
            -1 => ArgSource::Input,
            -2 => ArgSource::Context,
            -3 => ArgSource::Item,
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!("unknown argument source {other}")));
            }
        })
    }
}

pub struct PyBody {
    func: Py<PyAny>,
    plan: Vec<ArgSource>,
    retry_on: Py<PyAny>,
    strict: bool,
    branch: bool,
}

static NODE_CONTEXT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TRACEBACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl PyBody {
    pub fn new(spec: &BodySpec, py: Python<'_>) -> PyResult<Arc<Self>> {
        Ok(Arc::new(PyBody {
            func: spec.func.clone_ref(py),
            plan: spec.plan.iter().map(ArgSource::decode).collect::<PyResult<_>>()?,
            retry_on: spec.retry_on.clone_ref(py),
            strict: spec.strict,
            branch: spec.kind == "branch",
        }))
    }

    /// Reports the Python objects this body owns to the garbage collector.
    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.func)?;
        visit.call(&self.retry_on)
    }

    fn args<'py>(&self, py: Python<'py>, call: &NodeCall) -> PyResult<Bound<'py, PyTuple>> {
        let mut args = Vec::with_capacity(self.plan.len());
        for source in &self.plan {
            args.push(match source {
                ArgSource::Dep(i) => to_py(py, &call.deps[*i])?,
                ArgSource::Deps(indexes) => {
                    let items = indexes.iter().map(|&i| to_py(py, &call.deps[i])).collect::<PyResult<Vec<_>>>()?;
                    pyo3::types::PyList::new(py, items)?.into_any().unbind()
                }
                ArgSource::Input => to_py(py, &call.input)?,
                ArgSource::Item => match &call.item {
                    Some((_, item)) => to_py(py, item)?,
                    None => py.None(),
                },
                ArgSource::Context => {
                    let cls = NODE_CONTEXT.get_or_try_init(py, || {
                        py.import("ferroflow.types")?.getattr("NodeContext").map(Bound::unbind)
                    })?;
                    let recorded = PyDict::new(py);
                    for (key, value) in &call.recorded {
                        recorded.set_item(key.as_ref(), to_py(py, value)?)?;
                    }
                    let handle = call.handle.clone().map(|handle| PyNodeHandle { handle, strict: self.strict });
                    cls.call1(
                        py,
                        (
                            call.run_id.as_ref(),
                            call.node.as_ref(),
                            call.attempt,
                            call.idempotency_key(),
                            call.item.as_ref().map(|(i, _)| *i),
                            recorded,
                            handle,
                            call.replaying,
                        ),
                    )?
                }
            });
        }
        PyTuple::new(py, args)
    }

    /// Turns what the callable returned into the node's output.
    pub fn output(&self, py: Python<'_>, node: &str, obj: Bound<'_, PyAny>) -> BodyResult {
        if self.branch {
            // Branch labels cross into the engine as plain JSON, so that routing never
            // needs the GIL.
            let labels = py_to_json(&obj, "$").ok().map(Value::from).filter(|v| v.labels().is_some());
            return labels.ok_or_else(|| {
                NodeError::permanent(
                    "InvalidBranchOutput",
                    format!("branch '{node}' must return a label (str) or a list of labels, not {}", type_name(&obj)),
                )
            });
        }
        if self.strict {
            if let Err(reason) = py_to_json(&obj, "$") {
                let kind = type_name(&obj);
                return Err(NodeError::permanent(
                    "SerializationError",
                    format!(
                        "node '{node}' returned {} {kind} that a durable context cannot store: {reason}",
                        article(&kind)
                    ),
                ));
            }
        }
        let _ = py;
        Ok(wrap(obj.unbind()))
    }

    /// A Python exception as the node's error, with its traceback. `KeyboardInterrupt`
    /// (Ctrl-C) and `SystemExit` are not the body failing but its process stopping: the
    /// attempt is given up ([`NodeError::abandoned`]), nothing is recorded, and the run stays
    /// resumable; whoever waits for the run gets the exception back.
    pub fn error(&self, py: Python<'_>, err: PyErr) -> NodeError {
        let value = err.value(py);
        let kind = type_name(value.as_any());
        let message = value.str().map(|s| s.to_string()).unwrap_or_default();
        if value.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>()
            || value.is_instance_of::<pyo3::exceptions::PySystemExit>()
        {
            return NodeError::abandoned(kind, message);
        }
        let retryable = value.is_instance(self.retry_on.bind(py)).unwrap_or(false);
        let traceback = TRACEBACK
            .get_or_try_init(py, || py.import("traceback")?.getattr("format_exception").map(Bound::unbind))
            .and_then(|format| format.call1(py, (value.get_type(), value, err.traceback(py))))
            .and_then(|lines| PyString::new(py, "").call_method1("join", (lines,)).map(|s| s.to_string()))
            .ok();
        NodeError { kind, message, traceback, retryable, abandoned: false }
    }

    /// Calls an async body's function: the coroutine to run.
    pub fn coroutine<'py>(&self, py: Python<'py>, call: &NodeCall) -> Result<Bound<'py, PyAny>, NodeError> {
        let args = self.args(py, call).map_err(|e| argument_error(py, &call.node, e))?;
        self.func.bind(py).call1(args).map_err(|e| self.error(py, e))
    }

    fn call_sync(&self, call: &NodeCall) -> BodyResult {
        runtime::attach(|py| {
            let args = self.args(py, call).map_err(|e| argument_error(py, &call.node, e))?;
            // Asked again now, with the GIL taken and the arguments built, right before the
            // user's code: a process paused since the engine asked would otherwise start
            // the body of a run another worker took over meanwhile (see `NodeHandle::may_start`).
            if let Some(handle) = &call.handle {
                let may = handle.may_start_now().unwrap_or_else(|| py.detach(|| handle.may_start()));
                if !may {
                    return Err(NodeError::abandoned("NotStarted", "this process no longer holds the run"));
                }
            }
            match self.func.bind(py).call1(args) {
                Ok(obj) => self.output(py, &call.node, obj),
                Err(err) => Err(self.error(py, err)),
            }
        })
        .unwrap_or_else(|| Err(NodeError::permanent("InterpreterShutdown", "the Python interpreter is shutting down")))
    }
}

/// What a running body can do to its run (`NodeContext.step`, `NodeContext.emit` use it).
#[pyclass(name = "NodeHandle", module = "ferroflow._native", frozen)]
pub struct PyNodeHandle {
    pub(crate) handle: NodeHandle,
    /// The graph's strict mode: in memory, recorded values are checked as a durable context
    /// would store them.
    pub(crate) strict: bool,
}

#[pymethods]
impl PyNodeHandle {
    /// Records `value` as the result of the body's step `key` in the run's journal (durably
    /// in a durable context); a later attempt of the node gets it back.
    fn record(&self, py: Python<'_>, key: &str, value: Bound<'_, PyAny>) -> PyResult<()> {
        if self.strict
            && !self.handle.durable()
            && let Err(reason) = py_to_json(&value, "$")
        {
            let run_id = self.handle.run_id().to_string();
            let message = format!("run '{run_id}': step '{key}' cannot be stored: {reason}");
            let attrs = [("run_id", Some(run_id))];
            return Err(crate::error::new_error::<crate::error::classes::InvalidInputError>(py, message, &attrs));
        }
        let value = wrap(value.unbind());
        py.detach(|| self.handle.record(key, value)).map_err(to_py_err)
    }

    /// Reports `data` to the run's watchers now (not journaled). Quick, and in memory: the
    /// GIL is kept.
    fn emit(&self, data: Bound<'_, PyAny>) {
        self.handle.emit(wrap(data.unbind()));
    }

    /// Whether `record` writes to a store (and may wait for it), rather than to memory.
    #[getter]
    fn durable(&self) -> bool {
        self.handle.durable()
    }
}

fn argument_error(py: Python<'_>, node: &str, err: PyErr) -> NodeError {
    NodeError::permanent("ArgumentError", format!("could not build the arguments of node '{node}': {}", err.value(py)))
}

/// A sync Python body, called on the engine's blocking threads.
pub struct SyncPyBody(pub Arc<PyBody>);

impl BlockingBody for SyncPyBody {
    fn call(&self, call: NodeCall) -> BodyResult {
        self.0.call_sync(&call)
    }
}
