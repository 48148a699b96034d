"""Transports against the simulator: results, and the complete mapping of their errors.

HttpxTransport runs on asyncio and trio; AiohttpTransport on asyncio only (aiohttp
cannot run under trio). Every failure must surface as an asyncpoll ``TransportError``
subclass, chained (``raise ... from``) to the library's exception, which never leaks.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import anyio
import httpx
import pytest

from asyncpoll import (
    AiohttpTransport,
    AsyncTransport,
    ConnectError,
    HttpxTransport,
    MockTransport,
    Request,
    RequestTimeout,
    Response,
    ResponseTooLarge,
    Session,
    TransportError,
)
from asyncpoll.testing import ScriptedResponse, SimulatedServer

pytestmark = pytest.mark.anyio

PATH = "/programs/v2/spaces/default/asyncOperations"
LIBRARY_ERRORS = (aiohttp.ClientError, httpx.HTTPError, httpx.StreamError)

Factory = Callable[[], AsyncTransport]


@pytest.fixture(params=["aiohttp", "httpx"])
async def transport(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Factory]:
    if request.param == "aiohttp" and anyio_backend == "trio":
        pytest.skip("aiohttp runs on asyncio only; under trio the Session uses httpx")
    cls = AiohttpTransport if request.param == "aiohttp" else HttpxTransport
    instance: AsyncTransport = cls(max_connections=4)
    try:
        yield lambda: instance
    finally:
        await instance.aclose()


def request_for(base: str, ids: list[str], *, timeout: float = 5.0, size: int = 1 << 20) -> Request:
    query = "&".join(f"asyncOperationIds={i}" for i in ids)
    return Request(
        "GET",
        f"{base}{PATH}?{query}",
        headers={"Authorization": "Bearer test-token", "Accept": "application/json"},
        timeout=timeout,
        max_response_size=size,
    )


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_translated(error: TransportError) -> None:
    """An asyncpoll error, chained to the library's error, which it is not itself."""
    assert not isinstance(error, LIBRARY_ERRORS)
    assert error.__cause__ is not None
    assert not isinstance(error.__cause__, TransportError)
    assert "test-token" not in str(error)


# -- results --------------------------------------------------------------------------------


async def test_is_an_async_transport(transport: Factory) -> None:
    assert isinstance(transport(), AsyncTransport)


async def test_ok_response(transport: Factory, server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.0)
    response = await transport().handle_request(request_for(server.url, [op_id]))
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    assert all(key == key.lower() for key in response.headers)
    assert op_id.encode() in response.body
    [logged] = server.requests
    assert logged.ids == (op_id,)
    assert logged.user == "alice"  # the Authorization header arrived


async def test_error_status_is_a_response_not_an_exception(
    transport: Factory, server: SimulatedServer
) -> None:
    server.script(ScriptedResponse(503, body=b"busy", headers={"Retry-After": "3"}))
    response = await transport().handle_request(request_for(server.url, ["a"]))
    assert (response.status, response.body, response.headers["retry-after"]) == (503, b"busy", "3")


async def test_redirects_are_not_followed(transport: Factory, server: SimulatedServer) -> None:
    target = f"{server.url}{PATH}?asyncOperationIds=b"
    server.script(ScriptedResponse(302, headers={"Location": target}))
    response = await transport().handle_request(request_for(server.url, ["a"]))
    assert response.status == 302
    assert response.headers["location"] == target
    assert [r.ids for r in server.requests] == [("a",)]


async def test_url_is_sent_as_given(transport: Factory, server: SimulatedServer) -> None:
    # Already percent-encoded: a transport must neither decode nor encode it again.
    encoded = ["a%26b%3Dc", "%E2%82%AC%20x", "%2F%3F%23%25"]
    await transport().handle_request(request_for(server.url, encoded))
    [logged] = server.requests
    assert logged.query == "&".join(f"asyncOperationIds={i}" for i in encoded)
    assert logged.ids == ("a&b=c", "\u20ac x", "/?#%")


async def test_connections_are_reused(transport: Factory, server: SimulatedServer) -> None:
    client = transport()
    for _ in range(3):
        assert (await client.handle_request(request_for(server.url, ["a"]))).status == 200
    assert len(server.requests) == 3


# -- the error mapping ----------------------------------------------------------------------


async def test_connection_refused(transport: Factory) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ConnectError) as info:
        await transport().handle_request(request_for(url, ["a"]))
    assert_translated(info.value)


async def test_timeout(transport: Factory, server: SimulatedServer) -> None:
    server.script(ScriptedResponse(delay=30.0))
    with pytest.raises(RequestTimeout) as info:
        await transport().handle_request(request_for(server.url, ["a"], timeout=0.2))
    assert_translated(info.value)


async def test_dropped_connection(transport: Factory, server: SimulatedServer) -> None:
    client = transport()
    server.faults.disconnect_rate = 1.0
    with pytest.raises(ConnectError) as info:
        await client.handle_request(request_for(server.url, ["a"]))
    assert_translated(info.value)
    logged = server.requests
    assert {r.status for r in logged} == {0}
    # aiohttp resends an idempotent request once on a dropped connection (RFC 9112 9.3.1),
    # inside one handle_request; httpx does not.
    assert len(logged) == (2 if isinstance(client, AiohttpTransport) else 1)


async def test_dropped_connection_then_recovers(
    transport: Factory, server: SimulatedServer
) -> None:
    client = transport()
    assert (await client.handle_request(request_for(server.url, ["a"]))).status == 200
    server.faults.disconnect_rate = 1.0
    with pytest.raises(ConnectError):
        await client.handle_request(request_for(server.url, ["a"]))
    server.faults.disconnect_rate = 0.0
    assert (await client.handle_request(request_for(server.url, ["a"]))).status == 200


async def test_body_too_large(transport: Factory, server: SimulatedServer) -> None:
    server.script(ScriptedResponse(body=b"[" + b" " * 10_000 + b"]"))
    with pytest.raises(ResponseTooLarge) as info:
        await transport().handle_request(request_for(server.url, ["a"], size=1000))
    # Raised by asyncpoll itself, not translated: there is no library error to chain.
    assert not isinstance(info.value, LIBRARY_ERRORS)


async def test_body_at_the_limit_is_read(transport: Factory, server: SimulatedServer) -> None:
    body = b"[" + b" " * 998 + b"]"
    server.script(ScriptedResponse(body=body))
    response = await transport().handle_request(request_for(server.url, ["a"], size=len(body)))
    assert response.body == body


async def test_cancellation_propagates(transport: Factory, server: SimulatedServer) -> None:
    server.script(ScriptedResponse(delay=30.0))
    client = transport()
    with anyio.move_on_after(0.2) as scope:
        await client.handle_request(request_for(server.url, ["a"]))
    assert scope.cancelled_caught
    # The transport stays usable after a cancelled request.
    assert (await client.handle_request(request_for(server.url, ["a"]))).status == 200


# -- default transport ----------------------------------------------------------------------


async def test_default_transport_follows_the_event_loop(
    anyio_backend: str, server: SimulatedServer
) -> None:
    op_id = server.add_operation(duration=0.0)
    async with Session(server.url, token="test-token") as session:
        expected = AiohttpTransport if anyio_backend == "asyncio" else HttpxTransport
        assert type(session._transport) is expected
        [operation] = await session.get_operations([op_id])
    assert operation.id == op_id
    assert session._transport is None  # released on exit


async def test_mock_transport(anyio_backend: str) -> None:
    async def handler(request: Request) -> Response:
        await anyio.lowlevel.checkpoint()
        return Response(200, body=request.url.encode())

    mock = MockTransport(handler)
    response = await mock.handle_request(Request("GET", "https://x.test/p?q=1"))
    assert response.body == b"https://x.test/p?q=1"
    assert [r.url for r in mock.requests] == ["https://x.test/p?q=1"]
    assert not mock.closed
    await mock.aclose()
    assert mock.closed


def test_request_repr_hides_headers() -> None:
    request = Request("GET", "https://x.test/", headers={"Authorization": "Bearer s3cr3t"})
    assert "s3cr3t" not in repr(request)
    assert "s3cr3t" not in repr(Response(200, body=b"s3cr3t"))
