"""The exceptions asyncpoll raises.

Every error the library raises on purpose derives from :class:`AsyncpollError`::

    AsyncpollError
    ├── APIError                  the server answered with an error status (.status)
    │   ├── AuthenticationError   401, still 401 after one token refresh
    │   ├── PermissionDeniedError 403: the token lacks the view/manage scope for the space
    │   ├── SpaceNotFoundError    404: the space does not exist
    │   └── RateLimitedError      429 that outlasted the retry budget (.retry_after)
    ├── TransportError            network errors, timeouts, bodies that are not valid JSON
    │   ├── ConnectError          the connection could not be made or was dropped
    │   ├── RequestTimeout        the request's total timeout passed
    │   ├── ResponseTooLarge      the body exceeded ``max_response_size``
    │   └── InvalidResponseError  the body is not JSON, or not a shape we can read
    ├── OperationFailed           (Poller) the operation ended Failed or Canceled (.operation)
    └── OperationNotFound         (Poller) the ID stayed absent past the grace period

Bad arguments (a malformed space ID, an empty operation ID) raise :class:`ValueError`
before any request. Timeouts of ``Poller.wait*`` raise the built-in :class:`TimeoutError`.
Errors of aiohttp, httpx and cattrs are translated at the boundary (``raise ... from``)
and never reach the caller untranslated. No message ever contains the token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import AsyncOperation


class AsyncpollError(Exception):
    """Base class of every error asyncpoll raises on purpose."""


class APIError(AsyncpollError):
    """The server answered with a status that is an error for this request.

    ``status`` is the HTTP status code; ``body`` holds at most the first 2 KiB of the
    response body (for diagnostics).
    """

    def __init__(self, message: str, *, status: int, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body[:2048]


class AuthenticationError(APIError):
    """401: the token is missing, expired or invalid, and one refresh did not help."""


class PermissionDeniedError(APIError):
    """403: the token lacks a view/manage scope or has no access to the space."""


class SpaceNotFoundError(APIError):
    """404: the space does not exist (or is not visible to this token)."""


class RateLimitedError(APIError):
    """429 answers outlasted the retry budget; ``retry_after`` is the last hint in seconds."""

    def __init__(
        self, message: str, *, status: int = 429, body: bytes = b"", retry_after: float | None
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class TransportError(AsyncpollError):
    """The request did not produce a usable response: network, timeout or body errors.

    These are transient: the Session retries them with backoff before raising.
    """


class ConnectError(TransportError):
    """The connection could not be opened, or was dropped before a full response."""


class RequestTimeout(TransportError):
    """The request's total timeout passed before a full response arrived."""


class ResponseTooLarge(TransportError):
    """The response body is larger than the Session's ``max_response_size``."""


class InvalidResponseError(TransportError):
    """The body is not valid JSON (or nests too deeply), or has no shape we can read."""


class OperationFailed(AsyncpollError):
    """The operation ended ``Failed`` or ``Canceled``; ``operation`` is its final state."""

    def __init__(self, operation: AsyncOperation) -> None:
        error = operation.error
        detail = f": {error.message}" if error is not None and error.message else ""
        super().__init__(f"operation {operation.id!r} ended {operation.state.value}{detail}")
        self.operation = operation


class OperationNotFound(AsyncpollError):
    """The operation ID stayed absent from the server's answers past the grace period."""

    def __init__(self, operation_id: str, space_id: str) -> None:
        super().__init__(f"operation {operation_id!r} not found in space {space_id!r}")
        self.operation_id = operation_id
        self.space_id = space_id


def is_transient(error: BaseException) -> bool:
    """The one definition of "transient": worth trying again later, by the Session's
    retries and by the Poller's next round. Network errors, timeouts, bodies that cannot
    be read, 429, 408, 425 and 5xx are; every other error is final for its callers."""
    if isinstance(error, TransportError | RateLimitedError):
        return True
    return isinstance(error, APIError) and (error.status >= 500 or error.status in (408, 425))
