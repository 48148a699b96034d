"""Wire decoding: from the server's JSON to models, tolerant of the known variants.

The one private cattrs converter lives here; the models know nothing of the wire.
:class:`Endpoint` is the documented hook for a server whose path or response shape differ.
"""

from __future__ import annotations

import json
import logging
import marshal
import math
import reprlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from ._errors import InvalidResponseError
from ._models import AsyncOperation, OperationError, OperationState

__all__ = [
    "DEFAULT_PATH",
    "Endpoint",
    "Light",
    "Packed",
    "Status",
    "decode_operations",
    "decode_statuses",
    "parse_body",
    "unpack",
]

logger = logging.getLogger("asyncpoll")

DEFAULT_PATH = "/programs/v2/spaces/{space_id}/asyncOperations"

_WRAPPERS = ("asyncOperations", "items", "value", "data")
_STATE_KEYS = ("state", "status")
_PERCENT_KEYS = ("percentComplete", "progress", "percentage")


class _SkipEntry(Exception):
    """An entry of the list is not an operation we can read (not an object, no ID)."""


# Spellings already read, so that a poll costs a dict lookup per entry rather than an Enum
# call; bounded, since an unknown spelling could be anything.
_STATE_CACHE: dict[str, OperationState] = {s.value: s for s in OperationState}
_MAX_STATE_CACHE = 256


def _structure_state(value: Any, _: type) -> OperationState:
    if not isinstance(value, str):
        return OperationState.UNKNOWN
    state = _STATE_CACHE.get(value)
    if state is None:
        state = OperationState(value)
        if len(_STATE_CACHE) < _MAX_STATE_CACHE:
            _STATE_CACHE[value] = state
    return state


def _structure_percent(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number):
        return None
    # Clamped: a progress figure outside 0..100 is the server's rounding, not news.
    return min(100.0, max(0.0, number))


def _message_of(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        message = item.get("message")
        return message if isinstance(message, str) else ""
    return ""


def _text(value: Any) -> str:
    # reprlib bounds depth and length: str() of a list nested a thousand deep would
    # raise RecursionError, and orjson accepts documents that deep.
    return reprlib.repr(value)


def _structure_error_object(value: Any, _: type) -> OperationError:
    if isinstance(value, str):
        return OperationError(message=value)
    if not isinstance(value, Mapping):
        return OperationError(message=_text(value))
    code = value.get("code")
    details = value.get("details")
    if isinstance(details, list):
        details_tuple: tuple[Any, ...] = tuple(details)
    elif details is None:
        details_tuple = ()
    else:
        details_tuple = (details,)
    return OperationError(
        message=_message_of(value),
        code=code if isinstance(code, str) else (None if code is None else _text(code)),
        details=details_tuple,
    )


def _error_of(entry: Mapping[str, Any]) -> OperationError | None:
    error = entry.get("error")
    if error:  # "", {}, [], false and null all mean "no error"
        return _converter.structure(error, OperationError)
    message = entry.get("errorMessage")
    if isinstance(message, str):
        return OperationError(message=message)
    errors = entry.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0]
        code = first.get("code") if isinstance(first, Mapping) else None
        return OperationError(
            message="; ".join(m for m in map(_message_of, errors) if m),
            code=code if isinstance(code, str) else None,
            details=tuple(errors),
        )
    return None


def _first(entry: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in entry:
            return entry[key]
    return None


def _structure_operation(entry: Any, _: type) -> AsyncOperation:
    if not isinstance(entry, dict):
        raise _SkipEntry
    op_id = entry.get("id")
    if isinstance(op_id, int) and not isinstance(op_id, bool):
        op_id = str(op_id)
    if not isinstance(op_id, str) or not op_id:
        raise _SkipEntry
    result = entry.get("result")
    if not isinstance(result, dict):
        result = None
    created: tuple[str, ...] = ()
    if result is not None:
        ids = result.get("createdResourceIds")
        if isinstance(ids, list):
            created = tuple(str(i) for i in ids if isinstance(i, str | int))
    return AsyncOperation(
        id=op_id,
        state=_converter.structure(_first(entry, _STATE_KEYS), OperationState),
        percent_complete=_structure_percent(_first(entry, _PERCENT_KEYS)),
        result=result,
        created_resource_ids=created,
        error=_error_of(entry),
        raw=entry,
    )


# Keys that only the full reading handles (errors and the contract's variants); "error"
# too, unless null (the documented shape sends it as null unless failed), and "result"
# unless null or an object whose "createdResourceIds", if any, is a list of strings.
# ``_light`` tests them one by one: four ``in`` tests cost half of ``isdisjoint`` on a
# keys view, for every status of every poll.
_SLOW_KEYS = ("errorMessage", "errors", "progress", "percentage")


class Light:
    """A status in the default shape (``id``, ``state``, ``percentComplete``), read but not
    yet made a model: the Poller builds the :class:`AsyncOperation` only when a caller
    will see it (a watcher, or the terminal outcome), so polling a running operation
    for a waiting caller costs a small record, not a model."""

    __slots__ = ("id", "percent_complete", "raw", "state")

    def __init__(
        self, operation_id: str, state: OperationState, percent: float | None, raw: dict[str, Any]
    ) -> None:
        self.id = operation_id
        self.state = state
        self.percent_complete = percent
        self.raw = raw

    def pack(self) -> Packed:
        """This status in a few hundred bytes, for :func:`unpack` to rebuild the same model.

        Its entry alone, marshalled (the rest is read from it again): marshal writes back
        exactly what JSON parses to (an infinity and an integer beyond 64 bits included,
        which orjson would write as null or refuse), in about a quarter of the parsed
        dict's memory. Not ``orjson.dumps``: each of its results holds a 4 KiB buffer,
        whatever its length.
        """
        return marshal.dumps(self.raw)

    def model(self) -> AsyncOperation:
        """The operation, as :func:`decode_operations` would read it."""
        result = self.raw.get("result")
        if result is None:
            return AsyncOperation(self.id, self.state, self.percent_complete, raw=self.raw)
        # _light let through only a result whose createdResourceIds, if any, are strings.
        created = result.get("createdResourceIds")
        return AsyncOperation(
            self.id,
            self.state,
            self.percent_complete,
            result=result,
            created_resource_ids=tuple(created) if created else (),
            raw=self.raw,
        )


#: What the Session hands the Poller for one status: a model, or a light record of one.
Status = AsyncOperation | Light
#: A :class:`Light` packed by :meth:`Light.pack`.
Packed = bytes


def unpack(packed: Packed) -> AsyncOperation:
    """The model of a packed :class:`Light`: equal to the one it would have built."""
    light = _light(marshal.loads(packed))
    assert light is not None  # the same entry, read the same way as when it was packed
    return light.model()


def _light(entry: Any) -> Light | None:
    """The default shape read straight into a :class:`Light`; ``None`` for anything else,
    which the converter reads.

    Not through cattrs: its dispatch and the hooks' checks cost about 6 us an entry, and
    this runs for every changed status of every poll. ``Light.model()`` is the operation
    :func:`_structure_operation` gives (tests/test_wire.py compares the two).
    """
    if type(entry) is not dict:
        return None
    operation_id = entry.get("id")
    spelled = entry.get("state")
    if type(operation_id) is not str or not operation_id or type(spelled) is not str:
        return None
    state = _STATE_CACHE.get(spelled)
    if state is None:
        return None
    if "errorMessage" in entry or "errors" in entry or "progress" in entry or "percentage" in entry:
        return None  # one of _SLOW_KEYS
    if entry.get("error") is not None:
        return None
    result = entry.get("result")
    if result is not None:
        # The documented outcome of a success: {"createdResourceIds": [strings]}.
        if type(result) is not dict:
            return None
        created = result.get("createdResourceIds")
        if created is not None and (
            type(created) is not list or not all(type(i) is str for i in created)
        ):
            return None
    given: Any = entry.get("percentComplete")
    kind = type(given)
    percent: float | None = None
    if (kind is float or kind is int) and 0 <= given <= 100:
        percent = float(given)  # the common case, without the hook's checks
    elif given is not None:
        percent = _structure_percent(given)
    return Light(operation_id, state, percent, entry)


def _make_converter() -> cattrs.Converter:
    converter = make_converter(forbid_extra_keys=False)
    converter.register_structure_hook(OperationState, _structure_state)
    converter.register_structure_hook(OperationError, _structure_error_object)
    converter.register_structure_hook(AsyncOperation, _structure_operation)
    return converter


_converter = _make_converter()


def parse_body(body: bytes) -> Any:
    """Parse a response body as JSON; raise :class:`InvalidResponseError` if it is not.

    orjson refuses documents nested deeper than 1024 levels, which keeps a hostile body
    from exhausting the stack. A UTF-8 byte order mark is skipped (RFC 8259 allows a
    reader to), and a document that orjson refuses only for a number beyond the range of
    a double (``1e400``) is read by the standard library instead, the number as infinity
    (a percentage then reads as unknown).
    """
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        cause: Exception = exc
    if "infinity" in str(cause):
        try:
            return json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            cause = exc
    # Chained outside the handler; the parser's error holds only the body's position.
    raise InvalidResponseError(f"response body is not valid JSON: {str(cause)[:300]}") from cause


_BOM = b"\xef\xbb\xbf"


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; orjson refuses them too.
    raise ValueError(f"{name} is not valid JSON")


def _entries_of(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        for key in _WRAPPERS:
            inner = document.get(key)
            if isinstance(inner, list):
                return inner
        if "id" in document:
            return [document]
    raise InvalidResponseError(
        f"expected a JSON array of operations (or one wrapped under {', '.join(_WRAPPERS)}), "
        f"got {type(document).__name__}"
    )


def decode_operations(
    document: Any, previous: Mapping[str, AsyncOperation] | None = None
) -> list[AsyncOperation]:
    """Read a parsed response document into operations, in the order received.

    Accepts the default shape and every variant of the endpoint contract: a list, or a
    list wrapped under ``asyncOperations``, ``items``, ``value`` or ``data``; ``state`` or
    ``status``; ``percentComplete``, ``progress`` or ``percentage`` (number or numeric
    string); the error as an object, a string, ``errorMessage`` or ``errors``. Entries that
    are not objects with a string ID are skipped, and so is an entry that cannot be read
    (one bad entry fails only itself: its ID reads as absent from this answer).

    ``previous`` maps IDs to the operations last decoded for them: an entry equal to the
    ``raw`` of its previous operation is not structured again, the previous object is
    returned (this keeps steady-state polling close to the cost of parsing).

    Raises :class:`InvalidResponseError` when the document is not one of these shapes.
    """
    operations: list[AsyncOperation] = []
    append = operations.append
    for entry in _entries_of(document):
        if previous is not None and isinstance(entry, dict):
            operation_id = entry.get("id")
            # Only a string ID can be looked up: a list or object would be unhashable.
            known = previous.get(operation_id) if isinstance(operation_id, str) else None
            if known is not None and _same(known.raw, entry):
                append(known)
                continue
        light = _light(entry)
        operation = light.model() if light is not None else _structure(entry)
        if operation is not None:
            append(operation)
    return operations


def decode_statuses(document: Any) -> list[Status]:
    """:func:`decode_operations` for the Poller: entries of the default shape stay
    :class:`Light` records (it compares their state and progress, and builds a model only
    for a caller who will see one); every other entry is read into a model."""
    statuses: list[Status] = []
    append = statuses.append
    for entry in _entries_of(document):
        status = _light(entry) or _structure(entry)
        if status is not None:
            append(status)
    return statuses


def _structure(entry: Any) -> AsyncOperation | None:
    """One entry read by the converter; ``None`` if it cannot be read (one bad entry fails
    only itself: it reads as absent from this answer)."""
    try:
        return _converter.structure(entry, AsyncOperation)
    except _SkipEntry:
        return None
    except (cattrs.BaseValidationError, ValueError, TypeError, RecursionError) as exc:
        # RecursionError: a safety net for values nested about a thousand deep.
        logger.debug("skipping an operation entry that cannot be read: %s", type(exc).__name__)
        return None


def _same(before: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    try:
        return before == entry
    except RecursionError:
        # Values nested about a thousand deep cannot be compared: read the entry anew.
        return False


Decoder = Callable[[Any, "Mapping[str, AsyncOperation] | None"], Iterable[AsyncOperation]]


@attrs.frozen
class Endpoint:
    """Where the status endpoint lives and how its answers read: the hook for servers
    that differ from the documented contract, without forking asyncpoll.

    ``path`` is appended to the Session's ``base_url``; ``{space_id}`` is replaced by the
    percent-encoded space ID. ``ids_param`` is the query parameter repeated once per ID.
    ``decode`` receives the parsed JSON document and a mapping of previously decoded
    operations by ID (may be ``None``) and returns operations; it may raise
    :class:`InvalidResponseError`. The default, :func:`decode_operations`, reads every
    shape of the contract; a custom decoder usually reshapes the document and calls it::

        def decode(document, previous):
            return asyncpoll.decode_operations(document["payload"]["jobs"], previous)

        Session(..., endpoint=asyncpoll.Endpoint(path="/v3/{space_id}/jobs", decode=decode))
    """

    path: str = DEFAULT_PATH
    ids_param: str = "asyncOperationIds"
    decode: Decoder = decode_operations
