"""LLM nodes on the real ``openai`` client, against ferroflow's mock OpenAI-compatible
server on 127.0.0.1 (``ferroflow.testing.MockLLMServer``): replies, streamed tokens as
events, tool-calling loops, rate limits and server errors, bad keys and models, and a run
killed in the middle of a tool-calling loop that resumes without paying for a model or
tool call twice."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import ferroflow as ff
from ferroflow.testing import MockLLMServer, ToolCall


@pytest.fixture
def server():
    with MockLLMServer(api_key="test-key") as server:
        yield server


# The two OpenAI-compatible providers: on the official ``openai`` client, and native.
PROVIDERS = {"openai": ff.OpenAIProvider, "native": ff.NativeOpenAIProvider}
# The error each raises for a bad key and for an unknown model: the same ferroflow classes.
AUTH_ERROR = {"openai": "ferroflow.errors.LLMAuthenticationError", "native": "ferroflow.errors.LLMAuthenticationError"}
MODEL_ERROR = {"openai": "ferroflow.errors.LLMNotFoundError", "native": "ferroflow.errors.LLMNotFoundError"}


@pytest.fixture(params=sorted(PROVIDERS))
def provider_kind(request):
    return request.param


@pytest.fixture
def provider(server, provider_kind):
    """Makes providers of the kind under test for the server; they are closed (connections
    and all) afterwards."""
    made = []

    def make(server, **options):
        options.setdefault("max_retries", 2)
        options.setdefault("timeout", 10.0)
        api_key = options.pop("api_key", "test-key")
        made.append(PROVIDERS[provider_kind](base_url=server.base_url, api_key=api_key, **options))
        return made[-1]

    make.kind = provider_kind
    yield make
    for p in made:
        if hasattr(p, "close"):
            p.close()


def support_graph(llm_provider, name="llm_plain", **options):
    g = ff.Graph(name)

    @g.llm(provider=llm_provider, model="gpt-4o-mini", **options)
    def answer(input):
        return [{"role": "system", "content": "You answer tickets."}, {"role": "user", "content": input}]

    return g


def test_an_llm_node_returns_the_reply_with_its_usage(server, context, provider):
    result = support_graph(provider(server)).run("my parcel is late", context=context)
    assert result.output["text"] == "echo: my parcel is late"
    assert result.output["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert result.output["tool_calls"] == [] and result.output["finish_reason"] == "stop"
    assert server.request_count == 1
    sent = server.requests[0].body
    assert sent["model"] == "gpt-4o-mini" and sent["messages"][1] == {"role": "user", "content": "my parcel is late"}


def test_streamed_tokens_arrive_as_events_before_the_node_completes(server, provider):
    server.token_interval = 0.05
    g = support_graph(provider(server), name="llm_stream", stream=True)

    async def main():
        return [e async for e in g.stream("one two three four")]

    events = asyncio.run(main())
    tokens = [e for e in events if isinstance(e, ff.events.NodeProgress)]
    completed = next(e for e in events if isinstance(e, ff.events.NodeCompleted))
    assert "".join(e.data["token"] for e in tokens) == "echo: one two three four" == completed.output["text"]
    assert events.index(tokens[-1]) < events.index(completed)
    # Tokens were reported as they came, well before the reply was whole.
    assert completed.at - tokens[0].at >= 0.15, (tokens[0].at, completed.at)
    assert server.requests[0].stream


def test_a_tool_calling_loop_runs_the_tools_and_asks_again(server, context, provider):
    looked_up = []

    @ff.tool
    def order_status(order_id: str) -> dict:
        """Tells where an order is."""
        looked_up.append(order_id)
        return {"order_id": order_id, "status": "shipped"}

    def script(request):
        if not any(m["role"] == "tool" for m in request["messages"]):
            return ToolCall("order_status", {"order_id": "A17"})
        result = json.loads(request["messages"][-1]["content"])
        return f"Order {result['order_id']} is {result['status']}."

    server.reply = script
    g = support_graph(provider(server), name="llm_tools", tools=[order_status])
    result = g.run("where is A17?", context=context)
    assert result.output["text"] == "Order A17 is shipped."
    assert result.output["tool_results"] == [
        {"name": "order_status", "arguments": {"order_id": "A17"}, "result": {"order_id": "A17", "status": "shipped"}}
    ]
    assert looked_up == ["A17"] and server.request_count == 2
    offered = server.requests[0].body["tools"][0]["function"]
    assert offered["name"] == "order_status" and offered["description"] == "Tells where an order is."
    assert offered["parameters"]["required"] == ["order_id"]
    recorded = [e.key for e in context.journal(result.run_id) if isinstance(e, ff.events.StepRecorded)]
    assert recorded == ["llm/0", "tool/0/0", "llm/1"]


def test_a_tool_loop_stops_at_its_limit(server, provider):
    server.reply = lambda request: ToolCall("again", {})
    g = support_graph(
        provider(server), name="llm_loop", tools=[ff.tool(lambda: "more", name="again")], max_tool_rounds=2
    )
    with pytest.raises(ff.RunFailedError) as failed:
        g.run("go")
    assert failed.value.error_type == "ferroflow.llm.ToolLoopLimitError"
    assert server.request_count == 3


def test_a_rate_limit_is_waited_out_as_retry_after_says(server, provider):
    server.fail_next(status=429, retry_after=0.6)
    result = support_graph(provider(server), name="llm_429").run("hello")
    assert result.output["text"] == "echo: hello"
    limited, ok = server.requests
    assert (limited.status, ok.status) == (429, 200)
    assert ok.received_at - limited.answered_at >= 0.6


def test_server_errors_are_retried(server, provider):
    server.fail_next(status=500, times=2)
    result = support_graph(provider(server), name="llm_500").run("hello")
    assert result.output["text"] == "echo: hello"
    assert [r.status for r in server.requests] == [500, 500, 200]


def test_a_bad_key_and_an_unknown_model_fail_the_node_clearly(server, provider):
    with pytest.raises(ff.RunFailedError) as failed:
        support_graph(provider(server, api_key="wrong"), name="llm_key").run("hello")
    assert failed.value.error_type == AUTH_ERROR[provider.kind] and failed.value.node == "answer"
    assert server.request_count == 1, "a bad key is not retried"

    g = ff.Graph("llm_model")

    @g.llm(provider=provider(server), model="no-such-model")
    def answer(input):
        return input

    with pytest.raises(ff.RunFailedError) as failed:
        g.run("hello")
    assert failed.value.error_type == MODEL_ERROR[provider.kind]
    assert "no-such-model" in failed.value.error_message


def test_the_offline_provider_runs_the_same_graph_without_a_server():
    g = support_graph(ff.OfflineProvider(), name="llm_offline")
    assert g.run("hi there").output["text"] == "echo: hi there"


APP = """
import os, time
import ferroflow as ff

log = os.environ["TOOL_LOG"]

@ff.tool
def fetch(part: str) -> str:
    \"\"\"Fetches one part of the answer.\"\"\"
    with open(log, "a") as f:
        f.write(part + "\\n")
    if part == "B" and os.environ.get("BLOCK_ON_B"):
        time.sleep(60)
    return part.lower()

kind = ff.NativeOpenAIProvider if os.environ["PROVIDER"] == "native" else ff.OpenAIProvider
provider = kind(base_url=os.environ["MOCK_URL"], api_key="test-key", timeout=10.0)
g = ff.Graph("llm_crash")

@g.llm(provider=provider, model="gpt-4o-mini", tools=[fetch])
def answer(input):
    return input
"""


def crash_script(request):
    fetched = [json.loads(m["content"]) for m in request["messages"] if m["role"] == "tool"]
    if not fetched:
        return ToolCall("fetch", {"part": "A"})
    if len(fetched) == 1:
        return ToolCall("fetch", {"part": "B"})
    return "parts: " + " ".join(fetched)


def test_a_run_killed_in_a_tool_loop_resumes_without_repeating_calls(server, tmp_path, provider_kind):
    server.reply = crash_script
    (tmp_path / "crash_app.py").write_text(APP)
    db, log = tmp_path / "runs.db", tmp_path / "tools.log"
    env = dict(
        os.environ,
        MOCK_URL=server.base_url,
        TOOL_LOG=str(log),
        PYTHONPATH=str(tmp_path),
        BLOCK_ON_B="1",
        PROVIDER=provider_kind,
    )
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import crash_app, ferroflow as ff; crash_app.g.run('go', run_id='r1', context=ff.Sqlite({str(db)!r}))",
        ],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and "B" in log.read_text().split()):
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the child never reached tool call B"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
    assert server.request_count == 2, "two model calls before the kill"

    sys.path.insert(0, str(tmp_path))
    os.environ.update(MOCK_URL=server.base_url, TOOL_LOG=str(log), PROVIDER=provider_kind)
    try:
        import crash_app

        try:
            result = crash_app.g.resume("r1", context=ff.Sqlite(db), timeout=30)
        finally:
            if hasattr(crash_app.provider, "close"):
                crash_app.provider.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("crash_app", None)
    assert result.output["text"] == "parts: a b"
    assert server.request_count == 3, "the two model calls made before the kill were not made again"
    assert log.read_text().split() == ["A", "B", "B"], "A ran once; B, interrupted, ran again"


def overlap(records):
    """The most requests the server was answering at once."""
    edges = sorted([(r.received_at, 1) for r in records] + [(r.answered_at, -1) for r in records])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def test_a_concurrency_limit_is_shared_by_every_run(server, provider):
    server.latency = 0.1
    limited = ff.llm.Limited(provider(server), concurrency=2)
    results = support_graph(limited, name="llm_limited").map([f"ticket {i}" for i in range(8)], concurrency=8)
    assert [r["text"] for r in results] == [f"echo: ticket {i}" for i in range(8)]
    assert server.request_count == 8
    assert overlap(server.requests) == 2, "two calls at once, never more"


def test_a_request_budget_spreads_calls_over_its_window(server, provider):
    limited = ff.llm.Limited(provider(server), requests=3, per=0.5)
    g = support_graph(limited, name="llm_budget")
    # A first call opens the client and its connection, which takes longer than the calls
    # measured below: the limiter counts calls when it lets them go, the server when they
    # arrive.
    g.run("warm-up")
    time.sleep(0.5)
    server.reset()
    g.map([f"ticket {i}" for i in range(7)], concurrency=7)
    starts = sorted(r.received_at for r in server.requests)
    assert len(starts) == 7
    # No 0.5 s window saw more than 3 calls start (a little slack for the client's own timing).
    for i in range(len(starts) - 3):
        assert starts[i + 3] - starts[i] >= 0.45, starts
    assert starts[-1] - starts[0] >= 0.9, "7 calls at 3 per 0.5 s take two windows"


def test_a_token_budget_holds_calls_back_until_usage_falls_out_of_its_window(server, provider):
    # Each call uses 8 tokens as the server counts them: a 5-word prompt, a 3-word reply.
    limited = ff.llm.Limited(provider(server), tokens=20, per=0.5)
    g = support_graph(limited, name="llm_tokens")
    g.run("warm-up")  # see the test above
    time.sleep(0.5)
    server.reset()
    results = g.map([f"ticket {i}" for i in range(4)], concurrency=1)
    assert [r["usage"]["total_tokens"] for r in results] == [8] * 4
    starts = [r.received_at for r in server.requests]
    assert len(starts) == 4
    # Three calls spend 24 tokens; the fourth waits until the first leaves the window.
    assert starts[2] - starts[0] < 0.4, "the first three went at once"
    assert starts[3] - starts[0] >= 0.45, "the fourth waited for the budget"


def test_a_malformed_reply_fails_the_node_saying_what_is_wrong(server, provider):
    server.reply = lambda request: ToolCall("order_status", "{not json")

    def order_status(order_id: str) -> dict:
        return {"order_id": order_id}

    g = support_graph(provider(server), name="llm_malformed", tools=[order_status])
    with pytest.raises(ff.RunFailedError) as failed:
        g.run("where is A1?")
    assert failed.value.error_type == "ferroflow.errors.MalformedReplyError"
    message = failed.value.error_message
    assert "gpt-4o-mini" in message and "tool 'order_status'" in message, message
    assert "with arguments that are not JSON" in message and "{not json" in message, message
