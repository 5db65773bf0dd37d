"""What the providers built on an official async client share: one client per event loop,
made on first use there, and closing them all."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, Optional, Tuple, TypeVar

P = TypeVar("P", bound="ClientPerLoop")


class ClientPerLoop:
    """One client of ``_make_client()`` per event loop: a client's connection pool belongs
    to the loop that made it. LLM nodes make all their calls on ferroflow's background
    loop, so one client serves every run of a process."""

    base_url: Optional[str]
    api_key: Optional[str]
    max_retries: int
    timeout: float

    def __init__(self, *, base_url: Optional[str], api_key: Optional[str], max_retries: int, timeout: float) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.max_retries = max_retries
        self.timeout = timeout
        self._clients: Dict[int, Tuple[asyncio.AbstractEventLoop, Any]] = {}

    def _make_client(self) -> Any:
        raise NotImplementedError

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        known = self._clients.get(id(loop))
        if known is None or known[0] is not loop:
            known = self._clients[id(loop)] = (loop, self._make_client())
        return known[1]

    def close(self, timeout: float = 5.0) -> None:
        """Closes the provider's clients and their connections (each on its own loop, if
        that loop still runs). A provider is usable again afterwards: it makes new ones."""
        clients, self._clients = self._clients, {}
        for loop, client in clients.values():
            if loop.is_closed():
                continue
            if loop.is_running():
                if running_loop() is loop:
                    loop.create_task(client.close())
                else:
                    asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout)
            else:
                loop.run_until_complete(client.close())

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def running_loop() -> Optional[asyncio.AbstractEventLoop]:
    """The running event loop, or ``None`` outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
