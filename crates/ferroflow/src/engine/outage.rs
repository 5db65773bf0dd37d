//! Riding out store outages: calls that wait out an unavailable store with backoff, up to
//! [`EngineConfig::outage_timeout`], and the bridge from the engine's blocking threads to
//! the store's async calls.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::error::{Error, Result};
use crate::store::DurableStore;

use super::Inner;

impl Inner {
    /// Waits for a store operation from whatever thread the engine is on: a runtime worker
    /// hands its other tasks off while it blocks; any other thread just blocks.
    pub(super) fn block_on<F: Future>(&self, future: F) -> F::Output {
        if Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.runtime.block_on(future))
        } else {
            self.runtime.block_on(future)
        }
    }

    /// Calls the store for `run_id` (doing `what`, for the log), riding out an outage: while
    /// the store is unavailable, calls again with backoff (50 ms doubling to 2 s) for up to
    /// [`EngineConfig::outage_timeout`], with one log line when the work pauses and one when
    /// it resumes. Any other outcome, or the last one past the limit, is returned.
    pub(super) fn patiently<T, F: Future<Output = Result<T>>>(
        &self,
        run_id: &str,
        what: &str,
        call: impl Fn() -> F,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        let mut paused = false;
        loop {
            match self.block_on(call()) {
                Err(Error::Unavailable(reason)) if started.elapsed() < self.config.outage_timeout => {
                    if !paused {
                        tracing::warn!(run_id = %run_id, "{what}: the store is unavailable; waiting for it: {reason}");
                        paused = true;
                    }
                    let nap = pause.min(self.config.outage_timeout.saturating_sub(started.elapsed()));
                    // Made inside the runtime: a timer needs one, and the caller may be outside it.
                    self.block_on(async move { tokio::time::sleep(nap).await });
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                outcome => {
                    if paused {
                        tracing::warn!(
                            run_id = %run_id,
                            "{what}: the store answered again after {:.1}s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return outcome;
                }
            }
        }
    }

    /// Runs `f`, which may lock a run and then wait for the store, from an async task: in a
    /// durable engine on a blocking thread, so that no runtime worker ever waits for a run's
    /// lock or for the store. A networked store (Redis, NATS) needs the workers to drive its
    /// I/O: a worker blocked on a lock held by a thread that waits for the store would stall
    /// both (and `block_in_place` cannot help once the blocking threads are all taken).
    pub(super) async fn off_workers<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Arc<Inner>) -> R + Send + 'static,
    ) -> R {
        if self.config.store.is_none() {
            return f(self);
        }
        let inner = Arc::clone(self);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(value) => value,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// The durable store; only called on paths that exist in durable engines.
    pub(super) fn store(&self) -> &Arc<dyn DurableStore> {
        self.config.store.as_ref().expect("a durable engine")
    }
}
