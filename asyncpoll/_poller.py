"""The coalescing Poller: every caller's operation IDs share few batched requests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Protocol

import anyio
import attrs
import sniffio
from anyio.abc import TaskGroup, TaskStatus

from ._errors import (
    AsyncpollError,
    AuthenticationError,
    OperationFailed,
    OperationNotFound,
    PermissionDeniedError,
    RateLimitedError,
    SpaceNotFoundError,
    is_transient,
)
from ._models import AsyncOperation, OperationState
from ._session import BatchResult, Session
from ._validation import validate_operation_id, validate_space_id

__all__ = ["PollInterval", "Poller", "PollerStatistics", "ProgressEvent"]

logger = logging.getLogger("asyncpoll")

_Key = tuple[str, str]  # (space_id, operation_id)

# Due times and deadlines are bookkeeping, compared only with each other and turned into
# relative sleeps: the plain monotonic clock spares a backend lookup on every call.
_now = time.monotonic


@attrs.frozen
class PollInterval:
    """How often each operation is polled.

    Every operation starts at ``initial`` seconds; while it does not change, its interval
    grows by ``multiplier`` up to ``maximum``; when its state or progress changes, it goes
    back to ``initial``. Each interval is spread by up to ``jitter`` (a fraction) either
    way. A ``Retry-After`` on a 200 is a floor for the next poll of those IDs.
    """

    initial: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    maximum: float = attrs.field(default=30.0)
    multiplier: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.lt(1)]
    )

    @maximum.validator
    def _check_maximum(self, _: attrs.Attribute[float], value: float) -> None:
        if value < self.initial:
            raise ValueError("PollInterval.maximum must be at least initial")


@attrs.frozen
class ProgressEvent:
    """One change seen by :meth:`Poller.watch`.

    ``operation`` is the operation as now seen (``None`` only for an ID that stayed
    absent past the grace period: ``not_found`` is then true); ``previous`` is the last
    operation this watcher was shown for the same ID, or ``None`` at first sight.
    ``is_terminal`` is true on the one last event of each ID.
    """

    operation_id: str
    space_id: str
    operation: AsyncOperation | None
    previous: AsyncOperation | None
    is_terminal: bool

    @property
    def not_found(self) -> bool:
        """True when the ID stayed absent past the Poller's ``not_found_grace``."""
        return self.operation is None


@attrs.frozen
class PollerStatistics:
    """A snapshot of a Poller's work, from :meth:`Poller.statistics`.

    ``watched``: IDs currently tracked; ``requests``: HTTP requests the Session sent
    since the Poller started (retries and splits included); ``operations_polled``: IDs
    asked for in those batches; ``retries``: retries made by the Session; ``errors``:
    batches that failed after retries; ``in_flight``: batches being sent now;
    ``remembered``: terminal operations kept for late callers.
    """

    watched: int
    requests: int
    operations_polled: int
    retries: int
    errors: int
    in_flight: int
    remembered: int


class _Entry:
    """One operation ID being polled on behalf of one or more subscriptions."""

    __slots__ = (
        "absent_since",
        "alive",
        "due",
        "flight",
        "id",
        "interval",
        "operation",
        "part",
        "seq",
        "space",
        "subscribers",
    )

    def __init__(self, space: str, op_id: str, part: str, interval: float) -> None:
        self.space = space
        self.id = op_id
        # The encoded query part, kept while the ID is polled (no cache to bound).
        self.part = part
        # A list: most IDs have one caller, and a one-item set costs three times the memory.
        self.subscribers: list[_Subscription] = []
        self.operation: AsyncOperation | None = None
        self.interval = interval
        self.due = 0.0
        self.seq = 0
        self.alive = True
        self.absent_since: float | None = None
        self.flight: _Flight | None = None


class _Flight:
    """A batch being sent. Once every entry in it has lost its callers, its request
    (with the retries still to come) is cancelled: nobody waits for the answer."""

    __slots__ = ("live", "scope")

    def __init__(self, live: int) -> None:
        self.live = live
        self.scope = anyio.CancelScope()


# What a subscription holds for one key until its consumer takes it:
# (operation or None for "not found", terminal?)
_Pending = tuple[AsyncOperation | None, bool]


class _Subscription:
    """One caller's interest in some keys, and the outcomes not yet consumed."""

    __slots__ = ("_signal", "_wakeup", "error", "events", "keys", "last", "open", "pending")

    def __init__(self, keys: list[_Key], *, events: bool, signal: _SignalFactory) -> None:
        self._signal = signal
        self.keys = keys
        self.events = events  # every change (watch) or terminal outcomes only
        self.open = set(keys)  # keys with no terminal outcome delivered yet
        self.pending: OrderedDict[_Key, _Pending] = OrderedDict()
        # Made on first use: only watchers need the last operation shown per key.
        self.last: dict[_Key, AsyncOperation | None] | None = None
        self.error: BaseException | None = None
        self._wakeup: _Signal | None = None

    def deliver(self, key: _Key, operation: AsyncOperation | None, terminal: bool) -> None:
        if key not in self.open:
            return
        if terminal:
            self.open.discard(key)
        elif not self.events:
            return
        # Latest wins for a consumer that lags; a terminal outcome is never replaced
        # because nothing is delivered for a key after it.
        self.pending[key] = (operation, terminal)
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def next(self) -> tuple[_Key, AsyncOperation | None, AsyncOperation | None, bool]:
        """The next pending outcome as (key, operation, previous, terminal)."""
        while not self.pending:
            if self.error is not None:
                raise self.error
            self._wakeup = self._signal()
            await self._wakeup.wait()
            self._wakeup = None
        await anyio.lowlevel.checkpoint_if_cancelled()
        key, (operation, terminal) = self.pending.popitem(last=False)
        if not self.events:
            return key, operation, None, terminal
        if self.last is None:
            self.last = {}
        previous = self.last.get(key)
        self.last[key] = operation
        return key, operation, previous, terminal

    @property
    def finished(self) -> bool:
        return not self.open and not self.pending


class _Signal(Protocol):
    def set(self) -> None: ...

    async def wait(self) -> None: ...


_SignalFactory = Callable[[], _Signal]


class _FutureSignal:
    """A one-shot wake-up for one waiting caller on asyncio: a bare future costs a tenth
    of the memory of an ``anyio.Event``, and every waiting caller holds one."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        await self._future


def _signal_factory() -> _SignalFactory:
    if sniffio.current_async_library() == "asyncio":
        return _FutureSignal
    return anyio.Event


def _rank(state: OperationState) -> int:
    # Identity tests: hashing an Enum member runs Python code, and this runs per status.
    if state is OperationState.NOT_STARTED:
        return 0
    if state is OperationState.RUNNING or state is OperationState.UNKNOWN:
        return 1
    return 2


def _regressed(before: AsyncOperation, after: AsyncOperation) -> bool:
    """True for an answer older than one already seen (a lagging replica)."""
    rank_before = _rank(before.state)
    rank_after = _rank(after.state)
    if rank_after != rank_before:
        return rank_after < rank_before
    return (
        before.percent_complete is not None
        and after.percent_complete is not None
        and after.percent_complete < before.percent_complete
    )


class Poller:
    """Polls the operations of every caller through one Session, in coalesced batches.

    Use it as ``async with Poller(session) as poller:``; its one polling loop and every
    request it sends run in a task group that ends with the block. All IDs of all
    callers in one space share batched requests; an ID that several callers want is
    polled once; new IDs are folded into one request after ``coalesce_window`` seconds.
    Batches sent with room to spare are filled with IDs due soon.

    ``interval`` sets each operation's polling interval; ``max_concurrent_requests``
    bounds the requests in flight; an ID absent from answers for ``not_found_grace``
    seconds is reported not found; terminal operations are remembered for
    ``terminal_memory`` seconds so late callers get them without a request.
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
    ) -> None:
        if max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be at least 1")
        if not_found_grace < 0 or coalesce_window < 0 or terminal_memory < 0:
            raise ValueError("not_found_grace, coalesce_window and terminal_memory must be >= 0")
        self._session = session
        self.interval = interval if interval is not None else PollInterval()
        self.max_concurrent_requests = max_concurrent_requests
        self.not_found_grace = not_found_grace
        self.coalesce_window = coalesce_window
        self.terminal_memory = terminal_memory
        self._entries: dict[_Key, _Entry] = {}
        self._heaps: dict[str, list[tuple[float, int, _Entry]]] = {}
        self._seq = itertools.count()
        self._memory: dict[_Key, tuple[AsyncOperation, float]] = {}
        self._memory_order: deque[tuple[float, _Key]] = deque()
        self._subscriptions: set[_Subscription] = set()
        self._rng = random.Random()
        self._fresh = 0
        self._wakeup: anyio.Event | None = None
        self._signal: _SignalFactory = anyio.Event
        self._limiter: anyio.CapacityLimiter | None = None
        self._task_group: TaskGroup | None = None
        self._closed = False
        self._base_requests = 0
        self._base_retries = 0
        self._operations_polled = 0
        self._errors = 0
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"<asyncpoll.Poller watched={len(self._entries)} session={self._session!r}>"

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Poller:
        if self._task_group is not None or self._closed:
            raise RuntimeError("a Poller can be entered only once")
        self._limiter = anyio.CapacityLimiter(self.max_concurrent_requests)
        self._wakeup = anyio.Event()
        self._signal = _signal_factory()
        self._base_requests = self._session.requests_sent
        self._base_retries = self._session.retries
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            await task_group.start(self._run)
        except BaseException as exc:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._closed = True
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The block's own exception comes out as itself, not wrapped in a group (trio
            # wraps even a lone one); a failure of the poller's tasks stays a group.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                raise exc from exc.__cause__
            raise
        finally:
            closed = RuntimeError("the Poller was closed")
            for subscription in list(self._subscriptions):
                subscription.fail(closed)
            self._entries.clear()
            self._heaps.clear()

    # -- public API ---------------------------------------------------------------------

    def _keys(self, ids: Iterable[str], space_id: str | None) -> list[_Key]:
        space = self._session.space_id if space_id is None else validate_space_id(space_id)
        if isinstance(ids, str | bytes):
            raise TypeError("pass a list of operation IDs, not a single string")
        keys = [(space, validate_operation_id(i)) for i in ids]
        # Refused here, at the caller: met later, in the polling loop, it would end the loop.
        self._session._check_fit([key[1] for key in keys], space)
        return keys

    async def wait(
        self, op_id: str, *, space_id: str | None = None, timeout: float | None = None
    ) -> AsyncOperation:
        """Wait until ``op_id`` is terminal and return it if it succeeded.

        Raises :class:`OperationFailed` (with ``.operation``) if it failed or was
        canceled, :class:`OperationNotFound` if it stayed absent past
        ``not_found_grace``, :class:`TimeoutError` after ``timeout`` seconds, and the
        Session's errors (authentication, permission, space not found) as they come.
        Bad IDs raise :class:`ValueError` at once.
        """
        keys = self._keys([op_id], space_id)
        if timeout is None:  # the common case: spare the cancel scope
            return await self._wait_one(keys)
        with anyio.fail_after(timeout):
            return await self._wait_one(keys)

    async def _wait_one(self, keys: list[_Key]) -> AsyncOperation:
        subscription = self._open(keys, events=False)
        try:
            key, operation, _, _ = await subscription.next()
        finally:
            self._unsubscribe(subscription)
        return _succeeded(key, operation)

    async def wait_all(
        self, ids: Iterable[str], *, space_id: str | None = None, timeout: float | None = None
    ) -> list[AsyncOperation]:
        """Wait until every operation of ``ids`` is terminal; return them in input order.

        Failed and canceled operations are returned, not raised. Raises
        :class:`OperationNotFound` for an ID that stayed absent past the grace period,
        :class:`TimeoutError` after ``timeout`` seconds, and the Session's errors.
        """
        keys = self._keys(ids, space_id)
        unique = list(dict.fromkeys(keys))
        found: dict[_Key, AsyncOperation] = {}
        with anyio.fail_after(timeout):
            async with self._subscribed(unique, events=False) as subscription:
                while len(found) < len(unique):
                    key, operation, _, _ = await subscription.next()
                    if operation is None:
                        raise OperationNotFound(key[1], key[0])
                    found[key] = operation
        return [found[key] for key in keys]

    @asynccontextmanager
    async def as_completed(
        self, ids: Iterable[str], *, space_id: str | None = None, timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[AsyncOperation]]:
        """Terminal operations of ``ids`` in the order they complete::

            async with poller.as_completed(ids) as done:
                async for operation in done:
                    ...

        Failed and canceled operations are yielded, not raised. Iterating raises
        :class:`OperationNotFound` for an ID that stayed absent, :class:`TimeoutError`
        once ``timeout`` seconds have passed since entering, and the Session's errors.
        Leaving the block stops polling for this caller.
        """
        keys = list(dict.fromkeys(self._keys(ids, space_id)))
        deadline = None if timeout is None else _now() + timeout
        async with self._subscribed(keys, events=False) as subscription:
            yield _Completed(subscription, deadline)

    @asynccontextmanager
    async def watch(
        self, ids: Iterable[str], *, space_id: str | None = None, timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[ProgressEvent]]:
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
        Session's errors.
        """
        keys = list(dict.fromkeys(self._keys(ids, space_id)))
        deadline = None if timeout is None else _now() + timeout
        async with self._subscribed(keys, events=True) as subscription:
            yield _Events(subscription, deadline)

    def statistics(self) -> PollerStatistics:
        """A snapshot of what this Poller tracks and has sent."""
        return PollerStatistics(
            watched=len(self._entries),
            requests=self._session.requests_sent - self._base_requests,
            operations_polled=self._operations_polled,
            retries=self._session.retries - self._base_retries,
            errors=self._errors,
            in_flight=self._in_flight,
            remembered=len(self._memory),
        )

    # -- interest -----------------------------------------------------------------------

    @asynccontextmanager
    async def _subscribed(self, keys: list[_Key], *, events: bool) -> AsyncIterator[_Subscription]:
        subscription = self._open(keys, events=events)
        try:
            yield subscription
        finally:
            self._unsubscribe(subscription)

    def _open(self, keys: list[_Key], *, events: bool) -> _Subscription:
        """Register a new subscription to ``keys``; the caller must unsubscribe it."""
        if self._task_group is None or self._closed:
            raise RuntimeError("use the Poller as 'async with Poller(session) as poller:'")
        subscription = _Subscription(keys, events=events, signal=self._signal)
        self._subscribe(subscription)
        return subscription

    def _subscribe(self, subscription: _Subscription) -> None:
        self._subscriptions.add(subscription)
        now = _now()
        self._forget_expired(now)
        fresh = False
        for key in subscription.keys:
            remembered = self._memory.get(key)
            if remembered is not None:
                subscription.deliver(key, remembered[0], True)
                continue
            entry = self._entries.get(key)
            if entry is None:
                part = self._session._encode_one(key[1])
                entry = _Entry(key[0], key[1], part, self.interval.initial)
                self._entries[key] = entry
                self._schedule(entry, now)
                fresh = True
            elif entry.operation is not None:
                subscription.deliver(key, entry.operation, False)
            entry.subscribers.append(subscription)
        if fresh:
            self._fresh += 1
            self._wake()

    def _unsubscribe(self, subscription: _Subscription) -> None:
        self._subscriptions.discard(subscription)
        for key in subscription.keys:
            entry = self._entries.get(key)
            if entry is not None and subscription in entry.subscribers:
                entry.subscribers.remove(subscription)
                if not entry.subscribers:
                    self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        entry.alive = False
        flight = entry.flight
        if flight is not None:
            entry.flight = None
            flight.live -= 1
            if not flight.live:
                flight.scope.cancel()
        if self._entries.get((entry.space, entry.id)) is entry:
            del self._entries[(entry.space, entry.id)]

    def _finish(self, entry: _Entry, operation: AsyncOperation | None) -> None:
        """Deliver the one terminal outcome of ``entry`` and stop polling it."""
        self._drop(entry)
        if operation is not None and self.terminal_memory > 0:
            key = (entry.space, entry.id)
            expires = _now() + self.terminal_memory
            self._memory[key] = (operation, expires)
            self._memory_order.append((expires, key))
        for subscription in list(entry.subscribers):
            subscription.deliver((entry.space, entry.id), operation, True)

    def _fail(self, entry: _Entry, error: AsyncpollError) -> None:
        self._drop(entry)
        for subscription in list(entry.subscribers):
            subscription.fail(error)

    def _forget_expired(self, now: float) -> None:
        order = self._memory_order
        while order and order[0][0] <= now:
            expires, key = order.popleft()
            remembered = self._memory.get(key)
            if remembered is not None and remembered[1] == expires:
                del self._memory[key]

    # -- scheduling ---------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _schedule(self, entry: _Entry, due: float) -> None:
        entry.due = due
        entry.seq = next(self._seq)
        heap = self._heaps.setdefault(entry.space, [])
        heapq.heappush(heap, (due, entry.seq, entry))
        if len(heap) > 2 * len(self._entries) + 1024:
            # Dropped entries leave stale items behind; rebuild rather than let them pile up.
            live = [item for item in heap if _live(item)]
            heapq.heapify(live)
            self._heaps[entry.space] = live

    def _reschedule(self, entry: _Entry, now: float, changed: bool, floor: float | None) -> None:
        interval = self.interval
        if changed:
            entry.interval = interval.initial
        else:
            entry.interval = min(interval.maximum, entry.interval * interval.multiplier)
        spread = 1.0 + self._rng.uniform(-interval.jitter, interval.jitter)
        delay = entry.interval * spread
        if floor is not None:
            delay = max(delay, floor)
        self._schedule(entry, now + delay)

    def _take_batches(self, space: str, now: float) -> list[list[_Entry]]:
        """Pop the due entries of ``space`` and fill their batches with entries due soon."""
        heap = self._heaps.get(space)
        if not heap:
            return []
        due: list[_Entry] = []
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if _live(item):
                due.append(item[2])
        if not due:
            return []
        size = self._session.max_batch_size
        room = math.ceil(len(due) / size) * size - len(due)
        fill: list[_Entry] = []
        passed: list[tuple[float, int, _Entry]] = []
        scanned = 0
        while heap and len(fill) < room and scanned < 2 * size:
            item = heapq.heappop(heap)
            if not _live(item):
                continue
            scanned += 1
            entry = item[2]
            # Ride along only when at least half of the entry's interval has passed.
            if entry.due - now <= entry.interval / 2:
                fill.append(entry)
            else:
                passed.append(item)
        chosen = due + fill
        slices = self._session._plan([e.part for e in chosen], space)
        due_ids = len(due)
        result: list[list[_Entry]] = []
        for start, stop in slices:
            batch = chosen[start:stop]
            if start >= due_ids:
                # Only riders left: they wait for their own turn.
                passed.extend((e.due, e.seq, e) for e in batch)
                continue
            result.append(batch)
        for item in passed:
            heapq.heappush(heap, item)
        return result

    def _next_due(self) -> float:
        soonest = math.inf
        for heap in self._heaps.values():
            while heap and not _live(heap[0]):
                heapq.heappop(heap)
            if heap:
                soonest = min(soonest, heap[0][0])
        return soonest

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        assert self._task_group is not None
        task_group = self._task_group
        task_status.started()
        while True:
            if self._fresh:
                await self._coalesce()
            now = _now()
            self._forget_expired(now)
            for space in list(self._heaps):
                for batch in self._take_batches(space, now):
                    self._in_flight += 1
                    task_group.start_soon(self._poll, space, batch)
            wake = self._next_due()
            if self._memory_order:
                # Forget finished operations on time, even while nothing else happens.
                wake = min(wake, self._memory_order[0][0])
            delay = wake - _now()
            if delay > 0 and not self._fresh:
                self._wakeup = anyio.Event()
                with anyio.move_on_after(delay):
                    await self._wakeup.wait()
            else:
                await anyio.lowlevel.checkpoint()

    async def _coalesce(self) -> None:
        """Let callers that start together land in one round (a short debounce)."""
        deadline = _now() + 10 * self.coalesce_window
        while True:
            seen = self._fresh
            await anyio.sleep(self.coalesce_window)
            if self._fresh == seen or _now() >= deadline:
                break
        self._fresh = 0

    # -- one batch ----------------------------------------------------------------------

    async def _poll(self, space: str, batch: list[_Entry]) -> None:
        assert self._limiter is not None
        try:
            async with self._limiter:
                live = [entry for entry in batch if entry.alive]
                if not live:
                    return
                previous = {e.id: e.operation for e in live if e.operation is not None}
                self._operations_polled += len(live)
                flight = _Flight(len(live))
                for entry in live:
                    entry.flight = flight
                result: BatchResult | None = None
                error: AsyncpollError | None = None
                with flight.scope:
                    try:
                        result = await self._session._query_batch(
                            space, [e.id for e in live], [e.part for e in live], previous
                        )
                    except AsyncpollError as exc:
                        error = exc
                    except Exception as exc:
                        # Nothing one batch raises may end the Poller: its callers get it.
                        logger.error("status query failed unexpectedly: %s", type(exc).__name__)  # noqa: TRY400
                        error = AsyncpollError(f"status query failed: {type(exc).__name__}")
                for entry in live:
                    entry.flight = None
                if error is not None:
                    self._errors += 1
                    self._on_error(space, live, error)
                elif result is not None:
                    self._on_result(live, result)
        finally:
            self._in_flight -= 1
            self._wake()

    def _on_result(self, batch: list[_Entry], result: BatchResult) -> None:
        now = _now()
        seen = {operation.id: operation for operation in result.operations}
        for entry in batch:
            if not entry.alive:
                continue
            id_error = result.id_errors.get(entry.id)
            if id_error is not None:
                self._fail(entry, id_error)
                continue
            operation = seen.get(entry.id)
            if operation is None:
                if entry.absent_since is None:
                    entry.absent_since = now
                if now - entry.absent_since >= self.not_found_grace:
                    self._finish(entry, None)
                else:
                    self._reschedule(entry, now, False, result.retry_after)
                continue
            entry.absent_since = None
            self._observe(entry, operation, now, result.retry_after)

    def _observe(
        self, entry: _Entry, operation: AsyncOperation, now: float, floor: float | None
    ) -> None:
        before = entry.operation
        if operation is before:
            # The decoder handed back the very object of last time: nothing changed.
            self._reschedule(entry, now, False, floor)
            return
        if before is not None and _regressed(before, operation):
            logger.debug("ignoring a stale answer for operation %r", entry.id)
            self._reschedule(entry, now, False, floor)
            return
        changed = (
            before is None
            or before.state is not operation.state
            or before.percent_complete != operation.percent_complete
        )
        entry.operation = operation
        if operation.is_terminal:
            self._finish(entry, operation)
            return
        if changed:
            key = (entry.space, entry.id)
            for subscription in entry.subscribers:
                subscription.deliver(key, operation, False)
        self._reschedule(entry, now, changed, floor)

    def _on_error(self, space: str, batch: list[_Entry], error: AsyncpollError) -> None:
        now = _now()
        if is_transient(error):
            # Callers keep waiting until their own deadline: poll again later.
            logger.warning("status query for %d IDs failed, will retry: %s", len(batch), error)
            floor = error.retry_after if isinstance(error, RateLimitedError) else None
            for entry in batch:
                if entry.alive:
                    self._reschedule(entry, now, False, floor)
            return
        if isinstance(error, AuthenticationError):
            victims = list(self._entries.values())
        elif isinstance(error, PermissionDeniedError | SpaceNotFoundError):
            victims = [entry for entry in self._entries.values() if entry.space == space]
        else:
            victims = batch
        for entry in victims:
            if entry.alive:
                self._fail(entry, error)


def _live(item: tuple[float, int, _Entry]) -> bool:
    # An entry has one live heap item, the one of its latest schedule; it is popped when
    # the entry joins a batch, so an entry in flight has none.
    entry = item[2]
    return entry.alive and entry.seq == item[1]


def _succeeded(key: _Key, operation: AsyncOperation | None) -> AsyncOperation:
    if operation is None:
        raise OperationNotFound(key[1], key[0])
    if operation.state is not OperationState.SUCCEEDED:
        raise OperationFailed(operation)
    return operation


class _Iterator:
    __slots__ = ("_deadline", "_subscription")

    def __init__(self, subscription: _Subscription, deadline: float | None) -> None:
        self._subscription = subscription
        self._deadline = deadline

    async def _next(self) -> tuple[_Key, AsyncOperation | None, AsyncOperation | None, bool]:
        if self._subscription.finished:
            raise StopAsyncIteration
        if self._deadline is None:
            return await self._subscription.next()
        with anyio.fail_after(max(0.0, self._deadline - _now())):
            return await self._subscription.next()


class _Completed(_Iterator):
    """The iterator of :meth:`Poller.as_completed`."""

    def __aiter__(self) -> _Completed:
        return self

    async def __anext__(self) -> AsyncOperation:
        key, operation, _, _ = await self._next()
        if operation is None:
            raise OperationNotFound(key[1], key[0])
        return operation


class _Events(_Iterator):
    """The iterator of :meth:`Poller.watch`."""

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> ProgressEvent:
        key, operation, previous, terminal = await self._next()
        return ProgressEvent(
            operation_id=key[1],
            space_id=key[0],
            operation=operation,
            previous=previous,
            is_terminal=terminal,
        )
