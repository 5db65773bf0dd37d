"""Human steps: the run waits with a payload; resume continues it with a value."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import ferroflow as ff
from ferroflow import events as ev
from helpers import collect, find, node_statuses


def approval_graph(name: str = "approval") -> ff.Graph:
    g = ff.Graph(name)

    @g.task
    def draft(input):
        return f"draft for {input}"

    @g.human
    def review(draft, ctx):
        return {"text": draft, "asked_by": ctx.node}

    @g.task
    def publish(review, draft):
        return {"published": draft if review["ok"] else None, "note": review.get("note")}

    return g


def test_run_waits_then_resume_completes(context):
    g = approval_graph()
    waiting = g.run("post-1", context=context, run_id="h1", timeout=5)
    assert waiting.status is ff.RunStatus.WAITING
    assert waiting.waiting == {"review": {"text": "draft for post-1", "asked_by": "review"}}
    assert g.get_run("h1", context=context).status is ff.RunStatus.WAITING

    done = g.resume("h1", {"ok": True, "note": "lgtm"}, context=context, timeout=5)
    assert done.status is ff.RunStatus.COMPLETED
    assert done.output == {"published": "draft for post-1", "note": "lgtm"}
    assert done.waiting == {}
    review = {n.name: n for n in context.nodes("h1")}["review"]
    assert review.status == "completed"
    assert review.output == {"ok": True, "note": "lgtm"}, "the resume value is the node's output"


async def test_arun_and_aresume(context):
    g = approval_graph("approval_async")
    waiting = await g.arun("post-2", context=context, timeout=5)
    assert waiting.status is ff.RunStatus.WAITING
    done = await g.aresume(waiting.run_id, {"ok": False}, context=context, timeout=5)
    assert done.output == {"published": None, "note": None}


def test_starting_a_waiting_run_again_returns_it_waiting(context):
    g = approval_graph("approval_again")
    g.run("x", context=context, run_id="again", timeout=5)
    again = g.run("x", context=context, run_id="again", timeout=5)
    assert again.status is ff.RunStatus.WAITING
    assert "review" in again.waiting


def test_async_human_body(context):
    g = ff.Graph("async_human")

    @g.human
    async def ask(input):
        await asyncio.sleep(0.01)
        return {"question": input}

    @g.task
    def answer(ask):
        return ask.upper()

    waiting = g.run("why?", context=context, timeout=5)
    assert waiting.waiting == {"ask": {"question": "why?"}}
    assert g.resume(waiting.run_id, "because", context=context, timeout=5).output == "BECAUSE"


def test_human_output_as_run_output(context):
    g = ff.Graph("human_sink")

    @g.human
    def confirm():
        return "sure?"

    waiting = g.run(None, context=context, timeout=5)
    assert waiting.waiting == {"confirm": "sure?"}
    assert g.resume(waiting.run_id, [1, 2, 3], context=context, timeout=5).output == [1, 2, 3]


def two_questions() -> ff.Graph:
    g = ff.Graph("two_questions")

    @g.human
    def legal():
        return "legal ok?"

    @g.human
    def finance():
        return "budget ok?"

    @g.task
    def decide(legal, finance):
        return legal and finance

    return g


def test_several_waiting_nodes_need_a_node_name(context):
    g = two_questions()
    waiting = g.run(None, context=context, run_id="two", timeout=5)
    assert waiting.waiting == {"legal": "legal ok?", "finance": "budget ok?"}

    with pytest.raises(ff.InvalidRunStateError) as info:
        g.resume("two", True, context=context, timeout=5)
    assert info.value.run_id == "two"
    assert "legal" in str(info.value) and "finance" in str(info.value)

    with pytest.raises(ff.InvalidRunStateError) as info:
        g.resume("two", True, node="decide", context=context, timeout=5)
    assert info.value.node == "decide"

    partly = g.resume("two", True, node="legal", context=context, timeout=5)
    assert partly.status is ff.RunStatus.WAITING
    assert partly.waiting == {"finance": "budget ok?"}
    assert node_statuses(context, "two") == {"legal": "completed", "finance": "waiting", "decide": "pending"}

    # With one node left waiting, the name may be left out.
    done = g.resume("two", False, context=context, timeout=5)
    assert done.status is ff.RunStatus.COMPLETED
    assert done.output is False


def test_resume_value_must_be_json_in_strict_mode(context):
    g = approval_graph("approval_strict")
    g.run("p", context=context, run_id="strict-resume", timeout=5)
    with pytest.raises(ff.InvalidInputError) as info:
        g.resume("strict-resume", {"ok": {True}}, context=context, timeout=5)
    assert info.value.run_id == "strict-resume"
    assert "resume value" in str(info.value)
    # The refused value changed nothing: the run still waits.
    assert g.get_run("strict-resume", context=context).status is ff.RunStatus.WAITING
    assert g.resume("strict-resume", {"ok": True}, context=context, timeout=5).status is ff.RunStatus.COMPLETED


async def test_human_step_on_a_skipped_path_does_not_wait(context):
    g = ff.Graph("maybe_ask")

    @g.branch(labels=["ask", "auto"])
    def policy(input):
        return "ask" if input > 100 else "auto"

    @g.human(when={"policy": "ask"})
    def approve(input):
        return {"amount": input}

    @g.task
    def pay(approve, policy, input):
        # policy is a plain (unlabelled) dependency: it keeps pay active when approve is skipped.
        return {"paid": input, "approved_by": approve}

    auto = await g.arun(50, context=context, timeout=5)
    assert auto.status is ff.RunStatus.COMPLETED
    assert auto.output == {"paid": 50, "approved_by": None}

    asked = await g.arun(500, context=context, timeout=5)
    assert asked.status is ff.RunStatus.WAITING
    done = await g.aresume(asked.run_id, "alice", context=context, timeout=5)
    assert done.output == {"paid": 500, "approved_by": "alice"}


async def test_stream_ends_at_interrupt_and_watch_continues_after_resume(context):
    g = approval_graph("approval_stream")
    first_leg = await collect(g.stream("s", context=context, run_id="hs"))
    assert isinstance(first_leg[-1], ev.Interrupted)
    assert first_leg[-1].payload == {"text": "draft for s", "asked_by": "review"}
    assert first_leg[-1].attempt == 1

    # Watching a waiting run (settle mode) replays its events and stops at the pause.
    replay = await collect(g.watch("hs", context=context))
    journal = [e for e in first_leg if not isinstance(e, ev.NodeStarted)]
    assert [(type(e), e.seq) for e in replay] == [(type(e), e.seq) for e in journal]

    await g.aresume("hs", {"ok": True}, context=context, timeout=5)
    history = await collect(g.watch("hs", context=context))
    assert [type(e) for e in history[len(journal) :]] == [ev.Resumed, ev.NodeCompleted, ev.RunFinished]
    assert find(history, ev.Resumed, node="review", value={"ok": True})


def test_resume_of_a_failed_run_is_an_invalid_state(context):
    g = ff.Graph("fails_while_waiting")
    waiting = threading.Event()

    @g.human
    def ask():
        waiting.set()
        return "?"

    @g.task
    def boom():
        assert waiting.wait(5)
        time.sleep(0.02)
        raise ValueError("broken")

    with pytest.raises(ff.RunFailedError):
        g.run(None, context=context, run_id="failed-waiting", timeout=5)
    with pytest.raises(ff.InvalidRunStateError) as info:
        g.resume("failed-waiting", "answer", context=context, timeout=5)
    assert info.value.status == "failed"


async def test_aresume_right_after_the_interrupt_waits_for_the_run(context):
    # Resuming as soon as the stream shows Interrupted races the engine publishing
    # "waiting"; aresume must still wait until the run settles again.
    g = ff.Graph("quick_resume")

    @g.human
    async def ask():
        return "?"

    @g.task
    async def after(ask):
        await asyncio.sleep(0.005)
        return ask

    for i in range(20):
        events = await collect(g.stream(None, context=context, run_id=f"quick-{i}"))
        assert isinstance(events[-1], ev.Interrupted)
        result = await g.aresume(f"quick-{i}", i, context=context, timeout=5)
        assert result.status is ff.RunStatus.COMPLETED, f"iteration {i}: {result}"
        assert result.output == i
