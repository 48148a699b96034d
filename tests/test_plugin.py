"""The pytest plugin: ``asyncpoll_server`` under pytest-asyncio, anyio and pytest-trio.

Each test writes a small test file and runs it in a pytest session of its own (in this
process, through ``pytester``), with the same installed plugins a user would have.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

# The inner sessions are as strict as ours: a warning (an unclosed connection, a
# deprecation from one of the async plugins) fails the inner test.
_INI = """
[pytest]
addopts = -p no:cacheprovider --strict-markers --strict-config
filterwarnings = error
"""
# Known only while pytest-asyncio is loaded (else --strict-config refuses it); unset, it
# is a deprecation warning.
_ASYNCIO_INI = _INI + "asyncio_default_fixture_loop_scope = function\n"

# One real wait through a Session and a Poller against the fixture's server; the same
# body under every plugin.
_WAIT = """
import asyncpoll

FAST = asyncpoll.PollInterval(initial=0.02, maximum=0.05)


async def wait_for_one(server):
    operation_id = server.add_operation(duration=0.1)
    async with asyncpoll.Session(server.url, token=server.token) as session:
        async with asyncpoll.Poller(session, interval=FAST) as poller:
            operation = await poller.wait(operation_id, timeout=10)
    assert operation.state is asyncpoll.OperationState.SUCCEEDED
    assert server.requests, "the Poller asked the server"
"""


def _run(pytester: pytest.Pytester, body: str, *args: str) -> pytest.RunResult:
    pytester.makeini(_INI if "no:asyncio" in args else _ASYNCIO_INI)
    pytester.makepyfile(test_inner=_WAIT + textwrap.dedent(body))
    return pytester.runpytest(*args)


def test_under_pytest_asyncio(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import asyncio
        import pytest

        @pytest.mark.asyncio
        async def test_wait(asyncpoll_server):
            assert asyncio.get_running_loop() is not None
            await wait_for_one(asyncpoll_server)
        """,
        "-p",
        "no:anyio",
        "-p",
        "no:trio",
    )
    result.assert_outcomes(passed=1)


def test_under_anyio_on_both_backends(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import pytest
        import sniffio

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param

        @pytest.mark.anyio
        async def test_wait(asyncpoll_server, anyio_backend):
            assert sniffio.current_async_library() == anyio_backend
            await wait_for_one(asyncpoll_server)
        """,
        "-p",
        "no:asyncio",
        "-p",
        "no:trio",
    )
    result.assert_outcomes(passed=2)


def test_under_pytest_trio(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import pytest
        import sniffio

        @pytest.mark.trio
        async def test_wait(asyncpoll_server):
            assert sniffio.current_async_library() == "trio"
            await wait_for_one(asyncpoll_server)
        """,
        "-p",
        "no:asyncio",
        "-p",
        "no:anyio",
    )
    result.assert_outcomes(passed=1)


def test_all_three_plugins_at_once(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import pytest

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param

        @pytest.mark.asyncio
        async def test_asyncio(asyncpoll_server):
            await wait_for_one(asyncpoll_server)

        @pytest.mark.anyio
        async def test_anyio(asyncpoll_server):
            await wait_for_one(asyncpoll_server)

        @pytest.mark.trio
        async def test_trio(asyncpoll_server):
            await wait_for_one(asyncpoll_server)
        """,
    )
    result.assert_outcomes(passed=4)


def test_without_any_async_plugin(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import anyio

        def test_wait(asyncpoll_server):
            anyio.run(wait_for_one, asyncpoll_server)
        """,
        "-p",
        "no:asyncio",
        "-p",
        "no:anyio",
        "-p",
        "no:trio",
    )
    result.assert_outcomes(passed=1)


def test_server_is_started_and_stopped_per_test(pytester: pytest.Pytester) -> None:
    pytester.makeini(_ASYNCIO_INI)
    pytester.makepyfile(
        test_inner="""
        import pytest

        seen = []

        @pytest.mark.parametrize("n", [1, 2])
        def test_started(asyncpoll_server, n):
            assert asyncpoll_server.url.startswith("http://127.0.0.1:")
            assert asyncpoll_server.requests == []
            seen.append(asyncpoll_server)

        def test_stopped_after():
            assert len(seen) == 2 and seen[0] is not seen[1]
            for server in seen:
                with pytest.raises(RuntimeError, match="not running"):
                    server.url
        """
    )
    pytester.runpytest().assert_outcomes(passed=3)


def test_fixture_is_listed_with_its_docstring(pytester: pytest.Pytester) -> None:
    pytester.makeini(_ASYNCIO_INI)
    pytester.makepyfile(test_inner="def test_nothing():\n    assert True\n")
    result = pytester.runpytest("--fixtures")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["asyncpoll_server*", "*A started*SimulatedServer*"])


def test_plugin_imports_no_async_plugin_trio_or_httpx() -> None:
    code = (
        "import sys, asyncpoll.testing._plugin\n"
        "loaded = {'trio', 'httpx', 'pytest_asyncio', 'pytest_trio', 'respx'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
