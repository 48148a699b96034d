"""What a fleet keeps in Redis, written and read back.

Everything read from Redis is untrusted input: another process, another version, or
anyone with access to the database may have written it. So the reading side is strict
(cattrs with exact types, no extra keys, sizes capped) and a value that does not read is
logged once and ignored, never raised into the Poller. Nothing here ever holds a token or
a header: records are operations as the server reported them, and IDs.

Records are :class:`AsyncOperation` unstructured by cattrs (``raw`` included, so a member
sees exactly what the leader saw) and encoded with orjson.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from .._errors import (
    APIError,
    AsyncpollError,
    ConnectError,
    PermissionDeniedError,
    SpaceNotFoundError,
)
from .._models import AsyncOperation, OperationError, OperationState
from .._validation import validate_operation_id, validate_space_id

__all__ = [
    "MAX_VALUE",
    "Failure",
    "Observation",
    "decode_id",
    "decode_message",
    "decode_record",
    "encode_failure",
    "encode_observation",
    "encode_record",
    "failure_kind",
    "warn_once",
]

logger = logging.getLogger("asyncpoll")

#: The largest value read from Redis; anything longer is ignored unread.
MAX_VALUE = 1 << 20
_MAX_MESSAGE = 500  # characters of a shared error message kept
# What cattrs and the checks raise on a value of the wrong shape (cattrs raises an
# AttributeError or a KeyError for a list where an object belongs).
_UNREADABLE = (
    cattrs.BaseValidationError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    RecursionError,
)
_T = TypeVar("_T")
_warned: set[str] = set()
_MAX_WARNED = 1000


def warn_once(what: str, why: str) -> None:
    """Log one WARNING per garbage ``what`` (a key or a channel): a bad value is read
    again at every turn, and the log must not fill with it."""
    if what in _warned:
        logger.debug("ignoring an unreadable fleet value in %s: %s", what, why)
        return
    if len(_warned) < _MAX_WARNED:
        _warned.add(what)
    logger.warning("ignoring an unreadable fleet value in %s: %s", what, why)


def _strict_str(value: Any, _: type) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _percent(value: Any, _: type) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= 100:
        raise ValueError("percent_complete must be a number from 0 to 100")
    return float(value)


def _state(value: Any, _: type) -> OperationState:
    if type(value) is not str:
        raise TypeError("state must be a string")
    return OperationState(value)


def _mapping(value: Any, _: type) -> Mapping[str, Any]:
    if type(value) is not dict or any(type(k) is not str for k in value):
        raise TypeError("expected an object with string keys")
    return value


def _make_converter() -> cattrs.Converter:
    converter = make_converter(forbid_extra_keys=True)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(OperationState, _state)
    converter.register_structure_hook(float | None, _percent)
    converter.register_structure_hook_func(lambda t: t == Mapping[str, Any], _mapping)
    converter.register_structure_hook_func(
        lambda t: t == Mapping[str, Any] | None, lambda v, _: _mapping_or_none(v)
    )
    converter.register_unstructure_hook(OperationState, lambda state: state.value)
    return converter


def _mapping_or_none(value: Any) -> Mapping[str, Any] | None:
    return None if value is None else _mapping(value, dict)


_converter = _make_converter()


def encode_record(operation: AsyncOperation) -> bytes:
    """One operation as stored in a snapshot or in terminal memory."""
    return orjson.dumps(_converter.unstructure(operation, AsyncOperation))


def _structure(document: Any) -> AsyncOperation:
    operation = _converter.structure(document, AsyncOperation)
    validate_operation_id(operation.id)
    if operation.error is not None and type(operation.error) is not OperationError:
        raise TypeError("error must be an object")
    return operation


def _decode(value: object, where: str, read: Callable[[Any], _T]) -> _T | None:
    """``value`` (read from ``where``) parsed and ``read``; ``None``, logged once, if it
    does not read."""
    document = _parse(value, where)
    if document is None:
        return None
    try:
        return read(document)
    except _UNREADABLE as exc:
        warn_once(where, type(exc).__name__)
        return None


def decode_record(value: object, where: str) -> AsyncOperation | None:
    """An operation read back from ``where`` (a key), or ``None`` if it does not read."""
    return _decode(value, where, _structure)


def decode_id(value: object, where: str) -> str | None:
    """An operation ID read from a set of interests, or ``None`` if it is not one."""
    try:
        return validate_operation_id(_short_text(value))
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        warn_once(where, type(exc).__name__)
        return None


def _short_text(value: object) -> str:
    if type(value) is not bytes or len(value) > MAX_VALUE:
        raise ValueError("not a short byte string")
    return value.decode()


def _parse(value: object, where: str) -> Any:
    if type(value) is not bytes:
        if value is not None:
            warn_once(where, f"a {type(value).__name__}, not bytes")
        return None
    if len(value) > MAX_VALUE:
        warn_once(where, f"{len(value)} bytes, more than {MAX_VALUE}")
        return None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        warn_once(where, "not JSON")
        return None
    if document is None:
        warn_once(where, "null")
    return document


@attrs.frozen
class Observation:
    """What the leader of a space publishes after a batch: the operations that changed
    (terminal ones included) and the IDs it found absent past the grace period."""

    member: str
    space: str
    operations: tuple[AsyncOperation, ...] = ()
    gone: tuple[str, ...] = ()


def encode_observation(observation: Observation) -> bytes:
    """The pub/sub message of an :class:`Observation`."""
    return orjson.dumps(
        {
            "t": "obs",
            "m": observation.member,
            "s": observation.space,
            "ops": [_converter.unstructure(op, AsyncOperation) for op in observation.operations],
            "gone": list(observation.gone),
        }
    )


@attrs.frozen
class Failure:
    """An error the leader of a space got that every member would get too (the fleet
    shares one access level): ``ids`` empty means every operation of the space."""

    member: str
    space: str
    kind: str  # "permission", "space", "id" or "outage"
    message: str
    ids: tuple[str, ...] = ()

    def error(self) -> AsyncpollError:
        """The exception a member's callers get, marked as seen by another member."""
        message = f"{self.message} (seen by fleet member {self.member})"
        if self.kind == "permission":
            return PermissionDeniedError(message, status=403)
        if self.kind == "space":
            return SpaceNotFoundError(message, status=404)
        if self.kind == "id":
            return APIError(message, status=400)
        return ConnectError(message)


_KINDS = ("permission", "space", "id", "outage")


def failure_kind(error: AsyncpollError) -> str | None:
    """The kind under which ``error`` is shared with the fleet; ``None``: not shared
    (authentication is per token; anything else is the leader's own business)."""
    if isinstance(error, PermissionDeniedError):
        return "permission"
    if isinstance(error, SpaceNotFoundError):
        return "space"
    return None


def encode_failure(failure: Failure) -> bytes:
    """The pub/sub message of a :class:`Failure`."""
    return orjson.dumps(
        {
            "t": "fail",
            "m": failure.member,
            "s": failure.space,
            "kind": failure.kind,
            "msg": failure.message[:_MAX_MESSAGE],
            "ids": list(failure.ids),
        }
    )


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if type(value) is not list or any(type(item) is not str for item in value):
        raise TypeError(f"{name} must be a list of strings")
    return tuple(validate_operation_id(item) for item in value)


def decode_message(
    value: object, where: str, *, ignore: str | None = None
) -> Observation | Failure | None:
    """A message read from the fleet's channel, or ``None`` if it does not read or was
    sent by the member ``ignore`` (its records are not read then: a leader gets back
    every message it publishes)."""
    return _decode(value, where, lambda document: _read_message(document, ignore))


def _read_message(document: Any, ignore: str | None) -> Observation | Failure | None:
    if type(document) is not dict:
        raise TypeError("not an object")
    member = _strict_str(document.get("m"), str)
    if member == ignore:
        return None
    space = validate_space_id(document.get("s"))
    if document.get("t") == "obs":
        operations = document.get("ops")
        if type(operations) is not list:
            raise TypeError("ops must be a list")
        return Observation(
            member,
            space,
            tuple(_structure(item) for item in operations),
            _strings(document.get("gone"), "gone"),
        )
    if document.get("t") == "fail":
        kind = document.get("kind")
        if kind not in _KINDS:
            raise ValueError("unknown failure kind")
        message = _strict_str(document.get("msg"), str)[:_MAX_MESSAGE]
        return Failure(member, space, kind, message, _strings(document.get("ids"), "ids"))
    raise ValueError("unknown message type")
