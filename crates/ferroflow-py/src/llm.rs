//! `ferroflow._native.OpenAIClient`: the crate's native chat-completions client, for
//! `ferroflow.NativeOpenAIProvider`.
//!
//! A call's HTTP work, SSE parsing and JSON decoding run on the engine's tokio runtime;
//! Python is entered only to convert the request's messages at the start and the reply at
//! the end. Called with a node's handle ([`PyOpenAIClient::call`]), the call also reports
//! each token delta to the run's watchers and records the reply as the node's step from
//! Rust, so a streamed answer costs the GIL nothing per token.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferroflow::llm::{ChatRequest, LlmError, Provider};
use ferroflow::openai::{OpenAiClient, OpenAiConfig};
use ferroflow::{NodeHandle, Value};
use pyo3::exceptions::{PyStopAsyncIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use pyo3_async_runtimes::generic::{ContextExt, Runtime};
use tokio::sync::{Mutex, mpsc};

use crate::body::PyNodeHandle;
use crate::error::to_py_err;
use crate::runtime;
use crate::value::{json_to_py, py_to_json};

/// The process's tokio runtime ([`runtime::handle`]) as pyo3-async-runtimes sees it, so
/// that awaitables made here run where the engine runs (and survive `fork`, as the
/// engine's runtime does).
struct EngineRuntime;

tokio::task_local! {
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

impl Runtime for EngineRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        runtime::handle().spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        runtime::handle().spawn_blocking(f)
    }
}

impl ContextExt for EngineRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.try_with(|cell| cell.get().cloned()).unwrap_or_default()
    }
}

/// An awaitable on the caller's event loop for `fut`; cancelling it drops `fut`. Once the
/// interpreter is shutting down, a result is never handed over: that would enter Python
/// from an engine thread during finalisation (see [`runtime::attach`]).
fn awaitable<'py, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<Py<PyAny>>> + Send + 'static,
{
    pyo3_async_runtimes::generic::future_into_py::<EngineRuntime, _, _>(py, async move {
        let out = fut.await;
        if runtime::shutting_down() {
            std::future::pending::<()>().await;
        }
        out
    })
}

/// The reply (or error) as Python sees it.
fn reply_to_py(result: Result<serde_json::Value, LlmError>) -> PyResult<Py<PyAny>> {
    let json = result.map_err(llm_error)?;
    runtime::attach(|py| json_to_py(py, &json))
        .unwrap_or_else(|| Err(pyo3::exceptions::PyRuntimeError::new_err("the interpreter is shutting down")))
}

/// Maps a client error to its `ferroflow.errors` class.
fn llm_error(err: LlmError) -> PyErr {
    Python::attach(|py| crate::error::llm_error(py, &err))
}

fn json_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<serde_json::Value> {
    py_to_json(obj, what).map_err(PyTypeError::new_err)
}

/// `ferroflow._native.OpenAIClient(base_url, api_key, max_retries, timeout)`.
#[pyclass(frozen, module = "ferroflow._native", name = "OpenAIClient")]
pub struct PyOpenAIClient {
    client: OpenAiClient,
}

impl PyOpenAIClient {
    fn request(
        model: String,
        messages: &Bound<'_, PyAny>,
        tools: &Bound<'_, PyAny>,
        params: &Bound<'_, PyAny>,
    ) -> PyResult<ChatRequest> {
        let serde_json::Value::Array(messages) = json_arg(messages, "messages")? else {
            return Err(PyTypeError::new_err("messages must be a list of message dicts"));
        };
        let serde_json::Value::Array(tools) = json_arg(tools, "tools")? else {
            return Err(PyTypeError::new_err("tools must be a list of tool specs"));
        };
        let serde_json::Value::Object(params) = json_arg(params, "params")? else {
            return Err(PyTypeError::new_err("params must be a dict"));
        };
        Ok(ChatRequest { model, messages, tools, params })
    }
}

#[pymethods]
impl PyOpenAIClient {
    #[new]
    #[pyo3(signature = (base_url, api_key, max_retries, timeout))]
    fn new(base_url: String, api_key: Option<String>, max_retries: u32, timeout: f64) -> PyResult<Self> {
        if !(timeout > 0.0 && timeout.is_finite()) {
            return Err(PyValueError::new_err(format!("timeout must be a positive number of seconds, not {timeout}")));
        }
        let config = OpenAiConfig { base_url, api_key, max_retries, timeout: Duration::from_secs_f64(timeout) };
        let client = OpenAiClient::new(config).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyOpenAIClient { client })
    }

    /// The URL calls go to.
    #[getter]
    fn url(&self) -> &str {
        self.client.url()
    }

    /// One model call; an awaitable of the reply's JSON (`Reply.to_json`). Streamed when
    /// `stream` is true. With a node's `handle`, each text delta is reported to the run's
    /// watchers as `{"token": delta}`, and the reply is recorded as the node's step `key`
    /// (durably, in a durable context) before the awaitable completes.
    #[pyo3(signature = (model, messages, tools, params, stream, handle=None, key=None))]
    #[allow(clippy::too_many_arguments)]
    fn call<'py>(
        &self,
        py: Python<'py>,
        model: String,
        messages: &Bound<'py, PyAny>,
        tools: &Bound<'py, PyAny>,
        params: &Bound<'py, PyAny>,
        stream: bool,
        handle: Option<PyRef<'py, PyNodeHandle>>,
        key: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = Self::request(model, messages, tools, params)?;
        let handle: Option<NodeHandle> = handle.map(|h| h.handle.clone());
        if handle.is_some() && key.is_none() {
            return Err(PyValueError::new_err("a call with a node handle needs the step key to record it under"));
        }
        let client = self.client.clone();
        awaitable(py, async move {
            let reply = if stream {
                let sink = handle.clone();
                let mut on_delta = move |delta: &str| {
                    if let Some(handle) = &sink {
                        handle.emit(Value::Json(Arc::new(serde_json::json!({ "token": delta }))));
                    }
                };
                client.stream(&request, &mut on_delta).await
            } else {
                client.complete(&request).await
            };
            let json = reply.map(|reply| reply.to_json());
            if let (Ok(json), Some(handle), Some(key)) = (&json, handle, key) {
                record(handle, key, json.clone()).await?;
            }
            reply_to_py(json)
        })
    }

    /// A streamed model call for the provider protocol's `stream`: an async iterator of
    /// the text deltas (`str`), then the reply's JSON (`dict`) last.
    fn open_stream(
        &self,
        model: String,
        messages: &Bound<'_, PyAny>,
        tools: &Bound<'_, PyAny>,
        params: &Bound<'_, PyAny>,
    ) -> PyResult<PyReplyStream> {
        let request = Self::request(model, messages, tools, params)?;
        let client = self.client.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = runtime::handle().spawn(async move {
            let deltas = tx.clone();
            let mut on_delta = move |delta: &str| {
                let _ = deltas.send(Part::Delta(delta.to_owned()));
            };
            let reply = client.stream(&request, &mut on_delta).await;
            let _ = tx.send(Part::End(reply.map(|reply| reply.to_json())));
        });
        Ok(PyReplyStream { rx: Arc::new(Mutex::new(rx)), task })
    }
}

/// Records `json` as the node's step `key`: a store may wait, so off the async threads.
async fn record(handle: NodeHandle, key: String, json: serde_json::Value) -> PyResult<()> {
    let value = Value::Json(Arc::new(json));
    let recorded = if handle.durable() {
        tokio::task::spawn_blocking(move || handle.record(&key, value))
            .await
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("recording the reply failed: {e}")))?
    } else {
        handle.record(&key, value)
    };
    recorded.map_err(to_py_err)
}

enum Part {
    Delta(String),
    End(Result<serde_json::Value, LlmError>),
}

/// `ferroflow._native.ReplyStream`: the async iterator of
/// [`PyOpenAIClient::open_stream`]. Dropping it aborts the call.
#[pyclass(frozen, module = "ferroflow._native", name = "ReplyStream")]
pub struct PyReplyStream {
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Part>>>,
    task: tokio::task::JoinHandle<()>,
}

#[pymethods]
impl PyReplyStream {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let rx = Arc::clone(&self.rx);
        awaitable(py, async move {
            let part = rx.lock().await.recv().await;
            match part {
                Some(Part::Delta(text)) => runtime::attach(|py| Ok(text.into_pyobject(py)?.into_any().unbind()))
                    .unwrap_or_else(|| Err(PyStopAsyncIteration::new_err(()))),
                Some(Part::End(reply)) => reply_to_py(reply),
                None => Err(PyStopAsyncIteration::new_err(())),
            }
        })
    }
}

impl Drop for PyReplyStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
