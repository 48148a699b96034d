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
        "_callers",
        "absent_since",
        "alive",
        "due",
        "flight",
        "id",
        "interval",
        "key",
        "operation",
        "part",
        "percent",
        "seq",
        "space",
        "state",
        "watchers",
    )

    def __init__(self, key: Key, part: str, interval: float) -> None:
        # The key is kept, not made again: the memory and every delivery use this tuple.
        self.key = key
        self.space, self.id = key
        # The encoded query part, kept while the ID is polled (no cache to bound).
        self.part = part
        # The one caller most IDs have, or a list of several: no container for one, which
        # at 100,000 IDs halves the objects the cyclic garbage collector walks.
        self._callers: Subscriber | list[Subscriber] | None = None
        # How many of them want every change (a ``watch``), not only the end: counted
        # as they come and go, since every answer asks.
        self.watchers = 0
        # The last state and progress seen (what "changed" and "stale" compare), and the
        # model of it, built only when a watcher is shown one.
        self.state: OperationState | None = None
        self.percent: float | None = None
        self.operation: AsyncOperation | None = None
        self.interval = interval
        self.due = 0.0
        self.seq = -1  # the heap item (a group) this entry is due in; -1: none yet
        self.alive = True
        self.absent_since: float | None = None
        self.flight: Flight | None = None

    @property
    def subscribers(self) -> Sequence[Subscriber]:
        """The callers of this entry, in the order they joined (a copy for one caller)."""
        callers = self._callers
        if isinstance(callers, list):
            return callers
        return () if callers is None else (callers,)

    def join(self, subscriber: Subscriber) -> None:
        """Add ``subscriber`` to the callers of this entry."""
        callers = self._callers
        if callers is None:
            self._callers = subscriber
        elif isinstance(callers, list):
            callers.append(subscriber)
        else:
            self._callers = [callers, subscriber]
        if subscriber.events:
            self.watchers += 1

    def leave(self, subscriber: Subscriber) -> bool:
        """Remove ``subscriber`` if it is one of the callers; True when none is left."""
        callers = self._callers
        if isinstance(callers, list):
            if subscriber not in callers:
                return False
            callers.remove(subscriber)
            left = bool(callers)
        elif callers is subscriber:
            self._callers = None
            left = False
        else:
            return False
        if subscriber.events:
            self.watchers -= 1
        return not left

    def leave_flight(self) -> None:
        """Stop waiting for this entry's request; cancel it if nobody else waits."""
        flight = self.flight
        if flight is not None:
            self.flight = None
            flight.live -= 1
            if not flight.live:
                flight.scope.cancel()


# One heap item is a group of entries due together: the entries of one batch answered
# together, with the same interval, share one item and one jitter draw, and stay together
# round after round. An entry is live in the item whose ``seq`` it holds; it leaves an
# item by being rescheduled (a new item), hurried, or removed.
_Item = tuple[float, int, list[Entry]]


def _members(item: _Item) -> list[Entry]:
    seq = item[1]
    return [entry for entry in item[2] if entry.alive and entry.seq == seq]


class Schedule:
    """The entries of every space, one heap of due groups per space."""

    __slots__ = (
        "_heaps",
        "_new",
        "_rng",
        "_seq",
        "_size",
        "_slack",
        "entries",
        "interval",
        "space_sizes",
    )

    def __init__(self, interval: PollInterval) -> None:
        self.interval = interval
        self.entries: dict[Key, Entry] = {}
        self.space_sizes: dict[str, int] = {}  # entries per space
        self._heaps: dict[str, list[_Item]] = {}
        # Entries added since the last round, due at once: one group per space, made
        # when the round takes them (so 100,000 IDs arriving cost no heap work).
        self._new: dict[str, list[Entry]] = {}
        self._seq = itertools.count()
        self._rng = random.Random()
        self._size = 0  # heap items of every space
        # How late a poll may be sent so that polls due close together go out together
        # (one wake-up per poll costs more CPU than a burst): a quarter of the initial
        # interval's jitter (25 ms by default), well within the spread the jitter makes
        # anyway. Half of it saved no more CPU and doubled the loop lag that the bursts
        # cause (benchmarks/README.md, issue 10, part 4).
        self._slack = interval.initial * interval.jitter / 4

    def add(self, key: Key, part: str) -> Entry:
        """A new entry for ``key``, due at once."""
        entry = Entry(key, part, self.interval.initial)
        self.entries[key] = entry
        self.space_sizes[key[0]] = self.space_sizes.get(key[0], 0) + 1
        self._new.setdefault(key[0], []).append(entry)
        return entry

    def remove(self, entry: Entry) -> bool:
        """Stop polling ``entry``; True when its space has no entry left."""
        entry.alive = False
        entry.leave_flight()
        key = entry.key
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
        self._new.clear()
        self._size = 0

    @property
    def spaces(self) -> list[str]:
        return list(self._heaps.keys() | self._new.keys())

    @property
    def idle(self) -> bool:
        """True when no entry is left due in any space."""
        return not self._new and all(not heap for heap in self._heaps.values())

    def _push(self, space: str, members: list[Entry], due: float) -> None:
        seq = next(self._seq)
        for entry in members:
            entry.due = due
            entry.seq = seq
        heap = self._heaps.get(space)
        if heap is None:
            heap = self._heaps[space] = []
        heapq.heappush(heap, (due, seq, members))
        self._size += 1
        if self._size > 2 * len(self.entries) + 1024:
            self._compact()

    def _compact(self) -> None:
        """Drop the items no entry is live in any more (hurried or removed entries leave
        theirs behind until they come due)."""
        self._size = 0
        for space, heap in list(self._heaps.items()):
            live = [item for item in heap if _members(item)]
            heapq.heapify(live)
            self._heaps[space] = live
            self._size += len(live)

    def hurry(self, entry: Entry, now: float) -> None:
        """Due at once (a watcher joined and must see the operation), unless in flight."""
        if entry.flight is None and entry.seq >= 0 and entry.due > now:
            self._push(entry.space, [entry], now)

    def hurry_space(self, space: str, now: float) -> None:
        """Every entry of ``space`` due at once, as one group (this member just took
        over polling the space for a fleet)."""
        members = [
            entry
            for entry in self.entries.values()
            if entry.space == space and entry.flight is None and entry.seq >= 0 and entry.due > now
        ]
        if members:
            self._push(space, members, now)

    def reschedule(
        self,
        space: str,
        unchanged: list[Entry],
        changed: list[Entry],
        now: float,
        floor: float | None,
    ) -> None:
        """Due again after their interval: back to ``initial`` for the ``changed``, grown
        by the multiplier for the ``unchanged``; never sooner than ``floor`` seconds
        (Retry-After). Entries left with the same interval share one group."""
        interval = self.interval
        groups: dict[float, list[Entry]] = {}
        if changed:
            for entry in changed:
                entry.interval = interval.initial
            groups[interval.initial] = changed
        maximum, multiplier = interval.maximum, interval.multiplier
        for entry in unchanged:
            grown = entry.interval * multiplier
            entry.interval = grown = grown if grown < maximum else maximum
            members = groups.get(grown)
            if members is None:
                groups[grown] = [entry]
            else:
                members.append(entry)
        jitter, uniform = interval.jitter, self._rng.uniform
        for length, members in groups.items():
            delay = length * (1.0 + uniform(-jitter, jitter))
            if floor is not None and delay < floor:
                delay = floor
            self._push(space, members, now + delay)

    def next_due(self) -> float:
        """When the polling loop next takes batches: when the soonest entry of any space
        is due, plus the slack, so that the entries due within it go out with it
        (``-inf`` for new ones, never delayed; ``inf`` when none is due)."""
        if self._new:
            return -math.inf
        soonest = math.inf
        for heap in self._heaps.values():
            while heap and not _members(heap[0]):
                heapq.heappop(heap)
                self._size -= 1
            if heap and heap[0][0] < soonest:
                soonest = heap[0][0]
        return soonest + self._slack

    def take_batches(self, space: str, now: float, size: int, plan: Planner) -> list[list[Entry]]:
        """Pop the due entries of ``space`` and fill their batches with entries due soon."""
        due = [entry for entry in self._new.pop(space, ()) if entry.alive]
        heap = self._heaps.get(space)
        if heap:
            self._size -= _pop_due(heap, now, due)
        if not due:
            return []
        room = math.ceil(len(due) / size) * size - len(due)
        fill: list[Entry] = []
        if room and heap:
            self._size -= _riders(heap, now, room, 2 * size, fill)
        chosen = due + fill if fill else due
        result: list[list[Entry]] = []
        for start, stop in plan([e.part for e in chosen], space):
            batch = chosen[start:stop]
            if start >= len(due):
                # Only riders left: they wait for their own turn.
                assert heap is not None
                for entry in batch:
                    heapq.heappush(heap, (entry.due, entry.seq, [entry]))
                    self._size += 1
                continue
            result.append(batch)
        return result


def _pop_due(heap: list[_Item], now: float, due: list[Entry]) -> int:
    """Move the live entries of every group due by ``now`` into ``due``; the items popped."""
    popped = 0
    while heap and heap[0][0] <= now:
        item = heapq.heappop(heap)
        popped += 1
        due.extend(_members(item))
    return popped


def _riders(heap: list[_Item], now: float, room: int, scan: int, fill: list[Entry]) -> int:
    """Add entries due soon to ``fill``, up to the ``room`` left in the due batches;
    return the net number of items taken off the heap."""
    taken = 0
    passed: list[_Item] = []
    scanned = 0
    while heap and len(fill) < room and scanned < scan:
        item = heapq.heappop(heap)
        taken += 1
        members = _members(item)
        if not members:
            continue
        scanned += len(members)
        # Ride along once a quarter of the interval has passed: at most four times the
        # entry's own rate, and only in room a request already has. (Half was too strict:
        # IDs answered at different moments drifted into half-empty requests.) A group's
        # entries share their due time and interval.
        if item[0] - now > 0.75 * members[0].interval:
            passed.append(item)
            continue
        space_left = room - len(fill)
        fill.extend(members[:space_left])
        if len(members) > space_left:
            passed.append((item[0], item[1], members[space_left:]))
    for item in passed:
        heapq.heappush(heap, item)
    return taken - len(passed)
