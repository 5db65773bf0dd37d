"""``graph.map``: many runs at once, outputs in input order, failures and progress."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import ferroflow as ff


def square_graph(name: str = "squares") -> ff.Graph:
    g = ff.Graph(name)

    @g.task
    async def square(input):
        # Larger inputs finish first, so completion order is the reverse of input order.
        await asyncio.sleep(0.002 * (20 - input))
        if input < 0:
            raise ValueError(f"negative: {input}")
        return input * input

    return g


def test_results_in_input_order(context):
    g = square_graph()
    assert g.map(list(range(20)), context=context) == [i * i for i in range(20)]
    assert len(context.run_ids()) == 20


def test_empty_inputs(context):
    calls = []
    progress = []
    g = ff.Graph("empty_batch")
    g.task(name="echo")(lambda input: calls.append(input))
    assert g.map([], context=context, progress=lambda done, total: progress.append((done, total))) == []
    assert calls == []
    assert progress[-1] == (0, 0)


def test_accepts_any_iterable(context):
    g = square_graph("squares_iter")
    assert g.map((i for i in range(5)), context=context) == [0, 1, 4, 9, 16]


def test_failure_raises_after_every_run_settled(context):
    g = square_graph("squares_fail")
    with pytest.raises(ff.RunFailedError) as info:
        g.map([1, -2, 3, 4], context=context)
    assert info.value.error_type == "ValueError"
    assert "negative: -2" in info.value.error_message
    statuses = [g.get_run(r, context=context).status for r in context.run_ids()]
    assert len(statuses) == 4
    assert all(s.is_terminal for s in statuses), statuses


def test_return_exceptions_puts_errors_in_place(context):
    g = square_graph("squares_exc")
    out = g.map([1, -2, 3, -4], context=context, return_exceptions=True)
    assert out[0] == 1 and out[2] == 9
    for i in (1, 3):
        assert isinstance(out[i], ff.RunFailedError)
        assert out[i].node == "square"
        assert out[i].error_type == "ValueError"
    assert "-2" in out[1].error_message and "-4" in out[3].error_message
    assert out[1].run_id != out[3].run_id


def test_progress_ends_with_total(context):
    g = square_graph("squares_progress")
    calls = []
    g.map(list(range(10)), context=context, progress=lambda done, total: calls.append((done, total)))
    assert calls, "progress was never called"
    assert calls[-1] == (10, 10)
    assert all(total == 10 and 0 <= done <= 10 for done, total in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls), "progress never goes backwards"


def test_progress_is_reported_while_runs_go_on(context):
    g = ff.Graph("slow_batch")

    @g.task
    async def slow(input):
        await asyncio.sleep(0.1 * input)
        return input

    calls = []
    g.map([1, 2, 3], context=context, concurrency=3, progress=lambda d, t: calls.append(d))
    assert calls[-1] == 3
    assert any(0 < d < 3 for d in calls), f"no intermediate progress in {calls}"


def test_concurrency_limits_runs_in_flight(context):
    g = ff.Graph("limited")
    lock = threading.Lock()
    current = peak = 0

    @g.task
    def work(input):
        nonlocal current, peak
        with lock:
            current += 1
            peak = max(peak, current)
        time.sleep(0.02)
        with lock:
            current -= 1
        return input

    assert g.map(list(range(12)), context=context, concurrency=3) == list(range(12))
    assert 1 <= peak <= 3


def test_concurrency_must_be_positive(context):
    g = square_graph("squares_zero")
    with pytest.raises(ValueError):
        g.map([1], context=context, concurrency=0)


def test_runs_that_wait_return_their_result(context):
    g = ff.Graph("batch_human")

    @g.branch(labels=["ask", "auto"])
    def policy(input):
        return "ask" if input > 10 else "auto"

    @g.human(when={"policy": "ask"})
    def approve(input):
        return {"amount": input}

    @g.task
    def pay(approve, policy, input):
        return input

    out = g.map([5, 50], context=context)
    assert out[0] == 5
    assert isinstance(out[1], ff.RunResult)
    assert out[1].status is ff.RunStatus.WAITING
    assert out[1].waiting == {"approve": {"amount": 50}}
    assert g.resume(out[1].run_id, "ok", context=context, timeout=5).output == 50


def test_sync_bodies_in_batch(context):
    g = ff.Graph("sync_batch")
    g.task(name="inc")(lambda input: input + 1)
    assert g.map(range(100), context=context, concurrency=8) == list(range(1, 101))
