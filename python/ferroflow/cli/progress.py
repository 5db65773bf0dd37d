"""The progress of ``ferroflow map`` on stderr, never on stdout: a bar redrawn in place when
stderr is a terminal, otherwise (a log file, cron, CI) a line every few seconds.

:class:`Throughput` turns the ``(done, total)`` that ``graph.map`` reports about every 100 ms
into a rate and an ETA; :class:`Bar` and :class:`Lines` show them; :func:`reporter` picks one."""

from __future__ import annotations

import math
import os
import time
from collections import deque
from typing import Callable, Deque, Optional, TextIO, Tuple, Union


class Throughput:
    """How fast a batch settles and how long it has left, from samples of ``(now, done)``.

    The rate is over the last ``window`` seconds (since the start, before that), so that it
    follows a batch that speeds up or stalls, and so that the runs a resumed batch finds
    already settled, which all count at once, stop inflating it once they are out of the
    window. With no run settled in the window the rate is 0 and the ETA unknown (``None``)."""

    def __init__(self, total: int, start: float, window: float = 10.0) -> None:
        self.total = total
        self.start = start
        self.window = window
        self.done = 0
        self.now = start
        # The oldest sample is the last one at or before the window's start: the rate's base.
        self._samples: Deque[Tuple[float, int]] = deque([(start, 0)])

    def update(self, done: int, now: float) -> None:
        self.done, self.now = done, now
        self._samples.append((now, done))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    @property
    def elapsed(self) -> float:
        return self.now - self.start

    @property
    def rate(self) -> float:
        """Runs settled per second."""
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def eta(self) -> Optional[float]:
        """Seconds until every run has settled at the current rate: 0 once they all have,
        ``None`` (unknown) while the rate is 0."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        rate = self.rate
        return left / rate if rate > 0 else None

    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def summary(self) -> str:
        """``1,200/10,000 runs settled (12.0%), 310 runs/s, ETA 29s``."""
        return (
            f"{self.done:,}/{self.total:,} runs settled ({self.percent():.1f}%), "
            f"{format_rate(self.rate)} runs/s, ETA {format_eta(self.eta)}"
        )


def format_rate(rate: float) -> str:
    """``310``, ``12``, ``3.5``, ``0.05``: whole numbers from 10 on, two digits below."""
    if rate >= 10:
        return f"{rate:,.0f}"
    if rate >= 0.1 or rate == 0:
        return f"{rate:.1f}"
    return f"{rate:.2g}"


def format_duration(seconds: float) -> str:
    """``28s``, ``4m05s``, ``2h03m``: rounded up to the second, so that what is left is
    never shown as 0 before it is (but 45.000001 is 45)."""
    whole = max(math.ceil(seconds - 1e-6), 0)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_eta(eta: Optional[float]) -> str:
    return "unknown" if eta is None else format_duration(eta)


def format_elapsed(seconds: float) -> str:
    """``2.4s`` below a minute, else as :func:`format_duration`."""
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(seconds)


Clock = Callable[[], float]


class _Stream:
    """The stream progress goes to. One that cannot be written (a closed pipe) ends the
    progress, never the batch: an exception out of ``progress`` would stop ``map``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.broken = True


class Lines:
    """A line every ``every`` seconds, ``ferroflow map: 1,200/10,000 runs settled (12.0%),
    310 runs/s, ETA 29s``, for a stderr that is not a terminal. No line once every run has
    settled: the summary line that follows says so."""

    def __init__(self, stream: TextIO, total: int, *, every: float = 5.0, clock: Clock = time.monotonic) -> None:
        self.out = _Stream(stream)
        self.every = every
        self.clock = clock
        self.throughput = Throughput(total, clock())
        self.last = self.throughput.start

    def update(self, done: int, total: int) -> None:
        now = self.clock()
        self.throughput.total = total
        self.throughput.update(done, now)
        if done >= total or now - self.last < self.every:
            return
        self.last = now
        self.out.write(f"ferroflow map: {self.throughput.summary()}\n")

    def close(self) -> None:
        """Nothing to end: every line ends itself."""


class Bar:
    """``[###...........................] 1,200/10,000 runs settled (12.0%), 310 runs/s, ETA 29s``
    on one line of the terminal, redrawn in place (carriage return) as the batch goes on, and
    never wider than the terminal (a wider line would wrap, and the next redraw would not
    replace it)."""

    WIDTH = 30

    def __init__(
        self, stream: TextIO, total: int, *, columns: Optional[int] = None, clock: Clock = time.monotonic
    ) -> None:
        self.out = _Stream(stream)
        self.clock = clock
        self.columns = columns if columns is not None else _columns(stream)
        self.throughput = Throughput(total, clock())
        self.shown = ""

    def line(self) -> str:
        text = self.throughput.summary()
        room = self.columns - 1 - len(text) - 3  # the last column stays free: some terminals wrap there
        width = min(self.WIDTH, room)
        if width < 10:
            return text[: max(self.columns - 1, 0)]
        done, total = self.throughput.done, self.throughput.total
        filled = width * min(done, total) // total if total else width
        return f"[{'#' * filled}{'.' * (width - filled)}] {text}"

    def update(self, done: int, total: int) -> None:
        self.throughput.total = total
        self.throughput.update(done, self.clock())
        line = self.line()
        if line != self.shown:
            # Spaces over what is left of a longer line before it.
            self.out.write("\r" + line + " " * (len(self.shown) - len(line)))
            self.shown = line

    def close(self) -> None:
        """Ends the bar's line, so that what follows (the summary, an error) starts a line."""
        if self.shown:
            self.out.write("\n")
            self.shown = ""


Reporter = Union[Bar, Lines]


def reporter(stream: TextIO, total: int) -> Reporter:
    """A bar if ``stream`` is a terminal, else lines."""
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        terminal = False
    return Bar(stream, total) if terminal else Lines(stream, total)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80
