"""What the gRPC tests share: the client modules generated from the .proto, a real
`ferroflow-server` process, `ferroflow worker` processes and the deployments they make up
(test_grpc.py: the service's calls, errors and restarts; test_grpc_serving.py: token, TLS,
health and reflection, `ferroflow serve`, Rust graphs, streamed tokens)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import grpc
import pytest

import cargo_artifacts
from ferroflow.cli import open_context
from helpers import context_spec

ROOT = Path(__file__).resolve().parent.parent
WORKER = ["--concurrency", "16", "--lease", "1", "--grace", "5"]
# A throwaway certificate for 127.0.0.1.
SELF_SIGNED = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
SELF_SIGNED += ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]

APP = """
import time
import ferroflow as ff

flow = ff.Graph("grpc_flow")

@flow.task
def double(input):
    return {"n": input["n"] * 2}

@flow.branch(labels=["ask", "skip"])
def route(double):
    return "ask" if double["n"] > 100 else "skip"

@flow.human(when={"route": "ask"})
def approve(double):
    return {"question": f"approve {double['n']}?"}

@flow.task
def finish(double, approve):
    return {"n": double["n"], "approved": approve}

slow = ff.Graph("grpc_slow")

@slow.task
def s1(input):
    time.sleep(input["pause"])
    return input

@slow.task
def s2(s1):
    time.sleep(s1["pause"])
    return s1

@slow.task
def s3(s2):
    time.sleep(s2["pause"])
    return s2

@slow.task
def s4(s3):
    time.sleep(s3["pause"])
    return s3

@slow.task
def s5(s4):
    time.sleep(s4["pause"])
    return {"done": s4["n"]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `ferroflow-server` process (or, with `python_serve`, `ferroflow serve`); `address`
    is where it listens."""

    def __init__(self, context: str, port: int, *args: str, python_serve: Optional[Path] = None) -> None:
        if python_serve is None:
            command = [str(cargo_artifacts.server())]
            env = None
        else:
            command = [sys.executable, "-m", "ferroflow.cli", "serve", "app:flow", "app:slow"]
            env = dict(os.environ, PYTHONPATH=str(python_serve))
        self.proc = subprocess.Popen(
            [*command, "--context", context, "--listen", f"127.0.0.1:{port}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=python_serve,
            env=env,
        )
        line = self.proc.stdout.readline()
        assert "listening on" in line, f"the server did not start: {line!r} {self.proc.stderr.read()[-2000:]}"
        words = line.split()
        self.address = words[words.index("on") + 1]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=10)

    def stop(self) -> str:
        """SIGTERM, then the process's stderr; it must exit 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err[-3000:]
        return err


def start_worker(tmp_path: Path, context: str, graphs: Sequence[str] = ("app:flow", "app:slow")) -> subprocess.Popen:
    """A `ferroflow worker` of `graphs` on `context`; its stderr goes to a file (a pipe nobody
    reads could fill up and stall it), which `stop_worker` and `worker_log` read."""
    log = open(tmp_path / f"worker-{uuid.uuid4().hex[:8]}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroflow.cli", "worker", *graphs, "--context", context, *WORKER],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    return proc


def worker_log(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()[-3000:]  # type: ignore[attr-defined]


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 0, worker_log(proc)


class Deployment:
    """A context with one server and one worker on it, and a client of the server."""

    def __init__(self, pb, tmp_path: Path, kind: str, *server_args: str) -> None:
        (tmp_path / "app.py").write_text(APP)
        self.pb, self.tmp_path, self.kind = pb, tmp_path, kind
        self.context = context_spec(kind, tmp_path)
        self.port = free_port()
        self.worker = start_worker(tmp_path, self.context)
        self.server_args = server_args
        self.server: Optional[ServerProcess] = None
        try:
            self.server = ServerProcess(self.context, self.port, *server_args)
            self.channel = grpc.insecure_channel(self.server.address)
            self.client = pb.s.FerroflowStub(self.channel)
            # The worker registers its graphs when it starts; the server needs them to start runs.
            deadline = time.monotonic() + 30
            while len(self.client.ListGraphs(pb.m.ListGraphsRequest(), timeout=5).graphs) < 2:
                assert self.worker.poll() is None, f"the worker stopped: {worker_log(self.worker)}"
                assert time.monotonic() < deadline, f"the worker did not register its graphs: {worker_log(self.worker)}"
                time.sleep(0.05)
        except BaseException:
            if self.server is not None:
                self.server.kill()
            self.worker.kill()
            self.worker.wait(timeout=30)
            raise

    def restart_server(self) -> None:
        self.server = ServerProcess(self.context, self.port, *self.server_args)

    def start(self, graph: str, value, run_id: str = "", **kw):
        request = self.pb.m.StartRunRequest(graph=graph, input_json=json.dumps(value), run_id=run_id, **kw)
        return self.client.StartRun(request, timeout=10)

    def watch(self, run_id: str, from_offset: int = 0, follow_waiting: bool = False, timeout: float = 60):
        request = self.pb.m.WatchRunRequest(run_id=run_id, from_offset=from_offset, follow_waiting=follow_waiting)
        return list(self.client.WatchRun(request, timeout=timeout))

    def get(self, run_id: str):
        return self.client.GetRun(self.pb.m.GetRunRequest(run_id=run_id), timeout=10)

    def close(self) -> None:
        self.channel.close()
        try:
            if self.server is not None and self.server.proc.poll() is None:
                self.server.stop()
        finally:
            stop_worker(self.worker)
            if self.kind != "sqlite":
                open_context(self.context).delete_namespace()


def status_name(pb, run) -> str:
    return pb.m.RunStatus.Name(run.status)


def code_of(call, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, timeout=10, **kw)
    return raised.value.code(), raised.value.details()


def generate_stubs(out: Path) -> Any:
    """The client modules, generated from the .proto into `out` now (as a user of the service
    would): `.m` the messages, `.s` the services."""
    from grpc_tools import protoc

    # Compiled from its own directory, the modules are `ferroflow_pb2` and
    # `ferroflow_pb2_grpc` at the top level (clear of the `ferroflow` package).
    proto_dir = ROOT / "proto" / "ferroflow" / "v1"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(proto_dir / "ferroflow.proto"),
        ]
    )
    assert code == 0, "protoc failed on ferroflow.proto"
    sys.path.insert(0, str(out))
    try:
        messages = importlib.import_module("ferroflow_pb2")
        services = importlib.import_module("ferroflow_pb2_grpc")
    finally:
        sys.path.remove(str(out))

    class Stubs:
        m = messages
        s = services

    return Stubs


def watch_through_restart(pb, port: int, context: str, runs: List[str], restart) -> None:
    """Watches `runs` (each started with input n = its index) on threads that reconnect
    from the offset after the last event they saw; calls `restart` once they have seen
    some progress; then checks that each watcher saw its run's whole journal exactly once,
    to its completion."""
    seen: Dict[str, List] = {run_id: [] for run_id in runs}
    errors: Dict[str, List[grpc.StatusCode]] = {run_id: [] for run_id in runs}

    def watch(run_id: str) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            following = seen[run_id]
            start = following[-1].offset + 1 if following else 0
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = pb.s.FerroflowStub(channel)
                    request = pb.m.WatchRunRequest(run_id=run_id, from_offset=start, follow_waiting=True)
                    for event in stub.WatchRun(request, timeout=60, wait_for_ready=True):
                        following.append(event)
                if following and following[-1].kind.startswith("run_"):
                    return
            except grpc.RpcError as error:
                errors[run_id].append(error.code())
                time.sleep(0.1)

    watchers = [threading.Thread(target=watch, args=(run_id,)) for run_id in runs]
    for t in watchers:
        t.start()
    # Restart the server once the watchers have seen some of the runs' progress.
    deadline = time.monotonic() + 30
    while sum(len(events) for events in seen.values()) < 2 * len(runs):
        assert time.monotonic() < deadline, "no progress before the restart"
        time.sleep(0.01)
    restart()
    for t in watchers:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in watchers)

    assert any(errors.values()), "no watcher saw the server go away; the test proved nothing"
    for i, run_id in enumerate(runs):
        events = seen[run_id]
        offsets = [e.offset for e in events]
        assert offsets == list(range(len(events))), (run_id, offsets, errors[run_id])
        assert events[-1].kind == "run_completed", (run_id, [e.kind for e in events])
        assert json.loads(events[-1].event_json)["output"] == {"done": i}
        # The same events as the journal holds, each once.
        stored = open_context(context).journal(run_id)
        assert len(stored) == len(events)
