"""Branches (labelled edges, skipping and its propagation) and map (``each``) nodes."""

from __future__ import annotations

import asyncio

import pytest

import ferroflow as ff
from ferroflow import events as ev
from helpers import collect, find, first, node_statuses


def router(name: str = "router", *, labels=None) -> ff.Graph:
    g = ff.Graph(name)

    @g.branch(labels=labels)
    def route(input):
        return input

    @g.task(when={"route": "a"})
    def on_a():
        return "A"

    @g.task(when={"route": "b"})
    def on_b():
        return "B"

    @g.task(when={"route": ["b", "c"]})
    def on_b_or_c():
        return "BC"

    @g.task
    def after_b(on_b):
        return f"after {on_b}"

    @g.task
    def join(on_a, on_b, on_b_or_c, after_b):
        return [on_a, on_b, on_b_or_c, after_b]

    return g


@pytest.mark.parametrize(
    ("label", "expected", "skipped"),
    [
        ("a", ["A", None, None, None], {"on_b", "on_b_or_c", "after_b"}),
        ("b", [None, "B", "BC", "after B"], {"on_a"}),
        ("c", [None, None, "BC", None], {"on_a", "on_b", "after_b"}),
        (["a", "c"], ["A", None, "BC", None], {"on_b", "after_b"}),
    ],
)
def test_branch_runs_the_labelled_path_and_skips_the_rest(context, label, expected, skipped):
    g = router()
    result = g.run(label, context=context, timeout=5)
    # Skipped dependencies arrive as None; skipping propagates to after_b.
    assert result.output == expected
    statuses = node_statuses(context, result.run_id)
    assert {n for n, s in statuses.items() if s == "skipped"} == skipped
    assert statuses["join"] == "completed"


def test_unknown_label_fails_the_branch(context):
    g = router()
    with pytest.raises(ff.RunFailedError) as info:
        g.run("z", context=context, timeout=5)
    assert info.value.node == "route"
    assert info.value.error_type == "InvalidBranchOutput"
    assert "'z'" in info.value.error_message


def test_non_label_output_fails_the_branch(context):
    g = router()
    with pytest.raises(ff.RunFailedError) as info:
        g.run(42, context=context, timeout=5)
    assert info.value.node == "route"
    assert info.value.error_type == "InvalidBranchOutput"
    assert "must return a label" in info.value.error_message


def test_declared_label_without_edges_runs_no_labelled_node(context):
    g = router("declared", labels=["a", "b", "c", "none"])
    result = g.run("none", context=context, timeout=5)
    # Nothing upstream of join is active, so join is skipped too, and so is the output.
    assert result.status is ff.RunStatus.COMPLETED
    assert result.output is None
    statuses = node_statuses(context, result.run_id)
    assert statuses == {
        "route": "completed",
        "on_a": "skipped",
        "on_b": "skipped",
        "on_b_or_c": "skipped",
        "after_b": "skipped",
        "join": "skipped",
    }


def test_everything_skipped_downstream_skips_the_sink(context):
    g = ff.Graph("all_skipped")

    @g.branch(labels=["open", "closed"])
    def gate(input):
        return "open" if input else "closed"

    @g.task(when={"gate": "open"})
    def work():
        return "worked"

    @g.task
    def report(work):
        return work

    result = g.run(False, context=context, timeout=5)
    assert result.status is ff.RunStatus.COMPLETED
    assert result.output is None
    assert node_statuses(context, result.run_id) == {"gate": "completed", "work": "skipped", "report": "skipped"}
    assert g.run(True, context=context, timeout=5).output == "worked"


def test_gated_node_with_a_plain_input_follows_its_branch(context):
    g = ff.Graph("gated_with_data")

    @g.task
    def data():
        return 7

    @g.branch(labels=["go", "stop"])
    def gate(input):
        return input

    @g.task(when={"gate": "go"})
    def use(data):
        return data * 2

    assert g.run("go", context=context, timeout=5).output == 14
    skipped_run = g.run("stop", context=context, timeout=5)
    assert skipped_run.output is None
    assert node_statuses(context, skipped_run.run_id)["use"] == "skipped"


async def test_skipped_nodes_are_reported_as_events(context):
    g = router("router_events")
    events = await collect(g.stream("a", context=context, until_finished=True))
    skipped = {events[i].node for i in find(events, ev.NodeSkipped)}
    assert skipped == {"on_b", "on_b_or_c", "after_b"}
    assert first(events, ev.NodeCompleted, node="route") < min(find(events, ev.NodeSkipped))
    assert isinstance(events[-1], ev.RunFinished)


# -- map -------------------------------------------------------------------------------


def test_each_runs_once_per_item_in_order(context):
    g = ff.Graph("mapper")

    @g.task
    def numbers(input):
        return list(range(input))

    @g.each(over="numbers")
    async def slow_square(item, ctx):
        # Later items finish first: the output must still follow input order.
        await asyncio.sleep(0.002 * (10 - item))
        return {"item": item, "square": item * item, "index": ctx.item}

    @g.task
    def total(slow_square):
        return [r["square"] for r in slow_square]

    result = g.run(10, context=context, timeout=5)
    assert result.output == [i * i for i in range(10)]
    node = {n.name: n for n in context.nodes(result.run_id)}["slow_square"]
    assert node.kind == "map"
    assert node.output == [{"item": i, "square": i * i, "index": i} for i in range(10)]


def test_each_over_an_empty_list(context):
    g = ff.Graph("empty_map")
    calls = []

    @g.task
    def nothing():
        return []

    @g.each(over="nothing")
    def per(item):
        calls.append(item)
        return item

    assert g.run(None, context=context, timeout=5).output == []
    assert calls == []


def test_each_body_also_receives_other_dependencies(context):
    g = ff.Graph("map_with_deps")

    @g.task
    def factor(input):
        return input["factor"]

    @g.task
    def values(input):
        return input["values"]

    @g.each(over="values")
    def scale(item, factor, input):
        return item * factor + input["offset"]

    assert g.run({"factor": 3, "values": [1, 2, 3], "offset": 1}, context=context, timeout=5).output == [4, 7, 10]


def test_each_element_gets_its_own_retries(context):
    g = ff.Graph("map_retries")
    seen = []

    @g.task
    def items():
        return ["a", "b", "c", "d"]

    @g.each(over="items", retry=ff.Retry(attempts=3, backoff=0.01, jitter=0))
    def flaky(item, ctx):
        seen.append((ctx.item, ctx.attempt))
        # Element i fails on its first i attempts (at most 2).
        if ctx.attempt <= min(ctx.item, 2):
            raise ConnectionError(f"element {ctx.item} attempt {ctx.attempt}")
        return f"{item}@{ctx.attempt}"

    result = g.run(None, context=context, timeout=5)
    assert result.output == ["a@1", "b@2", "c@3", "d@3"]
    by_item = {}
    for index, attempt in seen:
        by_item.setdefault(index, []).append(attempt)
    assert by_item == {0: [1], 1: [1, 2], 2: [1, 2, 3], 3: [1, 2, 3]}
    # The node reports the most attempts any element needed.
    assert {n.name: n.attempts for n in context.nodes(result.run_id)}["flaky"] == 3


async def test_map_events_carry_the_item(context):
    g = ff.Graph("map_events")

    @g.task
    def items():
        return [10, 20]

    @g.each(over="items", retry=ff.Retry(attempts=2, backoff=0.01, jitter=0))
    def per(item, ctx):
        if item == 20 and ctx.attempt == 1:
            raise ValueError("once")
        return item + 1

    events = await collect(g.stream(None, context=context, until_finished=True))
    assert find(events, ev.NodeFailed, node="per", item=1, attempt=1)
    assert find(events, ev.NodeFailed, node="per", item=0) == []
    assert first(events, ev.NodeFailed, node="per", item=1) < first(
        events, ev.NodeStarted, node="per", item=1, attempt=2
    )
    completed = {events[i].item: events[i].output for i in find(events, ev.NodeCompleted, node="per")}
    assert completed == {0: 11, 1: 21}
    assert events[-1].output == [11, 21]


def test_a_failing_element_fails_the_run_naming_it(context):
    g = ff.Graph("map_fail")

    @g.task
    def items():
        return [1, 2, 0, 4]

    @g.each(over="items")
    def invert(item):
        return 1 / item

    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, timeout=5)
    assert info.value.node == "invert"
    assert info.value.error_type == "ZeroDivisionError"
    assert "element 2" in str(info.value)


def test_map_over_a_skipped_node_is_skipped(context):
    g = ff.Graph("map_skipped")
    calls = []

    @g.branch(labels=["yes", "no"])
    def gate():
        return "no"

    @g.task(when={"gate": "yes"})
    def items():
        return [1]

    @g.each(over="items")
    def per(item):
        calls.append(item)
        return item

    result = g.run(None, context=context, timeout=5)
    assert result.status is ff.RunStatus.COMPLETED
    assert result.output is None
    assert node_statuses(context, result.run_id) == {"gate": "completed", "items": "skipped", "per": "skipped"}
    assert calls == []
