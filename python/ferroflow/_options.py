"""Options handed to the engine, as typed objects: each dataclass here is read field by field
by the Rust struct of the same name (``crates/ferroflow-py/src/options.rs``), so the two are
kept in step by name, not by argument position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class StoreOptions:
    """Where a durable context keeps its runs: the core's context reader opens it."""

    kind: str  # "sqlite", "redis" or "nats"
    location: str  # the SQLite file's path, or the server's URL
    namespace: str = ""  # on a server


@dataclass(frozen=True)
class EngineOptions:
    """An engine's options; without a ``store`` it keeps its runs in memory."""

    retain_finished: int = 10_000
    store: Optional[StoreOptions] = None
    lease_seconds: float = 10.0
    durability: str = "commit"
    batch_window_seconds: float = 0.005
    execute: bool = True
    outage_timeout_seconds: float = 300.0
    retention_seconds: Optional[float] = None
