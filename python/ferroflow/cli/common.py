"""What the commands share: the error of bad input, and the text of their lines and tables."""

from __future__ import annotations

import datetime
import json
from typing import Any, List, Optional


class UsageError(Exception):
    """Bad input on the command line (an option, a file, an application module): ``main``
    prints ``ferroflow: <message>`` on one line and exits with status 2."""


def _one_line(text: object) -> str:
    """``text`` on one line: its whitespace runs (newlines included) as single spaces."""
    return " ".join(str(text).split())


def _os_problem(e: OSError) -> str:
    """What an ``OSError`` of opening a file says, without repeating the file's name."""
    if isinstance(e, FileNotFoundError):
        return "no such file or directory"
    if isinstance(e, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(e, NotADirectoryError):
        return "a part of the path is not a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    return _one_line(e.strerror or e)


def _json_option(option: str, text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise UsageError(f"{option} is JSON nested too deeply") from None
    except ValueError as e:
        raise UsageError(f"{option} is not JSON ({_one_line(e)}): {text[:40]!r}") from None


def _when(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="milliseconds")


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)
