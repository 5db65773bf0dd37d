"""What providers take and give: requests, replies, tool calls, usage; the provider protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Tuple,
    Union,
)

from ..errors import MalformedReplyError

if TYPE_CHECKING:
    from .tools import Tool

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
