"""Security (issue 6), on asyncio and trio, against the simulator over loopback.

What is proven here (guarantees 5 and 6 of the README):

5. the token never appears in a log line (any level, any logger), a repr, or the text of an
   exception (message, repr, chained causes, formatted traceback), whatever went wrong; it
   is never sent over a redirect (a 3xx is an error, the other host sees nothing), and never
   over plain HTTP to a host that is not loopback without ``allow_insecure_http=True``;
6. operation IDs and space IDs can never change the structure of a request: whatever their
   characters, each ID reaches the server as one value of ``asyncOperationIds``, intact,
   through the Session and through the Poller.
"""

from __future__ import annotations

import logging
import math
import re
import string
import traceback
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncpoll import (
    AiohttpTransport,
    APIError,
    AuthenticationError,
    ConnectError,
    Endpoint,
    HttpxTransport,
    InvalidResponseError,
    MockTransport,
    OperationFailed,
    OperationNotFound,
    PermissionDeniedError,
    Poller,
    PollInterval,
    RateLimitedError,
    Request,
    RequestTimeout,
    Response,
    ResponseTooLarge,
    RetryPolicy,
    Session,
    SpaceNotFoundError,
)
from asyncpoll.testing import ScriptedResponse, SimulatedServer

pytestmark = pytest.mark.anyio

CANARY = "CANARY-7c1e5b9d-tok"
FAST_RETRY = RetryPolicy(attempts=3, initial=0.001, maximum=0.005, timeout=5.0)
FAST_POLL = PollInterval(initial=0.01, maximum=0.05)
PATH = "/programs/v2/spaces/{}/asyncOperations"


class Recording:
    """A transport wrapper that keeps every Request the Session built."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[Request] = []

    async def handle_request(self, request: Request) -> Response:
        self.requests.append(request)
        response: Response = await self.inner.handle_request(request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def closed_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- 5: the token never appears in logs, reprs or exceptions ------------------------------


def texts_of(error: BaseException) -> Iterator[str]:
    """Everything a program might print or log about ``error`` and the errors behind it."""
    yield "".join(traceback.format_exception(error))
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield repr(current.args)
        yield repr(getattr(current, "__notes__", ""))
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)


def assert_no_canary(*texts: object) -> None:
    for text in texts:
        assert CANARY not in str(text), text


async def session_errors(server: SimulatedServer) -> dict[str, BaseException]:
    """Drive the Session down every error path with the canary as its token."""
    errors: dict[str, BaseException] = {}

    async def capture(name: str, expected: type[BaseException], session: Session) -> None:
        with pytest.raises(expected) as info:
            await session.get_operations(["op-1", "op-2"])
        errors[name] = info.value

    @asynccontextmanager
    async def canary(**kwargs: Any) -> AsyncIterator[Session]:
        kwargs.setdefault("token", CANARY)
        kwargs.setdefault("retry", FAST_RETRY)
        async with Session(server.url, **kwargs) as session:
            assert_no_canary(repr(session), str(session))
            yield session

    async def same_canary() -> str:
        return CANARY

    async def failing_provider() -> str:
        raise RuntimeError("the vault is sealed")

    async def bad_provider() -> str:
        return CANARY + "\r\nX-Injected: 1"

    # The server does not know the canary: 401, and 401 again after one refresh.
    async with canary() as session:
        await capture("401", AuthenticationError, session)
    async with canary(token=same_canary) as session:
        await capture("401 after refresh", AuthenticationError, session)
    async with canary(token=failing_provider) as session:
        await capture("provider raises", AuthenticationError, session)
    async with canary(token=bad_provider) as session:
        await capture("provider returns a bad token", AuthenticationError, session)
    server.add_token(CANARY, scopes=("admin",))
    async with canary() as session:
        await capture("403", PermissionDeniedError, session)
    server.add_token(CANARY, scopes=("view",))
    async with canary() as session:
        with pytest.raises(SpaceNotFoundError) as info:
            await session.get_operations(["op-1"], space_id="noSuchSpace")
        errors["404"] = info.value
        server.script(*[ScriptedResponse(429, headers={"Retry-After": "0"})] * 3)
        await capture("429 exhausted", RateLimitedError, session)
        server.script(*[ScriptedResponse(503)] * 3)
        await capture("5xx exhausted", APIError, session)
        server.faults.disconnect_rate = 1.0
        await capture("disconnect", ConnectError, session)
        server.faults.disconnect_rate = 0.0
        server.script(*[ScriptedResponse(body=b"<html>oops</html>")] * 3)
        await capture("malformed", InvalidResponseError, session)
        server.script(ScriptedResponse(302, headers={"Location": f"{server.url}/elsewhere"}))
        await capture("redirect", APIError, session)
        server.script(ScriptedResponse(418))
        await capture("unexpected status", APIError, session)
        server.script(ScriptedResponse(400))
        with pytest.raises(APIError) as single:
            await session.get_operations(["op-1"])
        errors["single-ID 400"] = single.value
    async with canary(max_response_size=64) as session:
        server.script(*[ScriptedResponse(body=b"[" + b" " * 100 + b"]")] * 3)
        await capture("too large", ResponseTooLarge, session)
    async with canary(timeout=0.1, retry=RetryPolicy(attempts=1)) as session:
        server.script(ScriptedResponse(delay=5.0))
        await capture("timeout", RequestTimeout, session)
    async with Session(
        f"http://127.0.0.1:{closed_port()}", token=CANARY, retry=FAST_RETRY
    ) as session:
        await capture("connection refused", ConnectError, session)
    return errors


async def poller_errors(server: SimulatedServer) -> dict[str, BaseException]:
    """Drive the Poller's callers down their error paths with the canary as the token."""
    errors: dict[str, BaseException] = {}
    failed = server.add_operation(duration=0.0, outcome="failed", error_message="it broke")
    running = server.add_operation(duration=math.inf)
    odd = server.add_operation(duration=math.inf)
    server.set_operation(odd, state="Archiving")
    async with Session(server.url, token=CANARY, retry=FAST_RETRY) as session:
        async with Poller(session, interval=FAST_POLL, not_found_grace=0.05) as poller:
            assert_no_canary(repr(poller), poller.statistics())
            # A batch that fails after its retries is logged (a warning) and polled again;
            # an unknown state is logged once.
            server.script(*[ScriptedResponse(503)] * FAST_RETRY.attempts)
            with pytest.raises(TimeoutError):
                await poller.wait(odd, timeout=0.2)
            for name, op_id, kind in [
                ("operation failed", failed, OperationFailed),
                ("not found", "no-such-operation", OperationNotFound),
            ]:
                with pytest.raises(kind) as info:
                    await poller.wait(op_id, timeout=10)
                errors[name] = info.value
            with pytest.raises(TimeoutError) as timeout:
                await poller.wait(running, timeout=0.05)
            errors["wait timeout"] = timeout.value
            server.add_token(CANARY, scopes=("admin",))
            with pytest.raises(PermissionDeniedError) as denied:
                await poller.wait_all([running], timeout=10)
            errors["403 through the poller"] = denied.value
            server.add_token(CANARY, scopes=("view",))

        async def closed_waiter(poller: Poller) -> None:
            with pytest.raises(RuntimeError, match="closed") as info:
                await poller.wait(running)
            errors["poller closed"] = info.value

        async with anyio.create_task_group() as tg:
            async with Poller(session, interval=FAST_POLL) as poller:
                tg.start_soon(closed_waiter, poller)
                await anyio.sleep(0.05)
    return errors


async def test_the_token_never_appears_in_logs_reprs_or_errors(
    server: SimulatedServer, caplog: pytest.LogCaptureFixture, anyio_backend: str
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records
    caplog.set_level(logging.DEBUG, logger="asyncpoll")
    server.add_token(CANARY)
    op_id = server.add_operation(duration=0.0)
    recording = Recording(AiohttpTransport() if anyio_backend == "asyncio" else HttpxTransport())
    # A good day first, then every error path of the Session and of the Poller.
    async with Session(server.url, token=CANARY, transport=recording) as session:
        [operation] = await session.get_operations([op_id])
        assert_no_canary(repr(session), repr(recording.inner), repr(operation), operation.raw)
    server.revoke_token(CANARY)
    errors = await session_errors(server)
    errors.update(await poller_errors(server))

    assert len(errors) == 21
    for name, error in errors.items():
        for text in texts_of(error):
            assert CANARY not in text, (name, text)
    # The token did travel, in the header, and only there.
    [request] = recording.requests
    assert request.headers["Authorization"] == f"Bearer {CANARY}"
    assert_no_canary(repr(request), str(request), request.url)
    assert_no_canary(repr(Response(200, headers={"x": "y"}, body=CANARY.encode())))
    # Records at every level were captured (asyncpoll's own among them), none holds it.
    levels = {r.levelno for r in caplog.records if r.name == "asyncpoll"}
    assert {logging.DEBUG, logging.WARNING} <= levels
    for record in caplog.records:
        assert_no_canary(record.getMessage(), record.args, record.exc_text)
    assert_no_canary(caplog.text)


def test_mock_transport_and_request_reprs_hide_headers() -> None:
    request = Request("GET", "https://example.com/x", headers={"Authorization": f"Bearer {CANARY}"})
    transport = MockTransport(lambda r: Response(200))
    assert_no_canary(repr(request), str(request), repr(transport))


# -- 5: never over a redirect ----------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_the_token_never_follows_a_redirect(server: SimulatedServer, status: int) -> None:
    op_id = server.add_operation(duration=0.0)
    server.add_token(CANARY)
    with SimulatedServer() as elsewhere:
        elsewhere.add_token(CANARY)
        target = f"{elsewhere.url}{PATH.format('default')}?asyncOperationIds={op_id}"
        redirect = ScriptedResponse(status, headers={"Location": target})
        async with Session(server.url, token=CANARY, retry=FAST_RETRY) as session:
            server.script(redirect)
            with pytest.raises(APIError) as info:
                await session.get_operations([op_id])
            assert info.value.status == status
            assert "redirect" in str(info.value)
            # Through the Poller, the waiters of that batch get the same error.
            async with Poller(session, interval=FAST_POLL) as poller:
                server.script(redirect)
                with pytest.raises(APIError) as waited:
                    await poller.wait(op_id, timeout=10)
                assert waited.value.status == status
                # It is not retried, and other operations are polled on.
                assert (await poller.wait(op_id, timeout=10)).id == op_id
        assert elsewhere.requests == []
    assert [r.status for r in server.requests] == [status, status, 200]


# -- 5: never over plain HTTP to a host that is not loopback -------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "http://example.com",
        "http://api.seismic.com:80",
        "http://10.0.0.1:8080",
        "http://192.168.1.10",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "http://[2001:db8::1]",
    ],
)
async def test_plain_http_to_a_remote_host_is_refused_before_any_request(base_url: str) -> None:
    transport = MockTransport(lambda r: Response(200, body=b"[]"))
    with pytest.raises(ValueError, match="allow_insecure_http") as info:
        Session(base_url, token=CANARY, transport=transport)
    assert_no_canary(str(info.value))
    assert transport.requests == []
    # The explicit opt-in allows it.
    async with Session(
        base_url, token=CANARY, transport=transport, allow_insecure_http=True
    ) as session:
        assert await session.get_operations(["a"]) == []
    [request] = transport.requests
    assert urllib.parse.urlsplit(request.url).hostname == urllib.parse.urlsplit(base_url).hostname


@pytest.mark.parametrize(
    "path",
    [
        "@evil.example/{space_id}",
        ":80@evil.example/{space_id}",
        ".evil.example/{space_id}",
        "evil/{space_id}",
    ],
)
@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8080", "https://api.seismic.com"])
async def test_an_endpoint_path_cannot_move_the_token_to_another_host(
    base_url: str, path: str
) -> None:
    with pytest.raises(ValueError, match=r"endpoint\.path"):
        Session(base_url, token=CANARY, endpoint=Endpoint(path=path))


@settings(max_examples=150, deadline=None)
@given(
    path=st.text(alphabet=string.printable, max_size=20).map(lambda text: text + "{space_id}"),
    base_url=st.sampled_from(
        ["http://127.0.0.1:8080", "https://api.seismic.com", "https://example.com/prefix"]
    ),
)
async def test_every_request_goes_to_the_base_url_host(path: str, base_url: str) -> None:
    transport = MockTransport(lambda r: Response(200, body=b"[]"))
    try:
        session = Session(base_url, token=CANARY, transport=transport, endpoint=Endpoint(path=path))
    except ValueError:
        return
    try:
        async with session:
            await session.get_operations(["a"])
    except (KeyError, IndexError, ValueError):
        # A template with other "{...}" fields: the developer's error, sent nowhere.
        assert transport.requests == []
        return
    [request] = transport.requests
    sent, base = urllib.parse.urlsplit(request.url), urllib.parse.urlsplit(base_url)
    assert (sent.scheme, sent.hostname, sent.port) == (base.scheme, base.hostname, base.port)


# -- 6: IDs and space IDs never change the structure of a request --------------------------

SPECIAL_IDS = [
    "a&b",
    "a&asyncOperationIds=injected",
    "x=y",
    "==",
    "#frag",
    "p/q",
    "../../admin",
    "100%",
    "%41",
    "%2F",
    "what?",
    "?x=1",
    "sp ace",
    " lead-and-trail ",
    "plus+sign",
    "semi;colon",
    "quote'\"",
    "tilde~back\\slash",
    "\u00fcn\u00efc\u00f8d\u00e9",
    "\u65e5\u672c\u8a9e",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "emoji\U0001f600",
    "\u2028line-separator",
]


def check_structure(query: str, ids: list[str]) -> None:
    """``query`` carries exactly ``ids``, each as one value of ``asyncOperationIds``."""
    assert query.isascii()
    assert all(c not in query for c in " #")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    assert [key for key, _ in pairs] == ["asyncOperationIds"] * len(ids)
    assert [value for _, value in pairs] == ids


@pytest.mark.parametrize("kind", ["wait", "wait_all", "as_completed", "watch"])
async def test_special_ids_reach_the_server_intact_through_the_poller(
    server: SimulatedServer, kind: str
) -> None:
    for op_id in SPECIAL_IDS:
        server.add_operation(op_id, duration=0.0)
    async with Session(server.url, token=server.token or "", retry=FAST_RETRY) as session:
        async with Poller(session, interval=FAST_POLL, not_found_grace=0.5) as poller:
            if kind == "wait":
                async with anyio.create_task_group() as tg:
                    found: list[str] = []

                    async def wait(op_id: str) -> None:
                        found.append((await poller.wait(op_id, timeout=10)).id)

                    for op_id in SPECIAL_IDS:
                        tg.start_soon(wait, op_id)
            elif kind == "wait_all":
                found = [op.id for op in await poller.wait_all(SPECIAL_IDS, timeout=10)]
            elif kind == "as_completed":
                async with poller.as_completed(SPECIAL_IDS, timeout=10) as done:
                    found = [op.id async for op in done]
            else:
                async with poller.watch(SPECIAL_IDS, timeout=10) as events:
                    found = [e.operation_id async for e in events if e.is_terminal]
    assert sorted(found) == sorted(SPECIAL_IDS)
    polled = [i for r in server.requests for i in r.ids]
    assert sorted(polled) == sorted(SPECIAL_IDS)  # each one asked once, as itself
    for logged in server.requests:
        assert logged.path == PATH.format("default")
        check_structure(logged.query, list(logged.ids))


# Anything but control characters (and lone surrogates, which no text encoding can carry).
VALID_IDS = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=12)


def echo(request: Request) -> Response:
    """Answer every asked ID as a succeeded operation."""
    query = urllib.parse.urlsplit(request.url).query
    ids = [v for _, v in urllib.parse.parse_qsl(query, keep_blank_values=True)]
    body = orjson.dumps([{"id": i, "state": "Succeeded", "percentComplete": 100} for i in ids])
    return Response(200, body=body)


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(VALID_IDS, min_size=1, max_size=8, unique=True))
async def test_any_ids_are_sent_as_values_by_the_session(ids: list[str]) -> None:
    transport = MockTransport(echo)
    async with Session(token="t", transport=transport, max_batch_size=3) as session:
        operations = await session.get_operations(ids)
    assert [op.id for op in operations] == ids
    batches: list[list[str]] = []
    for request in transport.requests:  # sent concurrently: in any order
        parts = urllib.parse.urlsplit(request.url)
        assert parts.path == PATH.format("default")
        assert not parts.fragment
        batch = [v for _, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
        check_structure(parts.query, batch)
        batches.append(batch)
    assert sorted(batches) == sorted(ids[i : i + 3] for i in range(0, len(ids), 3))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ids=st.lists(VALID_IDS, min_size=1, max_size=8, unique=True))
async def test_any_ids_are_sent_as_values_by_the_poller(ids: list[str]) -> None:
    transport = MockTransport(echo)
    async with Session(token="t", transport=transport, max_batch_size=3) as session:
        async with Poller(session, interval=FAST_POLL, not_found_grace=0.5) as poller:
            operations = await poller.wait_all(ids, timeout=10)
    assert [op.id for op in operations] == ids
    sent: list[str] = []
    for request in transport.requests:
        parts = urllib.parse.urlsplit(request.url)
        assert parts.path == PATH.format("default")
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        check_structure(parts.query, [value for _, value in pairs])
        sent += [value for _, value in pairs]
    assert sorted(sent) == sorted(ids)


CONTROL = st.characters(codec="utf-8", categories=["Cc"])


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.text(max_size=6) | CONTROL.map(lambda c: f"x{c}y"), min_size=1, max_size=4))
async def test_empty_ids_and_control_characters_are_refused_before_any_request(
    ids: list[str],
) -> None:
    valid = all(i and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in i) for i in ids)
    transport = MockTransport(echo)
    async with Session(token="t", transport=transport) as session:
        async with Poller(session, interval=FAST_POLL, not_found_grace=0.5) as poller:
            if valid:
                operations = await session.get_operations(ids)
                assert [op.id for op in operations] == list(dict.fromkeys(ids))
                return
            with pytest.raises(ValueError, match="operation ID"):
                await session.get_operations(ids)
            assert transport.requests == []
            # The Poller refuses the same IDs at the call, and keeps serving others.
            with pytest.raises(ValueError, match="operation ID"):
                await poller.wait_all(ids, timeout=10)
            assert (await poller.wait("fine", timeout=10)).id == "fine"


@pytest.mark.parametrize(
    "op_id",
    ["a\ud800", "\udfff", "x" * 20_000, "\u65e5" * 1000],
    ids=["surrogate", "lone surrogate", "long", "long once encoded"],
)
async def test_ids_that_cannot_be_sent_are_refused_at_the_call(op_id: str) -> None:
    transport = MockTransport(echo)
    async with Session(token="t", transport=transport) as session:
        with pytest.raises(ValueError, match="operation ID"):
            await session.get_operations([op_id])
        async with Poller(session, interval=FAST_POLL, not_found_grace=0.5) as poller:
            # Refused to its caller at once; the polling loop never meets it.
            with pytest.raises(ValueError, match="operation ID"):
                await poller.wait(op_id, timeout=10)
            assert (await poller.wait("fine", timeout=10)).id == "fine"
    assert [urllib.parse.urlsplit(r.url).query for r in transport.requests] == [
        "asyncOperationIds=fine"
    ]


@settings(max_examples=150, deadline=None)
@given(space_id=st.text(max_size=24) | st.from_regex(r"[A-Za-z0-9_-]{7,22}", fullmatch=True))
async def test_space_ids_are_one_path_segment_or_refused(space_id: str) -> None:
    transport = MockTransport(echo)
    async with Session(token="t", transport=transport) as session:
        async with Poller(session, interval=FAST_POLL, not_found_grace=0.5) as poller:
            try:
                await session.get_operations(["a"], space_id=space_id)
            except ValueError:
                assert transport.requests == []
                with pytest.raises(ValueError, match="space_id"):
                    await poller.wait("a", space_id=space_id, timeout=10)
                return
            assert (await poller.wait("a", space_id=space_id, timeout=10)).id == "a"
    assert re.fullmatch(r"[A-Za-z0-9_-]{7,22}", space_id)
    for request in transport.requests:
        assert urllib.parse.urlsplit(request.url).path == PATH.format(space_id)
