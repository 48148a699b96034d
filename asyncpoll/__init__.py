"""asyncpoll: an async client for the "Get asynchronous operation status" endpoint.

A :class:`Session` issues batched status queries; a :class:`Poller` multiplexes the
operation IDs of every caller in a process into few coalesced requests and hands back
results as awaitables and async iterators. Runs on asyncio and, through anyio, on trio.
"""

from __future__ import annotations

import contextlib

from ._blocking import BlockingPoller
from ._errors import (
    APIError,
    AsyncpollError,
    AuthenticationError,
    ConnectError,
    InvalidResponseError,
    OperationFailed,
    OperationNotFound,
    PermissionDeniedError,
    RateLimitedError,
    RequestTimeout,
    ResponseTooLarge,
    SpaceNotFoundError,
    TransportError,
)
from ._fleet import RedisFleet
from ._models import AsyncOperation, OperationError, OperationState
from ._poller import Poller, PollerStatistics, PollInterval, ProgressEvent
from ._retry import RetryPolicy, parse_retry_after
from ._session import Session, TokenProvider
from ._transport import (
    AiohttpTransport,
    AsyncTransport,
    HttpxTransport,
    MockTransport,
    Request,
    Response,
)
from ._wire import Endpoint, decode_operations

__version__ = "0.1.0.dev0"

__all__ = [
    "APIError",
    "AiohttpTransport",
    "AsyncOperation",
    "AsyncTransport",
    "AsyncpollError",
    "AuthenticationError",
    "BlockingPoller",
    "ConnectError",
    "Endpoint",
    "HttpxTransport",
    "InvalidResponseError",
    "MockTransport",
    "OperationError",
    "OperationFailed",
    "OperationNotFound",
    "OperationState",
    "PermissionDeniedError",
    "PollInterval",
    "Poller",
    "PollerStatistics",
    "ProgressEvent",
    "RateLimitedError",
    "RedisFleet",
    "Request",
    "RequestTimeout",
    "Response",
    "ResponseTooLarge",
    "RetryPolicy",
    "Session",
    "SpaceNotFoundError",
    "TokenProvider",
    "TransportError",
    "decode_operations",
    "parse_retry_after",
]

# Public objects read as asyncpoll.X in reprs and docs (as httpx does).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        with contextlib.suppress(AttributeError, TypeError):
            _obj.__module__ = __name__
del _name, _obj
