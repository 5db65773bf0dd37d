"""What a graph does to runs that exist already: retry a failed one, fork one at a node,
replay a recorded one without calling anything outside, and import one exported from another
context. :class:`~ferroflow.Graph` has these methods; they
live here, apart from building and starting runs."""

from __future__ import annotations

import asyncio
import getpass
import socket
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

from . import _native
from . import events as ev
from ._loop import scheduler_for
from ._settle import _result, _settled
from .context import Context
from .types import RunResult, _check_run_id


def _whoami() -> str:
    """Who acts on a run when the caller does not say, for its journal: this process's user
    at its host (``user@host``)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (no passwd entry, no environment variable)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


_KEEP: Any = object()
"""For :meth:`RunOperations.fork`: the parent's output (or input) is kept."""


class _Graph(Protocol):
    """What these methods need of the graph they are called on."""

    name: str

    def _workflow(self) -> _native.Workflow: ...
    def _context(self, context: Optional[Context]) -> Context: ...
    def _check_value(self, value: Any, what: str, run_id: Optional[str]) -> None: ...
    def _refuse_on_own_loop(self, call: str) -> None: ...
    def _loop_for_sync(self) -> Optional[_native.EventLoop]: ...
    def _retried(
        self, run_id: str, context: Optional[Context], by: Optional[str], loop: Optional[_native.EventLoop]
    ) -> _native.Run: ...


@dataclass(frozen=True)
class Divergence:
    """Where a replay first differs from the run it replays: at ``node`` (map element
    ``item``), ``why`` (in words), with the recorded output and the replay's (``None`` where
    one has none)."""

    node: str
    item: Optional[int]
    why: str
    recorded: Any = None
    replayed: Any = None


@dataclass(frozen=True)
class ReplayResult:
    """A replay (:meth:`RunOperations.replay`): the replay run's result (a failed replay is
    returned, not raised) and its first divergence from the recorded run, ``None`` if every
    node gave the recorded output."""

    result: RunResult
    divergence: Optional[Divergence]


class RunOperations:
    """Retry, fork, replay and import: the run operations of :class:`~ferroflow.Graph`."""

    def retry(
        self: _Graph,
        run_id: str,
        *,
        context: Optional[Context] = None,
        by: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> RunResult:
        """Retries a failed run from the node that failed, and blocks until it settles again.

        The failed node runs again as its next attempt (the same idempotency key base; its
        retry policy counts afresh), and so does any attempt its failure cut short; every
        completed node keeps its output and does not run again, and the model and tool calls
        the failed attempt recorded are reused. The journal records the retry, with ``by``
        (who retries; the user name of this process if not given). In a durable context the
        run may have failed in any process. A run that did not fail raises
        :class:`InvalidRunStateError`; a run that fails again raises
        :class:`RunFailedError` and can be retried again."""
        _check_run_id(run_id)
        self._refuse_on_own_loop("retry")
        return _result(self._retried(run_id, context, by, self._loop_for_sync()).wait(timeout))

    async def aretry(
        self: _Graph,
        run_id: str,
        *,
        context: Optional[Context] = None,
        by: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> RunResult:
        """Like :meth:`retry`, awaitable; async bodies run on the caller's loop."""
        _check_run_id(run_id)
        loop = scheduler_for(asyncio.get_running_loop())
        return await _settled(self._retried(run_id, context, by, loop), timeout, loop)

    def _retried(
        self: _Graph, run_id: str, context: Optional[Context], by: Optional[str], loop: Optional[_native.EventLoop]
    ) -> _native.Run:
        who = _whoami() if by is None else by
        return self._context(context)._engine.retry(self._workflow(), run_id, who, loop)

    def import_run(self: _Graph, exported: str, *, context: Optional[Context] = None) -> RunResult:
        """Stores a run exported from another context (one line of
        :meth:`Context.export_run`) in ``context`` under its own id, and continues it there as
        a run of this graph (of the same version): here, or on the workers of a context that
        only submits. Completed nodes never run again; attempts that were in flight where it
        came from run again as their next attempts; a waiting run waits; a finished run is only
        stored. Returns the run as it is right after the import (wait for it with
        :meth:`wait`). Raises :class:`InvalidInputError` naming why a run cannot be imported
        (another format, another graph or version, a journal that does not replay, a run of
        that id that exists there already), having written nothing."""
        if not isinstance(exported, str):
            raise TypeError(f"an exported run is a string of JSON, not {type(exported).__name__}")
        engine = self._context(context)._engine
        run = engine.import_run(self._workflow(), exported, self._loop_for_sync())
        return _result(run.snapshot(), raise_errors=False)

    def fork(
        self: _Graph,
        run_id: str,
        *,
        at: str,
        output: Any = _KEEP,
        input: Any = _KEEP,
        context: Optional[Context] = None,
        new_run_id: Optional[str] = None,
        by: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> RunResult:
        """Forks run ``run_id`` at node ``at``: a new run (``new_run_id``, or a fresh id) that
        begins with the outputs the parent recorded for every node that does not depend on
        ``at``, runs ``at`` and everything that depends on it, and blocks until it settles.
        With ``output``, ``at`` is taken to have returned that instead of running ("what if
        the classifier had said billing?"): only what depends on it runs. With ``input``, the
        fork's input is that; the nodes that do not depend on ``at`` keep the parent's outputs
        all the same. The parent is left as it is; the fork's journal begins with a
        ``RunForked`` entry naming it, ``at`` and ``by``. The graph may be another version of
        the parent's (the code changed since): a kept output whose node now depends on
        something else is not kept, and that node runs. Raises :class:`InvalidInputError`
        naming why a fork cannot be made (no such node, another graph, an output for a map
        node or for a node the fork does not reach)."""
        _check_run_id(run_id)
        _check_run_id(new_run_id, optional=True)
        self._refuse_on_own_loop("fork")
        given = {"output": output, "input": input}
        for what, value in given.items():
            if value is not _KEEP:
                self._check_value(value, f"the fork's {what}", run_id)
        engine = self._context(context)._engine
        run = engine.fork(
            self._workflow(),
            run_id,
            at,
            new_run_id,
            None if output is _KEEP else (output,),
            None if input is _KEEP else (input,),
            _whoami() if by is None else by,
            self._loop_for_sync(),
        )
        return _result(run.wait(timeout))

    def replay(
        self: _Graph,
        run_id: str,
        *,
        source: Context,
        context: Optional[Context] = None,
        timeout: Optional[float] = None,
    ) -> ReplayResult:
        """Runs this graph's code again over run ``run_id`` of ``source`` (a durable run, from
        any context: where a bug was seen), in ``context`` (the default in-memory one if not
        given), with every recorded model call, tool call and ``ctx.step`` served from the
        recorded journal and every person's answer given as it was: no model or tool is
        called. A body that asks for a step the recording does not hold fails with
        :class:`~ferroflow.errors.StepNotRecordedError` instead. Blocks until the replay
        settles, then returns it with the first node whose output differs from the recorded
        one (:class:`Divergence`), or none: how a bug seen only in batch mode is reproduced on
        a laptop, and how a fix is checked against it. The recorded run is left as it is."""
        _check_run_id(run_id)
        self._refuse_on_own_loop("replay")
        recorded = source.journal(run_id)
        exported = source.export_run(run_id)
        target = self._context(context)
        run = target._engine.replay(self._workflow(), exported, None, self._loop_for_sync())
        result = _result(run.wait(timeout), raise_errors=False)
        return ReplayResult(result, first_divergence(recorded, target.journal(result.run_id)))


def first_divergence(recorded: Sequence[ev.Event], replayed: Sequence[ev.Event]) -> Optional[Divergence]:
    """The first place where the replay's journal (in its order) differs from the recorded
    one: a node that completed with another output, or only in one of them, or failed in the
    replay only (asking for a step the recording lacks, say)."""
    Key = Tuple[str, Optional[int]]
    outputs: Dict[Key, Any] = {}
    order: List[Key] = []
    failed = set()
    for event in recorded:
        if isinstance(event, ev.NodeCompleted):
            outputs[(event.node, event.item)] = event.output
            order.append((event.node, event.item))
        elif isinstance(event, ev.Resumed):
            outputs[(event.node, None)] = event.value
            order.append((event.node, None))
        elif isinstance(event, ev.NodeFailed) and event.retry_in is None:
            failed.add((event.node, event.item))
    seen = set()
    for event in replayed:
        if isinstance(event, (ev.NodeCompleted, ev.Resumed)):
            item = event.item if isinstance(event, ev.NodeCompleted) else None
            value = event.output if isinstance(event, ev.NodeCompleted) else event.value
            key = (event.node, item)
            seen.add(key)
            if key not in outputs:
                return Divergence(event.node, item, "completed in the replay only", None, value)
            if value != outputs[key]:
                return Divergence(event.node, item, "returned another output", outputs[key], value)
        elif isinstance(event, ev.NodeFailed) and event.retry_in is None and (event.node, event.item) not in failed:
            why = f"failed in the replay: {event.error.type}: {event.error.message}"
            return Divergence(event.node, event.item, why, outputs.get((event.node, event.item)))
    for key in order:
        if key not in seen:
            return Divergence(key[0], key[1], "completed in the recorded run only", outputs[key])
    return None
