"""Issue 17's outage case: the model server goes down in the middle of a batch, 100+ runs
fail, it comes back, and ``ferroflow runs retry --batch`` retries them in bulk: every run
completes, no completed node runs again, and the server sees exactly the model calls the
first attempts did not make."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import ferroflow as ff
from ferroflow import events as ev
from ferroflow.cli.load import open_context
from ferroflow.testing import MockLLMServer
from helpers import context_spec

APP = """\
import os

import ferroflow as ff

provider = ff.OpenAIProvider(base_url=os.environ["MOCK_URL"], api_key="test-key", max_retries=0, timeout=10.0)
g = ff.Graph("nightly_support")


def _log(what, input):
    with open(os.environ["BODY_LOG"], "a") as f:
        f.write(f"{what} {input}\\n")


@g.task
def prepare(input):
    _log("prepare", input)
    return f"ticket {input}"


@g.llm(provider=provider, model="gpt-4o-mini")
def answer(prepare):
    return prepare


@g.task
def finish(answer, input):
    _log("finish", input)
    return {"ticket": input, "reply": answer}
"""

RUNS = 150


def load_app(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("retry_batch_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ferroflow.cli", *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


@pytest.mark.parametrize("store", ["sqlite", "redis", "nats"])
def test_runs_failed_by_a_model_outage_are_retried_in_bulk(tmp_path, monkeypatch, store):
    server = MockLLMServer(api_key="test-key", latency=0.01).start()
    try:
        log = tmp_path / "bodies.log"
        env = dict(os.environ, MOCK_URL=server.base_url, BODY_LOG=str(log))
        monkeypatch.setenv("MOCK_URL", server.base_url)
        monkeypatch.setenv("BODY_LOG", str(log))
        (tmp_path / "app.py").write_text(APP)
        app = load_app(tmp_path / "app.py")
        spec = context_spec(store, tmp_path)
        context = open_context(spec)

        # The server goes down after 30 model calls, in the middle of the batch.
        def take_down() -> None:
            deadline = time.monotonic() + 60
            while server.request_count < 30 and time.monotonic() < deadline:
                time.sleep(0.002)
            server.stop()

        killer = threading.Thread(target=take_down)
        killer.start()
        results = app.g.map(range(RUNS), context=context, concurrency=8, batch="night", return_exceptions=True)
        killer.join(timeout=30)
        failed = {f"night-{i}" for i, r in enumerate(results) if isinstance(r, ff.RunFailedError)}
        assert len(failed) >= 100, f"only {len(failed)} runs failed"
        assert all(r.node == "answer" for r in results if isinstance(r, ff.RunFailedError))
        assert all(isinstance(r, dict) for r in results if not isinstance(r, Exception)), results
        before = Counter(log.read_text().split("\n"))
        context.close()
        app.provider.close()

        def retry(*options: str) -> subprocess.CompletedProcess:
            """`ferroflow runs retry` of the batch's failed runs, in another process."""
            return cli(
                tmp_path, env, "runs", "retry", "--graph", "app.py:g", "--context", spec, "--batch", "night", *options
            )

        server.start()  # back, on the same port
        requests_before = server.request_count
        dry = retry("--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines()[0] == f"would retry {len(failed)} failed run(s) of graph 'nightly_support'"
        assert set(dry.stdout.splitlines()[1:]) == failed
        assert server.request_count == requests_before, "a dry run calls no model"

        done = retry("--by", "oncall")
        assert done.returncode == 0, done.stderr
        outcomes = [json.loads(line) for line in done.stdout.splitlines()]
        assert {o["run_id"] for o in outcomes} == failed
        assert all(o["status"] == "completed" for o in outcomes), outcomes
        assert f"{len(failed)} run(s) of graph 'nightly_support' retried: {len(failed)} completed" in done.stderr

        # Exactly the model calls the first attempts did not make.
        assert server.request_count - requests_before == len(failed)
        # No completed node ran again: each body ran once per run, over both attempts.
        calls = Counter(line for line in log.read_text().split("\n") if line)
        assert calls == Counter({f"{what} {i}": 1 for i in range(RUNS) for what in ("prepare", "finish")})
        assert all(before[f"prepare {i}"] == 1 for i in range(RUNS))

        context = open_context(spec)
        try:
            runs = context.runs(graph="nightly_support", limit=1000)
            assert len(runs) == RUNS
            assert {r.status for r in runs} == {ff.RunStatus.COMPLETED}
            some = sorted(failed)[0]
            journal = context.journal(some)
            assert [e.by for e in journal if isinstance(e, ev.RunRetried)] == ["oncall"]
            # And nothing is left to retry.
            again = retry("--dry-run")
            assert again.stdout.splitlines() == ["would retry 0 failed run(s) of graph 'nightly_support'"]
        finally:
            if store != "sqlite":
                context.delete_namespace()
            context.close()
    finally:
        server.stop()
