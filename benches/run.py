"""The standard workloads (benches/README.md): measures them and prints (or writes) one table each.

    python benches/run.py [--quick] [--only W1a,W2] [--write benches/RESULTS.md]

Every workload runs in a fresh child process (this script with ``--child ID``), so that one
workload's heap, threads and retained runs never colour another's figures, and so that a hung
workload is killed after a bounded time and reported as such while the others still run. W6
goes one step further: every RSS sample is taken in its own process. W4 and W4c read their
SQLite files from another process too (see _INSPECT), and in full mode profile their engine
part under `perf` in one more; W4c measures Redis and NATS each in a process of its own. B1
starts `ferroflow worker` processes (which die with the process that started them) and
measures each store in a process of its own too. W3 measures each context in a process of
its own, against a mock OpenAI server in one more. Each figure is the median over
repetitions, next to a plain-Python baseline measured in the same invocation, with the
ratio. The script never asserts on timings: a missed target is written down as "missed". It
exits non-zero only when a workload (or a part of one) could not be measured (crash,
time-out, wrong results).

See benches/README.md for what each figure counts and how to read it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import faulthandler
import gc
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULT_TAG = "FFBENCH-RESULT "

# -- workload parameters (benches/README.md) ----------------------------------------------------------

CHAIN_LEN = 10  # W1a, W1b
W1A_RUNS = 1_000
W1B_RUNS = 2_000
W1B_IN_FLIGHT = 100
W2_FANOUT = 50
W2_SLEEP = 0.02
W2_AT_ONCE = 200
W4_RUNS = 1_000
W4_BIG_RUNS = 200  # W4's extra sample with ~1 KB outputs
W4_BIG_TEXT = 1_000
W4_FRAME_RUNS = 20  # W4's count of WAL frames and commits per run (must stay below the first checkpoint)
W4C_RUNS = 2_000
W4C_IN_FLIGHT = 100
BATCH_WINDOW = 0.005  # W4, W4c: `ff.Sqlite(path, durability="batch", batch_window=...)` (the default window)
PERF_FREQ = 999  # samples/s of the profiles W4, W4c and B1 take in full mode
W6_PARKED = 10_000

# W3: the support bot of examples/support_bot.py, its two model calls answered by the mock
# OpenAI server (ferroflow.testing.MockLLMServer) in a process of its own.
SUPPORT_BOT = os.path.join(ROOT, "examples", "support_bot.py")
W3_TICKETS = 1_000
W3_IN_FLIGHT = 100
W3_LATENCY = 0.05  # the mock server's latency before each answer, seconds
W3_MODEL = "gpt-4o-mini"  # one of the mock server's models
W3_WARM = 200  # tickets through each path before timing
W3_CONTEXTS = ("memory", "sqlite", "redis", "nats")
W3_WAIT = 180.0  # bound on one measurement (1,000 tickets)
W3_CALL_TIMEOUT = 30.0  # the openai client's timeout per model call (the provider's and the baseline's)
# The tickets, cycled: every branch of the graph is taken (refund of a known order and of an
# unknown one, order status of an order on its way, of a delivered one and of an unknown one,
# neither), and no refund is above the bot's approval limit (REFUND_APPROVAL_LIMIT: only A200's
# price is), so no run waits for a person; w3_context checks both.
W3_TEXTS = (
    ("Ada", "Where is my order A100?"),
    ("Grace", "I want a refund for order A300, the mugs arrived broken."),
    ("Linus", "Do you ship to Norway?"),
    ("Alan", "Can I get my money back for order A100? The kettle is too small."),
    ("Edsger", "Has order A200 arrived yet? The status page says delivered."),
    ("Margaret", "Please track order A999 for me."),
    ("Ken", "I would like to return order A777."),
    ("Barbara", "What are your opening hours?"),
)

# The servers W4c and B1 use (Redis and NATS with JetStream on 127.0.0.1). Every
# measurement uses a namespace of its own, deleted afterwards.
REDIS_URL = os.environ.get("FFBENCH_REDIS", "redis://127.0.0.1:6379")
NATS_URL = os.environ.get("FFBENCH_NATS", "nats://127.0.0.1:4222")
SERVER_PROCESS = {"redis": "redis-server", "nats": "nats-server"}  # their process names, for CPU time
SERVER_MAP_TIMEOUT = 300.0  # bound on one `graph.map` on a server context (W4c) or through workers (B1)

# B1: graph.map of W1's chain through `ferroflow worker` processes. Runs per measurement:
# (full, quick). NATS takes a fifth of the runs: its rate is ~0.5k/s here and falls as its
# journal grows (see the B1 notes), so 10,000 runs would take minutes per measurement.
B1_RUNS = {"redis": (10_000, 2_000), "sqlite": (10_000, 2_000), "nats": (2_000, 500)}
B1_IN_FLIGHT = 100  # the submitter's `graph.map(..., concurrency=)`
B1_WORKER_CONCURRENCY = 16  # `ferroflow worker --concurrency` (its default)
B1_WARM = 50  # runs mapped through freshly started workers before timing
B1_DIAG_RUNS = {"redis": 2_000, "sqlite": 2_000, "nats": 500}  # the profiled run (full mode)
B1_APP = "ffbench_b1_app"  # the module the workers import the chain from

# Repetitions: (full, quick). Every figure is the median over these.
REPS = {
    "W1a": (9, 3),
    "W1b": (15, 3),
    "W2.latency_runs": (30, 10),
    "W2.at_once": (5, 2),
    "W4": (9, 3),
    "W4c": (7, 2),
    "W4c.redis": (5, 2),
    "W4c.nats": (3, 1),
    "W6": (5, 2),
    "B1": (3, 1),  # per worker count, redis and sqlite
    "B1.nats": (2, 1),
    "B1.baseline": (3, 1),  # per baseline process (two: before and after the stores)
    "W3": (3, 1),  # per context: `arun` and `graph.map` on both providers, and the baseline, 1,000 tickets each
}

# Per-workload wall-clock limit of the child process, in seconds: (full, quick); W4c and B1
# start processes of their own, each with its own limit (SUB_TIMEOUT), and get the sum.
CHILD_TIMEOUT = (120.0, 40.0)
SUB_TIMEOUT = {
    "W4c:redis": (120.0, 60.0),
    "W4c:nats": (300.0, 120.0),
    "B1:baseline": (60.0, 30.0),
    "B1:redis": (240.0, 90.0),
    "B1:sqlite": (240.0, 90.0),
    "B1:nats": (480.0, 150.0),
    "W3:memory": (300.0, 120.0),
    "W3:sqlite": (300.0, 120.0),
    "W3:redis": (300.0, 120.0),
    "W3:nats": (360.0, 150.0),
}


def _sum_timeouts(*keys: str, extra: Tuple[float, float] = (30.0, 30.0)) -> Tuple[float, float]:
    return (sum(SUB_TIMEOUT[k][0] for k in keys) + extra[0], sum(SUB_TIMEOUT[k][1] for k in keys) + extra[1])


# B1 runs its baseline process twice, before and after the stores.
WORKLOAD_TIMEOUT = {
    "W4c": _sum_timeouts("W4c:redis", "W4c:nats", extra=CHILD_TIMEOUT),
    "B1": _sum_timeouts("B1:baseline", "B1:baseline", "B1:redis", "B1:sqlite", "B1:nats"),
    "W3": _sum_timeouts(*(f"W3:{kind}" for kind in W3_CONTEXTS)),
}

IMPLEMENTED = ("W1a", "W1b", "W2", "W3", "W4", "W4c", "W6", "B1")
NOT_IMPLEMENTED = {
    "W4 on redis and nats": "W4 (runs one after another) is measured on sqlite only; W4c covers redis and nats",
}


# -- small helpers ---------------------------------------------------------------------------


_LOADED: Dict[str, Any] = {}


def _import_ferroflow() -> Any:
    """Imports ferroflow, retrying for a few seconds: the native module may be being rebuilt."""
    last: Optional[BaseException] = None
    for _ in range(5):
        try:
            import ferroflow

            if not _LOADED:  # which build this process runs, read when it was loaded
                native = sys.modules["ferroflow._native"]
                _LOADED.update(version=ferroflow.__version__, native_mtime=os.path.getmtime(str(native.__file__)))
            return ferroflow
        except ImportError as e:
            last = e
            for name in [m for m in sys.modules if m == "ferroflow" or m.startswith("ferroflow.")]:
                del sys.modules[name]
            time.sleep(2.0)
    assert last is not None
    raise last


def _reps(key: str, quick: bool) -> int:
    full, fast = REPS[key]
    return fast if quick else full


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _spread(values: Sequence[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(min(values) * scale)}-{fmt.format(max(values) * scale)}"


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _short_path(path: str) -> str:
    for prefix, name in ((ROOT + os.sep, ""), (os.path.dirname(os.__file__) + os.sep, "<stdlib>/")):
        if path.startswith(prefix):
            return name + path[len(prefix) :]
    return path


def _settle() -> None:
    gc.collect()
    gc.collect()


def _row(
    figure: str, value: str, baseline: str, ratio: str, target: str = "-", met: Optional[bool] = None
) -> List[str]:
    """One line of a result table, every field formatted; ``met`` None = no target."""
    verdict = "-" if met is None else ("yes" if met else "missed")
    return [figure, value, baseline, ratio, target, verdict]


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "n/a"
    r = a / b
    return f"{r:.1f}x" if r >= 10 else f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def _cpu_s() -> float:
    """CPU time of this process (every thread), user + system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- graphs ----------------------------------------------------------------------------------


def _chain_functions() -> List[Callable[[Any], Any]]:
    """Ten distinct no-op functions n0..n9 (node i takes node i-1's output and returns it)."""

    def make(i: int) -> Callable[[Any], Any]:
        def body(x: Any) -> Any:
            return x

        body.__name__ = body.__qualname__ = f"n{i}"
        return body

    return [make(i) for i in range(CHAIN_LEN)]


def _chain_graph(ff: Any, funcs: Sequence[Callable[[Any], Any]]) -> Any:
    g = ff.Graph("w1_chain")
    for i, f in enumerate(funcs):
        g.task(f, deps={"x": "input" if i == 0 else f"n{i - 1}"})
    return g.build()


def _plain_chain(funcs: Sequence[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """The baseline: the same ten functions called directly, one after another."""
    f0, f1, f2, f3, f4, f5, f6, f7, f8, f9 = funcs

    def plain(x: Any) -> Any:
        x = f0(x)
        x = f1(x)
        x = f2(x)
        x = f3(x)
        x = f4(x)
        x = f5(x)
        x = f6(x)
        x = f7(x)
        x = f8(x)
        return f9(x)

    return plain


def _fan_functions() -> Tuple[Callable[..., Any], List[Callable[..., Any]], Callable[..., Any]]:
    """W2's bodies: ``start`` (sync no-op), 50 async ``p<i>(start)`` sleeping 20 ms, and a sync
    ``join`` taking the 50 outputs by name (generated, since its parameters must be named)."""

    def start(input: Any) -> Any:
        return input

    def make(i: int) -> Callable[..., Any]:
        async def body(start: Any) -> Any:
            await asyncio.sleep(W2_SLEEP)
            return start

        body.__name__ = body.__qualname__ = f"p{i}"
        return body

    params = ", ".join(f"p{i}" for i in range(W2_FANOUT))
    namespace: Dict[str, Any] = {}
    exec(f"def join({params}):\n    return [{params}]\n", namespace)
    return start, [make(i) for i in range(W2_FANOUT)], namespace["join"]


# -- W1a -------------------------------------------------------------------------------------


def w1a(quick: bool) -> Dict[str, Any]:
    ff = _import_ferroflow()
    funcs = _chain_functions()
    g = _chain_graph(ff, funcs)
    plain = _plain_chain(funcs)
    ctx = ff.InMemory()
    perf = time.perf_counter

    # No per-run timeout: with one, `run` executes the chain on the engine's threads so that
    # the wait can end in time, which is not the common call. The harness bounds the whole
    # workload instead (it kills a hung workload process).
    for i in range(200):  # warm-up
        assert g.run(i, context=ctx).output == i
        assert plain(i) == i

    engine_med: List[float] = []
    base_med: List[float] = []
    for _ in range(_reps("W1a", quick)):
        times = [0.0] * W1A_RUNS
        _settle()
        for i in range(W1A_RUNS):
            t0 = perf()
            result = g.run(i, context=ctx)
            times[i] = perf() - t0
            if result.output != i:
                raise AssertionError(f"W1a: run {i} returned {result.output!r}")
        engine_med.append(_median(times))

        _settle()
        for i in range(W1A_RUNS):
            t0 = perf()
            out = plain(i)
            times[i] = perf() - t0
            if out != i:
                raise AssertionError("W1a: baseline broke")
        base_med.append(_median(times))

    us = 1e6 / CHAIN_LEN
    overhead = [(e - b) * us for e, b in zip(engine_med, base_med)]
    raw = _median(engine_med) * us
    base = _median(base_med) * us
    engine_cost = _median(overhead)
    reps = len(engine_med)
    rows = [
        _row(
            "engine time per node, µs: (run - baseline) / 10",
            f"{engine_cost:.2f}",
            "-",
            "-",
            "≤ 5 µs",
            engine_cost <= 5.0,
        ),
        _row(
            "raw wall time per node, µs (per-run median / 10)",
            f"{raw:.2f}",
            f"{base:.3f}",
            _ratio(raw, base),
        ),
        _row(
            "wall time per run (10 nodes), µs",
            f"{_median(engine_med) * 1e6:.1f}",
            f"{_median(base_med) * 1e6:.2f}",
            _ratio(_median(engine_med), _median(base_med)),
        ),
    ]
    notes = [
        f"`graph.run(i)` on an `InMemory()` context, {W1A_RUNS:,} runs one after another, each timed alone; "
        f"the figure is the median over {reps} repetitions of the per-run median "
        f"(repetitions ranged {_spread(overhead)} µs per node of engine time).",
        "Baseline: the same ten functions called directly (`x = n0(x); ...; n9(x)`), timed the same way.",
    ]
    return {"rows": rows, "notes": notes, "raw": {"engine_s": engine_med, "baseline_s": base_med}}


# -- W1b -------------------------------------------------------------------------------------


def w1b(quick: bool) -> Dict[str, Any]:
    ff = _import_ferroflow()
    funcs = _chain_functions()
    g = _chain_graph(ff, funcs)
    plain = _plain_chain(funcs)
    perf = time.perf_counter
    inputs = list(range(W1B_RUNS))
    completions = W1B_RUNS * CHAIN_LEN
    reps = _reps("W1b", quick)

    cpu: List[float] = []

    def engine_once(ctx: Any) -> float:
        _settle()
        c0 = _cpu_s()
        t0 = perf()
        out = g.map(inputs, context=ctx, concurrency=W1B_IN_FLIGHT)
        dt = perf() - t0
        cpu.append((_cpu_s() - c0) / dt)
        if out != inputs:
            raise AssertionError("W1b: graph.map returned wrong outputs")
        return dt

    def serial_once() -> float:
        _settle()
        t0 = perf()
        out = [plain(x) for x in inputs]
        dt = perf() - t0
        if out != inputs:
            raise AssertionError("W1b: baseline broke")
        return dt

    engine_once(ff.InMemory())  # warm-up
    serial_once()
    engine: List[float] = []
    serial: List[float] = []
    cpu.clear()
    for _ in range(reps):
        # A fresh context each repetition: below InMemory's retain_finished (10,000), so no
        # repetition pays for evicting the previous one's runs (measured separately below).
        engine.append(engine_once(ff.InMemory()))
        serial.append(serial_once())

    engine_cpu = _median(cpu)
    pool: List[float] = []
    with ThreadPoolExecutor(max_workers=W1B_IN_FLIGHT) as ex:
        list(ex.map(plain, inputs))  # starts the 100 threads
        for _ in range(reps):
            _settle()
            t0 = perf()
            out = list(ex.map(plain, inputs))
            pool.append(perf() - t0)
            if out != inputs:
                raise AssertionError("W1b: thread-pool baseline broke")

    # Steady state of a long-lived process: the context already holds retain_finished
    # (10,000) finished runs, so every new run also evicts an old one.
    full = ff.InMemory()
    g.map(list(range(10_000)), context=full, concurrency=W1B_IN_FLIGHT)
    steady = [engine_once(full) for _ in range(reps)]

    def rate(ts: Sequence[float]) -> float:
        return completions / _median(ts)

    r_engine, r_serial, r_pool, r_steady = rate(engine), rate(serial), rate(pool), rate(steady)
    rows = [
        _row(
            f"node completions/s, `graph.map`, {W1B_IN_FLIGHT} in flight",
            f"{r_engine:,.0f}",
            f"{r_serial:,.0f} (plain loop)",
            _ratio(r_engine, r_serial),
            "≥ 100,000",
            r_engine >= 100_000,
        ),
        _row(
            "same, against a 100-thread pool",
            f"{r_engine:,.0f}",
            f"{r_pool:,.0f} (ThreadPoolExecutor)",
            _ratio(r_engine, r_pool),
        ),
        _row(
            "same, steady state (context already holds 10,000 finished runs)",
            f"{r_steady:,.0f}",
            f"{r_serial:,.0f} (plain loop)",
            _ratio(r_steady, r_serial),
            "≥ 100,000",
            r_steady >= 100_000,
        ),
        _row(
            f"wall time for {W1B_RUNS:,} runs, ms",
            f"{_median(engine) * 1e3:.1f}",
            f"{_median(serial) * 1e3:.2f}",
            _ratio(_median(engine), _median(serial)),
        ),
        _row("CPU time (all threads) / wall time, `graph.map`", f"{engine_cpu:.2f}", "1.00 at most (one thread)", "-"),
    ]
    notes = [
        f"`graph.map(range({W1B_RUNS}), concurrency={W1B_IN_FLIGHT})` on a fresh `InMemory()` per repetition; "
        f"{completions:,} node completions per repetition; median of {reps} "
        f"(repetitions ranged {_spread([completions / t for t in engine], fmt='{:,.0f}')} completions/s).",
        "Baselines: the ten functions called directly for every input in a loop; and the same chain "
        f"submitted per input to a `ThreadPoolExecutor({W1B_IN_FLIGHT})` (threads started before timing).",
        "Steady state: one context pre-filled with 10,000 finished runs (its `retain_finished` default) "
        f"before timing, so every run also evicts one; ranged "
        f"{_spread([completions / t for t in steady], fmt='{:,.0f}')} completions/s.",
    ]
    return {"rows": rows, "notes": notes, "raw": {"engine_s": engine, "serial_s": serial, "pool_s": pool}}


# -- W2 --------------------------------------------------------------------------------------


def w2(quick: bool) -> Dict[str, Any]:
    ff = _import_ferroflow()
    start, parallel, join = _fan_functions()
    g = ff.Graph("w2_fan")
    g.task(start)
    for body in parallel:
        g.task(body)
    g.task(join)
    g.build()
    perf = time.perf_counter
    n_lat = _reps("W2.latency_runs", quick)
    n_once = _reps("W2.at_once", quick)

    async def plain(x: Any) -> Any:
        s = start(x)
        outs = await asyncio.gather(*(p(s) for p in parallel))
        return join(*outs)

    def check(out: Any, x: Any) -> None:
        if out != [x] * W2_FANOUT:
            raise AssertionError(f"W2: wrong output {out!r:.80}")

    async def main() -> Dict[str, Any]:
        ctx = ff.InMemory()

        async def engine_one(x: Any) -> Any:
            return (await g.arun(x, context=ctx)).output

        async def one(fn: Callable[[Any], Any]) -> float:
            t0 = perf()
            out = await asyncio.wait_for(fn(7), 30.0)
            dt = perf() - t0
            check(out, 7)
            return dt

        async def many(fn: Callable[[Any], Any], cpu: Optional[List[float]] = None) -> float:
            _settle()
            c0 = _cpu_s()
            t0 = perf()
            outs = await asyncio.wait_for(asyncio.gather(*(fn(i) for i in range(W2_AT_ONCE))), 60.0)
            dt = perf() - t0
            if cpu is not None:
                cpu.append(_cpu_s() - c0)
            for i, out in enumerate(outs):
                check(out, i)
            return dt

        for _ in range(3):  # warm-up
            await one(engine_one)
            await one(plain)
        await many(engine_one)
        await many(plain)

        lat_e: List[float] = []
        lat_b: List[float] = []
        _settle()
        for _ in range(n_lat):  # interleaved, so that both see the same noise
            lat_e.append(await one(engine_one))
            lat_b.append(await one(plain))
        many_e: List[float] = []
        many_b: List[float] = []
        cpu_e: List[float] = []
        cpu_b: List[float] = []
        for _ in range(n_once):
            many_e.append(await many(engine_one, cpu_e))
            many_b.append(await many(plain, cpu_b))
        return {
            "lat_e": lat_e,
            "lat_b": lat_b,
            "many_e": many_e,
            "many_b": many_b,
            "cpu_e": cpu_e,
            "cpu_b": cpu_b,
        }

    raw = asyncio.run(main())
    le, lb, me, mb, ce, cb = (_median(raw[k]) for k in ("lat_e", "lat_b", "many_e", "many_b", "cpu_e", "cpu_b"))
    per_node = 1e6 / (W2_AT_ONCE * W2_FANOUT)
    rows = [
        _row("one run's latency, ms", f"{le * 1e3:.2f}", f"{lb * 1e3:.2f}", _ratio(le, lb), "≤ 21 ms", le <= 0.021),
        _row(
            f"{W2_AT_ONCE} runs at once, wall time, ms",
            f"{me * 1e3:.1f}",
            f"{mb * 1e3:.1f}",
            _ratio(me, mb),
            "≤ 1.2x baseline",
            me <= 1.2 * mb,
        ),
        _row(
            f"{W2_AT_ONCE} at once: CPU time (all threads) per async node, µs",
            f"{ce * per_node:.1f}",
            f"{cb * per_node:.1f}",
            _ratio(ce, cb),
        ),
        _row(
            f"{W2_AT_ONCE} at once: CPU time / wall time",
            f"{ce / me:.2f}",
            f"{cb / mb:.2f}",
            "-",
        ),
    ]
    notes = [
        f"Graph: sync `start` → {W2_FANOUT} async nodes (`await asyncio.sleep({W2_SLEEP})`) → sync `join` of "
        f"the {W2_FANOUT} outputs; `await graph.arun(x)` on `InMemory()`, bodies on the caller's loop.",
        f"Latency: median of {len(raw['lat_e'])} runs one after another (ranged "
        f"{_spread(raw['lat_e'], 1e3)} ms; baseline {_spread(raw['lat_b'], 1e3)} ms). "
        f"{W2_AT_ONCE} at once: `asyncio.gather` of {W2_AT_ONCE} `arun`, median of {len(raw['many_e'])} "
        f"(ranged {_spread(raw['many_e'], 1e3, '{:.0f}')} ms; baseline {_spread(raw['many_b'], 1e3, '{:.0f}')} ms).",
        f"Baseline: plain asyncio, `start(x)`, `asyncio.gather` of the same {W2_FANOUT} coroutines, then "
        f"`join(*outputs)`; {W2_AT_ONCE} of those gathered at once. The floor for both is {W2_SLEEP * 1e3:.0f} ms.",
    ]
    return {"rows": rows, "notes": notes, "raw": raw}


# -- W4, W4c: durable storage (sqlite) -------------------------------------------------------


def _switches() -> int:
    """Voluntary context switches of this process so far, every thread: a thread blocking to
    wait for another (a hop to a blocking thread and back costs two)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def _fs_type(path: str) -> str:
    """The type of the file system ``path`` is on (ext4, tmpfs, ...), from /proc/mounts."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


# Reads a SQLite file in a process of its own and prints what it holds as JSON. Never open
# the engine's file with the stdlib's sqlite3 in the process where a `Sqlite` context has it
# open: that is a second copy of SQLite in one process, POSIX locks are per process, and
# when the stdlib's connection closes it takes itself for the last one and deletes the WAL
# under the engine, whose later commits are then lost.
_INSPECT = r"""
import json, os, sqlite3, sys

path = sys.argv[1]
conn = sqlite3.connect(path, timeout=10.0)
out = {"busy": conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]}
tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
if {"runs", "journal"} <= tables:
    out["statuses"] = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    nbytes = "sum(length(CAST(entry AS BLOB)))"
    try:
        rows = conn.execute(
            f"SELECT json_extract(entry, '$.type'), count(*), {nbytes} FROM journal GROUP BY 1 ORDER BY min(seq)"
        ).fetchall()
    except sqlite3.OperationalError:  # an SQLite without JSON functions
        rows = conn.execute(f"SELECT '?', count(*), {nbytes} FROM journal").fetchall()
    out["by_type"] = {kind: [count, total] for kind, count, total in rows}
    out["payload"] = sum(total for _, _, total in rows)
    out["runs_indexes"] = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'"
    ).fetchone()[0]
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'journal'").fetchone()[0]
    out["journal_without_rowid"] = "WITHOUT ROWID" in sql.upper()
conn.close()
out["bytes"] = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
print(json.dumps(out))
"""


def _inspect_db(path: str) -> Dict[str, Any]:
    """What the SQLite file at ``path`` holds, read in another process (see _INSPECT) after a
    `PRAGMA wal_checkpoint(TRUNCATE)`: ``bytes`` (the file plus what is left of its WAL,
    nothing after that checkpoint) and, for a ferroflow store, its runs by status, the
    journal's entries and their bytes (the `entry` column) by entry type, the number of
    indexes on `runs`, and whether `journal` is a WITHOUT ROWID table."""
    proc = subprocess.run([sys.executable, "-c", _INSPECT, path], capture_output=True, text=True, timeout=30.0)
    if proc.returncode != 0:
        raise RuntimeError(f"{path}: could not be read: {proc.stderr.strip()[-1000:]}")
    out: Dict[str, Any] = json.loads(proc.stdout)
    if out["busy"]:
        raise RuntimeError(f"{path}: the WAL checkpoint could not complete (the database stayed busy)")
    return out


def _db_bytes(path: str) -> int:
    return int(_inspect_db(path)["bytes"])


def _wal_counts(path: str) -> Tuple[int, int]:
    """Frames (one per page written) and commits (transactions) in the WAL of the database at
    ``path``, read from the WAL file's frame headers alone (safe while a connection of another
    SQLite copy has the database open). Counts only until the first checkpoint, after which
    SQLite writes the WAL from its start again."""
    with open(path, "rb") as f:
        page = int.from_bytes(f.read(100)[16:18], "big")
    page = 65536 if page == 1 else page
    frames = commits = 0
    try:
        with open(path + "-wal", "rb") as f:
            header = f.read(32)  # magic, version, page size, checkpoint seq, salt-1, salt-2, checksums
            salts = header[16:24]
            while True:
                frame = f.read(24)  # page number, db size after commit (0 if not a commit), salts, checksums
                if len(frame) < 24 or frame[8:16] != salts:
                    break
                frames += 1
                commits += int.from_bytes(frame[4:8], "big") != 0
                f.seek(page, os.SEEK_CUR)
    except FileNotFoundError:
        pass
    return frames, commits


def _open_wal(path: str) -> sqlite3.Connection:
    """A plain `sqlite3` connection in WAL mode with synchronous=NORMAL, as ferroflow's store.
    Python's default transaction handling: an INSERT opens a transaction, `commit()` ends it."""
    conn = sqlite3.connect(path)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"{path}: SQLite refused WAL mode ({mode})")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _raw_sqlite(
    path: str, funcs: Sequence[Callable[[Any], Any]], per_run: bool = False
) -> Tuple[Callable[[int, Any], Any], Any]:
    """W4's baseline: plain `sqlite3` (WAL, synchronous=NORMAL), and for each node of the
    chain: call it, INSERT one row holding its output as JSON, COMMIT. Returns
    ``run(i, x)`` (run number ``i``, input ``x``; returns the last output) and the connection.
    With ``per_run``, one COMMIT per run after its last INSERT instead (the like-for-like
    floor for group commit, which also writes a run's steps together)."""
    conn = _open_wal(path)
    conn.execute("CREATE TABLE outputs (run INTEGER NOT NULL, node TEXT NOT NULL, output TEXT NOT NULL)")
    conn.commit()
    execute, commit, dumps = conn.execute, conn.commit, json.dumps
    steps = [(f, f.__name__) for f in funcs]
    insert = "INSERT INTO outputs (run, node, output) VALUES (?, ?, ?)"

    def run(i: int, x: Any) -> Any:
        for f, name in steps:
            x = f(x)
            execute(insert, (i, name, dumps(x)))
            commit()
        return x

    def run_once(i: int, x: Any) -> Any:
        for f, name in steps:
            x = f(x)
            execute(insert, (i, name, dumps(x)))
        commit()
        return x

    return (run_once if per_run else run), conn


def _time_each(call: Callable[[int], Any], n: int, what: str) -> Dict[str, float]:
    """Calls ``call(i)`` for i in range(n), each timed alone, checking that it returns i.
    Returns per call: the median and the mean wall time (the mean includes the rare slow
    calls, e.g. those that checkpoint the WAL), the CPU time (every thread) and the voluntary
    context switches, the last two over the whole loop."""
    perf = time.perf_counter
    times = [0.0] * n
    _settle()
    c0, s0 = _cpu_s(), _switches()
    t_all = perf()
    for i in range(n):
        t0 = perf()
        out = call(i)
        times[i] = perf() - t0
        if out != i:
            raise AssertionError(f"{what}: call {i} returned {out!r:.80}")
    total = perf() - t_all
    return {
        "median": _median(times),
        "mean": total / n,
        "cpu": (_cpu_s() - c0) / n,
        "switches": (_switches() - s0) / n,
    }


def _runs_of(g: Any, ctx: Any) -> Callable[[Any], Any]:
    """``x -> g.run(x, context=ctx).output``, bound now (not to a variable that changes later)."""

    def call(x: Any) -> Any:
        return g.run(x, context=ctx).output

    return call


def _same_input(run: Callable[[int, Any], Any]) -> Callable[[int], Any]:
    """``i -> run(i, i)``: a baseline run whose input is its run number, as the engine's."""

    def call(i: int) -> Any:
        return run(i, i)

    return call


def _batch_sqlite(ff: Any, path: str) -> Any:
    """A `Sqlite` context with group commit (W4, W4c): a run's steps written together at
    most BATCH_WINDOW after they happen, and at once when the run settles."""
    return ff.Sqlite(path, durability="batch", batch_window=BATCH_WINDOW)


def _check_store(path: str, runs: int, what: str) -> Dict[str, Any]:
    """Reads ferroflow's store at ``path`` (see _inspect_db), checking that it holds ``runs``
    runs, every one completed."""
    stats = _inspect_db(path)
    if stats.get("statuses") != {"completed": runs}:
        raise AssertionError(f"{what}: the store holds runs {stats.get('statuses')}, expected {runs} completed")
    return stats


# -- profiles (W4, W4c in full mode) ---------------------------------------------------------


def _perf_control(command: str) -> None:
    """In a child run under `perf record --control` (see _perf_profile): sends ``command``
    ("enable" or "disable") and waits for perf's acknowledgement, so that the profile covers
    only the measured part. Does nothing in a child run without perf."""
    ctl, ack = os.environ.get("FFBENCH_PERF_CTL"), os.environ.get("FFBENCH_PERF_ACK")
    if not ctl or not ack:
        return
    fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)
    fd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
    try:
        ready, _, _ = select.select([fd], [], [], 10.0)
        if not ready:
            raise TimeoutError(f"perf did not acknowledge {command!r} within 10 s")
        os.read(fd, 64)
    finally:
        os.close(fd)


# One line of `perf report --children --sort comm,dso,sym -g none`:
# "children% self% comm dso [k or .] symbol".
_PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$")

# Frames whose inclusive share (the samples with the frame anywhere on the stack) says where
# the time of a durable node goes; matched as substrings of the symbol, the largest match wins.
_PERF_PROBES = (
    ("engine::Inner::write", "writing a node's step (`Inner::write`)"),
    ("DurableStore>::create::", "creating the run (`DurableStore::create`)"),
    ("sqlite3LockAndPrepare", "compiling SQL statements (`sqlite3LockAndPrepare`)"),
    ("sqlite3Reprepare", "`sqlite3_step` compiling again statements SQLite expired (`sqlite3Reprepare`)"),
    ("sqlite3_step", "executing them (`sqlite3_step`)"),
    ("pagerWalFrames", "of which appending pages to the WAL (`pagerWalFrames`)"),
    ("walCheckpoint", "of which checkpoints (`walCheckpoint`)"),
    ("do_fsync", "of which fsync (`do_fsync`)"),
    ("unixShmLock", "WAL-index locks (`unixShmLock`, fcntl)"),
    ("lock_contended", "contended Rust mutexes (`lock_contended`)"),
    ("take_gil", "taking the GIL (`take_gil`)"),
    ("do_futex", "futex waits and wake-ups (`do_futex`)"),
)


def _perf_area(dso: str, kind: str, symbol: str) -> str:
    if kind == "k":
        return "kernel"
    if dso.startswith("_native"):
        # The native module links SQLite (C: plain names) and the engine's Rust code
        # (ferroflow, tokio, pyo3, rusqlite: demangled paths with `::`).
        rust = "::" in symbol or symbol.startswith(("<", "0x", "[", "_ZN", "_R"))
        return "Rust" if rust else "SQLite"
    if dso.startswith(("libpython", "python")):
        return "CPython"
    if dso.startswith("libc"):
        return "libc"
    return "other"


def _perf_profile(which: str, timeout: float) -> Dict[str, Any]:
    """Runs child ``which`` under `perf record --call-graph dwarf`, sampling only between its
    ``_perf_control("enable")`` and ``("disable")``, and summarises `perf report`: the
    inclusive shares of _PERF_PROBES, self time by area (kernel, SQLite, the engine's Rust,
    CPython, libc) and by thread, and the symbols with the most self time. Returns
    {"error": ...} when perf is missing or fails (e.g. not permitted)."""
    perf = shutil.which("perf")
    if perf is None:
        return {"error": "perf is not installed"}
    tmp = tempfile.mkdtemp(prefix="ffbench-perf-")
    try:
        ctl, ack, data = (os.path.join(tmp, name) for name in ("ctl", "ack", "perf.data"))
        os.mkfifo(ctl)
        os.mkfifo(ack)
        cmd = [perf, "record", "--call-graph", "dwarf,16384", "-F", str(PERF_FREQ), "-D", "-1"]
        cmd += ["--control", f"fifo:{ctl},{ack}", "-o", data, "--"]
        cmd += [sys.executable, os.path.abspath(__file__), "--child", which, *(["--quick"] if _QUICK else [])]
        env = dict(os.environ, FFBENCH_PERF_CTL=ctl, FFBENCH_PERF_ACK=ack, FFBENCH_DEADLINE=str(timeout - 5.0))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"the profiled child did not finish within {timeout:.0f} s"}
        if proc.returncode != 0 or RESULT_TAG not in proc.stdout:
            return {"error": f"`perf record` exited with {proc.returncode}: {proc.stderr.strip()[-400:]}"}
        return _perf_summary(perf, data, _PERF_PROBES, timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"profiling failed: {e}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _perf_summary(perf: str, data: str, probes: Sequence[Tuple[str, str]], timeout: float = 120.0) -> Dict[str, Any]:
    """Summarises the `perf record --call-graph` file ``data``: the inclusive shares of
    ``probes`` (frames matched as substrings of the symbol), self time by area (kernel,
    SQLite, the engine's Rust, CPython, libc) and by thread, and the symbols with the most
    self time. Returns {"error": ...} when `perf report` finds no samples."""
    try:
        report = subprocess.run(
            [perf, "report", "-i", data, "--stdio", "--children", "--sort", "comm,dso,sym", "-g", "none"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"`perf report` failed: {e}"}

    areas: Dict[str, float] = {}
    threads: Dict[str, float] = {}
    inclusive: Dict[str, float] = {}
    own: Dict[Tuple[str, str], float] = {}
    for line in report.stdout.splitlines():
        m = _PERF_LINE.match(line)
        if m is None:
            continue
        children, self_pct, comm, dso, kind, symbol = float(m[1]), float(m[2]), m[3], m[4], m[5], m[6]
        area = _perf_area(dso, kind, symbol)
        areas[area] = areas.get(area, 0.0) + self_pct
        threads[comm] = threads.get(comm, 0.0) + self_pct
        inclusive[symbol] = inclusive.get(symbol, 0.0) + children
        own[(symbol, area)] = own.get((symbol, area), 0.0) + self_pct
    if not own:
        return {"error": f"`perf report` found no samples: {report.stderr.strip()[-400:]}"}
    samples = re.search(r"^# Samples: (\S+)", report.stdout, re.M)

    def ranked(d: Dict[Any, float], n: int) -> List[Tuple[Any, float]]:
        return sorted(d.items(), key=lambda kv: -kv[1])[:n]

    found = []
    for key, label in probes:
        share = max((pct for symbol, pct in inclusive.items() if key in symbol), default=0.0)
        if share >= 0.5:
            found.append((label, share))
    return {
        "samples": samples[1] if samples else "?",
        "probes": found,
        "areas": ranked(areas, 8),
        "threads": ranked(threads, 4),
        "top": [(symbol, area, pct) for (symbol, area), pct in ranked(own, 8)],
    }


def _probe(
    profile: Optional[Dict[str, Any]], key: str, probes: Sequence[Tuple[str, str]] = _PERF_PROBES
) -> Optional[float]:
    """The inclusive share of probe ``key`` (a key of ``probes``) in ``profile``, if taken."""
    if not profile or "probes" not in profile:
        return None
    label = dict(probes)[key]
    return dict(profile["probes"]).get(label, 0.0)


def _profile_note(name: str, profile: Optional[Dict[str, Any]], scope: str = "of the measured part only") -> List[str]:
    if profile is None:
        return [f"No profile of {name} with --quick (full mode takes one with `perf`)."]
    if "error" in profile:
        return [f"Profile of {name}: not taken ({profile['error']})."]
    probes = "; ".join(f"{label} {pct:.0f} %" for label, pct in profile["probes"])
    areas = ", ".join(f"{area} {pct:.0f} %" for area, pct in profile["areas"] if pct >= 0.5)
    threads = ", ".join(f"`{comm}` {pct:.0f} %" for comm, pct in profile["threads"] if pct >= 0.5)
    top = ", ".join(f"`{symbol}` ({area}) {pct:.1f} %" for symbol, area, pct in profile["top"])
    return [
        f"Profile of {name}: `perf record --call-graph dwarf -F {PERF_FREQ}` {scope}, "
        f"{profile['samples']} CPU samples. Share of the samples with the frame on the stack: {probes}. "
        f"Self time by area: {areas}; by thread: {threads}. Top symbols by self time: {top}."
    ]


# -- W4, W4c ---------------------------------------------------------------------------------


def w4(quick: bool) -> Dict[str, Any]:
    ff = _import_ferroflow()
    funcs = _chain_functions()
    g = _chain_graph(ff, funcs)
    reps = _reps("W4", quick)
    nodes = CHAIN_LEN
    root = tempfile.mkdtemp(prefix="ffbench-w4-")
    try:
        # Warm-up: the engine's threads, SQLite's code paths, the allocators.
        _time_each(_runs_of(g, ff.Sqlite(os.path.join(root, "warm.db"))), 200, "W4 warm-up")
        _time_each(_runs_of(g, _batch_sqlite(ff, os.path.join(root, "warm-batch.db"))), 200, "W4 warm-up")
        raw, conn = _raw_sqlite(os.path.join(root, "warm-raw.db"), funcs)
        _time_each(_same_input(raw), 200, "W4 warm-up")
        conn.close()

        # WAL frames (pages written) and commits per run, on fresh files, before their first
        # checkpoint.
        path = os.path.join(root, "frames.db")
        ctx = ff.Sqlite(path)
        before = _wal_counts(path)
        _time_each(_runs_of(g, ctx), W4_FRAME_RUNS, "W4 frames")
        e_frames, e_commits = ((n - n0) / W4_FRAME_RUNS for n, n0 in zip(_wal_counts(path), before))
        path = os.path.join(root, "frames-batch.db")
        ctx = _batch_sqlite(ff, path)
        before = _wal_counts(path)
        _time_each(_runs_of(g, ctx), W4_FRAME_RUNS, "W4 frames, batch")
        g_frames, g_commits = ((n - n0) / W4_FRAME_RUNS for n, n0 in zip(_wal_counts(path), before))
        path = os.path.join(root, "frames-raw.db")
        raw, conn = _raw_sqlite(path, funcs)
        before = _wal_counts(path)
        _time_each(_same_input(raw), W4_FRAME_RUNS, "W4 frames")
        b_frames, b_commits = ((n - n0) / W4_FRAME_RUNS for n, n0 in zip(_wal_counts(path), before))
        conn.close()

        # "batch": the engine with group commit; "raw_run": the baseline with one COMMIT per run.
        timing: Dict[str, List[Dict[str, float]]] = {"engine": [], "batch": [], "raw": [], "raw_run": []}
        size: Dict[str, List[float]] = {"engine": [], "raw": []}  # bytes per run
        payload: List[float] = []
        stats: Dict[str, Any] = {}
        for rep in range(reps):  # engine and baselines interleaved, each on a fresh file
            d = os.path.join(root, f"rep{rep}")
            os.mkdir(d)
            path = os.path.join(d, "ferroflow.db")
            ctx = ff.Sqlite(path)
            size0 = _db_bytes(path)
            timing["engine"].append(_time_each(_runs_of(g, ctx), W4_RUNS, "W4"))
            stats = _check_store(path, W4_RUNS, "W4")
            size["engine"].append((stats["bytes"] - size0) / W4_RUNS)
            payload.append(stats["payload"] / W4_RUNS)

            path = os.path.join(d, "batch.db")
            ctx = _batch_sqlite(ff, path)
            timing["batch"].append(_time_each(_runs_of(g, ctx), W4_RUNS, "W4 batch"))
            _check_store(path, W4_RUNS, "W4 batch")  # read with the context still open: settled = written
            del ctx

            path = os.path.join(d, "raw.db")
            run, conn = _raw_sqlite(path, funcs)
            size0 = _db_bytes(path)
            timing["raw"].append(_time_each(_same_input(run), W4_RUNS, "W4 baseline"))
            size["raw"].append((_db_bytes(path) - size0) / W4_RUNS)
            conn.close()

            run, conn = _raw_sqlite(os.path.join(d, "raw-run.db"), funcs, per_run=True)
            timing["raw_run"].append(_time_each(_same_input(run), W4_RUNS, "W4 baseline, COMMIT per run"))
            conn.close()
            shutil.rmtree(d, ignore_errors=True)

        # One sample with ~1 KB outputs: the chain passes {"i": i, "text": <1,000 characters>} on.
        big_inputs = [{"i": i, "text": "x" * W4_BIG_TEXT} for i in range(W4_BIG_RUNS)]
        path = os.path.join(root, "big.db")
        ctx = ff.Sqlite(path)
        size0 = _db_bytes(path)
        for x in big_inputs:
            if g.run(x, context=ctx).output != x:
                raise AssertionError("W4: the ~1 KB chain returned a wrong output")
        big_stats = _check_store(path, W4_BIG_RUNS, "W4 ~1 KB")
        big_size = (big_stats["bytes"] - size0) / W4_BIG_RUNS
        big_payload = big_stats["payload"] / W4_BIG_RUNS
        path = os.path.join(root, "big-raw.db")
        run, conn = _raw_sqlite(path, funcs)
        size0 = _db_bytes(path)
        for i, x in enumerate(big_inputs):
            run(i, x)
        big_raw = (_db_bytes(path) - size0) / W4_BIG_RUNS
        conn.close()
        fs = _fs_type(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    big_json = sum(nodes * len(json.dumps(x)) for x in big_inputs) / W4_BIG_RUNS
    out_json = sum(nodes * len(json.dumps(i)) for i in range(W4_RUNS)) / W4_RUNS  # every output is the input
    profile = None if quick else _perf_profile("W4:profile", 60.0)

    def med(kind: str, key: str, scale: float = 1.0) -> float:
        return _median([t[key] for t in timing[kind]]) * scale

    us = 1e6 / nodes
    e_node, b_node = med("engine", "median", us), med("raw", "median", us)
    e_mean, b_mean = med("engine", "mean", us), med("raw", "mean", us)
    e_cpu, b_cpu = med("engine", "cpu", us), med("raw", "cpu", us)
    e_csw, b_csw = med("engine", "switches", 1 / nodes), med("raw", "switches", 1 / nodes)
    e_size, b_size = _median(size["engine"]), _median(size["raw"])
    e_payload = _median(payload)
    g_node, g_cpu = med("batch", "median", us), med("batch", "cpu", us)  # group commit
    r_node = med("raw_run", "median", us)  # the baseline with one COMMIT per run
    batch = '`durability="batch"` (group commit, not 1:1 with a COMMIT-per-node baseline)'
    rows = [
        _row(
            'µs per durable node (per-run median / 10), default `durability="commit"`',
            f"{e_node:.1f}",
            f"{b_node:.2f} (sqlite3, INSERT+COMMIT per node)",
            _ratio(e_node, b_node),
            "≤ 1.5x baseline",
            e_node <= 1.5 * b_node,
        ),
        _row(
            f"µs per durable node (per-run median / 10), {batch}",
            f"{g_node:.1f}",
            f"{b_node:.2f} (same baseline)",
            _ratio(g_node, b_node),
        ),
        _row(
            "µs per node, mean (includes the runs that checkpoint)",
            f"{e_mean:.1f}",
            f"{b_mean:.2f}",
            _ratio(e_mean, b_mean),
        ),
        _row("CPU time per node (all threads), µs", f"{e_cpu:.1f}", f"{b_cpu:.2f}", _ratio(e_cpu, b_cpu)),
        _row("voluntary context switches per node", f"{e_csw:.2f}", f"{b_csw:.2f}", "-"),
        _row(
            "transactions (WAL commits) per run", f"{e_commits:.1f}", f"{b_commits:.1f}", _ratio(e_commits, b_commits)
        ),
        _row(
            'transactions (WAL commits) per run, `durability="batch"` (group commit)',
            f"{g_commits:.1f}",
            f"{b_commits:.1f}",
            _ratio(g_commits, b_commits),
        ),
        _row("WAL frames (pages) written per run", f"{e_frames:.1f}", f"{b_frames:.1f}", _ratio(e_frames, b_frames)),
        _row(
            'WAL frames (pages) written per run, `durability="batch"` (group commit)',
            f"{g_frames:.1f}",
            f"{b_frames:.1f}",
            _ratio(g_frames, b_frames),
        ),
        _row(
            "bytes stored per run (file growth, WAL checkpointed)",
            f"{e_size:,.0f}",
            f"{out_json:.1f} (outputs' JSON)",
            _ratio(e_size, out_json),
            "≤ 2x outputs' JSON",
            e_size <= 2 * out_json,
        ),
        _row(
            "journal payload per run (`entry` bytes)",
            f"{e_payload:,.0f}",
            f"{out_json:.1f} (outputs' JSON)",
            _ratio(e_payload, out_json),
            "≤ 2x outputs' JSON",
            e_payload <= 2 * out_json,
        ),
        _row(
            "bytes stored per run, against the baseline's file growth",
            f"{e_size:,.0f}",
            f"{b_size:,.0f} (sqlite3 baseline)",
            _ratio(e_size, b_size),
        ),
        _row(
            f"bytes stored per run, ~1 KB outputs ({W4_BIG_RUNS} runs)",
            f"{big_size:,.0f}",
            f"{big_json:,.0f} (outputs' JSON)",
            _ratio(big_size, big_json),
            "≤ 2x outputs' JSON",
            big_size <= 2 * big_json,
        ),
        _row(
            "journal payload per run, ~1 KB outputs",
            f"{big_payload:,.0f}",
            f"{big_json:,.0f} (outputs' JSON)",
            _ratio(big_payload, big_json),
            "≤ 2x outputs' JSON",
            big_payload <= 2 * big_json,
        ),
    ]
    entries = ", ".join(
        f"{kind} {count / W4_RUNS:g} x {total / count:.0f} B" for kind, (count, total) in stats["by_type"].items()
    )
    ranged = _spread([t["median"] for t in timing["engine"]], us, "{:.1f}")
    b_ranged = _spread([t["median"] for t in timing["raw"]], us)
    notes = [
        f"`graph.run(i, context=ff.Sqlite(path))`, {W4_RUNS:,} runs one after another, each timed alone, on one "
        f"context and a fresh file per repetition (temp dir on {fs}); the figure is the median over {reps} "
        f"repetitions of the per-run median / {nodes} (repetitions ranged {ranged} µs per node; baseline "
        f'{b_ranged} µs). Every row not marked `durability="batch"` is the default durability, one transaction '
        "per node committed before its successors run.",
        "Baseline: plain `sqlite3` on its own file in WAL mode with `synchronous=NORMAL` (as ferroflow's store): "
        "for each node, call it, INSERT one row `(run, node, output JSON)`, COMMIT; 10 per run, timed the same way. "
        "CPU time and context switches are `getrusage` over the whole loop (every thread), per node.",
        _w4_batch_note(g_node, g_cpu, (g_commits, g_frames), e_node, b_node, r_node, timing, us),
        "Bytes: database file + WAL after `PRAGMA wal_checkpoint(TRUNCATE)` (run in another process: see "
        f"`_INSPECT` in run.py), after the runs minus before them, per run. Outputs' JSON: the sum over the 10 "
        f"nodes of `len(json.dumps(output))`. The journal per run: {entries}; the file holds "
        f"{e_size - e_payload:,.0f} B per run more than that payload: the integer run key, seq and timestamp of "
        f"every journal row, the `runs` row and its {stats['runs_indexes']} index(es), and b-tree slack.",
        f"~1 KB outputs: one sample of {W4_BIG_RUNS} runs whose input (passed on by every node) is "
        f'`{{"i": i, "text": <{W4_BIG_TEXT:,} characters>}}`; the baseline stored {big_raw:,.0f} B per run.'
        + (
            " An entry this size does not fit in a b-tree cell of the `WITHOUT ROWID` journal table (an index "
            "b-tree keeps at most ~1 KB of a row in a 4 KB page), so each one spills to an overflow page of its "
            "own, mostly empty; the baseline's rowid table keeps rows up to ~4 KB in the page."
            if big_stats["journal_without_rowid"]
            else ""
        ),
        *_w4_limits(e_node, b_node, e_mean, e_cpu, e_csw, (e_commits, e_frames), (b_commits, b_frames), profile),
        "What limits bytes: every entry carries its envelope (type, node name, attempt) and its row key, "
        f"a fixed cost of ~{(e_size - out_json) / nodes:.0f} B per node in the file "
        f"(~{(e_payload - out_json) / nodes:.0f} B of journal payload), so with outputs of a few bytes no per-node "
        f"journal can be within 2x (the baseline's one row per node is not either: {_ratio(b_size, out_json)}). "
        f"With ~1 KB outputs the file is {_ratio(big_size, big_json)} the outputs' JSON and the journal payload "
        f"{_ratio(big_payload, big_json)}"
        + (
            ": the payload is within the target, the file is not, because of the overflow pages."
            if big_payload <= 2 * big_json < big_size
            else "."
        ),
        *_profile_note("`graph.run` on `Sqlite`", profile),
    ]
    return {
        "rows": rows,
        "notes": notes,
        "raw": {"timing": timing, "bytes": size, "payload": payload, "profile": profile},
    }


def _w4_batch_note(
    g_node: float,
    g_cpu: float,
    g_wal: Tuple[float, float],
    e_node: float,
    b_node: float,
    r_node: float,
    timing: Dict[str, List[Dict[str, float]]],
    us: float,
) -> str:
    """W4's note on the group-commit rows: what batch mode trades, and its honest comparison."""
    window_ms = BATCH_WINDOW * 1e3
    g_ranged = _spread([t["median"] for t in timing["batch"]], us, "{:.1f}")
    r_ranged = _spread([t["median"] for t in timing["raw_run"]], us)
    return (
        f'Group commit rows: `ff.Sqlite(path, durability="batch", batch_window={BATCH_WINDOW})`, the same '
        f"{W4_RUNS:,} runs on a fresh file per repetition, interleaved with the others (repetitions ranged "
        f"{g_ranged} µs per node; CPU time {g_cpu:.1f} µs per node). What it trades: a run's steps are written "
        f"together at most {window_ms:g} ms after they happen, and at once when the run settles (finishes, fails "
        "or waits for a person), before `graph.run` returns, so every result a caller sees is durable (checked: "
        "the file, read from another process while the context is still open, holds every run completed); a "
        f"process crash loses at most the last window ({window_ms:g} ms) of steps (an OS crash may lose more, as "
        "in the default, with `synchronous=NORMAL`), whose nodes run again when the run is recovered (their "
        "effects repeat, as an interrupted attempt's do). One after another, a run is created "
        "in a transaction of its own (as in the default) and its steps are written together when it finishes: "
        f"{g_wal[0]:.1f} transactions and {g_wal[1]:.1f} pages per run (the floor below commits once). "
        "These rows are therefore not comparable 1:1 "
        "with the baseline, which commits every node, and carry no target. The honest comparison is plain "
        "`sqlite3` committing once per run (10 INSERTs, then one COMMIT), measured in the same repetitions: "
        f"{r_node:.2f} µs per node (ranged {r_ranged}); group commit is {_ratio(g_node, r_node)} that, where the "
        f"default durability is {_ratio(e_node, b_node)} its own per-node-commit baseline."
    )


def _w4_limits(
    e_node: float,
    b_node: float,
    e_mean: float,
    e_cpu: float,
    e_csw: float,
    e_wal: Tuple[float, float],
    b_wal: Tuple[float, float],
    profile: Optional[Dict[str, Any]],
) -> List[str]:
    """W4's "what limits it" note, from the figures and (full mode) the profile."""
    text = (
        "What limits µs per node: the store, written from the calling thread (CPU time "
        f"{e_cpu:.1f} µs per node against a mean wall time of {e_mean:.1f} µs, the rest off-CPU, e.g. in fsync "
        f"at checkpoints; {e_csw:.2f} context switches per node: no hand-off to another thread). A run commits "
        f"{e_wal[0]:.1f} transactions writing {e_wal[1]:.1f} pages to the WAL, against the baseline's "
        f"{b_wal[0]:.1f} and {b_wal[1]:.1f}: the store creates the run in one transaction, then writes each "
        "node's step in one of their own (with the run's lock held), which reads the run's row, checks the "
        "run's last seq and inserts into `journal`; the `runs` row is written when the run is created and when "
        "its status or holder changes (the lease is renewed in the background, one UPDATE every third of it)."
    )
    persist, create = _probe(profile, "engine::Inner::write"), _probe(profile, "DurableStore>::create::")
    if persist is not None and create is not None:
        prepare = _probe(profile, "sqlite3LockAndPrepare") or 0.0
        reprepare = _probe(profile, "sqlite3Reprepare") or 0.0
        frames = _probe(profile, "pagerWalFrames") or 0.0
        locks = _probe(profile, "unixShmLock") or 0.0
        text += (
            f" In the profile, writing the nodes' steps has {persist:.0f} % of the samples and creating the "
            f"run {create:.0f} %; across both, appending the WAL frames takes {frames:.0f} %, the WAL-index "
            f"locks (fcntl system calls) {locks:.0f} %, and compiling SQL {prepare:.0f} %"
        )
        if reprepare >= 5.0:
            text += (
                f"; {reprepare:.0f} % of the samples are `sqlite3_step` compiling again a cached statement that "
                "SQLite marked expired (`sqlite3Reprepare`; SQLite does that after a schema change, or when the "
                "statement's plan depends on a bound parameter's value), so caching the statement does not "
                "save its compilation"
            )
        elif prepare >= 5.0:
            text += (
                ": some statement is compiled afresh on each write (the store caches its statements, "
                "`BEGIN IMMEDIATE` and `COMMIT` included, with `prepare_cached`; look for one that is not)"
            )
        text += "."
    gap = e_node - 1.5 * b_node
    if gap > 0:
        text += f" Meeting the target needs {gap:.1f} µs less per node."
    return [text]


def w4_profile(quick: bool) -> Dict[str, Any]:
    """W4's engine part alone, for `perf` (see _perf_profile)."""
    ff = _import_ferroflow()
    g = _chain_graph(ff, _chain_functions())
    root = tempfile.mkdtemp(prefix="ffbench-w4p-")
    try:
        ctx = ff.Sqlite(os.path.join(root, "w4.db"))
        _time_each(_runs_of(g, ctx), 200, "W4 warm-up")
        _perf_control("enable")
        _time_each(_runs_of(g, ctx), 4 * W4_RUNS, "W4 profile")
        _perf_control("disable")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {}


def w4c(quick: bool) -> Dict[str, Any]:
    ff = _import_ferroflow()
    funcs = _chain_functions()
    g = _chain_graph(ff, funcs)
    reps = _reps("W4c", quick)
    inputs = list(range(W4C_RUNS))
    completions = W4C_RUNS * CHAIN_LEN
    perf = time.perf_counter
    root = tempfile.mkdtemp(prefix="ffbench-w4c-")

    # "batch": graph.map with group commit; "raw_run": the baseline with one COMMIT per run.
    kinds = ("map", "batch", "seq", "raw", "raw_run")
    wall: Dict[str, List[float]] = {kind: [] for kind in kinds}
    cpu: Dict[str, List[float]] = {kind: [] for kind in kinds}  # CPU time / wall time
    csw: Dict[str, List[float]] = {kind: [] for kind in kinds}  # per node
    size: List[float] = []

    def timed(kind: str, body: Callable[[], Any]) -> Any:
        _settle()
        c0, s0 = _cpu_s(), _switches()
        t0 = perf()
        result = body()
        dt = perf() - t0
        wall[kind].append(dt)
        cpu[kind].append((_cpu_s() - c0) / dt)
        csw[kind].append((_switches() - s0) / completions)
        return result

    def mapped(ctx: Any) -> Callable[[], Any]:
        return lambda: g.map(inputs, context=ctx, concurrency=W4C_IN_FLIGHT, timeout=60.0)

    def one_by_one(ctx: Any) -> Callable[[], Any]:
        call = _runs_of(g, ctx)
        return lambda: [call(i) for i in inputs]

    def plain_loop(run: Callable[[int, Any], Any]) -> Callable[[], Any]:
        return lambda: [run(i, i) for i in inputs]

    try:
        warm = ff.Sqlite(os.path.join(root, "warm.db"))
        if g.map(inputs[:200], context=warm, concurrency=W4C_IN_FLIGHT, timeout=60.0) != inputs[:200]:
            raise AssertionError("W4c: graph.map returned wrong outputs")
        warm = _batch_sqlite(ff, os.path.join(root, "warm-batch.db"))
        if g.map(inputs[:200], context=warm, concurrency=W4C_IN_FLIGHT, timeout=60.0) != inputs[:200]:
            raise AssertionError("W4c: graph.map (batch) returned wrong outputs")
        del warm
        raw, conn = _raw_sqlite(os.path.join(root, "warm-raw.db"), funcs)
        _time_each(_same_input(raw), 200, "W4c warm-up")
        conn.close()

        for rep in range(reps):  # map, batch, one by one and the baselines interleaved, each on a fresh file
            d = os.path.join(root, f"rep{rep}")
            os.mkdir(d)
            path = os.path.join(d, "map.db")
            ctx = ff.Sqlite(path)
            size0 = _db_bytes(path)
            if timed("map", mapped(ctx)) != inputs:
                raise AssertionError("W4c: graph.map returned wrong outputs")
            size.append((_check_store(path, W4C_RUNS, "W4c")["bytes"] - size0) / W4C_RUNS)
            del ctx

            path = os.path.join(d, "batch.db")
            ctx = _batch_sqlite(ff, path)
            if timed("batch", mapped(ctx)) != inputs:
                raise AssertionError("W4c: graph.map (batch) returned wrong outputs")
            _check_store(path, W4C_RUNS, "W4c batch")  # read with the context still open: settled = written
            del ctx

            path = os.path.join(d, "seq.db")
            if timed("seq", one_by_one(ff.Sqlite(path))) != inputs:
                raise AssertionError("W4c: graph.run one after another returned wrong outputs")
            _check_store(path, W4C_RUNS, "W4c one after another")

            run, conn = _raw_sqlite(os.path.join(d, "raw.db"), funcs)
            if timed("raw", plain_loop(run)) != inputs:
                raise AssertionError("W4c: baseline broke")
            conn.close()

            run, conn = _raw_sqlite(os.path.join(d, "raw-run.db"), funcs, per_run=True)
            if timed("raw_run", plain_loop(run)) != inputs:
                raise AssertionError("W4c: baseline (COMMIT per run) broke")
            conn.close()
            shutil.rmtree(d, ignore_errors=True)
        fs = _fs_type(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def rate(kind: str) -> float:
        return completions / _median(wall[kind])

    def rates(kind: str) -> str:
        return _spread([completions / t for t in wall[kind]], fmt="{:,.0f}")

    r_map, r_seq, r_raw = rate("map"), rate("seq"), rate("raw")
    r_batch, r_raw_run = rate("batch"), rate("raw_run")
    profile = None if quick else _perf_profile("W4c:profile", 60.0)
    c_map, c_seq, c_raw = _median(cpu["map"]), _median(cpu["seq"]), _median(cpu["raw"])
    s_map, s_seq, s_raw = _median(csw["map"]), _median(csw["seq"]), _median(csw["raw"])
    c_batch, s_batch = _median(cpu["batch"]), _median(csw["batch"])
    rows = [
        _row(
            f'durable node completions/s, `graph.map`, {W4C_IN_FLIGHT} in flight, default `durability="commit"`',
            f"{r_map:,.0f}",
            f"{r_raw:,.0f} (sqlite3 INSERT+COMMIT rows/s)",
            _ratio(r_map, r_raw),
            "≥ 20,000",
            r_map >= 20_000,
        ),
        _row(
            f'durable node completions/s, `graph.map`, {W4C_IN_FLIGHT} in flight, `durability="batch"` '
            "(group commit, not 1:1 with a COMMIT-per-node baseline)",
            f"{r_batch:,.0f}",
            f"{r_raw:,.0f} (same baseline)",
            _ratio(r_batch, r_raw),
            "≥ 20,000",
            r_batch >= 20_000,
        ),
        _row(
            f"same {W4C_RUNS:,} runs one after another (`graph.run`), completions/s",
            f"{r_seq:,.0f}",
            f"{r_raw:,.0f}",
            _ratio(r_seq, r_raw),
        ),
        _row("100 in flight / one after another", f"{r_map / r_seq:.2f}x", "-", "-"),
        _row(
            f"wall time for {W4C_RUNS:,} runs, ms",
            f"{_median(wall['map']) * 1e3:.0f}",
            f"{_median(wall['raw']) * 1e3:.0f}",
            _ratio(_median(wall["map"]), _median(wall["raw"])),
        ),
        _row(
            "CPU time (all threads) / wall time",
            f"{c_map:.2f} (map), {c_batch:.2f} (map, batch), {c_seq:.2f} (one by one)",
            f"{c_raw:.2f}",
            "-",
        ),
        _row(
            "voluntary context switches per node",
            f"{s_map:.2f} (map), {s_batch:.2f} (map, batch), {s_seq:.2f} (one by one)",
            f"{s_raw:.2f}",
            "-",
        ),
        _row("bytes stored per run (file growth, WAL checkpointed)", f"{_median(size):,.0f}", "-", "-"),
    ]
    notes = [
        f"`graph.map(range({W4C_RUNS}), concurrency={W4C_IN_FLIGHT}, context=ff.Sqlite(path))`, a fresh context "
        f"and file per repetition (temp dir on {fs}); {completions:,} durable node completions per repetition; "
        f"median of {reps} (repetitions ranged {rates('map')} completions/s). Every row but the group commit one "
        'is the default `durability="commit"`.',
        "Baseline: the W4 baseline's loop (plain `sqlite3`, one connection, WAL, `synchronous=NORMAL`, one INSERT + "
        f'COMMIT per node) over the same {W4C_RUNS:,} inputs, rows/s; ranged {rates("raw")}. "One after another": '
        f"the same inputs through `graph.run` on a fresh `Sqlite` context, ranged {rates('seq')}.",
        *_w4c_limits(r_map, r_seq, c_map, s_map, s_seq, profile),
        f'Group commit row: the same `graph.map` on `ff.Sqlite(path, durability="batch", '
        f"batch_window={BATCH_WINDOW})`, a fresh context and file per repetition, interleaved with the others "
        f"(ranged {rates('batch')} completions/s; {r_batch / r_map:.2f}x the default durability; CPU / wall "
        f"{c_batch:.2f}, {s_batch:.2f} context switches per node). What it trades: steps are written together at "
        f"most {BATCH_WINDOW * 1e3:g} ms after they happen, whatever run they belong to, and a run's at once when "
        "it settles (finishes, fails or waits for a person), so every output `graph.map` returns is durable "
        "(checked: the file, read from another process while the context is still open, holds every run "
        f"completed); a process crash loses at most the last window ({BATCH_WINDOW * 1e3:g} ms) of steps, whose "
        "nodes run again when their runs are recovered (their effects repeat, as an interrupted attempt's do). "
        "Creating a run is still a transaction of its own. The row is not comparable 1:1 with the baseline, which "
        "commits every node; the honest comparison is plain `sqlite3` committing once per run (10 INSERTs, then "
        f"one COMMIT) over the same inputs: {r_raw_run:,.0f} rows/s (ranged {rates('raw_run')}), against which "
        f"group commit is {_ratio(r_batch, r_raw_run)}.",
        *_profile_note("`graph.map` on `Sqlite`", profile),
    ]

    # Redis and NATS, each in a process of its own (SUB_TIMEOUT).
    servers: Dict[str, Optional[Dict[str, Any]]] = {}
    failed = False
    for kind in ("redis", "nats"):
        res, err = _sub_child(f"W4c:{kind}")
        servers[kind] = res
        failed |= res is None
        server_rows, server_notes = _w4c_server_rows(kind, res, err)
        rows += server_rows
        notes += server_notes
        if res is not None:
            notes += _w4c_server_limits(kind, res)
    return {
        "rows": rows,
        "notes": notes,
        "failed": failed,
        "raw": {
            "wall_s": wall,
            "cpu_over_wall": cpu,
            "switches": csw,
            "bytes": size,
            "profile": profile,
            "servers": servers,
        },
    }


def _w4c_server_limits(kind: str, res: Dict[str, Any]) -> List[str]:
    """W4c's "what limits it" note for Redis or NATS, from the figures."""
    completions = W4C_RUNS * CHAIN_LEN
    wall, cpu, srv, csw = res["wall"], res["cpu_us"], res["server_cpu_us"], res["switches"]
    r_commit = completions / _median(wall["commit"])
    r_batch = completions / _median(wall["batch"])
    c_commit, s_commit = _median(cpu["commit"]), _median(srv["commit"])
    c_batch, s_batch = _median(cpu["batch"]), _median(srv["batch"])
    cpus = os.cpu_count() or 1
    busy = (c_commit + s_commit) * r_commit / 1e6
    if kind == "redis":
        text = (
            "What limits Redis: each node's step is one Lua script on the server (`EVALSHA`: check the journal's "
            "length, append, update the run's hash and its holds), one round trip from the thread that ran the "
            "body, where the baseline sends one RPUSH. "
        )
    else:
        text = (
            "What limits NATS: each node's step is several JetStream round trips, one after another (look up "
            "the next journal key, `create` the step, compare-and-set the hold, the tasks and the run record: "
            "see crates/ferroflow/src/store/nats/), each acknowledged by the server after it is written to its "
            "file store, where the baseline publishes one message and waits for one acknowledgement. "
        )
    if res["server_found"]:
        text += (
            f"CPU per node: {c_commit:.0f} µs in this process and {s_commit:.0f} µs in the server "
            f"(`{SERVER_PROCESS[kind]}`), so the two keep {busy:.2f} of the {cpus} CPUs busy at "
            f"{r_commit:,.0f} completions/s (the whole machine, other processes included: "
            f"{_median(res['machine_busy']['commit']):.2f}); {_median(csw['commit']):.1f} context switches per "
            "node (threads handing each reply on)."
        )
        if s_commit > 0:
            text += f" The server alone caps the rate near {1e6 / s_commit:,.0f} completions/s per CPU it uses."
    if r_batch < r_commit:
        text += (
            f' `durability="batch"` is slower here than the default ({r_batch / r_commit:.2f}x), with more CPU '
            f"per node in this process ({c_batch:.0f} µs against {c_commit:.0f}) and in the server ({s_batch:.0f} "
            f"µs against {s_commit:.0f}): group commit costs more than it saves on this store (an engine issue "
            "to look into, not a property of NATS)."
        )
    else:
        text += (
            f' Group commit (`durability="batch"`) reaches {r_batch / r_commit:.2f}x the default, with '
            f"{c_batch:.0f} µs in this process and {s_batch:.0f} µs in the server per node."
        )
    if kind == "redis":
        text += (
            " The server here runs without persistence (no AOF, no snapshots, as configured): these rows "
            "measure round trips and scripts, not disk, and the runs are as durable as the server's memory."
        )
    return [text]


def _w4c_limits(
    r_map: float, r_seq: float, c_map: float, s_map: float, s_seq: float, profile: Optional[Dict[str, Any]]
) -> List[str]:
    """W4c's "what limits it" note, from the figures and (full mode) the profile."""
    text = (
        "What limits it: every durable write of every run goes through the store's one SQLite connection, "
        "behind one mutex, one transaction per node (see W4), so the writes never overlap and one writer's rate "
        f"is the ceiling; {W4C_IN_FLIGHT} in flight reach {r_map / r_seq:.2f}x the rate of one run at a time. "
        "The node bodies run on the engine's blocking threads and each completion writes from the thread that "
        "ran the body, so those threads queue on the connection's mutex, and each hand-off is a futex wake-up "
        f"and a context switch ({s_map:.2f} per node against {s_seq:.2f} one at a time); CPU / wall is "
        f"{c_map:.2f} on {os.cpu_count()} CPUs: the rest of the time goes to waiting for those hand-offs."
    )
    futex, contended, gil = _probe(profile, "do_futex"), _probe(profile, "lock_contended"), _probe(profile, "take_gil")
    if futex is not None and contended is not None:
        text += (
            f" In the profile, futex waits and wake-ups are on the stack in {futex:.0f} % of the samples, "
            f"contended Rust mutexes in {contended:.0f} %, taking the GIL in {gil or 0.0:.0f} %, and the "
            "kernel's context-switch symbols lead the self time."
        )
    return [text]


def w4c_profile(quick: bool) -> Dict[str, Any]:
    """W4c's `graph.map` part alone, for `perf` (see _perf_profile)."""
    ff = _import_ferroflow()
    g = _chain_graph(ff, _chain_functions())
    inputs = list(range(W4C_RUNS))
    root = tempfile.mkdtemp(prefix="ffbench-w4cp-")
    try:
        ctx = ff.Sqlite(os.path.join(root, "warm.db"))
        g.map(inputs[:200], context=ctx, concurrency=W4C_IN_FLIGHT, timeout=60.0)
        for k in range(2):
            ctx = ff.Sqlite(os.path.join(root, f"w4c{k}.db"))
            _perf_control("enable")
            out = g.map(inputs, context=ctx, concurrency=W4C_IN_FLIGHT, timeout=60.0)
            _perf_control("disable")
            if out != inputs:
                raise AssertionError("W4c profile: graph.map returned wrong outputs")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {}


# -- servers: Redis and NATS (W4c, B1) -------------------------------------------------------


def _namespace(tag: str) -> str:
    """A fresh namespace (Redis key prefix, NATS bucket names) for one measurement."""
    return f"ffbench_{tag}_{uuid.uuid4().hex[:10]}"


def _server_context(ff: Any, kind: str, namespace: str, **options: Any) -> Any:
    if kind == "redis":
        return ff.Redis(REDIS_URL, namespace=namespace, **options)
    if kind == "nats":
        return ff.Nats(NATS_URL, namespace=namespace, **options)
    raise ValueError(f"not a server context: {kind}")


def _pids_named(name: str) -> List[int]:
    """The processes whose command name is ``name`` (the servers, for their CPU time)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pids: Sequence[int]) -> float:
    """CPU time (user + system, every thread) of the processes ``pids`` so far; a process
    that is gone counts 0."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return total


def _machine_cpu_s() -> float:
    """CPU time every process on the machine has used so far (all CPUs, /proc/stat): the
    difference over a measurement, divided by its wall time, is how many CPUs were busy."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


class _RedisBaseline:
    """W4c's Redis baseline: redis-py over one connection, and for each node of the chain:
    call it, RPUSH its output as JSON onto the run's list (one round trip per node)."""

    what = "redis-py RPUSH per node"

    def __init__(self, funcs: Sequence[Callable[[Any], Any]]) -> None:
        import redis  # type: ignore[import-not-found, unused-ignore]

        self.funcs = list(funcs)
        self.client = redis.Redis.from_url(REDIS_URL, socket_timeout=10.0, socket_connect_timeout=10.0)
        self.client.ping()
        self.prefix = ""

    def prepare(self) -> None:
        self.prefix = _namespace("raw")

    def run(self, inputs: Sequence[int]) -> List[Any]:
        rpush, dumps, funcs, prefix = self.client.rpush, json.dumps, self.funcs, self.prefix
        out = []
        for i in inputs:
            key, x = f"{prefix}:{i}", i
            for f in funcs:
                x = f(x)
                rpush(key, dumps(x))
            out.append(x)
        return out

    def cleanup(self, inputs: Sequence[int]) -> None:
        keys = [f"{self.prefix}:{i}" for i in inputs]
        for k in range(0, len(keys), 500):
            self.client.delete(*keys[k : k + 500])

    def close(self) -> None:
        self.client.close()


class _NatsBaseline:
    """W4c's NATS baseline: nats-py over one connection, a JetStream stream of its own (file
    storage, one replica, as ferroflow's buckets), and for each node of the chain: call it,
    publish its output as JSON and wait for the stream's acknowledgement."""

    what = "nats-py JetStream publish + ack per node"

    def __init__(self, funcs: Sequence[Callable[[Any], Any]]) -> None:
        import nats  # type: ignore[import-not-found, unused-ignore]

        self.funcs = list(funcs)
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncio.wait_for(nats.connect(NATS_URL), 10.0))
        self.js = self.conn.jetstream(timeout=10.0)
        self.stream = ""

    def prepare(self) -> None:
        from nats.js.api import StorageType, StreamConfig  # type: ignore[import-not-found, unused-ignore]

        self.stream = _namespace("raw")
        config = StreamConfig(name=self.stream, subjects=[f"{self.stream}.>"], storage=StorageType.FILE, num_replicas=1)
        self.loop.run_until_complete(self.js.add_stream(config))

    def run(self, inputs: Sequence[int]) -> List[Any]:
        async def publish_all() -> List[Any]:
            publish, dumps, funcs, stream = self.js.publish, json.dumps, self.funcs, self.stream
            out = []
            for i in inputs:
                subject, x = f"{stream}.{i}", i
                for f in funcs:
                    x = f(x)
                    await publish(subject, dumps(x).encode())
                out.append(x)
            return out

        return self.loop.run_until_complete(publish_all())

    def cleanup(self, inputs: Sequence[int]) -> None:
        self.loop.run_until_complete(self.js.delete_stream(self.stream))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.conn.close(), 10.0))
        finally:
            self.loop.close()


def w4c_server(kind: str, quick: bool) -> Dict[str, Any]:
    """W4c on ``kind`` ("redis" or "nats"), in a process of its own: `graph.map` of 2,000
    runs, 100 in flight, in both durabilities, each on a fresh namespace, interleaved with
    the plain-client baseline. Returns the raw figures; w4c builds the rows."""
    ff = _import_ferroflow()
    funcs = _chain_functions()
    g = _chain_graph(ff, funcs)
    reps = _reps(f"W4c.{kind}", quick)
    inputs = list(range(W4C_RUNS))
    completions = W4C_RUNS * CHAIN_LEN
    perf = time.perf_counter
    server = _pids_named(SERVER_PROCESS[kind])
    kinds = ("commit", "batch", "raw")
    wall: Dict[str, List[float]] = {k: [] for k in kinds}
    cpu: Dict[str, List[float]] = {k: [] for k in kinds}  # this process, CPU µs per node
    server_cpu: Dict[str, List[float]] = {k: [] for k in kinds}  # the server, CPU µs per node
    csw: Dict[str, List[float]] = {k: [] for k in kinds}  # per node
    machine: Dict[str, List[float]] = {k: [] for k in kinds}  # CPUs busy, the whole machine

    def timed(which: str, body: Callable[[], Any]) -> Any:
        _settle()
        c0, s0, v0, m0 = _cpu_s(), _proc_cpu_s(server), _switches(), _machine_cpu_s()
        t0 = perf()
        result = body()
        dt = perf() - t0
        machine[which].append((_machine_cpu_s() - m0) / dt)
        wall[which].append(dt)
        cpu[which].append((_cpu_s() - c0) * 1e6 / completions)
        server_cpu[which].append((_proc_cpu_s(server) - s0) * 1e6 / completions)
        csw[which].append((_switches() - v0) / completions)
        return result

    def engine(durability: str, count: Optional[int] = None) -> None:
        """One `graph.map` on a fresh namespace (timed unless ``count``: a warm-up)."""
        ctx = _server_context(ff, kind, _namespace("w4c"), durability=durability)
        try:
            some = inputs if count is None else inputs[:count]

            def body() -> Any:
                return g.map(some, context=ctx, concurrency=W4C_IN_FLIGHT, timeout=SERVER_MAP_TIMEOUT)

            if (body() if count is not None else timed(durability, body)) != some:
                raise AssertionError(f"W4c {kind} ({durability}): graph.map returned wrong outputs")
        finally:
            ctx.delete_namespace()

    baseline: Any = None
    baseline_error = None
    try:
        baseline = (_RedisBaseline if kind == "redis" else _NatsBaseline)(funcs)
    except ImportError as e:
        baseline_error = f"{'redis-py' if kind == 'redis' else 'nats-py'} is not installed ({e})"

    def plain(count: Optional[int] = None) -> None:
        some = inputs if count is None else inputs[:count]
        baseline.prepare()
        try:
            if (baseline.run(some) if count is not None else timed("raw", lambda: baseline.run(some))) != some:
                raise AssertionError(f"W4c {kind}: baseline broke")
        finally:
            baseline.cleanup(some)

    try:
        engine("commit", 200)  # warm-up: the engine's threads, the connections, the servers' caches
        engine("batch", 200)
        if baseline is not None:
            plain(200)
        for _ in range(reps):
            engine("commit")
            engine("batch")
            if baseline is not None:
                plain()
    finally:
        if baseline is not None:
            baseline.close()
    return {
        "kind": kind,
        "reps": reps,
        "wall": wall,
        "cpu_us": cpu,
        "server_cpu_us": server_cpu,
        "switches": csw,
        "machine_busy": machine,
        "server_found": bool(server),
        "baseline_error": baseline_error,
        "baseline_what": baseline.what if baseline is not None else None,
    }


def _sub_child(which: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """Runs ``--child which`` (a part of W4c or B1) in a process of its own, within its
    SUB_TIMEOUT; returns (result, None), or (None, the error) when it failed."""
    timeout = SUB_TIMEOUT[which][1 if _QUICK else 0]
    try:
        return _child(["--child", which], timeout), None
    except Exception as e:  # noqa: BLE001 - reported in the table, the other parts still run
        return None, str(e)[-2000:]


def _w4c_server_rows(kind: str, res: Optional[Dict[str, Any]], err: Optional[str]) -> Tuple[List[List[str]], List[str]]:
    """W4c's rows and notes for ``kind`` ("redis", "nats") from w4c_server's result."""
    label = {"redis": "Redis", "nats": "NATS"}[kind]
    target = "≥ 10,000"
    if res is None:
        row = _row(f"durable node completions/s, `graph.map`, {label}", "not measured", "-", "-", target, False)
        return [row], [f"{label}: not measured: the part failed:\n\n```\n{err}\n```"]
    completions = W4C_RUNS * CHAIN_LEN
    wall, cpu, srv, csw = res["wall"], res["cpu_us"], res["server_cpu_us"], res["switches"]

    def rate(which: str) -> float:
        return completions / _median(wall[which])

    def rates(which: str) -> str:
        return _spread([completions / t for t in wall[which]], fmt="{:,.0f}")

    r_commit, r_batch = rate("commit"), rate("batch")
    have_raw = bool(wall["raw"])
    r_raw = rate("raw") if have_raw else 0.0
    raw_text = f"{r_raw:,.0f} ({res['baseline_what']}, rows/s)" if have_raw else "not measured"
    rows = [
        _row(
            f"durable node completions/s, `graph.map`, {W4C_IN_FLIGHT} in flight, {label}, "
            'default `durability="commit"`',
            f"{r_commit:,.0f}",
            raw_text,
            _ratio(r_commit, r_raw) if have_raw else "-",
            target,
            r_commit >= 10_000,
        ),
        _row(
            f'same, {label}, `durability="batch"` (group commit)',
            f"{r_batch:,.0f}",
            f"{r_raw:,.0f} (same baseline)" if have_raw else "not measured",
            _ratio(r_batch, r_raw) if have_raw else "-",
            target,
            r_batch >= 10_000,
        ),
    ]
    if res["server_found"]:

        def per(which: str) -> str:
            return f"{_median(cpu[which]):.0f} + {_median(srv[which]):.0f}"

        rows.append(
            _row(
                f"{label}: CPU µs per node, this process + the server (`{SERVER_PROCESS[kind]}`)",
                f"{per('commit')} (commit), {per('batch')} (batch)",
                per("raw") if have_raw else "-",
                _ratio(_median(cpu["commit"]) + _median(srv["commit"]), _median(cpu["raw"]) + _median(srv["raw"]))
                if have_raw
                else "-",
            )
        )
    rows.append(
        _row(
            f"{label}: voluntary context switches per node",
            f"{_median(csw['commit']):.2f} (commit), {_median(csw['batch']):.2f} (batch)",
            f"{_median(csw['raw']):.2f}" if have_raw else "-",
            "-",
        )
    )
    url = REDIS_URL if kind == "redis" else NATS_URL
    cls = "Redis" if kind == "redis" else "Nats"
    notes = [
        f"{label} rows: `graph.map(range({W4C_RUNS}), concurrency={W4C_IN_FLIGHT}, context=ff.{cls}"
        f'({url!r}, namespace=<fresh>))` (and the same with `durability="batch"`), a fresh namespace per '
        f"repetition, deleted afterwards, in a process of its own; median of {res['reps']} (ranged {rates('commit')} "
        f"completions/s; batch {rates('batch')})."
        + (
            f" Baseline: {res['baseline_what']}, one connection, over the same {W4C_RUNS:,} inputs, interleaved; "
            f"ranged {rates('raw')} rows/s."
            if have_raw
            else f" Baseline not measured: {res['baseline_error']}."
        )
        + (
            " CPU time of the server is read from `/proc` for the whole server process, so it also counts any "
            "other client's load at the time."
            if res["server_found"]
            else f" The server's process (`{SERVER_PROCESS[kind]}`) was not found here: no server CPU row."
        )
    ]
    return rows, notes


# -- B1: graph.map through `ferroflow worker` processes ----------------------------------------

# The module the workers import: the same chain as here (built by this file's _chain_graph),
# so that the graph's name and version match the submitter's.
_B1_APP_SOURCE = """
import importlib.util

import ferroflow as ff

_spec = importlib.util.spec_from_file_location("ffbench_run", {run_py!r})
_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_run)
chain = _run._chain_graph(ff, _run._chain_functions())
"""

# Starts `ferroflow worker` so that it dies with the process that started it (SIGTERM, the
# worker's graceful stop, when its parent exits, even by SIGKILL): nothing outlives the script.
_B1_LAUNCH = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
from ferroflow.cli import main
sys.exit(main(sys.argv[2:]))
"""

# Probes of the worker's profile (B1, full mode): matched as substrings of the symbols.
_PERF_PROBES_WORKER = (
    ("_PyEval_EvalFrameDefault", "Python code (the node bodies and what calls them, `_PyEval_EvalFrameDefault`)"),
    ("take_gil", "taking the GIL (`take_gil`)"),
    ("tcp_sendmsg", "sending to the server (`tcp_sendmsg`)"),
    ("tcp_recvmsg", "reading from it (`tcp_recvmsg`)"),
    ("sqlite3_step", "SQLite statements (`sqlite3_step`)"),
    ("unixShmLock", "WAL-index locks (`unixShmLock`, fcntl)"),
    ("serde_json", "JSON (`serde_json`)"),
    ("lock_contended", "contended Rust mutexes (`lock_contended`)"),
    ("do_futex", "futex waits and wake-ups (`do_futex`)"),
    ("__schedule", "switching threads (`__schedule`)"),
)

# System calls counted in the workers during B1's profiled run (full mode).
_B1_SYSCALLS = ("clock_nanosleep", "futex", "fcntl", "epoll_wait", "write", "writev", "recvfrom", "read")


class _Worker:
    """One `ferroflow worker` process, its output going to a log file."""

    def __init__(self, root: str, spec: str, log: str) -> None:
        self.log = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        for name in ("FFBENCH_PERF_CTL", "FFBENCH_PERF_ACK", "FFBENCH_DEADLINE"):
            env.pop(name, None)
        cmd = [sys.executable, "-c", _B1_LAUNCH, str(os.getpid()), "worker", f"{B1_APP}:chain"]
        cmd += ["--context", spec, "--concurrency", str(B1_WORKER_CONCURRENCY), "--grace", "5"]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def wait_ready(self, version: str, limit: float) -> None:
        """Waits (at most ``limit`` seconds) for the worker's "working on" line, and checks
        that it has the submitter's version of the graph."""
        deadline = time.monotonic() + limit
        while True:
            text = self.output()
            if "working on" in text:
                if version not in text:
                    raise AssertionError(f"B1: the worker has another version of the graph than {version}: {text}")
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"B1: a worker exited with {self.proc.returncode} before starting:\n{text}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"B1: a worker did not start within {limit:.0f} s:\n{text}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL if it is still there after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10.0)


def _perf_attach(pids: Sequence[int], args: List[str]) -> Optional[subprocess.Popen[bytes]]:
    """Starts `perf ARGS -p PIDS` (a recording or a count of the running workers); None
    without perf. It ends by itself when they exit, or with SIGINT (_perf_detach)."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    cmd = [perf, *args, "-p", ",".join(str(p) for p in pids)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # perf attaches to the processes' threads
    return proc


def _perf_detach(proc: Optional[subprocess.Popen[bytes]]) -> str:
    """Stops a perf started by _perf_attach (SIGINT: it writes its output and exits);
    returns its error output, or a description of why it failed."""
    if proc is None:
        return "perf is not installed"
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10.0)
        return "perf did not stop within 60 s"
    if proc.returncode not in (0, -signal.SIGINT):
        return f"perf exited with {proc.returncode}: {err.decode(errors='replace').strip()[-400:]}"
    return ""


def _perf_counts(path: str) -> Dict[str, float]:
    """The counts of `perf stat -x, -o PATH`, by event name."""
    counts: Dict[str, float] = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) >= 3 and not line.startswith("#"):
                try:
                    counts[parts[2].split(":")[-1]] = float(parts[0])
                except ValueError:
                    pass
    return counts


def _nats_scan_ms(namespace: str, run_ids: Sequence[str]) -> Dict[str, Any]:
    """What loading a run costs the NATS store on the server: the median time of the scan
    ferroflow's `load` makes (an ordered consumer delivering the last message per key of
    `{run}.>` in the namespace's journal bucket), over ``run_ids``, and the bucket's size,
    with nats-py. Returns {} without nats-py."""
    try:
        import nats  # type: ignore[import-not-found, unused-ignore]
        from nats.js.api import DeliverPolicy  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return {}

    async def measure() -> Dict[str, Any]:
        conn = await asyncio.wait_for(nats.connect(NATS_URL), 10.0)
        try:
            js = conn.jetstream(timeout=10.0)
            bucket = f"ff_{namespace}_journal"
            info = await js.stream_info(f"KV_{bucket}")
            times = []
            for run_id in run_ids:
                t0 = time.perf_counter()
                sub = await js.subscribe(
                    f"$KV.{bucket}.{run_id}.>",
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                )
                try:
                    while (await sub.next_msg(timeout=10.0)).metadata.num_pending > 0:
                        pass
                finally:
                    await sub.unsubscribe()
                times.append(time.perf_counter() - t0)
            return {"ms": _median(times) * 1e3, "messages": float(info.state.messages)}
        finally:
            await asyncio.wait_for(conn.close(), 10.0)

    try:
        return asyncio.run(measure())
    except Exception as e:  # noqa: BLE001 - a diagnostic: its absence is reported, the figures stand
        return {"error": str(e)[-300:]}


def _b1_once(
    ff: Any,
    g: Any,
    kind: str,
    root: str,
    workers: int,
    runs: int,
    label: str,
    diagnose: bool = False,
) -> Dict[str, Any]:
    """One B1 measurement: a fresh store (namespace or file), ``workers`` worker processes
    started and warmed up, then `graph.map(range(runs))` from a context that does not
    execute, timed from submission to the last result. Returns the wall time, the CPU time
    per node of each process, the completion rate in the first and the last fifth of the
    batch, and (``diagnose``) a profile of one worker and system-call counts."""
    perf = time.perf_counter
    namespace = _namespace("b1")
    if kind == "sqlite":
        path = os.path.join(root, f"{label}.db")
        spec, sub = path, ff.Sqlite(path, execute=False)
    else:
        spec = f"{REDIS_URL if kind == 'redis' else NATS_URL}?namespace={namespace}"
        sub = _server_context(ff, kind, namespace, execute=False)
    server = _pids_named(SERVER_PROCESS[kind]) if kind in SERVER_PROCESS else []
    procs: List[_Worker] = []
    inputs = list(range(runs))
    out: Dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="ffbench-b1-perf-")
    recorder = counter = None
    try:
        for k in range(workers):
            procs.append(_Worker(root, spec, os.path.join(root, f"{label}-worker{k}.log")))
        for w in procs:
            w.wait_ready(g.version, 60.0)
        warm = list(range(-B1_WARM, 0))
        if g.map(warm, context=sub, concurrency=B1_IN_FLIGHT, batch=f"{label}-warm", timeout=120.0) != warm:
            raise AssertionError("B1: the warm-up batch returned wrong outputs")
        if kind == "nats" and diagnose:
            out["scan_before"] = _nats_scan_ms(namespace, [f"{label}-warm-{i}" for i in range(0, B1_WARM, 5)])
        pids = [w.proc.pid for w in procs]
        if diagnose:
            events = ",".join(f"syscalls:sys_enter_{name}" for name in _B1_SYSCALLS)
            counter = _perf_attach(pids, ["stat", "-x,", "-e", events, "-o", os.path.join(tmp, "counts")])
            data = os.path.join(tmp, "perf.data")
            recorder = _perf_attach(
                pids[:1], ["record", "--call-graph", "dwarf,16384", "-F", str(PERF_FREQ), "-o", data]
            )
        marks: List[Tuple[float, int]] = []

        def progress(done: int, total: int) -> None:
            marks.append((perf(), done))

        _settle()
        c_sub, c_workers, c_server = _cpu_s(), [_proc_cpu_s([p]) for p in pids], _proc_cpu_s(server)
        c_machine = _machine_cpu_s()
        t0 = perf()
        try:
            result = g.map(
                inputs,
                context=sub,
                concurrency=B1_IN_FLIGHT,
                batch=label,
                timeout=SERVER_MAP_TIMEOUT,
                progress=progress,
            )
        except Exception as e:
            logs = "\n".join(f"worker {k}: {w.output()[-1000:]}" for k, w in enumerate(procs))
            raise RuntimeError(f"B1 {kind}, {workers} worker(s): graph.map failed: {e}\n{logs}") from e
        dt = perf() - t0
        nodes = runs * CHAIN_LEN
        out.update(
            runs=runs,
            wall=dt,
            cpu_submitter=(_cpu_s() - c_sub) * 1e6 / nodes,
            cpu_workers=[(_proc_cpu_s([p]) - c0) * 1e6 / nodes for p, c0 in zip(pids, c_workers)],
            cpu_server=(_proc_cpu_s(server) - c_server) * 1e6 / nodes if server else None,
            machine_busy=(_machine_cpu_s() - c_machine) / dt,
        )
        if result != inputs:
            raise AssertionError(f"B1 {kind}: graph.map returned wrong outputs")
        # Completions/s over the first and the last fifth of the batch (progress comes
        # about every 100 ms): does the rate hold up as the store fills?
        fifth = runs // 5
        first = next((t for t, done in marks if done >= fifth), None)
        last = next((t for t, done in reversed(marks) if done <= runs - fifth), None)
        if first is not None and last is not None and first > t0 and t0 + dt > last:
            out["first_fifth"] = fifth * CHAIN_LEN / (first - t0)
            out["last_fifth"] = fifth * CHAIN_LEN / (t0 + dt - last)
        if diagnose:
            err = _perf_detach(recorder)
            profile: Dict[str, Any] = {"error": err} if err else {}
            if not err:
                profile = _perf_summary(shutil.which("perf") or "perf", data, _PERF_PROBES_WORKER)
            out["profile"] = profile
            err = _perf_detach(counter)
            out["syscalls"] = {"error": err} if err else _perf_counts(os.path.join(tmp, "counts"))
            if kind == "nats":
                step = max(1, runs // 10)
                out["scan_after"] = _nats_scan_ms(namespace, [f"{label}-{i}" for i in range(runs - 1, 0, -step)])
        out["workers_alive"] = all(w.proc.poll() is None for w in procs)
    finally:
        for w in procs:
            w.stop()
        for proc in (recorder, counter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10.0)
        shutil.rmtree(tmp, ignore_errors=True)
        if kind in SERVER_PROCESS:
            sub.delete_namespace()
        del sub
    return out


def b1_store(kind: str, quick: bool) -> Dict[str, Any]:
    """B1 on ``kind`` (redis, nats, sqlite), in a process of its own: per repetition, one
    measurement with 1 worker and one with 2, in alternating order; in full mode one more,
    profiled, with 2 workers (not part of the figures)."""
    ff = _import_ferroflow()
    g = _chain_graph(ff, _chain_functions())
    runs = B1_RUNS[kind][1 if quick else 0]
    reps = _reps("B1.nats" if kind == "nats" else "B1", quick)
    root = tempfile.mkdtemp(prefix="ffbench-b1-")
    samples: Dict[str, List[Dict[str, Any]]] = {"1": [], "2": []}
    diag = None
    try:
        with open(os.path.join(root, f"{B1_APP}.py"), "w") as f:
            f.write(_B1_APP_SOURCE.format(run_py=os.path.abspath(__file__)))
        for rep in range(reps):
            for n in (1, 2) if rep % 2 == 0 else (2, 1):
                samples[str(n)].append(_b1_once(ff, g, kind, root, n, runs, f"b1-r{rep}-w{n}"))
        if not quick:
            diag = _b1_once(ff, g, kind, root, 2, B1_DIAG_RUNS[kind], "b1-diag", diagnose=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"kind": kind, "runs": runs, "reps": reps, "samples": samples, "diag": diag}


def _b1_pool_chain(x: Any) -> Any:
    """B1's multiprocessing baseline: the chain, in a pool process (built there once)."""
    global _POOL_CHAIN
    if _POOL_CHAIN is None:
        _POOL_CHAIN = _plain_chain(_chain_functions())
    return _POOL_CHAIN(x)


_POOL_CHAIN: Optional[Callable[[Any], Any]] = None


def b1_baseline(quick: bool) -> Dict[str, Any]:
    """B1's baselines, in a process that never loads ferroflow: the ten functions called
    directly over the inputs, and a multiprocessing.Pool of 1 and 2 processes running the
    chain one input per task (as a worker claims one run at a time)."""
    runs = B1_RUNS["redis"][1 if quick else 0]
    inputs = list(range(runs))
    plain = _plain_chain(_chain_functions())
    perf = time.perf_counter
    direct: List[float] = []
    pool: Dict[str, List[float]] = {"1": [], "2": []}
    mp = multiprocessing.get_context("fork")
    pools = {n: mp.Pool(int(n)) for n in pool}
    try:
        for p in pools.values():
            p.map(_b1_pool_chain, inputs[:200], chunksize=1)  # starts the processes, builds the chain
        for _ in range(_reps("B1.baseline", quick)):
            _settle()
            t0 = perf()
            out = [plain(x) for x in inputs]
            direct.append(perf() - t0)
            if out != inputs:
                raise AssertionError("B1: baseline broke")
            for n, p in pools.items():
                _settle()
                t0 = perf()
                res = p.map_async(_b1_pool_chain, inputs, chunksize=1)
                out = res.get(timeout=60.0)
                pool[n].append(perf() - t0)
                if out != inputs:
                    raise AssertionError("B1: multiprocessing baseline broke")
    finally:
        for p in pools.values():
            p.terminate()
            p.join()
    return {"runs": runs, "direct": direct, "pool": pool}


def b1(quick: bool) -> Dict[str, Any]:
    parts: Dict[str, Tuple[Optional[Dict[str, Any]], Optional[str]]] = {}
    base_a = _sub_child("B1:baseline")
    for kind in ("redis", "nats", "sqlite"):
        parts[kind] = _sub_child(f"B1:{kind}")
    base_b = _sub_child("B1:baseline")
    bases = [b for b, _ in (base_a, base_b) if b is not None]
    if not bases:
        raise RuntimeError(f"B1: the baseline could not be measured: {base_a[1] or base_b[1]}")
    per_node = 1.0 / CHAIN_LEN
    direct = [t / b["runs"] * per_node for b in bases for t in b["direct"]]  # s per node
    pool = {n: [t / b["runs"] * per_node for b in bases for t in b["pool"][n]] for n in ("1", "2")}
    r_direct = 1.0 / _median(direct)
    r_pool = {n: 1.0 / _median(ts) for n, ts in pool.items()}
    pool_scale = r_pool["2"] / r_pool["1"]

    rows: List[List[str]] = []
    notes: List[str] = []
    fmt = "{:,.0f}"
    failed = False
    limits: List[str] = []
    diag_notes: List[str] = []
    for kind in ("redis", "nats", "sqlite"):
        res, err = parts[kind]
        if res is None:
            failed = True
            rows.append(_row(f"node completions/s, {kind}", "not measured", "-", "-", "≥ 10,000", False))
            notes.append(f"{kind}: not measured: the part failed:\n\n```\n{err}\n```")
            continue
        nodes = res["runs"] * CHAIN_LEN
        rate = {n: nodes / _median([s["wall"] for s in res["samples"][n]]) for n in ("1", "2")}
        for n in ("1", "2"):
            rows.append(
                _row(
                    f"node completions/s, {kind}, {n} worker{'s' if n == '2' else ''}",
                    f"{rate[n]:,.0f}",
                    f"{r_direct:,.0f} (direct calls)",
                    _ratio(rate[n], r_direct),
                    "≥ 10,000",
                    rate[n] >= 10_000,
                )
            )
        scale = rate["2"] / rate["1"]
        rows.append(
            _row(
                f"scale-up 1 → 2 workers, {kind}",
                f"{scale:.2f}x",
                f"{pool_scale:.2f}x (Pool(1) → Pool(2))",
                "-",
                "≥ 1.5x",
                scale >= 1.5,
            )
        )
        cpu_rows, limit = _b1_cpu(kind, res, rate)
        rows += cpu_rows
        limits.append(limit)
        diag_notes += _b1_diag_notes(kind, res.get("diag"))
        ranged = "; ".join(
            f"{n} worker{'s' if n == '2' else ''} {_spread([nodes / s['wall'] for s in res['samples'][n]], fmt=fmt)}"
            for n in ("1", "2")
        )
        fifths = [
            (x["first_fifth"], x["last_fifth"]) for n in ("1", "2") for x in res["samples"][n] if "first_fifth" in x
        ]
        notes.append(
            f"{kind}: {res['runs']:,} runs ({nodes:,} node completions) per measurement, median of {res['reps']} "
            f"per worker count; ranged {ranged} completions/s."
            + (
                f" Completions/s over the first fifth of a batch {_median([a for a, _ in fifths]):,.0f}, over the "
                f"last fifth {_median([b for _, b in fifths]):,.0f} (medians over the measurements)."
                if fifths
                else ""
            )
        )
    rows.append(
        _row(
            "baseline: multiprocessing.Pool, one input per task, completions/s",
            "-",
            f"{r_pool['1']:,.0f} (1 process), {r_pool['2']:,.0f} (2)",
            "-",
        )
    )
    store_args = {
        "redis": f"ff.Redis({REDIS_URL!r}, namespace=<fresh>, execute=False)",
        "nats": f"ff.Nats({NATS_URL!r}, namespace=<fresh>, execute=False)",
        "sqlite": "ff.Sqlite(<fresh file>, execute=False)",
    }
    head = [
        "Submitter: `graph.map(range(N), context=<ctx>, concurrency="
        f"{B1_IN_FLIGHT}, batch=<fresh>)` with `<ctx>` = "
        + ", ".join(f"`{v}`" for v in store_args.values())
        + ": it runs no node, queues each run for the workers and follows it from the store. Workers: "
        f"`ferroflow worker {B1_APP}:chain --context <same store> --concurrency {B1_WORKER_CONCURRENCY} "
        "--grace 5`, started before timing (each prints the graph's version, checked against the submitter's), "
        f"warmed up with a batch of {B1_WARM} runs, stopped with SIGTERM after. Timed: from the call of "
        "`graph.map` to its return with every output (checked). Each measurement on a fresh namespace (or file), "
        "deleted afterwards; each store in a process of its own, 1 and 2 workers alternating.",
        f"Baselines (in processes of their own, before and after the stores, {len(direct)} samples each): the same "
        f"ten functions called directly over {bases[0]['runs']:,} inputs ({_spread([1 / t for t in direct], fmt=fmt)} "
        "completions/s); and a `multiprocessing.Pool` of 1 and 2 processes (fork) mapping the chain over the same "
        "inputs, one input per task (`chunksize=1`, as a worker claims one run at a time): "
        f"{r_pool['1']:,.0f} and {r_pool['2']:,.0f} completions/s, a scale-up of {pool_scale:.2f}x on this machine's "
        f"{os.cpu_count()} CPUs.",
    ]
    return {
        "rows": rows,
        "notes": head + notes + limits + diag_notes,
        "failed": failed,
        "raw": {"parts": {k: v[0] for k, v in parts.items()}, "baselines": bases},
    }


def _b1_cpu(kind: str, res: Dict[str, Any], rate: Dict[str, float]) -> Tuple[List[List[str]], str]:
    """B1's CPU rows for ``kind`` and its "what limits it" note, from the CPU time of every
    process per node and the machine's busy CPUs (medians over the measurements)."""
    rows = []
    parts: Dict[str, Dict[str, float]] = {}
    cpus = os.cpu_count() or 1
    for n in ("1", "2"):
        ss = res["samples"][n]
        workers = _median([sum(s["cpu_workers"]) for s in ss])
        submitter = _median([s["cpu_submitter"] for s in ss])
        server = _median([s["cpu_server"] for s in ss]) if ss[0]["cpu_server"] is not None else 0.0
        total = workers + submitter + server
        machine = _median([s["machine_busy"] for s in ss])
        parts[n] = {"total": total, "ours": total * rate[n] / 1e6, "machine": machine}
        text = f"{workers:.0f} workers + {submitter:.0f} submitter"
        if kind in SERVER_PROCESS:
            text += f" + {server:.0f} server"
        rows.append(
            _row(
                f"{kind}, {n} worker{'s' if n == '2' else ''}: CPU µs per node (all processes); CPUs busy "
                "(these processes; the whole machine)",
                f"{text} = {total:.0f}; {parts[n]['ours']:.2f}; {machine:.2f} of {cpus}",
                "-",
                "-",
            )
        )
    one, two = parts["1"], parts["2"]
    server_share = _median([s["cpu_server"] or 0.0 for s in res["samples"]["1"]]) / one["total"]
    ceiling = cpus * 1e6 / two["total"]
    text = (
        f"What limits {kind}: every node costs {one['total']:.0f} µs of CPU across the processes with 1 worker "
        f"({two['total']:.0f} with 2), so this machine's {cpus} CPUs cap the rate near {ceiling:,.0f} "
        f"completions/s whatever the number of workers. These processes kept {one['ours']:.2f} CPUs busy with 1 "
        f"worker and {two['ours']:.2f} with 2; the whole machine (other processes included) {one['machine']:.2f} "
        f"and {two['machine']:.2f}. "
    )
    if two["machine"] >= 0.9 * cpus:
        text += (
            "With 2 workers the machine was CPU-bound: a second worker can only take CPU from the first, the "
            "submitter and the server (and anything else running)"
            + (
                ", and each node cost more CPU with two workers than with one"
                if two["total"] > 1.05 * one["total"]
                else ""
            )
            + ", so the scale-up cannot reach 1.5x on this machine."
        )
    else:
        text += (
            f"With 2 workers {cpus - two['machine']:.2f} CPUs stayed idle, so the rate is also bound by waiting "
            "(on the store, between processes), not by CPU alone."
        )
    if kind == "redis":
        text += (
            f" The server's share of the CPU per node is {server_share:.0%} (one Lua script per step, on one "
            "thread); the rest is the workers' engine and the submitter following its runs (see the worker's "
            "profile below: mostly futex wake-ups and thread switches, little Python and no GIL contention)."
        )
    elif kind == "nats":
        text += (
            f" The server takes {server_share:.0%} of the CPU per node, and more as the journal grows (see the "
            "scan below): the store, not the workers, is the bottleneck, and adding a worker adds load on it."
        )
    else:
        text += (
            " The workers and the submitter share one file: every step is a `BEGIN IMMEDIATE` transaction and "
            "SQLite lets one process write at a time (the others wait in its busy handler), so a second worker "
            "adds a writer to the same queue more than it adds throughput."
        )
    return rows, text


def _b1_diag_notes(kind: str, diag: Optional[Dict[str, Any]]) -> List[str]:
    """B1's notes from the profiled measurement of ``kind`` (full mode)."""
    if diag is None:
        return []
    runs = diag["runs"]
    nodes = runs * CHAIN_LEN
    notes = []
    sys_counts = diag.get("syscalls", {})
    if "error" in sys_counts:
        calls = f"system calls not counted ({sys_counts['error']})"
    else:
        calls = "system calls per node in the 2 workers: " + ", ".join(
            f"`{name}` {sys_counts.get(f'sys_enter_{name}', 0.0) / nodes:.2f}" for name in _B1_SYSCALLS
        )
    rates = ""
    if "first_fifth" in diag:
        rates = (
            f"; completions/s over the first fifth of the batch {diag['first_fifth']:,.0f}, over the last fifth "
            f"{diag['last_fifth']:,.0f}"
        )
    notes.append(
        f"{kind}, profiled run (full mode, not in the figures): {runs:,} runs through 2 workers, "
        f"{nodes / diag['wall']:,.0f} completions/s under the profiler{rates}; {calls}."
        + (
            " `clock_nanosleep` in a worker is SQLite's busy handler sleeping (1 ms and up) while another process "
            "holds the file's write lock; the engine itself never sleeps a thread."
            if kind == "sqlite"
            else ""
        )
    )
    if kind == "nats" and diag.get("scan_after"):
        before, after = diag.get("scan_before") or {}, diag["scan_after"]
        if "ms" in after and "ms" in before:
            notes.append(
                "nats: loading a run reads its steps with one scan of its keys in the journal bucket (an ordered "
                "consumer, last message per key of `<run>.>`, see `load` in crates/ferroflow/src/store/nats/); each "
                "worker does it for every run it claims. Timed with nats-py on the bucket of that run: "
                f"{before['ms']:.1f} ms per scan with {before['messages']:,.0f} messages in the bucket (after the "
                f"warm-up), {after['ms']:.1f} ms with {after['messages']:,.0f} (after the batch): on this server "
                "(NATS 2.9) the scan's cost grows with the whole bucket, not with the run, so the rate falls as "
                "the journal grows (10,000 runs would make a bucket of ~110,000 messages)."
            )
        elif "error" in after or "error" in before:
            notes.append(f"nats: the scan could not be timed: {after.get('error') or before.get('error')}.")
    notes += _profile_note(
        f"one `ferroflow worker` on {kind}", diag.get("profile"), "of that worker during the profiled batch"
    )
    return notes


# -- W3: the support bot over the mock LLM server --------------------------------------------

# The mock OpenAI server of W3, in a process of its own (it is Python: in the benchmark's
# process it would take the GIL from the code measured), answering with the support bot's
# deterministic model (`reply_to`). It dies with the process that started it
# (PR_SET_PDEATHSIG), prints its base URL as one JSON line, then answers commands on stdin,
# one JSON line each: "count" (HTTP requests that arrived, and chat completions answered
# with 200), "reset" (zeroes both); it stops at the end of its input.
_W3_SERVER = r"""
import ctypes, importlib.util, json, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[3]):
    sys.exit(0)
from ferroflow.testing import MockLLMServer

spec = importlib.util.spec_from_file_location("ffbench_support_bot", sys.argv[1])
bot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bot)


def reply(request):
    return bot.reply_to(request["messages"])


with MockLLMServer(reply=reply, latency=float(sys.argv[2])) as server:
    print(json.dumps({"url": server.base_url}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "count":
            answered = sum(1 for r in server.requests if r.path == "/v1/chat/completions" and r.status == 200)
            print(json.dumps({"requests": server.request_count, "answered": answered}), flush=True)
        elif command == "reset":
            server.reset()
            print(json.dumps({"reset": True}), flush=True)
"""


class _MockServer:
    """W3's mock OpenAI server process (see _W3_SERVER): started now, stopped by stop()."""

    def __init__(self, latency: float) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="ffbench-mock-", suffix=".log", delete=False)
        env = dict(os.environ)
        for name in ("FFBENCH_PERF_CTL", "FFBENCH_PERF_ACK", "FFBENCH_DEADLINE"):
            env.pop(name, None)
        cmd = [sys.executable, "-c", _W3_SERVER, SUPPORT_BOT, str(latency), str(os.getpid())]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log
        )
        self._buffer = b""
        try:
            self.url: str = self._answer(60.0)["url"]
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        try:
            with open(self.log.name, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def _answer(self, limit: float) -> Dict[str, Any]:
        """The server's next line (JSON), waiting at most ``limit`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + limit
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"W3: the mock server did not answer within {limit:.0f} s:\n{self.output()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.proc.poll()
                    raise RuntimeError(f"W3: the mock server exited ({code}):\n{self.output()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: Dict[str, Any] = json.loads(line)
        return answer

    def command(self, command: str, limit: float = 30.0) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self._answer(limit)

    def cpu_s(self) -> float:
        return _proc_cpu_s([self.proc.pid])

    def stop(self) -> None:
        """Ends its input (it stops serving and exits), then SIGTERM, then SIGKILL."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def _support_bot() -> Any:
    """examples/support_bot.py, loaded as a module (it builds its own graph on the offline model)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ffbench_support_bot", SUPPORT_BOT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_W3_CLASSIFY = "Classify the ticket as refund, order_status or other. Answer with the label."
_W3_ANSWER = "Write a short, friendly reply to the customer with these facts."


def _w3_tickets(n: int) -> List[Dict[str, str]]:
    return [{"customer": W3_TEXTS[i % len(W3_TEXTS)][0], "text": W3_TEXTS[i % len(W3_TEXTS)][1]} for i in range(n)]


def _w3_plain(bot: Any) -> Callable[[Any, Dict[str, str]], Any]:
    """W3's baseline for one ticket: the support bot's flow in plain Python with the `openai`
    client: the classify call (as the graph's `classify` node asks it), the branch, the tool
    function, the facts, and the answer call, streamed (as the graph's `answer` node streams)
    and consumed chunk by chunk. Returns the answer's text. The tools and the facts are the
    example's own functions (examples/support_bot.py), which its graph's nodes call too; the
    outputs are checked against the graph's, run on the offline model."""
    labels = bot.LABELS

    def facts(ticket: Dict[str, str], refunded: Optional[Dict[str, Any]], status: Optional[Dict[str, Any]]) -> str:
        if refunded is not None and refunded["eligible"] and refunded["amount"] > bot.REFUND_APPROVAL_LIMIT:
            raise AssertionError(f"W3: ticket {ticket!r} would wait for a person's approval")
        return str(bot.write_facts(ticket, refunded, None, status))

    async def ticket(client: Any, ticket: Dict[str, str]) -> str:
        reply = await client.chat.completions.create(
            model=W3_MODEL,
            messages=[{"role": "system", "content": _W3_CLASSIFY}, {"role": "user", "content": ticket["text"]}],
            temperature=0,
        )
        label = (reply.choices[0].message.content or "").strip().strip(".").lower()
        label = label if label in labels else "other"
        refunded = bot.look_up_refund(ticket) if label == "refund" else None
        status = bot.look_up_order(ticket) if label == "order_status" else None
        chunks = await client.chat.completions.create(
            model=W3_MODEL,
            messages=[
                {"role": "system", "content": _W3_ANSWER},
                {"role": "user", "content": facts(ticket, refunded, status)},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
        text: List[str] = []
        async for chunk in chunks:
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
        return "".join(text)

    return ticket


def _percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``."""
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) - 1e-9)
    return ordered[max(0, min(len(ordered), rank) - 1)]


def _thread_cpu_s(tid: Optional[int]) -> float:
    """CPU time (user + system) of thread ``tid`` of this process so far; 0 if unknown."""
    if tid is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _store_server_pids(kind: str) -> List[int]:
    """The Redis or NATS server process W3's contexts use: among the processes of that name,
    those whose command line names the URL's port, else all of them."""
    import urllib.parse

    pids = _pids_named(SERVER_PROCESS[kind])
    port = urllib.parse.urlparse(REDIS_URL if kind == "redis" else NATS_URL).port
    if port is None:
        return pids
    mine = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(rf"(?<!\d){port}(?!\d)", words):
            mine.append(pid)
    return mine or pids


def w3_context(kind: str, quick: bool) -> Dict[str, Any]:
    """W3 on context ``kind`` (memory, sqlite, redis, nats), in a process of its own: the
    support bot over 1,000 tickets, 100 in flight, through `graph.arun` (each ticket timed)
    and `graph.map`, each on a fresh context, interleaved with the plain-`openai` baseline,
    against one mock server process. Every measurement must make exactly 2 model requests per
    ticket (the server's count) and give every ticket the expected answer. Returns the raw
    figures; w3 builds the rows."""
    import openai

    ff = _import_ferroflow()
    bot = _support_bot()
    reps = _reps("W3", quick)
    perf = time.perf_counter
    tickets = _w3_tickets(W3_TICKETS)

    # The expected answer of each ticket text: the same graph on the offline model, which
    # is the function the mock server answers with.
    offline = bot.build(ff.OfflineProvider(lambda request: bot.reply_to(request.messages)), "offline").build()
    expected: Dict[str, str] = {}
    routes: Dict[str, int] = {}
    for customer, text in W3_TEXTS:
        result = offline.run({"customer": customer, "text": text}, context=ff.InMemory())
        if result.status.value != "completed":
            raise AssertionError(f"W3: the ticket {text!r} ends {result.status.value} on the offline model")
        expected[text] = result.output["text"]
        label = bot.reply_to([{"role": "system", "content": _W3_CLASSIFY}, {"role": "user", "content": text}])
        routes[label] = routes.get(label, 0) + sum(1 for t in tickets if t["text"] == text)
    plain_ticket = _w3_plain(bot)

    root = tempfile.mkdtemp(prefix="ffbench-w3-")
    store = _store_server_pids(kind) if kind in SERVER_PROCESS else []
    files = [0]

    def fresh_context() -> Tuple[Any, Callable[[int], None]]:
        """A fresh context, and what to do with it after `n` runs (check, delete)."""
        if kind == "memory":
            return ff.InMemory(), lambda n: None
        if kind == "sqlite":
            files[0] += 1
            path = os.path.join(root, f"w3-{files[0]}.db")

            def check(n: int) -> None:
                _check_store(path, n, "W3 sqlite")  # every run completed and durable

            return ff.Sqlite(path), check
        ctx = _server_context(ff, kind, _namespace("w3"))
        return ctx, lambda n: ctx.delete_namespace()

    loop = asyncio.new_event_loop()  # the caller's loop: `arun` and the baseline run on it
    server = _MockServer(W3_LATENCY)
    provider: Any = None
    client: Any = None
    # `arun` and `map` with the `openai`-client provider, `narun` and `nmap` with the native one.
    kinds = ("arun", "map", "narun", "nmap", "base")
    samples: Dict[str, List[Dict[str, float]]] = {k: [] for k in kinds}
    try:
        provider = ff.OpenAIProvider(base_url=server.url, api_key="ffbench", timeout=W3_CALL_TIMEOUT)
        graph = bot.build(provider, W3_MODEL).build()
        native = ff.NativeOpenAIProvider(base_url=server.url, api_key="ffbench", timeout=W3_CALL_TIMEOUT)
        native_graph = bot.build(native, W3_MODEL).build()

        async def make_client() -> Any:
            return openai.AsyncOpenAI(base_url=server.url, api_key="ffbench", timeout=W3_CALL_TIMEOUT)

        client = loop.run_until_complete(make_client())  # max_retries: 2, as the provider's

        async def gather(
            one: Callable[[Dict[str, str]], Any], inputs: List[Dict[str, str]]
        ) -> Tuple[List[str], List[float]]:
            """``one`` per input under a semaphore of W3_IN_FLIGHT; each timed from entering it."""
            slots = asyncio.Semaphore(W3_IN_FLIGHT)
            latency = [0.0] * len(inputs)

            async def timed(i: int, x: Dict[str, str]) -> str:
                async with slots:
                    t0 = perf()
                    out = await one(x)
                    latency[i] = perf() - t0
                    return str(out)

            outs = await asyncio.wait_for(asyncio.gather(*(timed(i, x) for i, x in enumerate(inputs))), W3_WAIT)
            return list(outs), latency

        def engine_arun(
            inputs: List[Dict[str, str]], graph: Any = graph
        ) -> Tuple[List[str], List[float], Callable[[int], None]]:
            ctx, after = fresh_context()

            async def one(x: Dict[str, str]) -> str:
                result = await graph.arun(x, context=ctx)
                if result.status.value != "completed":
                    raise AssertionError(f"W3: run {result.run_id} ended {result.status.value}")
                return str(result.output["text"])

            outs, latency = loop.run_until_complete(gather(one, inputs))
            return outs, latency, after

        def engine_map(
            inputs: List[Dict[str, str]], graph: Any = graph
        ) -> Tuple[List[str], List[float], Callable[[int], None]]:
            ctx, after = fresh_context()
            outs = graph.map(inputs, context=ctx, concurrency=W3_IN_FLIGHT, timeout=W3_WAIT)
            bad = [o for o in outs if not isinstance(o, dict)]
            if bad:
                raise AssertionError(f"W3: graph.map gave a run that did not complete: {bad[0]!r:.300}")
            return [str(o["text"]) for o in outs], [], after

        def baseline(inputs: List[Dict[str, str]]) -> Tuple[List[str], List[float], Callable[[int], None]]:
            async def one(x: Dict[str, str]) -> str:
                return str(await plain_ticket(client, x))

            outs, latency = loop.run_until_complete(gather(one, inputs))
            return outs, latency, lambda n: None

        paths: Dict[str, Callable[[List[Dict[str, str]]], Tuple[List[str], List[float], Callable[[int], None]]]] = {
            "arun": engine_arun,
            "map": engine_map,
            "narun": lambda inputs: engine_arun(inputs, native_graph),
            "nmap": lambda inputs: engine_map(inputs, native_graph),
            "base": baseline,
        }

        def measure(which: str, inputs: List[Dict[str, str]], timed: bool = True) -> None:
            n = len(inputs)
            server.command("reset")
            _settle()
            model_thread = next((t.native_id for t in threading.enumerate() if t.name == "ferroflow-asyncio"), None)
            c0, b0, s0 = _cpu_s(), _thread_cpu_s(model_thread), server.cpu_s()
            st0, m0 = _proc_cpu_s(store), _machine_cpu_s()
            t0 = perf()
            outs, latency, after = paths[which](inputs)
            wall = perf() - t0
            cpu, model_cpu, server_cpu = _cpu_s() - c0, _thread_cpu_s(model_thread) - b0, server.cpu_s() - s0
            store_cpu, machine = _proc_cpu_s(store) - st0, (_machine_cpu_s() - m0) / wall
            count = server.command("count")
            after(n)
            if count["requests"] != 2 * n or count["answered"] != 2 * n:
                raise AssertionError(
                    f"W3 {kind} {which}: {n} tickets made {count['requests']} HTTP requests to the mock server "
                    f"({count['answered']} chat completions answered with 200), not exactly {2 * n}"
                )
            wrong = [(x["text"], out) for x, out in zip(inputs, outs) if out != expected[x["text"]]]
            if len(outs) != n or wrong:
                raise AssertionError(f"W3 {kind} {which}: {len(wrong)} wrong answers, e.g. {wrong[:1]!r:.300}")
            if not timed:
                return
            sample = {
                "wall": wall,
                "cpu_ms": cpu * 1e3 / n,
                "model_thread_ms": model_cpu * 1e3 / n if which in ("arun", "map") else 0.0,
                "server_ms": server_cpu * 1e3 / n,
                "store_ms": store_cpu * 1e3 / n,
                "machine_busy": machine,
                "requests": count["requests"],
            }
            if latency:
                sample.update(p50=_percentile(latency, 0.5), p99=_percentile(latency, 0.99))
            samples[which].append(sample)

        # Warm-up: the engine's threads, the background loop and the provider's client, the
        # connections to the mock server and the store, the baseline's client.
        for which in kinds:
            measure(which, tickets[:W3_WARM], timed=False)
        for _ in range(reps):
            for which in kinds:
                measure(which, tickets)
    finally:
        try:
            if client is not None:
                loop.run_until_complete(asyncio.wait_for(client.close(), 10.0))
            if provider is not None:
                provider.close()
        finally:
            loop.close()
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
    return {
        "kind": kind,
        "reps": reps,
        "samples": samples,
        "routes": routes,
        "store_found": bool(store),
    }


def w3(quick: bool) -> Dict[str, Any]:
    parts = {kind: _sub_child(f"W3:{kind}") for kind in W3_CONTEXTS}
    rows: List[List[str]] = []
    notes: List[str] = []
    limits: List[str] = []
    failed = False
    n = W3_TICKETS
    target = "≥ 0.95x baseline"
    measured = 0
    routes: Dict[str, int] = {}
    base_cpu: List[float] = []  # the baseline's CPU ms per ticket, per context's process
    for kind in W3_CONTEXTS:
        res, err = parts[kind]
        if res is None:
            failed = True
            rows.append(_row(f"tickets/s, {kind}", "not measured", "-", "-", target, False))
            notes.append(f"{kind}: not measured: the part failed:\n\n```\n{err}\n```")
            continue
        routes = res["routes"]
        measured += sum(len(v) for v in res["samples"].values())
        kind_rows, note = _w3_rows(kind, res)
        rows += kind_rows
        notes.append(note)
        limits.append(_w3_limits(kind, res, not limits))
        base_cpu.append(_median([x["cpu_ms"] for x in res["samples"]["base"]]))
    rows.append(
        _row(
            "LLM requests per measurement (the mock server's count)",
            f"{2 * n:,} = 2 x {n:,} tickets, in every one of the {measured} measurements",
            f"{2 * n:,}",
            "-",
            "exactly 2 x tickets",
            measured > 0 and not failed,
        )
    )
    ctx_text = (
        f"`ff.InMemory()`, `ff.Sqlite(<fresh file>)`, `ff.Redis({REDIS_URL!r}, namespace=<fresh>)` and "
        f"`ff.Nats({NATS_URL!r}, namespace=<fresh>)`"
    )
    mix = ", ".join(f"{label} {count:,}" for label, count in sorted(routes.items()))
    head = [
        f"The support bot of `examples/support_bot.py` (`build(provider, model)`: classify (LLM) → route (branch) → "
        "refund / order_status (tool nodes; a refund also goes through the `needs_approval` branch) → facts → "
        f"answer (LLM, `stream=True`)) with `ff.OpenAIProvider(base_url=<mock>, timeout={W3_CALL_TIMEOUT:g})` (the "
        f"official `openai` client, `AsyncOpenAI`, max_retries 2) and model `{W3_MODEL}`, over {n:,} tickets, "
        f"{W3_IN_FLIGHT} in flight, on a fresh context per measurement: {ctx_text}, every Redis and NATS namespace "
        "deleted afterwards, every SQLite file read back from another process (every run completed).",
        f"`arun`: `asyncio.gather` of the {n:,} `await graph.arun(ticket, context=ctx)` under an "
        f"`asyncio.Semaphore({W3_IN_FLIGHT})`, each ticket timed from entering the semaphore to its result (p50, "
        f"p99: nearest rank over the {n:,}); the model calls themselves run on ferroflow's background loop "
        f"(`llm._on_provider_loop`). map: `graph.map(tickets, concurrency={W3_IN_FLIGHT}, context=ctx)`, whole "
        "batch only (no per-ticket times). Each context in a process of its own, the three paths interleaved in "
        f"each repetition after a warm-up of {W3_WARM} tickets each.",
        f"Tickets: {len(W3_TEXTS)} texts cycled ({mix}): refunds of a known order and of an unknown one, the "
        "status of an order on its way, of a delivered one and of an unknown one, and questions for neither. No "
        "refund is above the bot's approval limit (100; only order A200 costs more, and no ticket asks for its "
        "refund), so the human-approval branch is never taken and every run completes (checked). Every answer is "
        "checked against the graph's on the offline model (`reply_to`, the function the mock server answers with).",
        f"Mock server: `ferroflow.testing.MockLLMServer(reply=<support_bot.reply_to>, latency={W3_LATENCY:g})` in a "
        "process of its own (started by this benchmark with a small `-c` script, since `python -m "
        "ferroflow.testing` takes only a fixed `--reply` text), thread per connection, chat completions plain "
        "(classify) and streamed one word per event (answer). Its request counter is reset before each "
        "measurement and read after: every measurement made exactly 2 requests per ticket, all answered with 200 "
        "(asserted: no retry, no failure).",
        f"Baseline, in the same process and repetitions: plain Python with `openai.AsyncOpenAI` (same base URL, "
        f"timeout and retries), `asyncio.gather` under an `asyncio.Semaphore({W3_IN_FLIGHT})`, per ticket: the "
        "classify call (same messages, temperature 0), the branch, the tool function, the facts, and the answer "
        "call streamed (`stream_options={'include_usage': True}`, as the provider asks) and consumed chunk by "
        "chunk; one client for every measurement, as the provider keeps one. CPU: `getrusage` of this process "
        "(every thread), the model-call thread (`ferroflow-asyncio`) and the servers from `/proc`, per ticket.",
        f"Native provider: the same graph built with `ff.NativeOpenAIProvider(base_url=<mock>, "
        f"timeout={W3_CALL_TIMEOUT:g})` (ferroflow's Rust client, max_retries 2), through the same two paths "
        "(`arun` and map), interleaved with the others in each repetition, against the same baseline. Its model "
        "calls do not use the background loop: the Rust client runs on the engine's tokio threads, reports the "
        "streamed tokens and records each reply itself.",
    ]
    if len(base_cpu) > 1:
        notes.append(
            f"The baseline does the same work in every context; its CPU per ticket ranged {_spread(base_cpu)} ms "
            "across the processes: the noise floor of CPU figures on this machine."
        )
    return {
        "rows": rows,
        "notes": head + notes + limits,
        "failed": failed,
        "raw": {kind: res for kind, (res, _) in parts.items()},
    }


def _w3_rows(kind: str, res: Dict[str, Any]) -> Tuple[List[List[str]], str]:
    """W3's rows for context ``kind`` from w3_context's result, and the note on their ranges."""
    n = W3_TICKETS
    target = "≥ 0.95x baseline"
    ss = res["samples"]

    def med(which: str, key: str) -> float:
        return _median([s[key] for s in ss[which]])

    def rates(which: str) -> str:
        return _spread([n / s["wall"] for s in ss[which]], fmt="{:,.0f}")

    r_arun, r_map, r_base = (n / med(w, "wall") for w in ("arun", "map", "base"))
    r_narun, r_nmap = (n / med(w, "wall") for w in ("narun", "nmap"))
    base_text = f"{r_base:,.1f} (`AsyncOpenAI`, same flow)"
    rows = [
        _row(
            f"tickets/s, {kind}: `arun` under a semaphore of {W3_IN_FLIGHT}",
            f"{r_arun:,.1f}",
            base_text,
            _ratio(r_arun, r_base),
            target,
            r_arun >= 0.95 * r_base,
        ),
        _row(
            f"tickets/s, {kind}: `graph.map(concurrency={W3_IN_FLIGHT})`",
            f"{r_map:,.1f}",
            f"{r_base:,.1f} (same baseline)",
            _ratio(r_map, r_base),
            target,
            r_map >= 0.95 * r_base,
        ),
        _row(
            f"tickets/s, {kind}, native provider: `arun` under a semaphore of {W3_IN_FLIGHT}",
            f"{r_narun:,.1f}",
            f"{r_base:,.1f} (same baseline)",
            _ratio(r_narun, r_base),
            "≥ 2x baseline",
            r_narun >= 2 * r_base,
        ),
        _row(
            f"tickets/s, {kind}, native provider: `graph.map(concurrency={W3_IN_FLIGHT})`",
            f"{r_nmap:,.1f}",
            f"{r_base:,.1f} (same baseline)",
            _ratio(r_nmap, r_base),
            "≥ 2x baseline",
            r_nmap >= 2 * r_base,
        ),
        _row(
            f"latency per ticket p50 / p99, ms, {kind} (`arun`)",
            f"{med('arun', 'p50') * 1e3:,.0f} / {med('arun', 'p99') * 1e3:,.0f}",
            f"{med('base', 'p50') * 1e3:,.0f} / {med('base', 'p99') * 1e3:,.0f}",
            f"{_ratio(med('arun', 'p50'), med('base', 'p50'))} / {_ratio(med('arun', 'p99'), med('base', 'p99'))}",
        ),
        _row(
            f"latency per ticket p50 / p99, ms, {kind}, native provider (`arun`)",
            f"{med('narun', 'p50') * 1e3:,.0f} / {med('narun', 'p99') * 1e3:,.0f}",
            f"{med('base', 'p50') * 1e3:,.0f} / {med('base', 'p99') * 1e3:,.0f}",
            f"{_ratio(med('narun', 'p50'), med('base', 'p50'))} / {_ratio(med('narun', 'p99'), med('base', 'p99'))}",
        ),
    ]
    store = kind in SERVER_PROCESS and res["store_found"]
    what = "this process (its model-call thread) + mock server" + (f" + `{SERVER_PROCESS[kind]}`" if store else "")

    def cpu_text(which: str) -> str:
        text = f"{med(which, 'cpu_ms'):.2f}"
        if which in ("arun", "map"):
            text += f" ({med(which, 'model_thread_ms'):.2f})"
        text += f" + {med(which, 'server_ms'):.2f}"
        if store and which != "base":
            text += f" + {med(which, 'store_ms'):.2f}"
        return text

    rows.append(
        _row(
            f"CPU ms per ticket, {kind}: {what}",
            f"{cpu_text('arun')} (`arun`); {cpu_text('map')} (map)",
            cpu_text("base"),
            _ratio(med("arun", "cpu_ms"), med("base", "cpu_ms")),
        )
    )
    rows.append(
        _row(
            f"CPU ms per ticket, {kind}, native provider: this process + mock server"
            + (f" + `{SERVER_PROCESS[kind]}`" if store else ""),
            f"{cpu_text('narun')} (`arun`); {cpu_text('nmap')} (map)",
            cpu_text("base"),
            _ratio(med("narun", "cpu_ms"), med("base", "cpu_ms")),
        )
    )
    note = (
        f"{kind}: median of {res['reps']} per path; tickets/s ranged {rates('arun')} (`arun`), {rates('map')} "
        f"(map), {rates('narun')} (native `arun`), {rates('nmap')} (native map), {rates('base')} (baseline); "
        f"the whole machine kept {med('arun', 'machine_busy'):.2f} "
        f"(`arun`), {med('map', 'machine_busy'):.2f} (map), {med('narun', 'machine_busy'):.2f} (native `arun`), "
        f"{med('nmap', 'machine_busy'):.2f} (native map) and {med('base', 'machine_busy'):.2f} (baseline) of "
        f"its {os.cpu_count()} CPUs busy."
    )
    return rows, note


def _w3_limits(kind: str, res: Dict[str, Any], first: bool) -> str:
    """W3's "what limits it" note for ``kind``, from the figures; the ``first`` one measured
    says what they all share."""
    ss = res["samples"]

    def med(which: str, key: str) -> float:
        return _median([s[key] for s in ss[which]])

    n = W3_TICKETS
    r_arun, r_map, r_base = (n / med(w, "wall") for w in ("arun", "map", "base"))
    c_arun, c_map, c_base = (med(w, "cpu_ms") for w in ("arun", "map", "base"))
    m_arun = med("arun", "model_thread_ms")
    s_arun = med("arun", "server_ms")
    floor = W3_IN_FLIGHT / (2 * W3_LATENCY)
    text = f"What limits {kind}: "
    if first:
        text += (
            f"not the model's latency ({W3_IN_FLIGHT} tickets in flight, each two calls of "
            f"{W3_LATENCY * 1e3:.0f} ms, would allow ~{floor:,.0f} tickets/s; neither the baseline nor the "
            "`openai`-client provider gets near it), but the "
            "CPU of one Python process. The baseline spends "
            f"{c_base:.2f} ms of CPU per ticket ({c_base / 2:.2f} ms per model call), nearly all of it in the "
            "`openai` client (httpx, httpcore's connection pool, a pydantic model per chunk of the streamed "
            f"answer): its own flow is a few string operations. At {r_base:,.0f} tickets/s that keeps "
            f"{c_base * r_base / 1e3:.2f} CPUs busy, with the whole machine at {med('base', 'machine_busy'):.2f} of "
            f"{os.cpu_count()}: one thread at a time (the GIL) caps it near {1e3 / c_base:,.0f} tickets/s. ferroflow "
            "hits the same one-thread ceiling with more CPU per ticket: "
        )
    text += (
        f"{c_arun:.2f} ms per ticket with `arun` ({c_arun - c_base:+.2f} ms against the baseline; {m_arun:.2f} ms "
        f"of it on the background loop's thread, where the model calls, the provider's client and the LLM nodes "
        f"run) and {c_map:.2f} ms with map ({c_map - c_base:+.2f} ms), keeping {c_arun * r_arun / 1e3:.2f} and "
        f"{c_map * r_map / 1e3:.2f} CPUs busy; {r_arun / r_base:.2f}x and {r_map / r_base:.2f}x the baseline's "
        f"rate, against {c_base / c_arun:.2f}x and {c_base / c_map:.2f}x its CPU per ticket."
    )
    if first:
        text += (
            f" The mock server used {s_arun:.2f} ms per ticket in its own process ({s_arun * r_arun / 1e3:.2f} "
            "CPUs): not the limit, though it shares the machine's CPUs."
        )
    if kind in SERVER_PROCESS and res["store_found"]:
        text += (
            f" `{SERVER_PROCESS[kind]}` used {med('arun', 'store_ms'):.2f} ms per ticket (read from `/proc`, so "
            "any other client's load too)."
        )
    r_narun, p50 = n / med("narun", "wall"), med("narun", "p50")
    text += (
        f" With the native provider, {r_narun:,.0f} tickets/s (`arun`) at a p50 of {p50 * 1e3:.0f} ms per ticket, "
        f"against the model's {2 * W3_LATENCY * 1e3:.0f} ms: {W3_IN_FLIGHT} tickets in flight over that p50 allow "
        f"{W3_IN_FLIGHT / p50:,.0f}/s, so each ticket's latency bounds the rate, not CPU "
        f"({med('narun', 'cpu_ms'):.2f} ms per ticket in this process, {r_narun * med('narun', 'cpu_ms') / 1e3:.2f} "
        f"CPUs); the {(p50 - 2 * W3_LATENCY) * 1e3:.0f} ms over the model's part is the engine's and the store's "
        "(the steps of six nodes and two recorded replies per ticket)."
    )
    cpus = os.cpu_count() or 1
    busy = max(med(w, "machine_busy") for w in ("arun", "map", "narun", "nmap", "base"))
    if busy >= 0.9 * cpus:
        text += (
            f" The whole machine was busy ({busy:.2f} of {cpus} CPUs, other processes included) during these "
            "measurements, so other load squeezed both sides too: compare the ratios, not the rates."
        )
    return text


# -- W6 --------------------------------------------------------------------------------------


def w6_sample(kind: str) -> Dict[str, Any]:
    """One RSS sample in this (fresh) process: ``engine`` parks W6_PARKED runs in an async node,
    ``baseline`` parks as many plain asyncio tasks on an Event. With a ``+tracemalloc`` suffix
    it also counts the Python heap the parked runs hold, by source file (a profile; its RSS
    figure is then meaningless, tracemalloc's own bookkeeping being in it)."""
    kind, _, extra = kind.partition("+")
    trace = extra == "tracemalloc"
    ff = _import_ferroflow() if kind == "engine" else None
    n = W6_PARKED
    warm = 100
    perf = time.perf_counter

    async def wait_for_count(counter: List[int], target: int, limit: float) -> float:
        t0 = perf()
        while counter[0] < target:
            if perf() - t0 > limit:
                raise TimeoutError(f"W6: only {counter[0]} of {target} bodies entered after {limit}s")
            await asyncio.sleep(0.005)
        return perf() - t0

    async def main() -> Dict[str, Any]:
        release = asyncio.Event()
        entered = [0]

        if kind == "engine":
            assert ff is not None
            g = ff.Graph("w6_park")

            @g.task
            async def park(input: Any) -> Any:
                entered[0] += 1
                await release.wait()
                return input

            g.build()
            ctx = ff.default_context()

            def start(i: int) -> Any:
                return g.arun(i, context=ctx)

        else:

            async def plain_park(i: int) -> Any:
                entered[0] += 1
                await release.wait()
                return i

            def start(i: int) -> Any:
                return plain_park(i)

        async def cycle(count: int) -> Dict[str, Any]:
            """Parks ``count`` runs, samples RSS, releases them and waits for every one."""
            entered[0] = 0
            release.clear()
            _settle()
            snap0 = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
            before = _rss_kb()
            tasks = [asyncio.ensure_future(start(i)) for i in range(count)]
            park_s = await wait_for_count(entered, count, 60.0)
            await asyncio.sleep(0.05)  # let any bookkeeping after the body's entry finish
            _settle()
            parked = _rss_kb()
            heap: Dict[str, Any] = {}
            if snap0 is not None:
                diff = tracemalloc.take_snapshot().compare_to(snap0, "filename")
                heap["py_kb_per"] = sum(d.size_diff for d in diff) / 1024 / count
                heap["py_top"] = [
                    (_short_path(d.traceback[0].filename), d.size_diff / count, d.count_diff / count) for d in diff[:6]
                ]
            running = -1
            if kind == "engine":  # cross-check through the engine: every run is still running
                running = sum(1 for rid in ctx.run_ids() if g.get_run(rid, context=ctx).status.value == "running")
            t0 = perf()
            release.set()
            done = await asyncio.wait_for(asyncio.gather(*tasks), 60.0)
            release_s = perf() - t0
            if kind == "engine":
                bad = [r for r in done if r.status.value != "completed"]
                if bad:
                    raise AssertionError(f"W6: {len(bad)} runs did not complete: {bad[0]!r:.200}")
                outs = [r.output for r in done]
            else:
                outs = list(done)
            if outs != list(range(count)):
                raise AssertionError("W6: released runs returned wrong outputs")
            del tasks, done
            return {
                "kb_per": (parked - before) / count,
                "park_s": park_s,
                "release_s": release_s,
                "running_while_parked": running,
                "completed": len(outs),
                **heap,
            }

        # Warm-up: the loop, the engine's threads and allocator pools exist before the sample.
        await cycle(warm)
        if trace:
            tracemalloc.start(1)
        _settle()
        rss0 = _rss_kb()
        sample = await cycle(n)
        _settle()
        sample["retained_kb_per"] = (_rss_kb() - rss0) / n
        return sample

    return asyncio.run(main())


def w6(quick: bool) -> Dict[str, Any]:
    reps = _reps("W6", quick)
    eng: List[Dict[str, Any]] = []
    base: List[Dict[str, Any]] = []
    for _ in range(reps):  # alternated, each in a fresh process
        eng.append(_child(["--child", "W6:engine"], 60.0))
        base.append(_child(["--child", "W6:baseline"], 60.0))
    for s in eng:
        if s["completed"] != W6_PARKED or s["running_while_parked"] != W6_PARKED:
            raise AssertionError(f"W6: a sample did not park/complete every run: {s}")
    # A profile of the Python heap the parked runs hold (full mode only; one more process).
    profile = None if quick else _child(["--child", "W6:engine+tracemalloc"], 60.0)
    e_kb = _median([s["kb_per"] for s in eng])
    b_kb = _median([s["kb_per"] for s in base])
    delta = _median([a["kb_per"] - b["kb_per"] for a, b in zip(eng, base)])
    e_park = _median([s["park_s"] for s in eng])
    b_park = _median([s["park_s"] for s in base])
    rows = [
        _row(
            "RSS per parked run, KB (total)",
            f"{e_kb:.2f}",
            f"{b_kb:.2f} (asyncio task on an Event)",
            _ratio(e_kb, b_kb),
            "≤ 8 KB",
            e_kb <= 8.0,
        ),
        _row(
            "RSS per parked run, KB (engine's own: total - baseline)", f"{delta:.2f}", "-", "-", "≤ 8 KB", delta <= 8.0
        ),
    ]
    if profile is not None:
        rows.append(
            _row(
                "of which Python heap (tracemalloc, one sample), KB",
                f"{profile['py_kb_per']:.2f}",
                "-",
                "-",
            )
        )
    rows += [
        _row(f"time to park {W6_PARKED:,}, s", f"{e_park:.2f}", f"{b_park:.3f}", _ratio(e_park, b_park)),
        _row(
            "released and completed",
            f"{min(s['completed'] for s in eng):,} / {W6_PARKED:,}",
            f"{min(s['completed'] for s in base):,} / {W6_PARKED:,}",
            "-",
        ),
        _row(
            "RSS kept after all completed, KB per run",
            f"{_median([s['retained_kb_per'] for s in eng]):.2f}",
            f"{_median([s['retained_kb_per'] for s in base]):.2f}",
            "-",
        ),
    ]
    notes = [
        f"{W6_PARKED:,} `asyncio.ensure_future(graph.arun(i))` on the default `InMemory()` context, each parked "
        "in an async node awaiting one `asyncio.Event`; parked = every body has entered (counted in the body) and "
        "`get_run` reports every run `running`. RSS = `VmRSS` after `gc.collect()`, minus the same just before "
        f"starting them (after a 100-run warm-up); median of {reps} samples, each in a fresh process "
        f"(total ranged {_spread([s['kb_per'] for s in eng])} KB, baseline {_spread([s['kb_per'] for s in base])} KB).",
        "The figure includes the caller's side of `arun` (its asyncio task, future and callbacks per run), as a "
        "user pays it; the baseline is the same number of plain asyncio tasks awaiting the same kind of Event, "
        "which is what the total - baseline row subtracts.",
        'After release every run completed with its input as output. "RSS kept after all completed" is RSS '
        "after completion minus before starting: the finished runs the context retains (`retain_finished` = "
        "10,000) plus whatever the allocators did not give back, so an upper bound on the retention cost.",
    ]
    if profile is not None:
        top = "; ".join(f"`{f}` {b / 1024:.2f} KB ({n:.1f} objects)" for f, b, n in profile["py_top"])
        notes.append(f"Python heap per parked run by allocating file (tracemalloc, largest first): {top}.")
    children = [s["ferroflow"] for s in eng] + ([profile["ferroflow"]] if profile else [])
    return {
        "rows": rows,
        "notes": notes,
        "children": children,
        "raw": {"engine": eng, "baseline": base, "profile": profile},
    }


# -- orchestration ---------------------------------------------------------------------------

WORKLOADS: Dict[str, Tuple[str, Callable[[bool], Dict[str, Any]]]] = {
    "W1a": ("W1a: chain of 10 sync no-op nodes, 1,000 runs one after another (memory)", w1a),
    "W1b": ("W1b: the same chain, 2,000 runs with 100 in flight (memory)", w1b),
    "W2": ("W2: 1 → 50 parallel async nodes (sleep 20 ms) → join (memory)", w2),
    "W3": (
        "W3: support bot, classify (LLM) → branch → tool → answer (LLM), 1,000 tickets, 100 in flight, mock "
        "latency 50 ms (memory, sqlite, redis, nats)",
        w3,
    ),
    "W4": ("W4: the chain of W1a, every node durably checkpointed, 1,000 runs one after another (sqlite)", w4),
    "W4c": ("W4c: the same, 2,000 runs with 100 in flight (sqlite, redis, nats)", w4c),
    "W6": ("W6: 10,000 runs parked in an async node (memory)", w6),
    "B1": ("B1: W1's chain through `graph.map` with 1 and 2 `ferroflow worker` processes (redis, nats, sqlite)", b1),
}

# Parts of workloads run in processes of their own (`--child NAME`).
PROFILES: Dict[str, Callable[[bool], Dict[str, Any]]] = {
    "W4:profile": w4_profile,
    "W4c:profile": w4c_profile,
    "W4c:redis": lambda quick: w4c_server("redis", quick),
    "W4c:nats": lambda quick: w4c_server("nats", quick),
    "B1:baseline": b1_baseline,
    "B1:redis": lambda quick: b1_store("redis", quick),
    "B1:nats": lambda quick: b1_store("nats", quick),
    "B1:sqlite": lambda quick: b1_store("sqlite", quick),
    "W3:memory": lambda quick: w3_context("memory", quick),
    "W3:sqlite": lambda quick: w3_context("sqlite", quick),
    "W3:redis": lambda quick: w3_context("redis", quick),
    "W3:nats": lambda quick: w3_context("nats", quick),
}

_QUICK = False


def _child(args: List[str], timeout: float) -> Dict[str, Any]:
    """Runs this script with ``args`` in a fresh interpreter and returns the result it prints."""
    cmd = [sys.executable, os.path.abspath(__file__), *args, *(["--quick"] if _QUICK else [])]
    env = dict(os.environ, FFBENCH_DEADLINE=str(max(timeout - 5.0, 1.0)))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise RuntimeError(f"timed out after {timeout:.0f}s: {' '.join(args)}\n{err[-3000:]}") from None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode} and no result:\n{proc.stderr[-3000:]}")


def _run_child(which: str, quick: bool) -> None:
    # Dumps every thread's stack just before the parent would kill us, to show where it hung.
    deadline = float(os.environ.get("FFBENCH_DEADLINE", CHILD_TIMEOUT[1 if quick else 0] - 5.0))
    faulthandler.dump_traceback_later(deadline, exit=True)
    if which.startswith("W6:"):
        result = w6_sample(which.split(":", 1)[1])
    elif which in PROFILES:
        result = PROFILES[which](quick)
    else:
        result = WORKLOADS[which][1](quick)
    _import_ferroflow()
    result["ferroflow"] = dict(_LOADED)
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def _machine() -> List[Tuple[str, str]]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        (
            "machine",
            f"nproc {usable} ({os.cpu_count()} online), {cpu}, {mem} RAM, {platform.system()} {platform.release()}",
        ),
        ("load average at start", load),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
    ]


def _render_table(rows: List[List[str]]) -> List[str]:
    header = ["figure", "ferroflow", "baseline", "ratio", "target", "met?"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


#: The heading from which `--write` keeps what the file holds (sections written by hand).
HAND_WRITTEN = "## Pure Rust (criterion)"


def main(argv: Optional[List[str]] = None) -> int:
    global _QUICK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (each workload < 10 s)")
    ap.add_argument("--only", help="comma-separated workload ids, e.g. W1a,W2 (default: all implemented)")
    ap.add_argument("--write", metavar="PATH", help="also write the results as Markdown to PATH")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    _QUICK = args.quick

    if args.child:
        _run_child(args.child, args.quick)
        return 0

    selected = list(IMPLEMENTED)
    if args.only:
        selected = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in selected if w not in WORKLOADS]
        if unknown:
            missing = [w for w in unknown if w in NOT_IMPLEMENTED]
            if missing:
                ap.error(f"not yet implemented: {', '.join(missing)}")
            ap.error(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(IMPLEMENTED)}")

    started = datetime.datetime.now(datetime.timezone.utc)
    header = _machine()
    sections: List[str] = []
    versions = set()
    failed = []
    for wid in selected:
        title = WORKLOADS[wid][0]
        print(f"== {title} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        timeout = WORKLOAD_TIMEOUT.get(wid, CHILD_TIMEOUT)[1 if args.quick else 0]
        try:
            result = _child(["--child", wid], timeout)
        except Exception as e:  # noqa: BLE001 - reported in the table, the other workloads still run
            failed.append(wid)
            body = [f"### {title}", "", "**not measured**: the workload failed.", "", "```", str(e)[-3000:], "```"]
        else:
            info = result["ferroflow"]
            versions.add((info["version"], info["native_mtime"]))
            for sample in result.get("children", []):
                versions.add((sample["version"], sample["native_mtime"]))
            body = [f"### {title}", "", *_render_table(result["rows"]), ""]
            body += [f"- {n}" for n in result["notes"]]
            if result.get("failed"):  # a part of the workload could not be measured (see its notes)
                failed.append(wid)
        elapsed = time.perf_counter() - t0
        body += ["", f"_({elapsed:.1f} s)_"]
        section = "\n".join(body)
        print(section + "\n", flush=True)
        sections.append(section)

    commit = _sh("git", "rev-parse", "--short", "HEAD")
    dirty = _sh("git", "status", "--porcelain", "--untracked-files=no")
    version_text = ", ".join(sorted(f"{v} (native module file dated {_utc(m)})" for v, m in versions))
    if len(versions) > 1:
        version_text += " - **the native module changed during this invocation**"
    meta = [
        ("date", started.strftime("%Y-%m-%d %H:%M UTC")),
        *header,
        ("ferroflow", version_text or "?"),
        ("git commit", commit + (" (with uncommitted changes)" if dirty and dirty != "?" else "")),
        ("load average at end", ", ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("mode", "--quick (fewer repetitions)" if args.quick else "full"),
    ]
    doc = ["# ferroflow benchmark results", ""]
    doc += [
        "Generated by `python benches/run.py"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
        + f" --write {args.write or 'PATH'}`; see `benches/README.md` for what each figure counts.",
        "",
    ]
    doc += [f"- **{k}**: {v}" for k, v in meta]
    doc += [
        "",
        "Every figure is a median over repetitions; the baseline is the same work in plain Python, measured "
        "in the same invocation, interleaved with the engine's repetitions. Ratio = ferroflow / baseline. "
        '"missed" means the target was not met on this machine in this invocation.',
        "",
        *[s + "\n" for s in sections],
        "### Not yet implemented",
        "",
        *[f"- {k}: {v}" for k, v in NOT_IMPLEMENTED.items()],
        "",
    ]
    for k, v in meta:
        print(f"{k}: {v}", file=sys.stderr)
    if args.write:
        # Sections written by hand (the criterion benches of the Rust path) follow the
        # generated part, from their heading on: carried over as they are.
        kept = ""
        if os.path.exists(args.write):
            with open(args.write, encoding="utf-8") as f:
                previous = f.read()
            at = previous.find(HAND_WRITTEN)
            kept = previous[at:] if at >= 0 else ""
        with open(args.write, "w", encoding="utf-8") as f:
            f.write("\n".join(doc) + ("\n" + kept if kept else ""))
        print(f"wrote {args.write}", file=sys.stderr)
    if failed:
        print(f"not measured: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
