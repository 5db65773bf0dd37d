"""``python -m ferroflow.testing``: a :class:`MockLLMServer` as a process of its own, e.g. for benchmarks."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Optional, Sequence

from .server import DEFAULT_MODELS, MockLLMServer


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a :class:`MockLLMServer` until SIGTERM or SIGINT (``python -m ferroflow.testing``).

    Prints the OpenAI base URL on one line (flushed) once serving (the Anthropic base URL is the same
    without ``/v1``), and returns 0 after a clean stop."""
    parser = argparse.ArgumentParser(
        prog="python -m ferroflow.testing",
        description="Serve a mock LLM on 127.0.0.1, speaking OpenAI's chat completions and Anthropic's messages.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--token-interval", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--api-key", default=None, help="require this API key (default: accept any)")
    parser.add_argument("--model", action="append", dest="models", default=None, help="a model to serve (repeatable)")
    parser.add_argument("--reply", default=None, help="a fixed reply text (default: echo the last user message)")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = MockLLMServer(
        models=args.models or DEFAULT_MODELS,
        reply=args.reply,
        api_key=args.api_key,
        latency=args.latency,
        token_interval=args.token_interval,
        port=args.port,
    )
    with server:
        print(server.base_url, flush=True)
        while not stop.wait(0.2):
            pass
    return 0
