//! The Redis store's side of the contract: journals and run records.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::error::Result;
use crate::store::{JournalStore, RunCursor, RunPage, RunQuery, RunRecord, StoredEntry};

use super::{MAX_BATCH, RedisStore};

#[async_trait]
impl JournalStore for RedisStore {
    async fn load(&self, run_id: &str) -> Result<Option<(RunRecord, Vec<StoredEntry>)>> {
        self.load_run(run_id).await
    }

    /// Walks the creation index newest first, a batch of members at a time, reading the
    /// records of a batch in one round trip and keeping those that match, until it has
    /// `limit + 1` (the last only says that another page follows) or the index ends.
    /// Without a filter that is one batch; a filter reads the records of the runs it skips
    /// (there is no index by graph or status: a status index would be one more write per
    /// step), in batches that grow while they find too little.
    ///
    /// A page starts below its cursor: the range's exclusive maximum is
    /// `(<created_ms, 20 digits>:<order, 20 digits>:`, which every member of the cursor's
    /// run and of newer runs is above, and each batch starts below the last member of the
    /// one before (no offsets, which cost Redis a walk over the members they skip). A
    /// member's position is read from its prefix.
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        if query.limit == 0 {
            return Ok(RunPage::default());
        }
        let wanted = query.limit.saturating_add(1);
        let index = format!("{}:runs", self.inner.prefix);
        let mut max = match query.after {
            Some(after) => format!("({:020}:{:020}:", after.created_ms, after.order),
            None => "+".to_owned(),
        };
        let mut batch = wanted.min(MAX_BATCH);
        let mut matching = Vec::new();
        while matching.len() < wanted {
            let mut conn = self.conn.clone();
            let members: Vec<String> = self
                .call("cannot list runs", async {
                    redis::cmd("ZRANGE")
                        .arg(&index)
                        .arg(&max)
                        .arg("-")
                        .arg("BYLEX")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(batch)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let Some(last) = members.last() else { break };
            max = format!("({last}");
            let runs: Vec<(RunCursor, &str)> =
                members.iter().map(|member| self.index_member(member)).collect::<Result<_>>()?;
            let mut pipe = redis::pipe();
            for (_, run_id) in &runs {
                pipe.hgetall(self.run_key(run_id));
            }
            let mut conn = self.conn.clone();
            let records: Vec<HashMap<String, String>> =
                self.call("cannot list runs", async { pipe.query_async(&mut conn).await }).await?;
            for ((at, run_id), fields) in runs.into_iter().zip(records) {
                if fields.is_empty() {
                    continue;
                }
                let record = self.record(run_id, &fields)?;
                if query.admits(&record, at) {
                    matching.push((at, record));
                    if matching.len() == wanted {
                        break;
                    }
                }
            }
            if members.len() < batch {
                break;
            }
            batch = (batch * 2).min(MAX_BATCH);
        }
        Ok(RunPage::of(matching, query.limit))
    }
}
