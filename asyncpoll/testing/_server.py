"""The simulated status endpoint: an aiohttp server on loopback, in a thread of its own.

The server runs its own asyncio event loop in a daemon thread, so tests on asyncio and on
trio (or plain synchronous code) in the main thread can all talk to it. All state the
test code and the server thread share is guarded by one :class:`threading.Lock`; the lock
is held only for O(IDs in the request) work, and responses are serialised outside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import math
import random
import re
import string
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import unquote, unquote_plus

import orjson
from aiohttp import web

from ._operations import (
    CANONICAL_STATES,
    OUTCOMES,
    TERMINAL_STATES,
    Clock,
    Operation,
    apply_variant,
    default_error,
    number,
    render,
)
from ._records import Faults, LoggedRequest, ScriptedResponse, WireVariant

__all__ = ["SimulatedServer"]

_SPACE_RE = re.compile(r"[A-Za-z0-9_-]{7,22}")
_PATH_PREFIX = "/programs/v2/spaces/"
_PATH_SUFFIX = "/asyncOperations"
_IDS_PARAM = "asyncOperationIds"
_ACCESS_SCOPES = frozenset({"view", "manage"})
_ID_ALPHABET = string.ascii_letters + string.digits
# Maps every byte to a letter or digit: random bytes become random IDs in one call.
_ID_TABLE = bytes(ord(_ID_ALPHABET[i % len(_ID_ALPHABET)]) for i in range(256))
_ID_LENGTH = 22
_JSON = "application/json"
_MALFORMED_BODY = b'[{"id": "'
# How long stop() lets in-flight requests finish before cancelling them.
_SHUTDOWN_GRACE = 0.1
_DEFAULT_VARIANT = WireVariant()

_Principal = tuple[str, frozenset[str]]


def _valid_space(space_id: str) -> bool:
    return space_id == "default" or _SPACE_RE.fullmatch(space_id) is not None


def _seconds(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _error_body(status: int, message: str | None = None) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
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


class _Drop(Exception):
    """Internal: drop the connection without answering."""


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
            op_id = server.add_operation(duration=0.5)
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
        self.variant: WireVariant = variant if variant is not None else _DEFAULT_VARIANT
        #: Random faults; change its fields or replace it while the server runs.
        self.faults: Faults = Faults()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._clock = Clock()
        self._tokens: dict[str, _Principal] = {}
        self._spaces: set[str] = {"default"}
        self._ops: dict[str, Operation] = {}
        self._seq = 0
        self._log: deque[LoggedRequest] = deque(maxlen=log_limit)
        self._log_enabled = log_limit != 0
        self._scripts: deque[ScriptedResponse] = deque()
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
            if loop is not None and event is not None:
                # RuntimeError: the loop already closed, the thread is ending anyway.
                with contextlib.suppress(RuntimeError):
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
        try:
            server = web.Server(
                self._handle,
                handler_cancellation=True,
                access_log=None,
                keepalive_timeout=75.0,
            )
            runner = web.ServerRunner(
                server, handle_signals=False, shutdown_timeout=_SHUTDOWN_GRACE
            )
            await runner.setup()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
            self._port = int(runner.addresses[0][1])
            self._loop = asyncio.get_running_loop()
            self._stop_event = stop_event = asyncio.Event()
            self._web_server = server
        except BaseException as exc:
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
        if not token:
            raise ValueError("token must be a non-empty string")
        with self._lock:
            self._tokens[token] = (user, frozenset(scopes))

    def revoke_token(self, token: str) -> None:
        """Forget ``token``: from now on requests with it get 401 (unknown token)."""
        with self._lock:
            self._tokens.pop(token, None)

    def add_space(self, space_id: str) -> None:
        """Create the space ``space_id``; requests to a space never added get 404.

        ``"default"`` always exists. Raises :class:`ValueError` unless ``space_id`` is
        ``"default"`` or 7 to 22 characters of letters, digits, ``-`` and ``_``.
        """
        if not _valid_space(space_id):
            raise ValueError(f"invalid space ID: {space_id!r}")
        with self._lock:
            self._spaces.add(space_id)

    # -- operations ----------------------------------------------------------------------

    def _new_ids(self, n: int) -> list[str]:
        # Called with the lock held (the generator is shared with the server thread).
        length = _ID_LENGTH
        text = self._rng.randbytes(length * n).translate(_ID_TABLE).decode("ascii")
        ids = [text[i : i + length] for i in range(0, length * n, length)]
        if len(set(ids)) != n or any(i in self._ops for i in ids):
            taken = set(self._ops)
            unique: list[str] = []
            for op_id in ids:
                while op_id in taken:
                    op_id = "".join(self._rng.choices(_ID_ALPHABET, k=length))
                taken.add(op_id)
                unique.append(op_id)
            ids = unique
        return ids

    def add_operation(
        self,
        op_id: str | None = None,
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

        ``op_id`` defaults to a random 22-character ID; an existing ID is scripted anew. The
        space is created if needed. Raises :class:`ValueError` for an empty ID, an invalid
        space ID, an unknown outcome or a negative time.
        """
        if op_id is not None and not op_id:
            raise ValueError("op_id must be a non-empty string")
        kind = OUTCOMES.get(outcome.lower())
        if kind is None:
            raise ValueError(
                f"outcome must be 'succeeded', 'failed' or 'canceled', not {outcome!r}"
            )
        if not _valid_space(space_id):
            raise ValueError(f"invalid space ID: {space_id!r}")
        if min(start_after, duration, visible_after) < 0 or math.isnan(duration):
            raise ValueError("start_after, duration and visible_after must be >= 0")
        ids = tuple(created_resource_ids) if created_resource_ids is not None else None
        with self._lock:
            if op_id is None:
                op_id = self._new_ids(1)[0]
            self._seq += 1
            now = time.monotonic()
            start = now + start_after
            self._ops[op_id] = Operation(
                op_id,
                space_id,
                user,
                self._seq,
                now,
                now + visible_after,
                start,
                start + duration,
                kind,
                float(progress_step),
                ids,
                error_code,
                error_message,
            )
            self._spaces.add(space_id)
        return op_id

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
        if n < 0 or window < 0 or start_after < 0:
            raise ValueError("n, window and start_after must be >= 0")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be within 0 and 1")
        if not _valid_space(space_id):
            raise ValueError(f"invalid space ID: {space_id!r}")
        step = float(progress_step)
        with self._lock:
            rand = self._rng.random
            ids = self._new_ids(n)
            now = time.monotonic()
            start = now + start_after
            seq = self._seq
            ops = self._ops
            for op_id in ids:
                seq += 1
                end = now + rand() * window
                kind = "Failed" if fail_rate and rand() < fail_rate else "Succeeded"
                ops[op_id] = Operation(
                    op_id,
                    space_id,
                    user,
                    seq,
                    now,
                    now,
                    min(start, end),
                    end,
                    kind,
                    step,
                    None,
                    "OperationFailed",
                    "Operation failed",
                )
            self._seq = seq
            self._spaces.add(space_id)
        return ids

    def _get(self, op_id: str) -> Operation:
        op = self._ops.get(op_id)
        if op is None:
            raise KeyError(f"no operation {op_id!r}")
        return op

    def set_operation(
        self,
        op_id: str,
        *,
        state: str | None = None,
        percent_complete: float | None = None,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Freeze the operation ``op_id`` at its current entry, changed by the arguments.

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
        with self._lock:
            op = self._get(op_id)
            now = time.monotonic()
            if op.frozen is None:
                current = render(op, now, self._clock)
                op.frozen = {k: current[k] for k in ("state", "percentComplete", "result", "error")}
                op.done_at = op.end_at if current["state"] in TERMINAL_STATES else None
            frozen = op.frozen
            was_terminal = frozen["state"] in TERMINAL_STATES
            if state is not None and state != frozen["state"]:
                frozen["state"] = state
                if state == "Succeeded":
                    frozen.update(percentComplete=100, result=op.result(), error=None)
                elif state == "Failed":
                    frozen.update(result=None, error=default_error(op))
                elif state == "NotStarted":
                    frozen.update(percentComplete=0, result=None, error=None)
                elif state in CANONICAL_STATES:
                    frozen.update(result=None, error=None)
            if percent_complete is not None:
                frozen["percentComplete"] = number(float(percent_complete))
            if result is not None:
                frozen["result"] = dict(result)
            if error is not None:
                frozen["error"] = (
                    {"code": op.err_code, "message": error, "details": []}
                    if isinstance(error, str)
                    else dict(error)
                )
            if extra is not None:
                op.extra = {**(op.extra or {}), **extra}
            if frozen["state"] in TERMINAL_STATES:
                if not was_terminal or op.done_at is None:
                    op.done_at = now
            else:
                op.done_at = None
            op.frozen_at = now
            op.visible_at = -math.inf
            op.cache = op.pending = op.running = None

    def remove_operation(self, op_id: str) -> None:
        """Remove the operation: it is absent from answers from now on (no error if unknown)."""
        with self._lock:
            self._ops.pop(op_id, None)

    def operation_json(self, op_id: str) -> dict[str, Any]:
        """The entry of ``op_id`` as it would be served now in the default variant (a copy,
        extras included), even before it becomes visible. Raises :class:`KeyError` for an
        unknown ID."""
        with self._lock:
            op = self._get(op_id)
            entry = render(op, time.monotonic(), self._clock)
            if op.extra:
                entry = {**entry, **op.extra}
            document = orjson.dumps(entry)
        result: dict[str, Any] = orjson.loads(document)
        return result

    def completion_time(self, op_id: str) -> float | None:
        """The :func:`time.monotonic` time at which the operation became (or will become)
        terminal, or ``None`` if it never will (as things stand). Raises :class:`KeyError`
        for an unknown ID."""
        with self._lock:
            return self._get(op_id).completion_time()

    # -- request log and scripted responses ----------------------------------------------

    @property
    def requests(self) -> list[LoggedRequest]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        """Empty the request log."""
        with self._lock:
            self._log.clear()

    def script(self, *responses: ScriptedResponse) -> None:
        """Queue forced responses: each request to the status endpoint takes the next one
        before any other processing (faults and authorization included) and is answered
        with it. Once the queue is empty, normal processing resumes."""
        with self._lock:
            self._scripts.extend(responses)

    # -- serving -------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrival = time.monotonic()
        path, _, query = request.raw_path.partition("?")
        token = _bearer(request.headers.get("Authorization"))
        ids = _ids_of(query)
        space_id = ""
        status = 0
        with self._lock:
            principal = self._tokens.get(token) if token is not None else None
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        logged = False

        def log() -> None:
            nonlocal logged
            if logged or not self._log_enabled:
                return
            logged = True
            record = LoggedRequest(
                time=arrival,
                method=request.method,
                path=path,
                query=query,
                space_id=space_id,
                ids=tuple(ids),
                status=status,
                user=principal[0] if principal is not None else None,
                answered=time.monotonic(),
            )
            with self._lock:
                self._log.append(record)

        try:
            if (
                path.startswith(_PATH_PREFIX)
                and path.endswith(_PATH_SUFFIX)
                and "/" not in path[len(_PATH_PREFIX) : -len(_PATH_SUFFIX)]
            ):
                space_id = unquote(path[len(_PATH_PREFIX) : -len(_PATH_SUFFIX)], errors="replace")
                if request.method == "GET":
                    response = await self._respond(request, principal, space_id, ids)
                else:
                    response = _Answer(405, headers={"Allow": "GET"}).response()
            else:
                response = _Answer(404).response()
            status = response.status
            return response
        except _Drop:
            # Logged before the drop: a client that sees it may look at the log at once.
            log()
            transport = request.transport
            if transport is not None:
                transport.abort()
            # connection_lost() cancels this handler (handler_cancellation=True); raising
            # instead would make aiohttp log an error and try to answer 500.
            await asyncio.Event().wait()
            raise  # pragma: no cover
        finally:
            if task is not None:
                self._inflight.discard(task)
            log()

    async def _respond(
        self,
        request: web.BaseRequest,
        principal: _Principal | None,
        space_id: str,
        ids: list[str],
    ) -> web.Response:
        with self._lock:
            scripted = self._scripts.popleft() if self._scripts else None
        if scripted is not None:
            return await self._scripted(scripted, principal, space_id, ids)
        faults = self.faults
        answer: _Answer | None = None
        drop = False
        with self._lock:
            rand = self._rng.random
            low, high = faults.latency
            latency = self._rng.uniform(low, high) if high > 0 else 0.0
            if faults.disconnect_rate and rand() < faults.disconnect_rate:
                drop = True
            elif faults.error_rate and rand() < faults.error_rate:
                answer = _Answer(faults.error_status)
            elif faults.rate_limit_rate and rand() < faults.rate_limit_rate:
                if faults.retry_after_http_date:
                    retry = email.utils.formatdate(time.time() + faults.retry_after, usegmt=True)
                else:
                    retry = _seconds(faults.retry_after)
                answer = _Answer(429, headers={"Retry-After": retry})
            elif faults.malformed_rate and rand() < faults.malformed_rate:
                answer = _Answer(200, body=_MALFORMED_BODY)
        if latency > 0:
            await asyncio.sleep(latency)
        if drop:
            raise _Drop
        if answer is None:
            answer = self._answer(principal, space_id, ids, faults)
        return answer.response()

    async def _scripted(
        self,
        scripted: ScriptedResponse,
        principal: _Principal | None,
        space_id: str,
        ids: list[str],
    ) -> web.Response:
        if scripted.delay > 0:
            await asyncio.sleep(scripted.delay)
        if scripted.disconnect:
            raise _Drop
        if scripted.body is None and scripted.status == 200:
            answer = self._answer(principal, space_id, ids, self.faults)
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

    def _answer(
        self,
        principal: _Principal | None,
        space_id: str,
        ids: list[str],
        faults: Faults,
    ) -> _Answer:
        """Normal processing of a status request (no faults): authorization, checks, 200."""
        if principal is None:
            return _Answer(401, headers={"WWW-Authenticate": "Bearer"})
        user, scopes = principal
        if not scopes & _ACCESS_SCOPES:
            return _Answer(403, _error_body(403, "the token lacks the view or manage scope"))
        if not _valid_space(space_id):
            return _Answer(400, _error_body(400, "invalid space ID"))
        max_ids = faults.max_ids_per_request
        variant = self.variant
        plain = variant is _DEFAULT_VARIANT or variant == _DEFAULT_VARIANT
        clock = self._clock
        entries: list[dict[str, Any]] = []
        with self._lock:
            if space_id not in self._spaces:
                return _Answer(404, _error_body(404, "space not found"))
            if not ids:
                return _Answer(400, _error_body(400, f"{_IDS_PARAM} is required"))
            if max_ids is not None and len(ids) > max_ids:
                return _Answer(414)
            now = time.monotonic()
            ops = self._ops
            seen: set[str] = set()
            for op_id in ids:
                if op_id in seen:
                    continue
                seen.add(op_id)
                op = ops.get(op_id)
                if op is None or op.user != user or op.space != space_id or now < op.visible_at:
                    continue
                entry = render(op, now, clock)
                if not plain:
                    entry = apply_variant(entry, variant)
                if op.extra:
                    entry = {**entry, **op.extra}
                entries.append(entry)
        document: Any = entries if variant.wrapper is None else {variant.wrapper: entries}
        headers = None
        if faults.success_retry_after is not None:
            headers = {"Retry-After": _seconds(faults.success_retry_after)}
        return _Answer(200, headers=headers, document=document)
