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

from ..errors import MalformedReplyError
from .anthropic import AnthropicProvider
from .limits import Limited
from .node import converse as converse  # not in __all__: for LLM nodes written by hand
from .providers import NativeOpenAIProvider, OfflineProvider, OpenAIProvider
from .tools import Tool, tool
from .types import Provider, Reply, Request, ToolCall, ToolLoopLimitError, Usage
from .types import tool_arguments as tool_arguments  # not in __all__: what providers share

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

# The package's parts are its own business: the classes are ferroflow.llm's, as they were
# before it was a package (their names are in reprs and in the error types journals record).
for _public in (
    AnthropicProvider,
    Limited,
    NativeOpenAIProvider,
    OfflineProvider,
    OpenAIProvider,
    Provider,
    Reply,
    Request,
    Tool,
    ToolCall,
    ToolLoopLimitError,
    Usage,
    tool,
):
    _public.__module__ = __name__
del _public
