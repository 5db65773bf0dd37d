"""A mock LLM server speaking OpenAI's chat completions and Anthropic's messages, for tests and benchmarks.

:class:`MockLLMServer` speaks enough of two HTTP APIs for the official clients to run against it
unchanged:

- OpenAI's: ``POST /v1/chat/completions`` (plain and streamed as Server-Sent Events, function/tool
  calls), ``GET /v1/models`` and OpenAI-shaped errors, for the ``openai`` client (and anything else
  that talks to ``/v1/chat/completions``) pointed at :attr:`MockLLMServer.base_url`
  (``http://127.0.0.1:PORT/v1``);
- Anthropic's: ``POST /v1/messages`` (plain and streamed as Anthropic's SSE event sequence,
  ``tool_use`` blocks) and Anthropic-shaped errors, for the ``anthropic`` client pointed at
  :attr:`MockLLMServer.anthropic_base_url` (``http://127.0.0.1:PORT``: that client appends
  ``/v1/messages`` itself).

Both share one server: the same models, reply callable, injected failures, latency and request
records. Replies are deterministic, so tests can assert on them; latency and failures (rate limits
with ``Retry-After``, server errors, slow replies, dropped connections) can be injected; every
request is recorded. It uses only the standard library and binds 127.0.0.1.

Example::

    from openai import OpenAI
    from ferroflow.testing import MockLLMServer, ToolCall

    with MockLLMServer() as server:
        client = OpenAI(base_url=server.base_url, api_key="test", timeout=10)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello world"}]
        )
        assert reply.choices[0].message.content == "echo: hello world"
        assert reply.usage.prompt_tokens == 2 and reply.usage.completion_tokens == 3

        server.fail_next(status=429, retry_after=0.2)  # the client waits 0.2 s, then retries
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert [r.status for r in server.requests] == [200, 429, 200]

    # The same server, through Anthropic's client.
    from anthropic import Anthropic

    with MockLLMServer() as server:
        client = Anthropic(base_url=server.anthropic_base_url, api_key="test", timeout=10)
        message = client.messages.create(
            model="mock-model", max_tokens=100, messages=[{"role": "user", "content": "hello world"}]
        )
        assert message.content[0].text == "echo: hello world" and message.stop_reason == "end_turn"
        assert message.usage.input_tokens == 2 and message.usage.output_tokens == 3

    # Scripted tool calls: the reply callable sees the request JSON (a RequestBody: a dict whose
    # ``api`` attribute says which API was called).
    def script(request):
        if request.api == "anthropic":
            done = any(
                isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])
                for m in request["messages"]
            )
        else:
            done = any(m["role"] == "tool" for m in request["messages"])
        if request.get("tools") and not done:
            return ToolCall("get_weather", {"city": "Paris"})
        return "It is sunny in Paris."

    with MockLLMServer(reply=script, latency=0.05) as server:
        ...

Behaviour, in the order a ``POST /v1/chat/completions`` or ``POST /v1/messages`` request meets it
(errors in the shape of the API called: OpenAI's ``{"error": {"message", "type", "param",
"code"}}``, or Anthropic's ``{"type": "error", "error": {"type", "message"}}``):

1. The next injected failure, if any, is taken (see :meth:`MockLLMServer.fail_next`): it waits
   its ``delay``, then drops the connection, answers with its error status, or (with no status)
   goes on as normal.
2. With ``api_key=`` configured, a missing or different key gets 401: for OpenAI, from the
   ``Authorization: Bearer`` header (code ``invalid_api_key``); for Anthropic, from the
   ``x-api-key`` header, or, when there is none, ``Authorization: Bearer`` (which some versions of
   the ``anthropic`` client send instead) (type ``authentication_error``).
3. A body that is not a JSON object gets 400; so does a missing ``model`` or ``messages`` and, for
   Anthropic, a missing ``max_tokens``, a message whose role is not ``user`` or ``assistant``, a
   tool without ``name`` or ``input_schema``, or ``tool_use`` and ``tool_result`` blocks that do
   not pair up (each ``tool_use`` answered by a ``tool_result`` in the next message, and each
   ``tool_result`` answering a ``tool_use`` of the message before). A model not in ``models`` gets
   404 (OpenAI code ``model_not_found``, Anthropic type ``not_found_error``).
4. The reply callable runs (``reply=``, default :func:`echo_reply`) on the request JSON, as a
   :class:`RequestBody`; if it raises or returns something else than text or tool calls, the answer
   is a 500 carrying ``x-should-retry: false`` (so that the client does not retry a bug in the
   test). Tool calls for a request that offers no ``tools`` get 400.
5. The server waits ``latency`` seconds, then answers: one JSON body, or with ``"stream": true``
   an SSE stream with ``token_interval`` seconds between events.

Token usage is deterministic: ``prompt_tokens`` (Anthropic: ``input_tokens``) counts the
whitespace-separated words of every message's text content (for Anthropic, also of ``system`` and
of ``tool_result`` contents), ``completion_tokens`` (``output_tokens``) those of the reply (for tool
calls: of each call's name and JSON arguments). The ``n`` parameter and sampling parameters are
ignored (one choice). Anthropic's ``stop_sequences`` and ``max_tokens`` are honoured for text
replies: the text is cut before the first stop sequence it contains (``stop_reason``
``"stop_sequence"``), and after its first ``max_tokens`` words (``"max_tokens"``); otherwise
``stop_reason`` is ``"end_turn"``, or ``"tool_use"`` for tool calls.

The server can also run as its own process, e.g. for benchmarks::

    python -m ferroflow.testing --port 0 --latency 0.05

prints the OpenAI base URL on one line (the Anthropic one is the same without ``/v1``), then serves
until SIGTERM or SIGINT (``--help`` lists the options).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import FrameType, TracebackType
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

__all__ = [
    "DEFAULT_MODELS",
    "MockLLMServer",
    "Reply",
    "ReplyFn",
    "RequestBody",
    "RequestRecord",
    "ToolCall",
    "echo_reply",
    "main",
]

DEFAULT_MODELS: Tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "mock-model")
"""The models a :class:`MockLLMServer` serves unless given ``models=``, through either API (for
Anthropic's, ``"mock-model"``, or pass your own ``models=``)."""


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


@dataclass(frozen=True)
class _Failure:
    status: Optional[int]
    retry_after: Optional[float]
    delay: float
    disconnect: bool
    message: Optional[str]
    after_events: Optional[int] = None


class _Abort(Exception):
    """Drop the connection without (finishing) an answer."""


_WORDISH = re.compile(r"\s*\S+|\s+")

_ERROR_KINDS: Dict[int, Tuple[str, Optional[str], str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected by the mock server)."),
    500: ("server_error", None, "The server had an error while processing your request (injected by the mock server)."),
    502: ("server_error", None, "Bad gateway (injected by the mock server)."),
    503: ("server_error", None, "The engine is currently overloaded (injected by the mock server)."),
    504: ("server_error", None, "Gateway timeout (injected by the mock server)."),
}


def _split_wordish(text: str) -> List[str]:
    """Split ``text`` into word-ish tokens (each word with the whitespace before it) whose
    concatenation is ``text``."""
    return _WORDISH.findall(text)


def _text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of parts (for
    Anthropic's ``tool_result`` blocks, the text of their own content)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("text", "input_text"):
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "tool_result":
                texts.append(_text_of(part.get("content")))
        return " ".join(texts)
    return ""


def _count_words(text: str) -> int:
    return len(text.split())


def echo_reply(request: Dict[str, Any]) -> str:
    """The default reply: ``"echo: "`` followed by the text of the last ``user`` message
    (``"echo: "`` alone when there is none). For either API: text parts and, for Anthropic,
    ``tool_result`` contents are text."""
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return "echo: " + _text_of(message.get("content"))
    return "echo: "


def _error_body(
    status: int, message: Optional[str] = None, *, code: Optional[str] = None, param: Optional[str] = None
) -> Dict[str, Any]:
    kind, default_code, default_message = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}.")
    )
    return {
        "error": {
            "message": message if message is not None else default_message,
            "type": kind,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }


_ANTHROPIC_ERROR_KINDS: Dict[int, Tuple[str, str]] = {
    400: ("invalid_request_error", "Bad request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Payment required."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limit reached (injected by the mock server)."),
    500: ("api_error", "Internal server error (injected by the mock server)."),
    504: ("timeout_error", "Gateway timeout (injected by the mock server)."),
    529: ("overloaded_error", "Overloaded (injected by the mock server)."),
}


def _anthropic_error_body(status: int, message: Optional[str] = None) -> Dict[str, Any]:
    kind, default_message = _ANTHROPIC_ERROR_KINDS.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", f"HTTP {status}.")
    )
    return {"type": "error", "error": {"type": kind, "message": message if message is not None else default_message}}


def _cut_text(text: str, stop_sequences: Sequence[str], max_tokens: int) -> Tuple[str, str, Optional[str]]:
    """An Anthropic text reply as the model would end it: ``(text, stop_reason, stop_sequence)``,
    cut before the first stop sequence it contains, then after its first ``max_tokens`` words."""
    stop_reason, stop_sequence = "end_turn", None
    found = [(text.find(s), s) for s in stop_sequences if s and s in text]
    if found:
        at, stop_sequence = min(found)
        text, stop_reason = text[:at], "stop_sequence"
    if _count_words(text) > max_tokens:
        kept: List[str] = []
        words = 0
        for token in _split_wordish(text):
            if token.strip():
                if words == max_tokens:
                    break
                words += 1
            kept.append(token)
        text, stop_reason, stop_sequence = "".join(kept).rstrip(), "max_tokens", None
    return text, stop_reason, stop_sequence


def _blocks(content: Any) -> List[Dict[str, Any]]:
    """The content blocks of an Anthropic message's ``content`` (none for a string)."""
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _anthropic_request_problem(body: Dict[str, Any]) -> Optional[str]:
    """Why Anthropic's API would reject a messages request (HTTP 400), or ``None``."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        return "max_tokens: Input should be a valid integer, greater than or equal to 0"
    messages = body.get("messages")
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or not all(isinstance(b, dict) and b.get("type") == "text" for b in system):
            return "system: Input should be a valid string or a list of text blocks"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{i}: Input should be an object"
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), (str, list)):
            return f"messages.{i}.content: Field required"
        uses = [b.get("id") for b in _blocks(message["content"]) if b.get("type") == "tool_use"]
        results = [b.get("tool_use_id") for b in _blocks(message["content"]) if b.get("type") == "tool_result"]
        if results:
            before = messages[i - 1] if i > 0 and isinstance(messages[i - 1], dict) else {}
            offered = {b.get("id") for b in _blocks(before.get("content")) if b.get("type") == "tool_use"}
            unknown = [r for r in results if r not in offered]
            if message["role"] != "user" or unknown:
                return (
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{', '.join(map(str, unknown or results))}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
        if uses and i + 1 < len(messages):
            after = messages[i + 1] if isinstance(messages[i + 1], dict) else {}
            answered = {b.get("tool_use_id") for b in _blocks(after.get("content")) if b.get("type") == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing:
                return (
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(map(str, missing))}. Each `tool_use` block must have a corresponding "
                    "`tool_result` block in the next message."
                )
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, spec in enumerate(tools):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                return f"tools.{i}.name: Field required"
            if spec.get("type", "custom") == "custom" and not isinstance(spec.get("input_schema"), dict):
                return f"tools.{i}.custom.input_schema: Field required"
    return None


class _Draft:
    """The mutable record of a request being answered."""

    __slots__ = (
        "answered_at",
        "body",
        "method",
        "model",
        "path",
        "received_at",
        "seq",
        "status",
        "stream",
        "stream_failure",
    )

    def __init__(self, seq: int, received_at: float, method: str, path: str) -> None:
        self.seq = seq
        self.received_at = received_at
        self.method = method
        self.path = path
        self.model: Optional[str] = None
        self.stream = False
        self.status = 0
        self.body: Any = None
        self.answered_at: Optional[float] = None
        # A failure to act out in the middle of this request's streamed answer.
        self.stream_failure: Optional[_Failure] = None


class _HTTPServer(HTTPServer):
    """An HTTP server with a thread per connection that it can close all of, and join, on stop."""

    # Clients under load open many connections at once; socketserver's default backlog of 5
    # drops the SYNs of the rest, which then wait out TCP's retransmission backoff (1 s, 3 s,
    # 7 s, ...), up to a client's connect timeout.
    request_queue_size = 1024

    def __init__(self, address: Tuple[str, int], mock: MockLLMServer) -> None:
        self.mock = mock
        self.stopping = threading.Event()
        self.conn_lock = threading.Lock()
        self.connections: Dict[threading.Thread, socket.socket] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the host's FQDN, which can be slow; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.stopping.is_set():
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), name="ferroflow-mock-conn", daemon=True
        )
        with self.conn_lock:
            self.connections[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - reported (or, for a connection error, ignored) like socketserver does
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self.conn_lock:
                self.connections.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away, or stop() closed the connection
        traceback.print_exc()

    def close_connections(self) -> List[threading.Thread]:
        """Shut every open connection down (unblocking their threads); return those threads."""
        with self.conn_lock:
            items = list(self.connections.items())
        for _, sock in items:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return [thread for thread, _ in items]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ferroflow-mock/1"
    sys_version = ""
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Streamed chunks must leave at once, and a header write followed by a body write must not
        # wait for a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.mock._handle(self)

    def do_POST(self) -> None:
        self.server.mock._handle(self)

    def do_PUT(self) -> None:
        self.server.mock._handle(self)

    def do_PATCH(self) -> None:
        self.server.mock._handle(self)

    def do_DELETE(self) -> None:
        self.server.mock._handle(self)


class MockLLMServer:
    """An OpenAI- and Anthropic-compatible LLM server on 127.0.0.1, in a background thread.

    Use it as a context manager (``with MockLLMServer() as server:``) or call :meth:`start` and
    :meth:`stop`. Point an OpenAI client at :attr:`base_url`, an Anthropic one at
    :attr:`anthropic_base_url`.

    :param models: the model names served (through either API); others get 404 (OpenAI's
        ``model_not_found``, Anthropic's ``not_found_error``).
    :param reply: what the model answers: a callable receiving the request JSON (a
        :class:`RequestBody`: ``request.api`` is ``"openai"`` or ``"anthropic"``) and returning the
        text or :class:`ToolCall` (s) (default :func:`echo_reply`), or a fixed string.
    :param api_key: when set, requests must carry it or get 401: OpenAI requests as
        ``Authorization: Bearer <api_key>``, Anthropic requests as ``x-api-key: <api_key>`` (or,
        without that header, ``Authorization: Bearer <api_key>``).
    :param latency: seconds to wait before each successful chat-completion or message answer (for
        a stream, before its first event).
    :param token_interval: seconds between consecutive events of a streamed answer.
    :param port: the port to bind on 127.0.0.1; 0 (the default) picks a free one.

    ``models``, ``reply``, ``api_key``, ``latency`` and ``token_interval`` are also attributes of
    the same names; changing one takes effect from the next request, even while serving.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        models: Iterable[str] = DEFAULT_MODELS,
        reply: Union[ReplyFn, str, None] = None,
        api_key: Optional[str] = None,
        latency: float = 0.0,
        token_interval: float = 0.0,
        port: int = 0,
    ) -> None:
        self.models: Tuple[str, ...] = tuple(models)
        if isinstance(reply, str):
            text = reply
            self.reply: ReplyFn = lambda _request: text
        else:
            self.reply = reply if reply is not None else echo_reply
        self.api_key = api_key
        self.latency = float(latency)
        self.token_interval = float(token_interval)
        self._port = int(port)
        self._lock = threading.Lock()
        self._seq = 0
        self._tool_calls = 0
        self._records: List[RequestRecord] = []
        self._failures: Deque[_Failure] = deque()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> MockLLMServer:
        """Bind and serve in a daemon thread; return ``self``.

        After :meth:`stop`, ``start()`` serves again on the same port (to simulate an outage);
        requests, counters and pending failures are kept (see :meth:`reset`).

        :raises RuntimeError: if already running.
        :raises OSError: if the port cannot be bound.
        """
        if self._httpd is not None:
            raise RuntimeError("the mock server is already running")
        httpd = _HTTPServer((self.host, self._port), self)
        self._port = httpd.server_port
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="ferroflow-mock-server", daemon=True
        )
        self._httpd, self._thread = httpd, thread
        thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: close the listening socket and every open connection, interrupt pending
        latencies and delays (their requests get no answer), and join the server's threads,
        waiting at most about ``timeout`` seconds in all. A reply callable still running after that
        is left to finish in its daemon thread. Does nothing if not running."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._httpd = self._thread = None
        deadline = time.monotonic() + timeout
        httpd.stopping.set()
        httpd.shutdown()  # returns within serve_forever's poll interval
        httpd.server_close()
        for worker in [thread, *httpd.close_connections()]:
            if worker is not threading.current_thread():  # stop() called from a reply callable
                worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> MockLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._httpd is not None

    @property
    def port(self) -> int:
        """The bound port (the configured one until the first :meth:`start`)."""
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenAI base URL to give a client: ``http://127.0.0.1:PORT/v1``."""
        return self.anthropic_base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The Anthropic base URL to give a client: ``http://127.0.0.1:PORT`` (the server's root:
        the ``anthropic`` client appends ``/v1/messages``)."""
        if self._port == 0:
            raise RuntimeError("the mock server has not been started")
        return f"http://{self.host}:{self._port}"

    # -- failure injection -----------------------------------------------------------------

    def fail_next(
        self,
        status: Optional[int] = None,
        *,
        retry_after: Optional[float] = None,
        delay: float = 0.0,
        disconnect: bool = False,
        times: int = 1,
        message: Optional[str] = None,
        after_events: Optional[int] = None,
    ) -> None:
        """Make the next ``times`` model requests (chat completions or messages) misbehave.

        Injected behaviours form a FIFO queue; each ``POST /v1/chat/completions`` or
        ``POST /v1/messages`` takes the first one on arrival (before authentication or validation),
        so ``fail_next(status=429)`` then ``fail_next(status=500)`` makes the next request get 429
        and the one after 500. Each one:

        - waits ``delay`` seconds first (a slow reply, e.g. to trip a client timeout);
        - then, with ``disconnect=True``, closes the connection without answering;
        - or, with a ``status``, answers with that status and the error JSON of the API called
          (``message``, or a standard one; with type and code as OpenAI sends them, e.g.
          ``rate_limit_exceeded`` for 429, or with Anthropic's type, e.g. ``rate_limit_error`` for
          429, ``api_error`` for 500, ``overloaded_error`` for 529), plus ``Retry-After`` (seconds,
          may be fractional) and ``retry-after-ms`` headers when ``retry_after`` is given (the
          ``openai`` and ``anthropic`` clients wait that long before retrying; without it, they use
          their own exponential backoff);
        - or, with neither, answers normally (after ``delay`` and then the server's ``latency``).

        With ``after_events=N``, a streamed request starts its answer normally (status 200) and
        fails after ``N`` events of it: with ``disconnect=True`` the connection closes, with a
        ``status`` the stream carries an error event (OpenAI's ``data: {"error": ...}``,
        Anthropic's ``event: error``) and ends. A request that does not stream acts the failure
        out at once, as without ``after_events``.

        Examples: ``fail_next(status=429, retry_after=0.2)``, ``fail_next(status=500, times=2)``,
        ``fail_next(delay=2.0)``, ``fail_next(disconnect=True)``.

        :raises ValueError: for a nonsensical combination (nothing to inject, a status below 400, a
            negative delay, ``retry_after`` without a status, ``times`` < 1).
        """
        if status is None and not disconnect and delay <= 0:
            raise ValueError("fail_next needs a status, disconnect=True or a positive delay")
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), not {status}")
        if status is not None and disconnect:
            raise ValueError("choose a status or disconnect=True, not both")
        if retry_after is not None and (status is None or retry_after < 0):
            raise ValueError("retry_after needs a status and must be >= 0")
        if delay < 0 or times < 1:
            raise ValueError("delay must be >= 0 and times >= 1")
        if after_events is not None and (after_events < 0 or (status is None and not disconnect)):
            raise ValueError("after_events must be >= 0, with a status or disconnect=True")
        failure = _Failure(status, retry_after, float(delay), disconnect, message, after_events)
        with self._lock:
            self._failures.extend([failure] * times)

    @property
    def pending_failures(self) -> int:
        """How many injected behaviours (see :meth:`fail_next`) are still queued."""
        with self._lock:
            return len(self._failures)

    # -- records ------------------------------------------------------------------------------

    @property
    def requests(self) -> List[RequestRecord]:
        """A snapshot of the records of the answered requests (GET, POST, PUT, PATCH and DELETE, to any
        path), in arrival order."""
        with self._lock:
            return sorted(self._records, key=lambda r: r.seq)

    @property
    def request_count(self) -> int:
        """How many HTTP requests arrived (as for :attr:`requests`, but including any still being
        answered); equal to ``len(requests)`` once all are answered."""
        with self._lock:
            return self._seq

    def reset(self) -> None:
        """Forget the recorded requests, zero :attr:`request_count` and the ``call_<n>`` counter,
        and drop pending injected failures. Configuration is kept."""
        with self._lock:
            self._records.clear()
            self._failures.clear()
            self._seq = 0
            self._tool_calls = 0

    # -- serving ------------------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        received = time.monotonic()
        with self._lock:
            self._seq += 1
            seq = self._seq
        draft = _Draft(seq, received, h.command, h.path.split("?", 1)[0])
        try:
            raw = self._read_body(h)
            if draft.method == "POST" and draft.path == "/v1/chat/completions":
                self._chat_completions(h, draft, raw)
            elif draft.method == "POST" and draft.path == "/v1/messages":
                self._messages(h, draft, raw)
            elif draft.method == "GET" and draft.path == "/v1/models":
                if self._authorize(h, draft):
                    self._send_json(h, draft, 200, self._model_list())
            elif draft.method == "GET" and draft.path.startswith("/v1/models/"):
                name = draft.path[len("/v1/models/") :]
                if self._authorize(h, draft):
                    if name in self.models:
                        self._send_json(h, draft, 200, self._model_object(name))
                    else:
                        self._send_model_not_found(h, draft, name)
            else:
                message = f"Invalid URL ({draft.method} {draft.path})"
                self._send_json(h, draft, 404, _error_body(404, message))
        except (_Abort, OSError):
            h.close_connection = True  # the connection closes after this (committed) record
        finally:
            if draft.answered_at is None:
                self._commit(draft, 0)

    def _commit(self, draft: _Draft, status: int) -> None:
        """Record the request as answered, now: called just before the last bytes of the answer
        are written, so that a client that saw its answer finds the record."""
        draft.status = status
        draft.answered_at = time.monotonic()
        record = RequestRecord(
            seq=draft.seq,
            received_at=draft.received_at,
            answered_at=draft.answered_at,
            method=draft.method,
            path=draft.path,
            model=draft.model,
            stream=draft.stream,
            status=status,
            body=draft.body,
        )
        with self._lock:
            self._records.append(record)

    @staticmethod
    def _read_body(h: _Handler) -> bytes:
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
            parts: List[bytes] = []
            while True:
                try:
                    size = int(h.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    h.close_connection = True
                    return b""
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(h.rfile.read(size))
                h.rfile.readline()
        length = h.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            return h.rfile.read(int(length))
        except ValueError:
            h.close_connection = True
            return b""

    def _send_events(
        self, h: _Handler, draft: _Draft, events: List[bytes], last: bytes, error: Callable[[int, Optional[str]], bytes]
    ) -> None:
        """Sends ``events`` as chunks, ``token_interval`` apart, then ``last`` with the end of
        the chunked body; the request is recorded just before ``last`` goes out. A failure due
        in the middle of the stream (``draft.stream_failure``) cuts it short: the connection
        drops, or ``error(status, message)`` is the last event."""
        failure = draft.stream_failure
        if failure is not None:
            events = events[: failure.after_events]
            if failure.disconnect:
                for data in events:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                h.wfile.flush()
                raise _Abort
            assert failure.status is not None
            last = error(failure.status, failure.message)
        for i, data in enumerate(events):
            if i > 0:
                self._sleep(h, self.token_interval)
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self._sleep(h, self.token_interval)
        self._commit(draft, 200)
        h.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last))

    def _sleep(self, h: _Handler, seconds: float) -> None:
        """Wait, unless the server stops meanwhile (then abort the request)."""
        if seconds > 0 and h.server.stopping.wait(seconds):
            raise _Abort
        if h.server.stopping.is_set():
            raise _Abort

    def _authorize(self, h: _Handler, draft: _Draft) -> bool:
        if self.api_key is None:
            return True
        auth = h.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            self._send_json(h, draft, 401, _error_body(401, message))
            return False
        if auth[len("Bearer ") :].strip() != self.api_key:
            self._send_json(h, draft, 401, _error_body(401, "Incorrect API key provided."))
            return False
        return True

    @staticmethod
    def _parse_body(draft: _Draft, raw: bytes) -> Any:
        """The request's JSON body if it is an object (recorded in ``draft``), else ``None``."""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        draft.body = body
        model = body.get("model")
        draft.model = model if isinstance(model, str) else None
        draft.stream = body.get("stream") is True
        return body

    def _inject_failure(self, h: _Handler, draft: _Draft, anthropic: bool = False) -> bool:
        """Take the next injected failure, if any, and act it out; whether the request was answered
        (or raises :class:`_Abort` for a disconnect)."""
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is None:
            return False
        if failure.after_events is not None and draft.stream:
            draft.stream_failure = failure
            return False
        self._sleep(h, failure.delay)
        if failure.disconnect:
            raise _Abort
        if failure.status is None:
            return False
        headers: List[Tuple[str, str]] = []
        if failure.retry_after is not None:
            headers.append(("Retry-After", f"{failure.retry_after:g}"))
            headers.append(("retry-after-ms", f"{failure.retry_after * 1000:g}"))
        if anthropic:
            body = _anthropic_error_body(failure.status, failure.message)
            self._send_json(h, draft, failure.status, body, [*headers, *self._anthropic_headers(draft)])
        else:
            self._send_json(h, draft, failure.status, _error_body(failure.status, failure.message), headers)
        return True

    def _chat_completions(self, h: _Handler, draft: _Draft, raw: bytes) -> None:
        body = self._parse_body(draft, raw)
        parsed = body is not None
        if self._inject_failure(h, draft):
            return

        if not self._authorize(h, draft):
            return
        if not parsed:
            message = (
                "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload (an object)."
            )
            self._send_json(h, draft, 400, _error_body(400, message))
            return
        assert isinstance(body, dict)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._send_json(h, draft, 400, _error_body(400, "you must provide a model parameter", param="model"))
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            message = "Missing required parameter: 'messages'." if messages is None else "Invalid 'messages'."
            self._send_json(h, draft, 400, _error_body(400, message, param="messages"))
            return
        if model not in self.models:
            self._send_model_not_found(h, draft, model)
            return

        try:
            reply = self._resolve_reply(self.reply(RequestBody(body, api="openai", path=draft.path)))
        except Exception as exc:  # noqa: BLE001 - a bug in the test's callable: answer 500, not a dead socket
            message = f"the mock server's reply callable failed: {type(exc).__name__}: {exc}"
            self._send_json(h, draft, 500, _error_body(500, message), [("x-should-retry", "false")])
            return
        if not isinstance(reply, str) and not body.get("tools"):
            message = "the mock server's reply callable returned tool calls, but the request offered no tools"
            self._send_json(h, draft, 400, _error_body(400, message, param="tools"))
            return

        prompt_tokens = sum(_count_words(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
        if isinstance(reply, str):
            completion_tokens = _count_words(reply)
        else:
            completion_tokens = sum(
                _count_words(c["function"]["name"] + " " + c["function"]["arguments"]) for c in reply
            )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = f"chatcmpl-mock{draft.seq:06d}"
        self._sleep(h, self.latency)
        if draft.stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._stream(h, draft, completion_id, model, reply, usage if include_usage else None)
            return
        message_json: Dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if isinstance(reply, str):
            message_json["content"] = reply
        else:
            message_json["tool_calls"] = reply
        response = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_ferroflow_mock",
            "choices": [
                {
                    "index": 0,
                    "message": message_json,
                    "logprobs": None,
                    "finish_reason": "stop" if isinstance(reply, str) else "tool_calls",
                }
            ],
            "usage": usage,
        }
        self._send_json(h, draft, 200, response)

    def _resolve_calls(self, value: Any, prefix: str) -> Union[str, List[Tuple[str, ToolCall]]]:
        """Text, or the tool calls with their ids (``<prefix><n>`` unless given)."""
        if isinstance(value, str):
            return value
        calls = [value] if isinstance(value, ToolCall) else value
        if not isinstance(calls, (list, tuple)) or not calls or not all(isinstance(c, ToolCall) for c in calls):
            raise TypeError(f"a reply must be a str, a ToolCall or a non-empty list of them, not {value!r}")
        resolved = []
        for call in calls:
            with self._lock:
                self._tool_calls += 1
                number = self._tool_calls
            resolved.append((call.id or f"{prefix}{number}", call))
        return resolved

    def _resolve_reply(self, value: Any) -> Union[str, List[Dict[str, Any]]]:
        """Text, or the tool calls as OpenAI's JSON (ids assigned)."""
        resolved = self._resolve_calls(value, "call_")
        if isinstance(resolved, str):
            return resolved
        return [
            {"id": id_, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
            for id_, call in resolved
        ]

    def _stream(
        self,
        h: _Handler,
        draft: _Draft,
        completion_id: str,
        model: str,
        reply: Union[str, List[Dict[str, Any]]],
        usage: Optional[Dict[str, int]],
    ) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("x-request-id", f"req_mock{draft.seq:06d}")
        h.end_headers()
        base: Dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_ferroflow_mock",
        }
        if usage is not None:
            base["usage"] = None

        def event(delta: Dict[str, Any], finish_reason: Optional[str] = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

        events: List[bytes] = []
        if isinstance(reply, str):
            events.append(event({"role": "assistant", "content": "", "refusal": None}))
            events.extend(event({"content": token}) for token in _split_wordish(reply))
            events.append(event({}, "stop"))
        else:
            events.append(event({"role": "assistant", "content": None, "refusal": None}))
            for index, call in enumerate(reply):
                head = {"index": index, "id": call["id"], "type": "function"}
                head["function"] = {"name": call["function"]["name"], "arguments": ""}
                events.append(event({"tool_calls": [head]}))
                events.extend(
                    event({"tool_calls": [{"index": index, "function": {"arguments": token}}]})
                    for token in _split_wordish(call["function"]["arguments"])
                )
            events.append(event({}, "tool_calls"))
        if usage is not None:
            events.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        self._send_events(
            h,
            draft,
            events,
            b"data: [DONE]\n\n",
            lambda status, message: b"data: " + json.dumps(_error_body(status, message)).encode() + b"\n\n",
        )

    # -- Anthropic's messages API -----------------------------------------------------------

    @staticmethod
    def _anthropic_headers(draft: _Draft) -> List[Tuple[str, str]]:
        return [("request-id", f"req_mock{draft.seq:06d}")]

    def _send_anthropic_error(
        self, h: _Handler, draft: _Draft, status: int, message: str, headers: Sequence[Tuple[str, str]] = ()
    ) -> None:
        body = _anthropic_error_body(status, message)
        self._send_json(h, draft, status, body, [*headers, *self._anthropic_headers(draft)])

    def _authorize_anthropic(self, h: _Handler, draft: _Draft) -> bool:
        if self.api_key is None:
            return True
        key = h.headers.get("x-api-key")
        if key is None:
            auth = h.headers.get("Authorization", "")
            key = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        if key is None or not key.strip():
            self._send_anthropic_error(h, draft, 401, "x-api-key header is required")
            return False
        if key.strip() != self.api_key:
            self._send_anthropic_error(h, draft, 401, "invalid x-api-key")
            return False
        return True

    def _messages(self, h: _Handler, draft: _Draft, raw: bytes) -> None:
        body = self._parse_body(draft, raw)
        if self._inject_failure(h, draft, anthropic=True):
            return
        if not self._authorize_anthropic(h, draft):
            return
        if body is None:
            self._send_anthropic_error(h, draft, 400, "The request body is not valid JSON (an object).")
            return
        problem = _anthropic_request_problem(body)
        if problem is not None:
            self._send_anthropic_error(h, draft, 400, problem)
            return
        model: str = body["model"]
        if model not in self.models:
            self._send_anthropic_error(h, draft, 404, f"model: {model}")
            return

        try:
            reply = self._resolve_calls(self.reply(RequestBody(body, api="anthropic", path=draft.path)), "toolu_")
        except Exception as exc:  # noqa: BLE001 - a bug in the test's callable: answer 500, not a dead socket
            message = f"the mock server's reply callable failed: {type(exc).__name__}: {exc}"
            self._send_anthropic_error(h, draft, 500, message, [("x-should-retry", "false")])
            return
        if not isinstance(reply, str) and not body.get("tools"):
            message = "the mock server's reply callable returned tool calls, but the request offered no tools"
            self._send_anthropic_error(h, draft, 400, message)
            return

        system = body.get("system")
        prompt_texts = [_text_of(system)] if system is not None else []
        prompt_texts.extend(_text_of(m.get("content")) for m in body["messages"])
        input_tokens = sum(_count_words(text) for text in prompt_texts)
        content: List[Dict[str, Any]] = []
        wire: List[str] = []  # what each block's deltas carry when streamed
        stop_sequence: Optional[str] = None
        if isinstance(reply, str):
            stops = body.get("stop_sequences")
            stops = [s for s in stops if isinstance(s, str)] if isinstance(stops, list) else []
            text, stop_reason, stop_sequence = _cut_text(reply, stops, body["max_tokens"])
            content.append({"type": "text", "text": text})
            wire.append(text)
            output_tokens = _count_words(text)
        else:
            stop_reason, output_tokens = "tool_use", 0
            for id_, call in reply:
                arguments: Any = call.arguments
                if isinstance(arguments, str):
                    try:
                        decoded = json.loads(arguments)
                    except ValueError:
                        decoded = None
                    arguments = decoded if isinstance(decoded, dict) else arguments
                content.append({"type": "tool_use", "id": id_, "name": call.name, "input": arguments})
                wire.append(call.arguments_json)
                output_tokens += _count_words(call.name + " " + call.arguments_json)
        answer: Dict[str, Any] = {
            "id": f"msg_mock{draft.seq:06d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        self._sleep(h, self.latency)
        if draft.stream:
            self._stream_message(h, draft, answer, wire)
        else:
            self._send_json(h, draft, 200, answer, self._anthropic_headers(draft))

    def _stream_message(self, h: _Handler, draft: _Draft, message: Dict[str, Any], wire: List[str]) -> None:
        """Stream ``message`` as Anthropic's events: ``message_start``, ``ping``, per block
        ``content_block_start``, ``content_block_delta`` (``text_delta`` or ``input_json_delta``) per
        word-ish token of ``wire``, ``content_block_stop``; then ``message_delta``, ``message_stop``."""
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("request-id", f"req_mock{draft.seq:06d}")
        h.end_headers()

        def event(data: Dict[str, Any]) -> bytes:
            return b"event: %s\ndata: %s\n\n" % (data["type"].encode(), json.dumps(data).encode())

        usage = message["usage"]
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0},
        }
        events = [event({"type": "message_start", "message": start}), event({"type": "ping"})]
        for index, (block, text) in enumerate(zip(message["content"], wire)):
            if block["type"] == "text":
                head: Dict[str, Any] = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": token} for token in _split_wordish(text)]
            else:
                head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": token} for token in _split_wordish(text)]
            events.append(event({"type": "content_block_start", "index": index, "content_block": head}))
            events.extend(event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas)
            events.append(event({"type": "content_block_stop", "index": index}))
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
        events.append(
            event({"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage["output_tokens"]}})
        )
        self._send_events(
            h,
            draft,
            events,
            event({"type": "message_stop"}),
            lambda status, message: event(_anthropic_error_body(status, message)),
        )

    # -- answers ------------------------------------------------------------------------------

    def _send_json(
        self, h: _Handler, draft: _Draft, status: int, obj: Any, headers: Sequence[Tuple[str, str]] = ()
    ) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-request-id", f"req_mock{draft.seq:06d}")
        for name, value in headers:
            h.send_header(name, value)
        self._commit(draft, status)
        h.end_headers()
        h.wfile.write(data)

    def _send_model_not_found(self, h: _Handler, draft: _Draft, model: str) -> None:
        message = f"The model `{model}` does not exist or you do not have access to it."
        self._send_json(h, draft, 404, _error_body(404, message, code="model_not_found"))

    def _model_object(self, name: str) -> Dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "ferroflow-mock"}

    def _model_list(self) -> Dict[str, Any]:
        return {"object": "list", "data": [self._model_object(name) for name in self.models]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a :class:`MockLLMServer` until SIGTERM or SIGINT (``python -m ferroflow.testing``).

    Prints the OpenAI base URL on one line (flushed) once serving (the Anthropic base URL is the same
    without ``/v1``), and returns 0 after a clean stop."""
    parser = argparse.ArgumentParser(
        prog="python -m ferroflow.testing",
        description="Serve a mock LLM on 127.0.0.1, speaking OpenAI's chat completions and Anthropic's messages.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--token-interval", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--api-key", default=None, help="require this API key (default: accept any)")
    parser.add_argument("--model", action="append", dest="models", default=None, help="a model to serve (repeatable)")
    parser.add_argument("--reply", default=None, help="a fixed reply text (default: echo the last user message)")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = MockLLMServer(
        models=args.models or DEFAULT_MODELS,
        reply=args.reply,
        api_key=args.api_key,
        latency=args.latency,
        token_interval=args.token_interval,
        port=args.port,
    )
    with server:
        print(server.base_url, flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
