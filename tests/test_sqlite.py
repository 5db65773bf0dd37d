"""The SQLite context: runs survive their process, and continue without repeating work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ferroflow as ff

TESTS = Path(__file__).parent


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "calls.log"
    path.touch()
    monkeypatch.setenv("FERROFLOW_TEST_LOG", str(path))
    return path


def calls(log: Path) -> list:
    return log.read_text().split()


def child(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter that imports the test graphs."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


def test_a_run_killed_mid_node_continues_without_repeating_completed_nodes(tmp_path, log):
    db = tmp_path / "runs.db"
    crashed = child(
        "import ferroflow as ff, durable_app\n"
        f"durable_app.chain.run(4, run_id='crash-1', context=ff.Sqlite({str(db)!r}))\n"
    )
    assert crashed.returncode == -9, crashed.stderr  # SIGKILL, in the middle of `explode`
    assert calls(log) == ["first", "explode:1:crash-1/explode/1"]

    import durable_app

    result = durable_app.chain.resume("crash-1", context=ff.Sqlite(db), timeout=10)
    assert result.status is ff.RunStatus.COMPLETED
    assert result.output == 41
    # `first` completed before the crash and ran once; `explode` runs again as attempt 2, with
    # the idempotency base of its first attempt.
    assert calls(log) == ["first", "explode:1:crash-1/explode/1", "explode:2:crash-1/explode/2", "last"]
    kinds = [(n.name, n.status, n.attempts) for n in ff.Sqlite(db).nodes("crash-1")]
    assert kinds == [("first", "completed", 1), ("explode", "completed", 2), ("last", "completed", 1)]


def test_a_person_answers_from_another_process(tmp_path, log):
    db = tmp_path / "runs.db"
    started = child(
        "import ferroflow as ff, durable_app\n"
        f"r = durable_app.approval.run(12, run_id='human-1', context=ff.Sqlite({str(db)!r}))\n"
        "print(r.status.value, r.waiting['approve']['question'])\n"
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == ["waiting", "refund", "12?"]

    import durable_app

    result = durable_app.approval.resume("human-1", "yes", context=ff.Sqlite(db), timeout=10)
    assert result.status is ff.RunStatus.COMPLETED
    assert result.output == {"sent": "refund 12", "approved": "yes"}
    assert calls(log) == ["draft", "approve", "send"], "no body ran twice"


def test_starting_a_stored_run_id_again_returns_that_run(tmp_path, log):
    import durable_app

    db = tmp_path / "runs.db"
    first = durable_app.approval.run(5, run_id="again", context=ff.Sqlite(db), timeout=10)
    second = durable_app.approval.run(5, run_id="again", context=ff.Sqlite(db), timeout=10)
    assert first.status is second.status is ff.RunStatus.WAITING
    assert calls(log) == ["draft", "approve"]


def test_a_value_without_a_json_form_fails_its_node_and_names_it(tmp_path):
    g = ff.Graph("not_json", strict=False)

    @g.task
    def fine(input):
        return input

    @g.task
    def bad(fine):
        return {1, 2, 3}

    with pytest.raises(ff.RunFailedError) as info:
        g.run(1, context=ff.Sqlite(tmp_path / "runs.db"), timeout=10)
    assert info.value.node == "bad"
    assert info.value.error_type == "SerializationError"
    assert "set" in info.value.error_message


def test_a_foreign_or_corrupt_file_is_refused_clearly(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all " * 200)
    with pytest.raises(ff.StoreError) as info:
        ff.Sqlite(garbage)
    assert "garbage.db" in str(info.value)

    with pytest.raises(ff.StoreError) as info:
        ff.Sqlite(tmp_path / "missing" / "dir" / "runs.db")
    assert "runs.db" in str(info.value)


def test_continuing_an_unknown_run_is_not_found(tmp_path):
    import durable_app

    with pytest.raises(ff.RunNotFoundError):
        durable_app.chain.resume("nobody", context=ff.Sqlite(tmp_path / "runs.db"), timeout=5)
