"""Mocking asyncpoll's HTTP with the tools users have: MockTransport, respx, aioresponses.

Whatever a mock does wrong (raises an arbitrary exception, an exception group, or breaks
inside the HTTP library it patches), the caller of a Session or a Poller gets an
:class:`asyncpoll.AsyncpollError`, never a bare exception or an exception group.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aioresponses
import httpx
import pytest
import respx

import asyncpoll
from asyncpoll import (
    AsyncpollError,
    HttpxTransport,
    MockTransport,
    OperationState,
    Poller,
    PollInterval,
    Request,
    Response,
    RetryPolicy,
    Session,
)

pytestmark = pytest.mark.anyio

BASE = "https://programs.example.test"
PATH = "/programs/v2/spaces/default/asyncOperations"
TOKEN = "mocking-token-0123456789"
FAST = PollInterval(initial=0.01, maximum=0.02)
QUICK_RETRY = RetryPolicy(attempts=2, initial=0.001, maximum=0.01, timeout=5.0)

RUNNING = {"id": "a", "status": "Running", "percentComplete": 40}
SUCCEEDED = {"id": "a", "status": "Succeeded", "percentComplete": 100}


def open_session(transport: asyncpoll.AsyncTransport | None = None) -> Session:
    return Session(BASE, token=TOKEN, transport=transport, retry=QUICK_RETRY)


# -- a mock transport whose handler raises ---------------------------------------------


def _group() -> BaseException:
    return ExceptionGroup("several", [ValueError("one"), OSError("two")])


FAILURES: dict[str, Callable[[], BaseException]] = {
    "RuntimeError": lambda: RuntimeError("boom"),
    "KeyError": lambda: KeyError("missing"),
    "ZeroDivisionError": lambda: ZeroDivisionError("divided"),
    "ExceptionGroup": _group,
}


async def _wait(poller: Poller) -> None:
    await poller.wait("a", timeout=10)


async def _wait_all(poller: Poller) -> None:
    await poller.wait_all(["a", "b"], timeout=10)


async def _as_completed(poller: Poller) -> None:
    async with poller.as_completed(["a", "b"], timeout=10) as done:
        async for _ in done:
            pass


async def _watch(poller: Poller) -> None:
    async with poller.watch(["a"], timeout=10) as events:
        async for _ in events:
            pass


CALLS: dict[str, Callable[[Poller], Awaitable[None]]] = {
    "wait": _wait,
    "wait_all": _wait_all,
    "as_completed": _as_completed,
    "watch": _watch,
}


def failing_handler(name: str, *, asynchronous: bool) -> Callable[[Request], Any]:
    def handler(request: Request) -> Response:
        raise FAILURES[name]()

    async def async_handler(request: Request) -> Response:
        raise FAILURES[name]()

    return async_handler if asynchronous else handler


def assert_plain_error(error: BaseException, name: str) -> None:
    assert isinstance(error, AsyncpollError)
    assert not isinstance(error, BaseExceptionGroup)
    assert name in str(error)
    assert TOKEN not in str(error)


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_handler_failure_reaches_poller_caller_as_asyncpoll_error(
    failure: str, call: str
) -> None:
    transport = MockTransport(failing_handler(failure, asynchronous=False))
    async with open_session(transport) as session:
        async with Poller(session, interval=FAST) as poller:
            with pytest.raises(AsyncpollError) as caught:
                await CALLS[call](poller)
    assert_plain_error(caught.value, failure)
    assert transport.requests, "the handler was called"


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_async_handler_failure_reaches_poller_caller_as_asyncpoll_error(
    failure: str,
) -> None:
    transport = MockTransport(failing_handler(failure, asynchronous=True))
    async with open_session(transport) as session:
        async with Poller(session, interval=FAST) as poller:
            with pytest.raises(AsyncpollError) as caught:
                await poller.wait("a", timeout=10)
    assert_plain_error(caught.value, failure)


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_handler_failure_reaches_session_caller_as_asyncpoll_error(failure: str) -> None:
    transport = MockTransport(failing_handler(failure, asynchronous=False))
    async with open_session(transport) as session:
        with pytest.raises(AsyncpollError) as caught:
            await session.get_operations(["a", "b"])
    assert_plain_error(caught.value, failure)
    assert len(transport.requests) == 1, "not transient: not retried"


# -- respx -------------------------------------------------------------------------------


def respx_transport(anyio_backend: str) -> asyncpoll.AsyncTransport | None:
    """What a Session needs for respx to see its requests: httpx on asyncio, where the
    default is aiohttp; nothing on trio, where the default already is httpx."""
    return HttpxTransport() if anyio_backend == "asyncio" else None


async def test_respx_answers_a_session(anyio_backend: str) -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get(PATH).respond(json=[SUCCEEDED])
        async with open_session(respx_transport(anyio_backend)) as session:
            operations = await session.get_operations(["a"])
    assert [(op.id, op.state) for op in operations] == [("a", OperationState.SUCCEEDED)]
    sent = route.calls.last.request
    assert sent.url.params.get_list("asyncOperationIds") == ["a"]
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_respx_drives_a_poller(anyio_backend: str) -> None:
    answers = [RUNNING]

    def answer(request: httpx.Request) -> httpx.Response:
        # Running on the first request, succeeded from then on.
        return httpx.Response(200, json=[answers.pop() if answers else SUCCEEDED])

    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get(PATH).mock(side_effect=answer)
        async with open_session(respx_transport(anyio_backend)) as session:
            async with Poller(session, interval=FAST) as poller:
                operation = await poller.wait("a", timeout=10)
    assert operation.state is OperationState.SUCCEEDED
    assert route.call_count >= 2


async def test_respx_network_error_is_a_connect_error(anyio_backend: str) -> None:
    with respx.mock(base_url=BASE) as router:
        route = router.get(PATH).mock(side_effect=httpx.ConnectError)
        async with open_session(respx_transport(anyio_backend)) as session:
            with pytest.raises(asyncpoll.ConnectError):
                await session.get_operations(["a"])
    assert route.call_count == QUICK_RETRY.attempts, "transient: retried"


async def test_respx_unmocked_request_is_an_asyncpoll_error(anyio_backend: str) -> None:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        router.get("/elsewhere").respond(200)
        async with open_session(respx_transport(anyio_backend)) as session:
            async with Poller(session, interval=FAST) as poller:
                with pytest.raises(AsyncpollError, match="not mocked") as caught:
                    await poller.wait("a", timeout=10)
    assert not isinstance(caught.value, BaseExceptionGroup)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_respx_with_the_aiohttp_default_warns_at_open(anyio_backend: str) -> None:
    with respx.mock(base_url=BASE):
        with pytest.warns(UserWarning, match=r"transport=asyncpoll\.HttpxTransport\(\)") as record:
            async with open_session():
                pass
    assert [w.filename for w in record] == [__file__], "points at the 'async with'"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_respx_mock_started_and_stopped_by_hand_is_seen(anyio_backend: str) -> None:
    router = respx.mock(base_url=BASE, assert_all_called=False)
    router.start()
    try:
        with pytest.warns(UserWarning, match="respx mock is active"):
            async with open_session():
                pass
    finally:
        router.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with open_session():  # stopped: no warning
            pass


async def test_no_respx_warning_when_respx_would_see_the_requests(anyio_backend: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Imported but no mock active (as in this whole module), and a transport respx
        # patches (explicit on asyncio, the default on trio) with a mock active.
        async with open_session():
            pass
        with respx.mock(base_url=BASE):
            async with open_session(respx_transport(anyio_backend)):
                pass


# -- aioresponses ------------------------------------------------------------------------

# aioresponses 0.7.9 (the latest) builds aiohttp's ClientResponse itself, without the
# stream_writer argument aiohttp 3.14 added: it works with aiohttp 3.9 to 3.13 only.
AIORESPONSES_WORKS = tuple(int(part) for part in aiohttp.__version__.split(".")[:2]) < (3, 14)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aioresponses_with_the_aiohttp_transport(anyio_backend: str) -> None:
    with aioresponses.aioresponses() as mocked:
        mocked.get(re.compile(re.escape(BASE + PATH) + r"\?.*"), payload=[SUCCEEDED], repeat=True)
        async with open_session() as session:
            async with Poller(session, interval=FAST) as poller:
                if AIORESPONSES_WORKS:
                    operation = await poller.wait("a", timeout=10)
                    assert operation.state is OperationState.SUCCEEDED
                else:
                    with pytest.raises(AsyncpollError, match="stream_writer") as caught:
                        await poller.wait("a", timeout=10)
                    assert_plain_error(caught.value, "TypeError")
