"""Retries (attempt counting, which errors retry, backoff) and per-attempt timeouts."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import ferroflow as ff
from ferroflow import events as ev
from helpers import collect, find, first, wait_until


def test_attempts_are_counted_through_ctx(context):
    g = ff.Graph("counted")
    attempts, keys = [], []

    @g.task(retry=ff.Retry(attempts=4, backoff=0.01, jitter=0))
    def flaky(ctx):
        attempts.append(ctx.attempt)
        keys.append(ctx.idempotency_key)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return ctx.attempt

    result = g.run(None, context=context, timeout=5)
    assert result.output == 3
    assert attempts == [1, 2, 3]
    assert len(set(keys)) == 3, "each attempt has its own idempotency key"
    node = context.nodes(result.run_id)[0]
    assert node.status == "completed" and node.attempts == 3


def test_retries_run_out(context):
    g = ff.Graph("exhausted")
    attempts = []

    @g.task(retry=ff.Retry(attempts=3, backoff=0.01, jitter=0))
    def always(ctx):
        attempts.append(ctx.attempt)
        raise ValueError(f"no luck on {ctx.attempt}")

    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, timeout=5)
    assert attempts == [1, 2, 3]
    assert info.value.error_type == "ValueError"
    assert info.value.error_message == "no luck on 3", "the last attempt's error is reported"
    node = context.nodes(info.value.run_id)[0]
    assert node.status == "failed" and node.attempts == 3


def test_without_retry_a_node_runs_once(context):
    g = ff.Graph("no_retry")
    attempts = []

    @g.task
    def once(ctx):
        attempts.append(ctx.attempt)
        raise ConnectionError("down")

    with pytest.raises(ff.RunFailedError):
        g.run(None, context=context, timeout=5)
    assert attempts == [1]


def test_retry_on_limits_which_errors_retry(context):
    g = ff.Graph("retry_on")
    attempts = []

    @g.task(retry=ff.Retry(attempts=5, backoff=0.01, on=(ValueError,)))
    def picky(ctx, input):
        attempts.append(ctx.attempt)
        if input == "type" or ctx.attempt > 1:
            raise TypeError("not retryable")
        raise ValueError("retryable")

    with pytest.raises(ff.RunFailedError) as info:
        g.run("type", context=context, timeout=5)
    assert attempts == [1], "a TypeError is not in Retry.on, so it is not retried"
    assert info.value.error_type == "TypeError"
    run = g.get_run(info.value.run_id, context=context)
    assert run.error is not None and run.error.retryable is False

    attempts.clear()
    with pytest.raises(ff.RunFailedError) as info:
        g.run("value", context=context, timeout=5)
    # The ValueError was retried; the TypeError of attempt 2 was not.
    assert attempts == [1, 2]
    assert info.value.error_type == "TypeError"


def test_retry_on_accepts_subclasses(context):
    g = ff.Graph("retry_subclass")
    attempts = []

    @g.task(retry=ff.Retry(attempts=3, backoff=0.01, on=(OSError,)))
    def net(ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionResetError("reset")
        return "ok"

    assert g.run(None, context=context, timeout=5).output == "ok"
    assert attempts == [1, 2]


async def test_backoff_is_reported_and_respected(context):
    g = ff.Graph("backoff")
    times = []

    @g.task(retry=ff.Retry(attempts=3, backoff=0.1, multiplier=2.0, jitter=0))
    def slow_to_recover(ctx):
        times.append(time.monotonic())
        if ctx.attempt < 3:
            raise ConnectionError("later")
        return "ok"

    events = await collect(g.stream(None, context=context, until_finished=True))
    failures = [events[i] for i in find(events, ev.NodeFailed)]
    assert [f.attempt for f in failures] == [1, 2]
    assert failures[0].retry_in == pytest.approx(0.1, abs=0.005)
    assert failures[1].retry_in == pytest.approx(0.2, abs=0.005)
    assert times[1] - times[0] >= 0.09
    assert times[2] - times[1] >= 0.19
    assert events[-1].status is ff.RunStatus.COMPLETED


async def test_max_backoff_caps_the_delay(context):
    g = ff.Graph("capped")

    @g.task(retry=ff.Retry(attempts=3, backoff=0.05, multiplier=10.0, max_backoff=0.06, jitter=0))
    def capped(ctx):
        if ctx.attempt < 3:
            raise ConnectionError("later")
        return "ok"

    events = await collect(g.stream(None, context=context, until_finished=True))
    delays = [events[i].retry_in for i in find(events, ev.NodeFailed)]
    assert delays == [pytest.approx(0.05, abs=0.005), pytest.approx(0.06, abs=0.005)]


async def test_final_failure_has_no_retry_in(context):
    g = ff.Graph("final")

    @g.task(retry=ff.Retry(attempts=2, backoff=0.01))
    def doomed():
        raise RuntimeError("always")

    events = await collect(g.stream(None, context=context, until_finished=True))
    failures = [events[i] for i in find(events, ev.NodeFailed)]
    assert [f.attempt for f in failures] == [1, 2]
    assert failures[0].retry_in is not None
    assert failures[1].retry_in is None
    end = events[-1]
    assert isinstance(end, ev.RunFinished)
    assert end.status is ff.RunStatus.FAILED
    assert end.node == "doomed"
    assert end.error.type == "RuntimeError"


def _deep_helper(value):
    raise LookupError(f"nothing under {value!r}")


def test_run_failed_error_carries_the_python_traceback(context):
    g = ff.Graph("traceback")

    @g.task
    def lookup(input):
        return _deep_helper(input)

    with pytest.raises(ff.RunFailedError) as info:
        g.run("key-7", context=context, timeout=5)
    tb = info.value.traceback
    assert tb is not None
    assert tb.startswith("Traceback (most recent call last)")
    assert "_deep_helper" in tb and "in lookup" in tb
    assert "test_retry_timeout.py" in tb
    assert "LookupError: nothing under 'key-7'" in tb
    assert info.value.error_message == "nothing under 'key-7'"
    node = context.nodes(info.value.run_id)[0]
    assert node.error is not None and node.error.traceback == tb


async def test_async_body_traceback(context):
    g = ff.Graph("async_traceback")

    @g.task
    async def fails():
        await asyncio.sleep(0)
        raise ValueError("async boom")

    with pytest.raises(ff.RunFailedError) as info:
        await g.arun(None, context=context, timeout=5)
    assert info.value.error_type == "ValueError"
    assert "ValueError: async boom" in info.value.traceback
    assert "in fails" in info.value.traceback


async def test_async_body_exceeding_timeout(context):
    g = ff.Graph("async_timeout")
    cancelled = []

    @g.task(timeout=0.1)
    async def hangs():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "never"

    began = time.monotonic()
    with pytest.raises(ff.RunFailedError) as info:
        await g.arun(None, context=context, timeout=5)
    assert time.monotonic() - began < 2
    assert info.value.node == "hangs"
    assert info.value.error_type == "Timeout"
    # The abandoned attempt's asyncio task is cancelled, not left running.
    deadline = time.monotonic() + 2
    while not cancelled and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert cancelled == [True]


def test_async_body_exceeding_timeout_under_sync_run(context):
    g = ff.Graph("async_timeout_sync")

    @g.task(timeout=0.1)
    async def hangs():
        await asyncio.sleep(10)

    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, timeout=5)
    assert info.value.error_type == "Timeout"


def test_sync_body_exceeding_timeout(context):
    g = ff.Graph("sync_timeout")
    release = threading.Event()
    finished = []

    @g.task(timeout=0.1)
    def blocks():
        release.wait(2)
        finished.append(True)
        return "too late"

    @g.task
    def downstream(blocks):
        return "should not run"

    began = time.monotonic()
    try:
        with pytest.raises(ff.RunFailedError) as info:
            g.run(None, context=context, timeout=5)
        assert time.monotonic() - began < 1.5
        assert info.value.node == "blocks"
        assert info.value.error_type == "Timeout"
        assert "0.100" in info.value.error_message
    finally:
        release.set()
    # The thread finishes in the background; its late result is dropped.
    wait_until(lambda: finished == [True], what="the abandoned sync body to return")
    time.sleep(0.05)
    run = g.get_run(info.value.run_id, context=context)
    assert run.status is ff.RunStatus.FAILED
    assert {n.name: n.status for n in context.nodes(run.run_id)}["downstream"] == "pending"


def test_timeout_is_retried_like_an_error(context):
    g = ff.Graph("timeout_retry")
    attempts = []

    @g.task(timeout=0.1, retry=ff.Retry(attempts=3, backoff=0.01, on=(ValueError,)))
    async def slow_then_fast(ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(5)
        return ctx.attempt

    result = g.run(None, context=context, timeout=5)
    assert result.output == 2
    assert attempts == [1, 2]


async def test_timeout_events(context):
    g = ff.Graph("timeout_events")

    @g.task(timeout=0.05, retry=ff.Retry(attempts=2, backoff=0.01))
    async def sleepy(ctx):
        await asyncio.sleep(1 if ctx.attempt == 1 else 0)
        return "rested"

    events = await collect(g.stream(None, context=context, until_finished=True))
    failed = events[first(events, ev.NodeFailed, node="sleepy")]
    assert failed.error.type == "Timeout"
    assert failed.retry_in is not None
    assert events[-1].output == "rested"
