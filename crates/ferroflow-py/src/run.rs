//! `ferroflow._native.Run`: a run wherever it lives, as Python holds it (the core's
//! [`RunHandle`], from `Engine.start`, `Engine.open_run` or `Engine.recover`). It waits
//! for the run (`wait` blocks with the GIL released; `wait_async` returns an asyncio
//! future on the caller's loop), streams its events, answers it and cancels it.

use ferroflow::RunHandle;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::asyncio::PyEventLoop;
use crate::delivery::{forward_events, settle, watch_until};
use crate::engine::{attachment, seconds};
use crate::error::to_py_err;
use crate::records::snapshot_to_py;
use crate::runtime;
use crate::value::wrap;

/// `asyncio.get_running_loop`, looked up once: `wait_async` is on every `arun`'s path.
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A run, held by the engine that opened it.
#[pyclass(module = "ferroflow._native", name = "Run", frozen)]
pub struct PyRun {
    handle: RunHandle,
}

impl From<RunHandle> for PyRun {
    fn from(handle: RunHandle) -> Self {
        PyRun { handle }
    }
}

#[pymethods]
impl PyRun {
    /// The run's id.
    #[getter]
    fn id(&self) -> &str {
        self.handle.id()
    }

    /// Blocks (GIL released, Ctrl-C honoured) until the run settles, and returns its snapshot.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let timeout = seconds(timeout)?;
        let snapshot = runtime::block_on(py, self.handle.wait(timeout), |_| Ok(()))?.map_err(to_py_err)?;
        snapshot_to_py(py, &snapshot)
    }

    /// An asyncio future of the running loop, settled with the run's snapshot (or its error)
    /// when the run settles; through the loop's `scheduler` (its `EventLoop`), when given, by
    /// the thread that settles the run.
    #[pyo3(signature = (timeout = None, scheduler = None))]
    fn wait_async(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        scheduler: Option<PyRef<'_, PyEventLoop>>,
    ) -> PyResult<Py<PyAny>> {
        let timeout = seconds(timeout)?;
        let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
        let future = event_loop.call_method0("create_future")?.unbind();
        let settler = scheduler.and_then(|s| s.scheduler.settler(py, &event_loop));
        settle(self.handle.clone(), timeout, event_loop.unbind(), future.clone_ref(py), settler);
        Ok(future)
    }

    /// The run's state now.
    fn snapshot(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        snapshot_to_py(py, &self.handle.snapshot())
    }

    /// Forwards the run's events (from its first) to `callback`, then `None`, until it
    /// settles (or finishes, with `until_finished`).
    #[pyo3(signature = (callback, until_finished = false))]
    fn events(&self, py: Python<'_>, callback: Py<PyAny>, until_finished: bool) -> PyResult<()> {
        let until = watch_until(until_finished);
        let rx = py.detach(|| self.handle.events(until)).map_err(to_py_err)?;
        forward_events(rx, callback);
        Ok(())
    }

    /// Answers the human node the run waits at (`node` says which, if several) and
    /// returns the run to wait on; what follows the answer runs in this engine.
    #[pyo3(signature = (value, node = None, event_loop = None))]
    fn resume(
        &self,
        py: Python<'_>,
        value: Py<PyAny>,
        node: Option<&str>,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<PyRun> {
        let attachment = attachment(py, event_loop)?;
        let value = wrap(value);
        py.detach(|| self.handle.resume(node, value, attachment)).map(PyRun::from).map_err(to_py_err)
    }

    /// Continues the run if it stopped (its process died), without running completed
    /// nodes again, and returns the run to wait on.
    #[pyo3(signature = (event_loop = None))]
    fn recover(&self, py: Python<'_>, event_loop: Option<Py<PyAny>>) -> PyResult<PyRun> {
        let attachment = attachment(py, event_loop)?;
        py.detach(|| self.handle.recover(attachment)).map(PyRun::from).map_err(to_py_err)
    }

    /// Cancels the run (nothing, if it is cancelled already).
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.handle.cancel()).map_err(to_py_err)
    }

    fn __repr__(&self) -> String {
        format!("Run({:?})", &**self.handle.id())
    }
}
