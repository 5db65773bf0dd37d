"""Shared fixtures for the ferroflow suite.

The suite runs in strict mode (every input and output must be plain JSON data), as
``make test`` does; a bare ``pytest`` gets the same setting from here.
"""

from __future__ import annotations

import os
import uuid
from typing import Iterator

os.environ.setdefault("FERROFLOW_STRICT", "1")

import pytest

import ferroflow as ff

REDIS_URL = os.environ.get("FERROFLOW_TEST_REDIS", "redis://127.0.0.1:6379")
NATS_URL = os.environ.get("FERROFLOW_TEST_NATS", "nats://127.0.0.1:4222")


@pytest.fixture(params=["memory", "sqlite", "sqlite-batch", "redis", "nats"])
def context(request, tmp_path) -> Iterator[ff.Context]:
    """A fresh context of each kind, so that runs of one test never meet another's.

    Every test that takes this fixture runs on every context: that makes the suite the
    conformance suite of DESIGN.md (same graphs, same results, same events). SQLite runs
    twice, once per durability setting; Redis and NATS run on the servers at
    FERROFLOW_TEST_REDIS and FERROFLOW_TEST_NATS (default 127.0.0.1:6379 and :4222), in a
    namespace of their own, deleted afterwards. A test of behaviour that only one kind has says so
    with ``@pytest.mark.memory_only``."""
    if request.param != "memory" and request.node.get_closest_marker("memory_only"):
        pytest.skip("in-memory behaviour")
    if request.param == "memory":
        yield ff.InMemory()
    elif request.param == "sqlite-batch":
        yield ff.Sqlite(tmp_path / "conformance.db", durability="batch")
    elif request.param == "redis":
        redis = ff.Redis(REDIS_URL, namespace=f"test-{uuid.uuid4().hex}")
        yield redis
        redis.delete_namespace()
    elif request.param == "nats":
        nats = ff.Nats(NATS_URL, namespace=f"test{uuid.uuid4().hex[:16]}")
        yield nats
        nats.delete_namespace()
    else:
        yield ff.Sqlite(tmp_path / "conformance.db")


def pytest_configure(config):
    config.addinivalue_line("markers", "memory_only: behaviour specific to the in-memory context")


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """The gRPC client modules, generated from the .proto once per session (grpc_harness)."""
    from grpc_harness import generate_stubs

    return generate_stubs(tmp_path_factory.mktemp("stubs"))


@pytest.fixture
def spec(request, tmp_path) -> Iterator[str]:
    """A ``--context`` of a fresh store for the command-line tests: a SQLite file, or (with
    ``parametrize("spec", ["redis"], indirect=True)``) a Redis namespace of its own, deleted
    afterwards."""
    from helpers import context_spec

    store = getattr(request, "param", "sqlite")
    spec = context_spec(store, tmp_path)
    yield spec
    if store == "redis":
        url, _, namespace = spec.partition("?namespace=")
        ff.Redis(url, namespace=namespace).delete_namespace()
