"""`perf` profiles (W4, W4c and B1 in full mode): a child process run under `perf record`, sampling only
its measured part; `perf` attached to running processes (B1's workers); and the summaries of
`perf report` that the workloads' notes quote.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import common
from .common import RESULT_TAG, ROOT, RUN_PY

PERF_FREQ = 999  # samples/s of the profiles W4, W4c and B1 take in full mode


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
        cmd += [sys.executable, RUN_PY, "--child", which, *(["--quick"] if common._QUICK else [])]
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


# -- perf attached to running processes (B1's workers) ---------------------------------------


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
