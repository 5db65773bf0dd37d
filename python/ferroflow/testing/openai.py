"""OpenAI's API as the mock server speaks it: error bodies, what a chat completions request must
carry, and the answers (a completion, its SSE chunks, the model objects), with no I/O."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .records import ToolCall
from .text import count_words, split_wordish, text_of

_ERROR_KINDS: Dict[int, Tuple[str, Optional[str], str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected by the mock server)."),
    500: ("server_error", None, "The server had an error while processing your request (injected by the mock server)."),
    502: ("server_error", None, "Bad gateway (injected by the mock server)."),
    503: ("server_error", None, "The engine is currently overloaded (injected by the mock server)."),
    504: ("server_error", None, "Gateway timeout (injected by the mock server)."),
}

BAD_JSON = "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload (an object)."
"""The 400 message for a body that is not a JSON object."""

DONE = b"data: [DONE]\n\n"
"""The last event of a stream."""

Answer = Union[str, List[Dict[str, Any]]]
"""A reply as OpenAI sends it: the text, or the tool calls' JSON (see :func:`tool_calls`)."""


def error_body(
    status: int, message: Optional[str] = None, *, code: Optional[str] = None, param: Optional[str] = None
) -> Dict[str, Any]:
    """OpenAI's error JSON for ``status``: ``{"error": {"message", "type", "param", "code"}}``."""
    kind, default_code, default_message = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}.")
    )
    return {
        "error": {
            "message": message if message is not None else default_message,
            "type": kind,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }


def error_event(status: int, message: Optional[str]) -> bytes:
    """The event a stream that fails in its middle ends with."""
    return b"data: " + json.dumps(error_body(status, message)).encode() + b"\n\n"


def auth_problem(authorization: str, api_key: str) -> Optional[str]:
    """Why OpenAI's API would answer 401 to a request with this ``Authorization`` header, or ``None``."""
    if not authorization.startswith("Bearer ") or not authorization[len("Bearer ") :].strip():
        return (
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    if authorization[len("Bearer ") :].strip() != api_key:
        return "Incorrect API key provided."
    return None


def request_problem(body: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """Why OpenAI's API would reject a chat completions request (HTTP 400): ``(message, param)``,
    or ``None``."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "you must provide a model parameter", "model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return ("Missing required parameter: 'messages'." if messages is None else "Invalid 'messages'."), "messages"
    return None


def model_not_found(model: str) -> Dict[str, Any]:
    """The 404 body for a model that is not served."""
    message = f"The model `{model}` does not exist or you do not have access to it."
    return error_body(404, message, code="model_not_found")


def model_object(name: str) -> Dict[str, Any]:
    """``GET /v1/models/NAME``'s answer."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "ferroflow-mock"}


def model_list(names: Sequence[str]) -> Dict[str, Any]:
    """``GET /v1/models``'s answer."""
    return {"object": "list", "data": [model_object(name) for name in names]}


def tool_calls(calls: Sequence[Tuple[str, ToolCall]]) -> List[Dict[str, Any]]:
    """Tool calls, with their ids, as OpenAI's JSON."""
    return [
        {"id": id_, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
        for id_, call in calls
    ]


def token_usage(messages: List[Any], reply: Answer) -> Dict[str, int]:
    """The token usage of a completion: the words of every message's text content, and those of the
    reply (for tool calls: of each call's name and JSON arguments)."""
    prompt_tokens = sum(count_words(text_of(m.get("content"))) for m in messages if isinstance(m, dict))
    if isinstance(reply, str):
        completion_tokens = count_words(reply)
    else:
        completion_tokens = sum(count_words(c["function"]["name"] + " " + c["function"]["arguments"]) for c in reply)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(seq: int, model: str, reply: Answer, usage: Dict[str, int]) -> Dict[str, Any]:
    """The answer to the ``seq``-th request, not streamed: a ``chat.completion``."""
    message_json: Dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if isinstance(reply, str):
        message_json["content"] = reply
    else:
        message_json["tool_calls"] = reply
    return {
        "id": f"chatcmpl-mock{seq:06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ferroflow_mock",
        "choices": [
            {
                "index": 0,
                "message": message_json,
                "logprobs": None,
                "finish_reason": "stop" if isinstance(reply, str) else "tool_calls",
            }
        ],
        "usage": usage,
    }


def chunks(seq: int, model: str, reply: Answer, usage: Optional[Dict[str, int]]) -> List[bytes]:
    """The answer to the ``seq``-th request, streamed: its ``chat.completion.chunk`` events but the
    last (:data:`DONE`): the role, one per word-ish token of the text (or of each call's arguments),
    the finish reason, then the usage when ``usage`` is given."""
    base: Dict[str, Any] = {
        "id": f"chatcmpl-mock{seq:06d}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ferroflow_mock",
    }
    if usage is not None:
        base["usage"] = None

    def event(delta: Dict[str, Any], finish_reason: Optional[str] = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

    events: List[bytes] = []
    if isinstance(reply, str):
        events.append(event({"role": "assistant", "content": "", "refusal": None}))
        events.extend(event({"content": token}) for token in split_wordish(reply))
        events.append(event({}, "stop"))
    else:
        events.append(event({"role": "assistant", "content": None, "refusal": None}))
        for index, call in enumerate(reply):
            head = {"index": index, "id": call["id"], "type": "function"}
            head["function"] = {"name": call["function"]["name"], "arguments": ""}
            events.append(event({"tool_calls": [head]}))
            events.extend(
                event({"tool_calls": [{"index": index, "function": {"arguments": token}}]})
                for token in split_wordish(call["function"]["arguments"])
            )
        events.append(event({}, "tool_calls"))
    if usage is not None:
        events.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
    return events
