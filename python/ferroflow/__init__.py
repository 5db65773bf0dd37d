"""ferroflow: a fast, durable workflow engine for LLM applications.

Declare a :class:`Graph` of nodes with decorators and run it with ``graph.run(input)``;
see the README for a tour.
"""

import atexit

from . import _native, events
from ._native import __version__
from .context import Context, InMemory, Nats, Redis, Sqlite, default_context
from .errors import (
    CycleError,
    DuplicateNodeError,
    FerroflowError,
    GraphError,
    InvalidInputError,
    InvalidRunStateError,
    RunCancelledError,
    RunError,
    RunFailedError,
    RunIdConflictError,
    RunNotFoundError,
    StoreError,
    StoreUnavailableError,
    UnknownDependencyError,
    UnknownGraphError,
    UnresolvedParameterError,
    WaitTimeoutError,
)
from .graph import Graph
from .types import ErrorInfo, NodeContext, NodeInfo, Retry, RunInfo, RunResult, RunStatus

__all__ = [
    "Context",
    "CycleError",
    "DuplicateNodeError",
    "ErrorInfo",
    "FerroflowError",
    "Graph",
    "GraphError",
    "InMemory",
    "InvalidInputError",
    "InvalidRunStateError",
    "Nats",
    "NodeContext",
    "NodeInfo",
    "Redis",
    "Retry",
    "RunCancelledError",
    "RunError",
    "RunFailedError",
    "RunIdConflictError",
    "RunInfo",
    "RunNotFoundError",
    "RunResult",
    "RunStatus",
    "Sqlite",
    "StoreError",
    "StoreUnavailableError",
    "UnknownDependencyError",
    "UnknownGraphError",
    "UnresolvedParameterError",
    "WaitTimeoutError",
    "__version__",
    "default_context",
    "events",
]

# Engine threads must stop calling into Python before the interpreter finalises.
atexit.register(_native.shutdown)
