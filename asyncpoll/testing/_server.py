"""The simulated status endpoint: an aiohttp server on loopback, in a thread of its own.

The server runs its own asyncio event loop in a daemon thread, so tests on asyncio and on
trio (or plain synchronous code) in the main thread can all talk to it. This module is
the HTTP side (routing, parsing the request, authorization, writing the answer) and the
public façade; everything the test code and the server thread share lives in a
:class:`~._state.SimulatorState`, whose lock is never held while a response is
serialised.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import unquote, unquote_plus

import orjson
from aiohttp import web

from ._records import Faults, LoggedRequest, ScriptedResponse, WireVariant
from ._state import DEFAULT_VARIANT, FaultKind, Principal, SimulatorState, valid_space

__all__ = ["SimulatedServer"]

_PATH_PREFIX = "/programs/v2/spaces/"
_PATH_SUFFIX = "/asyncOperations"
_IDS_PARAM = "asyncOperationIds"
_ACCESS_SCOPES = frozenset({"view", "manage"})
_JSON = "application/json"
_MALFORMED_BODY = b'[{"id": "'
# How long stop() lets in-flight requests finish before cancelling them.
_SHUTDOWN_GRACE = 0.1


def _seconds(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _error_body(status: int, message: str | None = None) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:  # a status of a script or of Faults.error_status, such as 599
        phrase = "Error"
    code = phrase.replace(" ", "").replace("-", "")
    return orjson.dumps({"error": {"code": code, "message": message or phrase}})


def _ids_of(query: str) -> list[str]:
    """The ``asyncOperationIds`` values of a raw query, decoded, in order.

    The same as filtering ``parse_qsl(query, keep_blank_values=True, errors="replace")``,
    but it only decodes what needs decoding: about three times faster on plain IDs.
    """
    ids: list[str] = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if key != _IDS_PARAM:
            if "%" not in key and "+" not in key:
                continue
            if unquote_plus(key, errors="replace") != _IDS_PARAM:
                continue
        if "%" in value or "+" in value:
            value = unquote_plus(value, errors="replace")
        ids.append(value)
    return ids


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    credentials = credentials.strip()
    return credentials or None


def _space_of(path: str) -> str | None:
    """The decoded space ID of a status endpoint path, or ``None`` for any other path."""
    if (
        path.startswith(_PATH_PREFIX)
        and path.endswith(_PATH_SUFFIX)
        and "/" not in path[len(_PATH_PREFIX) : -len(_PATH_SUFFIX)]
    ):
        return unquote(path[len(_PATH_PREFIX) : -len(_PATH_SUFFIX)], errors="replace")
    return None


class _Answer:
    """A response decided under the lock, built into an aiohttp response outside it."""

    __slots__ = ("body", "document", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        document: Any = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.document = document

    def response(self, extra_headers: Mapping[str, str] | None = None) -> web.Response:
        body = self.body
        if body is None:
            body = orjson.dumps(self.document) if self.status == 200 else _error_body(self.status)
        headers = {"Content-Type": _JSON}
        if self.headers:
            headers.update(self.headers)
        if extra_headers:
            headers.update(extra_headers)
        return web.Response(body=body, status=self.status, headers=headers)


def _fault_answer(kind: FaultKind, faults: Faults) -> _Answer:
    """The answer of a drawn fault other than a disconnect."""
    if kind is FaultKind.ERROR:
        return _Answer(faults.error_status)
    if kind is FaultKind.RATE_LIMIT:
        if faults.retry_after_http_date:
            retry = email.utils.formatdate(time.time() + faults.retry_after, usegmt=True)
        else:
            retry = _seconds(faults.retry_after)
        return _Answer(429, headers={"Retry-After": retry})
    return _Answer(200, body=_MALFORMED_BODY)


class _Drop(Exception):
    """Internal: drop the connection without answering."""


class _Exchange:
    """One request being handled: what the log will record of it."""

    __slots__ = ("arrival", "ids", "logged", "method", "path", "principal", "query", "space_id")

    def __init__(self, request: web.BaseRequest, state: SimulatorState) -> None:
        self.arrival = time.monotonic()
        self.method = request.method
        self.path, _, self.query = request.raw_path.partition("?")
        token = _bearer(request.headers.get("Authorization"))
        self.ids = _ids_of(self.query)
        self.space_id = ""
        self.principal: Principal | None = state.principal(token)
        self.logged = False

    def record(self, status: int) -> LoggedRequest:
        principal = self.principal
        return LoggedRequest(
            time=self.arrival,
            method=self.method,
            path=self.path,
            query=self.query,
            space_id=self.space_id,
            ids=tuple(self.ids),
            status=status,
            user=principal[0] if principal is not None else None,
            answered=time.monotonic(),
        )


async def _abort(request: web.BaseRequest) -> None:
    """Drop the connection of ``request`` and wait to be cancelled (never returns)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    # connection_lost() cancels this handler (handler_cancellation=True); raising instead
    # would make aiohttp log an error and try to answer 500.
    await asyncio.Event().wait()


class SimulatedServer:
    """A simulator of the status endpoint, on loopback, for tests (yours and ours).

    A real aiohttp server runs in a daemon thread with its own event loop, so clients on
    asyncio, trio or plain threads can use it. It serves
    ``GET /programs/v2/spaces/{spaceId}/asyncOperations?asyncOperationIds=...`` as the
    endpoint contract describes: bearer tokens with scopes (401, 403), spaces (400, 404),
    per-user visibility, scripted operations that progress in real time, wire variants,
    random faults and scripted responses, and a log of every request. Use it as a context
    manager (or call :meth:`start` and :meth:`stop`)::

        with SimulatedServer(seed=1) as server:
            operation_id = server.add_operation(duration=0.5)
            ...  # point a Session at server.url with server.token

    ``token`` (unless ``None``) is registered for ``user`` with the scopes ``view`` and
    ``manage``. ``seed`` seeds the random generator behind generated IDs, completion times
    and faults. ``log_limit`` keeps only the last that many requests in :attr:`requests`
    (``0`` logs nothing, ``None`` keeps all), for long benchmarks. Every method is safe to
    call from any thread while the server runs.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        variant: WireVariant | None = None,
        seed: int | None = None,
        token: str | None = "test-token",
        user: str = "alice",
        log_limit: int | None = None,
    ) -> None:
        self._host = host
        self._requested_port = port
        #: The response shape served; may be replaced while the server runs.
        self.variant: WireVariant = variant if variant is not None else DEFAULT_VARIANT
        #: Random faults; change its fields or replace it while the server runs.
        self.faults: Faults = Faults()
        self._state = SimulatorState(seed=seed, log_limit=log_limit)
        self._token = token
        if token is not None:
            self.add_token(token, user=user, scopes=("view", "manage"))
        # Lifecycle, guarded by its own lock so start/stop never wait on request handling.
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._port: int | None = None
        # Handlers in flight (server thread only): stop() cancels them so that it never
        # waits for a scripted delay or a latency to run out.
        self._inflight: set[asyncio.Task[Any]] = set()
        self._web_server: web.Server | None = None

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "stopped"
        return f"<SimulatedServer {where}>"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start serving; return once the server listens. Does nothing if it already runs.

        Raises :class:`OSError` if the address cannot be bound.
        """
        with self._lifecycle:
            if self._thread is not None:
                return
            self._ready.clear()
            self._startup_error = None
            thread = threading.Thread(
                target=self._run, name="asyncpoll-simulated-server", daemon=True
            )
            thread.start()
            self._ready.wait()
            error = self._take_startup_error()
            if error is not None:
                thread.join()
                raise error
            self._thread = thread

    def _take_startup_error(self) -> BaseException | None:
        error, self._startup_error = self._startup_error, None
        return error

    def stop(self) -> None:
        """Close the server and join its thread. Requests still in flight get at most a
        tenth of a second before they are cancelled. Does nothing if it is not running."""
        with self._lifecycle:
            thread, loop, event = self._thread, self._loop, self._stop_event
            if thread is None:
                return
            # The loop runs until the event is set: only this method sets it.
            if loop is not None and event is not None:
                loop.call_soon_threadsafe(event.set)
            thread.join()
            self._thread = self._loop = self._stop_event = None
            self._port = None

    def __enter__(self) -> SimulatedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, e.g. ``"http://127.0.0.1:54321"`` (no trailing slash).

        Raises :class:`RuntimeError` if the server is not running.
        """
        port = self._port
        if port is None:
            raise RuntimeError("the SimulatedServer is not running: call start() first")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{port}"

    @property
    def open_connections(self) -> int:
        """How many client connections are open now (0 when the server is not running).

        A connection counts from its accept until the server sees it closed, which may be
        a moment after the client closed it: poll this until it drops, e.g. to check that
        a client left no connection open.
        """
        web_server = self._web_server
        # ``connections`` copies the server's dict in one step under the GIL: safe to read
        # from the client's thread.
        return len(web_server.connections) if web_server is not None else 0

    @property
    def token(self) -> str | None:
        """The default token given to the constructor (``None`` if there is none)."""
        return self._token

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        server = web.Server(
            self._handle, handler_cancellation=True, access_log=None, keepalive_timeout=75.0
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=_SHUTDOWN_GRACE)
        try:
            await runner.setup()
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
            self._port = int(runner.addresses[0][1])
            self._loop = asyncio.get_running_loop()
            self._stop_event = stop_event = asyncio.Event()
            self._web_server = server
        except BaseException as exc:  # start() raises it in the caller's thread
            await runner.cleanup()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await stop_event.wait()
        finally:
            for task in list(self._inflight):
                task.cancel()
            await runner.cleanup()
            self._web_server = None

    # -- tokens, spaces ------------------------------------------------------------------

    def add_token(
        self, token: str, *, user: str = "alice", scopes: Iterable[str] = ("view",)
    ) -> None:
        """Register ``token`` for ``user`` with ``scopes`` (replacing any earlier entry).

        A token with neither ``"view"`` nor ``"manage"`` among its scopes gets 403.
        Raises :class:`ValueError` for an empty token.
        """
        self._state.add_token(token, user=user, scopes=scopes)

    def revoke_token(self, token: str) -> None:
        """Forget ``token``: from now on requests with it get 401 (unknown token)."""
        self._state.revoke_token(token)

    def add_space(self, space_id: str) -> None:
        """Create the space ``space_id``; requests to a space never added get 404.

        ``"default"`` always exists. Raises :class:`ValueError` unless ``space_id`` is
        ``"default"`` or 7 to 22 characters of letters, digits, ``-`` and ``_``.
        """
        self._state.add_space(space_id)

    # -- operations ----------------------------------------------------------------------

    def add_operation(
        self,
        operation_id: str | None = None,
        *,
        space_id: str = "default",
        user: str = "alice",
        start_after: float = 0.0,
        duration: float = 1.0,
        outcome: str = "succeeded",
        created_resource_ids: Sequence[str] | None = None,
        error_message: str = "Operation failed",
        error_code: str = "OperationFailed",
        visible_after: float = 0.0,
        progress_step: float = 10.0,
    ) -> str:
        """Script an operation of ``user`` in ``space_id`` and return its ID.

        Times are seconds from this call. The operation is absent from answers until
        ``visible_after`` (eventual consistency), ``NotStarted`` until ``start_after``, then
        ``Running`` with ``percentComplete`` rising linearly, floored to multiples of
        ``progress_step`` (0 for no flooring); after ``duration`` it ends with ``outcome``:
        ``"succeeded"`` (100, ``result.createdResourceIds`` = ``created_resource_ids`` or
        ``["prog_<n>", "task_<n>"]``), ``"failed"`` (``error`` made of ``error_code`` and
        ``error_message``, the last progress kept) or ``"canceled"``. A ``duration`` of
        ``float("inf")`` runs until :meth:`set_operation`.

        ``operation_id`` defaults to a random 22-character ID; an existing ID is scripted
        anew. The space is created if needed. Raises :class:`ValueError` for an empty ID,
        an invalid space ID, an unknown outcome or a negative time.
        """
        return self._state.add_operation(
            operation_id,
            space_id=space_id,
            user=user,
            start_after=start_after,
            duration=duration,
            outcome=outcome,
            created_resource_ids=created_resource_ids,
            error_message=error_message,
            error_code=error_code,
            visible_after=visible_after,
            progress_step=progress_step,
        )

    def add_operations(
        self,
        n: int,
        *,
        space_id: str = "default",
        user: str = "alice",
        window: float = 60.0,
        fail_rate: float = 0.0,
        start_after: float = 0.0,
        progress_step: float = 10.0,
    ) -> list[str]:
        """Script ``n`` operations at once and return their IDs (in creation order).

        Completion times are uniformly random in ``[now, now + window]`` (from the seeded
        generator); a fraction ``fail_rate`` of them fail, the rest succeed. Each starts
        running after ``start_after`` seconds, or at its completion time if that is sooner.
        Fast enough for hundreds of thousands of operations. Raises :class:`ValueError` for
        a negative ``n`` or ``window``, an invalid space ID, or ``fail_rate`` outside 0..1.
        """
        return self._state.add_operations(
            n,
            space_id=space_id,
            user=user,
            window=window,
            fail_rate=fail_rate,
            start_after=start_after,
            progress_step=progress_step,
        )

    def set_operation(
        self,
        operation_id: str,
        *,
        state: str | None = None,
        percent_complete: float | None = None,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Freeze the operation ``operation_id`` at its current entry, changed by the
        arguments.

        From then on its script no longer runs and it is visible at once. ``state`` is a
        canonical name (``"NotStarted"``, ``"Running"``, ``"Succeeded"``, ``"Failed"``,
        ``"Canceled"``; spelled per the served variant) or any other string, sent
        verbatim. Changing the state fills in what that state implies unless given:
        ``Succeeded`` gets 100 and the scripted result, ``Failed`` the scripted error,
        ``NotStarted`` 0; the result and error of other states are cleared. ``error`` is an
        object or a message (the scripted code is used). ``extra`` adds raw fields to
        the entry (after the variant is applied; they may override any field, ``None``
        included). Later calls change the frozen entry further.

        Raises :class:`KeyError` for an unknown ID.
        """
        self._state.set_operation(
            operation_id,
            state=state,
            percent_complete=percent_complete,
            result=result,
            error=error,
            extra=extra,
        )

    def remove_operation(self, operation_id: str) -> None:
        """Remove the operation: it is absent from answers from now on (no error if unknown)."""
        self._state.remove_operation(operation_id)

    def operation_json(self, operation_id: str) -> dict[str, Any]:
        """The entry of ``operation_id`` as it would be served now in the default variant (a
        copy, extras included), even before it becomes visible. Raises :class:`KeyError`
        for an unknown ID."""
        return self._state.operation_json(operation_id)

    def completion_time(self, operation_id: str) -> float | None:
        """The :func:`time.monotonic` time at which the operation became (or will become)
        terminal, or ``None`` if it never will (as things stand). Raises :class:`KeyError`
        for an unknown ID."""
        return self._state.completion_time(operation_id)

    # -- request log and scripted responses ----------------------------------------------

    @property
    def requests(self) -> list[LoggedRequest]:
        """A copy of the request log, oldest first."""
        return self._state.requests()

    def clear_log(self) -> None:
        """Empty the request log."""
        self._state.clear_log()

    def script(self, *responses: ScriptedResponse) -> None:
        """Queue forced responses: each request to the status endpoint takes the next one
        before any other processing (faults and authorization included) and is answered
        with it. Once the queue is empty, normal processing resumes."""
        self._state.script(responses)

    # -- serving -------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        exchange = _Exchange(request, self._state)
        status = 0
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            response = await self._route(request, exchange)
            status = response.status
            return response
        except _Drop:
            # Logged before the drop: a client that sees it may look at the log at once.
            self._log(exchange, status)
            await _abort(request)
            raise  # pragma: no cover
        finally:
            if task is not None:
                self._inflight.discard(task)
            self._log(exchange, status)

    async def _route(self, request: web.BaseRequest, exchange: _Exchange) -> web.Response:
        space_id = _space_of(exchange.path)
        if space_id is None:
            return _Answer(404).response()
        exchange.space_id = space_id
        if request.method != "GET":
            return _Answer(405, headers={"Allow": "GET"}).response()
        return await self._respond(exchange)

    def _log(self, exchange: _Exchange, status: int) -> None:
        if exchange.logged or not self._state.log_enabled:
            return
        exchange.logged = True
        self._state.record(exchange.record(status))

    async def _respond(self, exchange: _Exchange) -> web.Response:
        scripted = self._state.next_script()
        if scripted is not None:
            return await self._scripted(scripted, exchange)
        faults = self.faults
        latency, fault = self._state.draw_fault(faults)
        answer = None
        if fault is not None and fault is not FaultKind.DISCONNECT:
            answer = _fault_answer(fault, faults)
        if latency > 0:
            await asyncio.sleep(latency)
        if fault is FaultKind.DISCONNECT:
            raise _Drop
        if answer is None:
            answer = self._answer(exchange, faults)
        return answer.response()

    async def _scripted(self, scripted: ScriptedResponse, exchange: _Exchange) -> web.Response:
        if scripted.delay > 0:
            await asyncio.sleep(scripted.delay)
        if scripted.disconnect:
            raise _Drop
        if scripted.body is None and scripted.status == 200:
            answer = self._answer(exchange, self.faults)
        else:
            answer = _Answer(scripted.status, body=scripted.body)
            if scripted.status == 401 and not any(
                name.lower() == "www-authenticate" for name in scripted.headers
            ):
                answer.headers = {"WWW-Authenticate": "Bearer"}
        response = answer.response(scripted.headers)
        if scripted.chunked:
            response.enable_chunked_encoding()
        return response

    def _answer(self, exchange: _Exchange, faults: Faults) -> _Answer:
        """Normal processing of a status request (no faults): authorization, checks, 200."""
        principal = exchange.principal
        if principal is None:
            return _Answer(401, headers={"WWW-Authenticate": "Bearer"})
        user, scopes = principal
        if not scopes & _ACCESS_SCOPES:
            return _Answer(403, _error_body(403, "the token lacks the view or manage scope"))
        space_id, ids = exchange.space_id, exchange.ids
        refusal = self._refusal(space_id, ids, faults)
        if refusal is not None:
            return refusal
        variant = self.variant
        entries = self._state.entries(user, space_id, ids, variant)
        document: Any = entries if variant.wrapper is None else {variant.wrapper: entries}
        headers = None
        if faults.success_retry_after is not None:
            headers = {"Retry-After": _seconds(faults.success_retry_after)}
        return _Answer(200, headers=headers, document=document)

    def _refusal(self, space_id: str, ids: list[str], faults: Faults) -> _Answer | None:
        """The 400, 404 or 414 an authorized request gets, or ``None`` if it is fine."""
        if not valid_space(space_id):
            return _Answer(400, _error_body(400, "invalid space ID"))
        if not self._state.has_space(space_id):
            return _Answer(404, _error_body(404, "space not found"))
        if not ids:
            return _Answer(400, _error_body(400, f"{_IDS_PARAM} is required"))
        max_ids = faults.max_ids_per_request
        if max_ids is not None and len(ids) > max_ids:
            return _Answer(414)
        return None
