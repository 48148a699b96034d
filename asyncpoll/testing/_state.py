"""The state of the simulator: tokens, spaces, scripted operations, the log and faults.

Nothing here speaks HTTP: :mod:`._server` parses each request, decides its answer and
writes it, and asks the :class:`SimulatorState` for everything that outlives a request.
The test code and the server thread share it: every method takes :attr:`lock` itself,
and holds it only for O(IDs in the request) work.
"""

from __future__ import annotations

import enum
import math
import random
import re
import string
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from ._operations import (
    CANONICAL_STATES,
    OUTCOMES,
    TERMINAL_STATES,
    Clock,
    Operation,
    apply_variant,
    default_error,
    number,
    render,
)
from ._records import Faults, LoggedRequest, ScriptedResponse, WireVariant

__all__ = ["DEFAULT_VARIANT", "FaultKind", "Principal", "SimulatorState", "valid_space"]

_SPACE_RE = re.compile(r"[A-Za-z0-9_-]{7,22}")
_ID_ALPHABET = string.ascii_letters + string.digits
# Maps every byte to a letter or digit: random bytes become random IDs in one call.
_ID_TABLE = bytes(ord(_ID_ALPHABET[i % len(_ID_ALPHABET)]) for i in range(256))
_ID_LENGTH = 22
DEFAULT_VARIANT = WireVariant()

#: The user a token belongs to, and its scopes.
Principal = tuple[str, frozenset[str]]


class FaultKind(enum.Enum):
    """The random fault drawn for one request (see :class:`Faults`)."""

    DISCONNECT = "disconnect"
    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    MALFORMED = "malformed"


def valid_space(space_id: str) -> bool:
    return space_id == "default" or _SPACE_RE.fullmatch(space_id) is not None


def _check_space(space_id: str) -> None:
    if not valid_space(space_id):
        raise ValueError(f"invalid space ID: {space_id!r}")


def _outcome(outcome: str) -> str:
    kind = OUTCOMES.get(outcome.lower())
    if kind is None:
        raise ValueError(f"outcome must be 'succeeded', 'failed' or 'canceled', not {outcome!r}")
    return kind


def _checked_script(
    operation_id: str | None,
    space_id: str,
    outcome: str,
    start_after: float,
    duration: float,
    visible_after: float,
) -> str:
    """The canonical outcome of a valid ``add_operation`` call; raise for an invalid one."""
    if operation_id is not None and not operation_id:
        raise ValueError("operation_id must be a non-empty string")
    kind = _outcome(outcome)
    _check_space(space_id)
    if min(start_after, duration, visible_after) < 0 or math.isnan(duration):
        raise ValueError("start_after, duration and visible_after must be >= 0")
    return kind


def _check_batch(
    n: int, space_id: str, window: float, fail_rate: float, start_after: float
) -> None:
    if n < 0 or window < 0 or start_after < 0:
        raise ValueError("n, window and start_after must be >= 0")
    if not 0.0 <= fail_rate <= 1.0:
        raise ValueError("fail_rate must be within 0 and 1")
    _check_space(space_id)


def _change_state(op: Operation, frozen: dict[str, Any], state: str) -> None:
    """Set the frozen ``state``, filling in what it implies (see ``set_operation``)."""
    frozen["state"] = state
    if state == "Succeeded":
        frozen.update(percentComplete=100, result=op.result(), error=None)
    elif state == "Failed":
        frozen.update(result=None, error=default_error(op))
    elif state == "NotStarted":
        frozen.update(percentComplete=0, result=None, error=None)
    elif state in CANONICAL_STATES:
        frozen.update(result=None, error=None)


def _error_object(op: Operation, error: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(error, str):
        return {"code": op.err_code, "message": error, "details": []}
    return dict(error)


class SimulatorState:
    """Everything :class:`~asyncpoll.testing.SimulatedServer` keeps between requests.

    The public methods of the server delegate here; their docstrings are the contract.
    """

    def __init__(self, *, seed: int | None, log_limit: int | None) -> None:
        self.lock = threading.Lock()
        self.clock = Clock()
        self._rng = random.Random(seed)
        self._tokens: dict[str, Principal] = {}
        self._spaces: set[str] = {"default"}
        self._ops: dict[str, Operation] = {}
        self._seq = 0
        self._log: deque[LoggedRequest] = deque(maxlen=log_limit)
        #: False when ``log_limit`` is 0: callers need not build the records at all.
        self.log_enabled = log_limit != 0
        self._scripts: deque[ScriptedResponse] = deque()

    # -- tokens, spaces ------------------------------------------------------------------

    def add_token(self, token: str, *, user: str, scopes: Iterable[str]) -> None:
        if not token:
            raise ValueError("token must be a non-empty string")
        with self.lock:
            self._tokens[token] = (user, frozenset(scopes))

    def revoke_token(self, token: str) -> None:
        with self.lock:
            self._tokens.pop(token, None)

    def principal(self, token: str | None) -> Principal | None:
        """Whom ``token`` belongs to, or ``None`` for no token or an unknown one."""
        with self.lock:
            return self._tokens.get(token) if token is not None else None

    def add_space(self, space_id: str) -> None:
        _check_space(space_id)
        with self.lock:
            self._spaces.add(space_id)

    def has_space(self, space_id: str) -> bool:
        with self.lock:
            return space_id in self._spaces

    # -- operations ----------------------------------------------------------------------

    def _new_ids(self, n: int) -> list[str]:
        # Called with the lock held (the generator is shared with the server thread).
        length = _ID_LENGTH
        text = self._rng.randbytes(length * n).translate(_ID_TABLE).decode("ascii")
        ids = [text[i : i + length] for i in range(0, length * n, length)]
        if len(set(ids)) != n or any(i in self._ops for i in ids):
            taken = set(self._ops)
            unique: list[str] = []
            for operation_id in ids:
                while operation_id in taken:
                    operation_id = "".join(self._rng.choices(_ID_ALPHABET, k=length))
                taken.add(operation_id)
                unique.append(operation_id)
            ids = unique
        return ids

    def add_operation(
        self,
        operation_id: str | None,
        *,
        space_id: str,
        user: str,
        start_after: float,
        duration: float,
        outcome: str,
        created_resource_ids: Sequence[str] | None,
        error_message: str,
        error_code: str,
        visible_after: float,
        progress_step: float,
    ) -> str:
        kind = _checked_script(
            operation_id, space_id, outcome, start_after, duration, visible_after
        )
        ids = tuple(created_resource_ids) if created_resource_ids is not None else None
        with self.lock:
            if operation_id is None:
                operation_id = self._new_ids(1)[0]
            self._seq += 1
            now = time.monotonic()
            start = now + start_after
            self._ops[operation_id] = Operation(
                operation_id,
                space_id,
                user,
                self._seq,
                now,
                now + visible_after,
                start,
                start + duration,
                kind,
                float(progress_step),
                ids,
                error_code,
                error_message,
            )
            self._spaces.add(space_id)
        return operation_id

    def add_operations(
        self,
        n: int,
        *,
        space_id: str,
        user: str,
        window: float,
        fail_rate: float,
        start_after: float,
        progress_step: float,
    ) -> list[str]:
        _check_batch(n, space_id, window, fail_rate, start_after)
        step = float(progress_step)
        with self.lock:
            rand = self._rng.random
            ids = self._new_ids(n)
            now = time.monotonic()
            start = now + start_after
            seq = self._seq
            ops = self._ops
            for operation_id in ids:
                seq += 1
                end = now + rand() * window
                kind = "Failed" if fail_rate and rand() < fail_rate else "Succeeded"
                ops[operation_id] = Operation(
                    operation_id,
                    space_id,
                    user,
                    seq,
                    now,
                    now,
                    min(start, end),
                    end,
                    kind,
                    step,
                    None,
                    "OperationFailed",
                    "Operation failed",
                )
            self._seq = seq
            self._spaces.add(space_id)
        return ids

    def _get(self, operation_id: str) -> Operation:
        op = self._ops.get(operation_id)
        if op is None:
            raise KeyError(f"no operation {operation_id!r}")
        return op

    def set_operation(
        self,
        operation_id: str,
        *,
        state: str | None,
        percent_complete: float | None,
        result: Mapping[str, Any] | None,
        error: Mapping[str, Any] | str | None,
        extra: Mapping[str, Any] | None,
    ) -> None:
        with self.lock:
            op = self._get(operation_id)
            now = time.monotonic()
            frozen = self._freeze(op, now)
            was_terminal = frozen["state"] in TERMINAL_STATES
            if state is not None and state != frozen["state"]:
                _change_state(op, frozen, state)
            if percent_complete is not None:
                frozen["percentComplete"] = number(float(percent_complete))
            if result is not None:
                frozen["result"] = dict(result)
            if error is not None:
                frozen["error"] = _error_object(op, error)
            if extra is not None:
                op.extra = {**(op.extra or {}), **extra}
            self._settle(op, frozen, was_terminal, now)

    def _freeze(self, op: Operation, now: float) -> dict[str, Any]:
        """The frozen fields of ``op``, taken from its current entry the first time."""
        if op.frozen is None:
            current = render(op, now, self.clock)
            op.frozen = {k: current[k] for k in ("state", "percentComplete", "result", "error")}
            op.done_at = op.end_at if current["state"] in TERMINAL_STATES else None
        return op.frozen

    @staticmethod
    def _settle(op: Operation, frozen: dict[str, Any], was_terminal: bool, now: float) -> None:
        """After a change: the completion time, visible at once, no cached entry."""
        if frozen["state"] in TERMINAL_STATES:
            if not was_terminal or op.done_at is None:
                op.done_at = now
        else:
            op.done_at = None
        op.frozen_at = now
        op.visible_at = -math.inf
        op.cache = op.pending = op.running = None

    def remove_operation(self, operation_id: str) -> None:
        with self.lock:
            self._ops.pop(operation_id, None)

    def operation_json(self, operation_id: str) -> dict[str, Any]:
        with self.lock:
            op = self._get(operation_id)
            entry = render(op, time.monotonic(), self.clock)
            if op.extra:
                entry = {**entry, **op.extra}
            document = orjson.dumps(entry)
        result: dict[str, Any] = orjson.loads(document)
        return result

    def completion_time(self, operation_id: str) -> float | None:
        with self.lock:
            return self._get(operation_id).completion_time()

    def entries(
        self, user: str, space_id: str, ids: Iterable[str], variant: WireVariant
    ) -> list[dict[str, Any]]:
        """The entries ``user`` sees now for ``ids`` in ``space_id``, each ID once, in order.

        The entries may be shared with later answers and must not be mutated.
        """
        plain = variant is DEFAULT_VARIANT or variant == DEFAULT_VARIANT
        clock = self.clock
        entries: list[dict[str, Any]] = []
        with self.lock:
            now = time.monotonic()
            ops = self._ops
            seen: set[str] = set()
            for operation_id in ids:
                if operation_id in seen:
                    continue
                seen.add(operation_id)
                op = ops.get(operation_id)
                if op is None or op.user != user or op.space != space_id or now < op.visible_at:
                    continue
                entry = render(op, now, clock)
                if not plain:
                    entry = apply_variant(entry, variant)
                if op.extra:
                    entry = {**entry, **op.extra}
                entries.append(entry)
        return entries

    # -- request log ---------------------------------------------------------------------

    def record(self, request: LoggedRequest) -> None:
        with self.lock:
            self._log.append(request)

    def requests(self) -> list[LoggedRequest]:
        with self.lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self.lock:
            self._log.clear()

    # -- scripted responses and random faults --------------------------------------------

    def script(self, responses: Iterable[ScriptedResponse]) -> None:
        with self.lock:
            self._scripts.extend(responses)

    def next_script(self) -> ScriptedResponse | None:
        """Take the next scripted response, or ``None`` when none is queued."""
        with self.lock:
            return self._scripts.popleft() if self._scripts else None

    def draw_fault(self, faults: Faults) -> tuple[float, FaultKind | None]:
        """Draw the latency of one request and the fault it meets (``None`` for none)."""
        with self.lock:
            rand = self._rng.random
            low, high = faults.latency
            latency = self._rng.uniform(low, high) if high > 0 else 0.0
            for kind, rate in (
                (FaultKind.DISCONNECT, faults.disconnect_rate),
                (FaultKind.ERROR, faults.error_rate),
                (FaultKind.RATE_LIMIT, faults.rate_limit_rate),
                (FaultKind.MALFORMED, faults.malformed_rate),
            ):
                if rate and rand() < rate:
                    return latency, kind
            return latency, None
