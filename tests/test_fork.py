"""Forking a run at a node: a new run with the parent's outputs before the node, then the node
(or a given output for it) and what depends on it; the parent is left as it is. In every
context, and from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any, Dict

import pytest

import ferroflow as ff
from ferroflow import events as ev

APP = """\
import os

import ferroflow as ff

g = ff.Graph("fork_support")


def log(what):
    with open(os.environ["BODY_LOG"], "a") as f:
        f.write(what + "\\n")


@g.task
def prep(input):
    log("prep")
    return f"ticket: {input}"


@g.branch(labels=["billing", "tech"])
def classify(prep):
    log("classify")
    return "tech"


@g.task(when={"classify": "billing"})
def billing(prep):
    log("billing")
    return f"refund for {prep}"


@g.task(when={"classify": "tech"})
def tech(prep):
    log("tech")
    return f"reboot for {prep}"


@g.task
def reply(billing, tech):
    log("reply")
    return billing or tech
"""


def support(calls: Counter) -> ff.Graph:
    g = ff.Graph("fork_support")

    @g.task
    def prep(input):
        calls["prep"] += 1
        return f"ticket: {input}"

    @g.branch(labels=["billing", "tech"])
    def classify(prep):
        calls["classify"] += 1
        return "tech"

    @g.task(when={"classify": "billing"})
    def billing(prep):
        calls["billing"] += 1
        return f"refund for {prep}"

    @g.task(when={"classify": "tech"})
    def tech(prep):
        calls["tech"] += 1
        return f"reboot for {prep}"

    @g.task
    def reply(billing, tech):
        calls["reply"] += 1
        return billing or tech

    return g


def statuses(context: Any, run_id: str) -> Dict[str, str]:
    return {n.name: n.status for n in context.nodes(run_id)}


def test_a_fork_with_another_output_runs_only_what_depends_on_it_and_leaves_the_parent(context):
    calls: Counter = Counter()
    g = support(calls)
    parent = g.run("printer on fire", context=context, run_id="parent")
    assert parent.output == "reboot for ticket: printer on fire"
    parent_journal = [type(e).__name__ for e in context.journal("parent")]

    fork = g.fork("parent", at="classify", output="billing", new_run_id="what-if", context=context, by="qa", timeout=10)
    assert fork.run_id == "what-if" and fork.status is ff.RunStatus.COMPLETED
    assert fork.output == "refund for ticket: printer on fire"
    assert calls == Counter({"prep": 1, "classify": 1, "tech": 1, "billing": 1, "reply": 2})
    assert statuses(context, "what-if") == {
        "prep": "completed",
        "classify": "completed",
        "billing": "completed",
        "tech": "skipped",
        "reply": "completed",
    }
    forked = context.journal("what-if")
    assert isinstance(forked[1], ev.RunForked)
    assert (forked[1].parent, forked[1].node, forked[1].by) == ("parent", "classify", "qa")
    # The parent is as it was.
    assert [type(e).__name__ for e in context.journal("parent")] == parent_journal
    assert g.get_run("parent", context=context).output == "reboot for ticket: printer on fire"
    assert statuses(context, "parent")["billing"] == "skipped"


def test_a_fork_without_an_output_runs_the_node_again_and_a_new_input_keeps_what_came_before(context):
    calls: Counter = Counter()
    g = support(calls)
    g.run("disk full", context=context, run_id="p")
    again = g.fork("p", at="classify", input="something else", context=context)
    assert again.run_id != "p"
    assert again.output == "reboot for ticket: disk full", "prep kept the parent's output"
    assert calls["classify"] == 2 and calls["prep"] == 1
    whole = g.fork("p", at="prep", input="new ticket", context=context)
    assert whole.output == "reboot for ticket: new ticket"
    assert calls["prep"] == 2


def test_a_fork_that_cannot_be_made_is_refused_naming_why(context):
    g = support(Counter())
    g.run("x", context=context, run_id="p2")
    with pytest.raises(ff.InvalidInputError, match="no node 'nosuch'"):
        g.fork("p2", at="nosuch", context=context)
    with pytest.raises(ff.InvalidInputError, match="exists in this context already"):
        g.fork("p2", at="prep", new_run_id="p2", context=context)
    with pytest.raises(ff.RunNotFoundError):
        g.fork("nobody", at="prep", context=context)
    other = ff.Graph("other_graph")

    @other.task
    def prep(input):
        return input

    with pytest.raises(ff.InvalidInputError, match="is of graph 'fork_support'"):
        other.fork("p2", at="prep", context=context)
    assert [r.run_id for r in context.runs(limit=10)] == ["p2"], "a refused fork wrote nothing"


def test_the_command_line_forks_a_run(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), BODY_LOG=str(tmp_path / "bodies.log"))
    db = str(tmp_path / "runs.db")

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ferroflow.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)

    script = f"import app, ferroflow as ff; app.g.run('wifi down', context=ff.Sqlite({db!r}), run_id='t1')"
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, timeout=60)
    done = cli("runs", "fork", "t1", "--at", "classify", "--output", '"billing"', "--graph", "app:g", "--context", db)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed" and result["parent"] == "t1"
    assert result["output"] == "refund for ticket: wifi down"
    assert Counter((tmp_path / "bodies.log").read_text().split()) == Counter(
        {"prep": 1, "classify": 1, "tech": 1, "billing": 1, "reply": 2}
    )
    bad = cli("runs", "fork", "t1", "--at", "classify", "--output", "{", "--graph", "app:g", "--context", db)
    assert bad.returncode == 2 and "--output is not JSON" in bad.stderr and "Traceback" not in bad.stderr
