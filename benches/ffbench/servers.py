"""The Redis and NATS servers (W3, W4c, B1): their URLs, a fresh namespace per measurement, the contexts
on them, the servers' processes and their CPU time (and the whole machine's), W4c's plain-client
baselines, and B1's timing of the scan the NATS store makes to load a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from typing import Any, Callable, Dict, List, Sequence

from .common import _median

# The servers W4c and B1 use (Redis and NATS with JetStream on 127.0.0.1). Every
# measurement uses a namespace of its own, deleted afterwards.
REDIS_URL = os.environ.get("FFBENCH_REDIS", "redis://127.0.0.1:6379")
NATS_URL = os.environ.get("FFBENCH_NATS", "nats://127.0.0.1:4222")
SERVER_PROCESS = {"redis": "redis-server", "nats": "nats-server"}  # their process names, for CPU time
SERVER_MAP_TIMEOUT = 300.0  # bound on one `graph.map` on a server context (W4c) or through workers (B1)


def _namespace(tag: str) -> str:
    """A fresh namespace (Redis key prefix, NATS bucket names) for one measurement."""
    return f"ffbench_{tag}_{uuid.uuid4().hex[:10]}"


def _server_context(ff: Any, kind: str, namespace: str, **options: Any) -> Any:
    if kind == "redis":
        return ff.Redis(REDIS_URL, namespace=namespace, **options)
    if kind == "nats":
        return ff.Nats(NATS_URL, namespace=namespace, **options)
    raise ValueError(f"not a server context: {kind}")


def _pids_named(name: str) -> List[int]:
    """The processes whose command name is ``name`` (the servers, for their CPU time)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pids: Sequence[int]) -> float:
    """CPU time (user + system, every thread) of the processes ``pids`` so far; a process
    that is gone counts 0."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return total


def _cpu_times() -> List[int]:
    """The machine's CPU times so far, all CPUs, in clock ticks (the `cpu` line of
    /proc/stat): user, nice, system, idle, iowait, irq, softirq, steal."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (fields + [0] * 8)[:8]


def _machine_cpu_s() -> float:
    """CPU time every process on the machine has used so far (all CPUs, /proc/stat): the
    difference over a measurement, divided by its wall time, is how many CPUs were busy."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = _cpu_times()
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def _steal_s() -> float:
    """CPU time the hypervisor gave other guests while this machine's CPUs wanted to run
    (the `steal` column of /proc/stat), all CPUs, so far."""
    return _cpu_times()[7] / _CLOCK_TICKS


def _store_server_pids(kind: str) -> List[int]:
    """The Redis or NATS server process W3's contexts use: among the processes of that name,
    those whose command line names the URL's port, else all of them."""
    import urllib.parse

    pids = _pids_named(SERVER_PROCESS[kind])
    port = urllib.parse.urlparse(REDIS_URL if kind == "redis" else NATS_URL).port
    if port is None:
        return pids
    mine = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(rf"(?<!\d){port}(?!\d)", words):
            mine.append(pid)
    return mine or pids


class _RedisBaseline:
    """W4c's Redis baseline: redis-py over one connection, and for each node of the chain:
    call it, RPUSH its output as JSON onto the run's list (one round trip per node)."""

    what = "redis-py RPUSH per node"

    def __init__(self, funcs: Sequence[Callable[[Any], Any]]) -> None:
        import redis  # type: ignore[import-not-found, unused-ignore]

        self.funcs = list(funcs)
        self.client = redis.Redis.from_url(REDIS_URL, socket_timeout=10.0, socket_connect_timeout=10.0)
        self.client.ping()
        self.prefix = ""

    def prepare(self) -> None:
        self.prefix = _namespace("raw")

    def run(self, inputs: Sequence[int]) -> List[Any]:
        rpush, dumps, funcs, prefix = self.client.rpush, json.dumps, self.funcs, self.prefix
        out = []
        for i in inputs:
            key, x = f"{prefix}:{i}", i
            for f in funcs:
                x = f(x)
                rpush(key, dumps(x))
            out.append(x)
        return out

    def cleanup(self, inputs: Sequence[int]) -> None:
        keys = [f"{self.prefix}:{i}" for i in inputs]
        for k in range(0, len(keys), 500):
            self.client.delete(*keys[k : k + 500])

    def close(self) -> None:
        self.client.close()


class _NatsBaseline:
    """W4c's NATS baseline: nats-py over one connection, a JetStream stream of its own (file
    storage, one replica, as ferroflow's buckets), and for each node of the chain: call it,
    publish its output as JSON and wait for the stream's acknowledgement."""

    what = "nats-py JetStream publish + ack per node"

    def __init__(self, funcs: Sequence[Callable[[Any], Any]]) -> None:
        import nats  # type: ignore[import-not-found, unused-ignore]

        self.funcs = list(funcs)
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncio.wait_for(nats.connect(NATS_URL), 10.0))
        self.js = self.conn.jetstream(timeout=10.0)
        self.stream = ""

    def prepare(self) -> None:
        from nats.js.api import StorageType, StreamConfig  # type: ignore[import-not-found, unused-ignore]

        self.stream = _namespace("raw")
        config = StreamConfig(name=self.stream, subjects=[f"{self.stream}.>"], storage=StorageType.FILE, num_replicas=1)
        self.loop.run_until_complete(self.js.add_stream(config))

    def run(self, inputs: Sequence[int]) -> List[Any]:
        async def publish_all() -> List[Any]:
            publish, dumps, funcs, stream = self.js.publish, json.dumps, self.funcs, self.stream
            out = []
            for i in inputs:
                subject, x = f"{stream}.{i}", i
                for f in funcs:
                    x = f(x)
                    await publish(subject, dumps(x).encode())
                out.append(x)
            return out

        return self.loop.run_until_complete(publish_all())

    def cleanup(self, inputs: Sequence[int]) -> None:
        self.loop.run_until_complete(self.js.delete_stream(self.stream))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.conn.close(), 10.0))
        finally:
            self.loop.close()


def _nats_scan_ms(namespace: str, run_ids: Sequence[str]) -> Dict[str, Any]:
    """What loading a run costs the NATS store on the server: the median time of the scan
    ferroflow's `load` makes (an ordered consumer delivering the last message per key of
    `{run}.>` in the namespace's journal bucket), over ``run_ids``, and the bucket's size,
    with nats-py. Returns {} without nats-py."""
    try:
        import nats  # type: ignore[import-not-found, unused-ignore]
        from nats.js.api import DeliverPolicy  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return {}

    async def measure() -> Dict[str, Any]:
        conn = await asyncio.wait_for(nats.connect(NATS_URL), 10.0)
        try:
            js = conn.jetstream(timeout=10.0)
            bucket = f"ff_{namespace}_journal"
            info = await js.stream_info(f"KV_{bucket}")
            times = []
            for run_id in run_ids:
                t0 = time.perf_counter()
                sub = await js.subscribe(
                    f"$KV.{bucket}.{run_id}.>",
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                )
                try:
                    while (await sub.next_msg(timeout=10.0)).metadata.num_pending > 0:
                        pass
                finally:
                    await sub.unsubscribe()
                times.append(time.perf_counter() - t0)
            return {"ms": _median(times) * 1e3, "messages": float(info.state.messages)}
        finally:
            await asyncio.wait_for(conn.close(), 10.0)

    try:
        return asyncio.run(measure())
    except Exception as e:  # noqa: BLE001 - a diagnostic: its absence is reported, the figures stand
        return {"error": str(e)[-300:]}
