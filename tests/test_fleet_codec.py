"""What a fleet keeps in Redis, read back as untrusted input (asyncpoll/_fleet/_codec.py),
and the arguments of :class:`asyncpoll.RedisFleet`.

Every garbage value returns ``None`` and logs one WARNING per key (a DEBUG line when the
same key is read again), never an exception: a member reads the same bad value at each
turn, and neither its log nor its Poller may suffer for it.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

import coredis
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncpoll
from asyncpoll import AsyncOperation, OperationError, OperationState
from asyncpoll._errors import APIError, ConnectError, PermissionDeniedError, SpaceNotFoundError
from asyncpoll._fleet._codec import (
    MAX_VALUE,
    Failure,
    Observation,
    decode_id,
    decode_message,
    decode_record,
    encode_failure,
    encode_observation,
    encode_record,
    failure_kind,
)

WARNING = "ignoring an unreadable fleet value"


def where() -> str:
    """A fresh key name: the codec warns once per key, for the whole process."""
    return f"asyncpoll:{{test}}:snap:{uuid.uuid4().hex}"


def warnings_about(caplog: pytest.LogCaptureFixture, key: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and WARNING in r.getMessage() and key in r.getMessage()
    ]


def full_operation(**changes: Any) -> AsyncOperation:
    fields: dict[str, Any] = {
        "id": "0G4Gf2Hq8x1aQvWmzTt3Lb",
        "state": OperationState.FAILED,
        "percent_complete": 60.0,
        "result": {"createdResourceIds": ["prog_1"], "nested": {"a": [1, 2.5, None]}},
        "created_resource_ids": ("prog_1",),
        "error": OperationError(code="TemplateNotFound", message="gone", details=({"x": 1},)),
        "raw": {"id": "0G4Gf2Hq8x1aQvWmzTt3Lb", "state": "Failed", "extra": [True]},
    }
    fields.update(changes)
    return AsyncOperation(**fields)


_DROP = object()


def _message(**fields: Any) -> bytes:
    document = {"t": "obs", "m": "x", "s": "default", "ops": [], "gone": []}
    document.update(fields)
    return orjson.dumps({k: v for k, v in document.items() if v is not _DROP})


# -- records ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        full_operation(),
        full_operation(
            state=OperationState.RUNNING, error=None, result=None, percent_complete=None
        ),
        AsyncOperation(id="x", state=OperationState.NOT_STARTED),
        AsyncOperation(id="é-ünïcode-ID", state=OperationState.SUCCEEDED, percent_complete=100.0),
        full_operation(state=OperationState.UNKNOWN, raw={"state": "Paused"}),
        full_operation(state=OperationState.CANCELED, percent_complete=0.0),
    ],
)
def test_a_record_reads_back_as_it_was_written(operation: AsyncOperation) -> None:
    """encode_record and decode_record round-trip every field, ``raw`` included (a member
    sees exactly what the leader saw)."""
    back = decode_record(encode_record(operation), where())
    assert back == operation
    assert back is not None
    assert back.raw == operation.raw
    assert back.error == operation.error


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None)
@given(
    operation_id=st.text(min_size=1, max_size=30).filter(lambda s: s.isprintable()),
    state=st.sampled_from(list(OperationState)),
    percent=st.none() | st.floats(0, 100),
    raw=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_records_round_trip(
    operation_id: str, state: OperationState, percent: float | None, raw: dict[str, Any]
) -> None:
    """Any valid operation round-trips (hypothesis over IDs, states, progress, raw data)."""
    try:
        operation_id.encode()
    except UnicodeEncodeError:
        return  # a lone surrogate is no operation ID
    operation = AsyncOperation(id=operation_id, state=state, percent_complete=percent, raw=raw)
    back = decode_record(encode_record(operation), where())
    assert back == operation
    assert back is not None
    assert back.raw == raw


GARBAGE_RECORDS: list[object] = [
    "a str, not bytes",
    12,
    ["a", "list"],
    b"",
    b"not json",
    b"\xff\xfe\x00",
    b"[" * 100_000,
    b"x" * (MAX_VALUE + 1),
    b'{"id": 5, "state": "Succeeded"}',
    b'{"state": "Succeeded"}',
    b'{"id": "a"}',
    b'{"id": "", "state": "Succeeded"}',
    b'{"id": "a\\u0000b", "state": "Succeeded"}',
    b'{"id": "a", "state": "Succeeded", "unexpected": 1}',
    b'{"id": "a", "state": 3}',
    b'{"id": "a", "state": "Running", "percent_complete": 101}',
    b'{"id": "a", "state": "Running", "percent_complete": -1}',
    b'{"id": "a", "state": "Running", "percent_complete": "50"}',
    b'{"id": "a", "state": "Running", "percent_complete": true}',
    b'{"id": "a", "state": "Running", "result": [1]}',
    b'{"id": "a", "state": "Running", "raw": "text"}',
    b'{"id": "a", "state": "Running", "created_resource_ids": [5]}',
    b'{"id": "a", "state": "Failed", "error": "a string"}',
    b'{"id": "a", "state": "Failed", "error": [1]}',
    b'{"id": "a", "state": "Failed", "error": {"code": 1}}',
    b"5",
    b"true",
]


@pytest.mark.parametrize("value", GARBAGE_RECORDS, ids=lambda v: repr(v)[:40])
def test_a_garbage_record_returns_none_and_warns_once(
    value: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Every kind of garbage in a snapshot field or a done key reads as ``None``, with
    one WARNING for its key; read again, it logs no second WARNING."""
    key = where()
    caplog.set_level(logging.DEBUG, logger="asyncpoll")
    assert decode_record(value, key) is None
    assert decode_record(value, key) is None
    assert len(warnings_about(caplog, key)) == 1


@pytest.mark.parametrize(
    "value",
    [b"[1, 2, 3]", b'"a JSON string"', b"[]", b'[{"id": "a", "state": "Running"}]'],
    ids=["list", "string", "empty list", "list of a record"],
)
def test_a_record_that_is_not_a_json_object_returns_none(
    value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """BUG: a record that is JSON but not an object (a list, a string) makes cattrs's
    generated structure function call ``.keys()`` on it: an AttributeError that
    decode_record does not catch, raised through the member's flusher into the Poller
    (a member process dies of it: see test_garbage_in_every_key_is_logged_and_ignored).
    It must read as ``None``, with one WARNING."""
    key = where()
    caplog.set_level(logging.INFO, logger="asyncpoll")
    assert decode_record(value, key) is None
    assert len(warnings_about(caplog, key)) == 1


@pytest.mark.parametrize(
    "value",
    [_message(ops=[[1, 2]]), _message(ops=["a string"]), _message(ops=[[]])],
    ids=["list", "string", "empty list"],
)
def test_an_observed_record_that_is_not_a_json_object_returns_none(
    value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """BUG (as above, on the obs channel): an observation whose ``ops`` holds a list or a
    string makes decode_message raise AttributeError, in the member's listener. Anyone
    who can PUBLISH on the channel can end every member's Poller with one message."""
    key = where()
    caplog.set_level(logging.INFO, logger="asyncpoll")
    assert decode_message(value, key) is None
    assert len(warnings_about(caplog, key)) == 1


@pytest.mark.parametrize("decode", [decode_record, decode_message])
def test_json_null_is_garbage_too(decode: Any, caplog: pytest.LogCaptureFixture) -> None:
    """BUG: ``null`` (valid JSON, no record, no message) returns ``None`` without the
    WARNING every other garbage value gets: ``_parse`` returns ``None`` both for "did not
    parse, warned already" and for a parsed ``null``, and the callers take both alike."""
    key = where()
    caplog.set_level(logging.INFO, logger="asyncpoll")
    assert decode(b"null", key) is None
    assert len(warnings_about(caplog, key)) == 1


def test_an_unknown_state_never_reads_as_terminal() -> None:
    """A state string no member writes reads as OperationState.UNKNOWN (the tolerant
    reader of the endpoint's states): never as an outcome a caller would get."""
    record = decode_record(b'{"id": "a", "state": "Exploded"}', where())
    assert record is None or not record.is_terminal


def test_a_missing_value_is_not_garbage(caplog: pytest.LogCaptureFixture) -> None:
    """``None`` (no such field or key) is simply absent: no record, no WARNING."""
    key = where()
    caplog.set_level(logging.DEBUG, logger="asyncpoll")
    assert decode_record(None, key) is None
    assert not [r for r in caplog.records if key in r.getMessage()]


def test_garbage_is_warned_about_once_per_key(caplog: pytest.LogCaptureFixture) -> None:
    """Two keys with garbage: one WARNING each, however often they are read; the
    repeats are DEBUG lines."""
    first, second = where(), where()
    caplog.set_level(logging.DEBUG, logger="asyncpoll")
    for _ in range(5):
        assert decode_record(b"junk", first) is None
        assert decode_record(b"{}", second) is None
    assert len(warnings_about(caplog, first)) == 1
    assert len(warnings_about(caplog, second)) == 1
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and first in r.getMessage()]
    assert len(debug) == 4


# -- IDs ----------------------------------------------------------------------------------


def test_an_id_reads_back() -> None:
    assert decode_id(b"0G4Gf2Hq8x1aQvWmzTt3Lb", where()) == "0G4Gf2Hq8x1aQvWmzTt3Lb"
    assert decode_id("é/?#&".encode(), where()) == "é/?#&"


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe",
        b"\xc3\x28",
        b"",
        b"ctl\x00",
        b"esc\x1b[31m",
        b"new\nline",
        b"x" * (MAX_VALUE + 1),
        "a str",
        7,
        None,
        [b"a"],
    ],
    ids=lambda v: repr(v)[:30],
)
def test_a_garbage_id_returns_none_and_warns_once(
    value: object, caplog: pytest.LogCaptureFixture
) -> None:
    """IDs in a want set that are no IDs (non-UTF-8, empty, control characters, huge,
    not bytes) read as ``None`` with one WARNING."""
    key = where()
    caplog.set_level(logging.INFO, logger="asyncpoll")
    assert decode_id(value, key) is None
    assert decode_id(value, key) is None
    assert len(warnings_about(caplog, key)) == 1


# -- messages -----------------------------------------------------------------------------


def test_an_observation_reads_back() -> None:
    operations = (full_operation(), AsyncOperation(id="b", state=OperationState.RUNNING))
    observation = Observation("m1", "default", operations, ("gone-1", "gone-2"))
    back = decode_message(encode_observation(observation), where())
    assert back == observation
    assert isinstance(back, Observation)
    assert [op.raw for op in back.operations] == [op.raw for op in operations]


@pytest.mark.parametrize(
    ("kind", "error_type", "status"),
    [
        ("permission", PermissionDeniedError, 403),
        ("space", SpaceNotFoundError, 404),
        ("id", APIError, 400),
        ("outage", ConnectError, None),
    ],
)
def test_a_failure_reads_back_as_the_error_its_kind_names(
    kind: str, error_type: type[Exception], status: int | None
) -> None:
    failure = Failure("m1", "rkr83lapKkyCJuLLWqLqzB", kind, "refused", ("a", "b"))
    back = decode_message(encode_failure(failure), where())
    assert back == failure
    assert isinstance(back, Failure)
    error = back.error()
    assert type(error) is error_type
    assert "seen by fleet member m1" in str(error)
    if status is not None:
        assert getattr(error, "status", None) == status


def test_a_shared_message_is_cut_to_a_bounded_length() -> None:
    failure = Failure("m1", "default", "outage", "x" * 10_000)
    back = decode_message(encode_failure(failure), where())
    assert isinstance(back, Failure)
    assert len(back.message) <= 500


def test_which_errors_are_shared() -> None:
    assert failure_kind(PermissionDeniedError("no", status=403)) == "permission"
    assert failure_kind(SpaceNotFoundError("no", status=404)) == "space"
    assert failure_kind(ConnectError("down")) is None
    assert failure_kind(asyncpoll.AuthenticationError("bad token", status=401)) is None


GARBAGE_MESSAGES: list[object] = [
    "a str",
    b"not json",
    b"\xff",
    b"[]",
    b"x" * (MAX_VALUE + 1),
    _message(t="nonsense"),
    _message(t=_DROP),
    _message(m=_DROP),
    _message(m=5),
    _message(s="not a space!"),
    _message(s=_DROP),
    _message(ops={"a": 1}),
    _message(ops=[5]),
    _message(ops=[{"id": 3, "state": "Running"}]),
    _message(gone="abc"),
    _message(gone=[1]),
    _message(gone=[""]),
    _message(gone=["ctl\u0001"]),
    _message(t="fail", kind="doom", msg="m", ids=[]),
    _message(t="fail", kind="permission", msg=5, ids=[]),
    _message(t="fail", kind="permission", msg="m", ids="abc"),
    _message(t="fail", kind="permission", msg="m", ids=_DROP),
]


@pytest.mark.parametrize("value", GARBAGE_MESSAGES, ids=lambda v: repr(v)[:60])
def test_a_garbage_message_returns_none_and_warns_once(
    value: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Junk on the obs channel (not JSON, not an object, unknown type, missing or
    wrong-typed fields, records that do not read) reads as ``None`` with one WARNING."""
    key = where()
    caplog.set_level(logging.INFO, logger="asyncpoll")
    assert decode_message(value, key) is None
    assert decode_message(value, key) is None
    assert len(warnings_about(caplog, key)) == 1


# -- RedisFleet's arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "namespace", ["", "a b", "x" * 65, "ns{tag}", "slash/ns", "é", "new\nline", None, 5, b"ns"]
)
def test_a_bad_namespace_is_refused(namespace: object) -> None:
    with pytest.raises(ValueError, match="namespace"):
        asyncpoll.RedisFleet("redis://127.0.0.1:6379", namespace=namespace, lease=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("namespace", ["a", "programs-prod", "A_b.c:d-9", "x" * 64])
def test_a_good_namespace_is_kept(namespace: str) -> None:
    fleet = asyncpoll.RedisFleet("redis://127.0.0.1:6379", namespace=namespace)
    assert fleet.namespace == namespace
    assert fleet.lease == 10.0


@pytest.mark.parametrize("lease", [0, 0.0, -1.0, 0.1, 0.199, math.nan, -math.inf])
def test_a_bad_lease_is_refused(lease: float) -> None:
    with pytest.raises(ValueError, match="lease"):
        asyncpoll.RedisFleet("redis://127.0.0.1:6379", namespace="ns", lease=lease)


@pytest.mark.parametrize("lease", ["1", None, [1.0]])
def test_a_lease_that_is_no_number_is_refused(lease: object) -> None:
    with pytest.raises((TypeError, ValueError), match="lease"):
        asyncpoll.RedisFleet("redis://127.0.0.1:6379", namespace="ns", lease=lease)  # type: ignore[arg-type]


def test_the_shortest_lease_is_accepted() -> None:
    assert asyncpoll.RedisFleet("redis://h", namespace="ns", lease=0.2).lease == 0.2


@pytest.mark.parametrize(
    "url", ["localhost:6379", "127.0.0.1", "http://127.0.0.1:6379", "", "redis-cluster://h"]
)
def test_a_non_redis_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        asyncpoll.RedisFleet(url, namespace="ns")


def test_a_refused_url_does_not_show_its_password() -> None:
    with pytest.raises(ValueError, match="URL") as info:
        asyncpoll.RedisFleet("http://user:hunter2secret@127.0.0.1:6379", namespace="ns")
    assert "hunter2secret" not in str(info.value)


@pytest.mark.parametrize("redis", [object(), 6379, b"redis://127.0.0.1", None, ["redis://h"]])
def test_anything_but_a_url_or_a_client_is_a_type_error(redis: object) -> None:
    with pytest.raises(TypeError, match="redis must be"):
        asyncpoll.RedisFleet(redis, namespace="ns")  # type: ignore[arg-type]


def test_a_coredis_client_is_accepted_unless_it_decodes() -> None:
    client: coredis.Redis[bytes] = coredis.Redis(host="127.0.0.1", port=6379)
    fleet = asyncpoll.RedisFleet(client, namespace="ns")
    assert "127.0.0.1" not in repr(fleet) or "<coredis.Redis>" in repr(fleet)
    decoding = coredis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    with pytest.raises(ValueError, match="decode"):
        asyncpoll.RedisFleet(decoding, namespace="ns")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2secret@127.0.0.1:6379/0",
        "redis://user:hunter2secret@127.0.0.1:6379",
        "rediss://default:hunter2secret@redis.example.com:6380/2",
        "rediss://:hunter2secret@[::1]:6379",
    ],
)
def test_the_repr_hides_the_password(url: str) -> None:
    fleet = asyncpoll.RedisFleet(url, namespace="prod", lease=2)
    text = repr(fleet)
    assert "hunter2secret" not in text
    assert "***" in text
    assert "prod" in text
    assert "lease=2" in text


def test_the_repr_of_a_url_without_password_shows_it_whole() -> None:
    fleet = asyncpoll.RedisFleet("rediss://redis.example.com:6380/1", namespace="ns")
    assert "rediss://redis.example.com:6380/1" in repr(fleet)
