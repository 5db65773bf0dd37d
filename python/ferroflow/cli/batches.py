"""``ferroflow batches list`` and ``ferroflow batches show``: the batches of a context, as
``ferroflow map`` (``graph.map(..., batch=NAME)``) names their runs: ``NAME-<i>``.

A batch is found from the listing of the context's runs (``context.runs``, what ``ferroflow
runs list`` shows), so its counts are those of its runs' records. ``show`` also reads each
run's journal (one read of the store per run) to total the tokens of its model calls, unless
``--no-tokens``; and the journals of the failed runs it lists."""

from __future__ import annotations

import argparse
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..context import Context
from ..errors import FerroflowError
from ..events import Event, RunFinished
from ..types import RunInfo
from .common import _one_line, _table, _when
from .events import Usage, usage_of
from .load import open_context
from .progress import format_eta, format_rate

#: The statuses a batch's runs are counted by: pending runs count as running.
GROUPS = ("completed", "failed", "running", "waiting", "cancelled")
_GROUP = {"pending": "running", **{g: g for g in GROUPS}}
#: How many failed runs ``show`` lists.
FAILED_SHOWN = 20
#: Journals read at once (each is one call to the store, made without the GIL).
_READERS = 16

_BATCH_RUN = re.compile(r"(?P<name>.+)-(?P<index>[0-9]+)")
# The ids ferroflow makes itself (UUIDs) are no batch's, even when their last group is digits.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def batch_of(run_id: str) -> Optional[Tuple[str, int]]:
    """``(NAME, i)`` for a run named ``NAME-i`` (``i`` decimal digits), else ``None``."""
    match = _BATCH_RUN.fullmatch(run_id)
    if match is None or _UUID.fullmatch(run_id):
        return None
    return match.group("name"), int(match.group("index"))


class Batch:
    """The runs of one batch (of one graph, for ``list``), and their counts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.runs: List[Tuple[int, RunInfo]] = []

    def add(self, index: int, run: RunInfo) -> None:
        self.runs.append((index, run))

    @property
    def graphs(self) -> List[str]:
        return sorted({r.graph for _, r in self.runs})

    def counts(self) -> Dict[str, int]:
        counts = dict.fromkeys(GROUPS, 0)
        for _, run in self.runs:
            counts[_GROUP[run.status.value]] += 1
        return counts

    @property
    def created(self) -> float:
        return min(r.created for _, r in self.runs)

    @property
    def updated(self) -> float:
        return max(r.updated for _, r in self.runs)

    def settled(self) -> List[RunInfo]:
        """The runs that settled: every one but those running (or pending), as ``map`` counts
        them (a run waiting for a person has settled)."""
        return [r for _, r in self.runs if _GROUP[r.status.value] != "running"]

    def throughput(self) -> Optional[float]:
        """Runs settled per second, from the first run's creation to the last settled run's
        last update (at least a millisecond, the records' resolution); ``None`` while none
        has settled."""
        settled = self.settled()
        if not settled:
            return None
        span = max(r.updated for r in settled) - self.created
        return len(settled) / max(span, 0.001)

    def eta(self) -> Optional[float]:
        """Seconds until the runs still running have settled at :meth:`throughput`: 0 when
        none is running, ``None`` (unknown) while no run has settled."""
        running = self.counts()["running"]
        if running == 0:
            return 0.0
        rate = self.throughput()
        return None if rate is None else running / rate

    def failed(self) -> List[Tuple[int, RunInfo]]:
        return sorted((i, r) for i, r in self.runs if r.status.value == "failed")

    def summary(self) -> Dict[str, Any]:
        """The counts and times, as ``--json`` gives them."""
        return {
            "total": len(self.runs),
            "counts": self.counts(),
            "created": self.created,
            "updated": self.updated,
        }


def _listed(context: Context, graph: Optional[str], limit: int) -> List[RunInfo]:
    runs = context.runs(graph=graph, limit=limit)
    if len(runs) == limit:
        print(f"ferroflow: only the newest {limit:,} runs were looked at (--limit)", file=sys.stderr)
    return runs


def _batches(runs: Iterable[RunInfo], by_graph: bool) -> Dict[Tuple[str, str], Batch]:
    batches: Dict[Tuple[str, str], Batch] = {}
    for run in runs:
        named = batch_of(run.run_id)
        if named is None:
            continue
        key = (named[0], run.graph if by_graph else "")
        batches.setdefault(key, Batch(named[0])).add(named[1], run)
    return batches


def batches_list(args: argparse.Namespace) -> int:
    batches = sorted(
        _batches(_listed(open_context(args.context), args.graph, args.limit), by_graph=True).values(),
        key=lambda b: (-b.created, b.name, b.graphs),
    )
    if args.json:
        print(json.dumps([{"batch": b.name, "graph": b.graphs[0], **b.summary()} for b in batches], indent=2))
        return 0
    rows = []
    for b in batches:
        counts = b.counts()
        rows.append(
            [b.name, b.graphs[0], f"{len(b.runs):,}"]
            + [f"{counts[g]:,}" for g in GROUPS]
            + [_when(b.created), _when(b.updated)]
        )
    header = ["BATCH", "GRAPH", "TOTAL", *(g.upper() for g in GROUPS), "CREATED", "UPDATED"]
    print(_table(rows, header) if rows else "no batches (no run is named NAME-<number>)")
    return 0


def _journals(context: Context, run_ids: List[str]) -> Dict[str, List[Event]]:
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        return dict(zip(run_ids, pool.map(context.journal, run_ids)))


def _failure(run: RunInfo, journal: List[Event]) -> Dict[str, Any]:
    """The failed run's failing node and error, from its last ``RunFinished``."""
    finished = next((e for e in reversed(journal) if isinstance(e, RunFinished)), None)
    error = finished.error if finished is not None else None
    return {
        "run_id": run.run_id,
        "node": finished.node if finished is not None else None,
        "error_type": error.type if error is not None else None,
        "error_message": error.message if error is not None else None,
        "failed_at": finished.at if finished is not None else run.updated,
    }


def batches_show(args: argparse.Namespace) -> int:
    context = open_context(args.context)
    batch = Batch(args.name)
    for run in _listed(context, args.graph, args.limit):
        named = batch_of(run.run_id)
        if named is not None and named[0] == args.name:
            batch.add(named[1], run)
    if not batch.runs:
        of = f" of graph '{args.graph}'" if args.graph else ""
        raise FerroflowError(f"no batch '{args.name}'{of} in this context: no run is named {args.name}-<number>")
    failed = batch.failed()
    shown = failed[:FAILED_SHOWN]
    wanted = [r.run_id for _, r in batch.runs] if args.tokens else [r.run_id for _, r in shown]
    journals = _journals(context, wanted)
    usage: Optional[Usage] = None
    if args.tokens:
        usage = Usage()
        for journal in journals.values():
            usage.merge(usage_of(journal))
    failures = [_failure(r, journals[r.run_id]) for _, r in shown]
    settled = batch.settled()
    rate, eta = batch.throughput(), batch.eta()
    if args.json:
        print(
            json.dumps(
                dict(
                    batch=batch.name,
                    graphs=batch.graphs,
                    **batch.summary(),
                    last_settled=max((r.updated for r in settled), default=None),
                    settled=len(settled),
                    throughput=rate,
                    eta_seconds=eta,
                    tokens=None if usage is None else usage.json(),
                    failed_runs=failures,
                ),
                indent=2,
            )
        )
        return 0
    counts = batch.counts()
    print(f"{'batch':<12}{batch.name}")
    print(f"{'graph':<12}{', '.join(batch.graphs)}")
    print(f"{'runs':<12}{len(batch.runs):,}: " + ", ".join(f"{counts[g]:,} {g}" for g in GROUPS))
    print(f"{'started':<12}{_when(batch.created)} (the first run created)")
    print(f"{'updated':<12}{_when(batch.updated)} (the last update of a run)")
    if rate is None:
        print(f"{'throughput':<12}- (no run has settled)")
    else:
        span = max(r.updated for r in settled) - batch.created
        print(f"{'throughput':<12}{format_rate(rate)} runs/s ({len(settled):,} settled in {span:.3f}s)")
    if counts["running"]:
        print(f"{'eta':<12}{format_eta(eta)} ({counts['running']:,} running or pending)")
    else:
        print(f"{'eta':<12}- (every run has settled)")
    if usage is None:
        print(f"{'tokens':<12}not counted (--no-tokens)")
    else:
        print("\n".join(usage.lines("tokens")))
    if failures:
        more = f", the first {len(shown)} shown" if len(failed) > len(shown) else ""
        print(f"\nfailed runs ({len(failed):,}{more}):")
        rows = [
            [
                f["run_id"],
                f["node"] or "-",
                _when(f["failed_at"]),
                f"{f['error_type']}: {_one_line(f['error_message'])[:120]}" if f["error_type"] else "-",
            ]
            for f in failures
        ]
        print(_table(rows, ["RUN", "NODE", "FAILED", "ERROR"]))
    return 0
