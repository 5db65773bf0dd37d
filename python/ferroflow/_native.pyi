"""The PyO3 bindings of the ferroflow engine. Private: use the ``ferroflow`` package."""

import asyncio
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, Union

from typing_extensions import TypeAlias, final

from ferroflow._options import EngineOptions
from ferroflow.events import Event

__all__ = [
    "Engine",
    "EventLoop",
    "NodeHandle",
    "OpenAIClient",
    "ReplyStream",
    "Run",
    "Server",
    "Workflow",
    "__version__",
    "check_json",
    "check_node",
    "llm_error_kinds",
    "model_call_keys",
    "parse_context",
    "redact_url",
    "shutdown",
    "tool_call_key",
]

__version__: str

def shutdown() -> None:
    """Stops engine threads from calling into Python; registered with ``atexit``."""

def model_call_keys(n: int) -> Tuple[str, str]:
    """The step key of an LLM node's model call ``n`` and its legacy (read-only) key."""

def llm_error_kinds() -> List[Tuple[str, type]]:
    """Each kind of model call failure: the error type its LLM node records, and the class raised for it."""

def tool_call_key(n: int, i: int) -> str:
    """The step key of tool call ``i`` asked for by model call ``n``."""

def parse_context(spec: str) -> Tuple[str, str, str]:
    """A durable context's URL as ``(kind, location, namespace)`` (a SQLite file's namespace
    is empty); ``StoreError`` otherwise."""

def redact_url(url: str) -> str:
    """A server URL without its credentials, as messages and logs show it."""

def check_json(obj: Any) -> None:
    """Raises ``TypeError`` saying what and where unless ``obj`` is plain JSON data."""

def check_node(graph: str, node_json: str) -> None:
    """Raises ``GraphError`` naming the node unless its retry policy and timeout hold."""

@final
class EventLoop:
    """The engine's scheduler for async bodies on one asyncio loop (held weakly)."""

    def __new__(cls, event_loop: asyncio.AbstractEventLoop) -> EventLoop: ...

@final
class NodeHandle:
    """What a running body can do to its run (``NodeContext.step`` and ``emit`` use it)."""

    def record(self, key: str, value: Any) -> None:
        """Records `value` as the result of the body's step `key` in the run's journal (durably
        in a durable context); a later attempt of the node gets it back."""
    def emit(self, data: Any) -> None:
        """Reports `data` to the run's watchers now (not journaled). Quick, and in memory: the
        GIL is kept."""
    @property
    def durable(self) -> bool:
        """Whether `record` writes to a store (and may wait for it), rather than to memory."""

@final
class OpenAIClient:
    """`ferroflow._native.OpenAIClient(base_url, api_key, max_retries, timeout)`."""

    def __new__(cls, base_url: str, api_key: Optional[str], max_retries: int, timeout: float) -> OpenAIClient: ...
    @property
    def url(self) -> str:
        """The URL calls go to."""
    def call(
        self,
        model: str,
        messages: List[Dict[str, Any]],
        tools: List[Dict[str, Any]],
        params: Dict[str, Any],
        stream: bool,
        handle: Optional[NodeHandle] = None,
        key: Optional[str] = None,
    ) -> Awaitable[Dict[str, Any]]:
        """One model call; an awaitable of the reply's JSON (`Reply.to_json`). Streamed when
        `stream` is true. With a node's `handle`, each text delta is reported to the run's
        watchers as `{"token": delta}`, and the reply is recorded as the node's step `key`
        (durably, in a durable context) before the awaitable completes."""
    def open_stream(
        self, model: str, messages: List[Dict[str, Any]], tools: List[Dict[str, Any]], params: Dict[str, Any]
    ) -> ReplyStream:
        """A streamed model call for the provider protocol's `stream`: an async iterator of
        the text deltas (`str`), then the reply's JSON (`dict`) last."""

@final
class ReplyStream:
    """The async iterator of `OpenAIClient.open_stream`. Dropping it aborts the call."""

    def __aiter__(self) -> ReplyStream: ...
    def __anext__(self) -> Awaitable[Union[str, Dict[str, Any]]]: ...

@final
class Workflow:
    """A validated graph with its Python bodies."""

    def __new__(cls, spec_json: str, bodies: Sequence[Tuple[str, Any]]) -> Workflow: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str:
        """Hash of the graph's structure."""
    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart."""
    def spec_json(self) -> str:
        """The graph's structure as JSON."""

_Snapshot: TypeAlias = Dict[str, Any]

@final
class Run:
    """A run wherever it lives, from ``Engine.start``, ``Engine.open_run`` or ``Engine.recover``."""

    @property
    def id(self) -> str: ...
    def wait(self, timeout: Optional[float] = None) -> _Snapshot:
        """Blocks until the run settles (waiting or finished)."""
    def wait_async(
        self, timeout: Optional[float] = None, scheduler: Optional[EventLoop] = None
    ) -> asyncio.Future[_Snapshot]:
        """A future of the running loop, settled when the run settles (through the loop's
        ``scheduler`` when given)."""
    def snapshot(self) -> _Snapshot:
        """The run's current state."""
    def events(self, callback: Callable[[Optional[Event]], None], until_finished: bool = False) -> None:
        """Sends the run's events, from its first, to ``callback`` (then ``None``) from a background thread."""
    def resume(self, value: Any, node: Optional[str] = None, event_loop: Optional[EventLoop] = None) -> Run:
        """Answers the human node the run waits at; returns the run to wait on."""
    def recover(self, event_loop: Optional[EventLoop] = None) -> Run:
        """Continues the run if it stopped; returns the run to wait on."""
    def cancel(self) -> None:
        """Cancels the run."""

@final
class Engine:
    """The in-memory engine; every call releases the GIL while the engine works."""

    def __new__(cls, options: EngineOptions) -> Engine: ...
    def delete_namespace(self) -> None:
        """Deletes everything of a networked store's namespace (Redis keys, or NATS buckets)."""
    def graphs(self) -> List[Dict[str, Any]]:
        """The graphs workers registered in the store, as dicts (name, version, spec (JSON text),
        registered_ms), by name, newest first."""
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def flush(self) -> None:
        """Writes the steps waiting for their group commit now."""
    def serve(
        self,
        workflows: List[Workflow],
        listen: str,
        token: Optional[str] = None,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        max_input_bytes: int = 1048576,
        event_loop: Optional[EventLoop] = None,
        allow_unauthenticated: bool = False,
    ) -> Server:
        """Serves the gRPC service on ``listen``; returns the running server."""
    def work(
        self,
        workflows: List[Workflow],
        concurrency: int,
        grace_seconds: float,
        event_loop: Optional[EventLoop] = None,
    ) -> None:
        """Works as a worker on the store until a signal handler raises; then drains and re-raises."""
    def recover(self, workflow: Workflow, run_id: str, event_loop: Optional[EventLoop] = None) -> Run:
        """Continues a run from the store (or finds it in memory)."""
    def open_run(self, workflow: Workflow, run_id: str) -> Run:
        """The run wherever it lives: held here, or followed from the store."""
    def retry(self, workflow: Workflow, run_id: str, by: str, event_loop: Optional[EventLoop] = None) -> Run:
        """Retries a failed run from the node that failed; returns the run to wait on."""
    def fork(
        self,
        workflow: Workflow,
        parent: str,
        at: str,
        run_id: Optional[str] = None,
        output: Optional[Tuple[Any]] = None,
        input: Optional[Tuple[Any]] = None,
        by: str = "",
        event_loop: Optional[EventLoop] = None,
    ) -> Run:
        """Forks run `parent` at node `at`; returns the new run."""
    def replay(
        self, workflow: Workflow, exported: str, run_id: Optional[str] = None, event_loop: Optional[EventLoop] = None
    ) -> Run:
        """Runs the graph again over a recorded run, serving its steps and answers."""
    def prune(
        self, older_than: float, status: Optional[str] = None, graph: Optional[str] = None, dry_run: bool = False
    ) -> List[str]:
        """Deletes old finished runs; returns their ids."""
    def export_run(self, run_id: str) -> str:
        """The run with its whole journal, as one line of JSON."""
    def import_run(self, workflow: Workflow, exported: str, event_loop: Optional[EventLoop] = None) -> Run:
        """Stores a run exported from another context and continues it; returns the run."""
    def start(
        self,
        workflow: Workflow,
        input: Any,
        run_id: Optional[str] = None,
        event_loop: Optional[EventLoop] = None,
        events: Optional[Callable[[Optional[Event]], None]] = None,
        until_finished: bool = False,
    ) -> Run:
        """Starts a run and returns it at once; with ``events``, its events from the first go there."""
    def run(
        self,
        workflow: Workflow,
        input: Any,
        run_id: Optional[str] = None,
        event_loop: Optional[EventLoop] = None,
        timeout: Optional[float] = None,
    ) -> _Snapshot:
        """Starts a run, executes a chain of its sync bodies on this thread, and blocks until it settles."""
    def run_many(
        self,
        workflow: Workflow,
        inputs: List[Any],
        concurrency: int,
        event_loop: Optional[EventLoop] = None,
        progress: Optional[Callable[[int, int], None]] = None,
        timeout: Optional[float] = None,
        run_ids: Optional[List[str]] = None,
    ) -> Tuple[List[Any], Dict[int, _Snapshot]]:
        """Runs one run per input, ``concurrency`` at a time: the outputs in input order
        (``None`` for a run that did not complete), and the snapshots of the runs that did
        not complete, by position."""
    def cancel(self, run_id: str) -> None:
        """Cancels a run."""
    def nodes(self, run_id: str) -> List[Dict[str, Any]]:
        """Per-node state of a run."""
    def list_runs(
        self, graph: Optional[str] = None, status: Optional[str] = None, limit: int = 100
    ) -> List[Dict[str, Any]]:
        """Runs newest first, from the store of a durable engine or from memory."""
    def record(self, run_id: str) -> Dict[str, Any]:
        """One run's record, as ``list_runs`` gives it."""
    def journal(self, run_id: str) -> List[Event]:
        """The run's journal, as events."""
    def run_ids(self) -> List[str]:
        """Ids of the runs in memory, oldest first."""

@final
class Server:
    """A gRPC server running on the engine's runtime."""

    @property
    def address(self) -> str:
        """Where it listens, as ``host:port``."""
    def stop(self, timeout: float = 10.0) -> None:
        """Stops serving; calls in progress get up to ``timeout`` seconds to finish."""
