"""The commands that keep running: ``worker``, which works on a durable context's runs, and
``serve``, which serves the gRPC service from the process executing the graphs; and
``proto-path``, which says where the service's .proto is."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import FerroflowError
from .common import UsageError, _one_line, _os_problem
from .load import _open, load_graph


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


def proto_path(args: argparse.Namespace) -> int:
    """The directory of the installed package's ``ferroflow.proto`` (the service
    ``ferroflow.v1.Ferroflow``): ``protoc -I"$(ferroflow proto-path)" ferroflow.proto``."""
    print(Path(__file__).resolve().parent.parent / "proto" / "ferroflow" / "v1")
    return 0
