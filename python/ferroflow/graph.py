"""The graph builder: declare nodes with decorators, then run the graph.

A node receives the outputs of its dependencies by name: a body parameter called ``classify``
receives the output of the node ``classify``. Three parameter names are reserved:
``input`` (the run's input), ``ctx`` (a :class:`~ferroflow.NodeContext`) and, in map
(``each``) nodes, ``item`` (the element). ``deps={"param": "node"}`` maps a parameter to
another node explicitly, ``deps={"param": ["a", "b"]}`` passes the list of several nodes'
outputs (a join over many nodes), ``after=[...]`` orders a node after others without taking their
outputs, and ``when={"branch": "label"}`` makes a node run only when a branch returns that
label.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import threading
from dataclasses import dataclass
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import _native
from ._loop import background_loop, on_background_loop, scheduler_for
from ._nodes import _Node, _policies_spec, _resolve, _retry_problem
from ._operations import RunOperations
from ._settle import _deliver_to, _result, _settled
from .context import Context, default_context
from .errors import (
    DuplicateNodeError,
    GraphError,
    InvalidInputError,
    RunCancelledError,
    RunFailedError,
)
from .events import Event
from .types import Retry, RunResult, RunStatus, _check_run_id

__all__ = ["Graph"]

RESERVED = ("input", "ctx", "item")


class _NoAnswer:
    """The default of ``resume``'s ``value``: continue the run without answering anyone."""

    def __repr__(self) -> str:
        return "NO_ANSWER"


NO_ANSWER: Any = _NoAnswer()

Labels = Union[str, Sequence[str]]


@dataclass(frozen=True)
class _BodySpec:
    """Mirrors ``BodySpec`` in ``crates/ferroflow-py/src/body.rs``."""

    func: Callable[..., Any]
    is_async: bool
    plan: List[Union[int, List[int]]]
    retry_on: Tuple[type, ...]
    strict: bool
    kind: str


def _strict_default() -> bool:
    return os.environ.get("FERROFLOW_STRICT", "").lower() in ("1", "true", "yes")


class Graph(RunOperations):
    """A named workflow graph.

    ``output`` names the node whose output is the run's output; by default it is the only
    sink's output, or a dict of every sink's output when there are several. ``strict``
    checks that the run input and every node output are plain JSON data, which a durable
    context needs (default: the ``FERROFLOW_STRICT`` environment variable).
    """

    def __init__(self, name: str, *, output: Optional[str] = None, strict: Optional[bool] = None) -> None:
        self.name = name
        self.output = output
        self.strict = _strict_default() if strict is None else strict
        self._nodes: Dict[str, _Node] = {}
        self._compiled: Optional[_native.Workflow] = None
        self._lock = threading.Lock()

    # -- declaring nodes -------------------------------------------------------------

    def task(self, fn: Optional[Callable[..., Any]] = None, /, **options: Any) -> Any:
        """Declares a plain function node. Usable as ``@g.task`` or ``@g.task(retry=...)``."""
        return self._declare("task", fn, options)

    def branch(
        self, fn: Optional[Callable[..., Any]] = None, /, *, labels: Optional[Sequence[str]] = None, **options: Any
    ) -> Any:
        """Declares a branch: its body returns a label (or a list of labels), and only the
        nodes declared with ``when={branch: label}`` for those labels run; the others are
        skipped. ``labels`` lists every label the branch may return: a declared label that
        no edge uses runs none of the labelled successors, and an edge label outside the
        list is a build error. Without it, the labels on the branch's edges are the valid ones."""
        return self._declare("branch", fn, dict(options, labels=labels))

    def each(self, fn: Optional[Callable[..., Any]] = None, /, *, over: str, **options: Any) -> Any:
        """Declares a map node: the body runs once per element of the list ``over``
        returned, receiving it as ``item``. Each element is its own task with its own retries;
        the node's output is the list of results, in order."""
        return self._declare("map", fn, dict(options, over=over))

    def llm(
        self,
        fn: Optional[Callable[..., Any]] = None,
        /,
        *,
        provider: Any,
        model: str,
        tools: Sequence[Any] = (),
        stream: bool = False,
        max_tool_rounds: int = 8,
        params: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> Any:
        """Declares an LLM node. Its body builds the prompt (a string, or a list of
        ``{"role": ..., "content": ...}`` messages) from its parameters, as any body takes
        them; the node then asks ``model`` of ``provider`` (see :mod:`ferroflow.llm`), with
        ``params`` (temperature, max_tokens, ...) passed on. The node's output is the reply
        as JSON: ``text``, ``tool_calls``, ``usage`` (summed over its calls), ``model``,
        ``finish_reason`` and ``tool_results``.

        ``tools`` (:class:`~ferroflow.llm.Tool` objects or plain functions) are offered to
        the model; while it calls them, the node runs the calls and asks again, at most
        ``max_tool_rounds`` times. With ``stream=True`` the reply's text arrives token by
        token as :class:`~ferroflow.events.NodeProgress` events (``data={"token": ...}``) in
        ``graph.stream``; the node's output is still the whole reply. Each model call and
        tool call is recorded in the run's journal when it completes, so a run resumed
        after a crash does not pay for it again."""
        from .llm.node import llm_body

        def declare(f: Callable[..., Any]) -> Callable[..., Any]:
            body = llm_body(
                f,
                provider=provider,
                model=model,
                tools=tools,
                stream=stream,
                max_tool_rounds=max_tool_rounds,
                params=params,
            )
            self._add("llm", body, **options)
            return f

        return declare if fn is None else declare(fn)

    def tool(self, fn: Optional[Callable[..., Any]] = None, /, **options: Any) -> Any:
        """Declares a tool node: a plain function node (like :meth:`task`) shown as a tool
        call in the graph's structure."""
        return self._declare("tool", fn, options)

    def human(self, fn: Optional[Callable[..., Any]] = None, /, **options: Any) -> Any:
        """Declares a human step: the body returns the payload shown to the person, and the
        run waits (status ``waiting``) until ``resume(run_id, value)``; ``value`` becomes the
        node's output."""
        return self._declare("human", fn, options)

    def _declare(self, kind: str, fn: Optional[Callable[..., Any]], options: Dict[str, Any]) -> Any:
        if fn is None:
            return lambda f: self._declare(kind, f, options)
        self._add(kind, fn, **options)
        return fn

    def _add(
        self,
        kind: str,
        fn: Callable[..., Any],
        *,
        name: Optional[str] = None,
        deps: Optional[Mapping[str, Union[str, Sequence[str]]]] = None,
        after: Iterable[str] = (),
        when: Optional[Mapping[str, Labels]] = None,
        over: Optional[str] = None,
        labels: Optional[Sequence[str]] = None,
        retry: Optional[Retry] = None,
        timeout: Optional[float] = None,
    ) -> None:
        if not callable(fn):
            raise GraphError(
                f"graph '{self.name}': a node body must be callable, not {type(fn).__name__}", graph=self.name
            )
        node_name = name or getattr(fn, "__name__", None)
        if not node_name or node_name == "<lambda>":
            raise GraphError(f"graph '{self.name}': give this node a name with name=...", graph=self.name)
        if node_name in RESERVED:
            raise GraphError(
                f"graph '{self.name}': '{node_name}' is a reserved parameter name and cannot name a node",
                graph=self.name,
                node=node_name,
            )
        if retry is not None:
            problem = _retry_problem(retry)
            if problem:
                raise GraphError(f"graph '{self.name}': node '{node_name}': {problem}", graph=self.name, node=node_name)
        # The numbers' rules are the core's: it checks this node's policies now, and the rest
        # of the graph when it is built.
        _native.check_node(self.name, json.dumps(_policies_spec(node_name, kind, retry, timeout)))
        with self._lock:
            if self._compiled is not None:
                raise GraphError(f"graph '{self.name}' has been built and can no longer change", graph=self.name)
            if node_name in self._nodes:
                raise DuplicateNodeError(
                    f"graph '{self.name}': node '{node_name}' is defined twice", graph=self.name, node=node_name
                )
            self._nodes[node_name] = _Node(
                name=node_name,
                kind=kind,
                func=fn,
                deps=dict(deps or {}),
                after=tuple(after),
                when={b: [labels] if isinstance(labels, str) else list(labels) for b, labels in (when or {}).items()},
                over=over,
                labels=None if labels is None else list(labels),
                retry=retry,
                timeout=timeout,
            )

    # -- building --------------------------------------------------------------------

    def build(self) -> Graph:
        """Validates the graph (raising a :class:`GraphError` naming the node) and freezes it.
        Running a graph builds it first; call this to fail early."""
        self._workflow()
        return self

    def _workflow(self) -> _native.Workflow:
        compiled = self._compiled
        if compiled is not None:
            return compiled
        with self._lock:
            if self._compiled is None:
                spec, bodies = self._spec()
                self._compiled = _native.Workflow(json.dumps(spec), bodies)
                self._has_async = any(b.is_async for _, b in bodies)
            return self._compiled

    def _spec(self) -> Tuple[dict, List[Tuple[str, _BodySpec]]]:
        nodes = []
        bodies = []
        for node in self._nodes.values():
            deps, plan = _resolve(self.name, node, self._nodes)
            retry = node.retry or Retry(attempts=1)
            spec = _policies_spec(node.name, node.kind, retry, node.timeout)
            spec["deps"] = deps
            if node.over is not None:
                spec["over"] = node.over
            if node.labels is not None:
                spec["labels"] = node.labels
            nodes.append(spec)
            # An instance whose class defines `async def __call__` is async too.
            is_async = inspect.iscoroutinefunction(node.func) or inspect.iscoroutinefunction(type(node.func).__call__)
            bodies.append((node.name, _BodySpec(node.func, is_async, plan, tuple(retry.on), self.strict, node.kind)))
        graph: Dict[str, Any] = {"name": self.name, "nodes": nodes}
        if self.output is not None:
            graph["output"] = self.output
        return graph, bodies

    # -- introspection ---------------------------------------------------------------

    @property
    def version(self) -> str:
        """Hash of the graph's structure; any change to nodes, edges or policies changes it."""
        return self._workflow().version

    @property
    def nodes(self) -> List[str]:
        return list(self._nodes)

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart."""
        return self._workflow().to_mermaid()

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, nodes={len(self._nodes)})"

    # -- running ---------------------------------------------------------------------

    def _context(self, context: Optional[Context]) -> Context:
        return context if context is not None else default_context()

    def _check_value(self, value: Any, what: str, run_id: Optional[str]) -> None:
        if self.strict:
            try:
                _native.check_json(value)
            except TypeError as e:
                raise InvalidInputError(f"{what} is not plain JSON data: {e}", run_id=run_id) from None

    def _starting(
        self, input: Any, run_id: Optional[str], context: Optional[Context]
    ) -> Tuple[_native.Workflow, _native.Engine]:
        """What every way of starting a run needs: the built graph and the context's engine,
        once the input has passed the strict check."""
        _check_run_id(run_id, optional=True)
        workflow = self._workflow()
        self._check_value(input, "the run input", run_id)
        return workflow, self._context(context)._engine

    def _refuse_on_own_loop(self, call: str) -> None:
        """Refuses a blocking call made on ferroflow's background event loop (from an async
        body of a run started with ``run``) for a graph whose async bodies need that very
        loop: the call would wait for ever for bodies that can never start."""
        self._workflow()  # built first: it tells whether the graph has async bodies
        if self._has_async and on_background_loop():
            raise RuntimeError(
                f"graph '{self.name}': {call}() blocks until the run settles, and it was called from an async body "
                f"running on ferroflow's background event loop, which '{self.name}''s own async bodies need: it "
                f"would wait for ever. In async code, use `await {self.name}.a{call}(...)` instead."
            )

    def _loop_for_sync(self) -> Optional[_native.EventLoop]:
        self._workflow()
        return scheduler_for(background_loop()) if self._has_async else None

    def run(
        self,
        input: Any = None,
        *,
        context: Optional[Context] = None,
        run_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> RunResult:
        """Runs the graph on ``input`` and blocks until the run completes or waits for a
        person. Raises :class:`RunFailedError` if a node fails for good,
        :class:`RunCancelledError` if the run is cancelled, and
        :class:`WaitTimeoutError` after ``timeout`` seconds (the run goes on). Starting a
        ``run_id`` that exists returns that run instead of starting another.

        Without a timeout, a chain of sync bodies runs on the calling thread, which is the
        fastest path. With one, the run executes on the engine's threads so that the wait
        can end in time even while a sync body is still busy."""
        workflow, engine = self._starting(input, run_id, context)
        self._refuse_on_own_loop("run")
        return _result(engine.run(workflow, input, run_id, self._loop_for_sync(), timeout))

    def start(
        self,
        input: Any = None,
        *,
        context: Optional[Context] = None,
        run_id: Optional[str] = None,
    ) -> str:
        """Starts a run without waiting for it and returns its id; follow it with
        :meth:`wait`, :meth:`get_run` or :meth:`watch`."""
        workflow, engine = self._starting(input, run_id, context)
        return engine.start(workflow, input, run_id, self._loop_for_sync()).id

    def wait(self, run_id: str, *, context: Optional[Context] = None, timeout: Optional[float] = None) -> RunResult:
        """Blocks until the run completes or waits for a person, like :meth:`run`. In a
        durable context, the run may execute in another process."""
        run = self._open(run_id, context)
        self._refuse_on_own_loop("wait")
        return _result(run.wait(timeout))

    def _open(self, run_id: str, context: Optional[Context]) -> _native.Run:
        """The run wherever it lives: in this process, or (in a durable context) only in
        the store, followed from there."""
        _check_run_id(run_id)
        return self._context(context)._engine.open_run(self._workflow(), run_id)

    async def arun(
        self,
        input: Any = None,
        *,
        context: Optional[Context] = None,
        run_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> RunResult:
        """Like :meth:`run`, awaitable. Async bodies run on the caller's event loop.
        Cancelling the awaiting task cancels the run."""
        workflow, engine = self._starting(input, run_id, context)
        scheduler = scheduler_for(asyncio.get_running_loop())
        return await _settled(engine.start(workflow, input, run_id, scheduler), timeout, scheduler)

    async def stream(
        self,
        input: Any = None,
        *,
        context: Optional[Context] = None,
        run_id: Optional[str] = None,
        until_finished: bool = False,
    ) -> AsyncIterator[Event]:
        """Starts a run and yields its events as they happen, in order, ending when the run
        finishes or waits for a person (or only when it finishes, with ``until_finished``)."""
        workflow, engine = self._starting(input, run_id, context)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Optional[Event]] = asyncio.Queue()
        engine.start(workflow, input, run_id, scheduler_for(loop), _deliver_to(loop, queue), until_finished)
        while True:
            event = await queue.get()
            if event is None:
                return
            yield event

    async def watch(
        self, run_id: str, *, context: Optional[Context] = None, until_finished: bool = False
    ) -> AsyncIterator[Event]:
        """Yields the events of an existing run: those so far, then live ones. In a durable
        context, the run may execute in another process."""
        run = self._open(run_id, context)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Optional[Event]] = asyncio.Queue()
        run.events(_deliver_to(loop, queue), until_finished)
        while True:
            event = await queue.get()
            if event is None:
                return
            yield event

    def map(
        self,
        inputs: Iterable[Any],
        *,
        context: Optional[Context] = None,
        concurrency: int = 100,
        return_exceptions: bool = False,
        progress: Optional[Callable[[int, int], None]] = None,
        timeout: Optional[float] = None,
        batch: Optional[str] = None,
    ) -> List[Any]:
        """Runs the graph once per input, ``concurrency`` runs at a time, and returns the
        outputs in input order. A run that ends waiting for a person gives its
        :class:`RunResult`. A failed or cancelled run raises its error once every run has
        settled, or stands in its place with ``return_exceptions=True``. ``progress(done,
        total)`` is called as runs finish. After ``timeout`` seconds,
        :class:`WaitTimeoutError` is raised; the runs go on.

        ``batch`` names the batch and makes it resumable in a durable context: input ``i``
        runs as ``f"{batch}-{i}"``, so mapping the same batch again (after a crash, or to
        collect the results) continues the unfinished runs and only reports the finished
        ones, running no completed node again."""
        workflow = self._workflow()
        self._refuse_on_own_loop("map")
        if batch is not None and not isinstance(batch, str):
            raise TypeError(f"the batch name must be a string, not {type(batch).__name__}")
        inputs = list(inputs)
        for i, value in enumerate(inputs):
            self._check_value(value, f"input #{i}", None)
        engine = self._context(context)._engine
        run_ids = None if batch is None else [f"{batch}-{i}" for i in range(len(inputs))]
        outputs, unfinished = engine.run_many(
            workflow, inputs, concurrency, self._loop_for_sync(), progress, timeout, run_ids
        )
        for i in sorted(unfinished):  # in input order: the first failure is the one raised
            try:
                result = _result(unfinished[i])
            except (RunFailedError, RunCancelledError) as e:
                if not return_exceptions:
                    raise
                outputs[i] = e
                continue
            outputs[i] = result.output if result.status is RunStatus.COMPLETED else result
        return outputs

    def resume(
        self,
        run_id: str,
        value: Any = NO_ANSWER,
        *,
        node: Optional[str] = None,
        context: Optional[Context] = None,
        timeout: Optional[float] = None,
    ) -> RunResult:
        """Continues a run and blocks until it settles again.

        With ``value``, answers the human node the run waits on (``node`` says which, if
        several); ``value`` becomes that node's output. Without one, continues the run as it
        stands: in a durable context that is how a run whose process stopped is picked up,
        from its journal, without running completed nodes again."""
        _check_run_id(run_id)
        self._refuse_on_own_loop("resume")
        return _result(self._resumed(run_id, value, node, context, self._loop_for_sync()).wait(timeout))

    async def aresume(
        self,
        run_id: str,
        value: Any = NO_ANSWER,
        *,
        node: Optional[str] = None,
        context: Optional[Context] = None,
        timeout: Optional[float] = None,
    ) -> RunResult:
        """Like :meth:`resume`, awaitable; async bodies run on the caller's loop."""
        _check_run_id(run_id)
        loop = scheduler_for(asyncio.get_running_loop())
        return await _settled(self._resumed(run_id, value, node, context, loop), timeout, loop)

    def _resumed(
        self,
        run_id: str,
        value: Any,
        node: Optional[str],
        context: Optional[Context],
        loop: Optional[_native.EventLoop],
    ) -> _native.Run:
        """The run continued (taken over from the store if its process stopped) and, with a
        value, answered: what :meth:`resume` and :meth:`aresume` wait for."""
        run = self._context(context)._engine.recover(self._workflow(), run_id, loop)
        if value is not NO_ANSWER:
            self._check_value(value, "the resume value", run_id)
            run = run.resume(value, node, loop)
        return run

    def cancel(self, run_id: str, *, context: Optional[Context] = None) -> None:
        """Cancels a run. Cancelling a cancelled run does nothing; a finished run raises
        :class:`InvalidRunStateError`."""
        _check_run_id(run_id)
        self._context(context)._engine.cancel(run_id)

    def get_run(self, run_id: str, *, context: Optional[Context] = None) -> RunResult:
        """The run's current state, without waiting (failed runs are returned, not raised)."""
        return _result(self._open(run_id, context).snapshot(), raise_errors=False)
