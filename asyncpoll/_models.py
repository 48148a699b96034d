"""Typed models of async operations. No wire format here: see ``_wire.py``."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["AsyncOperation", "OperationError", "OperationState"]


def _fold(value: str) -> str:
    return value.replace(" ", "").replace("_", "").replace("-", "").lower()


class OperationState(enum.Enum):
    """The state of an async operation.

    ``SUCCEEDED``, ``FAILED`` and ``CANCELED`` are terminal. Values the server sends are
    read in any letter case, with or without spaces, underscores or hyphens
    (``"Not Started"``, ``"NOT_STARTED"``, ``"notStarted"``); ``"Cancelled"`` reads as
    ``CANCELED``; anything else becomes ``UNKNOWN``, which is not terminal.
    """

    NOT_STARTED = "NotStarted"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"
    UNKNOWN = "Unknown"

    @classmethod
    def _missing_(cls, value: object) -> OperationState:
        if isinstance(value, str):
            found = _FOLDED.get(_fold(value))
            if found is not None:
                return found
        return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        """True for ``SUCCEEDED``, ``FAILED`` and ``CANCELED``."""
        # Identity tests: hashing an Enum member runs Python code (Enum.__hash__), and
        # this is read for every status the Poller takes.
        return self is _SUCCEEDED or self is _FAILED or self is _CANCELED


_FOLDED: dict[str, OperationState] = {_fold(s.value): s for s in OperationState}
_FOLDED["cancelled"] = OperationState.CANCELED
_SUCCEEDED, _FAILED, _CANCELED = (
    OperationState.SUCCEEDED,
    OperationState.FAILED,
    OperationState.CANCELED,
)


@attrs.frozen
class OperationError:
    """Why an operation failed: the server's ``message``, its ``code`` (or ``None``) and
    any ``details`` it gave (a tuple of the raw items)."""

    message: str
    code: str | None = None
    details: tuple[Any, ...] = ()


@attrs.frozen
class AsyncOperation:
    """The status of one async operation as the server reported it.

    ``percent_complete`` is ``None`` when the server gave no progress (unknown, not 0),
    and is otherwise within 0 to 100. ``result`` is the result mapping or ``None``;
    ``created_resource_ids`` is read from ``result["createdResourceIds"]`` when present.
    ``raw`` is the entry exactly as received, unknown fields included.
    """

    id: str
    state: OperationState
    percent_complete: float | None = None
    result: Mapping[str, Any] | None = None
    created_resource_ids: tuple[str, ...] = ()
    error: OperationError | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def is_terminal(self) -> bool:
        """True once the operation has succeeded, failed or been canceled."""
        return self.state.is_terminal
