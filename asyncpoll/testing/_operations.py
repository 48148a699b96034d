"""Scripted operations and how they are rendered as response entries.

An :class:`Operation` is a script in :func:`time.monotonic` time; :func:`render` turns it
into the entry of the default wire shape at a given moment, and :func:`apply_variant`
reshapes an entry for another :class:`~asyncpoll.testing.WireVariant`. Rendered entries are
cached on the operation and never mutated afterwards, so they can be serialised outside
the server's lock.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from typing import Any

from ._records import WireVariant

__all__ = [
    "CANONICAL_STATES",
    "TERMINAL_STATES",
    "Clock",
    "Operation",
    "apply_variant",
    "default_error",
    "error_message",
    "number",
    "render",
]

CANONICAL_STATES = ("NotStarted", "Running", "Succeeded", "Failed", "Canceled")
TERMINAL_STATES = frozenset({"Succeeded", "Failed", "Canceled"})
OUTCOMES = {
    "succeeded": "Succeeded",
    "failed": "Failed",
    "canceled": "Canceled",
    "cancelled": "Canceled",
}


class Clock:
    """Turns monotonic times into ISO 8601 UTC strings, caching per whole second."""

    __slots__ = ("_cache", "_offset")

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()
        self._cache: dict[int, str] = {}

    def iso(self, monotonic: float) -> str:
        second = int(self._offset + monotonic)
        text = self._cache.get(second)
        if text is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
            self._cache[second] = text
        return text

    def wall(self, monotonic: float) -> float:
        return self._offset + monotonic


class Operation:
    """The script of one simulated operation (all times are monotonic seconds)."""

    __slots__ = (
        "cache",
        "created",
        "created_ids",
        "done_at",
        "end_at",
        "err_code",
        "err_msg",
        "extra",
        "frozen",
        "frozen_at",
        "id",
        "outcome",
        "pending",
        "running",
        "running_pct",
        "seq",
        "space",
        "start_at",
        "step",
        "user",
        "visible_at",
    )

    def __init__(
        self,
        operation_id: str,
        space: str,
        user: str,
        seq: int,
        created: float,
        visible_at: float,
        start_at: float,
        end_at: float,
        outcome: str,
        step: float,
        created_ids: tuple[str, ...] | None,
        err_code: str,
        err_msg: str,
    ) -> None:
        self.id = operation_id
        self.space = space
        self.user = user
        self.seq = seq
        self.created = created
        self.visible_at = visible_at
        self.start_at = start_at
        self.end_at = end_at
        self.outcome = outcome
        self.step = step
        self.created_ids = created_ids
        self.err_code = err_code
        self.err_msg = err_msg
        # Manual control (set_operation): the frozen fields of the default entry.
        self.frozen: dict[str, Any] | None = None
        self.frozen_at = 0.0
        self.extra: dict[str, Any] | None = None
        # When a frozen operation became terminal (scripted ones: end_at).
        self.done_at: float | None = None
        # Entries that no longer change (terminal or frozen).
        self.cache: dict[str, Any] | None = None
        self.pending: dict[str, Any] | None = None
        self.running: dict[str, Any] | None = None
        self.running_pct: float = -1.0

    def completion_time(self) -> float | None:
        if self.frozen is not None:
            return self.done_at
        return self.end_at if math.isfinite(self.end_at) else None

    def result(self) -> dict[str, Any]:
        ids = self.created_ids
        if ids is None:
            ids = (f"prog_{self.seq}", f"task_{self.seq}")
        return {"createdResourceIds": list(ids)}

    def progress(self, now: float) -> float:
        span = self.end_at - self.start_at
        if span <= 0.0 or not math.isfinite(span):
            return 0.0
        percent = min(100.0, (now - self.start_at) / span * 100.0)
        step = self.step
        if step > 0.0:
            percent = math.floor(percent / step) * step
        return max(0.0, percent)

    def last_progress(self) -> float:
        """The progress a failed or canceled script showed last while running."""
        span = self.end_at - self.start_at
        if span <= 0.0:
            return 0.0
        step = self.step
        if step > 0.0:
            return max(0.0, math.ceil(100.0 / step - 1.0) * step)
        return 99.0


def number(value: float) -> float | int:
    """A progress figure as JSON would best carry it: ``40`` rather than ``40.0``."""
    value = round(value, 6)
    return int(value) if value.is_integer() else value


def default_error(op: Operation) -> dict[str, Any]:
    return {"code": op.err_code, "message": op.err_msg, "details": []}


def error_message(error: Any) -> str:
    if isinstance(error, Mapping):
        message = error.get("message")
        return message if isinstance(message, str) else str(error)
    return str(error)


# Plain dicts, not AsyncOperation unstructured by cattrs: the simulator serves wire shapes
# the models cannot represent (any state string, any extra field overriding any other).
def _entry(
    op: Operation,
    state: Any,
    percent: Any,
    result: Any,
    error: Any,
    clock: Clock,
    updated: float,
) -> dict[str, Any]:
    return {
        "id": op.id,
        "state": state,
        "percentComplete": percent,
        "result": result,
        "error": error,
        "createdAt": clock.iso(op.created),
        "lastUpdatedAt": clock.iso(updated),
    }


def render(op: Operation, now: float, clock: Clock) -> dict[str, Any]:
    """The entry of ``op`` at monotonic time ``now`` in the default shape (no extras).

    The returned dict may be shared and must not be mutated.
    """
    cached = op.cache
    if cached is not None:
        return cached
    if op.frozen is not None:
        entry = op.cache = _frozen_entry(op, op.frozen, clock)
        return entry
    if now < op.start_at:
        pending = op.pending
        if pending is None:
            pending = op.pending = _entry(op, "NotStarted", 0, None, None, clock, op.created)
        return pending
    if now < op.end_at:
        return _running_entry(op, now, clock)
    entry = op.cache = _final_entry(op, clock)
    op.pending = op.running = None
    return entry


def _frozen_entry(op: Operation, frozen: dict[str, Any], clock: Clock) -> dict[str, Any]:
    state, percent = frozen["state"], frozen["percentComplete"]
    return _entry(op, state, percent, frozen["result"], frozen["error"], clock, op.frozen_at)


def _running_entry(op: Operation, now: float, clock: Clock) -> dict[str, Any]:
    """The entry while running, rebuilt only when the floored progress moves."""
    percent = op.progress(now)
    running = op.running
    if running is not None and op.running_pct == percent:
        return running
    start = op.start_at
    span = op.end_at - start
    updated = start + span * percent / 100.0 if math.isfinite(span) else start
    running = _entry(op, "Running", number(percent), None, None, clock, updated)
    op.running = running
    op.running_pct = percent
    return running


def _final_entry(op: Operation, clock: Clock) -> dict[str, Any]:
    outcome, end = op.outcome, op.end_at
    if outcome == "Succeeded":
        return _entry(op, outcome, 100, op.result(), None, clock, end)
    error = default_error(op) if outcome == "Failed" else None
    return _entry(op, outcome, number(op.last_progress()), None, error, clock, end)


def _spell(state: str, style: str) -> str:
    if style == "pascal":
        return state
    words: list[str] = []
    for char in state:
        if char.isupper() and words:
            words.append(" ")
        words.append(char)
    spaced = "".join(words)
    if style == "spaced":
        return spaced
    if style == "upper_snake":
        return spaced.replace(" ", "_").upper()
    return spaced.replace(" ", "_").lower()


@functools.lru_cache(maxsize=64)
def _state_names(style: str, canceled: str) -> dict[str, str]:
    names = {state: _spell(state, style) for state in CANONICAL_STATES}
    names["Canceled"] = _spell(canceled, style)
    return names


def apply_variant(entry: Mapping[str, Any], variant: WireVariant) -> dict[str, Any]:
    """A new entry reshaped from the default shape to ``variant``."""
    names = _state_names(variant.state_style, variant.canceled_spelling)
    percent_key = variant.percent_key
    error_style = variant.error_style
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "state":
            out[variant.state_key] = names.get(value, value) if isinstance(value, str) else value
        elif key == "percentComplete":
            if percent_key is None:
                continue
            if variant.percent_as_string and isinstance(value, int | float):
                value = str(value)
            out[percent_key] = value
        elif key == "error":
            if error_style == "object":
                out["error"] = value
            elif error_style == "string":
                out["error"] = None if value is None else error_message(value)
            elif error_style == "errorMessage":
                out["errorMessage"] = None if value is None else error_message(value)
            else:
                out["errors"] = [] if value is None else [value]
        else:
            out[key] = value
    return out
