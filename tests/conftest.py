"""Shared fixtures for the ferroflow suite.

The suite runs in strict mode (every input and output must be plain JSON data), as
``make test`` does; a bare ``pytest`` gets the same setting from here.
"""

from __future__ import annotations

import os

os.environ.setdefault("FERROFLOW_STRICT", "1")

import pytest

import ferroflow as ff


@pytest.fixture(params=["memory", "sqlite", "sqlite-batch"])
def context(request, tmp_path) -> ff.Context:
    """A fresh context of each kind, so that runs of one test never meet another's.

    Every test that takes this fixture runs on every context: that makes the suite the
    conformance suite of DESIGN.md (same graphs, same results, same events). SQLite runs
    twice, once per durability setting. A test of behaviour that only one kind has says so
    with ``@pytest.mark.memory_only``."""
    if request.param != "memory" and request.node.get_closest_marker("memory_only"):
        pytest.skip("in-memory behaviour")
    if request.param == "memory":
        return ff.InMemory()
    if request.param == "sqlite-batch":
        return ff.Sqlite(tmp_path / "conformance.db", durability="batch")
    return ff.Sqlite(tmp_path / "conformance.db")


def pytest_configure(config):
    config.addinivalue_line("markers", "memory_only: behaviour specific to the in-memory context")
