"""The Session against the simulator over loopback, on asyncio and on trio.

Every status path of the endpoint contract, batching, validation, auth refresh, retries,
rate limits, redirects, wire variants and the secrecy of the token.
"""

from __future__ import annotations

import email.utils
import logging
import math
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import hypothesis
import hypothesis.strategies
import orjson
import pytest

from asyncpoll import (
    AiohttpTransport,
    APIError,
    AsyncOperation,
    AsyncpollError,
    AuthenticationError,
    ConnectError,
    HttpxTransport,
    InvalidResponseError,
    MockTransport,
    OperationError,
    OperationState,
    PermissionDeniedError,
    RateLimitedError,
    Request,
    Response,
    ResponseTooLarge,
    RetryPolicy,
    Session,
    SpaceNotFoundError,
)
from asyncpoll._batching import encode_id
from asyncpoll.testing import ScriptedResponse, SimulatedServer, WireVariant

pytestmark = pytest.mark.anyio

S = OperationState
FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, timeout=5.0)
# Monotonic clocks of client and server are the same clock (one process): a guarantee
# "no request before X" is checked with this much slack for float rounding only.
EPSILON = 0.05
CANARY = "CANARY-tok-9f8e7d6c5b4a"


@asynccontextmanager
async def open_session(server: SimulatedServer, **kwargs: Any) -> AsyncIterator[Session]:
    kwargs.setdefault("token", server.token)
    kwargs.setdefault("retry", FAST)
    async with Session(server.url, **kwargs) as session:
        yield session


def ids_of(operations: list[AsyncOperation]) -> list[str]:
    return [op.id for op in operations]


def statuses(server: SimulatedServer) -> list[int]:
    return [r.status for r in server.requests]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the default shape, order, dedup, absence -----------------------------------------------


async def test_default_shape(server: SimulatedServer) -> None:
    succeeded = server.add_operation(duration=0.0, created_resource_ids=["prog_1", "task_1"])
    failed = server.add_operation(
        duration=0.0, outcome="failed", error_code="TemplateNotFound", error_message="gone"
    )
    canceled = server.add_operation(duration=0.0, outcome="canceled")
    running = server.add_operation(duration=math.inf)
    server.set_operation(running, percent_complete=42.5)
    pending = server.add_operation(start_after=1000.0)
    ids = [succeeded, failed, canceled, running, pending]

    async with open_session(server) as session:
        operations = await session.get_operations(ids)

    assert ids_of(operations) == ids
    by_id = {op.id: op for op in operations}
    assert by_id[succeeded] == AsyncOperation(
        id=succeeded,
        state=S.SUCCEEDED,
        percent_complete=100.0,
        result={"createdResourceIds": ["prog_1", "task_1"]},
        created_resource_ids=("prog_1", "task_1"),
    )
    assert by_id[failed].state is S.FAILED
    assert by_id[failed].error == OperationError(message="gone", code="TemplateNotFound")
    assert by_id[failed].result is None
    assert by_id[canceled].state is S.CANCELED
    assert by_id[running] == AsyncOperation(id=running, state=S.RUNNING, percent_complete=42.5)
    assert by_id[pending].state is S.NOT_STARTED
    assert [op.is_terminal for op in operations] == [True, True, True, False, False]
    for op in operations:
        assert op.raw == server.operation_json(op.id)
        assert "createdAt" in op.raw
    [logged] = server.requests
    assert (logged.method, logged.space_id, logged.user) == ("GET", "default", "alice")
    assert logged.path == "/programs/v2/spaces/default/asyncOperations"


async def test_order_is_as_returned(server: SimulatedServer) -> None:
    a, b, c = (server.add_operation(duration=0.0) for _ in range(3))
    body = orjson.dumps([server.operation_json(i) for i in (c, a, b)])
    server.script(ScriptedResponse(body=body))
    async with open_session(server) as session:
        operations = await session.get_operations([a, b, c])
    assert ids_of(operations) == [c, a, b]
    assert server.requests[0].ids == (a, b, c)


async def test_ids_are_deduplicated(server: SimulatedServer) -> None:
    a, b = server.add_operation(duration=0.0), server.add_operation(duration=0.0)
    async with open_session(server) as session:
        operations = await session.get_operations([a, b, a, a, b])
    assert ids_of(operations) == [a, b]
    assert [r.ids for r in server.requests] == [(a, b)]


async def test_duplicate_entries_in_the_answer_are_dropped(server: SimulatedServer) -> None:
    a = server.add_operation(duration=0.0)
    entry = server.operation_json(a)
    server.script(ScriptedResponse(body=orjson.dumps([entry, entry])))
    async with open_session(server) as session:
        assert ids_of(await session.get_operations([a])) == [a]


async def test_absent_ids_are_absent(server: SimulatedServer) -> None:
    mine = server.add_operation(duration=0.0)
    bobs = server.add_operation(duration=0.0, user="bob")
    elsewhere = server.add_operation(duration=0.0, space_id="otherSpace1")
    not_yet = server.add_operation(visible_after=1000.0)
    ids = ["unknown-id", bobs, mine, elsewhere, not_yet]
    async with open_session(server) as session:
        assert ids_of(await session.get_operations(ids)) == [mine]
        assert await session.get_operations(["unknown-1", "unknown-2"]) == []
    assert [r.ids for r in server.requests] == [tuple(ids), ("unknown-1", "unknown-2")]


async def test_no_ids_no_request(server: SimulatedServer) -> None:
    async with open_session(server) as session:
        assert await session.get_operations([]) == []
    assert server.requests == []


# -- batching -------------------------------------------------------------------------------


async def test_batches_split_by_max_batch_size(server: SimulatedServer) -> None:
    ids = server.add_operations(10, window=0.0)
    async with open_session(server, max_batch_size=3) as session:
        operations = await session.get_operations(ids)
    assert ids_of(operations) == ids
    logged = server.requests
    assert sorted(len(r.ids) for r in logged) == [1, 3, 3, 3]
    assert sorted(i for r in logged for i in r.ids) == sorted(ids)
    assert session.requests_sent == 4


@pytest.mark.parametrize("alphabet", ["ascii", "multibyte"])
async def test_batches_split_by_max_url_length(server: SimulatedServer, alphabet: str) -> None:
    if alphabet == "ascii":
        ids = server.add_operations(40, window=0.0)
    else:
        # Percent-encoding makes these 4 to 9 times longer on the wire than in Python.
        ids = [
            server.add_operation(f"\u00e9t\u00e9-\u65e5\u672c-{n}", duration=0.0) for n in range(40)
        ]
    limit = 400
    async with open_session(server, max_url_length=limit) as session:
        operations = await session.get_operations(ids)
    assert ids_of(operations) == ids
    logged = server.requests
    assert len(logged) > 1
    for request in logged:
        assert len(request.path) + 1 + len(request.query) <= limit
    # Batches are full: one more ID would not have fitted in any but the last.
    lengths = sorted((len(r.path) + 1 + len(r.query) for r in logged), reverse=True)
    longest_part = max(len(r.query) // len(r.ids) for r in logged) + 1
    assert all(length > limit - 2 * longest_part for length in lengths[:-1])
    assert sorted(i for r in logged for i in r.ids) == sorted(ids)


async def test_both_caps_at_once(server: SimulatedServer) -> None:
    ids = server.add_operations(30, window=0.0)
    async with open_session(server, max_batch_size=4, max_url_length=200) as session:
        assert ids_of(await session.get_operations(ids)) == ids
    for request in server.requests:
        assert len(request.ids) <= 4
        assert len(request.path) + 1 + len(request.query) <= 200


async def test_one_id_too_long_for_the_url_is_refused(server: SimulatedServer) -> None:
    async with open_session(server, max_url_length=200) as session:
        with pytest.raises(ValueError, match="max_url_length"):
            await session.get_operations(["ok", "x" * 300])
    assert server.requests == []


async def test_414_splits_the_batch_and_retries_the_halves(server: SimulatedServer) -> None:
    ids = server.add_operations(10, window=0.0)
    server.faults.max_ids_per_request = 3
    async with open_session(server) as session:
        operations = await session.get_operations(ids)
    assert sorted(ids_of(operations)) == sorted(ids)
    logged = server.requests
    assert logged[0].status == 414
    assert len(logged[0].ids) == 10
    assert all(len(r.ids) > 3 for r in logged if r.status == 414)
    answered = [r for r in logged if r.status == 200]
    assert all(len(r.ids) <= 3 for r in answered)
    assert sorted(i for r in answered for i in r.ids) == sorted(ids)


async def test_400_on_a_multi_id_batch_splits_it(server: SimulatedServer) -> None:
    ids = server.add_operations(4, window=0.0)
    server.script(ScriptedResponse(400))
    async with open_session(server) as session:
        assert ids_of(await session.get_operations(ids)) == ids
    assert [(r.status, r.ids) for r in server.requests] == [
        (400, tuple(ids)),
        (200, tuple(ids[:2])),
        (200, tuple(ids[2:])),
    ]


async def test_single_id_400_is_an_api_error(server: SimulatedServer) -> None:
    server.script(ScriptedResponse(400, body=b'{"error": {"message": "bad id"}}'))
    async with open_session(server) as session:
        with pytest.raises(APIError) as info:
            await session.get_operations(["rejected"])
    assert type(info.value) is APIError
    assert info.value.status == 400
    assert "rejected" in str(info.value)
    assert b"bad id" in info.value.body
    assert statuses(server) == [400]


async def test_one_refused_id_in_a_batch_fails_the_call(server: SimulatedServer) -> None:
    good = server.add_operation(duration=0.0)
    # The pair is refused, then the first half (the refused ID) alone, then the rest runs.
    server.script(ScriptedResponse(400), ScriptedResponse(400))
    async with open_session(server) as session:
        with pytest.raises(APIError, match="refused-id") as info:
            await session.get_operations(["refused-id", good])
    assert info.value.status == 400
    assert [(r.status, r.ids) for r in server.requests] == [
        (400, ("refused-id", good)),
        (400, ("refused-id",)),
        (200, (good,)),
    ]


# -- authentication and authorization -------------------------------------------------------


async def test_401_with_a_string_token(server: SimulatedServer) -> None:
    async with open_session(server, token="not-a-known-token") as session:
        with pytest.raises(AuthenticationError) as info:
            await session.get_operations(["a"])
    assert info.value.status == 401
    assert statuses(server) == [401]


async def test_401_refreshes_through_the_provider_once(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.0)
    server.add_token("tok-1")
    current = ["tok-1"]
    calls: list[str] = []

    async def provider() -> str:
        await anyio.lowlevel.checkpoint()
        calls.append(current[0])
        return current[0]

    async with open_session(server, token=provider) as session:
        assert ids_of(await session.get_operations([op_id])) == [op_id]
        assert calls == ["tok-1"]
        server.revoke_token("tok-1")
        server.add_token("tok-2")
        current[0] = "tok-2"
        assert ids_of(await session.get_operations([op_id])) == [op_id]
        assert calls == ["tok-1", "tok-2"]
        # The new token is kept: no further refresh.
        await session.get_operations([op_id])
    assert calls == ["tok-1", "tok-2"]
    assert statuses(server) == [200, 401, 200, 200]


async def test_still_401_after_the_refresh(server: SimulatedServer) -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return f"revoked-{calls}"

    async with open_session(server, token=provider) as session:
        with pytest.raises(AuthenticationError, match="after one refresh") as info:
            await session.get_operations(["a"])
    assert info.value.status == 401
    assert calls == 2
    assert statuses(server) == [401, 401]


async def test_concurrent_401s_share_one_refresh(server: SimulatedServer) -> None:
    ids = server.add_operations(8, window=0.0)
    server.add_token("fresh")
    calls: list[str] = []

    async def provider() -> str:
        # The first call takes a while: every batch queues for the token meanwhile, so
        # all eight are sent with the stale token and all get a 401.
        await anyio.sleep(0.05 if not calls else 0)
        calls.append("stale" if not calls else "fresh")
        return calls[-1]

    async with open_session(server, token=provider, max_batch_size=1) as session:
        assert sorted(ids_of(await session.get_operations(ids))) == sorted(ids)
    assert calls == ["stale", "fresh"]
    assert sorted(statuses(server)) == [200] * 8 + [401] * 8


async def test_provider_failure_is_an_authentication_error(server: SimulatedServer) -> None:
    async def provider() -> str:
        raise OSError("vault unreachable")

    async with open_session(server, token=provider) as session:
        with pytest.raises(AuthenticationError) as info:
            await session.get_operations(["a"])
    assert isinstance(info.value.__cause__, OSError)
    assert server.requests == []


async def test_403(server: SimulatedServer) -> None:
    server.add_token("no-scope", scopes=("admin",))
    async with open_session(server, token="no-scope") as session:
        with pytest.raises(PermissionDeniedError) as info:
            await session.get_operations(["a"])
    assert info.value.status == 403
    assert statuses(server) == [403]


async def test_404_unknown_space(server: SimulatedServer) -> None:
    async with open_session(server) as session:
        with pytest.raises(SpaceNotFoundError) as info:
            await session.get_operations(["a"], space_id="noSuchSpace")
    assert info.value.status == 404
    assert "noSuchSpace" in str(info.value)
    assert [(r.status, r.space_id) for r in server.requests] == [(404, "noSuchSpace")]


async def test_an_error_in_one_batch_fails_the_whole_call(server: SimulatedServer) -> None:
    ids = server.add_operations(4, window=0.0)
    server.script(ScriptedResponse(403))
    async with open_session(server, max_batch_size=1) as session:
        with pytest.raises(PermissionDeniedError):
            await session.get_operations(ids)
    assert 403 in statuses(server)


# -- transient failures ---------------------------------------------------------------------


async def test_5xx_then_success_is_retried(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.0)
    server.script(ScriptedResponse(503), ScriptedResponse(500), ScriptedResponse(502))
    async with open_session(server) as session:
        assert ids_of(await session.get_operations([op_id])) == [op_id]
        assert session.retries == 3
    assert statuses(server) == [503, 500, 502, 200]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_forever_raises_after_the_budget(server: SimulatedServer, status: int) -> None:
    server.faults.error_rate = 1.0
    server.faults.error_status = status
    async with open_session(server) as session:
        with pytest.raises(APIError) as info:
            await session.get_operations(["a"])
    assert type(info.value) is APIError
    assert info.value.status == status
    assert statuses(server) == [status] * FAST.attempts


async def test_retry_budget_timeout_bounds_retries(server: SimulatedServer) -> None:
    server.faults.error_rate = 1.0
    # Huge attempts, a zero-length budget: the first failure is final.
    retry = RetryPolicy(attempts=100, initial=0.001, maximum=0.01, timeout=0.0)
    async with open_session(server, retry=retry) as session:
        with pytest.raises(APIError):
            await session.get_operations(["a"])
    assert len(server.requests) == 1


async def test_no_retries_with_one_attempt(server: SimulatedServer) -> None:
    server.faults.error_rate = 1.0
    async with open_session(server, retry=RetryPolicy(attempts=1)) as session:
        with pytest.raises(APIError):
            await session.get_operations(["a"])
    assert statuses(server) == [503]


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_is_honoured(server: SimulatedServer, status: int) -> None:
    op_id = server.add_operation(duration=0.0)
    server.script(ScriptedResponse(status, headers={"Retry-After": "0.3"}))
    async with open_session(server) as session:
        assert ids_of(await session.get_operations([op_id])) == [op_id]
    first, second = server.requests
    assert (first.status, second.status) == (status, 200)
    assert second.time - first.time >= 0.3 - EPSILON


async def test_retry_after_http_date_is_honoured(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.0)
    # HTTP dates have whole seconds: a date 0.3 to 1.3 s ahead.
    target = math.ceil(time.time() + 0.3)
    header = email.utils.formatdate(target, usegmt=True)
    server.script(ScriptedResponse(429, headers={"Retry-After": header}))
    async with open_session(server) as session:
        assert ids_of(await session.get_operations([op_id])) == [op_id]
    first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    wall_offset = time.time() - time.monotonic()
    assert second.time + wall_offset >= target - EPSILON


async def test_429_pauses_every_request_to_the_host(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.0)
    server.script(ScriptedResponse(429, headers={"Retry-After": "0.4"}))
    # The hint is longer than the retry budget: the 429 is raised at once ...
    retry = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, timeout=0.1)
    async with open_session(server, retry=retry) as session:
        with pytest.raises(RateLimitedError) as info:
            await session.get_operations([op_id])
        assert info.value.status == 429
        assert info.value.retry_after == pytest.approx(0.4)
        # ... and the next call, whose own budget ends before the pause does, raises at
        # once without a request (it would otherwise block past its budget) ...
        with pytest.raises(RateLimitedError) as again:
            await session.get_operations(["another-id"])
        assert 0 < (again.value.retry_after or 0) <= 0.4
        assert len(server.requests) == 1
        assert session.statistics().rate_limit_pauses == 1
        # ... and once the pause has passed, requests start again.
        await anyio.sleep(0.4)
        assert await session.get_operations(["another-id"]) == []
    first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 0.4 - EPSILON


async def test_429_forever_raises_rate_limited(server: SimulatedServer) -> None:
    server.faults.rate_limit_rate = 1.0
    server.faults.retry_after = 0.01
    async with open_session(server) as session:
        with pytest.raises(RateLimitedError) as info:
            await session.get_operations(["a"])
    assert info.value.retry_after == pytest.approx(0.01)
    assert statuses(server) == [429] * FAST.attempts


async def test_disconnect_is_retried(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.0)
    # Three drops: more than aiohttp's own single resend of an idempotent request.
    server.script(*[ScriptedResponse(disconnect=True)] * 3)
    async with open_session(server) as session:
        assert ids_of(await session.get_operations([op_id])) == [op_id]
        assert session.retries >= 1
    assert statuses(server) == [0, 0, 0, 200]


async def test_disconnect_forever_raises_connect_error(server: SimulatedServer) -> None:
    server.faults.disconnect_rate = 1.0
    async with open_session(server) as session:
        with pytest.raises(ConnectError) as info:
            await session.get_operations(["a"])
        assert session.requests_sent == FAST.attempts
    assert info.value.__cause__ is not None
    assert set(statuses(server)) == {0}


async def test_connection_refused_raises_connect_error_after_the_budget() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with Session(url, token="t", retry=FAST) as session:
        with pytest.raises(ConnectError):
            await session.get_operations(["a"])
        assert session.requests_sent == FAST.attempts


async def test_malformed_body_is_retried_to_success(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.0)
    server.script(ScriptedResponse(body=b'[{"id": "'), ScriptedResponse(body=b'{"oops": 1}'))
    async with open_session(server) as session:
        assert ids_of(await session.get_operations([op_id])) == [op_id]
    assert statuses(server) == [200, 200, 200]


async def test_malformed_body_forever_raises_invalid_response(server: SimulatedServer) -> None:
    server.faults.malformed_rate = 1.0
    async with open_session(server) as session:
        with pytest.raises(InvalidResponseError) as info:
            await session.get_operations(["a"])
    assert info.value.__cause__ is not None
    assert statuses(server) == [200] * FAST.attempts


async def test_response_too_large_is_retried_then_raised(server: SimulatedServer) -> None:
    big = b"[" + b" " * 5000 + b"]"
    server.script(*[ScriptedResponse(body=big)] * FAST.attempts)
    async with open_session(server, max_response_size=1000) as session:
        with pytest.raises(ResponseTooLarge):
            await session.get_operations(["a"])
    assert len(server.requests) == FAST.attempts


async def test_response_too_large_then_success(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.0)
    server.script(ScriptedResponse(body=b"[" + b" " * 5000 + b"]"))
    async with open_session(server, max_response_size=1000) as session:
        assert ids_of(await session.get_operations([op_id])) == [op_id]
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_refused(server: SimulatedServer, status: int) -> None:
    op_id = server.add_operation(duration=0.0)
    location = f"{server.url}/programs/v2/spaces/default/asyncOperations?asyncOperationIds={op_id}"
    server.script(ScriptedResponse(status, headers={"Location": location}))
    async with open_session(server) as session:
        with pytest.raises(APIError) as info:
            await session.get_operations(["a"])
    assert type(info.value) is APIError
    assert info.value.status == status
    assert [(r.status, r.ids) for r in server.requests] == [(status, ("a",))]


async def test_unexpected_status_is_an_api_error(server: SimulatedServer) -> None:
    server.script(ScriptedResponse(418))
    async with open_session(server) as session:
        with pytest.raises(APIError) as info:
            await session.get_operations(["a"])
    assert info.value.status == 418
    assert statuses(server) == [418]


# -- validation -----------------------------------------------------------------------------

BAD_SPACES = [
    "",
    "abc",
    "abcdef",
    "a" * 23,
    "bad space",
    "bad/space1",
    "bad.space1",
    "b\u00e4d_space",
    "default\n",
    "../../etc",
    "null",
    "None",
    "%64efault",
]
GOOD_SPACES = [
    "default",
    "abc-DEF_123",
    "a" * 7,
    "Z" * 22,
    "-------",
    "__init__",
    "rkr83lapKkyCJuLLWqLqzB",
]


@pytest.mark.parametrize("space_id", [*BAD_SPACES, None, 1234567, b"default"])
async def test_invalid_space_id_at_construction(space_id: Any) -> None:
    with pytest.raises(ValueError, match="space_id"):
        Session("https://example.com", token="t", space_id=space_id)


@pytest.mark.parametrize("space_id", BAD_SPACES)
async def test_invalid_space_id_per_call(server: SimulatedServer, space_id: str) -> None:
    async with open_session(server) as session:
        with pytest.raises(ValueError, match="space_id"):
            await session.get_operations(["a"], space_id=space_id)
    assert server.requests == []


@pytest.mark.parametrize("space_id", GOOD_SPACES)
async def test_valid_space_ids(server: SimulatedServer, space_id: str) -> None:
    op_id = server.add_operation(duration=0.0, space_id=space_id)
    async with open_session(server, space_id=space_id) as session:
        assert session.space_id == space_id
        assert ids_of(await session.get_operations([op_id])) == [op_id]
    assert [r.space_id for r in server.requests] == [space_id]


async def test_space_id_per_call_overrides_the_default(server: SimulatedServer) -> None:
    op_id = server.add_operation(duration=0.0, space_id="other_space-1")
    async with open_session(server) as session:
        assert await session.get_operations([op_id]) == []
        assert ids_of(await session.get_operations([op_id], space_id="other_space-1")) == [op_id]
    assert [r.space_id for r in server.requests] == ["default", "other_space-1"]


@pytest.mark.parametrize(
    "ids",
    [[""], ["ok", ""], ["a\x00b"], ["a\nb"], ["\t"], ["a\rb"], ["a\x7f"], ["a\x85b"], ["\x1b[0m"]],
)
async def test_invalid_ids_are_refused_before_any_request(
    server: SimulatedServer, ids: list[str]
) -> None:
    async with open_session(server) as session:
        with pytest.raises(ValueError, match="operation ID"):
            await session.get_operations(ids)
    assert server.requests == []


@pytest.mark.parametrize("ids", ["single-string", b"bytes", [1], [None], [b"a"]])
async def test_ids_of_the_wrong_type(server: SimulatedServer, ids: Any) -> None:
    async with open_session(server) as session:
        with pytest.raises(TypeError):
            await session.get_operations(ids)
    assert server.requests == []


SPECIAL_IDS = [
    "a&b",
    "x=y",
    "#frag",
    "p/q",
    "100%",
    "%41",
    "what?",
    "sp ace",
    " lead-and-trail ",
    "plus+sign",
    "semi;colon",
    "quote'\"",
    "tilde~back\\slash",
    "\u00fcn\u00efc\u00f8d\u00e9",
    "\u65e5\u672c\u8a9e",
    "emoji\U0001f600",
    "a" * 300,
]


async def test_ids_reach_the_server_intact(server: SimulatedServer) -> None:
    for op_id in SPECIAL_IDS:
        server.add_operation(op_id, duration=0.0)
    async with open_session(server) as session:
        operations = await session.get_operations(SPECIAL_IDS)
    assert ids_of(operations) == SPECIAL_IDS
    [logged] = server.requests
    assert logged.ids == tuple(SPECIAL_IDS)
    assert logged.query.count("&") == len(SPECIAL_IDS) - 1
    assert all(ord(c) < 128 and c not in " #" for c in logged.path + logged.query)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://api.localhost",
        "http://[::1]:8080",
        "http://127.0.0.2",
        "https://api.seismic.com",
        "https://example.com/prefix/",
    ],
)
async def test_base_urls_allowed(base_url: str) -> None:
    session = Session(base_url, token="t")
    assert base_url.rstrip("/") in repr(session)


@pytest.mark.parametrize(
    "base_url", ["http://example.com", "http://10.0.0.1:8080", "http://localhost.evil.com"]
)
async def test_plain_http_to_a_remote_host_needs_an_opt_in(base_url: str) -> None:
    with pytest.raises(ValueError, match="allow_insecure_http"):
        Session(base_url, token="t")
    assert Session(base_url, token="t", allow_insecure_http=True).space_id == "default"


@pytest.mark.parametrize(
    "base_url",
    ["ftp://example.com", "example.com", "https://", "https://u:p@example.com", "https://x/?q=1"],
)
async def test_bad_base_urls(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        Session(base_url, token="t")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"token": ""}, ValueError),
        ({"token": "a\nb"}, ValueError),
        ({"token": 123}, TypeError),
        ({"token": "t", "max_batch_size": 0}, ValueError),
        ({"token": "t", "max_url_length": 10}, ValueError),
        ({"token": "t", "timeout": 0}, ValueError),
        ({"token": "t", "max_response_size": 0}, ValueError),
    ],
)
async def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Session("https://example.com", **kwargs)


# -- the token stays secret -----------------------------------------------------------------


def assert_no_canary(*texts: object) -> None:
    for text in texts:
        assert CANARY not in str(text)


def assert_error_clean(error: BaseException) -> None:
    seen: BaseException | None = error
    while seen is not None:
        assert_no_canary(str(seen), repr(seen), getattr(seen, "body", b"").decode("latin-1"))
        seen = seen.__cause__ or seen.__context__


async def test_token_never_in_repr_errors_or_logs(
    server: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncpoll")
    server.add_token(CANARY)
    op_id = server.add_operation(duration=0.0)
    errors: list[AsyncpollError] = []
    patient = RetryPolicy(attempts=8, initial=0.001, maximum=0.01)
    async with open_session(server, token=CANARY, retry=patient) as session:
        assert_no_canary(repr(session), str(session), vars(session).get("_base"))
        server.script(
            ScriptedResponse(503),
            ScriptedResponse(disconnect=True),
            ScriptedResponse(disconnect=True),
            ScriptedResponse(body=b"not json"),
            ScriptedResponse(429, headers={"Retry-After": "0"}),
        )
        assert ids_of(await session.get_operations([op_id])) == [op_id]
        for scripted in (ScriptedResponse(302, headers={"Location": "/x"}), ScriptedResponse(403)):
            server.script(scripted)
            with pytest.raises(APIError) as info:
                await session.get_operations([op_id])
            errors.append(info.value)
        server.faults.malformed_rate = 1.0
        with pytest.raises(InvalidResponseError) as bad:
            await session.get_operations([op_id])
        errors.append(bad.value)
        server.faults.malformed_rate = 0.0
        server.revoke_token(CANARY)
        with pytest.raises(AuthenticationError) as auth:
            await session.get_operations([op_id])
        errors.append(auth.value)

    async def provider() -> str:
        return CANARY

    async with open_session(server, token=provider) as session:
        assert_no_canary(repr(session))
        with pytest.raises(AuthenticationError) as refreshed:
            await session.get_operations([op_id])
        errors.append(refreshed.value)
    async with Session(f"http://127.0.0.1:{closed_port()}", token=CANARY, retry=FAST) as session:
        with pytest.raises(ConnectError) as refused:
            await session.get_operations([op_id])
        errors.append(refused.value)

    for error in errors:
        assert_error_clean(error)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    for record in caplog.records:
        assert_no_canary(record.getMessage(), record.args, record.exc_text)
    assert_no_canary(caplog.text)


async def test_unknown_states_are_logged_once(
    server: SimulatedServer, caplog: pytest.LogCaptureFixture
) -> None:
    op_id = server.add_operation(duration=math.inf)
    server.set_operation(op_id, state="Archiving")
    async with open_session(server) as session:
        for _ in range(3):
            [operation] = await session.get_operations([op_id])
            assert operation.state is S.UNKNOWN
            assert not operation.is_terminal
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Archiving" in warnings[0].getMessage()


@pytest.mark.parametrize("light", [False, True])
async def test_each_asked_id_keeps_its_first_answer_in_order(
    light: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The Session's fast path (every ID once, all asked for) and the careful one (any
    # repeat or stranger) must give the same answers, for get_operations and the Poller.
    def handler(request: Request) -> Response:
        body = [
            {"id": "b", "state": "Running", "percentComplete": 10},
            {"id": "stranger", "state": "Succeeded"},
            {"id": "a", "state": "Archiving"},
            {"id": "b", "state": "Succeeded"},
            {"id": "c", "state": "Running"},
        ]
        return Response(200, {}, orjson.dumps(body))

    async with Session(
        "https://example.com", token="tok", transport=MockTransport(handler)
    ) as session:
        ids = ["a", "b", "c"]
        parts = [encode_id("asyncOperationIds", i) for i in ids]
        for _ in range(2):
            result = await session._query_batch("default", ids, parts, light=light)
            assert list(result.by_id) == ["b", "a", "c"]
            assert result.by_id["b"].state is S.RUNNING
            assert result.by_id["b"].percent_complete == 10
            assert result.by_id["a"].state is S.UNKNOWN
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # each surprise once per Session, however often it comes
    assert any("twice" in w for w in warnings)
    assert any("not asked for" in w for w in warnings)
    assert any("Archiving" in w for w in warnings)


async def test_max_connections_caps_the_requests_in_flight() -> None:
    # A free slot is taken without yielding, a busy Session queues: never more at once.
    in_flight = peak = 0

    async def handler(request: Request) -> Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01)
        in_flight -= 1
        operation_id = request.url.rpartition("=")[2]
        return Response(200, {}, orjson.dumps([{"id": operation_id, "state": "Running"}]))

    async with Session(
        "https://example.com",
        token="tok",
        transport=MockTransport(handler),
        max_batch_size=1,
        max_connections=2,
    ) as session:
        operations = await session.get_operations([f"op{i}" for i in range(7)])
        assert sorted(op.id for op in operations) == [f"op{i}" for i in range(7)]
        assert session.requests_sent == 7
    assert peak == 2


async def test_an_unknown_state_in_a_clean_answer_is_logged() -> None:
    # Every ID once and asked for (the fast path): an unknown state is still noticed.
    def handler(request: Request) -> Response:
        return Response(200, {}, orjson.dumps([{"id": "a", "state": "Thawing"}]))

    async with Session(
        "https://example.com", token="tok", transport=MockTransport(handler)
    ) as session:
        with pytest.MonkeyPatch.context() as patch:
            noted: list[str] = []
            patch.setattr(session, "_note_unknown_state", lambda op: noted.append(op.id))
            result = await session._query_batch(
                "default", ["a"], [encode_id("asyncOperationIds", "a")], light=True
            )
    assert list(result.by_id) == ["a"]
    assert noted == ["a"]


# -- wire variants --------------------------------------------------------------------------

VARIANTS = [
    WireVariant(),
    *(WireVariant(wrapper=w) for w in ("asyncOperations", "items", "value", "data")),
    WireVariant(state_key="status"),
    *(WireVariant(state_style=s) for s in ("spaced", "upper_snake", "lower_snake")),
    *(WireVariant(percent_key=k) for k in ("progress", "percentage", None)),
    WireVariant(percent_as_string=True),
    *(WireVariant(error_style=e) for e in ("string", "errorMessage", "errors")),
    WireVariant(canceled_spelling="Cancelled"),
    WireVariant(
        wrapper="items",
        state_key="status",
        state_style="upper_snake",
        percent_key="progress",
        percent_as_string=True,
        error_style="errors",
        canceled_spelling="Cancelled",
    ),
    WireVariant(
        wrapper="value",
        state_style="spaced",
        percent_key="percentage",
        error_style="errorMessage",
        canceled_spelling="Cancelled",
    ),
]


def comparable(op: AsyncOperation, variant: WireVariant) -> tuple[Any, ...]:
    error = op.error
    # Only the object and errors-list styles carry the error code.
    keeps_code = variant.error_style in ("object", "errors")
    return (
        op.id,
        op.state,
        op.percent_complete if variant.percent_key is not None else None,
        op.result,
        op.created_resource_ids,
        None if error is None else error.message,
        None if error is None or not keeps_code else error.code,
    )


async def test_every_wire_variant_decodes_to_the_same_models(server: SimulatedServer) -> None:
    ids = [server.add_operation(duration=math.inf) for _ in range(5)]
    pending, running, succeeded, failed, canceled = ids
    server.set_operation(pending, state="NotStarted")
    server.set_operation(running, percent_complete=37.5)
    server.set_operation(succeeded, state="Succeeded", result={"createdResourceIds": ["p1", "t1"]})
    server.set_operation(failed, state="Failed", percent_complete=60, error="template gone")
    server.set_operation(canceled, state="Canceled", percent_complete=20)

    async with open_session(server) as session:
        baseline = await session.get_operations(ids)
        assert [op.state for op in baseline] == [
            S.NOT_STARTED,
            S.RUNNING,
            S.SUCCEEDED,
            S.FAILED,
            S.CANCELED,
        ]
        assert baseline[1].percent_complete == 37.5
        assert baseline[2].created_resource_ids == ("p1", "t1")
        assert baseline[3].error == OperationError(message="template gone", code="OperationFailed")
        for variant in VARIANTS:
            server.variant = variant
            operations = await session.get_operations(ids)
            assert [comparable(op, variant) for op in operations] == [
                comparable(op, variant) for op in baseline
            ], variant
            if variant.percent_key is None:
                assert all(op.percent_complete is None for op in operations)
    assert len(server.requests) == len(VARIANTS) + 1


# -- lifecycle ------------------------------------------------------------------------------


def ok_handler(request: Request) -> Response:
    return Response(200, body=b"[]")


async def test_session_closes_its_transport() -> None:
    transport = MockTransport(ok_handler)
    async with Session(token="t", transport=transport) as session:
        assert await session.get_operations(["a"]) == []
        open_inside = not transport.closed
    assert open_inside
    assert transport.closed
    [request] = transport.requests
    assert request.url == (
        "https://api.seismic.com/programs/v2/spaces/default/asyncOperations?asyncOperationIds=a"
    )
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["Accept"] == "application/json"


async def test_session_closes_its_transport_when_the_body_raises() -> None:
    transport = MockTransport(ok_handler)
    with pytest.raises(KeyError):
        async with Session(token="t", transport=transport):
            raise KeyError("boom")
    assert transport.closed


async def test_session_closes_its_transport_when_cancelled() -> None:
    started = anyio.Event()

    async def hang(request: Request) -> Response:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    transport = MockTransport(hang)
    async with anyio.create_task_group() as tg:

        async def query() -> None:
            async with Session(token="t", transport=transport) as session:
                await session.get_operations(["a"])

        tg.start_soon(query)
        await started.wait()
        tg.cancel_scope.cancel()
    assert transport.closed
    assert len(transport.requests) == 1


async def test_session_closes_its_transport_on_a_timeout() -> None:
    async def hang(request: Request) -> Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    transport = MockTransport(hang)
    with anyio.move_on_after(0.05) as scope:
        async with Session(token="t", transport=transport) as session:
            await session.get_operations(["a"])
    assert scope.cancelled_caught
    assert transport.closed


async def test_transport_errors_from_a_custom_transport_are_retried() -> None:
    calls = 0

    def flaky(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectError("simulated network fault")
        return Response(200, body=b'[{"id": "a", "state": "Running"}]')

    async with Session(token="t", transport=MockTransport(flaky), retry=FAST) as session:
        [operation] = await session.get_operations(["a"])
    assert operation.state is S.RUNNING
    assert calls == 3


async def test_use_without_async_with_opens_on_first_use_and_closing_is_final() -> None:
    transport = MockTransport(ok_handler)
    session = Session(token="t", transport=transport)
    closed_at_first = session.is_closed
    await session.get_operations(["a"])  # opens on first use
    assert not closed_at_first
    async with session:
        pass
    assert session.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        await session.get_operations(["a"])
    with pytest.raises(RuntimeError, match="once"):
        async with session:
            pass
    assert len(transport.requests) == 1


async def test_default_transport_against_the_simulator(
    anyio_backend: str, server: SimulatedServer
) -> None:
    ids = server.add_operations(5, window=0.0)
    async with open_session(server) as session:
        expected = AiohttpTransport if anyio_backend == "asyncio" else HttpxTransport
        assert type(session._transport) is expected
        assert ids_of(await session.get_operations(ids)) == ids


@hypothesis.given(hypothesis.strategies.text(min_size=1))
def test_an_id_is_encoded_as_quote_would_encode_it(operation_id: str) -> None:
    # encode_id skips quote() for unreserved IDs; the result must not change.
    hypothesis.assume(operation_id.isascii() or _encodable(operation_id))
    expected = f"asyncOperationIds={urllib.parse.quote(operation_id, safe='')}"
    assert encode_id("asyncOperationIds", operation_id) == expected


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
