"""Small helpers shared by the test modules (not fixtures: plain functions)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable, List, Optional, Sequence, Type

from ferroflow import events as ev


async def collect(stream: AsyncIterator[ev.Event], limit: float = 10.0) -> List[ev.Event]:
    """Every event of a stream, failing (instead of hanging) if it does not end within ``limit`` s."""

    async def drain() -> List[ev.Event]:
        return [e async for e in stream]

    return await asyncio.wait_for(drain(), limit)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Polls ``predicate`` from a synchronous test."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


async def async_wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Polls ``predicate`` from an async test without blocking its loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def find(events: Sequence[ev.Event], kind: Type[ev.Event], **attrs: Any) -> List[int]:
    """Indexes of the events of class ``kind`` whose attributes equal ``attrs``."""
    return [
        i for i, e in enumerate(events) if isinstance(e, kind) and all(getattr(e, k) == v for k, v in attrs.items())
    ]


def first(events: Sequence[ev.Event], kind: Type[ev.Event], **attrs: Any) -> int:
    """Index of the first matching event; fails the test if there is none."""
    found = find(events, kind, **attrs)
    assert found, f"no {kind.__name__} with {attrs} in {describe(events)}"
    return found[0]


def describe(events: Sequence[ev.Event]) -> List[str]:
    """A compact rendering of events for assertion messages."""
    out = []
    for e in events:
        node: Optional[str] = getattr(e, "node", None)
        attempt = getattr(e, "attempt", None)
        item = getattr(e, "item", None)
        bits = [type(e).__name__]
        if node is not None:
            bits.append(node)
        if attempt is not None:
            bits.append(f"#{attempt}")
        if item is not None:
            bits.append(f"[{item}]")
        out.append(" ".join(bits))
    return out


def node_statuses(context: Any, run_id: str) -> dict:
    """``{node: status}`` of a run."""
    return {n.name: n.status for n in context.nodes(run_id)}


def reopen(context: Any, **options: Any) -> Any:
    """Another context on the same store as ``context`` (another engine, with its own
    connection: what a second process sees), or ``context`` itself in memory."""
    import ferroflow as ff

    if isinstance(context, ff.Sqlite):
        return ff.Sqlite(context.path, **{"durability": context.durability, **options})
    if isinstance(context, ff.Redis):
        return ff.Redis(context.url, namespace=context.namespace, **options)
    if isinstance(context, ff.Nats):
        return ff.Nats(context.url, namespace=context.namespace, **options)
    return context


def context_spec(store: str, tmp_path: Any) -> str:
    """The `--context` of a fresh store of each kind (`sqlite`, `redis`, `nats`): a file, or
    a namespace of its own on the test servers."""
    import os
    import uuid

    name = f"t{uuid.uuid4().hex[:16]}"
    return {
        "sqlite": str(tmp_path / "runs.db"),
        "redis": f"{os.environ.get('FERROFLOW_TEST_REDIS', 'redis://127.0.0.1:6379')}?namespace={name}",
        "nats": f"{os.environ.get('FERROFLOW_TEST_NATS', 'nats://127.0.0.1:4222')}?namespace={name}",
    }[store]
