"""What a process sees of a run agrees with its store and with memory: a process whose
waiting run another process answered sees the answer; node states read from a store are
the core's derivation, the same as in memory; a run submitted for a graph version no worker
registered says so when a wait for it times out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

import ferroflow as ff
from helpers import collect, reopen


def approval(name: str = "stale_view") -> ff.Graph:
    g = ff.Graph(name)

    @g.task
    def draft(input):
        return f"draft {input}"

    @g.human
    def review(draft):
        return {"text": draft}

    @g.task
    def publish(review, draft):
        return {"published": draft, "by": review}

    return g


def test_the_starting_process_sees_an_answer_given_elsewhere(context):
    if not context.durable:
        pytest.skip("one process holds a run in memory")
    g = approval()
    assert g.run(1, context=context, run_id="asked", timeout=10).status is ff.RunStatus.WAITING
    answered = g.resume("asked", "ana", context=reopen(context), timeout=10)
    assert answered.status is ff.RunStatus.COMPLETED
    # Every way this process looks at the run sees it finished, as the store says.
    assert g.get_run("asked", context=context).status is ff.RunStatus.COMPLETED
    assert g.wait("asked", context=context, timeout=5).output == answered.output
    assert g.run(1, context=context, run_id="asked", timeout=5).output == answered.output
    assert type(context.journal("asked")[-1]).__name__ == "RunFinished"
    assert {n.name: n.status for n in context.nodes("asked")} == {
        "draft": "completed",
        "review": "completed",
        "publish": "completed",
    }
    assert [r.status for r in context.runs() if r.run_id == "asked"] == [ff.RunStatus.COMPLETED]


async def test_a_watch_to_the_end_sees_an_answer_given_elsewhere(context):
    if not context.durable:
        pytest.skip("one process holds a run in memory")
    g = approval("stale_watch")
    assert (await g.arun(1, context=context, run_id="watched")).status is ff.RunStatus.WAITING
    events = asyncio.ensure_future(collect(g.watch("watched", context=context, until_finished=True), limit=20))
    await asyncio.sleep(0.3)
    other = reopen(context)
    await asyncio.get_running_loop().run_in_executor(None, lambda: g.resume("watched", "bo", context=other, timeout=10))
    seen = await events
    assert type(seen[-1]).__name__ == "RunFinished"
    assert seen[-1].status is ff.RunStatus.COMPLETED


def test_node_states_from_the_store_are_the_same_derivation_as_in_memory(context):
    g = ff.Graph("views")

    @g.task
    def items(input):
        return []

    @g.each(over="items")
    def each(item):
        return item

    @g.branch(labels=["yes", "no"])
    def route(input):
        return "no"

    @g.task(when={"route": "yes"})
    def skipped(input):
        return 1

    @g.task
    def joined(each, skipped):
        return {"each": each, "skipped": skipped}

    memory = g.run(None, context=ff.InMemory(), run_id="v", timeout=10)
    result = g.run(None, context=context, run_id="v", timeout=10)
    assert result.output == memory.output == {"each": [], "skipped": None}
    expected = {
        "items": "completed",
        "each": "completed",
        "route": "completed",
        "skipped": "skipped",
        "joined": "completed",
    }
    for seen in (context, reopen(context)):
        nodes = seen.nodes("v")
        assert {n.name: n.status for n in nodes} == expected
        assert {n.name: n.kind for n in nodes}["each"] == "map"
        # A map over nothing completes without an entry of its own; every other node has one.
        assert [n.name for n in nodes if n.finished_at is None] == ["each"]


KILLED_APP = """
import sys, time
import ferroflow as ff
from ferroflow.cli import open_context

g = ff.Graph("killed_view")

@g.task
def first(input):
    return 1

@g.task
def stuck(first):
    print("started", flush=True)
    time.sleep(60)
    return 2

g.run(None, context=open_context(sys.argv[1]), run_id="killed", timeout=120)
"""


def test_a_node_killed_mid_body_is_listed_running_in_every_view(tmp_path):
    (tmp_path / "app.py").write_text(KILLED_APP)
    db = tmp_path / "runs.db"
    with subprocess.Popen([sys.executable, "app.py", str(db)], cwd=tmp_path, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout.readline().strip() == "started"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    context = ff.Sqlite(db)
    assert {n.name: n.status for n in context.nodes("killed")} == {"first": "completed", "stuck": "running"}
    assert [r.status for r in context.runs()] == [ff.RunStatus.RUNNING]
    listed = subprocess.run(
        [sys.executable, "-m", "ferroflow.cli", "runs", "list", "--context", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown = subprocess.run(
        [sys.executable, "-m", "ferroflow.cli", "runs", "show", "killed", "--context", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and shown.returncode == 0, listed.stderr + shown.stderr
    assert "running" in listed.stdout
    status_line = next(line for line in shown.stdout.splitlines() if line.startswith("status"))
    assert status_line.split()[1] == "running", shown.stdout
    stuck_line = next(line for line in shown.stdout.splitlines() if line.startswith("stuck"))
    assert "running" in stuck_line, shown.stdout


def test_a_run_for_a_version_no_worker_registered_says_so(tmp_path):
    submitter = ff.Sqlite(tmp_path / "runs.db", execute=False)
    g = ff.Graph("nobody_runs_this")

    @g.task
    def one(input):
        return 1

    run_id = g.start(None, context=submitter)
    with pytest.raises(ff.WaitTimeoutError) as waited:
        g.wait(run_id, context=submitter, timeout=0.5)
    message = str(waited.value)
    assert f"no worker registered graph 'nobody_runs_this' version {g.version}" in message, message
    # The graph's structure is known from the start, not as a worker's.
    (graph,) = submitter.graphs()
    assert (graph.name, graph.version, graph.worker) == ("nobody_runs_this", g.version, False)


def test_serving_beyond_loopback_needs_a_token(tmp_path):
    g = ff.Graph("exposed")

    @g.task
    def one(input):
        return 1

    context = ff.InMemory()
    with pytest.raises(ValueError, match="allow unauthenticated calls explicitly"):
        context.serve(g, listen="0.0.0.0:0")
    server = context.serve(g, listen="0.0.0.0:0", allow_unauthenticated=True)
    server.stop()
    server = context.serve(g, listen="127.0.0.1:0")
    server.stop()


def test_a_context_shows_no_credentials(tmp_path):
    redis = ff.Redis(namespace=f"creds{os.getpid()}")
    try:
        redis.url = "redis://:SECRETPW@127.0.0.1:6379"
        assert "SECRETPW" not in repr(redis) and "127.0.0.1:6379" in repr(redis)
    finally:
        redis.delete_namespace()
    for context in (ff.Nats, ff.Redis):
        with pytest.raises(ff.StoreError) as failed:
            context(f"{context.__name__.lower()}://alice:SECRETPW@127.0.0.1:1", namespace="creds")
        assert "SECRETPW" not in str(failed.value) and "127.0.0.1:1" in str(failed.value)
