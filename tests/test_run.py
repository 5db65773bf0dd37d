"""Running graphs: outputs, bad calls, idempotent starts and inspection."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import ferroflow as ff
from helpers import node_statuses, wait_until

# -- outputs ---------------------------------------------------------------------------


def test_dependencies_by_name_and_the_run_input(context):
    g = ff.Graph("pipeline")

    @g.task
    def words(input):
        return input["text"].split()

    @g.task
    def count(words):
        return len(words)

    @g.task
    def report(words, count, input):
        return {"first": words[0], "count": count, "user": input["user"]}

    result = g.run({"text": "a quick brown fox", "user": "ann"}, context=context, timeout=5)
    assert result.status is ff.RunStatus.COMPLETED
    assert result.graph == "pipeline"
    assert result.output == {"first": "a", "count": 4, "user": "ann"}
    assert result.waiting == {}
    assert result.failed_node is None and result.error is None
    assert result.run_id in context.run_ids()


def test_explicit_deps_and_after(context):
    g = ff.Graph("explicit")
    order = []

    @g.task
    def producer():
        order.append("producer")
        return 21

    @g.task
    def side_effect():
        order.append("side_effect")
        return None

    @g.task(deps={"value": "producer"}, after=["side_effect"])
    def consumer(value):
        order.append("consumer")
        return value * 2

    assert g.run(None, context=context, timeout=5).output == 42
    assert order[-1] == "consumer"
    assert set(order) == {"producer", "side_effect", "consumer"}


def test_several_sinks_give_a_dict_and_output_picks_one(context):
    g = ff.Graph("sinks")

    @g.task
    def root(input):
        return input

    @g.task
    def left(root):
        return root + 1

    @g.task
    def right(root):
        return root - 1

    assert g.run(10, context=context, timeout=5).output == {"left": 11, "right": 9}

    g2 = ff.Graph("sinks_output", output="root")
    g2.task(name="root")(lambda input: input)
    g2.task(name="left")(lambda root: root + 1)
    assert g2.run(10, context=context, timeout=5).output == 10


def test_ctx_carries_run_node_attempt_and_a_key(context):
    g = ff.Graph("ctx_graph")

    @g.task
    def first(ctx):
        return {"run_id": ctx.run_id, "node": ctx.node, "attempt": ctx.attempt, "key": ctx.idempotency_key}

    @g.task
    def second(first, ctx):
        return [first, {"run_id": ctx.run_id, "node": ctx.node, "attempt": ctx.attempt, "key": ctx.idempotency_key}]

    result = g.run(None, context=context, run_id="ctx-run", timeout=5)
    a, b = result.output
    assert a["run_id"] == b["run_id"] == "ctx-run"
    assert (a["node"], b["node"]) == ("first", "second")
    assert a["attempt"] == b["attempt"] == 1
    assert a["key"] != b["key"]
    assert "ctx-run" in a["key"]


def test_async_and_sync_bodies_mix(context):
    g = ff.Graph("mixed")

    @g.task
    async def fetch(input):
        await asyncio.sleep(0.01)
        return input * 2

    @g.task
    def add(fetch):
        return fetch + 1

    @g.task
    async def finish(add):
        return f"={add}"

    assert g.run(5, context=context, timeout=5).output == "=11"


async def test_arun_returns_the_same_result(context):
    g = ff.Graph("arun_graph")

    @g.task
    def double(input):
        return input * 2

    result = await g.arun(4, context=context, timeout=5)
    assert result.status is ff.RunStatus.COMPLETED
    assert result.output == 8


def test_the_default_context_is_used_without_one():
    g = ff.Graph("default_ctx")
    g.task(name="one")(lambda: 1)
    result = g.run(timeout=5)
    assert result.output == 1
    assert result.run_id in ff.default_context().run_ids()
    assert g.get_run(result.run_id).status is ff.RunStatus.COMPLETED


def test_a_failing_body_raises_run_failed_error(context):
    g = ff.Graph("failing")

    @g.task
    def ok():
        return 1

    @g.task
    def broken(ok):
        raise KeyError("missing-key")

    @g.task
    def after_broken(broken):
        return 2

    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, run_id="fails", timeout=5)
    err = info.value
    assert err.run_id == "fails"
    assert err.node == "broken"
    assert err.error_type == "KeyError"
    assert "missing-key" in err.error_message
    assert "'broken'" in str(err)
    # Inspection of the failed run is possible without raising.
    run = g.get_run("fails", context=context)
    assert run.status is ff.RunStatus.FAILED
    assert run.failed_node == "broken"
    assert run.error is not None and run.error.type == "KeyError"
    nodes = {n.name: n for n in context.nodes("fails")}
    assert nodes["ok"].status == "completed" and nodes["ok"].output == 1
    assert nodes["broken"].status == "failed"
    assert nodes["broken"].error.type == "KeyError"
    assert nodes["after_broken"].status == "pending"


# -- bad calls -------------------------------------------------------------------------


def _simple(name: str = "simple") -> ff.Graph:
    g = ff.Graph(name)
    g.task(name="echo")(lambda input: input)
    return g


@pytest.mark.parametrize("call", ["resume", "cancel", "get_run"])
def test_unknown_run_id(context, call):
    g = _simple()
    with pytest.raises(ff.RunNotFoundError) as info:
        if call == "resume":
            g.resume("no-such-run", 1, context=context, timeout=5)
        else:
            getattr(g, call)("no-such-run", context=context)
    assert info.value.run_id == "no-such-run"
    assert isinstance(info.value, LookupError)


async def test_watch_of_an_unknown_run(context):
    g = _simple()
    with pytest.raises(ff.RunNotFoundError) as info:
        async for _ in g.watch("no-such-run", context=context):
            pass
    assert info.value.run_id == "no-such-run"


def test_nodes_of_an_unknown_run(context):
    with pytest.raises(ff.RunNotFoundError):
        context.nodes("no-such-run")


def test_resume_of_a_completed_run(context):
    g = _simple()
    g.run(1, context=context, run_id="done", timeout=5)
    with pytest.raises(ff.InvalidRunStateError) as info:
        g.resume("done", "value", context=context, timeout=5)
    assert info.value.run_id == "done"
    assert info.value.status == "completed"


def test_cancel_of_a_completed_run(context):
    g = _simple()
    g.run(1, context=context, run_id="done", timeout=5)
    with pytest.raises(ff.InvalidRunStateError) as info:
        g.cancel("done", context=context)
    assert info.value.run_id == "done"
    assert info.value.status == "completed"
    assert g.get_run("done", context=context).status is ff.RunStatus.COMPLETED


def test_cancel_of_a_failed_run(context):
    g = ff.Graph("fails_for_cancel")

    @g.task
    def boom():
        raise RuntimeError("no")

    with pytest.raises(ff.RunFailedError):
        g.run(None, context=context, run_id="failed", timeout=5)
    with pytest.raises(ff.InvalidRunStateError) as info:
        g.cancel("failed", context=context)
    assert info.value.status == "failed"


def test_resume_of_a_running_run(context):
    g = ff.Graph("busy")
    started, release = threading.Event(), threading.Event()

    @g.task
    def slow():
        started.set()
        assert release.wait(5)
        return "done"

    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(result=g.run(None, context=context, run_id="busy-run", timeout=10))
    )
    runner.start()
    try:
        assert started.wait(5)
        with pytest.raises(ff.InvalidRunStateError) as info:
            g.resume("busy-run", "early", context=context, timeout=5)
        assert info.value.run_id == "busy-run"
        assert info.value.status == "running"
    finally:
        release.set()
        runner.join(10)
    assert outcome["result"].output == "done"


def test_non_json_input_in_strict_mode(context):
    g = _simple()
    assert g.strict, "the suite runs with FERROFLOW_STRICT=1"
    for bad in ({1, 2}, (1, 2), object(), {"when": b"bytes"}, {1: "int key"}, float("nan")):
        with pytest.raises(ff.InvalidInputError) as info:
            g.run(bad, context=context, run_id="bad-input", timeout=5)
        assert isinstance(info.value, ValueError)
        assert info.value.run_id == "bad-input"
        assert "input" in str(info.value)
    assert context.run_ids() == [], "a rejected input starts no run"


async def test_non_json_input_in_strict_mode_async(context):
    g = _simple()
    with pytest.raises(ff.InvalidInputError):
        await g.arun({"s": {1}}, context=context, timeout=5)
    with pytest.raises(ff.InvalidInputError):
        async for _ in g.stream({"s": {1}}, context=context):
            pass
    with pytest.raises(ff.InvalidInputError):
        g.map([1, {2}], context=context)
    assert context.run_ids() == []


def test_empty_run_id_is_invalid(context):
    g = _simple()
    with pytest.raises(ff.InvalidInputError):
        g.run(1, context=context, run_id="", timeout=5)


def test_wait_timeout_with_a_slow_sync_body(context):
    g = ff.Graph("slow_sync_wait")

    @g.task
    def slow():
        time.sleep(1.0)
        return "late"

    started = time.monotonic()
    with pytest.raises(ff.WaitTimeoutError) as info:
        g.run(None, context=context, run_id="slow-sync", timeout=0.1)
    assert time.monotonic() - started < 0.8
    assert info.value.run_id == "slow-sync"


def test_wait_timeout_leaves_the_run_going(context):
    g = ff.Graph("slow_wait")
    release = threading.Event()

    @g.task
    async def slow():
        for _ in range(500):
            if release.is_set():
                return "late"
            await asyncio.sleep(0.01)
        return "gave up"

    with pytest.raises(ff.WaitTimeoutError) as info:
        g.run(None, context=context, run_id="slowpoke", timeout=0.2)
    assert info.value.run_id == "slowpoke"
    assert isinstance(info.value, TimeoutError)
    assert g.get_run("slowpoke", context=context).status is ff.RunStatus.RUNNING
    # The run goes on: waiting for it again (without a start) gets its result.
    release.set()
    result = g.run(None, context=context, run_id="slowpoke", timeout=5)
    assert result.output == "late"


async def test_arun_wait_timeout(context):
    g = ff.Graph("slow_await")

    @g.task
    async def slow():
        await asyncio.sleep(10)

    with pytest.raises(ff.WaitTimeoutError):
        await g.arun(None, context=context, run_id="slow-async", timeout=0.1)
    assert g.get_run("slow-async", context=context).status is ff.RunStatus.RUNNING
    g.cancel("slow-async", context=context)
    assert g.get_run("slow-async", context=context).status is ff.RunStatus.CANCELLED


# -- idempotent starts -----------------------------------------------------------------


def test_same_run_id_twice_runs_the_bodies_once(context):
    calls = []
    g = ff.Graph("idempotent")

    @g.task
    def effect(input):
        calls.append(input)
        return input * 10

    first = g.run(1, context=context, run_id="x", timeout=5)
    second = g.run(1, context=context, run_id="x", timeout=5)
    assert calls == [1]
    assert first.run_id == second.run_id == "x"
    assert first.output == second.output == 10
    assert context.run_ids().count("x") == 1


async def test_same_run_id_twice_async(context):
    calls = []
    g = ff.Graph("idempotent_async")

    @g.task
    async def effect(input):
        calls.append(input)
        return input + 1

    first, second = await asyncio.gather(
        g.arun(1, context=context, run_id="y", timeout=5), g.arun(1, context=context, run_id="y", timeout=5)
    )
    assert calls == [1]
    assert first.output == second.output == 2


def test_same_run_id_with_another_graph_conflicts(context):
    g1 = _simple("first_graph")
    g2 = _simple("second_graph")
    g1.run(1, context=context, run_id="shared", timeout=5)
    with pytest.raises(ff.RunIdConflictError) as info:
        g2.run(1, context=context, run_id="shared", timeout=5)
    assert info.value.run_id == "shared"
    assert "first_graph" in str(info.value)


def test_same_run_id_with_a_changed_graph_of_the_same_name_conflicts(context):
    g1 = _simple("evolving")
    g2 = ff.Graph("evolving")
    g2.task(name="echo", retry=ff.Retry(attempts=2))(lambda input: input)
    assert g1.version != g2.version
    g1.run(1, context=context, run_id="v1", timeout=5)
    with pytest.raises(ff.RunIdConflictError):
        g2.run(1, context=context, run_id="v1", timeout=5)


def test_contexts_are_isolated():
    g = _simple()
    c1, c2 = ff.InMemory(), ff.InMemory()
    g.run(1, context=c1, run_id="only-here", timeout=5)
    assert "only-here" in c1.run_ids()
    assert "only-here" not in c2.run_ids()
    with pytest.raises(ff.RunNotFoundError):
        g.get_run("only-here", context=c2)


def test_run_ids_are_oldest_first(context):
    g = _simple()
    ids = [g.run(i, context=context, timeout=5).run_id for i in range(3)]
    assert context.run_ids() == ids


def test_retain_finished_bounds_what_is_kept():
    context = ff.InMemory(retain_finished=2)
    g = _simple()
    for i in range(4):
        g.run(i, context=context, run_id=f"r{i}", timeout=5)
    # A finished run is retired just after its waiters wake, so allow a moment.
    wait_until(lambda: len(context.run_ids()) == 2, timeout=2, what="old runs to be forgotten")
    assert "r3" in context.run_ids()
    forgotten = sorted({"r0", "r1", "r2"} - set(context.run_ids()))
    assert len(forgotten) == 2
    with pytest.raises(ff.RunNotFoundError) as info:
        g.get_run(forgotten[0], context=context)
    assert info.value.run_id == forgotten[0]


def test_retain_finished_keeps_the_newest_runs():
    # Retention follows the order runs finished in, whichever thread records it first. The
    # race this guards against showed up about once in 300 sequences, hence the repetitions.
    g = _simple()
    for _ in range(50):
        context = ff.InMemory(retain_finished=2)
        for i in range(4):
            g.run(i, context=context, run_id=f"r{i}", timeout=5)
        wait_until(lambda context=context: len(context.run_ids()) == 2, timeout=2, what="old runs to be forgotten")
        assert context.run_ids() == ["r2", "r3"]


# -- inspection ------------------------------------------------------------------------


def test_nodes_report_statuses_and_attempts(context):
    g = ff.Graph("inspect")
    tries = []

    @g.task
    def load(input):
        return input

    @g.branch
    def route(load):
        return "a"

    @g.task(when={"route": "a"}, retry=ff.Retry(attempts=3, backoff=0.01, jitter=0))
    def path_a(load, ctx):
        tries.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("flaky")
        return "A"

    @g.task(when={"route": "b"})
    def path_b(load):
        return "B"

    @g.human
    def review(path_a, path_b):
        return {"show": [path_a, path_b]}

    @g.task
    def done(review):
        return review

    result = g.run("in", context=context, run_id="inspected", timeout=5)
    assert result.status is ff.RunStatus.WAITING
    assert result.waiting == {"review": {"show": ["A", None]}}
    nodes = {n.name: n for n in context.nodes("inspected")}
    assert list(nodes) == ["load", "route", "path_a", "path_b", "review", "done"]
    assert {k: n.status for k, n in nodes.items()} == {
        "load": "completed",
        "route": "completed",
        "path_a": "completed",
        "path_b": "skipped",
        "review": "waiting",
        "done": "pending",
    }
    assert {k: n.kind for k, n in nodes.items()} == {
        "load": "task",
        "route": "branch",
        "path_a": "task",
        "path_b": "task",
        "review": "human",
        "done": "task",
    }
    assert tries == [1, 2, 3]
    assert nodes["path_a"].attempts == 3
    assert nodes["load"].attempts == 1
    assert nodes["path_b"].attempts == 0
    assert nodes["path_a"].output == "A"
    assert nodes["route"].output == "a"

    final = g.resume("inspected", "ok", context=context, timeout=5)
    assert final.output == "ok"
    assert node_statuses(context, "inspected") == {
        "load": "completed",
        "route": "completed",
        "path_a": "completed",
        "path_b": "skipped",
        "review": "completed",
        "done": "completed",
    }
