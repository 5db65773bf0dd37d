"""Small value types shared by the public API."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Optional, Tuple, Type, TypeVar

from .errors import StepNotRecordedError

T = TypeVar("T")

__all__ = ["ErrorInfo", "GraphInfo", "NodeContext", "NodeInfo", "Retry", "RunInfo", "RunResult", "RunStatus"]


class RunStatus(str, enum.Enum):
    """Where a run is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


@dataclass(frozen=True)
class GraphInfo:
    """A graph a durable context's store knows (``context.graphs()``): ``spec`` is its
    structure (nodes, kinds, edges, policies) as JSON data; ``registered`` is when it was
    last registered (Unix time, seconds). ``worker`` says whether a worker registered it, to
    execute its runs (``ferroflow worker``); otherwise a process that started runs of it
    recorded its structure."""

    name: str
    version: str
    registered: float
    spec: Mapping[str, Any]
    worker: bool = True


@dataclass(frozen=True)
class NodeContext:
    """What a body receives when it declares a ``ctx`` parameter.

    ``idempotency_key`` is unique to ``(run_id, node, attempt)`` (and map element): pass it to
    external services so that an effect retried after a failure happens once.

    ``recorded`` holds the steps this node's earlier attempts recorded (see :meth:`step`).
    """

    run_id: str
    node: str
    attempt: int
    idempotency_key: str
    item: Optional[int] = None
    recorded: Mapping[str, Any] = field(default_factory=dict)
    _handle: Any = field(default=None, repr=False, compare=False)
    replaying: bool = False
    """The attempt replays a recorded run (``graph.replay``): its steps are all in
    ``recorded``, and asking for another raises :class:`~ferroflow.errors.StepNotRecordedError`."""

    def step(self, key: str, fn: Callable[[], T]) -> T:
        """The result of the body's step ``key``: recorded by an earlier attempt of this node,
        or ``fn()``, which is then recorded in the run's journal (durably, in a durable
        context) before this returns. An attempt that runs again after a crash or a retried
        failure thus pays for each completed step (a model call, a tool call) once. The
        result must be JSON data in a durable context. Keys are the body's own; give each
        step a distinct one (``"llm/0"``, ``"tool/search/1"``)."""
        if key in self.recorded:
            return self.recorded[key]
        self._refuse_unrecorded(key)
        value = fn()
        self._record(key, value)
        return value

    async def astep(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """:meth:`step` for an async step: ``await fn()`` unless ``key`` was recorded. In a
        durable context the record is written off the event loop (a store may take a while);
        in memory, at once."""
        if key in self.recorded:
            return self.recorded[key]
        self._refuse_unrecorded(key)
        value = await fn()
        if self._handle is not None:
            if self._handle.durable:
                import asyncio

                await asyncio.get_running_loop().run_in_executor(None, self._handle.record, key, value)
            else:
                self._handle.record(key, value)
        return value

    def _refuse_unrecorded(self, key: str) -> None:
        if self.replaying:
            raise StepNotRecordedError(
                f"node '{self.node}' asked for step '{key}', which the recorded run did not take: the code "
                "diverges here, and a replay calls no model or tool"
            )

    def emit(self, data: Any) -> None:
        """Reports ``data`` to whoever watches the run now (``graph.stream``), as a
        :class:`~ferroflow.events.NodeProgress` event; it is not journaled."""
        if self._handle is not None:
            self._handle.emit(data)

    def _record(self, key: str, value: Any) -> None:
        if self._handle is not None:
            self._handle.record(key, value)


@dataclass(frozen=True)
class Retry:
    """How a failing node is retried.

    ``attempts`` counts the first one. Attempt ``n`` that raises one of ``on`` is followed by
    attempt ``n + 1`` after ``backoff * multiplier ** (n - 1)`` seconds (at most
    ``max_backoff``), spread by up to ``jitter`` (a fraction) at random. A node that times
    out is retried like one that raised.
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.1
    on: Tuple[Type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        # Accept a single exception type or any iterable of them.
        on = self.on
        if isinstance(on, type):
            on = (on,)
        object.__setattr__(self, "on", tuple(on))

    def _spec(self) -> dict:
        """The policy as the core reads it (delays in milliseconds); the core checks it."""
        return {
            "max_attempts": _wire_number(self.attempts),
            "initial_backoff": _wire_number(self.backoff, 1000),
            "multiplier": _wire_number(self.multiplier),
            "max_backoff": _wire_number(self.max_backoff, 1000),
            "jitter": _wire_number(self.jitter),
        }


def _wire_number(value: Any, scale: int = 1) -> Any:
    """``value`` (times ``scale``) for a spec the core checks. JSON has no NaN, infinity or
    ``True``-as-a-number, so anything but a finite int or float goes as its ``repr``, and the
    core's message names it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value if scale == 1 else value * scale
    return repr(value)


@dataclass(frozen=True)
class ErrorInfo:
    """A node attempt's error, as recorded."""

    type: str
    message: str
    traceback: Optional[str] = None
    retryable: bool = True


@dataclass(frozen=True)
class RunResult:
    """A settled run: completed, or waiting for a person.

    ``output`` is the run's output once completed. ``waiting`` maps each human node the run
    waits on to the payload it shows; answer with ``graph.resume(run_id, value)``.
    """

    run_id: str
    graph: str
    status: RunStatus
    output: Any = None
    waiting: Mapping[str, Any] = field(default_factory=dict)
    failed_node: Optional[str] = None
    error: Optional[ErrorInfo] = None


@dataclass(frozen=True)
class NodeInfo:
    """One node of a run, for inspection.

    ``status`` is pending, running, waiting, completed, skipped, failed or cancelled.
    ``kind`` is the node's kind (task, llm, tool, branch, map, human).
    ``finished_at`` is when the node's last journal entry was written (Unix seconds), or
    ``None`` if the journal has nothing of it yet."""

    name: str
    kind: str
    status: str
    attempts: int
    output: Any = None
    error: Optional[ErrorInfo] = None
    finished_at: Optional[float] = None


@dataclass(frozen=True)
class RunInfo:
    """A run as listed by ``context.runs()``; times are Unix seconds."""

    run_id: str
    graph: str
    version: str
    status: RunStatus
    created: float
    updated: float


def _check_run_id(run_id: Any, optional: bool = False) -> None:
    """Refuses a run id that is not a string, saying so (rather than the binding's
    ``'int' object is not an instance of 'str'``)."""
    if isinstance(run_id, str) or (optional and run_id is None):
        return
    raise TypeError(f"run ids are strings, not {type(run_id).__name__} ({run_id!r:.80})")
