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
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Generic, NoReturn, Protocol, TypeVar

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
    RequestTimeout,
    SpaceNotFoundError,
    is_transient,
)
from ._models import AsyncOperation, OperationState
from ._runtime import LoopBinding
from ._session import BatchResult, Session
from ._validation import (
    check_count,
    check_seconds,
    finite_seconds,
    validate_operation_id,
    validate_space_id,
)

__all__ = ["PollInterval", "Poller", "PollerStatistics", "ProgressEvent"]

logger = logging.getLogger("asyncpoll")

_Key = tuple[str, str]  # (space_id, operation_id)
_T = TypeVar("_T")
_I = TypeVar("_I", bound="_Iterator")


@attrs.frozen
class PollInterval:
    """How often each operation is polled.

    Every operation starts at ``initial`` seconds; while it does not change, its interval
    grows by ``multiplier`` up to ``maximum``; when its state or progress changes, it goes
    back to ``initial``. Each interval is spread by up to ``jitter`` (a fraction) either
    way. A ``Retry-After`` on a 200 is a floor for the next poll of those IDs.
    """

    initial: float = attrs.field(default=1.0, validator=[finite_seconds, attrs.validators.gt(0)])
    maximum: float = attrs.field(default=30.0, validator=finite_seconds)
    multiplier: float = attrs.field(default=1.5, validator=[finite_seconds, attrs.validators.ge(1)])
    jitter: float = attrs.field(
        default=0.1, validator=[finite_seconds, attrs.validators.ge(0), attrs.validators.lt(1)]
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
    ``remembered``: terminal operations kept for late callers; ``last_error``: the error
    of the latest batch if it failed (``None`` once a batch succeeds again);
    ``last_success``: when a batch last got a good answer, in seconds since the epoch
    (:func:`time.time`), or ``None`` before the first.
    """

    watched: int
    requests: int
    operations_polled: int
    retries: int
    errors: int
    in_flight: int
    remembered: int
    last_error: AsyncpollError | None = None
    last_success: float | None = None


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


class _Outage:
    """A space with no good answer since ``since`` (the Poller's clock), when its first
    unanswered request began; ``error`` is the last failure, ``None`` while every request
    since is still in flight."""

    __slots__ = ("error", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.error: AsyncpollError | None = None


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

    Transient failures (network errors, timeouts, 429, 5xx) are retried at each
    operation's next turn while its callers wait. When no status request for a space has
    succeeded for ``outage_timeout`` seconds, counted from the start of the first request
    left without a good answer (retries included), every caller waiting on that space gets
    the last error (an :class:`AsyncpollError`, usually :class:`ConnectError`; a
    :class:`RequestTimeout` if no request has even failed yet); ``None`` waits for the
    server forever. Bad arguments raise :class:`ValueError`.
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
    ) -> None:
        if not isinstance(session, Session):
            raise TypeError(f"Poller needs a Session, got {type(session).__name__}")
        if interval is not None and not isinstance(interval, PollInterval):
            raise TypeError("interval must be a PollInterval")
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
        self._outages: dict[str, _Outage] = {}
        self._sleeping_until = math.inf  # when the polling loop wakes by itself
        self._space_sizes: dict[str, int] = {}
        self._last_error: AsyncpollError | None = None
        self._last_success: float | None = None
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
        self._binding = LoopBinding("Poller")
        self._now = self._binding.clock
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

    def _keys(self, ids: Iterable[str], space_id: str | None, timeout: float | None) -> list[_Key]:
        """The caller's keys, every argument checked here, before any request."""
        if timeout is not None:
            check_seconds("timeout", timeout)
        if self._binding is not None:
            self._binding.check()
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
        keys = self._keys([op_id], space_id, timeout)
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
        keys = self._keys(ids, space_id, timeout)
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
        done = self._iterating(keys, timeout, _Completed)
        return _Block(done, "as_completed", "done", "operation")

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
        events = self._iterating(keys, timeout, _Events)
        return _Block(events, "watch", "events", "event")

    @asynccontextmanager
    async def _iterating(
        self, keys: list[_Key], timeout: float | None, kind: type[_I]
    ) -> AsyncIterator[_I]:
        deadline = None if timeout is None else self._now() + timeout
        async with self._subscribed(keys, events=kind is _Events) as subscription:
            yield kind(subscription, deadline, self._now)

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
            last_error=self._last_error,
            last_success=self._last_success,
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
        now = self._now()
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
                self._space_sizes[key[0]] = self._space_sizes.get(key[0], 0) + 1
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
            left = self._space_sizes[entry.space] - 1
            if left:
                self._space_sizes[entry.space] = left
            else:
                # Nobody waits on the space: an outage clock restarts with the next caller.
                del self._space_sizes[entry.space]
                self._outages.pop(entry.space, None)

    def _finish(self, entry: _Entry, operation: AsyncOperation | None) -> None:
        """Deliver the one terminal outcome of ``entry`` and stop polling it."""
        self._drop(entry)
        if operation is not None and self.terminal_memory > 0:
            key = (entry.space, entry.id)
            expires = self._now() + self.terminal_memory
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
            # Ride along once a quarter of the entry's interval has passed: at most four
            # times its own rate, and only in room a request already has. (Half was too
            # strict: IDs answered at different moments drifted into half-empty requests.)
            if entry.due - now <= 0.75 * entry.interval:
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
            now = self._now()
            self._forget_expired(now)
            for space in list(self._heaps):
                for batch in self._take_batches(space, now):
                    self._in_flight += 1
                    task_group.start_soon(self._poll, space, batch)
            wake = self._next_due()
            if self._memory_order:
                # Forget finished operations on time, even while nothing else happens.
                wake = min(wake, self._memory_order[0][0])
            if self._outages and self.outage_timeout is not None:
                wake = min(wake, self._end_outages(now, self.outage_timeout))
            delay = wake - self._now()
            if delay > 0 and not self._fresh:
                self._wakeup = anyio.Event()
                self._sleeping_until = wake
                with anyio.move_on_after(delay):
                    await self._wakeup.wait()
                self._sleeping_until = math.inf
            else:
                await anyio.lowlevel.checkpoint()

    def _end_outages(self, now: float, limit: float) -> float:
        """Fail the callers of every space down for ``limit`` seconds; return the time
        the next outage reaches its limit."""
        soonest = math.inf
        for space, outage in list(self._outages.items()):
            ends = outage.since + limit
            if ends > now:
                soonest = min(soonest, ends)
                continue
            del self._outages[space]
            error = outage.error or RequestTimeout(
                f"no answer to a status request within outage_timeout={limit:g} s "
                "(the Session was still retrying)"
            )
            victims = [entry for entry in self._entries.values() if entry.space == space]
            # INFO: each caller gets the error itself; the outage's start was the WARNING.
            logger.info(
                "no status request for space %r succeeded for %.1f s (outage_timeout): "
                "failing %d waiting operations with the last error: %s",
                space,
                now - outage.since,
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
            if self._fresh == seen or self._now() >= deadline:
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
                if space not in self._outages:
                    # The outage clock of the space runs until a good answer stops it.
                    since = self._now()
                    self._outages[space] = _Outage(since)
                    limit = self.outage_timeout
                    if limit is not None and since + limit < self._sleeping_until:
                        self._wake()
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
                    self._last_error = error
                    self._on_error(space, live, error)
                elif result is not None:
                    self._last_error = None
                    self._last_success = time.time()
                    outage = self._outages.pop(space, None)
                    if outage is not None and outage.error is not None:
                        logger.warning(
                            "status requests for space %r succeed again after %.1f s",
                            space,
                            self._now() - outage.since,
                        )
                    self._on_result(live, result)
        finally:
            self._in_flight -= 1
            self._wake()

    def _on_result(self, batch: list[_Entry], result: BatchResult) -> None:
        now = self._now()
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
        now = self._now()
        if is_transient(error):
            # Callers keep waiting until their own deadline (or the outage timeout): poll
            # again later. One WARNING when a space starts failing, not one per batch.
            outage = self._outages.get(space)
            if outage is None:
                # A good answer came meanwhile: the clock restarts at this failure.
                outage = self._outages[space] = _Outage(now)
            if outage.error is None:
                outage.error = error
                limit = self.outage_timeout
                logger.warning(
                    "status query for %d IDs in space %r failed, will retry%s: %s",
                    len(batch),
                    space,
                    "" if limit is None else f" for up to {limit:g} s",
                    error,
                )
            else:
                outage.error = error
                logger.debug("status query for %d IDs failed again: %s", len(batch), error)
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
    __slots__ = ("_clock", "_deadline", "_subscription")

    def __init__(
        self, subscription: _Subscription, deadline: float | None, clock: Callable[[], float]
    ) -> None:
        self._subscription = subscription
        self._deadline = deadline
        self._clock = clock

    async def _next(self) -> tuple[_Key, AsyncOperation | None, AsyncOperation | None, bool]:
        if self._subscription.finished:
            raise StopAsyncIteration
        if self._deadline is None:
            return await self._subscription.next()
        with anyio.fail_after(max(0.0, self._deadline - self._clock())):
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


class _Block(Generic[_T]):
    """What :meth:`Poller.watch` and :meth:`Poller.as_completed` return: a context manager
    (entering it subscribes; leaving it stops polling for this caller). Iterating it
    directly is a mistake, and its ``TypeError`` shows the right form."""

    __slots__ = ("_item", "_manager", "_method", "_name")

    def __init__(
        self, manager: AbstractAsyncContextManager[_T], method: str, name: str, item: str
    ) -> None:
        self._manager = manager
        self._method = method
        self._name = name
        self._item = item

    async def __aenter__(self) -> _T:
        return await self._manager.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._manager.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> NoReturn:
        raise TypeError(
            f"poller.{self._method}(...) is a context manager, not an iterator: use "
            f"'async with poller.{self._method}(ids) as {self._name}:' and then "
            f"'async for {self._item} in {self._name}:'"
        )
