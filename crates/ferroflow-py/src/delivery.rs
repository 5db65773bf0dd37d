//! Handing what the engine produces to Python callbacks: a run settling, and a run's events.
//! Both wait on the runtime and deliver on a blocking thread that holds the GIL only for the
//! delivery.

use std::sync::Arc;
use std::time::Duration;

use ferroflow::{Event, RunHandle};
use pyo3::prelude::*;

use crate::error::to_py_err;
use crate::records::{event_to_py, snapshot_to_py};
use crate::runtime;

/// Calls `callback(snapshot, None)` or `callback(None, error)` from a blocking thread once
/// the run settles.
pub fn notify_settled(run: RunHandle, timeout: Option<Duration>, callback: Py<PyAny>) {
    let handle = runtime::handle();
    handle.clone().spawn(async move {
        let result = run.wait(timeout).await;
        handle.spawn_blocking(move || {
            // `move`: the callback is dropped with the GIL held, so the references it holds
            // (the caller's future and loop) are released at once, not on a later GIL acquisition.
            runtime::attach(move |py| {
                let args = match result.map_err(to_py_err).and_then(|s| snapshot_to_py(py, &s)) {
                    Ok(snapshot) => (snapshot, py.None()),
                    Err(e) => (py.None(), e.into_value(py).into_any()),
                };
                if let Err(e) = callback.call1(py, args) {
                    e.write_unraisable(py, None);
                }
            })
        });
    });
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
