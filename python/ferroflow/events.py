"""Typed events of a run, as ``graph.stream`` yields them.

Every event has ``run_id``, ``seq`` and ``at`` (Unix time, seconds). The engine builds
these objects itself (``ferroflow._native`` imports the classes below), so this module is the
one definition of an event's shape in Python. Journal events are
numbered by ``seq`` from 0 without gaps; :class:`NodeStarted`, which the journal does not
record, carries the ``seq`` of the next journal event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .types import ErrorInfo, RunStatus

__all__ = [
    "Event",
    "Interrupted",
    "NodeCompleted",
    "NodeFailed",
    "NodeProgress",
    "NodeSkipped",
    "NodeStarted",
    "StepRecorded",
    "Resumed",
    "RunFinished",
    "RunForked",
    "RunRetried",
    "RunStarted",
]


@dataclass(frozen=True)
class Event:
    run_id: str
    seq: int
    at: float


@dataclass(frozen=True)
class RunStarted(Event):
    graph: str
    version: str
    input: Any


@dataclass(frozen=True)
class NodeStarted(Event):
    node: str
    attempt: int
    item: Optional[int] = None


@dataclass(frozen=True)
class NodeCompleted(Event):
    node: str
    attempt: int
    output: Any
    item: Optional[int] = None


@dataclass(frozen=True)
class NodeFailed(Event):
    """An attempt failed. ``retry_in`` is the delay before the next attempt, or ``None``
    when this failure is final."""

    node: str
    attempt: int
    error: ErrorInfo
    retry_in: Optional[float] = None
    item: Optional[int] = None


@dataclass(frozen=True)
class NodeSkipped(Event):
    node: str


@dataclass(frozen=True)
class NodeProgress(Event):
    """What a running body reported with ``ctx.emit`` (an LLM node's token deltas:
    ``data`` is then ``{"token": text}``). Not journaled: only watchers connected at the
    time see it; ``seq`` is that of the next journal event."""

    node: str
    attempt: int
    data: Any
    item: Optional[int] = None


@dataclass(frozen=True)
class StepRecorded(Event):
    """A body recorded the result of one of its steps (``ctx.step``), which a later attempt
    of the node reuses."""

    node: str
    attempt: int
    key: str
    value: Any
    item: Optional[int] = None


@dataclass(frozen=True)
class Interrupted(Event):
    """A human node waits; ``payload`` is what the person is shown."""

    node: str
    attempt: int
    payload: Any


@dataclass(frozen=True)
class Resumed(Event):
    node: str
    value: Any


@dataclass(frozen=True)
class RunFinished(Event):
    status: RunStatus
    output: Any = None
    node: Optional[str] = None
    error: Optional[ErrorInfo] = None


@dataclass(frozen=True)
class RunRetried(Event):
    """A failed run was retried: it runs again from the node that failed, which (with any
    attempt the failure cut short) runs as its next attempt. ``by`` is who retried it, as
    they named themselves (empty if they did not)."""

    by: str = ""


@dataclass(frozen=True)
class RunForked(Event):
    """The run is a fork of ``parent``: it began with the parent's outputs for every node
    that does not depend on ``node``, and runs from ``node``. ``by`` is who forked it."""

    parent: str
    node: str
    by: str = ""
