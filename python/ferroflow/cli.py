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
named as ``module:attribute`` (the module is imported from the current directory first), or
as ``path/to/file.py:attribute`` (the module of that file).

Bad input (an option out of range, a file that is missing or unreadable, an application
module that fails to import) is one line on stderr, ``ferroflow: ...``, and exit status 2;
an error of ferroflow's while doing the work (a run not found, a store error) is one line
and exit status 1.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import importlib.util
import ipaddress
import json
import math
import os
import re
import signal
import sys
import time
import traceback
from types import ModuleType
from typing import IO, Any, List, NoReturn, Optional, Sequence, Tuple

from . import _native
from .context import Context, InMemory, Nats, Redis, Sqlite
from .errors import FerroflowError, UnknownGraphError
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


class UsageError(Exception):
    """Bad input on the command line (an option, a file, an application module): ``main``
    prints ``ferroflow: <message>`` on one line and exits with status 2."""


def _one_line(text: object) -> str:
    """``text`` on one line: its whitespace runs (newlines included) as single spaces."""
    return " ".join(str(text).split())


def _os_problem(e: OSError) -> str:
    """What an ``OSError`` of opening a file says, without repeating the file's name."""
    if isinstance(e, FileNotFoundError):
        return "no such file or directory"
    if isinstance(e, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(e, NotADirectoryError):
        return "a part of the path is not a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    return _one_line(e.strerror or e)


def _import_failure(label: str, e: BaseException) -> UsageError:
    """The one line for application code that failed to import: the module, the exception's
    type and message, and where it was raised."""
    if isinstance(e, SyntaxError):
        where = f" ({e.filename}, line {e.lineno})" if e.filename else ""
        return UsageError(f"cannot import {label}: SyntaxError: {_one_line(e.msg)}{where}")
    if isinstance(e, SystemExit):
        return UsageError(f"cannot import {label}: it raised SystemExit (sys.exit({e.code!r})) while being imported")
    # Where the application's code raised: not in the import machinery, nor here.
    machinery = os.path.dirname(importlib.__file__) + os.sep
    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if not f.filename.startswith(("<", machinery)) and f.filename != __file__
    ]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return UsageError(f"cannot import {label}: {type(e).__name__}: {_one_line(e)}{where}")


def _import_module(name: str) -> ModuleType:
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the application's code: anything can fail
        raise _import_failure(f"module {name!r}", e) from None


def _import_file(path: str) -> ModuleType:
    """The module of the Python file at ``path``, named after the file (``app`` for
    ``sub/app.py``), imported as ``python sub/app.py`` would run it: with the file's directory
    first on ``sys.path``. The same file is imported once."""
    if not os.path.exists(path):
        raise UsageError(f"{path!r}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path!r} is a directory, not a Python file")
    name = os.path.splitext(os.path.basename(path))[0]
    full = os.path.abspath(path)
    known = sys.modules.get(name)
    if known is not None and getattr(known, "__file__", None) and os.path.abspath(known.__file__ or "") == full:
        return known
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path!r} cannot be imported as a Python module (name it NAME.py)")
    module = importlib.util.module_from_spec(spec)
    registered = name not in sys.modules
    if registered:
        sys.modules[name] = module  # as an import would: the module's own code may look itself up
    sys.path.insert(0, os.path.dirname(full))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the application's code: anything can fail
        if registered:
            sys.modules.pop(name, None)
        raise _import_failure(f"{path!r}", e) from None
    return module


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def load_graph(spec: str) -> Graph:
    """The graph named ``module:attribute``, or ``path/to/file.py:attribute``.

    :raises UsageError: if the module cannot be imported (it is missing, or its code raises,
        ``SystemExit`` included) or has no such graph.
    """
    where, sep, attribute = spec.rpartition(":")
    if not sep or not where or not attribute:
        raise UsageError(f"name the graph as MODULE:GRAPH or FILE.py:GRAPH, not {spec!r}")
    module = _import_file(where) if _is_path(where) else _import_module(where)
    graph = getattr(module, attribute, None)
    if graph is None:
        raise UsageError(f"{spec!r}: {where!r} has no attribute {attribute!r}")
    if not isinstance(graph, Graph):
        raise UsageError(f"{spec!r} is not a ferroflow.Graph (it is of type {type(graph).__name__})")
    return graph


def _open(args: argparse.Namespace, **options: Any) -> Context:
    """``open_context(args.context, **options)``; an option the context refuses (a lease
    too short, say) is a usage error."""
    try:
        return open_context(args.context, **options)
    except ValueError as e:
        if isinstance(e, FerroflowError):
            raise
        given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items() if k != "execute")
        raise UsageError(f"cannot open the context{' with ' + given if given else ''}: {_one_line(e)}") from None


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


def _json_option(option: str, text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise UsageError(f"{option} is JSON nested too deeply") from None
    except ValueError as e:
        raise UsageError(f"{option} is not JSON ({_one_line(e)}): {text[:40]!r}") from None


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


class _Stop(Exception):
    """Raised by the SIGTERM handler of ``ferroflow worker``."""


_NEEDS_DURABLE = "a worker needs a durable context (a SQLite file, redis:// or nats://), not --context memory"


def worker(args: argparse.Namespace) -> int:
    if args.context == "memory":
        raise UsageError(_NEEDS_DURABLE)
    graphs = [load_graph(spec) for spec in args.graphs]
    context = _open(args, lease=args.lease)
    if not context.durable:
        raise UsageError(_NEEDS_DURABLE)

    def stop(signum: int, frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    names = ", ".join(f"{g.name}@{g.version}" for g in graphs)
    # The context's repr, not --context: a server's URL is shown without its credentials.
    print(f"ferroflow worker: working on {names} in {context!r}", file=sys.stderr, flush=True)
    try:
        context.work(*graphs, concurrency=args.concurrency, grace=args.grace)
    except (_Stop, KeyboardInterrupt) as e:
        print(f"ferroflow worker: stopped ({e or 'SIGINT'})", file=sys.stderr, flush=True)
    return 0


def _read_token(path: str) -> str:
    """The bearer token in the ``--token-file`` file (surrounding whitespace dropped)."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise UsageError(f"--token-file {path!r}: {_os_problem(e)}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--token-file {path!r}: not UTF-8 text") from None
    if not token:
        raise UsageError(f"--token-file {path!r} is empty")
    if not (token.isascii() and token.isprintable()) or " " in token:
        raise UsageError(f"--token-file {path!r}: the token must be one line of printable ASCII, without spaces")
    return token


def _check_pem(option: str, path: str) -> None:
    """Refuses a ``--tls-cert`` or ``--tls-key`` file that is missing, unreadable or not PEM."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"{option} {path!r}: {_os_problem(e)}") from None
    if b"-----BEGIN " not in data:
        raise UsageError(f"{option} {path!r}: not a PEM file (it has no '-----BEGIN ' line)")


def serve(args: argparse.Namespace) -> int:
    """The gRPC service of ``ferroflow-server``, in a process that executes the graphs' nodes
    too; in a durable context it also works as a worker on them, so that it continues its
    own runs (and those of other processes) after a restart."""
    token = _read_token(args.token_file) if args.token_file else os.environ.get("FERROFLOW_SERVER_TOKEN") or None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("TLS needs both --tls-cert and --tls-key")
    if args.tls_cert:
        _check_pem("--tls-cert", args.tls_cert)
        _check_pem("--tls-key", args.tls_key)
    graphs = [load_graph(spec) for spec in args.graphs]
    context = _open(args, lease=args.lease)

    def stop(signum: int, frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    try:
        # The server refuses to listen beyond loopback without a token, unless told to.
        server = context.serve(
            *graphs,
            listen=args.listen,
            token=token,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            max_input_bytes=args.max_input_bytes,
            allow_unauthenticated=args.allow_unauthenticated,
        )
    except (ValueError, OSError) as e:
        if isinstance(e, FerroflowError):
            raise
        # The server's rule names no option of this command: say which ones it means.
        refused = isinstance(e, ValueError) and "token" in str(e) and not (token or args.allow_unauthenticated)
        hint = " (options: --token-file, --allow-unauthenticated)" if refused else ""
        raise UsageError(f"cannot serve on {args.listen}: {_one_line(e)}{hint}") from None
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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and a pointer to ``--help``),
    exit status 2, as every other error of bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {_one_line(message)}\n(see {self.prog} --help)\n")


# Counts and sizes go to the engine as machine integers, durations as Rust durations:
# what is beyond these is a typo, not a setting.
_MAX_COUNT = 2**31 - 1
_MAX_SECONDS = 1e9


def _shown(text: str) -> str:
    return text if text and text == text.strip() else repr(text)


def _positive_int(text: str) -> int:
    """A whole number >= 1 (``--limit``, ``--concurrency``, ``--max-input-bytes``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {_shown(text)}")
    if value > _MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {_MAX_COUNT}, not {_shown(text)}")
    return value


def _seconds(text: str, *, zero: bool) -> float:
    bound = ">= 0" if zero else "> 0"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds {bound}, not {_shown(text)}")
    if value > _MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {_MAX_SECONDS:.0f} seconds, not {_shown(text)}")
    return value


def _positive_seconds(text: str) -> float:
    """A finite number of seconds > 0 (``--lease``)."""
    return _seconds(text, zero=False)


def _non_negative_seconds(text: str) -> float:
    """A finite number of seconds >= 0 (``--grace``, ``--timeout``)."""
    return _seconds(text, zero=True)


_PORT = re.compile(r"[0-9]{1,5}")


def _listen_address(text: str) -> str:
    """``IP:PORT`` (``[IPv6]:PORT`` for IPv6), the port from 0 (any free one) to 65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"must be IP:PORT (127.0.0.1:50051, or [::1]:50051), not {_shown(text)}")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        address = None
    if address is None or bracketed != (address.version == 6):
        raise argparse.ArgumentTypeError(
            f"must be IP:PORT, with an IP address (127.0.0.1:50051, or [::1]:50051 for IPv6), not {_shown(text)}"
        )
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"the port must be a whole number from 0 to 65535, not {_shown(port)}")
    return text


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="ferroflow", description="Inspect and steer ferroflow runs.")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    runs = commands.add_parser("runs", help="list, show, continue or cancel runs").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    listing = runs.add_parser("list", help="list runs, newest first")
    listing.add_argument("--graph")
    listing.add_argument("--status", choices=["pending", "running", "waiting", "completed", "failed", "cancelled"])
    listing.add_argument("--limit", type=_positive_int, default=50, help="at most this many (default 50)")
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
    resume.add_argument(
        "--timeout", type=_non_negative_seconds, default=None, help="give up waiting after this many seconds"
    )
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
    work.add_argument("--concurrency", type=_positive_int, default=16, help="tasks claimed at once (default 16)")
    work.add_argument(
        "--grace",
        type=_non_negative_seconds,
        default=30.0,
        help="on SIGTERM, seconds to let running tasks finish (default 30)",
    )
    work.add_argument(
        "--lease",
        type=_positive_seconds,
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
    served.add_argument(
        "--listen",
        type=_listen_address,
        default="127.0.0.1:50051",
        help="IP:PORT to listen on (default 127.0.0.1:50051)",
    )
    served.add_argument(
        "--token-file", help="a file holding the bearer token calls must carry (else $FERROFLOW_SERVER_TOKEN)"
    )
    served.add_argument("--tls-cert", help="serve TLS with this PEM certificate chain")
    served.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    served.add_argument(
        "--max-input-bytes",
        type=_positive_int,
        default=1 << 20,
        help="longest run input or resume value, as JSON (1 MiB)",
    )
    served.add_argument(
        "--allow-unauthenticated", action="store_true", help="listen beyond loopback without a bearer token"
    )
    served.add_argument(
        "--concurrency", type=_positive_int, default=16, help="tasks claimed at once as a worker (default 16)"
    )
    served.add_argument(
        "--grace", type=_non_negative_seconds, default=30.0, help="on SIGTERM, seconds to let running tasks finish"
    )
    served.add_argument(
        "--lease", type=_positive_seconds, default=10.0, help="lease of this process's tasks, in seconds"
    )
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
    batch.add_argument("--concurrency", type=_positive_int, default=100, help="runs in flight at once (default 100)")
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
    except UsageError as e:
        print(f"ferroflow: {e}", file=sys.stderr)
        return 2
    except FerroflowError as e:
        print(f"ferroflow: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`ferroflow runs list | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
