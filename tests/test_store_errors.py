"""A SQLite file that cannot be written, or whose disk fills up, gives a clear, typed error
(naming the file), never a panic or a hang, and loses nothing already recorded.

Everything that touches a protected or size-limited file runs in a child process, so that
the limit applies to that process only and a panic, abort or hang there cannot take the
suite with it (every child has a timeout, after which its whole process group is killed).

Read-only files: the suite usually runs as root, and root ignores file permissions. The
child then gives up the capabilities that let root do so (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH, CAP_FOWNER) before it imports ferroflow, and stays uid 0: it is then
held to the permission bits like any file owner, wherever the checkout and the temporary
directories are (no other user needs to be able to reach them). The child checks that the
drop took effect before it starts. Not root: plain chmod does the job.

Full disk, three ways:
- ``RLIMIT_FSIZE`` set from inside a node's body at the store's current size (no privileges
  needed, so it runs everywhere): the very commit that records that node fails, with EFBIG,
  which SQLite reports as SQLITE_IOERR_WRITE ("disk I/O error"). Exact, whatever the schema.
  The soft limit only: the same process then lifts it, as if space had been freed.
- ``RLIMIT_FSIZE`` of 256 KiB for a process that runs graph after graph: the limit falls
  wherever the file's pages put it.
- A real full filesystem: a 256 KiB tmpfs, mounted in a private mount namespace (``unshare``;
  needs root, so it is skipped elsewhere). Writes fail with ENOSPC, which SQLite reports as
  SQLITE_FULL. The namespace is held open by a ``sleep`` process; each child enters it with
  ``nsenter``; killing the holder removes the mount.

"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

CHILD_TIMEOUT = 45.0

CHILD = str(Path(__file__).with_name("store_errors_child.py"))


class Child:
    """The reports of one child process, by ``what``."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.reports: List[Dict[str, Any]] = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]

    def __getitem__(self, what: str) -> Dict[str, Any]:
        found = [r for r in self.reports if r["what"] == what]
        assert found, f"no report {what!r}; child said:\n{self}"
        return found[-1]

    def has(self, what: str) -> bool:
        return any(r["what"] == what for r in self.reports)

    def __str__(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout[-4000:]}\nstderr:\n{self.stderr[-4000:]}"


def child(mode: str, action: str, db: Path, *args: str, log: Path, prefix: Optional[List[str]] = None) -> Child:
    """Runs the child (store_errors_child.py) in a fresh interpreter (in its own process group, killed whole on a
    timeout: a hang fails the test instead of stalling it)."""
    env = dict(os.environ, FERROFLOW_TEST_LOG=str(log), PYTHONDONTWRITEBYTECODE="1", FERROFLOW_STRICT="1")
    command = [*(prefix or []), sys.executable, CHILD, mode, action, str(db), *args]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{action}: the child hung (killed after {CHILD_TIMEOUT}s)\n{Child(-9, stdout, stderr)}")
    done = Child(proc.returncode, stdout, stderr)
    # No panic (pyo3 turns one into PanicException), no abort, no uncaught error.
    assert proc.returncode == 0, f"{action}: the child did not exit cleanly\n{done}"
    assert "panic" not in stderr.lower(), f"{action}: a panic\n{done}"
    return done


def executions(log: Path) -> List[tuple]:
    """(run_id, node, attempt) of every body execution, in order."""
    return [tuple(line.split()) for line in log.read_text().splitlines()]


def assert_store_error(report: Dict[str, Any], db: Path, *words: str) -> str:
    """A failed operation whose error is a store error naming the file (and, if given, one
    of ``words``): a StoreError, or the run failing at the store (a RunFailedError of node
    '(store)' whose error type is StoreError). Returns the message."""
    assert not report["ok"], f"{report['what']} succeeded: {report}"
    message = report["message"]
    if "StoreError" not in report["classes"]:
        assert report["type"] == "RunFailedError", report
        assert report["node"] == "(store)" and report["error_type"] == "StoreError", report
    assert str(db) in message, f"the error does not name the file: {message}"
    if words:
        assert any(w in message for w in words), f"the error says none of {words}: {message}"
    return message


# ----------------------------------------------------------------------------------------
# Read-only


@pytest.fixture
def log(tmp_path) -> Path:
    path = tmp_path / "calls.log"
    path.touch()
    return path


@pytest.fixture
def recorded(tmp_path, log) -> Path:
    """A directory holding a store with a completed run ("done") and a waiting one
    ("waiting"), left as a finished ferroflow process leaves it."""
    directory = tmp_path / "store"
    directory.mkdir()
    db = directory / "runs.db"
    setup = child("plain", "setup", db, log=log)
    assert setup["done"] == {"what": "done", "ok": True, "value": {"status": "completed", "output": 41}}
    assert setup["waiting"]["value"]["status"] == "waiting", setup
    yield directory
    # Whatever a test changed, pytest must be able to remove the directory.
    for path in [directory, *directory.iterdir()]:
        os.chmod(path, stat.S_IRWXU)


def checkpoint(db: Path) -> None:
    """Folds the write-ahead log into the file and removes it (and the -shm file), as the
    last connection to close does: the state a file is in after a clean shutdown or a copy."""
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n"
        "c.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=CHILD_TIMEOUT)
    assert sorted(p.name for p in db.parent.iterdir()) == ["runs.db"], list(db.parent.iterdir())


def assert_intact_and_writable_again(directory: Path, log: Path) -> None:
    """After the permissions are restored: the recorded runs are there, unchanged, and the
    waiting run takes its answer (its first node does not run again)."""
    for path in [directory, *directory.iterdir()]:
        os.chmod(path, stat.S_IRWXU)
    before = executions(log)
    check = child("plain", "check", directory / "runs.db", log=log)
    assert check["runs"]["value"] == {"done": "completed", "waiting": "waiting"}, check
    kinds = [(e["kind"], e["node"]) for e in check["journal"]["value"]]
    assert kinds == [
        ("RunStarted", None),
        ("NodeCompleted", "first"),
        ("NodeCompleted", "second"),
        ("NodeCompleted", "third"),
        ("RunFinished", None),
    ], check
    assert check["journal"]["value"][-1]["output"] == 41
    assert check["answer"]["value"] == {"status": "completed", "output": {"sent": "refund 7", "approved": "yes"}}
    assert executions(log)[len(before) :] == [("waiting", "send", "1")], "only the answered run's last node ran"


@pytest.mark.parametrize("what", ["file", "file and directory"])
def test_a_read_only_store_is_readable_and_refuses_writes_with_a_store_error(recorded, log, what):
    """The file (and maybe its directory) made read-only after ferroflow wrote it, its -wal
    and -shm files still there as the writer left them: the store opens and reads; a new
    run and an answer fail with a StoreError saying the database is read-only; nothing
    recorded is lost, and once writable again the waiting run continues."""
    db = recorded / "runs.db"
    os.chmod(db, 0o444)
    if what == "file and directory":
        os.chmod(recorded, 0o555)
    before = executions(log)

    probe = child("unprivileged", "read-only", db, log=log)
    assert probe["privileges"]["ok"]
    assert probe["open"]["ok"], probe
    assert probe["runs"]["value"] == {"done": "completed", "waiting": "waiting"}, probe
    completed = [e["node"] for e in probe["journal"]["value"] if e["kind"] == "NodeCompleted"]
    assert completed == ["first", "second", "third"], probe

    refused = probe["new run"]
    assert_store_error(refused, db, "read-only")
    assert "StoreError" in refused["classes"], f"refusing a run before it starts is a StoreError: {refused}"
    assert_store_error(probe["answer"], db, "read-only")
    # Nothing ran: the refused run never started, and nothing follows from an answer that
    # could not be recorded.
    assert executions(log)[len(before) :] == [], executions(log)
    assert probe["runs after"]["value"] == {"done": "completed", "waiting": "waiting"}, probe

    assert_intact_and_writable_again(recorded, log)


@pytest.mark.parametrize("file_mode", [0o644, 0o444], ids=["writable file", "read-only file"])
def test_a_store_in_a_read_only_directory_without_its_wal_fails_to_open_with_a_store_error(recorded, log, file_mode):
    """A cleanly closed file (no -wal/-shm beside it) in a directory that cannot be written:
    SQLite cannot create the -wal/-shm files a WAL database needs even to be read, so
    opening fails, with a StoreError naming the file, whether or not the file itself is
    writable. Nothing is lost."""
    db = recorded / "runs.db"
    checkpoint(db)
    os.chmod(db, file_mode)
    os.chmod(recorded, 0o555)

    probe = child("unprivileged", "read-only", db, log=log)
    assert probe["privileges"]["ok"]
    message = assert_store_error(probe["open"], db, "read-only", "not writable", "cannot be opened", "cannot open")
    assert "StoreError" in probe["open"]["classes"]
    assert not probe.has("new run")
    assert os.listdir(recorded) == ["runs.db"], "nothing was created beside the file"

    assert_intact_and_writable_again(recorded, log)
    print(message)


def test_a_new_store_in_a_read_only_directory_fails_to_open_with_a_store_error(tmp_path, log):
    directory = tmp_path / "locked"
    directory.mkdir()
    os.chmod(directory, 0o555)
    db = directory / "runs.db"
    try:
        probe = child("unprivileged", "read-only", db, log=log)
    finally:
        os.chmod(directory, stat.S_IRWXU)
    assert probe["privileges"]["ok"]
    assert_store_error(probe["open"], db, "cannot be opened", "cannot open", "read-only", "not writable")
    assert "StoreError" in probe["open"]["classes"]
    assert not db.exists()


@pytest.mark.parametrize("case", ["existing file", "new file"])
def test_an_unwritable_directory_is_named_as_the_cause(tmp_path, log, case):
    directory = tmp_path / "store"
    directory.mkdir()
    db = directory / "runs.db"
    if case == "existing file":
        child("plain", "setup", db, log=log)
        checkpoint(db)
    os.chmod(directory, 0o555)
    try:
        probe = child("unprivileged", "read-only", db, log=log)
    finally:
        os.chmod(directory, stat.S_IRWXU)
    message = assert_store_error(probe["open"], db).replace(str(db), "<db>")
    assert "director" in message and "writ" in message, message


# ----------------------------------------------------------------------------------------
# Full disk


FILL_RUNS = "300"  # more than either limit lets through
EXPECTED = {"before": 11, "limited": 21, "after": 31}  # the limited graph's outputs


# Step-exact: the limit is set from inside a node's body (see limit_here in store_errors_child.py), so the
# write that fails is the one recording that node: in the middle of the run, or the last.


def limit_at(tmp_path_factory, node: str) -> tuple:
    """A process writes a complete run, then a run whose node ``node`` hits a file size
    limit; the limit is lifted in the same process, which continues the run from the same
    context and from a new one."""
    tmp = tmp_path_factory.mktemp(f"limit_at_{node}")
    db, log = tmp / "runs.db", tmp / "calls.log"
    log.touch()
    limited = child("limit", "limit-at", db, node, log=log)
    assert limited["limit set"]["value"]["node"] == node, limited
    assert limited["before"]["value"] == {"status": "completed", "output": EXPECTED["before"]}
    return node, db, log, limited


@pytest.fixture(scope="module")
def limit_mid_run(tmp_path_factory):
    return limit_at(tmp_path_factory, "middle")


@pytest.fixture(scope="module")
def limit_last_step(tmp_path_factory):
    return limit_at(tmp_path_factory, "end")


@pytest.mark.timeout(120)
def test_a_write_failing_mid_run_fails_the_run_with_a_store_error_naming_the_file(limit_mid_run):
    _, db, _, limited = limit_mid_run
    assert_store_error(limited["limited"], db, "could not be written", "disk I/O error", "disk is full")
    # The process still reads the file, and shows the run as its store has it.
    assert limited["runs"]["value"] == {"before": "completed", "limited": "running"}, limited


@pytest.mark.timeout(120)
def test_a_write_failing_on_the_last_step_does_not_report_the_run_completed(limit_last_step):
    _, db, _, limited = limit_last_step
    assert limited["runs"]["value"] == {"before": "completed", "limited": "running"}, limited
    assert_store_error(limited["limited"], db, "could not be written", "disk I/O error", "disk is full")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", ["limit_mid_run", "limit_last_step"])
def test_once_there_is_room_again_nothing_recorded_is_lost_and_a_new_context_continues_the_run(request, scenario):
    node, _, log, limited = request.getfixturevalue(scenario)
    # The same process writes again: a new run completes, and a new context continues the
    # interrupted run to its output.
    assert limited["new run, same context"].get("value") == {"status": "completed", "output": EXPECTED["after"]}
    assert limited["continue, new context"].get("value") == {"status": "completed", "output": EXPECTED["limited"]}
    assert limited["runs after"]["value"] == {"before": "completed", "limited": "completed", "after": "completed"}
    journal = limited["journal"]["value"]
    kinds = [(e["kind"], e["node"]) for e in journal if e["kind"] != "NodeFailed"]
    assert kinds == [
        ("RunStarted", None),
        ("NodeCompleted", "begin"),
        ("NodeCompleted", "middle"),
        ("NodeCompleted", "end"),
        ("RunFinished", None),
    ], journal
    # The attempt whose result was lost may be recorded as failed (interrupted): only that one.
    assert {e["node"] for e in journal if e["kind"] == "NodeFailed"} <= {node}, journal
    # Only the node whose completion was lost ran again (as the next attempt); the complete
    # run and the nodes recorded before the failure did not.
    ran = [(run_id, name, int(attempt)) for run_id, name, attempt in executions(log)]
    assert [r for r in ran if r[0] == "before"] == [
        ("before", "begin", 1),
        ("before", "middle", 1),
        ("before", "end", 1),
    ]
    again = [(name, attempt) for run_id, name, attempt in ran if run_id == "limited"]
    expected = {
        "middle": [("begin", 1), ("middle", 1), ("middle", 2), ("end", 1)],
        "end": [("begin", 1), ("middle", 1), ("end", 1), ("end", 2)],
    }
    assert again == expected[node], again


@pytest.mark.timeout(120)
def test_once_there_is_room_again_the_same_context_continues_the_run(limit_mid_run):
    _, _, _, limited = limit_mid_run
    continued = limited["continue, same context"]
    assert continued.get("value") == {"status": "completed", "output": EXPECTED["limited"]}, continued


# Realistic: run after run until the limit is reached wherever it falls.


def assert_nothing_lost(fill: Child, recover: Child, log: Path, ran_before_recovery: int) -> None:
    """Compares what the limited process reported with what a process with room finds."""
    reported = {r["what"]: r["value"]["output"] for r in fill.reports if r["what"].startswith("fill-") and r["ok"]}
    failed = [r for r in fill.reports if r["what"].startswith("fill-") and not r["ok"]]
    assert len(failed) == 1, fill
    interrupted = failed[0]["what"]
    assert len(reported) >= 2, f"the limit was hit before two runs completed; the test proved little\n{fill}"
    assert reported == {f"fill-{i}": i * 10 + 1 for i in range(len(reported))}

    stored = recover["runs"]["value"]
    journals = recover["journals"]["value"]
    full = [
        ("RunStarted", None),
        ("NodeCompleted", "first"),
        ("NodeCompleted", "second"),
        ("NodeCompleted", "third"),
        ("RunFinished", None),
    ]
    # Every run stored completed has its whole journal and its output; nothing is stored that
    # was not attempted; every run reported completed is stored. (That it is stored *completed*
    # is test_a_write_failing_on_the_last_step_does_not_report_the_run_completed.)
    assert set(reported) <= set(stored), (reported, stored)
    assert set(stored) <= {*reported, interrupted, "another"}, stored
    for run_id, status in stored.items():
        if status == "completed":
            assert [(e["kind"], e["node"]) for e in journals[run_id]] == full, (run_id, journals[run_id])
            assert journals[run_id][-1]["output"] == reported[run_id]
        else:
            assert [e["kind"] for e in journals[run_id]][:1] == ["RunStarted"], journals[run_id]
    for run_id in reported:
        # Its bodies ran once each before the limit (or, for a completion the store lost, a
        # last node again in recovery: the part test_a_write_failing_on_the_last_step covers).
        assert [node for r, node, _ in executions(log)[:ran_before_recovery] if r == run_id] == [
            "first",
            "second",
            "third",
        ]

    # Every unfinished run continues to its end, and no node whose completion was recorded
    # runs again: in recovery, exactly the nodes the journal lacks run, once each.
    unfinished = {run_id for run_id, status in stored.items() if status != "completed"}
    for run_id in unfinished:
        resumed = recover[f"resume {run_id}"]
        assert resumed["ok"], recover
        expected = 9991 if run_id == "another" else int(run_id.split("-")[1]) * 10 + 1
        assert resumed["value"] == {"status": "completed", "output": expected}
    assert set(recover["runs after"]["value"].values()) <= {"completed"}, recover
    ran_in_recovery = sorted((run_id, node) for run_id, node, _ in executions(log)[ran_before_recovery:])
    missing = sorted(
        (run_id, node)
        for run_id in unfinished
        for node in ("first", "second", "third")
        if {"kind": "NodeCompleted", "node": node} not in journals[run_id]
    )
    assert ran_in_recovery == missing, (ran_in_recovery, {r: journals[r] for r in unfinished})


def assert_fails_fast_after_the_limit(fill: Child, db: Path, *words: str) -> str:
    failed = next(r for r in fill.reports if r["what"].startswith("fill-") and not r["ok"])
    message = assert_store_error(failed, db, *words)
    # The process still works: it reads, and further writes fail the same clear way.
    assert fill["runs"]["ok"], fill
    assert_store_error(fill["another run"], db, *words)
    if "StoreError" in failed["classes"]:
        # The run's start was refused: there is nothing to continue.
        assert fill["continue"]["type"] == "RunNotFoundError", fill["continue"]
        assert failed["what"] not in fill["runs"]["value"], fill["runs"]
    else:
        assert_store_error(fill["continue"], db, *words)
    return message


@pytest.fixture(scope="module")
def file_size_limit(tmp_path_factory):
    """A process whose files may not grow past 256 KiB runs until a write fails; then a
    process without the limit reads and continues what is there."""
    tmp = tmp_path_factory.mktemp("fsize")
    db, log = tmp / "runs.db", tmp / "calls.log"
    log.touch()
    fill = child(f"fsize={256 * 1024}", "fill", db, FILL_RUNS, log=log)
    ran_before_recovery = len(executions(log))
    recover = child("plain", "recover", db, log=log)
    return db, log, fill, recover, ran_before_recovery


@pytest.mark.timeout(180)
def test_a_file_size_limit_fails_the_run_with_a_store_error_naming_the_file(file_size_limit):
    db, _, fill, _, _ = file_size_limit
    # SQLite reports EFBIG as SQLITE_IOERR_WRITE.
    message = assert_fails_fast_after_the_limit(fill, db, "could not be written", "disk I/O error", "disk is full")
    print(message)


@pytest.mark.timeout(180)
def test_a_file_size_limit_loses_nothing_recorded_and_the_runs_continue(file_size_limit):
    _, log, fill, recover, ran_before_recovery = file_size_limit
    assert_nothing_lost(fill, recover, log, ran_before_recovery)


@pytest.mark.timeout(180)
def test_a_failed_write_says_why(file_size_limit):
    db, _, fill, _, _ = file_size_limit
    failed = next(r for r in fill.reports if r["what"].startswith("fill-") and not r["ok"])
    message = failed["message"].replace(str(db), "<db>").lower()
    assert "too large" in message or "limit" in message, message


def _can_mount_tmpfs() -> Optional[str]:
    """None if a tmpfs can be mounted in a private mount namespace here, else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    missing = [tool for tool in ("unshare", "nsenter", "mount") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    with tempfile.TemporaryDirectory() as directory:
        mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "ferroflow-probe", directory]
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", *mount], capture_output=True, text=True, timeout=30
        )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def full_filesystem(tmp_path_factory):
    """A 256 KiB tmpfs fills up under a run; a process started while it is still full reads
    and fails clearly; then the filesystem is given room (remounted larger, as freeing space
    would) and a new process reads and continues what is there."""
    why_not = _can_mount_tmpfs()
    if why_not:
        pytest.skip(why_not)
    tmp = tmp_path_factory.mktemp("enospc")
    mountpoint, log = tmp / "disk", tmp / "calls.log"
    mountpoint.mkdir()
    log.touch()
    db = mountpoint / "runs.db"
    holder = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs -o size=256k ferroflow-full "$0" && echo mounted && exec sleep 600',
            str(mountpoint),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "mounted", "the tmpfs was not mounted"
        inside = ["nsenter", f"--target={holder.pid}", "--mount", "--"]
        fill = child("plain", "fill", db, FILL_RUNS, log=log, prefix=inside)
        restart = child("plain", "restart", db, log=log, prefix=inside)
        subprocess.run([*inside, "mount", "-o", "remount,size=16m", str(mountpoint)], check=True, timeout=30)
        ran_before_recovery = len(executions(log))
        recover = child("plain", "recover", db, log=log, prefix=inside)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    return db, log, fill, restart, recover, ran_before_recovery


@pytest.mark.timeout(180)
def test_a_full_filesystem_mid_run_fails_the_run_with_a_store_error_saying_the_disk_is_full(full_filesystem):
    db, _, fill, _, _, _ = full_filesystem
    message = assert_fails_fast_after_the_limit(fill, db, "disk is full")
    print(message)


@pytest.mark.timeout(180)
def test_a_process_started_on_a_still_full_filesystem_reads_and_fails_writes_clearly(full_filesystem):
    db, _, fill, restart, _, _ = full_filesystem
    completed = {r["what"] for r in fill.reports if r["what"].startswith("fill-") and r["ok"]}
    if restart["open"]["ok"]:
        stored = restart["runs"]["value"]
        assert {run_id for run_id, status in stored.items() if status == "completed"} == completed, restart
        assert_store_error(restart["another run"], db, "disk is full")
    else:
        assert_store_error(restart["open"], db, "disk is full")


@pytest.mark.timeout(180)
def test_a_full_filesystem_loses_nothing_recorded_and_the_run_continues(full_filesystem):
    _, log, fill, _, recover, ran_before_recovery = full_filesystem
    assert_nothing_lost(fill, recover, log, ran_before_recovery)
