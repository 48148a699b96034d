"""Lifecycles that span tasks: a Session opened on first use and closed from another
task, a Poller started in one task and closed from another (asyncio), and what trio
refuses. Against the simulator over loopback, on both backends."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from asyncpoll import OperationState, Poller, PollInterval, RetryPolicy, Session
from asyncpoll.testing import SimulatedServer

pytestmark = pytest.mark.anyio

FAST = PollInterval(initial=0.01, maximum=0.05, multiplier=1.5, jitter=0.1)
CLOSED = "the Poller was closed"


def session_for(server: SimulatedServer) -> Session:
    assert server.token is not None
    return Session(server.url, token=server.token, retry=RetryPolicy(initial=0.001, maximum=0.01))


async def test_a_session_opens_on_first_use_and_closes_from_another_task(
    server: SimulatedServer,
) -> None:
    ids = server.add_operations(3, window=0.0)
    session = session_for(server)
    operations = await session.get_operations(ids)
    assert [op.state for op in operations] == [OperationState.SUCCEEDED] * 3
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.aclose)
    with pytest.raises(RuntimeError, match="closed"):
        await session.get_operations(ids)
    await session.aclose()  # twice: nothing happens
    with pytest.raises(RuntimeError, match="closed"):
        async with session:
            pass
    assert len(server.requests) == 1


async def test_a_session_used_first_can_still_be_entered_once(server: SimulatedServer) -> None:
    ids = server.add_operations(1, window=0.0)
    session = session_for(server)
    await session.get_operations(ids)
    async with session:
        await session.get_operations(ids)
    with pytest.raises(RuntimeError, match="closed"):
        await session.get_operations(ids)


async def test_a_session_closed_under_a_poller_fails_its_callers_cleanly(
    server: SimulatedServer,
) -> None:
    [operation_id] = server.add_operations(1, window=60.0)
    session = session_for(server)
    async with Poller(session, interval=FAST) as poller:
        with anyio.fail_after(5):
            async with poller.watch([operation_id]) as events:
                async for event in events:
                    assert not event.is_terminal
                    break
        await session.aclose()
        with anyio.fail_after(5), pytest.raises(Exception, match="closed") as info:
            await poller.wait(operation_id)
        assert not isinstance(info.value, BaseExceptionGroup)
        assert poller.statistics().in_flight == 0


async def test_start_under_trio_says_to_use_async_with(
    anyio_backend: str, server: SimulatedServer
) -> None:
    if anyio_backend != "trio":
        pytest.skip("the trio refusal")
    session = session_for(server)
    poller = Poller(session, interval=FAST)
    with pytest.raises(RuntimeError, match="async with"):
        await poller.start()
    await poller.aclose()  # never opened: nothing to do
    await session.aclose()


def asyncio_only(anyio_backend: str, why: str = "Poller.start() is asyncio's") -> None:
    if anyio_backend != "asyncio":
        pytest.skip(why)


def poller_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "asyncpoll.Poller"]


async def test_a_started_poller_serves_other_tasks_and_closes_from_a_third(
    anyio_backend: str, server: SimulatedServer
) -> None:
    asyncio_only(anyio_backend)
    before = set(asyncio.all_tasks())
    done = server.add_operations(4, window=0.0)
    running = server.add_operations(3, window=600.0)
    session = session_for(server)
    poller = Poller(session, interval=FAST)

    async def startup() -> None:  # a framework's start-up hook, in a task of its own
        await poller.start()

    async with anyio.create_task_group() as tg:
        tg.start_soon(startup)
    assert len(poller_tasks()) == 1

    finished = [await poller.wait(operation_id) for operation_id in done]
    assert [op.id for op in finished] == done

    outcomes: list[BaseException] = []

    async def waiting(operation_id: str) -> None:
        try:
            await poller.wait(operation_id)
        except RuntimeError as exc:
            outcomes.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for operation_id in running:
                tg.start_soon(waiting, operation_id)
            for _ in range(1000):
                if poller.statistics().watched == len(running):
                    break
                await anyio.sleep(0.005)
            # The shutdown hook, in yet another task, with waits in flight.
            tg.start_soon(poller.aclose)
    assert [str(exc) for exc in outcomes] == [CLOSED] * len(running)
    assert poller_tasks() == []
    assert poller.statistics().watched == 0
    assert poller.statistics().in_flight == 0
    with pytest.raises(RuntimeError, match="closed"):
        await poller.wait(done[0])
    await poller.aclose()  # twice: nothing happens
    await session.aclose()
    assert set(asyncio.all_tasks()) <= before


async def test_start_is_once_and_aclose_leaves_an_async_with_alone(
    anyio_backend: str, server: SimulatedServer
) -> None:
    asyncio_only(anyio_backend)
    session = session_for(server)
    poller = Poller(session, interval=FAST)
    await poller.start()
    with pytest.raises(RuntimeError, match="once"):
        await poller.start()
    with pytest.raises(RuntimeError, match="once"):
        async with poller:
            pass
    await poller.aclose()
    with pytest.raises(RuntimeError, match="once"):
        await poller.start()

    entered = Poller(session, interval=FAST)
    async with entered:
        with pytest.raises(RuntimeError, match="async with"):
            await entered.aclose()
    await entered.aclose()  # after the block: already closed, nothing to do
    await session.aclose()
    assert poller_tasks() == []


async def test_a_start_cancelled_half_way_leaves_no_task(
    anyio_backend: str, server: SimulatedServer
) -> None:
    asyncio_only(anyio_backend)
    session = session_for(server)
    poller = Poller(session, interval=FAST)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await poller.start()
    assert poller_tasks() == []
    with pytest.raises(RuntimeError):
        await poller.wait("anything")
    await session.aclose()


async def test_an_async_with_left_in_another_task_says_what_to_use(
    anyio_backend: str, server: SimulatedServer
) -> None:
    asyncio_only(anyio_backend, "trio refuses a task that ends with a nursery open")
    [operation_id] = server.add_operations(1, window=600.0)
    session = session_for(server)
    poller = Poller(session, interval=FAST)
    before = set(asyncio.all_tasks())
    await asyncio.create_task(poller.__aenter__())  # a fixture's set-up, in its own task
    waiting = asyncio.create_task(poller.wait(operation_id))
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match=r"poller\.start\(\)"):
        await asyncio.create_task(poller.__aexit__(None, None, None))  # its teardown
    with pytest.raises(RuntimeError, match=CLOSED):
        await waiting
    for _ in range(100):  # the Poller's tasks end once their cancellation is delivered
        if set(asyncio.all_tasks()) <= before | {asyncio.current_task()}:
            break
        await asyncio.sleep(0.01)
    assert set(asyncio.all_tasks()) <= before | {asyncio.current_task()}
    await session.aclose()
