"""What every piece of the Poller shares: the key of an operation, who receives its
outcomes, and the one place where asyncio and trio differ (the wake-up of a caller)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import sniffio

from .._models import AsyncOperation

__all__ = ["Key", "Signal", "SignalFactory", "Subscriber", "signal_factory"]

Key = tuple[str, str]  # (space_id, operation_id)


class Subscriber(Protocol):
    """A caller's interest, as the schedule sees it: it has keys and takes outcomes."""

    @property
    def keys(self) -> tuple[Key, ...] | list[Key]: ...

    @property
    def events(self) -> bool:
        """True for a watcher: it is shown every change, not only the outcome."""

    def deliver(self, key: Key, operation: AsyncOperation | None, terminal: bool) -> None:
        """Take an outcome: an operation (or ``None`` for "not found"), terminal or not."""

    def fail(self, error: BaseException) -> None:
        """Take the error that ends this caller's wait."""


class Signal(Protocol):
    """A one-shot wake-up: set once, awaited by one task."""

    def set(self) -> None: ...

    def wait(self) -> Awaitable[None]: ...


SignalFactory = Callable[[], Signal]


class _FutureSignal:
    """A one-shot wake-up for one waiting caller on asyncio: a bare future costs a tenth
    of the memory of an ``anyio.Event``, and every waiting caller holds one."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def wait(self) -> Awaitable[None]:
        # The future itself, not a coroutine awaiting it: one frame less per waiting caller.
        return self._future


def signal_factory() -> SignalFactory:
    """The cheapest one-shot wake-up of the running backend."""
    if sniffio.current_async_library() == "asyncio":
        # Bound to the running loop once, not looked up for every caller.
        return functools.partial(_FutureSignal, asyncio.get_running_loop())
    return anyio.Event
