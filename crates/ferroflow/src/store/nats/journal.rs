//! The NATS store's side of the contract: journals and run records.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};

use crate::error::Result;
use crate::store::{JournalStore, RunCursor, RunPage, RunQuery, RunRecord, StoredEntry};

use super::{NatsStore, RunDoc, StepDoc, Versioned, step_key};

#[async_trait]
impl JournalStore for NatsStore {
    /// A run whose step 0 exists without its record is being created (its tasks may be
    /// queued already, and claimed): the record is waited for, up to half a second, rather
    /// than the run reported missing.
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        self.timed("cannot load a run", Duration::ZERO, async {
            for _ in 0..20 {
                if let Some(found) = self.load_run(run_id).await? {
                    return Ok(Some(found));
                }
                if self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, 0)).await?.is_none() {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok(None)
        })
        .await
    }

    /// Scans the run records (there is no index to seek in: every page reads the bucket's
    /// latest records) and keeps those after the cursor that match, with the status
    /// filter loose at first: a record that has not finished may be behind its journal
    /// (its writer died before updating it), so one whose status differs is kept if that
    /// status is not final. The candidates are then sorted and brought up to date in
    /// listing order, 16 at a time, until `limit + 1` have the status asked for, so that
    /// no run shows a status it has left; a page brings up to date only the runs it looks
    /// at, not the whole listing. A record's position (`created_ms`, `order`) never changes
    /// when it is brought up to date.
    ///
    /// Runs created without journal entries (the engine never does: a run starts with
    /// `RunStarted`) have `order` 0, so such runs created in the same millisecond share a
    /// position and a page boundary falling among them skips the rest of them.
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        self.timed("cannot list runs", Duration::ZERO, async {
            if query.limit == 0 {
                return Ok(RunPage::default());
            }
            let position = |run: &RunDoc| RunCursor { created_ms: run.created_ms, order: run.order };
            let mut candidates: Vec<Versioned<RunDoc>> = self
                .scan::<RunDoc>(&self.inner.runs, "")
                .await?
                .into_iter()
                .map(|(_, run)| run)
                .filter(|run| {
                    query.graph.as_ref().is_none_or(|g| run.value.graph == *g)
                        && query.status.is_none_or(|s| run.value.status == s || !run.value.status.is_terminal())
                        && query.after.is_none_or(|after| position(&run.value).is_after(&after))
                })
                .collect();
            candidates
                .sort_by(|a, b| b.value.created_ms.cmp(&a.value.created_ms).then(b.value.order.cmp(&a.value.order)));
            let matching: Vec<(RunCursor, RunRecord)> = futures_util::stream::iter(candidates)
                .map(|run| self.up_to_date(run))
                .buffered(16)
                .try_filter(|run| std::future::ready(query.status.is_none_or(|s| run.status == s)))
                .map_ok(|run| (position(&run), run.record()))
                .take(query.limit.saturating_add(1))
                .try_collect()
                .await?;
            Ok(RunPage::of(matching, query.limit))
        })
        .await
    }
}
