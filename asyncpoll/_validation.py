"""The rules for what callers hand in: space IDs, operation IDs, tokens and numbers.

Every check here runs before any request, and no message ever quotes a token.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "check_count",
    "check_seconds",
    "finite_seconds",
    "check_token",
    "token_problem",
    "validate_operation_id",
    "validate_operation_ids",
    "validate_space_id",
]

_SPACE_RE = re.compile(r"[A-Za-z0-9_-]{7,22}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What most operation IDs are made of (RFC 3986 unreserved characters): such an ID is
# valid at a glance, with one match instead of the checks below.
_PLAIN_ID_RE = re.compile(r"[A-Za-z0-9_.~-]+")
# RFC 6750 "b64token" and everything else a JWT or opaque token is made of: visible
# ASCII. A space, control character or non-ASCII letter cannot travel in a header.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


def validate_space_id(space_id: object) -> str:
    """Return ``space_id`` if it is ``default`` or 7-22 of ``[A-Za-z0-9_-]``; else ValueError."""
    if not isinstance(space_id, str) or not _SPACE_RE.fullmatch(space_id):
        raise ValueError(
            f"invalid space_id {space_id!r}: expected 'default' or 7 to 22 letters, "
            "digits, '-' or '_'"
        )
    return space_id


def validate_operation_id(operation_id: object) -> str:
    """Return ``operation_id`` if it is a non-empty string without control characters."""
    if type(operation_id) is str and _PLAIN_ID_RE.fullmatch(operation_id):
        return operation_id
    if not isinstance(operation_id, str):
        raise TypeError(f"operation IDs are strings, got {type(operation_id).__name__}")
    if not operation_id:
        raise ValueError("operation IDs must not be empty")
    if _CONTROL_RE.search(operation_id):
        raise ValueError(f"operation ID {operation_id!r} contains a control character")
    if not operation_id.isascii():
        try:
            operation_id.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate cannot be percent-encoded: refuse it here, not mid-poll.
            raise ValueError(f"operation ID {operation_id!r} is not valid Unicode") from None
    return operation_id


def validate_operation_ids(ids: Iterable[str]) -> list[str]:
    """Validate ``ids`` and drop duplicates, keeping first-seen order."""
    if isinstance(ids, str | bytes):
        raise TypeError("pass a list of operation IDs, not a single string")
    return list(dict.fromkeys(validate_operation_id(i) for i in ids))


def token_problem(token: object) -> str | None:
    """Why ``token`` cannot be sent as a bearer token, or ``None`` if it can.

    The reason names the kind of character and its position, never the token itself.
    """
    if not isinstance(token, str):
        return f"the token must be a str, got {type(token).__name__}"
    if not token:
        return "the token is empty"
    if _TOKEN_RE.fullmatch(token):
        return None
    if token != token.strip():
        return "the token has leading or trailing whitespace (strip it when reading a file)"
    position, char = next((i, c) for i, c in enumerate(token) if not _TOKEN_RE.fullmatch(c))
    if char == " ":
        kind = "a space"
    elif char.isascii():
        kind = "a control character"
    else:
        kind = "a non-ASCII character"
    return f"the token contains {kind} at position {position}"


def check_token(token: object) -> str:
    """Return ``token`` if it can be sent as a bearer token; else ValueError (not quoting it)."""
    problem = token_problem(token)
    if problem is not None:
        raise ValueError(problem + "; expected visible ASCII characters only")
    assert isinstance(token, str)
    return token


def check_seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """``value`` as a finite number of seconds (>= 0, or > 0); else ValueError or TypeError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return number


def finite_seconds(instance: object, attribute: Any, value: object) -> None:
    """An attrs validator: ``value`` is a finite number of seconds >= 0 (``check_seconds``)."""
    check_seconds(f"{type(instance).__name__}.{attribute.name}", value)


def check_count(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``; else ValueError or TypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value
