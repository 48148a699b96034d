"""The memory of finished operations: a late caller gets them without a request."""

from __future__ import annotations

import math
from collections import deque

from .._models import AsyncOperation
from .._wire import Light, Packed, Status, unpack
from ._backend import Key

__all__ = ["Memory"]


class Memory:
    """Terminal operations kept for ``seconds`` after they were seen (0 keeps none).

    A status of the documented shape is kept packed (its entry marshalled, see
    :meth:`~asyncpoll._wire.Light.pack`) and rebuilt for a late caller: at 100,000
    operations the memory holds tens of thousands, and a parsed entry costs about four
    times its packed bytes, and three objects more for the cyclic garbage collector.
    """

    __slots__ = ("_items", "_order", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._items: dict[Key, tuple[AsyncOperation | Packed, float]] = {}
        self._order: deque[tuple[float, Key]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> AsyncOperation | None:
        """The remembered terminal operation of ``key``, if any (an equal model, not the
        same object, for one kept packed)."""
        found = self._items.get(key)
        if found is None:
            return None
        kept = found[0]
        return kept if isinstance(kept, AsyncOperation) else unpack(kept)

    def remember(self, key: Key, status: Status, now: float) -> None:
        """Keep the terminal ``status`` of ``key`` until ``seconds`` from ``now``."""
        if self.seconds > 0:
            expires = now + self.seconds
            self._items[key] = (status.pack() if isinstance(status, Light) else status, expires)
            self._order.append((expires, key))

    def forget_expired(self, now: float) -> None:
        order = self._order
        while order and order[0][0] <= now:
            expires, key = order.popleft()
            remembered = self._items.get(key)
            if remembered is not None and remembered[1] == expires:
                del self._items[key]

    @property
    def next_expiry(self) -> float:
        """When the oldest memory expires (``inf`` when there is none)."""
        return self._order[0][0] if self._order else math.inf

    @property
    def empty(self) -> bool:
        """True when nothing is remembered and nothing is left to expire."""
        return not self._items and not self._order
