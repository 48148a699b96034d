"""The transport under trio (aiohttp cannot run there): one ``httpcore.AsyncConnectionPool``.

httpcore is what httpx sends through; going to it directly skips what asyncpoll never
uses (httpx's client: auth, cookies, redirects, event hooks) and, above all, httpx's
parsing of every URL: its validation of a 100-ID query costs more CPU than the rest of
the request (issue 10). The Session's URL is complete and already percent-encoded, so the
transport only splits it: the origin (scheme, host, port) is parsed once by
``httpx.URL`` and cached, the target (path and query) is sent as given.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from .._errors import ConnectError, InvalidResponseError, RequestTimeout, TransportError
from .._validation import check_count
from ._base import Request, Response
from ._body import ACCEPT_ENCODING, BodyReader, ExceptionMap, ReadBudget, caught_by, translate

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping

__all__ = ["HttpxTransport", "exception_map"]

_KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept: httpx's default
# httpcore's timeouts: for a pool slot, the connect, each write and each read.
_PHASES = ("connect", "read", "write", "pool")
# Where the authority of an absolute URL ends: the path, the query or the fragment.
_AUTHORITY_END = re.compile(r"[/?#]")


@functools.cache
def exception_map() -> ExceptionMap:
    """What each exception httpcore or httpx (or anyio and the standard library under
    them) raises becomes, most specific first. A function, not a constant: httpx is an
    optional extra, imported on first use. ``tests/test_transport.py`` checks that every
    exception httpcore and httpx export is covered. Raises :class:`ImportError` without
    httpx.

    httpcore's exceptions are what the pool raises. httpx's come from httpx's transport
    (used while httpx is instrumented, see :class:`HttpxTransport`) and from mocks: respx
    patches the pool and raises what a test asks for (``side_effect=httpx.ConnectError``).
    """
    import httpcore
    import httpx

    return (
        # Connect, read, write and pool timeouts (each restarts on every byte: the total
        # is the anyio scope's TimeoutError below, but a timeout is a timeout).
        (httpx.TimeoutException, RequestTimeout),
        (httpcore.TimeoutException, RequestTimeout),
        # Refused, reset and closed connections, DNS and TLS errors.
        (httpx.NetworkError, ConnectError),
        (httpcore.NetworkError, ConnectError),
        # httpcore raises it for malformed HTTP, and just as well for a server that hung
        # up before its response ("Server disconnected without sending a response") or in
        # its body ("peer closed connection without sending complete message body"): by
        # far the commoner, and a dropped connection. With no way to tell them apart but
        # the message, ConnectError (where aiohttp's parser errors are bad responses).
        (httpx.RemoteProtocolError, ConnectError),
        (httpcore.RemoteProtocolError, ConnectError),
        # What we sent broke HTTP (h11 refused a header or the request target): the
        # request never left.
        (httpx.LocalProtocolError, ConnectError),
        (httpcore.LocalProtocolError, ConnectError),
        (httpcore.ProtocolError, ConnectError),
        # A proxy (none is used, trust_env is off), a scheme httpcore cannot speak, or
        # any other failure below HTTP: no response came back.
        (httpx.TransportError, ConnectError),
        (httpcore.ProxyError, ConnectError),
        (httpcore.UnsupportedProtocol, ConnectError),
        # The pool catches it to try another connection: should one escape, there was no
        # connection to send on.
        (httpcore.ConnectionNotAvailable, ConnectError),
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
        # httpx.URL refused the URL (its origin, or a target that is not plain ASCII):
        # the request never left (as aiohttp's InvalidURL).
        (httpx.InvalidURL, ConnectError),
        # The anyio scope around the whole exchange passed.
        (TimeoutError, RequestTimeout),
        # Kept from before the map, as for aiohttp: a bare OSError from the socket layer,
        # ValueError for a URL or header refused below httpx (httpcore's and h11's checks,
        # a header that is not ASCII), UnicodeError for a host name the IDNA codec cannot
        # encode. None of them is a response.
        (OSError, ConnectError),
        (UnicodeError, ConnectError),
        (ValueError, ConnectError),
    )


class _Origin(NamedTuple):
    """Where one origin's requests go, as httpx parses it (IDNA, IPv6, default ports)."""

    text: str  # the URL up to its path, as the Session wrote it
    scheme: bytes
    host: bytes
    port: int | None  # None: the scheme's default
    host_header: bytes


class HttpxTransport:
    """An :class:`~asyncpoll.AsyncTransport` over httpcore, httpx's own HTTP layer (works
    on asyncio and trio).

    Needs the ``asyncpoll[trio]`` extra. Redirects are never followed, no cookie is
    stored or sent, every request has a total timeout, and bodies are read raw and
    decoded (gzip, deflate) under the size cap while they stream. The exceptions of
    httpcore and httpx become :class:`~asyncpoll.TransportError` subclasses that carry
    neither the library's exception nor the request's headers.

    Requests go straight to one ``httpcore.AsyncConnectionPool`` of up to
    ``max_connections`` keep-alive connections, TLS verified against certifi's CA bundle
    as httpx does. While httpx's transport is instrumented (OpenTelemetry's
    ``HTTPXClientInstrumentor`` wraps ``httpx.AsyncHTTPTransport.handle_async_request``),
    they go through an ``httpx.AsyncHTTPTransport`` of the same limits instead, so that
    the instrumentation sees each one. respx intercepts either way in its default mode,
    which patches httpcore's pool; its ``using="httpx"`` mode patches httpx's client,
    which this transport does not use.
    """

    def __init__(self, *, max_connections: int = 16) -> None:
        check_count("max_connections", max_connections)
        try:
            import httpcore
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError(
                "asyncpoll needs httpx under trio: pip install 'asyncpoll[trio]'"
            ) from exc
        import ssl

        import certifi  # httpx's and httpcore's own dependency

        self._httpcore: Any = httpcore
        self._httpx: Any = httpx
        self._max_connections = max_connections
        self._errors = exception_map()
        self._caught = caught_by(self._errors)
        self._budget = ReadBudget()
        self._closed = False
        # httpx's context with trust_env off: certifi's bundle only. Built once: httpcore
        # would build one per connection without it.
        self._ssl_context = ssl.create_default_context(cafile=certifi.where())
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=self._ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=_KEEPALIVE_EXPIRY,
        )
        self._instrumented: Any = None  # the httpx.AsyncHTTPTransport, made when needed
        self._origin: _Origin | None = None  # a Session sends to one origin: one kept

    async def handle_request(self, request: Request) -> Response:
        """Send ``request`` and read the whole body (up to ``request.max_response_size``)."""
        error: TransportError
        try:
            # httpcore's timeouts restart on every byte: the scope bounds the whole exchange.
            with anyio.fail_after(request.timeout):
                return await self._exchange(request)
        except TransportError:
            raise
        except self._caught as exc:
            error = translate(exc, request, self._errors)
        # Raised outside the handler, so that the library's exception is not its __context__.
        raise error

    async def _exchange(self, request: Request) -> Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        origin, target = self._split(request.url)
        headers = self._headers(request.headers, origin)
        extensions = {"timeout": dict.fromkeys(_PHASES, request.timeout)}
        chunks: AsyncIterator[bytes]
        close: Callable[[], Awaitable[None]]
        if hasattr(self._httpx.AsyncHTTPTransport.handle_async_request, "__wrapped__"):
            # Instrumented (wrapt and functools.wraps leave __wrapped__): through httpx.
            sent = self._httpx.Request(
                request.method,
                self._httpx.URL(request.url),
                headers=headers,
                extensions=extensions,
            )
            answer = await self._httpx_transport().handle_async_request(sent)
            status, raw_headers = answer.status_code, answer.headers.raw
            chunks, close = answer.aiter_raw(), answer.aclose
        else:
            httpcore = self._httpcore
            url = httpcore.URL(
                scheme=origin.scheme, host=origin.host, port=origin.port, target=target
            )
            core = await self._pool.handle_async_request(
                httpcore.Request(request.method, url, headers=headers, extensions=extensions)
            )
            # httpcore never decodes: these are the raw bytes of the body.
            status, raw_headers = core.status, core.headers
            chunks, close = core.aiter_stream(), core.aclose
        reader: BodyReader | None = None
        try:
            response_headers = _decoded(raw_headers)
            reader = BodyReader(
                request.max_response_size,
                content_encoding=response_headers.get("content-encoding"),
                content_length=response_headers.get("content-length"),
                budget=self._budget,
            )
            # Raw bytes, as they arrive: the reader decodes and caps them.
            async for chunk in chunks:
                reader.feed(chunk)
            body = reader.finish()
        finally:
            if reader is not None:
                reader.release()
            with anyio.CancelScope(shield=True):
                await close()
        return Response(status=status, headers=response_headers, body=body)

    def _split(self, url: str) -> tuple[_Origin, bytes]:
        """The origin of ``url`` (parsed once, then kept) and its request target."""
        start = url.find("://")
        found = _AUTHORITY_END.search(url, start + 3) if start >= 0 else None
        end = found.start() if found is not None else len(url)
        origin = self._origin
        if origin is None or origin.text != url[:end]:
            origin = self._origin = self._parse_origin(url[:end])
        target = url[end:]
        if "#" in target:  # a fragment is never sent
            target = target[: target.index("#")]
        if not target.startswith("/"):  # "" or "?query": the path is "/"
            target = "/" + target
        if not (target.isascii() and target.isprintable() and " " not in target):
            # Not sendable as is (h11 takes only visible ASCII): percent-encoded, or
            # refused if it holds a control character, by httpx, as before issue 10.
            parsed: bytes = self._httpx.URL(url).raw_path
            return origin, parsed
        return origin, target.encode("ascii")

    def _parse_origin(self, text: str) -> _Origin:
        parsed = self._httpx.URL(text)
        if parsed.userinfo:
            # httpx would turn it into a Basic Authorization header; the Session never
            # writes one (its base URL must not carry credentials), nor does this.
            raise ValueError("HttpxTransport does not send credentials given in the URL")
        return _Origin(text, parsed.raw_scheme, parsed.raw_host, parsed.port, parsed.netloc)

    def _headers(self, given: Mapping[str, str], origin: _Origin) -> list[tuple[bytes, bytes]]:
        # As httpx sends them: ASCII (a header that is not fails before anything is sent),
        # Host and Accept-Encoding first unless the request sets its own.
        merged = {"Accept-Encoding": ACCEPT_ENCODING, **given}
        encoded = [(k.encode("ascii"), v.encode("ascii")) for k, v in merged.items()]
        if not any(k.lower() == b"host" for k, _ in encoded):
            encoded.insert(0, (b"Host", origin.host_header))
        return encoded

    def _httpx_transport(self) -> Any:
        if self._instrumented is None:
            httpx = self._httpx
            self._instrumented = httpx.AsyncHTTPTransport(
                verify=self._ssl_context,
                trust_env=False,
                limits=httpx.Limits(
                    max_connections=self._max_connections,
                    max_keepalive_connections=self._max_connections,
                    keepalive_expiry=_KEEPALIVE_EXPIRY,
                ),
            )
        return self._instrumented

    async def aclose(self) -> None:
        """Close the pooled connections."""
        self._closed = True
        await self._pool.aclose()
        if self._instrumented is not None:
            await self._instrumented.aclose()


def _decoded(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Response headers as httpx reads them: names in lower case, one encoding for all
    (ASCII, else UTF-8, else Latin-1), a repeated header's values joined with ", "."""
    pairs = list(raw)
    for encoding in ("ascii", "utf-8"):
        try:
            decoded = [(k.decode(encoding).lower(), v.decode(encoding)) for k, v in pairs]
            break
        except UnicodeDecodeError:
            continue
    else:
        decoded = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in pairs]
    headers: dict[str, str] = {}
    for name, value in decoded:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers
