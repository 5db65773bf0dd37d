"""``ferroflow runs events``: a run's journal, one line (or one JSON object) per entry in
order, with the model and tokens of each model call and the tool calls; then per node its
start (when it became ready), finish, duration, attempts, model and tokens, and the run's
totals; with ``--follow``, the entries of a run still running, until it finishes.

The command runs as a subprocess on a SQLite file in ``tmp_path`` (the main case on Redis
too, in a namespace of its own, deleted afterwards), on the graphs of ``cli_app.py``."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

import ferroflow as ff
from ferroflow import events as ev
from ferroflow.cli.common import _when
from ferroflow.cli.events import node_summaries
from ferroflow.cli.load import open_context

TESTS = Path(__file__).parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
LINE = re.compile(r"(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\s+(?P<seq>\d+)  (?P<kind>[A-Za-z]+)\s+(?P<rest>.*)")


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ferroflow.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=ENV, cwd=cwd)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def entry(journal: Sequence[ev.Event], kind: type, **attrs: Any) -> Any:
    found = [e for e in journal if isinstance(e, kind) and all(getattr(e, k) == v for k, v in attrs.items())]
    assert len(found) == 1, (kind, attrs, found)
    return found[0]


def tokens_text(usage: Dict[str, int]) -> str:
    return f"{usage['total_tokens']} tokens ({usage['prompt_tokens']} prompt, {usage['completion_tokens']} completion)"


def as_json(event: ev.Event) -> Dict[str, Any]:
    record = dataclasses.asdict(event)
    if "status" in record:
        record["status"] = record["status"].value
    return json.loads(json.dumps(record))


@pytest.mark.parametrize("spec", ["sqlite", "redis"], indirect=True)
def test_events_prints_every_entry_in_order_then_each_node_and_the_totals(tmp_path: Path, spec: str) -> None:
    (tmp_path / "in.jsonl").write_text('{"n": 4}\n{"n": 2, "fail": true}\n')
    done = cli(tmp_path, "map", "cli_app:nightly", "--input", "in.jsonl", "--output", "out.jsonl", "--context", spec,
               "--batch", "ev", "-q")  # fmt: skip
    assert done.returncode == 1, done.stderr  # ev-1 failed
    context = open_context(spec)
    journal = context.journal("ev-0")

    out = ok(cli(tmp_path, "runs", "events", "ev-0", "--context", spec)).splitlines()
    blank = out.index("")
    lines = [LINE.fullmatch(line) for line in out[:blank]]
    assert all(lines), out[:blank]
    # Every journal entry, in order, at its time.
    assert [int(m["seq"]) for m in lines if m] == [e.seq for e in journal] == list(range(len(journal)))
    assert [m["kind"] for m in lines if m] == [type(e).__name__ for e in journal]
    assert [m["at"] for m in lines if m] == [_when(e.at) for e in journal]
    rest = [m["rest"] for m in lines if m]

    small = entry(journal, ev.StepRecorded, node="summarize", key="llm/0")
    assert rest[small.seq] == f"summarize #1  model call llm/0: model small, {tokens_text(small.value['usage'])}"
    asking = entry(journal, ev.StepRecorded, node="weather", key="llm/0")
    assert rest[asking.seq] == (
        f"weather #1  model call llm/0: model large, {tokens_text(asking.value['usage'])}, asks for lookup"
    )
    answer = entry(journal, ev.StepRecorded, node="weather", key="llm/1")
    assert rest[answer.seq] == f"weather #1  model call llm/1: model large, {tokens_text(answer.value['usage'])}"
    tool = entry(journal, ev.StepRecorded, node="weather", key="tool/0/0")
    assert rest[tool.seq] == 'weather #1  tool call tool/0/0: lookup({"city": "Paris"}) -> "sunny in Paris"'
    failed = entry(journal, ev.NodeFailed, node="flaky")
    assert rest[failed.seq] == f"flaky #1  ConnectionError: first attempts fail (retry in {failed.retry_in:.3f}s)"
    assert rest[entry(journal, ev.NodeCompleted, node="flaky").seq] == "flaky #2  -> 4"
    assert rest[entry(journal, ev.NodeCompleted, node="summarize").seq].startswith('summarize #1  -> text "echo: ')
    assert rest[0] == f'graph nightly (version {journal[0].version}), input {{"n": 4}}'  # type: ignore[attr-defined]
    assert rest[-1].startswith("completed -> ")

    # Per node: STARTED is when the last dependency was resolved, FINISHED its last entry.
    header = out[blank + 1]
    assert header.split() == ["NODE", "KIND", "STATUS", "ATTEMPTS", "STARTED", "FINISHED", "DURATION", "MODEL",
                              "TOKENS"]  # fmt: skip
    rows = {r[0]: r for r in (re.split(r"\s{2,}", line) for line in out[blank + 2 : blank + 9])}
    assert list(rows) == [n.name for n in context.nodes("ev-0")]

    def completed(node: str) -> float:
        return entry(journal, ev.NodeCompleted, node=node).at

    def row(node: str, kind: str, attempts: int, ready: float, model: str = "", tokens: str = "") -> List[str]:
        cells = [node, kind, "completed", str(attempts), _when(ready), _when(completed(node)),
                 f"{completed(node) - ready:.3f}s", model, tokens]  # fmt: skip
        return cells if model else cells[:-2]

    assert rows["check"] == row("check", "task", 1, journal[0].at)
    assert rows["flaky"] == row("flaky", "task", 2, completed("check"))
    assert rows["summarize"] == row("summarize", "llm", 1, completed("flaky"), "small",
                                    str(small.value["usage"]["total_tokens"]))  # fmt: skip
    weather_tokens = asking.value["usage"]["total_tokens"] + answer.value["usage"]["total_tokens"]
    assert rows["weather"] == row("weather", "llm", 1, completed("check"), "large", str(weather_tokens))
    assert rows["report"] == row("report", "task", 1, max(completed(n) for n in ("summarize", "weather", "route")))
    assert rows["review"] == ["review", "human", "skipped", "0", "-", _when(entry(journal, ev.NodeSkipped).at), "-"]
    assert out[blank + 9].startswith("(STARTED is when the node became ready: the entry that resolved its last")

    totals = out[blank + 11 :]
    prompt = sum(e.value["usage"]["prompt_tokens"] for e in (small, asking, answer))
    completion = sum(e.value["usage"]["completion_tokens"] for e in (small, asking, answer))
    assert totals[0] == "run         ev-0"
    assert totals[1] == "status      completed"
    assert totals[2] == f"duration    {journal[-1].at - journal[0].at:.3f}s (RunStarted to RunFinished)"
    assert totals[3] == f"tokens      {prompt + completion} ({prompt} prompt, {completion} completion) in 3 model calls"
    assert re.fullmatch(rf"\s+large\s+{weather_tokens} \(.*\) in 2 model calls", totals[4]), totals
    assert re.fullmatch(rf"\s+small\s+{small.value['usage']['total_tokens']} \(.*\) in 1 model call", totals[5])
    assert totals[6] == "tool calls  1"

    # A failed run: its failure, and the nodes it never reached.
    out = ok(cli(tmp_path, "runs", "events", "ev-1", "--context", spec)).splitlines()
    assert out[1].endswith("NodeFailed     check #1  ValueError: bad input 2 (final)")
    assert out[2].endswith("RunFinished    failed at check: ValueError: bad input 2")
    assert re.split(r"\s{2,}", out[5])[:4] == ["check", "task", "failed", "1"]
    assert re.split(r"\s{2,}", out[6])[:4] == ["flaky", "task", "pending", "0"]
    assert "tokens      none recorded (no model call)" in out


def test_events_json_is_one_object_per_entry_then_the_summary(tmp_path: Path) -> None:
    spec = str(tmp_path / "runs.db")
    (tmp_path / "in.jsonl").write_text('{"n": 3}\n')
    ok(cli(tmp_path, "map", "cli_app:nightly", "--input", "in.jsonl", "--output", "out.jsonl", "--context", spec,
           "--batch", "js", "-q"))  # fmt: skip
    context = open_context(spec)
    journal = context.journal("js-0")
    assert isinstance(entry(journal, ev.Interrupted, node="review"), ev.Interrupted)  # n = 3 waits for a person

    records = [json.loads(line) for line in ok(cli(tmp_path, "runs", "events", "js-0", "--context", spec, "--json"))
               .splitlines()]  # fmt: skip
    *entries, summary = records
    assert len(entries) == len(journal)
    for record, event in zip(entries, journal):
        assert record.pop("kind") == type(event).__name__
        tool = record.pop("tool_call", None)
        assert record == as_json(event)
        is_tool = isinstance(event, ev.StepRecorded) and event.key.startswith("tool/")
        assert tool == ({"name": "lookup", "arguments": {"city": "Paris"}} if is_tool else None)

    calls = [e for e in journal if isinstance(e, ev.StepRecorded) and e.key.startswith("llm/")]
    assert len(calls) == 3
    assert summary["kind"] == "summary" and summary["run_id"] == "js-0"
    assert summary["status"] == "waiting" and summary["finished_at"] is None
    assert summary["duration"] == pytest.approx(journal[-1].at - journal[0].at, abs=0.001)
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert summary["tokens"][k] == sum(e.value["usage"][k] for e in calls)
    assert summary["tokens"]["calls"] == 3
    assert summary["tokens"]["models"]["large"]["calls"] == 2
    assert summary["tool_calls"] == 1
    nodes = {n["name"]: n for n in summary["nodes"]}
    assert [(n["name"], n["kind"], n["status"], n["attempts"]) for n in summary["nodes"]] == [
        (n.name, n.kind, n.status, n.attempts) for n in context.nodes("js-0")
    ]
    flaky_done = entry(journal, ev.NodeCompleted, node="flaky").at
    assert nodes["summarize"]["started_at"] == flaky_done
    assert nodes["summarize"]["models"] == ["small"] and nodes["weather"]["tool_calls"] == 1
    assert nodes["review"]["status"] == "waiting" and nodes["review"]["finished_at"] is None
    assert nodes["review"]["started_at"] == entry(journal, ev.NodeCompleted, node="route").at


class Lines:
    """The lines a process writes to stdout, each with when it arrived, read by a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.lines: List[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                self.queue.put(line.rstrip("\n"))
            self.queue.put(None)

        threading.Thread(target=read, daemon=True).start()

    def next(self, timeout: float) -> Optional[str]:
        """The next line (``None`` at the end), failing after ``timeout`` seconds."""
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s; so far: {self.lines}") from None
        if line is not None:
            self.lines.append(line)
        return line

    def quiet_for(self, seconds: float) -> bool:
        try:
            line = self.queue.get(timeout=seconds)
        except queue.Empty:
            return True
        self.queue.put(line)  # not consumed: a test that expected quiet fails on it
        return False


def start_held_run(cwd: Path, spec: str, run_id: str) -> subprocess.Popen:
    """A run of ``slow`` in a process of its own, which waits in ``hold`` for ``cwd/run_id.go``."""
    code = (
        "import sys, cli_app; from ferroflow.cli.load import open_context; "
        "cli_app.slow.run(sys.argv[2], context=open_context(sys.argv[1]), run_id=sys.argv[3])"
    )
    return subprocess.Popen([sys.executable, "-c", code, spec, f"{run_id}.go", run_id], cwd=cwd, env=ENV)


def wait_for_step(spec: str, run_id: str) -> None:
    """Until the held run has recorded its step ``began``: it is running, in ``hold``."""
    context = open_context(spec)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if any(isinstance(e, ev.StepRecorded) for e in context.journal(run_id)):
                return
        except ff.RunNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{run_id} never began")


def follow(cwd: Path, spec: str, run_id: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "ferroflow.cli", "runs", "events", run_id, "--context", spec, "--follow"]
    return subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_follow_prints_the_entries_of_a_running_run_until_it_finishes(tmp_path: Path) -> None:
    spec = str(tmp_path / "runs.db")
    run = start_held_run(tmp_path, spec, "held-1")
    try:
        wait_for_step(spec, "held-1")
        with follow(tmp_path, spec, "held-1") as proc:
            lines = Lines(proc)
            first = [lines.next(timeout=30), lines.next(timeout=30)]
            assert [LINE.fullmatch(line or "")["kind"] for line in first] == ["RunStarted", "StepRecorded"]  # type: ignore[index]
            # The run goes on; so does the command, printing nothing until something happens.
            assert lines.quiet_for(1.0), lines.lines
            assert proc.poll() is None, "the command ended while the run was running"

            (tmp_path / "held-1.go").touch()
            later = []
            while (line := lines.next(timeout=30)) is not None:
                later.append(line)
            assert proc.wait(timeout=30) == 0
            stderr = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in stderr and stderr == "", stderr
        assert run.wait(timeout=30) == 0
    finally:
        (tmp_path / "held-1.go").touch()
        run.wait(timeout=30)

    journal = open_context(spec).journal("held-1")
    blank = later.index("")
    live = [LINE.fullmatch(line) for line in later[:blank]]
    assert all(live), later
    # What was written after the command started, printed as it came, every entry once.
    assert [int(m["seq"]) for m in live if m] == [e.seq for e in journal[2:]]
    assert [m["kind"] for m in live if m] == ["NodeCompleted", "NodeCompleted", "RunFinished"]
    assert live[-1] and live[-1]["rest"] == 'completed -> "released!"'
    summary = later[blank + 1 :]
    assert summary[0].split()[:2] == ["NODE", "KIND"]
    assert "status      completed" in summary
    hold = re.split(r"\s{2,}", summary[1])
    # hold ran from RunStarted until the file appeared, a second and more later.
    assert hold[:3] == ["hold", "task", "completed"] and float(hold[6].rstrip("s")) >= 1.0


def test_follow_ends_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    spec = str(tmp_path / "runs.db")
    run = start_held_run(tmp_path, spec, "held-2")
    try:
        wait_for_step(spec, "held-2")
        with follow(tmp_path, spec, "held-2") as proc:
            lines = Lines(proc)
            lines.next(timeout=30)
            lines.next(timeout=30)
            assert lines.quiet_for(0.5) and proc.poll() is None
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 130
            assert lines.next(timeout=5) is None, "something printed after Ctrl-C"
            stderr = proc.stderr.read() if proc.stderr else ""
        assert stderr == "", stderr
    finally:
        (tmp_path / "held-2.go").touch()
        run.wait(timeout=30)
    assert open_context(spec).run_info("held-2").status == ff.RunStatus.COMPLETED


def test_events_of_an_unknown_run_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    for follows in ([], ["--follow"]):
        done = cli(tmp_path, "runs", "events", "nope", "--context", str(tmp_path / "runs.db"), *follows)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr == "ferroflow: run 'nope' not found\n"


def test_without_the_graphs_structure_a_node_starts_at_the_resolving_entry_before_its_first() -> None:
    """The fallback for a run whose structure the store lacks (one an earlier ferroflow wrote):
    `c` needs only `a`, but `b` completed in between, so the entry before `c`'s is `b`'s."""
    g = ff.Graph("fallback")

    @g.task
    def a(input):
        return 1

    @g.task(deps={"x": "a"})
    def b(x):
        time.sleep(0.05)
        return x

    @g.task(deps={"x": "a"})
    def c(x):
        time.sleep(0.3)
        return x

    context = ff.InMemory()
    journal = context.journal(g.run(None, context=context).run_id)
    done = {e.node: e.at for e in journal if isinstance(e, ev.NodeCompleted)}
    assert [e.node for e in journal if isinstance(e, ev.NodeCompleted)] == ["a", "b", "c"]
    assert done["b"] > done["a"]

    guessed = {s["name"]: s for s in node_summaries(journal, None, None)}
    assert guessed["c"]["started_at"] == done["b"]
    assert guessed["c"]["status"] == "completed" and guessed["c"]["kind"] is None
    assert guessed["a"]["started_at"] == journal[0].at
    known = {
        s["name"]: s
        for s in node_summaries(journal, context.nodes(journal[0].run_id), {"a": [], "b": ["a"], "c": ["a"]})
    }
    assert known["c"]["started_at"] == done["a"]
    assert known["c"]["duration"] == round(done["c"] - done["a"], 3)
