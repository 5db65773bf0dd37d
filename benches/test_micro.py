"""Micro benchmarks (pytest-benchmark). Not part of the test suite (its testpaths is tests/);
run them explicitly:

    .venv/bin/pytest benches/test_micro.py --benchmark-only

Each group pairs an engine path with the plain-Python baseline doing the same work, so the
comparison table pytest-benchmark prints shows the engine's overhead directly. The standard
workloads with targets are in run.py; nothing here asserts on time.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ferroflow as ff
from ffbench import common, sqlite_tools  # benches/ffbench: the W1 graph and its plain-Python baselines


@pytest.fixture(scope="module")
def chain() -> Any:
    funcs = common._chain_functions()
    return common._chain_graph(ff, funcs), common._plain_chain(funcs)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.benchmark(group="chain10: one run of 10 sync no-op nodes")
def test_chain10_run(benchmark: Any, chain: Any) -> None:
    graph, _ = chain
    context = ff.InMemory()
    result = benchmark(graph.run, 1, context=context, timeout=30.0)
    assert result.output == 1


@pytest.mark.benchmark(group="chain10: one run of 10 sync no-op nodes")
def test_chain10_plain(benchmark: Any, chain: Any) -> None:
    _, plain = chain
    assert benchmark(plain, 1) == 1


@pytest.mark.benchmark(group="chain10 durable: one run, every node checkpointed to SQLite")
def test_chain10_run_sqlite(benchmark: Any, chain: Any, tmp_path: Any) -> None:
    graph, _ = chain
    context = ff.Sqlite(tmp_path / "micro.db")
    result = benchmark(graph.run, 1, context=context, timeout=30.0)
    assert result.output == 1


@pytest.mark.benchmark(group="chain10 durable: one run, every node checkpointed to SQLite")
def test_chain10_plain_sqlite(benchmark: Any, tmp_path: Any) -> None:
    # sqlite3 in WAL mode, synchronous=NORMAL: per node, call it, INSERT its output as JSON, COMMIT.
    run, conn = sqlite_tools._raw_sqlite(str(tmp_path / "plain.db"), common._chain_functions())
    try:
        assert benchmark(run, 1, 1) == 1
    finally:
        conn.close()


@pytest.mark.benchmark(group="one sync node")
def test_one_node_run(benchmark: Any) -> None:
    g = ff.Graph("micro_one")

    @g.task
    def only(input: Any) -> Any:
        return input

    context = ff.InMemory()
    assert benchmark(g.run, 1, context=context, timeout=30.0).output == 1


@pytest.mark.benchmark(group="one async node (no await inside), arun on a loop")
def test_one_async_node_arun(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    g = ff.Graph("micro_async")

    @g.task
    async def only(input: Any) -> Any:
        return input

    context = ff.InMemory()

    def once() -> Any:
        return loop.run_until_complete(asyncio.wait_for(g.arun(1, context=context), 30.0))

    assert benchmark(once).output == 1


@pytest.mark.benchmark(group="one async node (no await inside), arun on a loop")
def test_one_async_call_plain(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    async def only(input: Any) -> Any:
        return input

    async def plain() -> Any:
        return await asyncio.ensure_future(only(1))

    def once() -> Any:
        return loop.run_until_complete(asyncio.wait_for(plain(), 30.0))

    assert benchmark(once) == 1
