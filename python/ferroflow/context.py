"""Contexts: where runs execute and where their state lives.

Only :class:`InMemory` exists so far: runs execute in this process and their journals
live in memory. Durable contexts (SQLite, Redis, NATS) take the same place later, with no
change to the graph.
"""

from __future__ import annotations

import os
import threading
from typing import List, Optional

from . import _native
from .types import ErrorInfo, NodeInfo

__all__ = ["Context", "InMemory", "default_context"]


class Context:
    """Base class of contexts."""

    _engine: _native.Engine

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
