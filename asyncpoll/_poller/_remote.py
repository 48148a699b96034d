"""The other members of a fleet, as the schedule of the member that leads a space sees
them: one subscriber per led space, holding the operations they want."""

from __future__ import annotations

from .._models import AsyncOperation
from ._backend import Key

__all__ = ["Remote"]


class Remote:
    """The fleet's interest in one space this member leads. It is joined to the entries
    of ``ids``; it takes no outcome itself (the leader shares every answer through Redis),
    except those replayed from memory while it joins, which are shared again."""

    __slots__ = ("done", "fresh", "ids", "replayed", "replaying", "space")

    events = False

    def __init__(self, space: str) -> None:
        self.space = space
        self.ids: set[str] = set()
        # Joined to an entry already seen: its current state is shared at its next answer
        # (a member that joins late may find no snapshot of an unchanged operation).
        self.fresh: set[str] = set()
        self.replaying = False
        self.done: set[str] = set()  # finished and shared, still wanted by others
        self.replayed: list[AsyncOperation] = []

    @property
    def keys(self) -> list[Key]:
        return [(self.space, operation_id) for operation_id in self.ids]

    def deliver(self, key: Key, operation: AsyncOperation | None, terminal: bool) -> None:
        if terminal:
            self.ids.discard(key[1])
            self.done.add(key[1])
            self.fresh.discard(key[1])
            if self.replaying and operation is not None:
                self.replayed.append(operation)

    def fail(self, error: BaseException) -> None:
        # The entry is dropped; the members that still want it are joined at the next sync.
        del error
