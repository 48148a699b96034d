"""BlockingPoller: the Poller for threads, against the simulator over loopback.

What is proven here:

- each blocking method returns and raises what its async twin does;
- 32 threads waiting on 32 operations of one space share batched requests: every request
  carries ``max_batch_size`` IDs, so a round costs 32 / max_batch_size requests, not 32;
- closing while threads wait fails each of them with the Poller's closed error, ends open
  ``watch``/``as_completed`` blocks, leaves no thread behind, and later calls raise it too;
- a KeyboardInterrupt in a waiting thread ends that caller's interest, not the loop;
- a sync callable token is called in the loop's worker thread and refreshed after a 401;
- unknown or bad options fail before any thread starts; the token is in no repr or log.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from asyncpoll import (
    AsyncOperation,
    AuthenticationError,
    OperationFailed,
    OperationNotFound,
    OperationState,
    PollInterval,
    ProgressEvent,
    RetryPolicy,
)
from asyncpoll._blocking import BlockingPoller
from asyncpoll.testing import SimulatedServer

FAST = PollInterval(initial=0.01, maximum=0.05, multiplier=1.5, jitter=0.1)
CLOSED = "the Poller was closed"
LOOP_THREAD = "asyncpoll-BlockingPoller"


def open_poller(server: SimulatedServer, **options: Any) -> BlockingPoller:
    options.setdefault("token", server.token)
    options.setdefault("interval", FAST)
    options.setdefault("not_found_grace", 0.2)
    options.setdefault("retry", RetryPolicy(initial=0.001, maximum=0.01, timeout=5.0))
    return BlockingPoller(server.url, **options)


def eventually(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Wait until ``condition()`` holds (a synchronisation point, not a timing check)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


def assert_clean(poller: BlockingPoller) -> None:
    """Nothing tracked, nothing subscribed (once the loop has caught up)."""
    eventually(lambda: poller.statistics().watched == 0, "nothing watched")
    assert poller._poller._subscriptions == set()


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


@pytest.fixture
def no_thread_left() -> Iterator[None]:
    """The test leaves no thread running that was not running before it."""
    before = set(threading.enumerate())
    yield
    eventually(lambda: set(threading.enumerate()) <= before, "every new thread ended")


# -- each method ---------------------------------------------------------------------------


def test_wait_returns_the_succeeded_operation(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.05, created_resource_ids=["prog_1"])
    with open_poller(server) as poller:
        operation = poller.wait(op_id)
        assert operation.state is OperationState.SUCCEEDED
        assert operation.created_resource_ids == ("prog_1",)
        assert_clean(poller)


def test_wait_raises_what_the_async_wait_raises(server: SimulatedServer) -> None:
    failed = server.add_operation(duration=0.02, outcome="failed", error_message="Template gone")
    endless = server.add_operation(duration=math.inf)
    with open_poller(server) as poller:
        with pytest.raises(OperationFailed, match="Template gone") as info:
            poller.wait(failed)
        assert info.value.operation.state is OperationState.FAILED
        with pytest.raises(OperationNotFound) as missing:
            poller.wait("no-such-operation")
        assert missing.value.operation_id == "no-such-operation"
        with pytest.raises(TimeoutError):
            poller.wait(endless, timeout=0.1)
        with pytest.raises(ValueError, match="timeout"):
            poller.wait(endless, timeout=-1)
        with pytest.raises(ValueError, match="control character"):
            poller.wait("bad\nid")
        assert_clean(poller)


def test_wait_all_returns_every_outcome_in_input_order(server: SimulatedServer) -> None:
    ids = [
        server.add_operation(duration=0.06),
        server.add_operation(duration=0.02, outcome="failed"),
        server.add_operation(duration=0.04, outcome="canceled"),
    ]
    with open_poller(server) as poller:
        operations = poller.wait_all([*ids, ids[0]])
        assert [op.id for op in operations] == [*ids, ids[0]]
        assert [op.state for op in operations] == [
            OperationState.SUCCEEDED,
            OperationState.FAILED,
            OperationState.CANCELED,
            OperationState.SUCCEEDED,
        ]
        with pytest.raises(TypeError, match="single string"):
            poller.wait_all(ids[0])
        assert_clean(poller)


def test_get_operations_is_one_batched_query(server: SimulatedServer) -> None:
    ids = [server.add_operation(duration=math.inf) for _ in range(5)]
    with open_poller(server, max_batch_size=2) as poller:
        operations = poller.get_operations([*ids, "absent"])
        assert sorted(op.id for op in operations) == sorted(ids)
        assert all(op.state is not OperationState.UNKNOWN for op in operations)
        assert sorted(len(r.ids) for r in server.requests) == [2, 2, 2]


def test_as_completed_yields_in_completion_order(server: SimulatedServer) -> None:
    ids = [server.add_operation(duration=d) for d in (0.3, 0.05, 0.15)]
    with open_poller(server) as poller, poller.as_completed(ids) as done:
        seen = [operation.id for operation in done]
        assert seen == [ids[1], ids[2], ids[0]]
    assert_clean(poller)


def test_watch_yields_progress_and_one_terminal_event_each(server: SimulatedServer) -> None:
    ids = [server.add_operation(duration=0.2, progress_step=25) for _ in range(2)]
    events: list[ProgressEvent] = []
    with open_poller(server) as poller:
        with poller.watch(ids) as stream:
            events.extend(stream)
        assert_clean(poller)
    for op_id in ids:
        mine = [e for e in events if e.operation_id == op_id]
        assert [e.is_terminal for e in mine].count(True) == 1
        assert mine[-1].is_terminal
        assert mine[-1].operation is not None
        assert mine[-1].operation.state is OperationState.SUCCEEDED
        percents = [e.operation.percent_complete or 0 for e in mine if e.operation]
        assert percents == sorted(percents)
        assert len(mine) >= 2  # first sight, then the end at least


@pytest.mark.parametrize("kind", ["watch", "as_completed"])
def test_leaving_a_block_early_unsubscribes(server: SimulatedServer, kind: str) -> None:
    ids = [server.add_operation(duration=0.05), server.add_operation(duration=math.inf)]
    with open_poller(server) as poller:
        block = poller.watch(ids) if kind == "watch" else poller.as_completed(ids)
        with block as stream:
            first = next(iter(stream))
            assert first is not None
            assert poller.statistics().watched >= 1
        assert_clean(poller)
        with pytest.raises(RuntimeError, match="inside the 'with' block"):
            next(stream)
        # The poller goes on serving others.
        assert poller.wait(ids[0]).state is OperationState.SUCCEEDED


def test_streams_time_out_and_refuse_misuse(server: SimulatedServer) -> None:
    endless = server.add_operation(duration=math.inf)
    with open_poller(server) as poller:
        with pytest.raises(TimeoutError), poller.as_completed([endless], timeout=0.1) as done:
            list(done)
        with pytest.raises(TimeoutError), poller.watch([endless], timeout=0.1) as events:
            list(events)
        with pytest.raises(TypeError, match=r"'with poller\.watch\(ids\) as events:'"):
            iter(poller.watch([endless]))  # type: ignore[call-overload]
        with pytest.raises(ValueError, match="empty"):
            poller.as_completed([endless, ""])  # at the call, not on entering
        assert_clean(poller)
    assert server.requests


# -- many threads, few requests ------------------------------------------------------------


def test_32_threads_share_batched_requests(server: SimulatedServer) -> None:
    batch = 8
    ids = [server.add_operation(duration=math.inf) for _ in range(32)]
    start = threading.Barrier(len(ids))
    results: dict[str, AsyncOperation | BaseException] = {}
    steady = PollInterval(initial=0.05, maximum=0.05, jitter=0.0)

    with open_poller(server, max_batch_size=batch, interval=steady, coalesce_window=0.05) as poller:

        def waiter(op_id: str) -> None:
            start.wait()
            try:
                results[op_id] = poller.wait(op_id, timeout=10)
            except BaseException as exc:
                results[op_id] = exc

        threads = [threading.Thread(target=waiter, args=(i,)) for i in ids]
        for thread in threads:
            thread.start()
        eventually(lambda: poller.statistics().watched == 32, "every thread subscribed")
        eventually(lambda: {i for r in server.requests for i in r.ids} == set(ids), "all polled")
        for op_id in ids:
            server.set_operation(op_id, state="Succeeded")
        for thread in threads:
            thread.join(10)

    assert all(isinstance(r, AsyncOperation) and r.is_terminal for r in results.values())
    assert len(results) == 32
    requests = server.requests
    # Every request carries a full batch: each round costs 32 / batch = 4 requests where
    # one request per thread would cost 32.
    assert [len(r.ids) for r in requests] == [batch] * len(requests)
    rounds = sum(len(r.ids) for r in requests) / len(ids)
    assert len(requests) == rounds * math.ceil(len(ids) / batch)
    assert all(len(set(r.ids)) == len(r.ids) for r in requests)


# -- closing -------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_thread_left")
def test_close_fails_every_waiting_thread_and_ends_the_loop(server: SimulatedServer) -> None:
    ids = [server.add_operation(duration=math.inf) for _ in range(8)]
    outcomes: dict[str, BaseException | object] = {}
    poller = open_poller(server)
    assert len(loop_threads()) == 1

    def run(name: str, call: Callable[[], object]) -> None:
        try:
            outcomes[name] = call()
        except BaseException as exc:
            outcomes[name] = exc

    def iterate(kind: str) -> list[object]:
        block = poller.watch(ids[:2]) if kind == "watch" else poller.as_completed(ids[:2])
        with block as stream:
            return list(stream)

    calls: dict[str, Callable[[], object]] = {
        f"wait-{n}": partial(poller.wait, op_id) for n, op_id in enumerate(ids)
    }
    calls["wait_all"] = lambda: poller.wait_all(ids)
    calls["watch"] = lambda: iterate("watch")
    calls["as_completed"] = lambda: iterate("as_completed")
    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for thread in threads:
        thread.start()
    eventually(lambda: len(poller._poller._subscriptions) == len(calls), "every caller waits")

    poller.close()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()

    assert set(outcomes) == set(calls)  # no outcome lost
    for name, outcome in outcomes.items():
        assert isinstance(outcome, RuntimeError), name
        assert str(outcome) == CLOSED, name
    assert len({id(outcome) for outcome in outcomes.values()}) == len(calls)  # one each
    assert loop_threads() == []
    assert "closed" in repr(poller)
    assert poller.statistics().watched == 0


@pytest.mark.usefixtures("no_thread_left")
def test_calls_after_close_raise_the_closed_error(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.01)
    with open_poller(server) as poller:
        poller.wait(op_id)
        block = poller.as_completed([op_id])
    sent = len(server.requests)
    calls: list[Callable[[], object]] = [
        lambda: poller.wait(op_id),
        lambda: poller.wait_all([op_id]),
        lambda: poller.get_operations([op_id]),
        lambda: poller.as_completed([op_id]),
        lambda: poller.watch([op_id]),
        block.__enter__,
        poller.__enter__,
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match=CLOSED):
            call()
    poller.close()  # again: nothing happens
    assert poller.statistics().requests == sent
    assert len(server.requests) == sent


def test_a_block_left_after_close_raises_nothing(server: SimulatedServer) -> None:
    endless = server.add_operation(duration=math.inf)
    poller = open_poller(server)
    with poller.watch([endless]) as events:
        assert next(events).operation_id == endless
        poller.close()
        with pytest.raises(RuntimeError, match=CLOSED):
            next(events)
    assert loop_threads() == []


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main only"
)
def test_keyboard_interrupt_in_a_waiting_thread_spares_the_loop(server: SimulatedServer) -> None:
    endless = server.add_operation(duration=math.inf)
    quick = server.add_operation(duration=0.05)
    main = threading.main_thread().ident
    assert main is not None
    with open_poller(server) as poller:

        def interrupt() -> None:
            eventually(lambda: poller.statistics().watched == 1, "the main thread waits")
            signal.pthread_kill(main, signal.SIGINT)

        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            poller.wait(endless, timeout=10)
        interrupter.join()
        assert_clean(poller)
        assert poller.wait(quick).state is OperationState.SUCCEEDED


# -- tokens and options --------------------------------------------------------------------


def test_a_callable_token_is_called_and_refreshed_after_401(server: SimulatedServer) -> None:
    tokens = iter(["first-token", "second-token"])
    calls: list[str] = []

    def token() -> str:
        calls.append(threading.current_thread().name)
        return next(tokens)

    server.add_token("first-token", scopes=("view",))
    server.add_token("second-token", scopes=("view",))
    ops = [server.add_operation(duration=0.02) for _ in range(2)]
    with open_poller(server, token=token) as poller:
        assert poller.wait(ops[0]).state is OperationState.SUCCEEDED
        server.revoke_token("first-token")
        assert poller.wait(ops[1]).state is OperationState.SUCCEEDED
    assert len(calls) == 2
    assert LOOP_THREAD not in calls  # a blocking callable does not stall the loop
    statuses = [r.status for r in server.requests]
    assert statuses.count(401) == 1  # the revoked token, then one refresh
    assert {r.user for r in server.requests if r.status == 200} == {"alice"}


def test_a_failing_callable_token_is_an_authentication_error(server: SimulatedServer) -> None:
    def token() -> str:
        raise OSError("vault unreachable")

    with open_poller(server, token=token) as poller, pytest.raises(AuthenticationError):
        poller.get_operations(["x"])


@pytest.mark.usefixtures("no_thread_left")
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"intervl": FAST}, TypeError, "intervl"),
        ({"session": None}, TypeError, "session"),
        ({"interval": 1.0}, TypeError, "PollInterval"),
        ({"timeout": -1.0}, ValueError, "timeout"),
        ({"max_concurrent_requests": 0}, ValueError, "max_concurrent_requests"),
        ({"token": "has space"}, ValueError, "token"),
        ({"token": 42}, TypeError, "token"),
        ({"space_id": "no"}, ValueError, "space"),
    ],
)
def test_bad_options_fail_before_any_thread_starts(
    server: SimulatedServer, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    before = threading.active_count()
    with pytest.raises(error, match=match):
        open_poller(server, **options)
    assert threading.active_count() == before


@pytest.mark.usefixtures("no_thread_left")
def test_async_token_functions_and_plain_http_are_refused_before_starting() -> None:
    async def token() -> str:
        return "t"

    with pytest.raises(TypeError, match="not async"):
        BlockingPoller("https://example.com", token=token)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allow_insecure_http"):
        BlockingPoller("http://example.com", token="t")


def test_the_token_is_in_no_repr_or_log(
    server: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-token-value"
    server.add_token(secret, scopes=("view",))
    op_id = server.add_operation(duration=0.02)
    caplog.set_level(logging.DEBUG)
    with open_poller(server, token=secret) as poller:
        assert poller.wait(op_id).state is OperationState.SUCCEEDED
        shown = [repr(poller), str(poller), repr(poller._session), repr(poller.statistics())]
    shown.append(repr(poller))
    shown.extend(record.getMessage() for record in caplog.records)
    assert not any(secret in text for text in shown)
    assert any("GET" in record.getMessage() for record in caplog.records)
