//! The Redis store's side of the contract: steps: a journal write with its tasks and holds, in one.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::store::{Created, DurableStore, GraphRecord, QueuedTask, RunRecord, Step, StoredEntry};

use super::{RedisStore, decode_journal, encode_all, outcome};

#[async_trait]
impl DurableStore for RedisStore {
    async fn create(
        &self,
        record: &RunRecord,
        first: &[StoredEntry],
        ready: &[QueuedTask],
        owner: Option<(&str, Duration)>,
    ) -> Result<Created> {
        let run_id = record.run_id.as_str();
        let encoded = encode_all(run_id, first)?;
        let mut invocation = self.inner.scripts.create.prepare_invoke();
        invocation
            .arg(&self.inner.prefix)
            .arg(run_id)
            .arg(&record.graph)
            .arg(&record.version)
            .arg(record.status.as_str())
            .arg(record.created_ms)
            .arg(record.updated_ms)
            .arg(format!("{:020}", record.created_ms))
            .arg(owner.map_or("", |(owner, _)| owner))
            .arg(owner.map_or(0, |(_, lease_for)| lease_for.as_millis() as u64))
            .arg(encoded.len());
        for entry in &encoded {
            invocation.arg(entry);
        }
        invocation.arg(ready.len());
        self.task_args(&mut invocation, ready)?;
        let mut conn = self.conn.clone();
        let new: i64 = self
            .call(&format!("cannot create run '{run_id}'"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        if new == 1 {
            return Ok(Created::New);
        }
        match self.load_run(run_id).await? {
            Some((record, journal)) => Ok(Created::Existing { record, journal }),
            None => Err(Error::Store(format!(
                "{}: run '{run_id}' existed and then vanished (were its keys deleted by hand?)",
                self.inner.server
            ))),
        }
    }

    async fn commit(&self, step: &Step<'_>, owner: Option<(&str, Duration)>) -> Result<bool> {
        let encoded = encode_all(step.run_id, step.entries)?;
        let replies = self.commit_steps(&[(step, encoded)], owner).await?;
        match replies.first() {
            Some(reply) => outcome(step.run_id, step.expected_seq, *reply),
            None => Err(Error::Store(format!("{}: the commit script answered nothing", self.inner.server))),
        }
    }

    /// All steps go to one script call: one round trip, each step atomic and checked
    /// before it writes. A step whose entries cannot be encoded fails alone.
    async fn commit_batch(&self, steps: &[Step<'_>], owner: Option<(&str, Duration)>) -> Result<Vec<Result<bool>>> {
        let mut outcomes: Vec<Option<Result<bool>>> = Vec::with_capacity(steps.len());
        let mut sent = Vec::with_capacity(steps.len());
        for step in steps {
            match encode_all(step.run_id, step.entries) {
                Ok(encoded) => {
                    sent.push((step, encoded));
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let replies = if sent.is_empty() { Vec::new() } else { self.commit_steps(&sent, owner).await? };
        if replies.len() != sent.len() {
            return Err(Error::Store(format!(
                "{}: the commit script answered {} of {} steps",
                self.inner.server,
                replies.len(),
                sent.len()
            )));
        }
        let mut replies =
            sent.iter().zip(replies).map(|((step, _), reply)| outcome(step.run_id, step.expected_seq, reply));
        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Some(failed) => failed,
                None => replies.next().unwrap_or_else(|| Err(Error::Store("a step lost its outcome".into()))),
            })
            .collect())
    }

    async fn delete_finished(&self, run_id: &str) -> Result<bool> {
        let mut invocation = self.inner.scripts.delete.prepare_invoke();
        invocation.arg(&self.inner.prefix).arg(run_id);
        let mut conn = self.conn.clone();
        let deleted: i64 = self
            .call(&format!("cannot delete run '{run_id}'"), async move { invocation.invoke_async(&mut conn).await })
            .await?;
        match deleted {
            -1 => Err(Error::RunNotFound { run_id: run_id.to_owned() }),
            deleted => Ok(deleted == 1),
        }
    }

    async fn load_since(&self, run_id: &str, seq: u64) -> Result<Vec<StoredEntry>> {
        let mut conn = self.conn.clone();
        let start = isize::try_from(seq).unwrap_or(isize::MAX);
        let (graph, rows): (Option<String>, Vec<String>) = self
            .call(&format!("cannot read run '{run_id}'"), async {
                redis::pipe()
                    .atomic()
                    .hget(self.run_key(run_id), "graph")
                    .lrange(self.journal_key(run_id), start, -1)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let Some(graph) = graph else {
            return Err(Error::RunNotFound { run_id: run_id.to_owned() });
        };
        decode_journal(run_id, &graph, seq, rows)
    }

    /// One hash, `<prefix>:graphs`, field `name@version`, value the record as JSON.
    async fn register_graph(&self, graph: &GraphRecord) -> Result<()> {
        let json = serde_json::to_string(graph)
            .map_err(|e| Error::Store(format!("graph '{}' cannot be written as JSON: {e}", graph.name)))?;
        let mut conn = self.conn.clone();
        let key = format!("{}:graphs", self.inner.prefix);
        let field = format!("{}@{}", graph.name, graph.version);
        // A worker's record replaces any; a structure-only one is written only if none is there.
        let command = if graph.worker { "HSET" } else { "HSETNX" };
        let _: i64 = self
            .call(&format!("cannot register graph '{}'", graph.name), async move {
                redis::cmd(command).arg(key).arg(field).arg(json).query_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    async fn graphs(&self) -> Result<Vec<GraphRecord>> {
        let mut conn = self.conn.clone();
        let key = format!("{}:graphs", self.inner.prefix);
        let rows: Vec<String> = self
            .call("cannot list the registered graphs", async move {
                redis::cmd("HVALS").arg(key).query_async(&mut conn).await
            })
            .await?;
        let mut graphs = rows
            .iter()
            .map(|json| {
                serde_json::from_str(json).map_err(|e| {
                    Error::Store(format!("{}: a registered graph cannot be read ({e}): {json}", self.inner.server))
                })
            })
            .collect::<Result<Vec<GraphRecord>>>()?;
        crate::store::sort_graphs(&mut graphs);
        Ok(graphs)
    }
}
