//! The Rust API ([`FlowBuilder`], [`Cx`], [`Flow`]) as a user drives it: typed inputs
//! and outputs, maps, retries, recorded steps and model calls, streaming, timeouts, and
//! the errors a mistake gets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferroflow::llm::{ChatRequest, LlmError, OnDelta, Provider, Reply};
use ferroflow::{
    Cx, Engine, EngineConfig, EventKind, Flow, FlowBuilder, JournalEntry, NodeError, RunSnapshot, RunStatus,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

fn memory() -> Engine {
    Engine::new(Handle::current(), EngineConfig::default())
}

fn failure(run: &RunSnapshot) -> (String, String, String) {
    let failure = run.failure.as_ref().expect("the run failed");
    (failure.node.to_string(), failure.error.kind.clone(), failure.error.message.clone())
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Doc {
    id: u32,
    words: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_flow_through_a_map_and_a_branch() {
    let mut g = FlowBuilder::new("docs");
    g.task("split", |cx: Cx| async move {
        let text: String = cx.input()?;
        Ok(text
            .split(' ')
            .enumerate()
            .map(|(i, w)| Doc { id: i as u32, words: vec![w.to_owned()] })
            .collect::<Vec<_>>())
    });
    g.map("measure", "split", |cx: Cx| async move {
        let doc: Doc = cx.item()?;
        Ok((cx.item_index().unwrap(), doc.words[0].len()))
    });
    g.branch("size", |cx: Cx| async move {
        let sizes: Vec<(u32, usize)> = cx.dep("measure")?;
        Ok(if sizes.iter().map(|(_, n)| n).sum::<usize>() > 10 { "big" } else { "small" })
    })
    .after("measure")
    .labels(["big", "small"]);
    g.task("big", |_cx: Cx| async move { Ok("big") }).when("size", ["big"]);
    g.task("small", |_cx: Cx| async move { Ok("small") }).when("size", ["small"]);
    g.task("report", |cx: Cx| async move {
        let (big, small): (Option<String>, Option<String>) = (cx.dep("big")?, cx.dep("small")?);
        let sizes: Vec<(u32, usize)> = cx.dep("measure")?;
        Ok(format!("{:?} {:?} {sizes:?}", big, small))
    })
    .after_all(["big", "small", "measure"]);
    g.output("report");
    let flow = g.build().unwrap();

    let engine = memory();
    let run = flow.run(&engine, "a bb ccc").await.unwrap();
    assert_eq!(run.output_as::<String>().unwrap(), r#"None Some("small") [(0, 1), (1, 2), (2, 3)]"#);
    let run = flow.run(&engine, "seventeen letters here").await.unwrap();
    assert_eq!(run.output_as::<String>().unwrap(), r#"Some("big") None [(0, 9), (1, 7), (2, 4)]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_is_retried_and_any_error_converts_with_the_question_mark() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let mut g = FlowBuilder::new("retries");
    g.task("parse", move |cx: Cx| {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            let text = if cx.attempt() < 3 { "not a number".to_owned() } else { cx.input::<String>()? };
            let n: i64 = text.parse()?; // std::num::ParseIntError -> NodeError
            Ok(n * 2)
        }
    })
    .attempts(3);
    let flow = g.build().unwrap();
    let run = flow.run(&memory(), "21").await.unwrap();
    assert_eq!(run.output_as::<i64>().unwrap(), 42);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let mut g = FlowBuilder::new("no_retry_left");
    g.task("parse", |_cx: Cx| async move { Ok("x".parse::<i64>()?) }).attempts(2);
    let run = g.build().unwrap().run(&memory(), ()).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let (node, kind, message) = failure(&run);
    assert_eq!(node, "parse");
    assert!(kind.ends_with("ParseIntError"), "{kind}");
    assert_eq!(message, "invalid digit found in string");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_fail_the_node_for_good_and_say_what_and_where() {
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&attempts);
    let mut g = FlowBuilder::new("mistakes");
    g.task("typed", move |cx: Cx| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok(cx.input::<Doc>()?.id) }
    })
    .attempts(5);
    let flow = g.build().unwrap();
    let run = flow.run(&memory(), serde_json::json!({"id": "seven"})).await.unwrap();
    let (node, kind, message) = failure(&run);
    assert_eq!((node.as_str(), kind.as_str()), ("typed", "ferroflow.InvalidInput"));
    assert!(message.starts_with("the run input does not read as `flow_api::Doc`"), "{message}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "a value of the wrong type is not retried");

    let mut g = FlowBuilder::new("undeclared");
    g.task("a", |_cx: Cx| async move { Ok(1) });
    g.task("b", |cx: Cx| async move { Ok(cx.dep::<u32>("a")? + 1) });
    let run = g.build().unwrap().run(&memory(), ()).await.unwrap();
    let (node, kind, message) = failure(&run);
    assert_eq!((node.as_str(), kind.as_str()), ("b", "ferroflow.UnknownDependency"));
    assert!(message.contains(r#"declare it with .after("a")"#), "{message}");

    let mut g = FlowBuilder::new("cyclic");
    g.task("a", |_cx: Cx| async move { Ok(1) }).after("b");
    g.task("b", |_cx: Cx| async move { Ok(1) }).after("a");
    let error = g.build().err().expect("a cycle is a build error");
    assert!(error.to_string().contains("cycle"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_over_its_timeout_fails_and_is_retried() {
    let mut g = FlowBuilder::new("slow");
    g.task("nap", |cx: Cx| async move {
        if cx.attempt() == 1 {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(cx.attempt())
    })
    .timeout(Duration::from_millis(50))
    .attempts(2);
    let flow = g.build().unwrap();
    let engine = memory();
    let started = std::time::Instant::now();
    let run = flow.run(&engine, ()).await.unwrap();
    assert_eq!(run.output_as::<u32>().unwrap(), 2);
    assert!(started.elapsed() < Duration::from_secs(5));
    let failed: Vec<String> = engine
        .journal(&run.run_id)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.entry {
            JournalEntry::NodeFailed { error, .. } => Some(error.kind),
            _ => None,
        })
        .collect();
    assert_eq!(failed, ["Timeout"]);
}

/// A model that answers with the prompt reversed and counts its calls.
struct Reverser {
    calls: AtomicU32,
}

#[async_trait]
impl Provider for Reverser {
    async fn complete(&self, request: &ChatRequest) -> Result<Reply, LlmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let prompt = request.messages.last().and_then(|m| m["content"].as_str()).unwrap_or_default();
        Ok(Reply { text: prompt.chars().rev().collect(), model: request.model.clone(), ..Reply::default() })
    }

    async fn stream(&self, request: &ChatRequest, on_delta: &mut OnDelta<'_>) -> Result<Reply, LlmError> {
        let reply = self.complete(request).await?;
        for c in reply.text.chars() {
            on_delta(&c.to_string());
        }
        Ok(reply)
    }
}

fn two_calls_then_a_failure(model: Arc<Reverser>, steps: Arc<AtomicU32>) -> Flow {
    let mut g = FlowBuilder::new("recorded");
    g.llm("ask", move |cx: Cx| {
        let (model, steps) = (Arc::clone(&model), Arc::clone(&steps));
        async move {
            let first = cx.chat(model.as_ref(), &ChatRequest::new("m", "abc")).await?;
            let second = cx.chat_stream(model.as_ref(), &ChatRequest::new("m", "xyz")).await?;
            let stamp: u32 =
                cx.step("stamp", || async { Ok::<_, NodeError>(steps.fetch_add(1, Ordering::SeqCst)) }).await?;
            if cx.attempt() == 1 {
                return Err(NodeError::new("Flaky", "after the costly part"));
            }
            Ok(format!("{} {} {stamp}", first.text, second.text))
        }
    })
    .attempts(2);
    g.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_attempt_reuses_recorded_model_calls_and_steps() {
    let model = Arc::new(Reverser { calls: AtomicU32::new(0) });
    let steps = Arc::new(AtomicU32::new(7));
    let flow = two_calls_then_a_failure(Arc::clone(&model), Arc::clone(&steps));
    let engine = memory();
    let (handle, mut events) = flow.stream(&engine, (), Some("r1")).unwrap();
    let mut tokens = String::new();
    let mut completed_after_tokens = false;
    while let Some(event) = events.recv().await {
        match event.kind {
            EventKind::NodeProgress { data, .. } => tokens.push_str(data.to_json().unwrap()["token"].as_str().unwrap()),
            EventKind::Journal(JournalEntry::NodeCompleted { .. }) => completed_after_tokens = !tokens.is_empty(),
            _ => {}
        }
    }
    let run = handle.wait(None).await.unwrap();
    assert_eq!(run.output_as::<String>().unwrap(), "cba zyx 7");
    assert_eq!(model.calls.load(Ordering::SeqCst), 2, "the second attempt called the model again");
    assert_eq!(steps.load(Ordering::SeqCst), 8, "the step ran again");
    assert_eq!(tokens, "zyx", "the streamed call reports its tokens once");
    assert!(completed_after_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_error_fails_the_node_with_the_python_error_type() {
    struct Refuses;
    #[async_trait]
    impl Provider for Refuses {
        async fn complete(&self, request: &ChatRequest) -> Result<Reply, LlmError> {
            Err(LlmError::NotFound {
                model: request.model.clone(),
                url: "http://127.0.0.1:9/v1".into(),
                message: "no".into(),
            })
        }
        async fn stream(&self, request: &ChatRequest, _: &mut OnDelta<'_>) -> Result<Reply, LlmError> {
            self.complete(request).await
        }
    }
    let mut g = FlowBuilder::new("refused");
    g.llm("ask", |cx: Cx| async move { Ok(cx.chat(&Refuses, &ChatRequest::new("gone", "hi")).await?.to_json()) })
        .attempts(3);
    let run = g.build().unwrap().run(&memory(), ()).await.unwrap();
    let (_, kind, message) = failure(&run);
    assert_eq!(kind, "ferroflow.errors.LLMNotFoundError");
    assert!(message.contains("model 'gone'"), "{message}");
    let failed = run.failure.as_ref().unwrap();
    assert!(!failed.error.retryable, "a 404 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_step_waits_and_a_cancelled_run_stays_cancelled() {
    let mut g = FlowBuilder::new("ask");
    g.human("approve", |cx: Cx| async move { Ok(serde_json::json!({"amount": cx.input::<u32>()?})) });
    g.task("done", |cx: Cx| async move { cx.dep::<bool>("approve") }).after("approve");
    let flow = g.build().unwrap();
    let engine = memory();
    let waiting = flow.run(&engine, 500).await.unwrap();
    assert_eq!(waiting.status, RunStatus::Waiting);
    assert_eq!(waiting.waiting_at::<serde_json::Value>("approve").unwrap()["amount"], 500);
    let done = flow.resume(&engine, &waiting.run_id, None, true).await.unwrap();
    assert!(done.output_as::<bool>().unwrap());

    let other = flow.run(&engine, 7).await.unwrap();
    engine.cancel(&other.run_id).unwrap();
    let error = flow.resume(&engine, &other.run_id, None, true).await.expect_err("cancelled");
    assert!(error.to_string().contains("cancelled"), "{error}");
}

/// A body with configuration of its own, as a type.
struct Quote {
    currency: &'static str,
}

#[async_trait]
impl ferroflow::NodeBody for Quote {
    type Output = String;
    async fn run(&self, cx: Cx) -> Result<String, NodeError> {
        Ok(format!("{} {}", cx.input::<u32>()?, self.currency))
    }
}

fn quote_then_approve() -> Flow {
    let mut g = FlowBuilder::new("approval");
    g.node("quote", ferroflow::NodeKind::Tool, Quote { currency: "EUR" });
    g.human("approve", |cx: Cx| async move { Ok(format!("pay {}?", cx.dep::<String>("quote")?)) }).after("quote");
    g.task("pay", |cx: Cx| async move {
        let approved: bool = cx.dep("approve")?;
        Ok(if approved { format!("paid {}", cx.dep::<String>("quote")?) } else { "refused".to_owned() })
    })
    .after_all(["quote", "approve"]);
    g.build().unwrap()
}

/// The same graph, unchanged, in every durable context: a run waits in one engine, which
/// is dropped, and another engine on the same store answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_flow_runs_on_every_durable_store() {
    use ferroflow::{DurableStore, NatsStore, RedisStore, SqliteStore};

    let flow = quote_then_approve();
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("flow{}", std::process::id());
    let redis_url = std::env::var("FERROFLOW_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nats_url = std::env::var("FERROFLOW_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    for kind in ["sqlite", "redis", "nats"] {
        let open = || async {
            let store: Arc<dyn DurableStore> = match kind {
                "sqlite" => Arc::new(SqliteStore::open(dir.path().join("runs.db")).unwrap()),
                "redis" => Arc::new(RedisStore::connect(&redis_url, &namespace).await.unwrap()),
                _ => Arc::new(NatsStore::connect(&nats_url, &namespace).await.unwrap()),
            };
            Engine::new(Handle::current(), EngineConfig { store: Some(store), ..EngineConfig::default() })
        };
        let first = open().await;
        let waiting = flow.run_with_id(&first, 120, "order-1").await.unwrap();
        assert_eq!(waiting.status, RunStatus::Waiting, "{kind}");
        assert_eq!(waiting.waiting_at::<String>("approve").as_deref(), Some("pay 120 EUR?"), "{kind}");
        drop(first);

        let second = open().await;
        let done = flow.resume(&second, "order-1", Some("approve"), true).await.unwrap();
        assert_eq!(done.output_as::<String>().unwrap(), "paid 120 EUR", "{kind}");
        // Starting the same id again returns the finished run as it is.
        let again = flow.run_with_id(&second, 999, "order-1").await.unwrap();
        assert_eq!(again.output_as::<String>().unwrap(), "paid 120 EUR", "{kind}");
        match kind {
            "redis" => {
                RedisStore::connect(&redis_url, &namespace).await.unwrap().delete_namespace().await.unwrap();
            }
            "nats" => NatsStore::delete_namespace(&nats_url, &namespace).await.unwrap(),
            _ => {}
        }
    }
}

/// The async API on tokio's current-thread runtime (what `#[tokio::test]` and
/// `#[tokio::main(flavor = "current_thread")]` give): a durable engine's calls are made from
/// a blocking thread, so nothing panics or stalls the store's own I/O on the one thread.
#[tokio::test]
async fn the_async_api_runs_durably_on_a_current_thread_runtime() {
    use ferroflow::{DurableStore, NatsStore, RedisStore, SqliteStore};

    assert_eq!(Handle::current().runtime_flavor(), tokio::runtime::RuntimeFlavor::CurrentThread);
    let flow = quote_then_approve();
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("flowct{}", std::process::id());
    let redis_url = std::env::var("FERROFLOW_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nats_url = std::env::var("FERROFLOW_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    for kind in ["memory", "sqlite", "redis", "nats"] {
        let open = || async {
            let store: Option<Arc<dyn DurableStore>> = match kind {
                "memory" => None,
                "sqlite" => Some(Arc::new(SqliteStore::open(dir.path().join("runs.db")).unwrap())),
                "redis" => Some(Arc::new(RedisStore::connect(&redis_url, &namespace).await.unwrap())),
                _ => Some(Arc::new(NatsStore::connect(&nats_url, &namespace).await.unwrap())),
            };
            Engine::new(Handle::current(), EngineConfig { store, ..EngineConfig::default() })
        };
        let first = open().await;
        let waiting = flow.run_with_id(&first, 120, "order-ct").await.unwrap();
        assert_eq!(waiting.status, RunStatus::Waiting, "{kind}");
        let engine = if kind == "memory" {
            first
        } else {
            first.close();
            open().await
        };
        let done = flow.resume(&engine, "order-ct", Some("approve"), true).await.unwrap();
        assert_eq!(done.output_as::<String>().unwrap(), "paid 120 EUR", "{kind}");
        let recovered = flow.recover(&engine, "order-ct").await.unwrap();
        assert_eq!(recovered.status, RunStatus::Completed, "{kind}");
        let other = flow.run(&engine, 7).await.unwrap();
        assert_eq!(other.waiting_at::<String>("approve").as_deref(), Some("pay 7 EUR?"), "{kind}");
        engine.close();
        match kind {
            "redis" => {
                RedisStore::connect(&redis_url, &namespace).await.unwrap().delete_namespace().await.unwrap();
            }
            "nats" => NatsStore::delete_namespace(&nats_url, &namespace).await.unwrap(),
            _ => {}
        }
    }
}
