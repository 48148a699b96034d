"""The default transport on asyncio: one pooled aiohttp ``ClientSession``."""

from __future__ import annotations

import aiohttp
import yarl

from .._errors import ConnectError, RequestTimeout, ResponseTooLarge, TransportError
from ._base import Request, Response

__all__ = ["AiohttpTransport"]

_CHUNK = 64 * 1024


class AiohttpTransport:
    """An :class:`~asyncpoll.AsyncTransport` over aiohttp (asyncio only).

    Keeps one ``aiohttp.ClientSession`` with up to ``max_connections`` pooled keep-alive
    connections, created on first use inside the running loop. Redirects are never
    followed; every request has a total timeout. aiohttp's exceptions are translated to
    :class:`~asyncpoll.TransportError` subclasses.
    """

    def __init__(self, *, max_connections: int = 16) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the transport is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
                trust_env=False,
            )
        return self._session

    async def handle_request(self, request: Request) -> Response:
        """Send ``request`` and read the whole body (up to ``request.max_response_size``)."""
        client = self._client()
        try:
            async with client.request(
                request.method,
                yarl.URL(request.url, encoded=True),
                headers=dict(request.headers),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=request.timeout),
            ) as response:
                length = response.content_length
                limit = request.max_response_size
                if length is not None and length > limit:
                    raise ResponseTooLarge(f"response body of {length} bytes exceeds {limit}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise ResponseTooLarge(f"response body exceeds {limit} bytes")
                    chunks.append(chunk)
                headers = {k.lower(): v for k, v in response.headers.items()}
                return Response(status=response.status, headers=headers, body=b"".join(chunks))
        except TransportError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise RequestTimeout(f"no complete response within {request.timeout} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectError(f"{type(exc).__name__}: {_safe(exc)}") from exc

    async def aclose(self) -> None:
        """Close the pooled connections."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _safe(exc: BaseException) -> str:
    # aiohttp messages name the URL but never the headers, so the token cannot appear.
    return str(exc)[:300]
