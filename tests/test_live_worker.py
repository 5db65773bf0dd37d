"""A live worker keeps the runs it executes: a run submitted for workers that waits for a
person while another of its nodes is between retry attempts, and is answered through a
context that does not execute, is never taken over from its worker. No attempt of it is
journaled as interrupted, and no body runs twice. (Seen on NATS: a reader of the run
handed it out to any worker while its writer was still applying a step.)"""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest

import ferroflow as ff
from ferroflow.cli import open_context
from helpers import context_spec

RUNS = 40

APP = """
import os
import ferroflow as ff

g = ff.Graph("waits_and_retries")

def log(ctx):
    with open(os.environ["FERROFLOW_TEST_LOG"], "a") as f:
        f.write(f"{ctx.run_id} {ctx.node} {ctx.attempt}\\n")

@g.task
def start(input, ctx):
    log(ctx)
    return input

@g.human
def ask(start):
    return {"q": start}

@g.task(retry=ff.Retry(attempts=4, backoff=0.05, multiplier=1, jitter=0))
def flaky(start, ctx):
    log(ctx)
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt}")
    return start * 2

@g.task
def join(ask, flaky, ctx):
    log(ctx)
    return {"ask": ask, "flaky": flaky}
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("store", ["sqlite", "redis", "nats"])
def test_a_run_answered_elsewhere_stays_with_its_live_worker(tmp_path, store, monkeypatch):
    (tmp_path / "live_app.py").write_text(APP)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("FERROFLOW_TEST_LOG", str(log))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = context_spec(store, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    command = [sys.executable, "-m", "ferroflow.cli", "worker", "live_app:g", "--context", spec, "--lease", "2"]
    worker = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert "working on" in worker.stderr.readline()
        from live_app import g

        submitter = open_context(spec, execute=False)
        for i in range(RUNS):
            waiting = g.run(i, context=submitter, run_id=f"w{i}", timeout=60)
            assert waiting.status is ff.RunStatus.WAITING
            done = g.resume(f"w{i}", "yes", context=submitter, timeout=60)
            assert done.output == {"ask": "yes", "flaky": i * 2}
    finally:
        worker.terminate()
        worker.communicate(timeout=60)
    interrupted = [
        (i, e.node, e.attempt)
        for i in range(RUNS)
        for e in submitter.journal(f"w{i}")
        if isinstance(e, ff.events.NodeFailed) and e.error.type == "Interrupted"
    ]
    assert interrupted == []
    calls = collections.Counter(tuple(line.split()) for line in log.read_text().splitlines())
    assert [call for call, n in calls.items() if n > 1] == []
    assert sum(1 for (run, node, attempt) in calls if node == "flaky") == 3 * RUNS
    if store != "sqlite":
        submitter.delete_namespace()
