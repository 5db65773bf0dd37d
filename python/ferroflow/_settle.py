"""How a run settles for its caller: the engine's snapshot as a :class:`RunResult` (or the
error of a failed or cancelled run), awaited on the caller's asyncio loop, and the bridge
that carries a run's events there."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping, Optional

from . import _native
from .errors import RunCancelledError, RunFailedError
from .types import ErrorInfo, RunResult, RunStatus


def _deliver_to(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> Callable[[Any], None]:
    def deliver(event: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:
            pass  # the consumer's loop is closed: nobody is listening any more

    return deliver


async def _settled(run: _native.Run, timeout: Optional[float], scheduler: _native.EventLoop) -> RunResult:
    """Awaits ``run`` settling: the engine settles a future of the running loop, whose
    ``scheduler`` (``scheduler_for``) lets the thread that settles the run wake the loop
    itself. Cancelling the awaiting task cancels the run."""
    try:
        snapshot = await run.wait_async(timeout, scheduler)
    except asyncio.CancelledError:
        try:
            run.cancel()
        except Exception:  # noqa: BLE001 - it may have finished meanwhile; the cancellation stands
            pass
        raise
    return _result(snapshot)


def _result(snapshot: Mapping[str, Any], raise_errors: bool = True) -> RunResult:
    status = RunStatus(snapshot["status"])
    failure = snapshot["failure"]
    error: Optional[ErrorInfo] = failure["error"] if failure else None
    result = RunResult(
        run_id=snapshot["run_id"],
        graph=snapshot["graph"],
        status=status,
        output=snapshot["output"],
        waiting=snapshot["waiting"],
        failed_node=failure["node"] if failure else None,
        error=error,
    )
    if raise_errors and status is RunStatus.FAILED and failure and error:
        item = f" (element {failure['item']})" if failure.get("item") is not None else ""
        raise RunFailedError(
            f"run '{result.run_id}' failed at node '{failure['node']}'{item}: {error.type}: {error.message}",
            run_id=result.run_id,
            node=failure["node"],
            graph=result.graph,
            status=status.value,
            error_type=error.type,
            error_message=error.message,
            traceback=error.traceback,
        )
    if raise_errors and status is RunStatus.CANCELLED:
        raise RunCancelledError(
            f"run '{result.run_id}' was cancelled", run_id=result.run_id, graph=result.graph, status=status.value
        )
    return result
