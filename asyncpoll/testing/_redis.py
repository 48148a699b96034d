"""A throwaway ``redis-server`` on loopback: for ``asyncpoll demo --fleet`` and tests.

:class:`RedisProcess` starts ``redis-server`` (found on the ``PATH``) on a free port with
nothing persisted, waits for its ``PONG`` and kills it on :meth:`~RedisProcess.stop`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

__all__ = ["RedisProcess", "RedisUnavailable"]

_START_TIMEOUT = 10.0


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` on the ``PATH``, or it did not come up."""


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


class RedisProcess:
    """A ``redis-server`` subprocess listening on ``127.0.0.1:port`` (a free one by
    default), nothing written to disk. Use it as a context manager, or call
    :meth:`start` and :meth:`stop`; :attr:`url` is ``redis://127.0.0.1:PORT``."""

    def __init__(self, port: int | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisUnavailable("redis-server is not on the PATH (apt-get install redis-server)")
        self._executable = executable
        self.port = port if port is not None else _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        # Lives as long as this object (closed on exit): each start() appends to it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it answers ``PING``."""
        command = [self._executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        # Its log goes to a file, never to a pipe that nobody reads.
        process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self._process = process
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._log.seek(0)
                output = self._log.read().decode(errors="replace")[-2000:]
                raise RedisUnavailable(f"redis-server exited with {process.returncode}:\n{output}")
            if _answers_ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer PING within {_START_TIMEOUT:g} s")

    def stop(self) -> None:
        """Kill it (``SIGKILL``: nothing to save) and wait for it to end."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()
