"""Shared fixtures for the ferroflow suite.

The suite runs in strict mode (every input and output must be plain JSON data), as
``make test`` does; a bare ``pytest`` gets the same setting from here.
"""

from __future__ import annotations

import os

os.environ.setdefault("FERROFLOW_STRICT", "1")

import pytest

import ferroflow as ff


@pytest.fixture
def context() -> ff.InMemory:
    """A fresh in-memory context, so that runs of one test never meet another's."""
    return ff.InMemory()
