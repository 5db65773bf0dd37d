"""The background asyncio loop that async bodies of synchronous runs execute on."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Optional, Tuple

_lock = threading.Lock()
_current: Optional[Tuple[int, asyncio.AbstractEventLoop]] = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's background loop, started on first use (and again in a forked child)."""
    global _current
    with _lock:
        if _current is not None and _current[0] == os.getpid():
            return _current[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        threading.Thread(target=serve, name="ferroflow-asyncio", daemon=True).start()
        ready.wait()
        _current = (os.getpid(), loop)
        return loop
