"""The standard workloads (benches/README.md): measures them and prints (or writes) one table each.

    python benches/run.py [--quick] [--only W1a,W2] [--write benches/RESULTS.md]

Every workload runs in a fresh child process (this script with ``--child ID``), so that one
workload's heap, threads and retained runs never colour another's figures, and so that a hung
workload is killed after a bounded time and reported as such while the others still run. W6
goes one step further: every RSS sample is taken in its own process. W4 and W4c read their
SQLite files from another process too (see ffbench/sqlite_inspect.py), and in full mode
profile their engine part under `perf` in one more; W4c measures Redis and NATS each in a
process of its own. B1 starts `ferroflow worker` processes (which die with the process that
started them) and measures each store in a process of its own too. W3 measures each context
in a process of its own, against a mock OpenAI server in one more. Each figure is the median
over repetitions, next to a plain-Python baseline measured in the same invocation, with the
ratio. The script never asserts on timings: a missed target is written down as "missed". It
exits non-zero only when a workload (or a part of one) could not be measured (crash,
time-out, wrong results).

This file is the command line; the workloads are in ffbench/, one module each (its __init__ says
how the package is cut). See benches/README.md for what each figure counts and how to read it.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

# The workloads' package, ffbench/, sits beside this file: on sys.path already when this runs as
# a script, not when it is imported from elsewhere (benches/test_micro.py puts benches/ there too).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ffbench import common
from ffbench.b1 import b1, b1_baseline, b1_store
from ffbench.b2 import b2, b2_store
from ffbench.common import _LOADED, CHILD_TIMEOUT, RESULT_TAG, ROOT, SUB_TIMEOUT, _child, _import_ferroflow
from ffbench.w1a import w1a
from ffbench.w1b import w1b
from ffbench.w2 import w2
from ffbench.w3 import W3_CONTEXTS, w3, w3_context
from ffbench.w4 import w4, w4_profile
from ffbench.w4c import w4c, w4c_profile, w4c_server
from ffbench.w6 import w6, w6_sample


def _sum_timeouts(*keys: str, extra: Tuple[float, float] = (30.0, 30.0)) -> Tuple[float, float]:
    return (sum(SUB_TIMEOUT[k][0] for k in keys) + extra[0], sum(SUB_TIMEOUT[k][1] for k in keys) + extra[1])


# B1 runs its baseline process twice, before and after the stores.
WORKLOAD_TIMEOUT = {
    "W4c": _sum_timeouts("W4c:redis", "W4c:nats", extra=CHILD_TIMEOUT),
    "B1": _sum_timeouts("B1:baseline", "B1:baseline", "B1:redis", "B1:sqlite", "B1:nats"),
    "B2": _sum_timeouts("B2:redis", "B2:nats"),
    "W3": _sum_timeouts(*(f"W3:{kind}" for kind in W3_CONTEXTS)),
}

IMPLEMENTED = ("W1a", "W1b", "W2", "W3", "W4", "W4c", "W6", "B1", "B2")
NOT_IMPLEMENTED = {
    "W4 on redis and nats": "W4 (runs one after another) is measured on sqlite only; W4c covers redis and nats",
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
    "W6": ("W6: 10,000 runs parked in an async node; 1,000 runs of a 3-node async chain parked at node 2 (memory)", w6),
    "B1": ("B1: W1's chain through `graph.map` with 1 and 2 `ferroflow worker` processes (redis, nats, sqlite)", b1),
    "B2": (
        "B2: 100,000 runs of W1's chain in one `graph.map` batch through 2 `ferroflow worker` processes (redis, nats)",
        b2,
    ),
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
    "B2:redis": lambda quick: b2_store("redis", quick),
    "B2:nats": lambda quick: b2_store("nats", quick),
    "W3:memory": lambda quick: w3_context("memory", quick),
    "W3:sqlite": lambda quick: w3_context("sqlite", quick),
    "W3:redis": lambda quick: w3_context("redis", quick),
    "W3:nats": lambda quick: w3_context("nats", quick),
}


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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (each workload < 10 s)")
    ap.add_argument("--only", help="comma-separated workload ids, e.g. W1a,W2 (default: all implemented)")
    ap.add_argument("--write", metavar="PATH", help="also write the results as Markdown to PATH")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    common._QUICK = args.quick  # the child processes started from here get it too

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
