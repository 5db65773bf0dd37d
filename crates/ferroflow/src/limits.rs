//! The limits every value and name obeys, in every context, checked where they enter.
//!
//! One set of limits for memory and every store, so that a graph that runs in real time
//! also runs durably, and a run that one store accepts every store accepts:
//!
//! - **Nesting**: a value (a run input, a node output, a person's answer, a recorded step)
//!   nests at most [`MAX_DEPTH`] lists and objects deep. Stores keep values as JSON inside
//!   a few levels of their own records, and JSON parsers refuse documents deeper than 128
//!   levels (serde_json's limit): a deeper value would be written and then never read back.
//!   Checked without recursion, so no value can overflow a thread's stack.
//! - **Names and ids**: run ids, graph and node names, and the keys of recorded steps are
//!   at most [`MAX_NAME_BYTES`] bytes of UTF-8, and hold no control characters. Every store
//!   builds keys or subjects from them (NATS limits a subject to a few KB, and a longer one
//!   stalls the connection), and they are quoted in messages and logs.
//!
//! Error messages quote what they are about through [`quote`], which shortens long text:
//! an error must fit in a gRPC status or a log line whatever the input was.

use std::fmt::Write as _;

/// The deepest a value may nest: lists and objects within each other, the outermost
/// counting 1 (a scalar is 0 deep).
pub const MAX_DEPTH: usize = 100;

/// The longest a run id, a graph or node name, or a step key may be, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// How many characters of a text [`quote`] keeps.
const QUOTED_CHARS: usize = 120;

/// Whether `value` nests at most `limit` lists and objects deep; if not, where the limit
/// is crossed (`$[0].a[3]`, the path to the first container past the limit, with long keys
/// shortened). Iterative: a value of any depth is looked at without recursion.
///
/// # Errors
///
/// A sentence saying how deep the value goes past the limit, and where.
pub fn check_depth(value: &serde_json::Value, limit: usize) -> Result<(), String> {
    use serde_json::Value as Json;
    // Each frame: the container's children still to visit, and how this container is
    // reached from its parent (for the path in the message).
    enum Children<'a> {
        Array(std::iter::Enumerate<std::slice::Iter<'a, Json>>),
        Object(serde_json::map::Iter<'a>),
    }
    fn children(value: &Json) -> Option<Children<'_>> {
        match value {
            Json::Array(items) if !items.is_empty() => Some(Children::Array(items.iter().enumerate())),
            Json::Object(map) if !map.is_empty() => Some(Children::Object(map.iter())),
            _ => None,
        }
    }
    let is_container = |v: &Json| matches!(v, Json::Array(_) | Json::Object(_));
    if !is_container(value) {
        return Ok(());
    }
    if limit == 0 {
        return Err(too_deep(limit, &[]));
    }
    let mut path: Vec<Step<'_>> = Vec::new();
    let mut stack: Vec<Children<'_>> = children(value).into_iter().collect();
    if stack.is_empty() {
        return Ok(());
    }
    // `stack.len()` is the depth of the containers whose children are being visited.
    while let Some(top) = stack.last_mut() {
        let next = match top {
            Children::Array(items) => items.next().map(|(i, v)| (Step::Index(i), v)),
            Children::Object(fields) => fields.next().map(|(k, v)| (Step::Key(k), v)),
        };
        let Some((step, child)) = next else {
            stack.pop();
            path.pop();
            continue;
        };
        if !is_container(child) {
            continue;
        }
        if stack.len() + 1 > limit {
            path.push(step);
            return Err(too_deep(limit, &path));
        }
        if let Some(grandchildren) = children(child) {
            path.push(step);
            stack.push(grandchildren);
        }
    }
    Ok(())
}

/// One step of a path into a value.
enum Step<'a> {
    Index(usize),
    Key(&'a str),
}

fn too_deep(limit: usize, path: &[Step<'_>]) -> String {
    let mut at = String::from("$");
    for step in path {
        match step {
            Step::Index(i) => {
                let _ = write!(at, "[{i}]");
            }
            Step::Key(key) => {
                let _ = write!(at, ".{}", shorten(key, 20));
            }
        }
    }
    format!("nested more than {limit} lists and objects deep (at {})", shorten(&at, 160))
}

/// Checks a run id, a graph or node name, or a step key (`what` says which, for the
/// message): not empty, at most [`MAX_NAME_BYTES`] bytes, no control characters.
///
/// # Errors
///
/// A sentence saying what is wrong, quoting the name shortened.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err(format!("{what} {} is empty", quote(name)));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} {} is {} bytes long; the limit is {MAX_NAME_BYTES} bytes",
            quote(name),
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!("{what} {} holds the control character {c:?}; names must be printable", quote(name)));
    }
    Ok(())
}

/// `text` in quotes, escaped as Rust's `{:?}` does, and shortened to its first 120
/// characters (saying how long it was) when it is longer: what error messages quote of
/// user input.
pub fn quote(text: &str) -> String {
    let count = text.chars().count();
    if count <= QUOTED_CHARS {
        return format!("{text:?}");
    }
    let kept: String = text.chars().take(QUOTED_CHARS).collect();
    format!("{kept:?}... ({} bytes in all)", text.len())
}

/// `text` cut to `max` characters, with an ellipsis when something was cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut kept: String = text.chars().take(max.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> serde_json::Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = json!([value]);
        }
        value
    }

    #[test]
    fn depth_counts_containers() {
        assert!(check_depth(&json!(1), 0).is_ok());
        assert!(check_depth(&json!([]), 1).is_ok());
        assert!(check_depth(&json!([]), 0).is_err());
        assert!(check_depth(&json!({"a": [1, {"b": 2}]}), 3).is_ok());
        assert!(check_depth(&json!({"a": [1, {"b": 2}]}), 2).is_err());
        assert!(check_depth(&nested(MAX_DEPTH), MAX_DEPTH).is_ok());
        let error = check_depth(&nested(MAX_DEPTH + 1), MAX_DEPTH).unwrap_err();
        assert!(error.contains("more than 100"), "{error}");
    }

    #[test]
    fn the_message_says_where() {
        let error = check_depth(&json!({"a": [0, {"b": [[1]]}]}), 3).unwrap_err();
        assert!(error.contains("(at $.a[1].b)"), "{error}");
    }

    #[test]
    fn a_very_deep_value_is_looked_at_without_recursion() {
        // Deep enough to overflow a thread's stack if walked recursively. Built and dropped
        // by hand: serde_json's own drop of such a value would recurse.
        let depth = 200_000;
        let mut value = json!(null);
        for _ in 0..depth {
            value = serde_json::Value::Array(vec![value]);
        }
        assert!(check_depth(&value, MAX_DEPTH).is_err());
        let mut current = value;
        while let serde_json::Value::Array(mut items) = current {
            current = items.pop().unwrap_or(serde_json::Value::Null);
        }
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(check_name("run id", "ticket-42").is_ok());
        assert!(check_name("run id", "").is_err());
        assert!(check_name("run id", "  ").is_err());
        assert!(check_name("run id", "a\nb").unwrap_err().contains("control"));
        assert!(check_name("run id", "é".repeat(128).as_str()).is_ok());
        let long = "x".repeat(4096);
        let error = check_name("run id", &long).unwrap_err();
        assert!(error.contains("4096 bytes") && error.len() < 400, "{error}");
    }

    #[test]
    fn quotes_are_short() {
        assert_eq!(quote("abc"), "\"abc\"");
        let quoted = quote(&"y".repeat(100_000));
        assert!(quoted.len() < 200 && quoted.contains("100000 bytes"), "{quoted}");
    }
}
