"""Zombie workers: a worker paused past its lease (SIGSTOP: a GC pause, a frozen VM) while
the others take its runs over, then woken (SIGCONT), runs no body of a node completed
elsewhere. Checked on every durable store over a batch of 1,000 runs, against the journal's
record of when each node completed and the bodies' own log of when each attempt started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

import ferroflow as ff
from ferroflow.cli import open_context
from helpers import context_spec

RUNS = 1000
LEASE = 0.5

APP = """
import os, random, time
import ferroflow as ff

def log(ctx, started):
    with open(os.environ["FERROFLOW_TEST_LOG"], "a") as f:
        f.write(f"{ctx.run_id} {ctx.node} {ctx.attempt} {os.getpid()} {started:.6f}\\n")
    time.sleep(random.random() * 0.1)

chain = ff.Graph("zombie_chain")

# Each body takes the time first: the moment its node's code starts.

@chain.task
def a(input, ctx):
    log(ctx, time.time())
    return input

@chain.task
def b(a, ctx):
    log(ctx, time.time())
    return a + 1

@chain.task
def c(a, ctx):
    log(ctx, time.time())
    return a * 2

@chain.task
def d(b, c, ctx):
    log(ctx, time.time())
    return b + c
"""

SUBMIT = """
import sys
from ferroflow.cli import open_context
from app import chain

context = open_context(sys.argv[1], execute=False)
for i in range(int(sys.argv[2])):
    chain.start(i, run_id=f"z{i}", context=context)
print("submitted", flush=True)
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("store", ["sqlite", "redis", "nats"])
def test_a_worker_woken_after_its_lease_runs_no_completed_node_again(tmp_path, store):
    (tmp_path / "app.py").write_text(APP)
    spec = context_spec(store, tmp_path)
    log = tmp_path / "calls.log"
    log.touch()
    env = dict(os.environ, FERROFLOW_TEST_LOG=str(log), PYTHONPATH=str(tmp_path))
    submit = subprocess.run(
        [sys.executable, "-c", SUBMIT, spec, str(RUNS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submit.returncode == 0, submit.stderr[-3000:]

    def worker(n):
        # The worker's log goes to a file: a pipe nobody reads until the end would fill
        # up with its warnings about lost leases and stop it.
        command = [sys.executable, "-m", "ferroflow.cli", "worker", "app:chain", "--context", spec]
        command += ["--concurrency", "16", "--lease", str(LEASE), "--grace", "5"]
        with open(tmp_path / f"worker{n}.log", "w") as err:
            return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)

    context = open_context(spec)

    def completed():
        return sum(1 for r in context.runs(limit=RUNS + 10) if r.status is ff.RunStatus.COMPLETED)

    workers = [worker(n) for n in range(3)]
    pauses = 0
    try:
        deadline = time.monotonic() + 240
        turn = 0
        while completed() < RUNS:
            if time.monotonic() > deadline:
                stuck = [r.run_id for r in context.runs(limit=RUNS + 10) if r.status is not ff.RunStatus.COMPLETED]
                stories = {
                    run_id: [
                        (type(e).__name__, e.node if hasattr(e, "node") else None, e.at)
                        for e in context.journal(run_id)
                    ]
                    for run_id in stuck[:3]
                }
                raise AssertionError(f"{completed()} of {RUNS} runs completed; stuck: {stories}")
            # Pause one worker in turn for three leases (the others take its runs over),
            # then wake it while they run what it had, and pause the next.
            victim = workers[turn % len(workers)]
            turn += 1
            victim.send_signal(signal.SIGSTOP)
            time.sleep(3 * LEASE)
            victim.send_signal(signal.SIGCONT)
            pauses += 1
            time.sleep(0.2)
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=60)
    for n, proc in enumerate(workers):
        assert proc.returncode == 0, (tmp_path / f"worker{n}.log").read_text()[-3000:]

    started = defaultdict(list)  # (run, node) -> [(attempt, pid, time)]
    for line in log.read_text().splitlines():
        run_id, node, attempt, pid, at = line.split()
        started[(run_id, node)].append((int(attempt), pid, float(at)))
    rerun_after_completion = []
    taken_over = interrupted = 0
    for i in range(RUNS):
        run_id = f"z{i}"
        journal = context.journal(run_id)
        finished = [e for e in journal if isinstance(e, ff.events.RunFinished)]
        assert len(finished) == 1 and finished[0].output == (i + 1) + i * 2, (run_id, finished)
        completions = [e for e in journal if isinstance(e, ff.events.NodeCompleted)]
        assert sorted(e.node for e in completions) == ["a", "b", "c", "d"], run_id
        interrupted += sum(1 for e in journal if isinstance(e, ff.events.NodeFailed))
        if len({pid for ran in (started[(run_id, n)] for n in "abcd") for _, pid, _ in ran}) > 1:
            taken_over += 1
        for event in completions:
            # A body that started after its node was recorded completed ran a completed node.
            late = [(attempt, pid) for attempt, pid, at in started[(run_id, event.node)] if at > event.at + 0.001]
            rerun_after_completion.extend((run_id, event.node, attempt, pid) for attempt, pid in late)
    print({"store": store, "pauses": pauses, "runs_taken_over": taken_over, "interrupted_attempts": interrupted})
    assert pauses >= 2 and taken_over > 0, "no worker's runs were taken over: the test proved nothing"

    def story(run_id):
        """What the journal and the bodies' log say of a run, in time order."""
        events = [
            (e.at, type(e).__name__, getattr(e, "node", None), getattr(e, "attempt", None))
            for e in context.journal(run_id)
        ]
        ran = [
            (at, "started", node, attempt, pid)
            for (r, node), runs in started.items()
            if r == run_id
            for attempt, pid, at in runs
        ]
        return sorted(events + ran)

    assert rerun_after_completion == [], (
        f"{len(rerun_after_completion)} completed nodes ran again: {rerun_after_completion[:10]}; "
        f"the first run's story: {story(rerun_after_completion[0][0])}; worker pids: {[p.pid for p in workers]}"
    )
    if store != "sqlite":
        context.delete_namespace()
