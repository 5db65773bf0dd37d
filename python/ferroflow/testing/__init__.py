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

The package's parts, each importable but none of them API (the names above, from
``ferroflow.testing``, are): :mod:`.records`, what a test hands in and gets back (:class:`ToolCall`,
:class:`RequestBody`, :class:`RequestRecord`); :mod:`.text`, the words the model counts, streams and
echoes, common to both APIs; :mod:`.openai` and :mod:`.anthropic`, each API's wire format (error
bodies, request validation, answers and their SSE events) as functions without I/O, so that one
file holds all of what one API says; :mod:`.transport`, the HTTP server and its connection threads;
:mod:`.server`, :class:`MockLLMServer`, which owns the state (configuration, injected failures,
records) and serves each request through the others; :mod:`.cli`, :func:`main`, run by
``__main__.py``. The dependencies go one way, from :mod:`.cli` down to :mod:`.records` and
:mod:`.text`.
"""

from .cli import main
from .records import Reply, ReplyFn, RequestBody, RequestRecord, ToolCall
from .server import DEFAULT_MODELS, MockLLMServer
from .text import echo_reply

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
