"""Replaying a durable run locally: the graph's code runs again in memory over a recorded
run, with its model calls (through the real ``openai`` client, against the mock server), tool
calls, steps and a person's answer served from the journal. Nothing is called (requests are
counted at the server), and the first node whose output differs is reported when the code
changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any, Iterator

import pytest

import ferroflow as ff
from ferroflow.testing import MockLLMServer

APP = """\
import os

import ferroflow as ff

provider = ff.OpenAIProvider(base_url=os.environ["MOCK_URL"], api_key="test-key", max_retries=0, timeout=10.0)
SHOUT = bool(os.environ.get("SHOUT"))
LOOKUP = bool(os.environ.get("LOOKUP"))


@ff.tool
def order_status(order: str) -> str:
    '''The status of an order.'''
    with open(os.environ["TOOL_LOG"], "a") as f:
        f.write(order + "\\n")
    return f"order {order} shipped"


g = ff.Graph("replayed_support")


@g.task
def prep(input, ctx):
    note = ctx.step("lookup", lambda: "looked up") if LOOKUP else "none"
    return {"ticket": input, "note": note}


@g.llm(provider=provider, model="gpt-4o-mini", tools=[order_status])
def answer(prep):
    return f"Where is order {prep['ticket']}? Use the tool."


@g.human
def review(answer):
    return {"draft": answer["text"]}


@g.task
def final(answer, review):
    text = answer["text"].upper() if SHOUT else answer["text"]
    return {"reply": text, "approved": review}
"""


def reply(request: Any) -> Any:
    from ferroflow.testing import ToolCall

    asked = [m for m in request["messages"] if m.get("role") == "tool"]
    if not asked:
        return ToolCall("order_status", {"order": "A17"})
    return f"It says: {json.loads(asked[-1]['content'])}"  # a tool's result goes back as JSON


@pytest.fixture
def recorded(tmp_path, monkeypatch) -> Iterator[Any]:
    """A run of the app on a SQLite file, through the model, its tool and a person's answer;
    then the app module (as a test would import it) and the server, its requests counted."""
    server = MockLLMServer(api_key="test-key", reply=reply).start()
    env = {"MOCK_URL": server.base_url, "TOOL_LOG": str(tmp_path / "tools.log")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "app.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("app", None)
    import app

    db = ff.Sqlite(tmp_path / "runs.db")
    waiting = app.g.run("A17", context=db, run_id="ticket-1", timeout=20)
    assert waiting.status is ff.RunStatus.WAITING
    done = app.g.resume("ticket-1", "lgtm", context=db, timeout=20)
    assert done.output == {"reply": "It says: order A17 shipped", "approved": "lgtm"}
    assert server.request_count == 2
    yield app, db, server, tmp_path, dict(os.environ, **env, PYTHONPATH=str(tmp_path))
    app.provider.close()
    db.close()
    server.stop()
    sys.modules.pop("app", None)


def test_a_replay_of_the_same_code_calls_nothing_and_does_not_diverge(recorded):
    app, db, server, tmp_path, _ = recorded
    tools = (tmp_path / "tools.log").read_text()
    replay = app.g.replay("ticket-1", source=db, timeout=20)
    assert replay.divergence is None
    assert replay.result.status is ff.RunStatus.COMPLETED
    assert replay.result.output == {"reply": "It says: order A17 shipped", "approved": "lgtm"}
    assert replay.result.run_id != "ticket-1"
    assert server.request_count == 2, "the replay called the model"
    assert (tmp_path / "tools.log").read_text() == tools, "the replay called the tool"
    # The recorded run is left as it is.
    assert [type(e).__name__ for e in db.journal("ticket-1")][-1] == "RunFinished"
    assert app.g.get_run("ticket-1", context=db).output == replay.result.output


def test_changed_code_is_reported_at_the_first_node_whose_output_differs(recorded, monkeypatch):
    app, db, server, _, _ = recorded
    monkeypatch.setattr(app, "SHOUT", True)
    replay = app.g.replay("ticket-1", source=db, timeout=20)
    divergence = replay.divergence
    assert divergence is not None
    assert (divergence.node, divergence.item, divergence.why) == ("final", None, "returned another output")
    assert divergence.recorded == {"reply": "It says: order A17 shipped", "approved": "lgtm"}
    assert divergence.replayed == {"reply": "IT SAYS: ORDER A17 SHIPPED", "approved": "lgtm"}
    assert server.request_count == 2


def test_a_step_the_recording_lacks_is_refused_not_taken(recorded, monkeypatch):
    app, db, server, _, _ = recorded
    monkeypatch.setattr(app, "LOOKUP", True)
    replay = app.g.replay("ticket-1", source=db, timeout=20)
    assert replay.result.status is ff.RunStatus.FAILED
    divergence = replay.divergence
    assert divergence is not None and divergence.node == "prep"
    assert "StepNotRecordedError" in divergence.why and "'lookup'" in divergence.why
    assert server.request_count == 2


def test_the_command_line_replays_and_says_where_it_diverges(recorded):
    _, _, server, tmp_path, env = recorded

    def replay(*options: str, **extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ferroflow.cli", "runs", "replay", "ticket-1", "--graph", "app:g", *options]
        command += ["--context", str(tmp_path / "runs.db")]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=dict(env, **extra), cwd=tmp_path)

    same = replay()
    assert same.returncode == 0, same.stderr
    assert "the replay gives every recorded output" in same.stdout and "nothing was called" in same.stdout
    changed = replay(SHOUT="1")
    assert changed.returncode == 1, changed.stderr
    assert "diverges at node 'final': returned another output" in changed.stdout
    assert "IT SAYS" in changed.stdout
    assert server.request_count == 2
    assert Counter((tmp_path / "tools.log").read_text().split()) == Counter({"A17": 1})
    found = json.loads(replay("--json", SHOUT="1").stdout)
    assert found["divergence"]["node"] == "final" and found["replay"]["status"] == "completed"
