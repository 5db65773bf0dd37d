"""The commands that read and steer what a context holds: ``runs list``, ``runs show``,
``runs resume``, ``runs cancel`` and ``graphs``; and ``graph``, which draws a graph."""

from __future__ import annotations

import argparse
import json
from typing import Any, List, Optional

from ..errors import UnknownGraphError
from ..events import RunFinished
from ..graph import NO_ANSWER
from .common import _json_option, _short, _table, _when
from .load import load_graph, open_context


def runs_list(args: argparse.Namespace) -> int:
    runs = open_context(args.context).runs(graph=args.graph, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps([dict(r.__dict__, status=r.status.value) for r in runs], indent=2))
        return 0
    rows = [[r.run_id, r.graph, r.status.value, _when(r.created), _when(r.updated)] for r in runs]
    print(_table(rows, ["RUN", "GRAPH", "STATUS", "CREATED", "UPDATED"]) if rows else "no runs")
    return 0


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


def runs_cancel(args: argparse.Namespace) -> int:
    context = open_context(args.context)
    context._engine.cancel(args.run)
    print(f"cancelled {args.run}")
    return 0


def graph_draw(args: argparse.Namespace) -> int:
    print(load_graph(args.graph).to_mermaid(), end="")
    return 0
