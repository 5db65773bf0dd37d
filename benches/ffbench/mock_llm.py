"""W3's mock OpenAI server, in a process of its own (it is Python: in the benchmark's process it would
take the GIL from the code measured), answering with the support bot's deterministic model
(`reply_to`), and _MockServer, the handle W3 starts and drives it with.

    python -m ffbench.mock_llm SUPPORT_BOT_PY LATENCY PARENT_PID

It dies with the process that started it (PR_SET_PDEATHSIG), prints its base URL as one JSON
line, then answers commands on stdin, one JSON line each: "count" (HTTP requests that arrived,
and chat completions answered with 200), "reset" (zeroes both); it stops at the end of its input.
A module of its own rather than `python -m ferroflow.testing`, which takes only a fixed `--reply`
text, where W3 needs the bot's `reply_to`.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

from .common import ROOT, SUPPORT_BOT, _bench_env
from .servers import _proc_cpu_s


def main(argv: List[str]) -> int:
    """The server process: ``argv`` = [support_bot.py, latency in seconds, the parent's pid]."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - without it the parent's stop() still ends this process
        pass
    if os.getppid() != int(argv[2]):
        return 0
    from ferroflow.testing import MockLLMServer

    spec = importlib.util.spec_from_file_location("ffbench_support_bot", argv[0])
    assert spec is not None and spec.loader is not None
    bot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bot)

    def reply(request: Dict[str, Any]) -> Any:
        return bot.reply_to(request["messages"])

    with MockLLMServer(reply=reply, latency=float(argv[1])) as server:
        print(json.dumps({"url": server.base_url}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "count":
                answered = sum(1 for r in server.requests if r.path == "/v1/chat/completions" and r.status == 200)
                print(json.dumps({"requests": server.request_count, "answered": answered}), flush=True)
            elif command == "reset":
                server.reset()
                print(json.dumps({"reset": True}), flush=True)
    return 0


class _MockServer:
    """W3's mock OpenAI server process (main, above): started now, stopped by stop()."""

    def __init__(self, latency: float) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="ffbench-mock-", suffix=".log", delete=False)
        env = _bench_env()  # it runs as `python -m ffbench.mock_llm`
        for name in ("FFBENCH_PERF_CTL", "FFBENCH_PERF_ACK", "FFBENCH_DEADLINE"):
            env.pop(name, None)
        cmd = [sys.executable, "-m", "ffbench.mock_llm", SUPPORT_BOT, str(latency), str(os.getpid())]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log
        )
        self._buffer = b""
        try:
            self.url: str = self._answer(60.0)["url"]
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        try:
            with open(self.log.name, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def _answer(self, limit: float) -> Dict[str, Any]:
        """The server's next line (JSON), waiting at most ``limit`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + limit
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"W3: the mock server did not answer within {limit:.0f} s:\n{self.output()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.proc.poll()
                    raise RuntimeError(f"W3: the mock server exited ({code}):\n{self.output()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: Dict[str, Any] = json.loads(line)
        return answer

    def command(self, command: str, limit: float = 30.0) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self._answer(limit)

    def cpu_s(self) -> float:
        return _proc_cpu_s([self.proc.pid])

    def stop(self) -> None:
        """Ends its input (it stops serving and exits), then SIGTERM, then SIGKILL."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
