"""The trio path's HTTP cost alone: client CPU per request of each way to send one batch.

    python benchmarks/trio_path.py                    # every variant, 1,000 requests each
    python benchmarks/trio_path.py --requests 3000 --variants transport,httpcore

Issue 10 asks for the trio path (``HttpxTransport``) to cost at most 1.5x the asyncio
path (``AiohttpTransport``) per observed status, and to "measure a leaner use of httpcore
or another maintained client before deciding". ``run.py`` measures the whole poller;
this measures only the transport's share: a ``SimulatedServer`` in a process of its own
holds 100 operations, and for each variant a fresh client process sends ``--requests``
GETs of all 100 IDs (the Session's batch, a URL of about 5 kB), ``--in-flight`` at a time
(the Poller's default 4), reads each body whole and reports its own CPU per request,
after a warm-up. The variants:

- ``transport``: ``asyncpoll.HttpxTransport`` as it is in the tree, under trio;
- ``aiohttp``: ``asyncpoll.AiohttpTransport`` under asyncio, the bar;
- ``httpx-client``: an ``httpx.AsyncClient`` as the transport used it before issue 10
  (``build_request(httpx.URL(url))``, ``send(stream=True)``, ``aiter_raw``), under trio;
- ``httpx-transport``: httpx without its client: ``httpx.AsyncHTTPTransport`` given an
  ``httpx.Request`` whose URL is built from its parts, never parsed;
- ``httpcore``: ``httpcore.AsyncConnectionPool`` alone, URL and target built from parts.

Each figure is one process's CPU (user + system) over the measured requests, divided by
their number; the simulator's CPU is not counted. Run it on a quiet machine, and more than
once: on a shared one the figures move by 10 % or more.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PATH = "/programs/v2/spaces/default/asyncOperations"
VARIANTS = ("transport", "aiohttp", "httpx-client", "httpx-transport", "httpcore")
ON_ASYNCIO = frozenset({"aiohttp"})
ACCEPT_ENCODING = "gzip, deflate"

#: One variant: given the URL and headers, a sender of one request (returns status and
#: body length) and a closer.
Sender = tuple[Callable[[], Awaitable[tuple[int, int]]], Callable[[], Awaitable[None]]]


def _cpu() -> tuple[float, float]:
    """User and system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


# -- the variants -----------------------------------------------------------------------


def _asyncpoll(name: str, url: str, headers: dict[str, str]) -> Sender:
    """asyncpoll's own transport: HttpxTransport, or AiohttpTransport for ``aiohttp``."""
    from asyncpoll import AiohttpTransport, AsyncTransport, HttpxTransport, Request

    transport: AsyncTransport
    transport = AiohttpTransport() if name == "aiohttp" else HttpxTransport()
    request = Request("GET", url, headers=headers, timeout=30.0)

    async def send() -> tuple[int, int]:
        response = await transport.handle_request(request)
        return response.status, len(response.body)

    return send, transport.aclose


async def _drained(chunks: AsyncIterator[bytes], close: Callable[[], Awaitable[None]]) -> int:
    """Read a streamed body to its end, then close it; its size in bytes."""
    try:
        size = 0
        async for chunk in chunks:
            size += len(chunk)
    finally:
        await close()
    return size


def _httpx_client(url: str, headers: dict[str, str]) -> Sender:
    """What HttpxTransport did before issue 10: the whole client, the URL parsed."""
    import httpx

    client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
    sent = {"Accept-Encoding": ACCEPT_ENCODING, **headers}

    async def send() -> tuple[int, int]:
        request = client.build_request(
            "GET", httpx.URL(url), headers=sent, timeout=httpx.Timeout(30.0)
        )
        response = await client.send(request, stream=True)
        return response.status_code, await _drained(response.aiter_raw(), response.aclose)

    return send, client.aclose


def _parts(url: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and target (path and query) of an http URL, as the Session
    builds it: no user info, no fragment, a host of one label or an IPv4 address."""
    scheme, rest = url.split("://", 1)
    origin, slash, target = rest.partition("/")
    host, _, port = origin.partition(":")
    return scheme, host, int(port) if port else (443 if scheme == "https" else 80), slash + target


def _httpx_transport(url: str, headers: dict[str, str]) -> Sender:
    """httpx's transport (what OpenTelemetry's httpx instrumentation wraps), no client."""
    import httpx
    from httpx._urlparse import ParseResult

    scheme, host, port, target = _parts(url)
    path, _, query = target.partition("?")
    parsed = httpx.URL.__new__(httpx.URL)
    parsed._uri_reference = ParseResult(scheme, "", host, port, path, query, None)
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    sent = {"Host": f"{host}:{port}", "Accept-Encoding": ACCEPT_ENCODING, **headers}
    extensions = {"timeout": httpx.Timeout(30.0).as_dict()}

    async def send() -> tuple[int, int]:
        request = httpx.Request("GET", parsed, headers=sent, extensions=extensions)
        response = await transport.handle_async_request(request)
        return response.status_code, await _drained(response.aiter_raw(), response.aclose)

    return send, transport.aclose


def _httpcore(url: str, headers: dict[str, str]) -> Sender:
    """httpcore's pool alone, the URL built from its parts."""
    import httpcore

    scheme, host, port, target = _parts(url)
    pool = httpcore.AsyncConnectionPool(max_connections=16)
    core_url = httpcore.URL(
        scheme=scheme.encode(), host=host.encode(), port=port, target=target.encode("ascii")
    )
    sent = [
        (k.encode(), v.encode())
        for k, v in {
            "Host": f"{host}:{port}",
            "Accept-Encoding": ACCEPT_ENCODING,
            **headers,
        }.items()
    ]
    extensions = {"timeout": {"connect": 30.0, "read": 30.0, "write": 30.0, "pool": 30.0}}

    async def send() -> tuple[int, int]:
        request = httpcore.Request(b"GET", core_url, headers=sent, extensions=extensions)
        response = await pool.handle_async_request(request)
        return response.status, await _drained(response.aiter_stream(), response.aclose)

    return send, pool.aclose


def _sender(name: str, url: str, headers: dict[str, str]) -> Sender:
    if name in ("transport", "aiohttp"):
        return _asyncpoll(name, url, headers)
    if name == "httpx-client":
        return _httpx_client(url, headers)
    if name == "httpx-transport":
        return _httpx_transport(url, headers)
    return _httpcore(url, headers)


# -- one client process -----------------------------------------------------------------


async def _drive(name: str, url: str, token: str, requests: int, in_flight: int) -> dict[str, Any]:
    import anyio

    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "User-Agent": "asyncpoll",
    }
    send, close = _sender(name, url, headers)
    sizes: set[int] = set()

    async def batch(count: int) -> None:
        remaining = [count]

        async def worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                status, size = await send()
                if status != 200:
                    raise RuntimeError(f"{name}: status {status}")
                sizes.add(size)

        async with anyio.create_task_group() as tg:
            for _ in range(in_flight):
                tg.start_soon(worker)

    try:
        await batch(max(50, requests // 10))  # warm-up: connections, caches, imports
        (user, system), wall = _cpu(), time.monotonic()
        await batch(requests)
        user_after, system_after = _cpu()
        wall = time.monotonic() - wall
    finally:
        await close()
    user, system = user_after - user, system_after - system
    return {
        "variant": name,
        "requests": requests,
        "cpu_per_request_us": (user + system) / requests * 1e6,
        "system_share": system / (user + system) if user + system else 0.0,
        "wall_seconds": wall,
        "body_bytes": max(sizes),
    }


def client(argv: list[str]) -> int:
    """The client process: ``--client NAME URL TOKEN REQUESTS IN_FLIGHT``."""
    name, url, token, requests, in_flight = argv
    import anyio
    import httpcore  # noqa: F401
    import httpx  # noqa: F401

    # Imported before any figure is taken, whichever variant needs which.
    import asyncpoll  # noqa: F401

    backend = "asyncio" if name in ON_ASYNCIO else "trio"
    figures = anyio.run(_drive, name, url, token, int(requests), int(in_flight), backend=backend)
    print(json.dumps(figures), flush=True)
    return 0


def serve() -> int:
    """The simulator process: prints the URL to ask for, serves until stdin closes."""
    from asyncpoll.testing import SimulatedServer

    with SimulatedServer(seed=10, log_limit=0) as server:
        # Never complete within a run: every answer is 100 running entries.
        ids = server.add_operations(100, window=1e6)
        query = "&".join(f"asyncOperationIds={op_id}" for op_id in ids)
        url = f"{server.url}{PATH}?{query}"
        print(json.dumps({"url": url, "token": server.token}), flush=True)
        sys.stdin.read()
    return 0


# -- the driver -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        return serve()
    if args[:1] == ["--client"]:
        return client(args[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="runs of every variant, alternating")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {','.join(VARIANTS)}")
    options = parser.parse_args(args)
    chosen = [v.strip() for v in options.variants.split(",") if v.strip()]
    unknown = set(chosen) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    me = str(Path(__file__).resolve())
    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    figures: dict[str, list[float]] = {name: [] for name in chosen}
    with subprocess.Popen([sys.executable, me, "--serve"], **pipes) as server:
        assert server.stdout is not None
        assert server.stdin is not None
        hello = json.loads(server.stdout.readline())
        try:
            for _ in range(options.rounds):
                for name in chosen:
                    command = [
                        *(sys.executable, me, "--client", name, hello["url"], hello["token"]),
                        *(str(options.requests), str(options.in_flight)),
                    ]
                    out = subprocess.run(command, capture_output=True, text=True, check=True)
                    result = json.loads(out.stdout.splitlines()[-1])
                    figures[name].append(result["cpu_per_request_us"])
                    print(
                        f"{name:16} {result['cpu_per_request_us']:8.0f} us CPU/request "
                        f"({result['system_share']:.0%} system; {result['requests']} requests, "
                        f"{result['body_bytes']} B bodies, "
                        f"{result['wall_seconds']:.1f} s)",
                        flush=True,
                    )
        finally:
            server.stdin.close()
            server.wait(timeout=10)
    if options.rounds > 1:
        print("\nmin / median us CPU per request:")
        for name, values in figures.items():
            print(f"{name:16} {min(values):8.0f} / {statistics.median(values):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
