"""W1b: the W1 chain, 2,000 runs with 100 in flight through `graph.map`, and through `await graph.arun`
under a semaphore of 100 (memory)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Sequence

from .common import (
    CHAIN_LEN,
    _chain_functions,
    _chain_graph,
    _cpu_s,
    _import_ferroflow,
    _median,
    _plain_chain,
    _ratio,
    _reps,
    _row,
    _settle,
    _spread,
)

W1B_RUNS = 2_000
W1B_IN_FLIGHT = 100


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

    async def arun_all(ctx: Any) -> List[Any]:
        slots = asyncio.Semaphore(W1B_IN_FLIGHT)

        async def one(x: int) -> Any:
            async with slots:
                return (await g.arun(x, context=ctx)).output

        return await asyncio.gather(*(one(x) for x in inputs))

    def arun_once(loop: asyncio.AbstractEventLoop) -> float:
        _settle()
        t0 = perf()
        out = loop.run_until_complete(arun_all(ff.InMemory()))
        dt = perf() - t0
        if out != inputs:
            raise AssertionError("W1b: graph.arun returned wrong outputs")
        return dt

    loop = asyncio.new_event_loop()
    try:
        arun_once(loop)  # warm-up
        arun = [arun_once(loop) for _ in range(reps)]
    finally:
        loop.close()
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
    r_arun = rate(arun)
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
            f"node completions/s, `await graph.arun`, {W1B_IN_FLIGHT} in flight",
            f"{r_arun:,.0f}",
            f"{r_serial:,.0f} (plain loop)",
            _ratio(r_arun, r_serial),
            "≥ 100,000",
            r_arun >= 100_000,
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
        f"`await graph.arun(x)` for every input on one asyncio loop under `asyncio.Semaphore({W1B_IN_FLIGHT})`, "
        f"gathered, on a fresh `InMemory()` per repetition; ranged "
        f"{_spread([completions / t for t in arun], fmt='{:,.0f}')} completions/s.",
        "Steady state: one context pre-filled with 10,000 finished runs (its `retain_finished` default) "
        f"before timing, so every run also evicts one; ranged "
        f"{_spread([completions / t for t in steady], fmt='{:,.0f}')} completions/s.",
    ]
    raw = {"engine_s": engine, "arun_s": arun, "serial_s": serial, "pool_s": pool}
    return {"rows": rows, "notes": notes, "raw": raw}
