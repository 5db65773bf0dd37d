"""Ctrl-C, `sys.exit()` and blocking calls inside bodies: an interruption gives the attempt
up without failing the run (it stays resumable, in every context), the exception reaches
whoever waits for the run, and ferroflow's event loop keeps serving; a blocking call that
would wait for ever is refused at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

import ferroflow as ff
from helpers import reopen


def flaky_graph(name: str, exception: BaseException, *, is_async: bool) -> ff.Graph:
    """`first` -> `second` -> `third`; `second` raises `exception` on its first attempt."""
    g = ff.Graph(name)
    attempts: list = []

    @g.task
    def first(input):
        return input + 1

    def body(first, ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise exception
        return first * 10

    async def async_body(first, ctx):
        return body(first, ctx)

    g.task(async_body if is_async else body, name="second")

    @g.task
    def third(second):
        return second + 1

    g.attempts = attempts  # type: ignore[attr-defined]
    return g


def interruptions(events):
    return [e for e in events if type(e).__name__ == "NodeFailed" and e.error.type == "Interrupted"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_keyboard_interrupt_in_a_body_interrupts_the_caller_and_the_run_resumes(context, is_async):
    g = flaky_graph(f"ki_{is_async}", KeyboardInterrupt(), is_async=is_async)
    with pytest.raises(KeyboardInterrupt):
        g.run(1, context=context, run_id=f"ki-{is_async}", timeout=10)
    # Nothing was recorded for the attempt: the run is not failed, in this process or the store.
    assert g.get_run(f"ki-{is_async}", context=context).status is ff.RunStatus.RUNNING
    assert [r.status for r in reopen(context).runs() if r.run_id == f"ki-{is_async}"] == [ff.RunStatus.RUNNING]
    done = g.resume(f"ki-{is_async}", context=context, timeout=10)
    assert done.output == 21
    assert g.attempts == [1, 2]
    interrupted = interruptions(context.journal(f"ki-{is_async}"))
    assert [(e.node, e.attempt) for e in interrupted] == [("second", 1)]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_system_exit_in_a_body_exits_the_caller_with_its_code(context, is_async):
    g = flaky_graph(f"exit_{is_async}", SystemExit(3), is_async=is_async)
    with pytest.raises(SystemExit) as exited:
        g.run(1, context=context, run_id=f"exit-{is_async}", timeout=10)
    assert exited.value.code == 3
    assert g.resume(f"exit-{is_async}", context=context, timeout=10).output == 21


def test_the_event_loop_keeps_serving_async_bodies_after_an_interruption():
    broken = flaky_graph("loop_survives", KeyboardInterrupt(), is_async=True)
    with pytest.raises(KeyboardInterrupt):
        broken.run(1, timeout=10)
    later = ff.Graph("later")

    @later.task
    async def answer(input):
        return input * 2

    started = time.monotonic()
    assert later.run(21, timeout=10).output == 42
    assert time.monotonic() - started < 5


CTRL_C_APP = """
import sys, time
import ferroflow as ff

g = ff.Graph("ctrl_c")

@g.task
def first(input):
    return 1

@g.task
def slow(first, ctx):
    if ctx.attempt == 1:
        print("sleeping", flush=True)
        time.sleep(60)
    return first + 1

if __name__ == "__main__":
    g.run(None, context=ff.Sqlite(sys.argv[1]), run_id="interrupted", timeout=None)
"""


def test_ctrl_c_during_a_sync_body_leaves_a_durable_run_resumable(tmp_path):
    (tmp_path / "ctrl_c_app.py").write_text(CTRL_C_APP)
    db = tmp_path / "runs.db"
    proc = subprocess.Popen(
        [sys.executable, "ctrl_c_app.py", str(db)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "sleeping"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in stderr, stderr
    context = ff.Sqlite(db)
    assert [r.status for r in context.runs()] == [ff.RunStatus.RUNNING], "Ctrl-C did not fail the run"
    sys.path.insert(0, str(tmp_path))
    try:
        import ctrl_c_app
    finally:
        sys.path.remove(str(tmp_path))
    done = ctrl_c_app.g.resume("interrupted", context=context, timeout=30)
    assert done.status is ff.RunStatus.COMPLETED and done.output == 2
    assert [(e.node, e.attempt) for e in interruptions(context.journal("interrupted"))] == [("slow", 1)]


def test_a_blocking_run_inside_an_async_body_on_ferroflows_loop_is_refused_at_once():
    inner = ff.Graph("inner_async")

    @inner.task
    async def inside(input):
        return input + 1

    outer = ff.Graph("outer_async")

    @outer.task
    async def calls_run(input):
        return inner.run(input, timeout=30).output

    started = time.monotonic()
    with pytest.raises(ff.RunFailedError) as failed:
        outer.run(1, timeout=30)
    assert time.monotonic() - started < 5, "refused at once, not after a timeout"
    assert failed.value.error_type == "RuntimeError"
    assert "await inner_async.arun" in failed.value.error_message

    # Through `arun` it works.
    arun_outer = ff.Graph("outer_arun")

    @arun_outer.task
    async def awaits(input):
        return (await inner.arun(input)).output

    assert arun_outer.run(1, timeout=30).output == 2
