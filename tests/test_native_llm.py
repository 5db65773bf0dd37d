"""The native OpenAI-compatible provider (ferroflow's Rust client) against the mock server
on 127.0.0.1: the provider protocol used directly, what it retries (dropped connections,
timeouts, failures early in a stream) and what it does not (a stream that failed after
tokens were passed on, rejected requests), and the errors it raises. The behaviour it
shares with the ``openai``-client provider is tested for both in test_llm.py."""

import asyncio
import os
import socket
import time

import pytest

import ferroflow as ff
from ferroflow.errors import (
    LLMAuthenticationError,
    LLMConnectionError,
    LLMNotFoundError,
    LLMRateLimitError,
    LLMRejectedError,
    LLMTimeoutError,
)
from ferroflow.llm import Reply, Request, ToolCall
from ferroflow.testing import MockLLMServer
from ferroflow.testing import ToolCall as ScriptedCall


@pytest.fixture
def server():
    with MockLLMServer(api_key="test-key") as server:
        yield server


def native(server, **options):
    options.setdefault("api_key", "test-key")
    options.setdefault("timeout", 10.0)
    return ff.NativeOpenAIProvider(base_url=server.base_url, **options)


def ask(text="hello", **params):
    return Request("gpt-4o-mini", [{"role": "user", "content": text}], params=params)


def test_complete_and_stream_speak_the_provider_protocol(server):
    provider = native(server)

    async def main():
        whole = await provider.complete(ask("one two three", temperature=0))
        parts = [p async for p in provider.stream(ask("one two three"))]
        return whole, parts

    whole, parts = asyncio.run(main())
    assert whole == Reply("echo: one two three", (), ff.llm.Usage(3, 4), "gpt-4o-mini", "stop")
    *deltas, last = parts
    assert all(isinstance(d, str) for d in deltas) and len(deltas) > 1
    assert "".join(deltas) == "echo: one two three" and last == whole
    plain, streamed = server.requests
    assert plain.body["temperature"] == 0 and not plain.stream
    assert streamed.stream and streamed.body["stream_options"] == {"include_usage": True}


def test_streamed_tool_calls_are_assembled_from_their_deltas(server):
    server.reply = lambda request: [
        ScriptedCall("order_status", {"order_id": "A17"}),
        ScriptedCall("refund", {"order_id": "A17", "amount": 12.5}),
    ]
    provider = native(server)

    def order_status(order_id: str) -> dict:
        return {}

    def refund(order_id: str, amount: float) -> dict:
        return {}

    request = Request("gpt-4o-mini", [{"role": "user", "content": "A17"}], [ff.tool(order_status), ff.tool(refund)])

    async def main():
        return [p async for p in provider.stream(request)]

    (reply,) = asyncio.run(main())
    assert reply.finish_reason == "tool_calls" and reply.text == ""
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("order_status", {"order_id": "A17"}),
        ("refund", {"order_id": "A17", "amount": 12.5}),
    ]
    assert all(isinstance(c, ToolCall) and c.id.startswith("call_") for c in reply.tool_calls)


def test_a_dropped_connection_and_a_timeout_are_retried(server):
    server.fail_next(disconnect=True)
    server.fail_next(delay=3.0)
    reply = asyncio.run(native(server, timeout=0.3, max_retries=2).complete(ask()))
    assert reply.text == "echo: hello"
    dropped, answered = server.requests
    assert dropped.status == 0, "closed without an answer"
    # The slow one is still being answered: the client gave up on it after its timeout,
    # and asked again after its backoff (0.75-1 s for a second retry).
    assert answered.seq == 3 and answered.status == 200
    assert 0.3 + 0.75 <= answered.received_at - dropped.answered_at < 3.0


def test_errors_say_what_failed_and_are_retried_only_when_that_can_help(server):
    def fails(provider, request=None):
        with pytest.raises(ff.LLMError) as caught:
            asyncio.run(provider.complete(request or ask()))
        return caught.value

    bad_key = fails(native(server, api_key="wrong"))
    assert isinstance(bad_key, LLMAuthenticationError) and bad_key.http_status == 401
    assert bad_key.model == "gpt-4o-mini" and "Incorrect API key" in str(bad_key)

    unknown = fails(native(server), Request("no-such-model", [{"role": "user", "content": "hi"}]))
    assert isinstance(unknown, LLMNotFoundError) and unknown.model == "no-such-model"
    assert "no-such-model" in str(unknown)

    server.fail_next(status=400, message="temperature must be at most 2")
    rejected = fails(native(server))
    assert isinstance(rejected, LLMRejectedError) and rejected.http_status == 400
    assert "temperature must be at most 2" in str(rejected)
    assert server.request_count == 3, "no error so far was retried"

    server.reset()
    server.fail_next(status=429, retry_after=0.1, times=2)
    limited = fails(native(server, max_retries=1))
    assert isinstance(limited, LLMRateLimitError) and "after 1 retries" in str(limited)
    assert [r.status for r in server.requests] == [429, 429]

    server.reset()
    server.fail_next(delay=1.0)
    slow = fails(native(server, timeout=0.2, max_retries=0))
    assert isinstance(slow, LLMTimeoutError) and isinstance(slow, TimeoutError) and slow.http_status is None


def test_an_unreachable_server_fails_fast_with_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    provider = ff.NativeOpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5.0)
    started = time.monotonic()
    with pytest.raises(LLMConnectionError) as caught:
        asyncio.run(provider.complete(ask()))
    assert time.monotonic() - started < 2.0
    assert f"127.0.0.1:{port}/v1/chat/completions" in str(caught.value)


def test_a_bad_base_url_is_refused_when_the_provider_is_made():
    with pytest.raises(ValueError, match="not a URL"):
        ff.NativeOpenAIProvider(base_url="localhost-without-scheme")


def streaming_graph(provider, name):
    g = ff.Graph(name)

    @g.llm(provider=provider, model="gpt-4o-mini", stream=True)
    def answer(input):
        return input

    return g


def run_streamed(graph, text):
    async def main():
        return [e async for e in graph.stream(text)]

    return asyncio.run(main())


def test_a_stream_that_fails_before_its_first_token_is_retried(server):
    # The first event carries the role only: no text has been passed on yet.
    server.fail_next(status=500, after_events=1)
    events = run_streamed(streaming_graph(native(server), "native_early"), "a b c")
    tokens = "".join(e.data["token"] for e in events if isinstance(e, ff.events.NodeProgress))
    completed = next(e for e in events if isinstance(e, ff.events.NodeCompleted))
    assert tokens == completed.output["text"] == "echo: a b c", "each token reported once"
    assert server.request_count == 2


@pytest.mark.parametrize("how", ["error event", "disconnect"])
def test_a_stream_that_fails_after_tokens_fails_the_node_without_a_retry(server, how):
    if how == "error event":
        server.fail_next(status=500, after_events=3, message="the model crashed")
    else:
        server.fail_next(disconnect=True, after_events=3)
    events = run_streamed(streaming_graph(native(server), f"native_late_{how[0]}"), "a b c d e")
    tokens = [e.data["token"] for e in events if isinstance(e, ff.events.NodeProgress)]
    failed = next(e for e in events if isinstance(e, ff.events.NodeFailed))
    assert tokens == ["echo:", " a"], "the tokens before the failure reached the watcher"
    expected = "ferroflow.errors.LLMServerError" if how == "error event" else "ferroflow.errors.LLMConnectionError"
    assert failed.error.type == expected, failed.error
    if how == "error event":
        assert "the model crashed" in failed.error.message
    assert server.request_count == 1, "a retry would repeat the tokens already reported"


def test_llm_errors_fail_the_node_and_name_it(server):
    g = ff.Graph("native_bad_key")

    @g.llm(provider=native(server, api_key="wrong"), model="gpt-4o-mini")
    def classify(input):
        return input

    with pytest.raises(ff.RunFailedError) as failed:
        g.run("hello")
    assert failed.value.node == "classify"
    assert failed.value.error_type == "ferroflow.errors.LLMAuthenticationError"
    assert "gpt-4o-mini" in failed.value.error_message and "HTTP 401" in failed.value.error_message


def test_a_forked_child_makes_its_own_connections(server):
    provider = native(server)
    assert asyncio.run(provider.complete(ask("parent"))).text == "echo: parent"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's pooled connection belongs to the parent's runtime
        code = 1
        try:
            reply = asyncio.run(asyncio.wait_for(provider.complete(ask("child")), 10))
            os.write(write, reply.text.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0 and said == "echo: child"
    assert asyncio.run(provider.complete(ask("parent again"))).text == "echo: parent again"
    assert server.request_count == 3
