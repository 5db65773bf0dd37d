"""The standard workloads of BENCH.md: measures them and prints (or writes) one table each.

    python benches/run.py [--quick] [--only W1a,W2] [--write benches/RESULTS.md]

Every workload runs in a fresh child process (this script with ``--child ID``), so that one
workload's heap, threads and retained runs never colour another's figures, and so that a hung
workload is killed after a bounded time and reported as such while the others still run. W6
goes one step further: every RSS sample is taken in its own process. Each figure is the median
over repetitions, next to a plain-Python baseline measured in the same child, with the ratio.
The script never asserts on timings: a missed target is written down as "missed". It exits
non-zero only when a workload could not be measured (crash, time-out, wrong results).

See benches/README.md for what each figure counts and how to read it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import faulthandler
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULT_TAG = "FFBENCH-RESULT "

# -- workload parameters (BENCH.md) ----------------------------------------------------------

CHAIN_LEN = 10  # W1a, W1b
W1A_RUNS = 1_000
W1B_RUNS = 2_000
W1B_IN_FLIGHT = 100
W2_FANOUT = 50
W2_SLEEP = 0.02
W2_AT_ONCE = 200
W6_PARKED = 10_000

# Repetitions: (full, quick). Every figure is the median over these.
REPS = {
    "W1a": (9, 3),
    "W1b": (15, 3),
    "W2.latency_runs": (30, 10),
    "W2.at_once": (5, 2),
    "W6": (5, 2),
}

# Per-workload wall-clock limit of the child process, in seconds: (full, quick).
CHILD_TIMEOUT = (120.0, 40.0)

IMPLEMENTED = ("W1a", "W1b", "W2", "W6")
NOT_IMPLEMENTED = {
    "W3": "needs the LLM providers and the OpenAI-compatible mock server",
    "W4": "needs a durable (sqlite) context",
    "W4c": "needs durable (sqlite, redis, nats) contexts",
    "B1": "needs durable contexts and `ferroflow worker` processes",
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
                _LOADED.update(version=ferroflow.__version__, native_mtime=os.path.getmtime(native.__file__))
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
    "W6": ("W6: 10,000 runs parked in an async node (memory)", w6),
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
    timeout = CHILD_TIMEOUT[1 if args.quick else 0]
    sections: List[str] = []
    versions = set()
    failed = []
    for wid in selected:
        title = WORKLOADS[wid][0]
        print(f"== {title} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
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
        with open(args.write, "w", encoding="utf-8") as f:
            f.write("\n".join(doc))
        print(f"wrote {args.write}", file=sys.stderr)
    if failed:
        print(f"not measured: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
