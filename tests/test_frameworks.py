"""Start-up and shutdown inside real frameworks, stopped with waits in flight.

- an arq worker against a real ``redis-server``, stopped by a real SIGTERM: in this
  process (to inspect its tasks) and as the ``arq`` command line;
- a pytest-asyncio yield fixture, run in an inner pytest session (``pytester``);
- a FastAPI app's lifespan under a real uvicorn server, stopped with ``should_exit``.

No mocks: the frameworks run their own start-up and shutdown code, and asyncpoll talks to
the simulator over loopback. asyncio only (``Poller.start`` is asyncio's; arq, uvicorn
and pytest-asyncio are asyncio frameworks).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import anyio
import httpx
import pytest
import uvicorn
from arq.connections import RedisSettings, create_pool
from arq.jobs import Job, JobStatus
from arq.worker import Worker
from fastapi import FastAPI, Request

from asyncpoll import OperationState, Poller, PollInterval, RetryPolicy, Session
from asyncpoll.testing import SimulatedServer

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.anyio

FAST = PollInterval(initial=0.02, maximum=0.05, multiplier=1.5, jitter=0.1)
CLOSED = "the Poller was closed"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def session_for(server: SimulatedServer) -> Session:
    assert server.token is not None
    return Session(server.url, token=server.token, retry=RetryPolicy(initial=0.001, maximum=0.01))


def asyncpoll_tasks() -> list[str]:
    """Names of the running tasks that asyncpoll made (the Poller's own and its group's)."""
    return sorted(t.get_name() for t in asyncio.all_tasks() if "asyncpoll" in t.get_name())


async def until(condition: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """Wait until ``condition()`` is true (polled), failing after ``seconds``."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (state of other threads and processes)
            await anyio.sleep(0.01)
    assert condition(), what


def coalesced(server: SimulatedServer) -> tuple[int, int]:
    """(requests the simulator saw, operation statuses they asked for)."""
    requests = server.requests
    return len(requests), sum(len(r.ids) for r in requests)


async def connections_closed(server: SimulatedServer) -> None:
    await until(lambda: server.open_connections == 0, "no connection left open")


@contextmanager
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Capture every log record (asyncio's "Task exception was never retrieved" included)."""
    with caplog.at_level(logging.DEBUG):
        yield caplog.records
        gc.collect()  # a task or transport dropped unfinished says so when collected


def errors(records: list[logging.LogRecord]) -> list[str]:
    """The records at ERROR and above, as "logger: message [exception]"."""
    found = []
    for record in records:
        if record.levelno < logging.ERROR:
            continue
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        found.append(f"{record.name}: {text}")
    return found


# -- arq ------------------------------------------------------------------------------


async def arq_startup(ctx: dict[str, Any]) -> None:
    """arq's ``on_startup``: runs in the worker's main task."""
    session = session_for(ctx["simulator"])
    poller = Poller(session, interval=FAST)
    await poller.start()
    ctx["session"], ctx["poller"] = session, poller
    ctx["facts"]["startup_task"] = asyncio.current_task()


async def arq_shutdown(ctx: dict[str, Any]) -> None:
    """arq's ``on_shutdown``: runs in the task that runs ``Worker.close()``."""
    facts = ctx["facts"]
    facts["shutdown_task"] = asyncio.current_task()
    facts["watched_at_shutdown"] = ctx["poller"].statistics().watched
    facts["tasks_at_shutdown"] = asyncpoll_tasks()
    await ctx["poller"].aclose()
    await ctx["session"].aclose()


async def wait_for_operation(ctx: dict[str, Any], operation_id: str) -> dict[str, str]:
    """The job: wait through the worker's one Poller."""
    try:
        operation = await ctx["poller"].wait(operation_id, timeout=60)
    except BaseException as exc:
        ctx["facts"]["ended"][operation_id] = type(exc).__name__
        raise
    return {"id": operation.id, "state": operation.state.value}


@contextmanager
def signal_handlers_restored(*signals: signal.Signals) -> Iterator[None]:
    """Undo the handlers a framework installs on the running loop (arq never removes its
    own: in a test process they would outlive the worker)."""
    originals = {signum: signal.getsignal(signum) for signum in signals}
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        for signum, original in originals.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, original)


# Jobs of each kind, and arq's max_jobs: the quick jobs run first (enqueued first), then the
# slow ones fill every slot. A full worker's main loop no longer reads the queue and only
# sleeps between its rounds, so SIGTERM cancels it in that sleep. (Cancelled inside a Redis
# command instead, arq 0.28 leaks a redis-py Pipeline: a ResourceWarning, and arq's race.)
JOBS = 4


# arq 0.28's Worker.close() calls redis-py's close(), deprecated since redis 5.0.1 for
# aclose(): arq's warning, not ours, and an error under filterwarnings = ["error"].
@pytest.mark.filterwarnings(r"ignore:Call to deprecated close\.:DeprecationWarning:arq")
async def test_an_arq_worker_stopped_by_sigterm_with_jobs_waiting(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = set(asyncio.all_tasks())
    queue = f"asyncpoll-test:{uuid.uuid4().hex}"
    settings = RedisSettings.from_dsn(redis_url)
    facts: dict[str, Any] = {"ended": {}}
    with (
        SimulatedServer(seed=1) as server,
        all_logs(caplog) as records,
        signal_handlers_restored(signal.SIGTERM, signal.SIGINT),
    ):
        quick = server.add_operations(JOBS, window=0.3)
        slow = server.add_operations(JOBS, window=600.0)
        worker = Worker(
            functions=[wait_for_operation],
            queue_name=queue,
            redis_settings=settings,
            on_startup=arq_startup,
            on_shutdown=arq_shutdown,
            handle_signals=True,  # SIGTERM goes to Worker.handle_sig, as under `arq`
            poll_delay=0.05,
            max_jobs=JOBS,
            ctx={"simulator": server, "facts": facts},
        )
        redis = await create_pool(settings, default_queue_name=queue)
        main: asyncio.Task[None] | None = None
        try:
            jobs: list[Job] = []
            for operation_id in quick + slow:
                job = await redis.enqueue_job("wait_for_operation", operation_id)
                assert job is not None
                jobs.append(job)
            # `arq` runs Worker.run(): run_until_complete(main()) and, once the SIGTERM
            # handler has cancelled main(), run_until_complete(close()), each a task of
            # its own. In a loop that already runs, that is async_run() and a task for
            # close(), here.
            main = asyncio.create_task(worker.async_run(), name="arq main")
            results = [await job.result(timeout=10, poll_delay=0.02) for job in jobs[:JOBS]]

            def slow_jobs_wait() -> bool:
                poller = worker.ctx.get("poller")
                return (
                    poller is not None
                    and len(worker.job_tasks) == len(slow)
                    and poller.statistics().watched == len(slow)
                )

            await until(slow_jobs_wait, "the slow jobs wait")
            poller, session = worker.ctx["poller"], worker.ctx["session"]
            os.kill(os.getpid(), signal.SIGTERM)
            with anyio.fail_after(5):
                await asyncio.wait([main])
            assert main.cancelled(), "handle_sig cancels the main task"
            closer = asyncio.create_task(worker.close(), name="arq close")
            with anyio.fail_after(5):
                await closer
            statuses = [await job.status() for job in jobs[JOBS:]]
        finally:
            if main is not None and not main.done():  # failed above: stop it all the same
                worker.handle_sig(signal.SIGTERM)
                await asyncio.wait([main])
                await worker.close()
            await redis.aclose()
        await connections_closed(server)
        requests, polled = coalesced(server)

    assert results == [{"id": i, "state": OperationState.SUCCEEDED.value} for i in quick]
    # SIGTERM cancelled the waiting jobs (arq re-queues them for the next worker) before
    # close() ran on_shutdown: the Poller had nobody left to fail.
    assert sorted(facts["ended"].items()) == sorted((i, "CancelledError") for i in slow)
    assert statuses == [JobStatus.queued] * len(slow)
    assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (JOBS, JOBS, 0)
    assert facts["watched_at_shutdown"] == 0
    # The Poller's task is its own: cancelling the main task, which started it, left it be.
    assert "asyncpoll.Poller" in facts["tasks_at_shutdown"]
    # start-up in the main task, shutdown in close()'s: why Poller.start() exists.
    assert facts["startup_task"] is worker.main_task
    assert facts["shutdown_task"] is closer
    assert session.is_closed
    assert poller.statistics().watched == poller.statistics().in_flight == 0
    assert asyncpoll_tasks() == []
    assert [t.get_name() for t in set(asyncio.all_tasks()) - before] == []
    assert errors(records) == []
    assert requests * 2 <= polled, "the jobs' waits shared requests"


# -- pytest-asyncio ---------------------------------------------------------------------

# The inner session is as strict as ours: any warning (an unclosed connection or
# transport) fails it. The loop scope is set because leaving it unset is a deprecation
# warning.
_PYTEST_ASYNCIO_INI = """
[pytest]
addopts = -p no:cacheprovider --strict-markers --strict-config
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

# pytest-asyncio runs a yield fixture's set-up and its teardown as two separate
# runner.run() calls, two tasks, and each test in a third: the fixture uses start() and
# aclose(). Each test leaves a wait in flight in a task of its own; the teardown closes the
# Poller under it. What each part saw goes to facts.json for the outer test.
_PYTEST_ASYNCIO_TESTS = """
import asyncio
import json
import pathlib

import pytest
import pytest_asyncio

import asyncpoll

FAST = asyncpoll.PollInterval(initial=0.02, maximum=0.05)
FACTS = pathlib.Path("facts.json")
LEFT_WAITING = []


def record(**facts):
    known = json.loads(FACTS.read_text()) if FACTS.exists() else []
    FACTS.write_text(json.dumps(known + [facts]))


def asyncpoll_tasks():
    return sorted(t.get_name() for t in asyncio.all_tasks() if "asyncpoll" in t.get_name())


@pytest_asyncio.fixture
async def poller(asyncpoll_server):
    session = asyncpoll.Session(asyncpoll_server.url, token=asyncpoll_server.token)
    poller = asyncpoll.Poller(session, interval=FAST)
    await poller.start()
    setup_task = asyncio.current_task()
    yield poller
    watched = poller.statistics().watched
    await poller.aclose()
    await session.aclose()
    outcomes = []
    for task in LEFT_WAITING:
        await asyncio.wait([task], timeout=5)
        outcomes.append(repr(task.exception()))
    LEFT_WAITING.clear()
    for _ in range(500):  # the server sees a closed connection a moment later
        if asyncpoll_server.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    record(
        same_task=asyncio.current_task() is setup_task,
        watched_at_teardown=watched,
        waiters=outcomes,
        session_closed=session.is_closed,
        tasks_left=asyncpoll_tasks(),
        open_connections=asyncpoll_server.open_connections,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("quick", [1, 4])
async def test_waits(poller, asyncpoll_server, quick):
    done = asyncpoll_server.add_operations(quick, window=0.1)
    [slow] = asyncpoll_server.add_operations(1, window=600.0)
    LEFT_WAITING.append(asyncio.create_task(poller.wait(slow)))
    operations = await poller.wait_all(done, timeout=10)
    assert [op.state for op in operations] == [asyncpoll.OperationState.SUCCEEDED] * quick
    while poller.statistics().watched < 1:
        await asyncio.sleep(0.01)
"""


def test_a_pytest_asyncio_yield_fixture_closes_the_poller_under_a_waiting_task(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(_PYTEST_ASYNCIO_INI)
    pytester.makepyfile(test_inner=_PYTEST_ASYNCIO_TESTS)
    result = pytester.runpytest("-p", "no:anyio", "-p", "no:trio")
    result.assert_outcomes(passed=2, errors=0)
    facts = json.loads((pytester.path / "facts.json").read_text())
    expected = {
        "same_task": False,
        "watched_at_teardown": 1,
        "waiters": [repr(RuntimeError(CLOSED))],
        "session_closed": True,
        "tasks_left": [],
        "open_connections": 0,
    }
    assert facts == [expected, expected]


# -- FastAPI under uvicorn --------------------------------------------------------------

LifespanForm = Literal["async with", "start/aclose"]


def make_app(server: SimulatedServer, form: LifespanForm, facts: dict[str, Any]) -> FastAPI:
    """An app whose lifespan opens one Session and one Poller, in either form."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        facts["startup_task"] = asyncio.current_task()
        if form == "async with":
            # uvicorn runs the whole lifespan in one task: async with holds.
            async with session_for(server) as session:
                async with Poller(session, interval=FAST) as poller:
                    app.state.session, app.state.poller = session, poller
                    yield
                    facts["shutdown_task"] = asyncio.current_task()
                    facts["watched_at_shutdown"] = poller.statistics().watched
        else:
            session = session_for(server)
            poller = Poller(session, interval=FAST)
            await poller.start()
            app.state.session, app.state.poller = session, poller
            try:
                yield
            finally:
                facts["shutdown_task"] = asyncio.current_task()
                facts["watched_at_shutdown"] = poller.statistics().watched
                await poller.aclose()
                await session.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/wait/{operation_id}")
    async def wait(operation_id: str, request: Request) -> dict[str, str]:
        poller: Poller = request.app.state.poller
        try:
            operation = await poller.wait(operation_id, timeout=60)
        except BaseException as exc:
            facts.setdefault("ended", {})[operation_id] = type(exc).__name__
            raise
        return {"id": operation.id, "state": operation.state.value}

    return app


async def get(client: httpx.AsyncClient, path: str) -> tuple[int, Any] | str:
    """(status, body) of the answer, or the client's error."""
    try:
        response = await client.get(path)
    except httpx.HTTPError as exc:
        return repr(exc)
    ok = response.headers.get("content-type") == "application/json"
    return response.status_code, response.json() if ok else response.text


@pytest.mark.parametrize("form", ["async with", "start/aclose"])
async def test_a_fastapi_lifespan_under_uvicorn_stopped_with_requests_waiting(
    form: LifespanForm, caplog: pytest.LogCaptureFixture
) -> None:
    before = set(asyncio.all_tasks())
    facts: dict[str, Any] = {}
    with SimulatedServer(seed=1) as server, all_logs(caplog) as records:
        quick = server.add_operations(4, window=0.3)
        slow = server.add_operations(3, window=600.0)
        app = make_app(server, form, facts)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            lifespan="on",
            timeout_graceful_shutdown=1,
            log_config=None,  # leave logging alone: records reach caplog
        )
        uvicorn_server = uvicorn.Server(config)
        serving = asyncio.create_task(uvicorn_server.serve(), name="uvicorn serve")
        try:
            await until(lambda: uvicorn_server.started, "uvicorn started")
            port = uvicorn_server.servers[0].sockets[0].getsockname()[1]
            base_url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
                answers = await asyncio.gather(*(get(client, f"/wait/{i}") for i in quick))
                waiting = [asyncio.create_task(get(client, f"/wait/{i}")) for i in slow]
                poller: Poller = app.state.poller
                session: Session = app.state.session
                await until(lambda: poller.statistics().watched == len(slow), "requests wait")
                uvicorn_server.should_exit = True
                with anyio.fail_after(10):
                    await serving  # uvicorn's serve() returns: a clean exit
                    outcomes = await asyncio.gather(*waiting)
        finally:
            if not serving.done():  # failed above: stop it all the same
                uvicorn_server.should_exit = True
                await asyncio.wait([serving])
        await connections_closed(server)
        requests, polled = coalesced(server)

    assert answers == [(200, {"id": i, "state": OperationState.SUCCEEDED.value}) for i in quick]
    # uvicorn waited timeout_graceful_shutdown for the requests, then cancelled their tasks
    # (each answered by uvicorn's own 500) and only then ran the lifespan's shutdown.
    assert outcomes == [(500, "Internal Server Error")] * len(slow)
    assert facts["ended"] == dict.fromkeys(slow, "CancelledError")
    assert errors(records) == [
        f"uvicorn.error: Cancel {len(slow)} running task(s), timeout graceful shutdown exceeded"
    ] + [
        "uvicorn.error: Exception in ASGI application\n [CancelledError: Task cancelled, "
        "timeout graceful shutdown exceeded]"
    ] * len(slow)
    # The lifespan runs in one task, start-up and shutdown: async with holds there.
    assert facts["shutdown_task"] is facts["startup_task"]
    assert facts["watched_at_shutdown"] == 0
    assert session.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        await poller.wait(quick[0])
    assert poller.statistics().watched == poller.statistics().in_flight == 0
    assert asyncpoll_tasks() == []
    assert [t.get_name() for t in set(asyncio.all_tasks()) - before] == []
    assert requests * 2 <= polled, "the requests' waits shared status requests"


# -- the arq command line ---------------------------------------------------------------

# A worker settings module for `arq asyncpoll_worker.WorkerSettings`, the way arq is
# deployed: the real Worker.run(), the real SIGTERM, the process's own exit.
_ARQ_SETTINGS = """
import asyncio
import json
import os
import pathlib

from arq.connections import RedisSettings

import asyncpoll

FAST = asyncpoll.PollInterval(initial=0.02, maximum=0.05)


async def startup(ctx):
    session = asyncpoll.Session(os.environ["SIMULATOR_URL"], token=os.environ["SIMULATOR_TOKEN"])
    poller = asyncpoll.Poller(session, interval=FAST)
    await poller.start()
    ctx["session"], ctx["poller"] = session, poller
    ctx["startup_task"] = asyncio.current_task()


async def shutdown(ctx):
    poller, session = ctx["poller"], ctx["session"]
    watched = poller.statistics().watched
    await poller.aclose()
    await session.aclose()
    pathlib.Path(os.environ["FACTS"]).write_text(json.dumps({
        "same_task": asyncio.current_task() is ctx["startup_task"],
        "watched_at_shutdown": watched,
        "session_closed": session.is_closed,
        "tasks_left": sorted(
            t.get_name() for t in asyncio.all_tasks() if "asyncpoll" in t.get_name()
        ),
    }))


async def wait_for_operation(ctx, operation_id):
    operation = await ctx["poller"].wait(operation_id, timeout=60)
    return {"id": operation.id, "state": operation.state.value}


class WorkerSettings:
    functions = [wait_for_operation]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(os.environ["ARQ_REDIS"])
    queue_name = os.environ["ARQ_QUEUE"]
    poll_delay = 0.05
    max_jobs = int(os.environ["ARQ_MAX_JOBS"])
"""


async def test_the_arq_command_line_stopped_by_sigterm_with_jobs_waiting(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "asyncpoll_worker.py").write_text(_ARQ_SETTINGS)
    queue = f"asyncpoll-test:{uuid.uuid4().hex}"
    settings = RedisSettings.from_dsn(redis_url)
    log = tmp_path / "worker.log"
    with SimulatedServer(seed=1) as server:
        assert server.token is not None
        quick = server.add_operations(JOBS, window=0.3)
        slow = server.add_operations(JOBS, window=600.0)
        env = {
            **os.environ,
            "SIMULATOR_URL": server.url,
            "SIMULATOR_TOKEN": server.token,
            "ARQ_REDIS": redis_url,
            "ARQ_QUEUE": queue,
            "ARQ_MAX_JOBS": str(JOBS),
            "FACTS": str(tmp_path / "facts.json"),
        }
        redis = await create_pool(settings, default_queue_name=queue)
        try:
            jobs: list[Job] = []
            for operation_id in quick + slow:
                job = await redis.enqueue_job("wait_for_operation", operation_id)
                assert job is not None
                jobs.append(job)
            with log.open("wb") as log_file:
                # -W default: every warning (ResourceWarning included) reaches the log.
                command = [sys.executable, "-W", "default", "-m", "arq"]
                process = await anyio.open_process(
                    [*command, "asyncpoll_worker.WorkerSettings"],
                    cwd=tmp_path,
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
                try:
                    results = [await job.result(timeout=20, poll_delay=0.02) for job in jobs[:JOBS]]
                    # The slow jobs wait in the Poller once the simulator is asked for
                    # them (a SIGTERM before that would hit arq's own start-up of a job).
                    await until(
                        lambda: any(set(slow) <= set(r.ids) for r in server.requests),
                        "the slow jobs wait",
                        seconds=10,
                    )
                    process.send_signal(signal.SIGTERM)
                    with anyio.fail_after(10):
                        returncode = await process.wait()
                finally:
                    if process.returncode is None:
                        process.kill()
                    await process.aclose()
            statuses = [await job.status() for job in jobs[JOBS:]]
        finally:
            await redis.aclose()
        await connections_closed(server)
        requests, polled = coalesced(server)
    assert returncode == 0
    assert results == [{"id": i, "state": OperationState.SUCCEEDED.value} for i in quick]
    assert statuses == [JobStatus.queued] * len(slow), "cancelled, re-queued by arq"
    assert json.loads((tmp_path / "facts.json").read_text()) == {
        "same_task": False,
        "watched_at_shutdown": 0,
        "session_closed": True,
        "tasks_left": [],
    }
    output = log.read_text()
    assert output.count("cancelled, will be run again") == len(slow)
    for bad in ("Traceback", "Task was destroyed", "never retrieved", "cancel scope", "Unclosed"):
        assert bad not in output
    # The one warning is arq's (see above); no ResourceWarning, no other warning.
    assert [line for line in output.splitlines() if "Warning" in line] == [
        line
        for line in output.splitlines()
        if "arq/worker.py" in line and "deprecated close" in line
    ]
    assert requests * 2 <= polled, "the jobs' waits shared requests"
