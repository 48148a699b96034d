"""Outage clocks: how long each space has gone without a good answer."""

from __future__ import annotations

import math

from .._errors import AsyncpollError, RequestTimeout

__all__ = ["Outage", "Outages"]


class Outage:
    """A space with no good answer since ``since`` (the Poller's clock), when its first
    unanswered request began; ``error`` is the last failure, ``None`` while every request
    since is still in flight."""

    __slots__ = ("error", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.error: AsyncpollError | None = None


class Outages:
    """One clock per space, started by the first request left without a good answer and
    stopped by the next good answer (or when nobody waits on the space)."""

    __slots__ = ("_clocks", "limit")

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self._clocks: dict[str, Outage] = {}

    def __bool__(self) -> bool:
        return bool(self._clocks)

    def sending(self, space: str, now: float) -> bool:
        """A request starts: start the clock unless it runs; True if it started now."""
        if space in self._clocks:
            return False
        self._clocks[space] = Outage(now)
        return True

    def failed(self, space: str, error: AsyncpollError, now: float) -> bool:
        """A request failed; True if it is the first failure of this outage."""
        outage = self._clocks.get(space)
        if outage is None:
            # A good answer came meanwhile: the clock restarts at this failure.
            outage = self._clocks[space] = Outage(now)
        first = outage.error is None
        outage.error = error
        return first

    def answered(self, space: str) -> Outage | None:
        """A good answer: stop the clock; the outage it ended, if one had failed."""
        outage = self._clocks.pop(space, None)
        return outage if outage is not None and outage.error is not None else None

    def forget(self, space: str) -> None:
        """Nobody waits on ``space``: its clock restarts with the next caller."""
        self._clocks.pop(space, None)

    def clear(self) -> None:
        self._clocks.clear()

    def expired(self, now: float) -> tuple[list[tuple[str, float, AsyncpollError]], float]:
        """The spaces down for ``limit`` seconds, each with the seconds it was down and the
        error for its callers, now forgotten; and when the next one expires."""
        if self.limit is None:
            return [], math.inf
        ended: list[tuple[str, float, AsyncpollError]] = []
        soonest = math.inf
        for space, outage in list(self._clocks.items()):
            ends = outage.since + self.limit
            if ends > now:
                soonest = min(soonest, ends)
                continue
            del self._clocks[space]
            error = outage.error or RequestTimeout(
                f"no answer to a status request within outage_timeout={self.limit:g} s "
                "(the Session was still retrying)"
            )
            ended.append((space, now - outage.since, error))
        return ended, soonest
