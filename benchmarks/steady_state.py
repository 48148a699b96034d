"""The Poller's own cost per status, with the network taken out.

    python benchmarks/steady_state.py                 # 10,000 waits, statuses unchanged
    python benchmarks/steady_state.py --changing      # progress changes on every poll
    python benchmarks/steady_state.py --profile out.prof

N ``Poller.wait`` calls from N anyio tasks, against a ``MockTransport`` that answers every
batch with precomputed entries (``Running``), polled at a fixed interval. After a warm-up
(first sight of every operation), it measures the process CPU for some seconds, minus the
time spent in the mock handler, per status polled, beside ``orjson.loads`` of the same
bodies: issue 5's "CPU per observed status at most 2x the orjson floor", without aiohttp
and the loopback in the way. Then, in a second run under tracemalloc, the memory held per
watched operation by allocations made from asyncpoll's own code (``asyncpoll/`` in the
traceback), apart from the callers' tasks.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import orjson

import asyncpoll
from asyncpoll import MockTransport, Poller, PollInterval, Request, Response, Session

PACKAGE = str(Path(asyncpoll.__file__).resolve().parent)


class Server:
    """The mock endpoint: entries by ID, optionally changing progress on every answer."""

    def __init__(self, n: int, changing: bool) -> None:
        self.changing = changing
        self.entries = {
            f"op{i:020d}": {
                "id": f"op{i:020d}",
                "state": "Running",
                "percentComplete": 40,
                "result": None,
                "error": None,
                "createdAt": "2026-11-28T10:00:00Z",
                "lastUpdatedAt": "2026-11-28T10:00:05Z",
            }
            for i in range(n)
        }
        self.seconds = 0.0
        self.bodies: list[bytes] = []
        self.keep = False
        self.tick = 0

    def __call__(self, request: Request) -> Response:
        started = time.process_time()
        query = request.url.partition("?")[2]
        ids = [unquote(part.partition("=")[2]) for part in query.split("&")]
        if self.changing:
            self.tick += 1
            percent = 1 + self.tick % 98
            batch = [{**self.entries[i], "percentComplete": percent} for i in ids]
        else:
            batch = [self.entries[i] for i in ids]
        body = orjson.dumps(batch)
        if self.keep:
            self.bodies.append(body)
        self.seconds += time.process_time() - started
        return Response(200, {}, body)


async def _run(n: int, seconds: float, interval: float, changing: bool) -> dict[str, Any]:
    server = Server(n, changing)
    pace = PollInterval(initial=interval, maximum=interval, multiplier=1.0)
    transport = MockTransport(server)
    result: dict[str, Any] = {}
    async with Session("http://127.0.0.1:9", token="t", transport=transport) as session:
        async with Poller(session, interval=pace) as poller:

            async def one(op_id: str) -> None:
                await poller.wait(op_id)

            async with anyio.create_task_group() as tg:
                for op_id in server.entries:
                    tg.start_soon(one, op_id)
                await anyio.sleep(2 * interval)  # first sight of everything
                transport.requests.clear()
                gc.collect()
                before = poller.statistics()
                cpu, mock = time.process_time(), server.seconds
                server.keep = True
                await anyio.sleep(seconds)
                server.keep = False
                after = poller.statistics()
                result["cpu"] = time.process_time() - cpu - (server.seconds - mock)
                result["statuses"] = after.operations_polled - before.operations_polled
                result["requests"] = after.requests - before.requests
                if tracemalloc.is_tracing():
                    result["snapshot"] = tracemalloc.take_snapshot()
                tg.cancel_scope.cancel()
    transport.requests.clear()
    started = time.perf_counter()
    for body in server.bodies:
        orjson.loads(body)
    result["floor"] = time.perf_counter() - started
    result["floor_statuses"] = sum(body.count(b'"id"') for body in server.bodies)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--changing", action="store_true", help="progress changes every poll")
    parser.add_argument("--profile", help="write a cProfile of the measured run here")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc run")
    args = parser.parse_args()

    def run() -> dict[str, Any]:
        return anyio.run(_run, args.n, args.seconds, args.interval, args.changing)

    if args.profile:
        profiler = cProfile.Profile()
        figures = profiler.runcall(run)
        profiler.dump_stats(args.profile)
    else:
        figures = run()
    per_status = figures["cpu"] / figures["statuses"] * 1e6
    floor = figures["floor"] / figures["floor_statuses"] * 1e6
    kind = "changing on every poll" if args.changing else "unchanged"
    print(
        f"N={args.n:,}, statuses {kind}: {figures['statuses']:,} statuses in "
        f"{figures['requests']:,} requests; Poller CPU {per_status:.2f} us/status "
        f"(mock server excluded), orjson.loads floor {floor:.2f} us/status: "
        f"{per_status / floor:.1f}x the floor (target <= 2x)"
    )
    if args.no_memory:
        return 0
    tracemalloc.start(64)
    snapshot: tracemalloc.Snapshot = anyio.run(
        _run, args.n, 2 * args.interval, args.interval, args.changing
    )["snapshot"]
    tracemalloc.stop()
    size = sum(stat.size for stat in snapshot.statistics("filename"))
    mine = 0
    by_line: dict[str, int] = {}
    for trace in snapshot.traces:
        frames = list(trace.traceback)  # oldest first
        inside = [i for i, f in enumerate(frames) if f.filename.startswith(PACKAGE)]
        if inside:
            mine += trace.size
            # The innermost asyncpoll line that led to the allocation, and what allocated.
            ours_at, allocated = frames[inside[-1]], frames[-1]
            where = f"{Path(ours_at.filename).name}:{ours_at.lineno}"
            if allocated is not ours_at:
                where += f" -> {Path(allocated.filename).name}:{allocated.lineno}"
            by_line[where] = by_line.get(where, 0) + trace.size
    print(
        f"memory while {args.n:,} operations are watched: {size / args.n:.0f} B/op traced in "
        f"all, {mine / args.n:.0f} B/op allocated from asyncpoll's code; the largest:"
    )
    for where, total in sorted(by_line.items(), key=lambda item: -item[1])[:15]:
        print(f"  {total / args.n:7.0f} B/op  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
