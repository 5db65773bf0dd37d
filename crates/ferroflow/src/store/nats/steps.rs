//! The step protocol (see the module documentation): walking a run's chain of steps,
//! writing one with its effects (tasks, holds, the run record), and repairing the effects
//! of a step whose writer died before applying them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::journal::{RunStatus, now_ms};
use crate::store::{Created, QueuedTask, RELEASED, RunRecord, Step, StoredEntry, holds};

use super::{
    EntryJson, HOLD_REPAIR_GRACE, HoldDoc, NatsStore, RETRIES, RunDoc, StepDoc, TaskDoc, TaskJson, Versioned, Written,
    entries_of, step_key, task_key, token,
};

impl NatsStore {
    pub(super) async fn record(&self, run_id: &str) -> Result<Option<Versioned<RunDoc>>> {
        self.get(&self.inner.runs, &token(run_id)).await
    }

    /// The steps of `run_id` from the boundary `from` on, looked up one by one.
    pub(super) async fn walk(&self, run_id: &str, mut from: u64) -> Result<Vec<(u64, StepDoc)>> {
        let mut steps = Vec::new();
        while let Some(step) = self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, from)).await? {
            let next = step.value.end(from);
            if next == from {
                break;
            }
            steps.push((from, step.value));
            from = next;
        }
        Ok(steps)
    }

    /// The steps of `run_id` from the boundary `from` on: all of the run's steps in one
    /// batched read where the server has it (2.11 and later), else looked up one by one.
    pub(super) async fn steps_from(&self, run_id: &str, from: u64) -> Result<Vec<(u64, StepDoc)>> {
        let prefix = format!("{}.", token(run_id));
        match self.batch_get::<StepDoc>(&self.inner.journal, &prefix).await? {
            Some(all) => Ok(chain(&prefix, all, from)),
            None => self.walk(run_id, from).await,
        }
    }

    /// Every step of `run_id`, by one scan of its keys, in chain order.
    pub(super) async fn all_steps(&self, run_id: &str) -> Result<Vec<(u64, StepDoc)>> {
        let prefix = format!("{}.", token(run_id));
        let found = self.scan::<StepDoc>(&self.inner.journal, &prefix).await?;
        Ok(chain(&prefix, found.into_iter().map(|(key, step)| (key, step.value)), 0))
    }

    /// The end of `run_id`'s journal, applying the effects of steps beyond the record's
    /// `len` (left by a writer that crashed, or is still writing them).
    pub(super) async fn journal_end(&self, run_id: &str, record: &Versioned<RunDoc>) -> Result<u64> {
        let steps = self.walk(run_id, record.value.len).await?;
        let Some((first, last)) = steps.last() else { return Ok(record.value.len) };
        let end = last.end(*first);
        self.repair(run_id, &steps).await?;
        Ok(end)
    }

    /// The record of a run, repaired first if a step lies beyond it. A finished run has no
    /// step beyond the one that finished it, so its record is taken as it is.
    pub(super) async fn up_to_date(&self, record: Versioned<RunDoc>) -> Result<RunDoc> {
        if record.value.status.is_terminal() {
            return Ok(record.value);
        }
        let run_id = record.value.run_id.clone();
        if self.get::<StepDoc>(&self.inner.journal, &step_key(&run_id, record.value.len)).await?.is_none() {
            return Ok(record.value);
        }
        self.journal_end(&run_id, &record).await?;
        Ok(self.record(&run_id).await?.map_or(record.value, |fresh| fresh.value))
    }

    /// Applies the effects of `steps` again, then advances the record past them.
    ///
    /// A last step that means to hold the run, younger than [`HOLD_REPAIR_GRACE`] and with no
    /// hold yet, is left unrepaired (the record stays before it): its writer is most likely
    /// alive and about to take the hold, and handing the run out now would make a worker take
    /// over a run that writer is about to execute (its attempts then journaled as
    /// interrupted). A reader after the grace repairs it, and hands the run out if its writer
    /// died. The record never moves past a step whose run nobody may claim.
    pub(super) async fn repair(&self, run_id: &str, steps: &[(u64, StepDoc)]) -> Result<()> {
        let mut repaired = 0;
        for (i, (_, step)) in steps.iter().enumerate() {
            if step.effects {
                self.apply_tasks(run_id, step.status, &step.done, &step.queue).await?;
                if step.status.is_some_and(|s| !holds(s)) {
                    self.remove(&self.inner.holds, &token(run_id)).await?;
                } else if step.hold {
                    // Whatever hold there is (the writer's, most likely) stays.
                    let key = token(run_id);
                    let last = i + 1 == steps.len();
                    if last && !step.older_than(HOLD_REPAIR_GRACE) {
                        if self.get::<HoldDoc>(&self.inner.holds, &key).await?.is_none() {
                            break;
                        }
                    } else {
                        let released = HoldDoc { owner: RELEASED.to_owned(), until_ms: 0 };
                        if self.kv_create(&self.inner.holds, &key, &released).await?.is_some() {
                            self.hint_run(&key).await;
                            self.wake().await;
                        }
                    }
                }
            }
            repaired = i + 1;
        }
        let steps = &steps[..repaired];
        if let Some((first, last)) = steps.last() {
            let status = steps.iter().rev().find_map(|(_, s)| s.status);
            let updated = last.entries.last().map(|e| e.at_ms);
            self.advance(run_id, last.end(*first), status, updated, None).await?;
        }
        Ok(())
    }

    /// Moves the record's `len` to `end` (unless it is there already) with the status and
    /// time of the step that ends there.
    /// `known` is the record as the caller last read it, tried first.
    pub(super) async fn advance(
        &self,
        run_id: &str,
        end: u64,
        status: Option<RunStatus>,
        updated_ms: Option<u64>,
        known: Option<Versioned<RunDoc>>,
    ) -> Result<Option<Versioned<RunDoc>>> {
        self.change_record(run_id, known, |doc| {
            if doc.len >= end {
                return false;
            }
            doc.len = end;
            if let Some(status) = status {
                doc.status = status;
            }
            if let Some(at) = updated_ms {
                doc.updated_ms = at;
            }
            true
        })
        .await
    }

    /// Changes the run record by compare-and-set: `change` edits it, or says there is
    /// nothing to write (`false`). Tried first on `known` (the record as the caller last
    /// read it), then on fresh reads for as long as other writers get there first. Returns
    /// the record as written, with its revision (`None` when nothing was written).
    pub(super) async fn change_record(
        &self,
        run_id: &str,
        mut known: Option<Versioned<RunDoc>>,
        change: impl Fn(&mut RunDoc) -> bool,
    ) -> Result<Option<Versioned<RunDoc>>> {
        let key = token(run_id);
        for _ in 0..RETRIES {
            let current = match known.take() {
                Some(record) => Some(record),
                None => self.record(run_id).await?,
            };
            let Some(Versioned { value: mut doc, revision }) = current else {
                return Err(Error::RunNotFound { run_id: run_id.to_owned() });
            };
            if !change(&mut doc) {
                return Ok(None);
            }
            if let Some(revision) = self.update(&self.inner.runs, &key, &doc, revision).await? {
                return Ok(Some(Versioned { value: doc, revision }));
            }
        }
        Err(self.fail(&format!("cannot update the record of run '{run_id}'"), "too many concurrent writers"))
    }

    /// Removes resolved tasks (all of the run's when `status` is terminal) and queues
    /// `queue`; says whether anything was queued.
    pub(super) async fn apply_tasks(
        &self,
        run_id: &str,
        status: Option<RunStatus>,
        done: &[TaskJson],
        queue: &[TaskJson],
    ) -> Result<bool> {
        if status.is_some_and(RunStatus::is_terminal) {
            // Every key of the run at once: one purge with a wildcard filter.
            self.remove(&self.inner.tasks, &format!("{}.>", token(run_id))).await?;
            return Ok(false);
        }
        for task in done {
            self.remove(&self.inner.tasks, &task_key(&QueuedTask::from(task))).await?;
        }
        let mut queued = Vec::new();
        for task in queue {
            let doc = TaskDoc { task: task.clone(), owner: None, until_ms: 0, deliveries: 0 };
            let task = QueuedTask::from(task);
            if self.kv_create(&self.inner.tasks, &task_key(&task), &doc).await?.is_some() {
                queued.push(task);
            }
        }
        self.hint_tasks(&queued).await;
        Ok(!queued.is_empty())
    }

    /// Makes `owner` hold the run unless another owner holds it, even with an expired hold
    /// (see [`Step::ready`]); says whether it does. The decision is a compare-and-set on
    /// the hold, so it is the hold's state when written.
    /// `known` is the hold as the caller last read it (`Some(None)`: there was none), tried
    /// first. `end` is where the caller's step ends the journal.
    ///
    /// A hold is created only while the journal still ends with the caller's step: a writer
    /// paused between its step and this (past its lease) finds the run moved on by whoever
    /// took it over, perhaps finished and its hold removed, and must not hold it again.
    pub(super) async fn take_hold(
        &self,
        run_id: &str,
        owner: &str,
        lease_for: Duration,
        mut known: Option<Option<Versioned<HoldDoc>>>,
        end: u64,
    ) -> Result<bool> {
        let key = token(run_id);
        for _ in 0..RETRIES {
            let current = match known.take() {
                Some(hold) => hold,
                None => self.get::<HoldDoc>(&self.inner.holds, &key).await?,
            };
            match current {
                None => {
                    // Steps form one chain: one that starts at `end` means the run moved on.
                    if self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, end)).await?.is_some() {
                        return Ok(false);
                    }
                    let mine = HoldDoc { owner: owner.to_owned(), until_ms: now_ms() + lease_for.as_millis() as u64 };
                    if self.kv_create(&self.inner.holds, &key, &mine).await?.is_some() {
                        return Ok(true);
                    }
                }
                // Handed out by a reader's repair of this very step while this writer applied its
                // effects (a repair's hand-out has no time; a worker's own hand-back has one):
                // still nobody's, so the writer takes it, if the run has not moved on.
                Some(Versioned { value, revision }) if value.owner == RELEASED && value.until_ms == 0 => {
                    if self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, end)).await?.is_some() {
                        return Ok(false);
                    }
                    let mine = HoldDoc { owner: owner.to_owned(), until_ms: now_ms() + lease_for.as_millis() as u64 };
                    if self.update(&self.inner.holds, &key, &mine, revision).await?.is_some() {
                        return Ok(true);
                    }
                }
                Some(Versioned { value, .. }) if value.owner != owner => return Ok(false),
                Some(Versioned { value, revision }) => {
                    // Far from expiring, nobody can claim it as expired (a claimant's clock
                    // would have to be half a lease ahead): the read is the check, and a
                    // takeover later is as late as one after a write-back would be.
                    if value.until_ms >= now_ms() + lease_for.as_millis() as u64 / 2 {
                        return Ok(true);
                    }
                    // Close to expiring, confirm it by writing it back: a claim that read it
                    // before then fails its compare-and-set.
                    if self.update(&self.inner.holds, &key, &value, revision).await?.is_some() {
                        return Ok(true);
                    }
                }
            }
        }
        Err(self.fail(&format!("cannot update the hold of run '{run_id}'"), "too many concurrent writers"))
    }

    /// Writes one step, then its effects (its hold, its ready and resolved tasks, the run
    /// record); see the module documentation for the protocol.
    pub(super) async fn write_step(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        let Step { run_id, expected_seq, entries, status, ready, done } = *step;
        let conflict = |found| Error::Conflict { run_id: run_id.to_owned(), expected: expected_seq, found };
        let me = owner.map(|(me, _)| me);
        // What this handle knows from writing the run's last step, if the step goes where
        // that one ended; taken out, so that after any failure the run is read afresh.
        let written = self
            .forget_written(run_id)
            .filter(|w| w.end == expected_seq && !entries.is_empty() && w.owner.as_deref() == me);
        let (known, mut unqueued) = match written {
            Some(w) => (Some(w.record), w.unqueued),
            None => {
                let Some(record) = self.record(run_id).await? else {
                    return Err(Error::RunNotFound { run_id: run_id.to_owned() });
                };
                let end = self.journal_end(run_id, &record).await?;
                if end != expected_seq {
                    return Err(conflict(end));
                }
                // Unless the walk found steps beyond it, the record is likely unchanged when
                // the step is written: its update is tried from this read first.
                ((end == record.value.len).then_some(record), HashSet::new())
            }
        };
        let mut stored = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            if e.seq != expected_seq + i as u64 {
                return Err(Error::Store(format!(
                    "run '{run_id}': entry {i} of a step at {expected_seq} has seq {}",
                    e.seq
                )));
            }
            stored.push(EntryJson { seq: e.seq, at_ms: e.at_ms, entry: e.entry.clone() });
        }
        let terminal = status.is_terminal();
        let holdable = holds(status);
        // Whether the writer means to hold the run: if so its ready tasks are not queued.
        let mut hold = None;
        let wants_hold = match owner {
            Some((me, _)) if holdable && !terminal => {
                // Read even by a writer that knows the run (a takeover moves no journal).
                let current = self.get::<HoldDoc>(&self.inner.holds, &token(run_id)).await?;
                let wants = current.as_ref().is_none_or(|h| h.value.owner == me);
                hold = Some(current);
                wants
            }
            _ => false,
        };
        let doc = StepDoc {
            entries: stored,
            status: Some(status),
            queue: if wants_hold || terminal { Vec::new() } else { ready.iter().map(TaskJson::from).collect() },
            done: done.iter().map(TaskJson::from).collect(),
            effects: true,
            hold: wants_hold,
        };
        if !entries.is_empty()
            && self.kv_create(&self.inner.journal, &step_key(run_id, expected_seq), &doc).await?.is_none()
            && !self.is_ours(run_id, expected_seq, &doc).await?
        {
            let found = match self.record(run_id).await? {
                Some(record) => self.journal_end(run_id, &record).await?,
                None => expected_seq,
            };
            return Err(conflict(found.max(expected_seq + 1)));
        }
        // The step is written; now its effects.
        let end = expected_seq + entries.len() as u64;
        let mut held = false;
        if !holdable || terminal {
            self.remove(&self.inner.holds, &token(run_id)).await?;
        } else if let (true, Some((me, lease_for))) = (wants_hold, owner) {
            held = self.take_hold(run_id, me, lease_for, hold, end).await?;
        }
        let queue: Vec<TaskJson> =
            if held || terminal { Vec::new() } else { ready.iter().map(TaskJson::from).collect() };
        // Tasks this handle ran itself, never queued, are not in the bucket: nobody else
        // wrote a step since (the step above would have failed), and only steps queue tasks.
        let queued_done: Vec<TaskJson> =
            doc.done.iter().filter(|t| !unqueued.remove(&task_key(&QueuedTask::from(*t)))).cloned().collect();
        if self.apply_tasks(run_id, Some(status), &queued_done, &queue).await? {
            self.wake().await;
        }
        if entries.is_empty() {
            self.record_status(run_id, status).await?;
            return Ok(held);
        }
        let record = self.advance(run_id, end, Some(status), entries.last().map(|e| e.at_ms), known).await?;
        self.announce(run_id, status).await;
        if let Some(record) = record
            && held
            && !terminal
        {
            unqueued.extend(ready.iter().map(task_key));
            self.remember_written(run_id, Written { end, owner: me.map(str::to_owned), record, unqueued });
        }
        Ok(held)
    }

    /// Whether the step stored at `first` is `doc`: an earlier try of this very write that
    /// landed although its caller heard otherwise (its reply was lost).
    pub(super) async fn is_ours(&self, run_id: &str, first: u64, doc: &StepDoc) -> Result<bool> {
        let Some(stored) = self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, first)).await? else {
            return Ok(false);
        };
        let json = |step: &StepDoc| serde_json::to_string(&step.entries).ok();
        Ok(json(&stored.value).is_some() && json(&stored.value) == json(doc))
    }

    /// Sets the record's status by compare-and-set (for a step without entries: the record's
    /// `len` and `updated_ms` stay).
    pub(super) async fn record_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        self.change_record(run_id, None, |doc| {
            doc.status = status;
            true
        })
        .await
        .map(drop)
    }

    /// The record and whole journal of a run, repairing effects a crashed writer left out.
    /// The steps are read key by key ([`NatsStore::walk`]): a filtered scan of the bucket
    /// costs the server time in proportion to the whole bucket (every run's steps) on
    /// nats-server 2.9, which made loading runs slower as a batch grew.
    pub(super) async fn load_run(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        let Some(record) = self.record(run_id).await? else { return Ok(None) };
        let steps = self.steps_from(run_id, 0).await?;
        let end = steps.last().map_or(0, |(first, step)| step.end(*first));
        let mut doc = record.value;
        if end > doc.len {
            let beyond: Vec<(u64, StepDoc)> = steps.iter().filter(|(first, _)| *first >= doc.len).cloned().collect();
            self.repair(run_id, &beyond).await?;
            if let Some(fresh) = self.record(run_id).await? {
                doc = fresh.value;
            }
        }
        Ok(Some((doc.record(), entries_of(steps, 0))))
    }

    /// Creates a run: step 0, then its hold or tasks, then its record.
    pub(super) async fn write_creation(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        let run_id = record.run_id.as_str();
        let run = |len: u64, order: u64| RunDoc {
            run_id: run_id.to_owned(),
            graph: record.graph.clone(),
            version: record.version.clone(),
            status: record.status,
            created_ms: record.created_ms,
            updated_ms: record.updated_ms,
            len,
            order,
        };
        let queue: Vec<TaskJson> =
            if owner.is_none() { ready.iter().map(TaskJson::from).collect() } else { Vec::new() };
        if first.is_empty() {
            // No step 0 to create (an empty one would stand where the first step goes):
            // the record is the run's creation, and sorts before the runs created in the
            // same millisecond.
            if self.kv_create(&self.inner.runs, &token(run_id), &run(0, 0)).await?.is_none() {
                let (record, journal) =
                    self.load_run(run_id).await?.ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
                return Ok(Created::Existing { record, journal });
            }
            self.create_effects(run_id, &queue, owner).await?;
            return Ok(Created::New);
        }
        let doc = StepDoc {
            entries: first.iter().map(|e| EntryJson { seq: e.seq, at_ms: e.at_ms, entry: e.entry.clone() }).collect(),
            status: None,
            queue,
            done: Vec::new(),
            effects: true,
            // A creator that dies before holding the run is handled below, with the record.
            hold: false,
        };
        let Some(order) = self.kv_create(&self.inner.journal, &step_key(run_id, 0), &doc).await? else {
            // The run exists, or is being created: its creator writes the record next.
            for _ in 0..20 {
                if let Some((record, journal)) = self.load_run(run_id).await? {
                    return Ok(Created::Existing { record, journal });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Its creator died between step 0 and the record. Write the record, behind
            // step 0, so that loading it applies step 0's effects (queues its tasks); if
            // the creator meant to hold the run, hand it to whoever claims it.
            let step0 = self.get::<StepDoc>(&self.inner.journal, &step_key(run_id, 0)).await?;
            if let Some(step0) = &step0
                && step0.value.effects
                && step0.value.queue.is_empty()
            {
                let released = HoldDoc { owner: RELEASED.to_owned(), until_ms: 0 };
                if self.kv_create(&self.inner.holds, &token(run_id), &released).await?.is_some() {
                    self.hint_run(&token(run_id)).await;
                }
            }
            self.kv_create(&self.inner.runs, &token(run_id), &run(0, step0.map_or(0, |s| s.revision))).await?;
            let (record, journal) =
                self.load_run(run_id).await?.ok_or_else(|| Error::RunNotFound { run_id: run_id.to_owned() })?;
            return Ok(Created::Existing { record, journal });
        };
        self.create_effects(run_id, &doc.queue, owner).await?;
        self.kv_create(&self.inner.runs, &token(run_id), &run(first.len() as u64, order)).await?;
        Ok(Created::New)
    }

    /// A new run's hold (with an owner) or queued tasks (without).
    pub(super) async fn create_effects(
        &self,
        run_id: &str,
        queue: &[TaskJson],
        owner: Option<(&str, Duration)>,
    ) -> Result<()> {
        match owner {
            Some((owner, lease_for)) => {
                let hold = HoldDoc { owner: owner.to_owned(), until_ms: now_ms() + lease_for.as_millis() as u64 };
                self.put(&self.inner.holds, &token(run_id), &hold).await
            }
            None => {
                if self.apply_tasks(run_id, None, &[], queue).await? {
                    self.wake().await;
                }
                Ok(())
            }
        }
    }
}

/// The chain of steps from the boundary `from` among `found` (keyed `{prefix}{first seq}`).
fn chain(prefix: &str, found: impl IntoIterator<Item = (String, StepDoc)>, from: u64) -> Vec<(u64, StepDoc)> {
    let mut by_first: HashMap<u64, StepDoc> = found
        .into_iter()
        .filter_map(|(key, step)| Some((key.strip_prefix(prefix)?.parse::<u64>().ok()?, step)))
        .collect();
    let mut steps = Vec::new();
    let mut at = from;
    while let Some(step) = by_first.remove(&at) {
        let next = step.end(at);
        steps.push((at, step));
        if next == at {
            break;
        }
        at = next;
    }
    steps
}
