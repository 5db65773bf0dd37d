"""The commands that read and steer what a context holds: ``runs list``, ``runs show``,
``runs resume``, ``runs retry``, ``runs fork``, ``runs replay``, ``runs prune``, ``runs
cancel`` and ``graphs``; and ``graph``, which draws a graph."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from ..errors import RunFailedError, RunNotFoundError, UnknownGraphError
from ..events import RunFinished
from ..graph import NO_ANSWER
from .common import UsageError, _json_option, _short, _table, _when
from .load import load_graph, open_context


def runs_list(args: argparse.Namespace) -> int:
    context = open_context(args.context)
    runs = context.runs(graph=args.graph, status=args.status, limit=args.limit)
    if args.json:
        print(
            json.dumps(
                [dict(r.__dict__, status=r.status.value, nodes=_node_states(context, r.run_id)) for r in runs], indent=2
            )
        )
        return 0
    rows = [[r.run_id, r.graph, r.status.value, _when(r.created), _when(r.updated)] for r in runs]
    print(_table(rows, ["RUN", "GRAPH", "STATUS", "CREATED", "UPDATED"]) if rows else "no runs")
    return 0


def _node_states(context: Any, run_id: str) -> Optional[List[Dict[str, str]]]:
    """Each node of the run, with its kind and status (``None`` for a run whose graph's
    structure the store lacks)."""
    try:
        return [{"name": n.name, "kind": n.kind, "status": n.status} for n in context.nodes(run_id)]
    except (UnknownGraphError, RunNotFoundError):  # no structure, or gone since it was listed
        return None


def graphs_list(args: argparse.Namespace) -> int:
    graphs = open_context(args.context).graphs()
    if args.json:
        print(json.dumps([dict(g.__dict__, spec=dict(g.spec)) for g in graphs], indent=2))
        return 0
    rows = [[g.name, g.version, str(len(g.spec.get("nodes", []))), _when(g.registered)] for g in graphs]
    print(_table(rows, ["GRAPH", "VERSION", "NODES", "REGISTERED"]) if rows else "no graphs registered")
    return 0


def runs_show(args: argparse.Namespace) -> int:
    context = open_context(args.context)
    info = context.run_info(args.run)
    journal = context.journal(args.run)
    # The same derivation every view shares; a run an earlier ferroflow wrote may lack its
    # graph's structure in the store, and is then shown without its node table.
    try:
        nodes: Optional[List[Any]] = context.nodes(args.run)
        missing = ""
    except UnknownGraphError as e:
        nodes, missing = None, str(e)
    started = journal[0] if journal else None
    last = journal[-1] if journal else None
    finished = last if isinstance(last, RunFinished) else None
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": args.run,
                    "graph": info.graph,
                    "version": info.version,
                    "status": info.status.value,
                    "input": getattr(started, "input", None),
                    "output": getattr(finished, "output", None),
                    "nodes": None
                    if nodes is None
                    else [dict(n.__dict__, error=n.error.__dict__ if n.error else None) for n in nodes],
                },
                indent=2,
                default=repr,
            )
        )
        return 0
    print(f"run      {args.run}")
    print(f"graph    {info.graph} (version {info.version})")
    print(f"status   {info.status.value}")
    print(f"started  {_when(started.at if started else None)}")
    print(f"input    {_short(getattr(started, 'input', None))}")
    if finished is not None:
        print(f"ended    {_when(finished.at)}")
        if finished.output is not None:
            print(f"output   {_short(finished.output)}")
        if finished.error is not None:
            print(f"error    at {finished.node}: {finished.error.type}: {finished.error.message}")
    print()
    if nodes is None:
        print(f"(no node table: {missing})")
        return 0
    rows = [
        [
            n.name,
            n.kind,
            n.status,
            str(n.attempts),
            _when(n.finished_at),
            _short(n.output, 40) if n.output is not None else "",
            f"{n.error.type}: {n.error.message}" if n.error else "",
        ]
        for n in nodes
    ]
    print(_table(rows, ["NODE", "KIND", "STATUS", "ATTEMPTS", "AT", "OUTPUT", "ERROR"]))
    return 0


def runs_resume(args: argparse.Namespace) -> int:
    value = NO_ANSWER if args.value is None else _json_option("--value", args.value)
    graph = load_graph(args.graph)
    result = graph.resume(args.run, value, node=args.node, context=open_context(args.context), timeout=args.timeout)
    print(
        json.dumps(
            {
                "run_id": result.run_id,
                "status": result.status.value,
                "output": result.output,
                "waiting": dict(result.waiting),
            },
            default=repr,
        )
    )
    return 0


def runs_retry(args: argparse.Namespace) -> int:
    """One failed run (``RUN``), or every failed run of the graph that ``--batch`` and
    ``--since`` select; ``--dry-run`` only counts them."""
    graph = load_graph(args.graph)
    context = open_context(args.context)
    if args.run is not None:
        if args.batch is not None or args.since is not None:
            raise UsageError("give a RUN or --batch/--since, not both")
        if args.dry_run:
            info = context.run_info(args.run)
            print(f"would retry 1 run: {args.run} ({info.status.value})" if info.status.value == "failed" else "0 runs")
            return 0
        print(
            json.dumps(
                _outcome(lambda: graph.retry(args.run, context=context, by=args.by, timeout=args.timeout)),
                default=repr,
            )
        )
        return 0
    since = None if args.since is None else time.time() - _duration("--since", args.since)
    failed = [
        r.run_id
        for r in context.runs(graph=graph.name, status="failed", limit=args.limit)
        if (args.batch is None or _in_batch(r.run_id, args.batch)) and (since is None or (r.updated or 0) >= since)
    ]
    if args.dry_run:
        print(f"would retry {len(failed)} failed run(s) of graph '{graph.name}'")
        for run_id in failed:
            print(run_id)
        return 0
    outcomes = asyncio.run(_retry_all(graph, context, failed, args))
    counts: Dict[str, int] = {}
    for outcome in outcomes:
        print(json.dumps(outcome, default=repr))
        counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to retry"
    print(f"ferroflow runs retry: {len(failed)} run(s) of graph '{graph.name}' retried: {summary}", file=sys.stderr)
    return 0 if counts.get("failed", 0) == 0 else 1


def runs_fork(args: argparse.Namespace) -> int:
    """A new run from ``RUN`` at ``--at``, with the parent's outputs before it (and, with
    ``--output``, that output for the node itself); prints the fork's result."""
    graph = load_graph(args.graph)
    given = {"output": args.output, "input": args.input}
    values = {what: _json_option(f"--{what}", text) for what, text in given.items() if text is not None}
    outcome = _outcome(
        lambda: graph.fork(
            args.run,
            at=args.at,
            context=open_context(args.context),
            new_run_id=args.run_id,
            by=args.by,
            timeout=args.timeout,
            **values,
        )
    )
    print(json.dumps(dict(outcome, parent=args.run), default=repr))
    return 1 if outcome["status"] == "failed" else 0


def runs_prune(args: argparse.Namespace) -> int:
    """Deletes the finished runs older than ``--older-than`` (or, with ``--dry-run``, lists
    them); never a running or waiting one."""
    older_than = _duration("--older-than", args.older_than)
    pruned = open_context(args.context).prune(
        older_than=older_than, status=args.status, graph=args.graph, dry_run=args.dry_run
    )
    for run_id in pruned:
        print(run_id)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"ferroflow runs prune: {verb} {len(pruned)} finished run(s) older than {args.older_than}", file=sys.stderr)
    return 0


def runs_replay(args: argparse.Namespace) -> int:
    """Runs the graph's code again over ``RUN`` in memory, with its recorded model calls, tool
    calls and answers; prints where it first diverges. Exit status 1 if it does."""
    graph = load_graph(args.graph)
    replay = graph.replay(args.run, source=open_context(args.context), timeout=args.timeout)
    divergence = replay.divergence
    if args.json:
        found = None if divergence is None else dict(divergence.__dict__)
        print(
            json.dumps({"run_id": args.run, "replay": _result_json(replay.result), "divergence": found}, default=repr)
        )
    elif divergence is None:
        print(
            f"run {args.run}: the replay gives every recorded output ({replay.result.status.value}); nothing was called"
        )
    else:
        item = "" if divergence.item is None else f" (element {divergence.item})"
        print(f"run {args.run}: the replay diverges at node '{divergence.node}'{item}: {divergence.why}")
        if divergence.recorded is not None or divergence.replayed is not None:
            print(f"  recorded: {_short(divergence.recorded, 200)}")
            print(f"  replayed: {_short(divergence.replayed, 200)}")
    return 0 if divergence is None else 1


async def _retry_all(graph: Any, context: Any, run_ids: List[str], args: argparse.Namespace) -> List[Dict[str, Any]]:
    gate = asyncio.Semaphore(args.concurrency)

    async def one(run_id: str) -> Dict[str, Any]:
        async with gate:
            try:
                result = await graph.aretry(run_id, context=context, by=args.by, timeout=args.timeout)
            except RunFailedError as e:
                return _failed_json(e)
            return _result_json(result)

    return list(await asyncio.gather(*(one(run_id) for run_id in run_ids)))


def _outcome(call: Callable[[], Any]) -> Dict[str, Any]:
    """What ``call`` (a retry or a fork, waiting for the run) gave, as a line of JSON: the
    run's result, or where it failed again."""
    try:
        return _result_json(call())
    except RunFailedError as e:
        return _failed_json(e)


def _failed_json(error: RunFailedError) -> Dict[str, Any]:
    return {
        "run_id": error.run_id,
        "status": "failed",
        "node": error.node,
        "error": f"{error.error_type}: {error.error_message}",
    }


def _result_json(result: Any) -> Dict[str, Any]:
    return {
        "run_id": result.run_id,
        "status": result.status.value,
        "output": result.output,
        "waiting": dict(result.waiting),
    }


def _in_batch(run_id: str, batch: str) -> bool:
    """Whether ``run_id`` is one of batch ``batch``'s runs (``{batch}-{i}``, as ``map`` names them)."""
    return run_id.startswith(f"{batch}-") and run_id[len(batch) + 1 :].isdigit()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(option: str, text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``2h`` or ``7d``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise UsageError(f"{option} must be a duration such as 30s, 15m, 2h or 7d, not {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def runs_cancel(args: argparse.Namespace) -> int:
    context = open_context(args.context)
    context._engine.cancel(args.run)
    print(f"cancelled {args.run}")
    return 0


def graph_draw(args: argparse.Namespace) -> int:
    print(load_graph(args.graph).to_mermaid(), end="")
    return 0
