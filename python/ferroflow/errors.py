"""Every exception ferroflow raises, declared in one place.

All derive from :class:`FerroflowError`. Errors about a graph carry ``graph`` and
``node``; errors about a run carry ``run_id`` (and ``node`` where one is to blame).
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "ContextClosedError",
    "CycleError",
    "DuplicateNodeError",
    "FerroflowError",
    "GraphError",
    "InvalidInputError",
    "InvalidRunStateError",
    "LLMAuthenticationError",
    "LLMConnectionError",
    "LLMError",
    "LLMNotFoundError",
    "LLMRateLimitError",
    "LLMRejectedError",
    "LLMServerError",
    "LLMTimeoutError",
    "MalformedReplyError",
    "RunCancelledError",
    "RunError",
    "RunFailedError",
    "RunIdConflictError",
    "RunNotFoundError",
    "StepNotRecordedError",
    "StoreError",
    "StoreUnavailableError",
    "UnknownDependencyError",
    "UnknownGraphError",
    "UnresolvedParameterError",
    "WaitTimeoutError",
]


class FerroflowError(Exception):
    """Base class of every ferroflow error."""

    def __init__(
        self,
        message: str,
        *,
        run_id: Optional[str] = None,
        node: Optional[str] = None,
        graph: Optional[str] = None,
        status: Optional[str] = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.run_id = run_id
        self.node = node
        self.graph = graph
        self.status = status
        self.details = details


class GraphError(FerroflowError):
    """A graph definition is invalid; raised when the graph is built."""


class CycleError(GraphError):
    """The graph's dependencies form a cycle (the message shows it)."""


class DuplicateNodeError(GraphError):
    """Two nodes share a name."""


class UnknownDependencyError(GraphError):
    """A node depends (through ``after``, ``when``, ``over`` or ``deps``) on a node that does not exist."""


class UnresolvedParameterError(GraphError):
    """A body parameter matches no node, is not ``input``/``ctx``/``item``, and has no default."""


class UnknownGraphError(FerroflowError):
    """No graph of that name is registered."""


class ContextClosedError(FerroflowError):
    """The context was closed (:meth:`Context.close`): open a new one to go on."""


class StoreError(FerroflowError):
    """A store failed, or holds something inconsistent with the graph."""


class StoreUnavailableError(StoreError):
    """The store's server cannot be reached, is restarting, or did not answer in time.

    What was asked may or may not have been done: starting a run again with the same
    ``run_id`` is safe (it continues the run if it was created). Steps of runs in flight
    do not raise this; they wait for the store (``outage_timeout``)."""


class LLMError(FerroflowError):
    """A model call failed, after the client's retries: every provider (OpenAI on the
    ``openai`` client, Anthropic, the native OpenAI client) raises these classes, naming the
    model and the server, with the client's own error as ``__cause__``. ``model`` names the
    model; ``http_status`` is the server's status when it answered (else ``None``)."""

    def __init__(
        self, message: str, *, model: Optional[str] = None, http_status: Optional[Any] = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.model = model
        self.http_status = int(http_status) if http_status is not None else None


class LLMAuthenticationError(LLMError):
    """The server rejected the API key (HTTP 401 or 403). Not retried."""


class LLMNotFoundError(LLMError, LookupError):
    """No such model, or no chat-completions endpoint at the base URL (HTTP 404). Not retried."""


class LLMRateLimitError(LLMError):
    """Still rate limited (HTTP 429) after the client's retries."""


class LLMServerError(LLMError):
    """Still a server error (HTTP 5xx, or an error event in a stream) after the client's
    retries."""


class LLMRejectedError(LLMError, ValueError):
    """The server will not take the request (HTTP 400, 413, 422: bad parameters, a prompt
    too long). Not retried."""


class LLMConnectionError(LLMError, ConnectionError):
    """The server could not be reached, or dropped the connection, after the client's retries."""


class LLMTimeoutError(LLMConnectionError, TimeoutError):
    """The server did not answer within the timeout, after the client's retries."""


class MalformedReplyError(LLMError, ValueError):
    """The model's reply cannot be used: not the API's JSON, or a tool call whose arguments
    are not a JSON object."""


class RunError(FerroflowError):
    """An error about one run; ``run_id`` says which."""


class RunNotFoundError(RunError, LookupError):
    """No run has that id (in memory, finished runs are kept only up to a limit)."""


class RunIdConflictError(RunError):
    """The run id is taken by a run of another graph."""


class InvalidRunStateError(RunError):
    """The run is not in a state that allows the call (``status`` says which it is in)."""


class InvalidInputError(RunError, ValueError):
    """A run input or resume value is unusable (in strict mode: not plain JSON data)."""


class WaitTimeoutError(RunError, TimeoutError):
    """A wait for a run timed out. The run itself goes on."""


class StepNotRecordedError(FerroflowError):
    """Raised in a body that replays a recorded run (``graph.replay``) when it asks for a step
    (a model call, a tool call, a ``ctx.step``) that the recorded run did not take: the code
    diverges there, and a replay calls nothing outside. The node fails with it."""


class RunCancelledError(RunError):
    """The run was cancelled."""


class RunFailedError(RunError):
    """A node failed for good (after its retries); the run is failed.

    ``node`` is the node, ``error_type`` / ``error_message`` / ``traceback`` describe its
    last attempt's error. Everything completed before the failure stays in the journal.
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: Optional[str] = None,
        error_message: Optional[str] = None,
        traceback: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
