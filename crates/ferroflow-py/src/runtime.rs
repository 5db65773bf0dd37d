//! The process's one tokio runtime.
//!
//! Created on first use and owned for the life of the process; a child created by
//! `fork()` gets a fresh one (the parent's threads do not exist in the child, so its
//! runtime must never be touched there).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::prelude::*;
use tokio::runtime::{Builder, Handle, Runtime};

struct Owned {
    pid: u32,
    runtime: Runtime,
}

static RUNTIME: Mutex<Option<Owned>> = Mutex::new(None);

/// Blocking threads for synchronous Python bodies. They mostly wait for the GIL or for
/// I/O the body does, so more than the core count pays off; more than this only adds
/// GIL contention.
const MAX_BLOCKING_THREADS: usize = 64;

/// The runtime of this process.
pub fn handle() -> Handle {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(owned) = slot.as_ref() {
        if owned.pid == pid {
            return owned.runtime.handle().clone();
        }
    }
    let runtime = Builder::new_multi_thread()
        .thread_name("ferroflow")
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(Duration::from_secs(60))
        .on_thread_start(keep_thread_state)
        .enable_time()
        // Network I/O for the Redis and NATS stores.
        .enable_io()
        .build()
        .expect("the tokio runtime starts");
    let handle = runtime.handle().clone();
    if let Some(stale) = slot.replace(Owned { pid, runtime }) {
        // Inherited across fork(): its threads are gone, and dropping it would wait for them.
        std::mem::forget(stale);
    }
    handle
}

/// Blocks on `future` with the GIL released, checking for Ctrl-C (and calling `tick`)
/// every 100 ms so that a blocked caller can always be interrupted.
pub fn block_on<T: Send>(
    py: Python<'_>,
    future: impl Future<Output = T> + Send,
    mut tick: impl FnMut(Python<'_>) -> PyResult<()> + Send,
) -> PyResult<T> {
    let handle = handle();
    py.detach(|| {
        handle.block_on(async {
            let mut future = std::pin::pin!(future);
            loop {
                tokio::select! {
                    out = &mut future => return Ok(out),
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        Python::attach(|py| py.check_signals().and_then(|()| tick(py)))?;
                    }
                }
            }
        })
    })
}

/// Gives each runtime thread a Python thread state for its whole life, with the GIL
/// released. Without one, every `Python::attach` on the thread would create and destroy a
/// thread state (and its frame stack), which costs more than a no-op body call.
///
/// The thread state is deliberately not torn down when the thread exits: that could run
/// during interpreter finalisation, when touching the interpreter is unsafe; the
/// interpreter frees left-over thread states itself when it finalises.
fn keep_thread_state() {
    // SAFETY: the module is loaded, so the interpreter is initialised. `PyGILState_Ensure`
    // gives this thread a thread state and the GIL, and `PyEval_SaveThread` releases the
    // GIL while keeping the thread state registered for later `PyGILState_Ensure` calls.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            let _ = ffi::PyGILState_Ensure();
            let _ = ffi::PyEval_SaveThread();
        }
    }
}

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);

/// Whether the interpreter is shutting down ([`shutdown`] was called): engine threads must
/// not call into Python any more.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::SeqCst)
}

/// Runs `f` with the GIL on a thread the engine owns, unless the interpreter is shutting
/// down (then `None`). Once finalisation has begun, a native thread that enters Python
/// can abort the process, so every call into Python from engine threads goes through
/// here, and [`shutdown`] waits for the calls already inside.
pub fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        return None;
    }
    IN_PYTHON.fetch_add(1, Ordering::SeqCst);
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _leave = Leave;
    // Checked again after registering: `shutdown` sets the flag, then waits for the count.
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        return None;
    }
    Some(Python::attach(f))
}

/// Called at interpreter exit (`atexit`): engine threads stop calling into Python, and
/// those inside get up to two seconds to leave.
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while IN_PYTHON.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}
