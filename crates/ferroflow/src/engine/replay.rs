//! Replaying a recorded run ([`Engine::replay`]): its graph runs again, from its input, with
//! every step the recorded run's attempts recorded (model calls, tool calls, a body's own
//! `record`ed steps) served from its journal and every person's answer given as it was (a
//! human node completes with the recorded answer as soon as its body has run, without
//! waiting), so that nothing outside is called. A body that asks for a step the recording does not
//! hold fails with kind `StepNotRecorded` instead of taking it: the code diverges there. The
//! replay is a run of its own in this engine (typically in memory), which the caller
//! compares with the recording to find the first node whose output differs.

use std::sync::Arc;

use crate::body::{Attachment, Workflow};
use crate::error::{Error, Result};
use crate::journal::{JournalEntry, now_ms};
use crate::state::RunState;
use crate::store::StoredEntry;

use super::run::Replay;
use super::transfer::NewRun;
use super::{Engine, RunHandle, check_run_id};

impl Engine {
    /// Runs `workflow` again over the input of a recorded run (its `journal`, as
    /// [`Engine::journal`] or [`Engine::export_run`] give it, from any context), serving its
    /// recorded steps and answers, as run `run_id` (a new id when `None`) of this engine.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if the journal does not begin with `RunStarted` of a graph of
    /// `workflow`'s name, or the id is taken; the store's errors in a durable engine.
    pub fn replay(
        &self,
        workflow: &Workflow,
        journal: &[StoredEntry],
        run_id: Option<String>,
        attachment: Option<Attachment>,
    ) -> Result<RunHandle> {
        self.inner.check_open()?;
        let run_id = match run_id {
            Some(id) => {
                check_run_id(&id)?;
                id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let refused = |reason: String| Error::InvalidInput { run_id: run_id.clone(), reason };
        let graph = workflow.graph();
        let Some(JournalEntry::RunStarted { graph: name, input, .. }) = journal.first().map(|e| &e.entry) else {
            return Err(refused("the recorded journal does not begin with RunStarted".to_owned()));
        };
        if **name != *graph.name() {
            return Err(refused(format!("the recorded run is of graph '{name}', not '{}'", graph.name())));
        }
        let mut replay = Replay::default();
        for stored in journal {
            match &stored.entry {
                JournalEntry::StepRecorded { node, item, key, value, .. } => {
                    replay.steps.entry((Arc::clone(node), *item)).or_default().push((Arc::clone(key), value.clone()))
                }
                JournalEntry::Resumed { node, value } => {
                    replay.answers.insert(Arc::clone(node), value.clone());
                }
                _ => {}
            }
        }
        let input = self.inner.accept(input.clone()).map_err(|reason| refused(format!("its input: {reason}")))?;
        let (state, effects) = RunState::start(Arc::clone(graph), input.clone());
        let now = now_ms();
        let started = JournalEntry::RunStarted { graph: graph.name().into(), version: graph.version().into(), input };
        let journal: Vec<StoredEntry> = std::iter::once(started)
            .chain(effects.derived)
            .enumerate()
            .map(|(seq, entry)| StoredEntry { seq: seq as u64, at_ms: now, entry })
            .collect();
        let created = NewRun {
            run_id: &run_id,
            state,
            journal,
            ready: effects.ready,
            created_ms: now,
            replay: Some(Box::new(replay)),
        };
        self.inner.create_whole(workflow, created, attachment, "starting the replay")
    }
}
