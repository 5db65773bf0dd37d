"""Moving runs between contexts: ``ctx.export_run`` / ``graph.import_run`` and
``ferroflow runs export`` / ``runs import``. A run exported mid-run from SQLite (waiting at a
human step, or with a node cut short by its process dying) continues in another context
without running completed nodes again; what cannot be imported is refused, naming why, and
nothing is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

import ferroflow as ff
from ferroflow import events as ev
from ferroflow.cli.load import open_context
from helpers import context_spec, wait_until

APP = """\
import os
import time

import ferroflow as ff


def log(what):
    with open(os.environ["BODY_LOG"], "a") as f:
        f.write(what + "\\n")


waiting = ff.Graph("moving_waiting")


@waiting.task
def first(input):
    log(f"first {input}")
    return input + 1


@waiting.human
def ask(first):
    return {"question": f"ok {first}?"}


@waiting.task
def last(first, ask):
    log(f"last {first}")
    return {"n": first, "answer": ask}


cut = ff.Graph("moving_cut")


@cut.task
def start(input):
    log(f"start {input}")
    return input * 10


@cut.task
def slow(start, ctx):
    log(f"slow {ctx.attempt}")
    if os.environ.get("HANG"):
        time.sleep(600)
    return start + 1


@cut.task
def end(slow):
    log(f"end {slow}")
    return {"total": slow}
"""


@pytest.fixture
def app(tmp_path, monkeypatch) -> Iterator[Any]:
    (tmp_path / "app.py").write_text(APP)
    monkeypatch.setenv("BODY_LOG", str(tmp_path / "bodies.log"))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("app", None)
    import app as module

    yield module
    sys.modules.pop("app", None)


def calls(tmp_path: Path) -> Counter:
    path = tmp_path / "bodies.log"
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


@pytest.fixture(params=["memory", "sqlite", "redis", "nats"])
def target(request, tmp_path) -> Iterator[ff.Context]:
    if request.param == "memory":
        context: ff.Context = ff.InMemory()
    else:
        spec = (
            context_spec(request.param, tmp_path / "target")
            if request.param != "sqlite"
            else str(tmp_path / "target.db")
        )
        context = open_context(spec)
    yield context
    if isinstance(context, (ff.Redis, ff.Nats)):
        context.delete_namespace()
    context.close()


def killed_mid_node(tmp_path: Path, db: Path) -> None:
    """Runs `moving_cut` on `db` in a process that is killed while `slow` runs."""
    script = f"import app, ferroflow as ff; app.cut.run(4, context=ff.Sqlite({str(db)!r}), run_id='cut-1')"
    env = dict(os.environ, HANG="1", PYTHONPATH=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path)
    try:
        wait_until(lambda: calls(tmp_path)["slow 1"] == 1, timeout=30, what="slow to start")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)


def test_a_waiting_run_moves_and_is_answered_in_the_other_context(app, tmp_path, target):
    source = ff.Sqlite(tmp_path / "laptop.db")
    assert app.waiting.run(1, context=source, run_id="w-1").status is ff.RunStatus.WAITING
    exported = source.export_run("w-1")
    assert json.loads(exported)["format"] == "ferroflow.run/1"
    moved = app.waiting.import_run(exported, context=target)
    assert (moved.run_id, moved.status) == ("w-1", ff.RunStatus.WAITING)
    assert moved.waiting == {"ask": {"question": "ok 2?"}}
    done = app.waiting.resume("w-1", "yes", context=target, timeout=10)
    assert done.output == {"n": 2, "answer": "yes"}
    assert calls(tmp_path) == Counter({"first 1": 1, "last 2": 1}), "a completed node ran again"
    # The source still has it, waiting, as it was.
    assert app.waiting.get_run("w-1", context=source).status is ff.RunStatus.WAITING
    source.close()


def test_a_run_cut_short_by_a_dying_process_moves_and_finishes_there(app, tmp_path, target):
    db = tmp_path / "laptop.db"
    killed_mid_node(tmp_path, db)
    source = ff.Sqlite(db, execute=False)
    assert source.run_info("cut-1").status is ff.RunStatus.RUNNING
    exported = source.export_run("cut-1")
    source.close()
    app.cut.import_run(exported, context=target)
    done = app.cut.wait("cut-1", context=target, timeout=10)
    assert done.output == {"total": 41}
    assert calls(tmp_path) == Counter({"start 4": 1, "slow 1": 1, "slow 2": 1, "end 41": 1})
    journal = target.journal("cut-1")
    interrupted = [e for e in journal if isinstance(e, ev.NodeFailed)]
    assert [(e.node, e.attempt, e.error.type) for e in interrupted] == [("slow", 1, "Interrupted")]
    assert [e.seq for e in journal] == list(range(len(journal)))


def test_what_cannot_be_imported_is_refused_naming_why_and_nothing_is_written(app, tmp_path, target):
    source = ff.Sqlite(tmp_path / "laptop.db")
    app.waiting.run(7, context=source, run_id="w-7")
    exported = source.export_run("w-7")
    source.close()
    line = json.loads(exported)
    stranger = {"type": "NodeCompleted", "node": "nosuch", "attempt": 1, "output": 1}
    cases = {
        "not JSON at all": ("{", "not a run exported by ferroflow"),
        "another format": (json.dumps(dict(line, format="ferroflow.run/9")), "ferroflow.run/9"),
        "a gap": (json.dumps(dict(line, journal=[line["journal"][0], line["journal"][2]])), "position 1"),
        "a journal that does not replay": (
            json.dumps(
                dict(
                    line, journal=line["journal"] + [dict(line["journal"][1], seq=len(line["journal"]), entry=stranger)]
                )
            ),
            "does not replay.*'nosuch' is not in graph",
        ),
    }
    for text, words in cases.values():
        with pytest.raises(ff.InvalidInputError, match=words):
            app.waiting.import_run(text, context=target)
        with pytest.raises(ff.RunNotFoundError):
            target.run_info("w-7")
    with pytest.raises(ff.InvalidInputError, match="a run of graph 'moving_waiting' version"):
        app.cut.import_run(exported, context=target)
    app.waiting.import_run(exported, context=target)
    with pytest.raises(ff.InvalidInputError, match="exists in this context already"):
        app.waiting.import_run(exported, context=target)
    assert app.waiting.get_run("w-7", context=target).status is ff.RunStatus.WAITING


@pytest.mark.parametrize("store", ["redis", "nats"])
def test_the_command_line_moves_a_laptops_runs_to_the_workers_context(app, tmp_path, store):
    db = tmp_path / "laptop.db"
    killed_mid_node(tmp_path, db)
    laptop = ff.Sqlite(db, execute=False)
    app.waiting.run(3, context=ff.Sqlite(db), run_id="w-3")
    laptop.close()
    env = dict(os.environ, PYTHONPATH=str(tmp_path))

    def cli(*args: str, **kw: Any) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ferroflow.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, **kw)

    exported = cli("runs", "export", "--context", str(db))
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    assert sorted(json.loads(x)["run_id"] for x in lines) == ["cut-1", "w-3"]
    assert "2 run(s) exported" in exported.stderr

    spec = context_spec(store, tmp_path)
    # One graph per import: the run of the other graph is refused, naming why.
    moved = cli("runs", "import", "--context", spec, "--graph", "app:cut", "--execute", input=exported.stdout)
    assert moved.returncode == 1
    assert [json.loads(x) for x in moved.stdout.splitlines()] == [{"run_id": "cut-1", "status": "completed"}]
    assert "(run 'w-3') refused" in moved.stderr and "moving_waiting" in moved.stderr
    waiting = cli("runs", "import", "--context", spec, "--graph", "app:waiting", input=exported.stdout)
    assert [json.loads(x) for x in waiting.stdout.splitlines()] == [{"run_id": "w-3", "status": "waiting"}]
    target = open_context(spec)
    try:
        assert app.waiting.resume("w-3", "fine", context=target, timeout=10).output == {"n": 4, "answer": "fine"}
        assert app.cut.get_run("cut-1", context=target).output == {"total": 41}
    finally:
        target.delete_namespace()
        target.close()
    assert calls(tmp_path) == Counter(
        {"start 4": 1, "slow 1": 1, "slow 2": 1, "end 41": 1, "first 3": 1, "last 4": 1}
    ), "a completed node ran again"
