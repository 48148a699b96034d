"""Dead servers and misuse (issue 9, items 8 and 9), on asyncio and trio.

What is proven here:

- against a closed port, every kind of caller (``wait``, ``wait_all``, ``watch``,
  ``as_completed``) gets the last error (a :class:`ConnectError`) once no status request
  of its space has succeeded for ``outage_timeout`` seconds, and not before; the Poller's
  block survives, the clock restarts for the next caller, and ``statistics()`` shows
  ``last_error`` and ``last_success``; ``outage_timeout=None`` waits on;
- an outage in one space fails only the callers of that space;
- a space that fails logs one WARNING, not one per batch, and one more when it recovers;
- a Poller used from another event loop (another thread's loop, or a second
  ``asyncio.run``) raises :class:`RuntimeError` at once, naming the fix;
- ``async for`` over ``watch()``/``as_completed()`` without ``async with`` raises a
  ``TypeError`` that shows the right form, before any request;
- nonsense arguments (``nan``, ``inf``, zero or negative counts and times) raise
  :class:`ValueError` at the call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest
from hostile import HostileServer, RawRequest, closed_port, respond_with

from asyncpoll import (
    APIError,
    AsyncOperation,
    ConnectError,
    Poller,
    PollInterval,
    RetryPolicy,
    Session,
)
from asyncpoll.testing import Faults, SimulatedServer

QUICK = PollInterval(initial=0.02, maximum=0.05)
FAST_RETRY = RetryPolicy(attempts=2, initial=0.001, maximum=0.01, timeout=1.0)
OUTAGE = 0.5


@asynccontextmanager
async def dead_poller(**options: Any) -> AsyncIterator[Poller]:
    """A Poller whose Session points at a loopback port with nothing listening."""
    options.setdefault("outage_timeout", OUTAGE)
    url = f"http://127.0.0.1:{closed_port()}"
    async with Session(url, token="tok", retry=FAST_RETRY, timeout=1.0) as session:
        async with Poller(session, interval=QUICK, **options) as poller:
            yield poller


async def failure_of(call: Callable[[], Awaitable[object]]) -> tuple[BaseException, float]:
    """Run ``call``, which must raise; return its error and how long it took."""
    started = anyio.current_time()
    with anyio.fail_after(10):
        try:
            await call()
        except Exception as exc:
            return exc, anyio.current_time() - started
    raise AssertionError("the call returned instead of raising")


@pytest.mark.anyio
async def test_a_dead_server_fails_every_caller_after_the_outage_timeout() -> None:
    async with dead_poller() as poller:
        failures: dict[str, tuple[BaseException, float]] = {}

        async def watch() -> None:
            async with poller.watch(["w1", "w2"]) as events:
                async for _ in events:
                    pass

        async def as_completed() -> None:
            async with poller.as_completed(["c1"]) as done:
                async for _ in done:
                    pass

        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "wait": lambda: poller.wait("a1"),
            "wait_all": lambda: poller.wait_all(["b1", "b2"]),
            "watch": watch,
            "as_completed": as_completed,
        }

        async def record(name: str) -> None:
            failures[name] = await failure_of(calls[name])

        async with anyio.create_task_group() as tg:
            for name in calls:
                tg.start_soon(record, name)

        assert set(failures) == set(calls)
        for name, (error, elapsed) in failures.items():
            assert isinstance(error, ConnectError), (name, error)
            # The clock starts with the first failing request, never before the caller.
            assert elapsed >= OUTAGE, (name, elapsed)
        stats = poller.statistics()
        assert isinstance(stats.last_error, ConnectError)
        assert stats.last_success is None
        assert stats.errors >= 2  # it retried before giving up
        assert stats.watched == 0

        # The block survives, and the next caller gets a fresh outage clock.
        error, elapsed = await failure_of(lambda: poller.wait("later"))
        assert isinstance(error, ConnectError)
        assert elapsed >= OUTAGE


@pytest.mark.anyio
async def test_outage_timeout_none_waits_for_the_server() -> None:
    async with dead_poller(outage_timeout=None) as poller:
        with anyio.move_on_after(3 * OUTAGE) as scope:
            await poller.wait("a1")
        assert scope.cancelled_caught
        stats = poller.statistics()
        assert stats.errors >= 2
        assert isinstance(stats.last_error, ConnectError)


@pytest.mark.anyio
async def test_a_recovered_server_clears_the_outage_and_logs_twice(
    server: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    op_id = server.add_operation(duration=0.0)
    server.faults = Faults(error_rate=1.0, error_status=503)
    caplog.set_level(logging.DEBUG, logger="asyncpoll")
    session = Session(server.url, token=server.token or "", retry=FAST_RETRY)
    async with session, Poller(session, interval=QUICK, outage_timeout=30) as poller:
        async with anyio.create_task_group() as tg:

            async def heal() -> None:
                # Statistics have no event to wait on: look every 10 ms.
                while poller.statistics().errors < 5:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                assert poller.statistics().last_error is not None
                server.faults = Faults()

            tg.start_soon(heal)
            with anyio.fail_after(10):
                operation = await poller.wait(op_id)
        assert operation.id == op_id
        stats = poller.statistics()
        assert stats.last_error is None
        assert stats.last_success is not None
        assert abs(stats.last_success - time.time()) < 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "will retry for up to 30 s" in warnings[0]
    assert "succeed again" in warnings[1]


@pytest.mark.anyio
async def test_an_outage_in_one_space_fails_only_that_space() -> None:
    def answer(request: RawRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        if "/spaces/spaceDOWN1/" in request.target:
            return 503, [], b'{"message": "down"}'
        body = [{"id": i, "state": "Running", "percentComplete": 1} for i in request.ids]
        return 200, [("Content-Type", "application/json")], orjson.dumps(body)

    with HostileServer(respond_with(answer)) as hostile:
        session = Session(hostile.url, token="tok", retry=FAST_RETRY)
        async with session, Poller(session, interval=QUICK, outage_timeout=OUTAGE) as poller:
            async with poller.watch(["up-1"], space_id="spaceUPUP1") as events:
                seen: list[AsyncOperation | None] = []
                error, _ = await failure_of(lambda: poller.wait("down-1", space_id="spaceDOWN1"))
                with anyio.fail_after(5):
                    async for event in events:
                        seen.append(event.operation)
                        break
            assert seen
            assert seen[0] is not None
            assert seen[0].percent_complete == 1
            # The healthy space was still polled after the other one's callers failed.
            assert poller.statistics().last_success is not None
    assert isinstance(error, APIError)
    assert error.status == 503


# -- misuse ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_poller_refuses_another_event_loop(
    server: SimulatedServer, anyio_backend: str
) -> None:
    errors: list[BaseException] = []

    def other_loop() -> None:
        async def use() -> None:
            for call in (
                lambda: poller.wait("a"),
                lambda: poller.wait_all(["a"]),
                lambda: poller.watch(["a"]).__aenter__(),
                lambda: poller.as_completed(["a"]).__aenter__(),
            ):
                try:
                    await call()
                except RuntimeError as exc:
                    errors.append(exc)

        anyio.run(use, backend=anyio_backend)

    session = Session(server.url, token=server.token or "")
    async with session, Poller(session, interval=QUICK) as poller:
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(other_loop)
        assert poller.statistics().watched == 0
    assert len(errors) == 4
    for error in errors:
        assert "event loop that entered it" in str(error)
        assert "create and enter a Poller inside each event loop" in str(error)
    assert server.requests == []


def test_a_poller_from_an_earlier_asyncio_run_raises_at_once(server: SimulatedServer) -> None:
    async def enter() -> Poller:
        session = Session(server.url, token=server.token or "")
        await session.__aenter__()
        poller = Poller(session)
        await poller.__aenter__()
        return poller

    async def use(poller: Poller) -> None:
        await poller.wait("a")

    poller = asyncio.run(enter())
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="event loop that entered it"):
        asyncio.run(use(poller))
    assert time.monotonic() - started < 2


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "form"), [("watch", "events"), ("as_completed", "done")])
async def test_iterating_without_async_with_shows_the_right_form(
    server: SimulatedServer, method: str, form: str
) -> None:
    session = Session(server.url, token=server.token or "")
    async with session, Poller(session) as poller:
        block = getattr(poller, method)(["a"])
        with pytest.raises(TypeError) as caught:
            async for _ in block:
                pass
        assert f"async with poller.{method}(ids) as {form}:" in str(caught.value)
        assert poller.statistics().watched == 0
    assert server.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["watch", "as_completed"])
async def test_entering_one_block_twice_says_so(server: SimulatedServer, method: str) -> None:
    operation_id = server.add_operation(duration=0.05)
    session = Session(server.url, token=server.token or "")
    async with session, Poller(session) as poller:
        block = getattr(poller, method)([operation_id])
        async with block as stream:
            async for _ in stream:
                pass
        again = rf"already entered: call poller.{method}\(ids\) again"
        with pytest.raises(RuntimeError, match=again):
            async with block:
                pass
        assert poller.statistics().watched == 0


@pytest.mark.parametrize(
    "options",
    [
        {"max_concurrent_requests": 0},
        {"outage_timeout": 0},
        {"outage_timeout": -1.0},
        {"outage_timeout": math.nan},
        {"outage_timeout": math.inf},
        {"not_found_grace": math.nan},
        {"not_found_grace": -1.0},
        {"coalesce_window": math.inf},
        {"terminal_memory": math.nan},
    ],
)
def test_nonsense_poller_arguments_raise_value_error(options: dict[str, float]) -> None:
    session = Session("http://127.0.0.1:9", token="tok")
    with pytest.raises(ValueError, match=next(iter(options))):
        Poller(session, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"initial": math.nan},
        {"initial": math.inf},
        {"initial": 0.0},
        {"maximum": math.nan},
        {"maximum": math.inf},
        {"multiplier": math.nan},
        {"jitter": math.nan},
        {"jitter": 1.0},
    ],
)
def test_nonsense_poll_intervals_raise_value_error(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        PollInterval(**options)


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [math.nan, -1.0, math.inf])
async def test_nonsense_wait_timeouts_raise_value_error(
    server: SimulatedServer, timeout: float
) -> None:
    session = Session(server.url, token=server.token or "")
    async with session, Poller(session) as poller:
        with pytest.raises(ValueError, match="timeout"):
            await poller.wait("a", timeout=timeout)
        with pytest.raises(ValueError, match="timeout"):
            await poller.wait_all(["a"], timeout=timeout)
        with pytest.raises(ValueError, match="timeout"):
            poller.watch(["a"], timeout=timeout)
        with pytest.raises(ValueError, match="timeout"):
            poller.as_completed(["a"], timeout=timeout)
    assert server.requests == []
