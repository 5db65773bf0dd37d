"""Event loops for async bodies: the background loop of synchronous runs, and the
engine's scheduler for each loop."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import Optional, Tuple

from . import _native

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


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _native.EventLoop] = weakref.WeakKeyDictionary()


def scheduler_for(loop: asyncio.AbstractEventLoop) -> _native.EventLoop:
    """The engine's scheduler for ``loop``: one per loop, shared by every run on it, so that
    async bodies of many runs start with one wake-up of the loop. It refers to the loop
    weakly, and is dropped with it."""
    with _lock:
        scheduler = _schedulers.get(loop)
        if scheduler is None:
            scheduler = _schedulers[loop] = _native.EventLoop(loop)
        return scheduler
