"""``ferroflow batches list`` and ``ferroflow batches show``: the batches ``ferroflow map``
made, counted as ``ferroflow runs list`` shows their runs, with their throughput, ETA, the
tokens their model calls recorded and their failed runs; and ``runs list --json``'s nodes.

Every case drives the command as a subprocess, on a SQLite file in ``tmp_path`` (and the
main one on Redis too, in a namespace of its own, deleted afterwards), on the graphs of
``cli_app.py``: ``nightly`` (failures, a person to wait for, a retried node, two LLM nodes
on ``OfflineProvider``) and ``slow`` (a node that waits for a file)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List

import pytest

import ferroflow as ff
from ferroflow.cli.batches import batch_of
from ferroflow.cli.common import _when
from ferroflow.cli.load import open_context
from ferroflow.events import StepRecorded

TESTS = Path(__file__).parent

# Input n of batch "tonight": 2 and 5 fail at `check`; 0, 3 and 6 wait for a person (6 is
# then cancelled); 1, 4 and 7 complete.
TONIGHT = [{"n": n, "fail": n in (2, 5)} for n in range(8)]
GROUP = {"pending": "running", "running": "running"}


def cli(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "ferroflow.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def map_batch(cwd: Path, spec: str, batch: str, inputs: List[Any], graph: str = "cli_app:nightly") -> int:
    (cwd / f"{batch}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in inputs))
    done = cli(cwd, "map", graph, "--input", f"{batch}.jsonl", "--output", f"{batch}.out", "--context", spec,
               "--batch", batch, "-q")  # fmt: skip
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    return done.returncode


def runs_listed(cwd: Path, spec: str) -> Dict[str, Dict[str, Any]]:
    """``runs list --json``, by run id."""
    return {r["run_id"]: r for r in json.loads(ok(cli(cwd, "runs", "list", "--context", spec, "--limit", "1000",
                                                      "--json")))}  # fmt: skip


def counts_of(runs: Iterable[Dict[str, Any]]) -> Dict[str, int]:
    """The counts ``batches`` gives, from ``runs list``'s statuses."""
    counted = Counter(GROUP.get(r["status"], r["status"]) for r in runs)
    return {g: counted[g] for g in ("completed", "failed", "running", "waiting", "cancelled")}


def recorded_usage(context: ff.Context, run_ids: Iterable[str]) -> Dict[str, Dict[str, int]]:
    """The usage the runs' journals record for their model calls (``llm/<n>`` steps), summed
    per model, read here, not by the command."""
    usage: Dict[str, Dict[str, int]] = {}
    for run_id in run_ids:
        for e in context.journal(run_id):
            if isinstance(e, StepRecorded) and e.key.startswith("llm/"):
                model = usage.setdefault(
                    e.value["model"], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "calls": 0}
                )
                for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                    model[k] += e.value["usage"][k]
                model["calls"] += 1
    return usage


@pytest.mark.parametrize("spec", ["sqlite", "redis"], indirect=True)
def test_batches_are_counted_as_runs_list_shows_them_with_tokens_and_failures(tmp_path: Path, spec: str) -> None:
    assert map_batch(tmp_path, spec, "tonight", TONIGHT) == 1  # two runs failed
    ok(cli(tmp_path, "runs", "cancel", "tonight-6", "--context", spec))
    assert map_batch(tmp_path, spec, "other", [{"n": 1}, {"n": 4}]) == 0
    # Runs of no batch: an id of ferroflow's (a UUID) and one that does not end in -<digits>.
    code = (
        "import cli_app, sys; from ferroflow.cli.load import open_context; c = open_context(sys.argv[1]); "
        "cli_app.nightly.run({'n': 1}, context=c); cli_app.nightly.run({'n': 4}, context=c, run_id='solo-run')"
    )
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    subprocess.run([sys.executable, "-c", code, spec], cwd=tmp_path, env=env, check=True, timeout=60)

    runs = runs_listed(tmp_path, spec)
    assert len(runs) == 12
    tonight = [runs[f"tonight-{i}"] for i in range(8)]
    expected = counts_of(tonight)
    assert expected == {"completed": 3, "failed": 2, "running": 0, "waiting": 2, "cancelled": 1}

    # -- list -----------------------------------------------------------------------------
    listed = json.loads(ok(cli(tmp_path, "batches", "list", "--context", spec, "--json")))
    assert [b["batch"] for b in listed] == ["other", "tonight"]  # newest first
    by_name = {b["batch"]: b for b in listed}
    assert by_name["tonight"] == {
        "batch": "tonight",
        "graph": "nightly",
        "total": 8,
        "counts": expected,
        "created": min(r["created"] for r in tonight),
        "updated": max(r["updated"] for r in tonight),
    }
    other = [runs["other-0"], runs["other-1"]]
    assert by_name["other"]["counts"] == counts_of(other) == dict(expected, completed=2, failed=0, waiting=0,
                                                                  cancelled=0)  # fmt: skip

    table = ok(cli(tmp_path, "batches", "list", "--context", spec)).splitlines()
    assert table[0].split() == ["BATCH", "GRAPH", "TOTAL", "COMPLETED", "FAILED", "RUNNING", "WAITING", "CANCELLED",
                                "CREATED", "UPDATED"]  # fmt: skip
    row = re.split(r"\s{2,}", table[2])
    assert row == ["tonight", "nightly", "8", "3", "2", "0", "2", "1", _when(by_name["tonight"]["created"]),
                   _when(by_name["tonight"]["updated"])]  # fmt: skip
    assert len(table) == 3

    # -- show -----------------------------------------------------------------------------
    shown = json.loads(ok(cli(tmp_path, "batches", "show", "tonight", "--context", spec, "--json")))
    usage = recorded_usage(open_context(spec), [f"tonight-{i}" for i in range(8)])
    assert set(usage) == {"small", "large"}
    # summarize called once and weather twice (the tool, then the answer) in each of the 6 runs past `check`.
    assert usage["small"]["calls"] == 6 and usage["large"]["calls"] == 12
    total = {k: usage["small"][k] + usage["large"][k] for k in usage["small"]}
    assert total["total_tokens"] > 0
    assert shown["tokens"] == dict(total, models=usage)
    assert shown["counts"] == expected and shown["total"] == 8 and shown["graphs"] == ["nightly"]
    assert shown["created"] == by_name["tonight"]["created"] and shown["updated"] == by_name["tonight"]["updated"]
    assert shown["settled"] == 8 and shown["eta_seconds"] == 0.0
    assert shown["last_settled"] == max(r["updated"] for r in tonight)
    span = max(r["updated"] for r in tonight) - min(r["created"] for r in tonight)
    assert shown["throughput"] == pytest.approx(8 / max(span, 0.001))
    assert [(f["run_id"], f["node"], f["error_type"], f["error_message"]) for f in shown["failed_runs"]] == [
        ("tonight-2", "check", "ValueError", "bad input 2"),
        ("tonight-5", "check", "ValueError", "bad input 5"),
    ]

    text = ok(cli(tmp_path, "batches", "show", "tonight", "--context", spec)).splitlines()
    assert "runs        8: 3 completed, 2 failed, 0 running, 2 waiting, 1 cancelled" in text
    assert f"started     {_when(shown['created'])} (the first run created)" in text
    assert "eta         - (every run has settled)" in text
    assert (
        f"tokens      {total['total_tokens']:,} ({total['prompt_tokens']:,} prompt, "
        f"{total['completion_tokens']:,} completion) in 18 model calls"
    ) in text
    assert any(re.fullmatch(rf"\s+small\s+{usage['small']['total_tokens']} \(.*\) in 6 model calls", t) for t in text)
    assert "failed runs (2):" in text
    failed_rows = [re.split(r"\s{2,}", t) for t in text[text.index("failed runs (2):") + 2 :]]
    assert failed_rows == [
        ["tonight-2", "check", _when(shown["failed_runs"][0]["failed_at"]), "ValueError: bad input 2"],
        ["tonight-5", "check", _when(shown["failed_runs"][1]["failed_at"]), "ValueError: bad input 5"],
    ]

    quick = json.loads(ok(cli(tmp_path, "batches", "show", "tonight", "--context", spec, "--json", "--no-tokens")))
    assert quick["tokens"] is None
    assert quick["counts"] == expected and quick["failed_runs"] == shown["failed_runs"]
    assert "tokens      not counted (--no-tokens)" in ok(
        cli(tmp_path, "batches", "show", "tonight", "--context", spec, "--no-tokens")
    )

    # -- runs list --json: each run's nodes, with their kinds and statuses -------------------
    context = open_context(spec)
    for run_id, run in runs.items():
        assert run["nodes"] == [{"name": n.name, "kind": n.kind, "status": n.status} for n in context.nodes(run_id)]
    assert {n["name"]: (n["kind"], n["status"]) for n in runs["tonight-3"]["nodes"]} == {
        "check": ("task", "completed"),
        "flaky": ("task", "completed"),
        "summarize": ("llm", "completed"),
        "weather": ("llm", "completed"),
        "route": ("branch", "completed"),
        "review": ("human", "waiting"),
        "report": ("task", "completed"),
    }
    assert {n["name"]: n["status"] for n in runs["tonight-2"]["nodes"]}["check"] == "failed"
    # The table is as it was.
    table = ok(cli(tmp_path, "runs", "list", "--context", spec)).splitlines()
    assert table[0].split() == ["RUN", "GRAPH", "STATUS", "CREATED", "UPDATED"]
    assert len(table) == 13 and all(len(line.split()) == 7 for line in table[1:])


def test_show_lists_the_first_20_failed_runs_in_index_order(tmp_path: Path) -> None:
    spec = str(tmp_path / "runs.db")
    assert map_batch(tmp_path, spec, "broken", [{"n": n, "fail": True} for n in range(23)]) == 1
    shown = json.loads(ok(cli(tmp_path, "batches", "show", "broken", "--context", spec, "--json")))
    assert shown["counts"]["failed"] == 23
    assert [f["run_id"] for f in shown["failed_runs"]] == [f"broken-{i}" for i in range(20)]
    assert all(f["error_message"] == f"bad input {i}" for i, f in enumerate(shown["failed_runs"]))
    assert shown["tokens"]["calls"] == 0  # no run got past `check`
    text = ok(cli(tmp_path, "batches", "show", "broken", "--context", spec))
    assert "failed runs (23, the first 20 shown):" in text
    assert "broken-19  check" in text and "broken-20" not in text


def test_a_running_batch_shows_its_throughput_and_eta(tmp_path: Path) -> None:
    """A batch of 4 runs of `slow`, each waiting for a file of its own: an unknown ETA while
    none has settled, then, with 2 settled, the 2 left over the rate so far; 0 once all have."""
    spec = str(tmp_path / "runs.db")
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(f"go-{i}") + "\n" for i in range(4)))
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    command = [sys.executable, "-m", "ferroflow.cli", "map", "cli_app:slow", "--input", "held.jsonl",
               "--output", "held.out", "--context", spec, "--batch", "held", "-q"]  # fmt: skip
    mapping = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def statuses() -> Counter:
            return Counter(r["status"] for r in runs_listed(tmp_path, spec).values())

        def until(what: str, predicate: Any) -> Counter:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                seen = statuses()
                if predicate(seen):
                    return seen
                time.sleep(0.1)
            raise AssertionError(f"timed out waiting for {what}: {statuses()}")

        until("4 running runs", lambda s: s["running"] == 4)
        shown = json.loads(ok(cli(tmp_path, "batches", "show", "held", "--context", spec, "--json")))
        assert shown["counts"]["running"] == 4 and shown["settled"] == 0
        assert shown["throughput"] is None and shown["eta_seconds"] is None
        text = ok(cli(tmp_path, "batches", "show", "held", "--context", spec)).splitlines()
        assert "eta         unknown (4 running or pending)" in text
        assert "throughput  - (no run has settled)" in text

        (tmp_path / "go-0").touch()
        (tmp_path / "go-1").touch()
        until("2 completed runs", lambda s: s["completed"] == 2)
        runs = runs_listed(tmp_path, spec)
        shown = json.loads(ok(cli(tmp_path, "batches", "show", "held", "--context", spec, "--json")))
        assert (
            shown["counts"]
            == counts_of(runs.values())
            == dict(completed=2, failed=0, running=2, waiting=0, cancelled=0)
        )
        done = [r for r in runs.values() if r["status"] == "completed"]
        rate = 2 / (max(r["updated"] for r in done) - min(r["created"] for r in runs.values()))
        assert shown["throughput"] == pytest.approx(rate)
        assert shown["eta_seconds"] == pytest.approx(2 / rate)
        text = ok(cli(tmp_path, "batches", "show", "held", "--context", spec))
        assert "(2 running or pending)" in text and "(2 settled in " in text

        (tmp_path / "go-2").touch()
        (tmp_path / "go-3").touch()
        assert mapping.wait(timeout=30) == 0
    finally:
        for i in range(4):
            (tmp_path / f"go-{i}").touch()
        mapping.wait(timeout=30)
    shown = json.loads(ok(cli(tmp_path, "batches", "show", "held", "--context", spec, "--json")))
    assert shown["counts"]["completed"] == 4 and shown["eta_seconds"] == 0.0


def test_an_unknown_batch_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    spec = str(tmp_path / "runs.db")
    assert ok(cli(tmp_path, "batches", "list", "--context", spec)) == "no batches (no run is named NAME-<number>)\n"
    assert map_batch(tmp_path, spec, "known", [{"n": 1}]) == 0
    for args in (["nope"], ["know"], ["known", "--graph", "slow"]):
        done = cli(tmp_path, "batches", "show", *args, "--context", spec)
        assert done.returncode == 1, done.stderr
        assert done.stdout == "" and "Traceback" not in done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ferroflow: no batch '{args[0]}'"), done.stderr
    assert "of graph 'slow'" in done.stderr
    assert json.loads(ok(cli(tmp_path, "batches", "show", "known", "--context", spec, "--json")))["total"] == 1


def test_a_batch_is_named_by_the_run_ids_of_map() -> None:
    assert batch_of("nightly-0") == ("nightly", 0)
    assert batch_of("tickets-2026-11-24-17") == ("tickets-2026-11-24", 17)
    assert batch_of("nightly-x") is None
    assert batch_of("nightly-") is None
    assert batch_of("-3") is None
    assert batch_of("plain") is None
    # Ids ferroflow makes (UUIDs) are no batch's, even when their last group is digits.
    assert batch_of("01a253ee-a75b-7612-a0d2-123456789012") is None
