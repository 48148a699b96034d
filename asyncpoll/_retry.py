"""Retry policy: exponential backoff with full jitter, a bounded total, and Retry-After."""

from __future__ import annotations

import email.utils
import math
import random
from datetime import UTC, datetime

import attrs

from ._validation import finite_seconds

__all__ = ["MAX_RETRY_AFTER", "RetryPolicy", "parse_retry_after"]

#: The longest ``Retry-After`` honoured, in seconds (one day): a longer hint is a server
#: bug, and honouring it would stall a worker for good.
MAX_RETRY_AFTER = 86_400


@attrs.frozen
class RetryPolicy:
    """How the Session retries transient failures (5xx, 429, network errors, timeouts,
    bodies that are not JSON).

    Try ``attempts`` times in all. Before try *n* (from 1), sleep a random time between 0
    and ``min(maximum, initial * 2 ** (n - 1))`` seconds (full jitter), or longer if the
    server's ``Retry-After`` asks for it. Give up, raising the last error, when the next
    sleep would end more than ``timeout`` seconds after the first try began; a pause
    after a 429 that ends later than that raises :class:`~asyncpoll.RateLimitedError` at
    once. ``Retry-After`` is honoured up to :data:`MAX_RETRY_AFTER` (one day).
    ``RetryPolicy(attempts=1)`` disables retries.
    """

    attempts: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    initial: float = attrs.field(default=0.2, validator=finite_seconds)
    maximum: float = attrs.field(default=10.0, validator=finite_seconds)
    timeout: float = attrs.field(default=60.0, validator=finite_seconds)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The jittered sleep before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.maximum, self.initial * 2.0 ** min(retry - 1, 60))
        return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date.

    Returns ``None`` when the value is missing or unreadable, 0 for a date in the past,
    and at most one day. Never raises.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(float(MAX_RETRY_AFTER), max(0.0, seconds))
