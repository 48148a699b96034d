"""Spans and metrics through the OpenTelemetry API: no-ops without an SDK.

opentelemetry-api (the ``otel`` extra) is imported on first use, if it is installed.
Without it, or with it but no SDK (the API's own proxy and no-op providers), asyncpoll
makes no OpenTelemetry call at all: a status query costs one provider look-up and a
shared idle probe, and the per-operation hooks of the Poller read one plain attribute.
Providers are looked up again at most once a second (each look-up reads the environment,
about 2 us), so an SDK configured after the Session was made is used within a second.

One :class:`Telemetry` per Session. Instruments are made once per meter provider and
shared by every Session on it: the SDK hands a second registration of a name the first
instrument, dropping the callbacks of an observable one.
"""

from __future__ import annotations

import functools
import math
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider
    from opentelemetry.metrics import Observation as _Observation
    from opentelemetry.trace import Span, SpanContext, TracerProvider

    Links: TypeAlias = Sequence[SpanContext]

__all__ = ["Probe", "Telemetry", "available", "error_type"]

_SCOPE = "asyncpoll"
SPAN_NAME = "asyncpoll.status_query"
#: A batch span links to at most this many callers' spans (the SDK keeps 128 by default).
MAX_LINKS = 32
#: Seconds between two look-ups of the global providers.
LOOK_EVERY = 1.0
# OpenTelemetry's advice for HTTP durations, stretched: an operation may be seen late by
# up to a whole polling interval (30 s by default).
_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_FILL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
# Keys of a finished operation's entry that say when it finished, the first one present
# wins: endpoint.md documents `lastUpdatedAt`; `completedAt` is the usual alternative.
_FINISHED_KEYS = ("completedAt", "lastUpdatedAt")


def _version() -> str:
    from . import __version__  # the package is fully imported by the time this runs

    return __version__


@functools.cache
def _api() -> tuple[Callable[[], TracerProvider], Callable[[], MeterProvider]] | None:
    """The global provider getters of opentelemetry-api, or ``None`` without it."""
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        return None
    return trace.get_tracer_provider, metrics.get_meter_provider


def available() -> bool:
    """True if opentelemetry-api can be imported."""
    return _api() is not None


def _api_only(provider: object) -> bool:
    # The API's ProxyTracerProvider, NoOpTracerProvider, _ProxyMeterProvider and
    # NoOpMeterProvider: nothing is recorded, so nothing is worth calling.
    return type(provider).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


def error_type(error: BaseException) -> str:
    """The ``error.type`` of an error: its HTTP status as a string if it has one (as
    OpenTelemetry's HTTP conventions say), else its class name."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return str(status)
    return type(error).__qualname__


class _Watched(Protocol):
    """A Poller, as the gauge of watched operations reads it."""

    def statistics(self) -> _Counts: ...


class _Counts(Protocol):
    @property
    def watched(self) -> int: ...


class _Tracing:
    """A tracer and the API functions a probe needs, bound once per tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace

        self.tracer = provider.get_tracer(_SCOPE, _version())
        self.attach = context.attach
        self.detach = context.detach
        self.in_context = trace.set_span_in_context
        self.current_span = trace.get_current_span
        self.link = trace.Link
        self.client = trace.SpanKind.CLIENT
        self.status = trace.Status
        self.error = trace.StatusCode.ERROR


class _Instruments:
    """The instruments of one meter provider."""

    def __init__(self, provider: MeterProvider) -> None:
        from opentelemetry.metrics import Observation

        meter = provider.get_meter(_SCOPE, _version())
        self.requests = meter.create_counter(
            "asyncpoll.requests",
            unit="{request}",
            description="HTTP requests sent to the status endpoint, by outcome.",
        )
        self.retries = meter.create_counter(
            "asyncpoll.retries",
            unit="{retry}",
            description="Retries after transient failures of status requests.",
        )
        self.pauses = meter.create_counter(
            "asyncpoll.rate_limit.pauses",
            unit="{pause}",
            description="Pauses of every request of a Session begun after a 429.",
        )
        self.fill = _histogram(
            meter,
            "asyncpoll.batch.utilization",
            "1",
            "Operation IDs per status query, as a fraction of max_batch_size.",
            _FILL_BUCKETS,
        )
        self.delay = _histogram(
            meter,
            "asyncpoll.observation.delay",
            "s",
            "Time from an operation's completion (its timestamp) to the Poller seeing it.",
            _DELAY_BUCKETS,
        )
        self._observation = Observation
        self.sources: weakref.WeakSet[_Watched] = weakref.WeakSet()
        meter.create_observable_up_down_counter(
            "asyncpoll.operation.watched",
            callbacks=[self._watched],
            unit="{operation}",
            description="Operations the Pollers are polling for their callers.",
        )

    def _watched(self, options: CallbackOptions) -> Iterator[_Observation]:
        yield self._observation(sum(source.statistics().watched for source in list(self.sources)))


def _histogram(
    meter: Meter, name: str, unit: str, description: str, buckets: Sequence[float]
) -> Histogram:
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api before 1.23 takes no advice
        return meter.create_histogram(name, unit=unit, description=description)


# Made once per meter provider (see the module docstring), forgotten with it.
_instruments: weakref.WeakKeyDictionary[object, _Instruments] = weakref.WeakKeyDictionary()


def _instruments_of(provider: MeterProvider) -> _Instruments:
    try:
        found = _instruments.get(provider)
    except TypeError:  # a provider that takes no weak reference: no sharing
        return _Instruments(provider)
    if found is None:
        found = _instruments[provider] = _Instruments(provider)
    return found


class Probe:
    """What one status query tells its telemetry. This base is the idle probe, shared,
    used when nothing records: every method does nothing."""

    __slots__ = ()

    def __enter__(self) -> Probe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def sending(self) -> None:
        """An HTTP request of this query is about to be sent."""

    def answered(self, status: int) -> None:
        """The request was answered with ``status`` (not 200)."""

    def split(self) -> None:
        """The batch was refused as too large (400/414) and is sent as two halves."""

    def failed(self, error: BaseException) -> None:
        """The request failed without a usable answer (a transport error)."""


_IDLE = Probe()


class _LiveProbe(Probe):
    """A status query's span (current while it runs, so the transport's own spans nest
    under it) and its metrics."""

    __slots__ = (
        "_attempts",
        "_attributes",
        "_instruments",
        "_links",
        "_pending",
        "_size",
        "_span",
        "_split",
        "_status",
        "_token",
        "_tracing",
    )

    def __init__(
        self,
        tracing: _Tracing | None,
        instruments: _Instruments | None,
        attributes: dict[str, str | int],
        links: Links,
    ) -> None:
        self._tracing = tracing
        self._instruments = instruments
        self._attributes = attributes
        self._links = links
        self._size = attributes["asyncpoll.batch.size"]
        self._span: Span | None = None
        self._token: Token[Context] | None = None
        self._attempts = 0
        self._pending = False
        self._split = False
        self._status: int | None = None

    def __enter__(self) -> Probe:
        tracing = self._tracing
        if tracing is not None:
            span = self._span = tracing.tracer.start_span(
                SPAN_NAME,
                kind=tracing.client,
                attributes=self._attributes,
                links=[tracing.link(context) for context in self._links] or None,
            )
            self._token = tracing.attach(tracing.in_context(span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure: str | None = None
        if exc is None:
            outcome = "ok"
            if self._split:
                outcome = "rejected" if self._size == 1 else "split"
            self._request("ok", None, 200)
        elif isinstance(exc, Exception):
            outcome = "error"
            failure = error_type(exc)
            self._request("error", failure, None)
        else:  # cancelled (anyio's cancellation is a BaseException on both backends)
            outcome = "cancelled"
            self._request("cancelled", None, None)
        span, tracing = self._span, self._tracing
        if span is None or tracing is None:
            return
        try:
            span.set_attribute("asyncpoll.attempts", self._attempts)
            span.set_attribute("asyncpoll.outcome", outcome)
            if self._status is not None and outcome != "cancelled":
                span.set_attribute("http.response.status_code", self._status)
            if failure is not None:
                span.set_attribute("error.type", failure)
                # The type only: a message could quote a response body.
                span.set_status(tracing.status(tracing.error, failure))
            span.end()
        finally:
            if self._token is not None:
                tracing.detach(self._token)

    def sending(self) -> None:
        self._attempts += 1
        self._pending = True

    def answered(self, status: int) -> None:
        self._request("error", str(status), status)

    def split(self) -> None:
        self._split = True

    def failed(self, error: BaseException) -> None:
        self._status = None
        self._request("error", error_type(error), None)

    def _request(self, outcome: str, failure: str | None, status: int | None) -> None:
        """Count the request in flight, if any, with its outcome."""
        if not self._pending:
            return
        self._pending = False
        if status is not None:
            self._status = status
        instruments = self._instruments
        if instruments is None:
            return
        attributes: dict[str, str | int] = {"asyncpoll.outcome": outcome}
        if failure is not None:
            attributes["error.type"] = failure
        if status is not None:
            attributes["http.response.status_code"] = status
        instruments.requests.add(1, attributes)


class Telemetry:
    """The spans and metrics of one Session (and of the Pollers on it).

    ``tracer_provider`` and ``meter_provider`` replace the global ones (a private hook
    for tests: the API's globals can be set once per process). The attributes
    ``metering`` (a meter provider records), ``tracing`` (a tracer provider records) and
    ``callers`` (span contexts of the callers waiting in a Poller, empty unless tracing)
    are the cheap checks of hot paths.
    """

    __slots__ = (
        "__weakref__",
        "_attributes",
        "_fixed_meter",
        "_fixed_tracer",
        "_instruments",
        "_meter_provider",
        "_next_look",
        "_tracer_provider",
        "_tracing",
        "callers",
        "metering",
        "tracing",
    )

    def __init__(
        self,
        base_url: str,
        path: str,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        # Never the URL itself: its query holds the IDs, and the token is in a header.
        self._attributes: dict[str, str | int] = {
            "http.request.method": "GET",
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
            "url.template": parts.path.rstrip("/") + path,
        }
        self._fixed_tracer = tracer_provider
        self._fixed_meter = meter_provider
        self._tracer_provider: object = None
        self._meter_provider: object = None
        self._tracing: _Tracing | None = None
        self._instruments: _Instruments | None = None
        self.metering = False
        self.tracing = False
        self.callers: dict[object, SpanContext] = {}
        self._next_look = 0.0
        self._resolve()

    def _resolve(self) -> None:
        """Follow the providers in use, looking at most every :data:`LOOK_EVERY` s."""
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + LOOK_EVERY
        api = _api()
        if api is None:
            self._next_look = math.inf  # it will not be installed while we run
            return
        tracer_provider = self._fixed_tracer or api[0]()
        if tracer_provider is not self._tracer_provider:
            self._tracer_provider = tracer_provider
            self._tracing = None if _api_only(tracer_provider) else _Tracing(tracer_provider)
            self.tracing = self._tracing is not None
        meter_provider = self._fixed_meter or api[1]()
        if meter_provider is not self._meter_provider:
            self._meter_provider = meter_provider
            api_only = _api_only(meter_provider)
            self._instruments = None if api_only else _instruments_of(meter_provider)
            self.metering = self._instruments is not None

    def query(self, space_id: str, size: int, capacity: int, links: Links = ()) -> Probe:
        """The probe of one status query for ``size`` IDs (of at most ``capacity``) in
        ``space_id``, to use as a context manager around its attempts."""
        self._resolve()
        tracing, instruments = self._tracing, self._instruments
        if tracing is None and instruments is None:
            return _IDLE
        if instruments is not None:
            instruments.fill.record(size / capacity)
        attributes = self._attributes.copy()
        attributes["asyncpoll.space_id"] = space_id
        attributes["asyncpoll.batch.size"] = size
        return _LiveProbe(tracing, instruments, attributes, links)

    def retried(self, error: BaseException, delay: float) -> None:
        """A retry is about to sleep ``delay`` seconds after ``error``."""
        instruments, tracing = self._instruments, self._tracing
        if instruments is None and tracing is None:
            return
        failure = error_type(error)
        if instruments is not None:
            instruments.retries.add(1, {"error.type": failure})
        if tracing is not None:
            tracing.current_span().add_event(
                "asyncpoll.retry", {"error.type": failure, "asyncpoll.retry.delay": delay}
            )

    def paused(self, seconds: float) -> None:
        """A pause of every request of the Session began after a 429."""
        if self._instruments is not None:
            self._instruments.pauses.add(1)
        if self._tracing is not None:
            self._tracing.current_span().add_event(
                "asyncpoll.rate_limit.pause", {"asyncpoll.pause.duration": seconds}
            )

    # -- the Poller's hooks (each behind a plain-attribute check at the call site) ------

    def joined(self, subscriber: object) -> None:
        """A caller subscribed: remember its span, to link the batches it waits on
        (call it only when ``tracing``)."""
        tracing = self._tracing
        if tracing is not None:
            context = tracing.current_span().get_span_context()
            if context.is_valid:
                self.callers[subscriber] = context

    def left(self, subscriber: object) -> None:
        """A caller unsubscribed (call it only when ``callers`` is not empty)."""
        self.callers.pop(subscriber, None)

    def links(self, subscribers: Iterable[object]) -> list[SpanContext]:
        """The distinct span contexts of ``subscribers`` (at most :data:`MAX_LINKS`)."""
        # By IDs: a SpanContext is a tuple, but its TraceState is not hashable.
        found: dict[tuple[int, int], SpanContext] = {}
        callers = self.callers
        for subscriber in subscribers:
            context = callers.get(subscriber)
            if context is not None:
                found[context.trace_id, context.span_id] = context
                if len(found) >= MAX_LINKS:
                    break
        return list(found.values())

    def watch(self, poller: _Watched) -> None:
        """Count ``poller``'s watched operations in ``asyncpoll.operation.watched``."""
        if self._instruments is not None:
            self._instruments.sources.add(poller)

    def observed(self, raw: Mapping[str, Any]) -> None:
        """The Poller saw an operation it had seen running finish: record how late, from
        the entry's own timestamp (skipped if it has none)."""
        instruments = self._instruments
        if instruments is None:
            return
        stamp: object = None
        for key in _FINISHED_KEYS:
            stamp = raw.get(key)
            if stamp is not None:
                break
        if not isinstance(stamp, str):
            return
        try:
            moment = datetime.fromisoformat(stamp)
        except (ValueError, OverflowError):
            return
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # Clamped: a server clock ahead of ours is not an early observation.
        instruments.delay.record(max(0.0, time.time() - moment.timestamp()))
