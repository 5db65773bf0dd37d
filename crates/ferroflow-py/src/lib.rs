//! `ferroflow._native`: the PyO3 bindings of the ferroflow engine. Private; the public
//! API is the `ferroflow` Python package.

mod asyncio;
mod batch;
mod body;
mod delivery;
mod engine;
mod error;
mod llm;
mod options;
mod records;
mod run;
mod runtime;
mod server;
mod value;
mod workflow;

use pyo3::prelude::*;

/// Checks that `obj` is plain JSON data (what a durable context can store); raises
/// `TypeError` saying what and where otherwise.
#[pyfunction]
fn check_json(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    value::py_to_json(obj, "$").map(drop).map_err(pyo3::exceptions::PyTypeError::new_err)
}

/// Sends the engine's log lines (a worker handing work back, a store failing a run) to
/// standard error, at the level `FERROFLOW_LOG` names (error, warn (the default), info,
/// debug, trace, or off). A process that installed a `tracing` subscriber of its own keeps it.
fn init_logging() {
    let level = std::env::var("FERROFLOW_LOG").unwrap_or_default();
    let filter = match level.trim().to_ascii_lowercase().as_str() {
        "off" => tracing_subscriber::filter::LevelFilter::OFF,
        "error" => tracing_subscriber::filter::LevelFilter::ERROR,
        "info" => tracing_subscriber::filter::LevelFilter::INFO,
        "debug" => tracing_subscriber::filter::LevelFilter::DEBUG,
        "trace" => tracing_subscriber::filter::LevelFilter::TRACE,
        _ => tracing_subscriber::filter::LevelFilter::WARN,
    };
    let _ = tracing_subscriber::fmt().with_max_level(filter).with_writer(std::io::stderr).try_init();
}

/// Checks one node's JSON spec as the core would (its retry policy and timeout), so
/// that a bad policy fails where the node is declared; raises `ferroflow.errors.GraphError`
/// naming the graph and the node.
#[pyfunction]
fn check_node(graph: &str, node_json: &str) -> PyResult<()> {
    ferroflow::NodeSpec::from_json(graph, node_json).map(drop).map_err(|e| error::to_py_err(e.into()))
}

/// The step keys of an LLM node's calls (`ferroflow::llm::steps`), shared with Rust LLM
/// nodes: `(model call n, the legacy key of model call n)`.
#[pyfunction]
fn model_call_keys(n: usize) -> (String, String) {
    (ferroflow::llm::steps::model_call(n), ferroflow::llm::steps::legacy_model_call(n))
}

/// The step key of tool call `i` asked for by model call `n` (`ferroflow::llm::steps`).
#[pyfunction]
fn tool_call_key(n: usize, i: usize) -> String {
    ferroflow::llm::steps::tool_call(n, i)
}

/// Every kind of model call failure as `(the error type its LLM node records, the class the
/// bindings raise for it)`: the two must name the same class, so that a journal reads the
/// same whichever language's LLM node wrote it (`tests/test_llm.py` checks).
#[pyfunction]
fn llm_error_kinds(py: Python<'_>) -> Vec<(&'static str, Bound<'_, pyo3::types::PyType>)> {
    ferroflow::llm::LlmErrorKind::ALL
        .iter()
        .map(|&kind| (kind.recorded_as(), error::llm_error_class(py, kind)))
        .collect()
}

/// Reads a durable context's URL (the syntax `ferroflow-server --context` takes):
/// `(kind, location, namespace)`, kind being `sqlite`, `redis` or `nats` (a SQLite file's
/// namespace is empty). Raises `ferroflow.errors.StoreError` for anything else.
#[pyfunction]
fn parse_context(py: Python<'_>, spec: &str) -> PyResult<(&'static str, String, String)> {
    use ferroflow::store::ContextUrl;
    match ContextUrl::parse(spec) {
        Ok(ContextUrl::Sqlite(path)) => Ok(("sqlite", path, String::new())),
        Ok(ContextUrl::Redis { url, namespace }) => Ok(("redis", url, namespace)),
        Ok(ContextUrl::Nats { url, namespace }) => Ok(("nats", url, namespace)),
        Err(e) => Err(error::new_error::<error::classes::StoreError>(py, e.to_string(), &[])),
    }
}

/// A server URL without its credentials (password, token, secret query values), as
/// messages and logs show it.
#[pyfunction]
fn redact_url(url: &str) -> String {
    ferroflow::store::redact_url(url)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<workflow::PyWorkflow>()?;
    m.add_class::<run::PyRun>()?;
    m.add_class::<asyncio::PyEventLoop>()?;
    m.add_class::<body::PyNodeHandle>()?;
    m.add_class::<llm::PyOpenAIClient>()?;
    m.add_class::<llm::PyReplyStream>()?;
    m.add_class::<server::PyServer>()?;
    m.add_function(wrap_pyfunction!(check_json, m)?)?;
    m.add_function(wrap_pyfunction!(check_node, m)?)?;
    m.add_function(wrap_pyfunction!(parse_context, m)?)?;
    m.add_function(wrap_pyfunction!(model_call_keys, m)?)?;
    m.add_function(wrap_pyfunction!(tool_call_key, m)?)?;
    m.add_function(wrap_pyfunction!(llm_error_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(redact_url, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::shutdown, m)?)?;
    Ok(())
}
