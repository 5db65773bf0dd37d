//! The NATS store's side of the contract: steps: a journal write with its tasks and holds, in one.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use futures_util::StreamExt;

use crate::store::{Changes, Created, DurableStore, GraphRecord, QueuedTask, RunRecord, Step, StoredEntry};

use super::{NatsStore, StepDoc, entries_of, step_key, token};

#[async_trait]
impl DurableStore for NatsStore {
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        self.timed("cannot create a run", Duration::ZERO, self.write_creation(record, first, ready, owner)).await
    }

    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        self.timed("cannot write a step", Duration::ZERO, self.write_step(step, owner)).await
    }

    /// The steps of each run in order, the runs at the same time: a step is several round
    /// trips, and steps of different runs do not wait for each other (a group commit of
    /// many runs' steps written one after another took longer than writing each at once).
    async fn commit_batch(&self, steps: &[Step<'_>], owner: Option<(&str, Duration)>) -> Result<Vec<Result<bool>>> {
        let mut by_run: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            by_run.entry(step.run_id).or_default().push(i);
        }
        let runs = by_run.into_values().map(|positions| async move {
            let mut outcomes = Vec::with_capacity(positions.len());
            for i in positions {
                outcomes.push((i, self.commit(&steps[i], owner).await));
            }
            outcomes
        });
        let mut outcomes: Vec<Option<Result<bool>>> = steps.iter().map(|_| None).collect();
        for (i, outcome) in futures_util::future::join_all(runs).await.into_iter().flatten() {
            outcomes[i] = Some(outcome);
        }
        Ok(outcomes.into_iter().map(|outcome| outcome.expect("every step was written")).collect())
    }

    /// One bucket, `ff_{ns}_graphs`, key `{name}.{version}` (escaped), value the record.
    async fn register_graph(&self, graph: &GraphRecord) -> Result<()> {
        self.timed("cannot register a graph", Duration::ZERO, async {
            let key = format!("{}.{}", token(&graph.name), token(&graph.version));
            // A worker's record replaces any; a structure-only one is written only if none is there.
            if graph.worker {
                self.put(&self.inner.graphs, &key, graph).await
            } else {
                self.kv_create(&self.inner.graphs, &key, graph).await.map(drop)
            }
        })
        .await
    }

    async fn graphs(&self) -> Result<Vec<GraphRecord>> {
        self.timed("cannot list the registered graphs", Duration::ZERO, async {
            let mut graphs: Vec<GraphRecord> = self
                .scan::<GraphRecord>(&self.inner.graphs, "")
                .await?
                .into_iter()
                .map(|(_, graph)| graph.value)
                .collect();
            crate::store::sort_graphs(&mut graphs);
            Ok(graphs)
        })
        .await
    }

    fn max_write_bytes(&self) -> Option<usize> {
        Some(NatsStore::max_write_bytes(self))
    }

    /// A step's writer publishes its run's id on the core NATS subject `ff.{ns}.settled`
    /// when the step leaves the run in a status other than running (settled, waiting,
    /// failed); no stream: a lost notice only delays a follower until its next look. The
    /// first follower of this handle subscribes to it. Steps of running runs are not
    /// announced: engines read the runs someone watches on their own, and a follower that
    /// only waits is not woken by every step. `None` if the subscription fails (followers
    /// then poll).
    async fn changes(&self) -> Option<Changes> {
        let listening = self
            .inner
            .change_listener
            .get_or_try_init(|| async {
                let mut notices = self.inner.client.subscribe(format!("{}.settled", self.inner.change_subject)).await?;
                self.inner.client.flush().await?;
                let followers = std::sync::Arc::clone(&self.inner.followers);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(tokio::spawn(async move {
                    while let Some(notice) = notices.next().await {
                        if let Ok(run_id) = std::str::from_utf8(&notice.payload) {
                            followers.note(run_id);
                        }
                    }
                }))
            })
            .await;
        match listening {
            Ok(_) => Some(self.inner.followers.subscribe()),
            Err(error) => {
                tracing::warn!(error = %self.fail("cannot subscribe to notices of changed runs", error), "following runs by polling");
                None
            }
        }
    }

    /// The record goes first, and only at the revision that says the run finished (a retry
    /// that moved it on meanwhile keeps it); then its steps, tasks and hold, each with one
    /// filtered purge. A run retried at the very moment its record goes may leave its new
    /// steps behind without a record: they read as no run, and the next prune of the
    /// namespace does not see them (deleting the namespace does).
    async fn delete_finished(&self, run_id: &str) -> Result<bool> {
        self.timed("cannot delete a run", Duration::ZERO, async {
            // Brought up to date first: a finished record may have a retry's step beyond it.
            if self.load_run(run_id).await?.is_none() {
                return Err(Error::RunNotFound { run_id: run_id.to_owned() });
            }
            let Some(record) = self.record(run_id).await? else {
                return Err(Error::RunNotFound { run_id: run_id.to_owned() });
            };
            if !record.value.status.is_terminal()
                || self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, record.value.len)).await?.is_some()
            {
                return Ok(false);
            }
            let key = token(run_id);
            if !self.remove_if(&self.inner.runs, &key, record.revision).await? {
                return Ok(false);
            }
            self.forget_written(run_id);
            self.remove(&self.inner.journal, &format!("{key}.>")).await?;
            self.remove(&self.inner.tasks, &format!("{key}.>")).await?;
            self.remove(&self.inner.holds, &key).await?;
            Ok(true)
        })
        .await
    }

    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>> {
        self.timed("cannot load a journal", Duration::ZERO, async {
            let Some(record) = self.record(run_id).await? else {
                return Err(Error::RunNotFound { run_id: run_id.to_owned() });
            };
            // From the step starting at `seq`, or the record's boundary if it is not past it.
            let from = if record.value.len <= seq { record.value.len } else { seq };
            let steps = self.steps_from(run_id, from).await?;
            if from < record.value.len && steps.is_empty() {
                // `seq` is inside a step: read the whole chain.
                return Ok(entries_of(self.all_steps(run_id).await?, seq));
            }
            if let Some((first, last)) = steps.last()
                && last.end(*first) > record.value.len
            {
                let beyond: Vec<(u64, StepDoc)> =
                    steps.iter().filter(|(first, _)| *first >= record.value.len).cloned().collect();
                self.repair(run_id, &beyond).await?;
            }
            Ok(entries_of(steps, seq))
        })
        .await
    }
}
