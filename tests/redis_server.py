"""A real ``redis-server`` for tests (arq workers now, fleets of processes later).

:func:`redis_server` starts ``redis-server`` as a subprocess on a free loopback port, with
nothing persisted (``--save '' --appendonly no``), waits until it answers ``PING``, yields
its URL and kills it afterwards. With ``REDIS_URL`` set it uses that server instead and
starts nothing. Without either it fails with a message that says what to install: a test
that needs Redis must never be skipped in silence (``.ci/run`` installs ``redis-server``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

__all__ = ["RedisUnavailable", "redis_server"]

_START_TIMEOUT = 10.0
_ATTEMPTS = 3  # a free port can be taken by someone else before redis-server binds it


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` to start, or it did not come up."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


def _start(executable: str, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server and wait for its PONG; raise RedisUnavailable if it exits."""
    port = _free_port()
    # Nothing touches the disk, and it listens on loopback only. Its log goes to a file,
    # never to a pipe that nobody reads (which would block it once full).
    command = [executable, "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise RedisUnavailable(f"redis-server exited with {process.returncode}:\n{output}")
        if _answers_ping(port):
            return process, port
        time.sleep(0.02)
    _stop(process)
    raise RedisUnavailable(f"redis-server did not answer PING within {_START_TIMEOUT:g} s")


@contextmanager
def redis_server() -> Iterator[str]:
    """Yield the URL (``redis://127.0.0.1:PORT``) of a running Redis: ``REDIS_URL`` if it
    is set, else a ``redis-server`` started here and killed on exit.

    Raises :class:`RedisUnavailable` if ``redis-server`` is not on the ``PATH`` (and
    ``REDIS_URL`` is unset) or does not come up.
    """
    existing = os.environ.get("REDIS_URL")
    if existing:
        yield existing
        return
    executable = shutil.which("redis-server")
    if executable is None:
        raise RedisUnavailable(
            "redis-server is not on the PATH and REDIS_URL is not set: install it "
            "(apt-get install redis-server, as .ci/run does) or set REDIS_URL=redis://HOST:PORT"
        )
    error: RedisUnavailable | None = None
    for _ in range(_ATTEMPTS):
        with tempfile.TemporaryFile() as log:
            try:
                process, port = _start(executable, log)
            except RedisUnavailable as exc:
                error = exc
                continue
            try:
                yield f"redis://127.0.0.1:{port}"
            finally:
                _stop(process)
            return
    assert error is not None
    raise error
