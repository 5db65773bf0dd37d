"""The support-bot example gives the same answers in every context and with either
provider: the offline one, and the OpenAI (the real ``openai`` client), native OpenAI and
Anthropic providers talking to the mock server on 127.0.0.1, which answers as the offline
model does."""

import importlib.util
import pathlib

import pytest

import ferroflow as ff
from ferroflow.testing import MockLLMServer

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "support_bot.py"


@pytest.fixture(scope="module")
def bot():
    spec = importlib.util.spec_from_file_location("support_bot_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def expected(bot):
    """The offline provider's answers in memory: what every other combination must give."""
    return answers(bot, bot.build(ff.OfflineProvider(lambda r: bot.reply_to(r.messages)), "offline"), ff.InMemory())


def answers(bot, graph, context):
    texts = [reply["text"] for reply in graph.map(bot.TICKETS[:3], context=context)]
    waiting = graph.run(bot.TICKETS[3], context=context)
    assert waiting.status is ff.RunStatus.WAITING
    assert waiting.waiting["approve"]["question"] == "Approve a refund of 420.0 for order A200?"
    done = graph.resume(waiting.run_id, {"approved": True, "by": "test"}, context=context)
    return [*texts, done.output["text"]]


def test_the_offline_answers_are_the_ones_the_example_documents(expected):
    assert expected == [
        "[support] Hi Ada! Your kettle is shipped, arriving in 2 days.",
        "[support] Hi Grace! Your refund of 18.50 for the mug set is on its way.",
        "[support] Hi Linus! Thanks for reaching out; a colleague will get back to you shortly.",
        "[support] Hi Barbara! Your refund of 420.00 for the espresso machine is on its way.",
    ]


def as_chat(body):
    """The messages of a request to either API, as the example's offline model reads them:
    Anthropic's requests carry the system prompt apart, and content as blocks."""
    if body.api == "openai":
        return body["messages"]
    system = [{"role": "system", "content": body["system"]}] if body.get("system") else []

    def text(content):
        return content if isinstance(content, str) else " ".join(b.get("text", "") for b in content)

    return system + [{"role": m["role"], "content": text(m["content"])} for m in body["messages"]]


@pytest.mark.parametrize("which", ["offline", "openai", "native", "anthropic"])
def test_every_context_and_provider_gives_the_same_answers(bot, expected, context, which):
    if which == "offline":
        assert answers(bot, bot.build(ff.OfflineProvider(lambda r: bot.reply_to(r.messages)), "m"), context) == expected
        return
    with MockLLMServer(reply=lambda body: bot.reply_to(as_chat(body))) as server:
        if which == "openai":
            provider = ff.OpenAIProvider(base_url=server.base_url, api_key="test", timeout=10.0)
        elif which == "native":
            provider = ff.NativeOpenAIProvider(base_url=server.base_url, api_key="test", timeout=10.0)
        else:
            provider = ff.AnthropicProvider(base_url=server.anthropic_base_url, api_key="test", timeout=10.0)
        try:
            assert answers(bot, bot.build(provider, "mock-model"), context) == expected
        finally:
            if hasattr(provider, "close"):
                provider.close()
        # Two model calls per ticket (classify, answer), none repeated, all to this API.
        assert server.request_count == 2 * len(bot.TICKETS)
        assert {record.api for record in server.requests} == {"openai" if which == "native" else which}
