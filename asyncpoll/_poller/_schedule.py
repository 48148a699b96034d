"""The schedule: every operation being polled, when it is due, and the batches due now."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence

import anyio

from .._models import AsyncOperation, OperationState
from ._backend import Key, Subscriber
from ._records import PollInterval

__all__ = ["Entry", "Flight", "Schedule"]

# How one space's query parts are cut into requests: (start, stop) slices.
Planner = Callable[[Sequence[str], str], list[tuple[int, int]]]


class Flight:
    """A batch being sent. Once every entry in it has lost its callers, its request
    (with the retries still to come) is cancelled: nobody waits for the answer."""

    __slots__ = ("live", "scope")

    def __init__(self, live: int) -> None:
        self.live = live
        self.scope = anyio.CancelScope()


class Entry:
    """One operation ID being polled on behalf of one or more subscribers."""

    __slots__ = (
        "absent_since",
        "alive",
        "due",
        "flight",
        "id",
        "interval",
        "operation",
        "part",
        "percent",
        "seq",
        "space",
        "state",
        "subscribers",
    )

    def __init__(self, space: str, operation_id: str, part: str, interval: float) -> None:
        self.space = space
        self.id = operation_id
        # The encoded query part, kept while the ID is polled (no cache to bound).
        self.part = part
        # A list: most IDs have one caller, and a one-item set costs three times the memory.
        self.subscribers: list[Subscriber] = []
        # The last state and progress seen (what "changed" and "stale" compare), and the
        # model of it, built only when a watcher is shown one.
        self.state: OperationState | None = None
        self.percent: float | None = None
        self.operation: AsyncOperation | None = None
        self.interval = interval
        self.due = 0.0
        self.seq = 0
        self.alive = True
        self.absent_since: float | None = None
        self.flight: Flight | None = None

    @property
    def watched(self) -> bool:
        """True when a subscriber wants every change (a ``watch``), not only the end."""
        return any(subscriber.events for subscriber in self.subscribers)

    def leave_flight(self) -> None:
        """Stop waiting for this entry's request; cancel it if nobody else waits."""
        flight = self.flight
        if flight is not None:
            self.flight = None
            flight.live -= 1
            if not flight.live:
                flight.scope.cancel()


_Item = tuple[float, int, Entry]


def _live(item: _Item) -> bool:
    # An entry has one live heap item, the one of its latest schedule; it is popped when
    # the entry joins a batch, so an entry in flight has none.
    entry = item[2]
    return entry.alive and entry.seq == item[1]


class Schedule:
    """The entries of every space, one heap of due times per space."""

    __slots__ = ("_heaps", "_rng", "_seq", "entries", "interval", "space_sizes")

    def __init__(self, interval: PollInterval) -> None:
        self.interval = interval
        self.entries: dict[Key, Entry] = {}
        self.space_sizes: dict[str, int] = {}  # entries per space
        self._heaps: dict[str, list[_Item]] = {}
        self._seq = itertools.count()
        self._rng = random.Random()

    def add(self, key: Key, part: str, now: float) -> Entry:
        """A new entry for ``key``, due at once."""
        entry = Entry(key[0], key[1], part, self.interval.initial)
        self.entries[key] = entry
        self.space_sizes[key[0]] = self.space_sizes.get(key[0], 0) + 1
        self._push(entry, now)
        return entry

    def remove(self, entry: Entry) -> bool:
        """Stop polling ``entry``; True when its space has no entry left."""
        entry.alive = False
        entry.leave_flight()
        key = (entry.space, entry.id)
        if self.entries.get(key) is not entry:
            return False
        del self.entries[key]
        left = self.space_sizes[entry.space] - 1
        if left:
            self.space_sizes[entry.space] = left
            return False
        del self.space_sizes[entry.space]
        return True

    def clear(self) -> None:
        self.entries.clear()
        self.space_sizes.clear()
        self._heaps.clear()

    @property
    def spaces(self) -> list[str]:
        return list(self._heaps)

    @property
    def idle(self) -> bool:
        """True when no entry is left in any heap."""
        return all(not heap for heap in self._heaps.values())

    def _push(self, entry: Entry, due: float) -> None:
        entry.due = due
        entry.seq = next(self._seq)
        heap = self._heaps.setdefault(entry.space, [])
        heapq.heappush(heap, (due, entry.seq, entry))
        if len(heap) > 2 * len(self.entries) + 1024:
            # Dropped entries leave stale items behind; rebuild rather than let them pile up.
            live = [item for item in heap if _live(item)]
            heapq.heapify(live)
            self._heaps[entry.space] = live

    def hurry(self, entry: Entry, now: float) -> None:
        """Due at once (a watcher joined and must see the operation), unless in flight."""
        if entry.flight is None and entry.due > now:
            self._push(entry, now)

    def reschedule(self, entry: Entry, now: float, changed: bool, floor: float | None) -> None:
        """Due again after its interval: back to ``initial`` if it ``changed``, else
        grown by the multiplier; never sooner than ``floor`` seconds (Retry-After)."""
        interval = self.interval
        if changed:
            entry.interval = interval.initial
        else:
            entry.interval = min(interval.maximum, entry.interval * interval.multiplier)
        spread = 1.0 + self._rng.uniform(-interval.jitter, interval.jitter)
        delay = entry.interval * spread
        if floor is not None:
            delay = max(delay, floor)
        self._push(entry, now + delay)

    def next_due(self) -> float:
        """When the soonest entry of any space is due (``inf`` when none is)."""
        soonest = math.inf
        for heap in self._heaps.values():
            while heap and not _live(heap[0]):
                heapq.heappop(heap)
            if heap:
                soonest = min(soonest, heap[0][0])
        return soonest

    def take_batches(self, space: str, now: float, size: int, plan: Planner) -> list[list[Entry]]:
        """Pop the due entries of ``space`` and fill their batches with entries due soon."""
        heap = self._heaps.get(space)
        if not heap:
            return []
        due = _pop_due(heap, now)
        if not due:
            return []
        room = math.ceil(len(due) / size) * size - len(due)
        fill, passed = _riders(heap, now, room, 2 * size)
        chosen = due + fill
        result: list[list[Entry]] = []
        for start, stop in plan([e.part for e in chosen], space):
            batch = chosen[start:stop]
            if start >= len(due):
                # Only riders left: they wait for their own turn.
                passed.extend((e.due, e.seq, e) for e in batch)
                continue
            result.append(batch)
        for item in passed:
            heapq.heappush(heap, item)
        return result


def _pop_due(heap: list[_Item], now: float) -> list[Entry]:
    due: list[Entry] = []
    while heap and heap[0][0] <= now:
        item = heapq.heappop(heap)
        if _live(item):
            due.append(item[2])
    return due


def _riders(heap: list[_Item], now: float, room: int, scan: int) -> tuple[list[Entry], list[_Item]]:
    """Entries due soon to fill ``room`` left in the due batches, and the items looked
    at but not taken (to push back)."""
    fill: list[Entry] = []
    passed: list[_Item] = []
    scanned = 0
    while heap and len(fill) < room and scanned < scan:
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
    return fill, passed
