"""The transport seam: one small async interface every HTTP backend implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["DEFAULT_MAX_RESPONSE_SIZE", "AsyncTransport", "Request", "Response"]

DEFAULT_MAX_RESPONSE_SIZE = 16 * 1024 * 1024


@attrs.frozen
class Request:
    """One HTTP request as the Session hands it to a transport.

    ``url`` is complete and already percent-encoded: transports must send it as is.
    ``timeout`` is the total time allowed for the request, in seconds.
    ``max_response_size`` is the largest body a transport may read (in bytes).
    """

    method: str
    url: str
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    timeout: float = 30.0
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE


@attrs.frozen
class Response:
    """One HTTP response: ``status``, ``headers`` (keys in lower case) and the ``body``."""

    status: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = attrs.field(default=b"", repr=lambda b: f"<{len(b)} bytes>")


@runtime_checkable
class AsyncTransport(Protocol):
    """What the Session needs from an HTTP backend.

    ``handle_request`` sends one request without following redirects and returns the
    response with its body read in full (at most ``request.max_response_size`` bytes).
    It raises only :class:`~asyncpoll.TransportError` and its subclasses
    (:class:`~asyncpoll.ConnectError`, :class:`~asyncpoll.RequestTimeout`,
    :class:`~asyncpoll.ResponseTooLarge`); cancellation propagates unchanged.
    ``aclose`` releases connections; the Session calls it once on exit.
    """

    async def handle_request(self, request: Request) -> Response:
        """Send ``request`` and return its response."""
        ...

    async def aclose(self) -> None:
        """Release every connection and resource the transport holds."""
        ...
