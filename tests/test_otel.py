"""OpenTelemetry: spans and metrics recorded with the SDK's in-memory exporters.

Each test makes its own TracerProvider and MeterProvider and hands them to the Session
through the private hook (``session._telemetry = Telemetry(..., tracer_provider=...,
meter_provider=...)``): the API's global providers can be set only once per process,
and a global set here would leak into every later test. The caller's own spans come
from the same provider, so parenthood goes through the ordinary (global) context.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import attrs
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from asyncpoll import (
    AiohttpTransport,
    AsyncTransport,
    HttpxTransport,
    PermissionDeniedError,
    Poller,
    PollInterval,
    Request,
    Response,
    RetryPolicy,
    Session,
)
from asyncpoll._otel import SPAN_NAME, Telemetry
from asyncpoll._transport import default_transport
from asyncpoll._wire import DEFAULT_PATH
from asyncpoll.testing import ScriptedResponse, SimulatedServer

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, timeout=5.0)
CANARY = "CANARY-otel-3b1f9e27c4d8a6"


@attrs.define
class Recorder:
    """In-memory exporters and the providers feeding them."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def queries(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == SPAN_NAME]

    def span(self, name: str) -> ReadableSpan:
        [found] = [s for s in self.spans.get_finished_spans() if s.name == name]
        return found

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def counts(self, name: str) -> dict[frozenset[tuple[str, Any]], float]:
        """A counter's values by attribute set."""
        out: dict[frozenset[tuple[str, Any]], float] = {}
        for point in self.points(name):
            assert isinstance(point, NumberDataPoint)
            out[frozenset((point.attributes or {}).items())] = point.value
        return out

    def histogram(self, name: str) -> HistogramDataPoint:
        [point] = self.points(name)
        assert isinstance(point, HistogramDataPoint)
        return point

    def telemetry(self, server: SimulatedServer) -> Telemetry:
        return Telemetry(
            server.url,
            DEFAULT_PATH,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )


@pytest.fixture
def otel() -> Iterator[Recorder]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Recorder(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@asynccontextmanager
async def open_session(
    server: SimulatedServer, otel: Recorder, **kwargs: Any
) -> AsyncIterator[Session]:
    kwargs.setdefault("token", server.token)
    kwargs.setdefault("retry", FAST)
    session = Session(server.url, **kwargs)
    session._telemetry = otel.telemetry(server)
    async with session:
        yield session


def key(**attributes: Any) -> frozenset[tuple[str, Any]]:
    return frozenset(attributes.items())


class CurrentSpanTransport:
    """The real transport of the backend, noting the current span of each request."""

    def __init__(self) -> None:
        self.inner: AsyncTransport = default_transport(max_connections=4)
        self.seen: list[SpanContext] = []

    async def handle_request(self, request: Request) -> Response:
        self.seen.append(trace.get_current_span().get_span_context())
        return await self.inner.handle_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- spans ----------------------------------------------------------------------------------


async def test_a_span_per_status_query_under_the_callers_span(
    server: SimulatedServer, otel: Recorder
) -> None:
    ids = server.add_operations(3, window=0.0)
    tracer = otel.tracer_provider.get_tracer("app")
    async with open_session(server, otel, max_batch_size=2) as session:
        with tracer.start_as_current_span("caller"):
            assert len(await session.get_operations(ids)) == 3
    caller = otel.span("caller")
    queries = otel.queries()
    assert sorted(dict(q.attributes or {})["asyncpoll.batch.size"] for q in queries) == [1, 2]  # type: ignore[type-var]
    port = int(server.url.rsplit(":", 1)[1])
    for query in queries:
        assert query.kind is SpanKind.CLIENT
        assert query.parent is not None
        assert query.parent.span_id == caller.context.span_id
        assert query.context.trace_id == caller.context.trace_id
        assert query.status.status_code is StatusCode.UNSET
        attributes = dict(query.attributes or {})
        size = attributes.pop("asyncpoll.batch.size")
        assert size in (1, 2)
        assert attributes == {
            "http.request.method": "GET",
            "server.address": "127.0.0.1",
            "server.port": port,
            "url.template": "/programs/v2/spaces/{space_id}/asyncOperations",
            "asyncpoll.space_id": "default",
            "asyncpoll.attempts": 1,
            "asyncpoll.outcome": "ok",
            "http.response.status_code": 200,
        }
    # Metrics of the same queries.
    assert otel.counts("asyncpoll.requests") == {
        key(**{"asyncpoll.outcome": "ok", "http.response.status_code": 200}): 2
    }
    fill = otel.histogram("asyncpoll.batch.utilization")
    assert fill.count == 2
    assert fill.sum == pytest.approx(1.5)


async def test_the_span_is_current_while_the_transport_sends(
    server: SimulatedServer, otel: Recorder
) -> None:
    # What aiohttp's or httpx's own instrumentation sees as its parent.
    [op_id] = server.add_operations(1, window=0.0)
    transport = CurrentSpanTransport()
    server.script(ScriptedResponse(503))
    async with open_session(server, otel, transport=transport) as session:
        await session.get_operations([op_id])
    [query] = otel.queries()
    assert transport.seen == [query.context, query.context]


async def test_retries_are_counted_and_shown_on_the_span(
    server: SimulatedServer, otel: Recorder
) -> None:
    [op_id] = server.add_operations(1, window=0.0)
    server.script(ScriptedResponse(503), ScriptedResponse(503))
    async with open_session(server, otel) as session:
        await session.get_operations([op_id])
        assert session.retries == 2
    [query] = otel.queries()
    assert query.attributes is not None
    assert query.attributes["asyncpoll.attempts"] == 3
    assert query.attributes["asyncpoll.outcome"] == "ok"
    assert query.attributes["http.response.status_code"] == 200
    retries = [e for e in query.events if e.name == "asyncpoll.retry"]
    assert [e.attributes["error.type"] for e in retries] == ["503", "503"]  # type: ignore[index]
    assert otel.counts("asyncpoll.retries") == {key(**{"error.type": "503"}): 2}
    assert otel.counts("asyncpoll.requests") == {
        key(**{"asyncpoll.outcome": "ok", "http.response.status_code": 200}): 1,
        key(
            **{
                "asyncpoll.outcome": "error",
                "error.type": "503",
                "http.response.status_code": 503,
            }
        ): 2,
    }


async def test_an_error_ends_the_span_in_error(server: SimulatedServer, otel: Recorder) -> None:
    [op_id] = server.add_operations(1, window=0.0)
    server.script(ScriptedResponse(403))
    async with open_session(server, otel) as session:
        with pytest.raises(PermissionDeniedError):
            await session.get_operations([op_id])
    [query] = otel.queries()
    assert query.attributes is not None
    assert query.attributes["asyncpoll.outcome"] == "error"
    assert query.attributes["error.type"] == "403"
    assert query.attributes["http.response.status_code"] == 403
    assert (query.status.status_code, query.status.description) == (StatusCode.ERROR, "403")
    assert query.events == ()  # no exception event: its message is not ours to export
    assert otel.counts("asyncpoll.requests") == {
        key(
            **{
                "asyncpoll.outcome": "error",
                "error.type": "403",
                "http.response.status_code": 403,
            }
        ): 1
    }


async def test_a_split_batch_has_a_child_span_per_half(
    server: SimulatedServer, otel: Recorder
) -> None:
    ids = server.add_operations(4, window=0.0)
    server.script(ScriptedResponse(414))
    async with open_session(server, otel) as session:
        assert len(await session.get_operations(ids)) == 4
    queries = otel.queries()
    [parent] = [q for q in queries if q.attributes and q.attributes["asyncpoll.batch.size"] == 4]
    halves = [q for q in queries if q is not parent]
    assert parent.attributes is not None
    assert parent.attributes["asyncpoll.outcome"] == "split"
    assert parent.attributes["http.response.status_code"] == 414
    assert [h.attributes["asyncpoll.batch.size"] for h in halves] == [2, 2]  # type: ignore[index]
    for half in halves:
        assert half.parent is not None
        assert half.parent.span_id == parent.context.span_id
        assert half.attributes is not None
        assert half.attributes["asyncpoll.outcome"] == "ok"


async def test_rate_limit_pauses_are_counted(server: SimulatedServer, otel: Recorder) -> None:
    [op_id] = server.add_operations(1, window=0.0)
    server.script(ScriptedResponse(429, headers={"Retry-After": "0.1"}))
    async with open_session(server, otel) as session:
        await session.get_operations([op_id])
    assert otel.counts("asyncpoll.rate_limit.pauses") == {frozenset(): 1}
    [query] = otel.queries()
    names = [e.name for e in query.events]
    assert names == ["asyncpoll.rate_limit.pause", "asyncpoll.retry"]


async def test_a_cancelled_query_is_cancelled_not_failed(
    server: SimulatedServer, otel: Recorder
) -> None:
    [op_id] = server.add_operations(1, window=0.0)
    server.script(ScriptedResponse(delay=5.0))
    async with open_session(server, otel) as session:
        with anyio.move_on_after(0.2):
            await session.get_operations([op_id])
    [query] = otel.queries()
    assert query.attributes is not None
    assert query.attributes["asyncpoll.outcome"] == "cancelled"
    assert "error.type" not in query.attributes
    assert query.status.status_code is StatusCode.UNSET
    assert otel.counts("asyncpoll.requests") == {key(**{"asyncpoll.outcome": "cancelled"}): 1}


# -- the Poller -----------------------------------------------------------------------------


async def test_poller_batches_nest_under_the_entry_context_and_link_callers(
    server: SimulatedServer, otel: Recorder
) -> None:
    op_id = server.add_operation(duration=0.3)
    tracer = otel.tracer_provider.get_tracer("app")
    interval = PollInterval(initial=0.05, maximum=0.05)
    async with open_session(server, otel) as session:
        with tracer.start_as_current_span("app"):
            async with Poller(session, interval=interval) as poller:
                with tracer.start_as_current_span("caller"):
                    operation = await poller.wait(op_id, timeout=10)
                watched = otel.counts("asyncpoll.operation.watched")
    assert operation.id == op_id
    app, caller = otel.span("app"), otel.span("caller")
    queries = otel.queries()
    assert len(queries) >= 2  # seen running, then finished
    for query in queries:
        assert query.parent is not None
        assert query.parent.span_id == app.context.span_id
        assert [link.context for link in query.links] == [caller.context]
    # Read after the wait: the operation is finished, nothing is watched any more.
    assert watched == {frozenset(): 0}
    delay = otel.histogram("asyncpoll.observation.delay")
    # Once; the simulator's timestamps have whole seconds, so up to a second early.
    assert delay.count == 1
    assert 0.0 <= delay.sum < 5.0


async def test_watched_operations_while_waiting(server: SimulatedServer, otel: Recorder) -> None:
    ids = server.add_operations(3, window=1000.0)
    interval = PollInterval(initial=0.05, maximum=0.05)
    async with open_session(server, otel) as session:
        async with Poller(session, interval=interval) as poller:
            async with poller.watch(ids) as events:
                async for _ in events:
                    break
                assert otel.counts("asyncpoll.operation.watched") == {frozenset(): 3}


# -- the token ------------------------------------------------------------------------------


async def test_the_token_is_in_no_span_or_metric(server: SimulatedServer, otel: Recorder) -> None:
    server.add_token(CANARY)
    ids = server.add_operations(3, window=0.0)
    running = server.add_operation(duration=0.2)
    server.script(
        ScriptedResponse(503),
        ScriptedResponse(disconnect=True),
        ScriptedResponse(429, headers={"Retry-After": "0"}),
        ScriptedResponse(body=b"not json"),
        ScriptedResponse(400),
    )
    tracer = otel.tracer_provider.get_tracer("app")
    retry = RetryPolicy(attempts=8, initial=0.001, maximum=0.01, timeout=5.0)
    async with open_session(server, otel, token=CANARY, retry=retry) as session:
        with tracer.start_as_current_span("caller"):
            await session.get_operations(ids)
            server.script(ScriptedResponse(403))
            with pytest.raises(PermissionDeniedError):
                await session.get_operations(ids)
            async with Poller(session, interval=PollInterval(initial=0.05)) as poller:
                await poller.wait(running, timeout=10)
    exported = [span.to_json() for span in otel.spans.get_finished_spans()]
    data = otel.reader.get_metrics_data()
    assert data is not None
    exported.append(data.to_json())
    assert len(otel.queries()) >= 5
    for text in exported:
        assert CANARY not in text
        assert "Bearer" not in text
        assert not [i for i in [*ids, running] if i in text]  # nor the IDs


# -- under aiohttp's and httpx's own instrumentation ----------------------------------------

#: The real instrumentation packages, each on the backends it runs on: aiohttp (the
#: default transport on asyncio) and httpx (``HttpxTransport``, asyncio and trio).
on_each_instrumented_client = pytest.mark.parametrize(
    ("anyio_backend", "client"),
    [
        pytest.param("asyncio", "aiohttp", id="asyncio-aiohttp"),
        pytest.param("asyncio", "httpx", id="asyncio-httpx"),
        pytest.param("trio", "httpx", id="trio-httpx"),
    ],
)

# The instrumentations record headers only when these name them: the defaults are kept.
_HEADER_CAPTURE = (
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS",
)


@attrs.define
class Instrumented:
    """An HTTP library instrumented with the test's providers."""

    client: str
    scope: str

    def transport(self) -> AsyncTransport | None:
        """The Session's transport: aiohttp's is the default one (None), made by the
        Session on first use, after instrumenting, as ClientSession.__init__ is patched."""
        return HttpxTransport(max_connections=4) if self.client == "httpx" else None

    def check(self, session: Session) -> None:
        """The Session sent through the library instrumented."""
        expected = HttpxTransport if self.client == "httpx" else AiohttpTransport
        assert type(session._transport) is expected


@pytest.fixture
def instrumented(
    client: str, otel: Recorder, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Instrumented]:
    for name in _HEADER_CAPTURE:
        monkeypatch.delenv(name, raising=False)
    instrumentor: AioHttpClientInstrumentor | HTTPXClientInstrumentor
    if client == "aiohttp":
        instrumentor = AioHttpClientInstrumentor()
        scope = "opentelemetry.instrumentation.aiohttp_client"
    else:
        instrumentor = HTTPXClientInstrumentor()
        scope = "opentelemetry.instrumentation.httpx"
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    assert instrumentor.is_instrumented_by_opentelemetry  # not left on by another test
    try:
        yield Instrumented(client, scope)
    finally:
        instrumentor.uninstrument()
        # Unpatched: later tests get the plain libraries.
        assert not hasattr(aiohttp.ClientSession.__init__, "__wrapped__")
        assert not hasattr(httpx.AsyncHTTPTransport.handle_async_request, "__wrapped__")


def http_spans(otel: Recorder, instrumented: Instrumented) -> list[ReadableSpan]:
    return [
        span
        for span in otel.spans.get_finished_spans()
        if span.instrumentation_scope is not None
        and span.instrumentation_scope.name == instrumented.scope
    ]


def assert_nested(otel: Recorder, instrumented: Instrumented, caller: ReadableSpan) -> None:
    """caller > asyncpoll.status_query > the library's span, one per attempt."""
    queries = otel.queries()
    http = http_spans(otel, instrumented)
    assert queries
    assert http
    by_id = {query.context.span_id: query for query in queries}
    for query in queries:
        assert query.parent is not None
        assert query.parent.span_id == caller.context.span_id
        assert query.context.trace_id == caller.context.trace_id
        assert query.attributes is not None
        attempts = [h for h in http if h.parent and h.parent.span_id == query.context.span_id]
        assert len(attempts) == query.attributes["asyncpoll.attempts"]
    for span in http:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert not span.parent.is_remote
        assert span.context.trace_id == caller.context.trace_id
        query = by_id[span.parent.span_id]  # under one of our queries, none other
        assert query.start_time is not None
        assert query.end_time is not None
        assert span.start_time is not None
        assert span.end_time is not None
        assert query.start_time <= span.start_time <= span.end_time <= query.end_time


@on_each_instrumented_client
async def test_get_operations_nests_the_instrumented_clients_span(
    server: SimulatedServer, otel: Recorder, instrumented: Instrumented
) -> None:
    ids = server.add_operations(3, window=0.0)
    server.script(ScriptedResponse(503))  # one query of two attempts
    tracer = otel.tracer_provider.get_tracer("app")
    async with open_session(
        server, otel, max_batch_size=2, transport=instrumented.transport()
    ) as session:
        with tracer.start_as_current_span("caller"):
            assert len(await session.get_operations(ids)) == 3
        instrumented.check(session)
    assert_nested(otel, instrumented, otel.span("caller"))
    attempts = [dict(q.attributes or {})["asyncpoll.attempts"] for q in otel.queries()]
    assert sorted(attempts) == [1, 2]  # type: ignore[type-var]
    assert len(http_spans(otel, instrumented)) == 3


@on_each_instrumented_client
async def test_poller_batches_nest_the_instrumented_clients_span(
    server: SimulatedServer, otel: Recorder, instrumented: Instrumented
) -> None:
    op_id = server.add_operation(duration=0.3)
    tracer = otel.tracer_provider.get_tracer("app")
    interval = PollInterval(initial=0.05, maximum=0.05)
    async with open_session(server, otel, transport=instrumented.transport()) as session:
        with tracer.start_as_current_span("caller"):
            async with Poller(session, interval=interval) as poller:
                operation = await poller.wait(op_id, timeout=10)
        instrumented.check(session)
    assert operation.id == op_id
    caller = otel.span("caller")
    assert len(otel.queries()) >= 2  # seen running, then finished
    assert_nested(otel, instrumented, caller)
    for query in otel.queries():
        assert [link.context for link in query.links] == [caller.context]


@on_each_instrumented_client
async def test_the_token_is_in_no_span_of_the_instrumented_client(
    server: SimulatedServer, otel: Recorder, instrumented: Instrumented
) -> None:
    # The instrumentations record the URL (whose query holds the IDs: theirs to filter,
    # not asserted here) and, by default, no header: the token must not show anywhere.
    server.add_token(CANARY)
    ids = server.add_operations(3, window=0.0)
    running = server.add_operation(duration=0.2)
    server.script(
        # Twice: aiohttp resends a GET once by itself when the connection drops (in one
        # span), and raises, recording the exception, only the second time.
        ScriptedResponse(disconnect=True),
        ScriptedResponse(disconnect=True),
        ScriptedResponse(503),
        ScriptedResponse(429, headers={"Retry-After": "0"}),
    )
    tracer = otel.tracer_provider.get_tracer("app")
    retry = RetryPolicy(attempts=8, initial=0.001, maximum=0.01, timeout=5.0)
    async with open_session(
        server, otel, token=CANARY, retry=retry, transport=instrumented.transport()
    ) as session:
        with tracer.start_as_current_span("caller"):
            await session.get_operations(ids)
            server.script(ScriptedResponse(403))
            with pytest.raises(PermissionDeniedError):
                await session.get_operations(ids)
            async with Poller(session, interval=PollInterval(initial=0.05)) as poller:
                await poller.wait(running, timeout=10)
        instrumented.check(session)
    http = http_spans(otel, instrumented)
    assert len(http) >= 6  # disconnects, 503, 429, 200, 403, and the Poller's
    # The disconnects, recorded as exceptions (message and stack trace).
    assert "exception" in [event.name for span in http for event in span.events]
    exported = [span.to_json() for span in otel.spans.get_finished_spans()]
    data = otel.reader.get_metrics_data()
    assert data is not None
    exported.append(data.to_json())
    for text in exported:
        assert CANARY not in text
        assert "Bearer" not in text


# -- without an SDK, without the API --------------------------------------------------------


def test_without_an_sdk_nothing_is_recorded() -> None:
    # The global providers are the API's proxies: this suite never sets them.
    telemetry = Telemetry("https://api.example.com", DEFAULT_PATH)
    assert not telemetry.metering
    probe = telemetry.query("default", 100, 100)
    assert type(probe).__name__ == "Probe"  # the shared idle probe
    assert probe is telemetry.query("default", 1, 100)
    assert not telemetry.tracing
    assert telemetry.callers == {}


def test_without_the_api_asyncpoll_works() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # `import opentelemetry...` raises ImportError
        import anyio, asyncpoll
        from asyncpoll import _otel
        from asyncpoll.testing import SimulatedServer

        async def main(server):
            ids = server.add_operations(3, window=0.0)
            async with asyncpoll.Session(server.url, token=server.token) as session:
                assert len(await session.get_operations(ids)) == 3
                async with asyncpoll.Poller(session) as poller:
                    await poller.wait_all(ids, timeout=10)
            assert not session._telemetry.metering

        assert not _otel.available()
        with SimulatedServer(seed=1) as server:
            anyio.run(main, server)
        assert not any(name.startswith("opentelemetry") for name, m in sys.modules.items() if m)
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
