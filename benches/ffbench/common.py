"""What the workloads share: paths, repetitions and time limits, timing and formatting helpers
(medians, spreads, table rows, ratios), this process's RSS and CPU time, the W1 chain (its functions,
its graph, its plain-Python baseline), and running a part of a workload in a child process
(``run.py --child NAME``).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benches/
ROOT = os.path.dirname(HERE)
RUN_PY = os.path.join(HERE, "run.py")  # the CLI: every child process is `run.py --child NAME`
RESULT_TAG = "FFBENCH-RESULT "

CHAIN_LEN = 10  # W1a, W1b

# W3: the support bot of examples/support_bot.py (its graph, and the model the mock server answers
# with).
SUPPORT_BOT = os.path.join(ROOT, "examples", "support_bot.py")

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
    "B2:redis": (900.0, 300.0),
    "B2:nats": (2400.0, 600.0),
    "W3:memory": (300.0, 120.0),
    "W3:sqlite": (300.0, 120.0),
    "W3:redis": (300.0, 120.0),
    "W3:nats": (360.0, 150.0),
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


def _malloc_kb() -> Optional[float]:
    """KB the C allocator (glibc's malloc) has handed out and not had back: the Rust engine's
    heap, and Python's objects over 512 bytes (smaller ones live in pymalloc's own arenas).
    None where glibc's `mallinfo2` is not available."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        ] + [("keepcost", ctypes.c_size_t)]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / 1024


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


def _switches() -> int:
    """Voluntary context switches of this process so far, every thread: a thread blocking to
    wait for another (a hop to a blocking thread and back costs two)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


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


# -- child processes -------------------------------------------------------------------------


# --quick, set by run.py's main (in a child too: its parent passes --quick on).
_QUICK = False


def _bench_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``env`` (by default this process's environment) with benches/ first on ``PYTHONPATH``,
    for a child process that runs (``python -m ffbench.NAME``) or imports a module of ffbench."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH", "")) if p)
    return env


def _child(args: List[str], timeout: float) -> Dict[str, Any]:
    """Runs run.py with ``args`` in a fresh interpreter and returns the result it prints."""
    cmd = [sys.executable, RUN_PY, *args, *(["--quick"] if _QUICK else [])]
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


def _sub_child(which: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """Runs ``--child which`` (a part of W4c or B1) in a process of its own, within its
    SUB_TIMEOUT; returns (result, None), or (None, the error) when it failed."""
    timeout = SUB_TIMEOUT[which][1 if _QUICK else 0]
    try:
        return _child(["--child", which], timeout), None
    except Exception as e:  # noqa: BLE001 - reported in the table, the other parts still run
        return None, str(e)[-2000:]
