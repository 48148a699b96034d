"""A hostile HTTP/1.1 server for tests: stdlib only, raw sockets on 127.0.0.1.

``HostileServer(handler)`` accepts connections on a daemon thread and serves each one on
its own daemon thread; every request read is parsed into a :class:`RawRequest` and handed,
with its :class:`Connection`, to ``handler``, which may answer with anything at all:
a well-formed response, a trickle, garbage, silence or a compression bomb. Every loop
wakes at least every :data:`TICK` seconds to check the stop event, and leaving the
``with`` block joins every thread with a timeout: a broken client cannot hang a test.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType

__all__ = [
    "TICK",
    "Connection",
    "Handler",
    "HostileServer",
    "RawRequest",
    "bomb_bytes",
    "close_at_once",
    "closed_port",
    "compression_bomb",
    "hang",
    "raw",
    "respond",
    "respond_with",
    "trickle_body",
    "trickle_headers",
]

#: The longest any server loop sleeps or blocks before it checks the stop event.
TICK = 0.05
_MAX_HEAD = 64 * 1024
_CHUNK = 64 * 1024

Headers = Iterable[tuple[str, str]]


@dataclass(frozen=True)
class RawRequest:
    """One request as received: ``method``, raw request ``target`` and ``headers``."""

    method: str
    target: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    @property
    def ids(self) -> list[str]:
        """The ``asyncOperationIds`` values of the query, in order."""
        query = urllib.parse.urlsplit(self.target).query
        return urllib.parse.parse_qs(query, keep_blank_values=True).get("asyncOperationIds", [])


class Connection:
    """One accepted connection, as a handler sees it; every call is bounded in time."""

    def __init__(self, sock: socket.socket, stop: threading.Event, *, keep_alive: bool) -> None:
        self._sock = sock
        self._stop = stop
        #: Whether the server reads another request after this one (responses say so).
        self.keep_alive = keep_alive
        #: True once either side closed the connection.
        self.closed = False

    def send(self, data: bytes) -> bool:
        """Send ``data``; False if the peer closed or the server stopped first."""
        view = memoryview(data)
        while view and not self.closed and not self._stop.is_set():
            try:
                view = view[self._sock.send(view[:_CHUNK]) :]
            except TimeoutError:
                continue
            except OSError:
                self.closed = True
        return not view

    def trickle(self, data: bytes, *, every: float) -> bool:
        """Send ``data`` one byte at a time, ``every`` seconds apart; False if stopped early
        (server stopping, peer closed)."""
        for index in range(len(data)):
            if self.peer_closed() or not self.send(data[index : index + 1]):
                return False
            if self._stop.wait(every):
                return False
        return True

    def peer_closed(self) -> bool:
        """True if the peer has closed (or reset) the connection."""
        if not self.closed:
            try:
                ready, _, _ = select.select([self._sock], [], [], 0)
                if ready and self._sock.recv(1, socket.MSG_PEEK) == b"":
                    self.closed = True
            except OSError:
                self.closed = True
        return self.closed

    def wait_closed(self, timeout: float) -> bool:
        """Wait until the peer closes (True), ``timeout`` passes or the server stops."""
        deadline = time.monotonic() + timeout
        while not self.peer_closed():
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.wait(min(TICK, left)):
                return False
        return True

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _recv(self) -> bytes | None:
        """The next bytes from the peer, b"" at its end, None after one idle tick."""
        try:
            return self._sock.recv(_CHUNK)
        except TimeoutError:
            return None
        except OSError:
            return b""


Handler = Callable[[RawRequest, Connection], None]


class HostileServer:
    """A loopback HTTP/1.1 server whose ``handler`` answers every request.

    ``with HostileServer(handler) as srv:`` binds port 0 and serves ``srv.url``; leaving
    the block stops and joins every thread. ``requests`` lists each :class:`RawRequest`
    received, ``connections`` counts accepted connections, ``open_connections`` those not
    yet closed, and ``errors`` holds what a handler raised (other than the peer going
    away). With ``keep_alive=False`` each connection is closed after one request.
    """

    def __init__(self, handler: Handler, *, keep_alive: bool = True) -> None:
        self.handler = handler
        self.keep_alive = keep_alive
        self.requests: list[RawRequest] = []
        self.errors: list[BaseException] = []
        self.connections = 0
        self.port = 0
        self.url = ""
        self._lock = threading.Condition()
        self._open = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None

    def __enter__(self) -> HostileServer:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TICK)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and join every thread (each for at most what is left of ``timeout``)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                alive = [thread for thread in self._threads if thread.is_alive()]
            if not alive or time.monotonic() >= deadline:
                break
            alive[0].join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="hostile-server")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(TICK)
            with self._lock:
                self.connections += 1
                self._open += 1
            self._spawn(self._serve, Connection(sock, self._stop, keep_alive=self.keep_alive))

    def _serve(self, conn: Connection) -> None:
        buffer = b""
        try:
            while not self._stop.is_set() and not conn.closed:
                parsed = self._read_request(conn, buffer)
                if parsed is None:
                    break
                request, buffer = parsed
                with self._lock:
                    self.requests.append(request)
                self.handler(request, conn)
                if not self.keep_alive:
                    break
        except OSError:
            pass  # the peer went away mid-answer
        except Exception as exc:
            with self._lock:
                self.errors.append(exc)
        finally:
            conn.close()
            with self._lock:
                self._open -= 1
                self._lock.notify_all()

    @property
    def open_connections(self) -> int:
        """Accepted connections not closed yet (by either side)."""
        with self._lock:
            return self._open

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every accepted connection is closed (True) or ``timeout`` passes."""
        with self._lock:
            return self._lock.wait_for(lambda: self._open == 0, timeout)

    def _read_request(self, conn: Connection, buffer: bytes) -> tuple[RawRequest, bytes] | None:
        """The next request on ``conn`` and the bytes after it; None at the end."""
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > _MAX_HEAD or self._stop.is_set():
                return None
            data = conn._recv()
            if data == b"":
                return None
            buffer += data or b""
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        headers = [
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])
        ]
        request = RawRequest(parts[0], parts[1], headers)
        length = int(request.header("Content-Length") or 0)
        while len(buffer) < length:  # a body, if any, is read and dropped
            data = conn._recv()
            if data == b"" or self._stop.is_set():
                return None
            buffer += data or b""
        return request, buffer[length:]


# -- answers -------------------------------------------------------------------------------


def head(status: int, headers: Headers = (), *, length: int | None, keep_alive: bool) -> bytes:
    """A status line and headers; ``Content-Type: application/json`` unless one is given,
    ``Content-Length: length`` unless ``length`` is None."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    pairs = list(headers)
    names = {name.lower() for name, _ in pairs}
    if "content-type" not in names:
        pairs.append(("Content-Type", "application/json"))
    if length is not None:
        pairs.append(("Content-Length", str(length)))
    if not keep_alive:
        pairs.append(("Connection", "close"))
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in pairs)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def respond(status: int = 200, body: bytes = b"[]", headers: Headers = ()) -> Handler:
    """A handler answering every request with one well-formed response."""
    fixed = list(headers)
    return respond_with(lambda request: (status, fixed, body))


def respond_with(fn: Callable[[RawRequest], tuple[int, Headers, bytes]]) -> Handler:
    """A handler answering with ``fn(request) -> (status, headers, body)``, well-formed."""

    def handler(request: RawRequest, conn: Connection) -> None:
        status, headers, body = fn(request)
        conn.send(head(status, headers, length=len(body), keep_alive=conn.keep_alive) + body)

    return handler


def trickle_body(body: bytes, every: float = 1.0) -> Handler:
    """Valid headers announcing the whole ``body`` at once, then the body byte by byte."""

    def handler(request: RawRequest, conn: Connection) -> None:
        if conn.send(head(200, length=len(body), keep_alive=conn.keep_alive)):
            conn.trickle(body, every=every)

    return handler


def trickle_headers(every: float = 1.0) -> Handler:
    """A valid 200 whose status line and headers arrive byte by byte."""

    def handler(request: RawRequest, conn: Connection) -> None:
        conn.trickle(head(200, length=2, keep_alive=conn.keep_alive) + b"[]", every=every)

    return handler


def hang() -> Handler:
    """Read the request and never answer, until the client closes or the server stops."""

    def handler(request: RawRequest, conn: Connection) -> None:
        conn.wait_closed(math.inf)

    return handler


def close_at_once() -> Handler:
    """Close the connection without answering."""
    return lambda request, conn: conn.close()


def raw(data: bytes) -> Handler:
    """Send ``data`` as is (a malformed status line, garbage, a cut body), then close."""

    def handler(request: RawRequest, conn: Connection) -> None:
        conn.send(data)
        conn.close()

    return handler


def compression_bomb(
    encoding: str = "gzip", inflated: int = 1 << 30, *, chunked: bool = False
) -> Handler:
    """A 200 with ``Content-Encoding: encoding`` whose body inflates to ``inflated`` zero
    bytes (see :func:`bomb_bytes`), announced by Content-Length or sent chunked."""

    def handler(request: RawRequest, conn: Connection) -> None:
        body = bomb_bytes(encoding, inflated)
        headers = [("Content-Encoding", encoding)]
        if not chunked:
            conn.send(head(200, headers, length=len(body), keep_alive=conn.keep_alive) + body)
            return
        headers.append(("Transfer-Encoding", "chunked"))
        if not conn.send(head(200, headers, length=None, keep_alive=conn.keep_alive)):
            return
        for start in range(0, len(body), _CHUNK):
            piece = body[start : start + _CHUNK]
            if not conn.send(b"%x\r\n%b\r\n" % (len(piece), piece)):
                return
        conn.send(b"0\r\n\r\n")

    return handler


_BOMBS: dict[tuple[str, int], bytes] = {}
_BOMB_LOCK = threading.Lock()
_BLOCK = 1 << 20


def bomb_bytes(encoding: str = "gzip", inflated: int = 1 << 30) -> bytes:
    """The compressed bytes of ``inflated`` zeros, ``gzip`` (wbits 31) or ``deflate`` (zlib,
    wbits 15), made once per process and cached.

    Made by zlib's streaming compressor at level 9 from one 1 MiB block of zeros, with a
    full flush after each block: from the third block on, every block compresses to the
    same bytes, which are repeated rather than computed again (level 9 takes seconds per
    GiB). The checksum trailer is then rewritten for the whole input. The inflated bytes
    never exist in memory.
    """
    key = (encoding, inflated)
    with _BOMB_LOCK:
        if key not in _BOMBS:
            _BOMBS[key] = _compress_zeros(encoding, inflated)
        return _BOMBS[key]


def _compress_zeros(encoding: str, inflated: int) -> bytes:
    wbits = {"gzip": 31, "deflate": 15}[encoding]
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = bytes(_BLOCK)
    blocks, rest = divmod(inflated, _BLOCK)
    pieces: list[bytes] = []
    steady = b""
    check = zlib.crc32(b"") if encoding == "gzip" else zlib.adler32(b"")
    for index in range(blocks):
        check = zlib.crc32(block, check) if encoding == "gzip" else zlib.adler32(block, check)
        if not steady:
            piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
            if index >= 2 and piece == pieces[-1]:
                steady = piece
        pieces.append(steady or piece)
    tail = bytes(rest)
    check = zlib.crc32(tail, check) if encoding == "gzip" else zlib.adler32(tail, check)
    end = compressor.compress(tail) + compressor.flush(zlib.Z_FINISH)
    if encoding == "gzip":  # CRC-32 and size modulo 2**32, little-endian
        end = end[:-8] + struct.pack("<II", check, inflated & 0xFFFFFFFF)
    else:  # Adler-32, big-endian
        end = end[:-4] + struct.pack(">I", check)
    return b"".join([*pieces, end])


def closed_port() -> int:
    """A loopback port with nothing listening (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
