"""A throwaway ``redis-server`` on loopback: for ``asyncpoll demo --fleet`` and the tests.

:class:`RedisProcess` starts ``redis-server`` (found on the ``PATH``) on a free port, or a
given one, with nothing persisted, waits for its ``PONG`` and kills it on
:meth:`~RedisProcess.stop`; it can be started again on the same port, with a password
(``--requirepass``) or TLS only (a self-signed certificate made with ``openssl``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
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


def _answers_ping(
    port: int, password: str | None = None, tls: ssl.SSLContext | None = None
) -> bool:
    try:
        with contextlib.ExitStack() as stack:
            conn = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=0.5))
            if tls is not None:
                conn = stack.enter_context(tls.wrap_socket(conn, server_hostname="127.0.0.1"))
            if password is not None:
                conn.sendall(_command(b"AUTH", password.encode()))
                if not conn.recv(64).startswith(b"+OK"):
                    return False
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _command(*parts: bytes) -> bytes:
    """One command in RESP (a bulk string per part)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


class RedisProcess:
    """A ``redis-server`` that a test stops and starts at will, always on the same
    loopback port (a free one by default), nothing persisted; ``password`` sets
    ``--requirepass``. Use it as a context manager or call :meth:`start`; :meth:`stop`
    kills it (``SIGKILL``, as a crash would), :meth:`restart` starts it again on the same
    port, empty; :meth:`close` (or leaving the ``with``) stops it and removes its files.

    Raises :class:`RedisUnavailable` if ``redis-server`` is not on the ``PATH`` or does
    not come up.
    """

    def __init__(
        self, port: int | None = None, *, password: str | None = None, tls: bool = False
    ) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisUnavailable(
                "redis-server is not on the PATH: install it (apt-get install redis-server, "
                "as .ci/run does)"
            )
        self._executable = executable
        self.port = port if port is not None else _free_port()
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed on exit)
        self._files = tempfile.TemporaryDirectory()  # certificates, with tls
        self.ca_file: str | None = None
        if tls:
            self.ca_file = self._make_certificate()

    def _make_certificate(self) -> str:
        """A self-signed certificate for 127.0.0.1 (``openssl``); returns its path."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RedisUnavailable("openssl is not on the PATH: it makes the TLS certificate")
        self._cert = os.path.join(self._files.name, "cert.pem")
        self._key = os.path.join(self._files.name, "key.pem")
        command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        command += ["-keyout", self._key, "-out", self._cert, "-subj", "/CN=127.0.0.1"]
        command += ["-addext", "subjectAltName=IP:127.0.0.1"]
        subprocess.run(command, check=True, capture_output=True)
        return self._cert

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``, with ``:PASSWORD@`` when there is a password;
        ``rediss://...?ssl_ca_certs=CERT`` with TLS (the certificate is verified)."""
        auth = "" if self.password is None else f":{self.password}@"
        if self.ca_file is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}?ssl_ca_certs={self.ca_file}"
        return f"redis://{auth}127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start it and wait until it answers ``PING`` (after ``AUTH`` with a password)."""
        if self.running:
            return
        command = [self._executable, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        tls = None
        if self.ca_file is None:
            command += ["--port", str(self.port)]
        else:
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            command += ["--tls-cert-file", self._cert, "--tls-key-file", self._key]
            command += ["--tls-ca-cert-file", self._cert]
            tls = ssl.create_default_context(cafile=self.ca_file)
        if self.password is not None:
            command += ["--requirepass", self.password]
        process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self._process = process
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                self._log.seek(0)
                output = self._log.read().decode(errors="replace")[-2000:]
                raise RedisUnavailable(f"redis-server exited with {process.returncode}:\n{output}")
            if _answers_ping(self.port, self.password, tls):
                return
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer PING within {_START_TIMEOUT:g} s")

    def stop(self) -> None:
        """Kill it (``SIGKILL``) and wait until it has exited: the port is closed."""
        if self._process is not None:
            _stop(self._process)
            self._process = None

    def restart(self) -> None:
        """Start it again on the same port (empty: nothing was persisted)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop it and remove its log and certificate files."""
        self.stop()
        self._log.close()
        self._files.cleanup()

    def __enter__(self) -> RedisProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
