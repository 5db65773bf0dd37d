"""Anthropic's API as the mock server speaks it: error bodies, what a messages request must carry
(roles, ``max_tokens``, tools, ``tool_use`` and ``tool_result`` blocks that pair up), and the
answers (a message, its SSE events), with no I/O."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .records import ToolCall
from .text import count_words, cut_text, split_wordish, text_of

_ERROR_KINDS: Dict[int, Tuple[str, str]] = {
    400: ("invalid_request_error", "Bad request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Payment required."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limit reached (injected by the mock server)."),
    500: ("api_error", "Internal server error (injected by the mock server)."),
    504: ("timeout_error", "Gateway timeout (injected by the mock server)."),
    529: ("overloaded_error", "Overloaded (injected by the mock server)."),
}


def error_body(status: int, message: Optional[str] = None) -> Dict[str, Any]:
    """Anthropic's error JSON for ``status``: ``{"type": "error", "error": {"type", "message"}}``."""
    kind, default_message = _ERROR_KINDS.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", f"HTTP {status}.")
    )
    return {"type": "error", "error": {"type": kind, "message": message if message is not None else default_message}}


def event(data: Dict[str, Any]) -> bytes:
    """One SSE event, named after its ``type``."""
    return b"event: %s\ndata: %s\n\n" % (data["type"].encode(), json.dumps(data).encode())


def error_event(status: int, message: Optional[str]) -> bytes:
    """The event a stream that fails in its middle ends with."""
    return event(error_body(status, message))


STOP = event({"type": "message_stop"})
"""The last event of a stream."""


def auth_problem(x_api_key: Optional[str], authorization: str, api_key: str) -> Optional[str]:
    """Why Anthropic's API would answer 401 to a request with these ``x-api-key`` (``None`` when
    absent) and ``Authorization`` headers, or ``None``."""
    key = x_api_key
    if key is None:
        key = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else None
    if key is None or not key.strip():
        return "x-api-key header is required"
    if key.strip() != api_key:
        return "invalid x-api-key"
    return None


def _blocks(content: Any) -> List[Dict[str, Any]]:
    """The content blocks of an Anthropic message's ``content`` (none for a string)."""
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def request_problem(body: Dict[str, Any]) -> Optional[str]:
    """Why Anthropic's API would reject a messages request (HTTP 400), or ``None``."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        return "max_tokens: Input should be a valid integer, greater than or equal to 0"
    messages = body.get("messages")
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or not all(isinstance(b, dict) and b.get("type") == "text" for b in system):
            return "system: Input should be a valid string or a list of text blocks"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{i}: Input should be an object"
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), (str, list)):
            return f"messages.{i}.content: Field required"
        uses = [b.get("id") for b in _blocks(message["content"]) if b.get("type") == "tool_use"]
        results = [b.get("tool_use_id") for b in _blocks(message["content"]) if b.get("type") == "tool_result"]
        if results:
            before = messages[i - 1] if i > 0 and isinstance(messages[i - 1], dict) else {}
            offered = {b.get("id") for b in _blocks(before.get("content")) if b.get("type") == "tool_use"}
            unknown = [r for r in results if r not in offered]
            if message["role"] != "user" or unknown:
                return (
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{', '.join(map(str, unknown or results))}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
        if uses and i + 1 < len(messages):
            after = messages[i + 1] if isinstance(messages[i + 1], dict) else {}
            answered = {b.get("tool_use_id") for b in _blocks(after.get("content")) if b.get("type") == "tool_result"}
            missing = [u for u in uses if u not in answered]
            if missing:
                return (
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(map(str, missing))}. Each `tool_use` block must have a corresponding "
                    "`tool_result` block in the next message."
                )
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, spec in enumerate(tools):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                return f"tools.{i}.name: Field required"
            if spec.get("type", "custom") == "custom" and not isinstance(spec.get("input_schema"), dict):
                return f"tools.{i}.custom.input_schema: Field required"
    return None


def message(
    seq: int, body: Dict[str, Any], reply: Union[str, Sequence[Tuple[str, ToolCall]]]
) -> Tuple[Dict[str, Any], List[str]]:
    """The answer to the ``seq``-th request, a valid ``body`` (see :func:`request_problem`): the
    message, and what each of its content blocks' deltas carry when streamed (see :func:`events`).

    A text ``reply`` is cut at the request's ``stop_sequences`` and ``max_tokens``; tool calls,
    with their ids, are ``tool_use`` blocks."""
    system = body.get("system")
    prompt_texts = [text_of(system)] if system is not None else []
    prompt_texts.extend(text_of(m.get("content")) for m in body["messages"])
    input_tokens = sum(count_words(text) for text in prompt_texts)
    content: List[Dict[str, Any]] = []
    wire: List[str] = []  # what each block's deltas carry when streamed
    stop_sequence: Optional[str] = None
    if isinstance(reply, str):
        stops = body.get("stop_sequences")
        stops = [s for s in stops if isinstance(s, str)] if isinstance(stops, list) else []
        text, stop_reason, stop_sequence = cut_text(reply, stops, body["max_tokens"])
        content.append({"type": "text", "text": text})
        wire.append(text)
        output_tokens = count_words(text)
    else:
        stop_reason, output_tokens = "tool_use", 0
        for id_, call in reply:
            arguments: Any = call.arguments
            if isinstance(arguments, str):
                try:
                    decoded = json.loads(arguments)
                except ValueError:
                    decoded = None
                arguments = decoded if isinstance(decoded, dict) else arguments
            content.append({"type": "tool_use", "id": id_, "name": call.name, "input": arguments})
            wire.append(call.arguments_json)
            output_tokens += count_words(call.name + " " + call.arguments_json)
    answer: Dict[str, Any] = {
        "id": f"msg_mock{seq:06d}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return answer, wire


def events(answer: Dict[str, Any], wire: List[str]) -> List[bytes]:
    """``answer`` (see :func:`message`) as Anthropic's events but the last (:data:`STOP`):
    ``message_start``, ``ping``, per block ``content_block_start``, ``content_block_delta``
    (``text_delta`` or ``input_json_delta``) per word-ish token of ``wire``, ``content_block_stop``;
    then ``message_delta``."""
    usage = answer["usage"]
    start = {
        **answer,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0},
    }
    out = [event({"type": "message_start", "message": start}), event({"type": "ping"})]
    for index, (block, text) in enumerate(zip(answer["content"], wire)):
        if block["type"] == "text":
            head: Dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": token} for token in split_wordish(text)]
        else:
            head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": token} for token in split_wordish(text)]
        out.append(event({"type": "content_block_start", "index": index, "content_block": head}))
        out.extend(event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas)
        out.append(event({"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": answer["stop_reason"], "stop_sequence": answer["stop_sequence"]}
    out.append(event({"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}))
    return out
