"""Fleet members in one process, on asyncio and on trio, against a real redis-server.

Each member is a Poller with its own Session, as separate processes would have; the
multi-process cases (SIGKILL, Redis restarts, CLIENT KILL, garbage) are in
tests/test_fleet.py. Here: who polls, what callers get, and what is left in Redis.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
from hostile import closed_port

import asyncpoll
from asyncpoll.testing import SimulatedServer

pytestmark = pytest.mark.anyio

FAST = asyncpoll.PollInterval(initial=0.1, maximum=0.1, multiplier=1.0)
LEASE = 0.6
TOKEN = "test-token"  # the simulator's default


def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def members(
    server: SimulatedServer, url: str, ns: str, count: int, **options: object
) -> AsyncIterator[list[asyncpoll.Poller]]:
    """``count`` Pollers of one fleet, each with a Session of its own."""
    async with AsyncExitStack() as stack:
        pollers = []
        for _ in range(count):
            session = asyncpoll.Session(server.url, token=TOKEN)
            await stack.enter_async_context(session)
            fleet = asyncpoll.RedisFleet(url, namespace=ns, lease=LEASE)
            poller = asyncpoll.Poller(session, fleet=fleet, interval=FAST, **options)  # type: ignore[arg-type]
            pollers.append(await stack.enter_async_context(poller))
        yield pollers


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (state of other tasks and of Redis)
            await anyio.sleep(0.02)


async def test_two_members_share_one_schedule(server: SimulatedServer, redis_url: str) -> None:
    ids = server.add_operations(150, window=1.0)
    async with members(server, redis_url, namespace(), 2) as (first, second):
        results: dict[int, list[asyncpoll.AsyncOperation]] = {}

        async def wait_all(index: int, poller: asyncpoll.Poller) -> None:
            results[index] = await poller.wait_all(ids, timeout=20)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_all, 0, first)
            tg.start_soon(wait_all, 1, second)
        stats = [first.statistics(), second.statistics()]
    for index in (0, 1):
        assert [op.id for op in results[index]] == ids
        assert all(op.state is asyncpoll.OperationState.SUCCEEDED for op in results[index])
    # One member polled, the other sent nothing; the server saw only the leader's requests.
    assert sorted(s.requests for s in stats)[0] == 0
    assert sum(s.requests for s in stats) == len(server.requests)
    assert {s.fleet_members for s in stats} == {2}
    assert all(s.fleet_connected for s in stats)
    assert sorted(s.leading for s in stats) == [(), ("default",)]


async def test_a_watcher_of_a_follower_sees_progress_in_order(
    server: SimulatedServer, redis_url: str
) -> None:
    ids = [server.add_operation(duration=0.8, progress_step=20) for _ in range(5)]
    async with members(server, redis_url, namespace(), 2) as (leader, follower):
        async with leader.as_completed(ids) as done:
            # The leader leads once its callers' space has been claimed.
            await wait_for(lambda: leader.statistics().leading == ("default",))
            events: list[asyncpoll.ProgressEvent] = []
            with anyio.fail_after(20):
                async with follower.watch(ids) as stream:
                    async for event in stream:
                        events.append(event)
            finished = [op async for op in done]
        assert follower.statistics().requests == 0
    assert sorted(op.id for op in finished) == sorted(ids)
    for operation_id in ids:
        mine = [e for e in events if e.operation_id == operation_id]
        assert sum(e.is_terminal for e in mine) == 1
        assert mine[-1].is_terminal
        assert mine[-1].operation is not None
        assert mine[-1].operation.state is asyncpoll.OperationState.SUCCEEDED
        percents = [e.operation.percent_complete or 0.0 for e in mine if e.operation is not None]
        assert percents == sorted(percents)


async def test_a_late_member_gets_finished_operations_from_redis(
    server: SimulatedServer, redis_url: str
) -> None:
    ns = namespace()
    ids = [server.add_operation(duration=0.1) for _ in range(4)]
    async with members(server, redis_url, ns, 1) as (first,):
        done = await first.wait_all(ids, timeout=10)
    sent = len(server.requests)
    # A new process (member) comes after the end: the outcomes are in Redis.
    async with members(server, redis_url, ns, 1) as (late,):
        again = await late.wait_all(ids, timeout=10)
        assert late.statistics().requests == 0
    assert len(server.requests) == sent
    assert [op.id for op in again] == [op.id for op in done]
    assert [op.state for op in again] == [op.state for op in done]
    assert [op.created_resource_ids for op in again] == [op.created_resource_ids for op in done]


async def test_unreachable_redis_polls_alone_and_says_so_once(
    server: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncpoll")
    ids = [server.add_operation(duration=0.2) for _ in range(3)]
    url = f"redis://:sekrit-password@127.0.0.1:{closed_port()}/0"
    async with members(server, url, namespace(), 1) as (alone,):
        done = await alone.wait_all(ids, timeout=10)
        stats = alone.statistics()
    assert [op.state for op in done] == [asyncpoll.OperationState.SUCCEEDED] * 3
    assert stats.fleet_connected is False
    assert stats.leading == ()
    assert stats.fleet_members == 1
    assert stats.requests > 0
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert "sekrit-password" not in caplog.text
    assert "***" in warnings[0].getMessage()


async def test_without_a_fleet_the_fleet_statistics_are_empty(server: SimulatedServer) -> None:
    async with asyncpoll.Session(server.url, token=TOKEN) as session:
        async with asyncpoll.Poller(session) as poller:
            stats = poller.statistics()
    assert (stats.leading, stats.fleet_members, stats.fleet_connected) == ((), None, None)


async def test_an_unknown_space_seen_by_the_leader_fails_the_followers_callers(
    server: SimulatedServer, redis_url: str
) -> None:
    async with members(server, redis_url, namespace(), 2) as (first, second):
        errors: list[BaseException] = []

        async def wait(poller: asyncpoll.Poller) -> None:
            try:
                await poller.wait("op-1", space_id="nosuchspace1", timeout=10)
            except asyncpoll.SpaceNotFoundError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, first)
            tg.start_soon(wait, second)
        stats = [first.statistics(), second.statistics()]
    assert len(errors) == 2
    # One member asked the server; the other was told through Redis.
    assert sorted(s.requests for s in stats)[0] == 0
    assert any("seen by fleet member" in str(e) for e in errors)


async def test_interest_given_up_by_a_follower_leaves_the_leaders_schedule(
    server: SimulatedServer, redis_url: str
) -> None:
    mine = server.add_operation(duration=float("inf"))
    theirs = server.add_operation(duration=float("inf"))
    async with members(server, redis_url, namespace(), 2) as (leader, follower):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader.wait, mine)
            await wait_for(lambda: leader.statistics().leading == ("default",))
            with anyio.move_on_after(1.0):
                await follower.wait(theirs)
            # The follower's caller gave up: within a lease (and a poll) the leader
            # stops asking for that ID.
            given_up = time.monotonic()  # the clock of the simulator's log
            await anyio.sleep(LEASE + 0.3)
            recent = [r for r in server.requests if r.time >= given_up + LEASE]
            assert recent, "the leader stopped polling its own caller's operation"
            assert all(theirs not in r.ids for r in recent)
            assert all(mine in r.ids for r in recent)
            assert leader.statistics().watched == 1
            tg.cancel_scope.cancel()
    # When the last member leaves, no request continues.
    count = len(server.requests)
    await anyio.sleep(0.3)
    assert len(server.requests) == count
