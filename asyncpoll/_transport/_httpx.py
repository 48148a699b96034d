"""The transport under trio (aiohttp cannot run there): one pooled ``httpx.AsyncClient``."""

from __future__ import annotations

from typing import Any

from .._errors import ConnectError, RequestTimeout, ResponseTooLarge, TransportError
from ._base import Request, Response

__all__ = ["HttpxTransport"]


class HttpxTransport:
    """An :class:`~asyncpoll.AsyncTransport` over httpx (works on asyncio and trio).

    Needs the ``asyncpoll[trio]`` extra. Redirects are never followed; every request has
    a total timeout; httpx's exceptions are translated to
    :class:`~asyncpoll.TransportError` subclasses.
    """

    def __init__(self, *, max_connections: int = 16) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError(
                "asyncpoll needs httpx under trio: pip install 'asyncpoll[trio]'"
            ) from exc
        self._httpx: Any = httpx
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def handle_request(self, request: Request) -> Response:
        """Send ``request`` and read the whole body (up to ``request.max_response_size``)."""
        httpx = self._httpx
        try:
            req = self._client.build_request(
                request.method,
                httpx.URL(request.url),
                headers=dict(request.headers),
                timeout=httpx.Timeout(request.timeout),
            )
            response = await self._client.send(req, stream=True)
            try:
                limit = request.max_response_size
                length = response.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise ResponseTooLarge(f"response body of {length} bytes exceeds {limit}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise ResponseTooLarge(f"response body exceeds {limit} bytes")
                    chunks.append(chunk)
            finally:
                await response.aclose()
            headers = {k.lower(): v for k, v in response.headers.items()}
            return Response(status=response.status_code, headers=headers, body=b"".join(chunks))
        except TransportError:
            raise
        except httpx.TimeoutException as exc:
            raise RequestTimeout(f"no complete response within {request.timeout} s") from exc
        except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
            raise ConnectError(f"{type(exc).__name__}: {str(exc)[:300]}") from exc

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()
