"""Values: Python objects in memory mode; strict mode checks they are plain JSON data."""

from __future__ import annotations

import datetime
import decimal

import pytest

import ferroflow as ff


class Document:
    def __init__(self, text: str) -> None:
        self.text = text


def test_suite_runs_in_strict_mode():
    assert ff.Graph("env").strict is True
    assert ff.Graph("off", strict=False).strict is False


# -- non-strict: objects pass through untouched ----------------------------------------


@pytest.mark.memory_only  # durable contexts store values as JSON
def test_outputs_stay_the_same_python_objects(context):
    g = ff.Graph("identity", strict=False)
    made = {}

    @g.task
    def make(input):
        made["doc"] = Document("hello")
        made["input_seen"] = input
        return made["doc"]

    @g.task
    def use(make):
        made["received"] = make
        return make

    @g.task
    def wrap(use, make):
        return {"same": use is make, "doc": use}

    data = {"nested": [1, 2]}
    result = g.run(data, context=context, timeout=5)
    assert made["received"] is made["doc"]
    assert made["input_seen"] is data
    assert result.output["same"] is True
    assert result.output["doc"] is made["doc"]
    assert {n.name: n for n in context.nodes(result.run_id)}["make"].output is made["doc"]


@pytest.mark.memory_only  # durable contexts store values as JSON
async def test_identity_through_async_bodies_and_map(context):
    g = ff.Graph("identity_async", strict=False)
    objs = [Document(str(i)) for i in range(3)]
    seen = {}

    @g.task
    async def docs():
        return objs

    @g.each(over="docs")
    async def per(item, ctx):
        seen[ctx.item] = item
        return item

    result = await g.arun(None, context=context, timeout=5)
    assert sorted(seen) == [0, 1, 2]
    assert all(seen[i] is objs[i] for i in range(3))
    assert all(a is b for a, b in zip(result.output, objs))


@pytest.mark.memory_only  # durable contexts store values as JSON
def test_non_json_values_are_fine_when_not_strict(context):
    g = ff.Graph("lenient", strict=False)

    @g.task
    def pair(input):
        return (input, {1, 2}, Document("x"))

    @g.task
    def unpack(pair):
        a, b, c = pair
        return {"a": a, "b": sorted(b), "c": c.text}

    assert g.run({"set": {1}}, context=context, timeout=5).output == {"a": {"set": {1}}, "b": [1, 2], "c": "x"}


# -- strict: a non-JSON output fails the node --------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        ((1, 2), "tuple"),
        (Document("x"), "Document"),
        (b"raw", "bytes"),
        (datetime.date(2024, 1, 1), "date"),
        (decimal.Decimal("1.5"), "Decimal"),
    ],
)
def test_strict_mode_rejects_non_json_outputs(context, value, type_name):
    g = ff.Graph("strict_outputs")
    ran = []

    @g.task
    def produce():
        return value

    @g.task
    def consume(produce):
        ran.append(produce)

    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, timeout=5)
    err = info.value
    assert err.node == "produce"
    assert err.error_type == "SerializationError"
    assert "'produce'" in err.error_message
    assert type_name in err.error_message
    assert ran == [], "a node whose output cannot be stored is not passed on"
    node = {n.name: n for n in context.nodes(err.run_id)}["produce"]
    assert node.status == "failed"
    assert node.attempts == 1


def test_strict_serialization_errors_are_not_retried(context):
    g = ff.Graph("strict_no_retry")
    attempts = []

    @g.task(retry=ff.Retry(attempts=3, backoff=0.01))
    def produce(ctx):
        attempts.append(ctx.attempt)
        return {1, 2, 3}

    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, timeout=5)
    assert info.value.error_type == "SerializationError"
    assert attempts == [1]


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": {"b": [1, {2}]}}, "$.a.b[1]"),
        ({"when": datetime.date(2024, 1, 1)}, "$.when"),
        ({1: "x"}, "key"),
        ([float("inf")], "finite"),
        ({"t": (1,)}, "$.t"),
    ],
)
def test_strict_errors_say_where_the_bad_value_is(context, value, where):
    g = ff.Graph("strict_nested")
    g.task(name="nested")(lambda: value)
    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, timeout=5)
    assert info.value.error_type == "SerializationError"
    assert where in info.value.error_message


async def test_strict_mode_checks_async_and_map_outputs(context):
    g = ff.Graph("strict_async")

    @g.task
    async def items():
        return [1, 2]

    @g.each(over="items")
    async def per(item):
        return {item} if item == 2 else item

    with pytest.raises(ff.RunFailedError) as info:
        await g.arun(None, context=context, timeout=5)
    assert info.value.node == "per"
    assert info.value.error_type == "SerializationError"
    assert "set" in info.value.error_message


def test_strict_mode_checks_human_payloads(context):
    g = ff.Graph("strict_human")

    @g.human
    def ask():
        return {"options": {"a", "b"}}

    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, timeout=5)
    assert info.value.node == "ask"
    assert info.value.error_type == "SerializationError"


def test_strict_accepts_plain_json_data(context):
    g = ff.Graph("strict_ok")
    value = {"s": "x", "i": 1, "big": 2**63, "f": 1.5, "b": True, "n": None, "l": [1, "two", [3.0]], "d": {}}
    g.task(name="plain")(lambda input: input)
    assert g.run(value, context=context, timeout=5).output == value


def test_strict_can_be_forced_on_per_graph(context):
    g = ff.Graph("forced", strict=True)
    g.task(name="bad")(lambda: (1,))
    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, timeout=5)
    assert info.value.error_type == "SerializationError"
