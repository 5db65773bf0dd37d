"""``OpenAIProvider`` and ``AnthropicProvider`` fail with ferroflow's ``LLMError`` classes, as
``NativeOpenAIProvider`` does, never with their client's own exceptions: each names the model
and the base URL, carries ``model`` and ``http_status``, keeps the client's error as
``__cause__``, and never shows the API key. Against a closed port (connection refused),
``MockLLMServer`` answering error statuses (before a stream, and in its middle), and a server
that accepts connections and never answers (a timeout)."""

import asyncio
import socket
import threading
import time
from typing import Any, Iterator, List, Tuple

import anthropic
import openai
import pytest

import ferroflow as ff
from ferroflow.errors import (
    LLMAuthenticationError,
    LLMConnectionError,
    LLMError,
    LLMNotFoundError,
    LLMRateLimitError,
    LLMRejectedError,
    LLMServerError,
    LLMTimeoutError,
)
from ferroflow.llm import Request
from ferroflow.testing import MockLLMServer

KEY = "sk-SECRET-7f3a9c"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "mock-model"}
LIBRARIES = {"openai": openai, "anthropic": anthropic}
KINDS = sorted(MODELS)


def provider_for(kind: str, base_url: str, **options: Any) -> Any:
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", 5.0)
    options.setdefault("api_key", KEY)
    if kind == "openai":
        return ff.OpenAIProvider(base_url=base_url, **options)
    return ff.AnthropicProvider(base_url=base_url, **options)


def base_url(kind: str, server: MockLLMServer) -> str:
    return server.base_url if kind == "openai" else server.anthropic_base_url


def failure(provider: Any, model: str, *, stream: bool = False) -> LLMError:
    """The error a call (or a streamed call, read to its end) raises, on a loop of the test's
    own, left open until the provider has closed its client on it."""
    request = Request(model, [{"role": "user", "content": "one two three four"}])

    async def call() -> Any:
        if stream:
            return [part async for part in provider.stream(request)]
        return await provider.complete(request)

    loop = asyncio.new_event_loop()
    try:
        try:
            loop.run_until_complete(call())
        except LLMError as e:
            error = e
        else:
            pytest.fail("the call succeeded")
        provider.close()
    finally:
        loop.close()
    return error


def assert_names_the_call(error: LLMError, model: str, url: str, kind: str) -> None:
    message = str(error)
    assert error.model == model
    assert f"model '{model}' at {url.rstrip('/')}" in message, message
    assert KEY not in message and KEY not in repr(error.args), message
    assert isinstance(error.__cause__, LIBRARIES[kind].APIError), repr(error.__cause__)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture
def server() -> Iterator[MockLLMServer]:
    with MockLLMServer(api_key=KEY, reply="one two three four") as server:
        yield server


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 whose server accepts connections, reads nothing and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: List[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


# -- no server -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_connection_is_an_llm_connection_error(kind: str, stream: bool, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}" + ("/v1" if kind == "openai" else "")
    started = time.monotonic()
    error = failure(provider_for(kind, url), "gpt-x", stream=stream)
    assert time.monotonic() - started < 5.0
    assert type(error) is LLMConnectionError and isinstance(error, ConnectionError)
    assert error.http_status is None
    assert_names_the_call(error, "gpt-x", url, kind)
    assert "connection refused" in str(error)
    assert isinstance(error.__cause__, LIBRARIES[kind].APIConnectionError)


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_that_never_answers_is_an_llm_timeout_error(kind: str, silent_server: int) -> None:
    url = f"http://127.0.0.1:{silent_server}" + ("/v1" if kind == "openai" else "")
    started = time.monotonic()
    error = failure(provider_for(kind, url, timeout=0.5), "gpt-x")
    assert 0.4 < time.monotonic() - started < 5.0
    assert type(error) is LLMTimeoutError and isinstance(error, TimeoutError)
    assert isinstance(error, LLMConnectionError), "a timeout is a connection failure too, as for the native client"
    assert error.http_status is None
    assert_names_the_call(error, "gpt-x", url, kind)
    assert "0.5 s" in str(error)
    assert isinstance(error.__cause__, LIBRARIES[kind].APITimeoutError)


# -- HTTP errors ---------------------------------------------------------------------------------

STATUSES: List[Tuple[int, type]] = [
    (400, LLMRejectedError),
    (401, LLMAuthenticationError),
    (403, LLMAuthenticationError),
    (404, LLMNotFoundError),
    (413, LLMRejectedError),
    (422, LLMRejectedError),
    (429, LLMRateLimitError),
    (500, LLMServerError),
    (503, LLMServerError),
    (529, LLMServerError),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("status, expected", STATUSES, ids=[str(s) for s, _ in STATUSES])
@pytest.mark.parametrize("kind", KINDS)
def test_an_error_status_is_its_llm_error_class(
    kind: str, status: int, expected: type, stream: bool, server: MockLLMServer
) -> None:
    # The server's message quotes the key, as some servers do: it is blanked out.
    server.fail_next(status=status, message=f"the server says no to {KEY}")
    url = base_url(kind, server)
    error = failure(provider_for(kind, url), MODELS[kind], stream=stream)
    assert type(error) is expected, repr(error)
    assert error.http_status == status
    assert_names_the_call(error, MODELS[kind], url, kind)
    assert f"HTTP {status}" in str(error) and "the server says no to ***" in str(error), str(error)
    assert isinstance(error.__cause__, LIBRARIES[kind].APIStatusError)
    assert server.request_count == 1, "max_retries=0: no retry"


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_key_and_an_unknown_model(kind: str, server: MockLLMServer) -> None:
    url = base_url(kind, server)
    bad_key = failure(provider_for(kind, url, api_key="sk-WRONG-0123456789"), MODELS[kind])
    assert type(bad_key) is LLMAuthenticationError and bad_key.http_status == 401
    assert "sk-WRONG-0123456789" not in str(bad_key)
    assert f"model '{MODELS[kind]}' at {url}" in str(bad_key)

    unknown = failure(provider_for(kind, url), "no-such-model", stream=True)
    assert type(unknown) is LLMNotFoundError and isinstance(unknown, LookupError)
    assert unknown.http_status == 404 and unknown.model == "no-such-model"
    assert_names_the_call(unknown, "no-such-model", url, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_transient_errors_still_failing_after_the_clients_retries(kind: str, server: MockLLMServer) -> None:
    server.fail_next(status=500, retry_after=0.05, times=2)
    error = failure(provider_for(kind, base_url(kind, server), max_retries=1), MODELS[kind])
    assert type(error) is LLMServerError and error.http_status == 500
    assert "after 1 retries" in str(error)
    assert [r.status for r in server.requests] == [500, 500]


@pytest.mark.parametrize("how", ["error event", "disconnect"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_that_fails_in_its_middle(kind: str, how: str, server: MockLLMServer) -> None:
    if how == "error event":
        server.fail_next(status=500, after_events=3, message="the model crashed")
    else:
        server.fail_next(disconnect=True, after_events=3)
    url = base_url(kind, server)
    error = failure(provider_for(kind, url), MODELS[kind], stream=True)
    assert_names_the_call(error, MODELS[kind], url, kind)
    if how == "error event":
        assert type(error) is LLMServerError, repr(error)
        assert "the model crashed" in str(error)
    else:
        assert type(error) is LLMConnectionError, repr(error)
    assert error.http_status is None, "the stream's response was a 200"
    assert server.request_count == 1


# -- through a graph -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_llm_node_on_an_unreachable_server_fails_with_the_ferroflow_class(
    kind: str, stream: bool, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}" + ("/v1" if kind == "openai" else "")
    provider = provider_for(kind, url)
    g = ff.Graph(f"provider_errors_{kind}_{stream}")

    @g.llm(provider=provider, model="gpt-x", stream=stream)
    def answer(input):
        return input

    try:
        with pytest.raises(ff.RunFailedError) as failed:
            g.run("hello", timeout=30)
    finally:
        provider.close()
    assert failed.value.node == "answer"
    assert failed.value.error_type == "ferroflow.errors.LLMConnectionError", failed.value.error_type
    assert f"model 'gpt-x' at {url}" in (failed.value.error_message or "")
    assert KEY not in (failed.value.error_message or "") + (failed.value.traceback or "")
