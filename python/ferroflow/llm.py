"""LLM providers and tools: what ``graph.llm`` nodes call.

A provider turns a :class:`Request` (model, messages, tools, parameters) into a
:class:`Reply` (text, tool calls, token usage), whole with :meth:`Provider.complete` or
token by token with :meth:`Provider.stream`. Three ship here:

- :class:`OpenAIProvider`, the reference, on the official ``openai`` client (async, one
  connection pool per provider). ``base_url`` points it at any OpenAI-compatible server:
  vLLM, llama.cpp, Ollama, or :class:`ferroflow.testing.MockLLMServer` in tests.
- :class:`AnthropicProvider`, Anthropic's Messages API on the official ``anthropic``
  client (``pip install anthropic``).
- :class:`OfflineProvider`, deterministic and local, for examples and tests.

Any object with the same two methods is a provider.

Tools are Python callables; :func:`tool` derives their JSON schema from the signature and
docstring, so that an LLM node can offer them to the model (function calling) and run the
calls the model makes.

An LLM node's model calls and tool calls are each recorded in the run's journal as they
complete (``ctx.step``): a run that crashed in the middle of a tool-calling loop resumes
without paying for those calls again.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import os
import typing
from dataclasses import dataclass, field, replace
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Deque,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
)

from . import _native
from ._clients import ClientPerLoop
from ._loop import background_loop
from .errors import MalformedReplyError
from .types import NodeContext

__all__ = [
    "AnthropicProvider",
    "Limited",
    "MalformedReplyError",
    "NativeOpenAIProvider",
    "OfflineProvider",
    "OpenAIProvider",
    "Provider",
    "Reply",
    "Request",
    "Tool",
    "ToolCall",
    "ToolLoopLimitError",
    "Usage",
    "tool",
]

Message = Dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool the model asked for."""

    id: str
    name: str
    arguments: Dict[str, Any]


@dataclass(frozen=True)
class Usage:
    """Tokens a call (or a node's calls, summed) used."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True)
class Request:
    """What an LLM node asks of its provider."""

    model: str
    messages: List[Message]
    tools: List[Tool] = field(default_factory=list)
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A model's reply: its text, the tool calls it asks for, and what it cost."""

    text: str
    tool_calls: Tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    model: str = ""
    finish_reason: str = "stop"

    def to_json(self) -> Dict[str, Any]:
        """The reply as JSON data: what is journaled, and an LLM node's output."""
        return {
            "text": self.text,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls],
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens,
            },
            "model": self.model,
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reply:
        usage = data.get("usage") or {}
        return cls(
            text=data.get("text") or "",
            tool_calls=tuple(ToolCall(c["id"], c["name"], dict(c["arguments"])) for c in data.get("tool_calls") or ()),
            usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            model=data.get("model") or "",
            finish_reason=data.get("finish_reason") or "stop",
        )


class Provider(Protocol):
    """What an LLM node calls. ``stream`` yields the reply's text deltas (``str``) as they
    arrive, then the whole :class:`Reply` last."""

    async def complete(self, request: Request) -> Reply: ...

    def stream(self, request: Request) -> AsyncIterator[Union[str, Reply]]: ...


class ToolLoopLimitError(RuntimeError):
    """The model kept calling tools past the node's ``max_tool_rounds``."""


def tool_arguments(model: str, name: str, text: Optional[str]) -> Dict[str, Any]:
    """The arguments of the model's call of tool ``name``, given as JSON ``text``."""
    try:
        arguments = json.loads(text) if text and text.strip() else {}
    except json.JSONDecodeError as e:
        raise MalformedReplyError(
            f"model {model!r} called tool {name!r} with arguments that are not JSON ({e}): {text!r}",
            model=model,
        ) from None
    if not isinstance(arguments, dict):
        raise MalformedReplyError(
            f"model {model!r} called tool {name!r} with arguments that are not a JSON object: {text!r}",
            model=model,
        )
    return arguments


# -- tools ------------------------------------------------------------------------------

_JSON_TYPES: Dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


def _schema_of(annotation: Any) -> Dict[str, Any]:
    """The JSON schema of a parameter's type annotation (an empty schema for ``Any``)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is Union and len(args) == 1:
        return _schema_of(args[0])
    if origin in (list, List, Sequence, tuple):
        return {"type": "array", "items": _schema_of(args[0])} if args else {"type": "array"}
    if origin in (dict, Dict, Mapping):
        return {"type": "object"}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    return {}


@dataclass(frozen=True)
class Tool:
    """A Python callable a model can call: ``name``, ``description`` and the JSON schema of
    its ``parameters`` are what the model sees. Build one with :func:`tool`."""

    name: str
    description: str
    parameters: Dict[str, Any]
    fn: Callable[..., Any] = field(repr=False, compare=False)

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], *, name: Optional[str] = None, description: Optional[str] = None
    ) -> Tool:
        """The tool of ``fn``: parameters from its signature and type hints (a parameter
        without a default is required), the description from its docstring's first
        paragraph."""
        hints = typing.get_type_hints(fn)
        properties: Dict[str, Any] = {}
        required: List[str] = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"tool {fn.__name__!r}: parameter {p.name!r} cannot be described to a model")
            properties[p.name] = _schema_of(hints.get(p.name, Any))
            if p.default is p.empty:
                required.append(p.name)
        doc = inspect.getdoc(fn) or ""
        summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
        return cls(
            name=name or fn.__name__,
            description=description if description is not None else summary,
            parameters={"type": "object", "properties": properties, "required": required},
            fn=fn,
        )

    def spec(self) -> Dict[str, Any]:
        """The tool as OpenAI's ``tools`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    async def acall(self, arguments: Mapping[str, Any]) -> Any:
        """Calls the tool with the model's arguments: awaited if async, on a worker thread
        if not (so that a slow tool does not hold up the event loop)."""
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**arguments)
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.fn(**arguments))


def tool(
    fn: Optional[Callable[..., Any]] = None, /, *, name: Optional[str] = None, description: Optional[str] = None
) -> Any:
    """Makes a :class:`Tool` of a function: ``@ff.tool`` or ``@ff.tool(name=...)``."""
    if fn is None:
        return lambda f: Tool.from_function(f, name=name, description=description)
    return Tool.from_function(fn, name=name, description=description)


# -- providers --------------------------------------------------------------------------


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


class Limited:
    """``provider`` under limits that every run of the process shares: at most
    ``concurrency`` calls at once, at most ``requests`` calls started and ``tokens`` tokens
    used (as the replies' usage reports them) in any ``per`` seconds (a sliding window; 60
    by default, so ``requests`` and ``tokens`` are per minute). A call that would exceed a
    limit waits until it would not.

    The limits are kept per event loop; LLM nodes make all their calls on ferroflow's
    background loop, so for them the limits are the process's. The token budget is
    charged when a reply arrives: a burst of calls started together may overshoot it by
    what those calls use.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        concurrency: Optional[int] = None,
        requests: Optional[int] = None,
        tokens: Optional[int] = None,
        per: float = 60.0,
    ) -> None:
        for label, value in (("concurrency", concurrency), ("requests", requests), ("tokens", tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be at least 1, not {value}")
        if not per > 0:
            raise ValueError(f"per must be more than 0 seconds, not {per}")
        self.provider = provider
        self.concurrency, self.requests, self.tokens, self.per = concurrency, requests, tokens, per
        self._state: Dict[int, Tuple[asyncio.AbstractEventLoop, _LimitState]] = {}

    def _limits(self) -> _LimitState:
        loop = asyncio.get_running_loop()
        known = self._state.get(id(loop))
        if known is None or known[0] is not loop:
            known = self._state[id(loop)] = (loop, _LimitState(self.concurrency))
        return known[1]

    async def _admit(self, state: _LimitState) -> None:
        """Waits until a call fits the request and token budgets, and counts it."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while state.started and state.started[0] <= now - self.per:
                state.started.popleft()
            while state.used and state.used[0][0] <= now - self.per:
                state.used.popleft()
            waits = []
            if self.requests is not None and len(state.started) >= self.requests:
                waits.append(state.started[0] + self.per - now)
            if self.tokens is not None and sum(n for _, n in state.used) >= self.tokens:
                waits.append(state.used[0][0] + self.per - now)
            if not waits:
                state.started.append(now)
                return
            await asyncio.sleep(max(min(waits), 0.001))

    async def complete(self, request: Request) -> Reply:
        state = self._limits()
        async with state.slots:
            await self._admit(state)
            reply = await self.provider.complete(request)
            state.used.append((asyncio.get_running_loop().time(), reply.usage.total_tokens))
            return reply

    async def stream(self, request: Request) -> AsyncIterator[Union[str, Reply]]:
        state = self._limits()
        async with state.slots:
            await self._admit(state)
            async for part in self.provider.stream(request):
                if isinstance(part, Reply):
                    state.used.append((asyncio.get_running_loop().time(), part.usage.total_tokens))
                yield part


class _Unlimited:
    """An ``async with`` that waits for nothing."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: Any) -> None:
        return None


class _LimitState:
    """One loop's bookkeeping for :class:`Limited`."""

    def __init__(self, concurrency: Optional[int]) -> None:
        self.slots: Any = asyncio.Semaphore(concurrency) if concurrency else _Unlimited()
        self.started: Deque[float] = collections.deque()
        self.used: Deque[Tuple[float, int]] = collections.deque()


# -- the LLM node's body ----------------------------------------------------------------


def _messages(prompt: Any, node: str) -> List[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
        return list(prompt)
    raise TypeError(
        f"LLM node '{node}' must return its prompt: a string, or a list of messages "
        f"({{'role': ..., 'content': ...}}), not {type(prompt).__name__}"
    )


async def _on_provider_loop(call: Callable[[], Coroutine[Any, Any, Dict[str, Any]]]) -> Dict[str, Any]:
    """Runs ``call()`` on the process's background event loop and waits for it from this
    one. Every model call of the process runs there, whatever loop its run uses (the
    caller's, for ``arun``): a provider's client and its connection pool live on one loop
    for the life of the process, so connections are reused across runs, and none is left
    behind on a loop that ``asyncio.run`` closed. Cancelling the wait cancels the call."""
    loop = background_loop()
    if asyncio.get_running_loop() is loop:
        return await call()
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))


async def _call(ctx: NodeContext, provider: Provider, request: Request, stream: bool) -> Dict[str, Any]:
    """One model call, its text deltas reported as they arrive when streaming."""
    if not stream:
        return (await provider.complete(request)).to_json()
    reply: Optional[Reply] = None
    async for part in provider.stream(request):
        if isinstance(part, Reply):
            reply = part
        else:
            ctx.emit({"token": part})
    if reply is None:
        raise RuntimeError(f"the provider's stream for node '{ctx.node}' ended without a reply")
    return reply.to_json()


async def _model_step(ctx: NodeContext, provider: Provider, n: int, request: Request, stream: bool) -> Dict[str, Any]:
    """Model call ``n`` of the attempt as a recorded step (its key shared with Rust LLM
    nodes, ``_native.model_call_keys``): the recorded reply if an earlier attempt made the
    call (in Python or Rust), else the call, recorded. A native provider does it all in
    Rust; any other runs on the provider loop (``_on_provider_loop``)."""
    key, legacy = _native.model_call_keys(n)
    for recorded in (key, legacy):
        if recorded in ctx.recorded:
            return typing.cast(Dict[str, Any], ctx.recorded[recorded])
    native = getattr(provider, "_model_step", None)
    if native is not None:
        return typing.cast(Dict[str, Any], await native(ctx, key, request, stream))

    async def ask() -> Dict[str, Any]:
        return await _on_provider_loop(lambda: _call(ctx, provider, request, stream))

    return await ctx.astep(key, ask)


async def converse(
    ctx: NodeContext,
    provider: Provider,
    request: Request,
    *,
    stream: bool = False,
    max_tool_rounds: int = 8,
) -> Dict[str, Any]:
    """An LLM node's work: calls the model and, while it asks for tools the request offers,
    runs them and calls it again with their results. Every model call and tool call is a
    recorded step (``ctx.astep``), so an attempt that runs again repeats none that
    completed. Returns the last reply's JSON, with ``usage`` summed over the calls and the
    ``tool_results`` in order."""
    tools = {t.name: t for t in request.tools}
    messages = list(request.messages)
    usage = Usage()
    results: List[Dict[str, Any]] = []
    for round_ in range(max_tool_rounds + 1):
        asked = replace(request, messages=list(messages))

        reply_json = await _model_step(ctx, provider, round_, asked, stream)
        reply = Reply.from_json(reply_json)
        usage = usage + reply.usage
        if not reply.tool_calls or not tools:
            break
        if round_ == max_tool_rounds:
            raise ToolLoopLimitError(
                f"LLM node '{ctx.node}': the model still calls tools after {max_tool_rounds} rounds (max_tool_rounds)"
            )
        messages.append(
            {
                "role": "assistant",
                "content": reply.text or None,
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                    for c in reply.tool_calls
                ],
            }
        )
        for i, call in enumerate(reply.tool_calls):
            chosen = tools.get(call.name)

            async def run(chosen: Optional[Tool] = chosen, call: ToolCall = call) -> Any:
                if chosen is None:
                    return {"error": f"there is no tool named {call.name!r}"}
                return await chosen.acall(call.arguments)

            result = await ctx.astep(_native.tool_call_key(round_, i), run)
            results.append({"name": call.name, "arguments": call.arguments, "result": result})
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    output = reply.to_json()
    output["usage"] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    output["tool_results"] = results
    return output


def llm_body(
    fn: Callable[..., Any],
    *,
    provider: Provider,
    model: str,
    tools: Sequence[Union[Tool, Callable[..., Any]]] = (),
    stream: bool = False,
    max_tool_rounds: int = 8,
    params: Optional[Mapping[str, Any]] = None,
) -> Callable[..., Awaitable[Dict[str, Any]]]:
    """The async body of an LLM node whose prompt ``fn`` builds: ``fn`` takes the node's
    parameters (dependencies by name, ``input``, ``ctx``) and returns a string or a list of
    messages; the body calls the model (see :func:`converse`)."""
    offered = [t if isinstance(t, Tool) else Tool.from_function(t) for t in tools]
    signature = inspect.signature(fn)
    own_ctx = "ctx" in signature.parameters
    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = list(signature.parameters)

    async def body(*args: Any) -> Dict[str, Any]:
        if own_ctx:
            ctx = args[names.index("ctx")]
        else:
            ctx, args = args[0], args[1:]
        prompt = fn(*args)
        if inspect.isawaitable(prompt):
            prompt = await prompt
        request = Request(model, _messages(prompt, ctx.node), offered, dict(params or {}))
        return await converse(ctx, provider, request, stream=stream, max_tool_rounds=max_tool_rounds)

    parameters = list(signature.parameters.values())
    body.__signature__ = signature if own_ctx else signature.replace(parameters=[ctx_param, *parameters])  # type: ignore[attr-defined]
    body.__name__ = getattr(fn, "__name__", "llm")
    body.__qualname__ = getattr(fn, "__qualname__", body.__name__)
    return body


# The second provider lives in its own module, which refers back to this one.
from ._anthropic import AnthropicProvider  # noqa: E402
