"""The coalescing Poller: every caller's operation IDs share few batched requests.

Wiring only: callers register in :mod:`._delivery` mailboxes, the :mod:`._schedule`
says which batches are due, a few long-lived workers send them through the Session's
narrow seam (``_planner`` and ``_query_batch``), and answers flow back to the mailboxes;
finished operations go to the :mod:`._memory`, failing spaces to the :mod:`._outage`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import TypeVar

import anyio
import anyio.lowlevel
import sniffio
from anyio.abc import TaskGroup, TaskStatus

from .._errors import (
    AsyncpollError,
    AuthenticationError,
    OperationNotFound,
    PermissionDeniedError,
    RateLimitedError,
    SpaceNotFoundError,
    is_transient,
)
from .._fleet import Member, RedisFleet, failure_kind
from .._models import AsyncOperation, OperationState
from .._runtime import LoopBinding
from .._session import BatchResult, Session, Tally
from .._validation import check_count, check_seconds, validate_operation_id, validate_space_id
from .._wire import Status, decode_operations
from ._backend import Key, SignalFactory, Subscriber, signal_factory
from ._delivery import Block, Completed, Events, Mailbox, Waiter
from ._memory import Memory
from ._outage import Outages
from ._records import PollerStatistics, PollInterval, ProgressEvent
from ._remote import Remote
from ._schedule import Entry, Flight, Schedule

__all__ = ["Poller"]

logger = logging.getLogger("asyncpoll")

_I = TypeVar("_I", Completed, Events)
_Batch = tuple[str, list[Entry]]
_SLICE = 5000  # keys registered per turn of the event loop


def closed_error() -> RuntimeError:
    """The error of a caller of a closed Poller, made anew for each caller: one
    exception raised in many tasks or threads at once would share one traceback."""
    return RuntimeError("the Poller was closed")


def _rank(state: OperationState) -> int:
    # Identity tests: hashing an Enum member runs Python code, and this runs per status.
    if state is OperationState.NOT_STARTED:
        return 0
    if state is OperationState.RUNNING or state is OperationState.UNKNOWN:
        return 1
    return 2


def _regressed(entry: Entry, state: OperationState, percent: float | None) -> bool:
    """True for an answer older than the one ``entry`` last saw (a lagging replica)."""
    before = entry.state
    assert before is not None
    if state is not before:  # the usual change is progress within one state
        rank_before = _rank(before)
        rank_after = _rank(state)
        if rank_after != rank_before:
            return rank_after < rank_before
    return entry.percent is not None and percent is not None and percent < entry.percent


def _model(status: Status) -> AsyncOperation:
    return status if isinstance(status, AsyncOperation) else status.model()


class Poller:
    """Polls the operations of every caller through one Session, in coalesced batches.

    Use it as ``async with Poller(session) as poller:``; its polling loop and every
    request it sends run in a task group that ends with the block. Where start-up and
    shutdown run in different tasks (arq's ``on_startup``/``on_shutdown``, a
    pytest-asyncio yield fixture), ``await poller.start()`` runs it in a task of its own instead and
    ``await poller.aclose()`` stops it from any task (asyncio only: under trio, open it
    with ``async with`` in a nursery's task). All IDs of all
    callers in one space share batched requests; an ID that several callers want is
    polled once; new IDs are folded into one request after ``coalesce_window`` seconds.
    Batches sent with room to spare are filled with IDs due soon.

    ``interval`` sets each operation's polling interval; ``max_concurrent_requests``
    bounds the requests in flight; an ID absent from answers for ``not_found_grace``
    seconds is reported not found; terminal operations are remembered for
    ``terminal_memory`` seconds so late callers get them without a request.

    Transient failures (network errors, timeouts, 429, 5xx) are retried at each
    operation's next turn while its callers wait. When no status request for a space has
    succeeded for ``outage_timeout`` seconds, counted from the start of the first request
    left without a good answer (retries included), every caller waiting on that space gets
    the last error (an :class:`AsyncpollError`, usually :class:`ConnectError`; a
    :class:`RequestTimeout` if no request has even failed yet); ``None`` waits for the
    server forever. Bad arguments raise :class:`ValueError`.

    ``fleet`` (a :class:`RedisFleet`) makes this Poller a member of a fleet: the Pollers
    of many processes share one schedule through Redis, each space polled by one member
    for all, with the same API and guarantees (see :class:`RedisFleet`).
    """

    def __init__(
        self,
        session: Session,
        *,
        interval: PollInterval | None = None,
        max_concurrent_requests: int = 4,
        not_found_grace: float = 30.0,
        coalesce_window: float = 0.005,
        terminal_memory: float = 30.0,
        outage_timeout: float | None = 300.0,
        fleet: RedisFleet | None = None,
    ) -> None:
        if not isinstance(session, Session):
            raise TypeError(f"Poller needs a Session, got {type(session).__name__}")
        if interval is not None and not isinstance(interval, PollInterval):
            raise TypeError("interval must be a PollInterval")
        if fleet is not None and not isinstance(fleet, RedisFleet):
            raise TypeError(f"fleet must be a RedisFleet, got {type(fleet).__name__}")
        self._session = session
        self.interval = interval if interval is not None else PollInterval()
        self.max_concurrent_requests = check_count(
            "max_concurrent_requests", max_concurrent_requests
        )
        self.not_found_grace = check_seconds("not_found_grace", not_found_grace)
        self.coalesce_window = check_seconds("coalesce_window", coalesce_window)
        self.terminal_memory = check_seconds("terminal_memory", terminal_memory)
        self.outage_timeout = (
            None
            if outage_timeout is None
            else check_seconds("outage_timeout", outage_timeout, allow_zero=False)
        )
        # Due times and deadlines: the clock of the backend that entered the Poller (so a
        # test's virtual clock is honoured), bound once, at entry.
        self._now: Callable[[], float] = time.monotonic
        self._binding: LoopBinding | None = None
        self._schedule = Schedule(self.interval)
        self._memory = Memory(self.terminal_memory)
        self._outages = Outages(self.outage_timeout)
        self._subscriptions: set[Subscriber] = set()
        self._sleeping_until = math.inf  # when the polling loop wakes by itself
        self._last_error: AsyncpollError | None = None
        self._last_success: float | None = None
        self._fresh = 0
        self._wakeup: anyio.Event | None = None
        self._signal: SignalFactory = anyio.Event
        self._queue: deque[_Batch] = deque()  # batches due, for the workers
        # Waiters registered by their callers, joined to their entries by the polling loop.
        self._arriving: deque[Waiter] = deque()
        self._idle_workers: list[anyio.Event] = []
        self._task_group: TaskGroup | None = None
        self._host: int | None = None  # the task that entered the task group
        self._closed = False
        self._runner: asyncio.Task[None] | None = None  # the task start() made
        self._stop: asyncio.Event | None = None
        self._tally = Tally(session._tally)  # this Poller's own requests and retries
        self._operations_polled = 0
        self._errors = 0
        self._in_flight = 0
        self._fleet = fleet
        self._member: Member | None = None  # this Poller's membership, while open
        self._remotes: dict[str, Remote] = {}  # the fleet's interest, per space led

    def __repr__(self) -> str:
        watched = len(self._schedule.entries)
        return f"<asyncpoll.Poller watched={watched} session={self._session!r}>"

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Poller:
        if self._task_group is not None or self._closed:
            raise RuntimeError("a Poller can be entered only once")
        self._binding = LoopBinding("Poller")
        self._now = self._binding.clock
        self._wakeup = anyio.Event()
        self._signal = signal_factory()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._host = anyio.get_current_task().id
        self._task_group = task_group
        try:
            for _ in range(self.max_concurrent_requests):
                task_group.start_soon(self._worker)
            if self._fleet is not None:
                # Returns after the first heartbeat: the member knows whether it leads.
                self._member = Member(self._fleet, self, self.terminal_memory)
                await task_group.start(self._member.run)
            await task_group.start(self._run)
        except BaseException as exc:
            self._stop_member()
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _stop_member(self) -> None:
        if self._member is not None:
            self._member.stop()

    async def start(self) -> None:
        """Start polling in a task of its own (asyncio only), for frameworks whose
        start-up and shutdown hooks run in different tasks; stop it with :meth:`aclose`.

        Returns once the Poller is open. Raises :class:`RuntimeError` under trio (open
        the Poller with ``async with`` inside a nursery's task there, where no task may
        outlive the block that started it) and when the Poller was already started,
        entered or closed.
        """
        if sniffio.current_async_library() != "asyncio":
            raise RuntimeError(
                "Poller.start() runs on asyncio only: under trio, use "
                "'async with Poller(session) as poller:' in a task of a nursery"
            )
        if self._runner is not None or self._task_group is not None or self._closed:
            raise RuntimeError("a Poller can be started or entered only once")
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        stop = self._stop = asyncio.Event()

        async def run() -> None:
            try:
                async with self:
                    opened.set_result(None)
                    await stop.wait()
            except BaseException as exc:
                if opened.done():
                    raise
                opened.set_exception(exc)

        self._runner = loop.create_task(run(), name="asyncpoll.Poller")
        try:
            await asyncio.shield(opened)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop a Poller started with :meth:`start`, from any task of its event loop:
        every caller still waiting gets ``RuntimeError("the Poller was closed")``, and its
        task, requests and retries end before this returns. Closing twice, or a Poller
        never opened, does nothing. A Poller entered with ``async with`` closes when its
        block ends (this raises :class:`RuntimeError` while the block runs). The
        Session stays open: close it after the Poller.
        """
        runner = self._runner
        if runner is None:
            if self._task_group is not None and not self._closed:
                raise RuntimeError(
                    "this Poller was entered with 'async with': it closes when the block ends"
                )
            self._closed = True
            return
        if self._binding is not None:
            self._binding.check()
        assert self._stop is not None
        self._stop.set()
        # Shielded: an aclose cancelled half-way still leaves no task behind.
        with anyio.CancelScope(shield=True):
            await asyncio.wait([runner])
        error = None if runner.cancelled() else runner.exception()
        if error is not None:
            raise error

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._closed = True
        assert self._task_group is not None
        self._stop_member()
        self._task_group.cancel_scope.cancel()
        try:
            if anyio.get_current_task().id != self._host:
                # anyio would only say "Attempted to exit cancel scope in a different
                # task"; the scope is cancelled above, so the Poller's tasks still end.
                raise RuntimeError(
                    "a Poller entered with 'async with' was left in another task (a "
                    "framework's start-up and shutdown hooks, a pytest-asyncio fixture): "
                    "use 'await poller.start()' and 'await poller.aclose()' there"
                )
            return await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The block's own exception comes out as itself, not wrapped in a group (trio
            # wraps even a lone one); a failure of the poller's tasks stays a group.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                raise exc from exc.__cause__
            raise
        finally:
            for subscription in list(self._subscriptions):
                subscription.fail(closed_error())
            self._schedule.clear()
            self._queue.clear()
            self._arriving.clear()
            self._remotes.clear()

    # -- public API ---------------------------------------------------------------------

    def _keys(self, ids: Iterable[str], space_id: str | None, timeout: float | None) -> list[Key]:
        """The caller's keys, every argument checked here, before any request."""
        space = self._space_of(space_id, timeout)
        if isinstance(ids, str | bytes):
            raise TypeError("pass a list of operation IDs, not a single string")
        keys = [(space, validate_operation_id(i)) for i in ids]
        # Refused here, at the caller: met later, in the polling loop, it would end the loop.
        self._session._planner.check_fit([key[1] for key in keys], space)
        return keys

    def _key(self, operation_id: str, space_id: str | None, timeout: float | None) -> Key:
        """One caller's key, checked as :meth:`_keys` checks many (without its lists:
        ``wait`` is the call a service makes a hundred thousand times)."""
        space = self._space_of(space_id, timeout)
        self._session._planner.check_fit((validate_operation_id(operation_id),), space)
        return (space, operation_id)

    def _space_of(self, space_id: str | None, timeout: float | None) -> str:
        """The space a call is for, after the checks every call makes."""
        if timeout is not None:
            check_seconds("timeout", timeout)
        if self._binding is not None:
            self._binding.check()
        return self._session.space_id if space_id is None else validate_space_id(space_id)

    async def wait(
        self, operation_id: str, *, space_id: str | None = None, timeout: float | None = None
    ) -> AsyncOperation:
        """Wait until ``operation_id`` is terminal and return it if it succeeded.

        Raises :class:`OperationFailed` (with ``.operation``) if it failed or was
        canceled, :class:`OperationNotFound` if it stayed absent past
        ``not_found_grace``, :class:`TimeoutError` after ``timeout`` seconds, and the
        Session's errors (authentication, permission, space not found) as they come.
        Bad IDs raise :class:`ValueError` at once.
        """
        key = self._key(operation_id, space_id, timeout)
        self._require_open()
        # In one coroutine (no helper awaited): each waiting caller holds every frame of
        # its await chain, and 100,000 of them are walked by the garbage collector.
        waiter = Waiter(key, self._signal)
        # Registered here (in the caller's context, for telemetry), joined to its entry
        # by the polling loop, a slice per turn: 100,000 tasks calling wait at once must
        # not stall the event loop for the time it takes to join them all.
        self._register(waiter)
        arriving = self._arriving
        if not arriving:
            self._wake()  # the first to arrive wakes the loop, which joins all that came
        arriving.append(waiter)
        try:
            if timeout is None:  # the common case: spare the cancel scope
                await waiter.settled()
            else:
                with anyio.fail_after(timeout):
                    await waiter.settled()
            return waiter.result()
        finally:
            self._unsubscribe(waiter)

    async def wait_all(
        self, ids: Iterable[str], *, space_id: str | None = None, timeout: float | None = None
    ) -> list[AsyncOperation]:
        """Wait until every operation of ``ids`` is terminal; return them in input order.

        Failed and canceled operations are returned, not raised. Raises
        :class:`OperationNotFound` for an ID that stayed absent past the grace period,
        :class:`TimeoutError` after ``timeout`` seconds, and the Session's errors.
        """
        keys = self._keys(ids, space_id, timeout)
        unique = list(dict.fromkeys(keys))
        found: dict[Key, AsyncOperation] = {}
        with anyio.fail_after(timeout):
            async with self._subscribed(unique, events=False) as mailbox:
                while len(found) < len(unique):
                    key, operation, _, _ = await mailbox.next()
                    if operation is None:
                        raise OperationNotFound(key[1], key[0])
                    found[key] = operation
        return [found[key] for key in keys]

    def as_completed(
        self, ids: Iterable[str], *, space_id: str | None = None, timeout: float | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[AsyncOperation]]:
        """Terminal operations of ``ids`` in the order they complete::

            async with poller.as_completed(ids) as done:
                async for operation in done:
                    ...

        Failed and canceled operations are yielded, not raised. Iterating raises
        :class:`OperationNotFound` for an ID that stayed absent, :class:`TimeoutError`
        once ``timeout`` seconds have passed since entering, and the Session's errors.
        Leaving the block stops polling for this caller. Bad arguments raise at the call.
        """
        keys = list(dict.fromkeys(self._keys(ids, space_id, timeout)))
        done: AbstractAsyncContextManager[AsyncIterator[AsyncOperation]]
        done = self._iterating(keys, timeout, Completed)
        return Block(done, "as_completed", "done", "operation")

    def watch(
        self, ids: Iterable[str], *, space_id: str | None = None, timeout: float | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[ProgressEvent]]:
        """Progress events of ``ids`` until every one is terminal::

            async with poller.watch(ids) as events:
                async for event in events:
                    if event.operation is not None:
                        print(event.operation_id, event.operation.percent_complete)

        One event at first sight of each operation, one on each change of state or
        progress, and exactly one terminal event per operation (``not_found`` is set on
        it for an ID that stayed absent). A consumer that lags gets the latest state of
        an operation rather than every step in between; terminal events are never
        dropped, and progress never goes backwards. Iterating raises
        :class:`TimeoutError` once ``timeout`` seconds have passed since entering, and the
        Session's errors. Bad arguments raise at the call.
        """
        keys = list(dict.fromkeys(self._keys(ids, space_id, timeout)))
        events: AbstractAsyncContextManager[AsyncIterator[ProgressEvent]]
        events = self._iterating(keys, timeout, Events)
        return Block(events, "watch", "events", "event")

    @asynccontextmanager
    async def _iterating(
        self, keys: list[Key], timeout: float | None, kind: type[_I]
    ) -> AsyncIterator[_I]:
        deadline = None if timeout is None else self._now() + timeout
        async with self._subscribed(keys, events=kind is Events) as mailbox:
            yield kind(mailbox, deadline, self._now)

    def statistics(self) -> PollerStatistics:
        """A snapshot of what this Poller tracks and has sent."""
        member = self._member
        return PollerStatistics(
            watched=len(self._schedule.entries),
            requests=self._tally.requests,
            operations_polled=self._operations_polled,
            retries=self._tally.retries,
            errors=self._errors,
            in_flight=self._in_flight,
            remembered=len(self._memory),
            last_error=self._last_error,
            last_success=self._last_success,
            leading=() if member is None or not member.connected else tuple(sorted(member.leading)),
            fleet_members=None if self._fleet is None else (member.members if member else 1),
            fleet_connected=None if self._fleet is None else bool(member and member.connected),
        )

    # -- interest -----------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise closed_error()
        if self._task_group is None:
            raise RuntimeError(
                "use the Poller as 'async with Poller(session) as poller:' "
                "(or 'await poller.start()' on asyncio)"
            )

    @asynccontextmanager
    async def _subscribed(self, keys: list[Key], *, events: bool) -> AsyncIterator[Mailbox]:
        self._require_open()
        mailbox = Mailbox(keys, events=events, signal=self._signal)
        try:
            self._register(mailbox)
            for start in range(0, len(keys), _SLICE):
                if start:
                    # 100,000 IDs in one call must not stall the event loop.
                    await anyio.lowlevel.checkpoint()
                self._join(mailbox, keys[start : start + _SLICE])
            yield mailbox
        finally:
            self._unsubscribe(mailbox)

    def _register(self, subscriber: Subscriber) -> None:
        self._subscriptions.add(subscriber)
        if self._member is not None:
            self._member.want(subscriber.keys)
        if self._session._telemetry.tracing:
            self._session._telemetry.joined(subscriber)

    def _join(self, subscriber: Subscriber, keys: Iterable[Key]) -> None:
        """Add ``subscriber`` to the entries of ``keys`` (new ones are due at once)."""
        now = self._now()
        self._memory.forget_expired(now)
        entries = self._schedule.entries
        fresh = False
        for key in keys:
            remembered = self._memory.get(key)
            if remembered is not None:
                subscriber.deliver(key, remembered, True)
                continue
            entry = entries.get(key)
            if entry is None:
                part = self._session._planner.encode(key[1])
                entry = self._schedule.add(key, part)
                fresh = True
            elif subscriber.events and entry.state is not None:
                if entry.operation is not None:
                    subscriber.deliver(key, entry.operation, False)
                else:  # seen, but no model kept: show it at the next answer, soon
                    self._schedule.hurry(entry, now)
                    fresh = True
            entry.join(subscriber)
        if fresh:
            self._fresh += 1
            self._wake()

    def _unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscriptions.discard(subscriber)
        if self._member is not None and not isinstance(subscriber, Remote):
            self._member.unwant(subscriber.keys)
        if self._session._telemetry.callers:
            self._session._telemetry.left(subscriber)
        entries = self._schedule.entries
        for key in subscriber.keys:
            entry = entries.get(key)
            if entry is not None and entry.leave(subscriber):
                self._drop(entry)

    def _drop(self, entry: Entry) -> None:
        if self._schedule.remove(entry):
            self._outages.forget(entry.space)
        if self._member is not None:
            self._member.forget(entry.space, entry.id)

    def _finish(self, entry: Entry, status: Status | None) -> None:
        """Deliver the one terminal outcome of ``entry`` and stop polling it."""
        self._drop(entry)
        key = entry.key
        operation: AsyncOperation | None = None
        if status is not None:
            operation = _model(status)
            self._memory.remember(key, status, self._now())
        for subscriber in list(entry.subscribers):
            subscriber.deliver(key, operation, True)

    def _fail(self, entry: Entry, error: AsyncpollError) -> None:
        self._drop(entry)
        for subscriber in list(entry.subscribers):
            subscriber.fail(error)

    # -- the polling loop ---------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self._arriving:
                await self._join_arrivals()
            if self._fresh:
                await self._coalesce()
            now = self._now()
            self._memory.forget_expired(now)
            self._send_due(now)
            # Forget finished operations on time, even while nothing else happens.
            wake = min(self._schedule.next_due(), self._memory.next_expiry)
            if self._outages:
                wake = min(wake, self._end_outages(now))
            delay = wake - self._now()
            if delay > 0 and not self._fresh and not self._arriving:
                self._wakeup = anyio.Event()
                self._sleeping_until = wake
                with anyio.move_on_after(delay):
                    await self._wakeup.wait()
                self._sleeping_until = math.inf
            else:
                await anyio.lowlevel.checkpoint()

    async def _join_arrivals(self) -> None:
        """Join the waiters that arrived to their entries, :data:`_SLICE` per turn; one
        that left meanwhile (cancelled, timed out) is skipped."""
        arriving, subscriptions = self._arriving, self._subscriptions
        while arriving:
            for _ in range(min(len(arriving), _SLICE)):
                waiter = arriving.popleft()
                if waiter in subscriptions:
                    self._join(waiter, waiter.keys)
            if arriving:
                await anyio.lowlevel.checkpoint()

    def _send_due(self, now: float) -> None:
        """Hand every batch due now to the workers."""
        planner = self._session._planner
        member = self._member
        for space in self._schedule.spaces:
            batches = self._schedule.take_batches(space, now, planner.max_batch_size, planner.plan)
            if member is not None and not member.leads(space):
                # Another member polls this space: its answers come through Redis.
                for batch in batches:
                    alive = [entry for entry in batch if entry.alive]
                    self._schedule.reschedule(space, alive, [], now, None)
                continue
            for batch in batches:
                self._in_flight += 1
                self._queue.append((space, batch))
                if self._idle_workers:
                    self._idle_workers.pop().set()

    async def _worker(self) -> None:
        """One in-flight slot: sends the batches due, one at a time, for good."""
        while True:
            if not self._queue:
                ready = anyio.Event()
                self._idle_workers.append(ready)
                await ready.wait()
                continue
            space, batch = self._queue.popleft()
            try:
                await self._poll(space, batch)
            finally:
                self._in_flight -= 1
                self._wake()

    def _end_outages(self, now: float) -> float:
        """Fail the callers of every space down for ``outage_timeout`` seconds; return
        the time the next outage reaches it."""
        ended, soonest = self._outages.expired(now)
        for space, seconds, error in ended:
            if self._member is not None and self._member.shares(space):
                self._member.share_failure(space, "outage", error)
            victims = [e for e in self._schedule.entries.values() if e.space == space]
            # INFO: each caller gets the error itself; the outage's start was the WARNING.
            logger.info(
                "no status request for space %r succeeded for %.1f s (outage_timeout): "
                "failing %d waiting operations with the last error: %s",
                space,
                seconds,
                len(victims),
                error,
            )
            for entry in victims:
                self._fail(entry, error)
        return soonest

    async def _coalesce(self) -> None:
        """Let callers that start together land in one round (a short debounce)."""
        deadline = self._now() + 10 * self.coalesce_window
        while True:
            seen = self._fresh
            await anyio.sleep(self.coalesce_window)
            if self._arriving:  # waiters that came meanwhile count as fresh callers
                await self._join_arrivals()
            if self._fresh == seen or self._now() >= deadline:
                break
        self._fresh = 0

    # -- one batch ----------------------------------------------------------------------

    async def _poll(self, space: str, batch: list[Entry]) -> None:
        live = [entry for entry in batch if entry.alive]
        if not live:
            return
        self._operations_polled += len(live)
        now = self._now()
        limit = self.outage_timeout
        # The outage clock of the space runs until a good answer stops it; the loop must
        # wake when it could pass.
        started = self._outages.sending(space, now)
        if started and limit is not None and now + limit < self._sleeping_until:
            self._wake()
        result, error = await self._query(space, live)
        if error is not None:
            self._errors += 1
            self._last_error = error
            self._on_error(space, live, error)
        elif result is not None:
            self._last_error = None
            self._last_success = time.time()
            ended = self._outages.answered(space)
            if ended is not None:
                logger.warning(
                    "status requests for space %r succeed again after %.1f s",
                    space,
                    self._now() - ended.since,
                )
            self._on_result(space, live, result)

    async def _query(
        self, space: str, live: list[Entry]
    ) -> tuple[BatchResult | None, AsyncpollError | None]:
        """Send one batch through the Session; cancelled once nobody waits for it."""
        # Only a custom decoder reads the operations seen before; the default one does not.
        previous = None
        if self._session._endpoint.decode is not decode_operations:
            previous = {e.id: e.operation for e in live if e.operation is not None}
        telemetry = self._session._telemetry
        if telemetry.metering:
            telemetry.watch(self)
        # Batches are sent from the workers, in the context the Poller was entered in;
        # the spans of the callers waiting on a batch are its links.
        links = telemetry.links(s for e in live for s in e.subscribers) if telemetry.callers else ()
        flight = Flight(len(live))
        for entry in live:
            entry.flight = flight
        result: BatchResult | None = None
        error: AsyncpollError | None = None
        with flight.scope:
            try:
                result = await self._session._query_batch(
                    space,
                    [e.id for e in live],
                    [e.part for e in live],
                    previous,
                    self._tally,
                    light=True,
                    links=links,
                )
            except AsyncpollError as exc:
                error = exc
            except Exception as exc:
                # Nothing one batch raises may end the Poller: its callers get it.
                if self._session.is_closed:
                    error = AsyncpollError(
                        "the Session was closed while the Poller used it "
                        "(close the Poller first, then its Session)"
                    )
                else:
                    logger.error("status query failed unexpectedly: %s", type(exc).__name__)  # noqa: TRY400
                    error = AsyncpollError(f"status query failed: {type(exc).__name__}")
        for entry in live:
            entry.flight = None
        return result, error

    def _on_result(self, space: str, batch: list[Entry], result: BatchResult) -> None:
        now = self._now()
        seen = result.by_id
        id_errors = result.id_errors
        unchanged: list[Entry] = []
        changed: list[Entry] = []
        # The member of a fleet that polls this space for it shares what it sees.
        member = self._member
        sharer = member if member is not None and member.shares(space) else None
        shared: list[AsyncOperation] = []
        gone: list[str] = []
        remote = self._remotes.get(space)
        fresh = remote.fresh if remote is not None else set()
        for entry in batch:
            if not entry.alive:
                continue
            if id_errors:
                id_error = id_errors.get(entry.id)
                if id_error is not None:
                    self._fail(entry, id_error)
                    if sharer is not None:
                        sharer.share_failure(space, "id", id_error, (entry.id,))
                    continue
            status = seen.get(entry.id)
            if status is None:
                if entry.absent_since is None:
                    entry.absent_since = now
                if now - entry.absent_since >= self.not_found_grace:
                    self._finish(entry, None)
                    gone.append(entry.id)
                else:
                    unchanged.append(entry)
                continue
            entry.absent_since = None
            outcome = self._observe(entry, status)
            if sharer is not None and (outcome is not False or entry.id in fresh):
                fresh.discard(entry.id)
                shared.append(_model(status))
            if outcome is not None:
                (changed if outcome else unchanged).append(entry)
        self._schedule.reschedule(space, unchanged, changed, now, result.retry_after)
        if sharer is not None and (shared or gone):
            sharer.publish(space, shared, gone)

    def _observe(self, entry: Entry, status: Status) -> bool | None:
        """Take one answer for ``entry``: True if it changed, False if not (or if it was
        stale), ``None`` once it is finished (nothing left to schedule)."""
        state, percent = status.state, status.percent_complete
        before = entry.state
        if before is not None:
            if state is before and percent == entry.percent:
                if entry.operation is not None or not entry.watchers:
                    return False
                # Unchanged, but a watcher that joined has not been shown it yet.
            elif _regressed(entry, state, percent):
                logger.debug("ignoring a stale answer for operation %r", entry.id)
                return False
        changed = before is not state or entry.percent != percent
        entry.state, entry.percent = state, percent
        if state.is_terminal:
            if before is not None and self._session._telemetry.metering:
                self._session._telemetry.observed(status.raw)  # seen running, now done
            self._finish(entry, status)
            return None
        if not entry.watchers:
            # A waiting caller sees nothing but the outcome: no model.
            entry.operation = None
            return changed
        operation = entry.operation = _model(status)
        key = entry.key
        for subscriber in entry.subscribers:
            subscriber.deliver(key, operation, False)
        return changed

    def _on_error(self, space: str, batch: list[Entry], error: AsyncpollError) -> None:
        if is_transient(error):
            self._retry_later(space, batch, error)
            return
        member = self._member
        if member is not None:
            kind = failure_kind(error)
            if kind is not None and member.shares(space):
                member.share_failure(space, kind, error)
            if isinstance(error, AuthenticationError):
                # This member's token was refused; another member's may still be good.
                member.resign()
        entries = self._schedule.entries.values()
        if isinstance(error, AuthenticationError):
            victims = list(entries)
        elif isinstance(error, PermissionDeniedError | SpaceNotFoundError):
            victims = [entry for entry in entries if entry.space == space]
        else:
            victims = batch
        for entry in victims:
            if entry.alive:
                self._fail(entry, error)

    def _retry_later(self, space: str, batch: list[Entry], error: AsyncpollError) -> None:
        """Callers keep waiting until their own deadline (or the outage timeout): poll
        again later. One WARNING when a space starts failing, not one per batch."""
        now = self._now()
        if self._outages.failed(space, error, now):
            limit = self.outage_timeout
            logger.warning(
                "status query for %d IDs in space %r failed, will retry%s: %s",
                len(batch),
                space,
                "" if limit is None else f" for up to {limit:g} s",
                error,
            )
        else:
            logger.debug("status query for %d IDs failed again: %s", len(batch), error)
        floor = error.retry_after if isinstance(error, RateLimitedError) else None
        alive = [entry for entry in batch if entry.alive]
        self._schedule.reschedule(space, alive, [], now, floor)

    # -- the fleet (called by this Poller's fleet member) -------------------------------

    def fleet_apply(
        self, space: str, operations: Sequence[AsyncOperation], gone: Sequence[str]
    ) -> None:
        """Take observations shared by the member that polls ``space`` (or read from the
        snapshot): as answers of a poll, stale ones ignored, terminal ones delivered."""
        entries = self._schedule.entries
        for operation in operations:
            entry = entries.get((space, operation.id))
            if entry is not None and entry.alive:
                self._observe(entry, operation)
        if gone and self._member is not None and not self._member.leads(space):
            for operation_id in gone:
                entry = entries.get((space, operation_id))
                if entry is not None and entry.alive:
                    self._finish(entry, None)

    def fleet_fail(self, space: str, ids: Sequence[str], error: AsyncpollError) -> None:
        """Fail the callers of ``ids`` in ``space`` (every one of the space if empty)
        with an error the member polling it got, which this member would get too."""
        entries = self._schedule.entries
        if ids:
            victims = [entries.get((space, operation_id)) for operation_id in ids]
        else:
            victims = [entry for entry in entries.values() if entry.space == space]
        for entry in victims:
            if entry is not None and entry.alive:
                self._fail(entry, error)

    def fleet_interest(self, space: str, ids: set[str] | None) -> None:
        """Poll the operations the other members want in ``space`` (this member leads
        it), or stop polling them for the fleet (``ids`` is ``None``)."""
        remote = self._remotes.get(space)
        if ids is None:
            if remote is not None:
                del self._remotes[space]
                self._unsubscribe(remote)
            return
        now = self._now()
        if remote is None:
            remote = self._remotes[space] = Remote(space)
            self._subscriptions.add(remote)
            # Taking over: what the previous leader polled is due now, not at this
            # member's own (idle) pace.
            self._schedule.hurry_space(space, now)
            self._wake()
        entries = self._schedule.entries
        for operation_id in [i for i in remote.ids if i not in ids]:
            remote.ids.discard(operation_id)
            remote.fresh.discard(operation_id)
            entry = entries.get((space, operation_id))
            if entry is not None and entry.leave(remote):
                self._drop(entry)
        # Finished operations the others still list (an open as_completed keeps its IDs
        # until it ends) were shared once: they are not joined, nor shared, again.
        remote.done &= ids
        new = [i for i in ids if i not in remote.ids and i not in remote.done]
        if not new:
            return
        remote.ids.update(new)
        for operation_id in new:
            entry = entries.get((space, operation_id))
            if entry is not None and entry.state is not None:
                # Its state is shared at its next answer (no request sooner: the member
                # that joined read the snapshot, which usually holds it already).
                remote.fresh.add(operation_id)
        remote.replaying = True
        try:
            self._join(remote, [(space, operation_id) for operation_id in new])
        finally:
            remote.replaying = False
        if remote.replayed and self._member is not None:
            self._member.publish(space, remote.replayed, ())
            remote.replayed = []

    def fleet_accepts(self, space: str, operation_id: str) -> bool:
        """True if ``operation_id`` (read from Redis) fits a request of ``space``."""
        try:
            self._session._planner.check_fit((operation_id,), space)
        except ValueError:
            return False
        return True

    def fleet_changed(self) -> None:
        """Leadership or the fleet's connection changed: look at the schedule again."""
        self._wake()
