"""A body's recorded steps (``ctx.step``, ``ctx.astep``) and progress (``ctx.emit``), in
every context: a step recorded by one attempt is handed to the next instead of running
again, and progress reaches watchers without being journaled."""

import asyncio

import pytest

import ferroflow as ff


def test_a_recorded_step_is_not_repeated_by_the_next_attempt(context):
    calls = []
    g = ff.Graph("steps_retry")

    @g.task(retry=ff.Retry(attempts=3, backoff=0.01))
    def work(input, ctx):
        first = ctx.step("first", lambda: calls.append(("first", ctx.attempt)) or input + 1)
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails after its first step")
        second = ctx.step("second", lambda: calls.append(("second", ctx.attempt)) or first * 10)
        return {"first": first, "second": second, "recorded": sorted(ctx.recorded)}

    result = g.run(1, context=context)
    assert result.output == {"first": 2, "second": 20, "recorded": ["first"]}
    assert calls == [("first", 1), ("second", 3)], "the first step ran once, in attempt 1"
    journal = context.journal(result.run_id)
    steps = [(e.key, e.value, e.attempt) for e in journal if isinstance(e, ff.events.StepRecorded)]
    assert steps == [("first", 2, 1), ("second", 20, 3)]


def test_async_steps_and_progress_reach_a_stream(context):
    g = ff.Graph("steps_async")

    @g.task
    async def talk(input, ctx):
        for word in input.split():
            ctx.emit({"token": word})
        return await ctx.astep("shout", lambda: _upper(input))

    async def main():
        return [e async for e in g.stream("hello big world", context=context)]

    events = asyncio.run(main())
    progress = [e.data["token"] for e in events if isinstance(e, ff.events.NodeProgress)]
    assert progress == ["hello", "big", "world"]
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("NodeProgress") < kinds.index("StepRecorded") < kinds.index("NodeCompleted")
    assert events[-1].output == "HELLO BIG WORLD"
    # Progress is not journaled; the step is.
    journal = context.journal(events[-1].run_id)
    assert not any(isinstance(e, ff.events.NodeProgress) for e in journal)
    assert [e.key for e in journal if isinstance(e, ff.events.StepRecorded)] == ["shout"]


async def _upper(text):
    await asyncio.sleep(0)
    return text.upper()


def test_a_step_whose_result_is_not_json_fails_the_node_in_a_durable_context(context):
    if not context.durable:
        pytest.skip("in memory, steps keep Python objects")
    g = ff.Graph("steps_bad")

    @g.task
    def work(input, ctx):
        return ctx.step("bad", lambda: object())

    with pytest.raises(ff.RunFailedError) as failed:
        g.run(1, context=context)
    assert "step 'bad' of node 'work' cannot be stored" in str(failed.value)
