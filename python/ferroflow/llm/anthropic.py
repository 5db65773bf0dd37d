"""The Anthropic provider: LLM nodes on Anthropic's Messages API, through the official
``anthropic`` client (``pip install anthropic``).

:class:`AnthropicProvider` speaks the same provider protocol as
:class:`ferroflow.llm.OpenAIProvider` (``complete`` and ``stream``), so a graph changes provider
and nothing else. ferroflow's requests carry OpenAI-style messages; they are converted on the way
out:

- ``system`` messages become Anthropic's ``system`` parameter (joined by blank lines);
- ``user`` and ``assistant`` messages keep their content; an assistant message with
  ``tool_calls`` becomes content blocks: a ``text`` block (if it has text), then one ``tool_use``
  block per call (``id``, ``name``, ``input``: the decoded arguments);
- each ``tool`` message (``tool_call_id``, ``content``) becomes a ``tool_result`` block of a
  ``user`` message, consecutive results sharing one message;
- the request's tools become ``{"name", "description", "input_schema"}`` entries, its parameters
  pass through (``max_tokens``, which Anthropic requires, defaults to the provider's).

and the reply on the way back: its text blocks joined, its ``tool_use`` blocks as
:class:`~ferroflow.llm.ToolCall` s, ``usage.input_tokens`` and ``output_tokens`` as prompt and
completion tokens, and ``stop_reason`` as an OpenAI-style ``finish_reason`` (``"tool_calls"``,
``"stop"``, ``"length"``).
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .._clients import ClientPerLoop

# ``ferroflow.llm`` re-exports this module's provider: its names are looked up at call time, so
# that importing either module first works.
from . import types as _llm

if TYPE_CHECKING:
    from .types import Reply, Request

__all__ = ["AnthropicProvider"]

# Anthropic's stop reasons as OpenAI-style finish reasons (others pass unchanged).
_FINISH_REASONS: Dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}


def _finish_reason(stop_reason: Optional[str]) -> str:
    if stop_reason is None:
        return "stop"
    return _FINISH_REASONS.get(stop_reason, stop_reason)


def _text_of(content: Any) -> str:
    """The text of an OpenAI-style message content: a string, or its text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _decode_arguments(value: Any) -> Dict[str, Any]:
    """A tool call's arguments as a dict: decoded when they are JSON text."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, Mapping):
        raise ValueError(f"tool call arguments must be a JSON object, not {value!r}")
    return dict(value)


def _in_body(create: Any, arguments: Dict[str, Any]) -> Dict[str, Any]:
    """``arguments`` for ``create``, those it does not take as keywords (a parameter the installed
    client version does not know) moved to ``extra_body``: sent in the request's JSON as they are."""
    try:
        parameters = inspect.signature(create).parameters.values()
    except (TypeError, ValueError):
        return arguments
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return arguments
    known = {p.name for p in parameters}
    unknown = {name: arguments.pop(name) for name in list(arguments) if name not in known}
    if unknown:
        arguments["extra_body"] = {**unknown, **(arguments.get("extra_body") or {})}
    return arguments


def _convert_messages(messages: Sequence[Mapping[str, Any]]) -> Tuple[List[str], List[Dict[str, Any]]]:
    """OpenAI-style chat messages as Anthropic's: ``(system texts, messages)``.

    :raises ValueError: for a message of a role Anthropic has no place for (``function``, or
        unknown).
    """
    system: List[str] = []
    converted: List[Dict[str, Any]] = []
    results: Optional[List[Dict[str, Any]]] = None  # the tool_result blocks of the last message
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role == "tool":
            block = {"type": "tool_result", "tool_use_id": message.get("tool_call_id"), "content": _text_of(content)}
            if results is None:
                results = [block]
                converted.append({"role": "user", "content": results})
            else:
                results.append(block)
            continue
        results = None
        if role in ("system", "developer"):
            system.append(_text_of(content))
        elif role == "user":
            converted.append({"role": "user", "content": content if content is not None else ""})
        elif role == "assistant":
            calls = message.get("tool_calls") or []
            if not calls:
                converted.append({"role": "assistant", "content": content if content is not None else ""})
                continue
            blocks: List[Dict[str, Any]] = []
            text = _text_of(content)
            if text:
                blocks.append({"type": "text", "text": text})
            for call in calls:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": _decode_arguments(function.get("arguments")),
                    }
                )
            converted.append({"role": "assistant", "content": blocks})
        else:
            raise ValueError(f"a message of role {role!r} cannot be sent to Anthropic's Messages API")
    return system, converted


class AnthropicProvider(ClientPerLoop):
    """A provider on Anthropic's Messages API, through the official ``anthropic`` client.

    One ``AsyncAnthropic`` client per provider and event loop, created on first use; LLM nodes
    make every call on ferroflow's background loop, so one client, and its pool of connections,
    serves every run of the process. ``base_url`` and ``api_key`` default to the client's own (the
    ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_API_KEY`` environment variables); ``base_url`` is the
    server's root (the client appends ``/v1/messages``), e.g.
    :attr:`ferroflow.testing.MockLLMServer.anthropic_base_url` in tests. The client retries rate
    limits (429, honouring Retry-After), server errors, overloads and timeouts ``max_retries``
    times with backoff; what still fails (the call, or the stream of its reply) raises an
    :class:`~ferroflow.errors.LLMError` naming the model and the base URL, with the client's
    error as its ``__cause__`` (:class:`~ferroflow.errors.LLMAuthenticationError` for a bad key,
    :class:`~ferroflow.errors.LLMNotFoundError` for an unknown model, and so on, as for
    :class:`~ferroflow.llm.OpenAIProvider`), which fails the node. ``max_tokens`` is the default
    of a request's ``max_tokens`` (a node's ``params`` may set its own). A parameter that the
    installed client's ``messages.create`` does not take as a keyword (e.g. ``temperature``, which
    recent clients dropped) goes in the request's JSON as it is (the client's ``extra_body``).

    :param base_url: the API's root URL (default: the client's).
    :param api_key: the API key (default: the client's, from ``ANTHROPIC_API_KEY``).
    :param max_retries: how many times the client retries a call that failed transiently.
    :param timeout: seconds the client waits for a reply.
    :param max_tokens: the most tokens a reply may have, unless a request says otherwise.
    """

    def __init__(
        self,
        *,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        max_retries: int = 2,
        timeout: float = 60.0,
        max_tokens: int = 1024,
    ) -> None:
        super().__init__(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout)
        self.max_tokens = max_tokens

    def _library(self) -> Any:
        import anthropic

        return anthropic

    def _make_client(self) -> Any:
        return self._library().AsyncAnthropic(
            base_url=self.base_url, api_key=self.api_key, max_retries=self.max_retries, timeout=self.timeout
        )

    def _arguments(self, request: Request) -> Dict[str, Any]:
        """The keyword arguments of ``messages.create`` for ``request``."""
        system, messages = _convert_messages(request.messages)
        arguments: Dict[str, Any] = dict(request.params)
        arguments["model"] = request.model
        arguments["messages"] = messages
        arguments.setdefault("max_tokens", self.max_tokens)
        if system:
            given = arguments.get("system")
            if given is None:
                arguments["system"] = "\n\n".join(system)
            elif isinstance(given, str):
                arguments["system"] = "\n\n".join([given, *system])
            else:
                arguments["system"] = [*given, *({"type": "text", "text": text} for text in system)]
        if request.tools:
            arguments["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools
            ]
        return arguments

    async def complete(self, request: Request) -> Reply:
        """The model's whole reply to ``request``."""
        create = self._client().messages.create
        with self._failures(request.model):
            response = await create(**_in_body(create, self._arguments(request)))
        text: List[str] = []
        calls: List[_llm.ToolCall] = []
        for block in response.content:
            if block.type == "text":
                text.append(block.text)
            elif block.type == "tool_use":
                calls.append(_llm.ToolCall(block.id, block.name, _decode_arguments(block.input)))
        usage = response.usage
        return _llm.Reply(
            text="".join(text),
            tool_calls=tuple(calls),
            usage=_llm.Usage(usage.input_tokens or 0, usage.output_tokens or 0) if usage else _llm.Usage(),
            model=response.model or request.model,
            finish_reason=_finish_reason(response.stop_reason),
        )

    async def stream(self, request: Request) -> AsyncIterator[Union[str, Reply]]:
        """The model's reply to ``request``: its text deltas as they arrive, then the whole
        :class:`~ferroflow.llm.Reply` (tool calls assembled from their ``input_json_delta`` s)."""
        arguments = self._arguments(request)
        arguments["stream"] = True
        create = self._client().messages.create
        with self._failures(request.model):
            events = await create(**_in_body(create, arguments))
        text: List[str] = []
        calls: Dict[int, Dict[str, Any]] = {}
        input_tokens = output_tokens = 0
        model, stop_reason = request.model, None
        try:
            with self._failures(request.model, streaming=True):
                async for event in events:
                    if event.type == "message_start":
                        model = event.message.model or model
                        if event.message.usage is not None:
                            input_tokens = event.message.usage.input_tokens or 0
                            output_tokens = event.message.usage.output_tokens or 0
                    elif event.type == "content_block_start":
                        block = event.content_block
                        if block.type == "tool_use":
                            calls[event.index] = {"id": block.id, "name": block.name, "input": block.input, "json": ""}
                        elif block.type == "text" and block.text:
                            text.append(block.text)
                            yield block.text
                    elif event.type == "content_block_delta":
                        delta = event.delta
                        if delta.type == "text_delta" and delta.text:
                            text.append(delta.text)
                            yield delta.text
                        elif delta.type == "input_json_delta" and event.index in calls:
                            calls[event.index]["json"] += delta.partial_json
                    elif event.type == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        if event.usage is not None:
                            output_tokens = event.usage.output_tokens or output_tokens
                            input_tokens = getattr(event.usage, "input_tokens", None) or input_tokens
        finally:
            await events.close()
        tool_calls = tuple(
            _llm.ToolCall(c["id"], c["name"], _decode_arguments(c["json"] or c["input"] or {}))
            for _, c in sorted(calls.items())
        )
        usage = _llm.Usage(input_tokens, output_tokens)
        yield _llm.Reply("".join(text), tool_calls, usage, model, _finish_reason(stop_reason))
