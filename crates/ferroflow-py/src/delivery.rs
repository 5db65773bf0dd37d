//! Handing what the engine produces to Python: a run settling (to an asyncio future), and a
//! run's events (to a callback). Both wait on the runtime and deliver on a blocking thread
//! that holds the GIL only for the delivery.

use std::sync::Arc;
use std::time::Duration;

use ferroflow::{Event, RunHandle, WatchUntil};
use pyo3::prelude::*;

use crate::error::to_py_err;
use crate::records::{event_to_py, snapshot_to_py};
use crate::runtime;

/// Settles the asyncio `future` of `event_loop` with the run's snapshot (or its error) once
/// the run settles: the one bridge from the engine's waits to Python's awaitables. The wait
/// runs on the runtime; the result is handed to the loop's thread with
/// `call_soon_threadsafe`, from a blocking thread that holds the GIL only for that. A future
/// already done (its awaiting task was cancelled) is left alone, and so is a closed loop.
pub fn settle(run: RunHandle, timeout: Option<Duration>, event_loop: Py<PyAny>, future: Py<PyAny>) {
    let handle = runtime::handle();
    handle.clone().spawn(async move {
        let result = run.wait(timeout).await;
        handle.spawn_blocking(move || {
            // `move`: the loop and the future are dropped with the GIL held, at once.
            runtime::attach(move |py| {
                let (snapshot, error) = match result.map_err(to_py_err).and_then(|s| snapshot_to_py(py, &s)) {
                    Ok(snapshot) => (snapshot, py.None()),
                    Err(e) => (py.None(), e.into_value(py).into_any()),
                };
                let settle = Settle { future };
                if let Err(e) = event_loop.call_method1(py, "call_soon_threadsafe", (settle, snapshot, error)) {
                    // A closed loop refuses with RuntimeError: nobody awaits the run any more.
                    if !e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py) {
                        e.write_unraisable(py, None);
                    }
                }
            })
        });
    });
}

/// Called on the loop's thread: sets the future's result or exception unless it is done.
#[pyclass(module = "ferroflow._native", frozen)]
struct Settle {
    future: Py<PyAny>,
}

#[pymethods]
impl Settle {
    fn __call__(&self, py: Python<'_>, snapshot: Py<PyAny>, error: Py<PyAny>) -> PyResult<()> {
        let future = self.future.bind(py);
        if future.call_method0("done")?.is_truthy()? {
            return Ok(());
        }
        if error.is_none(py) {
            future.call_method1("set_result", (snapshot,))?;
        } else {
            future.call_method1("set_exception", (error,))?;
        }
        Ok(())
    }
}

/// When a watch from Python ends: `until_finished` only at the end of the run, else at its
/// first pause too.
pub fn watch_until(until_finished: bool) -> WatchUntil {
    if until_finished { WatchUntil::Finished } else { WatchUntil::Settled }
}

/// Sends a run's events to a Python callback, then `None`.
///
/// An async task waits for events; each batch that has arrived is delivered on a blocking
/// thread, which is held only for the delivery. (A thread parked per watcher would let
/// enough concurrent streams exhaust the blocking pool that the runs' own sync bodies need.)
pub fn forward_events(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>, callback: Py<PyAny>) {
    let mut callback = Some(Arc::new(callback));
    let handle = runtime::handle();
    handle.clone().spawn(async move {
        loop {
            let mut batch = Vec::new();
            let open = match rx.recv().await {
                Some(event) => {
                    batch.push(event);
                    while let Ok(event) = rx.try_recv() {
                        batch.push(event);
                    }
                    true
                }
                None => false,
            };
            // The last batch takes the last reference, so that it is dropped with the GIL held.
            let callback = if open { callback.clone() } else { callback.take() }.expect("present until the last batch");
            let delivered = handle.spawn_blocking(move || {
                runtime::attach(move |py| {
                    for event in &batch {
                        if let Err(err) = event_to_py(py, event).and_then(|e| callback.call1(py, (e,))) {
                            err.write_unraisable(py, None);
                            return false;
                        }
                    }
                    if !open {
                        if let Err(err) = callback.call1(py, (py.None(),)) {
                            err.write_unraisable(py, None);
                        }
                    }
                    true
                })
            });
            if !open || delivered.await.ok().flatten() != Some(true) {
                return;
            }
        }
    });
}
