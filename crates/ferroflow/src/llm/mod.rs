//! Model calls: what an LLM node asks of a model, what comes back, and the [`Provider`]
//! trait that makes the call.
//!
//! A [`ChatRequest`] is in the OpenAI chat-completions shape (the lingua franca of
//! OpenAI-compatible servers: vLLM, llama.cpp, Ollama, and OpenAI itself). A [`Reply`] is
//! the part of the answer a workflow uses: the text, the tool calls, the token usage. Its
//! JSON form ([`Reply::to_json`]) is what an LLM node records and outputs, the same from
//! Rust and from Python (`ferroflow.llm.Reply.to_json`).
//!
//! With the `openai` feature, [`openai::OpenAiClient`] implements the trait over
//! HTTP: connection pooling, streaming, and retries that honour `Retry-After`.
//!
//! The module's parts: this file (requests, replies, the [`Provider`] trait), `error.rs`
//! ([`LlmError`] and [`LlmErrorKind`]), [`steps`] (the step keys of recorded calls) and, with
//! the `openai` feature, [`openai`] (the native HTTP client).

mod error;
#[cfg(feature = "openai")]
pub mod openai;
pub mod steps;

pub use error::{LlmError, LlmErrorKind};

use async_trait::async_trait;
use serde_json::{Map, Value as Json, json};

/// One model call: model, messages, tools offered, and any other parameters of the
/// chat-completions API (`temperature`, `max_tokens`, ...).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRequest {
    /// The model's name, as the server knows it.
    pub model: String,
    /// Chat messages, each `{"role": ..., "content": ...}` (and `tool_calls` /
    /// `tool_call_id` in a tool loop).
    pub messages: Vec<Json>,
    /// Tool specs in the OpenAI shape: `{"type": "function", "function": {"name",
    /// "description", "parameters"}}`.
    pub tools: Vec<Json>,
    /// Further parameters, sent as given. `model`, `messages`, `tools` and `stream` are
    /// the request's own and override same-named entries here.
    pub params: Map<String, Json>,
}

impl ChatRequest {
    /// A request for `model` with one user message.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            messages: vec![json!({"role": "user", "content": prompt.into()})],
            ..ChatRequest::default()
        }
    }

    /// The chat-completions request body; `stream` asks for server-sent events (with the
    /// usage in the last one).
    pub fn body(&self, stream: bool) -> Json {
        let mut body = self.params.clone();
        body.insert("model".into(), Json::String(self.model.clone()));
        body.insert("messages".into(), Json::Array(self.messages.clone()));
        if self.tools.is_empty() {
            body.shift_remove("tools");
        } else {
            body.insert("tools".into(), Json::Array(self.tools.clone()));
        }
        if stream {
            body.insert("stream".into(), Json::Bool(true));
            body.insert("stream_options".into(), json!({"include_usage": true}));
        } else {
            body.shift_remove("stream");
            body.shift_remove("stream_options");
        }
        Json::Object(body)
    }
}

/// One call of a tool the model asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The call's id, to quote as `tool_call_id` in the message that answers it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// Always a JSON object.
    pub arguments: Map<String, Json>,
}

/// Tokens a call used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the request (messages and tools).
    pub prompt_tokens: u64,
    /// Tokens of the reply.
    pub completion_tokens: u64,
}

impl Usage {
    /// Prompt and completion tokens together.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            completion_tokens: self.completion_tokens + other.completion_tokens,
        }
    }
}

/// A model's reply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    /// The reply's text; empty when the model only called tools.
    pub text: String,
    /// The tools the model asked to call, in its order.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens the call used (zero where the server does not report them).
    pub usage: Usage,
    /// The model that answered, as the server names it.
    pub model: String,
    /// Why the model stopped: `stop`, `tool_calls`, `length`, ...
    pub finish_reason: String,
}

impl Reply {
    /// The reply as JSON: `{"text", "tool_calls": [{"id", "name", "arguments"}], "usage":
    /// {"prompt_tokens", "completion_tokens", "total_tokens"}, "model", "finish_reason"}`.
    pub fn to_json(&self) -> Json {
        json!({
            "text": self.text,
            "tool_calls": self.tool_calls.iter().map(|c| json!({
                "id": c.id, "name": c.name, "arguments": Json::Object(c.arguments.clone()),
            })).collect::<Vec<_>>(),
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens(),
            },
            "model": self.model,
            "finish_reason": self.finish_reason,
        })
    }

    /// A reply back from its JSON form ([`Reply::to_json`]): what an LLM node recorded.
    /// `None` if `json` is not one (no text, or a tool call without id, name or object
    /// arguments); missing usage counts, model and finish reason read as zero and empty.
    pub fn from_json(json: &Json) -> Option<Reply> {
        let usage = &json["usage"];
        let tool_calls = json["tool_calls"]
            .as_array()?
            .iter()
            .map(|call| {
                Some(ToolCall {
                    id: call["id"].as_str()?.to_owned(),
                    name: call["name"].as_str()?.to_owned(),
                    arguments: call["arguments"].as_object()?.clone(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Reply {
            text: json["text"].as_str()?.to_owned(),
            tool_calls,
            usage: Usage {
                prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
                completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
            },
            model: json["model"].as_str().unwrap_or_default().to_owned(),
            finish_reason: json["finish_reason"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// Where a streamed call sends its text deltas, as they arrive.
pub type OnDelta<'a> = dyn FnMut(&str) + Send + 'a;

/// What LLM nodes call: one model call, whole or streamed.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The whole reply.
    ///
    /// # Errors
    ///
    /// Why the call failed, after whatever retries the provider makes itself;
    /// [`LlmError::is_transient`] tells whether trying again later may help.
    async fn complete(&self, request: &ChatRequest) -> Result<Reply, LlmError>;

    /// The reply, with each text delta passed to `on_delta` as it arrives. The deltas
    /// add up to [`Reply::text`].
    ///
    /// # Errors
    ///
    /// As for [`Provider::complete`]. Once a delta has been passed on, a failure should be
    /// returned rather than retried: a retry would repeat text the caller has seen.
    async fn stream(&self, request: &ChatRequest, on_delta: &mut OnDelta<'_>) -> Result<Reply, LlmError>;
}

/// The arguments of `model`'s call of tool `name`, given as JSON `text` (empty means none).
///
/// # Errors
///
/// [`LlmError::Malformed`], naming the tool, if `text` is not JSON or not a JSON object.
///
/// ```
/// use ferroflow::llm::tool_arguments;
///
/// let arguments = tool_arguments("gpt-4o", "lookup", r#"{"order": 42}"#).unwrap();
/// assert_eq!(arguments["order"], 42);
/// assert!(tool_arguments("gpt-4o", "lookup", "").unwrap().is_empty());
/// assert!(tool_arguments("gpt-4o", "lookup", "[1, 2]").is_err());
/// ```
pub fn tool_arguments(model: &str, name: &str, text: &str) -> Result<Map<String, Json>, LlmError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(arguments)) => Ok(arguments),
        Ok(_) => Err(LlmError::Malformed {
            model: model.to_owned(),
            detail: format!("tool '{name}' was called with arguments that are not a JSON object: {text:?}"),
        }),
        Err(e) => Err(LlmError::Malformed {
            model: model.to_owned(),
            detail: format!("tool '{name}' was called with arguments that are not JSON ({e}): {text:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_puts_the_requests_own_fields_over_its_params() {
        let mut request = ChatRequest::new("m", "hi");
        request.params.insert("model".into(), json!("other"));
        request.params.insert("temperature".into(), json!(0));
        request.params.insert("stream".into(), json!(true));
        let body = request.body(false);
        assert_eq!(body["model"], "m");
        assert_eq!(body["temperature"], 0);
        assert!(body.get("stream").is_none(), "a complete call is not streamed: {body}");
        assert!(body.get("tools").is_none());
        let streamed = request.body(true);
        assert_eq!(streamed["stream"], true);
        assert_eq!(streamed["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn tool_arguments_must_be_a_json_object() {
        assert_eq!(tool_arguments("m", "t", " ").unwrap(), Map::new());
        assert_eq!(tool_arguments("m", "t", r#"{"a": 1}"#).unwrap()["a"], 1);
        let err = tool_arguments("m", "lookup", "[1]").unwrap_err();
        assert!(err.to_string().contains("'lookup'") && err.to_string().contains("not a JSON object"), "{err}");
        let err = tool_arguments("m", "lookup", "{oops").unwrap_err();
        assert!(matches!(err, LlmError::Malformed { .. }) && err.to_string().contains("not JSON"), "{err}");
    }

    #[test]
    fn reply_json_has_the_python_shape() {
        let reply = Reply {
            text: "hi".into(),
            tool_calls: vec![ToolCall { id: "c1".into(), name: "t".into(), arguments: Map::new() }],
            usage: Usage { prompt_tokens: 3, completion_tokens: 4 },
            model: "m".into(),
            finish_reason: "tool_calls".into(),
        };
        assert_eq!(
            reply.to_json(),
            json!({
                "text": "hi",
                "tool_calls": [{"id": "c1", "name": "t", "arguments": {}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                "model": "m",
                "finish_reason": "tool_calls",
            })
        );
    }
}
