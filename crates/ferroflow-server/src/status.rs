//! gRPC statuses whose messages fit in the response's metadata.
//!
//! A status message travels in a header (`grpc-message`), and clients refuse headers over a
//! few KB: a message quoting a 100 KB field would reach the client as RESOURCE_EXHAUSTED
//! instead of the error. Messages quote user input shortened
//! ([`ferroflow::limits::quote`]), and every status the service returns is made here, cut
//! to [`MAX_MESSAGE_BYTES`] whatever it holds.

use tonic::{Code, Status};

/// The longest status message sent, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// A status of `code` with `message`, cut to [`MAX_MESSAGE_BYTES`].
pub fn status(code: Code, message: impl Into<String>) -> Status {
    let mut message = message.into();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    Status::new(code, message)
}

/// INVALID_ARGUMENT: the request is wrong, and the same request will fail again.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, message)
}

/// FAILED_PRECONDITION: the run is not in a state the call needs.
pub fn failed_precondition(message: impl Into<String>) -> Status {
    status(Code::FailedPrecondition, message)
}

/// INTERNAL: the server failed.
pub fn internal(message: impl Into<String>) -> Status {
    status(Code::Internal, message)
}

/// UNAVAILABLE: try again later.
pub fn unavailable(message: impl Into<String>) -> Status {
    status(Code::Unavailable, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_on_a_character_boundary() {
        let status = invalid_argument("é".repeat(10_000));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert!(status.message().ends_with("..."));
        assert_eq!(invalid_argument("short").message(), "short");
    }
}
