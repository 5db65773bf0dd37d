"""What the providers built on an official async client share: one client per event loop,
made on first use there, closing them all, and their failures as ferroflow's errors."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Type, TypeVar

from .errors import (
    LLMAuthenticationError,
    LLMConnectionError,
    LLMError,
    LLMNotFoundError,
    LLMRateLimitError,
    LLMRejectedError,
    LLMServerError,
    LLMTimeoutError,
)

P = TypeVar("P", bound="ClientPerLoop")


class ClientPerLoop:
    """One client of ``_make_client()`` per event loop: a client's connection pool belongs
    to the loop that made it. LLM nodes make all their calls on ferroflow's background
    loop, so one client serves every run of a process."""

    base_url: Optional[str]
    api_key: Optional[str]
    max_retries: int
    timeout: float

    def __init__(self, *, base_url: Optional[str], api_key: Optional[str], max_retries: int, timeout: float) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.max_retries = max_retries
        self.timeout = timeout
        self._clients: Dict[int, Tuple[asyncio.AbstractEventLoop, Any]] = {}

    def _library(self) -> Any:
        """The client's package (``openai``, ``anthropic``), imported."""
        raise NotImplementedError

    def _make_client(self) -> Any:
        raise NotImplementedError

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        known = self._clients.get(id(loop))
        if known is None or known[0] is not loop:
            known = self._clients[id(loop)] = (loop, self._make_client())
        return known[1]

    @contextlib.contextmanager
    def _failures(self, model: str, *, streaming: bool = False) -> Iterator[None]:
        """Raises the client's API errors of the block (a call for ``model``) as ferroflow's
        :class:`~ferroflow.errors.LLMError` classes (see :func:`llm_error`), the client's
        error kept as ``__cause__``. ``streaming``: the block reads a reply being streamed,
        which the client does not retry."""
        library = self._library()
        try:
            yield
        except library.APIError as e:
            client = self._client()
            raise llm_error(
                library,
                e,
                model=model,
                url=str(client.base_url),
                retries=0 if streaming else self.max_retries,
                timeout=self.timeout,
                secrets=(self.api_key, getattr(client, "api_key", None), getattr(client, "auth_token", None)),
            ) from e

    def close(self, timeout: float = 5.0) -> None:
        """Closes the provider's clients and their connections (each on its own loop, if
        that loop still runs). A provider is usable again afterwards: it makes new ones."""
        clients, self._clients = self._clients, {}
        for loop, client in clients.values():
            if loop.is_closed():
                continue
            if loop.is_running():
                if running_loop() is loop:
                    loop.create_task(client.close())
                else:
                    asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout)
            else:
                loop.run_until_complete(client.close())

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def running_loop() -> Optional[asyncio.AbstractEventLoop]:
    """The running event loop, or ``None`` outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# Statuses with a class of their own; other 5xx are LLMServerError, other 4xx LLMRejectedError.
_BY_STATUS: Dict[int, Tuple[Type[LLMError], str]] = {
    401: (LLMAuthenticationError, "the API key was rejected"),
    403: (LLMAuthenticationError, "the API key was rejected"),
    404: (LLMNotFoundError, "not found"),
    429: (LLMRateLimitError, "rate limited"),
}


def llm_error(
    library: Any,
    error: BaseException,
    *,
    model: str,
    url: str,
    retries: int,
    timeout: Any,
    secrets: Sequence[Any] = (),
) -> LLMError:
    """The ferroflow error for ``error``, an ``APIError`` of the client package ``library``
    (``openai`` or ``anthropic``: their exception classes have the same names), raised by a
    call for ``model`` at ``url`` that the client tried ``retries`` more times with a
    ``timeout`` each. As :class:`~ferroflow.llm.NativeOpenAIProvider` raises them:

    - ``APITimeoutError``: :class:`LLMTimeoutError`; ``APIConnectionError``: :class:`LLMConnectionError`;
    - an HTTP status (``APIStatusError``): 401 and 403 :class:`LLMAuthenticationError`, 404
      :class:`LLMNotFoundError`, 429 :class:`LLMRateLimitError`, 5xx :class:`LLMServerError`,
      any other (400, 413, 422, ...) :class:`LLMRejectedError`;
    - an error event in a streamed reply: :class:`LLMServerError`;
    - any other: :class:`LLMError`.

    The message names the model and ``url`` (without credentials), then what the server
    or the system said; ``secrets`` (the API key, a token) are blanked out of it, should a
    server's message quote one.
    """
    said = _server_message(error)
    status: Optional[int] = None
    cls: Type[LLMError] = LLMError
    if isinstance(error, library.APITimeoutError):
        cls, what = LLMTimeoutError, f"no reply within {_seconds(timeout)} after {retries} retries"
    elif isinstance(error, library.APIConnectionError):
        refused = any(isinstance(e, ConnectionRefusedError) for e in _causes(error))
        cls, what = LLMConnectionError, f"connection {'refused' if refused else 'failed'} after {retries} retries"
    elif isinstance(error, library.APIStatusError) and error.status_code >= 400:
        status = int(error.status_code)
        if error.response.headers.get("x-should-retry") == "false":
            retries = 0
        if status in _BY_STATUS:
            cls, what = _BY_STATUS[status]
            what = f"{what} (HTTP {status})" + (f" after {retries} retries" if status == 429 else "")
        elif status >= 500:
            cls, what = LLMServerError, f"server error (HTTP {status}) after {retries} retries"
        else:
            cls, what = LLMRejectedError, f"request rejected (HTTP {status})"
    elif isinstance(error, library.APIStatusError) or type(error) is library.APIError:
        # An error event in the middle of a stream (the response's status was 200).
        cls, what = LLMServerError, "error event in the streamed reply"
    else:
        what = type(error).__name__
    message = f"model {model!r} at {_without_credentials(url)}: {what}: {said}"
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= 6:
            message = message.replace(secret, "***")
    return cls(message, model=model, http_status=status)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error``'s causes and contexts, nearest first."""
    seen = {id(error)}
    current = error.__cause__ or error.__context__
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _server_message(error: BaseException) -> str:
    """What the server said (the ``message`` of its JSON error), else the client's message,
    with what the system said below it (``[Errno 111] Connect call failed``) if the client's
    does not say it."""
    body = getattr(error, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str) and inner["message"]:
            return " ".join(inner["message"].split())
    text = str(error)
    system = [e for e in _causes(error) if isinstance(e, OSError)]
    if system and str(system[-1]) not in text:
        text = f"{text} ({system[-1]})"
    return " ".join(text.split())


def _seconds(timeout: Any) -> str:
    return f"{timeout:g} s" if isinstance(timeout, (int, float)) else str(timeout)


def _without_credentials(url: str) -> str:
    """``url`` without a user or password in it, and without a trailing slash."""
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return urllib.parse.urlunsplit(parts).rstrip("/")
