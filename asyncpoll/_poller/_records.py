"""The Poller's public records: how often it polls, what a watcher sees, what it did."""

from __future__ import annotations

import attrs

from .._errors import AsyncpollError
from .._models import AsyncOperation
from .._validation import finite_seconds

__all__ = ["PollInterval", "PollerStatistics", "ProgressEvent"]


@attrs.frozen
class PollInterval:
    """How often each operation is polled.

    Every operation starts at ``initial`` seconds; while it does not change, its interval
    grows by ``multiplier`` up to ``maximum``; when its state or progress changes, it goes
    back to ``initial``. Each interval is spread by up to ``jitter`` (a fraction) either
    way. A ``Retry-After`` on a 200 is a floor for the next poll of those IDs.

    A poll may be sent up to a quarter of the jitter of ``initial`` late (``initial *
    jitter / 4``: 25 ms by default, none with ``jitter=0``): the polls due within that
    slack of the soonest share its wake-up and go out together, which costs the client
    and the server less than one wake-up per poll.
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

    In a fleet (``Poller(..., fleet=RedisFleet(...))``): ``leading`` holds the spaces
    this member polls for the fleet (sorted); ``fleet_members`` the members alive at its
    last heartbeat, itself included (1 while Redis is unreachable); ``fleet_connected``
    is False while Redis is unreachable and this member polls on its own. Without a
    fleet they are ``()``, ``None`` and ``None``.
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
    leading: tuple[str, ...] = ()
    fleet_members: int | None = None
    fleet_connected: bool | None = None
