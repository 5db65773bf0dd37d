"""`ferroflow worker` processes pick up the runs of a process that died, by themselves.

The starting process and the workers run as real processes on one SQLite file; they are
killed with SIGKILL at arbitrary points and nobody calls resume: the workers find the tasks
whose lease ran out in the file's queue and finish the runs.
"""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest

import ferroflow as ff
from ferroflow.cli import open_context
from helpers import context_spec

RUNS = 60
LEASE = "0.6"
WORKER_OPTIONS = ["--concurrency", "8", "--lease", LEASE, "--grace", "5"]


def diamond_app(name, pause):
    """The source of a module defining the graph `diamond` named `name`: split -> left and
    right -> join, every body logging `run node attempt pid` to FERROFLOW_TEST_LOG and then
    sleeping `pause` (a Python expression; `ctx` is the node's context)."""
    return f"""
import os, random, time
import ferroflow as ff

def log(ctx):
    with open(os.environ["FERROFLOW_TEST_LOG"], "a") as f:
        f.write(f"{{ctx.run_id}} {{ctx.node}} {{ctx.attempt}} {{os.getpid()}}\\n")
    time.sleep({pause})

diamond = ff.Graph("{name}")

@diamond.task
def split(input, ctx):
    log(ctx)
    return input

@diamond.task
def left(split, ctx):
    log(ctx)
    return split * 2

@diamond.task
def right(split, ctx):
    log(ctx)
    return split + 100

@diamond.task
def join(left, right, ctx):
    log(ctx)
    return left + right
"""


# Bodies that take a little time, so that kills land mid-body.
GRAPH = diamond_app("worker_diamond", "random.random() * 0.1")

STARTER = """
import sys
from ferroflow.cli import open_context
from app import diamond

context = open_context(sys.argv[1], lease=float(sys.argv[3]))
ids = [f"r{i}" for i in range(int(sys.argv[2]))]
for run_id in ids:
    diamond.start(int(run_id[1:]), run_id=run_id, context=context)
print("started", flush=True)
for run_id in ids:
    diamond.wait(run_id, context=context, timeout=60)
print("done", flush=True)
"""


def worker(tmp_path, db, env):
    return subprocess.Popen(
        [sys.executable, "-m", "ferroflow.cli", "worker", "app:diamond", "--context", str(db), *WORKER_OPTIONS],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(what, condition, timeout=60.0, every=0.05):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


@pytest.mark.parametrize("store", ["sqlite", "redis", "nats"])
def test_workers_finish_the_runs_of_killed_processes_without_resume(tmp_path, store):
    (tmp_path / "app.py").write_text(GRAPH)
    db = context_spec(store, tmp_path)
    log = tmp_path / "calls.log"
    log.touch()
    env = dict(os.environ, FERROFLOW_TEST_LOG=str(log), PYTHONPATH=str(tmp_path))
    rng = random.Random(11)

    # The process that starts the runs dies with all of them in flight.
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(db), str(RUNS), LEASE],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout.readline().strip() == "started"
    time.sleep(0.03 + rng.random() * 0.1)
    starter.send_signal(signal.SIGKILL)
    starter.communicate(timeout=10)
    context = open_context(db)
    unfinished = [r for r in context.runs(limit=1000) if r.status is not ff.RunStatus.COMPLETED]
    assert len(context.runs(limit=1000)) == RUNS
    assert unfinished, "the starter finished every run before the kill; the test proved nothing"

    # Two workers take over; one of them is killed in turn, and a third one starts.
    first, second = worker(tmp_path, db, env), worker(tmp_path, db, env)
    survivors = [second]

    def completed():
        return sum(1 for r in context.runs(limit=1000) if r.status is ff.RunStatus.COMPLETED)

    try:
        before = completed()
        wait_for("the workers to make progress", lambda: completed() > before + 3)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        survivors.append(worker(tmp_path, db, env))
        wait_for("every run to complete", lambda: completed() == RUNS, timeout=45)
    finally:
        # SIGTERM stops the survivors gracefully (and nothing outlives the test).
        for proc in [first, *survivors]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=30)[1] for proc in survivors]
    for proc, err in zip(survivors, errors):
        assert proc.returncode == 0, err[-3000:]
        assert "stopped (SIGTERM)" in err, err[-3000:]

    executed = defaultdict(list)
    pids = defaultdict(set)
    for line in log.read_text().splitlines():
        run_id, node, attempt, pid = line.split()
        executed[(run_id, node)].append(int(attempt))
        pids[run_id].add(pid)
    runs = context.runs(limit=1000)
    assert sorted(r.run_id for r in runs) == sorted(f"r{i}" for i in range(RUNS)), "a run was lost or duplicated"
    for i in range(RUNS):
        run_id = f"r{i}"
        journal = context.journal(run_id)
        finished = [e for e in journal if isinstance(e, ff.events.RunFinished)]
        assert len(finished) == 1 and finished[0].output == i * 2 + i + 100, (run_id, finished)
        completed_at = defaultdict(list)
        for event in journal:
            if isinstance(event, ff.events.NodeCompleted):
                completed_at[event.node].append(event.attempt)
        assert sorted(completed_at) == ["join", "left", "right", "split"], (run_id, dict(completed_at))
        for node, attempts in completed_at.items():
            assert len(attempts) == 1, f"{run_id}/{node} completed twice: {attempts}"
            ran = executed[(run_id, node)]
            assert max(ran) == attempts[0], f"{run_id}/{node} ran as {ran} after completing as {attempts[0]}"
            assert len(ran) == len(set(ran)), f"{run_id}/{node} ran one attempt twice: {ran}"
    taken_over = [run_id for run_id, who in pids.items() if len(who) > 1]
    assert taken_over, "no run was continued by a process other than the one that started it"
    interrupted = sum(1 for ran in executed.values() if max(ran) > 1)
    print({"unfinished_at_kill": len(unfinished), "runs_taken_over": len(taken_over), "interrupted": interrupted})
    if store != "sqlite":
        context.delete_namespace()


def test_a_context_that_does_not_execute_hands_its_runs_to_workers(tmp_path):
    (tmp_path / "app.py").write_text(GRAPH)
    db = tmp_path / "runs.db"
    log = tmp_path / "calls.log"
    log.touch()
    env = dict(os.environ, FERROFLOW_TEST_LOG=str(log), PYTHONPATH=str(tmp_path))
    workers = [worker(tmp_path, db, env) for _ in range(2)]
    sys.path.insert(0, str(tmp_path))
    try:
        from app import diamond

        submitter = ff.Sqlite(db, execute=False)
        results = diamond.map(range(40), context=submitter, concurrency=20)
        # The workers registered the graph they run: its structure is known without its code.
        (graph,) = submitter.graphs()
        assert (graph.name, graph.version) == ("worker_diamond", diamond.version)
        assert sorted(node["name"] for node in graph.spec["nodes"]) == ["join", "left", "right", "split"]
        listed = subprocess.run(
            [sys.executable, "-m", "ferroflow.cli", "graphs", "--context", str(db)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split("\n")[1].split()[:3] == ["worker_diamond", diamond.version, "4"], listed.stdout
        assert results == [i * 2 + i + 100 for i in range(40)]
        assert diamond.run(7, context=submitter, run_id="single").output == 7 * 2 + 7 + 100

        # Another process's view: events of a run executed by a worker, watched from here.
        async def watch():
            diamond.start(1000, context=submitter, run_id="watched")
            return [e async for e in diamond.watch("watched", context=ff.Sqlite(db), until_finished=True)]

        events = asyncio.run(watch())
        kinds = [type(e).__name__ for e in events]
        assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished", kinds
        assert events[-1].output == 1000 * 2 + 1000 + 100
        assert [e.seq for e in events] == sorted(e.seq for e in events)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("app", None)
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.communicate(timeout=30)

    pids = {line.split()[3] for line in log.read_text().splitlines()}
    assert str(os.getpid()) not in pids, "the submitting process ran a node"
    assert len(pids) == 2, f"both workers took part: {pids}"


def test_ferroflow_map_writes_results_in_input_order_and_resumes_a_killed_batch(tmp_path):
    (tmp_path / "app.py").write_text(GRAPH)
    db = tmp_path / "runs.db"
    log = tmp_path / "calls.log"
    log.touch()
    env = dict(os.environ, FERROFLOW_TEST_LOG=str(log), PYTHONPATH=str(tmp_path))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(f"{i}\n" for i in range(50)))
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "ferroflow.cli", "map", "app:diamond", "--input", str(inputs)]
    command += ["--output", str(out), "--context", str(db), "--concurrency", "10"]

    # The first attempt dies part-way through the batch.
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("some runs to complete", lambda: log.read_text().count(" join ") >= 5)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    # The output is opened before any run starts (a bad path fails at once), and written at the end.
    assert out.read_text() == ""
    ran_before = log.read_text().splitlines()
    store = ff.Sqlite(db)
    completed_before = {
        (run.run_id, event.node)
        for run in store.runs(limit=1000)
        for event in store.journal(run.run_id)
        if isinstance(event, ff.events.NodeCompleted)
    }
    assert completed_before, "nothing completed before the kill; the test proved nothing"

    # Mapping the same file again resumes the batch: nothing completed runs again.
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "50 runs in batch" in again.stderr and "0 failed" in again.stderr, again.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["output"] for r in records] == [i * 2 + i + 100 for i in range(50)]
    assert [r["status"] for r in records] == ["completed"] * 50
    assert len({r["run_id"] for r in records}) == 50
    assert len(ff.Sqlite(db).runs(limit=1000)) == 50, "the second map started no new runs"

    ran_after = log.read_text().splitlines()[len(ran_before) :]
    repeated = {tuple(line.split()[:2]) for line in ran_after} & completed_before
    assert not repeated, f"runs finished before the kill ran again: {sorted(repeated)[:5]}"

    # A third map of a finished batch only reports it.
    lines_before = len(log.read_text().splitlines())
    third = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert third.returncode == 0, third.stderr[-3000:]
    assert len(log.read_text().splitlines()) == lines_before, "a finished batch ran nodes again"
    assert out.read_text().splitlines() == [json.dumps(r) for r in records]


def test_a_worker_hands_back_runs_of_a_graph_version_it_does_not_have(tmp_path):
    (tmp_path / "app.py").write_text(GRAPH)
    # The same graph name with one more node: another version.
    (tmp_path / "app2.py").write_text(
        GRAPH + "\n@diamond.task\ndef extra(join, ctx):\n    log(ctx)\n    return join + 1\n"
    )
    db = tmp_path / "runs.db"
    log = tmp_path / "calls.log"
    log.touch()
    env = dict(os.environ, FERROFLOW_TEST_LOG=str(log), PYTHONPATH=str(tmp_path))
    old = worker(tmp_path, db, env)
    sys.path.insert(0, str(tmp_path))
    try:
        from app2 import diamond as newer

        submitter = ff.Sqlite(db, execute=False)
        newer.start(1, context=submitter, run_id="new-version")
        time.sleep(1.5)
        assert newer.get_run("new-version", context=submitter).status is ff.RunStatus.RUNNING
        assert log.read_text() == "", "the old worker ran a node of the new version"
        upgraded = subprocess.Popen(
            [sys.executable, "-m", "ferroflow.cli", "worker", "app2:diamond", "--context", str(db), *WORKER_OPTIONS],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert newer.wait("new-version", context=submitter, timeout=30).output == 1 * 2 + 1 + 100 + 1
        finally:
            upgraded.send_signal(signal.SIGTERM)
            upgraded.communicate(timeout=30)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("app2", None)
        old.send_signal(signal.SIGTERM)
        _, err = old.communicate(timeout=30)
    assert "handing the work back" in err and newer.version in err, err[-3000:]


# Fast bodies, `left` slow enough that a kill finds nodes running.
FAST_GRAPH = diamond_app("batch_diamond", "0.005 if ctx.node == 'left' else 0")

BATCH = 2000


class Batch:
    """A batch of `size` runs of FAST_GRAPH submitted with `ferroflow map --no-execute` to
    `ferroflow worker` processes on the context `spec`, from a fresh directory."""

    def __init__(self, tmp_path, spec, size, lease="0.6"):
        (tmp_path / "app.py").write_text(FAST_GRAPH)
        self.tmp_path, self.spec, self.size = tmp_path, spec, size
        self.log = tmp_path / "calls.log"
        self.log.touch()
        self.env = dict(os.environ, FERROFLOW_TEST_LOG=str(self.log), PYTHONPATH=str(tmp_path))
        self.out = tmp_path / "out.jsonl"
        self.options = ["--concurrency", "8", "--lease", lease, "--grace", "5"]
        self.workers = []
        self.submit = None

    def start_worker(self):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferroflow.cli", "worker", "app:diamond", "--context", self.spec, *self.options],
            cwd=self.tmp_path,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.workers.append(proc)
        return proc

    def submit_all(self):
        inputs = self.tmp_path / "in.jsonl"
        inputs.write_text("".join(f"{i}\n" for i in range(self.size)))
        command = [sys.executable, "-m", "ferroflow.cli", "map", "app:diamond", "--input", str(inputs)]
        command += ["--output", str(self.out), "--context", self.spec, "--no-execute", "--concurrency", "200"]
        self.submit = subprocess.Popen(
            command, cwd=self.tmp_path, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def joins(self):
        return self.log.read_text().count(" join ")

    def last_call(self, pid):
        """The node of the log's last line if worker `pid` wrote it."""
        with open(self.log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200))
            lines = f.read().decode(errors="replace").splitlines()
        parts = lines[-1].split() if lines else []
        return parts[1] if len(parts) == 4 and parts[3] == str(pid) else None

    def finish(self, timeout):
        """Waits for the submitter, then stops the workers (see `stop`); if the submitter
        does not finish in time, fails with what the workers logged."""
        try:
            _, err = self.submit.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            logs = "\n".join(f"worker {proc.pid}:\n{err[-2000:]}" for proc, err in self.stopped)
            raise AssertionError(f"the batch did not finish in {timeout} s; the workers logged:\n{logs}") from None
        try:
            assert self.submit.returncode == 0, err[-3000:]
        finally:
            self.stop()

    def stop(self):
        """Stops whatever still runs: the submitter with SIGKILL, the workers with SIGTERM
        (SIGKILL if they do not exit); `stopped` holds each worker with its stderr."""
        if self.submit is not None and self.submit.poll() is None:
            self.submit.kill()
            self.submit.communicate()
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        self.stopped = []
        for proc in self.workers:
            try:
                self.stopped.append((proc, proc.communicate(timeout=30)[1]))
            except subprocess.TimeoutExpired:
                proc.kill()
                self.stopped.append((proc, proc.communicate()[1]))

    def check(self):
        """Every run completed once, with the result a real-time run in memory gives, and no
        completed node ran again; returns how many nodes ran more than once (interrupted
        attempts run again)."""
        sys.path.insert(0, str(self.tmp_path))
        try:
            import app

            os.environ["FERROFLOW_TEST_LOG"] = str(self.tmp_path / "realtime.log")
            expected = app.diamond.map(range(self.size), context=ff.InMemory())
        finally:
            sys.path.remove(str(self.tmp_path))
            sys.modules.pop("app", None)
            del os.environ["FERROFLOW_TEST_LOG"]
        records = [json.loads(line) for line in self.out.read_text().splitlines()]
        assert [r["output"] for r in records] == expected

        executed = defaultdict(list)
        for line in self.log.read_text().splitlines():
            run_id, node, attempt, _ = line.split()
            executed[(run_id, node)].append(int(attempt))
        context = open_context(self.spec)
        runs = context.runs(limit=10 * self.size)
        assert len(runs) == self.size, "a run was lost or duplicated"
        assert {r.status for r in runs} == {ff.RunStatus.COMPLETED}
        rerun = 0
        for record in records:
            completed = [e for e in context.journal(record["run_id"]) if isinstance(e, ff.events.NodeCompleted)]
            assert sorted(e.node for e in completed) == ["join", "left", "right", "split"], record
            for event in completed:
                ran = executed[(record["run_id"], event.node)]
                assert max(ran) == event.attempt, (
                    f"{record['run_id']}/{event.node} ran {ran}, completed {event.attempt}"
                )
                assert len(ran) == len(set(ran)), f"{record['run_id']}/{event.node} ran one attempt twice: {ran}"
                rerun += len(ran) > 1
        context.delete_namespace()
        return rerun


@pytest.mark.timeout(400)
@pytest.mark.parametrize("store", ["redis", "nats"])
def test_a_batch_survives_a_worker_killed_mid_way(tmp_path, store):
    """2,000 runs submitted with `ferroflow map --no-execute` to two workers; one is killed
    with SIGKILL a quarter of the way through and another starts. Every run completes once,
    with the result a real-time run gives, and no completed node runs again."""
    batch = Batch(tmp_path, context_spec(store, tmp_path), BATCH)
    try:
        first, _ = batch.start_worker(), batch.start_worker()
        batch.submit_all()
        wait_for("a quarter of the batch", lambda: batch.joins() >= BATCH // 4, timeout=120)
        # Killed in the middle of a run: just after it logged the start of a `left`, which
        # then sleeps 5 ms.
        started = lambda: batch.last_call(first.pid) == "left"  # noqa: E731
        wait_for("the first worker to start a node", started, timeout=60, every=0.0005)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        batch.start_worker()
        batch.finish(timeout=300)
    finally:
        batch.stop()
    rerun = batch.check()
    # The killed worker left runs half done, which others finished: a node of theirs ran in
    # the killed worker and another in a worker that took the run over (with `rerun`, some
    # were interrupted mid-node and ran again).
    pids = defaultdict(set)
    for line in batch.log.read_text().splitlines():
        run_id, _, _, pid = line.split()
        pids[run_id].add(int(pid))
    taken_over = sum(1 for who in pids.values() if first.pid in who and len(who) > 1)
    by_pid = Counter(pid for who in pids.values() for pid in who)
    assert taken_over > 0, f"the killed worker left no run half done; the test proved nothing: {by_pid}"
    print({"store": store, "runs_taken_over": taken_over, "nodes_run_again": rerun})
