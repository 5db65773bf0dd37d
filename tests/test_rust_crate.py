"""The Rust crate's examples (crates/ferroflow/examples, located through cargo): the
support bot gives the answers the Python one gives, offline and against the mock OpenAI
server; the durable batch on SQLite, killed with SIGKILL and started again, finishes
without running a completed node twice."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import time
from collections import defaultdict

import pytest

import cargo_artifacts
import ferroflow as ff
from ferroflow.testing import MockLLMServer

ROOT = pathlib.Path(__file__).resolve().parent.parent
example = cargo_artifacts.example


@pytest.fixture(scope="module")
def bot():
    spec = importlib.util.spec_from_file_location("support_bot_example_rs", ROOT / "examples" / "support_bot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_answers(bot, provider, model):
    """What the Python bot says to each ticket, the large refund approved."""
    graph = bot.build(provider, model)
    lines = []
    for ticket in bot.TICKETS:
        result = graph.run(ticket)
        line = {"customer": ticket["customer"]}
        if result.status is ff.RunStatus.WAITING:
            line["question"] = result.waiting["approve"]["question"]
            result = graph.resume(result.run_id, {"approved": True, "by": "supervisor"})
        line["status"] = result.status.value
        line["answer"] = result.output["text"]
        lines.append(line)
    return lines


def rust_answers(env):
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    done = subprocess.run([str(example("support_bot"))], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_rust_support_bot_answers_as_the_python_one(bot):
    offline = python_answers(bot, ff.OfflineProvider(lambda r: bot.reply_to(r.messages)), "offline")
    assert len(offline) == 4 and offline[3]["question"] == "Approve a refund of 420.0 for order A200?"
    no_server = {"OPENAI_BASE_URL": None, "OPENAI_API_KEY": None}
    assert rust_answers(no_server) == offline

    # Both against the mock server, which answers as the offline model does: the Rust
    # example through the crate's client, the Python one through the native provider.
    with MockLLMServer(reply=lambda body: bot.reply_to(body["messages"])) as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test", "SUPPORT_BOT_MODEL": "mock-model"}
        from_rust = rust_answers(env)
        rust_requests = server.request_count
        provider = ff.NativeOpenAIProvider(base_url=server.base_url, api_key="test", timeout=10.0)
        from_python = python_answers(bot, provider, "mock-model")
    assert from_rust == from_python == offline
    # Two model calls per ticket (classify, answer), none repeated.
    assert rust_requests == 2 * len(bot.TICKETS)
    assert server.request_count == 4 * len(bot.TICKETS)


def test_a_killed_rust_batch_finishes_when_started_again(tmp_path):
    db, log = tmp_path / "runs.db", tmp_path / "calls.log"
    count = 30
    env = dict(os.environ, DURABLE_BATCH_PAUSE_MS="80", DURABLE_BATCH_LOG=str(log))
    command = [str(example("durable_batch")), str(db), str(count)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (log.exists() and len(log.read_text().splitlines()) >= 40):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    context = ff.Sqlite(db)
    before = {r.run_id: r.status for r in context.runs(limit=1000)}
    assert len(before) == count
    assert ff.RunStatus.RUNNING in before.values(), "the batch finished before the kill; the test proved nothing"

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert lines[-1] == f"total {sum(i * 10 + 2 for i in range(count))}", lines[-3:]

    ran = defaultdict(list)
    for line in log.read_text().splitlines():
        run_id, node, attempt = line.split()
        ran[(run_id, node)].append(int(attempt))
    for i in range(count):
        run_id = f"item-{i}"
        completed = [e for e in context.journal(run_id) if isinstance(e, ff.events.NodeCompleted)]
        assert sorted(e.node for e in completed) == ["enrich", "fetch", "score"], run_id
        for event in completed:
            attempts = ran[(run_id, event.node)]
            # Ran once, or again (as the next attempt) only if the kill cut it short.
            assert attempts[-1] == event.attempt and len(attempts) == len(set(attempts)), (run_id, attempts)
    continued = [key for key, attempts in ran.items() if len(attempts) > 1]
    print(
        {
            "killed_mid_node": len(continued),
            "unfinished_at_kill": sum(s is not ff.RunStatus.COMPLETED for s in before.values()),
        }
    )
