//! What a Rust body gets: [`Cx`], its inputs as your own types, its recorded steps and its
//! model calls.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::body::NodeCall;
use crate::error::{NodeError, Result};
use crate::llm::{ChatRequest, LlmError, Provider, Reply, steps};
use crate::value::Value;

use super::builder::to_value;

/// What a body is given: the run's input, its dependencies' outputs, its map element, and
/// ways to record its steps and report progress.
pub struct Cx {
    call: NodeCall,
    deps: Arc<[Arc<str>]>,
    /// Model calls made so far by this attempt: the key of the next one's recorded step.
    calls: AtomicU32,
}

impl Cx {
    pub(super) fn new(call: NodeCall, deps: Arc<[Arc<str>]>) -> Cx {
        Cx { call, deps, calls: AtomicU32::new(0) }
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.call.run_id
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.call.node
    }

    /// The attempt, from 1: a retry, or a rerun after the process running it died, gets
    /// the next number.
    pub fn attempt(&self) -> u32 {
        self.call.attempt
    }

    /// The same for every attempt of this node (or map element) in this run: give it to an
    /// external system so that an effect repeated by a retry happens once.
    pub fn idempotency_key(&self) -> String {
        self.call.idempotency_base()
    }

    /// The call as the engine made it (raw [`Value`]s, the node handle, the attachment).
    pub fn call(&self) -> &NodeCall {
        &self.call
    }

    /// The run's input, as `T`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, NodeError> {
        decode(&self.call.input, || "the run input".to_owned())
    }

    /// The output of dependency `node`, as `T`. A skipped dependency's output is `null`:
    /// read it as an `Option`.
    pub fn dep<T: DeserializeOwned>(&self, node: &str) -> Result<T, NodeError> {
        let index = self.deps.iter().position(|d| &**d == node).ok_or_else(|| {
            NodeError::permanent(
                "ferroflow.UnknownDependency",
                format!(
                    "node '{}' has no dependency '{node}' (it depends on {:?}); declare it with .after(\"{node}\")",
                    self.call.node, self.deps
                ),
            )
        })?;
        decode(&self.call.deps[index], || format!("the output of '{node}'"))
    }

    /// For a map node: the element this call is for, as `T`.
    pub fn item<T: DeserializeOwned>(&self) -> Result<T, NodeError> {
        match &self.call.item {
            Some((_, value)) => decode(value, || "the map element".to_owned()),
            None => Err(NodeError::permanent(
                "ferroflow.NotAMapNode",
                format!("node '{}' is not a map node: it has no element", self.call.node),
            )),
        }
    }

    /// For a map node: the index of this call's element.
    pub fn item_index(&self) -> Option<u32> {
        self.call.item.as_ref().map(|(i, _)| *i)
    }

    /// Reports progress to the run's watchers (an event that is not journaled).
    pub fn emit(&self, data: impl Serialize) {
        if let (Some(handle), Ok(json)) = (&self.call.handle, serde_json::to_value(data)) {
            handle.emit(Value::from(json));
        }
    }

    /// Does `step` once per run: if an earlier attempt of this node recorded a result
    /// under `key`, returns it; otherwise runs `step` and records its result (durably, in
    /// a durable context) before returning it. A node that fails after a costly step (or
    /// whose process dies) does not pay for the step again when it is retried. Keys are
    /// the node's own (each map element has its own); `llm/<n>` and `tool/<n>/<i>` are those
    /// of model and tool calls ([`crate::llm::steps`]): [`Cx::chat`] takes the first, and a
    /// tool loop written with this method should take the second, so that its journal
    /// replays in Python's LLM nodes too.
    pub async fn step<T, F, Fut>(&self, key: &str, step: F) -> Result<T, NodeError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        if let Some((_, value)) = self.call.recorded.iter().find(|(k, _)| &**k == key) {
            return decode(value, || format!("the recorded step '{key}'"));
        }
        if self.call.replaying {
            return Err(NodeError::not_recorded(&self.call.node, key));
        }
        let result = step().await?;
        let value = to_value(&result)?;
        self.record(key, value).await?;
        Ok(result)
    }

    async fn record(&self, key: &str, value: Value) -> Result<(), NodeError> {
        let Some(handle) = self.call.handle.clone() else { return Ok(()) };
        let key = key.to_owned();
        let written = if handle.durable() {
            // Recording writes to the store and blocks: off the runtime's workers.
            tokio::task::spawn_blocking(move || handle.record(&key, value))
                .await
                .map_err(|e| NodeError::new("ferroflow.StoreError", format!("recording a step failed: {e}")))?
        } else {
            handle.record(&key, value)
        };
        written.map_err(|e| NodeError::new("ferroflow.StoreError", format!("the step could not be recorded: {e}")))
    }

    /// One model call, recorded as a step of this node: a retried attempt (or one rerun
    /// after a crash) gets the recorded reply back instead of calling the model again.
    /// The calls of one attempt are keyed `llm/0`, `llm/1`, ... in the order made
    /// ([`crate::llm::steps::model_call`], the keys Python's LLM nodes use), so a tool loop
    /// replays call by call, in either language; a journal's `llm:<n>` steps (recorded
    /// before the keys were shared) are read as well.
    pub async fn chat(&self, provider: &dyn Provider, request: &ChatRequest) -> Result<Reply, NodeError> {
        self.model_call(provider, request, false).await
    }

    /// [`Cx::chat`], streamed: each text delta is reported to the run's watchers as it
    /// arrives, as progress `{"token": delta}`.
    pub async fn chat_stream(&self, provider: &dyn Provider, request: &ChatRequest) -> Result<Reply, NodeError> {
        self.model_call(provider, request, true).await
    }

    async fn model_call(
        &self,
        provider: &dyn Provider,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<Reply, NodeError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) as usize;
        let (key, legacy) = (steps::model_call(n), steps::legacy_model_call(n));
        if let Some((_, value)) = self.call.recorded.iter().find(|(k, _)| **k == *key || **k == *legacy) {
            let json = value.to_json().map_err(|e| NodeError::permanent("ferroflow.InvalidStep", e))?;
            return Reply::from_json(&json).ok_or_else(|| {
                NodeError::permanent("ferroflow.InvalidStep", format!("the recorded reply '{key}' is not a reply"))
            });
        }
        if self.call.replaying {
            return Err(NodeError::not_recorded(&self.call.node, &key));
        }
        let reply = if stream {
            let handle = self.call.handle.clone();
            let mut on_delta = move |delta: &str| {
                if let Some(handle) = &handle {
                    handle.emit(Value::from(serde_json::json!({ "token": delta })));
                }
            };
            provider.stream(request, &mut on_delta).await
        } else {
            provider.complete(request).await
        }
        .map_err(llm_error)?;
        self.record(&key, Value::from(reply.to_json())).await?;
        Ok(reply)
    }
}

fn decode<T: DeserializeOwned>(value: &Value, what: impl Fn() -> String) -> Result<T, NodeError> {
    let json =
        value.to_json().map_err(|e| NodeError::permanent("ferroflow.InvalidInput", format!("{}: {e}", what())))?;
    serde_json::from_value(json).map_err(|e| {
        NodeError::permanent(
            "ferroflow.InvalidInput",
            format!("{} does not read as `{}`: {e}", what(), std::any::type_name::<T>()),
        )
    })
}

/// A model call's failure as the node's: retryable when the failure is transient, recorded
/// as its kind's journal type ([`LlmErrorKind::recorded_as`](crate::llm::LlmErrorKind::recorded_as)).
fn llm_error(error: LlmError) -> NodeError {
    let node_error = NodeError::new(error.kind().recorded_as(), error.to_string());
    if error.is_transient() { node_error } else { NodeError { retryable: false, ..node_error } }
}
