//! Moving runs between contexts: a run exported from one engine's store (or memory), with
//! its whole journal, and imported into another, where it continues ([`Engine::export_run`],
//! [`Engine::import_run`]).
//!
//! The format is [`ExportedRun`], one JSON object per run (the command line writes one per
//! line), versioned by its `format` field ([`EXPORT_FORMAT`]). Entries keep their positions
//! and times and are the journal's own JSON, so a run moves without losing what any entry
//! says. Importing checks everything before writing anything: the format, the run id, that
//! the journal begins with `RunStarted` of the importing graph's name and version, that its
//! positions are 0, 1, 2... and that it replays over the graph; a run that exists already in
//! the target is refused, never overwritten.
//!
//! A run imported while it was running elsewhere may have had attempts in flight there: each
//! is recorded as interrupted (`NodeFailed` of kind `Interrupted`, retried at once) and runs
//! again as its next attempt with the same idempotency base, as a run taken over from a
//! process that died does. Completed nodes never run again; a run waiting for a person waits
//! in the target, and a finished run is only stored.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::body::{Attachment, Workflow};
use crate::error::{Error, NodeError, Result};
use crate::journal::{JournalEntry, RunStatus, now_ms};
use crate::state::RunState;
use crate::store::{Created, QueuedTask, RunRecord, StoredEntry, holds};

use super::run::LiveRun;
use super::{Engine, Inner, RunHandle, check_run_id};

/// The `format` of every [`ExportedRun`] this version writes and reads.
pub const EXPORT_FORMAT: &str = "ferroflow.run/1";

/// A run as [`Engine::export_run`] gives it: its record and its whole journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportedRun {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// The run's id; it keeps it in the context it moves to.
    pub run_id: String,
    /// Its graph's name.
    pub graph: String,
    /// Its graph's version: only the same version imports it.
    pub version: String,
    /// Its status when exported, as the store recorded it.
    pub status: RunStatus,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Its journal, from `RunStarted`.
    pub journal: Vec<ExportedEntry>,
}

/// One journal entry of an [`ExportedRun`]: its position, time and the entry's own JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportedEntry {
    /// The entry's position in the journal, from 0.
    pub seq: u64,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The entry.
    pub entry: JournalEntry,
}

impl Engine {
    /// A run with its record and whole journal, finished or not, as the store holds it (in
    /// memory without a store), for [`Engine::import_run`] in another context. Does not take
    /// the run over.
    ///
    /// # Errors
    ///
    /// [`Error::RunNotFound`] if there is no such run, and the store's errors.
    pub fn export_run(&self, run_id: &str) -> Result<ExportedRun> {
        let (record, journal) = self.load(run_id)?;
        Ok(ExportedRun {
            format: EXPORT_FORMAT.to_owned(),
            run_id: record.run_id,
            graph: record.graph,
            version: record.version,
            status: record.status,
            created_ms: record.created_ms,
            journal: journal
                .into_iter()
                .map(|s| ExportedEntry { seq: s.seq, at_ms: s.at_ms, entry: s.entry })
                .collect(),
        })
    }

    /// Stores `run` (exported from any context, by [`Engine::export_run`]) in this engine's
    /// context under its own id, and continues it as a run of `workflow` that was always here:
    /// in an engine that executes runs, here; otherwise on the workers. See the module docs for
    /// what is checked and what happens to attempts that were in flight.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming why, if the run cannot be imported: an unknown format,
    /// a run id this context cannot hold, a journal that does not begin with `RunStarted`, has
    /// gaps, is of another graph or version, does not replay over the graph, holds values
    /// this context cannot store, or a run of that id that exists here already. Also the
    /// store's errors.
    pub fn import_run(
        &self,
        workflow: &Workflow,
        run: ExportedRun,
        attachment: Option<Attachment>,
    ) -> Result<RunHandle> {
        self.inner.check_open()?;
        check_run_id(&run.run_id)?;
        let run_id = run.run_id.clone();
        let refused = |reason: String| Error::InvalidInput { run_id: run_id.clone(), reason };
        if run.format != EXPORT_FORMAT {
            return Err(refused(format!(
                "its format is {:?}; this version of ferroflow imports {EXPORT_FORMAT:?}",
                run.format
            )));
        }
        let graph = workflow.graph();
        let Some(ExportedEntry { entry: JournalEntry::RunStarted { graph: name, version, .. }, .. }) =
            run.journal.first()
        else {
            return Err(refused("its journal does not begin with RunStarted".to_owned()));
        };
        for (name, version) in [(run.graph.as_str(), run.version.as_str()), (name, version)] {
            if name != graph.name() || version != graph.version() {
                return Err(refused(format!(
                    "it is a run of graph '{name}' version {version}, and it was to be imported as one of graph '{}' \
                     version {}",
                    graph.name(),
                    graph.version()
                )));
            }
        }
        if let Some((i, gap)) = run.journal.iter().enumerate().find(|(i, e)| e.seq != *i as u64) {
            return Err(refused(format!("its journal has entry {} at position {i}", gap.seq)));
        }
        let entries: Vec<JournalEntry> = run.journal.iter().map(|e| e.entry.clone()).collect();
        for entry in &entries {
            for value in values_of(entry) {
                self.inner.accept(value.clone()).map_err(|reason| refused(format!("it holds a value {reason}")))?;
            }
        }
        let mut state = RunState::replay(Arc::clone(graph), &entries).map_err(|reason| {
            refused(format!("its journal does not replay over graph '{}': {reason}", graph.name()))
        })?;
        let mut journal: Vec<StoredEntry> =
            run.journal.into_iter().map(|e| StoredEntry { seq: e.seq, at_ms: e.at_ms, entry: e.entry }).collect();
        // Attempts that may have been running where it came from run again, as their next ones.
        let mut ready = Vec::new();
        let now = now_ms();
        for task in state.outstanding() {
            let interrupted = JournalEntry::NodeFailed {
                node: Arc::clone(workflow.name(task.node)),
                item: task.item,
                attempt: task.attempt,
                error: NodeError::new("Interrupted", "the run was moved to another context; the attempt runs again"),
                retry_in_ms: Some(0),
            };
            let effects =
                state.apply(&interrupted).map_err(|e| refused(format!("its journal ends inconsistently: {e:?}")))?;
            journal.push(StoredEntry { seq: journal.len() as u64, at_ms: now, entry: interrupted });
            ready.extend(effects.ready.into_iter().map(|t| crate::state::Task { delay: None, ..t }));
        }
        let created = NewRun { run_id: &run_id, state, journal, ready, created_ms: run.created_ms, replay: None };
        self.inner.create_whole(workflow, created, attachment, "importing the run").map_err(|error| match error {
            Error::InvalidInput { reason, .. } => refused(reason),
            error => error,
        })
    }
}

/// A run to create with a journal of its own ([`Inner::create_whole`]): its state, as that
/// journal gives it, and the tasks to run first.
pub(super) struct NewRun<'a> {
    pub(super) run_id: &'a str,
    pub(super) state: RunState,
    pub(super) journal: Vec<StoredEntry>,
    pub(super) ready: Vec<crate::state::Task>,
    pub(super) created_ms: u64,
    /// What the run serves from a recorded run it replays ([`Engine::replay`]).
    pub(super) replay: Option<Box<super::run::Replay>>,
}

impl Inner {
    /// Creates a run with its whole journal at once, in the store (one `create`) and in
    /// memory, and runs (or, in an engine that only submits, queues) its ready tasks: what
    /// an import and a fork do. A run of that id that exists already is refused
    /// ([`Error::InvalidInput`]), never overwritten.
    pub(super) fn create_whole(
        self: &Arc<Self>,
        workflow: &Workflow,
        run: NewRun<'_>,
        attachment: Option<Attachment>,
        what: &str,
    ) -> Result<RunHandle> {
        let NewRun { run_id, state, journal, ready, created_ms, replay } = run;
        let exists = || Error::InvalidInput {
            run_id: run_id.to_owned(),
            reason: "a run with this id exists in this context already; it is left as it is".to_owned(),
        };
        if self.live(run_id).is_ok() {
            return Err(exists());
        }
        let graph = workflow.graph();
        let status = state.status();
        let live = LiveRun::new(Arc::from(run_id), workflow.clone(), state, journal, attachment);
        let ready = {
            let mut core = live.lock();
            core.replay = replay;
            live.prepare(&core, ready)
        };
        if let Some(store) = &self.config.store {
            self.register(workflow, false)?;
            let journal = live.lock().journal.clone();
            let record = RunRecord {
                run_id: run_id.to_owned(),
                graph: graph.name().to_owned(),
                version: graph.version().to_owned(),
                status,
                created_ms,
                updated_ms: journal.last().map_or(created_ms, |e| e.at_ms),
            };
            let queued: Vec<QueuedTask> = ready.iter().map(|r| live.queued(&r.task)).collect();
            let holder = if self.config.execute && holds(status) { self.holder() } else { None };
            let epoch = self.epoch();
            let created =
                self.patiently(run_id, what, || store.create(&record, &journal, &queued, holder)).map_err(|error| {
                    match error {
                        Error::ValueTooLarge { .. } => Error::InvalidInput {
                            run_id: run_id.to_owned(),
                            reason: format!("it does not fit in this store: {error}"),
                        },
                        error => error,
                    }
                })?;
            if let Created::Existing { .. } = created {
                return Err(exists());
            }
            live.durable.store(journal.len() as u64, Ordering::Release);
            if holder.is_some() {
                self.confirm(&live, epoch);
            }
        }
        let live = {
            let mut table = self.runs.lock().expect("run table lock");
            if table.runs.contains_key(run_id) {
                return Err(exists());
            }
            table.runs.insert(Arc::clone(&live.run_id), Arc::clone(&live));
            live
        };
        if self.config.store.is_some() && !self.config.execute && holds(status) {
            // Queued for the workers; this engine follows the run from the store.
            self.follow(&live);
            return Ok(self.handle_of(live));
        }
        self.after_change(&live);
        if holds(status) {
            self.dispatch(&live, ready);
        }
        Ok(self.handle_of(live))
    }
}

/// The values an entry carries, each of which the importing context must be able to store.
fn values_of(entry: &JournalEntry) -> Vec<&crate::value::Value> {
    match entry {
        JournalEntry::RunStarted { input, .. } => vec![input],
        JournalEntry::NodeCompleted { output, .. } => vec![output],
        JournalEntry::StepRecorded { value, .. } | JournalEntry::Resumed { value, .. } => vec![value],
        JournalEntry::Interrupted { payload, .. } => vec![payload],
        JournalEntry::RunFinished { output, .. } => output.iter().collect(),
        JournalEntry::NodeFailed { .. }
        | JournalEntry::NodeSkipped { .. }
        | JournalEntry::RunRetried { .. }
        | JournalEntry::RunForked { .. } => Vec::new(),
    }
}
