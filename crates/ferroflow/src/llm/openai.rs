//! A native client of OpenAI-compatible chat-completions servers (the `openai` feature).
//!
//! [`OpenAiClient`] speaks the chat-completions API over HTTP/1.1 with `reqwest`: one pool
//! of keep-alive connections per client, TLS by rustls, replies parsed with serde. It
//! retries what the official Python client retries (connection failures, timeouts, 408,
//! 409, 429 and 5xx), with the same backoff (0.5 s doubling to at most 8 s, less up to a
//! quarter of jitter), and waits what the server asks instead when it sends
//! `retry-after-ms`, or `retry-after` in seconds or as an HTTP date (up to a minute). A streamed call is
//! retried only until its first delta has been passed on: after that a retry would
//! repeat text the caller has already seen, so the failure is returned as
//! [`LlmError::Connection`] or [`LlmError::Server`] for the caller (a node's retry
//! policy) to decide.
//!
//! Python's `ferroflow.NativeOpenAIProvider` is this client: an LLM node's HTTP work and
//! JSON parsing run on the engine's threads without the GIL.
//!
//! One file (~600 lines): the client, its wire types and its error mapping describe one HTTP API
//! and change together.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::llm::{ChatRequest, LlmError, OnDelta, Provider, Reply, ToolCall, Usage, tool_arguments};

/// The base URL when neither the configuration nor `OPENAI_BASE_URL` gives one.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// How an [`OpenAiClient`] connects.
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// The API's base URL, up to and including the version (`https://api.openai.com/v1`,
    /// `http://127.0.0.1:8000/v1` for a local vLLM); `/chat/completions` is added.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>`; none is sent when `None` (local servers).
    pub api_key: Option<String>,
    /// Retries after the first attempt of a call that failed transiently.
    pub max_retries: u32,
    /// Bound on each attempt of a whole call, and on each wait for data of a streamed one.
    pub timeout: Duration,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            max_retries: 2,
            timeout: Duration::from_secs(60),
        }
    }
}

impl OpenAiConfig {
    /// The defaults, with `OPENAI_BASE_URL` and `OPENAI_API_KEY` from the environment when
    /// they are set (as the official clients read them).
    pub fn from_env() -> OpenAiConfig {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        OpenAiConfig {
            base_url: var("OPENAI_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()),
            api_key: var("OPENAI_API_KEY"),
            ..OpenAiConfig::default()
        }
    }
}

/// A chat-completions client. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    url: Arc<str>,
    auth: Option<Arc<str>>,
    max_retries: u32,
    timeout: Duration,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key stays out of logs.
        f.debug_struct("OpenAiClient").field("url", &self.url).field("max_retries", &self.max_retries).finish()
    }
}

impl OpenAiClient {
    /// A client for `config`. Fails if the base URL is not an http(s) URL.
    pub fn new(config: OpenAiConfig) -> Result<OpenAiClient, LlmError> {
        let base = config.base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| LlmError::Config(format!("base URL {:?} is not a URL: {e}", config.base_url)))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(LlmError::Config(format!("base URL {:?} is not http or https", config.base_url)));
        }
        // reqwest takes rustls's process-wide crypto provider; install ring's unless the
        // program installed one of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .read_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| LlmError::Config(format!("the HTTP client cannot be built: {e}")))?;
        Ok(OpenAiClient {
            http,
            url: Arc::from(format!("{base}/chat/completions")),
            auth: config.api_key.map(|key| Arc::from(format!("Bearer {key}"))),
            max_retries: config.max_retries,
            timeout: config.timeout,
        })
    }

    /// The URL calls go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One attempt's request: the whole call bounded by the timeout unless streamed (a
    /// streamed call is bounded per read instead, as it may last long).
    fn send(&self, body: &[u8], stream: bool) -> reqwest::RequestBuilder {
        let mut request =
            self.http.post(&*self.url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_vec());
        if stream {
            request = request.header(reqwest::header::ACCEPT, "text/event-stream");
        } else {
            request = request.timeout(self.timeout);
        }
        if let Some(auth) = &self.auth {
            request = request.header(reqwest::header::AUTHORIZATION, &**auth);
        }
        request
    }

    /// Makes the call, retrying as the module docs say; `on_delta` is `Some` for a
    /// streamed call.
    async fn call(&self, request: &ChatRequest, mut on_delta: Option<&mut OnDelta<'_>>) -> Result<Reply, LlmError> {
        let stream = on_delta.is_some();
        let body = serde_json::to_vec(&request.body(stream))
            .map_err(|e| LlmError::Config(format!("the request cannot be encoded: {e}")))?;
        let mut retries = 0;
        loop {
            let mut delivered = false;
            let outcome = match self.send(&body, stream).send().await {
                Err(e) => Err(Failure::transport(e)),
                Ok(response) if response.status().is_success() => match on_delta.as_deref_mut() {
                    None => self.read_whole(&request.model, response).await,
                    Some(on_delta) => self.read_stream(&request.model, response, on_delta, &mut delivered).await,
                },
                Ok(response) => Err(Failure::status(response).await),
            };
            let failure = match outcome {
                Ok(reply) => return Ok(reply),
                Err(failure) => failure,
            };
            if failure.retry && !delivered && retries < self.max_retries {
                let wait = failure.wait.unwrap_or_else(|| backoff(retries));
                tracing::debug!(url = %self.url, model = %request.model, retries, ?wait, "retrying a model call");
                tokio::time::sleep(wait).await;
                retries += 1;
                continue;
            }
            return Err(failure.into_error(&request.model, &self.url, retries, self.timeout));
        }
    }

    async fn read_whole(&self, model: &str, response: reqwest::Response) -> Result<Reply, Failure> {
        let bytes = response.bytes().await.map_err(Failure::transport)?;
        let completion: Completion = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::malformed(format!("the body is not a chat completion ({e}): {}", excerpt(&bytes))))?;
        let model = completion.model.unwrap_or_else(|| model.to_owned());
        let Some(choice) = completion.choices.into_iter().next() else {
            return Err(Failure::malformed(format!("the completion has no choices: {}", excerpt(&bytes))));
        };
        let message = choice.message.unwrap_or_default();
        let mut tool_calls = Vec::with_capacity(message.tool_calls.len());
        for call in message.tool_calls {
            let function = call.function.unwrap_or_default();
            let arguments = tool_arguments(&model, &function.name, function.arguments.as_deref().unwrap_or(""))
                .map_err(Failure::from_error)?;
            tool_calls.push(ToolCall { id: call.id.unwrap_or_default(), name: function.name, arguments });
        }
        Ok(Reply {
            text: message.content.unwrap_or_default(),
            tool_calls,
            usage: completion.usage.map(Usage::from).unwrap_or_default(),
            model,
            finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".to_owned()),
        })
    }

    async fn read_stream(
        &self,
        model: &str,
        mut response: reqwest::Response,
        on_delta: &mut OnDelta<'_>,
        delivered: &mut bool,
    ) -> Result<Reply, Failure> {
        let mut events = EventStream::default();
        let mut reply = Reply { model: model.to_owned(), finish_reason: "stop".to_owned(), ..Reply::default() };
        let mut calls: Vec<(u32, PartialCall)> = Vec::new();
        let mut done = false;
        while !done {
            let Some(bytes) = response.chunk().await.map_err(Failure::transport)? else {
                break;
            };
            events.push(&bytes);
            while let Some(data) = events.next_data() {
                if data == "[DONE]" {
                    done = true;
                    break;
                }
                let chunk: Chunk = serde_json::from_str(&data)
                    .map_err(|e| Failure::malformed(format!("a stream event is not a chunk ({e}): {data:.300}")))?;
                if let Some(error) = chunk.error {
                    return Err(Failure::event(error));
                }
                if let Some(name) = chunk.model.filter(|m| !m.is_empty()) {
                    reply.model = name;
                }
                if let Some(usage) = chunk.usage {
                    reply.usage = usage.into();
                }
                for choice in chunk.choices {
                    let delta = choice.delta.unwrap_or_default();
                    if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                        on_delta(&text);
                        *delivered = true;
                        reply.text.push_str(&text);
                    }
                    for call in delta.tool_calls {
                        let slot = match calls.iter().position(|(i, _)| *i == call.index) {
                            Some(at) => &mut calls[at].1,
                            None => {
                                calls.push((call.index, PartialCall::default()));
                                &mut calls.last_mut().expect("just pushed").1
                            }
                        };
                        if let Some(id) = call.id.filter(|id| !id.is_empty()) {
                            slot.id = id;
                        }
                        if let Some(function) = call.function {
                            slot.name.push_str(&function.name);
                            slot.arguments.push_str(function.arguments.as_deref().unwrap_or(""));
                        }
                    }
                    if let Some(finish) = choice.finish_reason {
                        reply.finish_reason = finish;
                    }
                }
            }
        }
        if !done && !events.is_empty() {
            return Err(Failure::dropped("the stream ended in the middle of an event"));
        }
        calls.sort_by_key(|(index, _)| *index);
        for (_, call) in calls {
            let arguments = tool_arguments(&reply.model, &call.name, &call.arguments).map_err(Failure::from_error)?;
            reply.tool_calls.push(ToolCall { id: call.id, name: call.name, arguments });
        }
        Ok(reply)
    }
}

#[async_trait]
impl Provider for OpenAiClient {
    async fn complete(&self, request: &ChatRequest) -> Result<Reply, LlmError> {
        self.call(request, None).await
    }

    async fn stream(&self, request: &ChatRequest, on_delta: &mut OnDelta<'_>) -> Result<Reply, LlmError> {
        self.call(request, Some(on_delta)).await
    }
}

/// The wait before retry number `retries + 1`: 0.5 s doubling up to 8 s, less up to 25 %.
fn backoff(retries: u32) -> Duration {
    let base = (0.5 * 2f64.powi(retries.min(16) as i32)).min(8.0);
    Duration::from_secs_f64(base * (1.0 - 0.25 * fastrand::f64()))
}

/// The wait a response asks for: `retry-after-ms` (milliseconds), or `retry-after` in
/// seconds or as an HTTP date; honoured when it is more than nothing and at most a minute.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let number = |name: &str| text(name)?.parse::<f64>().ok();
    let until = |name: &str| {
        let at = httpdate::parse_http_date(text(name)?).ok()?;
        Some(at.duration_since(std::time::SystemTime::now()).map_or(0.0, |d| d.as_secs_f64()))
    };
    let wait = number("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| number("retry-after"))
        .or_else(|| until("retry-after"))?;
    (wait > 0.0 && wait <= 60.0).then(|| Duration::from_secs_f64(wait))
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// A failed attempt: what went wrong, and whether (and after how long) to try again.
struct Failure {
    kind: FailureKind,
    retry: bool,
    wait: Option<Duration>,
}

enum FailureKind {
    Status { status: u16, message: String },
    Timeout,
    Connection(String),
    Malformed(String),
}

impl Failure {
    fn transport(e: reqwest::Error) -> Failure {
        let kind = if e.is_timeout() {
            FailureKind::Timeout
        } else {
            // The source chain says why (refused, reset, DNS); the top level only "error
            // sending request".
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            FailureKind::Connection(message)
        };
        Failure { kind, retry: true, wait: None }
    }

    fn dropped(message: &str) -> Failure {
        Failure { kind: FailureKind::Connection(message.to_owned()), retry: true, wait: None }
    }

    fn malformed(detail: String) -> Failure {
        Failure { kind: FailureKind::Malformed(detail), retry: false, wait: None }
    }

    fn from_error(error: LlmError) -> Failure {
        match error {
            LlmError::Malformed { detail, .. } => Failure::malformed(detail),
            other => Failure::malformed(other.to_string()),
        }
    }

    /// An error event in a stream that had begun well.
    fn event(error: ApiError) -> Failure {
        let message = error.message.unwrap_or_else(|| "the server sent an error event".to_owned());
        let message = format!("error event in the stream: {message}");
        Failure { kind: FailureKind::Status { status: 500, message }, retry: true, wait: None }
    }

    async fn status(response: reqwest::Response) -> Failure {
        let status = response.status().as_u16();
        let wait = retry_after(response.headers());
        let told = response.headers().get("x-should-retry").and_then(|v| v.to_str().ok()).map(|v| v == "true");
        let bytes = response.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .ok()
            .and_then(|body| body.error)
            .and_then(|error| error.message)
            .unwrap_or_else(|| excerpt(&bytes));
        let retry = told.unwrap_or(matches!(status, 408 | 409 | 429) || status >= 500);
        Failure { kind: FailureKind::Status { status, message }, retry, wait }
    }

    fn into_error(self, model: &str, url: &str, retries: u32, timeout: Duration) -> LlmError {
        let (model, url) = (model.to_owned(), url.to_owned());
        match self.kind {
            FailureKind::Status { status: status @ (401 | 403), message } => {
                LlmError::Authentication { model, url, status, message }
            }
            FailureKind::Status { status: 404, message } => LlmError::NotFound { model, url, message },
            FailureKind::Status { status: 429, message } => LlmError::RateLimited { model, url, retries, message },
            FailureKind::Status { status, message } if status >= 500 => {
                LlmError::Server { model, url, status, retries, message }
            }
            FailureKind::Status { status, message } => LlmError::Rejected { model, url, status, message },
            FailureKind::Timeout => LlmError::Timeout { model, url, timeout, retries },
            FailureKind::Connection(message) => LlmError::Connection { model, url, retries, message },
            FailureKind::Malformed(detail) => LlmError::Malformed { model, detail },
        }
    }
}

/// Splits a server-sent event stream into the `data` of each event.
#[derive(Default)]
struct EventStream {
    buffer: String,
    /// Bytes of a UTF-8 character split between chunks.
    partial: Vec<u8>,
}

impl EventStream {
    fn push(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(text) => text.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = std::str::from_utf8(&self.partial[..valid]).expect("checked above");
        // CRLF and CR line ends count as LF (the SSE spec allows all three).
        if text.contains('\r') {
            self.buffer.push_str(&text.replace("\r\n", "\n").replace('\r', "\n"));
        } else {
            self.buffer.push_str(text);
        }
        self.partial.drain(..valid);
    }

    /// The data of the next complete event that has any.
    fn next_data(&mut self) -> Option<String> {
        loop {
            let end = self.buffer.find("\n\n")?;
            let event: String = self.buffer.drain(..end + 2).collect();
            let mut data: Option<String> = None;
            for line in event.lines() {
                let Some(value) = line.strip_prefix("data:") else { continue };
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                }
            }
            if data.is_some() {
                return data;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.buffer.trim().is_empty() && self.partial.is_empty()
    }
}

// -- the API's JSON, as far as a reply needs it ------------------------------------------

#[derive(Deserialize)]
struct Completion {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<Message>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Message {
    content: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: Option<String>,
    function: Option<Function>,
}

#[derive(Deserialize, Default)]
struct Function {
    #[serde(default, deserialize_with = "null_as_empty")]
    name: String,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Usage {
        Usage { prompt_tokens: usage.prompt_tokens, completion_tokens: usage.completion_tokens }
    }
}

#[derive(Deserialize)]
struct Chunk {
    model: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    choices: Vec<ChunkChoice>,
    usage: Option<WireUsage>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    tool_calls: Vec<DeltaToolCall>,
}

#[derive(Deserialize)]
struct DeltaToolCall {
    #[serde(default)]
    index: u32,
    id: Option<String>,
    function: Option<Function>,
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    message: Option<String>,
}

/// `null` (which servers send for absent lists and names) as the type's default.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_chunks_and_line_ends() {
        let mut events = EventStream::default();
        events.push(b"data: {\"a\":");
        assert_eq!(events.next_data(), None);
        events.push(b"1}\r\n\r\n: comment\n\nevent: x\ndata: two\ndata: lines\n\n");
        assert_eq!(events.next_data().as_deref(), Some("{\"a\":1}"));
        assert_eq!(events.next_data().as_deref(), Some("two\nlines"));
        assert_eq!(events.next_data(), None);
        assert!(events.is_empty());
        // A character split between chunks.
        let text = "data: é\n\n".as_bytes();
        events.push(&text[..7]);
        events.push(&text[7..]);
        assert_eq!(events.next_data().as_deref(), Some("é"));
    }

    #[test]
    fn backoff_doubles_to_eight_seconds_with_jitter() {
        for (retries, base) in [(0, 0.5), (1, 1.0), (3, 4.0), (4, 8.0), (10, 8.0)] {
            let wait = backoff(retries).as_secs_f64();
            assert!(wait <= base && wait >= base * 0.75, "retry {retries}: {wait}");
        }
    }

    #[test]
    fn retry_after_takes_milliseconds_first_and_ignores_unreasonable_waits() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        headers.insert("retry-after-ms", "600000".parse().unwrap());
        assert_eq!(retry_after(&headers), None, "more than a minute: back off instead");
    }

    #[test]
    fn retry_after_may_be_an_http_date() {
        let mut headers = reqwest::header::HeaderMap::new();
        let in_ten = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(10));
        headers.insert("retry-after", in_ten.parse().unwrap());
        let wait = retry_after(&headers).expect("a date ten seconds ahead");
        assert!(wait > Duration::from_secs(8) && wait <= Duration::from_secs(10), "{wait:?}");
        headers.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None, "a date gone by: back off instead");
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn a_base_url_must_be_http() {
        let config = |url: &str| OpenAiConfig { base_url: url.into(), ..OpenAiConfig::default() };
        assert!(matches!(OpenAiClient::new(config("not a url")), Err(LlmError::Config(_))));
        assert!(matches!(OpenAiClient::new(config("ftp://x/v1")), Err(LlmError::Config(_))));
        let client = OpenAiClient::new(config("http://127.0.0.1:1/v1/")).unwrap();
        assert_eq!(client.url(), "http://127.0.0.1:1/v1/chat/completions");
    }
}
