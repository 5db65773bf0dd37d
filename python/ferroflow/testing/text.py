"""The mock model's way with text, the same through either API: the words it counts as tokens, the
word-ish pieces it streams, the default reply (:func:`echo_reply`), and where a reply is cut."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

_WORDISH = re.compile(r"\s*\S+|\s+")


def split_wordish(text: str) -> List[str]:
    """Split ``text`` into word-ish tokens (each word with the whitespace before it) whose
    concatenation is ``text``."""
    return _WORDISH.findall(text)


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of parts (for
    Anthropic's ``tool_result`` blocks, the text of their own content)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("text", "input_text"):
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "tool_result":
                texts.append(text_of(part.get("content")))
        return " ".join(texts)
    return ""


def count_words(text: str) -> int:
    """The tokens ``text`` counts for: its whitespace-separated words."""
    return len(text.split())


def echo_reply(request: Dict[str, Any]) -> str:
    """The default reply: ``"echo: "`` followed by the text of the last ``user`` message
    (``"echo: "`` alone when there is none). For either API: text parts and, for Anthropic,
    ``tool_result`` contents are text."""
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return "echo: " + text_of(message.get("content"))
    return "echo: "


def cut_text(text: str, stop_sequences: Sequence[str], max_tokens: int) -> Tuple[str, str, Optional[str]]:
    """An Anthropic text reply as the model would end it: ``(text, stop_reason, stop_sequence)``,
    cut before the first stop sequence it contains, then after its first ``max_tokens`` words."""
    stop_reason, stop_sequence = "end_turn", None
    found = [(text.find(s), s) for s in stop_sequences if s and s in text]
    if found:
        at, stop_sequence = min(found)
        text, stop_reason = text[:at], "stop_sequence"
    if count_words(text) > max_tokens:
        kept: List[str] = []
        words = 0
        for token in split_wordish(text):
            if token.strip():
                if words == max_tokens:
                    break
                words += 1
            kept.append(token)
        text, stop_reason, stop_sequence = "".join(kept).rstrip(), "max_tokens", None
    return text, stop_reason, stop_sequence
