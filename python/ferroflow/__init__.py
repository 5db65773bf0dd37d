"""ferroflow: a fast, durable workflow engine for LLM applications.

Declare a :class:`Graph` of nodes with decorators and run it with ``graph.run(input)``;
see the README for a tour.
"""

import atexit

from . import _native, events, llm
from ._native import __version__
from ._operations import Divergence, ReplayResult
from .context import Context, InMemory, Nats, Redis, Sqlite, default_context
from .errors import (
    ContextClosedError,
    CycleError,
    DuplicateNodeError,
    FerroflowError,
    GraphError,
    InvalidInputError,
    InvalidRunStateError,
    LLMError,
    RunCancelledError,
    RunError,
    RunFailedError,
    RunIdConflictError,
    RunNotFoundError,
    StepNotRecordedError,
    StoreError,
    StoreUnavailableError,
    UnknownDependencyError,
    UnknownGraphError,
    UnresolvedParameterError,
    WaitTimeoutError,
)
from .graph import Graph
from .llm import AnthropicProvider, NativeOpenAIProvider, OfflineProvider, OpenAIProvider, Tool, tool
from .types import ErrorInfo, GraphInfo, NodeContext, NodeInfo, Retry, RunInfo, RunResult, RunStatus

__all__ = [
    "AnthropicProvider",
    "Context",
    "ContextClosedError",
    "CycleError",
    "Divergence",
    "DuplicateNodeError",
    "ErrorInfo",
    "FerroflowError",
    "Graph",
    "GraphError",
    "GraphInfo",
    "InMemory",
    "InvalidInputError",
    "InvalidRunStateError",
    "LLMError",
    "Nats",
    "NodeContext",
    "NativeOpenAIProvider",
    "NodeInfo",
    "OfflineProvider",
    "OpenAIProvider",
    "Redis",
    "ReplayResult",
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
    "StepNotRecordedError",
    "StoreError",
    "StoreUnavailableError",
    "Tool",
    "UnknownDependencyError",
    "UnknownGraphError",
    "UnresolvedParameterError",
    "WaitTimeoutError",
    "__version__",
    "default_context",
    "events",
    "llm",
    "tool",
]

# Engine threads must stop calling into Python before the interpreter finalises.
atexit.register(_native.shutdown)
