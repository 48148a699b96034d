"""Transports against the simulator: results, and the complete mapping of their errors.

HttpxTransport (over httpcore, httpx's HTTP layer) runs on asyncio and trio;
AiohttpTransport on asyncio only (aiohttp cannot run under trio). Every failure must
surface as an asyncpoll ``TransportError`` subclass, chained (``raise ... from``) to a
stand-in for the library's exception, which never leaks. Each transport declares its
exception map; the tests below check that it covers every exception its library (for
HttpxTransport: httpcore and httpx) exports, with the kind intended for each.
"""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from types import ModuleType, TracebackType
from typing import Any, cast

import aiohttp
import anyio
import httpcore
import httpx
import multidict
import pytest
import yarl
from aiohttp.client_reqrep import ConnectionKey

from asyncpoll import (
    AiohttpTransport,
    AsyncTransport,
    ConnectError,
    HttpxTransport,
    InvalidResponseError,
    MockTransport,
    Request,
    RequestTimeout,
    Response,
    ResponseTooLarge,
    Session,
    TransportError,
)
from asyncpoll._transport import _aiohttp, _httpx
from asyncpoll._transport._body import (
    ACCEPT_ENCODING,
    ExceptionMap,
    LibraryError,
    caught_by,
    error_kind,
)
from asyncpoll.testing import ScriptedResponse, SimulatedServer

pytestmark = pytest.mark.anyio

PATH = "/programs/v2/spaces/default/asyncOperations"
HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
    httpcore.ConnectionNotAvailable,
)
LIBRARY_ERRORS = (aiohttp.ClientError, httpx.HTTPError, httpx.StreamError, *HTTPCORE_ERRORS)

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


async def test_a_closed_transport_sends_nothing(
    transport: Factory, server: SimulatedServer
) -> None:
    client = transport()
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.handle_request(request_for(server.url, ["a"]))
    assert server.requests == []


# -- HttpxTransport: httpcore's pool, or httpx's transport while it is instrumented ------

# The Session's URLs, and the odd ones a custom endpoint or transport user could pass.
SPLIT_URLS = [
    f"http://127.0.0.1:8080{PATH}?asyncOperationIds=a%26b%3Dc&asyncOperationIds=%E2%82%AC",
    "https://api.example.test/p?q=1",
    "https://API.Example.test:443/p",  # the default port, a host in capitals
    "http://[::1]:8080/p?q",  # IPv6
    "https://b\u00fccher.example/p",  # IDNA
    "http://h.test",  # no path
    "http://h.test?q=1",  # a query and no path
    "http://h.test/p#fragment",  # a fragment is never sent
    "http://h.test/a b?x=\u00e9",  # not sendable as is: percent-encoded, as httpx does
]


async def test_httpx_transport_never_sends_a_url_that_would_inject_a_header(
    server: SimulatedServer,
) -> None:
    # Refused by httpx.URL, as before issue 10. (aiohttp, for the record, drops the CR
    # and LF and sends the rest: no header is injected either way.)
    transport = HttpxTransport()
    try:
        with pytest.raises(ConnectError) as info:
            await transport.handle_request(request_for(server.url, ["a\r\nX-Injected: 1"]))
    finally:
        await transport.aclose()
    assert_translated(info.value)
    assert server.requests == []


@pytest.mark.parametrize("url", SPLIT_URLS)
def test_httpx_transport_sends_where_and_what_httpx_would(url: str) -> None:
    transport = HttpxTransport()
    origin, target = transport._split(url)
    parsed = httpx.URL(url)
    assert (origin.scheme, origin.host, origin.port) == (
        parsed.raw_scheme,
        parsed.raw_host,
        parsed.port,
    )
    assert target == parsed.raw_path
    [host] = [v for k, v in transport._headers({}, origin) if k.lower() == b"host"]
    assert host == httpx.Request("GET", parsed).headers["host"].encode()


def test_httpx_transport_sends_a_visible_ascii_target_as_given() -> None:
    # Like aiohttp (yarl's encoded=True), and as Request documents: httpx would
    # percent-encode the braces and the quote.
    _, target = HttpxTransport()._split('http://h.test/p?x={a}&y="b"')
    assert target == b'/p?x={a}&y="b"'


def test_httpx_transport_refuses_credentials_in_the_url() -> None:
    with pytest.raises(ValueError, match="credentials"):
        HttpxTransport()._split("http://user:secret@h.test/p")


@pytest.mark.parametrize(
    "raw",
    [
        [(b"Content-Type", b"application/json"), (b"Retry-After", b"3")],
        [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-One", b"1")],
        [(b"X-Name", "\u00e9t\u00e9".encode()), (b"X-Other", b"plain")],
        [(b"X-Name", b"\xe9\xff"), (b"X-Other", "\u00e9".encode())],
        [],
    ],
    ids=["ascii", "repeated", "utf-8", "latin-1", "none"],
)
def test_httpx_transport_reads_response_headers_as_httpx_does(
    raw: list[tuple[bytes, bytes]],
) -> None:
    assert _httpx._decoded(raw) == dict(httpx.Headers(raw).items())


async def test_httpx_transport_goes_through_httpx_while_it_is_instrumented(
    server: SimulatedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = httpx.AsyncHTTPTransport.handle_async_request
    seen: list[httpx.Request] = []

    # What OpenTelemetry's HTTPXClientInstrumentor does, through wrapt: a wrapper that
    # leaves __wrapped__.
    @functools.wraps(plain)
    async def instrumented(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> Any:
        seen.append(request)
        return await plain(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", instrumented)
    op_id = server.add_operation(duration=0.0)
    transport = HttpxTransport(max_connections=2)
    try:
        response = await transport.handle_request(request_for(server.url, [op_id]))
        with pytest.raises(ConnectError) as info:
            await transport.handle_request(request_for(f"http://127.0.0.1:{closed_port()}", ["a"]))
    finally:
        await transport.aclose()
    assert response.status == 200
    assert op_id.encode() in response.body
    assert all(key == key.lower() for key in response.headers)
    assert_translated(info.value)
    assert len(seen) == 2
    assert seen[0].headers["accept-encoding"] == ACCEPT_ENCODING
    [logged] = server.requests
    assert logged.ids == (op_id,)


async def test_httpx_transport_bypasses_httpx_otherwise(
    server: SimulatedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> Any:
        raise AssertionError("sent through httpx's transport")

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", refuse)
    op_id = server.add_operation(duration=0.0)
    transport = HttpxTransport(max_connections=2)
    try:
        response = await transport.handle_request(request_for(server.url, [op_id]))
    finally:
        await transport.aclose()
    assert response.status == 200
    assert op_id.encode() in response.body


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


# -- the exception maps ---------------------------------------------------------------------

AUTH = "Bearer test-token"
URL = "http://example.test/programs?asyncOperationIds=a"
STDLIB_KINDS: dict[type[Exception], type[TransportError]] = {
    # asyncio's and anyio's timeouts: aiohttp's total ClientTimeout, the httpx scope.
    TimeoutError: RequestTimeout,
    OSError: ConnectError,
    ConnectionResetError: ConnectError,
    UnicodeError: ConnectError,
    ValueError: ConnectError,
}
AIOHTTP_KINDS: dict[type[Exception], type[TransportError]] = {
    aiohttp.ServerTimeoutError: RequestTimeout,
    aiohttp.ConnectionTimeoutError: RequestTimeout,
    aiohttp.SocketTimeoutError: RequestTimeout,
    # aiohttp's parser refused what the server sent.
    aiohttp.ClientResponseError: InvalidResponseError,
    aiohttp.ContentTypeError: InvalidResponseError,
    aiohttp.TooManyRedirects: InvalidResponseError,
    aiohttp.WSServerHandshakeError: InvalidResponseError,
    # A proxy refused the tunnel: the server was never reached.
    aiohttp.ClientHttpProxyError: ConnectError,
    aiohttp.ClientPayloadError: ConnectError,
    aiohttp.ClientError: ConnectError,
    aiohttp.ClientConnectionError: ConnectError,
    aiohttp.ClientConnectionResetError: ConnectError,
    aiohttp.ClientOSError: ConnectError,
    aiohttp.ClientConnectorError: ConnectError,
    aiohttp.ClientConnectorDNSError: ConnectError,
    aiohttp.ClientProxyConnectionError: ConnectError,
    aiohttp.ClientSSLError: ConnectError,
    aiohttp.ClientConnectorSSLError: ConnectError,
    aiohttp.ClientConnectorCertificateError: ConnectError,
    aiohttp.client_exceptions.UnixClientConnectorError: ConnectError,
    aiohttp.ServerConnectionError: ConnectError,
    aiohttp.ServerDisconnectedError: ConnectError,
    aiohttp.ServerFingerprintMismatch: ConnectError,
    aiohttp.InvalidURL: ConnectError,
    aiohttp.InvalidUrlClientError: ConnectError,
    aiohttp.InvalidUrlRedirectClientError: ConnectError,
    aiohttp.NonHttpUrlClientError: ConnectError,
    aiohttp.NonHttpUrlRedirectClientError: ConnectError,
    aiohttp.RedirectClientError: ConnectError,
    aiohttp.UploadAbortedError: ConnectError,
}
# Exported, but no request raises them: websockets, warnings of multipart parsing, and
# the end-of-stream signal aiohttp's own stream iterators catch.
AIOHTTP_NOT_RAISED: set[type[BaseException]] = {
    aiohttp.WebSocketError,
    aiohttp.WSMessageTypeError,
    aiohttp.EofStream,
    aiohttp.BadContentDispositionHeader,
    aiohttp.BadContentDispositionParam,
}
HTTPX_KINDS: dict[type[Exception], type[TransportError]] = {
    httpx.TimeoutException: RequestTimeout,
    httpx.ConnectTimeout: RequestTimeout,
    httpx.ReadTimeout: RequestTimeout,
    httpx.WriteTimeout: RequestTimeout,
    httpx.PoolTimeout: RequestTimeout,
    httpx.DecodingError: InvalidResponseError,
    httpx.TooManyRedirects: InvalidResponseError,
    httpx.HTTPError: ConnectError,
    httpx.HTTPStatusError: ConnectError,
    httpx.RequestError: ConnectError,
    httpx.TransportError: ConnectError,
    httpx.NetworkError: ConnectError,
    httpx.ConnectError: ConnectError,
    httpx.ReadError: ConnectError,
    httpx.WriteError: ConnectError,
    httpx.CloseError: ConnectError,
    # httpcore's word for a dropped connection as much as for malformed HTTP.
    httpx.ProtocolError: ConnectError,
    httpx.RemoteProtocolError: ConnectError,
    httpx.LocalProtocolError: ConnectError,
    httpx.ProxyError: ConnectError,
    httpx.UnsupportedProtocol: ConnectError,
    httpx.StreamError: ConnectError,
    httpx.StreamConsumed: ConnectError,
    httpx.StreamClosed: ConnectError,
    httpx.ResponseNotRead: ConnectError,
    httpx.RequestNotRead: ConnectError,
    httpx.InvalidURL: ConnectError,
}
# Exported, but only Cookies.get raises it, and asyncpoll never reads a cookie.
HTTPX_NOT_RAISED: set[type[BaseException]] = {httpx.CookieConflict}
# What HttpxTransport's pool raises (httpx's transport maps them onto httpx's own).
HTTPCORE_KINDS: dict[type[Exception], type[TransportError]] = {
    httpcore.TimeoutException: RequestTimeout,
    httpcore.ConnectTimeout: RequestTimeout,
    httpcore.ReadTimeout: RequestTimeout,
    httpcore.WriteTimeout: RequestTimeout,
    httpcore.PoolTimeout: RequestTimeout,
    httpcore.NetworkError: ConnectError,
    httpcore.ConnectError: ConnectError,
    httpcore.ReadError: ConnectError,
    httpcore.WriteError: ConnectError,
    # A dropped connection as much as malformed HTTP, as for httpx.
    httpcore.ProtocolError: ConnectError,
    httpcore.RemoteProtocolError: ConnectError,
    httpcore.LocalProtocolError: ConnectError,
    httpcore.ProxyError: ConnectError,
    httpcore.UnsupportedProtocol: ConnectError,
    # The pool catches it itself (to try another connection); mapped should one escape.
    httpcore.ConnectionNotAvailable: ConnectError,
}
HTTPCORE_NOT_RAISED: set[type[BaseException]] = set()

LIBRARIES: dict[str, tuple[ModuleType, ExceptionMap, dict[type[Exception], Any], set[Any]]] = {
    "aiohttp": (aiohttp, _aiohttp.EXCEPTION_MAP, AIOHTTP_KINDS, AIOHTTP_NOT_RAISED),
    "httpx": (httpx, _httpx.exception_map(), HTTPX_KINDS, HTTPX_NOT_RAISED),
    "httpcore": (httpcore, _httpx.exception_map(), HTTPCORE_KINDS, HTTPCORE_NOT_RAISED),
}


def exported_exceptions(module: ModuleType) -> set[type[BaseException]]:
    """Every exception class ``module`` exports, and every subclass of one it defines."""
    found = {
        obj
        for name in dir(module)
        if isinstance(obj := getattr(module, name), type) and issubclass(obj, BaseException)
    }
    stack = list(found)
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__module__.split(".")[0] == module.__name__ and sub not in found:
                found.add(sub)
                stack.append(sub)
    return found


def kind_for(cls: type[BaseException], mapping: ExceptionMap) -> type[TransportError] | None:
    """What the first entry covering ``cls`` makes of it (``error_kind`` of an instance)."""
    return next((kind for mapped, kind in mapping if issubclass(cls, mapped)), None)


def names(classes: Iterable[type[BaseException]]) -> list[str]:
    return sorted(cls.__qualname__ for cls in classes)


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_exception_map_covers_every_exported_exception(library: str) -> None:
    module, mapping, kinds, not_raised = LIBRARIES[library]
    exported = exported_exceptions(module)
    # A class the library adds (or drops) fails here until its kind is decided.
    assert names(exported - not_raised) == names(set(kinds))
    assert not_raised <= exported
    # What is left out is left out of the map too, not silently caught.
    assert {cls: kind_for(cls, mapping) for cls in not_raised} == dict.fromkeys(not_raised)
    expected = {**kinds, **STDLIB_KINDS}
    uncovered = {cls for cls in expected if not issubclass(cls, caught_by(mapping))}
    assert names(uncovered) == []
    actual = {cls.__qualname__: kind_for(cls, mapping) for cls in expected}
    assert actual == {cls.__qualname__: kind for cls, kind in expected.items()}


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_exactly_the_timeouts_are_request_timeouts(library: str) -> None:
    module, mapping, _, not_raised = LIBRARIES[library]
    timeouts = (TimeoutError, httpx.TimeoutException, httpcore.TimeoutException)
    for cls in exported_exceptions(module) - not_raised | set(STDLIB_KINDS):
        assert (kind_for(cls, mapping) is RequestTimeout) == issubclass(cls, timeouts), cls


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_exception_map_goes_most_specific_first(library: str) -> None:
    _, mapping, _, _ = LIBRARIES[library]
    classes = caught_by(mapping)
    assert len(set(classes)) == len(classes)
    for index, cls in enumerate(classes):
        # No entry is shadowed by a broader one before it.
        shadowing = [earlier for earlier in classes[:index] if issubclass(cls, earlier)]
        assert shadowing == [], cls
    assert all(issubclass(kind, TransportError) for _, kind in mapping)


def test_error_kind_refuses_an_exception_outside_the_map() -> None:
    with pytest.raises(LookupError, match="KeyError"):
        error_kind(KeyError("k"), _aiohttp.EXCEPTION_MAP)


def aiohttp_error(cls: type[Exception]) -> Exception:
    """A representative of ``cls``, built as aiohttp builds it, the token in its text."""
    headers = multidict.CIMultiDictProxy(multidict.CIMultiDict(Authorization=AUTH))
    info = aiohttp.RequestInfo(yarl.URL(URL), "GET", headers)
    key = ConnectionKey("example.test", 443, True, True, None, None, None)
    refused = ConnectionRefusedError(111, f"refused {AUTH}")
    if issubclass(cls, aiohttp.ClientResponseError):
        return cls(info, (), status=400, message=f"Invalid header {AUTH!r}", headers=headers)
    if issubclass(cls, aiohttp.ClientConnectorCertificateError):
        return cls(key, ssl.SSLCertVerificationError(f"certificate for {AUTH}"))
    if issubclass(cls, aiohttp.client_exceptions.UnixClientConnectorError):
        return cls("/run/api.sock", key, refused)
    if issubclass(cls, aiohttp.ClientConnectorError):
        return cls(key, refused)
    if issubclass(cls, aiohttp.ServerFingerprintMismatch):
        return cls(b"expected", b"got", "example.test", 443)
    if issubclass(cls, aiohttp.InvalidURL):
        return cls(URL, f"invalid {AUTH}")
    return cls(f"failed {AUTH}")


def httpx_error(cls: type[Exception]) -> Exception:
    """A representative of ``cls``, built as httpx builds it, the token in its text."""
    request = httpx.Request("GET", URL, headers={"Authorization": AUTH})
    if issubclass(cls, httpx.HTTPStatusError):
        response = httpx.Response(500, request=request)
        return cls(f"status {AUTH}", request=request, response=response)
    if issubclass(cls, httpx.RequestError):
        return cls(f"failed {AUTH}", request=request)
    if issubclass(cls, httpx.StreamError) and cls is not httpx.StreamError:
        # Their messages are fixed: the subclasses take no argument.
        return cast("Callable[[], Exception]", cls)()
    return cls(f"failed {AUTH}")


def httpcore_error(cls: type[Exception]) -> Exception:
    """A representative of ``cls``: httpcore builds each from a message (or from the
    exception of h11 or the socket layer it maps), the token in its text."""
    return cls(f"failed {AUTH}")


def stdlib_error(cls: type[Exception]) -> Exception:
    """A representative of a standard exception raised under the HTTP libraries."""
    if issubclass(cls, ConnectionResetError):
        return cls(104, f"reset by peer {AUTH}")
    return cls(f"failed {AUTH}")


def translation_cases() -> list[Any]:
    cases = [
        pytest.param(library, cls, make, kind, id=f"{library}-{cls.__qualname__}")
        for library, kinds, make in (
            ("aiohttp", AIOHTTP_KINDS, aiohttp_error),
            ("httpx", HTTPX_KINDS, httpx_error),
            ("httpcore", HTTPCORE_KINDS, httpcore_error),
        )
        for cls, kind in kinds.items()
    ]
    cases += [
        pytest.param(library, cls, stdlib_error, kind, id=f"{library}-{cls.__qualname__}")
        for library in LIBRARIES
        for cls, kind in STDLIB_KINDS.items()
    ]
    return cases


class RaisingSession:
    """In the place of aiohttp's ``ClientSession``: each request raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def request(self, *args: Any, **kwargs: Any) -> RaisingSession:
        return self

    async def __aenter__(self) -> None:
        await anyio.lowlevel.checkpoint()
        raise self.error

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.lowlevel.checkpoint()

    async def close(self) -> None:
        await anyio.lowlevel.checkpoint()


class RaisingPool:
    """In the place of httpcore's ``AsyncConnectionPool``: each request raises ``error``,
    as httpcore does, or as respx does from the pool it patches (httpx's exceptions)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        await anyio.lowlevel.checkpoint()
        raise self.error

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def raising(library: str, anyio_backend: str, error: BaseException) -> AsyncIterator[Any]:
    """A real transport whose HTTP library raises ``error`` for each request."""
    transport: AiohttpTransport | HttpxTransport
    if library == "aiohttp":
        if anyio_backend == "trio":
            pytest.skip("aiohttp runs on asyncio only")
        transport = AiohttpTransport()
        transport._session = RaisingSession(error)  # type: ignore[assignment]
    else:
        transport = HttpxTransport()
        await transport._pool.aclose()
        transport._pool = RaisingPool(error)  # type: ignore[assignment]
    try:
        yield transport
    finally:
        await transport.aclose()


def sent() -> Request:
    return Request("GET", URL, headers={"Authorization": AUTH}, timeout=5.0)


@pytest.mark.parametrize(("library", "cls", "make", "kind"), translation_cases())
async def test_each_exception_becomes_its_kind_through_the_transport(
    library: str,
    cls: type[Exception],
    make: Callable[[type[Exception]], Exception],
    kind: type[TransportError],
    anyio_backend: str,
) -> None:
    original = make(cls)
    assert type(original) is cls
    async with raising(library, anyio_backend, original) as transport:
        with pytest.raises(TransportError) as info:
            await transport.handle_request(sent())
    error = info.value
    assert type(error) is kind
    cause = error.__cause__
    assert type(cause) is LibraryError
    assert str(cause).startswith(f"{cls.__name__}: ")
    # The stand-in is the whole chain: the library's exception is neither cause nor
    # context of anything the caller sees.
    assert error.__context__ is None
    assert (cause.__cause__, cause.__context__) == (None, None)
    for text in (str(error), repr(error), str(cause), repr(cause)):
        assert "test-token" not in text


@pytest.mark.parametrize("library", list(LIBRARIES))
async def test_asyncpoll_errors_and_unmapped_exceptions_pass_through(
    library: str, anyio_backend: str
) -> None:
    # BodyReader's own errors arrive unchanged; what no entry maps is not caught at all
    # (the Session describes it without chaining).
    for original in (ResponseTooLarge("too big"), InvalidResponseError("bad"), KeyError("k")):
        async with raising(library, anyio_backend, original) as transport:
            with pytest.raises(type(original)) as info:
                await transport.handle_request(sent())
        assert info.value is original
        assert info.value.__cause__ is None


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
