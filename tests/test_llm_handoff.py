"""One journal for LLM nodes in both languages: a run whose LLM node made its model call in
Rust and crashed continues in Python without calling the model again, and the other way
round. The Rust side is the crate's `llm_handoff` example (a tool loop written with
`ferroflow::llm::steps`), the Python side an `@g.llm` node with a tool; both talk to the
mock OpenAI server and keep the run in the same SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import cargo_artifacts
import ferroflow as ff
from ferroflow.testing import MockLLMServer, ToolCall

PROMPT = "Where is my order A100?"
ANSWER = "Order A100 is shipped."

# The Python side of the graph, importable by a child process; LLM_HANDOFF_CRASH_IN_TOOL
# makes the tool end the process, as a crash would, after the model's first reply was recorded.
APP = '''
import os
import ferroflow as ff

def lookup(order: str) -> dict:
    """Looks an order up."""
    if os.environ.get("LLM_HANDOFF_CRASH_IN_TOOL"):
        os._exit(3)
    return {"order": order, "status": "shipped"}

def build(base_url):
    g = ff.Graph("llm_handoff")
    provider = ff.NativeOpenAIProvider(base_url=base_url, api_key="test", timeout=10.0)

    @g.llm(provider=provider, model="mock-model", tools=[lookup])
    def ask(input):
        return input

    return g
'''

CRASH_IN_PYTHON = """
import sys
import ferroflow as ff
from handoff_app import build

build(sys.argv[1]).run(sys.argv[3], context=ff.Sqlite(sys.argv[2]), run_id="r1")
"""


def reply(body):
    """The mock model: asks for the tool first, then answers from the tool's result."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        found = json.loads(last["content"])
        return f"Order {found['order']} is {found['status']}."
    return ToolCall("lookup", {"order": "A100"})


@pytest.fixture
def app(tmp_path, monkeypatch):
    (tmp_path / "handoff_app.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("handoff_app", None)
    import handoff_app

    return handoff_app


def rust(server, *args, crash=False):
    env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="test", LLM_HANDOFF_MODEL="mock-model")
    env.pop("LLM_HANDOFF_CRASH_IN_TOOL", None)
    if crash:
        env["LLM_HANDOFF_CRASH_IN_TOOL"] = "1"
    return subprocess.run(
        [str(cargo_artifacts.example("llm_handoff")), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def recorded_keys(db):
    with ff.Sqlite(str(db)) as ctx:
        return [e.key for e in ctx.journal("r1") if isinstance(e, ff.events.StepRecorded)]


def test_a_model_call_recorded_in_rust_is_replayed_in_python(tmp_path, app):
    db = tmp_path / "runs.db"
    with MockLLMServer(reply=reply) as server:
        crashed = rust(server, db, "r1", PROMPT, crash=True)
        assert crashed.returncode == 3, crashed.stderr
        assert server.request_count == 1
        assert recorded_keys(db) == ["llm/0"]

        with ff.Sqlite(str(db)) as ctx:
            result = app.build(server.base_url).resume("r1", context=ctx, timeout=30)
        assert result.status is ff.RunStatus.COMPLETED, result
        assert result.output["text"] == ANSWER
        # Python asked only for the second reply: the first came from Rust's journal.
        assert server.request_count == 2
    assert recorded_keys(db) == ["llm/0", "tool/0/0", "llm/1"]


def test_a_model_call_recorded_in_python_is_replayed_in_rust(tmp_path, app):
    db = tmp_path / "runs.db"
    with MockLLMServer(reply=reply) as server:
        env = dict(os.environ, LLM_HANDOFF_CRASH_IN_TOOL="1", PYTHONPATH=str(tmp_path))
        crashed = subprocess.run(
            [sys.executable, "-c", CRASH_IN_PYTHON, server.base_url, str(db), PROMPT],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert crashed.returncode == 3, crashed.stderr
        assert server.request_count == 1
        assert recorded_keys(db) == ["llm/0"]

        continued = rust(server, db, "r1")
        assert continued.returncode == 0, continued.stderr
        done = json.loads(continued.stdout)
        assert done["status"] == "completed", done
        assert done["output"]["text"] == ANSWER
        assert done["version"] == app.build(server.base_url).version, "the two graphs are not the same graph"
        assert server.request_count == 2
    assert recorded_keys(db) == ["llm/0", "tool/0/0", "llm/1"]
