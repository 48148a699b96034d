"""Test helpers for code that uses asyncpoll: a simulator of the status endpoint.

:class:`SimulatedServer` is a real HTTP server on loopback (aiohttp, in a thread of its
own) that serves the endpoint contract with scripted operations, wire variants, random
faults, scripted responses and a request log. It works with clients on asyncio, trio or
plain threads::

    from asyncpoll.testing import SimulatedServer

    with SimulatedServer(seed=1) as server:
        operation_id = server.add_operation(duration=0.2)
        ...  # point a Session at server.url with server.token

Run ``python -m asyncpoll.testing --help`` to serve it from the command line.
"""

from __future__ import annotations

from ._records import Faults, LoggedRequest, ScriptedResponse, WireVariant
from ._server import SimulatedServer

__all__ = [
    "Faults",
    "LoggedRequest",
    "ScriptedResponse",
    "SimulatedServer",
    "WireVariant",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
