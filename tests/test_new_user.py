"""The "new user" scenario: one graph using every feature a first workflow reaches for.

    fetch ─┬─ sentiment ─┐
           ├─ language  ─┼─ summary ── route ─┬─"urgent"─ escalate ─┐
           └─ customer  ─┘                    └─"normal"─ draft    ─┴─ send (flaky) ── approve (human) ── finish

The three fan-out nodes meet at a barrier, so the run only succeeds if they really run
at the same time. ``send`` fails on its first attempt and succeeds on the second.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Dict, List

import pytest

import ferroflow as ff
from ferroflow import events as ev
from helpers import collect, describe, find, first, node_statuses

DEPS: Dict[str, List[str]] = {
    "fetch": [],
    "sentiment": ["fetch"],
    "language": ["fetch"],
    "customer": ["fetch"],
    "summary": ["sentiment", "language", "customer"],
    "route": ["summary"],
    "escalate": ["route", "summary"],
    "draft": ["route", "summary"],
    "send": ["escalate", "draft"],
    "approve": ["send"],
    "finish": ["approve", "send"],
}


def build(calls: Dict[str, List[int]]) -> ff.Graph:
    g = ff.Graph("new_user", output="finish")
    fan_out = threading.Barrier(3, timeout=5)

    def record(ctx: ff.NodeContext) -> None:
        calls.setdefault(ctx.node, []).append(ctx.attempt)

    @g.task
    def fetch(input, ctx):
        record(ctx)
        return {"ticket": input["ticket"], "priority": input["priority"], "text": input["text"]}

    @g.task
    def sentiment(fetch, ctx):
        record(ctx)
        fan_out.wait()
        return "angry" if "!" in fetch["text"] else "calm"

    @g.task
    def language(fetch, ctx):
        record(ctx)
        fan_out.wait()
        return "en"

    @g.task
    def customer(fetch, ctx):
        record(ctx)
        fan_out.wait()
        return {"id": "c-" + fetch["ticket"], "tier": "gold"}

    @g.task
    def summary(sentiment, language, customer, fetch, ctx):
        record(ctx)
        return {"ticket": fetch["ticket"], "mood": sentiment, "lang": language, "tier": customer["tier"]}

    @g.branch(labels=["urgent", "normal"])
    def route(summary, input, ctx):
        record(ctx)
        return "urgent" if input["priority"] == "high" else "normal"

    @g.task(when={"route": "urgent"})
    async def escalate(summary, ctx):
        record(ctx)
        await asyncio.sleep(0.01)
        return f"paged on-call about {summary['ticket']}"

    @g.task(when={"route": "normal"})
    async def draft(summary, ctx):
        record(ctx)
        await asyncio.sleep(0.01)
        return f"Dear {summary['tier']} customer, about {summary['ticket']}..."

    @g.task(retry=ff.Retry(attempts=3, backoff=0.02, jitter=0))
    async def send(escalate, draft, ctx):
        record(ctx)
        if ctx.attempt == 1:
            raise ConnectionError("mail server hiccup")
        message = escalate if escalate is not None else draft
        return {"sent": message, "attempt": ctx.attempt, "key": ctx.idempotency_key}

    @g.human
    def approve(send, ctx):
        record(ctx)
        return {"question": "Close the ticket?", "message": send["sent"]}

    @g.task
    def finish(approve, send, ctx):
        record(ctx)
        return {"closed": approve["close"], "by": approve["by"], "message": send["sent"]}

    return g


TICKET = {"ticket": "T-1", "priority": "low", "text": "my kettle leaks!"}
DRAFT = "Dear gold customer, about T-1..."


def check_order(events: List[ev.Event]) -> None:
    """The ordering guarantees of a stream, checked on every node of the graph."""
    shown = describe(events)
    assert isinstance(events[0], ev.RunStarted), shown
    assert len(find(events, ev.RunStarted)) == 1, shown
    for i, e in enumerate(events):
        if isinstance(e, ev.NodeCompleted):
            # Every completion follows the start of the same attempt.
            starts = find(events, ev.NodeStarted, node=e.node, attempt=e.attempt, item=e.item)
            assert starts and starts[0] < i, f"{e.node} completed before it started: {shown}"
            # Nothing that depends on the node starts before it completed.
            for node, deps in DEPS.items():
                if e.node in deps:
                    for s in find(events, ev.NodeStarted, node=node):
                        assert s > i, f"{node} started before its dependency {e.node} completed: {shown}"
    # Journal events are numbered without gaps; NodeStarted carries the next journal seq.
    journal = [e for e in events if not isinstance(e, ev.NodeStarted)]
    assert [e.seq for e in journal] == list(range(len(journal))), shown
    for i, e in enumerate(events):
        if isinstance(e, ev.NodeStarted):
            later = [x for x in events[i + 1 :] if not isinstance(x, ev.NodeStarted)]
            if later:
                assert e.seq <= later[0].seq, shown
    assert all(e.run_id == events[0].run_id for e in events)
    assert [e.at for e in journal] == sorted(e.at for e in journal)


async def test_stream_until_the_human_step_then_resume(context):
    calls: Dict[str, List[int]] = {}
    g = build(calls)
    events = await collect(g.stream(TICKET, context=context, run_id="newbie"))
    shown = describe(events)
    check_order(events)

    started = events[0]
    assert isinstance(started, ev.RunStarted)
    assert started.graph == "new_user"
    assert started.version == g.version
    assert started.input == TICKET
    assert started.run_id == "newbie"

    # The fan-out nodes ran in parallel (they met at the barrier) after fetch, before the join.
    fetched = first(events, ev.NodeCompleted, node="fetch")
    joined = first(events, ev.NodeStarted, node="summary")
    for node in ("sentiment", "language", "customer"):
        assert fetched < first(events, ev.NodeStarted, node=node) < joined, shown
        assert first(events, ev.NodeCompleted, node=node) < joined, shown

    # The branch chose "normal": escalate is skipped and never starts.
    assert events[first(events, ev.NodeCompleted, node="route")].output == "normal"
    skipped = first(events, ev.NodeSkipped, node="escalate")
    assert skipped > first(events, ev.NodeCompleted, node="route")
    assert find(events, ev.NodeStarted, node="escalate") == []
    assert find(events, ev.NodeSkipped, node="draft") == []

    # send failed once with a retry scheduled, then attempt 2 started and completed.
    failed = first(events, ev.NodeFailed, node="send")
    failure = events[failed]
    assert isinstance(failure, ev.NodeFailed)
    assert failure.attempt == 1
    assert failure.retry_in is not None and 0 <= failure.retry_in <= 1.0
    assert failure.error.type == "ConnectionError"
    assert "mail server hiccup" in failure.error.message
    assert failed < first(events, ev.NodeStarted, node="send", attempt=2)
    assert first(events, ev.NodeStarted, node="send", attempt=2) < first(events, ev.NodeCompleted, node="send")
    assert len(find(events, ev.NodeFailed)) == 1, shown
    sent = events[first(events, ev.NodeCompleted, node="send")]
    assert sent.attempt == 2
    assert sent.output["sent"] == DRAFT

    # The stream ends at the human step: Interrupted is the last event, nothing finished.
    last = events[-1]
    assert isinstance(last, ev.Interrupted), shown
    assert last.node == "approve"
    assert last.payload == {"question": "Close the ticket?", "message": DRAFT}
    assert find(events, ev.RunFinished) == []
    assert find(events, ev.NodeStarted, node="finish") == []

    run = g.get_run("newbie", context=context)
    assert run.status is ff.RunStatus.WAITING
    assert run.waiting == {"approve": last.payload}
    assert node_statuses(context, "newbie") == {
        "fetch": "completed",
        "sentiment": "completed",
        "language": "completed",
        "customer": "completed",
        "summary": "completed",
        "route": "completed",
        "escalate": "skipped",
        "draft": "completed",
        "send": "completed",
        "approve": "waiting",
        "finish": "pending",
    }
    assert {n.name: n.attempts for n in context.nodes("newbie")}["send"] == 2

    # Resume with the person's answer: the run completes with the final output.
    result = await g.aresume("newbie", {"close": True, "by": "ann"}, context=context, timeout=5)
    assert result.status is ff.RunStatus.COMPLETED
    assert result.output == {"closed": True, "by": "ann", "message": DRAFT}
    assert g.get_run("newbie", context=context).status is ff.RunStatus.COMPLETED

    # Completed nodes were never run again; each ran once except send (twice).
    assert calls == {
        "fetch": [1],
        "sentiment": [1],
        "language": [1],
        "customer": [1],
        "summary": [1],
        "route": [1],
        "draft": [1],
        "send": [1, 2],
        "approve": [1],
        "finish": [1],
    }

    # The full history, replayed by watch, ends with Resumed, finish, RunFinished.
    history = await collect(g.watch("newbie", context=context, until_finished=True))
    resumed = first(history, ev.Resumed, node="approve")
    assert history[resumed].value == {"close": True, "by": "ann"}
    assert resumed < first(history, ev.NodeCompleted, node="finish")
    end = history[-1]
    assert isinstance(end, ev.RunFinished)
    assert end.status is ff.RunStatus.COMPLETED
    assert end.output == result.output


@pytest.mark.parametrize(
    ("priority", "taken", "skipped", "message"),
    [("low", "draft", "escalate", DRAFT), ("high", "escalate", "draft", "paged on-call about T-1")],
)
def test_sync_run_then_resume(context, priority, taken, skipped, message):
    calls: Dict[str, List[int]] = {}
    g = build(calls)
    ticket = dict(TICKET, priority=priority)

    waiting = g.run(ticket, context=context, timeout=10)
    assert waiting.status is ff.RunStatus.WAITING
    assert waiting.output is None
    assert waiting.waiting == {"approve": {"question": "Close the ticket?", "message": message}}
    statuses = node_statuses(context, waiting.run_id)
    assert statuses[taken] == "completed"
    assert statuses[skipped] == "skipped"
    assert statuses["approve"] == "waiting"
    assert skipped not in calls
    assert calls["send"] == [1, 2]

    done = g.resume(waiting.run_id, {"close": False, "by": "bob"}, context=context, timeout=10)
    assert done.run_id == waiting.run_id
    assert done.status is ff.RunStatus.COMPLETED
    assert done.output == {"closed": False, "by": "bob", "message": message}
    assert node_statuses(context, waiting.run_id)["finish"] == "completed"
    assert calls["approve"] == [1] and calls["finish"] == [1]

    # A second resume is refused: the run is no longer waiting.
    with pytest.raises(ff.InvalidRunStateError) as info:
        g.resume(waiting.run_id, {"close": True, "by": "eve"}, context=context, timeout=5)
    assert info.value.status == "completed"
