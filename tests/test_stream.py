"""``graph.stream`` and ``graph.watch``: typed events, in order, ending where they should."""

from __future__ import annotations

import asyncio

import pytest

import ferroflow as ff
from ferroflow import events as ev
from helpers import collect, find, first


def chain() -> ff.Graph:
    g = ff.Graph("chain")

    @g.task
    def a(input):
        return input + 1

    @g.task
    async def b(a):
        await asyncio.sleep(0.01)
        return a * 2

    @g.task
    def c(b):
        return {"result": b}

    return g


async def test_stream_of_a_completed_run(context):
    g = chain()
    events = await collect(g.stream(1, context=context, run_id="s1"))
    kinds = [(type(e).__name__, getattr(e, "node", None)) for e in events]
    assert kinds == [
        ("RunStarted", None),
        ("NodeStarted", "a"),
        ("NodeCompleted", "a"),
        ("NodeStarted", "b"),
        ("NodeCompleted", "b"),
        ("NodeStarted", "c"),
        ("NodeCompleted", "c"),
        ("RunFinished", None),
    ]
    assert all(e.run_id == "s1" for e in events)
    assert [e.output for e in events if isinstance(e, ev.NodeCompleted)] == [2, 4, {"result": 4}]
    end = events[-1]
    assert end.status is ff.RunStatus.COMPLETED
    assert end.output == {"result": 4}
    assert end.error is None
    assert all(isinstance(e.at, float) and e.at > 1.6e9 for e in events)


async def test_stream_of_a_failed_run(context):
    g = ff.Graph("stream_fail")

    @g.task
    def ok():
        return 1

    @g.task
    def bad(ok):
        raise RuntimeError("kaput")

    events = await collect(g.stream(None, context=context))
    failed = events[first(events, ev.NodeFailed, node="bad")]
    assert failed.retry_in is None
    assert failed.error.type == "RuntimeError"
    assert "kaput" in failed.error.traceback
    end = events[-1]
    assert isinstance(end, ev.RunFinished)
    assert end.status is ff.RunStatus.FAILED
    assert end.node == "bad"
    assert end.error.message == "kaput"


async def test_stream_until_finished_spans_a_resume(context):
    g = ff.Graph("stream_resume")

    @g.human
    def ask(input):
        return {"q": input}

    @g.task
    def reply(ask):
        return f"answer: {ask}"

    events = []
    async for e in g.stream("why", context=context, run_id="s-resume", until_finished=True):
        events.append(e)
        if isinstance(e, ev.Interrupted):
            assert e.payload == {"q": "why"}
            waiting = g.get_run("s-resume", context=context)
            assert waiting.status is ff.RunStatus.WAITING
            await g.aresume("s-resume", "because", context=context, timeout=5)
    names = [type(e).__name__ for e in events]
    assert names.index("Interrupted") < names.index("Resumed") < names.index("RunFinished")
    assert events[first(events, ev.Resumed)].value == "because"
    assert events[-1].output == "answer: because"


async def test_stream_of_an_existing_run_id_replays_it(context):
    g = chain()
    await g.arun(1, context=context, run_id="s-existing", timeout=5)
    events = await collect(g.stream(1, context=context, run_id="s-existing"))
    # The run is not started again; its journal is replayed up to RunFinished.
    assert isinstance(events[0], ev.RunStarted)
    assert isinstance(events[-1], ev.RunFinished)
    assert len(find(events, ev.RunStarted)) == 1
    assert len(context.run_ids()) == 1


async def test_watch_a_live_run(context):
    g = ff.Graph("watched")
    gate = asyncio.Event()

    @g.task
    async def slow():
        await asyncio.wait_for(gate.wait(), 5)
        return "done"

    run = asyncio.ensure_future(g.arun(None, context=context, run_id="w1", timeout=5))
    await asyncio.sleep(0.05)
    watcher = asyncio.ensure_future(collect(g.watch("w1", context=context)))
    await asyncio.sleep(0.05)
    assert not watcher.done(), "a watch of a running run waits for its next events"
    gate.set()
    events = await watcher
    await run
    assert isinstance(events[0], ev.RunStarted)
    assert isinstance(events[-1], ev.RunFinished)
    assert events[-1].output == "done"
    assert find(events, ev.NodeCompleted, node="slow")


async def test_several_streams_of_one_run_see_the_same_journal(context):
    g = chain()
    a, b = await asyncio.gather(
        collect(g.stream(5, context=context, run_id="shared-stream")),
        collect(g.stream(5, context=context, run_id="shared-stream")),
    )

    def journal(events):
        return [(type(e).__name__, e.seq) for e in events if not isinstance(e, ev.NodeStarted)]

    assert journal(a) == journal(b)
    assert a[-1].output == b[-1].output == {"result": 12}


async def test_breaking_out_of_a_stream_leaves_the_run_going(context):
    g = chain()
    async for e in g.stream(2, context=context, run_id="s-break"):
        if isinstance(e, ev.RunStarted):
            break
    result = await g.arun(2, context=context, run_id="s-break", timeout=5)
    assert result.output == {"result": 6}


@pytest.mark.parametrize("until_finished", [False, True])
async def test_stream_of_a_run_with_a_skip(context, until_finished):
    g = ff.Graph("stream_skip")

    @g.branch(labels=["x", "y"])
    def pick():
        return "x"

    @g.task(when={"pick": "y"})
    def not_taken():
        return 1

    events = await collect(g.stream(None, context=context, until_finished=until_finished))
    skip = first(events, ev.NodeSkipped, node="not_taken")
    assert skip > first(events, ev.NodeCompleted, node="pick")
    assert find(events, ev.NodeStarted, node="not_taken") == []
    assert isinstance(events[-1], ev.RunFinished)
