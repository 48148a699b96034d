"""Planning batches: which IDs share one request, by ID count and URL bytes."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence

__all__ = ["BatchPlanner", "encode_id", "plan_batches", "too_long"]

_MAX_CACHED_PATHS = 1024


# What percent-encoding leaves as it is (RFC 3986 unreserved): most IDs are only this.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")


def encode_id(param: str, operation_id: str) -> str:
    """The query part ``param=<percent-encoded ID>`` of one validated ID."""
    if _UNRESERVED.fullmatch(operation_id):  # a tenth of the cost of quote()
        return f"{param}={operation_id}"
    return f"{param}={urllib.parse.quote(operation_id, safe='')}"


def plan_batches(
    parts: Sequence[str], *, base_length: int, max_batch_size: int, max_url_length: int
) -> list[tuple[int, int]]:
    """Split encoded query ``parts`` into consecutive ``(start, stop)`` slices, each within
    ``max_batch_size`` parts and ``max_url_length`` bytes of path (``base_length``) and
    query. A part too long to fit alone gets a slice of its own: callers refuse such IDs
    before planning (see :func:`too_long`)."""
    batches: list[tuple[int, int]] = []
    start = 0
    length = base_length
    for index, part in enumerate(parts):
        size = len(part) + 1
        if index > start and (index - start >= max_batch_size or length + size > max_url_length):
            batches.append((start, index))
            start, length = index, base_length
        length += size
    if start < len(parts):
        batches.append((start, len(parts)))
    return batches


def too_long(operation_id: str, max_url_length: int) -> ValueError:
    """The error for an ID that cannot fit in one request of ``max_url_length`` bytes."""
    return ValueError(
        f"operation ID {operation_id[:40]!r}... is too long for max_url_length={max_url_length}"
    )


class BatchPlanner:
    """How one Session's queries become requests: the URL of each space, the encoded
    query part of each ID, and the split of many parts into requests within the caps.

    The one seam the Poller shares with the Session for batching: it checks IDs when a
    caller registers them and plans its batches here, and sends them through the Session.
    """

    __slots__ = ("_base", "_paths", "_template", "max_batch_size", "max_url_length", "param")

    def __init__(
        self, base: str, template: str, param: str, *, max_batch_size: int, max_url_length: int
    ) -> None:
        self._base = base
        self._template = template
        self.param = param
        self.max_batch_size = max_batch_size
        self.max_url_length = max_url_length
        self._paths: dict[str, tuple[str, int]] = {}

    def _space_path(self, space_id: str) -> tuple[str, int]:
        """The URL up to the query for ``space_id``, and the length its path adds to the
        request line (cached for a few spaces: every batch of every round needs them)."""
        found = self._paths.get(space_id)
        if found is None:
            quoted = urllib.parse.quote(space_id, safe="")
            url = self._base + self._template.format(space_id=quoted)
            found = (url, len(urllib.parse.urlsplit(url).path) + 1)
            if len(self._paths) < _MAX_CACHED_PATHS:
                self._paths[space_id] = found
        return found

    def url(self, space_id: str, parts: Sequence[str]) -> str:
        """The request URL asking for the encoded ``parts`` in ``space_id``."""
        return self._space_path(space_id)[0] + "?" + "&".join(parts)

    def check_fit(self, ids: Iterable[str], space_id: str) -> None:
        """:class:`ValueError` if one of the validated ``ids`` alone is too long for
        ``max_url_length`` (the Poller checks this when a caller registers, so that the
        polling loop never meets such an ID)."""
        room = self.max_url_length - self._space_path(space_id)[1]  # for "&param=ID"
        fixed = len(self.param) + 2
        for operation_id in ids:
            # Percent-encoded, a character takes at most 12 bytes (4 UTF-8 bytes as "%XX"):
            # only IDs that might not fit are encoded to be sure.
            if fixed + 12 * len(operation_id) <= room:
                continue
            if len(encode_id(self.param, operation_id)) + 1 > room:
                raise too_long(operation_id, self.max_url_length)

    def encode(self, operation_id: str) -> str:
        """The query part of one ID already checked by :meth:`check_fit`."""
        return encode_id(self.param, operation_id)

    def encode_all(self, ids: Sequence[str], space_id: str) -> list[str]:
        """The query parts of validated ``ids``; :class:`ValueError` for an ID too long to
        fit in one request."""
        self.check_fit(ids, space_id)
        return [encode_id(self.param, i) for i in ids]

    def plan(self, parts: Sequence[str], space_id: str) -> list[tuple[int, int]]:
        """Consecutive ``(start, stop)`` slices of ``parts``, one request each."""
        return plan_batches(
            parts,
            base_length=self._space_path(space_id)[1],
            max_batch_size=self.max_batch_size,
            max_url_length=self.max_url_length,
        )
