"""The graphs the tests of ``ferroflow batches`` and ``ferroflow runs events`` run through the
command line (``cli_app:nightly``, ``cli_app:slow``; the tests' directory is on the commands'
``PYTHONPATH``).

``nightly`` fails for inputs with ``"fail": true`` (at ``check``), waits for a person for
the others whose ``n`` is a multiple of 3 (at ``review``), has a node that fails its first
attempt and is retried (``flaky``), and two LLM nodes on ``OfflineProvider`` (which counts
words as tokens): ``summarize`` (model ``small``), whose prompt grows with ``n``, and
``weather`` (model ``large``), which calls the tool ``lookup`` once and then answers.

``slow`` waits in ``hold`` until the file its input names exists, after recording a step
(``began``): a run that stays running for as long as the test wants."""

import os
import time

import ferroflow as ff
from ferroflow.llm import ToolCall

nightly = ff.Graph("nightly")


@nightly.task
def check(input):
    if input.get("fail"):
        raise ValueError(f"bad input {input['n']}")
    return input["n"]


@nightly.task(deps={"n": "check"}, retry=ff.Retry(attempts=2, backoff=0.01, jitter=0))
def flaky(n, ctx):
    if ctx.attempt == 1:
        raise ConnectionError("first attempts fail")
    return n


@nightly.llm(provider=ff.OfflineProvider(), model="small", deps={"n": "flaky"})
def summarize(n):
    return " ".join(["word"] * (n + 1))


def lookup(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def _weather_reply(request):
    if any(m.get("role") == "tool" for m in request.messages):
        return "it is sunny today"
    return [ToolCall("call-1", "lookup", {"city": "Paris"})]


# Slower than `route`, so that the entry before weather's first is route's, not check's, which
# made it ready.
@nightly.llm(
    provider=ff.OfflineProvider(_weather_reply, latency=0.05), model="large", tools=[lookup], deps={"n": "check"}
)
def weather(n):
    return f"the weather for run {n}"


@nightly.branch(labels=["review", "done"], deps={"n": "check"})
def route(n):
    time.sleep(0.02)
    return "review" if n % 3 == 0 else "done"


@nightly.human(when={"route": "review"}, deps={"n": "check"})
def review(n):
    return {"approve": n}


@nightly.task(deps={"s": "summarize", "w": "weather"}, after=["route"])
def report(s, w):
    return s["text"] + " / " + w["text"]


slow = ff.Graph("slow")


@slow.task
def hold(input, ctx):
    ctx.step("began", lambda: input)
    while not os.path.exists(input):
        time.sleep(0.02)
    return "released"


@slow.task(deps={"x": "hold"})
def after(x):
    return x + "!"
