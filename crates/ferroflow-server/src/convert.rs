//! Between the engine's types and the protobuf messages, and from engine errors to gRPC
//! statuses.

use ferroflow::limits;
use ferroflow::{Error, EventKind, JournalEntry, RunCursor, RunRecord, RunStatus, StoredEntry, Value};
use tonic::Status;

use crate::{proto, status};

/// The protobuf form of a status.
pub(crate) fn status_message(status: RunStatus) -> proto::RunStatus {
    match status {
        // A run is created with its first tasks ready: `pending` is never stored.
        RunStatus::Pending | RunStatus::Running => proto::RunStatus::Running,
        RunStatus::Waiting => proto::RunStatus::Waiting,
        RunStatus::Completed => proto::RunStatus::Completed,
        RunStatus::Failed => proto::RunStatus::Failed,
        RunStatus::Cancelled => proto::RunStatus::Cancelled,
    }
}

/// The status a `ListRunsRequest.status` asks for; `None` for all. An integer that is no
/// `RunStatus` (a newer client's value, or garbage) is refused.
pub(crate) fn status_filter(value: i32) -> Result<Option<RunStatus>, Status> {
    let status = proto::RunStatus::try_from(value).map_err(|_| {
        status::invalid_argument(format!(
            "status {value} is not a RunStatus (RUN_STATUS_UNSPECIFIED = 0 for all, 1-5 for one)"
        ))
    })?;
    Ok(match status {
        proto::RunStatus::Unspecified => None,
        proto::RunStatus::Running => Some(RunStatus::Running),
        proto::RunStatus::Waiting => Some(RunStatus::Waiting),
        proto::RunStatus::Completed => Some(RunStatus::Completed),
        proto::RunStatus::Failed => Some(RunStatus::Failed),
        proto::RunStatus::Cancelled => Some(RunStatus::Cancelled),
    })
}

/// JSON text of a value; a value without a JSON form (which a durable context cannot hold,
/// so only an in-memory one can have) says so in the text's place.
pub(crate) fn json_text(value: &Value) -> Result<String, Status> {
    serde_json::to_string(value).map_err(|e| status::internal(format!("a value cannot be written as JSON: {e}")))
}

/// The value JSON text stands for: empty text is `null`. Refused (INVALID_ARGUMENT): text
/// over `limit` bytes, text that is not JSON, an integer no engine value holds exactly (one
/// beyond the 64-bit range, which a parser would silently turn into a float), and a value
/// nested deeper than [`limits::MAX_DEPTH`]: the rules the Python API applies too.
pub(crate) fn parse_json(field: &str, text: &str, limit: usize) -> Result<Value, Status> {
    if text.len() > limit {
        return Err(status::invalid_argument(format!(
            "{field} is {} bytes, over this server's limit of {limit} bytes (--max-input-bytes)",
            text.len()
        )));
    }
    if text.trim().is_empty() {
        return Ok(Value::null());
    }
    let json = serde_json::from_str::<serde_json::Value>(text)
        .map_err(|e| status::invalid_argument(format!("{field} is not valid JSON: {e}")))?;
    inexact_integer(text).map_or(Ok(()), |digits| {
        Err(status::invalid_argument(format!(
            "{field} holds the integer {}, outside the 64-bit range: it cannot be kept exactly (send it as a string)",
            limits::shorten(digits, 40)
        )))
    })?;
    limits::check_depth(&json, limits::MAX_DEPTH)
        .map_err(|reason| status::invalid_argument(format!("{field} is {reason}")))?;
    Ok(Value::from(json))
}

/// The first integer in JSON text (outside strings) that fits neither `i64` nor `u64`.
/// Only integers written without a fraction or an exponent count: `1e30` is a float, and
/// reads as one wherever it goes.
fn inexact_integer(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < bytes.len() && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                i += 1;
            }
            let token = &text[start..i];
            let integer = !token.contains(['.', 'e', 'E']);
            if integer && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                return Some(token);
            }
            continue;
        }
        i += 1;
    }
    None
}

/// A run as the service shows it, from its record and journal.
pub(crate) fn run_message(record: &RunRecord, journal: &[StoredEntry]) -> Result<proto::Run, Status> {
    let mut status = record.status;
    let mut output_json = String::new();
    let mut error = None;
    // Human steps asked and not answered yet, in the order they were asked.
    let mut waiting: Vec<(&str, &Value)> = Vec::new();
    for stored in journal {
        match &stored.entry {
            JournalEntry::Interrupted { node, payload, .. } => {
                waiting.retain(|(asked, _)| *asked != &**node);
                waiting.push((node, payload));
            }
            JournalEntry::Resumed { node, .. } => waiting.retain(|(asked, _)| *asked != &**node),
            JournalEntry::RunRetried { .. } => {
                // Running again, unless a later entry says otherwise.
                status = if record.status.is_terminal() { RunStatus::Running } else { record.status };
                output_json.clear();
                error = None;
            }
            JournalEntry::RunFinished { status: finished, output, failure } => {
                // The journal is the truth; a record may lag behind it in some stores.
                status = *finished;
                if let Some(output) = output {
                    output_json = json_text(output)?;
                }
                error = failure.as_ref().map(|failure| proto::NodeError {
                    node: failure.node.to_string(),
                    r#type: failure.error.kind.clone(),
                    message: failure.error.message.clone(),
                    traceback: failure.error.traceback.clone().unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    let waiting = if status == RunStatus::Waiting {
        waiting
            .into_iter()
            .map(|(node, payload)| Ok(proto::Waiting { node: node.to_owned(), request_json: json_text(payload)? }))
            .collect::<Result<_, Status>>()?
    } else {
        Vec::new()
    };
    Ok(proto::Run {
        run_id: record.run_id.clone(),
        graph: record.graph.clone(),
        version: record.version.clone(),
        status: status_message(status) as i32,
        output_json,
        error,
        waiting,
        created_ms: record.created_ms as i64,
        updated_ms: journal.last().map_or(record.updated_ms, |last| last.at_ms.max(record.updated_ms)) as i64,
    })
}

/// The kind a journal entry is shown as.
pub(crate) fn event_kind(entry: &JournalEntry) -> &'static str {
    match entry {
        JournalEntry::RunStarted { .. } => "run_started",
        JournalEntry::NodeCompleted { .. } => "node_completed",
        JournalEntry::NodeFailed { .. } => "node_failed",
        JournalEntry::NodeSkipped { .. } => "node_skipped",
        JournalEntry::StepRecorded { .. } => "step_recorded",
        JournalEntry::Interrupted { .. } => "node_waiting",
        JournalEntry::Resumed { .. } => "node_resumed",
        JournalEntry::RunRetried { .. } => "run_retried",
        JournalEntry::RunForked { .. } => "run_forked",
        JournalEntry::RunFinished { status: RunStatus::Completed, .. } => "run_completed",
        JournalEntry::RunFinished { status: RunStatus::Cancelled, .. } => "run_cancelled",
        JournalEntry::RunFinished { .. } => "run_failed",
    }
}

/// A journal entry as a watcher sees it.
pub(crate) fn event_message(seq: u64, at_ms: u64, entry: &JournalEntry) -> Result<proto::RunEvent, Status> {
    let event_json = serde_json::to_string(entry)
        .map_err(|e| status::internal(format!("an event cannot be written as JSON: {e}")))?;
    Ok(proto::RunEvent {
        offset: seq,
        at_ms: at_ms as i64,
        kind: event_kind(entry).to_owned(),
        node: entry.node().map(|n| n.to_string()).unwrap_or_default(),
        event_json,
        transient: false,
    })
}

/// A moment a node starts, or what a running node reported, as a transient event at
/// offset `seq` (the journal event that follows it).
pub(crate) fn transient_message(seq: u64, at_ms: u64, kind: &EventKind) -> Result<Option<proto::RunEvent>, Status> {
    let (name, node, item, attempt, data) = match kind {
        EventKind::NodeStarted { node, item, attempt } => ("node_started", node, item, attempt, None),
        EventKind::NodeProgress { node, item, attempt, data } => ("node_progress", node, item, attempt, Some(data)),
        _ => return Ok(None),
    };
    let data = data.map(json_text).transpose()?;
    let mut json = serde_json::json!({"node": &**node, "item": item, "attempt": attempt});
    if let Some(data) = data {
        json["data"] = serde_json::from_str(&data).unwrap_or_default();
    }
    Ok(Some(proto::RunEvent {
        offset: seq,
        at_ms: at_ms as i64,
        kind: name.to_owned(),
        node: node.to_string(),
        event_json: json.to_string(),
        transient: true,
    }))
}

/// A page token: where the previous page ended. Opaque to clients.
pub(crate) fn page_token(cursor: RunCursor) -> String {
    format!("{:x}.{:x}", cursor.created_ms, cursor.order)
}

/// Reads a page token back.
pub(crate) fn page_cursor(token: &str) -> Result<Option<RunCursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        status::invalid_argument(format!(
            "page_token {} is not one this server gave out: pass ListRunsResponse.next_page_token as it is",
            limits::quote(token)
        ))
    };
    let (created, order) = token.split_once('.').ok_or_else(invalid)?;
    let created_ms = u64::from_str_radix(created, 16).map_err(|_| invalid())?;
    let order = u64::from_str_radix(order, 16).map_err(|_| invalid())?;
    Ok(Some(RunCursor { created_ms, order }))
}

/// The gRPC status of an engine error: what the caller can do about it.
pub(crate) fn status_of(error: Error) -> Status {
    let message = error.to_string();
    match error {
        Error::RunNotFound { .. } => status::status(tonic::Code::NotFound, message),
        Error::UnknownGraph { .. }
        | Error::Graph(_)
        | Error::InvalidInput { .. }
        | Error::AmbiguousResume { .. }
        | Error::ValueTooLarge { .. } => status::invalid_argument(message),
        Error::RunIdConflict { .. } => status::status(tonic::Code::AlreadyExists, message),
        Error::InvalidRunState { .. } | Error::NotWaitingAt { .. } | Error::VersionMismatch { .. } => {
            status::failed_precondition(message)
        }
        Error::Unavailable(_) | Error::ShuttingDown | Error::Closed => status::unavailable(message),
        Error::Conflict { .. } => status::status(tonic::Code::Aborted, message),
        Error::WaitTimeout { .. } => status::status(tonic::Code::DeadlineExceeded, message),
        Error::CorruptJournal { .. } => status::status(tonic::Code::DataLoss, message),
        _ => status::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let cursor = RunCursor { created_ms: 1_763_900_000_123, order: 42 };
        assert_eq!(page_cursor(&page_token(cursor)).unwrap(), Some(cursor));
        assert_eq!(page_cursor("").unwrap(), None);
        for bad in ["x", "1.", ".1", "zz.1", "1.2.3", "-1.2"] {
            let status = page_cursor(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn json_is_limited_then_parsed() {
        assert!(parse_json("input_json", "", 10).unwrap().is_null());
        assert_eq!(
            parse_json("input_json", "{\"a\": 1}", 100).unwrap().to_json().unwrap(),
            serde_json::json!({"a": 1})
        );
        let too_big = parse_json("input_json", "[1,2,3,4,5,6]", 5).unwrap_err();
        assert_eq!(too_big.code(), tonic::Code::InvalidArgument);
        assert!(too_big.message().contains("13 bytes, over this server's limit of 5"), "{}", too_big.message());
        let bad = parse_json("value_json", "{nope", 100).unwrap_err();
        assert!(bad.message().starts_with("value_json is not valid JSON"), "{}", bad.message());
    }

    #[test]
    fn integers_are_exact_or_refused() {
        let limit = 1 << 20;
        for exact in ["18446744073709551615", "-9223372036854775808", "[1, -2, 3.5, 1e30, 2E+400]"] {
            let parsed = parse_json("input_json", exact, limit);
            // 2E+400 overflows a float: JSON itself refuses it.
            assert!(parsed.is_ok() || exact.contains("E+400"), "{exact}");
        }
        for big in ["18446744073709551616", "{\"n\": -9223372036854775809}", "[123456789012345678901234567890]"] {
            let refused = parse_json("input_json", big, limit).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{big}");
            assert!(refused.message().contains("outside the 64-bit range"), "{}", refused.message());
        }
        // Digits inside strings are text.
        let text = parse_json(
            "input_json",
            r#"{"id": "123456789012345678901234567890", "q": "a\"1e999999999999999999999"}"#,
            limit,
        );
        assert!(text.is_ok(), "{text:?}");
    }

    #[test]
    fn values_nested_past_the_limit_are_refused() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_json("input_json", &nested(limits::MAX_DEPTH), 1 << 20).is_ok());
        let refused = parse_json("input_json", &nested(limits::MAX_DEPTH + 1), 1 << 20).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("nested more than 100"), "{}", refused.message());
        // Past the parser's own limit: refused all the same, not a crash.
        let refused = parse_json("input_json", &nested(100_000), 1 << 20).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn unknown_statuses_are_refused() {
        assert_eq!(status_filter(0).unwrap(), None);
        assert_eq!(status_filter(3).unwrap(), Some(RunStatus::Completed));
        assert_eq!(status_filter(99).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
