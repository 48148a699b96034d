"""asyncpoll's pytest plugin: the ``asyncpoll_server`` fixture.

Installed with asyncpoll and loaded by pytest through the ``pytest11`` entry point, so
the fixture is there in every project that has asyncpoll, with no ``conftest.py`` line.
It is a plain (synchronous) fixture: the simulator runs in a thread of its own, so the
same fixture serves tests run by pytest-asyncio, anyio's pytest plugin, pytest-trio or
no async plugin at all, and this module imports none of them, nor trio or httpx.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._server import SimulatedServer

__all__ = ["asyncpoll_server"]


@pytest.fixture
def asyncpoll_server() -> Iterator[SimulatedServer]:
    """A started :class:`~asyncpoll.testing.SimulatedServer`, stopped after the test.

    One server per test (function scope), on a free loopback port, with the default
    token ``server.token`` (``"test-token"``, for user ``alice``) and no operations::

        async def test_job_finishes(asyncpoll_server):
            operation_id = asyncpoll_server.add_operation(duration=0.2)
            async with asyncpoll.Session(asyncpoll_server.url, token=asyncpoll_server.token) as s:
                async with asyncpoll.Poller(s) as poller:
                    await poller.wait(operation_id, timeout=10)

    For other constructor options (a seed, a wire variant, another token) build a
    ``SimulatedServer`` in your own fixture. Starting raises :class:`OSError` if no
    loopback port can be bound.
    """
    # Imported here: the plugin loads in every pytest run of an environment that has
    # asyncpoll, and the simulator (aiohttp's server) is only needed by tests that ask.
    from ._server import SimulatedServer

    with SimulatedServer() as server:
        yield server
