"""The Session: validated, batched, retried status queries over one transport."""

from __future__ import annotations

import ipaddress
import logging
import random
import re
import reprlib
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
import attrs

from ._errors import (
    APIError,
    AsyncpollError,
    AuthenticationError,
    InvalidResponseError,
    PermissionDeniedError,
    RateLimitedError,
    SpaceNotFoundError,
    TransportError,
)
from ._models import AsyncOperation, OperationState
from ._retry import RetryPolicy, parse_retry_after
from ._transport import DEFAULT_MAX_RESPONSE_SIZE, AsyncTransport, Request, Response
from ._transport import default_transport as _default_transport
from ._wire import Endpoint, parse_body

__all__ = ["DEFAULT_BASE_URL", "Session", "TokenProvider", "validate_operation_id"]

logger = logging.getLogger("asyncpoll")

DEFAULT_BASE_URL = "https://api.seismic.com"

TokenProvider = Callable[[], Awaitable[str]]

_SPACE_RE = re.compile(r"[A-Za-z0-9_-]{7,22}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_LOGGED_UNKNOWN_STATES = 64
_MAX_CACHED_PARTS = 1 << 18


def validate_space_id(space_id: object) -> str:
    """Return ``space_id`` if it is ``default`` or 7-22 of ``[A-Za-z0-9_-]``; else ValueError."""
    if not isinstance(space_id, str) or not _SPACE_RE.fullmatch(space_id):
        raise ValueError(
            f"invalid space_id {space_id!r}: expected 'default' or 7 to 22 letters, "
            "digits, '-' or '_'"
        )
    return space_id


def validate_operation_id(op_id: object) -> str:
    """Return ``op_id`` if it is a non-empty string without control characters."""
    if not isinstance(op_id, str):
        raise TypeError(f"operation IDs are strings, got {type(op_id).__name__}")
    if not op_id:
        raise ValueError("operation IDs must not be empty")
    if _CONTROL_RE.search(op_id):
        raise ValueError(f"operation ID {op_id!r} contains a control character")
    if not op_id.isascii():
        try:
            op_id.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate cannot be percent-encoded: refuse it here, not mid-poll.
            raise ValueError(f"operation ID {op_id!r} is not valid Unicode") from None
    return op_id


def validate_operation_ids(ids: Iterable[str]) -> list[str]:
    """Validate ``ids`` and drop duplicates, keeping first-seen order."""
    if isinstance(ids, str | bytes):
        raise TypeError("pass a list of operation IDs, not a single string")
    return list(dict.fromkeys(validate_operation_id(i) for i in ids))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.frozen
class BatchResult:
    """What one planned batch produced (internal, shared with the Poller).

    ``operations`` in the order received; ``retry_after`` is a ``Retry-After`` hint that
    came with a 200 (seconds), if any; ``id_errors`` holds IDs the server refused one by
    one (a 400 for a single-ID request).
    """

    operations: list[AsyncOperation]
    retry_after: float | None = None
    id_errors: Mapping[str, APIError] = attrs.field(factory=dict)


class Session:
    """An async client of the "Get asynchronous operation status" endpoint.

    Use it as ``async with Session(token=...) as session:``; it opens its transport on
    entry and closes it (and every connection) on exit.

    ``token`` is the bearer token as a string, or a zero-argument async callable that
    returns the current token; a callable is called on first use and once more after a
    401 (one refresh shared by every request in flight). The token never appears in a
    repr, log line or exception.

    ``space_id`` is the default space of queries. ``max_batch_size`` and
    ``max_url_length`` cap the IDs and the bytes of path and query in one request.
    ``timeout`` is the total time of one HTTP request; ``retry`` bounds retries of
    transient failures. ``transport`` replaces the default (aiohttp on asyncio, httpx on
    trio); ``endpoint`` replaces the request path and response decoding. Plain
    ``http://`` to a host that is not loopback needs ``allow_insecure_http=True``.

    Raises :class:`ValueError` at construction for a bad URL, space ID or limit.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        token: str | TokenProvider,
        space_id: str = "default",
        max_batch_size: int = 100,
        transport: AsyncTransport | None = None,
        max_url_length: int = 8000,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        endpoint: Endpoint | None = None,
        allow_insecure_http: bool = False,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        max_connections: int = 16,
    ) -> None:
        self._endpoint = endpoint if endpoint is not None else Endpoint()
        self._base = self._check_base_url(base_url, allow_insecure_http)
        self.space_id = validate_space_id(space_id)
        if isinstance(token, str):
            if not token or "\r" in token or "\n" in token:
                raise ValueError("token must be a non-empty string without line breaks")
            self._token: str | None = token
            self._provider: TokenProvider | None = None
        elif callable(token):
            self._token = None
            self._provider = token
        else:
            raise TypeError("token must be a str or a zero-argument async callable")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_url_length < 64:
            raise ValueError("max_url_length must be at least 64")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_response_size < 1:
            raise ValueError("max_response_size must be positive")
        self.max_batch_size = max_batch_size
        self.max_url_length = max_url_length
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_response_size = max_response_size
        self._max_connections = max_connections
        self._transport = transport
        self._generation = 0
        self._not_before = 0.0
        self._rng = random.Random()
        self._token_lock: anyio.Lock | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._entered = False
        self._logged_states: set[str] = set()
        self._parts: dict[str, str] = {}
        self._paths: dict[str, tuple[str, int]] = {}
        #: Requests sent and retries made, for statistics.
        self.requests_sent = 0
        self.retries = 0

    # -- set-up -------------------------------------------------------------------------

    def _check_base_url(self, base_url: str, allow_insecure_http: bool) -> str:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        if parts.username or parts.password:
            raise ValueError("base_url must not carry credentials")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or fragment")
        if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
            raise ValueError(
                f"refusing to send a bearer token over plain http to {parts.hostname!r}; "
                "use https, or pass allow_insecure_http=True"
            )
        if "{space_id}" not in self._endpoint.path:
            raise ValueError("endpoint.path must contain '{space_id}'")
        if not self._endpoint.path.startswith("/"):
            # Appended to base_url: without the slash it could move the token to another
            # host ("@evil.example/..." turns the base URL into credentials).
            raise ValueError("endpoint.path must start with '/'")
        return base_url.rstrip("/")

    async def __aenter__(self) -> Session:
        if self._entered:
            raise RuntimeError("a Session can be entered only once")
        self._entered = True
        self._token_lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(self._max_connections)
        if self._transport is None:
            self._transport = _default_transport(max_connections=self._max_connections)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport and its connections (also on cancellation)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            with anyio.CancelScope(shield=True):
                await transport.aclose()

    def _require_open(self) -> anyio.CapacityLimiter:
        """The request limiter of an entered Session; RuntimeError outside ``async with``."""
        if self._limiter is None or self._transport is None:
            raise RuntimeError("use the Session as 'async with Session(...) as session:'")
        return self._limiter

    def __repr__(self) -> str:
        return f"<asyncpoll.Session base_url={self._base!r} space_id={self.space_id!r}>"

    # -- public API ---------------------------------------------------------------------

    async def get_operations(
        self, ids: Iterable[str], *, space_id: str | None = None
    ) -> list[AsyncOperation]:
        """Query the status of ``ids`` in one batched query, split into as many requests
        as the batch and URL caps need (sent concurrently).

        IDs are deduplicated; the result is in the order the server returned them, and
        IDs the server did not return are absent. Raises :class:`ValueError` or
        :class:`TypeError` for bad IDs or a bad space ID before any request, and the
        :class:`AsyncpollError` subclasses of the module's error tree (after retries for
        transient ones). A single ID the server refuses with 400 raises :class:`APIError`.
        """
        # Checked here, not only in query_batch: raised inside the task group below it
        # would reach the caller wrapped in an ExceptionGroup.
        self._require_open()
        space = self._space(space_id)
        unique = validate_operation_ids(ids)
        if not unique:
            return []
        chunks = self.plan_batches(unique, space_id=space)
        results: list[BatchResult | None] = [None] * len(chunks)
        failure: list[Exception] = []

        async def run(index: int, chunk: list[str]) -> None:
            # The first error ends the call as itself, not wrapped in an ExceptionGroup.
            try:
                results[index] = await self.query_batch(space, chunk)
            except Exception as exc:
                failure.append(exc)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for index, chunk in enumerate(chunks):
                tg.start_soon(run, index, chunk)
        if failure:
            raise failure[0]
        seen: set[str] = set()
        operations: list[AsyncOperation] = []
        for result in results:
            assert result is not None
            if result.id_errors:
                raise next(iter(result.id_errors.values()))
            for operation in result.operations:
                if operation.id not in seen:
                    seen.add(operation.id)
                    operations.append(operation)
        return operations

    # -- batching (shared with the Poller) ----------------------------------------------

    def _space(self, space_id: str | None) -> str:
        return self.space_id if space_id is None else validate_space_id(space_id)

    def _path(self, space_id: str) -> str:
        return self._space_path(space_id)[0]

    def _path_length(self, space_id: str) -> int:
        return self._space_path(space_id)[1]

    def _space_path(self, space_id: str) -> tuple[str, int]:
        """The URL up to the query for ``space_id``, and the length its path adds to the
        request line (cached: every batch of every round needs them)."""
        found = self._paths.get(space_id)
        if found is None:
            quoted = urllib.parse.quote(space_id, safe="")
            url = self._base + self._endpoint.path.format(space_id=quoted)
            found = (url, len(urllib.parse.urlsplit(url).path) + 1)
            if len(self._paths) < _MAX_CACHED_PARTS:
                self._paths[space_id] = found
        return found

    def _id_part(self, op_id: str) -> str:
        # Cached: a Poller plans and sends the same IDs round after round.
        part = self._parts.get(op_id)
        if part is None:
            if len(self._parts) >= _MAX_CACHED_PARTS:
                self._parts.clear()
            part = f"{self._endpoint.ids_param}={urllib.parse.quote(op_id, safe='')}"
            self._parts[op_id] = part
        return part

    def plan_batches(self, ids: Sequence[str], *, space_id: str) -> list[list[str]]:
        """Split validated, unique ``ids`` into batches within both caps, in order.

        Raises :class:`ValueError` if one ID alone is too long for ``max_url_length``.
        """
        base = self._path_length(space_id)
        batches: list[list[str]] = []
        current: list[str] = []
        length = base
        for op_id in ids:
            part = len(self._id_part(op_id)) + 1
            if base + part > self.max_url_length:
                raise self._too_long(op_id)
            full = len(current) >= self.max_batch_size or length + part > self.max_url_length
            if current and full:
                batches.append(current)
                current, length = [], base
            current.append(op_id)
            length += part
        if current:
            batches.append(current)
        return batches

    def check_ids_fit(self, ids: Iterable[str], *, space_id: str) -> None:
        """Raise :class:`ValueError` if one of the validated ``ids`` alone is too long for
        ``max_url_length`` (the Poller checks this when a caller registers, so that the
        polling loop never meets such an ID)."""
        room = self.max_url_length - self._path_length(space_id) - len(self._id_part("")) - 1
        for op_id in ids:
            # Percent-encoded, a character takes at most 12 bytes (4 UTF-8 bytes as "%XX"):
            # only IDs that might not fit are encoded to be sure.
            if 12 * len(op_id) > room and len(urllib.parse.quote(op_id, safe="")) > room:
                raise self._too_long(op_id)

    def _too_long(self, op_id: str) -> ValueError:
        return ValueError(
            f"operation ID {op_id[:40]!r}... is too long for max_url_length={self.max_url_length}"
        )

    def _url(self, space_id: str, ids: Sequence[str]) -> str:
        return self._path(space_id) + "?" + "&".join(self._id_part(i) for i in ids)

    # -- one batch, with retries, refresh and splitting ---------------------------------

    async def query_batch(
        self,
        space_id: str,
        ids: Sequence[str],
        previous: Mapping[str, AsyncOperation] | None = None,
    ) -> BatchResult:
        """Send one planned batch, retrying transient failures and splitting it in halves
        on 400/414. ``previous`` lets the decoder reuse unchanged operations."""
        limiter = self._require_open()
        url = self._url(space_id, ids)
        started = anyio.current_time()
        tries = 0
        refreshed = False
        while True:
            tries += 1
            token, generation = await self._current_token()
            try:
                async with limiter:
                    await self._wait_rate_limit()
                    response = await self._send(url, token)
            except TransportError as exc:
                await self._backoff(exc, tries, started, None)
                continue
            status = response.status
            if status == 200:
                try:
                    operations = list(self._endpoint.decode(parse_body(response.body), previous))
                except InvalidResponseError as exc:
                    await self._backoff(exc, tries, started, None)
                    continue
                self._note_unknown_states(operations)
                hint = parse_retry_after(response.headers.get("retry-after"))
                return BatchResult(operations, retry_after=hint)
            if status == 401:
                if self._provider is not None and not refreshed:
                    refreshed = True
                    tries -= 1
                    await self._refresh(generation)
                    continue
                raise AuthenticationError(
                    "401 Unauthorized: the token is missing, expired or invalid"
                    + (" (after one refresh)" if refreshed else ""),
                    status=401,
                    body=response.body,
                )
            if status in (400, 414):
                return await self._split(space_id, ids, previous, response)
            if status == 403:
                raise PermissionDeniedError(
                    f"403 Forbidden: no view/manage access to space {space_id!r}",
                    status=403,
                    body=response.body,
                )
            if status == 404:
                raise SpaceNotFoundError(
                    f"404 Not Found: space {space_id!r} does not exist",
                    status=404,
                    body=response.body,
                )
            if status in _TRANSIENT_STATUSES or status >= 500:
                hint = parse_retry_after(response.headers.get("retry-after"))
                if status == 429:
                    self._pause(hint if hint is not None else self.retry.backoff(tries, self._rng))
                    error: AsyncpollError = RateLimitedError(
                        "429 Too Many Requests", body=response.body, retry_after=hint
                    )
                else:
                    error = APIError(f"{status} from the server", status=status, body=response.body)
                await self._backoff(error, tries, started, hint)
                continue
            if 300 <= status < 400:
                raise APIError(
                    f"{status} redirect refused: asyncpoll never follows redirects "
                    "(the token must not travel to another URL)",
                    status=status,
                    body=response.body,
                )
            raise APIError(f"unexpected status {status}", status=status, body=response.body)

    async def _split(
        self,
        space_id: str,
        ids: Sequence[str],
        previous: Mapping[str, AsyncOperation] | None,
        response: Response,
    ) -> BatchResult:
        if len(ids) == 1:
            error = APIError(
                f"{response.status}: the server refused operation ID {ids[0]!r}",
                status=response.status,
                body=response.body,
            )
            return BatchResult([], id_errors={ids[0]: error})
        half = len(ids) // 2
        logger.debug("%s for a batch of %d IDs; retrying as two halves", response.status, len(ids))
        first = await self.query_batch(space_id, ids[:half], previous)
        second = await self.query_batch(space_id, ids[half:], previous)
        hints = [h for h in (first.retry_after, second.retry_after) if h is not None]
        return BatchResult(
            first.operations + second.operations,
            retry_after=max(hints) if hints else None,
            id_errors={**first.id_errors, **second.id_errors},
        )

    async def _send(self, url: str, token: str) -> Response:
        assert self._transport is not None
        request = Request(
            "GET",
            url,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": "asyncpoll",
            },
            timeout=self.timeout,
            max_response_size=self.max_response_size,
        )
        self.requests_sent += 1
        started = anyio.current_time()
        response = await self._transport.handle_request(request)
        logger.debug(
            "GET %s -> %d (%d bytes, %.1f ms)",
            url,
            response.status,
            len(response.body),
            (anyio.current_time() - started) * 1000,
        )
        return response

    # -- rate limits and backoff --------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        """After a 429: no request to this host before ``seconds`` from now."""
        self._not_before = max(self._not_before, anyio.current_time() + seconds)

    async def _wait_rate_limit(self) -> None:
        while True:
            delay = self._not_before - anyio.current_time()
            if delay <= 0:
                return
            await anyio.sleep(delay)

    async def _backoff(
        self, error: AsyncpollError, tries: int, started: float, hint: float | None
    ) -> None:
        """Sleep before the next try, or raise ``error`` when the budget is spent."""
        delay = self.retry.backoff(tries, self._rng)
        if hint is not None:
            delay = max(delay, hint)
        elapsed = anyio.current_time() - started
        if tries >= self.retry.attempts or elapsed + delay > self.retry.timeout:
            raise error
        self.retries += 1
        logger.debug("retry %d in %.2f s after %s", tries, delay, error)
        await anyio.sleep(delay)

    # -- tokens -------------------------------------------------------------------------

    async def _current_token(self) -> tuple[str, int]:
        if self._token is None:
            assert self._token_lock is not None
            async with self._token_lock:
                if self._token is None:
                    self._token = await self._call_provider()
        return self._token, self._generation

    async def _refresh(self, seen_generation: int) -> None:
        """One refresh shared by every request that saw the same (expired) token."""
        assert self._token_lock is not None
        async with self._token_lock:
            if self._generation == seen_generation:
                self._token = await self._call_provider()
                self._generation += 1
                logger.debug("token refreshed (generation %d)", self._generation)

    async def _call_provider(self) -> str:
        assert self._provider is not None
        try:
            token = await self._provider()
        except Exception as exc:
            raise AuthenticationError(
                f"the token provider raised {type(exc).__name__}", status=401
            ) from exc
        if not isinstance(token, str) or not token or "\r" in token or "\n" in token:
            raise AuthenticationError(
                "the token provider must return a non-empty string without line breaks",
                status=401,
            )
        return token

    # -- diagnostics --------------------------------------------------------------------

    def _note_unknown_states(self, operations: list[AsyncOperation]) -> None:
        for operation in operations:
            if operation.state is OperationState.UNKNOWN:
                raw: Any = operation.raw.get("state", operation.raw.get("status"))
                # reprlib: bounded in depth and length, whatever the server sent.
                key = reprlib.repr(raw)[:80]
                if key not in self._logged_states and len(self._logged_states) < (
                    _MAX_LOGGED_UNKNOWN_STATES
                ):
                    self._logged_states.add(key)
                    logger.warning(
                        "unknown operation state %s (operation %r); treating it as not "
                        "terminal and polling on",
                        key,
                        operation.id,
                    )
