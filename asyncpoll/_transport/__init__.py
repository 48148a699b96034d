"""Transports: the seam between the Session and an HTTP library."""

from __future__ import annotations

import sniffio

from ._aiohttp import AiohttpTransport
from ._base import DEFAULT_MAX_RESPONSE_SIZE, AsyncTransport, Request, Response
from ._httpx import HttpxTransport
from ._mock import MockTransport

__all__ = [
    "DEFAULT_MAX_RESPONSE_SIZE",
    "AiohttpTransport",
    "AsyncTransport",
    "HttpxTransport",
    "MockTransport",
    "Request",
    "Response",
    "default_transport",
]


def default_transport(*, max_connections: int) -> AsyncTransport:
    """aiohttp on asyncio; httpx on trio (aiohttp cannot run there), chosen by sniffio."""
    if sniffio.current_async_library() == "asyncio":
        return AiohttpTransport(max_connections=max_connections)
    return HttpxTransport(max_connections=max_connections)
