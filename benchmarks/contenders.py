"""One contender in a fresh interpreter, driven by ``benchmarks/run.py``.

Started as ``python benchmarks/contenders.py NAME``: it imports what the contender needs,
prints ``{"ready": true}`` and reads one JSON line with ``url``, ``token``, ``ids_file``,
``interval`` and ``max_batch``. Then it loads the IDs, takes its baseline (CPU, RSS; the
peak RSS is reset through ``/proc/self/clear_refs``), waits until every operation is seen
terminal, and prints one JSON line of figures. Everything measured is this process only:
the simulator runs in another.

Contenders (each observes every operation's terminal state, on asyncio but one):

- ``asyncpoll``: ``Poller.wait`` per operation from N tasks of one anyio task group;
- ``asyncpoll-completed``: one ``Poller.as_completed`` over all N IDs, no task per ID;
- ``asyncpoll-watch``: one ``Poller.watch`` over all N IDs (every progress event
  delivered), an operation seen at its terminal event;
- ``naive``: one task per operation, one aiohttp ``GET ...?asyncOperationIds=<id>`` per
  poll through one shared ``ClientSession`` (aiohttp's default pool of 100 connections);
- ``aiodataloader``: the same per-operation loops, their loads batched by one
  ``aiodataloader.DataLoader`` whose batch function sends one GET per batch;
- ``azure``: one ``azure.core.polling.AsyncLROPoller`` per operation with a custom
  ``AsyncPollingMethod`` sending its GETs through an ``azure.core.AsyncPipelineClient``
  (default policies) on azure-core's aiohttp transport;
- ``anchor``: the bar for asyncpoll's CPU, a tight batched poller written by hand
  (:class:`BatchPoller`: one aiohttp session, orjson, one loop polling every active ID
  each interval in batches, 4 requests in flight) with one asyncio task per operation
  awaiting its future, as ``asyncpoll`` runs one task per ``wait``;
- ``anchor-bulk``: the same loop without the tasks, recording each operation itself when
  it turns terminal: the bar for ``asyncpoll-completed`` and ``asyncpoll-watch``.

And one on trio: ``asyncpoll-trio``, the ``asyncpoll-completed`` contender run under
``trio.run`` with the transport the Session picks there (``HttpxTransport``): the trio
path, measured against the asyncio one (aiohttp) of the same run. The measurement helpers
(loop-lag ticker, CPU sampler) use anyio, so they run on both.

And one baseline, ``idle-tasks``: N anyio tasks that only wait on one event, to show how
much of the asyncpoll contender's memory is its callers' own tasks.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import gc
import json
import math
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import orjson

if TYPE_CHECKING:  # the contenders import their libraries only when chosen
    import aiohttp

    from asyncpoll import PollerStatistics

TERMINAL = frozenset({"Succeeded", "Failed", "Canceled", "Cancelled"})
PATH = "/programs/v2/spaces/default/asyncOperations"
IDS = "asyncOperationIds"
TICK = 0.010  # the loop-lag ticker's sleep


class Job:
    """What one contender needs: the operations and where to record observations."""

    def __init__(self, config: dict[str, Any], ids: list[str]) -> None:
        self.url: str = config["url"]
        self.token: str = config["token"]
        self.interval: float = config["interval"]
        self.max_batch: int = config["max_batch"]
        self.ids = ids
        # Preallocated before the baseline: 8 bytes per operation, the benchmark's own.
        self.observed = array.array("d", bytes(8 * len(ids)))
        self.client_requests = 0
        self.client_errors = 0
        self.extra: dict[str, Any] = {}
        self.cpu_shares: list[float] = []

    def see(self, index: int) -> None:
        self.observed[index] = time.monotonic()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}


# -- contenders -------------------------------------------------------------------------


async def run_asyncpoll(job: Job) -> None:
    """One asyncio task per ``poller.wait``, spawned as the anchor spawns its own (an
    asyncio.TaskGroup), so the two differ only in the library."""
    from asyncpoll import OperationFailed, Poller, PollInterval, Session

    interval = PollInterval(initial=job.interval, maximum=job.interval, multiplier=1.0)
    async with Session(job.url, token=job.token, max_batch_size=job.max_batch) as session:
        async with Poller(session, interval=interval) as poller:

            async def one(index: int, op_id: str) -> None:
                with contextlib.suppress(OperationFailed):
                    await poller.wait(op_id)
                job.see(index)

            async with asyncio.TaskGroup() as tg:
                for index, op_id in enumerate(job.ids):
                    tg.create_task(one(index, op_id))
            stats = poller.statistics()
    _record_asyncpoll(job, stats)


def _record_asyncpoll(job: Job, stats: PollerStatistics) -> None:
    """Copy a ``PollerStatistics`` into the figures."""
    job.client_requests = stats.requests
    job.client_errors = stats.errors
    job.extra = {
        **job.extra,
        "retries": stats.retries,
        "operations_polled": stats.operations_polled,
    }


async def run_asyncpoll_completed(job: Job) -> None:
    """One caller for all N operations: ``poller.as_completed(ids)`` (no task per ID)."""
    from asyncpoll import Poller, PollInterval, Session

    index_of = {op_id: index for index, op_id in enumerate(job.ids)}
    interval = PollInterval(initial=job.interval, maximum=job.interval, multiplier=1.0)
    async with Session(job.url, token=job.token, max_batch_size=job.max_batch) as session:
        async with Poller(session, interval=interval) as poller:
            # Failed and canceled operations are yielded like succeeded ones, not raised.
            async with poller.as_completed(job.ids) as done:
                async for operation in done:
                    job.see(index_of[operation.id])
            stats = poller.statistics()
    _record_asyncpoll(job, stats)


async def run_asyncpoll_trio(job: Job) -> None:
    """``asyncpoll-completed`` as it is, run under trio (see :data:`ON_TRIO`): the Session
    picks its default transport there itself (httpx, as aiohttp cannot run on trio)."""
    await run_asyncpoll_completed(job)


async def run_asyncpoll_watch(job: Job) -> None:
    """One caller for all N operations: ``poller.watch(ids)``, every progress event
    delivered; an operation counts as seen at its one terminal event."""
    from asyncpoll import Poller, PollInterval, Session

    index_of = {op_id: index for index, op_id in enumerate(job.ids)}
    interval = PollInterval(initial=job.interval, maximum=job.interval, multiplier=1.0)
    events_seen = terminal_seen = 0
    async with Session(job.url, token=job.token, max_batch_size=job.max_batch) as session:
        async with Poller(session, interval=interval) as poller:
            async with poller.watch(job.ids) as events:
                async for event in events:
                    events_seen += 1
                    if event.is_terminal:
                        terminal_seen += 1
                        job.see(index_of[event.operation_id])
            stats = poller.statistics()
    job.extra = {"events": events_seen, "terminal_events": terminal_seen}
    _record_asyncpoll(job, stats)


async def run_naive(job: Job) -> None:
    import aiohttp

    url = job.url + PATH
    headers = job.headers

    async with aiohttp.ClientSession() as http:

        async def one(index: int, op_id: str) -> None:
            while True:
                job.client_requests += 1
                try:
                    async with http.get(url, params={IDS: op_id}, headers=headers) as response:
                        response.raise_for_status()
                        entries = await response.json()
                except aiohttp.ClientError:
                    job.client_errors += 1
                else:
                    if entries and entries[0]["state"] in TERMINAL:
                        job.see(index)
                        return
                await asyncio.sleep(job.interval)

        async with asyncio.TaskGroup() as tg:
            for index, op_id in enumerate(job.ids):
                tg.create_task(one(index, op_id))


async def run_aiodataloader(job: Job) -> None:
    import aiohttp
    from aiodataloader import DataLoader

    url = job.url + PATH
    headers = job.headers

    async with aiohttp.ClientSession() as http:

        async def batch_load(keys: list[str]) -> list[dict[str, Any] | None]:
            params = [(IDS, key) for key in keys]
            while True:
                job.client_requests += 1
                try:
                    async with http.get(url, params=params, headers=headers) as response:
                        response.raise_for_status()
                        entries = await response.json()
                    break
                except aiohttp.ClientError:
                    job.client_errors += 1
                    await asyncio.sleep(job.interval)
            by_id = {entry["id"]: entry for entry in entries}
            return [by_id.get(key) for key in keys]

        loader: DataLoader[str, dict[str, Any] | None] = DataLoader(
            batch_load,
            max_batch_size=job.max_batch,
            cache=False,
            loop=asyncio.get_running_loop(),
        )

        async def one(index: int, op_id: str) -> None:
            while True:
                entry = await loader.load(op_id)
                if entry is not None and entry["state"] in TERMINAL:
                    job.see(index)
                    return
                await asyncio.sleep(job.interval)

        async with asyncio.TaskGroup() as tg:
            for index, op_id in enumerate(job.ids):
                tg.create_task(one(index, op_id))


async def run_azure(job: Job) -> None:
    import aiohttp
    from azure.core import AsyncPipelineClient
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.core.polling import AsyncLROPoller, AsyncPollingMethod
    from azure.core.rest import AsyncHttpResponse, HttpRequest

    url = job.url + PATH
    headers = job.headers

    class OperationPolling(AsyncPollingMethod[dict[str, Any]]):
        """Polls one operation by its ID, one GET per poll (azure-core's design).

        ``initial_response`` is the operation ID: in the real API it comes from the bulk
        call that started the work, which is not part of this scenario.
        """

        def __init__(self, interval: float) -> None:
            self._interval = interval
            self._status = "NotStarted"
            self._entry: dict[str, Any] | None = None

        def initialize(
            self, client: Any, initial_response: Any, deserialization_callback: Any
        ) -> None:
            self._client = client
            self._op_id: str = initial_response
            self._deserialize = deserialization_callback

        async def run(self) -> None:
            while True:
                request = HttpRequest("GET", url, params={IDS: self._op_id}, headers=headers)
                job.client_requests += 1
                response = await self._client.send_request(request)
                response.raise_for_status()
                entries = response.json()
                if entries:
                    self._entry = entries[0]
                    self._status = entries[0]["state"]
                if self.finished():
                    return
                await asyncio.sleep(self._interval)

        def status(self) -> str:
            return self._status

        def finished(self) -> bool:
            return self._status in TERMINAL

        def resource(self) -> dict[str, Any]:
            result: dict[str, Any] = self._deserialize(self._entry)
            return result

    async with aiohttp.ClientSession() as http:
        transport = AioHttpTransport(session=http, session_owner=False)
        pipeline: AsyncPipelineClient[HttpRequest, AsyncHttpResponse]
        pipeline = AsyncPipelineClient(job.url, transport=transport)
        async with pipeline as client:

            async def one(index: int, op_id: str) -> None:
                poller = AsyncLROPoller(client, op_id, lambda e: e, OperationPolling(job.interval))
                await poller.result()
                job.see(index)

            async with asyncio.TaskGroup() as tg:
                for index, op_id in enumerate(job.ids):
                    tg.create_task(one(index, op_id))


# -- the anchors: a batched poller as a skilled user writes it by hand --------------------


class BatchPoller:
    """The anchors' poller: one polling loop over one aiohttp session, nothing else.

    Every ``interval`` seconds (from the start of the previous round; no jitter, no
    backoff) it asks for every active ID: ``ceil(active / max_batch)`` GETs of
    ``max_batch`` IDs each, at most ``IN_FLIGHT`` at once. Bodies are decoded with orjson;
    each ID whose state is terminal leaves the active set and is handed, with its entry,
    to ``on_terminal`` (once). A failed request (connection error, timeout, non-200,
    undecodable body) is counted and its IDs are simply asked for again next round.
    """

    IN_FLIGHT = 4  # asyncpoll's default max_concurrent_requests

    def __init__(
        self,
        job: Job,
        http: aiohttp.ClientSession,
        on_terminal: Callable[[str, dict[str, Any]], None],
    ) -> None:
        import aiohttp  # imported here, like every contender's libraries

        self._job = job
        self._http = http
        self._on_terminal = on_terminal
        self._url = job.url + PATH
        self._headers = job.headers
        self._failures = (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError)
        # Each active ID -> its query parameter, URL-encoded once: "asyncOperationIds=<ID>".
        self._active: dict[str, str] = {}

    def add(self, op_id: str) -> None:
        self._active[op_id] = f"{IDS}={quote(op_id, safe='')}"

    async def run(self) -> None:
        """Poll round after round until no ID is left active."""
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while True:
            await self._round()
            if not self._active:
                return
            # A round that overran its interval is followed at once (no catch-up burst).
            next_round = max(next_round + self._job.interval, loop.time())
            await asyncio.sleep(next_round - loop.time())

    async def _round(self) -> None:
        params = list(self._active.values())
        batch = self._job.max_batch
        starts = iter(range(0, len(params), batch))

        async def worker() -> None:
            # The workers share one iterator: each takes the next batch when it is free.
            for start in starts:
                await self._get("&".join(params[start : start + batch]))

        await asyncio.gather(*(worker() for _ in range(self.IN_FLIGHT)))

    async def _get(self, query: str) -> None:
        self._job.client_requests += 1
        try:
            async with self._http.get(f"{self._url}?{query}", headers=self._headers) as response:
                if response.status != 200:
                    self._job.client_errors += 1
                    return
                entries = orjson.loads(await response.read())
        except self._failures:
            self._job.client_errors += 1
            return
        for entry in entries:
            op_id = entry["id"]
            if entry["state"] in TERMINAL and self._active.pop(op_id, None) is not None:
                self._on_terminal(op_id, entry)


async def run_anchor(job: Job) -> None:
    """The anchor with one asyncio task per operation awaiting its own future, as the
    asyncpoll contender runs one task per ``wait``."""
    import aiohttp

    loop = asyncio.get_running_loop()
    futures: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def resolve(op_id: str, entry: dict[str, Any]) -> None:
        futures.pop(op_id).set_result(entry)

    async with aiohttp.ClientSession() as http:
        poller = BatchPoller(job, http, resolve)

        async def wait(op_id: str) -> dict[str, Any]:
            """A hand-written ``wait``: register the ID, await its terminal entry."""
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            futures[op_id] = future
            poller.add(op_id)
            return await future

        async def one(index: int, op_id: str) -> None:
            await wait(op_id)
            job.see(index)

        async with asyncio.TaskGroup() as tg:
            for index, op_id in enumerate(job.ids):
                tg.create_task(one(index, op_id))
            # Created last, so its first round comes after every task has added its ID;
            # it returns once none is left active.
            tg.create_task(poller.run())


async def run_anchor_bulk(job: Job) -> None:
    """The anchor's loop alone, no task per operation: it records each operation itself
    when it turns terminal."""
    import aiohttp

    index_of = {op_id: index for index, op_id in enumerate(job.ids)}
    async with aiohttp.ClientSession() as http:
        poller = BatchPoller(job, http, lambda op_id, _: job.see(index_of[op_id]))
        for op_id in job.ids:
            poller.add(op_id)
        await poller.run()


async def run_idle_tasks(job: Job) -> None:
    """Not a contender: N anyio tasks that only wait on one event, as many as the
    asyncpoll contender starts, to show what its callers' own tasks cost in memory."""
    import anyio

    release = anyio.Event()

    async def one(index: int) -> None:
        await release.wait()
        job.see(index)

    async with anyio.create_task_group() as tg:
        for index in range(len(job.ids)):
            tg.start_soon(one, index)
        await anyio.sleep(1.0)
        release.set()


CONTENDERS: dict[str, Callable[[Job], Awaitable[None]]] = {
    "asyncpoll": run_asyncpoll,
    "asyncpoll-completed": run_asyncpoll_completed,
    "asyncpoll-trio": run_asyncpoll_trio,
    "asyncpoll-watch": run_asyncpoll_watch,
    "naive": run_naive,
    "aiodataloader": run_aiodataloader,
    "azure": run_azure,
    "anchor": run_anchor,
    "anchor-bulk": run_anchor_bulk,
    "idle-tasks": run_idle_tasks,
}

_IMPORTS = {
    "asyncpoll": ("anyio", "asyncpoll"),
    "asyncpoll-completed": ("anyio", "asyncpoll"),
    # httpx (and httpcore, h11 under it) as aiohttp for the others: imported before the
    # baseline, as the asyncpoll import brings aiohttp in for the asyncio contenders.
    "asyncpoll-trio": ("anyio", "asyncpoll", "trio", "httpx", "httpcore", "h11"),
    "asyncpoll-watch": ("anyio", "asyncpoll"),
    "naive": ("aiohttp",),
    "aiodataloader": ("aiohttp", "aiodataloader"),
    "azure": ("aiohttp", "azure.core", "azure.core.pipeline.transport", "azure.core.polling"),
    "anchor": ("aiohttp",),
    "anchor-bulk": ("aiohttp",),
    "idle-tasks": ("anyio",),
}

#: The contenders run under ``trio.run`` rather than ``asyncio.run``.
ON_TRIO = frozenset({"asyncpoll-trio"})


# -- measurement ------------------------------------------------------------------------


def _status_kib() -> dict[str, int]:
    fields: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0])
    return fields


class _GcClock:
    """Time spent in the cyclic garbage collector (C work that cProfile does not show)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as file:
            file.write("5")
    except OSError:
        return False
    return True


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rank(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of sorted ``values`` (NaN if empty)."""
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


async def _ticker(lags: array.array[float]) -> None:
    # anyio, not asyncio, here and below: the same helpers measure the trio contender.
    while True:
        started = time.monotonic()
        await anyio.sleep(TICK)
        lags.append(time.monotonic() - started - TICK)


async def _cpu_sampler(shares: list[float]) -> None:
    """The share of one core this process used, second by second (1.0: saturated)."""
    wall, cpu = time.monotonic(), time.process_time()
    while True:
        await anyio.sleep(1.0)
        now, used = time.monotonic(), time.process_time()
        shares.append(round((used - cpu) / (now - wall), 3))
        wall, cpu = now, used


async def _measured(
    contender: Callable[[Job], Awaitable[None]], job: Job, *, snapshot: bool = False
) -> array.array[float]:
    lags: array.array[float] = array.array("d")
    async with anyio.create_task_group() as tg:
        tg.start_soon(_ticker, lags)
        tg.start_soon(_cpu_sampler, job.cpu_shares)
        if snapshot:
            tg.start_soon(_peak_snapshot)
        try:
            await contender(job)
        finally:
            # The helpers loop forever: they end with the contender, however it ends.
            tg.cancel_scope.cancel()
    return lags


def _run(
    name: str, contender: Callable[[Job], Awaitable[None]], job: Job, *, snapshot: bool = False
) -> array.array[float]:
    """``_measured`` on the contender's event loop: trio for :data:`ON_TRIO`, else asyncio."""
    if name in ON_TRIO:
        import trio

        return trio.run(functools.partial(_measured, contender, job, snapshot=snapshot))
    return asyncio.run(_measured(contender, job, snapshot=snapshot))


async def _peak_snapshot() -> None:
    """Diagnostics: print where the memory was allocated at the traced peak."""
    import tracemalloc

    best = 0
    top: tracemalloc.Snapshot | None = None
    try:
        while True:
            await anyio.sleep(1.0)
            current = tracemalloc.get_traced_memory()[0]
            if current > best:
                best, top = current, tracemalloc.take_snapshot()
    finally:
        if top is not None:
            sys.stderr.write(f"traced peak {best / 2**20:.1f} MiB\n")
            kind = (
                "traceback"
                if len(top.traces) and (top.traces[0].traceback.total_nframe or 0) > 1
                else "lineno"
            )
            for stat in top.statistics(kind)[:25]:
                sys.stderr.write(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d} blocks\n")
                for frame in stat.traceback.format()[-8:]:
                    sys.stderr.write(f"    {frame}\n")


def main() -> int:
    name = sys.argv[1]
    contender = CONTENDERS[name]
    for module in _IMPORTS[name]:
        __import__(module)
    print(json.dumps({"ready": True}), flush=True)
    config = json.loads(sys.stdin.readline())
    with open(config["ids_file"], "rb") as file:
        script = orjson.loads(file.read())
    ids: list[str] = script["ids"]
    completions = array.array("d", script["completions"])
    del script
    job = Job(config, ids)

    gc.collect()
    gc_clock = _GcClock()
    gc.callbacks.append(gc_clock)
    peak_reset = _reset_peak()
    rss_before = _status_kib()["VmRSS"]
    cpu_before = _cpu()
    system_before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    wall_before = time.monotonic()
    profile = os.environ.get("BENCH_PROFILE")
    if profile:
        # Diagnostics only: the profiler's overhead makes the CPU figure meaningless.
        import cProfile

        profiler = cProfile.Profile()
        lags = profiler.runcall(_run, name, contender, job)
        profiler.dump_stats(f"{profile}.{name}.prof")
    elif os.environ.get("BENCH_TRACEMALLOC"):
        import tracemalloc

        tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC"]))
        lags = _run(name, contender, job, snapshot=True)
    else:
        lags = _run(name, contender, job)
    wall = time.monotonic() - wall_before
    cpu = _cpu() - cpu_before
    system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - system_before
    gc.callbacks.remove(gc_clock)
    status = _status_kib()
    peak = status["VmHWM"] if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    pairs = sorted(
        (done, seen - done)
        for seen, done in zip(job.observed, completions, strict=True)
        if seen > 0
    )
    latencies = sorted(latency for _, latency in pairs)
    # By completion order, in tenths: where in the window the latency comes from.
    tenths = [
        _rank(
            sorted(
                latency for _, latency in pairs[i * len(pairs) // 10 : (i + 1) * len(pairs) // 10]
            ),
            0.99,
        )
        for i in range(10)
    ]
    lag_list = sorted(lags)
    result = {
        "contender": name,
        "operations": len(ids),
        "observed": len(latencies),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "cpu_system_seconds": system,  # of cpu_seconds, in the kernel (sockets, mostly)
        "rss_before_kib": rss_before,
        "rss_peak_kib": peak,
        "rss_growth_kib": max(0, peak - rss_before),
        "peak_reset": peak_reset,
        "latency_p50": _rank(latencies, 0.50),
        "latency_p99": _rank(latencies, 0.99),
        "latency_max": _rank(latencies, 1.0),
        "latency_p99_by_tenth": tenths,
        "loop_lag_p99": _rank(lag_list, 0.99),
        "loop_lag_max": _rank(lag_list, 1.0),
        "loop_lag_samples": len(lag_list),
        "gc_seconds": gc_clock.seconds,
        "gc_collections": gc_clock.collections,
        "cpu_share_per_second": job.cpu_shares,
        "client_requests": job.client_requests,
        "client_errors": job.client_errors,
        **job.extra,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
