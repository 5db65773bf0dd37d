"""What a test hands the mock server and gets back: tool calls to make, the request body a reply
callable receives, and the records of the requests answered."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Union


@dataclass(frozen=True)
class ToolCall:
    """A tool (function) call for the mock model to make; return one, or a list, from a reply callable.

    ``arguments`` is sent JSON-encoded; a ``str`` is sent verbatim (to test how a caller copes
    with arguments that are not valid JSON). Through Anthropic's API the call is a ``tool_use``
    block: its ``input`` is the arguments (a ``str`` that is a JSON object is sent as that object,
    any other ``str`` as the string itself), streamed as ``input_json_delta`` fragments of the JSON
    text (a ``str`` verbatim). ``id`` defaults to ``call_<n>`` (OpenAI) or ``toolu_<n>``
    (Anthropic), ``n`` counting the server's tool calls from 1 (reset by
    :meth:`MockLLMServer.reset`).
    """

    name: str
    """The function's name."""
    arguments: Union[Dict[str, Any], str] = field(default_factory=dict)
    """The arguments: a dict (sent as JSON) or a string (sent as is)."""
    id: Optional[str] = None
    """The call's id; ``None`` for ``call_<n>`` (``toolu_<n>`` through Anthropic's API)."""

    @property
    def arguments_json(self) -> str:
        """The arguments as they go on the wire: a JSON string."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


Reply = Union[str, ToolCall, Sequence[ToolCall]]
"""What a reply callable returns: the assistant's text, or one or more tool calls."""

ReplyFn = Callable[[Dict[str, Any]], Reply]
"""A reply callable: receives the request's JSON body (a dict: a :class:`RequestBody`, whose ``api``
attribute says which API was called), returns a :data:`Reply`.

It may be called from several server threads at once."""


class RequestBody(Dict[str, Any]):
    """The request JSON a reply callable receives: a ``dict`` holding the body as the client sent
    it, plus which API was called, so that one callable can serve both::

        def reply(request):
            if request.api == "anthropic":  # Anthropic's messages: tool results are user content blocks
                ...
            else:  # "openai": chat completions, tool results are "tool" messages
                ...

    Being a plain ``dict`` otherwise, it compares, prints and JSON-encodes as the body does.
    """

    api: str
    """``"openai"`` (``POST /v1/chat/completions``) or ``"anthropic"`` (``POST /v1/messages``)."""
    path: str
    """The request path, e.g. ``"/v1/messages"``."""

    def __init__(self, body: Dict[str, Any], *, api: str, path: str) -> None:
        super().__init__(body)
        self.api = api
        self.path = path


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request the server answered (see :attr:`MockLLMServer.requests`).

    Times are :func:`time.monotonic` values of the serving process. ``answered_at`` is taken just
    before the last bytes of the response are written (for a stream, the ``[DONE]`` event), so a
    client cannot have seen the answer before it; the time a client waited before retrying is thus
    at most ``next.received_at - answered_at``. The record joins :attr:`MockLLMServer.requests` at
    that moment too, so a client that got its answer finds the record there.
    """

    seq: int
    """Arrival order, from 1 (reset by :meth:`MockLLMServer.reset`)."""
    received_at: float
    """When the request's headers had been read."""
    answered_at: float
    """When the response was complete (or, if none was sent, when the server gave up on it)."""
    method: str
    """The HTTP method, e.g. ``"POST"``."""
    path: str
    """The request path without query string, e.g. ``"/v1/chat/completions"``."""
    model: Optional[str]
    """The requested model, when the body carried one."""
    stream: bool
    """Whether the body asked for ``"stream": true``."""
    status: int
    """The HTTP status sent; 0 when no complete response was sent (an injected disconnect, the client
    going away mid-stream, the server stopping)."""
    body: Any
    """The request's parsed JSON body; ``None`` when it had none or it was not valid JSON."""

    @property
    def api(self) -> Optional[str]:
        """Which API the request was for, from its path: ``"anthropic"`` for ``/v1/messages``,
        ``"openai"`` for ``/v1/chat/completions`` and ``/v1/models``, ``None`` for any other path."""
        if self.path == "/v1/messages":
            return "anthropic"
        if self.path == "/v1/chat/completions" or self.path == "/v1/models" or self.path.startswith("/v1/models/"):
            return "openai"
        return None

    @property
    def duration(self) -> float:
        """Seconds between receiving the request and answering it."""
        return self.answered_at - self.received_at
