"""Event loops for async bodies: the background loop of synchronous runs, and the
engine's scheduler for each loop."""

from __future__ import annotations

import asyncio
import logging
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
            while True:
                try:
                    loop.run_forever()
                    return
                except (KeyboardInterrupt, SystemExit) as e:
                    # A task that raises these makes asyncio stop its loop; this one serves
                    # every async body of the process, so it goes on. The task's node is
                    # given up (not failed): its run stays resumable, and the exception is
                    # raised again where the run is waited for.
                    logging.getLogger("ferroflow").warning(
                        "an async body raised %s on ferroflow's event loop; its attempt is given up",
                        type(e).__name__,
                    )

        threading.Thread(target=serve, name="ferroflow-asyncio", daemon=True).start()
        ready.wait()
        _current = (os.getpid(), loop)
        return loop


def on_background_loop() -> bool:
    """Whether the caller runs on the process's background loop (in an async body of a run
    started with ``graph.run``)."""
    current = _current
    if current is None or current[0] != os.getpid():
        return False
    try:
        return asyncio.get_running_loop() is current[1]
    except RuntimeError:
        return False


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
