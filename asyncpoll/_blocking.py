"""The blocking face of the Poller, for threads: one event loop serves every thread.

A :class:`BlockingPoller` runs one asyncio event loop in a background thread (anyio's
blocking portal). That loop owns one :class:`Session` and one :class:`Poller`; each
blocking call runs as a task there, so the calls of many threads coalesce into the same
batched requests as the calls of many tasks would. Nothing here polls: this module only
carries calls into the loop and their outcomes (or errors) back out.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from functools import partial
from types import TracebackType
from typing import Any, Generic, NoReturn, TypeVar

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._models import AsyncOperation
from ._poller import Poller, PollerStatistics, ProgressEvent
from ._poller._poller import closed_error
from ._session import DEFAULT_BASE_URL, Session, TokenProvider

__all__ = ["BlockingPoller"]

_T = TypeVar("_T")

# Keywords BlockingPoller takes itself; every other keyword of Session's and Poller's
# constructors is an option passed on to the one that takes it.
_OWN = frozenset({"self", "session", "base_url", "token", "space_id"})
_SESSION_OPTIONS = frozenset(inspect.signature(Session.__init__).parameters) - _OWN
_POLLER_OPTIONS = frozenset(inspect.signature(Poller.__init__).parameters) - _OWN


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as (Session's, Poller's); :class:`TypeError` for any other name."""
    unknown = sorted(set(options) - _SESSION_OPTIONS - _POLLER_OPTIONS)
    if unknown:
        known = ", ".join(sorted(_SESSION_OPTIONS | _POLLER_OPTIONS))
        raise TypeError(f"BlockingPoller() got unexpected options {unknown}; it takes {known}")
    session = {k: v for k, v in options.items() if k in _SESSION_OPTIONS}
    poller = {k: v for k, v in options.items() if k in _POLLER_OPTIONS}
    return session, poller


def _token_provider(token: str | Callable[[], str]) -> str | TokenProvider:
    """What the Session takes for ``token``: a string as it is; a sync callable as an
    async provider that calls it in a worker thread (it may block on a network call, and
    the loop serves every thread)."""
    if isinstance(token, str):
        return token
    if inspect.iscoroutinefunction(token) or not callable(token):
        raise TypeError(
            "token must be a str or a plain (not async) zero-argument callable returning one"
        )

    async def provider() -> str:
        # Abandoned on cancellation, so that Session's bound on the call (its timeout)
        # holds even while the callable blocks.
        return await anyio.to_thread.run_sync(token, abandon_on_cancel=True)

    return provider


@asynccontextmanager
async def _serving(session: Session, poller: Poller) -> AsyncIterator[None]:
    """The Session and the Poller, open for the life of the loop thread."""
    threading.current_thread().name = "asyncpoll-BlockingPoller"
    async with session, poller:
        yield


async def _next_or_none(iterator: AsyncIterator[_T]) -> _T | None:
    # The end is returned as None (no item is None), not raised through the portal.
    return await anext(iterator, None)


class BlockingPoller:
    """A :class:`Poller` for threads: its methods block the calling thread.

    Use it as ``with BlockingPoller(token=...) as poller:`` (or call :meth:`close` when
    done). Making it starts one event loop in a background thread, which opens one
    :class:`Session` and one :class:`Poller`; every thread's call runs there, so calls
    from many threads share batched requests exactly as calls from many tasks do. The
    methods take the arguments of the async ones and return and raise the same.

    ``base_url``, ``token`` and ``space_id`` are the Session's. ``token`` is a string or
    a zero-argument (sync) callable returning the current token, called in a worker
    thread on first use and after a 401. ``options`` go to the Session (``timeout``,
    ``retry``, ``transport``, ``endpoint``, ``allow_insecure_http``, ``max_batch_size``,
    ``max_url_length``, ``max_response_size``, ``max_connections``) or to the Poller
    (``interval``, ``max_concurrent_requests``, ``not_found_grace``,
    ``coalesce_window``, ``terminal_memory``, ``outage_timeout``). A ``transport`` is
    used from the loop thread.

    Raises :class:`TypeError` for an unknown option and :class:`ValueError` or
    :class:`TypeError` for a bad value, before any thread starts. Once closed, every
    thread still waiting, and every later call, raises
    ``RuntimeError("the Poller was closed")``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        token: str | Callable[[], str],
        space_id: str = "default",
        **options: Any,
    ) -> None:
        session_options, poller_options = _split_options(options)
        self._session = Session(
            base_url, token=_token_provider(token), space_id=space_id, **session_options
        )
        self._poller = Poller(self._session, **poller_options)
        self._closed = False
        self._close_lock = threading.Lock()
        self._portal_manager = start_blocking_portal("asyncio")
        self._portal: BlockingPortal = self._portal_manager.__enter__()
        self._serving = self._portal.wrap_async_context_manager(
            _serving(self._session, self._poller)
        )
        try:
            self._serving.__enter__()
        except BaseException:
            self._closed = True
            self._stop_loop()
            raise

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<asyncpoll.BlockingPoller{state} session={self._session!r}>"

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> BlockingPoller:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the Poller and the Session, end the loop thread and wait for it.

        Every thread still waiting raises ``RuntimeError("the Poller was closed")``;
        open :meth:`watch` and :meth:`as_completed` blocks end too. Calling it again
        does nothing (a second caller returns once the first has finished closing).
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            try:
                # In the loop: the Poller fails every caller still waiting, then the
                # Session closes its connections.
                self._serving.__exit__(None, None, None)
            finally:
                self._stop_loop()

    def _stop_loop(self) -> None:
        # Cancelled, not awaited: tasks left are watch/as_completed blocks that a thread
        # has not left yet (each unsubscribes as it is cancelled).
        try:
            self._portal.call(self._portal.stop, True)
        finally:
            self._portal_manager.__exit__(None, None, None)  # joins the loop thread

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error()

    # -- calls into the loop ------------------------------------------------------------

    def _call(self, func: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``func()`` in the loop and return its result (or raise its error)."""
        self._check_open()

        async def guarded() -> _T:
            # A call that reaches the loop after close() began never subscribes.
            self._check_open()
            return await func()

        with self._closing_errors():
            future = self._portal.start_task_soon(guarded)
            try:
                return future.result()
            except BaseException:
                # A KeyboardInterrupt (or another exception raised in this thread) while
                # waiting: the task is cancelled in the loop, where its interest ends as
                # for any cancelled caller; the loop carries on serving the others.
                future.cancel()
                raise

    @contextmanager
    def _closing_errors(self) -> Iterator[None]:
        """Turns what a call meets while this BlockingPoller closes (a portal no longer
        running, a task cancelled by the loop's end, the Poller's own closed error) into
        a fresh closed error for this thread."""
        try:
            yield
        except (RuntimeError, concurrent.futures.CancelledError):
            if self._closed:
                raise closed_error() from None
            raise

    # -- public API ---------------------------------------------------------------------

    def wait(
        self, operation_id: str, *, space_id: str | None = None, timeout: float | None = None
    ) -> AsyncOperation:
        """Block until ``operation_id`` is terminal and return it if it succeeded.

        As :meth:`Poller.wait`: raises :class:`OperationFailed` for a failed or canceled
        operation, :class:`OperationNotFound` if it stayed absent past
        ``not_found_grace``, :class:`TimeoutError` after ``timeout`` seconds, the
        Session's errors, :class:`ValueError` for bad arguments, and
        ``RuntimeError("the Poller was closed")`` once closed.
        """
        return self._call(
            partial(self._poller.wait, operation_id, space_id=space_id, timeout=timeout)
        )

    def wait_all(
        self, ids: Iterable[str], *, space_id: str | None = None, timeout: float | None = None
    ) -> list[AsyncOperation]:
        """Block until every operation of ``ids`` is terminal; return them in input order.

        As :meth:`Poller.wait_all`: failed and canceled operations are returned, not
        raised; raises :class:`OperationNotFound`, :class:`TimeoutError` after
        ``timeout`` seconds, the Session's errors, and the closed error once closed.
        """
        return self._call(partial(self._poller.wait_all, ids, space_id=space_id, timeout=timeout))

    def get_operations(
        self, ids: Iterable[str], *, space_id: str | None = None
    ) -> list[AsyncOperation]:
        """One batched status query of ``ids``, as :meth:`Session.get_operations`.

        Returns the operations in the order the server returned them (IDs it did not
        return are absent); raises :class:`ValueError` or :class:`TypeError` for bad
        IDs, the Session's errors after retries, and the closed error once closed.
        """
        return self._call(partial(self._session.get_operations, ids, space_id=space_id))

    def as_completed(
        self, ids: Iterable[str], *, space_id: str | None = None, timeout: float | None = None
    ) -> AbstractContextManager[Iterator[AsyncOperation]]:
        """Terminal operations of ``ids`` in the order they complete::

            with poller.as_completed(ids) as done:
                for operation in done:
                    ...

        As :meth:`Poller.as_completed`: failed and canceled operations are yielded;
        iterating raises :class:`OperationNotFound`, :class:`TimeoutError` once
        ``timeout`` seconds have passed since entering, and the Session's errors. Bad
        arguments raise at the call. Leaving the block stops polling for this caller.
        """

        async def block() -> AbstractAsyncContextManager[AsyncIterator[AsyncOperation]]:
            return self._poller.as_completed(ids, space_id=space_id, timeout=timeout)

        return _Stream(self, self._call(block), "as_completed", "done", "operation")

    def watch(
        self, ids: Iterable[str], *, space_id: str | None = None, timeout: float | None = None
    ) -> AbstractContextManager[Iterator[ProgressEvent]]:
        """Progress events of ``ids`` until every one is terminal::

            with poller.watch(ids) as events:
                for event in events:
                    ...

        As :meth:`Poller.watch`: one event at first sight, one per change, exactly one
        terminal event per operation; iterating raises :class:`TimeoutError` once
        ``timeout`` seconds have passed since entering, and the Session's errors. Bad
        arguments raise at the call. Leaving the block stops polling for this caller.
        """

        async def block() -> AbstractAsyncContextManager[AsyncIterator[ProgressEvent]]:
            return self._poller.watch(ids, space_id=space_id, timeout=timeout)

        return _Stream(self, self._call(block), "watch", "events", "event")

    def statistics(self) -> PollerStatistics:
        """A snapshot of what the Poller tracks and has sent (also after close)."""

        async def snapshot() -> PollerStatistics:
            # Taken in the loop, so that its numbers agree with each other.
            return self._poller.statistics()

        try:
            return self._call(snapshot)
        except RuntimeError:
            if not self._closed:
                raise
        return self._poller.statistics()  # the loop is gone: nothing changes it now


class _Stream(AbstractContextManager[Iterator[_T]], Generic[_T]):
    """What :meth:`BlockingPoller.watch` and :meth:`BlockingPoller.as_completed` return:
    entering subscribes (in the loop), leaving unsubscribes; iterating it directly is a
    mistake, and its ``TypeError`` shows the right form."""

    def __init__(
        self,
        owner: BlockingPoller,
        block: AbstractAsyncContextManager[AsyncIterator[_T]],
        method: str,
        name: str,
        item: str,
    ) -> None:
        self._owner = owner
        self._block = block
        self._form = (method, name, item)
        self._manager: AbstractContextManager[AsyncIterator[_T]] | None = None

    def __enter__(self) -> Iterator[_T]:
        if self._manager is not None:
            raise RuntimeError(f"poller.{self._form[0]}(...) can be entered only once")
        owner = self._owner
        owner._check_open()
        with owner._closing_errors():
            manager = owner._portal.wrap_async_context_manager(self._block)
            iterator = manager.__enter__()
        self._manager = manager
        return _Iterator(self, iterator)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        manager, self._manager = self._manager, None
        if manager is None or self._owner._closed:
            return  # closing ended the block in the loop already
        try:
            # Never this thread's exception: thrown into the loop, a KeyboardInterrupt
            # would unwind code of the loop thread. The block only needs to end.
            manager.__exit__(None, None, None)
        except (RuntimeError, concurrent.futures.CancelledError):
            if not self._owner._closed:
                raise

    @property
    def open(self) -> bool:
        return self._manager is not None

    def __iter__(self) -> NoReturn:
        method, name, item = self._form
        raise TypeError(
            f"poller.{method}(...) is a context manager, not an iterator: use "
            f"'with poller.{method}(ids) as {name}:' and then 'for {item} in {name}:'"
        )


class _Iterator(Iterator[_T]):
    """A plain iterator over one block's async iterator, pulled through the portal."""

    def __init__(self, stream: _Stream[_T], iterator: AsyncIterator[_T]) -> None:
        self._stream = stream
        self._iterator = iterator

    def __next__(self) -> _T:
        if not self._stream.open:
            raise RuntimeError("iterate inside the 'with' block that gave this iterator")
        item = self._stream._owner._call(partial(_next_or_none, self._iterator))
        if item is None:
            raise StopIteration
        return item
