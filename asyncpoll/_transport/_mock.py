"""A transport that calls a function instead of the network, for tests."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from ._base import Request, Response

__all__ = ["MockTransport"]

Handler = Callable[[Request], "Response | Awaitable[Response]"]


class MockTransport:
    """An :class:`~asyncpoll.AsyncTransport` that answers with ``handler(request)``.

    ``handler`` is a plain or async function taking a :class:`~asyncpoll.Request` and
    returning a :class:`~asyncpoll.Response`; it may raise
    :class:`~asyncpoll.TransportError` to simulate network faults. ``requests`` records
    every request handled, and ``closed`` tells whether ``aclose`` was called.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []
        self.closed = False

    async def handle_request(self, request: Request) -> Response:
        """Record ``request`` and return what the handler answers."""
        self.requests.append(request)
        response = self._handler(request)
        if inspect.isawaitable(response):
            response = await response
        return response

    async def aclose(self) -> None:
        """Mark the transport closed."""
        self.closed = True
