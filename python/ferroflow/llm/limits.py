"""Limited: a provider wrapper bounding concurrent calls and calls per second, per event loop."""

from __future__ import annotations

import asyncio
import collections
from typing import (
    Any,
    AsyncIterator,
    Deque,
    Dict,
    Optional,
    Tuple,
    Union,
)

from .types import Provider, Reply, Request


class Limited:
    """``provider`` under limits that every run of the process shares: at most
    ``concurrency`` calls at once, at most ``requests`` calls started and ``tokens`` tokens
    used (as the replies' usage reports them) in any ``per`` seconds (a sliding window; 60
    by default, so ``requests`` and ``tokens`` are per minute). A call that would exceed a
    limit waits until it would not.

    The limits are kept per event loop; LLM nodes make all their calls on ferroflow's
    background loop, so for them the limits are the process's. The token budget is
    charged when a reply arrives: a burst of calls started together may overshoot it by
    what those calls use.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        concurrency: Optional[int] = None,
        requests: Optional[int] = None,
        tokens: Optional[int] = None,
        per: float = 60.0,
    ) -> None:
        for label, value in (("concurrency", concurrency), ("requests", requests), ("tokens", tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be at least 1, not {value}")
        if not per > 0:
            raise ValueError(f"per must be more than 0 seconds, not {per}")
        self.provider = provider
        self.concurrency, self.requests, self.tokens, self.per = concurrency, requests, tokens, per
        self._state: Dict[int, Tuple[asyncio.AbstractEventLoop, _LimitState]] = {}

    def _limits(self) -> _LimitState:
        loop = asyncio.get_running_loop()
        known = self._state.get(id(loop))
        if known is None or known[0] is not loop:
            known = self._state[id(loop)] = (loop, _LimitState(self.concurrency))
        return known[1]

    async def _admit(self, state: _LimitState) -> None:
        """Waits until a call fits the request and token budgets, and counts it."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while state.started and state.started[0] <= now - self.per:
                state.started.popleft()
            while state.used and state.used[0][0] <= now - self.per:
                state.used.popleft()
            waits = []
            if self.requests is not None and len(state.started) >= self.requests:
                waits.append(state.started[0] + self.per - now)
            if self.tokens is not None and sum(n for _, n in state.used) >= self.tokens:
                waits.append(state.used[0][0] + self.per - now)
            if not waits:
                state.started.append(now)
                return
            await asyncio.sleep(max(min(waits), 0.001))

    async def complete(self, request: Request) -> Reply:
        state = self._limits()
        async with state.slots:
            await self._admit(state)
            reply = await self.provider.complete(request)
            state.used.append((asyncio.get_running_loop().time(), reply.usage.total_tokens))
            return reply

    async def stream(self, request: Request) -> AsyncIterator[Union[str, Reply]]:
        state = self._limits()
        async with state.slots:
            await self._admit(state)
            async for part in self.provider.stream(request):
                if isinstance(part, Reply):
                    state.used.append((asyncio.get_running_loop().time(), part.usage.total_tokens))
                yield part


class _Unlimited:
    """An ``async with`` that waits for nothing."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: Any) -> None:
        return None


class _LimitState:
    """One loop's bookkeeping for :class:`Limited`."""

    def __init__(self, concurrency: Optional[int]) -> None:
        self.slots: Any = asyncio.Semaphore(concurrency) if concurrency else _Unlimited()
        self.started: Deque[float] = collections.deque()
        self.used: Deque[Tuple[float, int]] = collections.deque()


# -- the LLM node's body ----------------------------------------------------------------
