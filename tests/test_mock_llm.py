"""The mock OpenAI server of ``ferroflow.testing``, driven over HTTP by the official ``openai`` client.

Every client has a timeout and an explicit retry budget, so that no test can hang.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from ferroflow.testing import DEFAULT_MODELS, MockLLMServer, RequestRecord, ToolCall, echo_reply

TIMEOUT = 10.0
USER = [{"role": "user", "content": "hello there world"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def server() -> Iterator[MockLLMServer]:
    with MockLLMServer() as s:
        yield s


def client_for(
    server: MockLLMServer, *, max_retries: int = 0, api_key: str = "test", timeout: float = TIMEOUT
) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)


def async_client_for(server: MockLLMServer, *, max_retries: int = 0, timeout: float = TIMEOUT) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.base_url, api_key="test", timeout=timeout, max_retries=max_retries)


def raw_request(
    server: MockLLMServer, method: str, path: str, body: bytes = b"", headers: Dict[str, str] | None = None
) -> tuple[int, Dict[str, str], Any]:
    """One request with the standard library, for what the openai client hides."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data)
    finally:
        conn.close()


# -- plain replies ---------------------------------------------------------------------------------


def test_plain_reply_and_usage(server: MockLLMServer) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *USER]
    with client_for(server) as client:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "gpt-4o-mini"
    assert isinstance(reply.created, int) and abs(reply.created - time.time()) < 60
    [choice] = reply.choices
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello there world"
    assert choice.message.tool_calls is None
    assert reply.usage is not None
    # Words of every message's content (3 + 3) and of the reply (4).
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (6, 4, 10)


def test_wire_shape_and_keep_alive(server: MockLLMServer) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": USER}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        replies = []
        sockets = []
        for _ in range(2):
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Type") == "application/json"
            replies.append(json.loads(response.read()))
            sockets.append(conn.sock)
        assert sockets[0] is not None and sockets[0] is sockets[1], "HTTP/1.1 keep-alive reuses the connection"
    finally:
        conn.close()
    reply = replies[0]
    assert set(reply) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert set(reply["choices"][0]) == {"index", "message", "logprobs", "finish_reason"}
    assert reply["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: hello there world",
        "refusal": None,
    }
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert replies[0]["id"] != replies[1]["id"]


def test_content_parts_and_custom_reply() -> None:
    seen: List[Dict[str, Any]] = []

    def reply(request: Dict[str, Any]) -> str:
        seen.append(request)
        return "fixed answer " + str(len(request["messages"]))

    with MockLLMServer(reply=reply, models=["tiny"]) as server, client_for(server) as client:
        parts = [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]
        result = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": parts}],
            temperature=0.3,
        )
    assert result.choices[0].message.content == "fixed answer 1"
    assert result.usage is not None and result.usage.prompt_tokens == 3 and result.usage.completion_tokens == 3
    assert seen[0]["temperature"] == 0.3 and seen[0]["model"] == "tiny"
    assert echo_reply({"messages": [{"role": "user", "content": parts}]}) == "echo: one two three"
    with MockLLMServer(reply="always this") as server, client_for(server) as client:
        result = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert result.choices[0].message.content == "always this"


async def test_async_client_concurrent(server: MockLLMServer) -> None:
    async with async_client_for(server) as client:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"n {i}"}])
                for i in range(8)
            )
        )
    assert [r.choices[0].message.content for r in replies] == [f"echo: n {i}" for i in range(8)]
    assert server.request_count == 8
    assert sorted(r.body["messages"][0]["content"] for r in server.requests) == sorted(f"n {i}" for i in range(8))


# -- streaming ---------------------------------------------------------------------------------------


def test_streaming_matches_plain_reply(server: MockLLMServer) -> None:
    messages = [{"role": "user", "content": "  the quick  brown fox\tjumps "}]
    with client_for(server) as client:
        plain = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
        with_usage = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    text = plain.choices[0].message.content
    assert text == "echo:   the quick  brown fox\tjumps "
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-4o-mini" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert all(contents), "one non-empty content delta per word-ish token"
    assert len(contents) == len(text.split()) + 1  # the trailing space is a token of its own
    assert "".join(contents) == text
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1].choices[0].delta.content is None
    assert all(c.usage is None for c in chunks)

    # include_usage: the same chunks, then one with no choices and the usage of the plain reply.
    assert [c.choices[0].delta.content for c in with_usage[:-1]] == [c.choices[0].delta.content for c in chunks]
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None and plain.usage is not None
    assert with_usage[-1].usage.model_dump() == plain.usage.model_dump()
    assert [r.stream for r in server.requests] == [False, True, True]


async def test_async_streaming_token_interval() -> None:
    interval = 0.05
    with MockLLMServer(reply="one two three four five six", token_interval=interval) as server:
        async with async_client_for(server) as client:
            started = time.monotonic()
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
            arrivals = []
            pieces = []
            async for chunk in stream:
                arrivals.append(time.monotonic() - started)
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
    assert pieces == ["one", " two", " three", " four", " five", " six"]
    assert arrivals == sorted(arrivals)
    # role, 6 words, finish, [DONE]: 8 intervals at least before the end of the stream.
    [record] = server.requests
    assert record.stream and record.status == 200
    assert record.duration >= 8 * interval
    assert arrivals[-1] >= 7 * interval


# -- tool calls --------------------------------------------------------------------------------------


def weather_script(request: Dict[str, Any]) -> Any:
    """Call the tool for a user question, then answer from the tool's result."""
    last = request["messages"][-1]
    if request.get("tools") and last["role"] == "user":
        return [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Lyon", "days": 2})]
    if last["role"] == "tool":
        return f"Weather: {last['content']}"
    return echo_reply(request)


def test_tool_calls_round_trip() -> None:
    with MockLLMServer(reply=weather_script) as server, client_for(server) as client:
        messages: List[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL])
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        calls = choice.message.tool_calls
        assert calls is not None and len(calls) == 2
        assert [c.id for c in calls] == ["call_1", "call_2"]
        assert all(c.type == "function" and c.function.name == "get_weather" for c in calls)
        assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Lyon", "days": 2}]
        assert first.usage is not None and first.usage.completion_tokens == 2 * 2 + 4  # name + JSON words

        messages.append(choice.message.model_dump(exclude_none=True))
        messages.extend({"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls)
        second = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL])
        assert second.choices[0].finish_reason == "stop"
        assert second.choices[0].message.content == "Weather: sunny"
        # The script saw what the client sent back: the assistant's tool calls and the results.
        sent = server.requests[1].body["messages"]
        assert sent[1]["tool_calls"][0]["id"] == "call_1"
        assert [m["tool_call_id"] for m in sent[2:]] == ["call_1", "call_2"]

        # Streamed tool calls: a head delta per call, then argument fragments, finish "tool_calls".
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages[:1],
            tools=[WEATHER_TOOL],
            stream=True,
        )
        names: Dict[int, str] = {}
        ids: Dict[int, str] = {}
        arguments: Dict[int, str] = {}
        finish = []
        for chunk in stream:
            choice_delta = chunk.choices[0]
            finish.append(choice_delta.finish_reason)
            for delta in choice_delta.delta.tool_calls or []:
                if delta.id:
                    ids[delta.index] = delta.id
                if delta.function and delta.function.name:
                    names[delta.index] = delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = arguments.get(delta.index, "") + delta.function.arguments
    assert ids == {0: "call_3", 1: "call_4"}
    assert names == {0: "get_weather", 1: "get_weather"}
    assert {i: json.loads(a) for i, a in arguments.items()} == {0: {"city": "Paris"}, 1: {"city": "Lyon", "days": 2}}
    assert finish[-1] == "tool_calls" and set(finish[:-1]) == {None}


def test_tool_calls_without_tools_offered_is_bad_request() -> None:
    with MockLLMServer(reply=lambda _r: ToolCall("f", '{"not json')) as server, client_for(server) as client:
        with pytest.raises(openai.BadRequestError, match="offered no tools"):
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=[WEATHER_TOOL])
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.arguments == '{"not json'


def test_reply_callable_error_is_500_not_retried() -> None:
    def broken(_request: Dict[str, Any]) -> str:
        raise KeyError("oops")

    with MockLLMServer(reply=broken) as server, client_for(server, max_retries=3) as client:
        with pytest.raises(openai.InternalServerError, match="KeyError") as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert server.request_count == 1


# -- injected failures ---------------------------------------------------------------------------------


def test_429_retry_after_is_honoured_by_the_client(server: MockLLMServer) -> None:
    # Longer than the client's own first backoff (at most 0.5 s), so only Retry-After explains the wait.
    retry_after = 0.8
    server.fail_next(status=429, retry_after=retry_after)
    with client_for(server, max_retries=1) as client:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert reply.choices[0].message.content == "echo: hello there world"
    limited, retried = server.requests
    assert (limited.status, retried.status) == (429, 200)
    assert retried.received_at - limited.answered_at >= retry_after
    assert retried.received_at - limited.answered_at < retry_after + 5.0
    assert server.pending_failures == 0


def test_429_error_shape_and_headers(server: MockLLMServer) -> None:
    server.fail_next(status=429, retry_after=0.25)
    with client_for(server) as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    error = info.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.response.headers["retry-after"] == "0.25"
    assert error.response.headers["retry-after-ms"] == "250"
    assert set(error.response.json()["error"]) == {"message", "type", "param", "code"}
    assert server.request_count == 1


async def test_500_retried_by_the_async_client(server: MockLLMServer) -> None:
    server.fail_next(status=500)
    server.fail_next(status=503, retry_after=0.05)
    async with async_client_for(server, max_retries=2) as client:
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert reply.choices[0].message.content == "echo: hello there world"
        assert [r.status for r in server.requests] == [500, 503, 200]
        server.fail_next(status=500, times=3)
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert info.value.status_code == 500
    assert info.value.body == {
        "message": "The server had an error while processing your request (injected by the mock server).",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert server.request_count == 6


def test_slow_reply_trips_the_client_timeout_then_recovers(server: MockLLMServer) -> None:
    server.fail_next(delay=3.0)
    with client_for(server, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert 0.45 <= time.monotonic() - started < 3.0
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert reply.choices[0].message.content == "echo: hello there world"
    server.fail_next(delay=0.3)
    with client_for(server) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    slow = server.requests[-1]
    assert slow.status == 200 and slow.duration >= 0.3


def test_injected_disconnect(server: MockLLMServer) -> None:
    server.fail_next(disconnect=True)
    with client_for(server) as client:
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert [r.status for r in server.requests] == [0, 200]


def test_fail_next_rejects_nonsense(server: MockLLMServer) -> None:
    for kwargs in ({}, {"status": 200}, {"retry_after": 1.0}, {"status": 500, "times": 0}, {"delay": -1.0}):
        with pytest.raises(ValueError):
            server.fail_next(**kwargs)
    assert server.pending_failures == 0


# -- errors --------------------------------------------------------------------------------------------


def test_unknown_model_is_not_found(server: MockLLMServer) -> None:
    with client_for(server, max_retries=2) as client:
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="gpt-9", messages=USER)
        models = client.models.list()
        assert [m.id for m in models.data] == list(DEFAULT_MODELS)
        assert client.models.retrieve("gpt-4o").id == "gpt-4o"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-9")
    assert info.value.code == "model_not_found"
    assert "gpt-9" in info.value.message
    assert [(r.path, r.status, r.model) for r in server.requests] == [
        ("/v1/chat/completions", 404, "gpt-9"),
        ("/v1/models", 200, None),
        ("/v1/models/gpt-4o", 200, None),
        ("/v1/models/gpt-9", 404, None),
    ]


def test_api_key_checked() -> None:
    with MockLLMServer(api_key="sk-right") as server:
        with client_for(server, api_key="sk-wrong", max_retries=2) as client:
            with pytest.raises(openai.AuthenticationError) as info:
                client.chat.completions.create(model="gpt-4o-mini", messages=USER)
            with pytest.raises(openai.AuthenticationError):
                client.models.list()
        assert info.value.code == "invalid_api_key"
        status, _, body = raw_request(server, "POST", "/v1/chat/completions", json.dumps({"model": "x"}).encode())
        assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}
        with client_for(server, api_key="sk-right") as client:
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert reply.choices[0].message.content == "echo: hello there world"
        assert [r.status for r in server.requests] == [401, 401, 401, 200]


def test_malformed_requests_are_400(server: MockLLMServer) -> None:
    status, _, body = raw_request(
        server, "POST", "/v1/chat/completions", b"{not json", {"Content-Type": "application/json"}
    )
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error" and set(body["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    status, _, body = raw_request(server, "POST", "/v1/chat/completions", b"[1, 2]")
    assert status == 400
    status, _, body = raw_request(server, "POST", "/v1/chat/completions", json.dumps({"messages": USER}).encode())
    assert (status, body["error"]["param"]) == (400, "model")
    status, _, body = raw_request(server, "POST", "/v1/chat/completions", json.dumps({"model": "gpt-4o"}).encode())
    assert (status, body["error"]["param"]) == (400, "messages")
    status, _, _ = raw_request(server, "POST", "/v1/embeddings", b"{}")
    assert status == 404
    assert [r.status for r in server.requests] == [400, 400, 400, 400, 404]
    assert server.requests[0].body is None and server.requests[2].body == {"messages": USER}
    with client_for(server) as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[])


# -- latency, counters, life cycle ---------------------------------------------------------------------


def test_latency_is_applied() -> None:
    latency = 0.2
    with MockLLMServer(latency=latency) as server, client_for(server) as client:
        started = time.monotonic()
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        elapsed = time.monotonic() - started
        started = time.monotonic()
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
        first_chunk_after = None
        for _ in stream:
            if first_chunk_after is None:
                first_chunk_after = time.monotonic() - started
    assert elapsed >= latency
    assert first_chunk_after is not None and first_chunk_after >= latency
    assert all(r.duration >= latency for r in server.requests)


def test_request_records_and_reset(server: MockLLMServer) -> None:
    with client_for(server) as client:
        for i in range(5):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": str(i)}])
        list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
        client.models.list()
    records = server.requests
    assert server.request_count == len(records) == 7
    assert [r.seq for r in records] == list(range(1, 8))
    assert [(r.method, r.model, r.stream, r.status) for r in records] == [("POST", "gpt-4o", False, 200)] * 5 + [
        ("POST", "gpt-4o-mini", True, 200),
        ("GET", None, False, 200),
    ]
    assert [r.body["messages"][0]["content"] for r in records[:5]] == ["0", "1", "2", "3", "4"]
    assert all(isinstance(r, RequestRecord) and r.received_at <= r.answered_at for r in records)
    assert all(a.received_at <= b.received_at for a, b in zip(records, records[1:]))
    server.fail_next(status=500, times=2)
    server.reset()
    assert server.request_count == 0 and server.requests == [] and server.pending_failures == 0
    with client_for(server) as client:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert server.request_count == 1 and server.requests[0].seq == 1 and server.requests[0].status == 200


def test_stop_is_bounded_with_open_connections_and_restart_keeps_the_port() -> None:
    server = MockLLMServer().start()
    port = server.port
    assert server.base_url == f"http://127.0.0.1:{port}/v1" and server.running
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        idle.request("GET", "/v1/models")
        assert idle.getresponse().read()  # the connection stays open, idle, on a server thread
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2.0
    finally:
        idle.close()
    assert not server.running
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
        pass
    with server, client_for(server) as client:
        assert server.port == port
        client.chat.completions.create(model="gpt-4o", messages=USER)
    server.stop()  # stopping twice is harmless
    assert [r.path for r in server.requests] == ["/v1/models", "/v1/chat/completions"]


def test_stop_cuts_off_a_pending_slow_reply(server: MockLLMServer) -> None:
    server.fail_next(delay=30.0)
    outcome: List[BaseException] = []

    def call() -> None:
        with client_for(server) as client:
            try:
                client.chat.completions.create(model="gpt-4o", messages=USER)
            except openai.APIConnectionError as e:
                outcome.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + TIMEOUT
    while server.request_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0
    caller.join(TIMEOUT)
    assert not caller.is_alive()
    assert len(outcome) == 1
    assert [r.status for r in server.requests] == [0]


# -- as a separate process -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_runs_as_a_subprocess(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroflow.testing", "--port", "0", "--latency", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30.0)
        assert ready, "the server printed no base URL within 30 s"
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with OpenAI(base_url=base_url, api_key="test", timeout=TIMEOUT, max_retries=0) as client:
            started = time.monotonic()
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
            assert time.monotonic() - started >= 0.05
        assert reply.choices[0].message.content == "echo: hello there world"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_a_stream_can_fail_in_its_middle_with_an_error_event_or_a_dropped_connection():
    with MockLLMServer(reply="one two three four") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=10.0)
        for failure, error in ((dict(status=500, message="boom"), openai.APIError), (dict(disconnect=True), Exception)):
            server.fail_next(after_events=3, **failure)
            pieces = []
            with pytest.raises(error) as caught:
                for chunk in client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
                ):
                    pieces.extend(c.delta.content for c in chunk.choices if c.delta.content)
            # The role event, then two words: then the failure.
            assert pieces == ["one", " two"], failure
            if "message" in failure:
                assert "boom" in str(caught.value)
        # A request that does not stream acts a mid-stream failure out at once.
        server.fail_next(status=503, after_events=3)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert server.request_count == 3
        with pytest.raises(ValueError, match="after_events"):
            server.fail_next(delay=1.0, after_events=2)
