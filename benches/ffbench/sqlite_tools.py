"""SQLite from the benchmark's side (W3, W4, W4c): what a store's file holds, read in another process
(sqlite_inspect.py), the frames and commits in its WAL, the plain-`sqlite3` baseline, and the
group-commit context.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from typing import Any, Callable, Dict, Sequence, Tuple

from .common import _bench_env

BATCH_WINDOW = 0.005  # W4, W4c: `ff.Sqlite(path, durability="batch", batch_window=...)` (the default window)


def _fs_type(path: str) -> str:
    """The type of the file system ``path`` is on (ext4, tmpfs, ...), from /proc/mounts."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def _inspect_db(path: str) -> Dict[str, Any]:
    """What the SQLite file at ``path`` holds, read in another process (sqlite_inspect.py) after a
    `PRAGMA wal_checkpoint(TRUNCATE)`: ``bytes`` (the file plus what is left of its WAL,
    nothing after that checkpoint) and, for a ferroflow store, its runs by status, the
    journal's entries and their bytes (the `entry` column) by entry type, the number of
    indexes on `runs`, and whether `journal` is a WITHOUT ROWID table."""
    cmd = [sys.executable, "-m", "ffbench.sqlite_inspect", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30.0, env=_bench_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{path}: could not be read: {proc.stderr.strip()[-1000:]}")
    out: Dict[str, Any] = json.loads(proc.stdout)
    if out["busy"]:
        raise RuntimeError(f"{path}: the WAL checkpoint could not complete (the database stayed busy)")
    return out


def _db_bytes(path: str) -> int:
    return int(_inspect_db(path)["bytes"])


def _wal_counts(path: str) -> Tuple[int, int]:
    """Frames (one per page written) and commits (transactions) in the WAL of the database at
    ``path``, read from the WAL file's frame headers alone (safe while a connection of another
    SQLite copy has the database open). Counts only until the first checkpoint, after which
    SQLite writes the WAL from its start again."""
    with open(path, "rb") as f:
        page = int.from_bytes(f.read(100)[16:18], "big")
    page = 65536 if page == 1 else page
    frames = commits = 0
    try:
        with open(path + "-wal", "rb") as f:
            header = f.read(32)  # magic, version, page size, checkpoint seq, salt-1, salt-2, checksums
            salts = header[16:24]
            while True:
                frame = f.read(24)  # page number, db size after commit (0 if not a commit), salts, checksums
                if len(frame) < 24 or frame[8:16] != salts:
                    break
                frames += 1
                commits += int.from_bytes(frame[4:8], "big") != 0
                f.seek(page, os.SEEK_CUR)
    except FileNotFoundError:
        pass
    return frames, commits


def _open_wal(path: str) -> sqlite3.Connection:
    """A plain `sqlite3` connection in WAL mode with synchronous=NORMAL, as ferroflow's store.
    Python's default transaction handling: an INSERT opens a transaction, `commit()` ends it."""
    conn = sqlite3.connect(path)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"{path}: SQLite refused WAL mode ({mode})")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _raw_sqlite(
    path: str, funcs: Sequence[Callable[[Any], Any]], per_run: bool = False
) -> Tuple[Callable[[int, Any], Any], Any]:
    """W4's baseline: plain `sqlite3` (WAL, synchronous=NORMAL), and for each node of the
    chain: call it, INSERT one row holding its output as JSON, COMMIT. Returns
    ``run(i, x)`` (run number ``i``, input ``x``; returns the last output) and the connection.
    With ``per_run``, one COMMIT per run after its last INSERT instead (the like-for-like
    floor for group commit, which also writes a run's steps together)."""
    conn = _open_wal(path)
    conn.execute("CREATE TABLE outputs (run INTEGER NOT NULL, node TEXT NOT NULL, output TEXT NOT NULL)")
    conn.commit()
    execute, commit, dumps = conn.execute, conn.commit, json.dumps
    steps = [(f, f.__name__) for f in funcs]
    insert = "INSERT INTO outputs (run, node, output) VALUES (?, ?, ?)"

    def run(i: int, x: Any) -> Any:
        for f, name in steps:
            x = f(x)
            execute(insert, (i, name, dumps(x)))
            commit()
        return x

    def run_once(i: int, x: Any) -> Any:
        for f, name in steps:
            x = f(x)
            execute(insert, (i, name, dumps(x)))
        commit()
        return x

    return (run_once if per_run else run), conn


def _batch_sqlite(ff: Any, path: str) -> Any:
    """A `Sqlite` context with group commit (W4, W4c): a run's steps written together at
    most BATCH_WINDOW after they happen, and at once when the run settles."""
    return ff.Sqlite(path, durability="batch", batch_window=BATCH_WINDOW)


def _check_store(path: str, runs: int, what: str) -> Dict[str, Any]:
    """Reads ferroflow's store at ``path`` (see _inspect_db), checking that it holds ``runs``
    runs, every one completed."""
    stats = _inspect_db(path)
    if stats.get("statuses") != {"completed": runs}:
        raise AssertionError(f"{what}: the store holds runs {stats.get('statuses')}, expected {runs} completed")
    return stats
