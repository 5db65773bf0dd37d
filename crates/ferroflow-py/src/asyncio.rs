//! Async bodies on an asyncio event loop.
//!
//! Engine threads never run Python for an async body. They queue the call on the run's
//! [`EventLoop`] and wake the loop once per batch (`call_soon_threadsafe`); on the loop
//! thread, [`Drain`] builds each coroutine and wraps it in a task whose done-callback
//! sends the result back to the engine. Compared with `asyncio.run_coroutine_threadsafe`
//! per call, this spares a `concurrent.futures.Future` (and its `threading.Condition`),
//! the chaining callbacks, and a loop wake-up per node.

use std::sync::{Arc, Mutex};

use ferroflow::{AsyncBody, BodyResult, NodeCall, NodeError};
use futures_util::future::BoxFuture;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::sync::oneshot;

use crate::body::PyBody;
use crate::delivery::Settler;
use crate::runtime;

/// The scheduler of one asyncio loop, shared by every run whose async bodies execute on
/// it (the runs' attachment). The Python package keeps one per loop.
pub struct EventLoop {
    state: Arc<LoopState>,
    drain: Py<Drain>,
    /// What settles `arun`'s futures on this loop, made by the first that waits
    /// ([`EventLoop::settler`]), with the id of the process that made it; `None` where the
    /// loop cannot watch a socket.
    settler: PyOnceLock<(u32, Option<Arc<Settler>>)>,
}

/// `ferroflow._native.EventLoop`: the Python handle on a loop's scheduler.
#[pyclass(frozen, module = "ferroflow._native", name = "EventLoop")]
pub struct PyEventLoop {
    pub scheduler: Arc<EventLoop>,
}

#[pymethods]
impl PyEventLoop {
    #[new]
    fn new(py: Python<'_>, event_loop: Bound<'_, PyAny>) -> PyResult<Self> {
        // Held weakly: the package caches one scheduler per loop, keyed weakly by the loop,
        // so a strong reference here would keep every loop ever used alive.
        let weak = py.import("weakref")?.getattr("ref")?.call1((event_loop,))?.unbind();
        let state = Arc::new(LoopState { event_loop: weak, queue: Mutex::new(Queue::default()) });
        let drain = Py::new(py, Drain { state: Arc::clone(&state) })?;
        Ok(PyEventLoop { scheduler: Arc::new(EventLoop { state, drain, settler: PyOnceLock::new() }) })
    }
}

struct LoopState {
    /// A `weakref.ref` to the loop.
    event_loop: Py<PyAny>,
    queue: Mutex<Queue>,
}

impl LoopState {
    fn event_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let event_loop = self.event_loop.bind(py).call0()?;
        if event_loop.is_none() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("the event loop no longer exists"));
        }
        Ok(event_loop)
    }
}

#[derive(Default)]
struct Queue {
    calls: Vec<QueuedCall>,
    /// A drain is scheduled on the loop and has not taken the queue yet.
    scheduled: bool,
}

struct QueuedCall {
    body: Arc<PyBody>,
    call: NodeCall,
    tx: oneshot::Sender<BodyResult>,
    slot: Arc<TaskSlot>,
}

impl EventLoop {
    /// What settles runs' futures on this loop, if `running` (the caller's running loop) is
    /// it and it can watch a socket; made on first use, on the loop's thread. A forked child
    /// (whose copy of the loop would share the socket with its parent) does without.
    pub fn settler(&self, py: Python<'_>, running: &Bound<'_, PyAny>) -> Option<Arc<Settler>> {
        if !self.state.event_loop(py).is_ok_and(|own| own.is(running)) {
            return None;
        }
        let (pid, settler) = self.settler.get_or_init(py, || (std::process::id(), Settler::on_loop(py, running)));
        settler.clone().filter(|_| *pid == std::process::id())
    }

    /// Queues a call; the receiver gets its result, and the slot cancels it.
    pub fn submit(&self, body: Arc<PyBody>, call: NodeCall) -> (oneshot::Receiver<BodyResult>, Arc<TaskSlot>) {
        let (tx, rx) = oneshot::channel();
        let slot = Arc::new(TaskSlot { state: Mutex::new(SlotState::Queued) });
        let node = Arc::clone(&call.node);
        let wake = {
            let mut queue = self.state.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.calls.push(QueuedCall { body, call, tx, slot: Arc::clone(&slot) });
            !std::mem::replace(&mut queue.scheduled, true)
        };
        if wake {
            let woken = runtime::attach(|py| {
                self.state
                    .event_loop(py)
                    .and_then(|l| l.call_method1("call_soon_threadsafe", (self.drain.clone_ref(py),)))
                    .map(drop)
                    .map_err(|err| err.value(py).to_string())
            })
            .unwrap_or_else(|| Err("the interpreter is shutting down".to_owned()));
            if let Err(message) = woken {
                // The loop is closed: nothing will ever run these calls, so fail them now.
                let calls = {
                    let mut queue = self.state.queue.lock().unwrap_or_else(|p| p.into_inner());
                    queue.scheduled = false;
                    std::mem::take(&mut queue.calls)
                };
                for queued in calls {
                    let _ = queued.tx.send(Err(NodeError::new(
                        "EventLoopClosed",
                        format!("node '{node}' is async and its event loop cannot run it: {message}"),
                    )));
                }
            }
        }
        (rx, slot)
    }
}

/// Runs on the loop thread: starts every queued call as an asyncio task.
#[pyclass(frozen)]
struct Drain {
    state: Arc<LoopState>,
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) {
        let calls = {
            let mut queue = self.state.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.scheduled = false;
            std::mem::take(&mut queue.calls)
        };
        match self.state.event_loop(py) {
            Ok(event_loop) => {
                for queued in calls {
                    start(py, &event_loop, queued);
                }
            }
            Err(err) => {
                let message = err.value(py).to_string();
                for queued in calls {
                    let _ = queued.tx.send(Err(NodeError::new("EventLoopClosed", message.clone())));
                }
            }
        }
    }
}

fn start(py: Python<'_>, event_loop: &Bound<'_, PyAny>, queued: QueuedCall) {
    let QueuedCall { body, call, tx, slot } = queued;
    if matches!(*slot.lock(), SlotState::Cancelled) {
        return;
    }
    let task = body
        .coroutine(py, &call)
        .and_then(|coroutine| event_loop.call_method1("create_task", (coroutine,)).map_err(|err| body.error(py, err)));
    let task = match task {
        Ok(task) => task,
        Err(error) => {
            let _ = tx.send(Err(error));
            return;
        }
    };
    let done = Done { tx: Mutex::new(Some(tx)), body, node: call.node.to_string(), slot: Arc::clone(&slot) };
    if let Err(err) = task.call_method1("add_done_callback", (done,)) {
        err.write_unraisable(py, Some(&task));
        return;
    }
    *slot.lock() = SlotState::Running { task: task.unbind(), event_loop: event_loop.clone().unbind() };
}

/// Receives the finished task on the loop thread and sends its result to the engine.
#[pyclass(frozen)]
struct Done {
    tx: Mutex<Option<oneshot::Sender<BodyResult>>>,
    body: Arc<PyBody>,
    node: String,
    slot: Arc<TaskSlot>,
}

#[pymethods]
impl Done {
    fn __call__(&self, py: Python<'_>, task: Bound<'_, PyAny>) {
        *self.slot.lock() = SlotState::Finished;
        let result = if task.call_method0("cancelled").and_then(|c| c.is_truthy()).unwrap_or(false) {
            Err(NodeError::new("Cancelled", format!("the asyncio task of node '{}' was cancelled", self.node)))
        } else {
            match task.call_method0("result") {
                Ok(obj) => self.body.output(py, &self.node, obj),
                Err(err) => Err(self.body.error(py, err)),
            }
        };
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(result);
        }
    }
}

/// Where an async call is, so that the engine can cancel it.
pub struct TaskSlot {
    state: Mutex<SlotState>,
}

enum SlotState {
    Queued,
    Running { task: Py<PyAny>, event_loop: Py<PyAny> },
    Finished,
    Cancelled,
}

impl TaskSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels the call: a queued call never starts, a running task is cancelled on its
    /// loop.
    pub fn cancel(&self) {
        let previous = std::mem::replace(&mut *self.lock(), SlotState::Cancelled);
        if let SlotState::Running { task, event_loop } = previous {
            runtime::attach(|py| {
                if let Ok(cancel) = task.getattr(py, "cancel") {
                    // Fails only if the loop is closed, and then the task is gone anyway.
                    let _ = event_loop.call_method1(py, "call_soon_threadsafe", (cancel,));
                }
            });
        }
    }
}

/// An async Python body: each call is queued on the run's [`EventLoop`].
pub struct AsyncPyBody(pub Arc<PyBody>);

impl AsyncBody for AsyncPyBody {
    fn call(&self, call: NodeCall) -> BoxFuture<'static, BodyResult> {
        let attachment = call.attachment.clone();
        let Some(event_loop) = attachment.as_ref().and_then(|a| a.downcast_ref::<EventLoop>()) else {
            let error = NodeError::permanent(
                "NoEventLoop",
                format!("node '{}' is async, and its run has no asyncio event loop attached", call.node),
            );
            return Box::pin(std::future::ready(Err(error)));
        };
        let node = Arc::clone(&call.node);
        let (rx, slot) = event_loop.submit(Arc::clone(&self.0), call);
        Box::pin(async move {
            let mut guard = CancelOnDrop(Some(slot));
            let result = rx.await.unwrap_or_else(|_| {
                Err(NodeError::new("Cancelled", format!("the asyncio task of node '{node}' was dropped")))
            });
            guard.0 = None;
            result
        })
    }
}

/// Cancels the asyncio call when the engine drops the attempt (timeout, cancellation).
struct CancelOnDrop(Option<Arc<TaskSlot>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.cancel();
        }
    }
}
