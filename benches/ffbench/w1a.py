"""W1a: a chain of 10 sync no-op nodes, 1,000 runs one after another, each timed alone, through
`graph.run` and through `await graph.arun` (memory)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List

from .common import (
    CHAIN_LEN,
    _chain_functions,
    _chain_graph,
    _import_ferroflow,
    _median,
    _plain_chain,
    _ratio,
    _reps,
    _row,
    _settle,
    _spread,
)

W1A_RUNS = 1_000


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

    async def arun_times(times: List[float]) -> None:
        for i in range(len(times)):
            t0 = perf()
            result = await g.arun(i, context=ctx)
            times[i] = perf() - t0
            if result.output != i:
                raise AssertionError(f"W1a: arun {i} returned {result.output!r}")

    loop = asyncio.new_event_loop()  # the caller's loop of every `arun` measurement
    loop.run_until_complete(arun_times([0.0] * 200))  # warm-up

    engine_med: List[float] = []
    arun_med: List[float] = []
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
        loop.run_until_complete(arun_times(times))
        arun_med.append(_median(times))

        _settle()
        for i in range(W1A_RUNS):
            t0 = perf()
            out = plain(i)
            times[i] = perf() - t0
            if out != i:
                raise AssertionError("W1a: baseline broke")
        base_med.append(_median(times))

    loop.close()
    us = 1e6 / CHAIN_LEN
    overhead = [(e - b) * us for e, b in zip(engine_med, base_med)]
    arun_overhead = [(a - b) * us for a, b in zip(arun_med, base_med)]
    arun_cost = _median(arun_overhead)
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
            "engine time per node through `await graph.arun`, µs: (arun - baseline) / 10",
            f"{arun_cost:.2f}",
            "-",
            "-",
            "≤ 5 µs",
            arun_cost <= 5.0,
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
        f"`await graph.arun(i)`: the same runs on the same context, awaited one after another on one asyncio "
        f"loop, each timed alone (repetitions ranged {_spread(arun_overhead)} µs per node of engine time). "
        "The sync bodies run on the engine's threads, so that they never block the caller's loop; each run "
        "pays the hand-off there and the wake-up of the loop when it settles.",
    ]
    return {"rows": rows, "notes": notes, "raw": {"engine_s": engine_med, "arun_s": arun_med, "baseline_s": base_med}}
