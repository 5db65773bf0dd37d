"""The gRPC service, served as an operator would: token, TLS, health and reflection,
the loopback rule, `ferroflow serve` from Python (real time and durable), a Rust graph that
calls a model without Python, and an LLM node's tokens streamed to a gRPC watcher. Helpers
in grpc_harness.py."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import grpc

import cargo_artifacts
import ferroflow as ff
from ferroflow.cli import open_context
from ferroflow.testing import MockLLMServer
from grpc_harness import (
    APP,
    ROOT,
    SELF_SIGNED,
    ServerProcess,
    code_of,
    free_port,
    start_worker,
    stop_worker,
    watch_through_restart,
)
from helpers import context_spec


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
    context = context_spec("sqlite", tmp_path)
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
                "RetryRun",
                "ForkRun",
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
