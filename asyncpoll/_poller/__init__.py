"""The Poller, in pieces a reader can hold one at a time (bottom to top):

- ``_backend``: the key of an operation, the subscriber type, the backend's wake-up;
- ``_records``: the public records (``PollInterval``, ``ProgressEvent``, statistics);
- ``_delivery``: callers' mailboxes and the iterators that read them;
- ``_schedule``: the operations being polled and the batches due;
- ``_memory``: finished operations kept for late callers;
- ``_outage``: how long each space has gone without a good answer;
- ``_poller``: the public class, wiring them to the Session.
"""

from __future__ import annotations

from ._poller import Poller
from ._records import PollerStatistics, PollInterval, ProgressEvent

__all__ = ["PollInterval", "Poller", "PollerStatistics", "ProgressEvent"]
