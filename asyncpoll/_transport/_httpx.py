"""The transport under trio (aiohttp cannot run there): one pooled ``httpx.AsyncClient``."""

from __future__ import annotations

import http.cookiejar
from typing import Any

import anyio

from .._errors import TransportError
from .._validation import check_count
from ._base import Request, Response
from ._body import ACCEPT_ENCODING, BodyReader, ReadBudget, translate

__all__ = ["HttpxTransport"]


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
        httpx = self._httpx
        error: TransportError
        try:
            # httpx's timeouts restart on every byte: the scope bounds the whole exchange.
            with anyio.fail_after(request.timeout):
                return await self._exchange(request)
        except TransportError:
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            error = translate(exc, request, timed_out=True)
        except (httpx.HTTPError, httpx.StreamError, OSError, ValueError, UnicodeError) as exc:
            error = translate(exc, request, timed_out=False)
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
