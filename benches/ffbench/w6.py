"""W6: 10,000 runs parked in an async node, and 1,000 runs of a 3-node async chain started at once
with node 2 parked (as peer benchmarks measure it): RSS per parked run, every sample in a process of
its own (w6_sample) (memory).
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from typing import Any, Dict, List

from .common import (
    ROOT,
    _child,
    _import_ferroflow,
    _malloc_kb,
    _median,
    _ratio,
    _reps,
    _row,
    _rss_kb,
    _settle,
    _spread,
)

W6_PARKED = 10_000
W6_CHAIN_RUNS = 1_000


def _short_path(path: str) -> str:
    for prefix, name in ((ROOT + os.sep, ""), (os.path.dirname(os.__file__) + os.sep, "<stdlib>/")):
        if path.startswith(prefix):
            return name + path[len(prefix) :]
    return path


def w6_sample(kind: str) -> Dict[str, Any]:
    """One RSS sample in this (fresh) process: ``engine`` parks W6_PARKED runs in an async node,
    ``baseline`` parks as many plain asyncio tasks on an Event. With a ``+tracemalloc`` suffix
    it also counts the Python heap the parked runs hold, by source file (a profile; its RSS
    figure is then meaningless, tracemalloc's own bookkeeping being in it)."""
    kind, _, extra = kind.partition("+")
    trace = extra == "tracemalloc"
    # "-chain": W6_CHAIN_RUNS runs of first -> park -> last, all async, parked in the middle.
    chain = kind.endswith("-chain")
    kind = kind.removesuffix("-chain")
    ff = _import_ferroflow() if kind == "engine" else None
    n = W6_CHAIN_RUNS if chain else W6_PARKED
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
            g = ff.Graph("w6_chain" if chain else "w6_park")

            if chain:

                @g.task
                async def first(input: Any) -> Any:
                    return input

                @g.task
                async def park(first: Any) -> Any:
                    entered[0] += 1
                    await release.wait()
                    return first

                @g.task
                async def last(park: Any) -> Any:
                    return park

            else:

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

            async def plain_step(x: Any) -> Any:
                return x

            async def plain_chain(i: int) -> Any:
                return await plain_step(await plain_park(await plain_step(i)))

            def start(i: int) -> Any:
                return plain_chain(i) if chain else plain_park(i)

        async def cycle(count: int) -> Dict[str, Any]:
            """Parks ``count`` runs, samples RSS, releases them and waits for every one."""
            entered[0] = 0
            release.clear()
            _settle()
            snap0 = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
            before, c_before = _rss_kb(), _malloc_kb()
            tasks = [asyncio.ensure_future(start(i)) for i in range(count)]
            park_s = await wait_for_count(entered, count, 60.0)
            await asyncio.sleep(0.05)  # let any bookkeeping after the body's entry finish
            _settle()
            parked, c_parked = _rss_kb(), _malloc_kb()
            heap: Dict[str, Any] = {}
            if c_before is not None and c_parked is not None:
                heap["c_kb_per"] = (c_parked - c_before) / count
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
    chain_eng: List[Dict[str, Any]] = []
    chain_base: List[Dict[str, Any]] = []
    for _ in range(reps):
        chain_eng.append(_child(["--child", "W6:engine-chain"], 60.0))
        chain_base.append(_child(["--child", "W6:baseline-chain"], 60.0))
    for s in chain_eng:
        if s["completed"] != W6_CHAIN_RUNS or s["running_while_parked"] != W6_CHAIN_RUNS:
            raise AssertionError(f"W6: a chain sample did not park/complete every run: {s}")
    c_kb = _median([s["kb_per"] for s in chain_eng])
    c_base = _median([s["kb_per"] for s in chain_base])
    c_delta = _median([a["kb_per"] - b["kb_per"] for a, b in zip(chain_eng, chain_base)])

    def c_heap(samples: List[Dict[str, Any]]) -> str:
        values = [s["c_kb_per"] for s in samples if "c_kb_per" in s]
        return f"{_median(values):.2f}" if values else "-"

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
        _row("of which the C heap (malloc), KB", c_heap(eng), c_heap(base), "-"),
    ]
    rows += [
        _row(
            f"RSS per parked run, KB (total), {W6_CHAIN_RUNS:,} runs of a 3-node async chain parked at node 2",
            f"{c_kb:.2f}",
            f"{c_base:.2f} (asyncio task awaiting three coroutines)",
            _ratio(c_kb, c_base),
            "≤ 8 KB",
            c_kb <= 8.0,
        ),
        _row("same, engine's own (total - baseline)", f"{c_delta:.2f}", "-", "-", "≤ 8 KB", c_delta <= 8.0),
        _row("of which the C heap (malloc), KB", c_heap(chain_eng), c_heap(chain_base), "-"),
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
        "The C heap is what glibc's malloc handed out (`mallinfo2`) while the runs were parked, per run: the "
        "engine's own allocations in Rust (each run's state, journal, tasks and handles), and Python objects over "
        "512 bytes (smaller ones live in pymalloc's arenas, counted in RSS only); the rest of RSS is the Python "
        "heap (in full mode, tracemalloc's row below gives it) and the pages the allocators touched.",
        'After release every run completed with its input as output. "RSS kept after all completed" is RSS '
        "after completion minus before starting: the finished runs the context retains (`retain_finished` = "
        "10,000) plus whatever the allocators did not give back, so an upper bound on the retention cost.",
    ]
    notes.append(
        f"The chain: {W6_CHAIN_RUNS:,} `asyncio.ensure_future(graph.arun(i))` of `first -> park -> last`, every "
        "body async (on the caller's loop), parked in `park` on one `asyncio.Event`, measured the same way; "
        "the baseline is as many asyncio tasks each awaiting three plain coroutines, parked in the second "
        f"(total ranged {_spread([s['kb_per'] for s in chain_eng])} KB, baseline "
        f"{_spread([s['kb_per'] for s in chain_base])} KB). Fewer runs than above: what a process allocates "
        "once for many runs weighs more per run here."
    )
    if profile is not None:
        top = "; ".join(f"`{f}` {b / 1024:.2f} KB ({n:.1f} objects)" for f, b, n in profile["py_top"])
        notes.append(f"Python heap per parked run by allocating file (tracemalloc, largest first): {top}.")
    children = [s["ferroflow"] for s in eng + chain_eng] + ([profile["ferroflow"]] if profile else [])
    return {
        "rows": rows,
        "notes": notes,
        "children": children,
        "raw": {"engine": eng, "baseline": base, "chain": chain_eng, "chain_baseline": chain_base, "profile": profile},
    }
