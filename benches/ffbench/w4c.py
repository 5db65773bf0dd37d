"""W4c: W4 with 100 runs in flight (`graph.map`) on sqlite, and on Redis and NATS each in a process of
its own (w4c_server), in both durabilities, against the plain clients; and its sqlite part alone,
for `perf` (w4c_profile).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .common import (
    CHAIN_LEN,
    _chain_functions,
    _chain_graph,
    _cpu_s,
    _import_ferroflow,
    _median,
    _ratio,
    _reps,
    _row,
    _runs_of,
    _same_input,
    _settle,
    _spread,
    _sub_child,
    _switches,
    _time_each,
)
from .perf import (
    _perf_control,
    _perf_profile,
    _probe,
    _profile_note,
)
from .servers import (
    NATS_URL,
    REDIS_URL,
    SERVER_MAP_TIMEOUT,
    SERVER_PROCESS,
    _machine_cpu_s,
    _namespace,
    _NatsBaseline,
    _pids_named,
    _proc_cpu_s,
    _RedisBaseline,
    _server_context,
)
from .sqlite_tools import BATCH_WINDOW, _batch_sqlite, _check_store, _db_bytes, _fs_type, _raw_sqlite

W4C_RUNS = 2_000
W4C_IN_FLIGHT = 100


def w4c(quick: bool) -> Dict[str, Any]:
    ff = _import_ferroflow()
    funcs = _chain_functions()
    g = _chain_graph(ff, funcs)
    reps = _reps("W4c", quick)
    inputs = list(range(W4C_RUNS))
    completions = W4C_RUNS * CHAIN_LEN
    perf = time.perf_counter
    root = tempfile.mkdtemp(prefix="ffbench-w4c-")

    # "batch": graph.map with group commit; "raw_run": the baseline with one COMMIT per run.
    kinds = ("map", "batch", "seq", "raw", "raw_run")
    wall: Dict[str, List[float]] = {kind: [] for kind in kinds}
    cpu: Dict[str, List[float]] = {kind: [] for kind in kinds}  # CPU time / wall time
    csw: Dict[str, List[float]] = {kind: [] for kind in kinds}  # per node
    size: List[float] = []

    def timed(kind: str, body: Callable[[], Any]) -> Any:
        _settle()
        c0, s0 = _cpu_s(), _switches()
        t0 = perf()
        result = body()
        dt = perf() - t0
        wall[kind].append(dt)
        cpu[kind].append((_cpu_s() - c0) / dt)
        csw[kind].append((_switches() - s0) / completions)
        return result

    def mapped(ctx: Any) -> Callable[[], Any]:
        return lambda: g.map(inputs, context=ctx, concurrency=W4C_IN_FLIGHT, timeout=60.0)

    def one_by_one(ctx: Any) -> Callable[[], Any]:
        call = _runs_of(g, ctx)
        return lambda: [call(i) for i in inputs]

    def plain_loop(run: Callable[[int, Any], Any]) -> Callable[[], Any]:
        return lambda: [run(i, i) for i in inputs]

    try:
        warm = ff.Sqlite(os.path.join(root, "warm.db"))
        if g.map(inputs[:200], context=warm, concurrency=W4C_IN_FLIGHT, timeout=60.0) != inputs[:200]:
            raise AssertionError("W4c: graph.map returned wrong outputs")
        warm = _batch_sqlite(ff, os.path.join(root, "warm-batch.db"))
        if g.map(inputs[:200], context=warm, concurrency=W4C_IN_FLIGHT, timeout=60.0) != inputs[:200]:
            raise AssertionError("W4c: graph.map (batch) returned wrong outputs")
        del warm
        raw, conn = _raw_sqlite(os.path.join(root, "warm-raw.db"), funcs)
        _time_each(_same_input(raw), 200, "W4c warm-up")
        conn.close()

        for rep in range(reps):  # map, batch, one by one and the baselines interleaved, each on a fresh file
            d = os.path.join(root, f"rep{rep}")
            os.mkdir(d)
            path = os.path.join(d, "map.db")
            ctx = ff.Sqlite(path)
            size0 = _db_bytes(path)
            if timed("map", mapped(ctx)) != inputs:
                raise AssertionError("W4c: graph.map returned wrong outputs")
            size.append((_check_store(path, W4C_RUNS, "W4c")["bytes"] - size0) / W4C_RUNS)
            del ctx

            path = os.path.join(d, "batch.db")
            ctx = _batch_sqlite(ff, path)
            if timed("batch", mapped(ctx)) != inputs:
                raise AssertionError("W4c: graph.map (batch) returned wrong outputs")
            _check_store(path, W4C_RUNS, "W4c batch")  # read with the context still open: settled = written
            del ctx

            path = os.path.join(d, "seq.db")
            if timed("seq", one_by_one(ff.Sqlite(path))) != inputs:
                raise AssertionError("W4c: graph.run one after another returned wrong outputs")
            _check_store(path, W4C_RUNS, "W4c one after another")

            run, conn = _raw_sqlite(os.path.join(d, "raw.db"), funcs)
            if timed("raw", plain_loop(run)) != inputs:
                raise AssertionError("W4c: baseline broke")
            conn.close()

            run, conn = _raw_sqlite(os.path.join(d, "raw-run.db"), funcs, per_run=True)
            if timed("raw_run", plain_loop(run)) != inputs:
                raise AssertionError("W4c: baseline (COMMIT per run) broke")
            conn.close()
            shutil.rmtree(d, ignore_errors=True)
        fs = _fs_type(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def rate(kind: str) -> float:
        return completions / _median(wall[kind])

    def rates(kind: str) -> str:
        return _spread([completions / t for t in wall[kind]], fmt="{:,.0f}")

    r_map, r_seq, r_raw = rate("map"), rate("seq"), rate("raw")
    r_batch, r_raw_run = rate("batch"), rate("raw_run")
    profile = None if quick else _perf_profile("W4c:profile", 60.0)
    c_map, c_seq, c_raw = _median(cpu["map"]), _median(cpu["seq"]), _median(cpu["raw"])
    s_map, s_seq, s_raw = _median(csw["map"]), _median(csw["seq"]), _median(csw["raw"])
    c_batch, s_batch = _median(cpu["batch"]), _median(csw["batch"])
    rows = [
        _row(
            f'durable node completions/s, `graph.map`, {W4C_IN_FLIGHT} in flight, default `durability="commit"`',
            f"{r_map:,.0f}",
            f"{r_raw:,.0f} (sqlite3 INSERT+COMMIT rows/s)",
            _ratio(r_map, r_raw),
            "≥ 20,000",
            r_map >= 20_000,
        ),
        _row(
            f'durable node completions/s, `graph.map`, {W4C_IN_FLIGHT} in flight, `durability="batch"` '
            "(group commit, not 1:1 with a COMMIT-per-node baseline)",
            f"{r_batch:,.0f}",
            f"{r_raw:,.0f} (same baseline)",
            _ratio(r_batch, r_raw),
            "≥ 20,000",
            r_batch >= 20_000,
        ),
        _row(
            f"same {W4C_RUNS:,} runs one after another (`graph.run`), completions/s",
            f"{r_seq:,.0f}",
            f"{r_raw:,.0f}",
            _ratio(r_seq, r_raw),
        ),
        _row("100 in flight / one after another", f"{r_map / r_seq:.2f}x", "-", "-"),
        _row(
            f"wall time for {W4C_RUNS:,} runs, ms",
            f"{_median(wall['map']) * 1e3:.0f}",
            f"{_median(wall['raw']) * 1e3:.0f}",
            _ratio(_median(wall["map"]), _median(wall["raw"])),
        ),
        _row(
            "CPU time (all threads) / wall time",
            f"{c_map:.2f} (map), {c_batch:.2f} (map, batch), {c_seq:.2f} (one by one)",
            f"{c_raw:.2f}",
            "-",
        ),
        _row(
            "voluntary context switches per node",
            f"{s_map:.2f} (map), {s_batch:.2f} (map, batch), {s_seq:.2f} (one by one)",
            f"{s_raw:.2f}",
            "-",
        ),
        _row("bytes stored per run (file growth, WAL checkpointed)", f"{_median(size):,.0f}", "-", "-"),
    ]
    notes = [
        f"`graph.map(range({W4C_RUNS}), concurrency={W4C_IN_FLIGHT}, context=ff.Sqlite(path))`, a fresh context "
        f"and file per repetition (temp dir on {fs}); {completions:,} durable node completions per repetition; "
        f"median of {reps} (repetitions ranged {rates('map')} completions/s). Every row but the group commit one "
        'is the default `durability="commit"`.',
        "Baseline: the W4 baseline's loop (plain `sqlite3`, one connection, WAL, `synchronous=NORMAL`, one INSERT + "
        f'COMMIT per node) over the same {W4C_RUNS:,} inputs, rows/s; ranged {rates("raw")}. "One after another": '
        f"the same inputs through `graph.run` on a fresh `Sqlite` context, ranged {rates('seq')}.",
        *_w4c_limits(r_map, r_seq, c_map, s_map, s_seq, profile),
        f'Group commit row: the same `graph.map` on `ff.Sqlite(path, durability="batch", '
        f"batch_window={BATCH_WINDOW})`, a fresh context and file per repetition, interleaved with the others "
        f"(ranged {rates('batch')} completions/s; {r_batch / r_map:.2f}x the default durability; CPU / wall "
        f"{c_batch:.2f}, {s_batch:.2f} context switches per node). What it trades: steps are written together at "
        f"most {BATCH_WINDOW * 1e3:g} ms after they happen, whatever run they belong to, and a run's at once when "
        "it settles (finishes, fails or waits for a person), so every output `graph.map` returns is durable "
        "(checked: the file, read from another process while the context is still open, holds every run "
        f"completed); a process crash loses at most the last window ({BATCH_WINDOW * 1e3:g} ms) of steps, whose "
        "nodes run again when their runs are recovered (their effects repeat, as an interrupted attempt's do). "
        "Creating a run is still a transaction of its own. The row is not comparable 1:1 with the baseline, which "
        "commits every node; the honest comparison is plain `sqlite3` committing once per run (10 INSERTs, then "
        f"one COMMIT) over the same inputs: {r_raw_run:,.0f} rows/s (ranged {rates('raw_run')}), against which "
        f"group commit is {_ratio(r_batch, r_raw_run)}.",
        *_profile_note("`graph.map` on `Sqlite`", profile),
    ]

    # Redis and NATS, each in a process of its own (SUB_TIMEOUT).
    servers: Dict[str, Optional[Dict[str, Any]]] = {}
    failed = False
    for kind in ("redis", "nats"):
        res, err = _sub_child(f"W4c:{kind}")
        servers[kind] = res
        failed |= res is None
        server_rows, server_notes = _w4c_server_rows(kind, res, err)
        rows += server_rows
        notes += server_notes
        if res is not None:
            notes += _w4c_server_limits(kind, res)
    return {
        "rows": rows,
        "notes": notes,
        "failed": failed,
        "raw": {
            "wall_s": wall,
            "cpu_over_wall": cpu,
            "switches": csw,
            "bytes": size,
            "profile": profile,
            "servers": servers,
        },
    }


def _w4c_server_limits(kind: str, res: Dict[str, Any]) -> List[str]:
    """W4c's "what limits it" note for Redis or NATS, from the figures."""
    completions = W4C_RUNS * CHAIN_LEN
    wall, cpu, srv, csw = res["wall"], res["cpu_us"], res["server_cpu_us"], res["switches"]
    r_commit = completions / _median(wall["commit"])
    r_batch = completions / _median(wall["batch"])
    c_commit, s_commit = _median(cpu["commit"]), _median(srv["commit"])
    c_batch, s_batch = _median(cpu["batch"]), _median(srv["batch"])
    cpus = os.cpu_count() or 1
    busy = (c_commit + s_commit) * r_commit / 1e6
    if kind == "redis":
        text = (
            "What limits Redis: each node's step is one Lua script on the server (`EVALSHA`: check the journal's "
            "length, append, update the run's hash and its holds), one round trip from the thread that ran the "
            "body, where the baseline sends one RPUSH. "
        )
    else:
        text = (
            "What limits NATS: each node's step is three JetStream round trips, one after another (`create` "
            "the step, read the hold, compare-and-set the run record; the first step of a run also reads the "
            "record and the journal's end, and a finished run's tasks and hold are purged: see "
            "crates/ferroflow/src/store/nats/), the two writes each acknowledged by the server after it is "
            "written to its file store, where the baseline publishes one message and waits for one "
            "acknowledgement. "
        )
    if res["server_found"]:
        text += (
            f"CPU per node: {c_commit:.0f} µs in this process and {s_commit:.0f} µs in the server "
            f"(`{SERVER_PROCESS[kind]}`), so the two keep {busy:.2f} of the {cpus} CPUs busy at "
            f"{r_commit:,.0f} completions/s (the whole machine, other processes included: "
            f"{_median(res['machine_busy']['commit']):.2f}); {_median(csw['commit']):.1f} context switches per "
            "node (threads handing each reply on)."
        )
        if s_commit > 0:
            text += f" The server alone caps the rate near {1e6 / s_commit:,.0f} completions/s per CPU it uses."
    if r_batch < r_commit:
        text += (
            f' `durability="batch"` is slower here than the default ({r_batch / r_commit:.2f}x), with more CPU '
            f"per node in this process ({c_batch:.0f} µs against {c_commit:.0f}) and in the server ({s_batch:.0f} "
            f"µs against {s_commit:.0f}): group commit costs more than it saves on this store (an engine issue "
            "to look into, not a property of NATS)."
        )
    else:
        text += (
            f' Group commit (`durability="batch"`) reaches {r_batch / r_commit:.2f}x the default, with '
            f"{c_batch:.0f} µs in this process and {s_batch:.0f} µs in the server per node."
        )
    if kind == "redis":
        text += (
            " The server here runs without persistence (no AOF, no snapshots, as configured): these rows "
            "measure round trips and scripts, not disk, and the runs are as durable as the server's memory."
        )
    return [text]


def _w4c_limits(
    r_map: float, r_seq: float, c_map: float, s_map: float, s_seq: float, profile: Optional[Dict[str, Any]]
) -> List[str]:
    """W4c's "what limits it" note, from the figures and (full mode) the profile."""
    text = (
        "What limits it: every durable write of every run goes through the store's one SQLite connection, "
        "behind one mutex, one transaction per node (see W4), so the writes never overlap and one writer's rate "
        f"is the ceiling; {W4C_IN_FLIGHT} in flight reach {r_map / r_seq:.2f}x the rate of one run at a time. "
        "The node bodies run on the engine's blocking threads and each completion writes from the thread that "
        "ran the body, so those threads queue on the connection's mutex, and each hand-off is a futex wake-up "
        f"and a context switch ({s_map:.2f} per node against {s_seq:.2f} one at a time); CPU / wall is "
        f"{c_map:.2f} on {os.cpu_count()} CPUs: the rest of the time goes to waiting for those hand-offs."
    )
    futex, contended, gil = _probe(profile, "do_futex"), _probe(profile, "lock_contended"), _probe(profile, "take_gil")
    if futex is not None and contended is not None:
        text += (
            f" In the profile, futex waits and wake-ups are on the stack in {futex:.0f} % of the samples, "
            f"contended Rust mutexes in {contended:.0f} %, taking the GIL in {gil or 0.0:.0f} %, and the "
            "kernel's context-switch symbols lead the self time."
        )
    return [text]


def w4c_profile(quick: bool) -> Dict[str, Any]:
    """W4c's `graph.map` part alone, for `perf` (see _perf_profile)."""
    ff = _import_ferroflow()
    g = _chain_graph(ff, _chain_functions())
    inputs = list(range(W4C_RUNS))
    root = tempfile.mkdtemp(prefix="ffbench-w4cp-")
    try:
        ctx = ff.Sqlite(os.path.join(root, "warm.db"))
        g.map(inputs[:200], context=ctx, concurrency=W4C_IN_FLIGHT, timeout=60.0)
        for k in range(2):
            ctx = ff.Sqlite(os.path.join(root, f"w4c{k}.db"))
            _perf_control("enable")
            out = g.map(inputs, context=ctx, concurrency=W4C_IN_FLIGHT, timeout=60.0)
            _perf_control("disable")
            if out != inputs:
                raise AssertionError("W4c profile: graph.map returned wrong outputs")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {}


def w4c_server(kind: str, quick: bool) -> Dict[str, Any]:
    """W4c on ``kind`` ("redis" or "nats"), in a process of its own: `graph.map` of 2,000
    runs, 100 in flight, in both durabilities, each on a fresh namespace, interleaved with
    the plain-client baseline. Returns the raw figures; w4c builds the rows."""
    ff = _import_ferroflow()
    funcs = _chain_functions()
    g = _chain_graph(ff, funcs)
    reps = _reps(f"W4c.{kind}", quick)
    inputs = list(range(W4C_RUNS))
    completions = W4C_RUNS * CHAIN_LEN
    perf = time.perf_counter
    server = _pids_named(SERVER_PROCESS[kind])
    kinds = ("commit", "batch", "raw")
    wall: Dict[str, List[float]] = {k: [] for k in kinds}
    cpu: Dict[str, List[float]] = {k: [] for k in kinds}  # this process, CPU µs per node
    server_cpu: Dict[str, List[float]] = {k: [] for k in kinds}  # the server, CPU µs per node
    csw: Dict[str, List[float]] = {k: [] for k in kinds}  # per node
    machine: Dict[str, List[float]] = {k: [] for k in kinds}  # CPUs busy, the whole machine

    def timed(which: str, body: Callable[[], Any]) -> Any:
        _settle()
        c0, s0, v0, m0 = _cpu_s(), _proc_cpu_s(server), _switches(), _machine_cpu_s()
        t0 = perf()
        result = body()
        dt = perf() - t0
        machine[which].append((_machine_cpu_s() - m0) / dt)
        wall[which].append(dt)
        cpu[which].append((_cpu_s() - c0) * 1e6 / completions)
        server_cpu[which].append((_proc_cpu_s(server) - s0) * 1e6 / completions)
        csw[which].append((_switches() - v0) / completions)
        return result

    def engine(durability: str, count: Optional[int] = None) -> None:
        """One `graph.map` on a fresh namespace (timed unless ``count``: a warm-up)."""
        ctx = _server_context(ff, kind, _namespace("w4c"), durability=durability)
        try:
            some = inputs if count is None else inputs[:count]

            def body() -> Any:
                return g.map(some, context=ctx, concurrency=W4C_IN_FLIGHT, timeout=SERVER_MAP_TIMEOUT)

            if (body() if count is not None else timed(durability, body)) != some:
                raise AssertionError(f"W4c {kind} ({durability}): graph.map returned wrong outputs")
        finally:
            ctx.delete_namespace()

    baseline: Any = None
    baseline_error = None
    try:
        baseline = (_RedisBaseline if kind == "redis" else _NatsBaseline)(funcs)
    except ImportError as e:
        baseline_error = f"{'redis-py' if kind == 'redis' else 'nats-py'} is not installed ({e})"

    def plain(count: Optional[int] = None) -> None:
        some = inputs if count is None else inputs[:count]
        baseline.prepare()
        try:
            if (baseline.run(some) if count is not None else timed("raw", lambda: baseline.run(some))) != some:
                raise AssertionError(f"W4c {kind}: baseline broke")
        finally:
            baseline.cleanup(some)

    try:
        engine("commit", 200)  # warm-up: the engine's threads, the connections, the servers' caches
        engine("batch", 200)
        if baseline is not None:
            plain(200)
        for _ in range(reps):
            engine("commit")
            engine("batch")
            if baseline is not None:
                plain()
    finally:
        if baseline is not None:
            baseline.close()
    return {
        "kind": kind,
        "reps": reps,
        "wall": wall,
        "cpu_us": cpu,
        "server_cpu_us": server_cpu,
        "switches": csw,
        "machine_busy": machine,
        "server_found": bool(server),
        "baseline_error": baseline_error,
        "baseline_what": baseline.what if baseline is not None else None,
    }


def _w4c_server_rows(kind: str, res: Optional[Dict[str, Any]], err: Optional[str]) -> Tuple[List[List[str]], List[str]]:
    """W4c's rows and notes for ``kind`` ("redis", "nats") from w4c_server's result."""
    label = {"redis": "Redis", "nats": "NATS"}[kind]
    target = "≥ 10,000"
    if res is None:
        row = _row(f"durable node completions/s, `graph.map`, {label}", "not measured", "-", "-", target, False)
        return [row], [f"{label}: not measured: the part failed:\n\n```\n{err}\n```"]
    completions = W4C_RUNS * CHAIN_LEN
    wall, cpu, srv, csw = res["wall"], res["cpu_us"], res["server_cpu_us"], res["switches"]

    def rate(which: str) -> float:
        return completions / _median(wall[which])

    def rates(which: str) -> str:
        return _spread([completions / t for t in wall[which]], fmt="{:,.0f}")

    r_commit, r_batch = rate("commit"), rate("batch")
    have_raw = bool(wall["raw"])
    r_raw = rate("raw") if have_raw else 0.0
    raw_text = f"{r_raw:,.0f} ({res['baseline_what']}, rows/s)" if have_raw else "not measured"
    rows = [
        _row(
            f"durable node completions/s, `graph.map`, {W4C_IN_FLIGHT} in flight, {label}, "
            'default `durability="commit"`',
            f"{r_commit:,.0f}",
            raw_text,
            _ratio(r_commit, r_raw) if have_raw else "-",
            target,
            r_commit >= 10_000,
        ),
        _row(
            f'same, {label}, `durability="batch"` (group commit)',
            f"{r_batch:,.0f}",
            f"{r_raw:,.0f} (same baseline)" if have_raw else "not measured",
            _ratio(r_batch, r_raw) if have_raw else "-",
            target,
            r_batch >= 10_000,
        ),
    ]
    if res["server_found"]:

        def per(which: str) -> str:
            return f"{_median(cpu[which]):.0f} + {_median(srv[which]):.0f}"

        rows.append(
            _row(
                f"{label}: CPU µs per node, this process + the server (`{SERVER_PROCESS[kind]}`)",
                f"{per('commit')} (commit), {per('batch')} (batch)",
                per("raw") if have_raw else "-",
                _ratio(_median(cpu["commit"]) + _median(srv["commit"]), _median(cpu["raw"]) + _median(srv["raw"]))
                if have_raw
                else "-",
            )
        )
    rows.append(
        _row(
            f"{label}: voluntary context switches per node",
            f"{_median(csw['commit']):.2f} (commit), {_median(csw['batch']):.2f} (batch)",
            f"{_median(csw['raw']):.2f}" if have_raw else "-",
            "-",
        )
    )
    url = REDIS_URL if kind == "redis" else NATS_URL
    cls = "Redis" if kind == "redis" else "Nats"
    notes = [
        f"{label} rows: `graph.map(range({W4C_RUNS}), concurrency={W4C_IN_FLIGHT}, context=ff.{cls}"
        f'({url!r}, namespace=<fresh>))` (and the same with `durability="batch"`), a fresh namespace per '
        f"repetition, deleted afterwards, in a process of its own; median of {res['reps']} (ranged {rates('commit')} "
        f"completions/s; batch {rates('batch')})."
        + (
            f" Baseline: {res['baseline_what']}, one connection, over the same {W4C_RUNS:,} inputs, interleaved; "
            f"ranged {rates('raw')} rows/s."
            if have_raw
            else f" Baseline not measured: {res['baseline_error']}."
        )
        + (
            " CPU time of the server is read from `/proc` for the whole server process, so it also counts any "
            "other client's load at the time."
            if res["server_found"]
            else f" The server's process (`{SERVER_PROCESS[kind]}`) was not found here: no server CPU row."
        )
    ]
    return rows, notes
