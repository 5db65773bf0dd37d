"""Python callables held by the native workflow are visible to the garbage collector."""

import asyncio
import gc
import time
import weakref

import ferroflow as ff


def make_cyclic_graph() -> "weakref.ref[ff.Graph]":
    g = ff.Graph("cyclic")

    def step(input):
        return input

    # graph -> native workflow -> body -> body.__dict__ -> graph: a cycle that only the
    # GC can break, and only if the native workflow reports the bodies it holds.
    step.graph = g  # type: ignore[attr-defined]
    g.task(step)
    g.build()
    return weakref.ref(g)


def test_a_cycle_through_the_native_workflow_is_collected() -> None:
    graph_ref = make_cyclic_graph()
    assert graph_ref() is not None, "the cycle keeps the graph alive until the GC runs"
    gc.collect()
    assert graph_ref() is None, "the graph was kept alive by the native workflow"


def test_a_graph_is_collected_once_its_runs_are_forgotten() -> None:
    context = ff.InMemory(retain_finished=0)
    g = ff.Graph("evicted")

    def step(input):
        return input + 1

    step.graph = g  # type: ignore[attr-defined]
    g.task(step)
    assert g.run(1, context=context).output == 2
    graph_ref = weakref.ref(g)
    del g, step
    gc.collect()
    assert graph_ref() is None, "a finished, evicted run kept its graph alive"


def test_an_event_loop_used_by_runs_is_not_kept_alive() -> None:
    g = ff.Graph("loops")

    @g.task
    async def step(input):
        return input * 2

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(g.arun(21)).output == 42
    finally:
        loop.close()
    loop_ref = weakref.ref(loop)
    del loop
    # The engine thread that resolved `arun` lets go of its callback (which refers to the
    # loop) just after resolving it, so allow it a moment.
    deadline = time.monotonic() + 2
    while loop_ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert loop_ref() is None, "the engine's scheduler kept a closed event loop alive"
