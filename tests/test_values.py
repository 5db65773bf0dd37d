"""Values keep what they are in every context: floats exact, object keys in their order,
nesting within one limit checked where a value enters, integers exact or refused, and run
ids within the limits every store can hold. Read back by another context on the same store
(another engine with its own connection: what a second process sees)."""

from __future__ import annotations

import json

import pytest

import ferroflow as ff
from helpers import reopen

LIMIT = 100  # ferroflow::limits::MAX_DEPTH


def nested(depth: int, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value) -> int:
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


def test_floats_come_back_exactly_from_every_store(context):
    g = ff.Graph("sevenths")

    @g.task
    def divide(input):
        return [x / 7.0 for x in input]

    inputs = [27565, 1, 2.5e-300, 1e308 / 3, 0.1, -123456789.123456789]
    expected = [x / 7.0 for x in inputs]
    result = g.run(inputs, context=context, run_id="floats", timeout=10)
    assert result.output == expected
    assert result.output[0] == 3937.8571428571427
    other = reopen(context)
    assert g.get_run("floats", context=other).output == expected
    assert {n.name: n.output for n in other.nodes("floats")}["divide"] == expected
    assert g.map([inputs], context=context, batch="floats-batch") == [expected]
    assert g.map([inputs], context=other, batch="floats-batch") == [expected]


def test_object_keys_keep_their_order_through_every_store_and_replay(context):
    g = ff.Graph("key_order")
    calls = []
    found = {"zeta": 1, "alpha": 2, "mid": {"b": 1, "a": 2}}

    @g.tool(retry=ff.Retry(attempts=2, backoff=0))
    def lookup(input, ctx):
        # A recorded step: the retried attempt gets the recorded value back, keys in order.
        result = ctx.step("search", lambda: dict(found))
        calls.append((ctx.attempt, list(result)))
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        return result

    @g.task
    def prompt(lookup):
        return {"keys": list(lookup), "inner": list(lookup["mid"]), "text": json.dumps(lookup)}

    result = g.run(None, context=context, run_id="order", timeout=10)
    expected = {"keys": ["zeta", "alpha", "mid"], "inner": ["b", "a"], "text": json.dumps(found)}
    assert calls == [(1, ["zeta", "alpha", "mid"]), (2, ["zeta", "alpha", "mid"])]
    assert result.output == expected
    stored = g.get_run("order", context=reopen(context)).output
    assert list(stored) == ["keys", "inner", "text"]
    assert stored == expected


@pytest.mark.parametrize("depth", [LIMIT - 1, LIMIT])
def test_values_up_to_the_nesting_limit_are_kept_and_read_back(context, depth):
    g = ff.Graph(f"deep_{depth}")

    @g.task
    def deepen(input):
        return nested(input)

    result = g.run(depth, context=context, run_id=f"deep-{depth}", timeout=10)
    assert depth_of(result.output) == depth
    other = reopen(context)
    assert depth_of(g.get_run(f"deep-{depth}", context=other).output) == depth
    assert depth_of({n.name: n.output for n in other.nodes(f"deep-{depth}")}["deepen"]) == depth


@pytest.mark.parametrize("depth", [LIMIT + 1, 2_000, 50_000])
def test_a_value_nested_past_the_limit_is_refused_where_it_enters(context, depth):
    """Outputs fail their node (run and node named, with the limit); inputs and answers
    are refused before anything is stored; nothing crashes at any depth, and what was
    stored reads back in another process."""
    g = ff.Graph(f"too_deep_{depth}")

    @g.task
    def deepen(input):
        return nested(input)

    @g.human
    def ask(deepen):
        return "anything?"

    @g.task
    def done(ask):
        return "ok"

    with pytest.raises(ff.RunFailedError) as failed:
        g.run(depth, context=context, run_id=f"out-{depth}", timeout=30)
    assert failed.value.node == "deepen"
    assert failed.value.run_id == f"out-{depth}"
    assert f"more than {LIMIT}" in failed.value.error_message, failed.value.error_message
    other = reopen(context)
    assert g.get_run(f"out-{depth}", context=other).status is ff.RunStatus.FAILED

    with pytest.raises(ff.InvalidInputError) as refused:
        g.run(nested(depth), context=context, run_id=f"in-{depth}", timeout=30)
    assert f"more than {LIMIT}" in str(refused.value) and refused.value.run_id == f"in-{depth}"

    waiting = g.run(3, context=context, run_id=f"answer-{depth}", timeout=30)
    assert waiting.status is ff.RunStatus.WAITING
    with pytest.raises(ff.InvalidInputError) as refused:
        g.resume(f"answer-{depth}", nested(depth), context=context, timeout=30)
    assert f"more than {LIMIT}" in str(refused.value)
    # The refused answer lost nothing: the run still waits, and a good answer finishes it.
    assert g.get_run(f"answer-{depth}", context=reopen(context)).status is ff.RunStatus.WAITING
    assert g.resume(f"answer-{depth}", "fine", context=context, timeout=30).output == "ok"


def test_a_recorded_step_nested_past_the_limit_is_refused(context):
    g = ff.Graph("deep_step")

    @g.task
    def record(input, ctx):
        try:
            ctx.step("deep", lambda: nested(LIMIT + 5))
        except ff.InvalidInputError as e:
            return str(e)
        return "stored"

    message = g.run(None, context=context, timeout=10).output
    assert f"more than {LIMIT}" in message and "step 'deep'" in message, message


def test_integers_beyond_64_bits_are_refused_not_rounded(context):
    echo = ff.Graph("big_inputs")

    @echo.task
    def same(input):
        return input

    assert echo.run(2**64 - 1, context=context, timeout=10).output == 2**64 - 1
    assert echo.run(-(2**63), context=context, timeout=10).output == -(2**63)
    with pytest.raises(ff.InvalidInputError, match="64 bits"):
        echo.run(2**64, context=context, timeout=10)

    big = ff.Graph("big_outputs")

    @big.task
    def thirty_digits(input):
        return 10**30

    with pytest.raises(ff.RunFailedError) as failed:
        big.run(1, context=context, timeout=10)
    assert "64 bits" in failed.value.error_message


@pytest.mark.parametrize(
    "run_id, why",
    [("x" * 4096, "4096 bytes"), ("a\nb", "control character"), ("   ", "empty"), ("é" * 200, "400 bytes")],
)
def test_run_ids_every_store_can_hold_are_checked_up_front(context, run_id, why):
    g = ff.Graph("ids")

    @g.task
    def one(input):
        return 1

    with pytest.raises(ff.InvalidInputError) as refused:
        g.run(None, context=context, run_id=run_id, timeout=5)
    assert why in str(refused.value)
    assert len(str(refused.value)) < 1000, "the message quotes the id shortened"
    for read in (lambda: g.get_run(run_id, context=context), lambda: context.journal(run_id)):
        with pytest.raises(ff.InvalidInputError):
            read()


def test_run_ids_are_strings(context):
    g = ff.Graph("typed_ids")

    @g.task
    def one(input):
        return 1

    for call in (
        lambda: g.run(None, context=context, run_id=42),
        lambda: g.get_run(42, context=context),
        lambda: g.resume(42, context=context),
        lambda: g.cancel(42, context=context),
        lambda: context.journal(42),
        lambda: context.nodes(42),
    ):
        with pytest.raises(TypeError, match="run ids are strings, not int"):
            call()


def test_names_are_checked_like_run_ids():
    with pytest.raises(ff.GraphError, match="4096 bytes"):
        g = ff.Graph("n" * 4096)

        @g.task
        def one(input):
            return 1

        g.build()
    g = ff.Graph("names")
    g.task(lambda input: 1, name="a\tb")
    with pytest.raises(ff.GraphError, match="control character"):
        g.build()


def test_a_json_key_that_is_not_a_string_is_named_with_its_article():
    g = ff.Graph("keys", strict=True)

    @g.task
    def bad(input):
        return {1: "one"}

    with pytest.raises(ff.RunFailedError) as failed:
        g.run(None, timeout=5)
    assert "key 1 is an int" in failed.value.error_message, failed.value.error_message


@pytest.mark.parametrize("path", ["", ":memory:"])
def test_sqlite_refuses_databases_no_other_context_can_open(path):
    with pytest.raises(ff.StoreError, match="private to one connection"):
        ff.Sqlite(path)


def test_sqlite_refuses_a_foreign_file_and_leaves_it_untouched(tmp_path):
    import sqlite3

    path = tmp_path / "theirs.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ff.StoreError, match="not a ferroflow database"):
        ff.Sqlite(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("durability", ["commit", "batch"])
def test_a_value_over_the_stores_write_limit_fails_its_node_naming_the_limit(durability):
    """NATS takes at most its max_payload (1 MB by default) per write: a larger output
    fails its node with a typed error, and the run reads back as failed, not running;
    a larger input, answer or recorded step is refused. (Redis's and SQLite's limits are
    hundreds of MB: the same code path, not exercised here.)"""
    import uuid

    from conftest import NATS_URL

    context = ff.Nats(NATS_URL, namespace=f"big{uuid.uuid4().hex[:12]}", durability=durability)
    try:
        g = ff.Graph(f"too_big_{durability}")

        @g.task
        def big(input, ctx):
            try:
                ctx.step("huge", lambda: "s" * 2_000_000)
            except ff.InvalidInputError as e:
                assert "max_payload" in str(e), str(e)
            return "x" * input

        @g.human
        def ask(big):
            return "ok?"

        with pytest.raises(ff.RunFailedError) as failed:
            g.run(2_000_000, context=context, run_id="big", timeout=30)
        assert failed.value.error_type == "ValueTooLarge" and failed.value.node == "big"
        assert "max_payload" in failed.value.error_message, failed.value.error_message
        assert g.get_run("big", context=reopen(context)).status is ff.RunStatus.FAILED

        with pytest.raises(ff.InvalidInputError, match="max_payload"):
            g.run("y" * 2_000_000, context=context, run_id="big-input", timeout=30)
        waiting = g.run(10, context=context, run_id="big-answer", timeout=30)
        assert waiting.status is ff.RunStatus.WAITING
        with pytest.raises(ff.InvalidInputError, match="max_payload"):
            g.resume("big-answer", "z" * 2_000_000, context=context, timeout=30)
        assert g.resume("big-answer", "fine", context=context, timeout=30).status is ff.RunStatus.COMPLETED
    finally:
        context.delete_namespace()
