//! Handing what the engine produces to Python: a run settling (to an asyncio future), and a
//! run's events (to a callback). A future of the loop the caller runs is settled through
//! that loop's [`Settler`]; otherwise, and for events, a task waits on the runtime and
//! delivers on a blocking thread that holds the GIL only for the delivery.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferroflow::{Event, RunHandle, RunSnapshot, WatchUntil};
use pyo3::prelude::*;

use crate::error::to_py_err;
use crate::records::{event_to_py, snapshot_to_py};
use crate::runtime;

/// Settles the asyncio `future` of `event_loop` with the run's snapshot (or its error) once
/// the run settles: the one bridge from the engine's waits to Python's awaitables. Without
/// a timeout, and with the loop's `settler`, the thread that settles the run queues the
/// outcome and wakes the loop itself ([`RunHandle::on_settled`], [`Settler`]). Otherwise the
/// wait runs on the runtime, and the result is handed to the loop's thread with
/// `call_soon_threadsafe`, from a blocking thread that holds the GIL only for that. A future
/// already done (its awaiting task was cancelled) is left alone, and so is a closed loop.
pub fn settle(
    run: RunHandle,
    timeout: Option<Duration>,
    event_loop: Py<PyAny>,
    future: Py<PyAny>,
    settler: Option<Arc<Settler>>,
) {
    if let (None, Some(settler)) = (timeout, settler) {
        run.on_settled(move |outcome| settler.push(future, outcome));
        return;
    }
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
        let outcome = if error.is_none(py) { Ok(snapshot) } else { Err(error) };
        resolve(self.future.bind(py), outcome)
    }
}

/// Sets `future`'s result (or exception) unless it is done; on the loop's thread.
fn resolve(future: &Bound<'_, PyAny>, outcome: Result<Py<PyAny>, Py<PyAny>>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    match outcome {
        Ok(snapshot) => future.call_method1("set_result", (snapshot,))?,
        Err(error) => future.call_method1("set_exception", (error,))?,
    };
    Ok(())
}

/// Settles runs' futures on one asyncio loop, woken through a socket the loop watches
/// (`loop.add_reader`). The thread that settles a run (often a blocking thread ending a
/// chain of sync bodies) queues the outcome and, if no wake-up is pending, writes one byte:
/// no GIL, no task woken on the runtime, no thread handed the delivery. On the loop's
/// thread, [`SettleDrain`] reads the bytes, then takes the queue (in that order, so that an
/// outcome queued meanwhile either is taken now or writes a byte of its own), and sets each
/// future. Under load, one wake-up of the loop settles many runs.
pub struct Settler {
    queue: Mutex<Settled>,
    #[cfg(unix)]
    reader: std::os::unix::net::UnixStream,
    #[cfg(unix)]
    writer: std::os::unix::net::UnixStream,
}

#[derive(Default)]
struct Settled {
    outcomes: Vec<(Py<PyAny>, ferroflow::Result<RunSnapshot>)>,
    /// A byte is written and the drain has not taken the queue yet.
    woken: bool,
}

impl Settler {
    /// A settler watched by `event_loop` (the running loop, on its thread), or `None` if the
    /// loop cannot watch a socket (Windows' proactor loop) or the socket cannot be made.
    #[cfg(unix)]
    pub fn on_loop(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> Option<Arc<Settler>> {
        use std::os::fd::AsRawFd;
        let (reader, writer) = std::os::unix::net::UnixStream::pair().ok()?;
        reader.set_nonblocking(true).ok()?;
        writer.set_nonblocking(true).ok()?;
        let settler = Arc::new(Settler { queue: Mutex::default(), reader, writer });
        let drain = Py::new(py, SettleDrain { settler: Arc::clone(&settler) }).ok()?;
        event_loop.call_method1("add_reader", (settler.reader.as_raw_fd(), drain)).ok()?;
        Some(settler)
    }

    /// Elsewhere, futures are settled by a task on the runtime ([`settle`] without a settler).
    #[cfg(not(unix))]
    pub fn on_loop(_py: Python<'_>, _event_loop: &Bound<'_, PyAny>) -> Option<Arc<Settler>> {
        None
    }

    /// Queues `future`'s outcome and wakes the loop: called by the thread that settles the
    /// run, so it neither blocks nor takes the GIL.
    fn push(&self, future: Py<PyAny>, outcome: ferroflow::Result<RunSnapshot>) {
        let wake = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.outcomes.push((future, outcome));
            !std::mem::replace(&mut queue.woken, true)
        };
        #[cfg(unix)]
        if wake {
            use std::io::Write;
            // A full socket has a wake-up pending already.
            let _ = (&self.writer).write(&[1]);
        }
        #[cfg(not(unix))]
        let _ = wake;
    }
}

/// Runs on the loop's thread when its settler's socket is readable: sets the queued futures.
#[pyclass(frozen)]
struct SettleDrain {
    settler: Arc<Settler>,
}

#[pymethods]
impl SettleDrain {
    fn __call__(&self, py: Python<'_>) {
        #[cfg(unix)]
        {
            use std::io::Read;
            let mut bytes = [0u8; 64];
            while matches!((&self.settler.reader).read(&mut bytes), Ok(n) if n > 0) {}
        }
        let outcomes = {
            let mut queue = self.settler.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.woken = false;
            std::mem::take(&mut queue.outcomes)
        };
        for (future, outcome) in outcomes {
            let outcome = match outcome.map_err(to_py_err).and_then(|s| snapshot_to_py(py, &s)) {
                Ok(snapshot) => Ok(snapshot),
                Err(e) => Err(e.into_value(py).into_any()),
            };
            if let Err(err) = resolve(future.bind(py), outcome) {
                err.write_unraisable(py, Some(future.bind(py)));
            }
        }
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
