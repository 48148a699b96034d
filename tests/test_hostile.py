"""Hostile servers (raw sockets, ``tests/hostile.py``), on asyncio (aiohttp) and trio (httpx).

What is proven here, against a server of our own that breaks HTTP on purpose:

a. ``timeout`` bounds a whole attempt: a body or headers trickled a byte at a time end in
   ``RequestTimeout`` within a bounded wall time;
b. compression bombs (gzip and deflate, 1 GiB inflated, Content-Length or chunked) end in
   ``ResponseTooLarge`` for a 1,600-ID query, and the client's peak RSS grows by less than
   100 MiB while it meets them (measured in a subprocess);
c. encodings that were not asked for (br, zstd) are ``InvalidResponseError``, and every
   request asks for exactly ``Accept-Encoding: gzip, deflate``;
d. no cookie is ever sent back, whatever ``Set-Cookie`` the server sends, in any space;
e. the token never appears in a log record (every logger at DEBUG) nor anywhere in the
   exception chain, for malformed status lines, garbage, cut bodies, refused connections
   and servers that never answer;
f. a 429 with an absurd ``Retry-After`` is capped, fails the call at once with
   ``RateLimitedError`` rather than blocking, blocks no later call, shows in
   ``statistics()`` and is logged once at WARNING;
g. a wrong base URL or path (a 404 or a 200 with HTML) gives an error naming the path
   and hinting that the base URL or path may be wrong;
h. body quirks read the same through ``Session`` and ``Poller``: duplicates keep their first
   answer, IDs not asked for are dropped, ``1e400`` reads as unknown progress, a UTF-8 BOM
   is skipped, one bad entry fails only itself;
i. a custom decoder raising ``KeyError`` becomes ``InvalidResponseError`` for the waiting
   caller, and the ``Poller`` block lives on to serve the next caller.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import httpcore
import httpx
import pytest
from hostile import (
    HostileServer,
    RawRequest,
    bomb_bytes,
    closed_port,
    compression_bomb,
    hang,
    raw,
    respond,
    respond_with,
    trickle_body,
    trickle_headers,
)

from asyncpoll import (
    AsyncOperation,
    AsyncpollError,
    Endpoint,
    InvalidResponseError,
    OperationNotFound,
    OperationState,
    Poller,
    PollInterval,
    RateLimitedError,
    RequestTimeout,
    ResponseTooLarge,
    RetryPolicy,
    Session,
    SpaceNotFoundError,
    decode_operations,
)
from asyncpoll._retry import MAX_RETRY_AFTER

pytestmark = pytest.mark.anyio

CANARY = "CANARY-3f9a2d71-hostile-tok"
FAST_RETRY = RetryPolicy(attempts=2, initial=0.001, maximum=0.005, timeout=5.0)
ONCE = RetryPolicy(attempts=1)
FAST_POLL = PollInterval(initial=0.01, maximum=0.05)
PATH = "/programs/v2/spaces/default/asyncOperations"
OK = {"state": "Succeeded", "percentComplete": 100}
# Loggers of the HTTP stacks exist before the leak test turns every logger to DEBUG.
HTTP_LIBRARIES = (aiohttp, httpx, httpcore)


def session(url: str, **kwargs: Any) -> Session:
    """A Session with the canary token and fast retries, unless told otherwise."""
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("timeout", 5.0)
    return Session(url, token=CANARY, space_id="default", **kwargs)


def entries(request: RawRequest, **fields: Any) -> list[dict[str, Any]]:
    """One entry per asked ID with ``fields`` (default: succeeded)."""
    fields = {"state": "Succeeded", "percentComplete": 100, **fields}
    return [{"id": op_id, **fields} for op_id in request.ids]


def as_json(body: Any) -> bytes:
    return json.dumps(body).encode()


# -- a: the timeout bounds the whole attempt -----------------------------------------------


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(trickle_body(b"[" + b" " * 20 + b"]", every=0.3), id="body"),
        pytest.param(trickle_headers(every=0.3), id="headers"),
    ],
)
async def test_a_trickle_ends_in_a_bounded_request_timeout(handler: Any) -> None:
    attempts, timeout = 1, 1.0
    with HostileServer(handler) as srv:
        async with session(srv.url, timeout=timeout, retry=RetryPolicy(attempts=attempts)) as s:
            started = time.monotonic()
            with pytest.raises(RequestTimeout):
                await s.get_operations(["op-1"])
            elapsed = time.monotonic() - started
    # Seconds of trickle were left (7 s of body, 20 s of headers): the attempt was cut.
    assert elapsed < timeout * attempts + 3.0
    assert len(srv.requests) == attempts


# -- b: compression bombs ------------------------------------------------------------------

BOMBS = [
    pytest.param(encoding, chunked, id=f"{encoding}-{'chunked' if chunked else 'length'}")
    for encoding in ("gzip", "deflate")
    for chunked in (False, True)
]
MANY_IDS = [f"op-{n:05d}" for n in range(1600)]


# httpx and httpcore read a body through nested async generators that cannot be closed from
# outside when the reader stops early, and trio warns when it collects them (encode/httpx
# issue 3686; the same filter as in test_faults.py). The connection itself is closed: the
# server sees every connection end before the test does.
UPSTREAM_HTTPX_WARNING = pytest.mark.filterwarnings(
    r"ignore:Async generator 'httpx?(core)?\.:ResourceWarning"
)


@UPSTREAM_HTTPX_WARNING
@pytest.mark.parametrize(("encoding", "chunked"), BOMBS)
async def test_b_a_compression_bomb_is_capped(encoding: str, chunked: bool) -> None:
    with HostileServer(compression_bomb(encoding, chunked=chunked)) as srv:
        async with session(srv.url, retry=ONCE) as s:
            with pytest.raises(ResponseTooLarge, match="exceeds"):
                await s.get_operations(MANY_IDS)
            # The client stopped reading and closed its connections, Session still open.
            assert await anyio.to_thread.run_sync(srv.wait_idle, 5.0), srv.open_connections
    assert srv.requests, "no request reached the bomb"
    assert all(len(r.ids) <= 100 for r in srv.requests)
    assert srv.errors == []


async def _bomb_round(bomb: tuple[str, bool] | None) -> None:
    """One 1,600-ID query answered by the ``(encoding, chunked)`` bomb, or (None) a small
    good request that warms everything up."""
    if bomb is None:
        with HostileServer(respond()) as srv:
            async with session(srv.url, retry=ONCE) as s:
                assert await s.get_operations(["op-1"]) == []
        return
    encoding, chunked = bomb
    with HostileServer(compression_bomb(encoding, chunked=chunked)) as srv:
        async with session(srv.url, retry=ONCE) as s:
            with pytest.raises(ResponseTooLarge):
                await s.get_operations(MANY_IDS)


def peak() -> int:
    """This process's peak RSS so far, in KiB (Linux).

    ``ru_maxrss`` survives exec: a child of a big pytest process starts with the parent's
    peak, which would hide any growth. ``VmHWM`` belongs to this process image alone;
    ``ru_maxrss`` is the fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_bomb_rss(backend: str) -> None:
    """Run in a subprocess: print the growth of peak RSS (KiB) over the bomb rounds, in
    all and after each bomb."""
    for encoding in ("gzip", "deflate"):
        bomb_bytes(encoding)
    anyio.run(_bomb_round, None, backend=backend)  # imports, pools, first connection
    before = peak()
    steps: dict[str, int] = {}
    for encoding in ("gzip", "deflate"):
        for chunked in (False, True):
            anyio.run(_bomb_round, (encoding, chunked), backend=backend)
            steps[f"{encoding}-{'chunked' if chunked else 'length'}"] = peak() - before
    after = peak()
    report = {
        "before_kib": before,
        "growth_kib": after - before,
        "after_each_kib": steps,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(report))


def test_b_compression_bombs_cost_bounded_memory(anyio_backend: str) -> None:
    tests = Path(__file__).resolve().parent
    script = (
        f"import sys; sys.path.insert(0, {str(tests)!r}); "
        f"import test_hostile; test_hostile.measure_bomb_rss({anyio_backend!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tests.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    print(measured)  # shown with -rP
    assert measured["growth_kib"] < 100 * 1024, measured


# -- c: encodings that were not asked for --------------------------------------------------


@pytest.mark.parametrize("encoding", ["br", "zstd"])
async def test_c_unrequested_encodings_are_invalid_responses(encoding: str) -> None:
    body = b"\x8b\x05\x80[]\x03"  # whatever it is, it must not be decoded
    with HostileServer(respond(body=body, headers=[("Content-Encoding", encoding)])) as srv:
        async with session(srv.url) as s:
            with pytest.raises(InvalidResponseError, match=encoding):
                await s.get_operations(["op-1"])
            with pytest.raises(InvalidResponseError):
                await s.get_operations(["op-2", "op-3"])
    assert len(srv.requests) == 2 * FAST_RETRY.attempts
    assert [r.header("Accept-Encoding") for r in srv.requests] == ["gzip, deflate"] * len(
        srv.requests
    )
    # Sent once each, not folded with a second Accept-Encoding of the library's.
    assert all(
        sum(name.lower() == "accept-encoding" for name, _ in r.headers) == 1 for r in srv.requests
    )


# -- d: cookies ----------------------------------------------------------------------------


# aiohttp's default jar ignores cookies of an IP host: "localhost" is the case it would keep.
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_d_no_cookie_is_ever_sent(host: str) -> None:
    counter = iter(range(1_000))

    def with_cookie(request: RawRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        n = next(counter)
        cookies = [
            ("Set-Cookie", f"session{n}=value{n}; Path=/"),
            ("Set-Cookie", f"sticky=v{n}; Path=/; Max-Age=3600; Domain={host}"),
        ]
        return 200, cookies, as_json(entries(request))

    with HostileServer(respond_with(with_cookie)) as srv:
        async with session(srv.url.replace("127.0.0.1", host)) as s:
            for n in range(10):
                for space in ("spaceAAAA1", "spaceBBBB2"):
                    [op] = await s.get_operations([f"op-{n}"], space_id=space)
                    assert op.state is OperationState.SUCCEEDED
    assert len(srv.requests) == 20
    assert {r.target.split("?")[0] for r in srv.requests} == {
        "/programs/v2/spaces/spaceAAAA1/asyncOperations",
        "/programs/v2/spaces/spaceBBBB2/asyncOperations",
    }
    assert [r.header("Cookie") for r in srv.requests] == [None] * 20


# -- e: the token never leaks --------------------------------------------------------------


def exception_texts(error: BaseException) -> Iterator[str]:
    """Every text a program could show about ``error`` and every exception behind it:
    causes, contexts and members of exception groups."""
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
        if hasattr(current, "__dict__"):
            yield repr(vars(current))
        yield "".join(traceback.format_exception(current))
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def every_log_record() -> Iterator[list[logging.LogRecord]]:
    """Root and every existing logger at DEBUG; yields the records they emit."""
    keep = _Keep()
    root = logging.getLogger()
    loggers = [root] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        if lg is root or not lg.propagate:
            lg.addHandler(keep)
    try:
        yield keep.records
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
            lg.removeHandler(keep)


LEAKS = {
    "malformed status line": raw(b"HTTP/1.1 abc\r\n\r\n"),
    "garbage": raw(b"\x00\xff\xfe garbage \x1b[31m\r\n\r\n\x00" * 20),
    "truncated body": raw(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        + b'[{"id": "o'
    ),
    "closed port": None,
    "hang": hang(),
}


@pytest.mark.parametrize("scenario", list(LEAKS))
async def test_e_the_token_never_leaks(
    scenario: str, every_log_record: list[logging.LogRecord]
) -> None:
    handler = LEAKS[scenario]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    with HostileServer(handler or respond()) as srv:
        url = srv.url if handler is not None else f"http://127.0.0.1:{closed_port()}"
        async with session(url, timeout=0.3) as s:
            with pytest.raises(AsyncpollError) as info:
                await s.get_operations(["op-1", "op-2"])
    if handler is not None:  # the token did travel, in the header
        assert srv.requests[0].header("Authorization") == f"Bearer {CANARY}"
    texts = list(exception_texts(info.value))
    assert len(texts) >= 5
    for text in texts:
        assert CANARY not in text, text
    assert every_log_record, "nothing was logged at DEBUG: the check proves nothing"
    for record in every_log_record:
        assert CANARY not in record.getMessage(), record
        assert CANARY not in formatter.format(record), record


# -- f: 429 with an absurd Retry-After ------------------------------------------------------


async def test_f_an_absurd_retry_after_is_capped_and_never_blocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncpoll")
    too_many = respond(429, body=b"{}", headers=[("Retry-After", "999999999")])
    with HostileServer(too_many) as srv:
        async with session(srv.url, timeout=2, retry=RetryPolicy(attempts=3, timeout=5)) as s:
            started = time.monotonic()
            with pytest.raises(RateLimitedError) as first:
                await s.get_operations(["op-1"])
            assert time.monotonic() - started < 3.0
            retry_after = first.value.retry_after
            assert retry_after is not None
            assert 0 < retry_after <= MAX_RETRY_AFTER
            started = time.monotonic()
            with pytest.raises(RateLimitedError) as second:
                await s.get_operations(["op-2"])
            assert time.monotonic() - started < 0.5
            assert second.value.retry_after is not None
            assert second.value.retry_after <= MAX_RETRY_AFTER
            stats = s.statistics()
    assert stats.rate_limit_pauses >= 1
    assert 0 < stats.paused_for <= MAX_RETRY_AFTER
    assert len(srv.requests) == 1  # nothing went to the host during the pause
    warnings = [
        r for r in caplog.records if r.name.startswith("asyncpoll") and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "429" in warnings[0].getMessage()


# -- g: a wrong base URL or path -----------------------------------------------------------

HTML = b"<!DOCTYPE html><html><body><h1>Not here</h1></body></html>"
HTML_HEADERS = [("Content-Type", "text/html; charset=utf-8")]


@pytest.mark.parametrize("prefix", ["", "/wrong-prefix"])
async def test_g_a_404_with_html_names_the_path(prefix: str) -> None:
    with HostileServer(respond(404, body=HTML, headers=HTML_HEADERS)) as srv:
        async with session(srv.url + prefix) as s:
            with pytest.raises(SpaceNotFoundError) as info:
                await s.get_operations(["op-1"])
    message = str(info.value)
    assert "base URL" in message
    assert "path" in message
    assert prefix + PATH in message
    assert CANARY not in message
    assert "op-1" not in message  # the path, not the query


@pytest.mark.parametrize("prefix", ["", "/wrong-prefix"])
async def test_g_a_200_with_html_hints_at_the_base_url(prefix: str) -> None:
    with HostileServer(respond(200, body=HTML, headers=HTML_HEADERS)) as srv:
        async with session(srv.url + prefix, retry=RetryPolicy(attempts=1)) as s:
            with pytest.raises(InvalidResponseError) as info:
                await s.get_operations(["op-1"])
    message = str(info.value)
    assert "base URL" in message
    assert prefix + PATH in message
    assert CANARY not in message


# -- h: body quirks, the same through the Session and the Poller ----------------------------


def poller(s: Session) -> Poller:
    return Poller(s, interval=FAST_POLL, not_found_grace=0.1)


def answer(build: Any) -> Any:
    """A handler answering ``build(request)`` (a JSON value, or bytes as they are)."""

    def fn(request: RawRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        body = build(request)
        return 200, [], body if isinstance(body, bytes) else as_json(body)

    return respond_with(fn)


async def first_event(p: Poller, op_id: str) -> AsyncOperation | None:
    async with p.watch([op_id], timeout=5) as events:
        async for event in events:
            return event.operation
    raise AssertionError("no event")


async def test_h_an_id_answered_twice_keeps_its_first_answer() -> None:
    def twice(request: RawRequest) -> list[dict[str, Any]]:
        return entries(request, state="Running", percentComplete=10) + entries(request)

    with HostileServer(answer(twice)) as srv:
        async with session(srv.url) as s:
            [op] = await s.get_operations(["op-1"])
            assert (op.id, op.state, op.percent_complete) == ("op-1", OperationState.RUNNING, 10)
            async with poller(s) as p:
                seen = await first_event(p, "op-2")
                assert seen is not None
                assert (seen.state, seen.percent_complete) == (OperationState.RUNNING, 10)
                with pytest.raises(TimeoutError):  # the later "Succeeded" never wins
                    await p.wait("op-3", timeout=0.3)
    assert len(srv.requests) >= 3


async def test_h_ids_not_asked_for_are_dropped() -> None:
    def stranger(request: RawRequest) -> list[dict[str, Any]]:
        asked = [i for i in request.ids if i != "ghost"]
        return [{"id": "stranger", "state": "Succeeded"}] + [{"id": i} | OK for i in asked]

    with HostileServer(answer(stranger)) as srv:
        async with session(srv.url) as s:
            assert [op.id for op in await s.get_operations(["op-1", "ghost"])] == ["op-1"]
            assert await s.get_operations(["ghost"]) == []
            async with poller(s) as p:
                assert (await p.wait("op-1", timeout=5)).id == "op-1"
                with pytest.raises(OperationNotFound):
                    await p.wait("ghost", timeout=5)
                assert p.statistics().watched == 0
    assert srv.requests


async def test_h_a_number_beyond_a_double_reads_as_unknown_progress() -> None:
    def huge(request: RawRequest) -> bytes:
        items = [
            f'{{"id": "{i}", "state": "Succeeded", "percentComplete": 1e400}}' for i in request.ids
        ]
        return ("[" + ", ".join(items) + "]").encode()

    with HostileServer(answer(huge)) as srv:
        async with session(srv.url, retry=RetryPolicy(attempts=1)) as s:
            [op] = await s.get_operations(["op-1"])
            assert (op.state, op.percent_complete) == (OperationState.SUCCEEDED, None)
            async with poller(s) as p:
                waited = await p.wait("op-2", timeout=5)
                assert (waited.state, waited.percent_complete) == (OperationState.SUCCEEDED, None)


async def test_h_a_late_caller_gets_an_infinity_outside_the_known_fields_back() -> None:
    # Read by the standard library (orjson refuses 1e400), and remembered packed: it must
    # come back exactly (orjson, for one, would write the infinity back as null).
    def huge(request: RawRequest) -> bytes:
        items = [
            f'{{"id": "{i}", "state": "Succeeded", "percentComplete": 100, "size": 1e400}}'
            for i in request.ids
        ]
        return ("[" + ", ".join(items) + "]").encode()

    with HostileServer(answer(huge)) as srv:
        async with session(srv.url, retry=RetryPolicy(attempts=1)) as s, poller(s) as p:
            first = await p.wait("op-1", timeout=5)
            sent = len(srv.requests)
            again = await p.wait("op-1", timeout=5)
            assert len(srv.requests) == sent  # from the Poller's memory
    assert first.raw["size"] == again.raw["size"] == math.inf
    assert again == first


async def test_h_a_utf8_bom_is_skipped() -> None:
    def bom(request: RawRequest) -> bytes:
        return b"\xef\xbb\xbf" + as_json(entries(request))

    with HostileServer(answer(bom)) as srv:
        async with session(srv.url, retry=RetryPolicy(attempts=1)) as s:
            [op] = await s.get_operations(["op-1"])
            assert op.state is OperationState.SUCCEEDED
            async with poller(s) as p:
                assert (await p.wait("op-2", timeout=5)).state is OperationState.SUCCEEDED


BAD_ENTRIES: list[Any] = [
    "not an object",
    17,
    None,
    {"state": "Succeeded"},  # no id
    {"id": ["op-bad"], "state": "Succeeded"},  # id of the wrong type
    {"id": {"x": 1}, "state": "Succeeded"},
    {"id": "", "state": "Succeeded"},
]


async def test_h_one_bad_entry_fails_only_itself() -> None:
    def mixed(request: RawRequest) -> list[Any]:
        body: list[Any] = list(BAD_ENTRIES)
        for op_id in request.ids:
            if op_id == "op-number-state":
                body.append({"id": op_id, "state": 3, "percentComplete": "x"})
            elif op_id != "op-bad":
                body.append({"id": op_id} | OK)
        return body

    ids = ["op-bad", "op-good", "op-number-state", "op-also-good"]
    with HostileServer(answer(mixed)) as srv:
        async with session(srv.url, retry=RetryPolicy(attempts=1)) as s:
            found = {op.id: op for op in await s.get_operations(ids)}
            assert found["op-good"].state is OperationState.SUCCEEDED
            assert found["op-also-good"].state is OperationState.SUCCEEDED
            assert "op-bad" not in found
            # A state that is a number: unknown (not terminal) or absent, never a crash.
            odd = found.get("op-number-state")
            assert odd is None or odd.state is OperationState.UNKNOWN
            async with poller(s) as p:
                async with anyio.create_task_group() as tg:
                    results: dict[str, Any] = {}

                    async def wait(op_id: str) -> None:
                        try:
                            results[op_id] = await p.wait(op_id, timeout=5)
                        except OperationNotFound as exc:
                            results[op_id] = exc

                    async def observe(op_id: str) -> None:
                        results[op_id] = await first_event(p, op_id)

                    for op_id in ("op-bad", "op-good", "op-also-good"):
                        tg.start_soon(wait, op_id)
                    tg.start_soon(observe, "op-number-state")
    assert isinstance(results["op-bad"], OperationNotFound)
    assert results["op-good"].state is OperationState.SUCCEEDED
    assert results["op-also-good"].state is OperationState.SUCCEEDED
    # The Poller reads the odd entry as the Session did.
    watched = results["op-number-state"]
    if odd is None:
        assert watched is None
    else:
        assert watched is not None
        assert watched.state is OperationState.UNKNOWN


# -- i: a custom decoder that raises -------------------------------------------------------


def nested_decoder(
    document: Any, previous: Mapping[str, AsyncOperation] | None
) -> list[AsyncOperation]:
    return decode_operations(document["nope"], previous)


async def test_i_a_decoder_raising_keyerror_fails_its_callers_not_the_poller() -> None:
    def shaped(request: RawRequest) -> dict[str, Any]:
        key = "items" if "bad-1" in request.ids else "nope"  # "items": KeyError("nope")
        return {key: entries(request)}

    with HostileServer(answer(shaped)) as srv:
        async with session(srv.url, endpoint=Endpoint(decode=nested_decoder)) as s:
            with pytest.raises(InvalidResponseError) as direct:
                await s.get_operations(["bad-1"])
            assert isinstance(direct.value.__cause__, KeyError)
            # Transient: the Poller's callers get it once the space's outage times out.
            async with Poller(s, interval=FAST_POLL, outage_timeout=0.3) as p:
                with pytest.raises(InvalidResponseError) as waited:
                    await p.wait("bad-1", timeout=5)
                assert isinstance(waited.value.__cause__, KeyError)
                assert "KeyError" in str(waited.value)
                # The block lives on: the next caller is served.
                assert (await p.wait("good-1", timeout=5)).state is OperationState.SUCCEEDED
                assert (await p.wait("good-2", timeout=5)).id == "good-2"
    assert any("good-1" in r.ids for r in srv.requests)
