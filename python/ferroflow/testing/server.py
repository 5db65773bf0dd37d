"""The mock server itself: :class:`MockLLMServer`'s configuration, life cycle, failure injection and
request records, and the serving of each request (routing, failures, authentication, validation,
the reply callable, latency, sending), the wire formats being :mod:`.openai`'s and
:mod:`.anthropic`'s."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Deque, Iterable, List, Optional, Sequence, Tuple, Type, Union

from . import anthropic, openai
from .records import ReplyFn, RequestBody, RequestRecord, ToolCall
from .text import echo_reply
from .transport import Abort, Handler, Server

DEFAULT_MODELS: Tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "mock-model")
"""The models a :class:`MockLLMServer` serves unless given ``models=``, through either API (for
Anthropic's, ``"mock-model"``, or pass your own ``models=``)."""


@dataclass(frozen=True)
class _Failure:
    status: Optional[int]
    retry_after: Optional[float]
    delay: float
    disconnect: bool
    message: Optional[str]
    after_events: Optional[int] = None


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
        self._httpd: Optional[Server] = None
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
        httpd = Server((self.host, self._port), self._handle)
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

    def _handle(self, h: Handler) -> None:
        received = time.monotonic()
        with self._lock:
            self._seq += 1
            seq = self._seq
        draft = _Draft(seq, received, h.command, h.path.split("?", 1)[0])
        try:
            raw = h.read_body()
            if draft.method == "POST" and draft.path == "/v1/chat/completions":
                self._chat_completions(h, draft, raw)
            elif draft.method == "POST" and draft.path == "/v1/messages":
                self._messages(h, draft, raw)
            elif draft.method == "GET" and draft.path == "/v1/models":
                if self._authorize(h, draft):
                    self._send_json(h, draft, 200, openai.model_list(self.models))
            elif draft.method == "GET" and draft.path.startswith("/v1/models/"):
                name = draft.path[len("/v1/models/") :]
                if self._authorize(h, draft):
                    if name in self.models:
                        self._send_json(h, draft, 200, openai.model_object(name))
                    else:
                        self._send_json(h, draft, 404, openai.model_not_found(name))
            else:
                message = f"Invalid URL ({draft.method} {draft.path})"
                self._send_json(h, draft, 404, openai.error_body(404, message))
        except (Abort, OSError):
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

    def _sleep(self, h: Handler, seconds: float) -> None:
        """Wait, unless the server stops meanwhile (then abort the request)."""
        if seconds > 0 and h.server.stopping.wait(seconds):
            raise Abort
        if h.server.stopping.is_set():
            raise Abort

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

    def _inject_failure(self, h: Handler, draft: _Draft, anthropic_api: bool = False) -> bool:
        """Take the next injected failure, if any, and act it out; whether the request was answered
        (or raises :class:`Abort` for a disconnect)."""
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is None:
            return False
        if failure.after_events is not None and draft.stream:
            draft.stream_failure = failure
            return False
        self._sleep(h, failure.delay)
        if failure.disconnect:
            raise Abort
        if failure.status is None:
            return False
        headers: List[Tuple[str, str]] = []
        if failure.retry_after is not None:
            headers.append(("Retry-After", f"{failure.retry_after:g}"))
            headers.append(("retry-after-ms", f"{failure.retry_after * 1000:g}"))
        if anthropic_api:
            body = anthropic.error_body(failure.status, failure.message)
            self._send_json(h, draft, failure.status, body, [*headers, *self._anthropic_headers(draft)])
        else:
            self._send_json(h, draft, failure.status, openai.error_body(failure.status, failure.message), headers)
        return True

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

    # -- OpenAI's chat completions ------------------------------------------------------------

    def _authorize(self, h: Handler, draft: _Draft) -> bool:
        if self.api_key is None:
            return True
        problem = openai.auth_problem(h.headers.get("Authorization", ""), self.api_key)
        if problem is not None:
            self._send_json(h, draft, 401, openai.error_body(401, problem))
            return False
        return True

    def _chat_completions(self, h: Handler, draft: _Draft, raw: bytes) -> None:
        body = self._parse_body(draft, raw)
        if self._inject_failure(h, draft):
            return
        if not self._authorize(h, draft):
            return
        if body is None:
            self._send_json(h, draft, 400, openai.error_body(400, openai.BAD_JSON))
            return
        problem = openai.request_problem(body)
        if problem is not None:
            message, param = problem
            self._send_json(h, draft, 400, openai.error_body(400, message, param=param))
            return
        model: str = body["model"]
        if model not in self.models:
            self._send_json(h, draft, 404, openai.model_not_found(model))
            return

        try:
            resolved = self._resolve_calls(self.reply(RequestBody(body, api="openai", path=draft.path)), "call_")
            reply = resolved if isinstance(resolved, str) else openai.tool_calls(resolved)
        except Exception as exc:  # noqa: BLE001 - a bug in the test's callable: answer 500, not a dead socket
            message = f"the mock server's reply callable failed: {type(exc).__name__}: {exc}"
            self._send_json(h, draft, 500, openai.error_body(500, message), [("x-should-retry", "false")])
            return
        if not isinstance(reply, str) and not body.get("tools"):
            message = "the mock server's reply callable returned tool calls, but the request offered no tools"
            self._send_json(h, draft, 400, openai.error_body(400, message, param="tools"))
            return

        usage = openai.token_usage(body["messages"], reply)
        self._sleep(h, self.latency)
        if draft.stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            events = openai.chunks(draft.seq, model, reply, usage if include_usage else None)
            self._send_events(h, draft, "x-request-id", events, openai.DONE, openai.error_event)
        else:
            self._send_json(h, draft, 200, openai.completion(draft.seq, model, reply, usage))

    # -- Anthropic's messages -----------------------------------------------------------------

    @staticmethod
    def _anthropic_headers(draft: _Draft) -> List[Tuple[str, str]]:
        return [("request-id", f"req_mock{draft.seq:06d}")]

    def _send_anthropic_error(
        self, h: Handler, draft: _Draft, status: int, message: str, headers: Sequence[Tuple[str, str]] = ()
    ) -> None:
        body = anthropic.error_body(status, message)
        self._send_json(h, draft, status, body, [*headers, *self._anthropic_headers(draft)])

    def _authorize_anthropic(self, h: Handler, draft: _Draft) -> bool:
        if self.api_key is None:
            return True
        x_api_key = h.headers.get("x-api-key")
        problem = anthropic.auth_problem(x_api_key, h.headers.get("Authorization", ""), self.api_key)
        if problem is not None:
            self._send_anthropic_error(h, draft, 401, problem)
            return False
        return True

    def _messages(self, h: Handler, draft: _Draft, raw: bytes) -> None:
        body = self._parse_body(draft, raw)
        if self._inject_failure(h, draft, anthropic_api=True):
            return
        if not self._authorize_anthropic(h, draft):
            return
        if body is None:
            self._send_anthropic_error(h, draft, 400, "The request body is not valid JSON (an object).")
            return
        problem = anthropic.request_problem(body)
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

        answer, wire = anthropic.message(draft.seq, body, reply)
        self._sleep(h, self.latency)
        if draft.stream:
            events = anthropic.events(answer, wire)
            self._send_events(h, draft, "request-id", events, anthropic.STOP, anthropic.error_event)
        else:
            self._send_json(h, draft, 200, answer, self._anthropic_headers(draft))

    # -- answers ------------------------------------------------------------------------------

    def _send_json(
        self, h: Handler, draft: _Draft, status: int, obj: Any, headers: Sequence[Tuple[str, str]] = ()
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

    def _send_events(
        self,
        h: Handler,
        draft: _Draft,
        request_id_header: str,
        events: List[bytes],
        last: bytes,
        error: Callable[[int, Optional[str]], bytes],
    ) -> None:
        """Sends a 200 with an SSE stream: ``events`` as chunks, ``token_interval`` apart, then
        ``last`` with the end of the chunked body; the request is recorded just before ``last``
        goes out. A failure due in the middle of the stream (``draft.stream_failure``) cuts it
        short: the connection drops, or ``error(status, message)`` is the last event."""
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header(request_id_header, f"req_mock{draft.seq:06d}")
        h.end_headers()
        failure = draft.stream_failure
        if failure is not None:
            events = events[: failure.after_events]
            if failure.disconnect:
                for data in events:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                h.wfile.flush()
                raise Abort
            assert failure.status is not None
            last = error(failure.status, failure.message)
        for i, data in enumerate(events):
            if i > 0:
                self._sleep(h, self.token_interval)
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self._sleep(h, self.token_interval)
        self._commit(draft, 200)
        h.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last))
