"""W3: the support bot of examples/support_bot.py over the mock LLM server (mock_llm.py), 1,000 tickets,
100 in flight, on each context in a process of its own (w3_context), against plain Python with the
`openai` client.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .common import (
    SUPPORT_BOT,
    _cpu_s,
    _import_ferroflow,
    _median,
    _ratio,
    _reps,
    _row,
    _settle,
    _spread,
    _sub_child,
)
from .mock_llm import _MockServer
from .servers import (
    _CLOCK_TICKS,
    NATS_URL,
    REDIS_URL,
    SERVER_PROCESS,
    _machine_cpu_s,
    _namespace,
    _proc_cpu_s,
    _server_context,
    _store_server_pids,
)
from .sqlite_tools import _check_store

# W3: the support bot of examples/support_bot.py (common.SUPPORT_BOT), its two model calls answered by
# the mock OpenAI server (ferroflow.testing.MockLLMServer) in a process of its own.
W3_TICKETS = 1_000
W3_IN_FLIGHT = 100
W3_LATENCY = 0.05  # the mock server's latency before each answer, seconds
W3_MODEL = "gpt-4o-mini"  # one of the mock server's models
W3_WARM = 200  # tickets through each path before timing
W3_CONTEXTS = ("memory", "sqlite", "redis", "nats")
W3_WAIT = 180.0  # bound on one measurement (1,000 tickets)
W3_CALL_TIMEOUT = 30.0  # the openai client's timeout per model call (the provider's and the baseline's)
# The tickets, cycled: every branch of the graph is taken (refund of a known order and of an
# unknown one, order status of an order on its way, of a delivered one and of an unknown one,
# neither), and no refund is above the bot's approval limit (REFUND_APPROVAL_LIMIT: only A200's
# price is), so no run waits for a person; w3_context checks both.
W3_TEXTS = (
    ("Ada", "Where is my order A100?"),
    ("Grace", "I want a refund for order A300, the mugs arrived broken."),
    ("Linus", "Do you ship to Norway?"),
    ("Alan", "Can I get my money back for order A100? The kettle is too small."),
    ("Edsger", "Has order A200 arrived yet? The status page says delivered."),
    ("Margaret", "Please track order A999 for me."),
    ("Ken", "I would like to return order A777."),
    ("Barbara", "What are your opening hours?"),
)


def _support_bot() -> Any:
    """examples/support_bot.py, loaded as a module (it builds its own graph on the offline model)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ffbench_support_bot", SUPPORT_BOT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_W3_CLASSIFY = "Classify the ticket as refund, order_status or other. Answer with the label."


_W3_ANSWER = "Write a short, friendly reply to the customer with these facts."


def _w3_tickets(n: int) -> List[Dict[str, str]]:
    return [{"customer": W3_TEXTS[i % len(W3_TEXTS)][0], "text": W3_TEXTS[i % len(W3_TEXTS)][1]} for i in range(n)]


def _w3_plain(bot: Any) -> Callable[[Any, Dict[str, str]], Any]:
    """W3's baseline for one ticket: the support bot's flow in plain Python with the `openai`
    client: the classify call (as the graph's `classify` node asks it), the branch, the tool
    function, the facts, and the answer call, streamed (as the graph's `answer` node streams)
    and consumed chunk by chunk. Returns the answer's text. The tools and the facts are the
    example's own functions (examples/support_bot.py), which its graph's nodes call too; the
    outputs are checked against the graph's, run on the offline model."""
    labels = bot.LABELS

    def facts(ticket: Dict[str, str], refunded: Optional[Dict[str, Any]], status: Optional[Dict[str, Any]]) -> str:
        if refunded is not None and refunded["eligible"] and refunded["amount"] > bot.REFUND_APPROVAL_LIMIT:
            raise AssertionError(f"W3: ticket {ticket!r} would wait for a person's approval")
        return str(bot.write_facts(ticket, refunded, None, status))

    async def ticket(client: Any, ticket: Dict[str, str]) -> str:
        reply = await client.chat.completions.create(
            model=W3_MODEL,
            messages=[{"role": "system", "content": _W3_CLASSIFY}, {"role": "user", "content": ticket["text"]}],
            temperature=0,
        )
        label = (reply.choices[0].message.content or "").strip().strip(".").lower()
        label = label if label in labels else "other"
        refunded = bot.look_up_refund(ticket) if label == "refund" else None
        status = bot.look_up_order(ticket) if label == "order_status" else None
        chunks = await client.chat.completions.create(
            model=W3_MODEL,
            messages=[
                {"role": "system", "content": _W3_ANSWER},
                {"role": "user", "content": facts(ticket, refunded, status)},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
        text: List[str] = []
        async for chunk in chunks:
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
        return "".join(text)

    return ticket


def _percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``."""
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) - 1e-9)
    return ordered[max(0, min(len(ordered), rank) - 1)]


def _thread_cpu_s(tid: Optional[int]) -> float:
    """CPU time (user + system) of thread ``tid`` of this process so far; 0 if unknown."""
    if tid is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def w3_context(kind: str, quick: bool) -> Dict[str, Any]:
    """W3 on context ``kind`` (memory, sqlite, redis, nats), in a process of its own: the
    support bot over 1,000 tickets, 100 in flight, through `graph.arun` (each ticket timed)
    and `graph.map`, each on a fresh context, interleaved with the plain-`openai` baseline,
    against one mock server process. Every measurement must make exactly 2 model requests per
    ticket (the server's count) and give every ticket the expected answer. Returns the raw
    figures; w3 builds the rows."""
    import openai

    ff = _import_ferroflow()
    bot = _support_bot()
    reps = _reps("W3", quick)
    perf = time.perf_counter
    tickets = _w3_tickets(W3_TICKETS)

    # The expected answer of each ticket text: the same graph on the offline model, which
    # is the function the mock server answers with.
    offline = bot.build(ff.OfflineProvider(lambda request: bot.reply_to(request.messages)), "offline").build()
    expected: Dict[str, str] = {}
    routes: Dict[str, int] = {}
    for customer, text in W3_TEXTS:
        result = offline.run({"customer": customer, "text": text}, context=ff.InMemory())
        if result.status.value != "completed":
            raise AssertionError(f"W3: the ticket {text!r} ends {result.status.value} on the offline model")
        expected[text] = result.output["text"]
        label = bot.reply_to([{"role": "system", "content": _W3_CLASSIFY}, {"role": "user", "content": text}])
        routes[label] = routes.get(label, 0) + sum(1 for t in tickets if t["text"] == text)
    plain_ticket = _w3_plain(bot)

    # The server starts first: if it cannot, there is nothing yet to clean up.
    server = _MockServer(W3_LATENCY)
    root = tempfile.mkdtemp(prefix="ffbench-w3-")
    store = _store_server_pids(kind) if kind in SERVER_PROCESS else []
    files = [0]

    def fresh_context() -> Tuple[Any, Callable[[int], None]]:
        """A fresh context, and what to do with it after `n` runs (check, delete)."""
        if kind == "memory":
            return ff.InMemory(), lambda n: None
        if kind == "sqlite":
            files[0] += 1
            path = os.path.join(root, f"w3-{files[0]}.db")

            def check(n: int) -> None:
                _check_store(path, n, "W3 sqlite")  # every run completed and durable

            return ff.Sqlite(path), check
        ctx = _server_context(ff, kind, _namespace("w3"))
        return ctx, lambda n: ctx.delete_namespace()

    loop = asyncio.new_event_loop()  # the caller's loop: `arun` and the baseline run on it
    provider: Any = None
    client: Any = None
    # `arun` and `map` with the `openai`-client provider, `narun` and `nmap` with the native one.
    kinds = ("arun", "map", "narun", "nmap", "base")
    samples: Dict[str, List[Dict[str, float]]] = {k: [] for k in kinds}
    try:
        provider = ff.OpenAIProvider(base_url=server.url, api_key="ffbench", timeout=W3_CALL_TIMEOUT)
        graph = bot.build(provider, W3_MODEL).build()
        native = ff.NativeOpenAIProvider(base_url=server.url, api_key="ffbench", timeout=W3_CALL_TIMEOUT)
        native_graph = bot.build(native, W3_MODEL).build()

        async def make_client() -> Any:
            return openai.AsyncOpenAI(base_url=server.url, api_key="ffbench", timeout=W3_CALL_TIMEOUT)

        client = loop.run_until_complete(make_client())  # max_retries: 2, as the provider's

        async def gather(
            one: Callable[[Dict[str, str]], Any], inputs: List[Dict[str, str]]
        ) -> Tuple[List[str], List[float]]:
            """``one`` per input under a semaphore of W3_IN_FLIGHT; each timed from entering it."""
            slots = asyncio.Semaphore(W3_IN_FLIGHT)
            latency = [0.0] * len(inputs)

            async def timed(i: int, x: Dict[str, str]) -> str:
                async with slots:
                    t0 = perf()
                    out = await one(x)
                    latency[i] = perf() - t0
                    return str(out)

            outs = await asyncio.wait_for(asyncio.gather(*(timed(i, x) for i, x in enumerate(inputs))), W3_WAIT)
            return list(outs), latency

        def engine_arun(
            inputs: List[Dict[str, str]], graph: Any = graph
        ) -> Tuple[List[str], List[float], Callable[[int], None]]:
            ctx, after = fresh_context()

            async def one(x: Dict[str, str]) -> str:
                result = await graph.arun(x, context=ctx)
                if result.status.value != "completed":
                    raise AssertionError(f"W3: run {result.run_id} ended {result.status.value}")
                return str(result.output["text"])

            outs, latency = loop.run_until_complete(gather(one, inputs))
            return outs, latency, after

        def engine_map(
            inputs: List[Dict[str, str]], graph: Any = graph
        ) -> Tuple[List[str], List[float], Callable[[int], None]]:
            ctx, after = fresh_context()
            outs = graph.map(inputs, context=ctx, concurrency=W3_IN_FLIGHT, timeout=W3_WAIT)
            bad = [o for o in outs if not isinstance(o, dict)]
            if bad:
                raise AssertionError(f"W3: graph.map gave a run that did not complete: {bad[0]!r:.300}")
            return [str(o["text"]) for o in outs], [], after

        def baseline(inputs: List[Dict[str, str]]) -> Tuple[List[str], List[float], Callable[[int], None]]:
            async def one(x: Dict[str, str]) -> str:
                return str(await plain_ticket(client, x))

            outs, latency = loop.run_until_complete(gather(one, inputs))
            return outs, latency, lambda n: None

        paths: Dict[str, Callable[[List[Dict[str, str]]], Tuple[List[str], List[float], Callable[[int], None]]]] = {
            "arun": engine_arun,
            "map": engine_map,
            "narun": lambda inputs: engine_arun(inputs, native_graph),
            "nmap": lambda inputs: engine_map(inputs, native_graph),
            "base": baseline,
        }

        def measure(which: str, inputs: List[Dict[str, str]], timed: bool = True) -> None:
            n = len(inputs)
            server.command("reset")
            _settle()
            model_thread = next((t.native_id for t in threading.enumerate() if t.name == "ferroflow-asyncio"), None)
            c0, b0, s0 = _cpu_s(), _thread_cpu_s(model_thread), server.cpu_s()
            st0, m0 = _proc_cpu_s(store), _machine_cpu_s()
            t0 = perf()
            outs, latency, after = paths[which](inputs)
            wall = perf() - t0
            cpu, model_cpu, server_cpu = _cpu_s() - c0, _thread_cpu_s(model_thread) - b0, server.cpu_s() - s0
            store_cpu, machine = _proc_cpu_s(store) - st0, (_machine_cpu_s() - m0) / wall
            count = server.command("count")
            after(n)
            if count["requests"] != 2 * n or count["answered"] != 2 * n:
                raise AssertionError(
                    f"W3 {kind} {which}: {n} tickets made {count['requests']} HTTP requests to the mock server "
                    f"({count['answered']} chat completions answered with 200), not exactly {2 * n}"
                )
            wrong = [(x["text"], out) for x, out in zip(inputs, outs) if out != expected[x["text"]]]
            if len(outs) != n or wrong:
                raise AssertionError(f"W3 {kind} {which}: {len(wrong)} wrong answers, e.g. {wrong[:1]!r:.300}")
            if not timed:
                return
            sample = {
                "wall": wall,
                "cpu_ms": cpu * 1e3 / n,
                "model_thread_ms": model_cpu * 1e3 / n if which in ("arun", "map") else 0.0,
                "server_ms": server_cpu * 1e3 / n,
                "store_ms": store_cpu * 1e3 / n,
                "machine_busy": machine,
                "requests": count["requests"],
            }
            if latency:
                sample.update(p50=_percentile(latency, 0.5), p99=_percentile(latency, 0.99))
            samples[which].append(sample)

        # Warm-up: the engine's threads, the background loop and the provider's client, the
        # connections to the mock server and the store, the baseline's client.
        for which in kinds:
            measure(which, tickets[:W3_WARM], timed=False)
        for _ in range(reps):
            for which in kinds:
                measure(which, tickets)
    finally:
        try:
            if client is not None:
                loop.run_until_complete(asyncio.wait_for(client.close(), 10.0))
            if provider is not None:
                provider.close()
        finally:
            loop.close()
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
    return {
        "kind": kind,
        "reps": reps,
        "samples": samples,
        "routes": routes,
        "store_found": bool(store),
    }


def w3(quick: bool) -> Dict[str, Any]:
    parts = {kind: _sub_child(f"W3:{kind}") for kind in W3_CONTEXTS}
    rows: List[List[str]] = []
    notes: List[str] = []
    limits: List[str] = []
    failed = False
    n = W3_TICKETS
    target = "≥ 0.95x baseline"
    measured = 0
    routes: Dict[str, int] = {}
    base_cpu: List[float] = []  # the baseline's CPU ms per ticket, per context's process
    for kind in W3_CONTEXTS:
        res, err = parts[kind]
        if res is None:
            failed = True
            rows.append(_row(f"tickets/s, {kind}", "not measured", "-", "-", target, False))
            notes.append(f"{kind}: not measured: the part failed:\n\n```\n{err}\n```")
            continue
        routes = res["routes"]
        measured += sum(len(v) for v in res["samples"].values())
        kind_rows, note = _w3_rows(kind, res)
        rows += kind_rows
        notes.append(note)
        limits.append(_w3_limits(kind, res, not limits))
        base_cpu.append(_median([x["cpu_ms"] for x in res["samples"]["base"]]))
    rows.append(
        _row(
            "LLM requests per measurement (the mock server's count)",
            f"{2 * n:,} = 2 x {n:,} tickets, in every one of the {measured} measurements",
            f"{2 * n:,}",
            "-",
            "exactly 2 x tickets",
            measured > 0 and not failed,
        )
    )
    ctx_text = (
        f"`ff.InMemory()`, `ff.Sqlite(<fresh file>)`, `ff.Redis({REDIS_URL!r}, namespace=<fresh>)` and "
        f"`ff.Nats({NATS_URL!r}, namespace=<fresh>)`"
    )
    mix = ", ".join(f"{label} {count:,}" for label, count in sorted(routes.items()))
    head = [
        f"The support bot of `examples/support_bot.py` (`build(provider, model)`: classify (LLM) → route (branch) → "
        "refund / order_status (tool nodes; a refund also goes through the `needs_approval` branch) → facts → "
        f"answer (LLM, `stream=True`)) with `ff.OpenAIProvider(base_url=<mock>, timeout={W3_CALL_TIMEOUT:g})` (the "
        f"official `openai` client, `AsyncOpenAI`, max_retries 2) and model `{W3_MODEL}`, over {n:,} tickets, "
        f"{W3_IN_FLIGHT} in flight, on a fresh context per measurement: {ctx_text}, every Redis and NATS namespace "
        "deleted afterwards, every SQLite file read back from another process (every run completed).",
        f"`arun`: `asyncio.gather` of the {n:,} `await graph.arun(ticket, context=ctx)` under an "
        f"`asyncio.Semaphore({W3_IN_FLIGHT})`, each ticket timed from entering the semaphore to its result (p50, "
        f"p99: nearest rank over the {n:,}); the model calls themselves run on ferroflow's background loop "
        f"(`llm._on_provider_loop`). map: `graph.map(tickets, concurrency={W3_IN_FLIGHT}, context=ctx)`, whole "
        "batch only (no per-ticket times). Each context in a process of its own, the three paths interleaved in "
        f"each repetition after a warm-up of {W3_WARM} tickets each.",
        f"Tickets: {len(W3_TEXTS)} texts cycled ({mix}): refunds of a known order and of an unknown one, the "
        "status of an order on its way, of a delivered one and of an unknown one, and questions for neither. No "
        "refund is above the bot's approval limit (100; only order A200 costs more, and no ticket asks for its "
        "refund), so the human-approval branch is never taken and every run completes (checked). Every answer is "
        "checked against the graph's on the offline model (`reply_to`, the function the mock server answers with).",
        f"Mock server: `ferroflow.testing.MockLLMServer(reply=<support_bot.reply_to>, latency={W3_LATENCY:g})` in a "
        "process of its own (started by this benchmark as `python -m ffbench.mock_llm`, since `python -m "
        "ferroflow.testing` takes only a fixed `--reply` text), thread per connection, chat completions plain "
        "(classify) and streamed one word per event (answer). Its request counter is reset before each "
        "measurement and read after: every measurement made exactly 2 requests per ticket, all answered with 200 "
        "(asserted: no retry, no failure).",
        f"Baseline, in the same process and repetitions: plain Python with `openai.AsyncOpenAI` (same base URL, "
        f"timeout and retries), `asyncio.gather` under an `asyncio.Semaphore({W3_IN_FLIGHT})`, per ticket: the "
        "classify call (same messages, temperature 0), the branch, the tool function, the facts, and the answer "
        "call streamed (`stream_options={'include_usage': True}`, as the provider asks) and consumed chunk by "
        "chunk; one client for every measurement, as the provider keeps one. CPU: `getrusage` of this process "
        "(every thread), the model-call thread (`ferroflow-asyncio`) and the servers from `/proc`, per ticket.",
        f"Native provider: the same graph built with `ff.NativeOpenAIProvider(base_url=<mock>, "
        f"timeout={W3_CALL_TIMEOUT:g})` (ferroflow's Rust client, max_retries 2), through the same two paths "
        "(`arun` and map), interleaved with the others in each repetition, against the same baseline. Its model "
        "calls do not use the background loop: the Rust client runs on the engine's tokio threads, reports the "
        "streamed tokens and records each reply itself.",
    ]
    if len(base_cpu) > 1:
        notes.append(
            f"The baseline does the same work in every context; its CPU per ticket ranged {_spread(base_cpu)} ms "
            "across the processes: the noise floor of CPU figures on this machine."
        )
    return {
        "rows": rows,
        "notes": head + notes + limits,
        "failed": failed,
        "raw": {kind: res for kind, (res, _) in parts.items()},
    }


def _w3_rows(kind: str, res: Dict[str, Any]) -> Tuple[List[List[str]], str]:
    """W3's rows for context ``kind`` from w3_context's result, and the note on their ranges."""
    n = W3_TICKETS
    target = "≥ 0.95x baseline"
    ss = res["samples"]

    def med(which: str, key: str) -> float:
        return _median([s[key] for s in ss[which]])

    def rates(which: str) -> str:
        return _spread([n / s["wall"] for s in ss[which]], fmt="{:,.0f}")

    r_arun, r_map, r_base = (n / med(w, "wall") for w in ("arun", "map", "base"))
    r_narun, r_nmap = (n / med(w, "wall") for w in ("narun", "nmap"))
    base_text = f"{r_base:,.1f} (`AsyncOpenAI`, same flow)"
    rows = [
        _row(
            f"tickets/s, {kind}: `arun` under a semaphore of {W3_IN_FLIGHT}",
            f"{r_arun:,.1f}",
            base_text,
            _ratio(r_arun, r_base),
            target,
            r_arun >= 0.95 * r_base,
        ),
        _row(
            f"tickets/s, {kind}: `graph.map(concurrency={W3_IN_FLIGHT})`",
            f"{r_map:,.1f}",
            f"{r_base:,.1f} (same baseline)",
            _ratio(r_map, r_base),
            target,
            r_map >= 0.95 * r_base,
        ),
        _row(
            f"tickets/s, {kind}, native provider: `arun` under a semaphore of {W3_IN_FLIGHT}",
            f"{r_narun:,.1f}",
            f"{r_base:,.1f} (same baseline)",
            _ratio(r_narun, r_base),
            "≥ 2x baseline",
            r_narun >= 2 * r_base,
        ),
        _row(
            f"tickets/s, {kind}, native provider: `graph.map(concurrency={W3_IN_FLIGHT})`",
            f"{r_nmap:,.1f}",
            f"{r_base:,.1f} (same baseline)",
            _ratio(r_nmap, r_base),
            "≥ 2x baseline",
            r_nmap >= 2 * r_base,
        ),
        _row(
            f"latency per ticket p50 / p99, ms, {kind} (`arun`)",
            f"{med('arun', 'p50') * 1e3:,.0f} / {med('arun', 'p99') * 1e3:,.0f}",
            f"{med('base', 'p50') * 1e3:,.0f} / {med('base', 'p99') * 1e3:,.0f}",
            f"{_ratio(med('arun', 'p50'), med('base', 'p50'))} / {_ratio(med('arun', 'p99'), med('base', 'p99'))}",
        ),
        _row(
            f"latency per ticket p50 / p99, ms, {kind}, native provider (`arun`)",
            f"{med('narun', 'p50') * 1e3:,.0f} / {med('narun', 'p99') * 1e3:,.0f}",
            f"{med('base', 'p50') * 1e3:,.0f} / {med('base', 'p99') * 1e3:,.0f}",
            f"{_ratio(med('narun', 'p50'), med('base', 'p50'))} / {_ratio(med('narun', 'p99'), med('base', 'p99'))}",
        ),
    ]
    store = kind in SERVER_PROCESS and res["store_found"]
    what = "this process (its model-call thread) + mock server" + (f" + `{SERVER_PROCESS[kind]}`" if store else "")

    def cpu_text(which: str) -> str:
        text = f"{med(which, 'cpu_ms'):.2f}"
        if which in ("arun", "map"):
            text += f" ({med(which, 'model_thread_ms'):.2f})"
        text += f" + {med(which, 'server_ms'):.2f}"
        if store and which != "base":
            text += f" + {med(which, 'store_ms'):.2f}"
        return text

    rows.append(
        _row(
            f"CPU ms per ticket, {kind}: {what}",
            f"{cpu_text('arun')} (`arun`); {cpu_text('map')} (map)",
            cpu_text("base"),
            _ratio(med("arun", "cpu_ms"), med("base", "cpu_ms")),
        )
    )
    rows.append(
        _row(
            f"CPU ms per ticket, {kind}, native provider: this process + mock server"
            + (f" + `{SERVER_PROCESS[kind]}`" if store else ""),
            f"{cpu_text('narun')} (`arun`); {cpu_text('nmap')} (map)",
            cpu_text("base"),
            _ratio(med("narun", "cpu_ms"), med("base", "cpu_ms")),
        )
    )
    note = (
        f"{kind}: median of {res['reps']} per path; tickets/s ranged {rates('arun')} (`arun`), {rates('map')} "
        f"(map), {rates('narun')} (native `arun`), {rates('nmap')} (native map), {rates('base')} (baseline); "
        f"the whole machine kept {med('arun', 'machine_busy'):.2f} "
        f"(`arun`), {med('map', 'machine_busy'):.2f} (map), {med('narun', 'machine_busy'):.2f} (native `arun`), "
        f"{med('nmap', 'machine_busy'):.2f} (native map) and {med('base', 'machine_busy'):.2f} (baseline) of "
        f"its {os.cpu_count()} CPUs busy."
    )
    return rows, note


def _w3_limits(kind: str, res: Dict[str, Any], first: bool) -> str:
    """W3's "what limits it" note for ``kind``, from the figures; the ``first`` one measured
    says what they all share."""
    ss = res["samples"]

    def med(which: str, key: str) -> float:
        return _median([s[key] for s in ss[which]])

    n = W3_TICKETS
    r_arun, r_map, r_base = (n / med(w, "wall") for w in ("arun", "map", "base"))
    c_arun, c_map, c_base = (med(w, "cpu_ms") for w in ("arun", "map", "base"))
    m_arun = med("arun", "model_thread_ms")
    s_arun = med("arun", "server_ms")
    floor = W3_IN_FLIGHT / (2 * W3_LATENCY)
    text = f"What limits {kind}: "
    if first:
        text += (
            f"not the model's latency ({W3_IN_FLIGHT} tickets in flight, each two calls of "
            f"{W3_LATENCY * 1e3:.0f} ms, would allow ~{floor:,.0f} tickets/s; neither the baseline nor the "
            "`openai`-client provider gets near it), but the "
            "CPU of one Python process. The baseline spends "
            f"{c_base:.2f} ms of CPU per ticket ({c_base / 2:.2f} ms per model call), nearly all of it in the "
            "`openai` client (httpx, httpcore's connection pool, a pydantic model per chunk of the streamed "
            f"answer): its own flow is a few string operations. At {r_base:,.0f} tickets/s that keeps "
            f"{c_base * r_base / 1e3:.2f} CPUs busy, with the whole machine at {med('base', 'machine_busy'):.2f} of "
            f"{os.cpu_count()}: one thread at a time (the GIL) caps it near {1e3 / c_base:,.0f} tickets/s. ferroflow "
            "hits the same one-thread ceiling with more CPU per ticket: "
        )
    text += (
        f"{c_arun:.2f} ms per ticket with `arun` ({c_arun - c_base:+.2f} ms against the baseline; {m_arun:.2f} ms "
        f"of it on the background loop's thread, where the model calls, the provider's client and the LLM nodes "
        f"run) and {c_map:.2f} ms with map ({c_map - c_base:+.2f} ms), keeping {c_arun * r_arun / 1e3:.2f} and "
        f"{c_map * r_map / 1e3:.2f} CPUs busy; {r_arun / r_base:.2f}x and {r_map / r_base:.2f}x the baseline's "
        f"rate, against {c_base / c_arun:.2f}x and {c_base / c_map:.2f}x its CPU per ticket."
    )
    if first:
        text += (
            f" The mock server used {s_arun:.2f} ms per ticket in its own process ({s_arun * r_arun / 1e3:.2f} "
            "CPUs): not the limit, though it shares the machine's CPUs."
        )
    if kind in SERVER_PROCESS and res["store_found"]:
        text += (
            f" `{SERVER_PROCESS[kind]}` used {med('arun', 'store_ms'):.2f} ms per ticket (read from `/proc`, so "
            "any other client's load too)."
        )
    r_narun, p50 = n / med("narun", "wall"), med("narun", "p50")
    text += (
        f" With the native provider, {r_narun:,.0f} tickets/s (`arun`) at a p50 of {p50 * 1e3:.0f} ms per ticket, "
        f"against the model's {2 * W3_LATENCY * 1e3:.0f} ms: {W3_IN_FLIGHT} tickets in flight over that p50 allow "
        f"{W3_IN_FLIGHT / p50:,.0f}/s, so each ticket's latency bounds the rate, not CPU "
        f"({med('narun', 'cpu_ms'):.2f} ms per ticket in this process, {r_narun * med('narun', 'cpu_ms') / 1e3:.2f} "
        f"CPUs); the {(p50 - 2 * W3_LATENCY) * 1e3:.0f} ms over the model's part is the engine's and the store's "
        "(the steps of six nodes and two recorded replies per ticket)."
    )
    cpus = os.cpu_count() or 1
    busy = max(med(w, "machine_busy") for w in ("arun", "map", "narun", "nmap", "base"))
    if busy >= 0.9 * cpus:
        text += (
            f" The whole machine was busy ({busy:.2f} of {cpus} CPUs, other processes included) during these "
            "measurements, so other load squeezed both sides too: compare the ratios, not the rates."
        )
    return text
