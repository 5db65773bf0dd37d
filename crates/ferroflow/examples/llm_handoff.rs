//! An LLM node with a tool loop, written in Rust with the step keys Python's LLM nodes use
//! (`ferroflow::llm::steps`), so that a run one language started and crashed in the other
//! continues: the model calls it recorded are replayed, not paid for again.
//!
//! ```sh
//! OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=none \
//!     cargo run --example llm_handoff --features openai,sqlite -- runs.db r1 "Where is A100?"
//! ```
//!
//! Arguments: the SQLite file, the run id, and the prompt (without a prompt, the stored run
//! is continued). The graph `llm_handoff` is one LLM node, `ask`, that offers the model a
//! `lookup(order)` tool; it has the structure (and so the version) of the Python graph
//! `tests/test_llm_handoff.py` declares. With `LLM_HANDOFF_CRASH_IN_TOOL=1` the process
//! exits (status 3) inside the tool: the model's first reply is recorded, the tool's result
//! is not. The run's output is printed as JSON.

use std::sync::Arc;

use ferroflow::llm::{ChatRequest, Provider, steps};
use ferroflow::openai::{OpenAiClient, OpenAiConfig};
use ferroflow::{Cx, Engine, EngineConfig, FlowBuilder, SqliteStore};
use serde_json::{Value as Json, json};

fn lookup_tool() -> Json {
    json!({
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Looks an order up.",
            "parameters": {
                "type": "object",
                "properties": {"order": {"type": "string"}},
                "required": ["order"],
            },
        },
    })
}

/// What the tool says of an order (the Python test's `lookup` says the same).
fn lookup(order: &str) -> Json {
    json!({"order": order, "status": "shipped"})
}

fn build(provider: Arc<dyn Provider>, model: String) -> Result<ferroflow::Flow, ferroflow::GraphError> {
    let crash_in_tool = std::env::var_os("LLM_HANDOFF_CRASH_IN_TOOL").is_some();
    let mut g = FlowBuilder::new("llm_handoff");
    g.llm("ask", move |cx: Cx| {
        let (provider, model) = (Arc::clone(&provider), model.clone());
        async move {
            let prompt: String = cx.input()?;
            let mut messages = vec![json!({"role": "user", "content": prompt})];
            let mut request = ChatRequest { model, messages: messages.clone(), tools: vec![lookup_tool()], ..Default::default() };
            let mut n = 0;
            loop {
                let reply = cx.chat(provider.as_ref(), &request).await?;
                if reply.tool_calls.is_empty() {
                    return Ok(reply.to_json());
                }
                let calls: Vec<Json> = reply
                    .tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": Json::Object(c.arguments.clone()).to_string()}}))
                    .collect();
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": calls}));
                for (i, call) in reply.tool_calls.iter().enumerate() {
                    let order = call.arguments.get("order").and_then(Json::as_str).unwrap_or_default().to_owned();
                    let result: Json = cx
                        .step(&steps::tool_call(n, i), || async move {
                            if crash_in_tool {
                                std::process::exit(3);
                            }
                            Ok(lookup(&order))
                        })
                        .await?;
                    messages.push(json!({"role": "tool", "tool_call_id": call.id, "content": result.to_string()}));
                }
                request.messages = messages.clone();
                n += 1;
            }
        }
    });
    g.build()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, run_id, prompt) = match args.as_slice() {
        [path, run_id] => (path, run_id, None),
        [path, run_id, prompt] => (path, run_id, Some(prompt)),
        _ => return Err("usage: llm_handoff DB RUN_ID [PROMPT]".into()),
    };
    let provider: Arc<dyn Provider> = Arc::new(OpenAiClient::new(OpenAiConfig::from_env())?);
    let model = std::env::var("LLM_HANDOFF_MODEL").unwrap_or_else(|_| "mock-model".into());
    let flow = build(provider, model)?;
    let store = Arc::new(SqliteStore::open(path)?);
    let engine =
        Engine::new(tokio::runtime::Handle::current(), EngineConfig { store: Some(store), ..Default::default() });
    let done = match prompt {
        Some(prompt) => flow.run_with_id(&engine, prompt, run_id).await?,
        None => flow.recover(&engine, run_id).await?,
    };
    let output = done.output.map(|o| o.to_json()).transpose()?;
    println!("{}", json!({"status": done.status.as_str(), "version": flow.version(), "output": output}));
    Ok(())
}
