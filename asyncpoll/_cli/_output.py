"""What the commands report, without any display library: records, JSON and plain text.

The JSON record of one operation is the same in ``watch`` (one per line, per event) and
``get`` (a list): ``operation_id``, ``space_id``, ``state`` (``null`` when not found),
``percent_complete`` (``null`` when the server gave none), ``is_terminal``,
``not_found``, ``error`` (``null`` or ``{"code", "message"}``) and
``created_resource_ids``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from .._models import AsyncOperation, OperationState
from .._poller import ProgressEvent
from ._exit import ExitCode

__all__ = [
    "Tally",
    "clean",
    "describe",
    "format_percent",
    "plain_table",
    "record",
    "write_json_line",
]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FAILED_STATES = frozenset({OperationState.FAILED, OperationState.CANCELED})


def clean(text: str, limit: int = 200) -> str:
    """``text`` fit for a terminal: control characters (escape sequences from a server
    included) become ``?``, and anything past ``limit`` characters is cut with ``…``."""
    text = _UNSAFE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def format_percent(value: float | None) -> str:
    """``"40%"``, ``"12.5%"``, or ``"-"`` when the server gave no progress."""
    if value is None:
        return "-"
    return f"{value:.0f}%" if float(value).is_integer() else f"{value:.1f}%"


def record(
    operation_id: str,
    space_id: str,
    operation: AsyncOperation | None,
    *,
    is_terminal: bool | None = None,
) -> dict[str, Any]:
    """The JSON record of one operation (``None``: not found).

    Written out, not unstructured by cattrs: this record is the command line's own
    documented, flat shape (the space, ``not_found``, ``is_terminal``; no ``raw`` and no
    error details), not the model's, and a field added to :class:`AsyncOperation` must
    not change what scripts reading ``--json`` see.

    ``is_terminal`` defaults to whether the operation has ended; ``watch`` passes the
    event's own flag, which is also true on the last event of an ID not found.
    """
    if operation is None:
        return {
            "operation_id": operation_id,
            "space_id": space_id,
            "state": None,
            "percent_complete": None,
            "is_terminal": bool(is_terminal),
            "not_found": True,
            "error": None,
            "created_resource_ids": [],
        }
    error = operation.error
    return {
        "operation_id": operation_id,
        "space_id": space_id,
        "state": operation.state.value,
        "percent_complete": _number(operation.percent_complete),
        "is_terminal": operation.is_terminal if is_terminal is None else is_terminal,
        "not_found": False,
        "error": None if error is None else {"code": error.code, "message": error.message},
        "created_resource_ids": list(operation.created_resource_ids),
    }


def write_json_line(out: TextIO, document: Any) -> None:
    """Write ``document`` as one line of JSON and flush, so a reader sees it at once."""
    out.write(json.dumps(document) + "\n")
    out.flush()


def describe(operation: AsyncOperation | None) -> str:
    """What a person wants to know beyond the state: created resources or the error."""
    if operation is None:
        return "not found"
    error = operation.error
    if error is not None:
        code = f" ({error.code})" if error.code else ""
        return clean(f"{error.message}{code}")
    if operation.created_resource_ids:
        return clean(", ".join(operation.created_resource_ids))
    return ""


def plain_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Rows as text in columns aligned with spaces (the last column is not padded)."""
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


class Tally:
    """The outcome of watching some operations, event by event, and the exit status.

    ``final`` holds the terminal outcome of each ID (``None``: not found); ``latest`` the
    last operation seen of each ID not yet finished; ``timed_out`` is set by the caller.
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(dict.fromkeys(ids))
        self.final: dict[str, AsyncOperation | None] = {}
        self.latest: dict[str, AsyncOperation] = {}
        self.timed_out = False
        # Kept as they come, so that a display redrawn ten times a second stays cheap.
        self._succeeded = 0
        self._failed: list[AsyncOperation] = []

    def add(self, event: ProgressEvent) -> None:
        """Take one progress event into account."""
        operation = event.operation
        if event.is_terminal:
            self.final[event.operation_id] = operation
            self.latest.pop(event.operation_id, None)
            if operation is not None and operation.state is OperationState.SUCCEEDED:
                self._succeeded += 1
            elif operation is not None and operation.state in _FAILED_STATES:
                self._failed.append(operation)
        elif operation is not None:
            self.latest[event.operation_id] = operation

    @property
    def succeeded(self) -> int:
        """How many operations ended ``Succeeded``."""
        return self._succeeded

    @property
    def failed_count(self) -> int:
        """How many operations ended ``Failed`` or ``Canceled``."""
        return len(self._failed)

    @property
    def failed(self) -> list[AsyncOperation]:
        """The operations that ended ``Failed`` or ``Canceled``, in the order they ended."""
        return list(self._failed)

    @property
    def not_found(self) -> list[str]:
        """The IDs that stayed absent past the grace period."""
        return [op_id for op_id, op in self.final.items() if op is None]

    @property
    def unfinished(self) -> list[str]:
        """The IDs with no terminal outcome (yet)."""
        return [op_id for op_id in self.ids if op_id not in self.final]

    def exit_code(self) -> int:
        """3 if any outcome is unknown (timeout, not found), else 1 if any failed, else 0."""
        if self.timed_out or self.unfinished or self.not_found:
            return ExitCode.UNKNOWN
        if self.failed:
            return ExitCode.FAILED
        return ExitCode.OK
