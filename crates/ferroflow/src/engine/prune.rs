//! Retention: deleting finished runs older than a cutoff ([`Engine::prune`]), so that a
//! store does not grow for ever. Only finished runs (completed, failed, cancelled) are ever
//! deleted; running, waiting and pending runs are left however old they are. A run's age is
//! the time of its last journal entry (when it finished, or was last retried), as its
//! record's `updated_ms` gives it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::journal::{RunStatus, now_ms};
use crate::store::{RunQuery, RunRecord};

use super::{Engine, Handles, Inner};

/// Which finished runs [`Engine::prune`] deletes.
#[derive(Clone, Debug, Default)]
pub struct PruneQuery {
    /// Runs that finished at least this long ago.
    pub older_than: Duration,
    /// Only runs in this status (a finished one); all finished runs when `None`.
    pub status: Option<RunStatus>,
    /// Only runs of this graph, by name.
    pub graph: Option<String>,
    /// Only count them: delete nothing.
    pub dry_run: bool,
}

/// What [`Engine::prune`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The runs deleted (or, in a dry run, that would be), newest first.
    pub runs: Vec<String>,
    /// Runs the query matched that were left because they were no longer finished when
    /// their turn came (retried meanwhile).
    pub left: usize,
}

/// How many runs one page of the listing reads.
const PAGE: usize = 500;

impl Engine {
    /// Deletes the finished runs `query` selects, with their journals, from the store (or,
    /// without a store, from memory). Never touches a run that is not finished.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if `query.status` is not a finished status; the store's errors
    /// (runs deleted before one stay deleted).
    pub fn prune(&self, query: &PruneQuery) -> Result<Pruned> {
        self.inner.check_open()?;
        if let Some(status) = query.status.filter(|s| !s.is_terminal()) {
            return Err(Error::InvalidInput {
                run_id: String::new(),
                reason: format!("prune deletes finished runs only (completed, failed, cancelled), not {status} ones"),
            });
        }
        let cutoff = now_ms().saturating_sub(query.older_than.as_millis() as u64);
        let mut old: Vec<RunRecord> = Vec::new();
        let mut listing = RunQuery { graph: query.graph.clone(), status: query.status, limit: PAGE, after: None };
        loop {
            let page = self.list_runs(&listing)?;
            old.extend(page.runs.into_iter().filter(|r| r.status.is_terminal() && r.updated_ms <= cutoff));
            match page.next {
                Some(next) => listing.after = Some(next),
                None => break,
            }
        }
        let mut pruned = Pruned::default();
        for record in old {
            let deleted = if query.dry_run { true } else { self.delete_finished(&record.run_id)? };
            if deleted {
                pruned.runs.push(record.run_id);
            } else {
                pruned.left += 1;
            }
        }
        Ok(pruned)
    }

    /// Deletes one finished run from the store and from memory; `false` if it is not
    /// finished (any more), or gone already.
    fn delete_finished(&self, run_id: &str) -> Result<bool> {
        let deleted = match &self.inner.config.store {
            Some(store) => match self.inner.block_on(store.delete_finished(run_id)) {
                Ok(deleted) => deleted,
                Err(Error::RunNotFound { .. }) => false,
                Err(error) => return Err(error),
            },
            None => true,
        };
        let mut table = self.inner.runs.lock().expect("run table lock");
        let finished = table.runs.get(run_id).is_none_or(|run| run.status().is_terminal());
        if !deleted || !finished {
            return Ok(deleted && finished);
        }
        if let Some(run) = table.runs.remove(run_id) {
            table.finished.remove(&run.finished_at.load(std::sync::atomic::Ordering::Acquire));
        }
        Ok(true)
    }
}

/// Deletes the finished runs older than `retention` every tenth of it (between 1 s and an
/// hour), for as long as the engine exists ([`EngineConfig::retention`](super::EngineConfig::retention)).
pub(super) async fn keep_for(inner: Weak<Inner>, retention: Duration) {
    let Some(closed) = inner.upgrade().map(|inner| inner.closed.clone()) else { return };
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        // A handle of its own that does not keep the engine's handles alive.
        let engine = Engine { inner, _handles: Arc::new(Handles(tokio_util::sync::CancellationToken::new())) };
        let query = PruneQuery { older_than: retention, ..PruneQuery::default() };
        match tokio::task::spawn_blocking(move || engine.prune(&query)).await {
            Ok(Ok(pruned)) if !pruned.runs.is_empty() => {
                tracing::info!(deleted = pruned.runs.len(), "deleted finished runs past their retention");
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot delete finished runs past their retention yet"),
            Err(_) => return,
        }
    }
}
