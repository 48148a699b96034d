"""Issue 9, items 3, 5 and 9 (in part), on asyncio and trio against the simulator: tokens
are validated before any request without ever being quoted, the provider call is bounded,
and nonsense arguments raise ValueError at construction."""

from __future__ import annotations

import math
from typing import TypedDict

import anyio
import pytest

from asyncpoll import (
    AiohttpTransport,
    AuthenticationError,
    HttpxTransport,
    Poller,
    PollInterval,
    RetryPolicy,
    Session,
)
from asyncpoll.testing import SimulatedServer

pytestmark = pytest.mark.anyio

CANARY = "CANARY-51f0-tok"
BAD_TOKENS = [CANARY + " ", " " + CANARY, CANARY + "\x00", CANARY + "\x7f", CANARY + "é"]


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_a_bad_token_string_is_refused_without_quoting_it(token: str) -> None:
    with pytest.raises(ValueError, match="token") as info:
        Session("http://127.0.0.1:1", token=token)
    assert CANARY not in str(info.value)
    assert CANARY not in repr(info.value)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


@pytest.mark.parametrize("token", BAD_TOKENS)
async def test_a_bad_provider_token_is_an_authentication_error_before_any_request(
    server: SimulatedServer, token: str
) -> None:
    async def provider() -> str:
        return token

    async with Session(server.url, token=provider) as session:
        with pytest.raises(AuthenticationError) as info:
            await session.get_operations(["a"])
        async with Poller(session, interval=PollInterval(initial=0.01, maximum=0.05)) as poller:
            # Inside a Poller it reaches the caller as itself, not as an exception group.
            with pytest.raises(AuthenticationError):
                await poller.wait("a", timeout=5)
    assert server.requests == []
    error: BaseException | None = info.value
    while error is not None:
        assert CANARY not in str(error)
        assert CANARY not in repr(error)
        error = error.__cause__ or error.__context__


async def test_a_hanging_provider_is_bounded_by_the_timeout(server: SimulatedServer) -> None:
    async def provider() -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with Session(server.url, token=provider, timeout=0.2) as session:
        with anyio.fail_after(5):
            with pytest.raises(AuthenticationError, match="did not return within"):
                await session.get_operations(["a"])
    assert server.requests == []


@pytest.mark.parametrize(
    "options",
    [
        {"max_connections": 0},
        {"timeout": math.nan},
        {"timeout": math.inf},
        {"timeout": 0},
        {"max_batch_size": 0},
        {"max_response_size": 0},
    ],
)
def test_nonsense_session_arguments_raise_value_error(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        Session("http://127.0.0.1:1", token="t", **options)  # type: ignore[arg-type]


class RetryTimes(TypedDict, total=False):
    """The float fields of a RetryPolicy, so that one of them can be passed by name."""

    initial: float
    maximum: float
    timeout: float


@pytest.mark.parametrize(
    "options",
    [RetryTimes(initial=math.nan), RetryTimes(maximum=math.nan), RetryTimes(timeout=math.nan)],
    ids=["initial", "maximum", "timeout"],
)
def test_nonsense_retry_policy_raises_value_error(options: RetryTimes) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        RetryPolicy(**options)


@pytest.mark.parametrize("transport", [AiohttpTransport, HttpxTransport])
def test_nonsense_transport_connections_raise_value_error(transport: type) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        transport(max_connections=0)


async def test_a_session_refuses_another_event_loop(server: SimulatedServer) -> None:
    errors: list[BaseException] = []

    def other_loop() -> None:
        async def use() -> None:
            try:
                await session.get_operations(["a"])
            except RuntimeError as exc:
                errors.append(exc)

        anyio.run(use)

    async with Session(server.url, token=server.token or "") as session:
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(other_loop)
        assert await session.get_operations(["a"]) == []
    assert len(errors) == 1
    assert "event loop that entered it" in str(errors[0])
    assert len(server.requests) == 1
