"""Planning batches: which IDs share one request, by ID count and URL bytes."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

__all__ = ["encode_id", "plan_batches", "too_long"]


def encode_id(param: str, operation_id: str) -> str:
    """The query part ``param=<percent-encoded ID>`` of one validated ID."""
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
