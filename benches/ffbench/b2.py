"""B2: scale. 100,000 runs of the W1 chain in one `graph.map` batch through 2 `ferroflow worker`
processes (redis, nats), each store in a process of its own (b2_store): throughput per block of
10,000 runs, from the first block to the last, and the memory of every process (each worker, the
submitter, the server) sampled through the batch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Tuple

from .b1 import B1_IN_FLIGHT, B1_WARM, B1_WORKER_CONCURRENCY, _start_workers, _Worker
from .common import (
    CHAIN_LEN,
    _chain_functions,
    _chain_graph,
    _import_ferroflow,
    _median,
    _row,
    _sub_child,
)
from .servers import (
    NATS_URL,
    REDIS_URL,
    SERVER_PROCESS,
    _machine_cpu_s,
    _namespace,
    _pids_named,
    _proc_cpu_s,
    _server_context,
    _steal_s,
)

# Runs in the batch (full, quick), and how many make one block of the throughput figures.
B2_RUNS = (100_000, 20_000)
B2_BLOCK = (10_000, 2_000)
B2_WORKERS = 2
B2_MAP_TIMEOUT = {"redis": 900.0, "nats": 1800.0}
B2_KINDS = ("redis", "nats")
B2_SAMPLE_EVERY = 1.0  # seconds between memory samples


def _rss_kb_of(pid: int) -> int:
    """VmRSS of process ``pid`` in KB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def b2_store(kind: str, quick: bool) -> Dict[str, Any]:
    """B2 on ``kind`` (redis, nats): one batch of B2_RUNS through B2_WORKERS fresh workers (after a
    warm-up batch), submitted from a context that does not execute, ``concurrency`` as B1's.
    Returns the wall time, the time each block of runs completed at, and the memory samples."""
    assert kind in B2_KINDS, kind
    ff = _import_ferroflow()
    g = _chain_graph(ff, _chain_functions())
    runs, block = B2_RUNS[1 if quick else 0], B2_BLOCK[1 if quick else 0]
    namespace = _namespace("b2")
    spec = f"{REDIS_URL if kind == 'redis' else NATS_URL}?namespace={namespace}"
    sub = _server_context(ff, kind, namespace, execute=False)
    root = tempfile.mkdtemp(prefix="ffbench-b2-")
    server = _pids_named(SERVER_PROCESS[kind])
    procs: List[_Worker] = []
    perf = time.perf_counter
    try:
        _start_workers(procs, g, sub, root, spec, B2_WORKERS, "b2")
        pids = {"submitter": os.getpid(), **{f"worker {k}": w.proc.pid for k, w in enumerate(procs)}}
        pids.update({f"{SERVER_PROCESS[kind]} {p}": p for p in server})
        samples: List[Tuple[float, Dict[str, int]]] = []
        marks: List[Tuple[float, int]] = []
        # At the start and at each block's end: the CPU seconds of each process and of the machine.
        cpu_marks: List[Tuple[Dict[str, float], float, float]] = []
        t0 = perf()

        def sample(now: float) -> None:
            samples.append((now - t0, {name: _rss_kb_of(pid) for name, pid in pids.items()}))

        def cpu_mark() -> None:
            procs_cpu = {name: _proc_cpu_s([pid]) for name, pid in pids.items()}
            cpu_marks.append((procs_cpu, _machine_cpu_s(), _steal_s()))

        def progress(done: int, total: int) -> None:
            now = perf()
            marks.append((now - t0, done))
            while len(cpu_marks) <= runs // block and done >= (len(cpu_marks)) * block:
                cpu_mark()
            if not samples or now - t0 - samples[-1][0] >= B2_SAMPLE_EVERY:
                sample(now)

        cpu_mark()
        sample(t0)
        inputs = range(runs)
        try:
            result = g.map(
                inputs,
                context=sub,
                concurrency=B1_IN_FLIGHT,
                batch="b2",
                timeout=B2_MAP_TIMEOUT[kind],
                progress=progress,
            )
        except Exception as e:
            logs = "\n".join(f"worker {k}: {w.output()[-1000:]}" for k, w in enumerate(procs))
            raise RuntimeError(f"B2 {kind}: graph.map failed: {e}\n{logs}") from e
        wall = perf() - t0
        sample(perf())
        if result != list(inputs):
            raise AssertionError(f"B2 {kind}: graph.map returned wrong outputs")
        del result
        # The time each block of `block` runs was settled by (progress comes about every 100 ms).
        blocks: List[float] = []
        for edge in range(block, runs + 1, block):
            hit = next((t for t, done in marks if done >= edge), wall)
            blocks.append(hit)
        alive = all(w.proc.poll() is None for w in procs)
    finally:
        for w in procs:
            w.stop()
        sub.delete_namespace()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "kind": kind,
        "runs": runs,
        "block": block,
        "wall": wall,
        "blocks": blocks,
        "samples": samples,
        "cpu_marks": cpu_marks,
        "workers_alive": alive,
    }


def b2(quick: bool) -> Dict[str, Any]:
    rows: List[Any] = []
    notes: List[str] = []
    raw: Dict[str, Any] = {}
    failed = []
    for kind in B2_KINDS:
        res, err = _sub_child(f"B2:{kind}")
        if res is None:
            failed.append(f"B2 {kind} could not be measured: {err}")
            continue
        raw[kind] = res
        kind_rows, kind_notes = _b2_report(kind, res)
        rows += kind_rows
        notes += [f"{kind}: {note}" for note in kind_notes]
    if failed:
        raise RuntimeError("; ".join(failed))
    return {"rows": rows, "notes": notes, "raw": raw}


def _b2_report(kind: str, res: Dict[str, Any]) -> Tuple[List[Any], List[str]]:
    runs, block, wall = res["runs"], res["block"], res["wall"]
    ends = res["blocks"]
    rates = [block * CHAIN_LEN / (end - start) for start, end in zip([0.0, *ends[:-1]], ends) if end > start]
    samples = res["samples"]
    names = list(samples[0][1])

    def memory(name: str) -> str:
        values = [s[name] / 1024 for _, s in samples if s.get(name)]
        if not values:
            return "-"
        return f"{values[0]:.0f} / {max(values):.0f} / {values[-1]:.0f}"

    rows = [
        _row(
            f"node completions/s, {runs:,} runs in one `graph.map`, {B2_WORKERS} workers ({kind})",
            f"{runs * CHAIN_LEN / wall:,.0f}",
            "-",
            "-",
            "≥ 10,000",
            runs * CHAIN_LEN / wall >= 10_000,
        ),
        _row(
            f"{kind}: node completions/s per block of {block:,} runs: first / median / last",
            f"{rates[0]:,.0f} / {_median(rates):,.0f} / {rates[-1]:,.0f}",
            "-",
            "-",
            "steady",
            rates[-1] >= 0.8 * rates[0],
        ),
    ]
    rows += [
        _row(f"{kind}: RSS of the {name}, MB: at the start / highest / at the end", memory(name), "-", "-")
        for name in names
    ]
    # CPU µs per node completion of each process, block by block (a block's end is marked when
    # `map`'s progress first reaches it, so a mark can lag its block by up to one callback).
    marks = res.get("cpu_marks", [])
    per_block: Dict[str, List[float]] = {name: [] for name in names}
    busy: List[float] = []
    stolen: List[float] = []
    for (before, m0, s0), (after, m1, s1), start, end in zip(marks, marks[1:], [0.0, *ends], ends):
        for name in names:
            per_block[name].append((after[name] - before[name]) * 1e6 / (block * CHAIN_LEN))
        busy.append((m1 - m0) / (end - start) if end > start else 0.0)
        stolen.append((s1 - s0) / (end - start) if end > start else 0.0)
    for name in names:
        values = per_block[name]
        if values:
            rows.append(
                _row(
                    f"{kind}: CPU µs per node of the {name}, per block: first / highest / last",
                    f"{values[0]:.1f} / {max(values):.1f} / {values[-1]:.1f}",
                    "-",
                    "-",
                )
            )
    cpu_text = "; ".join(
        f"{name} {', '.join(f'{v:.0f}' for v in per_block[name])}" for name in names if per_block[name]
    )
    busy_text = ", ".join(f"{b:.2f}" for b in busy)
    steal_text = ", ".join(f"{v:.2f}" for v in stolen)
    notes = [
        f"`graph.map(range({runs:,}), concurrency={B1_IN_FLIGHT}, batch='b2')` from a "
        f"`{'Redis' if kind == 'redis' else 'Nats'}(..., execute=False)` "
        f"context, executed by {B2_WORKERS} `ferroflow worker` processes (`--concurrency "
        f"{B1_WORKER_CONCURRENCY}`) on a fresh namespace, after a {B1_WARM}-run warm-up batch; {wall:.1f} s from "
        "submission to the last result, every output checked.",
        "Blocks: the time by which each block of runs had settled, from `map`'s progress callback (about every "
        f'100 ms); every block\'s rate: {", ".join(f"{r:,.0f}" for r in rates)} node completions/s. "Steady" '
        "here means the last block is at least 0.8x the first.",
        f"CPU µs per node per block, in order: {cpu_text}; the machine's CPUs busy per block: {busy_text} "
        f"of {os.cpu_count()}, of which stolen by the hypervisor (`steal` in /proc/stat): {steal_text}.",
        f"Memory: VmRSS of each process every {B2_SAMPLE_EVERY:.0f} s through the batch ({len(samples)} samples). "
        "The submitter holds the batch's inputs and outputs and follows every run it started; a worker keeps at "
        "most `retain_finished` (10,000) of the runs it finished in memory, so its RSS levels off once it has "
        "executed that many.",
    ]
    return rows, notes
