"""The running backend: which event loop an object belongs to, and its clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import sniffio

__all__ = ["LoopBinding"]


def _loop_identity(library: str) -> object:
    if library == "asyncio":
        return asyncio.get_running_loop()
    import trio

    return trio.lowlevel.current_trio_token()


class LoopBinding:
    """Remembers the event loop that entered an object, and refuses use from any other.

    A Session or Poller holds connections, futures and tasks of one loop: used from a
    second ``asyncio.run``, another thread's loop or another backend, it would hang or
    answer late. :meth:`check` raises :class:`RuntimeError` at once instead.
    """

    __slots__ = ("_library", "_loop", "_what", "clock")

    def __init__(self, what: str) -> None:
        self._what = what
        self._library = sniffio.current_async_library()
        self._loop = _loop_identity(self._library)
        self.clock: Callable[[], float]
        if self._library == "asyncio":
            self.clock = asyncio.get_running_loop().time
        else:
            import trio

            self.clock = trio.current_time

    def check(self) -> None:
        """Raise :class:`RuntimeError` unless called in the loop that made this binding."""
        try:
            same = _loop_identity(self._library) is self._loop
        except (RuntimeError, sniffio.AsyncLibraryNotFoundError):
            same = False
        if not same:
            raise RuntimeError(
                f"this {self._what} belongs to the event loop that entered it "
                f"({self._library}), not to the one running now (another asyncio.run, "
                f"thread or backend): create and enter a {self._what} inside each event "
                "loop that uses it"
            )
