"""One capped body reader shared by every transport: it decodes while the body streams.

A transport asks only for the encodings this module can decode under a cap
(:data:`ACCEPT_ENCODING`), turns off its HTTP library's own decompression, and feeds the
raw bytes here. The cap applies to the raw bytes and to the decoded bytes as they are
produced (``zlib``'s ``max_length``), so a body that inflates to a gigabyte costs at most
``limit`` bytes of memory before :class:`~asyncpoll.ResponseTooLarge` is raised.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from .._errors import (
    InvalidResponseError,
    RequestTimeout,
    ResponseTooLarge,
    TransportError,
)
from ._base import Request

__all__ = [
    "ACCEPT_ENCODING",
    "BodyReader",
    "ExceptionMap",
    "LibraryError",
    "ReadBudget",
    "caught_by",
    "error_kind",
    "redact",
    "translate",
]

#: What transports send as ``Accept-Encoding``: brotli and zstd are never asked for.
ACCEPT_ENCODING = "gzip, deflate"

#: One transport's exception map: pairs of (an exception its HTTP library, or the
#: standard library under it, raises; the :class:`TransportError` subclass it becomes:
#: :class:`RequestTimeout`, :class:`ConnectError` or :class:`InvalidResponseError`), most
#: specific first. The first entry an exception is an instance of decides its kind.
ExceptionMap = tuple[tuple[type[Exception], type[TransportError]], ...]

_STEP = 256 * 1024  # decoded bytes per decompression step
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_IDENTITY = ("", "identity")


class ReadBudget:
    """The decoded bytes held by every body one transport is reading at once.

    Each body is capped at its request's ``max_response_size``; together they may hold at
    most twice that, so that a burst of batches answered with compression bombs costs
    tens of megabytes, not sixteen times the cap. Real answers are far below it.
    """

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0


class BodyReader:
    """Collects one response body of at most ``limit`` decoded bytes.

    ``content_encoding`` is the response's ``Content-Encoding`` header (or ``None``);
    ``content_length`` its ``Content-Length``, checked before any byte is read. Raises
    :class:`ResponseTooLarge` past the cap and :class:`InvalidResponseError` for an
    encoding that was not asked for, or compressed data that does not decode.
    """

    __slots__ = (
        "_budget",
        "_chunks",
        "_decoder",
        "_deflate_fallback",
        "_limit",
        "_raw",
        "_size",
    )

    def __init__(
        self,
        limit: int,
        *,
        content_encoding: str | None,
        content_length: str | int | None,
        budget: ReadBudget | None = None,
    ) -> None:
        self._limit = limit
        self._budget = budget if budget is not None else ReadBudget()
        self._chunks: list[bytes] = []
        self._size = 0
        self._raw = 0
        self._decoder = _decoder_for(content_encoding)
        self._deflate_fallback = (content_encoding or "").strip().lower() == "deflate"
        length = _length(content_length)
        if length is not None and length > limit:
            raise ResponseTooLarge(f"response body of {length} bytes exceeds {limit}")

    def feed(self, chunk: bytes) -> None:
        """Take the next raw chunk of the body, decoding it if it is compressed."""
        self._raw += len(chunk)
        if self._raw > self._limit:
            raise ResponseTooLarge(f"response body exceeds {self._limit} bytes")
        if self._decoder is None:
            self._keep(chunk)
            return
        data = chunk
        while data and not self._decoder.eof:
            try:
                # In steps: one call's output buffer would otherwise be up to the cap.
                out = self._decoder.decompress(data, min(_STEP, self._limit - self._size + 1))
            except zlib.error as exc:
                if not self._retry_as_raw_deflate():
                    raise InvalidResponseError(f"compressed body does not decode: {exc}") from None
                continue
            self._deflate_fallback = False
            self._keep(out)
            data = self._decoder.unconsumed_tail

    def finish(self) -> bytes:
        """The whole decoded body; raises if a compressed body ended early."""
        if self._decoder is not None and not self._decoder.eof and self._raw:
            raise InvalidResponseError("compressed body ended before its end marker")
        return b"".join(self._chunks)

    def release(self) -> None:
        """Give this body's bytes back to the shared budget (call it once, when done)."""
        self._budget.held -= self._size
        self._size = 0
        self._chunks = []

    def _keep(self, data: bytes) -> None:
        if data:
            self._size += len(data)
            self._budget.held += len(data)
            if self._size > self._limit:
                raise ResponseTooLarge(f"decoded response body exceeds {self._limit} bytes")
            if self._budget.held > 2 * self._limit:
                raise ResponseTooLarge(
                    f"response bodies read at once exceed {2 * self._limit} bytes in all"
                )
            self._chunks.append(data)

    def _retry_as_raw_deflate(self) -> bool:
        # "deflate" means zlib-wrapped data, but some servers send a bare deflate stream;
        # read that too (as browsers and httpx do), decided on the first bytes only.
        if not self._deflate_fallback or self._size:
            return False
        self._deflate_fallback = False
        self._decoder = zlib.decompressobj(-15)
        return True


def _decoder_for(content_encoding: str | None) -> zlib._Decompress | None:
    if not content_encoding:  # the usual answer: nothing to parse
        return None
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c not in _IDENTITY]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _WBITS:
        # Never decoded: we did not ask for it, and could not cap what it inflates to.
        shown = content_encoding[:40]
        raise InvalidResponseError(
            f"the server answered with Content-Encoding {shown!r}, which asyncpoll did not "
            f"ask for (it sends Accept-Encoding: {ACCEPT_ENCODING})"
        )
    return zlib.decompressobj(_WBITS[codings[0]])


def _length(value: str | int | None) -> int | None:
    if isinstance(value, int):
        return value
    if value is not None and value.strip().isdigit():
        return int(value.strip())
    return None


def redact(text: str, headers: Mapping[str, str]) -> str:
    """``text`` with the request's credentials cut out, whatever quoted them.

    HTTP libraries put header values into their messages (h11 quotes an illegal header
    whole): an error built from such a message must not carry the token on.
    """
    for name, value in headers.items():
        if name.lower() != "authorization" or not value:
            continue
        secret = value.split(" ", 1)[-1]
        for needle in (value, secret):
            if needle:
                text = text.replace(needle, "[redacted]")
    return text


class LibraryError(Exception):
    """What an HTTP library raised, as the ``__cause__`` of a transport error: its type
    name and its message with the credentials cut out, and nothing else. The library's
    own exception is never chained: its attributes (aiohttp's ``request_info``) can hold
    the request's headers."""

    @classmethod
    def of(cls, exc: BaseException, headers: Mapping[str, str]) -> LibraryError:
        """The stand-in for ``exc``, a request with these ``headers`` being sent."""
        return cls(redact(f"{type(exc).__name__}: {str(exc)[:300]}", headers))


def caught_by(mapping: ExceptionMap) -> tuple[type[Exception], ...]:
    """The classes of ``mapping``'s entries: the ``except`` clause whose exceptions a
    transport hands to :func:`translate`, so that nothing outside the map is caught."""
    return tuple(cls for cls, _ in mapping)


def error_kind(exc: BaseException, mapping: ExceptionMap) -> type[TransportError]:
    """The asyncpoll error ``exc`` becomes: that of the first entry of ``mapping`` whose
    class ``exc`` is an instance of (entries go most specific first). Raises
    :class:`LookupError` if no entry covers it: ``exc`` was not caught by
    :func:`caught_by` of the same map."""
    for cls, kind in mapping:
        if isinstance(exc, cls):
            return kind
    raise LookupError(f"{type(exc).__name__} is in no entry of the exception map")


def translate(exc: BaseException, request: Request, mapping: ExceptionMap) -> TransportError:
    """The :class:`TransportError` an HTTP library's ``exc`` becomes under ``mapping``
    (see :func:`error_kind`), caused by a :class:`LibraryError`. Raise it outside the
    ``except`` block, so the library's exception is not its ``__context__`` either."""
    kind = error_kind(exc, mapping)
    cause = LibraryError.of(exc, request.headers)
    error: TransportError
    if issubclass(kind, RequestTimeout):
        error = kind(f"no complete response within {request.timeout} s")
    else:
        error = kind(str(cause))
    error.__cause__ = cause
    return error
