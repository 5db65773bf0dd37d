"""The gRPC service, driven as an outside system would: a Python client generated from
proto/ferroflow/v1/ferroflow.proto with grpcio-tools, a real `ferroflow-server` process
(the Rust binary, no Python in it) and real `ferroflow worker` processes on the same
context, which execute the runs the server starts.
"""

from __future__ import annotations

import importlib
import importlib.util
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
from typing import Dict, Iterator, List, Optional

import grpc
import pytest

import cargo_artifacts
import ferroflow as ff
from ferroflow.cli import open_context
from ferroflow.testing import MockLLMServer

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("FERROFLOW_TEST_REDIS", "redis://127.0.0.1:6379")
NATS_URL = os.environ.get("FERROFLOW_TEST_NATS", "nats://127.0.0.1:4222")
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


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """The client modules, generated from the .proto now (as a user of the service would)."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
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


def start_worker(tmp_path: Path, context: str) -> subprocess.Popen:
    """A `ferroflow worker` on `context`; its stderr goes to a file (a pipe nobody reads
    could fill up and stall it), which `stop_worker` and `worker_log` read."""
    log = open(tmp_path / f"worker-{uuid.uuid4().hex[:8]}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroflow.cli", "worker", "app:flow", "app:slow", "--context", context, *WORKER],
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


def context_url(kind: str, tmp_path: Path) -> str:
    name = f"g{uuid.uuid4().hex[:16]}"
    return {
        "sqlite": str(tmp_path / "runs.db"),
        "redis": f"{REDIS_URL}?namespace={name}",
        "nats": f"{NATS_URL}?namespace={name}",
    }[kind]


class Deployment:
    """A context with one server and one worker on it, and a client of the server."""

    def __init__(self, pb, tmp_path: Path, kind: str, *server_args: str) -> None:
        (tmp_path / "app.py").write_text(APP)
        self.pb, self.tmp_path, self.kind = pb, tmp_path, kind
        self.context = context_url(kind, tmp_path)
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


@pytest.fixture(params=["sqlite", "redis", "nats"])
def deployment(request, pb, tmp_path) -> Iterator[Deployment]:
    d = Deployment(pb, tmp_path, request.param)
    try:
        yield d
    finally:
        d.close()


def status_name(pb, run) -> str:
    return pb.m.RunStatus.Name(run.status)


def code_of(call, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, timeout=10, **kw)
    return raised.value.code(), raised.value.details()


def test_start_watch_resume_cancel_list_over_grpc(deployment: Deployment):
    d, pb = deployment, deployment.pb

    # Start, and watch to completion: every journal event, in order, from offset 0.
    started = d.start("grpc_flow", {"n": 3}, run_id="small")
    assert started.created and started.run.run_id == "small" and started.run.graph == "grpc_flow"
    events = d.watch("small")
    assert [e.offset for e in events] == list(range(len(events)))
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_completed", kinds
    assert [e.node for e in events if e.kind == "node_completed"] == ["double", "route", "finish"]
    assert [e.node for e in events if e.kind == "node_skipped"] == ["approve"]
    assert json.loads(events[0].event_json)["input"] == {"n": 3}
    run = d.get("small")
    assert status_name(pb, run) == "RUN_STATUS_COMPLETED"
    assert json.loads(run.output_json) == {"n": 6, "approved": None}
    assert run.created_ms <= run.updated_ms

    # A human step: the watch ends where the run waits; resumed over gRPC, it completes.
    d.start("grpc_flow", {"n": 60}, run_id="big")
    until_waiting = d.watch("big")
    assert until_waiting[-1].kind == "node_waiting" and until_waiting[-1].node == "approve"
    waiting = d.get("big")
    assert status_name(pb, waiting) == "RUN_STATUS_WAITING"
    assert [(w.node, json.loads(w.request_json)) for w in waiting.waiting] == [
        ("approve", {"question": "approve 120?"})
    ]
    code, details = code_of(d.client.ResumeRun, pb.m.ResumeRunRequest(run_id="big", node="double", value_json="1"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "approve" in details, details
    resumed = d.client.ResumeRun(pb.m.ResumeRunRequest(run_id="big", value_json="true"), timeout=10)
    assert resumed.run_id == "big"
    rest = d.watch("big", from_offset=until_waiting[-1].offset + 1, follow_waiting=True)
    assert rest[0].offset == until_waiting[-1].offset + 1 and rest[0].kind == "node_resumed"
    assert rest[-1].kind == "run_completed"
    assert json.loads(d.get("big").output_json) == {"n": 120, "approved": True}
    code, details = code_of(d.client.ResumeRun, pb.m.ResumeRunRequest(run_id="big", value_json="true"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "completed" in details, details
    # A watch of a finished run from offset 0 replays the whole journal.
    assert [e.offset for e in d.watch("big")] == list(range(rest[-1].offset + 1))

    # Cancel a run in flight: it ends cancelled, its completed nodes stay recorded.
    d.start("grpc_slow", {"n": 1, "pause": 0.3}, run_id="slow")
    stream = d.client.WatchRun(pb.m.WatchRunRequest(run_id="slow"), timeout=30)
    assert next(e for e in stream if e.kind == "node_completed").node == "s1"
    stream.cancel()
    cancelled = d.client.CancelRun(pb.m.CancelRunRequest(run_id="slow"), timeout=10)
    assert status_name(pb, cancelled) == "RUN_STATUS_CANCELLED"
    again = d.client.CancelRun(pb.m.CancelRunRequest(run_id="slow"), timeout=10)
    assert status_name(pb, again) == "RUN_STATUS_CANCELLED"
    slow_events = d.watch("slow")
    assert slow_events[-1].kind == "run_cancelled" and "s1" in [e.node for e in slow_events]
    code, details = code_of(d.client.CancelRun, pb.m.CancelRunRequest(run_id="small"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "completed" in details, details

    # Idempotent start: the same id returns the same run; another graph's id is refused.
    again = d.start("grpc_flow", {"n": 999}, run_id="small")
    assert not again.created and again.run.run_id == "small"
    assert json.loads(again.run.output_json) == {"n": 6, "approved": None}
    code, details = code_of(d.client.StartRun, pb.m.StartRunRequest(graph="grpc_slow", run_id="small"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "grpc_flow" in details, details

    # List: newest first, filtered, a page at a time.
    for i in range(7):
        d.start("grpc_flow", {"n": i}, run_id=f"many-{i}")
    for i in range(7):
        d.watch(f"many-{i}", follow_waiting=True)
    one_page = d.client.ListRuns(pb.m.ListRunsRequest(graph="grpc_flow", page_size=1000), timeout=10)
    assert not one_page.next_page_token
    everything = [r.run_id for r in one_page.runs]
    assert set(everything) == {"small", "big", *(f"many-{i}" for i in range(7))}
    assert everything.index("many-6") < everything.index("many-0") < everything.index("small")
    paged, token, pages = [], "", 0
    while True:
        page = d.client.ListRuns(pb.m.ListRunsRequest(graph="grpc_flow", page_size=4, page_token=token), timeout=10)
        paged += [r.run_id for r in page.runs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert paged == everything and pages == 3
    completed = pb.m.RunStatus.Value("RUN_STATUS_COMPLETED")
    done = d.client.ListRuns(pb.m.ListRunsRequest(status=completed), timeout=10).runs
    assert {r.run_id for r in done} == set(everything)
    cancelled_status = pb.m.RunStatus.Value("RUN_STATUS_CANCELLED")
    assert [r.run_id for r in d.client.ListRuns(pb.m.ListRunsRequest(status=cancelled_status), timeout=10).runs] == [
        "slow"
    ]

    graphs = {g.name: g for g in d.client.ListGraphs(pb.m.ListGraphsRequest(), timeout=10).graphs}
    assert set(graphs) == {"grpc_flow", "grpc_slow"}
    spec = json.loads(graphs["grpc_flow"].spec_json)
    assert sorted(n["name"] for n in spec["nodes"]) == ["approve", "double", "finish", "route"]
    assert graphs["grpc_flow"].version == d.get("small").version


def test_errors_have_the_documented_codes_and_disturb_nothing(pb, tmp_path):
    d = Deployment(pb, tmp_path, "sqlite", "--max-input-bytes", "4096")
    try:
        m = pb.m
        # A run in flight while bad requests arrive.
        d.start("grpc_slow", {"n": 5, "pause": 0.1}, run_id="bystander")

        cases = [
            (d.client.GetRun, m.GetRunRequest(run_id="nope"), grpc.StatusCode.NOT_FOUND, "run 'nope' not found"),
            (d.client.CancelRun, m.CancelRunRequest(run_id="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
            (
                d.client.ResumeRun,
                m.ResumeRunRequest(run_id="nope", value_json="1"),
                grpc.StatusCode.NOT_FOUND,
                "nope",
            ),
            (
                d.client.StartRun,
                m.StartRunRequest(graph="no_such_graph"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "no worker registered graph 'no_such_graph'",
            ),
            (
                d.client.StartRun,
                m.StartRunRequest(graph="grpc_flow", version="0000"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "version 0000",
            ),
            (d.client.StartRun, m.StartRunRequest(), grpc.StatusCode.INVALID_ARGUMENT, "graph is required"),
            (
                d.client.StartRun,
                m.StartRunRequest(graph="grpc_flow", input_json='{"n": 1'),
                grpc.StatusCode.INVALID_ARGUMENT,
                "input_json is not valid JSON",
            ),
            (
                d.client.StartRun,
                m.StartRunRequest(graph="grpc_flow", input_json=json.dumps({"pad": "x" * 5000})),
                grpc.StatusCode.INVALID_ARGUMENT,
                "over this server's limit of 4096 bytes",
            ),
            (
                d.client.StartRun,
                m.StartRunRequest(graph="grpc_flow", run_id="x" * 300),
                grpc.StatusCode.INVALID_ARGUMENT,
                "is 300 bytes long; the limit is 256 bytes",
            ),
            (
                d.client.ResumeRun,
                m.ResumeRunRequest(run_id="bystander", value_json="[1,"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "value_json is not valid JSON",
            ),
            (
                d.client.ResumeRun,
                m.ResumeRunRequest(run_id="bystander", value_json="1"),
                grpc.StatusCode.FAILED_PRECONDITION,
                "run 'bystander' is running; resume needs a run that is waiting",
            ),
            (
                d.client.ListRuns,
                m.ListRunsRequest(status=42),
                grpc.StatusCode.INVALID_ARGUMENT,
                "status 42 is not a RunStatus",
            ),
            (
                d.client.ListRuns,
                m.ListRunsRequest(page_token="garbage"),
                grpc.StatusCode.INVALID_ARGUMENT,
                'page_token "garbage"',
            ),
            (d.client.GetRun, m.GetRunRequest(), grpc.StatusCode.INVALID_ARGUMENT, "run_id is required"),
            # Values are exact or refused, as the Python API has them.
            (
                d.client.StartRun,
                m.StartRunRequest(graph="grpc_flow", input_json='{"n": 18446744073709551616}'),
                grpc.StatusCode.INVALID_ARGUMENT,
                "integer 18446744073709551616, outside the 64-bit range",
            ),
            (
                d.client.StartRun,
                m.StartRunRequest(graph="grpc_flow", input_json="[" * 101 + "]" * 101),
                grpc.StatusCode.INVALID_ARGUMENT,
                "nested more than 100",
            ),
            (
                d.client.ResumeRun,
                m.ResumeRunRequest(run_id="bystander", value_json="123456789012345678901234567890"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "outside the 64-bit range",
            ),
        ]
        for call, request, expected, words in cases:
            code, details = code_of(call, request)
            assert (code, words in details) == (expected, True), (request, code, details)
        watch = d.client.WatchRun(m.WatchRunRequest(run_id="nope"), timeout=10)
        with pytest.raises(grpc.RpcError) as raised:
            list(watch)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

        # A long field is quoted shortened: the status still fits in the response's headers.
        code, details = code_of(d.client.StartRun, m.StartRunRequest(graph="g" * 60_000))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "60000 bytes long" in details, (code, details[:300])
        assert len(details) < 2048
        code, details = code_of(d.client.GetRun, m.GetRunRequest(run_id="r" * 60_000))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 2048, (code, details[:300])
        # A request that does not decode (a string that is not UTF-8) is the caller's mistake.
        raw = d.channel.unary_unary(
            "/ferroflow.v1.Ferroflow/StartRun",
            request_serializer=lambda data: data,
            response_deserializer=m.StartRunResponse.FromString,
        )
        code, details = code_of(raw, b"\x0a\x02\xff\xfe")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf message" in details, (code, details)

        # A request far over the limit is refused by the transport before it is decoded.
        code, details = code_of(d.client.StartRun, m.StartRunRequest(graph="grpc_flow", input_json="1" * 200_000))
        assert code == grpc.StatusCode.OUT_OF_RANGE and "message length too large" in details, (code, details)

        # None of it touched the run in flight, or left a run behind.
        events = d.watch("bystander")
        assert events[-1].kind == "run_completed", [e.kind for e in events]
        assert json.loads(d.get("bystander").output_json) == {"done": 5}
        assert [r.run_id for r in d.client.ListRuns(m.ListRunsRequest(), timeout=10).runs] == ["bystander"]
    finally:
        d.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis", "nats"])
def test_a_watcher_that_reconnects_after_a_server_kill_misses_nothing(pb, tmp_path, kind):
    """Runs in flight while the server is killed (SIGKILL) and started again: the workers go
    on, and a watcher that reconnects from the offset after the last event it saw gets every
    remaining event exactly once."""
    d = Deployment(pb, tmp_path, kind)
    try:
        runs = [f"k{i}" for i in range(6)]
        for i, run_id in enumerate(runs):
            d.start("grpc_slow", {"n": i, "pause": 0.25}, run_id=run_id)

        def restart() -> None:
            d.server.kill()
            time.sleep(0.6)  # runs go on in the worker meanwhile
            d.restart_server()

        watch_through_restart(pb, d.port, d.context, runs, restart)
    finally:
        d.close()


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


def test_stopping_the_server_ends_watches_with_the_offset_to_resume_from(pb, tmp_path):
    d = Deployment(pb, tmp_path, "sqlite")
    try:
        d.start("grpc_flow", {"n": 70}, run_id="waits")
        stream = d.client.WatchRun(pb.m.WatchRunRequest(run_id="waits", follow_waiting=True), timeout=30)
        received = []
        for event in stream:
            received.append(event)
            if event.kind == "node_waiting":
                break
        err = None
        stopper = threading.Thread(target=lambda: d.server.stop())
        stopper.start()
        with pytest.raises(grpc.RpcError) as raised:
            for event in stream:
                received.append(event)
        stopper.join(timeout=30)
        err = raised.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert f"from_offset {received[-1].offset + 1}" in err.details(), err.details()
        d.server = None
    finally:
        d.close()


def test_token_tls_health_and_reflection(pb, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [*SELF_SIGNED, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    (tmp_path / "app.py").write_text(APP)
    context = context_url("sqlite", tmp_path)
    worker = start_worker(tmp_path, context)
    server = ServerProcess(
        context, free_port(), "--token-file", str(token_file), "--tls-cert", str(cert), "--tls-key", str(key)
    )
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(server.address, credentials) as channel:
            stub = pb.s.FerroflowStub(channel)
            # Without the token, or with another one: UNAUTHENTICATED.
            code, details = code_of(stub.ListGraphs, pb.m.ListGraphsRequest())
            assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details, details
            code, _ = code_of(stub.ListGraphs, pb.m.ListGraphsRequest(), metadata=[("authorization", "Bearer nope")])
            assert code == grpc.StatusCode.UNAUTHENTICATED
            auth = [("authorization", "Bearer s3cret-token")]
            deadline = time.monotonic() + 30
            while len(stub.ListGraphs(pb.m.ListGraphsRequest(), timeout=5, metadata=auth).graphs) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            started = stub.StartRun(
                pb.m.StartRunRequest(graph="grpc_flow", input_json='{"n": 2}'), timeout=10, metadata=auth
            )
            watched = stub.WatchRun(pb.m.WatchRunRequest(run_id=started.run.run_id), timeout=30, metadata=auth)
            assert list(watched)[-1].kind == "run_completed"
            # Health is open (for load balancers); reflection needs the token like the rest.
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(service="ferroflow.v1.Ferroflow"), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        # A plaintext client cannot talk to the TLS server.
        with grpc.insecure_channel(server.address) as channel:
            code, _ = code_of(pb.s.FerroflowStub(channel).ListGraphs, pb.m.ListGraphsRequest())
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
        stop_worker(worker)

    # Reflection, as grpcurl uses it: the services and their methods, without our stubs.
    server = ServerProcess(str(tmp_path / "plain.db"), free_port())
    try:
        with grpc.insecure_channel(server.address) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            assert {"ferroflow.v1.Ferroflow", "grpc.health.v1.Health"} <= services, services
            found = database.FindFileContainingSymbol("ferroflow.v1.Ferroflow")
            methods = {m.name for m in found.service[0].method}
            assert methods == {
                "StartRun",
                "GetRun",
                "WatchRun",
                "ResumeRun",
                "CancelRun",
                "ListRuns",
                "ListGraphs",
            }
    finally:
        server.stop()


def test_the_server_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    server = cargo_artifacts.server()
    env = {k: v for k, v in os.environ.items() if k != "FERROFLOW_SERVER_TOKEN"}
    refused = subprocess.run(
        [str(server), "--context", str(tmp_path / "runs.db"), "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert refused.returncode == 1
    assert "--token-file" in refused.stderr and "--allow-unauthenticated" in refused.stderr, refused.stderr
    memory = subprocess.run([str(server), "--context", "memory"], capture_output=True, text=True, timeout=30, env=env)
    assert memory.returncode == 1 and "names no durable context" in memory.stderr, memory.stderr


def test_serve_runs_graphs_in_real_time_from_python(pb, tmp_path):
    """`ferroflow serve --context memory`: the process executes the graphs in memory and
    streams their events as they happen."""
    (tmp_path / "app.py").write_text(APP)
    server = ServerProcess("memory", free_port(), python_serve=tmp_path)
    try:
        with grpc.insecure_channel(server.address) as channel:
            client, m = pb.s.FerroflowStub(channel), pb.m
            graphs = client.ListGraphs(m.ListGraphsRequest(), timeout=10).graphs
            assert sorted(g.name for g in graphs) == ["grpc_flow", "grpc_slow"]

            client.StartRun(m.StartRunRequest(graph="grpc_flow", input_json='{"n": 80}', run_id="h"), timeout=10)
            first = list(client.WatchRun(m.WatchRunRequest(run_id="h"), timeout=30))
            assert first[-1].kind == "node_waiting"
            client.ResumeRun(m.ResumeRunRequest(run_id="h", node="approve", value_json='"yes"'), timeout=10)
            request = m.WatchRunRequest(run_id="h", from_offset=first[-1].offset + 1, follow_waiting=True)
            rest = list(client.WatchRun(request, timeout=30))
            assert rest[-1].kind == "run_completed"
            run = client.GetRun(m.GetRunRequest(run_id="h"), timeout=10)
            assert json.loads(run.output_json) == {"n": 160, "approved": "yes"}

            # Events arrive as the nodes complete, not at the end of the run.
            client.StartRun(
                m.StartRunRequest(graph="grpc_slow", input_json='{"n": 4, "pause": 0.2}', run_id="s"), timeout=10
            )
            received = []
            for event in client.WatchRun(m.WatchRunRequest(run_id="s"), timeout=30):
                received.append((time.monotonic(), event))
            kinds = [e.kind for _, e in received]
            assert kinds[-1] == "run_completed" and kinds.count("node_completed") == 5, kinds
            first_done = next(t for t, e in received if e.kind == "node_completed")
            assert received[-1][0] - first_done > 0.5, "the events arrived together, not as they happened"

            listed = client.ListRuns(m.ListRunsRequest(), timeout=10).runs
            assert [r.run_id for r in listed] == ["s", "h"]
            code, _ = code_of(client.GetRun, m.GetRunRequest(run_id="unknown"))
            assert code == grpc.StatusCode.NOT_FOUND
            code, details = code_of(client.StartRun, m.StartRunRequest(graph="other"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "no graph 'other' is served here" in details
    finally:
        err = server.stop()
    assert "stopped (SIGTERM)" in err, err[-2000:]


def test_serve_on_a_durable_context_continues_its_runs_after_a_kill(pb, tmp_path):
    """`ferroflow serve --context runs.db` executes what it starts; killed with runs in
    flight and started again, it takes them over as a worker, and watchers that reconnect
    from their last offset miss nothing."""
    (tmp_path / "app.py").write_text(APP)
    context, port = str(tmp_path / "runs.db"), free_port()
    options = ("--lease", "1", "--grace", "5")
    server = ServerProcess(context, port, *options, python_serve=tmp_path)
    try:
        runs = [f"d{i}" for i in range(4)]
        with grpc.insecure_channel(server.address) as channel:
            client = pb.s.FerroflowStub(channel)
            for i, run_id in enumerate(runs):
                request = pb.m.StartRunRequest(
                    graph="grpc_slow", input_json=json.dumps({"n": i, "pause": 0.3}), run_id=run_id
                )
                assert client.StartRun(request, timeout=10).created

        def restart() -> None:
            nonlocal server
            server.kill()
            server = ServerProcess(context, port, *options, python_serve=tmp_path)

        watch_through_restart(pb, port, context, runs, restart)
        # Every node completed once: the restarted process took the runs over.
        for run_id in runs:
            completed = [e.node for e in open_context(context).journal(run_id) if type(e).__name__ == "NodeCompleted"]
            assert sorted(completed) == ["s1", "s2", "s3", "s4", "s5"], (run_id, completed)
    finally:
        server.stop()


def test_the_server_runs_a_rust_graph_that_calls_a_model_without_python(pb, tmp_path):
    """`ferroflow-server` with the Rust support bot as its worker (crates/ferroflow/examples,
    built by `cargo test`), its model calls going to the mock OpenAI server through the
    crate's own client: no Python executes anything; the answers are the Python bot's."""
    spec = importlib.util.spec_from_file_location("support_bot_grpc", ROOT / "examples" / "support_bot.py")
    bot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bot)
    expected = []
    offline = bot.build(ff.OfflineProvider(lambda r: bot.reply_to(r.messages)), "offline")
    for ticket in bot.TICKETS:
        result = offline.run(ticket)
        if result.status is ff.RunStatus.WAITING:
            result = offline.resume(result.run_id, {"approved": True, "by": "supervisor"})
        expected.append(result.output["text"])

    worker_bin = cargo_artifacts.example("support_bot")
    context = str(tmp_path / "runs.db")
    with MockLLMServer(reply=lambda body: bot.reply_to(body["messages"])) as llm:
        env = dict(os.environ, OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="test", SUPPORT_BOT_MODEL="mock-model")
        worker = subprocess.Popen([str(worker_bin), "--worker", context], env=env, stderr=subprocess.PIPE, text=True)
        server = None
        try:
            assert "working on support_bot" in worker.stderr.readline()
            server = ServerProcess(context, free_port())
            with grpc.insecure_channel(server.address) as channel:
                client, m = pb.s.FerroflowStub(channel), pb.m
                answers = []
                for i, ticket in enumerate(bot.TICKETS):
                    run_id = f"ticket-{i}"
                    request = m.StartRunRequest(graph="support_bot", input_json=json.dumps(ticket), run_id=run_id)
                    client.StartRun(request, timeout=10)
                    events = list(client.WatchRun(m.WatchRunRequest(run_id=run_id), timeout=30))
                    if events[-1].kind == "node_waiting":
                        asked = json.loads(events[-1].event_json)["payload"]["question"]
                        assert asked == "Approve a refund of 420.0 for order A200?"
                        value = json.dumps({"approved": True, "by": "supervisor"})
                        client.ResumeRun(m.ResumeRunRequest(run_id=run_id, value_json=value), timeout=10)
                        request = m.WatchRunRequest(run_id=run_id, from_offset=events[-1].offset + 1)
                        events += list(client.WatchRun(request, timeout=30))
                    assert events[-1].kind == "run_completed", [e.event_json for e in events]
                    answers.append(json.loads(client.GetRun(m.GetRunRequest(run_id=run_id), timeout=10).output_json))
            assert [a["text"] for a in answers] == expected
            assert all(a["model"] == "mock-model" for a in answers)
            assert llm.request_count == 2 * len(bot.TICKETS)
        finally:
            if server is not None:
                server.stop()
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=30)
            assert worker.returncode == 0, err


STREAMING_APP = """
import os
import ferroflow as ff

talk = ff.Graph("grpc_talk")

@talk.llm(
    provider=ff.NativeOpenAIProvider(base_url=os.environ["MOCK_LLM_URL"], api_key="test", timeout=10.0),
    model="mock-model",
    stream=True,
)
def answer(input):
    return [{"role": "user", "content": input}]
"""


def test_a_grpc_watcher_gets_an_llm_nodes_tokens_as_they_stream(pb, tmp_path):
    """`ferroflow serve` in real time: a watch with `progress` receives the tokens of a
    streamed model call as the model sends them, before the node completes."""
    (tmp_path / "app.py").write_text(STREAMING_APP)
    with MockLLMServer(reply="one two three four five", latency=0.3, token_interval=0.05) as llm:
        command = [sys.executable, "-m", "ferroflow.cli", "serve", "app:talk", "--context", "memory"]
        proc = subprocess.Popen(
            [*command, "--listen", "127.0.0.1:0"],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(tmp_path), MOCK_LLM_URL=llm.base_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stdout.readline()
            assert "listening on" in line, proc.stderr.read()
            address = line.split()[line.split().index("on") + 1]
            with grpc.insecure_channel(address) as channel:
                client, m = pb.s.FerroflowStub(channel), pb.m
                client.StartRun(m.StartRunRequest(graph="grpc_talk", input_json='"hi"', run_id="t"), timeout=10)
                received = []
                for event in client.WatchRun(m.WatchRunRequest(run_id="t", progress=True), timeout=30):
                    received.append((time.monotonic(), event))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    tokens = [(t, json.loads(e.event_json)["data"]["token"]) for t, e in received if e.kind == "node_progress"]
    assert "".join(token for _, token in tokens) == "one two three four five", received
    assert all(e.transient for _, e in received if e.kind == "node_progress")
    done = next(t for t, e in received if e.kind == "node_completed")
    assert tokens[0][0] < done - 0.15, "the tokens arrived together with the result, not as they streamed"
    journal = [e for _, e in received if not e.transient]
    assert [e.offset for e in journal] == list(range(len(journal)))
    # The reply is recorded as the node's step before the node completes.
    assert [e.kind for e in journal] == ["run_started", "step_recorded", "node_completed", "run_completed"]
