"""The default transport on asyncio: one pooled aiohttp ``ClientSession``."""

from __future__ import annotations

import aiohttp
import yarl

from .._errors import TransportError
from .._validation import check_count
from ._base import Request, Response
from ._body import ACCEPT_ENCODING, BodyReader, ReadBudget, translate

__all__ = ["AiohttpTransport"]

_CHUNK = 64 * 1024


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
                timeout=aiohttp.ClientTimeout(total=request.timeout),
            ) as response:
                reader = BodyReader(
                    request.max_response_size,
                    content_encoding=response.headers.get("Content-Encoding"),
                    content_length=response.content_length,
                    budget=self._budget,
                )
                try:
                    async for chunk in response.content.iter_chunked(_CHUNK):
                        reader.feed(chunk)
                    body = reader.finish()
                finally:
                    reader.release()
                headers_out = {k.lower(): v for k, v in response.headers.items()}
                return Response(status=response.status, headers=headers_out, body=body)
        except TransportError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            error = translate(exc, request, timed_out=True)
        except (aiohttp.ClientError, OSError, ValueError, UnicodeError) as exc:
            error = translate(exc, request, timed_out=False)
        # Raised here, outside the handler: aiohttp's exception must not ride along as
        # __context__ (the repr of its request_info shows the Authorization header).
        raise error

    async def aclose(self) -> None:
        """Close the pooled connections."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
