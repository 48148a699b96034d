"""Shared fixtures: every async test runs on asyncio and on trio, against the simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_server import redis_server

from asyncpoll.testing import SimulatedServer


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)


@pytest.fixture
def server() -> Iterator[SimulatedServer]:
    """A fresh simulator on loopback, with the default token ``test-token`` for ``alice``."""
    with SimulatedServer(seed=1234) as simulated:
        yield simulated


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis for the session (``REDIS_URL``, else a ``redis-server`` started here);
    fails, never skips, when there is none."""
    with redis_server() as url:
        yield url
