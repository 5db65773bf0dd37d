"""Opening what the command line names: a context, from its file path or URL, and a graph,
from ``module:attribute`` or ``path/to/file.py:attribute`` (importing the application's code)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback
from types import ModuleType
from typing import Any

from .. import _native
from ..context import Context, InMemory, Nats, Redis, Sqlite
from ..errors import FerroflowError
from ..graph import Graph
from .common import UsageError, _one_line


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
