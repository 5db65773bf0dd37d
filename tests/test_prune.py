"""Retention: ``ctx.prune`` / ``ferroflow runs prune`` delete old finished runs with their
journals, and a durable context's ``retention`` does it in the background; running, waiting
and pending runs are never deleted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import pytest

import ferroflow as ff
from helpers import wait_until


def graphs() -> Any:
    release = threading.Event()
    g = ff.Graph("kept_or_pruned")

    @g.task
    def work(input):
        if input == "fail":
            raise ValueError("failing on purpose")
        if input == "block":
            release.wait(30)
        return input

    h = ff.Graph("kept_waiting")

    @h.human
    def ask(input):
        return {"q": input}

    return g, h, release


def test_prune_deletes_only_finished_runs(context):
    g, h, release = graphs()
    g.run("ok", context=context, run_id="done")
    with pytest.raises(ff.RunFailedError):
        g.run("fail", context=context, run_id="failed")
    h.run("?", context=context, run_id="waiting")
    blocked = threading.Thread(target=lambda: g.run("block", context=context, run_id="running", timeout=30))
    blocked.start()
    try:
        wait_until(lambda: any(r.run_id == "running" for r in context.runs()), what="the blocked run to start")
        assert context.prune(older_than=3600) == [], "nothing finished an hour ago"
        assert context.prune(older_than=0, status="failed", dry_run=True) == ["failed"]
        assert context.run_info("failed").status is ff.RunStatus.FAILED, "a dry run deletes nothing"
        assert sorted(context.prune(older_than=0)) == ["done", "failed"]
        left = {r.run_id: r.status for r in context.runs()}
        assert left == {"running": ff.RunStatus.RUNNING, "waiting": ff.RunStatus.WAITING}
        with pytest.raises(ff.RunNotFoundError):
            context.run_info("done")
        with pytest.raises(ff.InvalidInputError, match="finished runs only"):
            context.prune(older_than=0, status="waiting")
    finally:
        release.set()
        blocked.join(30)
    assert context.prune(older_than=0) == ["running"], "it finished since"
    assert h.resume("waiting", "yes", context=context).output == "yes"


def test_retention_deletes_finished_runs_in_the_background(tmp_path):
    g, h, _ = graphs()
    with ff.Sqlite(tmp_path / "kept.db", retention=1.0) as context:
        g.run("ok", context=context, run_id="short-lived")
        h.run("?", context=context, run_id="waiting")
        wait_until(lambda: [r.run_id for r in context.runs()] == ["waiting"], timeout=15, what="retention")
    with ff.Sqlite(tmp_path / "kept.db") as reopened:
        assert [r.run_id for r in reopened.runs()] == ["waiting"]


def test_the_command_line_prunes(tmp_path):
    g, h, _ = graphs()
    db = tmp_path / "runs.db"
    with ff.Sqlite(db) as context:
        for i in range(3):
            g.run(f"ok{i}", context=context, run_id=f"done-{i}")
        h.run("?", context=context, run_id="waiting")

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ferroflow.cli", "runs", "prune", "--context", str(db), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=dict(os.environ))

    dry = cli("--older-than", "0s", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(dry.stdout.split()) == ["done-0", "done-1", "done-2"]
    assert "would delete 3 finished run(s) older than 0s" in dry.stderr
    assert cli("--older-than", "30d").stdout == ""
    done = cli("--older-than", "0s")
    assert sorted(done.stdout.split()) == ["done-0", "done-1", "done-2"] and "deleted 3" in done.stderr
    bad = cli("--older-than", "soon")
    assert bad.returncode == 2 and "--older-than must be a duration" in bad.stderr and "Traceback" not in bad.stderr
    with ff.Sqlite(db) as context:
        assert [r.run_id for r in context.runs()] == ["waiting"]
