"""Anthropic's Messages API, for real over HTTP: the official ``anthropic`` client against
``ferroflow.testing.MockLLMServer`` (``POST /v1/messages``: replies, SSE streams, tool use,
rate limits, errors), then LLM nodes on ``AnthropicProvider`` giving the same outputs, streamed
tokens and tool-calling loops as on ``OpenAIProvider``.

Every client has a timeout and an explicit retry budget, and every provider is closed after its
test, so that no test can hang or leave a socket open.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from typing import Any, Callable, Dict, Iterator, List

import anthropic
import openai
import pytest

import ferroflow as ff
from ferroflow.llm import AnthropicProvider, Request
from ferroflow.llm.anthropic import _convert_messages
from ferroflow.testing import MockLLMServer, RequestBody, ToolCall

TIMEOUT = 10.0
MODEL = "mock-model"
KEY = "test-key"
USER = [{"role": "user", "content": "hello there world"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def server() -> Iterator[MockLLMServer]:
    with MockLLMServer(api_key=KEY) as s:
        yield s


def client_for(server: MockLLMServer, *, max_retries: int = 0, api_key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key=api_key, timeout=TIMEOUT, max_retries=max_retries
    )


def raw_post(server: MockLLMServer, body: Any, headers: Dict[str, str]) -> tuple[int, Dict[str, str], Any]:
    """``POST /v1/messages`` with the standard library, for what the client hides."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("POST", "/v1/messages", body=data, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        raw = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(raw)
    finally:
        conn.close()


def has_tool_results(request: Dict[str, Any]) -> bool:
    return any(
        isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])
        for m in request["messages"]
    )


# -- the mock, through the anthropic client ------------------------------------------------------


def test_plain_reply_and_usage(server: MockLLMServer) -> None:
    with client_for(server) as client:
        message = client.messages.create(model=MODEL, max_tokens=100, system="You are terse.", messages=USER)
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.id.startswith("msg_")
    [block] = message.content
    assert block.type == "text" and block.text == "echo: hello there world"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    # Words of the system prompt and the messages (3 + 3), and of the reply (4).
    assert (message.usage.input_tokens, message.usage.output_tokens) == (6, 4)
    [record] = server.requests
    assert (record.path, record.api, record.model, record.stream, record.status) == (
        "/v1/messages",
        "anthropic",
        MODEL,
        False,
        200,
    )
    assert record.body["system"] == "You are terse." and record.body["max_tokens"] == 100


def test_wire_shape_and_the_x_api_key_header(server: MockLLMServer) -> None:
    body = {"model": MODEL, "max_tokens": 50, "messages": USER}
    status, headers, reply = raw_post(server, body, {"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert status == 200 and headers["content-type"] == "application/json" and headers["request-id"]
    assert set(reply) == {"id", "type", "model", "role", "content", "stop_reason", "stop_sequence", "usage"}
    assert reply["content"] == [{"type": "text", "text": "echo: hello there world"}]
    assert reply["usage"] == {"input_tokens": 3, "output_tokens": 4}

    for sent, message in [({}, "x-api-key header is required"), ({"x-api-key": "nope"}, "invalid x-api-key")]:
        status, _, error = raw_post(server, body, sent)
        assert status == 401
        assert error == {"type": "error", "error": {"type": "authentication_error", "message": message}}
    # The client may send the key as a bearer token instead (2.x clients do).
    status, _, _ = raw_post(server, body, {"Authorization": f"Bearer {KEY}"})
    assert status == 200
    assert [r.status for r in server.requests] == [200, 401, 401, 200]


def test_streaming_deltas_and_the_event_sequence() -> None:
    interval = 0.03
    with MockLLMServer(reply="one two three four", token_interval=interval) as server, client_for(server) as client:
        started = time.monotonic()
        arrivals: List[float] = []
        pieces: List[str] = []
        with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
            for piece in stream.text_stream:
                arrivals.append(time.monotonic() - started)
                pieces.append(piece)
            final = stream.get_final_message()
        raw = client.messages.create(model=MODEL, max_tokens=100, messages=USER, stream=True)
        events = list(raw)
    assert pieces == ["one", " two", " three", " four"]
    assert arrivals == sorted(arrivals) and arrivals[-1] - arrivals[0] >= 2 * interval, arrivals
    assert final.content[0].type == "text" and final.content[0].text == "one two three four"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.usage.input_tokens == 3 and start.message.content == []
    assert delta.type == "message_delta" and delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == 4
    assert [r.stream for r in server.requests] == [True, True]


def weather_script(request: Dict[str, Any]) -> Any:
    """Call the tool for a user question, then answer from the tool's results."""
    if request.get("tools") and not has_tool_results(request):
        return [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Lyon", "days": 2})]
    results = [b["content"] for b in request["messages"][-1]["content"] if b.get("type") == "tool_result"]
    return "Weather: " + ", ".join(results)


def test_tool_use_round_trip() -> None:
    question: Dict[str, Any] = {"role": "user", "content": "What is the weather in Paris?"}
    with MockLLMServer(reply=weather_script) as server, client_for(server) as client:
        first = client.messages.create(model=MODEL, max_tokens=100, messages=[question], tools=[WEATHER_TOOL])
        assert first.stop_reason == "tool_use"
        uses = [b for b in first.content if b.type == "tool_use"]
        assert [(b.id, b.name, b.input) for b in uses] == [
            ("toolu_1", "get_weather", {"city": "Paris"}),
            ("toolu_2", "get_weather", {"city": "Lyon", "days": 2}),
        ]
        assert first.usage.output_tokens == 2 * 2 + 4  # names and JSON words

        messages: List[Any] = [
            question,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": b.id, "content": "sunny"} for b in uses],
            },
        ]
        second = client.messages.create(model=MODEL, max_tokens=100, messages=messages, tools=[WEATHER_TOOL])
        assert second.stop_reason == "end_turn" and second.content[0].text == "Weather: sunny, sunny"
        # Tool results count as input, as tool messages do for OpenAI.
        assert second.usage.input_tokens == 6 + 2

        # A tool_result that answers no tool_use of the message before is rejected, as Anthropic does.
        extra = {"type": "tool_result", "tool_use_id": "toolu_9", "content": "rain"}
        wrong = [*messages[:2], {"role": "user", "content": [*messages[2]["content"], extra]}]
        with pytest.raises(anthropic.BadRequestError, match="toolu_9"):
            client.messages.create(model=MODEL, max_tokens=100, messages=wrong, tools=[WEATHER_TOOL])
        with pytest.raises(anthropic.BadRequestError, match="without `tool_result`"):
            client.messages.create(model=MODEL, max_tokens=100, messages=[*messages[:2], USER[0]], tools=[WEATHER_TOOL])

        # Streamed: a tool_use block start per call, then input_json_delta fragments; the client
        # assembles the input.
        raw = list(
            client.messages.create(model=MODEL, max_tokens=100, messages=[question], tools=[WEATHER_TOOL], stream=True)
        )
        with client.messages.stream(model=MODEL, max_tokens=100, messages=[question], tools=[WEATHER_TOOL]) as stream:
            final = stream.get_final_message()
    starts = [e.content_block for e in raw if e.type == "content_block_start"]
    assert [(b.type, b.id, b.name, b.input) for b in starts] == [
        ("tool_use", "toolu_3", "get_weather", {}),
        ("tool_use", "toolu_4", "get_weather", {}),
    ]
    fragments: Dict[int, str] = {}
    for e in raw:
        if e.type == "content_block_delta":
            assert e.delta.type == "input_json_delta"
            fragments[e.index] = fragments.get(e.index, "") + e.delta.partial_json
    assert {i: json.loads(f) for i, f in fragments.items()} == {0: {"city": "Paris"}, 1: {"city": "Lyon", "days": 2}}
    assert len([e for e in raw if e.type == "content_block_delta"]) > 2, "arguments arrive in fragments"
    assert [b.input for b in final.content if b.type == "tool_use"] == [{"city": "Paris"}, {"city": "Lyon", "days": 2}]
    assert final.stop_reason == "tool_use"


def test_tool_calls_without_tools_offered_is_bad_request() -> None:
    with MockLLMServer(reply=lambda _r: ToolCall("f", {"x": 1})) as server, client_for(server) as client:
        with pytest.raises(anthropic.BadRequestError, match="offered no tools") as info:
            client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert info.value.type == "invalid_request_error"


def test_max_tokens_and_stop_sequences_end_a_text_reply() -> None:
    with MockLLMServer(reply="alpha beta gamma STOP delta epsilon") as server, client_for(server) as client:
        cut = client.messages.create(model=MODEL, max_tokens=2, messages=USER)
        stopped = client.messages.create(model=MODEL, max_tokens=100, messages=USER, stop_sequences=["zeta", " STOP"])
        both = client.messages.create(model=MODEL, max_tokens=2, messages=USER, stop_sequences=["STOP"])
        with client.messages.stream(model=MODEL, max_tokens=2, messages=USER) as stream:
            streamed = stream.get_final_message()
    assert (cut.content[0].text, cut.stop_reason, cut.usage.output_tokens) == ("alpha beta", "max_tokens", 2)
    assert (stopped.content[0].text, stopped.stop_reason, stopped.stop_sequence) == (
        "alpha beta gamma",
        "stop_sequence",
        " STOP",
    )
    assert (both.content[0].text, both.stop_reason) == ("alpha beta", "max_tokens")
    assert (streamed.content[0].text, streamed.stop_reason) == ("alpha beta", "max_tokens")


def test_429_retry_after_is_honoured_by_the_client(server: MockLLMServer) -> None:
    # Longer than the client's own first backoff (at most 0.5 s), so only Retry-After explains the wait.
    retry_after = 0.8
    server.fail_next(status=429, retry_after=retry_after)
    with client_for(server, max_retries=1) as client:
        message = client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert message.content[0].text == "echo: hello there world"
    limited, retried = server.requests
    assert (limited.status, retried.status) == (429, 200)
    assert retry_after <= retried.received_at - limited.answered_at < retry_after + 5.0
    assert server.pending_failures == 0

    server.fail_next(status=429, retry_after=0.25)
    with client_for(server) as client, pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    error = info.value
    assert error.status_code == 429 and error.type == "rate_limit_error"
    assert error.response.headers["retry-after"] == "0.25" and error.response.headers["retry-after-ms"] == "250"
    assert error.response.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached (injected by the mock server)."},
    }


async def test_server_errors_and_overloads_are_retried_by_the_async_client(server: MockLLMServer) -> None:
    server.fail_next(status=500)
    server.fail_next(status=529, retry_after=0.05)
    async with anthropic.AsyncAnthropic(
        base_url=server.anthropic_base_url, api_key=KEY, timeout=TIMEOUT, max_retries=2
    ) as client:
        message = await client.messages.create(model=MODEL, max_tokens=100, messages=USER)
        assert message.content[0].text == "echo: hello there world"
        assert [r.status for r in server.requests] == [500, 529, 200]
        server.fail_next(status=500, times=3)
        with pytest.raises(anthropic.InternalServerError) as info:
            await client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert info.value.status_code == 500 and info.value.type == "api_error"
    assert server.request_count == 6


def test_a_bad_key_is_an_authentication_error_not_retried(server: MockLLMServer) -> None:
    with client_for(server, api_key="wrong", max_retries=2) as client:
        with pytest.raises(anthropic.AuthenticationError) as info:
            client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert info.value.status_code == 401 and info.value.type == "authentication_error"
    assert [r.status for r in server.requests] == [401]


def test_an_unknown_model_is_not_found(server: MockLLMServer) -> None:
    with client_for(server, max_retries=2) as client:
        with pytest.raises(anthropic.NotFoundError) as info:
            client.messages.create(model="claude-9", max_tokens=100, messages=USER)
    assert info.value.type == "not_found_error" and "claude-9" in info.value.message
    assert [(r.status, r.model) for r in server.requests] == [(404, "claude-9")]


def test_malformed_requests_are_400(server: MockLLMServer) -> None:
    headers = {"x-api-key": KEY}
    cases = [
        (b"{not json", "not valid JSON"),
        ({"model": MODEL, "messages": USER}, "max_tokens: Field required"),
        ({"max_tokens": 5, "messages": USER}, "model: Field required"),
        ({"model": MODEL, "max_tokens": 5}, "messages: Field required"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "at least one message"),
        ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"model": MODEL, "max_tokens": 5, "messages": USER, "tools": [{"name": "f"}]}, "input_schema"),
    ]
    for body, message in cases:
        status, _, error = raw_post(server, body, headers)
        assert status == 400 and error["type"] == "error", body
        assert error["error"]["type"] == "invalid_request_error" and message in error["error"]["message"], error
    assert [r.status for r in server.requests] == [400] * len(cases)


def test_reply_callable_error_is_500_not_retried() -> None:
    def broken(_request: Dict[str, Any]) -> str:
        raise KeyError("oops")

    with MockLLMServer(reply=broken) as server, client_for(server, max_retries=3) as client:
        with pytest.raises(anthropic.InternalServerError, match="KeyError") as info:
            client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert server.request_count == 1


def test_one_server_and_one_reply_callable_serve_both_apis() -> None:
    seen: List[RequestBody] = []

    def reply(request: Dict[str, Any]) -> str:
        assert isinstance(request, RequestBody)
        seen.append(request)
        return f"via {request.api}"

    with MockLLMServer(reply=reply, api_key=KEY) as server:
        with client_for(server) as claude:
            message = claude.messages.create(model=MODEL, max_tokens=10, messages=USER)
        with openai.OpenAI(base_url=server.base_url, api_key=KEY, timeout=TIMEOUT, max_retries=0) as gpt:
            completion = gpt.chat.completions.create(model="gpt-4o-mini", messages=USER)
        server.fail_next(status=503)
        with client_for(server) as claude, pytest.raises(anthropic.InternalServerError):
            claude.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert message.content[0].text == "via anthropic"
    assert completion.choices[0].message.content == "via openai"
    assert [(r.api, r.path) for r in seen] == [("anthropic", "/v1/messages"), ("openai", "/v1/chat/completions")]
    assert seen[0] == {"model": MODEL, "max_tokens": 10, "messages": USER}, "the body as the client sent it"
    assert [(r.api, r.status) for r in server.requests] == [("anthropic", 200), ("openai", 200), ("anthropic", 503)]
    assert server.base_url == server.anthropic_base_url + "/v1"


# -- AnthropicProvider ------------------------------------------------------------------------------


@pytest.fixture
def provider() -> Iterator[Callable[..., AnthropicProvider]]:
    """Makes providers for a server; they are closed (connections and all) afterwards."""
    made: List[AnthropicProvider] = []

    def make(server: MockLLMServer, **options: Any) -> AnthropicProvider:
        options.setdefault("max_retries", 2)
        options.setdefault("timeout", TIMEOUT)
        options.setdefault("api_key", KEY)
        made.append(AnthropicProvider(base_url=server.anthropic_base_url, **options))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_openai_style_messages_become_anthropic_ones() -> None:
    system, messages = _convert_messages(
        [
            {"role": "system", "content": "You answer tickets."},
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "where is A17?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "status", "arguments": '{"id": "A17"}'}},
                    {"id": "c2", "type": "function", "function": {"name": "eta", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '"shipped"'},
            {"role": "tool", "tool_call_id": "c2", "content": '"Monday"'},
            {"role": "assistant", "content": "Shipped, arriving Monday."},
            {"role": "user", "content": "thanks"},
        ]
    )
    assert system == ["You answer tickets.", "Be brief."]
    assert messages == [
        {"role": "user", "content": "where is A17?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "c1", "name": "status", "input": {"id": "A17"}},
                {"type": "tool_use", "id": "c2", "name": "eta", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": '"shipped"'},
                {"type": "tool_result", "tool_use_id": "c2", "content": '"Monday"'},
            ],
        },
        {"role": "assistant", "content": "Shipped, arriving Monday."},
        {"role": "user", "content": "thanks"},
    ]
    with pytest.raises(ValueError, match="function"):
        _convert_messages([{"role": "function", "content": "x"}])


def test_the_provider_sends_anthropic_requests_and_maps_replies(
    server: MockLLMServer, provider: Callable[..., AnthropicProvider]
) -> None:
    lookup = ff.tool(lambda order_id: "shipped", name="lookup", description="Looks an order up.")
    messages = [{"role": "system", "content": "You answer tickets."}, {"role": "user", "content": "one two three"}]

    p = provider(server, max_tokens=64)

    async def main() -> List[Any]:
        plain = await p.complete(Request(MODEL, messages, params={"temperature": 0.2}))
        cut = await p.complete(Request(MODEL, messages, params={"max_tokens": 2, "system": "Hi."}))
        stopped = [part async for part in p.stream(Request(MODEL, messages, params={"stop_sequences": ["three"]}))]
        server.reply = lambda request: ToolCall("lookup", {"order_id": "A17"})
        called = await p.complete(Request(MODEL, messages, tools=[lookup]))
        return [plain, cut, stopped, called]

    # A loop of the test's own, left open until the provider has closed its client on it.
    loop = asyncio.new_event_loop()
    try:
        plain, cut, stopped, called = loop.run_until_complete(main())
        p.close()
    finally:
        loop.close()
    sent = [r.body for r in server.requests]
    assert sent[0] == {
        "model": MODEL,
        "max_tokens": 64,
        "temperature": 0.2,
        "system": "You answer tickets.",
        "messages": [{"role": "user", "content": "one two three"}],
    }
    assert (sent[1]["max_tokens"], sent[1]["system"]) == (2, "Hi.\n\nYou answer tickets.")
    assert sent[2]["stream"] is True and sent[2]["stop_sequences"] == ["three"]
    assert sent[3]["tools"] == [
        {
            "name": "lookup",
            "description": "Looks an order up.",
            "input_schema": {"type": "object", "properties": {"order_id": {}}, "required": ["order_id"]},
        }
    ]
    assert (plain.text, plain.finish_reason, plain.model) == ("echo: one two three", "stop", MODEL)
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (6, 4)
    assert (cut.text, cut.finish_reason, cut.usage.completion_tokens) == ("echo: one", "length", 2)
    *deltas, reply = stopped
    assert "".join(deltas) == reply.text == "echo: one two " and reply.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (6, 3)
    assert (called.text, called.finish_reason) == ("", "tool_calls")
    assert [(c.id, c.name, c.arguments) for c in called.tool_calls] == [("toolu_1", "lookup", {"order_id": "A17"})]


# -- LLM nodes on AnthropicProvider ------------------------------------------------------------------


def support_graph(llm_provider: Any, name: str, model: str = MODEL, **options: Any) -> ff.Graph:
    g = ff.Graph(name)

    @g.llm(provider=llm_provider, model=model, **options)
    def answer(input):
        return [{"role": "system", "content": "You answer tickets."}, {"role": "user", "content": input}]

    return g


def test_an_llm_node_gives_the_same_output_as_on_openai(
    server: MockLLMServer, context: ff.Context, provider: Callable[..., AnthropicProvider]
) -> None:
    result = support_graph(provider(server), "claude_plain").run("my parcel is late", context=context)
    assert result.output == {
        "text": "echo: my parcel is late",
        "tool_calls": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        "model": MODEL,
        "finish_reason": "stop",
        "tool_results": [],
    }
    with ff.OpenAIProvider(base_url=server.base_url, api_key=KEY, timeout=TIMEOUT) as gpt:
        same = support_graph(gpt, "claude_plain_openai").run("my parcel is late", context=context)
    assert same.output == result.output
    sent = server.requests[0].body
    assert sent["system"] == "You answer tickets." and sent["messages"] == [
        {"role": "user", "content": "my parcel is late"}
    ]
    assert [r.api for r in server.requests] == ["anthropic", "openai"]


def test_streamed_tokens_arrive_as_events_before_the_node_completes(
    server: MockLLMServer, provider: Callable[..., AnthropicProvider]
) -> None:
    server.token_interval = 0.05
    g = support_graph(provider(server), "claude_stream", stream=True)

    async def main() -> List[Any]:
        return [e async for e in g.stream("one two three four")]

    events = asyncio.run(main())
    tokens = [e for e in events if isinstance(e, ff.events.NodeProgress)]
    completed = next(e for e in events if isinstance(e, ff.events.NodeCompleted))
    assert [e.data["token"] for e in tokens] == ["echo:", " one", " two", " three", " four"]
    assert "".join(e.data["token"] for e in tokens) == completed.output["text"]
    assert completed.output["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert events.index(tokens[-1]) < events.index(completed)
    # Tokens were reported as they came, well before the reply was whole.
    assert completed.at - tokens[0].at >= 0.15, (tokens[0].at, completed.at)
    assert server.requests[0].stream and server.requests[0].api == "anthropic"


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_calling_loop_runs_the_tools_and_asks_again(
    server: MockLLMServer, context: ff.Context, provider: Callable[..., AnthropicProvider], stream: bool
) -> None:
    looked_up = []

    @ff.tool
    def order_status(order_id: str) -> dict:
        """Tells where an order is."""
        looked_up.append(order_id)
        return {"order_id": order_id, "status": "shipped"}

    def script(request: Dict[str, Any]) -> Any:
        assert request["system"] == "You answer tickets."
        if not has_tool_results(request):
            return ToolCall("order_status", {"order_id": "A17"})
        [block] = request["messages"][-1]["content"]
        result = json.loads(block["content"])
        return f"Order {result['order_id']} is {result['status']}."

    server.reply = script
    g = support_graph(
        provider(server), "claude_tools_" + ("stream" if stream else "plain"), tools=[order_status], stream=stream
    )
    result = g.run("where is A17?", context=context)
    assert result.output["text"] == "Order A17 is shipped."
    assert result.output["finish_reason"] == "stop"
    assert result.output["tool_results"] == [
        {"name": "order_status", "arguments": {"order_id": "A17"}, "result": {"order_id": "A17", "status": "shipped"}}
    ]
    assert looked_up == ["A17"] and server.request_count == 2
    first, second = (r.body for r in server.requests)
    offered = first["tools"][0]
    assert offered["name"] == "order_status" and offered["description"] == "Tells where an order is."
    assert offered["input_schema"]["required"] == ["order_id"]
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "order_status", "input": {"order_id": "A17"}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": json.dumps({"order_id": "A17", "status": "shipped"}),
                }
            ],
        },
    ]
    recorded = [e.key for e in context.journal(result.run_id) if isinstance(e, ff.events.StepRecorded)]
    assert recorded == ["llm/0", "tool/0/0", "llm/1"]


def test_a_rate_limit_is_waited_out_as_retry_after_says(
    server: MockLLMServer, provider: Callable[..., AnthropicProvider]
) -> None:
    server.fail_next(status=429, retry_after=0.6)
    result = support_graph(provider(server), "claude_429").run("hello")
    assert result.output["text"] == "echo: hello"
    limited, ok = server.requests
    assert (limited.status, ok.status) == (429, 200)
    assert ok.received_at - limited.answered_at >= 0.6


def test_a_bad_key_and_an_unknown_model_fail_the_node_clearly(
    server: MockLLMServer, provider: Callable[..., AnthropicProvider]
) -> None:
    with pytest.raises(ff.RunFailedError) as failed:
        support_graph(provider(server, api_key="wrong"), "claude_key").run("hello")
    assert failed.value.error_type == "ferroflow.errors.LLMAuthenticationError" and failed.value.node == "answer"
    assert server.request_count == 1, "a bad key is not retried"

    with pytest.raises(ff.RunFailedError) as failed:
        support_graph(provider(server), "claude_model", model="no-such-model", stream=True).run("hello")
    assert failed.value.error_type == "ferroflow.errors.LLMNotFoundError"
    assert "no-such-model" in failed.value.error_message
    assert server.request_count == 2, "an unknown model is not retried"


def test_an_error_event_in_the_middle_of_a_stream() -> None:
    seen: List[str] = []
    with MockLLMServer(reply="one two three four", api_key=KEY) as server, client_for(server) as client:
        server.fail_next(status=529, after_events=4)
        with pytest.raises(anthropic.APIStatusError) as caught:
            for event in client.messages.create(model=MODEL, max_tokens=100, messages=USER, stream=True):
                seen.append(event.type)
        assert server.request_count == 1
    # message_start, ping (which the client does not pass on), content_block_start, one
    # delta: then the error event.
    assert seen == ["message_start", "content_block_start", "content_block_delta"]
    assert "overloaded_error" in str(caught.value)
