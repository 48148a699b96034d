"""``asyncpoll demo --fleet N``: N processes in a fleet beside N on their own.

Two simulators serve the same scripted operations (one seed); a throwaway
``redis-server`` holds the fleet. N member processes wait for every operation through
one fleet, N independent processes through their own Pollers, at the same time; the
table shows the requests each setup sent (the simulators count them).

Each process is ``python -m asyncpoll._cli._fleet_demo member ...``: it waits for every
ID and prints one JSON line of its statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import TypedDict

import anyio

from .._fleet import RedisFleet
from .._poller import Poller, PollInterval
from .._session import Session

__all__ = ["run_demo"]

_TOKEN_ENV = "ASYNCPOLL_DEMO_TOKEN"


class Setup(TypedDict):
    """What one setup sent: in all (counted by its simulator) and per process."""

    requests: int
    per_process: list[int]


class DemoResult(TypedDict):
    """The demo's outcome (printed as is with ``--json``)."""

    processes: int
    operations: int
    fleet: Setup
    alone: Setup


async def _member(base_url: str, ids: list[str], redis: str | None, backend: str) -> None:
    del backend
    token = os.environ[_TOKEN_ENV]
    fleet = RedisFleet(redis, namespace="demo", lease=2.0) if redis else None
    interval = PollInterval(initial=0.25, maximum=1.0)
    async with Session(base_url, token=token) as session:
        async with Poller(session, interval=interval, fleet=fleet) as poller:
            await poller.wait_all(ids)
            stats = poller.statistics()
    line = {"requests": stats.requests, "leading": list(stats.leading)}
    print(json.dumps(line), flush=True)


def _member_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m asyncpoll._cli._fleet_demo member")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--ids-file", required=True)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--backend", default="asyncio")
    args = parser.parse_args(argv)
    with open(args.ids_file, encoding="utf-8") as file:
        ids = [line.strip() for line in file if line.strip()]
    anyio.run(_member, args.base_url, ids, args.redis, args.backend, backend=args.backend)
    return 0


def _spawn(
    base_url: str, ids_file: str, redis: str | None, backend: str, token: str
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "asyncpoll._cli._fleet_demo", "member"]
    command += ["--base-url", base_url, "--ids-file", ids_file, "--backend", backend]
    if redis is not None:
        command += ["--redis", redis]
    # The token travels in the environment, never on a command line.
    environment = {**os.environ, _TOKEN_ENV: token}
    return subprocess.Popen(command, stdout=subprocess.PIPE, env=environment)


def _requests_of(process: subprocess.Popen[bytes]) -> int:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"a demo process exited with {process.returncode}")
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    requests: int = json.loads(lines[-1])["requests"]
    return requests


def run_demo(
    processes: int, ops: int, seconds: float, seed: int | None, backend: str
) -> DemoResult:
    """Run both setups side by side; return what each sent (for the table or JSON)."""
    from ..testing import SimulatedServer
    from ..testing._redis import RedisProcess

    seed = 1 if seed is None else seed
    with (
        RedisProcess() as redis,
        SimulatedServer(seed=seed, log_limit=None) as fleet_server,
        SimulatedServer(seed=seed, log_limit=None) as alone_server,
        tempfile.TemporaryDirectory() as folder,
    ):
        files = {}
        for name, server in (("fleet", fleet_server), ("alone", alone_server)):
            ids = server.add_operations(ops, window=seconds)
            files[name] = os.path.join(folder, f"{name}.ids")
            with open(files[name], "w", encoding="utf-8") as file:
                file.write("\n".join(ids))
        token = fleet_server.token
        assert token is not None
        members = [
            _spawn(fleet_server.url, files["fleet"], redis.url, backend, token)
            for _ in range(processes)
        ]
        alone = [
            _spawn(alone_server.url, files["alone"], None, backend, token) for _ in range(processes)
        ]
        fleet_each = [_requests_of(process) for process in members]
        alone_each = [_requests_of(process) for process in alone]
        return {
            "processes": processes,
            "operations": ops,
            "fleet": {"requests": len(fleet_server.requests), "per_process": fleet_each},
            "alone": {"requests": len(alone_server.requests), "per_process": alone_each},
        }


if __name__ == "__main__":
    if sys.argv[1:2] != ["member"]:
        sys.exit("usage: python -m asyncpoll._cli._fleet_demo member --base-url URL ...")
    sys.exit(_member_main(sys.argv[2:]))
