"""Delivery to callers: one mailbox per caller, and the iterators that read them.

A :class:`Waiter` serves one ``wait`` (one ID, one outcome: the lean case, since a
service may have a hundred thousand of them); a :class:`Mailbox` serves ``wait_all``,
``as_completed`` and ``watch`` (many IDs; with ``events``, every change too).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Generic, NoReturn, TypeVar

import anyio
import anyio.lowlevel

from .._errors import OperationFailed, OperationNotFound
from .._models import AsyncOperation, OperationState
from ._backend import Key, Signal, SignalFactory
from ._records import ProgressEvent

__all__ = ["Block", "Completed", "Events", "Mailbox", "Waiter", "succeeded"]

_T = TypeVar("_T")

# An outcome as a caller reads it: (key, operation or None for "not found", the operation
# this caller was shown before for the key (watchers only), terminal?)
Outcome = tuple[Key, AsyncOperation | None, AsyncOperation | None, bool]


def succeeded(key: Key, operation: AsyncOperation | None) -> AsyncOperation:
    """``operation`` if it succeeded; else the error :meth:`Poller.wait` documents."""
    if operation is None:
        raise OperationNotFound(key[1], key[0])
    if operation.state is not OperationState.SUCCEEDED:
        raise OperationFailed(operation)
    return operation


class Waiter:
    """One ``wait``: one key, its one terminal outcome or an error."""

    __slots__ = ("_signal", "done", "error", "keys", "operation")

    events = False

    def __init__(self, key: Key, signal: SignalFactory) -> None:
        self.keys = (key,)
        self.done = False
        self.operation: AsyncOperation | None = None
        self.error: BaseException | None = None
        self._signal: Signal = signal()

    def deliver(self, key: Key, operation: AsyncOperation | None, terminal: bool) -> None:
        if terminal and not self.done:
            self.done = True
            self.operation = operation
            self._signal.set()

    def fail(self, error: BaseException) -> None:
        if not self.done and self.error is None:
            self.error = error
            self._signal.set()

    def settled(self) -> Awaitable[None]:
        """What to await until the outcome or the error is in: the signal itself, not a
        coroutine around it (a frame less per waiting caller). A checkpoint either way:
        cancelled meanwhile, the caller's await raises."""
        if not self.done and self.error is None:
            return self._signal.wait()
        # Settled before the call (a remembered outcome): still a cancellation point.
        return anyio.lowlevel.checkpoint_if_cancelled()

    def result(self) -> AsyncOperation:
        """Once :meth:`settled`: the succeeded operation, or the error
        :meth:`Poller.wait` documents."""
        if not self.done:
            assert self.error is not None
            raise self.error
        return succeeded(self.keys[0], self.operation)


class Mailbox:
    """One caller's interest in some keys, and the outcomes not yet consumed."""

    __slots__ = ("_signal", "_wakeup", "error", "events", "keys", "last", "open", "pending")

    def __init__(self, keys: list[Key], *, events: bool, signal: SignalFactory) -> None:
        self._signal = signal
        self.keys = keys
        self.events = events  # every change (watch) or terminal outcomes only
        self.open = set(keys)  # keys with no terminal outcome delivered yet
        self.pending: OrderedDict[Key, tuple[AsyncOperation | None, bool]] = OrderedDict()
        # Made on first use: only watchers need the last operation shown per key.
        self.last: dict[Key, AsyncOperation | None] | None = None
        self.error: BaseException | None = None
        self._wakeup: Signal | None = None

    def deliver(self, key: Key, operation: AsyncOperation | None, terminal: bool) -> None:
        if key not in self.open:
            return
        if terminal:
            self.open.discard(key)
        elif not self.events:
            return
        # Latest wins for a consumer that lags; a terminal outcome is never replaced
        # because nothing is delivered for a key after it.
        self.pending[key] = (operation, terminal)
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def next(self) -> Outcome:
        """The next pending outcome as (key, operation, previous, terminal)."""
        while not self.pending:
            if self.error is not None:
                raise self.error
            self._wakeup = self._signal()
            await self._wakeup.wait()
            self._wakeup = None
        await anyio.lowlevel.checkpoint_if_cancelled()
        key, (operation, terminal) = self.pending.popitem(last=False)
        if not self.events:
            return key, operation, None, terminal
        if self.last is None:
            self.last = {}
        if terminal:  # nothing comes after it: the last operation shown is let go
            previous = self.last.pop(key, None)
        else:
            previous = self.last.get(key)
            self.last[key] = operation
        return key, operation, previous, terminal

    @property
    def finished(self) -> bool:
        return not self.open and not self.pending


class _Iterator:
    __slots__ = ("_clock", "_deadline", "_mailbox")

    def __init__(
        self, mailbox: Mailbox, deadline: float | None, clock: Callable[[], float]
    ) -> None:
        self._mailbox = mailbox
        self._deadline = deadline
        self._clock = clock

    async def _next(self) -> Outcome:
        if self._mailbox.finished:
            raise StopAsyncIteration
        if self._deadline is None:
            return await self._mailbox.next()
        with anyio.fail_after(max(0.0, self._deadline - self._clock())):
            return await self._mailbox.next()


class Completed(_Iterator):
    """The iterator of :meth:`Poller.as_completed`."""

    def __aiter__(self) -> Completed:
        return self

    async def __anext__(self) -> AsyncOperation:
        key, operation, _, _ = await self._next()
        if operation is None:
            raise OperationNotFound(key[1], key[0])
        return operation


class Events(_Iterator):
    """The iterator of :meth:`Poller.watch`."""

    def __aiter__(self) -> Events:
        return self

    async def __anext__(self) -> ProgressEvent:
        key, operation, previous, terminal = await self._next()
        return ProgressEvent(
            operation_id=key[1],
            space_id=key[0],
            operation=operation,
            previous=previous,
            is_terminal=terminal,
        )


class Block(Generic[_T]):
    """What :meth:`Poller.watch` and :meth:`Poller.as_completed` return: a context manager
    (entering it subscribes; leaving it stops polling for this caller). Iterating it
    directly is a mistake, and its ``TypeError`` shows the right form."""

    __slots__ = ("_entered", "_item", "_manager", "_method", "_name")

    def __init__(
        self, manager: AbstractAsyncContextManager[_T], method: str, name: str, item: str
    ) -> None:
        self._manager = manager
        self._method = method
        self._name = name
        self._item = item
        self._entered = False

    async def __aenter__(self) -> _T:
        if self._entered:
            raise RuntimeError(
                f"this poller.{self._method}(...) block was already entered: call "
                f"poller.{self._method}(ids) again for another one"
            )
        self._entered = True
        return await self._manager.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._manager.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> NoReturn:
        raise TypeError(
            f"poller.{self._method}(...) is a context manager, not an iterator: use "
            f"'async with poller.{self._method}(ids) as {self._name}:' and then "
            f"'async for {self._item} in {self._name}:'"
        )
