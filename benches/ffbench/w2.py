"""W2: 1 → 50 parallel async nodes (sleep 20 ms) → join, one run's latency and 200 at once (memory)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .common import (
    _cpu_s,
    _import_ferroflow,
    _median,
    _ratio,
    _reps,
    _row,
    _settle,
    _spread,
)

W2_FANOUT = 50
W2_SLEEP = 0.02
W2_AT_ONCE = 200


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
