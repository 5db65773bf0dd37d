//! The customer-support bot of `examples/support_bot.py`, in Rust: the same graph, the same
//! tools, the same answers.
//!
//! ```text
//! classify (model) -> route (branch) -> refund | order_status | (nothing) -> facts -> answer (model)
//! ```
//!
//! Refunds above 100 wait for a person's approval (a human step). With `OPENAI_BASE_URL`
//! (or `OPENAI_API_KEY`) set, the two model calls go to that OpenAI-compatible server
//! through ferroflow's native client (`SUPPORT_BOT_MODEL` names the model, `gpt-4o-mini` by
//! default); otherwise a deterministic offline model answers, so it runs anywhere:
//!
//! ```text
//! cargo run -p ferroflow --example support_bot --features openai
//! ```
//!
//! It prints one JSON line per ticket: `{"customer", "status", "answer"}`, and for the
//! large refund, the question it waited on and the answer after approval.
//!
//! With `--worker runs.db` it is instead a worker on that SQLite file: it executes the
//! support graph's runs that others start there (the `ferroflow-server` binary, say,
//! started with `--context runs.db`), until SIGINT or SIGTERM. No Python anywhere.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferroflow::llm::{ChatRequest, LlmError, OnDelta, Provider, Reply};
use ferroflow::openai::{OpenAiClient, OpenAiConfig};
use ferroflow::{Cx, Engine, EngineConfig, Flow, FlowBuilder, RetryPolicy, RunSnapshot};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

const REFUND_APPROVAL_LIMIT: f64 = 100.0;
const LABELS: [&str; 3] = ["refund", "order_status", "other"];

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ticket {
    customer: String,
    text: String,
}

struct Order {
    id: &'static str,
    item: &'static str,
    price: f64,
    status: &'static str,
    eta: Option<&'static str>,
}

const ORDERS: [Order; 3] = [
    Order { id: "A100", item: "kettle", price: 35.0, status: "shipped", eta: Some("2 days") },
    Order { id: "A200", item: "espresso machine", price: 420.0, status: "delivered", eta: None },
    Order { id: "A300", item: "mug set", price: 18.5, status: "processing", eta: Some("5 days") },
];

/// The first order number in `text`: a capital letter and three digits, as a word.
fn order_id(text: &str) -> Option<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).find(|word| {
        let bytes = word.as_bytes();
        bytes.len() == 4 && bytes[0].is_ascii_uppercase() && bytes[1..].iter().all(u8::is_ascii_digit)
    })
}

fn order(id: Option<&str>) -> Option<&'static Order> {
    ORDERS.iter().find(|o| Some(o.id) == id)
}

/// The refund tool: whether the ticket's order can be refunded, and how much.
fn look_up_refund(ticket: &Ticket) -> Json {
    let id = order_id(&ticket.text);
    match order(id) {
        None => json!({"order": id, "eligible": false, "reason": "no such order"}),
        Some(o) => json!({"order": id, "eligible": true, "amount": o.price, "item": o.item}),
    }
}

/// The order-status tool.
fn look_up_order(ticket: &Ticket) -> Json {
    let id = order_id(&ticket.text);
    match order(id) {
        None => json!({"order": id, "found": false}),
        Some(o) => {
            json!({"order": id, "found": true, "item": o.item, "price": o.price, "status": o.status, "eta": o.eta})
        }
    }
}

/// A number as Python prints it (`420.0`, `18.5`), so that both bots ask the same question.
fn py_float(x: f64) -> String {
    if x.fract() == 0.0 { format!("{x:.1}") } else { x.to_string() }
}

/// What the answer must tell the customer, from what the tools (and a person) said.
fn write_facts(ticket: &Ticket, refund: &Json, approve: &Json, status: &Json) -> String {
    let said = if !refund.is_null() {
        if !approve.is_null() && !approve["approved"].as_bool().unwrap_or(false) {
            "We cannot refund this order; a colleague will explain why by email.".to_owned()
        } else if !refund["eligible"].as_bool().unwrap_or(false) {
            format!("We could not find order {}; please check the number.", text(&refund["order"]))
        } else {
            let amount = refund["amount"].as_f64().unwrap_or_default();
            format!("Your refund of {amount:.2} for the {} is on its way.", text(&refund["item"]))
        }
    } else if !status.is_null() {
        if !status["found"].as_bool().unwrap_or(false) {
            format!("We could not find order {}.", text(&status["order"]))
        } else if let Some(eta) = status["eta"].as_str() {
            format!("Your {} is {}, arriving in {eta}.", text(&status["item"]), text(&status["status"]))
        } else {
            format!("Your {} was {}.", text(&status["item"]), text(&status["status"]))
        }
    } else {
        "Thanks for reaching out; a colleague will get back to you shortly.".to_owned()
    };
    format!("Hi {}! {said}", ticket.customer)
}

/// A JSON value as Python's f-strings show it (`None` for null).
fn text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        Json::Null => "None".to_owned(),
        other => other.to_string(),
    }
}

/// The offline model: a deterministic stand-in for a chat model (the same as the Python
/// example's `reply_to`), so the example runs without a network or a key.
struct OfflineModel;

impl OfflineModel {
    fn reply_to(messages: &[Json]) -> String {
        let content = |role: &str, last: bool| {
            let mut found = messages.iter().filter(|m| m["role"] == role);
            let message = if last { found.next_back() } else { found.next() };
            message.and_then(|m| m["content"].as_str()).unwrap_or_default().to_owned()
        };
        let (system, user) = (content("system", false), content("user", true));
        if system.starts_with("Classify") {
            let text = user.to_lowercase();
            return if ["refund", "money back", "return"].iter().any(|w| text.contains(w)) {
                "refund"
            } else if ["where", "status", "track", "arrive"].iter().any(|w| text.contains(w)) {
                "order_status"
            } else {
                "other"
            }
            .to_owned();
        }
        format!("[support] {user}")
    }
}

#[async_trait]
impl Provider for OfflineModel {
    async fn complete(&self, request: &ChatRequest) -> Result<Reply, LlmError> {
        let text = Self::reply_to(&request.messages);
        Ok(Reply { text, model: "offline".into(), finish_reason: "stop".into(), ..Reply::default() })
    }

    async fn stream(&self, request: &ChatRequest, on_delta: &mut OnDelta<'_>) -> Result<Reply, LlmError> {
        let reply = self.complete(request).await?;
        for word in reply.text.split_inclusive(' ') {
            on_delta(word);
        }
        Ok(reply)
    }
}

/// The OpenAI-compatible server named by the environment, or the offline model.
fn provider_from_env() -> Result<(Arc<dyn Provider>, String), LlmError> {
    if std::env::var_os("OPENAI_BASE_URL").is_some() || std::env::var_os("OPENAI_API_KEY").is_some() {
        let model = std::env::var("SUPPORT_BOT_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
        return Ok((Arc::new(OpenAiClient::new(OpenAiConfig::from_env())?), model));
    }
    Ok((Arc::new(OfflineModel), "offline".into()))
}

fn messages(system: &str, user: &str) -> Vec<Json> {
    vec![json!({"role": "system", "content": system}), json!({"role": "user", "content": user})]
}

/// The support graph, its two model calls made by `provider`.
fn build(provider: Arc<dyn Provider>, model: &str) -> Result<Flow, ferroflow::GraphError> {
    let mut g = FlowBuilder::new("support_bot");
    g.output("answer");

    let (p, m) = (Arc::clone(&provider), model.to_owned());
    g.llm("classify", move |cx: Cx| {
        let (provider, model) = (Arc::clone(&p), m.clone());
        async move {
            let ticket: Ticket = cx.input()?;
            let system = "Classify the ticket as refund, order_status or other. Answer with the label.";
            let mut request = ChatRequest { model, messages: messages(system, &ticket.text), ..Default::default() };
            request.params.insert("temperature".into(), json!(0));
            Ok(cx.chat(provider.as_ref(), &request).await?.to_json())
        }
    })
    .retry(RetryPolicy { max_attempts: 3, initial_backoff: Duration::from_millis(50), ..Default::default() });

    g.branch("route", |cx: Cx| async move {
        // A real model may add punctuation or capitals; anything else is "other".
        let reply: Json = cx.dep("classify")?;
        let label = reply["text"].as_str().unwrap_or_default().trim().trim_matches('.').to_lowercase();
        Ok(if LABELS.contains(&label.as_str()) { label } else { "other".to_owned() })
    })
    .after("classify")
    .labels(LABELS);

    g.tool("refund", |cx: Cx| async move { Ok(look_up_refund(&cx.input()?)) }).when("route", ["refund"]);

    g.branch("needs_approval", |cx: Cx| async move {
        let refund: Json = cx.dep("refund")?;
        let large = refund["eligible"] == true && refund["amount"].as_f64().unwrap_or(0.0) > REFUND_APPROVAL_LIMIT;
        Ok(if large { "ask" } else { "auto" })
    })
    .after("refund")
    .labels(["ask", "auto"]);

    // Large refunds need a person; the payload is what they see.
    g.human("approve", |cx: Cx| async move {
        let refund: Json = cx.dep("refund")?;
        let amount = refund["amount"].as_f64().map_or_else(|| "None".to_owned(), py_float);
        let question = format!("Approve a refund of {amount} for order {}?", text(&refund["order"]));
        Ok(json!({"question": question, "refund": refund}))
    })
    .after("refund")
    .when("needs_approval", ["ask"]);

    g.tool("order_status", |cx: Cx| async move { Ok(look_up_order(&cx.input()?)) }).when("route", ["order_status"]);

    // After `route` too: a ticket that needs neither tool still gets an answer.
    g.task("facts", |cx: Cx| async move {
        let (refund, approve, status): (Json, Json, Json) =
            (cx.dep("refund")?, cx.dep("approve")?, cx.dep("order_status")?);
        Ok(write_facts(&cx.input()?, &refund, &approve, &status))
    })
    .after_all(["refund", "approve", "order_status", "route"]);

    let (p, m) = (provider, model.to_owned());
    g.llm("answer", move |cx: Cx| {
        let (provider, model) = (Arc::clone(&p), m.clone());
        async move {
            let facts: String = cx.dep("facts")?;
            let system = "Write a short, friendly reply to the customer with these facts.";
            let request = ChatRequest { model, messages: messages(system, &facts), ..Default::default() };
            Ok(cx.chat_stream(provider.as_ref(), &request).await?.to_json())
        }
    })
    .after("facts");

    g.build()
}

fn tickets() -> Vec<Ticket> {
    [
        ("Ada", "Where is my order A100?"),
        ("Grace", "I want a refund for order A300, the mugs arrived broken."),
        ("Linus", "Do you ship to Norway?"),
        ("Barbara", "Please refund order A200, the espresso machine leaks."),
    ]
    .into_iter()
    .map(|(customer, text)| Ticket { customer: customer.into(), text: text.into() })
    .collect()
}

fn answer(run: &RunSnapshot) -> Option<String> {
    run.output_as::<Json>().ok().and_then(|reply| reply["text"].as_str().map(str::to_owned))
}

/// Answers every ticket; the large refund waits for approval and is then approved.
/// Returns one JSON line per ticket.
async fn run_tickets(provider: Arc<dyn Provider>, model: &str) -> Result<Vec<Json>, Box<dyn std::error::Error>> {
    let flow = build(provider, model)?;
    let engine = Engine::new(tokio::runtime::Handle::current(), EngineConfig::default());
    let mut lines = Vec::new();
    for ticket in tickets() {
        let mut run = flow.run(&engine, &ticket).await?;
        let mut line = json!({"customer": ticket.customer});
        if let Some(question) = run.waiting_at::<Json>("approve") {
            line["question"] = question["question"].clone();
            let decision = json!({"approved": true, "by": "supervisor"});
            run = flow.resume(&engine, &run.run_id, Some("approve"), decision).await?;
        }
        line["status"] = json!(run.status.as_str());
        line["answer"] = json!(answer(&run));
        if let Some(failure) = &run.failure {
            line["error"] = json!(format!("{}: {}", failure.node, failure.error));
        }
        lines.push(line);
    }
    Ok(lines)
}

/// Works on the support graph's runs in the SQLite file at `path` until SIGINT or SIGTERM.
async fn work(path: &str, provider: Arc<dyn Provider>, model: &str) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::signal::unix::{SignalKind, signal};

    let flow = build(provider, model)?;
    let store = Arc::new(ferroflow::SqliteStore::open(path)?);
    let engine =
        Engine::new(tokio::runtime::Handle::current(), EngineConfig { store: Some(store), ..Default::default() });
    let stop = tokio_util::sync::CancellationToken::new();
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let stopping = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        stopping.cancel();
    });
    eprintln!("support_bot: working on {}@{} in {path}", flow.name(), flow.version());
    engine.work(std::slice::from_ref(flow.workflow()), 16, None, stop, Duration::from_secs(5)).await?;
    eprintln!("support_bot: stopped");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (provider, model) = provider_from_env()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, path] = args.as_slice()
        && flag == "--worker"
    {
        return work(path, provider, &model).await;
    }
    for line in run_tickets(provider, &model).await? {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_offline_bot_answers_every_ticket() {
        let lines = run_tickets(Arc::new(OfflineModel), "offline").await.unwrap();
        let answers: Vec<&str> = lines.iter().map(|l| l["answer"].as_str().unwrap()).collect();
        assert_eq!(
            answers,
            [
                "[support] Hi Ada! Your kettle is shipped, arriving in 2 days.",
                "[support] Hi Grace! Your refund of 18.50 for the mug set is on its way.",
                "[support] Hi Linus! Thanks for reaching out; a colleague will get back to you shortly.",
                "[support] Hi Barbara! Your refund of 420.00 for the espresso machine is on its way.",
            ]
        );
        assert_eq!(lines[3]["question"], "Approve a refund of 420.0 for order A200?");
        assert!(lines.iter().all(|l| l["status"] == "completed"));
    }

    #[test]
    fn order_numbers_are_whole_words() {
        assert_eq!(order_id("Where is my order A100?"), Some("A100"));
        assert_eq!(order_id("order XA100 or A1000"), None);
    }
}
