"""``ferroflow map``: a graph run once per line of a JSONL file, the results written in input
order, the batch resumable."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import IO, Any, List, Tuple

from ..context import InMemory
from ..errors import FerroflowError
from ..types import RunResult
from .common import UsageError, _one_line, _os_problem
from .load import _open, load_graph


def _read_inputs(path: str) -> Tuple[bytes, List[Any]]:
    """The bytes of the ``--input`` file, and its inputs: one JSON value per non-blank line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"--input {path!r}: {_os_problem(e)}") from None
    inputs = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(
                f"--input {path!r}, line {number}: not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1})"
            ) from None
        if not text.strip():
            continue
        try:
            inputs.append(json.loads(text))
        except RecursionError:
            raise UsageError(f"--input {path!r}, line {number}: JSON nested too deeply") from None
        except ValueError as e:
            raise UsageError(f"--input {path!r}, line {number}: not JSON: {_one_line(e)}") from None
    return raw, inputs


def _open_output(path: str) -> IO[str]:
    """The ``--output`` file, created (or emptied) for writing."""
    try:
        return open(path, "w", encoding="utf-8")
    except FileNotFoundError:
        directory = os.path.dirname(path) or "."
        raise UsageError(f"--output {path!r}: cannot write it: no such directory {directory!r}") from None
    except OSError as e:
        raise UsageError(f"--output {path!r}: cannot write it: {_os_problem(e)}") from None


def map_batch(args: argparse.Namespace) -> int:
    raw, inputs = _read_inputs(args.input)
    graph = load_graph(args.graph)
    # The same graph on the same file is the same batch: mapping it again resumes it.
    batch = args.batch or f"{graph.name}-{hashlib.sha256(graph.version.encode() + raw).hexdigest()[:12]}"
    context = _open(args, execute=args.execute) if args.context != "memory" else InMemory()
    # Opened before any run starts: an output that cannot be written fails nothing but this.
    with _open_output(args.output) as out:
        bar = _ProgressBar(len(inputs)) if sys.stderr.isatty() else None
        results = graph.map(
            inputs,
            context=context,
            concurrency=args.concurrency,
            return_exceptions=True,
            progress=bar.update if bar else None,
            batch=batch,
        )
        if bar:
            bar.close()
        failed = 0
        for i, result in enumerate(results):
            record: dict = {"run_id": f"{batch}-{i}"}
            if isinstance(result, FerroflowError):
                failed += 1
                record.update(status="failed", error=str(result))
            elif isinstance(result, RunResult):
                record.update(status=result.status.value, waiting=result.waiting)
            else:
                record.update(status="completed", output=result)
            out.write(json.dumps(record) + "\n")
    print(
        f"ferroflow map: {len(inputs)} runs in batch {batch}: {len(inputs) - failed} settled, {failed} failed",
        file=sys.stderr,
    )
    return 1 if failed else 0


class _ProgressBar:
    """`done/total` on one line of the terminal, redrawn as runs finish."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.shown = -1

    def update(self, done: int, total: int) -> None:
        if done == self.shown:
            return
        self.shown = done
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
