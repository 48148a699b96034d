"""The transport under trio (aiohttp cannot run there): one pooled ``httpx.AsyncClient``."""

from __future__ import annotations

import functools
import http.cookiejar
from typing import Any

import anyio

from .._errors import ConnectError, InvalidResponseError, RequestTimeout, TransportError
from .._validation import check_count
from ._base import Request, Response
from ._body import ACCEPT_ENCODING, BodyReader, ExceptionMap, ReadBudget, caught_by, translate

__all__ = ["HttpxTransport", "exception_map"]


@functools.cache
def exception_map() -> ExceptionMap:
    """What each exception httpx (or anyio and the standard library under it) raises
    becomes, most specific first. A function, not a constant: httpx is an optional extra,
    imported on first use. ``tests/test_transport.py`` checks that every exception httpx
    exports is covered. Raises :class:`ImportError` without httpx."""
    import httpx

    return (
        # Connect, read, write and pool timeouts (each restarts on every byte: the total
        # is the anyio scope's TimeoutError below, but a timeout is a timeout).
        (httpx.TimeoutException, RequestTimeout),
        # Refused, reset and closed connections, DNS and TLS errors.
        (httpx.NetworkError, ConnectError),
        # httpcore raises it for malformed HTTP, and just as well for a server that hung
        # up before its response ("Server disconnected without sending a response") or in
        # its body ("peer closed connection without sending complete message body"): by
        # far the commoner, and a dropped connection. With no way to tell them apart but
        # the message, ConnectError (where aiohttp's parser errors are bad responses).
        (httpx.RemoteProtocolError, ConnectError),
        # What we sent broke HTTP (h11 refused a header): the request never left.
        (httpx.LocalProtocolError, ConnectError),
        # A proxy (none is used, trust_env is off), a scheme httpx cannot speak, or any
        # other failure below HTTP: no response came back.
        (httpx.TransportError, ConnectError),
        # A body or header that does not decode is a bad response (bodies are read raw
        # and decoded by BodyReader, so this is rare).
        (httpx.DecodingError, InvalidResponseError),
        # Redirects are never followed; mapped as aiohttp's TooManyRedirects is.
        (httpx.TooManyRedirects, InvalidResponseError),
        # Any other error of a request, and HTTPStatusError (raise_for_status is never
        # called): no usable response.
        (httpx.HTTPError, ConnectError),
        # The stream was closed under the read (the client closed meanwhile) or misused.
        (httpx.StreamError, ConnectError),
        # httpx.URL refused the URL: the request never left (as aiohttp's InvalidURL).
        (httpx.InvalidURL, ConnectError),
        # The anyio scope around the whole exchange passed.
        (TimeoutError, RequestTimeout),
        # Kept from before the map, as for aiohttp: a bare OSError from the socket layer,
        # ValueError for a URL or header refused below httpx, UnicodeError for a host name
        # the IDNA codec cannot encode. None of them is a response.
        (OSError, ConnectError),
        (UnicodeError, ConnectError),
        (ValueError, ConnectError),
    )


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Refuses every cookie, so httpx's client-wide jar stays empty."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class HttpxTransport:
    """An :class:`~asyncpoll.AsyncTransport` over httpx (works on asyncio and trio).

    Needs the ``asyncpoll[trio]`` extra. Redirects are never followed, no cookie is
    stored or sent, every request has a total timeout, and bodies are read raw and
    decoded (gzip, deflate) under the size cap while they stream. httpx's exceptions
    become :class:`~asyncpoll.TransportError` subclasses that carry neither httpx's
    exception nor the request's headers.
    """

    def __init__(self, *, max_connections: int = 16) -> None:
        check_count("max_connections", max_connections)
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError(
                "asyncpoll needs httpx under trio: pip install 'asyncpoll[trio]'"
            ) from exc
        self._httpx: Any = httpx
        self._errors = exception_map()
        self._caught = caught_by(self._errors)
        self._budget = ReadBudget()
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def handle_request(self, request: Request) -> Response:
        """Send ``request`` and read the whole body (up to ``request.max_response_size``)."""
        error: TransportError
        try:
            # httpx's timeouts restart on every byte: the scope bounds the whole exchange.
            with anyio.fail_after(request.timeout):
                return await self._exchange(request)
        except TransportError:
            raise
        except self._caught as exc:
            error = translate(exc, request, self._errors)
        # Raised outside the handler, so that httpx's exception is not its __context__.
        raise error

    async def _exchange(self, request: Request) -> Response:
        httpx = self._httpx
        req = self._client.build_request(
            request.method,
            httpx.URL(request.url),
            headers={"Accept-Encoding": ACCEPT_ENCODING, **request.headers},
            timeout=httpx.Timeout(request.timeout),
        )
        response = await self._client.send(req, stream=True)
        reader: BodyReader | None = None
        try:
            reader = BodyReader(
                request.max_response_size,
                content_encoding=response.headers.get("content-encoding"),
                content_length=response.headers.get("content-length"),
                budget=self._budget,
            )
            # Raw bytes: httpx would inflate a whole chunk at once, past any cap.
            async for chunk in response.aiter_raw():
                reader.feed(chunk)
            body = reader.finish()
        finally:
            if reader is not None:
                reader.release()
            with anyio.CancelScope(shield=True):
                await response.aclose()
        headers = {k.lower(): v for k, v in response.headers.items()}
        return Response(status=response.status_code, headers=headers, body=body)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()
