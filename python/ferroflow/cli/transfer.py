"""``runs export`` and ``runs import``: moving runs, with their journals, from one context to
another (a laptop's SQLite file to the production Redis, say), one JSON object per line in the
``ferroflow.run/1`` format."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Iterable, List, TextIO

from ..errors import FerroflowError, RunFailedError
from ..types import RunStatus
from .common import UsageError, _one_line
from .load import load_graph, open_context


def runs_export(args: argparse.Namespace) -> int:
    context = open_context(args.context)
    if args.run:
        run_ids: Iterable[str] = args.run
    else:
        run_ids = [r.run_id for r in context.runs(graph=args.graph, status=args.status, limit=args.limit)]
    count = 0
    for run_id in run_ids:
        sys.stdout.write(context.export_run(run_id) + "\n")
        count += 1
    sys.stdout.flush()
    print(f"ferroflow runs export: {count} run(s) exported", file=sys.stderr)
    return 0


def runs_import(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph)
    # Submitted for the workers of the context unless told to execute here.
    context = open_context(args.context, execute=args.execute)
    imported: List[Dict[str, Any]] = []
    refused = 0
    source = _open_input(args.input)
    try:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            where = f"line {number}{_named(line)}"
            try:
                result = graph.import_run(line, context=context)
            except FerroflowError as e:
                print(f"ferroflow runs import: {where} refused: {_one_line(e)}", file=sys.stderr)
                refused += 1
                continue
            imported.append({"run_id": result.run_id, "status": result.status.value})
    finally:
        if source is not sys.stdin:
            source.close()
    if args.execute:
        # Running here: wait for each to settle, so that the process does not end under them.
        for row in imported:
            if row["status"] in (RunStatus.RUNNING.value, RunStatus.PENDING.value):
                try:
                    row["status"] = graph.wait(row["run_id"], context=context).status.value
                except RunFailedError:
                    row["status"] = RunStatus.FAILED.value
    for row in imported:
        print(json.dumps(row))
    print(f"ferroflow runs import: {len(imported)} run(s) imported, {refused} refused", file=sys.stderr)
    return 0 if refused == 0 else 1


def _open_input(path: str) -> TextIO:
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def _named(line: str) -> str:
    """`` (run ID)`` for a line that names its run, for messages about it."""
    try:
        run_id = json.loads(line).get("run_id")
    except (ValueError, AttributeError):
        return ""
    return f" (run {run_id!r})" if isinstance(run_id, str) else ""
