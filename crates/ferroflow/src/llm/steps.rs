//! The step keys under which an LLM node records its calls ([`crate::Cx::step`]), one
//! scheme for Rust and Python: a journal written by an LLM node in either language replays
//! in the other, call by call, when the same graph runs the node again.

/// The key of an attempt's model call number `n` (from 0, in the order made): `llm/<n>`.
pub fn model_call(n: usize) -> String {
    format!("llm/{n}")
}

/// The key of the tool call number `i` (from 0) that model call `n` asked for:
/// `tool/<n>/<i>`.
pub fn tool_call(n: usize, i: usize) -> String {
    format!("tool/{n}/{i}")
}

/// The key Rust LLM nodes recorded model call `n` under before the scheme was shared
/// (`llm:<n>`): still read, never written.
pub fn legacy_model_call(n: usize) -> String {
    format!("llm:{n}")
}
