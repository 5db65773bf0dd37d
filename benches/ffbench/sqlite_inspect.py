"""Reads a SQLite file in a process of its own and prints what it holds as one JSON line:

    python -m ffbench.sqlite_inspect PATH

(sqlite_tools._inspect_db runs it and says what the fields are.) Never open the engine's file
with the stdlib's sqlite3 in the process where a `Sqlite` context has it open: that is a second
copy of SQLite in one process, POSIX locks are per process, and when the stdlib's connection
closes it takes itself for the last one and deletes the WAL under the engine, whose later
commits are then lost. Hence a process of its own, which imports nothing but the stdlib.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from typing import Any, Dict


def main(path: str) -> int:
    conn = sqlite3.connect(path, timeout=10.0)
    out: Dict[str, Any] = {"busy": conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]}
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if {"runs", "journal"} <= tables:
        out["statuses"] = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        nbytes = "sum(length(CAST(entry AS BLOB)))"
        try:
            rows = conn.execute(
                f"SELECT json_extract(entry, '$.type'), count(*), {nbytes} FROM journal GROUP BY 1 ORDER BY min(seq)"
            ).fetchall()
        except sqlite3.OperationalError:  # an SQLite without JSON functions
            rows = conn.execute(f"SELECT '?', count(*), {nbytes} FROM journal").fetchall()
        out["by_type"] = {kind: [count, total] for kind, count, total in rows}
        out["payload"] = sum(total for _, _, total in rows)
        out["runs_indexes"] = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'"
        ).fetchone()[0]
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'journal'").fetchone()[0]
        out["journal_without_rowid"] = "WITHOUT ROWID" in sql.upper()
    conn.close()
    out["bytes"] = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
