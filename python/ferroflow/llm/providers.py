"""The providers that ship with ferroflow: offline, OpenAI (the official client) and native (Rust)."""

from __future__ import annotations

import asyncio
import os
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    List,
    Optional,
    Tuple,
    Union,
)

from .. import _native
from .._clients import ClientPerLoop
from ..types import NodeContext
from .types import Message, Reply, Request, ToolCall, Usage, tool_arguments


def _words(text: str) -> int:
    return len(text.split())


class OfflineProvider:
    """A deterministic provider that needs no network: examples, tests, dry runs.

    ``reply(request)`` gives the reply: a string, or a list of :class:`ToolCall` (tool
    calls the model "asks" for). By default the reply is ``"echo: "`` and the last user
    message. Token usage counts words. ``latency`` (seconds) is waited before each reply.
    """

    def __init__(
        self, reply: Optional[Callable[[Request], Union[str, List[ToolCall]]]] = None, *, latency: float = 0.0
    ) -> None:
        self._reply = reply
        self.latency = latency
        self.calls = 0

    def _answer(self, request: Request) -> Reply:
        self.calls += 1
        answer: Union[str, List[ToolCall]]
        if self._reply is not None:
            answer = self._reply(request)
        else:
            last = next((m for m in reversed(request.messages) if m.get("role") == "user"), {})
            answer = f"echo: {last.get('content', '')}"
        prompt = sum(_words(str(m.get("content") or "")) for m in request.messages)
        if isinstance(answer, str):
            return Reply(answer, (), Usage(prompt, _words(answer)), request.model, "stop")
        return Reply("", tuple(answer), Usage(prompt, len(answer)), request.model, "tool_calls")

    async def complete(self, request: Request) -> Reply:
        if self.latency:
            await asyncio.sleep(self.latency)
        return self._answer(request)

    async def stream(self, request: Request) -> AsyncIterator[Union[str, Reply]]:
        reply = await self.complete(request)
        if reply.text:
            for i, word in enumerate(reply.text.split(" ")):
                yield word if i == 0 else " " + word
        yield reply


class OpenAIProvider(ClientPerLoop):
    """The reference provider, on the official ``openai`` client (``pip install openai``).

    One ``AsyncOpenAI`` client per provider and event loop, created on first use; LLM
    nodes make every call on ferroflow's background loop, so one client, and its pool of
    connections, serves every run of the process. ``base_url`` and
    ``api_key`` default to the client's own (the ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``
    environment variables). The client retries rate limits (429, honouring Retry-After),
    server errors and timeouts ``max_retries`` times with backoff; what still fails (the
    call, or the stream of its reply) raises an :class:`~ferroflow.errors.LLMError`, as
    :class:`NativeOpenAIProvider` does, naming the model and the base URL, with the
    client's error as its ``__cause__``: :class:`~ferroflow.errors.LLMAuthenticationError`
    for a bad key, :class:`~ferroflow.errors.LLMNotFoundError` for an unknown model,
    :class:`~ferroflow.errors.LLMConnectionError` for a server that cannot be reached, and
    so on (see :func:`ferroflow._clients.llm_error`). It fails the node.
    """

    def __init__(
        self,
        *,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        max_retries: int = 2,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout)

    def _library(self) -> Any:
        import openai

        return openai

    def _make_client(self) -> Any:
        return self._library().AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, max_retries=self.max_retries, timeout=self.timeout
        )

    @staticmethod
    def _arguments(request: Request) -> Dict[str, Any]:
        arguments: Dict[str, Any] = dict(request.params)
        arguments["model"] = request.model
        arguments["messages"] = request.messages
        if request.tools:
            arguments["tools"] = [t.spec() for t in request.tools]
        return arguments

    async def complete(self, request: Request) -> Reply:
        with self._failures(request.model):
            response = await self._client().chat.completions.create(**self._arguments(request))
        choice = response.choices[0]
        calls = tuple(
            ToolCall(c.id, c.function.name, tool_arguments(response.model, c.function.name, c.function.arguments))
            for c in choice.message.tool_calls or ()
        )
        usage = response.usage
        return Reply(
            text=choice.message.content or "",
            tool_calls=calls,
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            model=response.model,
            finish_reason=choice.finish_reason or "stop",
        )

    async def stream(self, request: Request) -> AsyncIterator[Union[str, Reply]]:
        arguments = self._arguments(request)
        arguments["stream"] = True
        arguments["stream_options"] = {"include_usage": True}
        with self._failures(request.model):
            chunks = await self._client().chat.completions.create(**arguments)
        text: List[str] = []
        calls: Dict[int, Dict[str, Any]] = {}
        usage, model, finish = Usage(), request.model, "stop"
        with self._failures(request.model, streaming=True):
            async for chunk in chunks:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        yield delta.content
                    for call in delta.tool_calls or ():
                        slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                        slot["id"] = call.id or slot["id"]
                        if call.function is not None:
                            slot["name"] += call.function.name or ""
                            slot["arguments"] += call.function.arguments or ""
                    finish = choice.finish_reason or finish
        tool_calls = tuple(
            ToolCall(c["id"], c["name"], tool_arguments(model, c["name"], c["arguments"]))
            for _, c in sorted(calls.items())
        )
        yield Reply("".join(text), tool_calls, usage, model, finish)


class NativeOpenAIProvider:
    """An OpenAI-compatible provider whose client is native: ferroflow's own Rust client
    (``reqwest`` over tokio, one pool of keep-alive connections per provider), so that a
    model call's HTTP work, streaming and JSON parsing run on the engine's threads, without
    the GIL. Use it where the ``openai`` client's CPU (about 1.5-2 ms of Python per
    request) would cap throughput.

    ``base_url`` and ``api_key`` default to the ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``
    environment variables (then to ``https://api.openai.com/v1`` and no key, for local
    servers that need none). Failed calls are retried as the ``openai`` client retries them
    (connection failures, timeouts, 408, 409, 429 and 5xx, ``max_retries`` times, with
    backoff from 0.5 s to 8 s), waiting instead what the server asks in ``Retry-After``
    (up to a minute); ``timeout`` bounds each attempt (for a stream, each wait for data).
    What still fails raises an :class:`~ferroflow.errors.LLMError`:
    :class:`~ferroflow.errors.LLMAuthenticationError` for a bad key,
    :class:`~ferroflow.errors.LLMNotFoundError` for an unknown model, and so on.

    In an LLM node, the client also reports each streamed token to the run's watchers and
    records the reply in the run's journal itself, from Rust. The ``complete`` and
    ``stream`` methods of the provider protocol work anywhere else (and under
    :class:`Limited`, which calls them).
    """

    def __init__(
        self,
        *,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        max_retries: int = 2,
        timeout: float = 60.0,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {max_retries}")
        self.base_url, self.max_retries, self.timeout = base_url, max_retries, timeout
        self._api_key = api_key
        self._made: Tuple[int, _native.OpenAIClient] = (os.getpid(), self._new_client())

    def _new_client(self) -> _native.OpenAIClient:
        return _native.OpenAIClient(self.base_url, self._api_key, self.max_retries, self.timeout)

    @property
    def _client(self) -> _native.OpenAIClient:
        """The client of this process: a child made by ``fork`` gets its own, as the
        parent's connections belong to the parent's runtime."""
        pid, client = self._made
        if pid != os.getpid():
            client = self._new_client()
            self._made = (os.getpid(), client)
        return client

    def __repr__(self) -> str:
        return f"NativeOpenAIProvider(base_url={self.base_url!r})"

    @staticmethod
    def _parts(request: Request) -> Tuple[str, List[Message], List[Dict[str, Any]], Dict[str, Any]]:
        return request.model, request.messages, [t.spec() for t in request.tools], dict(request.params)

    async def complete(self, request: Request) -> Reply:
        return Reply.from_json(await self._client.call(*self._parts(request), False))

    async def stream(self, request: Request) -> AsyncIterator[Union[str, Reply]]:
        async for part in self._client.open_stream(*self._parts(request)):
            yield part if isinstance(part, str) else Reply.from_json(part)

    async def _model_step(self, ctx: NodeContext, key: str, request: Request, stream: bool) -> Dict[str, Any]:
        """An LLM node's model call, made and recorded as step ``key`` of ``ctx``'s node
        natively; streamed tokens go to the run's watchers from Rust too."""
        handle = ctx._handle
        return await self._client.call(*self._parts(request), stream, handle, key if handle is not None else None)
