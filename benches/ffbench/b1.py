"""B1: `graph.map` of the W1 chain through 1 and 2 `ferroflow worker` processes (redis, nats, sqlite),
each store in a process of its own (b1_store), against direct calls and a `multiprocessing.Pool`
(b1_baseline, in processes that never load ferroflow).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .common import (
    CHAIN_LEN,
    _bench_env,
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
    _sub_child,
)
from .perf import (
    PERF_FREQ,
    _perf_attach,
    _perf_counts,
    _perf_detach,
    _perf_summary,
    _profile_note,
)
from .servers import (
    NATS_URL,
    REDIS_URL,
    SERVER_MAP_TIMEOUT,
    SERVER_PROCESS,
    _machine_cpu_s,
    _namespace,
    _nats_scan_ms,
    _pids_named,
    _proc_cpu_s,
    _server_context,
)

# B1: graph.map of W1's chain through `ferroflow worker` processes. Runs per measurement:
# (full, quick). NATS takes a fifth of the runs: its rate is ~0.5k/s here and falls as its
# journal grows (see the B1 notes), so 10,000 runs would take minutes per measurement.
B1_RUNS = {"redis": (10_000, 2_000), "sqlite": (10_000, 2_000), "nats": (2_000, 500)}
B1_IN_FLIGHT = 100  # the submitter's `graph.map(..., concurrency=)`
B1_WORKER_CONCURRENCY = 16  # `ferroflow worker --concurrency` (its default)
B1_WARM = 50  # runs mapped through freshly started workers before timing
B1_DIAG_RUNS = {"redis": 2_000, "sqlite": 2_000, "nats": 500}  # the profiled run (full mode)
B1_APP = "ffbench.b1_app"  # the module the workers import the chain from


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
        env = _bench_env()  # the workers import B1_APP from benches/
        for name in ("FFBENCH_PERF_CTL", "FFBENCH_PERF_ACK", "FFBENCH_DEADLINE"):
            env.pop(name, None)
        cmd = [sys.executable, "-m", "ffbench.b1_launch", str(os.getpid()), "worker", f"{B1_APP}:chain"]
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


def _start_workers(procs: List[_Worker], g: Any, sub: Any, root: str, spec: str, count: int, label: str) -> None:
    """Starts ``count`` workers on context ``spec`` (appended to ``procs`` as they start, so
    that the caller stops every one that did), waits until each runs ``g``'s version, and
    maps a warm-up batch of B1_WARM runs through them from ``sub``."""
    for k in range(count):
        procs.append(_Worker(root, spec, os.path.join(root, f"{label}-worker{k}.log")))
    for w in procs:
        w.wait_ready(g.version, 60.0)
    warm = list(range(-B1_WARM, 0))
    if g.map(warm, context=sub, concurrency=B1_IN_FLIGHT, batch=f"{label}-warm", timeout=120.0) != warm:
        raise AssertionError(f"{label}: the warm-up batch returned wrong outputs")


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
        _start_workers(procs, g, sub, root, spec, workers, label)
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
