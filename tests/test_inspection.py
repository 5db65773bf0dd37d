"""Run inspection from Python and from the `ferroflow` command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ferroflow as ff

TESTS = Path(__file__).parent


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "ferroflow.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, cwd=cwd)


def approval_graph() -> ff.Graph:
    g = ff.Graph("inspected")

    @g.task
    def draft(input):
        return f"refund {input}"

    @g.human
    def approve(draft):
        return {"question": f"{draft}?"}

    @g.task
    def send(draft, approve):
        return {"sent": draft, "approved": approve}

    return g


def test_runs_are_listed_with_their_status_newest_first(context):
    g = approval_graph()
    g.run(1, context=context, run_id="older", timeout=5)
    g.resume("older", "yes", context=context, timeout=5)
    g.run(2, context=context, run_id="newer", timeout=5)
    runs = context.runs()
    assert [(r.run_id, r.status) for r in runs] == [
        ("newer", ff.RunStatus.WAITING),
        ("older", ff.RunStatus.COMPLETED),
    ]
    assert [r.run_id for r in context.runs(status="completed")] == ["older"]
    assert context.runs(graph="another") == []
    assert isinstance(context.journal("older")[0], ff.events.RunStarted)


def test_a_stored_run_is_inspected_without_its_graph(tmp_path):
    db = tmp_path / "runs.db"
    g = approval_graph()
    g.run(3, context=ff.Sqlite(db), run_id="stored", timeout=5)
    fresh = ff.Sqlite(db)  # another process's view: the run is not in its memory
    nodes = {n.name: n for n in fresh.nodes("stored")}
    assert nodes["draft"].status == "completed"
    assert nodes["draft"].output == "refund 3"
    assert nodes["approve"].status == "waiting"
    assert nodes["approve"].output == {"question": "refund 3?"}
    # Every node of the graph, as memory shows them: the store records the graph's structure.
    assert nodes["send"].status == "pending"
    assert [n.name for n in fresh.nodes("stored")] == ["draft", "approve", "send"]


def test_the_command_lists_shows_resumes_and_cancels(tmp_path, monkeypatch):
    monkeypatch.setenv("FERROFLOW_TEST_LOG", str(tmp_path / "calls.log"))
    db = tmp_path / "runs.db"
    import durable_app

    durable_app.approval.run(7, run_id="cli-1", context=ff.Sqlite(db), timeout=5)
    durable_app.approval.run(8, run_id="cli-2", context=ff.Sqlite(db), timeout=5)

    listed = cli("runs", "list", "--context", str(db), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [(r["run_id"], r["status"]) for r in json.loads(listed.stdout)] == [
        ("cli-2", "waiting"),
        ("cli-1", "waiting"),
    ]

    shown = cli("runs", "show", "cli-1", "--context", str(db), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "approve" in shown.stdout and "waiting" in shown.stdout

    resumed = cli(
        "runs", "resume", "cli-1", "--context", f"sqlite:{db}", "--graph", "durable_app:approval",
        "--value", '"yes"', cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["output"] == {"sent": "refund 7", "approved": "yes"}

    cancelled = cli("runs", "cancel", "cli-2", "--context", str(db), cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    statuses = {r.run_id: r.status for r in ff.Sqlite(db).runs()}
    assert statuses == {"cli-1": ff.RunStatus.COMPLETED, "cli-2": ff.RunStatus.CANCELLED}

    again = cli("runs", "cancel", "cli-1", "--context", str(db), cwd=tmp_path)
    assert again.returncode == 1
    assert "completed" in again.stderr

    missing = cli("runs", "show", "nope", "--context", str(db), cwd=tmp_path)
    assert missing.returncode == 1
    assert "not found" in missing.stderr

    drawn = cli("graph", "durable_app:chain", cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.startswith("flowchart TD")


def test_context_urls_are_read_as_the_server_reads_them(tmp_path):
    """The CLI and `ferroflow-server` share one reader of `--context`: the same forms open
    the same contexts, and a URL naming no durable context is an error that says so."""
    from ferroflow.cli import open_context

    assert open_context(f"sqlite://{tmp_path}/a.db").durable
    assert (tmp_path / "a.db").exists()
    assert open_context(f"sqlite:{tmp_path}/b.db").durable and (tmp_path / "b.db").exists()
    assert isinstance(open_context("memory"), ff.InMemory)
    done = cli("runs", "list", "--context", "postgres://127.0.0.1/x", cwd=tmp_path)
    assert done.returncode == 1
    assert "context 'postgres://127.0.0.1/x' names no durable context" in done.stderr, done.stderr
