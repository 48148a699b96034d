"""The plain records of the simulator: wire variants, faults, scripted and logged requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["Faults", "LoggedRequest", "ScriptedResponse", "WireVariant"]

_WRAPPERS = ("asyncOperations", "items", "value", "data")
_STATE_KEYS = ("state", "status")
_STATE_STYLES = ("pascal", "spaced", "upper_snake", "lower_snake")
_PERCENT_KEYS = ("percentComplete", "progress", "percentage")
_ERROR_STYLES = ("object", "string", "errorMessage", "errors")
_CANCELED_SPELLINGS = ("Canceled", "Cancelled")


def _one_of(choices: tuple[str, ...], *, optional: bool = False) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not (value in choices or (optional and value is None)):
            allowed = ", ".join(repr(c) for c in (*choices, *((None,) if optional else ())))
            raise ValueError(f"{attribute.name} must be one of {allowed}, not {value!r}")

    return check


def _rate(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within 0 and 1, got {value!r}")


def _latency(_: object, attribute: attrs.Attribute[tuple[float, float]], value: object) -> None:
    if not isinstance(value, tuple) or len(value) != 2 or not 0.0 <= value[0] <= value[1]:
        raise ValueError(f"{attribute.name} must be a (low, high) tuple with 0 <= low <= high")


@attrs.frozen
class WireVariant:
    """Which response shape the simulator serves (the "Variants" of the endpoint contract).

    The default is the documented shape. ``wrapper`` wraps the list as ``{wrapper: [...]}``
    (``"asyncOperations"``, ``"items"``, ``"value"`` or ``"data"``); ``state_key`` is
    ``"state"`` or ``"status"``; ``state_style`` spells the canonical states ``"pascal"``
    (``NotStarted``), ``"spaced"`` (``Not Started``), ``"upper_snake"`` (``NOT_STARTED``) or
    ``"lower_snake"`` (``not_started``); ``percent_key`` is ``"percentComplete"``,
    ``"progress"``, ``"percentage"`` or ``None`` (progress omitted), and
    ``percent_as_string`` sends it as a numeric string; ``error_style`` is ``"object"``
    (``{"code", "message", "details"}``), ``"string"``, ``"errorMessage"`` or ``"errors"``
    (a list of objects); ``canceled_spelling`` is ``"Canceled"`` or ``"Cancelled"``.

    Raises :class:`ValueError` for any other value.
    """

    wrapper: str | None = attrs.field(default=None, validator=_one_of(_WRAPPERS, optional=True))
    state_key: str = attrs.field(default="state", validator=_one_of(_STATE_KEYS))
    state_style: str = attrs.field(default="pascal", validator=_one_of(_STATE_STYLES))
    percent_key: str | None = attrs.field(
        default="percentComplete",
        validator=_one_of(_PERCENT_KEYS, optional=True),
    )
    percent_as_string: bool = False
    error_style: str = attrs.field(default="object", validator=_one_of(_ERROR_STYLES))
    canceled_spelling: str = attrs.field(default="Canceled", validator=_one_of(_CANCELED_SPELLINGS))


@attrs.define
class Faults:
    """Random faults, drawn per request from the server's seeded :class:`random.Random`.

    Rates are probabilities (0 to 1) checked in this order, after ``latency`` (a uniform
    random delay in seconds, drawn from ``(low, high)``): ``disconnect_rate`` drops the
    connection without an answer; ``error_rate`` answers ``error_status``;
    ``rate_limit_rate`` answers 429 with ``Retry-After: retry_after`` (seconds, or an HTTP
    date if ``retry_after_http_date``); ``malformed_rate`` answers 200 with a body that is
    not valid JSON. ``max_ids_per_request`` makes a request with more IDs answer 414.
    ``success_retry_after`` adds ``Retry-After: <seconds>`` to every 200 answer.

    Mutable: change fields, or replace the whole object, while the server runs. Setting a
    rate outside 0..1 raises :class:`ValueError`.
    """

    error_rate: float = attrs.field(default=0.0, validator=_rate)
    error_status: int = 503
    rate_limit_rate: float = attrs.field(default=0.0, validator=_rate)
    retry_after: float = 1.0
    retry_after_http_date: bool = False
    latency: tuple[float, float] = attrs.field(default=(0.0, 0.0), validator=_latency)
    disconnect_rate: float = attrs.field(default=0.0, validator=_rate)
    malformed_rate: float = attrs.field(default=0.0, validator=_rate)
    max_ids_per_request: int | None = None
    success_retry_after: float | None = None


def _headers(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


@attrs.frozen
class ScriptedResponse:
    """A forced answer, queued with :meth:`SimulatedServer.script`.

    ``status`` and ``headers`` are sent as given (``{"Location": ...}`` for a redirect,
    ``{"Retry-After": "2"}`` ...). ``body`` is sent verbatim; when it is ``None``, a 200
    serves the normal answer of the request (random faults skipped, ``headers`` added) and
    any other status a small JSON error body. ``disconnect`` drops the connection instead
    of answering. ``delay`` waits that many seconds first (a large value makes the request
    hang until the client gives up or the server stops). ``chunked`` sends the body with
    ``Transfer-Encoding: chunked`` and no ``Content-Length``, so that a client learns its
    size only by reading it.
    """

    status: int = 200
    body: bytes | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_headers, hash=False)
    disconnect: bool = False
    delay: float = 0.0
    chunked: bool = False


@attrs.frozen
class LoggedRequest:
    """One request the simulator received, as recorded in :attr:`SimulatedServer.requests`.

    ``time`` is the :func:`time.monotonic` time of arrival; ``path`` and ``query`` are raw,
    percent-encoded as received; ``space_id`` and ``ids`` (the ``asyncOperationIds`` values
    in order) are decoded; ``status`` is what was answered, 0 if the connection was dropped
    (or the client went away first); ``user`` is the user the bearer token belongs to, or
    ``None``. The token itself is never recorded.

    ``answered`` is the :func:`time.monotonic` time the answer was handed over to be sent
    (after any latency or scripted delay), or the connection dropped; no client can have
    read the answer before it. ``None`` in records made by hand; not compared by ``==``.
    """

    time: float
    method: str
    path: str
    query: str
    space_id: str
    ids: tuple[str, ...]
    status: int
    user: str | None
    answered: float | None = attrs.field(default=None, eq=False)
