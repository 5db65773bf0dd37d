"""Contexts: where runs execute and where their state lives.

Only :class:`InMemory` exists so far: runs execute in this process and their journals
live in memory. Durable contexts (SQLite, Redis, NATS) take the same place later, with no
change to the graph.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from typing import List, Optional, Protocol, TypeVar, Union

from . import _native
from ._options import EngineOptions, StoreOptions
from .events import Event
from .types import GraphInfo, NodeInfo, RunInfo, RunStatus, _check_run_id


class _GraphLike(Protocol):
    """What a context needs of a :class:`ferroflow.Graph` to serve or work on it. A protocol,
    not an import of graph.py, which imports this module."""

    _has_async: bool

    def _workflow(self) -> _native.Workflow: ...


__all__ = ["Context", "InMemory", "Nats", "Redis", "Sqlite", "default_context"]

_C = TypeVar("_C", bound="Context")


class Context:
    """Base class of contexts.

    A context holds its store (a SQLite file, a connection) and background tasks (lease
    renewal, group commit) until it is closed: call :meth:`close`, or use the context as a
    context manager (``with ff.Sqlite("runs.db") as ctx: ...``). Using a closed context
    raises :class:`ContextClosedError`.
    """

    _engine: _native.Engine
    #: Whether runs survive the process (and can be continued after a crash).
    durable: bool = False

    def close(self) -> None:
        """Writes what waits for a group commit, stops the background tasks and releases
        the store's files and connections (once bodies still running finish). Runs this
        context executed and did not finish stay in the store: a worker or a later context
        continues them. Closing again does nothing."""
        self._engine.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._engine.closed

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_ids(self) -> List[str]:
        """Ids of the runs this context knows, oldest first."""
        return self._engine.run_ids()

    def runs(self, *, graph: Optional[str] = None, status: Optional[str] = None, limit: int = 100) -> List[RunInfo]:
        """Runs of this context, newest first, optionally of one graph or in one status."""
        return [_run_info(d) for d in self._engine.list_runs(graph, status, limit)]

    def export_run(self, run_id: str) -> str:
        """The run with its whole journal, finished or in flight, as one line of JSON (format
        ``ferroflow.run/1``): what :meth:`Graph.import_run` takes in another context. It reads
        what the store holds and takes nothing over."""
        _check_run_id(run_id)
        return self._engine.export_run(run_id)

    def prune(
        self,
        *,
        older_than: float,
        status: Optional[str] = None,
        graph: Optional[str] = None,
        dry_run: bool = False,
    ) -> List[str]:
        """Deletes the finished runs (completed, failed or cancelled; only those of ``status``
        or ``graph`` if given) that finished at least ``older_than`` seconds ago, with their
        journals, and returns their ids (with ``dry_run``, deletes nothing and returns those it
        would). Running, waiting and pending runs are never deleted."""
        return list(self._engine.prune(float(older_than), status, graph, dry_run))

    def run_info(self, run_id: str) -> RunInfo:
        """One run as :meth:`runs` lists it (its status as the store records it). Raises
        :class:`RunNotFoundError` if the context knows no such run."""
        _check_run_id(run_id)
        return _run_info(self._engine.record(run_id))

    def serve(
        self,
        *graphs: _GraphLike,
        listen: str = "127.0.0.1:50051",
        token: Optional[str] = None,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        max_input_bytes: int = 1 << 20,
        allow_unauthenticated: bool = False,
    ) -> _native.Server:
        """Serves the gRPC service (``proto/ferroflow/v1/ferroflow.proto``, the service of
        ``ferroflow-server``) on ``listen``, from this process, and returns the running
        server at once (``server.address`` says where it listens; ``server.stop()`` stops it).

        Runs of ``graphs`` started or resumed over gRPC execute here, in this context: in
        memory they run in real time, and watchers see their events as they happen; in a
        durable context every step is journaled, and workers on the same store continue the
        runs of this process if it dies. Runs of other graphs in a durable context can be
        read, watched, listed and cancelled, not started or resumed (this process has no
        code for them).

        ``token``: calls must carry ``authorization: Bearer <token>``. ``tls_cert`` and
        ``tls_key``: PEM files, to serve TLS. ``max_input_bytes``: longer inputs and resume
        values (as JSON text) are refused with INVALID_ARGUMENT.

        ``listen`` on an address other than loopback needs a ``token`` (anyone who reaches
        the port could otherwise start and cancel runs): without one it raises
        ``ValueError``, unless ``allow_unauthenticated=True`` says that is meant. A token
        without TLS beyond loopback is logged as a warning, since it crosses the network in
        plaintext. ``ferroflow serve`` and ``ferroflow-server`` apply the same rule.
        """
        if not graphs:
            raise TypeError("serve() needs at least one graph")
        from ._loop import background_loop, scheduler_for

        workflows = [g._workflow() for g in graphs]
        event_loop = scheduler_for(background_loop()) if any(g._has_async for g in graphs) else None
        return self._engine.serve(
            workflows, listen, token, tls_cert, tls_key, max_input_bytes, event_loop, allow_unauthenticated
        )

    def graphs(self) -> List[GraphInfo]:
        """The graphs this context's store knows, by name, newest first: those workers
        registered (each ``ferroflow worker`` registers those it runs, ``worker=True``), and
        those whose runs processes started (their structure, ``worker=False``). What a process
        without their code can know of them. Empty for an in-memory context."""
        return [
            GraphInfo(
                name=d["name"],
                version=d["version"],
                registered=d["registered_ms"] / 1000,
                spec=json.loads(d["spec"]),
                worker=d["worker"],
            )
            for d in self._engine.graphs()
        ]

    def work(self, *graphs: _GraphLike, concurrency: int = 16, grace: float = 30.0) -> None:
        """Work as a worker on this context's store until interrupted: run the tasks of
        ``graphs`` that nobody holds (runs submitted for any worker, and the tasks of
        processes that died, once their lease has run out), at most ``concurrency`` at
        once, with everything that follows from them.

        Blocks. A signal handler that raises (Ctrl-C's ``KeyboardInterrupt``, or the
        handler ``ferroflow worker`` installs for SIGTERM) stops it: it claims nothing
        more, lets the tasks running here finish for up to ``grace`` seconds, hands what it
        still holds back to other workers, and re-raises. A task of a graph, or a graph
        version, that this worker does not have is handed back for another worker, with a
        warning in the log.
        """
        if not self.durable:
            raise TypeError(f"{self!r} keeps runs in memory; a worker needs a durable context")
        if not graphs:
            raise TypeError("work() needs at least one graph")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        from ._loop import background_loop, scheduler_for

        workflows = [g._workflow() for g in graphs]
        event_loop = scheduler_for(background_loop()) if any(g._has_async for g in graphs) else None
        self._engine.work(workflows, concurrency, grace, event_loop)

    def journal(self, run_id: str) -> List[Event]:
        """The run's journal: its recorded events, in order."""
        _check_run_id(run_id)
        return self._engine.journal(run_id)

    def nodes(self, run_id: str) -> List[NodeInfo]:
        """The state of every node of a run, in topological order: the same derivation for
        a run in this process and for one only the store knows (whose graph's structure the
        store records: every process that starts a run in a durable context records it).
        Raises :class:`UnknownGraphError` for a run whose structure the store does not have
        (one written by an earlier version of ferroflow)."""
        _check_run_id(run_id)
        return [
            NodeInfo(
                name=d["name"],
                kind=d["kind"],
                status=d["status"],
                attempts=d["attempts"],
                output=d["output"],
                error=d["error"],
                finished_at=None if d["last_ms"] is None else d["last_ms"] / 1000,
            )
            for d in self._engine.nodes(run_id)
        ]


class _Durable(Context):
    """What the durable contexts share: an engine writing to a store."""

    durable = True
    durability: str
    execute: bool

    def _open(self, durability: str, execute: bool, engine: _native.Engine) -> None:
        self.durability = durability
        self.execute = execute
        self._engine = engine
        # Closed when the context is collected: the steps of a group commit's last window are
        # written, and the store is released. At exit the last window is written, and the
        # store is left as the process leaves it (SQLite keeps its write-ahead log).
        weakref.finalize(self, engine.close).atexit = False
        if durability == "batch":
            weakref.finalize(self, engine.flush)


class Sqlite(_Durable):
    """Runs in this process, with their journals and work queue in the SQLite file at
    ``path``: a run whose process stopped (crash, ``kill -9``, restart) continues without
    running its completed nodes again, and a run waiting for a person can be answered from
    another process.

    Values are stored as JSON: the input, every output and every answer must be plain JSON
    data (a node returning anything else fails, naming the node and the type). The file is
    opened in WAL mode with ``synchronous=NORMAL``: a committed step survives a process
    crash; an operating-system crash may lose the last few.

    ``durability`` says when a run's steps (a node's output, what it makes ready, the task
    it finishes; one SQLite transaction each) are written:

    - ``"commit"`` (the default): each step is committed before anything that follows
      from it runs. A crash loses no completed node. Each node costs one transaction.
    - ``"batch"``: group commit. Steps are written together at most ``batch_window``
      seconds after they happen, and at once when a run finishes or starts waiting for a
      person (so a result a caller sees is durable); what follows from a step runs before
      the step is durable. Much higher throughput with many runs in flight. Risk: a crash
      loses the last window's steps; their nodes run again when the run is continued
      (their effects repeat, as an interrupted attempt's do).

    With ``execute=False`` this process runs none of the nodes: runs it starts (``run``,
    ``start``, ``map``) are queued for workers on the same file, and followed from it, so
    that waiting, ``map``'s results and ``watch`` work as usual.

    A run executing in this process is held by it, under a lease of ``lease`` seconds the
    process renews in the background. If the process dies, a worker on the same file
    (``ferroflow worker MODULE:GRAPH --context PATH``, or :meth:`Context.work`) takes the
    run over once the lease has run out, running its interrupted nodes again as their
    next attempt. ``graph.resume(run_id)`` takes a run over at once, without waiting for
    the lease: if the process holding it is in fact still alive, both may run its
    interrupted nodes, and the journal keeps the first result (execution is at-least-once;
    use the idempotency key for effects).

    ``retention`` (seconds), when given, is how long finished runs (completed, failed,
    cancelled) are kept after they finished: older ones are deleted in the background, about
    every tenth of it, as :meth:`Context.prune` does. Running and waiting runs are never
    deleted. By default runs are kept until pruned. The same option exists on every durable
    context.

    Do not open the file with another SQLite library (Python's ``sqlite3`` module, say) in
    the same process while a context has it open: SQLite's locks are per process, so when
    that other connection closes it deletes the write-ahead log under this one, and commits
    made after that are lost. Other processes may read the file with anything.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        durability: str = "commit",
        batch_window: float = 0.005,
        lease: float = 10.0,
        execute: bool = True,
        retain_finished: int = 10_000,
        retention: Optional[float] = None,
    ) -> None:
        self.path = os.fspath(path)
        options = EngineOptions(
            retain_finished=retain_finished,
            store=StoreOptions("sqlite", self.path),
            lease_seconds=lease,
            durability=durability,
            batch_window_seconds=batch_window,
            execute=execute,
            retention_seconds=retention,
        )
        self._open(durability, execute, _native.Engine(options))

    def __repr__(self) -> str:
        if self.durability != "commit":
            return f"Sqlite({self.path!r}, durability={self.durability!r})"
        return f"Sqlite({self.path!r})"


class _Networked(_Durable):
    """What the server-backed contexts share: a URL and a namespace on the server."""

    url: str
    namespace: str

    def _connect(
        self,
        server: str,
        url: str,
        namespace: str,
        *,
        durability: str,
        batch_window: float,
        lease: float,
        execute: bool,
        retain_finished: int,
        outage_timeout: float,
        retention: Optional[float],
    ) -> None:
        """Opens the engine on the ``server`` (``"redis"`` or ``"nats"``) at ``url``."""
        self.url = url
        self.namespace = namespace
        options = EngineOptions(
            retain_finished=retain_finished,
            store=StoreOptions(server, url, namespace),
            lease_seconds=lease,
            durability=durability,
            batch_window_seconds=batch_window,
            execute=execute,
            outage_timeout_seconds=outage_timeout,
            retention_seconds=retention,
        )
        self._open(durability, execute, _native.Engine(options))

    def delete_namespace(self) -> None:
        """Deletes everything this context's namespace holds on the server (runs, journals,
        holds, queued tasks). Workers using it lose their work."""
        self._engine.delete_namespace()

    def __repr__(self) -> str:
        # Shown in logs and messages: without the URL's credentials.
        return f"{type(self).__name__}({_native.redact_url(self.url)!r}, namespace={self.namespace!r})"


class Redis(_Networked):
    """Like :class:`Sqlite`, with the runs' journals, holds and task queue on the Redis
    server at ``url`` (Redis 7 or newer), under keys prefixed ``ff:<namespace>:``: worker
    processes on any machine that reaches the server (``ferroflow worker MODULE:GRAPH
    --context redis://host:6379``) take runs over and run submitted ones.

    Every step of a run is one Lua script, atomic on the server; every call to the server
    is bounded by a timeout, and the connection is re-established after the server
    restarts. Durability is the server's: a Redis without persistence loses every run when
    it restarts, and one that writes its AOF with ``appendfsync everysec`` (Redis's
    default) may lose the last second of steps if its machine crashes; use ``appendfsync
    always`` for the guarantee :class:`Sqlite` gives. ``durability``, ``batch_window``,
    ``lease`` and ``execute`` mean what they mean for :class:`Sqlite`.

    While the server is unreachable or restarting, work pauses rather than fails: a node
    that completes waits to write its step (and nothing follows from it until it is
    written), and starting a run waits to create it, for up to ``outage_timeout`` seconds;
    then work resumes where it stopped. A step whose write was cut off may have landed; the
    retry finds out and carries on from it, so no completed node runs again. Past the
    limit, the run fails in this process (the server keeps it, for a worker or
    ``graph.resume`` to continue) and a start raises :class:`StoreUnavailableError`.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        *,
        namespace: str = "default",
        durability: str = "commit",
        batch_window: float = 0.005,
        lease: float = 10.0,
        execute: bool = True,
        retain_finished: int = 10_000,
        outage_timeout: float = 300.0,
        retention: Optional[float] = None,
    ) -> None:
        self._connect(
            "redis",
            url,
            namespace,
            durability=durability,
            batch_window=batch_window,
            lease=lease,
            execute=execute,
            retain_finished=retain_finished,
            outage_timeout=outage_timeout,
            retention=retention,
        )


class Nats(_Networked):
    """Like :class:`Sqlite`, with the runs' journals, holds and tasks in JetStream
    key-value buckets on the NATS server at ``url`` (JetStream enabled), named after
    ``namespace``: worker processes on any machine that reaches the server (``ferroflow
    worker MODULE:GRAPH --context nats://host:4222``) take runs over and run submitted ones.

    A step is one key-value write (created only if absent, so two writers cannot both
    append at one position); the run's record and tasks follow by compare-and-set, and a
    step whose follow-up was interrupted is completed by the next reader. Every call to the
    server is bounded by a timeout. ``durability``, ``batch_window``, ``lease`` and
    ``execute`` mean what they mean for :class:`Sqlite`; an unreachable or restarting
    server pauses work for up to ``outage_timeout`` seconds, as for :class:`Redis`.
    Durability is JetStream's: its file store (which the buckets use) survives a server
    restart; a machine crash may lose writes the server had not yet synced to disk (see
    the server's sync settings).
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        namespace: str = "ferroflow",
        durability: str = "commit",
        batch_window: float = 0.005,
        lease: float = 10.0,
        execute: bool = True,
        retain_finished: int = 10_000,
        outage_timeout: float = 300.0,
        retention: Optional[float] = None,
    ) -> None:
        self._connect(
            "nats",
            url,
            namespace,
            durability=durability,
            batch_window=batch_window,
            lease=lease,
            execute=execute,
            retain_finished=retain_finished,
            outage_timeout=outage_timeout,
            retention=retention,
        )


class InMemory(Context):
    """Runs in this process, state in memory: the lowest latency, nothing survives the process.

    ``retain_finished`` finished runs are kept for inspection; older ones are forgotten.
    """

    def __init__(self, *, retain_finished: int = 10_000) -> None:
        self._engine = _native.Engine(EngineOptions(retain_finished=retain_finished))

    def __repr__(self) -> str:
        return "InMemory()"


def _run_info(d: dict) -> RunInfo:
    return RunInfo(
        run_id=d["run_id"],
        graph=d["graph"],
        version=d["version"],
        status=RunStatus(d["status"]),
        created=d["created_ms"] / 1000,
        updated=d["updated_ms"] / 1000,
    )


_default_lock = threading.Lock()
_default: Optional[tuple] = None


def default_context() -> InMemory:
    """The process-wide in-memory context used when no ``context`` is given."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), InMemory())
        return _default[1]
