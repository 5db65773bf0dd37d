"""Retrying a failed run: from the node that failed, completed nodes never run again, in
every context, from this process or another."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any, Dict, List

import pytest

import ferroflow as ff
from ferroflow import events as ev
from helpers import collect, node_statuses, reopen


class Flaky:
    """A graph whose middle node fails while ``down`` is set, counting every body call."""

    def __init__(self, name: str = "flaky") -> None:
        self.down = threading.Event()
        self.down.set()
        self.calls: Counter[str] = Counter()
        self.keys: List[str] = []
        self.recorded: List[str] = []
        g = ff.Graph(name)

        @g.task
        def first(input):
            self.calls["first"] += 1
            return input * 2

        @g.task
        def call_model(first, ctx):
            self.calls["call_model"] += 1
            self.keys.append(ctx.idempotency_key)
            # A step done before the failure is recorded, and reused by the retry.
            answer = ctx.step("prompt", lambda: self.recorded.append("prompt") or f"prompt {first}")
            if self.down.is_set():
                raise ConnectionError("the model server refused the connection")
            return answer

        @g.task
        def last(call_model):
            self.calls["last"] += 1
            return {"reply": call_model}

        self.graph = g


def retried_events(graph: ff.Graph, run_id: str, context: ff.Context) -> List[ev.Event]:
    async def read() -> List[ev.Event]:
        return await collect(graph.watch(run_id, context=context))

    return asyncio.run(read())


def test_a_failed_run_is_retried_from_the_node_that_failed(context):
    flaky = Flaky()
    with pytest.raises(ff.RunFailedError) as failed:
        flaky.graph.run(21, context=context, run_id="r1", timeout=10)
    assert failed.value.node == "call_model"
    assert flaky.graph.get_run("r1", context=context).status is ff.RunStatus.FAILED

    flaky.down.clear()
    result = flaky.graph.retry("r1", context=context, by="ops@example", timeout=10)
    assert result.status is ff.RunStatus.COMPLETED
    assert result.output == {"reply": "prompt 42"}
    assert flaky.calls == {"first": 1, "call_model": 2, "last": 1}, "a completed node ran again"
    assert flaky.recorded == ["prompt"], "the recorded step was done again"
    assert len(flaky.keys) == 2 and flaky.keys[0].rsplit("/", 1)[0] == flaky.keys[1].rsplit("/", 1)[0]
    assert [k.rsplit("/", 1)[1] for k in flaky.keys] == ["1", "2"], "the next attempt, same base"
    assert node_statuses(context, "r1") == {"first": "completed", "call_model": "completed", "last": "completed"}

    events = retried_events(flaky.graph, "r1", context)
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("RunFinished") == 2, kinds
    retry = [e for e in events if isinstance(e, ev.RunRetried)]
    assert [e.by for e in retry] == ["ops@example"]
    assert kinds.index("RunRetried") > kinds.index("RunFinished"), "retried after it failed"
    assert events[-1].status is ff.RunStatus.COMPLETED


def test_a_run_that_did_not_fail_is_not_retried(context):
    flaky = Flaky("steady")
    flaky.down.clear()
    assert flaky.graph.run(1, context=context, run_id="ok").status is ff.RunStatus.COMPLETED
    with pytest.raises(ff.InvalidRunStateError, match="retry needs a run that is failed"):
        flaky.graph.retry("ok", context=context)
    with pytest.raises(ff.RunNotFoundError):
        flaky.graph.retry("nobody", context=context)
    assert flaky.calls == {"first": 1, "call_model": 1, "last": 1}


def test_a_run_failing_again_is_retried_again_and_the_journal_names_who(context):
    flaky = Flaky("twice")
    with pytest.raises(ff.RunFailedError):
        flaky.graph.run(1, context=context, run_id="t")
    with pytest.raises(ff.RunFailedError):
        flaky.graph.retry("t", context=context)
    flaky.down.clear()
    assert flaky.graph.retry("t", context=context).output == {"reply": "prompt 2"}
    assert flaky.calls == {"first": 1, "call_model": 3, "last": 1}
    who = [e.by for e in retried_events(flaky.graph, "t", context) if isinstance(e, ev.RunRetried)]
    assert len(who) == 2 and all("@" in by for by in who), who


def test_a_run_that_failed_in_one_process_is_retried_from_another(context):
    if isinstance(context, ff.InMemory):
        pytest.skip("an in-memory run lives in one process")
    flaky = Flaky("elsewhere")
    with pytest.raises(ff.RunFailedError):
        flaky.graph.run(5, context=context, run_id="e1")
    flaky.down.clear()
    other = reopen(context)
    try:
        result = flaky.graph.retry("e1", context=other, timeout=10)
        assert result.output == {"reply": "prompt 10"}
    finally:
        other.close()
    assert flaky.calls == {"first": 1, "call_model": 2, "last": 1}
    assert flaky.graph.get_run("e1", context=context).status is ff.RunStatus.COMPLETED


async def test_aretry(context):
    flaky = Flaky("async")
    with pytest.raises(ff.RunFailedError):
        await flaky.graph.arun(3, context=context, run_id="a1")
    flaky.down.clear()
    result = await flaky.graph.aretry("a1", context=context, timeout=10)
    assert result.output == {"reply": "prompt 6"}
    assert flaky.calls == {"first": 1, "call_model": 2, "last": 1}


def test_a_failed_map_element_is_retried_and_the_completed_elements_are_not(context):
    down = threading.Event()
    down.set()
    calls: Dict[Any, int] = Counter()
    g = ff.Graph("mapped")

    @g.task
    def items(input):
        return list(range(input))

    @g.each(over="items")
    def square(item):
        calls[item] += 1
        if item == 2 and down.is_set():
            raise ValueError("element 2 broke")
        return item * item

    with pytest.raises(ff.RunFailedError):
        g.run(4, context=context, run_id="m")
    completed = {
        e.item for e in retried_events(g, "m", context) if isinstance(e, ev.NodeCompleted) and e.item is not None
    }
    ran_before = dict(calls)
    down.clear()
    assert g.retry("m", context=context).output == [0, 1, 4, 9]
    assert calls[2] == ran_before[2] + 1
    for item in (0, 1, 3):
        if item in completed:
            assert calls[item] == ran_before[item], f"element {item} completed before, and ran again"
        else:
            # Cut short by the failure (or never started): it runs once more.
            assert calls[item] == ran_before.get(item, 0) + 1, item
