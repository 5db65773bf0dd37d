//! Why a model call failed ([`LlmError`]) and the kind of each failure ([`LlmErrorKind`]),
//! the typed form the engine records and the bindings map to their exception classes.

use std::time::Duration;

/// Why a model call failed. Every variant names the model; the HTTP ones carry the
/// status and the server's own message, so that a person can act on them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// 401 or 403: the API key is missing, wrong, or not allowed this model. Not retried.
    #[error("model '{model}' at {url}: the API key was rejected (HTTP {status}): {message}")]
    Authentication {
        /// The model called.
        model: String,
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's own message (or an excerpt of its reply).
        message: String,
    },
    /// 404: no such model (or no such endpoint at the base URL). Not retried.
    #[error("model '{model}' at {url}: not found (HTTP 404): {message}")]
    NotFound {
        /// The model called.
        model: String,
        /// The URL called.
        url: String,
        /// The server's own message (or an excerpt of its reply).
        message: String,
    },
    /// 429 still, after `retries` retries.
    #[error("model '{model}' at {url}: rate limited (HTTP 429) after {retries} retries: {message}")]
    RateLimited {
        /// The model called.
        model: String,
        /// The URL called.
        url: String,
        /// Retries made after the first attempt.
        retries: u32,
        /// The server's own message (or an excerpt of its reply).
        message: String,
    },
    /// 5xx still, after `retries` retries.
    #[error("model '{model}' at {url}: server error (HTTP {status}) after {retries} retries: {message}")]
    Server {
        /// The model called.
        model: String,
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Retries made after the first attempt.
        retries: u32,
        /// The server's own message (or an excerpt of its reply).
        message: String,
    },
    /// Any other status: a request the server will not take (400 for bad parameters,
    /// 413, 422). Not retried, except 408 and 409, which are retried first as the
    /// official clients do.
    #[error("model '{model}' at {url}: request rejected (HTTP {status}): {message}")]
    Rejected {
        /// The model called.
        model: String,
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's own message (or an excerpt of its reply).
        message: String,
    },
    /// No reply within the timeout, after `retries` retries.
    #[error("model '{model}' at {url}: no reply within {timeout:?} after {retries} retries")]
    Timeout {
        /// The model called.
        model: String,
        /// The URL called.
        url: String,
        /// The limit each attempt had.
        timeout: Duration,
        /// Retries made after the first attempt.
        retries: u32,
    },
    /// The server could not be reached, or dropped the connection, after `retries` retries.
    #[error("model '{model}' at {url}: connection failed after {retries} retries: {message}")]
    Connection {
        /// The model called.
        model: String,
        /// The URL called.
        url: String,
        /// Retries made after the first attempt.
        retries: u32,
        /// What failed, with its causes.
        message: String,
    },
    /// The reply cannot be used: not the API's JSON, or a tool call whose arguments are
    /// not a JSON object.
    #[error("model '{model}': malformed reply: {detail}")]
    Malformed {
        /// The model called.
        model: String,
        /// What is wrong with the reply.
        detail: String,
    },
    /// The client's own configuration is unusable (a base URL that is not a URL).
    #[error("LLM client configuration: {0}")]
    Config(String),
}

impl LlmError {
    /// The HTTP status behind the error, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            LlmError::Authentication { status, .. } | LlmError::Server { status, .. } => Some(*status),
            LlmError::Rejected { status, .. } => Some(*status),
            LlmError::NotFound { .. } => Some(404),
            LlmError::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// The model the failed call was for (none for a configuration error).
    pub fn model(&self) -> Option<&str> {
        match self {
            LlmError::Authentication { model, .. }
            | LlmError::NotFound { model, .. }
            | LlmError::RateLimited { model, .. }
            | LlmError::Server { model, .. }
            | LlmError::Rejected { model, .. }
            | LlmError::Timeout { model, .. }
            | LlmError::Connection { model, .. }
            | LlmError::Malformed { model, .. } => Some(model),
            LlmError::Config(_) => None,
        }
    }

    /// The last part of [`LlmErrorKind::recorded_as`] (`LLMRateLimitError`, ...), the name
    /// this method gave before error kinds were typed; use [`LlmError::kind`].
    #[deprecated(note = "use `kind()`, and `recorded_as()` for the journal's error type")]
    pub fn class_name(&self) -> &'static str {
        let recorded = self.kind().recorded_as();
        recorded.rsplit('.').next().unwrap_or(recorded)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> LlmErrorKind {
        match self {
            LlmError::Authentication { .. } => LlmErrorKind::Authentication,
            LlmError::NotFound { .. } => LlmErrorKind::NotFound,
            LlmError::RateLimited { .. } => LlmErrorKind::RateLimited,
            LlmError::Server { .. } => LlmErrorKind::Server,
            LlmError::Rejected { .. } => LlmErrorKind::Rejected,
            LlmError::Timeout { .. } => LlmErrorKind::Timeout,
            LlmError::Connection { .. } => LlmErrorKind::Connection,
            LlmError::Malformed { .. } => LlmErrorKind::Malformed,
            LlmError::Config(_) => LlmErrorKind::Config,
        }
    }

    /// Whether trying the same call again later may succeed (rate limits, server errors,
    /// timeouts, connections), as opposed to a request that will fail the same way.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. }
                | LlmError::Server { .. }
                | LlmError::Timeout { .. }
                | LlmError::Connection { .. }
        )
    }
}

/// The kind of a model call's failure ([`LlmError::kind`]): what an interface maps to its
/// own error types (the Python bindings to the classes of `ferroflow.errors`), and what a
/// failed LLM node records as its error type ([`LlmErrorKind::recorded_as`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LlmErrorKind {
    /// [`LlmError::Authentication`].
    Authentication,
    /// [`LlmError::NotFound`].
    NotFound,
    /// [`LlmError::RateLimited`].
    RateLimited,
    /// [`LlmError::Server`].
    Server,
    /// [`LlmError::Rejected`].
    Rejected,
    /// [`LlmError::Timeout`].
    Timeout,
    /// [`LlmError::Connection`].
    Connection,
    /// [`LlmError::Malformed`].
    Malformed,
    /// [`LlmError::Config`].
    Config,
}

impl LlmErrorKind {
    /// Every kind.
    pub const ALL: [LlmErrorKind; 9] = [
        LlmErrorKind::Authentication,
        LlmErrorKind::NotFound,
        LlmErrorKind::RateLimited,
        LlmErrorKind::Server,
        LlmErrorKind::Rejected,
        LlmErrorKind::Timeout,
        LlmErrorKind::Connection,
        LlmErrorKind::Malformed,
        LlmErrorKind::Config,
    ];

    /// The error type a failed LLM node records in its journal for this kind
    /// ([`NodeError::kind`](crate::NodeError::kind)), from either language. It is journal
    /// data, read back by every process on a store, so it never changes: it is the
    /// qualified name under which a Python LLM node's failure of the same kind is
    /// recorded (the Python package's class for it), so that a run's journal reads the
    /// same whichever language's LLM node wrote it. The bindings check the two agree
    /// (`tests/test_llm.py`).
    pub fn recorded_as(self) -> &'static str {
        match self {
            LlmErrorKind::Authentication => "ferroflow.errors.LLMAuthenticationError",
            LlmErrorKind::NotFound => "ferroflow.errors.LLMNotFoundError",
            LlmErrorKind::RateLimited => "ferroflow.errors.LLMRateLimitError",
            LlmErrorKind::Server => "ferroflow.errors.LLMServerError",
            LlmErrorKind::Rejected => "ferroflow.errors.LLMRejectedError",
            LlmErrorKind::Timeout => "ferroflow.errors.LLMTimeoutError",
            LlmErrorKind::Connection => "ferroflow.errors.LLMConnectionError",
            LlmErrorKind::Malformed => "ferroflow.errors.MalformedReplyError",
            LlmErrorKind::Config => "ferroflow.errors.LLMError",
        }
    }
}
