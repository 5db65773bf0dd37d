"""Cancelling runs: blocked in an async node, in a sync node, waiting for a person."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import ferroflow as ff
from helpers import wait_until


def run_in_thread(fn):
    """Runs ``fn`` on a thread; returns (thread, outcome) where outcome gets 'result' or 'error'."""
    outcome = {}

    def target():
        try:
            outcome["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - the test inspects whatever happened
            outcome["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def test_cancel_a_run_blocked_in_an_async_node(context):
    g = ff.Graph("cancel_async")
    entered = threading.Event()
    saw = []

    @g.task
    async def stuck():
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw.append("cancelled")
            raise

    @g.task
    def never(stuck):
        saw.append("never ran")

    thread, outcome = run_in_thread(lambda: g.run(None, context=context, run_id="c-async", timeout=10))
    assert entered.wait(5)
    began = time.monotonic()
    g.cancel("c-async", context=context)
    thread.join(5)
    assert not thread.is_alive(), "run() did not return after the cancel"
    assert time.monotonic() - began < 2
    error = outcome.get("error")
    assert isinstance(error, ff.RunCancelledError), outcome
    assert error.run_id == "c-async"
    assert g.get_run("c-async", context=context).status is ff.RunStatus.CANCELLED
    wait_until(lambda: saw == ["cancelled"], what="the async body to be cancelled")
    statuses = {n.name: n.status for n in context.nodes("c-async")}
    assert statuses == {"stuck": "cancelled", "never": "pending"}


def test_cancel_a_run_blocked_in_a_sync_node(context):
    g = ff.Graph("cancel_sync")
    entered, release = threading.Event(), threading.Event()
    ran = []

    @g.task
    def stuck():
        entered.set()
        release.wait(5)
        return "late"

    @g.task
    def downstream(stuck):
        ran.append("downstream")
        return stuck

    thread, outcome = run_in_thread(lambda: g.run(None, context=context, run_id="c-sync", timeout=10))
    try:
        assert entered.wait(5)
        g.cancel("c-sync", context=context)
        assert g.get_run("c-sync", context=context).status is ff.RunStatus.CANCELLED
    finally:
        release.set()
    thread.join(5)
    assert isinstance(outcome.get("error"), ff.RunCancelledError), outcome
    # The sync body's late result is dropped: nothing after it runs, the run stays cancelled.
    time.sleep(0.05)
    assert ran == []
    assert g.get_run("c-sync", context=context).status is ff.RunStatus.CANCELLED


def _waiting_run(context, run_id: str) -> ff.Graph:
    g = ff.Graph("cancel_waiting")

    @g.human
    def ask():
        return "?"

    waiting = g.run(None, context=context, run_id=run_id, timeout=5)
    assert waiting.status is ff.RunStatus.WAITING
    return g


def test_cancel_a_waiting_run_is_idempotent(context):
    g = _waiting_run(context, "c-wait")
    g.cancel("c-wait", context=context)
    g.cancel("c-wait", context=context)  # cancelling a cancelled run does nothing
    run = g.get_run("c-wait", context=context)
    assert run.status is ff.RunStatus.CANCELLED
    assert run.status.is_terminal
    # Starting the same id again returns the cancelled run, as an error.
    with pytest.raises(ff.RunCancelledError) as info:
        g.run(None, context=context, run_id="c-wait", timeout=5)
    assert info.value.run_id == "c-wait"


def test_resume_after_cancel_is_an_invalid_state(context):
    g = _waiting_run(context, "c-resume-state")
    g.cancel("c-resume-state", context=context)
    with pytest.raises(ff.InvalidRunStateError) as info:
        g.resume("c-resume-state", "too late", context=context, timeout=5)
    assert info.value.status == "cancelled"
    assert info.value.run_id == "c-resume-state"
    assert g.get_run("c-resume-state", context=context).status is ff.RunStatus.CANCELLED


def test_a_cancelled_run_waits_on_nothing(context):
    g = _waiting_run(context, "c-nothing")
    g.cancel("c-nothing", context=context)
    assert g.get_run("c-nothing", context=context).waiting == {}
    # The question will never be answered: the node ends cancelled, not waiting.
    assert {n.name: n.status for n in context.nodes("c-nothing")}["ask"] == "cancelled"


async def test_cancel_from_the_loop_while_arun_awaits(context):
    g = ff.Graph("cancel_arun")
    entered = asyncio.Event()

    @g.task
    async def stuck():
        entered.set()
        await asyncio.sleep(30)

    task = asyncio.ensure_future(g.arun(None, context=context, run_id="c-arun", timeout=10))
    await asyncio.wait_for(entered.wait(), 5)
    g.cancel("c-arun", context=context)
    with pytest.raises(ff.RunCancelledError) as info:
        await asyncio.wait_for(task, 5)
    assert info.value.run_id == "c-arun"


async def test_cancel_ends_a_stream(context):
    from ferroflow import events as ev

    g = ff.Graph("cancel_stream")

    @g.task
    async def stuck():
        await asyncio.sleep(30)

    seen = []

    async def consume():
        async for e in g.stream(None, context=context, run_id="c-stream"):
            seen.append(e)
            if isinstance(e, ev.NodeStarted):
                g.cancel("c-stream", context=context)

    await asyncio.wait_for(consume(), 5)
    last = seen[-1]
    assert isinstance(last, ev.RunFinished)
    assert last.status is ff.RunStatus.CANCELLED
