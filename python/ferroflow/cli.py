"""The ``ferroflow`` command: inspect, continue and cancel runs; draw graphs.

    ferroflow runs list --context runs.db [--graph NAME] [--status STATUS] [--limit N] [--json]
    ferroflow runs show RUN --context runs.db [--json]
    ferroflow runs resume RUN --context runs.db --graph MODULE:GRAPH [--value JSON] [--node NODE]
    ferroflow runs cancel RUN --context runs.db
    ferroflow worker MODULE:GRAPH [MODULE:GRAPH ...] --context runs.db [--concurrency N] [--grace SECONDS]
    ferroflow map MODULE:GRAPH --input IN.jsonl --output OUT.jsonl --context runs.db [--batch NAME]
                  [--concurrency N] [--no-execute]
    ferroflow graph MODULE:GRAPH
    ferroflow serve MODULE:GRAPH [MODULE:GRAPH ...] --context CONTEXT [--listen 127.0.0.1:50051]
                    [--token-file PATH] [--tls-cert PEM --tls-key PEM] [--max-input-bytes N]

``--context`` is a SQLite file (``runs.db`` or ``sqlite:///path/runs.db``) or a Redis server
(``redis://127.0.0.1:6379?namespace=NAME``). Inspecting and
cancelling need only the file; continuing a run executes its nodes, so it needs the graph,
named as ``module:attribute`` (the module is imported from the current directory first).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import ipaddress
import json
import os
import signal
import sys
import time
from typing import Any, List, Optional, Sequence

from . import _native
from .context import Context, InMemory, Nats, Redis, Sqlite
from .errors import FerroflowError
from .events import RunFinished
from .graph import NO_ANSWER, Graph
from .types import RunResult

__all__ = ["main"]

CONTEXT_HELP = "a SQLite file (or sqlite:///path), redis://HOST:PORT?namespace=NAME or nats://HOST:PORT?namespace=NAME"


def open_context(spec: str, **options: Any) -> Context:
    """A context from its command-line form: ``memory``, ``sqlite:///path`` or a file path,
    ``redis://host:port[/db][?namespace=NAME]`` or ``nats://host:port[?namespace=NAME]``;
    ``options`` go to a durable context."""
    if spec == "memory":
        return InMemory()
    # Read by the same code as `ferroflow-server --context`: the namespace travels as a
    # query parameter, the rest of the URL goes to the client.
    kind, location, namespace = _native.parse_context(spec)
    if kind == "sqlite":
        return Sqlite(location, **options)
    if kind == "redis":
        return Redis(location, namespace=namespace, **options)
    return Nats(location, namespace=namespace, **options)


def load_graph(spec: str) -> Graph:
    """The graph named ``module:attribute``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise SystemExit(f"ferroflow: name the graph as MODULE:GRAPH, not {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit(f"ferroflow: cannot import {module_name!r}: {e}") from None
    graph = getattr(module, attribute, None)
    if not isinstance(graph, Graph):
        raise SystemExit(f"ferroflow: {spec!r} is not a ferroflow.Graph")
    return graph


def _when(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="milliseconds")


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


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
    journal = context.journal(args.run)
    nodes = context.nodes(args.run)
    started = journal[0] if journal else None
    last = journal[-1] if journal else None
    finished = last if isinstance(last, RunFinished) else None
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": args.run,
                    "graph": getattr(started, "graph", None),
                    "status": finished.status.value if finished else "unfinished",
                    "input": getattr(started, "input", None),
                    "output": getattr(finished, "output", None),
                    "nodes": [dict(n.__dict__, error=n.error.__dict__ if n.error else None) for n in nodes],
                },
                indent=2,
                default=repr,
            )
        )
        return 0
    print(f"run      {args.run}")
    print(f"graph    {getattr(started, 'graph', '?')} (version {getattr(started, 'version', '?')})")
    print(f"status   {finished.status.value if finished else 'unfinished (running, waiting, or stopped)'}")
    print(f"started  {_when(started.at if started else None)}")
    print(f"input    {_short(getattr(started, 'input', None))}")
    if finished is not None:
        print(f"ended    {_when(finished.at)}")
        if finished.output is not None:
            print(f"output   {_short(finished.output)}")
        if finished.error is not None:
            print(f"error    at {finished.node}: {finished.error.type}: {finished.error.message}")
    rows = [
        [
            n.name,
            n.status,
            str(n.attempts),
            _when(n.finished_at),
            _short(n.output, 40) if n.output is not None else "",
            f"{n.error.type}: {n.error.message}" if n.error else "",
        ]
        for n in nodes
    ]
    print()
    print(_table(rows, ["NODE", "STATUS", "ATTEMPTS", "AT", "OUTPUT", "ERROR"]))
    return 0


def runs_resume(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph)
    value = NO_ANSWER if args.value is None else json.loads(args.value)
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
    open_context(args.context)._engine.cancel(args.run)
    print(f"cancelled {args.run}")
    return 0


def map_batch(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph)
    with open(args.input, "rb") as f:
        raw = f.read()
    inputs = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                inputs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"ferroflow: {args.input}, line {number}: not JSON: {e}") from None
    # The same graph on the same file is the same batch: mapping it again resumes it.
    batch = args.batch or f"{graph.name}-{hashlib.sha256(graph.version.encode() + raw).hexdigest()[:12]}"
    context = open_context(args.context, execute=args.execute) if args.context != "memory" else InMemory()
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
    with open(args.output, "w") as out:
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


class _Stop(Exception):
    """Raised by the SIGTERM handler of ``ferroflow worker``."""


def worker(args: argparse.Namespace) -> int:
    graphs = [load_graph(spec) for spec in args.graphs]
    context = open_context(args.context, lease=args.lease)

    def stop(signum: int, frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    names = ", ".join(f"{g.name}@{g.version}" for g in graphs)
    print(f"ferroflow worker: working on {names} in {context!r}", file=sys.stderr, flush=True)
    try:
        context.work(*graphs, concurrency=args.concurrency, grace=args.grace)
    except (_Stop, KeyboardInterrupt) as e:
        print(f"ferroflow worker: stopped ({e or 'SIGINT'})", file=sys.stderr, flush=True)
    return 0


def serve(args: argparse.Namespace) -> int:
    """The gRPC service of ``ferroflow-server``, in a process that executes the graphs' nodes
    too; in a durable context it also works as a worker on them, so that it continues its
    own runs (and those of other processes) after a restart."""
    graphs = [load_graph(spec) for spec in args.graphs]
    context = open_context(args.context, lease=args.lease)
    token = os.environ.get("FERROFLOW_SERVER_TOKEN")
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    host = args.listen.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        print(f"ferroflow: --listen must be IP:PORT, not {args.listen!r}", file=sys.stderr)
        return 2
    if not loopback and not token and not args.allow_unauthenticated:
        print(
            f"ferroflow: listening on {args.listen} would let anyone who can reach it start and cancel runs: "
            "give --token-file (and --tls-cert/--tls-key), or pass --allow-unauthenticated",
            file=sys.stderr,
        )
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("ferroflow: TLS needs both --tls-cert and --tls-key", file=sys.stderr)
        return 2

    def stop(signum: int, frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    server = context.serve(
        *graphs,
        listen=args.listen,
        token=token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_input_bytes=args.max_input_bytes,
    )
    names = ", ".join(f"{g.name}@{g.version}" for g in graphs)
    # The one line on stdout, as `ferroflow-server` prints it: scripts wait for it.
    print(f"ferroflow serve listening on {server.address} serving {names} in {context!r}", flush=True)
    try:
        if context.durable:
            context.work(*graphs, concurrency=args.concurrency, grace=args.grace)
        else:
            while True:
                time.sleep(3600)
    except (_Stop, KeyboardInterrupt) as e:
        print(f"ferroflow serve: stopped ({e or 'SIGINT'})", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return 0


def graph_draw(args: argparse.Namespace) -> int:
    print(load_graph(args.graph).to_mermaid(), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ferroflow", description="Inspect and steer ferroflow runs.")
    commands = top.add_subparsers(dest="command", required=True)

    runs = commands.add_parser("runs", help="list, show, continue or cancel runs").add_subparsers(
        dest="action", required=True
    )
    listing = runs.add_parser("list", help="list runs, newest first")
    listing.add_argument("--graph")
    listing.add_argument("--status", choices=["pending", "running", "waiting", "completed", "failed", "cancelled"])
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=runs_list)

    show = runs.add_parser("show", help="a run's status, and each node's status, attempts, output and error")
    show.add_argument("run")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=runs_show)

    resume = runs.add_parser("resume", help="continue a stopped run, or answer a waiting one (--value)")
    resume.add_argument("run")
    resume.add_argument("--graph", required=True, help="the graph, as MODULE:GRAPH")
    resume.add_argument("--value", help="the answer for the waiting human node, as JSON")
    resume.add_argument("--node", help="which waiting node the value answers, if several")
    resume.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    resume.set_defaults(handler=runs_resume)

    cancel = runs.add_parser("cancel", help="cancel a run")
    cancel.add_argument("run")
    cancel.set_defaults(handler=runs_cancel)

    registered = commands.add_parser("graphs", help="list the graphs workers registered in a context")
    registered.add_argument("--json", action="store_true")
    registered.set_defaults(handler=graphs_list)

    for sub in (listing, show, resume, cancel, registered):
        sub.add_argument(
            "--context",
            required=True,
            help=CONTEXT_HELP,
        )

    work = commands.add_parser(
        "worker",
        help="run the tasks of these graphs that nobody holds (new runs, runs of processes that died)",
    )
    work.add_argument("graphs", nargs="+", metavar="MODULE:GRAPH")
    work.add_argument(
        "--context",
        required=True,
        help=CONTEXT_HELP,
    )
    work.add_argument("--concurrency", type=int, default=16, help="tasks claimed at once (default 16)")
    work.add_argument(
        "--grace", type=float, default=30.0, help="on SIGTERM, seconds to let running tasks finish (default 30)"
    )
    work.add_argument(
        "--lease",
        type=float,
        default=10.0,
        help="seconds after which the tasks of this worker go to others if it stops renewing them (default 10)",
    )
    work.set_defaults(handler=worker)

    served = commands.add_parser(
        "serve",
        help="serve the gRPC service from this process, which executes the graphs (and works on them as a worker)",
    )
    served.add_argument("graphs", nargs="+", metavar="MODULE:GRAPH")
    served.add_argument("--context", required=True, help="memory (real-time), or " + CONTEXT_HELP)
    served.add_argument("--listen", default="127.0.0.1:50051", help="IP:PORT to listen on (default 127.0.0.1:50051)")
    served.add_argument(
        "--token-file", help="a file holding the bearer token calls must carry (else $FERROFLOW_SERVER_TOKEN)"
    )
    served.add_argument("--tls-cert", help="serve TLS with this PEM certificate chain")
    served.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    served.add_argument(
        "--max-input-bytes", type=int, default=1 << 20, help="longest run input or resume value, as JSON (1 MiB)"
    )
    served.add_argument(
        "--allow-unauthenticated", action="store_true", help="listen beyond loopback without a bearer token"
    )
    served.add_argument("--concurrency", type=int, default=16, help="tasks claimed at once as a worker (default 16)")
    served.add_argument("--grace", type=float, default=30.0, help="on SIGTERM, seconds to let running tasks finish")
    served.add_argument("--lease", type=float, default=10.0, help="lease of this process's tasks, in seconds")
    served.set_defaults(handler=serve)

    batch = commands.add_parser(
        "map", help="run a graph once per line of a JSONL file; results in input order; resumable"
    )
    batch.add_argument("graph", metavar="MODULE:GRAPH")
    batch.add_argument("--input", required=True, help="one JSON input per line")
    batch.add_argument("--output", required=True, help="one JSON result per line, in input order")
    batch.add_argument(
        "--context",
        required=True,
        help=CONTEXT_HELP + ", or memory",
    )
    batch.add_argument("--batch", help="the batch's name (default: from the graph and the input file)")
    batch.add_argument("--concurrency", type=int, default=100, help="runs in flight at once (default 100)")
    batch.add_argument(
        "--no-execute",
        dest="execute",
        action="store_false",
        help="only submit and collect: `ferroflow worker` processes run the nodes",
    )
    batch.set_defaults(handler=map_batch)

    draw = commands.add_parser("graph", help="print a graph as a Mermaid flowchart")
    draw.add_argument("graph", help="the graph, as MODULE:GRAPH")
    draw.set_defaults(handler=graph_draw)
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except FerroflowError as e:
        print(f"ferroflow: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`ferroflow runs list | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
