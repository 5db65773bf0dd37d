"""The same graph gives the same result in every context: 120 random graphs (seeded) with
branches, maps, joins, retries, failures and human steps run in memory, on SQLite, Redis and
NATS; what another process reads back from each store (the run's output as JSON text, its
status, the failed node, every node's state) is byte for byte what memory gave."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from typing import Any, Dict, List, Tuple

import pytest

import ferroflow as ff

REDIS_URL = os.environ.get("FERROFLOW_TEST_REDIS", "redis://127.0.0.1:6379")
NATS_URL = os.environ.get("FERROFLOW_TEST_NATS", "nats://127.0.0.1:4222")
GRAPHS = 120


def number(value: Any) -> int:
    """What a body makes of any upstream output: a number."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(number(v) for v in value)
    if isinstance(value, dict):
        return number(value.get("n"))
    raise TypeError(type(value))


def output(name: str, n: int) -> Dict[str, Any]:
    # Keys out of alphabetical order, a float that needs every digit, a nested object.
    n %= 997
    return {"n": n, "node": name, "f": n / 7.0, "z": {"b": n % 3, "a": [n, -n]}}


def build(seed: int) -> ff.Graph:
    rng = random.Random(seed)
    g = ff.Graph(f"parity_{seed}")
    data: List[str] = []  # nodes whose outputs others may take
    listers: List[str] = []
    branches: List[str] = []
    humans = 0
    count = rng.randint(3, 9)
    # The last node fails in some graphs. It comes after every other node, so that what the
    # run holds when it fails does not depend on which of two parallel nodes finishes first.
    last_fails = rng.random() < 0.15
    for i in range(count):
        name = f"n{i}"
        kind = rng.choices(["task", "lister", "map", "branch", "human"], weights=[6, 2, 3, 2, 1])[0]
        if (kind == "map" and not listers) or (kind == "human" and humans >= 2):
            kind = "task"
        fails = last_fails and i == count - 1
        if fails:
            kind = "task"
        deps = list(data) if fails else rng.sample(data, k=min(len(data), rng.randint(0, 3)))
        when = {}
        if branches and rng.random() < 0.4 and not fails:
            when = {rng.choice(branches): rng.choice(["x", "y"])}
        options: Dict[str, Any] = {"name": name, "when": when}
        if deps:
            options["deps"] = {"args": deps}
        if fails:
            options["after"] = list(branches)
        flaky = kind in ("task", "lister", "map") and rng.random() < 0.2
        if flaky:
            options["retry"] = ff.Retry(attempts=2, backoff=0, jitter=0)
        salt = rng.randint(1, 50)

        def total(input: Any, args: List[Any], salt: int = salt) -> int:
            return number(input) * salt + sum(number(a) for a in args) + salt

        def check(ctx: Any, flaky: bool = flaky, fails: bool = fails) -> None:
            if fails:
                raise ValueError(f"{ctx.node} always fails")
            if flaky and ctx.attempt == 1:
                raise ConnectionError(f"{ctx.node} fails once")

        if kind == "task":

            def body(input, ctx, args=(), name=name, total=total, check=check):
                check(ctx)
                return output(name, total(input, list(args)))

            g.task(body, **options)
        elif kind == "lister":

            def body(input, ctx, args=(), total=total, check=check):
                check(ctx)
                n = total(input, list(args))
                return [n % 11, n % 13, n % 5][: n % 4]

            g.task(body, **options)
            listers.append(name)
        elif kind == "map":
            over = rng.choice(listers)

            def body(item, ctx, name=name, salt=salt, check=check):
                check(ctx)
                return output(name, item * salt + 1)

            g.each(body, over=over, **{k: v for k, v in options.items() if k != "deps"})
        elif kind == "branch":

            def body(input, args=(), total=total):
                return "x" if total(input, list(args)) % 2 else "y"

            g.branch(body, labels=["x", "y"], **options)
            branches.append(name)
            continue
        else:
            humans += 1

            def body(input, args=(), name=name, total=total):
                return {"ask": name, "n": total(input, list(args))}

            g.human(body, **options)
        data.append(name)
    return g


def answer(payload: Dict[str, Any]) -> Dict[str, Any]:
    return {"n": payload["n"] + 1, "by": "tester", "note": "é \u2028 ok"}


def play(g: ff.Graph, context: ff.Context, run_id: str, value: int) -> None:
    """Runs the graph to its end, answering every human step."""
    try:
        result = g.run(value, context=context, run_id=run_id, timeout=60)
        while result.status is ff.RunStatus.WAITING:
            node, payload = next(iter(result.waiting.items()))
            result = g.resume(run_id, answer(payload), node=node, context=context, timeout=60)
    except ff.RunFailedError:
        pass


def summary(context: ff.Context, run_id: str) -> Dict[str, Any]:
    journal = context.journal(run_id)
    finished = journal[-1]
    assert type(finished).__name__ == "RunFinished", (run_id, finished)
    return {
        "status": finished.status.value,
        "output": json.dumps(finished.output),
        "failed": finished.node,
        "error": finished.error.type if finished.error else None,
        "nodes": [[n.name, n.status, n.attempts] for n in context.nodes(run_id)],
    }


READ_BACK = """
import json, sys
from ferroflow.cli import open_context
sys.path.insert(0, sys.argv[3])
from test_parity import summary

context = open_context(sys.argv[1])
print(json.dumps({run_id: summary(context, run_id) for run_id in json.loads(sys.argv[2])}))
"""


@pytest.mark.timeout(900)
def test_random_graphs_give_the_same_results_in_every_context(tmp_path):
    graphs = [build(seed) for seed in range(GRAPHS)]
    inputs = {seed: random.Random(seed * 7919).randint(0, 100) for seed in range(GRAPHS)}
    run_ids = [f"parity-{seed}" for seed in range(GRAPHS)]

    memory = ff.InMemory()
    expected: Dict[str, Dict[str, Any]] = {}
    for seed, g in enumerate(graphs):
        play(g, memory, run_ids[seed], inputs[seed])
        expected[run_ids[seed]] = summary(memory, run_ids[seed])
    kinds = {s["status"] for s in expected.values()}
    assert kinds == {"completed", "failed"}, kinds
    with_waits = sum(1 for g in graphs if any(n.kind == "human" for n in g._nodes.values()))
    with_maps = sum(1 for g in graphs if any(n.kind == "map" for n in g._nodes.values()))
    assert with_waits >= 10 and with_maps >= 20, (with_waits, with_maps)

    stores: List[Tuple[str, str]] = [
        ("sqlite", str(tmp_path / "parity.db")),
        ("redis", f"{REDIS_URL}?namespace=parity{uuid.uuid4().hex[:12]}"),
        ("nats", f"{NATS_URL}?namespace=parity{uuid.uuid4().hex[:12]}"),
    ]
    from ferroflow.cli import open_context

    for kind, spec in stores:
        context = open_context(spec)
        try:
            for seed, g in enumerate(graphs):
                play(g, context, run_ids[seed], inputs[seed])
            read = subprocess.run(
                [sys.executable, "-c", READ_BACK, spec, json.dumps(run_ids), os.path.dirname(__file__)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert read.returncode == 0, read.stderr[-3000:]
            seen = json.loads(read.stdout)
            differing = [run_id for run_id in run_ids if seen[run_id] != expected[run_id]]
            assert not differing, (kind, [(r, expected[r], seen[r]) for r in differing[:3]])
        finally:
            if kind != "sqlite":
                context.delete_namespace()
