"""An LLM node's work: its model and tool calls as recorded steps, and the body ``graph.llm`` builds."""

from __future__ import annotations

import asyncio
import inspect
import json
import typing
from dataclasses import replace
from typing import (
    Any,
    Awaitable,
    Callable,
    Coroutine,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
)

from .. import _native
from .._loop import background_loop
from ..types import NodeContext
from .tools import Tool
from .types import Message, Provider, Reply, Request, ToolCall, ToolLoopLimitError, Usage


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
    ctx._refuse_unrecorded(key)
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
