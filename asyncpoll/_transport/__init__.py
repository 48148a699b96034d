"""Transports: the seam between the Session and an HTTP library."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

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
    """aiohttp on asyncio; httpx on trio (aiohttp cannot run there), chosen by sniffio.

    On asyncio, warns (:class:`UserWarning`) if a respx mock is active: respx patches
    httpx, which the aiohttp transport never calls, so its routes would not be used.
    """
    if sniffio.current_async_library() == "asyncio":
        if _respx_mock_active():
            warnings.warn(
                "a respx mock is active, but this Session uses the default aiohttp "
                "transport on asyncio, which respx does not intercept: pass "
                "transport=asyncpoll.HttpxTransport() to the Session",
                stacklevel=_first_outside_level(),
            )
        return AiohttpTransport(max_connections=max_connections)
    return HttpxTransport(max_connections=max_connections)


def _respx_mock_active() -> bool:
    """Whether a respx router is started now. respx is never imported for this: only a
    program that imported it can have a mock running."""
    mocks = sys.modules.get("respx.mocks")
    if mocks is None:
        return False
    try:
        # Each mocker (httpcore, httpx) lists the routers started on it.
        return any(mocker.routers for mocker in mocks.Mocker.registry.values())
    except AttributeError:  # a respx of another shape: no warning rather than a failure
        return False


def _first_outside_level() -> int:
    """The ``stacklevel`` of the caller's first frame outside asyncpoll (its ``async with
    Session(...)`` or first call), however many of our frames lie between."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame: FrameType | None = sys._getframe(2)  # the frame that called the warner
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level
