"""Contexts: where runs execute and where their state lives.

Only :class:`InMemory` exists so far: runs execute in this process and their journals
live in memory. Durable contexts (SQLite, Redis, NATS) take the same place later, with no
change to the graph.
"""

from __future__ import annotations

import os
import threading
from typing import List, Optional, Union

from . import _native
from .types import ErrorInfo, NodeInfo

__all__ = ["Context", "InMemory", "Sqlite", "default_context"]


class Context:
    """Base class of contexts."""

    _engine: _native.Engine
    #: Whether runs survive the process (and can be continued after a crash).
    durable: bool = False

    def run_ids(self) -> List[str]:
        """Ids of the runs this context knows, oldest first."""
        return self._engine.run_ids()

    def nodes(self, run_id: str) -> List[NodeInfo]:
        """The state of every node of a run, in topological order."""
        return [
            NodeInfo(
                name=d["name"],
                kind=d["kind"],
                status=d["status"],
                attempts=d["attempts"],
                output=d["output"],
                error=ErrorInfo._from_native(d["error"]),
            )
            for d in self._engine.nodes(run_id)
        ]


class Sqlite(Context):
    """Runs in this process, every journal entry written to the SQLite file at ``path``
    before anything that follows from it runs: a run whose process stopped (crash,
    ``kill -9``, restart) continues with ``graph.resume(run_id, context=Sqlite(path))``
    without running its completed nodes again, and a run waiting for a person can be
    answered from another process.

    Values are stored as JSON: the input, every output and every answer must be plain JSON
    data (a node returning anything else fails, naming the node and the type). The file is
    opened in WAL mode with ``synchronous=NORMAL``: a committed node survives a process
    crash; an operating-system crash may lose the last few.

    Continue a run from one process at a time: until the worker processes of a later
    release hold leases on tasks, two processes resuming the same run would both run its
    outstanding nodes.
    """

    durable = True

    def __init__(self, path: Union[str, os.PathLike[str]], *, retain_finished: int = 10_000) -> None:
        self.path = os.fspath(path)
        self._engine = _native.Engine(retain_finished, self.path)

    def __repr__(self) -> str:
        return f"Sqlite({self.path!r})"


class InMemory(Context):
    """Runs in this process, state in memory: the lowest latency, nothing survives the process.

    ``retain_finished`` finished runs are kept for inspection; older ones are forgotten.
    """

    def __init__(self, *, retain_finished: int = 10_000) -> None:
        self._engine = _native.Engine(retain_finished)

    def __repr__(self) -> str:
        return "InMemory()"


_default_lock = threading.Lock()
_default: Optional[tuple] = None


def default_context() -> InMemory:
    """The process-wide in-memory context used when no ``context`` is given."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), InMemory())
        return _default[1]
