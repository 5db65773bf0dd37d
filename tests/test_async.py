"""Async bodies: which loop they run on, real concurrency, and cancellation through asyncio."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings

import pytest

import ferroflow as ff
from helpers import async_wait_until, wait_until


async def test_async_bodies_run_on_the_callers_loop_under_arun(context):
    g = ff.Graph("caller_loop")
    seen = {}

    @g.task
    async def probe():
        seen["loop"] = asyncio.get_running_loop()
        seen["thread"] = threading.current_thread()
        return "ok"

    @g.task
    async def probe_again(probe):
        seen["loop2"] = asyncio.get_running_loop()
        return probe

    result = await g.arun(None, context=context, timeout=5)
    assert result.output == "ok"
    assert seen["loop"] is asyncio.get_running_loop()
    assert seen["loop2"] is asyncio.get_running_loop()
    assert seen["thread"] is threading.current_thread()


async def test_async_bodies_run_on_the_callers_loop_under_stream_and_aresume(context):
    g = ff.Graph("caller_loop_resume")
    loops = []

    @g.human
    async def ask():
        loops.append(asyncio.get_running_loop())
        return "?"

    @g.task
    async def after(ask):
        loops.append(asyncio.get_running_loop())
        return ask

    events = [e async for e in g.stream(None, context=context)]
    result = await g.aresume(events[0].run_id, "!", context=context, timeout=5)
    assert result.output == "!"
    assert loops == [asyncio.get_running_loop()] * 2


def test_async_bodies_run_on_a_background_loop_under_sync_run(context):
    g = ff.Graph("background_loop")
    seen = {}

    @g.task
    async def probe():
        loop = asyncio.get_running_loop()
        seen["loop"] = loop
        seen["thread"] = threading.current_thread()
        return loop.is_running()

    assert g.run(None, context=context, timeout=5).output is True
    assert seen["thread"] is not threading.main_thread()
    assert seen["thread"] is not threading.current_thread()
    # The same background loop serves later runs (it is not created per run).
    first_loop = seen["loop"]
    g.run(None, context=context, timeout=5)
    assert seen["loop"] is first_loop


async def test_sync_bodies_do_not_block_the_callers_loop(context):
    g = ff.Graph("sync_off_loop")
    threads = []

    @g.task
    def blocking():
        threads.append(threading.current_thread())
        time.sleep(0.2)
        return "slept"

    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.ensure_future(ticker())
    try:
        result = await g.arun(None, context=context, timeout=5)
    finally:
        tick_task.cancel()
    assert result.output == "slept"
    assert threads[0] is not threading.current_thread()
    assert ticks >= 5, "the event loop kept running while the sync body slept"


async def test_fifty_parallel_sleeps_overlap(context):
    g = ff.Graph("parallel_sleeps")

    def make(i):
        async def body():
            await asyncio.sleep(0.05)
            return i

        return body

    for i in range(50):
        g.task(name=f"sleep_{i}")(make(i))
    g.build()

    began = time.monotonic()
    result = await g.arun(None, context=context, timeout=10)
    elapsed = time.monotonic() - began
    assert result.output == {f"sleep_{i}": i for i in range(50)}
    assert elapsed < 1.0, f"50 x 0.05 s sleeps took {elapsed:.2f}s: they did not run concurrently"


def test_fifty_parallel_sleeps_overlap_under_sync_run(context):
    g = ff.Graph("parallel_sleeps_sync")

    def make(i):
        async def body():
            await asyncio.sleep(0.05)
            return i

        return body

    for i in range(50):
        g.task(name=f"sleep_{i}")(make(i))
    g.build()

    began = time.monotonic()
    result = g.run(None, context=context, timeout=10)
    assert time.monotonic() - began < 1.0
    assert sorted(result.output.values()) == list(range(50))


# With a timeout, a task on the engine's runtime waits for the run; without one, the thread
# that settles the run wakes the caller's loop itself: both are cancelled the same way.
WAITS = pytest.mark.parametrize("timeout", [10, None], ids=["with a timeout", "without"])


@WAITS
async def test_cancelling_the_awaiting_task_cancels_the_run(context, timeout):
    g = ff.Graph("cancel_by_task")
    entered = asyncio.Event()
    saw = []

    @g.task
    async def forever():
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw.append("cancelled")
            raise
        return "never"

    task = asyncio.ensure_future(g.arun(None, context=context, run_id="task-cancel", timeout=timeout))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert g.get_run("task-cancel", context=context).status is ff.RunStatus.CANCELLED
    await async_wait_until(lambda: saw == ["cancelled"], what="the body to see CancelledError")


@WAITS
async def test_wait_for_timeout_on_arun_cancels_the_run(context, timeout):
    g = ff.Graph("cancel_by_wait_for")

    @g.task
    async def forever():
        await asyncio.sleep(30)

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(g.arun(None, context=context, run_id="wait-for", timeout=timeout), 0.1)
    assert g.get_run("wait-for", context=context).status is ff.RunStatus.CANCELLED


async def test_an_async_body_raising_cancelled_error_fails_the_node(context):
    g = ff.Graph("self_cancel")

    @g.task
    async def gives_up():
        raise asyncio.CancelledError()

    with pytest.raises(ff.RunFailedError) as info:
        await g.arun(None, context=context, timeout=5)
    assert info.value.node == "gives_up"
    assert info.value.error_type == "Cancelled"
    assert g.get_run(info.value.run_id, context=context).status is ff.RunStatus.FAILED


async def test_async_callable_object_is_async(context):
    g = ff.Graph("callable_object")

    class Tool:
        async def __call__(self, input):
            await asyncio.sleep(0)
            return {"loop_is_mine": asyncio.get_running_loop() is outer, "input": input}

    outer = asyncio.get_running_loop()
    g.task(name="tool")(Tool())
    result = await g.arun("x", context=context, timeout=5)
    assert result.output == {"loop_is_mine": True, "input": "x"}


def test_an_async_body_on_a_closed_loop_leaks_no_coroutine(context):
    g = ff.Graph("closed_loop")
    gate = threading.Event()

    @g.task
    def first():
        gate.wait(5)
        return 1

    @g.task
    async def second(first):
        return first + 1

    async def start_and_leave():
        async for e in g.stream(None, context=context, run_id="closed-loop"):
            if isinstance(e, ff.events.RunStarted):
                break

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(start_and_leave())  # the run's loop is closed when this returns
        gate.set()
        wait_until(lambda: g.get_run("closed-loop", context=context).status.is_terminal, what="the run to end")
        gc.collect()
    run = g.get_run("closed-loop", context=context)
    # The node cannot run without its loop; that is an error, reported on the node.
    assert run.status is ff.RunStatus.FAILED
    assert run.failed_node == "second"
    leaked = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert leaked == []


def test_arun_without_a_timeout_settles_every_run_on_each_loop_that_awaits_it(context):
    """Without a timeout, the thread that settles a run wakes the caller's loop itself (through
    a socket the loop watches): many runs at once, finished, failed and waiting, each get their
    own result, on one loop and then on another (a second `asyncio.run`)."""
    g = ff.Graph("settled_on_the_loop")

    @g.task
    def double(input):
        if input == -1:
            raise ValueError("no negatives")
        return input * 2

    @g.task
    async def plus_one(double):
        await asyncio.sleep(0)
        return double + 1

    h = ff.Graph("settled_waiting")

    @h.human
    def ask(input):
        return {"question": input}

    async def many() -> None:
        results = await asyncio.gather(*(g.arun(i, context=context) for i in range(200)))
        assert [r.output for r in results] == [2 * i + 1 for i in range(200)]
        assert all(r.status is ff.RunStatus.COMPLETED for r in results)
        with pytest.raises(ff.RunFailedError) as failed:
            await g.arun(-1, context=context)
        assert failed.value.node == "double" and "no negatives" in str(failed.value)
        waiting = await h.arun("ship it?", context=context)
        assert waiting.status is ff.RunStatus.WAITING
        assert waiting.waiting == {"ask": {"question": "ship it?"}}
        answered = await h.aresume(waiting.run_id, "yes", context=context)
        assert answered.status is ff.RunStatus.COMPLETED and answered.output == "yes"

    asyncio.run(many())
    asyncio.run(many())
