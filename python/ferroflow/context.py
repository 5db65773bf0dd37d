"""Contexts: where runs execute and where their state lives.

Only :class:`InMemory` exists so far: runs execute in this process and their journals
live in memory. Durable contexts (SQLite, Redis, NATS) take the same place later, with no
change to the graph.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, List, Optional, Union

from . import _native
from .errors import RunNotFoundError
from .events import Event, Interrupted, NodeCompleted, NodeFailed, NodeSkipped, Resumed, RunFinished, _from_native
from .types import ErrorInfo, NodeInfo, RunInfo, RunStatus

__all__ = ["Context", "InMemory", "Sqlite", "default_context"]


class Context:
    """Base class of contexts."""

    _engine: _native.Engine
    #: Whether runs survive the process (and can be continued after a crash).
    durable: bool = False

    def run_ids(self) -> List[str]:
        """Ids of the runs this context knows, oldest first."""
        return self._engine.run_ids()

    def runs(self, *, graph: Optional[str] = None, status: Optional[str] = None, limit: int = 100) -> List[RunInfo]:
        """Runs of this context, newest first, optionally of one graph or in one status."""
        return [
            RunInfo(
                run_id=d["run_id"],
                graph=d["graph"],
                version=d["version"],
                status=RunStatus(d["status"]),
                created=d["created_ms"] / 1000,
                updated=d["updated_ms"] / 1000,
            )
            for d in self._engine.list_runs(graph, status, limit)
        ]

    def journal(self, run_id: str) -> List[Event]:
        """The run's journal: its recorded events, in order."""
        return [_from_native(d) for d in self._engine.journal(run_id)]

    def nodes(self, run_id: str) -> List[NodeInfo]:
        """The state of every node of a run: in topological order for a run in memory; in
        the order the journal first mentions them for a run read from a store (nodes the
        run has not reached are then not listed)."""
        try:
            reports = self._engine.nodes(run_id)
        except RunNotFoundError:
            if not self.durable:
                raise
            return _nodes_from_journal(self.journal(run_id))
        return [
            NodeInfo(
                name=d["name"],
                kind=d["kind"],
                status=d["status"],
                attempts=d["attempts"],
                output=d["output"],
                error=ErrorInfo._from_native(d["error"]),
            )
            for d in reports
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

    Do not open the file with another SQLite library (Python's ``sqlite3`` module, say) in
    the same process while a context has it open: SQLite's locks are per process, so when
    that other connection closes it deletes the write-ahead log under this one, and commits
    made after that are lost. Other processes may read the file with anything.
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


def _nodes_from_journal(events: List[Event]) -> List[NodeInfo]:
    """What the journal says of each node it mentions, without the graph."""
    nodes: Dict[str, Dict[str, Any]] = {}
    finished = next((e for e in events if isinstance(e, RunFinished)), None)
    for event in events:
        name = getattr(event, "node", None)
        if name is None or isinstance(event, RunFinished):
            continue
        node = nodes.setdefault(name, {"status": "running", "attempts": 0, "output": None, "error": None})
        node["finished_at"] = event.at
        attempt = getattr(event, "attempt", 0)
        node["attempts"] = max(node["attempts"], attempt)
        if isinstance(event, NodeCompleted) and event.item is None:
            node.update(status="completed", output=event.output)
        elif isinstance(event, NodeFailed):
            node["error"] = event.error
            if event.retry_in is None:
                node["status"] = "failed"
        elif isinstance(event, NodeSkipped):
            node["status"] = "skipped"
        elif isinstance(event, Interrupted):
            node.update(status="waiting", output=event.payload)
        elif isinstance(event, Resumed):
            node.update(status="completed", output=event.value)
    for node in nodes.values():
        # A map node completes without an entry of its own, once its elements have.
        if node["status"] == "running" and finished is not None:
            node["status"] = "completed" if finished.status is RunStatus.COMPLETED else "cancelled"
        elif node["status"] == "waiting" and finished is not None:
            node["status"] = "cancelled"
    return [
        NodeInfo(
            name=name,
            kind=None,
            status=n["status"],
            attempts=n["attempts"],
            output=n["output"],
            error=n["error"],
            finished_at=n.get("finished_at"),
        )
        for name, n in nodes.items()
    ]


_default_lock = threading.Lock()
_default: Optional[tuple] = None


def default_context() -> InMemory:
    """The process-wide in-memory context used when no ``context`` is given."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), InMemory())
        return _default[1]
