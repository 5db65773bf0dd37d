"""The Rust executables the tests run, located through cargo itself.

Each lookup runs ``cargo build --message-format=json`` for what it needs and takes the
paths from cargo's own report of the artifacts, so a test always runs what this checkout
builds: cargo rebuilds whatever is out of date first, and a binary left in a target dir by an
earlier build (of another checkout, say) is never picked up by its path. ``make test`` builds
them all before the suite starts, so here cargo only confirms they are fresh.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Dict, Tuple

ROOT = Path(__file__).resolve().parent.parent


# What `make test` builds before the suite (the features `cargo test --workspace --all-features`
# builds with, so that the compiled crates are shared): asking for the same is a no-op.
BUILD = ("--workspace", "--all-features", "--bins", "--examples")


@functools.cache
def _executables(args: Tuple[str, ...] = BUILD) -> Dict[str, Path]:
    """``{target name: path}`` of the executables ``cargo build ARGS`` produces."""
    done = subprocess.run(
        ["cargo", "build", "--message-format=json-render-diagnostics", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cargo build {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    found: Dict[str, Path] = {}
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            found[message["target"]["name"]] = Path(message["executable"])
    return found


def example(name: str) -> Path:
    """An example of the ``ferroflow`` crate (``crates/ferroflow/examples``), built with every feature."""
    built = _executables()
    if name not in built:
        raise LookupError(f"cargo built no example named {name!r} (it built {sorted(built)})")
    return built[name]


def server() -> Path:
    """The ``ferroflow-server`` binary (``FERROFLOW_SERVER_BIN`` overrides it, to test an installed one)."""
    given = os.environ.get("FERROFLOW_SERVER_BIN")
    if given:
        return Path(given)
    return _executables()["ferroflow-server"]
