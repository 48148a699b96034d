"""The coalescing Poller, on asyncio and trio, against the simulator over loopback."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import asyncpoll
from asyncpoll import (
    AsyncOperation,
    OperationFailed,
    OperationNotFound,
    OperationState,
    Poller,
    PollInterval,
    ProgressEvent,
    RetryPolicy,
    Session,
)
from asyncpoll._poller._delivery import Mailbox
from asyncpoll._poller._poller import _SLICE
from asyncpoll.testing import Faults, SimulatedServer

pytestmark = pytest.mark.anyio

FAST = PollInterval(initial=0.01, maximum=0.05, multiplier=1.5, jitter=0.1)


@asynccontextmanager
async def open_poller(
    server: SimulatedServer, *, session_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> AsyncIterator[Poller]:
    kwargs.setdefault("interval", FAST)
    kwargs.setdefault("not_found_grace", 0.2)
    session_options: dict[str, Any] = {
        "token": server.token,
        "retry": RetryPolicy(initial=0.001, maximum=0.01, timeout=5.0),
    }
    session_options.update(session_kwargs or {})
    async with Session(server.url, **session_options) as session:
        async with Poller(session, **kwargs) as poller:
            yield poller


def assert_clean(poller: Poller) -> None:
    """Nothing tracked, nothing subscribed, nothing in flight."""
    stats = poller.statistics()
    assert stats.watched == 0
    assert poller._subscriptions == set()


# -- outcomes -----------------------------------------------------------------------------


async def test_wait_returns_succeeded_operation(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.05, created_resource_ids=["prog_1", "task_1"])
    async with open_poller(server) as poller:
        operation = await poller.wait(op_id)
        assert operation.state is OperationState.SUCCEEDED
        assert operation.created_resource_ids == ("prog_1", "task_1")
        assert operation.percent_complete == 100
        assert_clean(poller)


@pytest.mark.parametrize("outcome", ["failed", "canceled"])
async def test_wait_raises_operation_failed(server: SimulatedServer, outcome: str) -> None:
    op_id = server.add_operation(duration=0.03, outcome=outcome, error_message="Template gone")
    async with open_poller(server) as poller:
        with pytest.raises(OperationFailed) as info:
            await poller.wait(op_id)
        assert info.value.operation.id == op_id
        assert info.value.operation.is_terminal
        if outcome == "failed":
            assert "Template gone" in str(info.value)
            assert info.value.operation.state is OperationState.FAILED
        else:
            assert info.value.operation.state is OperationState.CANCELED
        assert_clean(poller)


async def test_wait_not_found_after_grace(server: SimulatedServer) -> None:
    async with open_poller(server, not_found_grace=0.1) as poller:
        with pytest.raises(OperationNotFound) as info:
            await poller.wait("no-such-operation")
        assert info.value.operation_id == "no-such-operation"
        assert_clean(poller)


async def test_eventually_visible_operation_is_found(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.05, visible_after=0.1)
    async with open_poller(server, not_found_grace=1.0) as poller:
        assert (await poller.wait(op_id)).state is OperationState.SUCCEEDED


async def test_wait_timeout(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=math.inf)
    async with open_poller(server) as poller:
        with pytest.raises(TimeoutError):
            await poller.wait(op_id, timeout=0.1)
        assert_clean(poller)


async def test_other_users_operations_are_not_found(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.01, user="bob")
    async with open_poller(server, not_found_grace=0.1) as poller:
        with pytest.raises(OperationNotFound):
            await poller.wait(op_id)


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ("revoke", asyncpoll.AuthenticationError),
        ("no-scope", asyncpoll.PermissionDeniedError),
        ("unknown-space", asyncpoll.SpaceNotFoundError),
    ],
)
async def test_session_errors_reach_every_waiter(
    server: SimulatedServer, setup: str, error: type[Exception]
) -> None:
    space = "default"
    token = server.token
    if setup == "revoke":
        assert token is not None
        server.revoke_token(token)
    elif setup == "no-scope":
        token = "scopeless-token"
        server.add_token(token, user="alice", scopes=())
    else:
        space = "nosuchspace1"
    async with open_poller(server, session_kwargs={"token": token}) as poller:
        outcomes: list[BaseException] = []

        async def waiter(op_id: str) -> None:
            try:
                await poller.wait(op_id, space_id=space)
            except Exception as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(waiter, f"op-{i}")
        assert len(outcomes) == 5
        assert all(isinstance(o, error) for o in outcomes)
        assert_clean(poller)


async def test_wait_all_returns_input_order_with_failures(server: SimulatedServer) -> None:
    ids = [
        server.add_operation(duration=0.09),
        server.add_operation(duration=0.01, outcome="failed"),
        server.add_operation(duration=0.05),
    ]
    async with open_poller(server) as poller:
        operations = await poller.wait_all([*ids, ids[0]])
        assert [op.id for op in operations] == [*ids, ids[0]]
        assert [op.state for op in operations] == [
            OperationState.SUCCEEDED,
            OperationState.FAILED,
            OperationState.SUCCEEDED,
            OperationState.SUCCEEDED,
        ]
        assert_clean(poller)


async def test_as_completed_yields_in_completion_order(server: SimulatedServer) -> None:
    slow = server.add_operation(duration=0.3)
    fast = server.add_operation(duration=0.02, outcome="failed")
    middle = server.add_operation(duration=0.15)
    async with open_poller(server) as poller:
        async with poller.as_completed([slow, fast, middle]) as done:
            seen = [op.id async for op in done]
        assert seen == [fast, middle, slow]
        assert_clean(poller)


async def test_as_completed_raises_not_found(server: SimulatedServer) -> None:
    async with open_poller(server, not_found_grace=0.05) as poller:
        async with poller.as_completed(["ghost-op"]) as done:
            with pytest.raises(OperationNotFound):
                await done.__anext__()
        assert_clean(poller)


async def test_bad_input_is_refused_before_any_request(server: SimulatedServer) -> None:
    async with open_poller(server) as poller:
        with pytest.raises(ValueError, match="empty"):
            await poller.wait("")
        with pytest.raises(ValueError, match="control"):
            await poller.wait("a\nb")
        with pytest.raises(ValueError, match="space_id"):
            await poller.wait("x", space_id="bad space")
        with pytest.raises(TypeError):
            await poller.wait_all("abc")
        assert server.requests == []
        assert_clean(poller)


async def test_poller_outside_async_with_raises(server: SimulatedServer) -> None:
    async with Session(server.url, token="t") as session:
        poller = Poller(session)
        with pytest.raises(RuntimeError, match="async with"):
            await poller.wait("x")


# -- watch --------------------------------------------------------------------------------


def check_event_stream(events: list[ProgressEvent], ids: list[str]) -> None:
    """Exactly one terminal event per ID, last; progress never goes backwards."""
    by_id: dict[str, list[ProgressEvent]] = {i: [] for i in ids}
    for event in events:
        by_id[event.operation_id].append(event)
    for op_id, stream in by_id.items():
        assert stream, f"no events for {op_id}"
        assert [e.is_terminal for e in stream] == [False] * (len(stream) - 1) + [True]
        assert stream[0].previous is None
        for before, after in itertools.pairwise(stream):
            assert after.previous == before.operation
        progress = [
            e.operation.percent_complete
            for e in stream
            if e.operation is not None and e.operation.percent_complete is not None
        ]
        assert progress == sorted(progress)


async def test_watch_events(server: SimulatedServer) -> None:
    ids = [
        server.add_operation(start_after=0.05, duration=0.3, progress_step=20),
        server.add_operation(duration=0.2, outcome="failed", progress_step=25),
    ]
    async with open_poller(server) as poller:
        async with poller.watch(ids) as stream:
            events = [event async for event in stream]
        check_event_stream(events, ids)
        states = [e.operation.state for e in events if e.operation is not None]
        assert OperationState.RUNNING in states
        assert len(events) >= 4  # first sight, some progress, two terminals
        terminal = {e.operation_id: e for e in events if e.is_terminal}
        first, second = terminal[ids[0]].operation, terminal[ids[1]].operation
        assert first is not None
        assert first.state is OperationState.SUCCEEDED
        assert second is not None
        assert second.state is OperationState.FAILED
        assert_clean(poller)


async def test_watch_reports_not_found_as_terminal_event(server: SimulatedServer) -> None:
    real = server.add_operation(duration=0.02)
    async with open_poller(server, not_found_grace=0.05) as poller:
        async with poller.watch([real, "ghost-id"]) as stream:
            events = [event async for event in stream]
        check_event_stream(events, [real, "ghost-id"])
        ghost = [e for e in events if e.operation_id == "ghost-id"]
        assert len(ghost) == 1
        assert ghost[0].not_found
        assert ghost[0].is_terminal


async def test_watch_ignores_progress_that_goes_backwards(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=math.inf)
    server.set_operation(op_id, state="Running", percent_complete=60)
    async with open_poller(server) as poller:
        async with poller.watch([op_id]) as stream:
            first = await stream.__anext__()
            assert first.operation is not None
            assert first.operation.percent_complete == 60
            # A lagging replica answers with older progress, then the truth moves on.
            server.set_operation(op_id, state="Running", percent_complete=30)
            await anyio.sleep(0.1)
            server.set_operation(op_id, state="Succeeded", percent_complete=100)
            rest = [event async for event in stream]
        check_event_stream([first, *rest], [op_id])
        assert [e.operation.percent_complete for e in rest if e.operation] == [100]


async def test_slow_watcher_gets_merged_events_and_never_slows_others(
    server: SimulatedServer,
) -> None:
    op_id = server.add_operation(duration=0.4, progress_step=5)
    other = server.add_operation(duration=0.2)
    async with open_poller(server) as poller:
        async with poller.watch([op_id]) as slow:
            # The slow watcher does not read while the operation runs to completion...
            assert (await poller.wait(other, timeout=5)).state is OperationState.SUCCEEDED
            await poller.wait(op_id, timeout=5)
            events = [event async for event in slow]
        # ...and then sees at most one pending event: the terminal one, never dropped.
        assert len(events) == 1
        assert events[0].is_terminal
        assert events[0].operation is not None
        assert events[0].operation.state is OperationState.SUCCEEDED


async def test_watch_timeout(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=math.inf)
    async with open_poller(server) as poller:
        with pytest.raises(TimeoutError):
            async with poller.watch([op_id], timeout=0.1) as stream:
                async for _ in stream:
                    pass
        assert_clean(poller)


# -- sharing and efficiency -----------------------------------------------------------------


def ids_per_request(server: SimulatedServer) -> list[int]:
    return [len(r.ids) for r in server.requests]


async def test_first_round_is_minimal_for_wait_all(server: SimulatedServer) -> None:
    ids = [server.add_operation(duration=math.inf) for _ in range(250)]
    slow = PollInterval(initial=30.0, maximum=30.0)
    async with open_poller(server, interval=slow) as poller:
        with anyio.move_on_after(0.5):
            await poller.wait_all(ids)
        assert sorted(ids_per_request(server)) == [50, 100, 100]
        polled = [i for r in server.requests for i in r.ids]
        assert sorted(polled) == sorted(ids)
        assert_clean(poller)


async def test_first_round_is_minimal_for_concurrent_waits(server: SimulatedServer) -> None:
    ids = [server.add_operation(duration=math.inf) for _ in range(230)]
    slow = PollInterval(initial=30.0, maximum=30.0)
    async with open_poller(server, interval=slow) as poller:
        with anyio.move_on_after(0.5):
            async with anyio.create_task_group() as tg:
                for op_id in ids:
                    tg.start_soon(poller.wait, op_id)
        assert sorted(ids_per_request(server)) == [30, 100, 100]
        assert_clean(poller)


async def test_shared_ids_are_polled_once(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.1)
    async with open_poller(server) as poller:
        results: list[AsyncOperation] = []

        async def waiter() -> None:
            results.append(await poller.wait(op_id))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(waiter)
        assert len(results) == 20
        assert all(r.id == op_id for r in results)
        assert all(r.ids == (op_id,) for r in server.requests)
        # One poll per round, not one per caller.
        assert len(server.requests) < 20


async def test_requests_stay_full(server: SimulatedServer) -> None:
    ids = server.add_operations(600, window=1.0)
    async with open_poller(server, interval=PollInterval(0.02, 0.05, jitter=0.1)) as poller:
        async with anyio.create_task_group() as tg:
            for op_id in ids:
                tg.start_soon(poller.wait_all, [op_id])
    completions = sorted(server.completion_time(i) or 0.0 for i in ids)
    # While at least max_batch_size operations are unfinished, requests carry >= 90%.
    busy_until = completions[-100]
    busy = [len(r.ids) for r in server.requests if r.time < busy_until]
    assert busy
    assert sum(busy) / (100 * len(busy)) >= 0.9


async def test_late_wait_is_answered_from_memory(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.02)
    async with open_poller(server) as poller:
        first = await poller.wait(op_id)
        sent = len(server.requests)
        again = await poller.wait(op_id)
        assert again.state is OperationState.SUCCEEDED
        assert len(server.requests) == sent
        assert poller.statistics().remembered == 1
    # Kept packed, rebuilt whole: the same fields, result and raw entry as first seen.
    assert again == first
    assert again.created_resource_ids == first.created_resource_ids != ()
    assert again.raw == first.raw == server.operation_json(op_id)


@pytest.mark.parametrize("how", ["wait", "as_completed"])
async def test_many_callers_are_joined_a_slice_per_turn(server: SimulatedServer, how: str) -> None:
    # More IDs than one slice, arriving at once (from as many tasks, or in one call): the
    # Poller joins them in slices, and other tasks run between two (no stalled loop).
    total = 2 * _SLICE + 1
    ids = server.add_operations(total, window=1e6)
    seen: list[int] = []
    async with open_poller(server, interval=PollInterval(60, 60)) as poller:
        entries = poller._schedule.entries
        joined = anyio.Event()

        async def probe() -> None:
            while len(entries) < total:
                seen.append(len(entries))
                await anyio.lowlevel.checkpoint()
            joined.set()

        async def completing() -> None:
            async with poller.as_completed(ids) as done:
                async for _ in done:
                    pass

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe)
                if how == "wait":
                    for op_id in ids:
                        tg.start_soon(poller.wait, op_id)
                else:
                    tg.start_soon(completing)
                await joined.wait()
                tg.cancel_scope.cancel()
        assert_clean(poller)
        assert not poller._arriving
    assert any(0 < n < total for n in seen), seen[-3:]


async def test_waits_cancelled_before_they_are_joined_leave_nothing(
    server: SimulatedServer,
) -> None:
    ids = server.add_operations(50, window=1e6)
    async with open_poller(server) as poller:
        async with anyio.create_task_group() as tg:
            for op_id in ids:
                tg.start_soon(poller.wait, op_id)
            await anyio.lowlevel.checkpoint()  # each has run its first step, or is about to
            tg.cancel_scope.cancel()
        await anyio.sleep(0.05)  # turns for the polling loop, which skips them
        assert_clean(poller)
        assert not poller._arriving
        sent = len(server.requests)
        await anyio.sleep(0.2)  # several intervals: nobody waits, nothing is polled
        assert len(server.requests) == sent


async def test_a_watcher_lets_go_of_each_operation_at_its_terminal_event(
    server: SimulatedServer,
) -> None:
    ids = server.add_operations(20, window=0.1, progress_step=10)
    async with open_poller(server) as poller, poller.watch(ids) as events:
        [mailbox] = poller._subscriptions
        assert isinstance(mailbox, Mailbox)
        seen: list[ProgressEvent] = []
        async for event in events:
            seen.append(event)
        check_event_stream(seen, ids)
        # Every ID has ended: the last operation shown for each is no longer held.
        assert mailbox.last == {}


async def test_terminal_memory_expires(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.01)
    async with open_poller(server, terminal_memory=0.05) as poller:
        await poller.wait(op_id)
        await anyio.sleep(0.1)
        sent = len(server.requests)
        await poller.wait(op_id)
        assert len(server.requests) > sent


async def test_retry_after_on_success_is_a_floor(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=math.inf)
    server.faults = Faults(success_retry_after=0.3)
    async with open_poller(server) as poller:
        with anyio.move_on_after(0.75):
            await poller.wait(op_id)
    times = [r.time for r in server.requests]
    assert len(times) >= 2
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.29


async def test_interval_backs_off_while_unchanged(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=math.inf)
    server.set_operation(op_id, state="Running", percent_complete=10)
    backoff = PollInterval(initial=0.01, maximum=0.16, multiplier=2.0, jitter=0.0)
    async with open_poller(server, interval=backoff) as poller:
        with anyio.move_on_after(0.6):
            await poller.wait(op_id)
    times = [r.time for r in server.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Intervals grow (0.02, 0.04, 0.08, 0.16, 0.16 ...) instead of staying at 0.01.
    assert len(times) <= 10
    assert max(gaps) >= 0.15


async def test_polls_due_close_together_share_one_wake(server: SimulatedServer) -> None:
    """Polls due within a quarter of the initial interval's jitter of the soonest are sent
    with it, in one burst: one wake-up per poll costs more CPU (issue 10)."""
    ids = [server.add_operation(duration=math.inf) for _ in range(40)]
    for op_id in ids:
        server.set_operation(op_id, state="Running", percent_complete=10)
    # Each single-ID batch draws its own jitter: second polls due over [0.2, 1.8] s after
    # the first, sent late by at most the slack (1.0 * 0.8 / 4 = 0.2 s) so that they group.
    spread = PollInterval(initial=1.0, maximum=1.0, multiplier=1.0, jitter=0.8)
    async with open_poller(server, interval=spread, session_kwargs={"max_batch_size": 1}) as poller:
        with anyio.move_on_after(4.0):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poller.wait_all, ids)  # never done: they keep running
                while True:
                    polled = [r.ids[0] for r in server.requests]
                    if all(polled.count(op_id) >= 2 for op_id in ids):
                        tg.cancel_scope.cancel()
                    await anyio.sleep(0.02)
    first: dict[str, float] = {}
    second: dict[str, float] = {}
    for request in server.requests:
        (first if request.ids[0] not in first else second).setdefault(request.ids[0], request.time)
    assert set(second) == set(ids), "every ID was polled twice"
    for op_id in ids:
        gap = second[op_id] - first[op_id]
        assert 0.2 <= gap <= 1.8 + 0.2 + 0.1, gap  # its jittered interval, plus the slack
    # Bursts: second polls less than 30 ms apart were sent at one wake-up. At most one
    # burst per slack-long stretch of the 1.6 s spread, plus one (9); 40 separate draws
    # over 1.6 s would make about 19.
    times = sorted(second.values())
    bursts = 1 + sum(1 for a, b in itertools.pairwise(times) if b - a > 0.03)
    assert bursts <= 9, times
    assert poller.statistics().watched == 0


async def test_slack_never_delays_a_first_poll(server: SimulatedServer) -> None:
    """The slack (here 10 * 0.9 / 4 = 2.25 s) delays only polls that were due anyway:
    a new ID, and a watcher joining a known one, are polled at once."""
    done = server.add_operation(duration=0.0)
    running = server.add_operation(duration=math.inf)
    wide = PollInterval(initial=10.0, maximum=10.0, multiplier=1.0, jitter=0.9)
    async with open_poller(server, interval=wide) as poller:
        with anyio.fail_after(1.0):
            operation = await poller.wait(done)
        assert operation.state is OperationState.SUCCEEDED
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.wait_all, [running])  # seen once, then due in 1-19 s
            for _ in range(100):  # its first poll, within a second
                if any(running in r.ids for r in server.requests):
                    break
                await anyio.sleep(0.01)
            assert any(running in r.ids for r in server.requests)
            with anyio.fail_after(1.0):
                async with poller.watch([running]) as events:
                    async for event in events:  # shown at once: no model kept before
                        assert event.operation is not None
                        break
            tg.cancel_scope.cancel()


async def test_max_concurrent_requests_is_respected(server: SimulatedServer) -> None:
    ids = [server.add_operation(duration=0.05) for _ in range(40)]
    server.faults = Faults(latency=(0.02, 0.04))
    in_flight = 0
    peak = 0

    class Counting:
        def __init__(self, inner: asyncpoll.AsyncTransport) -> None:
            self.inner = inner

        async def handle_request(self, request: asyncpoll.Request) -> asyncpoll.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await self.inner.handle_request(request)
            finally:
                in_flight -= 1

        async def aclose(self) -> None:
            await self.inner.aclose()

    inner = asyncpoll.HttpxTransport()
    async with open_poller(
        server,
        session_kwargs={"transport": Counting(inner), "max_batch_size": 2},
        max_concurrent_requests=3,
    ) as poller:
        await poller.wait_all(ids)
    assert peak == 3


# -- interest and cancellation ------------------------------------------------------------


async def test_cancelling_one_caller_leaves_others_alone(server: SimulatedServer) -> None:
    # Long enough to outlast the set-up (an httpx client builds its TLS context) and both
    # 0.05 s windows on a busy machine.
    op_id = server.add_operation(duration=1.0)
    async with open_poller(server) as poller:
        with anyio.move_on_after(0.05):
            await poller.wait(op_id)
        result: list[AsyncOperation] = []
        async with anyio.create_task_group() as tg:

            async def keep() -> None:
                result.append(await poller.wait(op_id))

            tg.start_soon(keep)
            with anyio.move_on_after(0.05):
                await poller.wait(op_id)
            assert poller.statistics().watched == 1
        assert result[0].state is OperationState.SUCCEEDED
        assert_clean(poller)


async def test_interest_is_counted(server: SimulatedServer) -> None:
    ids = [server.add_operation(duration=math.inf) for _ in range(3)]
    async with open_poller(server) as poller:
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.wait_all, ids)
            tg.start_soon(poller.wait, ids[0])
            await anyio.sleep(0.05)
            assert poller.statistics().watched == 3
            tg.cancel_scope.cancel()
        assert_clean(poller)
        # Nothing is polled any more once everyone has left.
        await anyio.sleep(0.05)
        sent = len(server.requests)
        await anyio.sleep(0.1)
        assert len(server.requests) == sent


@pytest.mark.parametrize("delay", [0.0, 0.0005, 0.002, 0.006, 0.012, 0.03, 0.06])
@pytest.mark.parametrize("kind", ["wait", "wait_all", "watch", "as_completed"])
async def test_cancellation_at_any_point_leaves_nothing(
    server: SimulatedServer, delay: float, kind: str
) -> None:
    ids = [server.add_operation(duration=0.04), server.add_operation(duration=0.05)]
    server.faults = Faults(latency=(0.0, 0.01))
    async with open_poller(server) as poller:
        calls: dict[str, Callable[[], Any]] = {
            "wait": lambda: poller.wait(ids[0]),
            "wait_all": lambda: poller.wait_all(ids),
        }

        async def consume() -> None:
            if kind in calls:
                await calls[kind]()
                return
            context = poller.watch(ids) if kind == "watch" else poller.as_completed(ids)
            async with context as stream:
                async for _ in stream:
                    await anyio.lowlevel.checkpoint()

        with anyio.move_on_after(delay):
            await consume()
        assert_clean(poller)
        # The poller still serves others normally afterwards.
        assert len(await poller.wait_all(ids)) == 2
        assert_clean(poller)


async def test_closing_poller_fails_waiters_and_stops_polling(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=math.inf)
    outcome: list[BaseException] = []
    async with Session(server.url, token=server.token or "") as session:
        async with anyio.create_task_group() as tg:
            poller = Poller(session, interval=FAST)
            async with poller:

                async def waiter() -> None:
                    try:
                        await poller.wait(op_id)
                    except RuntimeError as exc:
                        outcome.append(exc)

                tg.start_soon(waiter)
                await anyio.sleep(0.05)
        assert len(outcome) == 1
        assert "closed" in str(outcome[0])
        # A request sent just before the close may reach the server's log a moment later.
        await anyio.sleep(0.05)
        sent = len(server.requests)
        await anyio.sleep(0.2)
        assert len(server.requests) == sent


async def test_transient_failures_keep_callers_waiting(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.1)
    server.faults = Faults(error_rate=1.0)
    async with open_poller(
        server, session_kwargs={"retry": RetryPolicy(attempts=2, initial=0.001, maximum=0.002)}
    ) as poller:
        async with anyio.create_task_group() as tg:

            async def heal() -> None:
                await anyio.sleep(0.15)
                server.faults = Faults()

            tg.start_soon(heal)
            operation = await poller.wait(op_id, timeout=5)
        assert operation.state is OperationState.SUCCEEDED
        stats = poller.statistics()
        assert stats.errors >= 1
        assert stats.retries >= 1


async def test_statistics_counts(server: SimulatedServer) -> None:
    ids = server.add_operations(30, window=0.1)
    async with open_poller(server) as poller:
        await poller.wait_all(ids)
        stats = poller.statistics()
    assert stats.requests == len(server.requests)
    assert stats.operations_polled == sum(len(r.ids) for r in server.requests)
    assert stats.watched == 0
    assert stats.in_flight == 0
    assert stats.remembered == 30


async def test_spaces_are_polled_separately(server: SimulatedServer) -> None:
    server.add_space("team-space-1")
    a = server.add_operation(duration=0.02)
    b = server.add_operation(duration=0.02, space_id="team-space-1")
    async with open_poller(server) as poller, anyio.create_task_group() as tg:
        tg.start_soon(poller.wait, a)
        tg.start_soon(lambda: poller.wait(b, space_id="team-space-1"))
    spaces = {r.space_id: set(r.ids) for r in server.requests}
    assert spaces["default"] == {a}
    assert spaces["team-space-1"] == {b}


def test_poll_interval_validation() -> None:
    with pytest.raises(ValueError, match="maximum"):
        PollInterval(initial=2.0, maximum=1.0)
    with pytest.raises(ValueError, match="multiplier"):
        PollInterval(multiplier=0.5)
    with pytest.raises(ValueError, match="jitter"):
        PollInterval(jitter=1.0)


async def test_errors_inside_the_block_come_out_unwrapped(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.01, outcome="failed")
    with pytest.raises(OperationFailed):
        async with open_poller(server) as poller:
            await poller.wait(op_id)


async def test_repr_names_the_package_and_hides_the_token(server: SimulatedServer) -> None:
    async with open_poller(server, session_kwargs={"token": "canary-5ecr3t"}) as poller:
        text = repr(poller)
        assert text.startswith("<asyncpoll.Poller")
        assert "canary-5ecr3t" not in text


# -- the Session seam ---------------------------------------------------------------------


async def test_two_pollers_on_one_session_count_their_own_requests(
    server: SimulatedServer,
) -> None:
    first_ids = server.add_operations(5, window=0.05)
    second_ids = server.add_operations(5, window=0.05)
    async with Session(server.url, token=server.token or "") as session:
        async with Poller(session, interval=FAST) as one, Poller(session, interval=FAST) as two:
            before = len(server.requests)
            await one.wait_all(first_ids, timeout=10)
            one_sent = one.statistics().requests
            assert two.statistics().requests == 0
            await two.wait_all(second_ids, timeout=10)
            assert one.statistics().requests == one_sent
            assert two.statistics().requests > 0
            total = one.statistics().requests + two.statistics().requests
            assert session.statistics().requests == total
            assert len(server.requests) - before == total


async def test_wait_takes_operation_id_by_keyword(server: SimulatedServer) -> None:
    operation_id = server.add_operation(duration=0.02)
    async with open_poller(server) as poller:
        operation = await poller.wait(operation_id=operation_id, timeout=10)
        assert operation.id == operation_id


async def test_many_ids_in_one_call_are_registered_in_slices(server: SimulatedServer) -> None:
    ids = server.add_operations(12_000, window=0.0)
    async with open_poller(server) as poller:
        with anyio.move_on_after(0):  # cancelled at the first turn given back to the loop
            async with poller.as_completed(ids) as done:
                async for _ in done:
                    pass
        assert_clean(poller)  # a registration cut short leaves nothing behind
        with anyio.fail_after(30):
            async with poller.as_completed(ids) as done:
                seen = [operation.id async for operation in done]
        assert sorted(seen) == sorted(ids)
        assert_clean(poller)
