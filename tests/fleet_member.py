"""One member of a fleet, as a process of its own: run by tests/test_fleet.py.

    python tests/fleet_member.py --backend trio --redis redis://127.0.0.1:PORT \\
        --namespace NS --lease 1 --base-url http://127.0.0.1:PORT --token T \\
        --ids-file ids.txt --interval 0.25 --mode wait

It opens a Session and a Poller (with a :class:`asyncpoll.RedisFleet` unless ``--redis``
is omitted: then it is "one process alone"), then waits for every ID of ``--ids-file``
(one per line): one caller per ID (``wait``) or one ``Poller.watch`` over them all
(``watch``). It prints JSON lines to stdout, flushed, each with ``event`` and ``t``
(:func:`time.monotonic`, the clock the simulator logs with; the same for every process of
the machine):

- ``ready``: the Poller is open (its first heartbeat is done);
- ``outcome``: ``id`` and ``state`` (``null`` with ``not_found`` true), once per caller;
- ``timeout`` (``--timeout`` ran out for ``id``) and ``error`` (any other exception);
- ``progress`` (watch mode): every event, with ``state``, ``percent`` and ``terminal``;
- ``stats`` every ``--stats-every`` seconds: ``leading``, ``fleet_members``,
  ``fleet_connected`` and ``requests`` of :meth:`Poller.statistics`;
- ``settled``: every caller is done; ``done``: the Poller is closed (then it exits 0).

``--go-file``: callers start only once that file exists (so members start together and a
scenario's clock starts when the test says). ``--stay``: keep the Poller open after the
callers are done, until SIGTERM. SIGTERM at any time ends the callers (they give up),
closes the Poller cleanly and exits 0. Logging (INFO and up) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import anyio

import asyncpoll


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "t": time.monotonic(), **fields})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("asyncio", "trio"), required=True)
    parser.add_argument("--redis", help="the fleet's Redis URL; omitted: no fleet")
    parser.add_argument("--namespace", default="test")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--ids-file", required=True)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--mode", choices=("wait", "watch"), default="wait")
    parser.add_argument("--space", default="default")
    parser.add_argument("--timeout", type=float, default=None, help="per caller")
    parser.add_argument("--go-file", default=None)
    parser.add_argument("--stay", action="store_true")
    parser.add_argument("--stats-every", type=float, default=0.2)
    return parser.parse_args(argv)


def emit_stats(poller: asyncpoll.Poller) -> None:
    stats = poller.statistics()
    emit(
        "stats",
        leading=list(stats.leading),
        fleet_members=stats.fleet_members,
        fleet_connected=stats.fleet_connected,
        requests=stats.requests,
    )


async def wait_one(poller: asyncpoll.Poller, operation_id: str, args: argparse.Namespace) -> None:
    try:
        operation = await poller.wait(operation_id, space_id=args.space, timeout=args.timeout)
    except asyncpoll.OperationFailed as exc:
        emit("outcome", id=operation_id, state=exc.operation.state.value, not_found=False)
    except asyncpoll.OperationNotFound:
        emit("outcome", id=operation_id, state=None, not_found=True)
    except TimeoutError:
        emit("timeout", id=operation_id)
    except Exception as exc:  # the test fails on any of these
        emit("error", id=operation_id, error=f"{type(exc).__name__}: {exc}")
    else:
        emit("outcome", id=operation_id, state=operation.state.value, not_found=False)


async def watch_all(poller: asyncpoll.Poller, ids: list[str], args: argparse.Namespace) -> None:
    try:
        async with poller.watch(ids, space_id=args.space, timeout=args.timeout) as events:
            async for event in events:
                operation = event.operation
                state = None if operation is None else operation.state.value
                percent = None if operation is None else operation.percent_complete
                emit(
                    "progress",
                    id=event.operation_id,
                    state=state,
                    percent=percent,
                    terminal=event.is_terminal,
                )
                if event.is_terminal:
                    emit("outcome", id=event.operation_id, state=state, not_found=event.not_found)
    except TimeoutError:
        emit("timeout", id=None)
    except Exception as exc:
        emit("error", id=None, error=f"{type(exc).__name__}: {exc}")


async def main(args: argparse.Namespace, ids: list[str]) -> None:
    interval = asyncpoll.PollInterval(
        initial=args.interval, maximum=args.interval, multiplier=1.0, jitter=0.0
    )
    fleet = None
    if args.redis is not None:
        fleet = asyncpoll.RedisFleet(args.redis, namespace=args.namespace, lease=args.lease)
        logging.getLogger("fleet_member").info("member of %r", fleet)
    terminated = anyio.Event()
    async with anyio.create_task_group() as outer:

        async def on_sigterm() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    terminated.set()
                    return

        outer.start_soon(on_sigterm)
        async with (
            asyncpoll.Session(args.base_url, token=args.token) as session,
            asyncpoll.Poller(session, interval=interval, fleet=fleet) as poller,
        ):
            emit("ready", pid=os.getpid(), backend=args.backend)

            async def report() -> None:
                while True:
                    emit_stats(poller)
                    await anyio.sleep(args.stats_every)

            async def callers() -> None:
                if args.go_file is not None:
                    go = anyio.Path(args.go_file)
                    while not await go.exists():  # noqa: ASYNC110 (a file another process makes)
                        await anyio.sleep(0.01)
                async with anyio.create_task_group() as group:
                    if args.mode == "watch":
                        group.start_soon(watch_all, poller, ids, args)
                    else:
                        for operation_id in ids:
                            group.start_soon(wait_one, poller, operation_id, args)
                emit("settled")
                if args.stay:
                    await anyio.sleep(math.inf)

            async with anyio.create_task_group() as inner:
                inner.start_soon(report)

                async def run_callers() -> None:
                    await callers()
                    inner.cancel_scope.cancel()

                async def until_terminated() -> None:
                    await terminated.wait()
                    inner.cancel_scope.cancel()

                inner.start_soon(run_callers)
                inner.start_soon(until_terminated)
            emit_stats(poller)
        outer.cancel_scope.cancel()
    emit("done")


if __name__ == "__main__":
    arguments = parse()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    with open(arguments.ids_file, encoding="utf-8") as file:
        wanted = [line.strip() for line in file if line.strip()]
    anyio.run(main, arguments, wanted, backend=arguments.backend)
    sys.exit(0)
