"""The gRPC service, driven as an outside system would: a Python client generated from
proto/ferroflow/v1/ferroflow.proto with grpcio-tools, a real `ferroflow-server` process
(the Rust binary, no Python in it) and real `ferroflow worker` processes on the same
context, which execute the runs the server starts: its calls, their errors, and watches
across restarts (test_grpc_serving.py has the rest; grpc_harness.py what both share).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator

import grpc
import pytest

from grpc_harness import Deployment, code_of, start_worker, status_name, stop_worker, watch_through_restart


@pytest.fixture(params=["sqlite", "redis", "nats"])
def deployment(request, pb, tmp_path) -> Iterator[Deployment]:
    d = Deployment(pb, tmp_path, request.param)
    try:
        yield d
    finally:
        d.close()


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


FLAKY_APP = """
import os
import ferroflow as ff

flaky = ff.Graph("grpc_flaky")

@flaky.task
def fetch(input):
    with open(input["log"], "a") as f:
        f.write("fetch\\n")
    return input

@flaky.task
def call(fetch):
    if os.path.exists(fetch["down"]):
        raise ConnectionError("the model server is down")
    return {"answer": fetch["n"] + 1}
"""


def test_a_failed_run_is_retried_over_grpc_and_its_workers_finish_it(deployment: Deployment):
    d, pb = deployment, deployment.pb
    (d.tmp_path / "flaky_app.py").write_text(FLAKY_APP)
    worker = start_worker(d.tmp_path, d.context, graphs=["flaky_app:flaky"])
    try:
        retried_over_grpc(d, pb)
    finally:
        stop_worker(worker)


def retried_over_grpc(d: Deployment, pb: Any) -> None:
    down, log = d.tmp_path / "down", d.tmp_path / "fetch.log"
    down.write_text("")
    deadline = time.monotonic() + 30
    while not any(g.name == "grpc_flaky" for g in d.client.ListGraphs(pb.m.ListGraphsRequest(), timeout=10).graphs):
        assert time.monotonic() < deadline, "the flaky worker never registered its graph"
        time.sleep(0.05)
    d.start("grpc_flaky", {"n": 41, "down": str(down), "log": str(log)}, run_id="flaky")
    first = d.watch("flaky")
    assert first[-1].kind == "run_failed", [e.kind for e in first]
    assert status_name(pb, d.get("flaky")) == "RUN_STATUS_FAILED"

    down.unlink()
    retried = d.client.RetryRun(pb.m.RetryRunRequest(run_id="flaky", by="grpc-test"), timeout=10)
    assert retried.run_id == "flaky"
    assert status_name(pb, retried) in ("RUN_STATUS_RUNNING", "RUN_STATUS_COMPLETED")
    rest = d.watch("flaky", from_offset=first[-1].offset + 1)
    assert rest[0].kind == "run_retried" and json.loads(rest[0].event_json)["by"] == "grpc-test"
    assert [e.kind for e in rest[1:]] == ["node_completed", "run_completed"]
    assert rest[1].node == "call" and json.loads(rest[1].event_json)["attempt"] == 2
    done = d.get("flaky")
    assert status_name(pb, done) == "RUN_STATUS_COMPLETED" and json.loads(done.output_json) == {"answer": 42}
    assert log.read_text().splitlines() == ["fetch"], "the completed node ran again"

    code, details = code_of(d.client.RetryRun, pb.m.RetryRunRequest(run_id="flaky"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "completed" in details, details
    code, _ = code_of(d.client.RetryRun, pb.m.RetryRunRequest(run_id="nobody"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = code_of(d.client.RetryRun, pb.m.RetryRunRequest(run_id="flaky", by="a\x00b"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "by" in details, details


def test_a_run_is_forked_over_grpc_and_its_workers_run_the_fork(deployment: Deployment):
    d, pb = deployment, deployment.pb
    d.start("grpc_flow", {"n": 3}, run_id="parent")
    assert d.watch("parent")[-1].kind == "run_completed"
    forked = d.client.ForkRun(
        pb.m.ForkRunRequest(run_id="parent", at="double", output_json='{"n": 4}', new_run_id="child", by="grpc-test"),
        timeout=10,
    )
    assert forked.run_id == "child"
    events = d.watch("child")
    assert [e.kind for e in events[:2]] == ["run_started", "run_forked"], [e.kind for e in events]
    assert json.loads(events[1].event_json) == {
        "type": "RunForked",
        "parent": "parent",
        "at": "double",
        "by": "grpc-test",
    }
    assert events[-1].kind == "run_completed"
    assert json.loads(d.get("child").output_json) == {"n": 4, "approved": None}
    assert json.loads(d.get("parent").output_json) == {"n": 6, "approved": None}, "the parent changed"
    code, details = code_of(d.client.ForkRun, pb.m.ForkRunRequest(run_id="parent", at="nosuch"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nosuch" in details, details
    code, _ = code_of(d.client.ForkRun, pb.m.ForkRunRequest(run_id="nobody", at="double"))
    assert code == grpc.StatusCode.NOT_FOUND


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
