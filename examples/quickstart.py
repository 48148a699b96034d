"""Quick start: follow a few async operations on the built-in simulator.

Runs on asyncio by default; ``python examples/quickstart.py trio`` runs it on trio.
"""

from __future__ import annotations

import sys

import anyio

import asyncpoll
from asyncpoll.testing import SimulatedServer


async def main(url: str, token: str, ids: list[str]) -> None:
    """Query once in a batch, then wait for every operation through one Poller."""
    async with asyncpoll.Session(url, token=token) as session:
        first = await session.get_operations(ids)
        print(
            f"one batched query: {len(first)} operations, states", {op.state.value for op in first}
        )

        interval = asyncpoll.PollInterval(initial=0.2, maximum=1.0)
        async with asyncpoll.Poller(session, interval=interval) as poller:
            async with poller.watch(ids) as events:
                async for event in events:
                    if event.is_terminal and event.operation is not None:
                        op = event.operation
                        detail = op.created_resource_ids or (op.error and op.error.message)
                        print(f"{op.id}: {op.state.value} {detail}")
            print(poller.statistics())


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    with SimulatedServer(seed=7) as server:
        op_ids = server.add_operations(8, window=2.0, fail_rate=0.25)
        assert server.token is not None
        anyio.run(main, server.url, server.token, op_ids, backend=backend)
