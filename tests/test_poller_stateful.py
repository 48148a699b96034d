"""A hypothesis state machine of interleaved register / cancel / progress / complete /
time-passes steps against a live Poller (on asyncio and trio, through a blocking portal)
and the simulator, checking the Poller's invariants after every step:

- every caller gets exactly one terminal outcome per ID (or was cancelled), never two;
- a watcher never sees progress go backwards, and sees exactly one terminal event per ID;
- once every caller has left, nothing is tracked and nothing stays subscribed.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from asyncpoll import (
    AsyncOperation,
    OperationFailed,
    OperationState,
    Poller,
    PollInterval,
    RetryPolicy,
    Session,
)
from asyncpoll.testing import SimulatedServer

N_OPS = 4


class _Caller:
    def __init__(self, kind: str, ids: list[str]) -> None:
        self.kind = kind
        self.ids = ids
        self.terminal: dict[str, list[Any]] = {i: [] for i in ids}
        self.progress: dict[str, list[float]] = {i: [] for i in ids}
        self.future: concurrent.futures.Future[None] | None = None
        self.cancelled = False


class PollerMachine(RuleBasedStateMachine):
    backend: ClassVar[str] = "asyncio"
    server: ClassVar[SimulatedServer]

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[_Caller] = []
        self.ops: list[str] = []
        self.percent: dict[str, float] = {}
        self.done: set[str] = set()
        self._portal_cm: Any = None
        self.portal: BlockingPortal | None = None
        self._poller_cm: Any = None
        self.poller: Poller | None = None

    @initialize()
    def open(self) -> None:
        self.ops = [self.server.add_operation(duration=math.inf) for _ in range(N_OPS)]
        for op_id in self.ops:
            self.server.set_operation(op_id, state="Running", percent_complete=0)
            self.percent[op_id] = 0
        self._portal_cm = start_blocking_portal(self.backend)
        self.portal = self._portal_cm.__enter__()
        session = Session(
            self.server.url,
            token=self.server.token or "",
            retry=RetryPolicy(initial=0.001, maximum=0.01),
        )
        poller = Poller(session, interval=PollInterval(0.005, 0.02), not_found_grace=5.0)
        self._session_cm = self.portal.wrap_async_context_manager(session)
        self._session_cm.__enter__()
        self._poller_cm = self.portal.wrap_async_context_manager(poller)
        self.poller = self._poller_cm.__enter__()

    # -- callers --------------------------------------------------------------------------

    async def _wait(self, caller: _Caller) -> None:
        assert self.poller is not None
        try:
            operation = await self.poller.wait(caller.ids[0])
            caller.terminal[operation.id].append(operation)
        except OperationFailed as exc:
            caller.terminal[exc.operation.id].append(exc.operation)

    async def _wait_all(self, caller: _Caller) -> None:
        assert self.poller is not None
        for operation in await self.poller.wait_all(caller.ids):
            caller.terminal[operation.id].append(operation)

    async def _watch(self, caller: _Caller) -> None:
        assert self.poller is not None
        async with self.poller.watch(caller.ids) as events:
            async for event in events:
                if event.operation is not None and event.operation.percent_complete is not None:
                    caller.progress[event.operation_id].append(event.operation.percent_complete)
                if event.is_terminal:
                    caller.terminal[event.operation_id].append(event.operation)

    @rule(
        kind=st.sampled_from(["wait", "wait_all", "watch"]),
        picks=st.lists(st.integers(0, N_OPS - 1), min_size=1, max_size=N_OPS),
    )
    def register(self, kind: str, picks: list[int]) -> None:
        assert self.portal is not None
        ids = list(dict.fromkeys(self.ops[i] for i in picks))
        caller = _Caller(kind, ids[:1] if kind == "wait" else ids)
        target = {"wait": self._wait, "wait_all": self._wait_all, "watch": self._watch}[kind]
        caller.future = self.portal.start_task_soon(target, caller)
        self.callers.append(caller)

    @precondition(lambda self: any(not c.cancelled for c in self.callers))
    @rule(index=st.integers(0, 1000))
    def cancel(self, index: int) -> None:
        live = [c for c in self.callers if not c.cancelled]
        caller = live[index % len(live)]
        caller.cancelled = True
        assert caller.future is not None
        caller.future.cancel()

    @rule(index=st.integers(0, N_OPS - 1), step=st.sampled_from([10.0, 25.0]))
    def progress(self, index: int, step: float) -> None:
        op_id = self.ops[index]
        if op_id in self.done:
            return
        self.percent[op_id] = min(99.0, self.percent[op_id] + step)
        self.server.set_operation(op_id, state="Running", percent_complete=self.percent[op_id])

    @rule(index=st.integers(0, N_OPS - 1), failed=st.booleans())
    def complete(self, index: int, failed: bool) -> None:
        op_id = self.ops[index]
        if op_id in self.done:
            return
        self.done.add(op_id)
        if failed:
            self.server.set_operation(op_id, state="Failed", error="it broke")
        else:
            self.server.set_operation(op_id, state="Succeeded", percent_complete=100)

    @rule(seconds=st.sampled_from([0.0, 0.005, 0.02, 0.05]))
    def time_passes(self, seconds: float) -> None:
        assert self.portal is not None
        self.portal.call(anyio.sleep, seconds)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def at_most_one_terminal_and_monotonic_progress(self) -> None:
        for caller in self.callers:
            for op_id in caller.ids:
                assert len(caller.terminal[op_id]) <= 1, (caller.kind, op_id)
                assert caller.progress[op_id] == sorted(caller.progress[op_id])

    def teardown(self) -> None:
        if self.portal is None:
            return
        try:
            for index in range(N_OPS):
                self.complete(index, failed=False)
            for caller in self.callers:
                assert caller.future is not None
                try:
                    caller.future.result(timeout=10)
                except concurrent.futures.CancelledError:
                    assert caller.cancelled
            for caller in self.callers:
                for op_id in caller.ids:
                    outcomes = caller.terminal[op_id]
                    if caller.cancelled:
                        assert len(outcomes) <= 1
                    elif caller.kind == "wait_all":
                        assert len(outcomes) == 1
                    else:
                        assert len(outcomes) == 1, (caller.kind, op_id, outcomes)
                    for outcome in outcomes:
                        assert isinstance(outcome, AsyncOperation)
                        assert outcome.state in (OperationState.SUCCEEDED, OperationState.FAILED)
            assert self.poller is not None
            assert self.portal.call(lambda: _statistics_watched(self.poller)) == 0
            assert self.poller._subscriptions == set()
        finally:
            self._poller_cm.__exit__(None, None, None)
            self._session_cm.__exit__(None, None, None)
            self._portal_cm.__exit__(None, None, None)


async def _statistics_watched(poller: Poller | None) -> int:
    assert poller is not None
    await anyio.lowlevel.checkpoint()
    return poller.statistics().watched


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SimulatedServer]:
    with SimulatedServer(seed=99) as server:
        yield server


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_poller_state_machine(shared_server: SimulatedServer, backend: str) -> None:
    machine = type(
        f"PollerMachine_{backend}", (PollerMachine,), {"backend": backend, "server": shared_server}
    )
    test_case = machine.TestCase  # type: ignore[attr-defined]
    test_case.settings = settings(
        max_examples=12,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    test_case().runTest()
