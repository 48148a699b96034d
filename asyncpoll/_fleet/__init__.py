"""Fleet mode: the Pollers of many processes share one polling schedule through Redis.

Beside the Session, below the Poller: :class:`RedisFleet` is the public handle,
:mod:`._member` one Poller's membership (leases, interest, what it shares), :mod:`._codec`
what is kept in Redis and how it is read back (as untrusted input).
"""

from __future__ import annotations

from ._codec import failure_kind
from ._config import RedisFleet
from ._member import Host, Member

__all__ = ["Host", "Member", "RedisFleet", "failure_kind"]
