"""The default transport on asyncio: one pooled aiohttp ``ClientSession``."""

from __future__ import annotations

import aiohttp
import yarl

from .._errors import ConnectError, InvalidResponseError, RequestTimeout, TransportError
from .._validation import check_count
from ._base import Request, Response
from ._body import ACCEPT_ENCODING, BodyReader, ExceptionMap, ReadBudget, caught_by, translate

__all__ = ["EXCEPTION_MAP", "AiohttpTransport"]

#: What each exception aiohttp (or asyncio under it) raises becomes, most specific first.
#: ``tests/test_transport.py`` checks that every exception aiohttp exports is covered.
EXCEPTION_MAP: ExceptionMap = (
    # sock_connect and sock_read timeouts (ConnectionTimeoutError, SocketTimeoutError);
    # also OSErrors, so they must come before every connection entry.
    (aiohttp.ServerTimeoutError, RequestTimeout),
    # A proxy refused the tunnel: the server was never reached (no proxy is used here,
    # trust_env is off). Before ClientResponseError, its base.
    (aiohttp.ClientHttpProxyError, ConnectError),
    # Raised when aiohttp's parser refuses what the server sent (a malformed status line,
    # header or chunk framing): the server answered, not in HTTP, so a bad response. The
    # other subclasses (TooManyRedirects, ContentTypeError, WSServerHandshakeError) need
    # redirects, .json() or websockets, none of which is used.
    (aiohttp.ClientResponseError, InvalidResponseError),
    # The body ended before its Content-Length or last chunk: the connection dropped
    # before a full response (aiohttp gives no way to tell a cut from bad framing).
    (aiohttp.ClientPayloadError, ConnectError),
    # Refused, reset, dropped, DNS, TLS and certificate errors, fingerprint mismatches.
    (aiohttp.ClientConnectionError, ConnectError),
    # A URL aiohttp will not send to (InvalidURL, NonHttpUrlClientError): the request
    # never left. And any other client error: the request did not get a response.
    (aiohttp.ClientError, ConnectError),
    # The total ClientTimeout, raised as asyncio's (the builtin) TimeoutError.
    (TimeoutError, RequestTimeout),
    # Kept from before the map: asyncio's streams can raise a bare OSError (a reset while
    # writing), aiohttp and yarl raise ValueError for a URL or header they refuse (a
    # newline in a header), and the IDNA codec UnicodeError for a host name it cannot
    # encode. None of them is a response, so none is worse than a failed connection.
    (OSError, ConnectError),
    (UnicodeError, ConnectError),
    (ValueError, ConnectError),
)
_CAUGHT = caught_by(EXCEPTION_MAP)


class AiohttpTransport:
    """An :class:`~asyncpoll.AsyncTransport` over aiohttp (asyncio only).

    Keeps one ``aiohttp.ClientSession`` with up to ``max_connections`` pooled keep-alive
    connections, created on first use inside the running loop. Redirects are never
    followed, no cookie is stored or sent, every request has a total timeout, and bodies
    are decoded (gzip, deflate) under the size cap while they stream. aiohttp's
    exceptions become :class:`~asyncpoll.TransportError` subclasses that carry neither
    aiohttp's exception nor the request's headers.
    """

    def __init__(self, *, max_connections: int = 16) -> None:
        self._max_connections = check_count("max_connections", max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._budget = ReadBudget()
        self._last_timeout = aiohttp.ClientTimeout(total=30.0)

    def _timeout(self, total: float) -> aiohttp.ClientTimeout:
        """The (immutable) ClientTimeout of ``total`` seconds, kept while every request
        asks for the same: a Session sends all its requests with one timeout."""
        if self._last_timeout.total != total:
            self._last_timeout = aiohttp.ClientTimeout(total=total)
        return self._last_timeout

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the transport is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
                trust_env=False,
                # Decoded by BodyReader instead, under the size cap.
                auto_decompress=False,
            )
        return self._session

    async def handle_request(self, request: Request) -> Response:
        """Send ``request`` and read the whole body (up to ``request.max_response_size``)."""
        client = self._client()
        headers = {"Accept-Encoding": ACCEPT_ENCODING, **request.headers}
        error: TransportError
        try:
            async with client.request(
                request.method,
                yarl.URL(request.url, encoded=True),
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout(request.timeout),
            ) as response:
                reader = BodyReader(
                    request.max_response_size,
                    content_encoding=response.headers.get("Content-Encoding"),
                    content_length=response.content_length,
                    budget=self._budget,
                )
                try:
                    # Whatever has arrived, as it arrives: aiohttp stops reading the socket
                    # while it holds 128 KiB unread (twice read_bufsize), so a chunk stays
                    # small, and the reader caps the body. Cheaper than iter_chunked.
                    while chunk := await response.content.readany():
                        reader.feed(chunk)
                    body = reader.finish()
                finally:
                    reader.release()
                headers_out = {k.lower(): v for k, v in response.headers.items()}
                return Response(status=response.status, headers=headers_out, body=body)
        except TransportError:
            raise
        except _CAUGHT as exc:
            error = translate(exc, request, EXCEPTION_MAP)
        # Raised here, outside the handler: aiohttp's exception must not ride along as
        # __context__ (the repr of its request_info shows the Authorization header).
        raise error

    async def aclose(self) -> None:
        """Close the pooled connections."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
