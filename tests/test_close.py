"""Closing a context releases its store at once: files, connections and background tasks;
a closed context refuses every use with ContextClosedError, and what it ran stays in the
store for the next context."""

from __future__ import annotations

import gc
import os

import pytest

import ferroflow as ff
from ferroflow.cli import open_context
from helpers import context_spec

g = ff.Graph("closing")


@g.task
def double(input):
    return input * 2


def open_files(path: str) -> list[str]:
    """The files under `path` this process has open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            found.append(target)
    return found


@pytest.mark.parametrize("durability", ["commit", "batch"])
def test_closing_a_sqlite_context_releases_its_file_at_once(tmp_path, durability):
    path = str(tmp_path / "runs.db")
    ctx = ff.Sqlite(path, durability=durability)
    assert g.run(21, context=ctx, run_id="r1").output == 42
    assert open_files(path), "the test proves nothing: the context had no file open"
    ctx.close()
    assert ctx.closed
    assert open_files(path) == [], "the database, its WAL or SHM is still open after close()"
    # What it ran is in the file, for the next context.
    with ff.Sqlite(path) as again:
        assert again.run_info("r1").status is ff.RunStatus.COMPLETED
        assert g.get_run("r1", context=again).output == 42
    assert open_files(path) == []


@pytest.mark.parametrize("store", ["memory", "sqlite", "redis", "nats"])
def test_a_closed_context_refuses_every_use(tmp_path, store):
    spec = None if store == "memory" else context_spec(store, tmp_path)
    ctx = ff.InMemory() if spec is None else open_context(spec)
    with ctx:
        g.run(1, context=ctx, run_id="before")
    calls = [
        lambda: g.run(2, context=ctx),
        lambda: g.start(2, context=ctx),
        lambda: g.get_run("before", context=ctx),
        lambda: ctx.runs(),
        lambda: ctx.run_ids(),
        lambda: ctx.journal("before"),
        lambda: ctx.nodes("before"),
        lambda: ctx.graphs(),
    ]
    for call in calls:
        with pytest.raises(ff.ContextClosedError, match="closed"):
            call()
    ctx.close()  # closing again does nothing
    if store in ("redis", "nats"):
        with pytest.raises(ff.ContextClosedError):
            ctx.delete_namespace()
        with open_context(spec) as other:
            other.delete_namespace()


def test_a_dropped_context_releases_its_file_too(tmp_path):
    path = str(tmp_path / "runs.db")
    ctx = ff.Sqlite(path)
    g.run(1, context=ctx)
    del ctx
    gc.collect()
    assert open_files(path) == [], "a context nobody refers to any more still holds its file"
