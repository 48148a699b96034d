"""The Session: validated, batched, retried status queries over one transport."""

from __future__ import annotations

import ipaddress
import logging
import random
import reprlib
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
import attrs

from ._batching import BatchPlanner
from ._errors import (
    APIError,
    AsyncpollError,
    AuthenticationError,
    InvalidResponseError,
    PermissionDeniedError,
    RateLimitedError,
    RequestTimeout,
    ResponseTooLarge,
    SpaceNotFoundError,
    TransportError,
    is_transient,
)
from ._models import AsyncOperation, OperationState
from ._otel import Probe, Telemetry
from ._retry import MAX_RETRY_AFTER, RetryPolicy, parse_retry_after
from ._runtime import LoopBinding
from ._transport import DEFAULT_MAX_RESPONSE_SIZE, AsyncTransport, Request, Response
from ._transport import default_transport as _default_transport
from ._transport._body import redact
from ._validation import (
    check_count,
    check_seconds,
    check_token,
    token_problem,
    validate_operation_ids,
    validate_space_id,
)
from ._wire import Endpoint, Status, decode_operations, decode_statuses, parse_body

if TYPE_CHECKING:
    from ._otel import Links

__all__ = ["DEFAULT_BASE_URL", "Session", "SessionStatistics", "TokenProvider"]

logger = logging.getLogger("asyncpoll")

DEFAULT_BASE_URL = "https://api.seismic.com"

TokenProvider = Callable[[], Awaitable[str]]

_MAX_LOGGED_UNKNOWN_STATES = 64


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

    ``by_id`` maps each ID asked for and answered to its status, in the order received
    (the first answer wins); ``retry_after`` is a ``Retry-After`` hint that came with a
    200 (seconds), if any; ``id_errors`` holds IDs the server refused one by one (a 400
    for a single-ID request).
    """

    by_id: Mapping[str, Status]
    retry_after: float | None = None
    id_errors: Mapping[str, APIError] = attrs.field(factory=dict)

    @property
    def operations(self) -> list[Status]:
        """The statuses in the order received."""
        return list(self.by_id.values())


class Tally:
    """Requests sent and retries made by some calls: a Session's own, or those a Poller
    made through it (so two Pollers on one Session each count their own). What a tally
    counts, its ``parent`` (the Session's) counts too."""

    __slots__ = ("parent", "requests", "retries")

    def __init__(self, parent: Tally | None = None) -> None:
        self.parent = parent
        self.requests = 0
        self.retries = 0

    def request(self) -> None:
        """Count one request sent."""
        self.requests += 1
        if self.parent is not None:
            self.parent.request()

    def retry(self) -> None:
        """Count one retry made."""
        self.retries += 1
        if self.parent is not None:
            self.parent.retry()


@attrs.frozen
class SessionStatistics:
    """A snapshot of a Session's work, from :meth:`Session.statistics`.

    ``requests``: HTTP requests sent; ``retries``: retries made after transient failures;
    ``rate_limit_pauses``: pauses begun after a 429; ``paused_for``: seconds left of the
    current pause (0.0 when none).
    """

    requests: int
    retries: int
    rate_limit_pauses: int
    paused_for: float


class Session:
    """An async client of the "Get asynchronous operation status" endpoint.

    Use it as ``async with Session(token=...) as session:``; it opens its transport on
    entry and closes it (and every connection) on exit. Where set-up and tear-down run
    in different tasks (framework start-up and shutdown hooks), use it without
    ``async with``: it opens on first use, and ``await session.aclose()`` closes it from
    any task. It serves the event loop that first used it: used from another one it
    raises :class:`RuntimeError`, as does any call once it is closed.

    ``token`` is the bearer token as a string, or a zero-argument async callable that
    returns the current token; a callable is called on first use and once more after a
    401 (one refresh shared by every request in flight), each call bounded by
    ``timeout``. A token must be visible ASCII (no spaces, control characters or other
    letters): a bad string raises :class:`ValueError` here, a bad provider result
    :class:`AuthenticationError`, before any request. The token never appears in a
    repr, log line or exception.

    ``space_id`` is the default space of queries. ``max_batch_size`` and
    ``max_url_length`` cap the IDs and the bytes of path and query in one request.
    ``timeout`` bounds one whole attempt (connect, headers and body) on every transport;
    ``retry`` bounds retries of transient failures, and each call's total time, pauses
    after a 429 included. ``transport`` replaces the default (aiohttp on asyncio, httpx on
    trio); ``endpoint`` replaces the request path and response decoding. Plain ``http://``
    to a host that is not loopback needs ``allow_insecure_http=True``.

    Raises :class:`ValueError` (or :class:`TypeError`) at construction for a bad URL,
    token, space ID or limit.
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
            self._token: str | None = check_token(token)
            self._provider: TokenProvider | None = None
        elif callable(token):
            self._token = None
            self._provider = token
        else:
            raise TypeError("token must be a str or a zero-argument async callable")
        self.max_batch_size = check_count("max_batch_size", max_batch_size)
        self.max_url_length = check_count("max_url_length", max_url_length, minimum=64)
        self.timeout = check_seconds("timeout", timeout, allow_zero=False)
        self.max_response_size = check_count("max_response_size", max_response_size)
        self._max_connections = check_count("max_connections", max_connections)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError("retry must be a RetryPolicy")
        self.retry = retry if retry is not None else RetryPolicy()
        self._transport = transport
        self._generation = 0
        self._not_before = 0.0
        self._rng = random.Random()
        self._token_lock: anyio.Lock | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._binding: LoopBinding | None = None
        self._entered = False  # by async with (once only)
        self._closed = False
        self._logged: set[str] = set()
        self._planner = BatchPlanner(
            self._base,
            self._endpoint.path,
            self._endpoint.ids_param,
            max_batch_size=self.max_batch_size,
            max_url_length=self.max_url_length,
        )
        self._pauses = 0
        self._tally = Tally()  # every request and retry of this Session
        self._telemetry = Telemetry(self._base, self._endpoint.path)  # spans and metrics

    # -- set-up -------------------------------------------------------------------------

    def _check_base_url(self, base_url: str, allow_insecure_http: bool) -> str:
        if not isinstance(base_url, str):
            raise TypeError("base_url must be a str")
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
        self._require_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport and its connections, from any task of the Session's event
        loop (also on cancellation). Requests in flight fail; every later call raises
        :class:`RuntimeError`. Closing twice does nothing."""
        self._closed = True
        transport, self._transport = self._transport, None
        if transport is not None:
            with anyio.CancelScope(shield=True):
                await transport.aclose()

    def _require_open(self) -> anyio.CapacityLimiter:
        """The request limiter, opening the Session on first use; RuntimeError once it is
        closed, or in another event loop than the one that opened it."""
        if self._closed:
            raise RuntimeError("the Session is closed")
        if self._binding is None:
            self._binding = LoopBinding("Session")
            self._token_lock = anyio.Lock()
            self._limiter = anyio.CapacityLimiter(self._max_connections)
            if self._transport is None:
                self._transport = _default_transport(max_connections=self._max_connections)
        self._binding.check()
        assert self._limiter is not None
        return self._limiter

    def _now(self) -> float:
        """The event loop's clock (what ``anyio.current_time()`` reads, without looking up
        the backend on every call: the hot path reads it a few times per request)."""
        assert self._binding is not None  # bound by _require_open, before any request
        return self._binding.clock()

    @property
    def is_closed(self) -> bool:
        """True once :meth:`aclose` has run (or the ``async with`` block has ended)."""
        return self._closed

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far (as in :meth:`statistics`)."""
        return self._tally.requests

    @property
    def retries(self) -> int:
        """Retries made so far after transient failures (as in :meth:`statistics`)."""
        return self._tally.retries

    def __repr__(self) -> str:
        return f"<asyncpoll.Session base_url={self._base!r} space_id={self.space_id!r}>"

    # -- public API ---------------------------------------------------------------------

    async def get_operations(
        self, ids: Iterable[str], *, space_id: str | None = None
    ) -> list[AsyncOperation]:
        """Query the status of ``ids`` in one batched query, split into as many requests
        as the batch and URL caps need (sent concurrently).

        IDs are deduplicated; the result is in the order the server returned them, each
        ID at most once (the first answer wins) and only IDs that were asked for; IDs the
        server did not return are absent. Raises :class:`ValueError` or
        :class:`TypeError` for bad IDs or a bad space ID before any request, and the
        :class:`AsyncpollError` subclasses of the module's error tree (after retries for
        transient ones). A single ID the server refuses with 400 raises :class:`APIError`.
        """
        # Checked here, not only in _query_batch: raised inside the task group below it
        # would reach the caller wrapped in an ExceptionGroup.
        self._require_open()
        space = self._space(space_id)
        unique = validate_operation_ids(ids)
        if not unique:
            return []
        parts = self._planner.encode_all(unique, space)
        chunks = self._planner.plan(parts, space)
        results: list[BatchResult | None] = [None] * len(chunks)
        failure: list[Exception] = []

        async def run(index: int, start: int, stop: int) -> None:
            # The first error ends the call as itself, not wrapped in an ExceptionGroup.
            try:
                results[index] = await self._query_batch(
                    space, unique[start:stop], parts[start:stop]
                )
            except Exception as exc:
                failure.append(exc)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for index, (start, stop) in enumerate(chunks):
                tg.start_soon(run, index, start, stop)
        if failure:
            raise failure[0]
        operations: list[AsyncOperation] = []
        for result in results:
            assert result is not None
            if result.id_errors:
                raise next(iter(result.id_errors.values()))
            # Asked without light=True: every status is a model.
            operations.extend(cast(Sequence[AsyncOperation], result.operations))
        return operations

    def statistics(self) -> SessionStatistics:
        """A snapshot of the requests, retries and rate-limit pauses of this Session."""
        paused = 0.0
        if self._not_before and self._binding is not None:
            paused = max(0.0, self._not_before - self._binding.clock())
        return SessionStatistics(
            requests=self._tally.requests,
            retries=self._tally.retries,
            rate_limit_pauses=self._pauses,
            paused_for=paused,
        )

    def _space(self, space_id: str | None) -> str:
        return self.space_id if space_id is None else validate_space_id(space_id)

    # -- one batch, with retries, refresh and splitting ---------------------------------

    async def _query_batch(
        self,
        space_id: str,
        ids: Sequence[str],
        parts: Sequence[str],
        previous: Mapping[str, AsyncOperation] | None = None,
        tally: Tally | None = None,
        *,
        light: bool = False,
        links: Links = (),
    ) -> BatchResult:
        """Send one planned batch (``parts`` are the encoded ``ids``), retrying transient
        failures and splitting it in halves on 400/414. ``previous`` lets the decoder
        reuse unchanged operations; ``tally`` counts this call's requests and retries
        (the seam the Poller sends its batches through). One span (current while it
        runs) covers the whole call; ``links`` are span contexts of callers to link."""
        with self._telemetry.query(space_id, len(ids), self.max_batch_size, links) as probe:
            return await self._attempt_batch(space_id, ids, parts, previous, tally, light, probe)

    async def _attempt_batch(
        self,
        space_id: str,
        ids: Sequence[str],
        parts: Sequence[str],
        previous: Mapping[str, AsyncOperation] | None,
        tally: Tally | None,
        light: bool,
        probe: Probe,
    ) -> BatchResult:
        """The attempts of :meth:`_query_batch`, each told to ``probe``."""
        limiter = self._require_open()
        tally = tally if tally is not None else self._tally
        url = self._planner.url(space_id, parts)
        started = self._now()
        deadline = started + self.retry.timeout
        tries = 0
        refreshed = False
        while True:
            tries += 1
            token, generation = await self._current_token()
            try:
                # Waited out before taking a connection slot, and checked again inside:
                # a 429 answered while this call queued for a slot starts a new pause.
                await self._wait_rate_limit(deadline)
                await _take_slot(limiter)
                try:
                    await self._wait_rate_limit(deadline)
                    probe.sending()
                    response = await self._send(url, token, tally)
                finally:
                    limiter.release()
                if response.status == 200:
                    return self._read(response, url, ids, previous, light)
            except TransportError as exc:
                probe.failed(exc)
                await self._backoff(exc, tries, started, None, tally)
                continue
            status = response.status
            probe.answered(status)
            if status == 401 and self._provider is not None and not refreshed:
                refreshed = True
                tries -= 1
                await self._refresh(generation)
                continue
            if status in (400, 414):
                probe.split()
                return await self._split(space_id, ids, parts, previous, response, tally, light)
            error = self._status_error(response, space_id, url, refreshed)
            if not is_transient(error):
                raise error
            hint = parse_retry_after(response.headers.get("retry-after"))
            if status == 429:
                self._pause(hint if hint is not None else self.retry.backoff(tries, self._rng))
            await self._backoff(error, tries, started, hint, tally)

    def _status_error(
        self, response: Response, space_id: str, url: str, refreshed: bool
    ) -> APIError:
        """The one exception each non-200 status becomes."""
        status, body = response.status, response.body
        if status == 401:
            return AuthenticationError(
                "401 Unauthorized: the token is missing, expired or invalid"
                + (" (after one refresh)" if refreshed else ""),
                status=401,
                body=body,
            )
        if status == 403:
            return PermissionDeniedError(
                f"403 Forbidden: no view/manage access to space {space_id!r}",
                status=403,
                body=body,
            )
        if status == 404:
            message = f"404 Not Found: space {space_id!r} does not exist"
            if not _looks_like_json(body):
                message += f" (or the base URL or endpoint path is wrong: GET {_where(url)})"
            return SpaceNotFoundError(message, status=404, body=body)
        if status == 429:
            hint = parse_retry_after(response.headers.get("retry-after"))
            return RateLimitedError("429 Too Many Requests", body=body, retry_after=hint)
        if 300 <= status < 400:
            return APIError(
                f"{status} redirect refused: asyncpoll never follows redirects "
                "(the token must not travel to another URL)",
                status=status,
                body=body,
            )
        if status >= 500 or status in (408, 425):
            return APIError(f"{status} from the server", status=status, body=body)
        return APIError(f"unexpected status {status}", status=status, body=body)

    async def _split(
        self,
        space_id: str,
        ids: Sequence[str],
        parts: Sequence[str],
        previous: Mapping[str, AsyncOperation] | None,
        response: Response,
        tally: Tally,
        light: bool,
    ) -> BatchResult:
        if len(ids) == 1:
            error = APIError(
                f"{response.status}: the server refused operation ID {ids[0]!r}",
                status=response.status,
                body=response.body,
            )
            return BatchResult({}, id_errors={ids[0]: error})
        half = len(ids) // 2
        logger.debug("%s for a batch of %d IDs; retrying as two halves", response.status, len(ids))
        first = await self._query_batch(
            space_id, ids[:half], parts[:half], previous, tally, light=light
        )
        second = await self._query_batch(
            space_id, ids[half:], parts[half:], previous, tally, light=light
        )
        hints = [h for h in (first.retry_after, second.retry_after) if h is not None]
        return BatchResult(
            {**first.by_id, **second.by_id},
            retry_after=max(hints) if hints else None,
            id_errors={**first.id_errors, **second.id_errors},
        )

    async def _send(self, url: str, token: str, tally: Tally) -> Response:
        transport = self._transport
        if transport is None:
            raise RuntimeError("the Session is closed")
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
        tally.request()
        started = self._now()
        response: Response | None = None
        failure: str | None = None
        # The whole attempt, whatever the transport does with its own timeouts.
        with anyio.move_on_after(self.timeout):
            try:
                response = await transport.handle_request(request)
            except TransportError:
                raise
            except Exception as exc:
                # A transport must raise only TransportError; a mock or a third-party one
                # may not. Its exception is described, not chained (it may hold headers).
                failure = redact(f"{type(exc).__name__}: {str(exc)[:200]}", request.headers)
        if failure is not None:
            raise AsyncpollError(f"the transport {type(transport).__name__} failed: {failure}")
        if response is None:
            raise RequestTimeout(f"no complete response within {self.timeout} s")
        if len(response.body) > self.max_response_size:
            raise ResponseTooLarge(f"response body exceeds {self.max_response_size} bytes")
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "GET %s -> %d (%d bytes, %.1f ms)",
                url,
                response.status,
                len(response.body),
                (self._now() - started) * 1000,
            )
        return response

    # -- reading a 200 ------------------------------------------------------------------

    def _read(
        self,
        response: Response,
        url: str,
        ids: Sequence[str],
        previous: Mapping[str, AsyncOperation] | None,
        light: bool,
    ) -> BatchResult:
        """Decode a 200; keep each asked-for ID once (the first answer wins). With
        ``light`` and the default decoder, statuses of the default shape stay
        :class:`~asyncpoll._wire.Light` records (the Poller builds models it needs)."""
        problem: str | None = None
        cause: BaseException | None = None
        decoded: list[Any] = []
        custom = self._endpoint.decode is not decode_operations
        try:
            document = parse_body(response.body)
            if light and not custom:
                decoded = decode_statuses(document)
            else:
                decoded = list(self._endpoint.decode(document, previous))
        except InvalidResponseError as exc:
            problem = str(exc)
            cause = exc.__cause__
        except Exception as exc:
            # A custom decoder met a body of another shape: an invalid response, retried.
            # Its exception stays the cause (a decoder never sees the token).
            problem = f"the endpoint's decoder raised {type(exc).__name__}: {str(exc)[:200]}"
            cause = exc
        if problem is None and custom and not all(isinstance(op, AsyncOperation) for op in decoded):
            problem = "the endpoint's decoder returned something other than AsyncOperation"
        if problem is not None:
            raise InvalidResponseError(
                f"{problem} (is GET {_where(url)} the status endpoint? the base URL or "
                "endpoint path may be wrong)"
            ) from cause
        asked = set(ids)
        # The usual answer has each ID once, every one asked for: a comprehension, a length
        # check and a subset check cost a third of the careful loop, run only if they fail.
        found: dict[str, Status] = {operation.id: operation for operation in decoded}
        if len(found) != len(decoded) or not asked.issuperset(found):
            found = self._first_answers(decoded, asked)
        unknown = OperationState.UNKNOWN  # an Enum member costs a lookup each time it is read
        for operation in [op for op in found.values() if op.state is unknown]:
            self._note_unknown_state(operation)
        hint = parse_retry_after(response.headers.get("retry-after"))
        return BatchResult(found, retry_after=hint)

    def _first_answers(self, decoded: Sequence[Status], asked: set[str]) -> dict[str, Status]:
        """Each asked-for ID once, with its first answer, for an answer that repeats IDs
        or holds IDs not asked for (each kind of surprise logged once per Session)."""
        found: dict[str, Status] = {}
        for operation in decoded:
            operation_id = operation.id
            if operation_id in found:
                self._note_once("the server answered an operation ID twice in one body")
            elif operation_id not in asked:
                self._note_once("the server answered an operation ID that was not asked for")
            else:
                found[operation_id] = operation
        return found

    # -- rate limits and backoff --------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        """After a 429: no request to this host before ``seconds`` from now."""
        now = self._now()
        end = now + seconds
        if end <= self._not_before:
            return
        if self._not_before <= now or end - self._not_before >= 1.0:
            self._pauses += 1
            self._telemetry.paused(seconds)
            until = datetime.fromtimestamp(time.time() + seconds, UTC)
            logger.warning(
                "rate limited (429): no request of this Session starts for %.1f s, until "
                "%s UTC (Retry-After is capped at %d s); a call whose retry budget ends "
                "sooner raises RateLimitedError at once",
                seconds,
                until.strftime("%Y-%m-%d %H:%M:%S"),
                MAX_RETRY_AFTER,
            )
        self._not_before = end

    async def _wait_rate_limit(self, deadline: float) -> None:
        """Sleep through a pause, or raise RateLimitedError if it outlasts ``deadline``."""
        while True:
            delay = self._not_before - self._now()
            if delay <= 0:
                return
            if self._not_before > deadline:
                raise RateLimitedError(
                    f"429: the server paused this Session for another {delay:.1f} s, past "
                    f"this call's retry budget (RetryPolicy.timeout={self.retry.timeout} s)",
                    retry_after=delay,
                )
            await anyio.sleep(delay)

    async def _backoff(
        self,
        error: AsyncpollError,
        tries: int,
        started: float,
        hint: float | None,
        tally: Tally,
    ) -> None:
        """Sleep before the next try, or raise ``error`` when the budget is spent."""
        delay = self.retry.backoff(tries, self._rng)
        if hint is not None:
            delay = max(delay, hint)
        elapsed = self._now() - started
        if tries >= self.retry.attempts or elapsed + delay > self.retry.timeout:
            raise error
        tally.retry()
        self._telemetry.retried(error, delay)
        if logger.isEnabledFor(logging.DEBUG):
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
        token: object = None
        with anyio.move_on_after(self.timeout) as scope:
            try:
                token = await self._provider()
            except Exception as exc:
                raise AuthenticationError(
                    f"the token provider raised {type(exc).__name__}", status=401
                ) from exc
        if scope.cancelled_caught:
            raise AuthenticationError(
                f"the token provider did not return within {self.timeout} s", status=401
            )
        problem = token_problem(token)
        if problem is not None:
            raise AuthenticationError(
                f"the token provider returned an unusable token: {problem}", status=401
            )
        assert isinstance(token, str)
        return token

    # -- diagnostics --------------------------------------------------------------------

    def _note_once(self, what: str) -> None:
        if what not in self._logged:
            self._logged.add(what)
            logger.warning(
                "%s; asyncpoll keeps the first answer of each ID asked for and ignores the "
                "rest (logged once per Session)",
                what,
            )

    def _note_unknown_state(self, operation: Status) -> None:
        raw: Any = operation.raw.get("state", operation.raw.get("status"))
        # reprlib: bounded in depth and length, whatever the server sent.
        key = "state " + reprlib.repr(raw)[:80]
        if key not in self._logged and len(self._logged) < _MAX_LOGGED_UNKNOWN_STATES:
            self._logged.add(key)
            logger.warning(
                "unknown operation state %s (operation %r); treating it as not "
                "terminal and polling on",
                key[6:],
                operation.id,
            )


async def _take_slot(limiter: anyio.CapacityLimiter) -> None:
    """Take one of the Session's connection slots for the current task.

    A free slot is taken without yielding to the event loop: ``async with limiter``
    always yields once, even when a slot is free, and that costs a whole pass of the loop
    per request. Cancellation is still checked here (as the limiter would), and the
    request that follows yields anyway. A task finding no free slot queues as before.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()
    try:
        limiter.acquire_nowait()
    except anyio.WouldBlock:
        await limiter.acquire()


def _looks_like_json(body: bytes) -> bool:
    start = body.lstrip()[:1]
    return start in (b"{", b"[")


def _where(url: str) -> str:
    """Host and path of ``url``, without the query (the IDs), for messages."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
