"""Runs started over gRPC: `ferroflow-server` plus one `ferroflow worker`, against the same
runs submitted in-process by Python (`graph.start` on a context that does not execute) to
the same kind of worker, in the same invocation.

    python benches/grpc_load.py [--runs 2000] [--clients 16] [--reps 3] [--context sqlite|redis|all]

Each repetition uses a fresh context (a new SQLite file, or a new Redis namespace), a fresh
worker, and for the gRPC path a fresh server. The graph is W1's 10-node chain of no-op Python
bodies (the worker's cost is the same on both paths). Reported, as medians over repetitions:
starts per second (the submitting side alone), runs completed per second end to end (from the
first start until every run is completed, as the store lists them), StartRun latency p50/p99,
and the server's CPU seconds. Ratio = gRPC / in-process Python.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
SERVER_BIN = TARGET / "release" / "ferroflow-server"
REDIS_URL = os.environ.get("FFBENCH_REDIS", "redis://127.0.0.1:6379")

APP = """
import ferroflow as ff

chain = ff.Graph("grpc_bench_chain")
for i in range(10):
    def body(x):
        return x
    body.__name__ = body.__qualname__ = f"n{i}"
    chain.task(body, deps={"x": "input" if i == 0 else f"n{i - 1}"})
"""


def stubs(out: Path) -> Any:
    from grpc_tools import protoc

    proto_dir = ROOT / "proto" / "ferroflow" / "v1"
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", "ferroflow.proto"]
    assert protoc.main(args) == 0
    sys.path.insert(0, str(out))
    return importlib.import_module("ferroflow_pb2"), importlib.import_module("ferroflow_pb2_grpc")


def context_url(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return str(tmp / f"runs-{uuid.uuid4().hex[:8]}.db")
    return f"{REDIS_URL}?namespace=grpcbench{uuid.uuid4().hex[:12]}"


def start_worker(app_dir: Path, context: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "ferroflow.cli", "worker", "app:chain", "--context", context]
    return subprocess.Popen(
        [*command, "--concurrency", "32"],
        cwd=app_dir,
        env=dict(os.environ, PYTHONPATH=str(app_dir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def completed(context: Any, runs: int) -> bool:
    import ferroflow as ff

    return sum(r.status is ff.RunStatus.COMPLETED for r in context.runs(limit=runs + 1)) >= runs


def wait_graph_registered(context: Any) -> None:
    deadline = time.monotonic() + 60
    while not context.graphs():
        assert time.monotonic() < deadline, "the worker did not register its graph"
        time.sleep(0.05)


def measure(start: Callable[[int], Any], context: Any, runs: int, clients: int) -> Dict[str, float]:
    """Starts `runs` runs with `start` from `clients` threads, then waits until the context
    lists them all completed."""
    latencies: List[float] = []

    def one(i: int) -> None:
        began = time.perf_counter()
        start(i)
        latencies.append(time.perf_counter() - began)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(runs)))
    t1 = time.perf_counter()
    while not completed(context, runs):
        time.sleep(0.05)
    t2 = time.perf_counter()
    latencies.sort()
    return {
        "starts/s": runs / (t1 - t0),
        "runs/s": runs / (t2 - t0),
        "p50 ms": latencies[len(latencies) // 2] * 1e3,
        "p99 ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


def via_grpc(pb: Any, app_dir: Path, kind: str, tmp: Path, runs: int, clients: int) -> Dict[str, float]:
    import grpc

    from ferroflow.cli import open_context

    messages, services = pb
    url = context_url(kind, tmp)
    worker = start_worker(app_dir, url)
    server = subprocess.Popen(
        [str(SERVER_BIN), "--context", url, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = server.stdout.readline().split()[3]
        context = open_context(url)
        wait_graph_registered(context)
        channel = grpc.insecure_channel(address)
        client = services.FerroflowStub(channel)

        def one(i: int) -> None:
            request = messages.StartRunRequest(graph="grpc_bench_chain", input_json=json.dumps(i), run_id=f"r{i}")
            client.StartRun(request, timeout=30)

        figures = measure(one, context, runs, clients)
        with open(f"/proc/{server.pid}/stat") as f:
            fields = f.read().split()
        cpu = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        channel.close()
        return {**figures, "server cpu s": cpu}
    finally:
        stop(server)
        stop(worker)
        if kind != "sqlite":
            open_context(url).delete_namespace()


def in_process(app_dir: Path, kind: str, tmp: Path, runs: int, clients: int) -> Dict[str, float]:
    from ferroflow.cli import open_context

    url = context_url(kind, tmp)
    worker = start_worker(app_dir, url)
    try:
        sys.path.insert(0, str(app_dir))
        from app import chain  # type: ignore[import-not-found]

        submitter = open_context(url, execute=False)
        wait_graph_registered(submitter)
        return measure(lambda i: chain.start(i, run_id=f"r{i}", context=submitter), submitter, runs, clients)
    finally:
        stop(worker)
        if kind != "sqlite":
            open_context(url).delete_namespace()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--context", choices=["sqlite", "redis", "all"], default="all")
    args = ap.parse_args()
    assert SERVER_BIN.exists(), f"{SERVER_BIN} is missing: `make server` builds it"
    kinds = ["sqlite", "redis"] if args.context == "all" else [args.context]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        app_dir = tmp / "app"
        app_dir.mkdir()
        (app_dir / "app.py").write_text(APP)
        pb = stubs(tmp)
        print(f"{args.runs} runs of a 10-node chain, {args.clients} client threads, medians of {args.reps}\n")
        print("| context | path | starts/s | runs/s end to end | StartRun p50 / p99 ms | server CPU s |")
        print("|---|---|---|---|---|---|")
        for kind in kinds:
            grpc_reps, python_reps = [], []
            for _ in range(args.reps):
                grpc_reps.append(via_grpc(pb, app_dir, kind, tmp, args.runs, args.clients))
                python_reps.append(in_process(app_dir, kind, tmp, args.runs, args.clients))

            g = {key: statistics.median(r[key] for r in grpc_reps) for key in grpc_reps[0]}
            p = {key: statistics.median(r[key] for r in python_reps) for key in python_reps[0]}
            print(
                f"| {kind} | gRPC | {g['starts/s']:.0f} ({g['starts/s'] / p['starts/s']:.2f}x) "
                f"| {g['runs/s']:.0f} ({g['runs/s'] / p['runs/s']:.2f}x) | {g['p50 ms']:.1f} / {g['p99 ms']:.1f} "
                f"| {g['server cpu s']:.2f} |"
            )
            print(
                f"| {kind} | Python in-process | {p['starts/s']:.0f} | {p['runs/s']:.0f} "
                f"| {p['p50 ms']:.1f} / {p['p99 ms']:.1f} | |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
