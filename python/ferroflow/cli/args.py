"""The command line's grammar: the parser of every command and option, and the types that
refuse an option's value out of range as a one-line usage error."""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from typing import NoReturn

from .batches import FAILED_SHOWN, batches_list, batches_show
from .common import _one_line
from .events import runs_events
from .map import map_batch
from .runs import (
    graph_draw,
    graphs_list,
    runs_cancel,
    runs_fork,
    runs_list,
    runs_prune,
    runs_replay,
    runs_resume,
    runs_retry,
    runs_show,
)
from .transfer import runs_export, runs_import
from .work import proto_path, serve, worker

CONTEXT_HELP = "a SQLite file (or sqlite:///path), redis://HOST:PORT?namespace=NAME or nats://HOST:PORT?namespace=NAME"


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

    runs = commands.add_parser(
        "runs", help="list, show, continue, retry or cancel runs; print their events"
    ).add_subparsers(dest="action", required=True, parser_class=_Parser)
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

    retry = runs.add_parser(
        "retry",
        help="retry a failed run from the node that failed, or every failed run of a graph (--batch, --since)",
    )
    retry.add_argument("run", nargs="?", help="the failed run; without it, every failed run of --graph")
    retry.add_argument("--graph", required=True, help="the graph, as MODULE:GRAPH")
    retry.add_argument("--batch", help="only the runs of this batch (`ferroflow map --batch NAME`)")
    retry.add_argument("--since", help="only runs that failed in the last DURATION (30s, 15m, 2h, 7d)")
    retry.add_argument("--dry-run", action="store_true", help="only count (and list) the runs it would retry")
    retry.add_argument("--by", help="who retries, for the journal (default: USER@HOST)")
    retry.add_argument(
        "--concurrency", type=_positive_int, default=100, help="at most this many retried runs at once (100)"
    )
    retry.add_argument("--limit", type=_positive_int, default=100_000, help="look at most at this many failed runs")
    retry.add_argument(
        "--timeout", type=_non_negative_seconds, default=None, help="give up waiting for a run after this many seconds"
    )
    retry.set_defaults(handler=runs_retry)

    fork = runs.add_parser(
        "fork", help="a new run from RUN at a node: the parent's outputs before it, then it and what depends on it"
    )
    fork.add_argument("run", help="the parent run, which is left as it is")
    fork.add_argument("--at", required=True, help="the node to run from")
    fork.add_argument("--graph", required=True, help="the graph, as MODULE:GRAPH")
    fork.add_argument("--output", help="the node's output instead of running it, as JSON: only what depends on it runs")
    fork.add_argument("--input", help="the fork's input, as JSON (the kept outputs stay the parent's)")
    fork.add_argument("--run-id", help="the fork's run id (default: a new one)")
    fork.add_argument("--by", help="who forks, for the journal (default: USER@HOST)")
    fork.add_argument(
        "--timeout", type=_non_negative_seconds, default=None, help="give up waiting after this many seconds"
    )
    fork.set_defaults(handler=runs_fork)

    replay = runs.add_parser(
        "replay",
        help="run the graph's code again over RUN in memory, with its recorded model and tool calls and answers "
        "(nothing is called), and say where it first diverges (exit status 1 if it does)",
    )
    replay.add_argument("run", help="the recorded run, which is left as it is")
    replay.add_argument("--graph", required=True, help="the graph (its current code), as MODULE:GRAPH")
    replay.add_argument("--json", action="store_true")
    replay.add_argument(
        "--timeout", type=_non_negative_seconds, default=None, help="give up waiting after this many seconds"
    )
    replay.set_defaults(handler=runs_replay)

    prune = runs.add_parser(
        "prune", help="delete finished runs older than a duration, with their journals (never running or waiting ones)"
    )
    prune.add_argument("--older-than", required=True, help="finished at least this long ago: 30s, 15m, 2h, 30d")
    prune.add_argument("--status", choices=["completed", "failed", "cancelled"], help="only runs in this status")
    prune.add_argument("--graph", help="only runs of this graph (by name)")
    prune.add_argument("--dry-run", action="store_true", help="only list the runs it would delete")
    prune.set_defaults(handler=runs_prune)

    export = runs.add_parser(
        "export", help="write runs with their journals, finished or in flight, one JSON object per line, to stdout"
    )
    export.add_argument("run", nargs="*", help="the runs; without any, every run (of --graph, in --status)")
    export.add_argument("--graph", help="only runs of this graph (by name)")
    export.add_argument("--status", choices=["pending", "running", "waiting", "completed", "failed", "cancelled"])
    export.add_argument("--limit", type=_positive_int, default=1_000_000, help="at most this many runs, newest first")
    export.set_defaults(handler=runs_export)

    importing = runs.add_parser(
        "import", help="store exported runs (one JSON object per line) in a context, where they continue"
    )
    importing.add_argument("input", nargs="?", default="-", help="the file of exported runs (default: stdin)")
    importing.add_argument("--graph", required=True, help="the runs' graph, as MODULE:GRAPH (of the same version)")
    importing.add_argument(
        "--execute",
        action="store_true",
        help="run what the imported runs have left in this process and wait for them (default: leave it to the "
        "context's workers)",
    )
    importing.set_defaults(handler=runs_import)

    cancel = runs.add_parser("cancel", help="cancel a run")
    cancel.add_argument("run")
    cancel.set_defaults(handler=runs_cancel)

    events = runs.add_parser(
        "events",
        help="a run's journal, one line per entry, then per node its times, attempts and tokens, and the run's totals",
        description=(
            "Prints a run's journal, one line per entry (time, seq, kind, node [item] #attempt, what it says: "
            "an output, an error, a model call's model and tokens, a tool call), then per node its kind, status, "
            "attempts, start, finish, duration, models and tokens, and the run's duration and tokens. "
            "The journal records when each entry was written, not when an attempt began (NodeStarted events "
            "exist only live): a node's STARTED is when it became ready, the time of the entry that resolved "
            "its last dependency (RunStarted for a node without any), or, for a run whose graph structure the "
            "store lacks, the last entry before the node's first that resolved a node."
        ),
    )
    events.add_argument("run")
    events.add_argument(
        "--follow",
        action="store_true",
        help="then print the entries written later (the journal is read every 0.2 s) until the run finishes "
        "(one waiting for a person has not); Ctrl-C stops it (exit status 130)",
    )
    events.add_argument("--json", action="store_true", help="one JSON object per entry, then one of kind 'summary'")
    events.set_defaults(handler=runs_events)

    proto = commands.add_parser(
        "proto-path",
        help="print the directory of the gRPC service's ferroflow.proto, for protoc -I",
    )
    proto.set_defaults(handler=proto_path)

    registered = commands.add_parser("graphs", help="list the graphs workers registered in a context")
    registered.add_argument("--json", action="store_true")
    registered.set_defaults(handler=graphs_list)

    batches = commands.add_parser(
        "batches", help="the batches of `ferroflow map` (runs named NAME-<i>): counts, progress, tokens, failures"
    ).add_subparsers(dest="action", required=True, parser_class=_Parser)
    batch_list = batches.add_parser("list", help="every batch, by name and graph, with its runs' counts by status")
    batch_list.add_argument("--graph", help="only the batches of this graph (its name)")
    batch_list.add_argument("--json", action="store_true")
    batch_show = batches.add_parser(
        "show",
        help="one batch: counts, throughput, ETA, the tokens of its model calls and its failed runs",
        description=(
            "Shows one batch: its runs' counts by status (as `ferroflow runs list` shows them), when it started "
            "(the first run created) and was last updated, its throughput (runs settled per second from the "
            "first creation to the last settled run's update; a run waiting for a person has settled), its ETA "
            "while runs are running or pending, the tokens of its runs' model calls, in all and per model, and "
            f"its first {FAILED_SHOWN} failed runs with the failing node and error. Totalling tokens reads every "
            "run's journal, one read of the store per run: --no-tokens skips it."
        ),
    )
    batch_show.add_argument("name", help="the batch's name (its runs are NAME-0, NAME-1, ...)")
    batch_show.add_argument("--graph", help="only the batch's runs of this graph (its name)")
    batch_show.add_argument("--json", action="store_true")
    batch_show.add_argument(
        "--no-tokens",
        dest="tokens",
        action="store_false",
        help="do not read every run's journal to total the tokens of its model calls",
    )
    batch_list.set_defaults(handler=batches_list)
    batch_show.set_defaults(handler=batches_show)
    for sub in (batch_list, batch_show):
        sub.add_argument(
            "--limit",
            type=_positive_int,
            default=1_000_000,
            help="look at most at this many runs, the newest (default 1,000,000)",
        )

    for sub in (
        listing,
        show,
        resume,
        retry,
        fork,
        replay,
        prune,
        export,
        importing,
        cancel,
        events,
        registered,
        batch_list,
        batch_show,
    ):
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
    batch.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress on stderr (by default a bar on a terminal, else a line every 5 s); the summary stays",
    )
    batch.set_defaults(handler=map_batch)

    draw = commands.add_parser("graph", help="print a graph as a Mermaid flowchart")
    draw.add_argument("graph", help="the graph, as MODULE:GRAPH")
    draw.set_defaults(handler=graph_draw)
    return top
