//! `graph.map`'s batch: one run per input, at most `concurrency` in flight, their snapshots
//! in input order.
//!
//! Each run's snapshot is kept from the moment the run settles, and the task that waited for
//! it is freed then: a batch of 100,000 runs holds 100,000 snapshots at the end, not 100,000
//! finished tasks with their handles.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferroflow::{Attachment, Engine, Error, Result, RunSnapshot, StartOptions, Value, Workflow};
use tokio::task::{JoinError, JoinSet};

/// What a batch runs: the graph, the inputs (and their run ids, if the batch is named), how
/// many runs at a time, and the attachment every run gets.
pub struct Batch {
    pub engine: Engine,
    pub workflow: Workflow,
    pub inputs: Vec<Value>,
    pub run_ids: Option<Vec<String>>,
    pub concurrency: usize,
    pub attachment: Option<Attachment>,
}

impl Batch {
    /// Runs the batch: starts run `i` once a slot is free, and returns every snapshot in
    /// input order. A run that cannot be started ends the batch with its error at once; one
    /// that cannot be waited for, once every run before it has settled (as waiting for the
    /// runs one by one, in order, would). The runs already started go on. `done` counts the
    /// settled runs.
    pub async fn run(self, done: Arc<AtomicUsize>) -> Result<Vec<RunSnapshot>> {
        let Batch { engine, workflow, inputs, run_ids, concurrency, attachment } = self;
        let total = inputs.len();
        let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut results = Results::new(total);
        let mut waits = JoinSet::new();
        let mut run_ids = run_ids.map(Vec::into_iter);
        for (i, input) in inputs.into_iter().enumerate() {
            let permit = Arc::clone(&gate).acquire_owned().await.expect("the semaphore is never closed");
            while let Some(joined) = waits.try_join_next() {
                results.take(joined)?;
            }
            let run_id = run_ids.as_mut().and_then(Iterator::next);
            let run = engine.start(&workflow, input, StartOptions { run_id, attachment: attachment.clone() })?;
            let done = Arc::clone(&done);
            waits.spawn(async move {
                let snapshot = run.wait(None).await;
                done.fetch_add(1, Ordering::Relaxed);
                drop(permit);
                (i, snapshot)
            });
            // Starting a run of a durable context waits on its store right here: yield after
            // each, so that whoever polls the batch (the caller's progress and Ctrl-C checks)
            // gets a turn even while slots free up as fast as runs start.
            tokio::task::yield_now().await;
        }
        while let Some(joined) = waits.join_next().await {
            results.take(joined)?;
        }
        results.finish()
    }
}

/// The snapshots of a batch by input position (and the errors of waits that failed), and
/// how far from the first they are all in.
struct Results {
    slots: Vec<Option<RunSnapshot>>,
    errors: BTreeMap<usize, Error>,
    /// Every slot before it is filled.
    filled: usize,
}

impl Results {
    fn new(total: usize) -> Results {
        Results { slots: (0..total).map(|_| None).collect(), errors: BTreeMap::new(), filled: 0 }
    }

    /// Files a finished wait, and fails with the first error in input order once every run
    /// before it has settled.
    fn take(&mut self, joined: std::result::Result<(usize, Result<RunSnapshot>), JoinError>) -> Result<()> {
        let (i, snapshot) = joined.map_err(|e| Error::Store(format!("waiting for a run of the batch failed: {e}")))?;
        match snapshot {
            Ok(snapshot) => self.slots[i] = Some(snapshot),
            Err(error) => {
                self.errors.insert(i, error);
            }
        }
        loop {
            if let Some(error) = self.errors.remove(&self.filled) {
                return Err(error);
            }
            match self.slots.get(self.filled) {
                Some(Some(_)) => self.filled += 1,
                _ => return Ok(()),
            }
        }
    }

    /// The snapshots, once every run has settled.
    fn finish(self) -> Result<Vec<RunSnapshot>> {
        Ok(self.slots.into_iter().map(|slot| slot.expect("every run of the batch settled")).collect())
    }
}
