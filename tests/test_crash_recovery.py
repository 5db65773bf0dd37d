"""Killing a durable process at arbitrary points loses nothing and repeats no completed node."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

import ferroflow as ff

TESTS = Path(__file__).parent
RUNS = 150

# A diamond with a join, whose bodies take a little time, so that kills land mid-body,
# between a commit and the dispatch that follows it, and while a join waits.
CHILD = """
import os, random, sys, time
import ferroflow as ff

log_path = os.environ["FERROFLOW_TEST_LOG"]

def log(ctx):
    with open(log_path, "a") as f:
        f.write(f"{ctx.run_id} {ctx.node} {ctx.attempt}\\n")
    time.sleep(random.random() * 0.02)

g = ff.Graph("diamond")

@g.task
def split(input, ctx):
    log(ctx)
    return input

@g.task
def left(split, ctx):
    log(ctx)
    return split * 2

@g.task
def right(split, ctx):
    log(ctx)
    return split + 100

@g.task
def join(left, right, ctx):
    log(ctx)
    return left + right

context = ff.Sqlite(sys.argv[1], durability=sys.argv[3])
runs = int(sys.argv[2])
# Ten runs in flight at a time. Starting a stored run id continues that run: this is how a
# restarted process picks up where the killed one stopped.
for batch in range(0, runs, 10):
    ids = [f"r{i}" for i in range(batch, min(batch + 10, runs))]
    for run_id in ids:
        g.start(int(run_id[1:]), run_id=run_id, context=context)
    for run_id in ids:
        g.wait(run_id, context=context, timeout=60)
print("done")
"""


@pytest.mark.parametrize("durability", ["commit", "batch"])
def test_sigkill_at_random_points_then_restart(tmp_path, durability):
    """With every step committed before what follows it runs, no completed node's body runs
    again. With group commit, a kill loses the last window of steps: their bodies may run
    again (that is the setting's documented risk), but every run still completes once,
    with the right result, and the journal records each node's completion once."""
    db = tmp_path / "runs.db"
    log = tmp_path / "calls.log"
    log.touch()
    env = dict(os.environ, FERROFLOW_TEST_LOG=str(log))
    rng = random.Random(7)
    kills = 0
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), str(RUNS), durability], env=env, stdout=subprocess.DEVNULL
        )
        time.sleep(0.2 + rng.random() * 0.4)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait(timeout=30)
    final = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), str(RUNS), durability],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert final.stdout.strip() == "done"

    context = ff.Sqlite(db)
    runs = context.runs(limit=1000)
    assert sorted(r.run_id for r in runs) == sorted(f"r{i}" for i in range(RUNS)), "a run was lost or duplicated"
    assert {r.status for r in runs} == {ff.RunStatus.COMPLETED}

    executed = defaultdict(list)
    for line in log.read_text().splitlines():
        run_id, node, attempt = line.split()
        executed[(run_id, node)].append(int(attempt))

    for i in range(RUNS):
        run_id = f"r{i}"
        journal = context.journal(run_id)
        finished = [e for e in journal if isinstance(e, ff.events.RunFinished)]
        assert len(finished) == 1 and finished[0].output == i * 2 + i + 100, (run_id, finished)
        completed = defaultdict(list)
        for event in journal:
            if isinstance(event, ff.events.NodeCompleted):
                completed[event.node].append(event.attempt)
        assert sorted(completed) == ["join", "left", "right", "split"], (run_id, dict(completed))
        for node, attempts in completed.items():
            assert len(attempts) == 1, f"{run_id}/{node} completed twice: {attempts}"
            ran = executed[(run_id, node)]
            assert ran, f"{run_id}/{node} completed without its body running"
            if durability == "commit":
                # A body runs again only while its result is unrecorded, each time as the
                # next attempt; once recorded, no later attempt exists.
                assert max(ran) == attempts[0], f"{run_id}/{node} ran as {ran} after completing as {attempts[0]}"
                assert len(ran) == len(set(ran)), f"{run_id}/{node} ran one attempt twice: {ran}"
    rerun = sum(1 for ran in executed.values() if len(ran) > 1)
    assert rerun > 0, f"no kill landed mid-run ({kills} kills); the test proved nothing"
    total = sum(len(v) for v in executed.values())
    print(json.dumps({"kills": kills, "nodes_run_again": rerun, "body_executions": total, "nodes": RUNS * 4}))
