//! A durable batch on SQLite: kill it at any point, start it again, and it finishes
//! where it stopped. Nodes that completed before the kill do not run again.
//!
//! ```text
//! cargo run -p ferroflow --example durable_batch --features sqlite -- runs.db 40
//! ```
//!
//! Each item `i` runs `fetch -> enrich -> score`, with run id `item-<i>`. Starting a run
//! id that the file already has returns that run: a finished one as it is, an
//! unfinished one continued from its journal. The bodies take `DURABLE_BATCH_PAUSE_MS`
//! (default 50) each, so that there is something to kill; with `DURABLE_BATCH_LOG` set,
//! each body appends `run node attempt` to that file.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use ferroflow::{Cx, Engine, EngineConfig, Flow, FlowBuilder, NodeError, SqliteStore};
use serde_json::{Value as Json, json};

/// Sleeps the configured pause and logs the call, as every body here does.
async fn work(cx: &Cx) -> Result<(), NodeError> {
    let pause: u64 = std::env::var("DURABLE_BATCH_PAUSE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    if let Ok(path) = std::env::var("DURABLE_BATCH_LOG") {
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        // One write per line: a kill cannot leave half of one.
        log.write_all(format!("{} {} {}\n", cx.run_id(), cx.node(), cx.attempt()).as_bytes())?;
    }
    Ok(())
}

fn batch_flow() -> Result<Flow, ferroflow::GraphError> {
    let mut g = FlowBuilder::new("durable_batch");
    g.task("fetch", |cx: Cx| async move {
        work(&cx).await?;
        let i: u64 = cx.input()?;
        Ok(json!({"item": i, "text": format!("document {i}")}))
    });
    g.task("enrich", |cx: Cx| async move {
        work(&cx).await?;
        let doc: Json = cx.dep("fetch")?;
        Ok(json!({"item": doc["item"], "words": doc["text"].as_str().unwrap_or_default().split(' ').count()}))
    })
    .after("fetch")
    .attempts(3);
    g.task("score", |cx: Cx| async move {
        work(&cx).await?;
        let enriched: Json = cx.dep("enrich")?;
        Ok(enriched["item"].as_u64().unwrap_or(0) * 10 + enriched["words"].as_u64().unwrap_or(0))
    })
    .after("enrich");
    g.build()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "runs.db".into());
    let count: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20);

    let store = SqliteStore::open(&path)?;
    let config = EngineConfig { store: Some(Arc::new(store)), ..EngineConfig::default() };
    let engine = Engine::new(tokio::runtime::Handle::current(), config);
    let flow = batch_flow()?;

    // Start (or find again) every run, then wait for each: they run concurrently.
    let mut handles = Vec::new();
    for i in 0..count {
        handles.push((i, flow.start(&engine, i, Some(&format!("item-{i}")))?));
    }
    println!("started {count} runs in {path}");
    let mut total = 0;
    for (i, handle) in handles {
        let done = handle.wait(Some(Duration::from_secs(120))).await?;
        let score: u64 = done.output_as()?;
        println!("item-{i} {} {score}", done.status);
        total += score;
    }
    println!("total {total}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_process_finds_the_batch_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        let flow = batch_flow().unwrap();
        for round in 0..2 {
            let store = SqliteStore::open(&path).unwrap();
            let config = EngineConfig { store: Some(Arc::new(store)), ..EngineConfig::default() };
            let engine = Engine::new(tokio::runtime::Handle::current(), config);
            let done = flow.run_with_id(&engine, 4u64, "item-4").await.unwrap();
            assert_eq!(done.output_as::<u64>().unwrap(), 42, "round {round}");
        }
    }
}
