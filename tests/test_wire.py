"""Wire decoding: every response shape of the endpoint contract, and its robustness."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncpoll
from asyncpoll import (
    AsyncOperation,
    Endpoint,
    InvalidResponseError,
    MockTransport,
    OperationError,
    OperationState,
    Request,
    Response,
    Session,
    decode_operations,
)
from asyncpoll._wire import _SLOW_KEYS, Light, _structure, decode_statuses, parse_body, unpack

S = OperationState

RUNNING: dict[str, Any] = {
    "id": "0G4Gf2Hq8x1aQvWmzTt3Lb",
    "state": "Running",
    "percentComplete": 42.5,
    "result": None,
    "error": None,
    "createdAt": "2026-11-28T10:00:00Z",
    "lastUpdatedAt": "2026-11-28T10:00:05Z",
}
SUCCEEDED: dict[str, Any] = {
    "id": "9pQ2rS7tU0vW1xY2zA3bC4",
    "state": "Succeeded",
    "percentComplete": 100,
    "result": {"createdResourceIds": ["prog_1", "task_1", "task_2"]},
    "error": None,
}
FAILED: dict[str, Any] = {
    "id": "7hJ8kL9mN0pQ1rS2tU3vW4",
    "state": "Failed",
    "percentComplete": 60,
    "result": None,
    "error": {
        "code": "TemplateNotFound",
        "message": "Program template 'x' was deleted",
        "details": [],
    },
}
DEFAULT_DOCUMENT = [RUNNING, SUCCEEDED, FAILED]


def one(entry: Mapping[str, Any]) -> AsyncOperation:
    operations = decode_operations([dict(entry)])
    assert len(operations) == 1
    return operations[0]


# -- the default shape ----------------------------------------------------------------------


def test_default_shape() -> None:
    running, succeeded, failed = decode_operations(DEFAULT_DOCUMENT)

    assert running == AsyncOperation(
        id="0G4Gf2Hq8x1aQvWmzTt3Lb", state=S.RUNNING, percent_complete=42.5
    )
    assert not running.is_terminal
    assert running.raw == RUNNING

    assert succeeded.state is S.SUCCEEDED
    assert succeeded.is_terminal
    assert succeeded.percent_complete == 100.0
    assert succeeded.result == {"createdResourceIds": ["prog_1", "task_1", "task_2"]}
    assert succeeded.created_resource_ids == ("prog_1", "task_1", "task_2")
    assert succeeded.error is None

    assert failed.state is S.FAILED
    assert failed.is_terminal
    assert failed.percent_complete == 60.0
    assert failed.result is None
    assert failed.created_resource_ids == ()
    assert failed.error == OperationError(
        message="Program template 'x' was deleted", code="TemplateNotFound", details=()
    )


def test_order_is_kept() -> None:
    ids = [op.id for op in decode_operations([FAILED, RUNNING, SUCCEEDED])]
    assert ids == [FAILED["id"], RUNNING["id"], SUCCEEDED["id"]]


def test_empty_list() -> None:
    assert decode_operations([]) == []


def test_single_object_with_id_reads_as_a_list() -> None:
    assert [op.id for op in decode_operations(dict(RUNNING))] == [RUNNING["id"]]


# -- wrappers -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["asyncOperations", "items", "value", "data"])
def test_wrapped_list(key: str) -> None:
    wrapped = decode_operations({key: DEFAULT_DOCUMENT, "nextLink": None, "count": 3})
    assert wrapped == decode_operations(DEFAULT_DOCUMENT)
    assert [op.raw for op in wrapped] == DEFAULT_DOCUMENT


@pytest.mark.parametrize(
    "document",
    [None, 1, 2.5, "text", True, {}, {"items": "nope"}, {"other": []}, {"data": {"id": 1}}],
)
def test_unreadable_documents_raise(document: Any) -> None:
    with pytest.raises(InvalidResponseError):
        decode_operations(document)


# -- states ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "state"),
    [
        ("NotStarted", S.NOT_STARTED),
        ("Not Started", S.NOT_STARTED),
        ("NOT_STARTED", S.NOT_STARTED),
        ("not_started", S.NOT_STARTED),
        ("notStarted", S.NOT_STARTED),
        ("not-started", S.NOT_STARTED),
        ("Running", S.RUNNING),
        ("running", S.RUNNING),
        ("RUNNING", S.RUNNING),
        ("Succeeded", S.SUCCEEDED),
        ("SUCCEEDED", S.SUCCEEDED),
        ("Failed", S.FAILED),
        ("failed", S.FAILED),
        ("Canceled", S.CANCELED),
        ("Cancelled", S.CANCELED),
        ("CANCELLED", S.CANCELED),
        ("canceled", S.CANCELED),
        ("Paused", S.UNKNOWN),
        ("", S.UNKNOWN),
        ("Unknown", S.UNKNOWN),
    ],
)
@pytest.mark.parametrize("key", ["state", "status"])
def test_state_spellings(key: str, value: str, state: OperationState) -> None:
    entry = {"id": "a1", key: value}
    operation = one(entry)
    assert operation.state is state
    assert operation.is_terminal == (state in {S.SUCCEEDED, S.FAILED, S.CANCELED})


@pytest.mark.parametrize("value", [None, 3, 1.5, True, ["Running"], {"name": "Running"}])
def test_non_string_state_is_unknown(value: Any) -> None:
    operation = one({"id": "a1", "state": value})
    assert operation.state is S.UNKNOWN
    assert not operation.is_terminal


def test_absent_state_is_unknown() -> None:
    assert one({"id": "a1"}).state is S.UNKNOWN


def test_state_wins_over_status() -> None:
    assert one({"id": "a1", "state": "Running", "status": "Failed"}).state is S.RUNNING


def test_unknown_state_is_not_terminal() -> None:
    operation = one({"id": "a1", "state": "Archiving"})
    assert operation.state is S.UNKNOWN
    assert not operation.is_terminal
    assert operation.raw["state"] == "Archiving"


# -- progress -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["percentComplete", "progress", "percentage"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (42, 42.0),
        (42.5, 42.5),
        (100, 100.0),
        ("42", 42.0),
        ("42.5", 42.5),
        (" 7 ", 7.0),
        ("50%", 50.0),
        (150, 100.0),
        (-5, 0.0),
        ("abc", None),
        ("", None),
        (None, None),
        (True, None),
        ([50], None),
        ({"value": 50}, None),
        ("nan", None),
    ],
)
def test_progress(key: str, value: Any, expected: float | None) -> None:
    assert one({"id": "a1", "state": "Running", key: value}).percent_complete == expected


def test_absent_progress_is_none_not_zero() -> None:
    operation = one({"id": "a1", "state": "Running"})
    assert operation.percent_complete is None


def test_percent_complete_wins_over_progress() -> None:
    assert one({"id": "a", "percentComplete": 10, "progress": 20}).percent_complete == 10.0


# -- errors ---------------------------------------------------------------------------------


def test_error_object() -> None:
    error = one(
        {
            "id": "a",
            "state": "Failed",
            "error": {"code": "Boom", "message": "it broke", "details": [{"target": "x"}]},
        }
    ).error
    assert error == OperationError(message="it broke", code="Boom", details=({"target": "x"},))


def test_error_object_partial() -> None:
    assert one({"id": "a", "error": {"message": "m"}}).error == OperationError(message="m")
    assert one({"id": "a", "error": {"code": 12, "message": "m"}}).error == OperationError(
        message="m", code="12"
    )
    assert one({"id": "a", "error": {"message": "m", "details": "why"}}).error == (
        OperationError(message="m", details=("why",))
    )


def test_error_string() -> None:
    assert one({"id": "a", "state": "Failed", "error": "it broke"}).error == OperationError(
        message="it broke"
    )


def test_error_message_field() -> None:
    assert one({"id": "a", "state": "Failed", "errorMessage": "it broke"}).error == (
        OperationError(message="it broke")
    )


def test_errors_list_of_strings() -> None:
    error = one({"id": "a", "state": "Failed", "errors": ["one", "two"]}).error
    assert error is not None
    assert error.message == "one; two"
    assert error.code is None
    assert error.details == ("one", "two")


def test_errors_list_of_objects() -> None:
    items = [{"code": "A", "message": "first"}, {"code": "B", "message": "second"}]
    error = one({"id": "a", "state": "Failed", "errors": items}).error
    assert error == OperationError(message="first; second", code="A", details=tuple(items))


def test_no_error() -> None:
    for entry in (
        {"id": "a", "error": None},
        {"id": "a", "errors": []},
        {"id": "a", "errorMessage": None},
        {"id": "a"},
    ):
        assert one(entry).error is None


# -- results, extra fields, IDs -------------------------------------------------------------


def test_created_resource_ids() -> None:
    operation = one({"id": "a", "state": "Succeeded", "result": {"createdResourceIds": ["p", 7]}})
    assert operation.created_resource_ids == ("p", "7")
    assert one({"id": "a", "result": {"other": 1}}).created_resource_ids == ()
    assert one({"id": "a", "result": {"createdResourceIds": "p"}}).created_resource_ids == ()
    assert one({"id": "a", "result": ["p"]}).result is None


def test_extra_fields_are_kept_in_raw() -> None:
    entry = {**SUCCEEDED, "tenant": "t1", "links": {"self": "/x"}, "attempt": 3}
    operation = one(entry)
    assert operation.raw == entry
    assert operation.raw["links"] == {"self": "/x"}
    # raw does not take part in equality: the model is the same as without the extras.
    assert operation == one(SUCCEEDED)


def test_entries_without_a_usable_id_are_skipped() -> None:
    document = [
        RUNNING,
        {"state": "Running"},
        {"id": "", "state": "Running"},
        {"id": None},
        {"id": ["x"]},
        {"id": True},
        "text",
        7,
        None,
        [RUNNING],
        SUCCEEDED,
    ]
    assert [op.id for op in decode_operations(document)] == [RUNNING["id"], SUCCEEDED["id"]]


def test_integer_id_reads_as_string() -> None:
    assert one({"id": 1234, "state": "Running"}).id == "1234"


# -- reuse of previous models ---------------------------------------------------------------


def test_previous_reused_when_raw_is_equal() -> None:
    first = decode_operations(DEFAULT_DOCUMENT)
    previous = {op.id: op for op in first}
    # A fresh parse: equal content, different objects.
    again = decode_operations(json.loads(json.dumps(DEFAULT_DOCUMENT)), previous)
    assert all(new is old for new, old in zip(again, first, strict=True))


def test_previous_not_reused_when_changed() -> None:
    first = decode_operations(DEFAULT_DOCUMENT)
    previous = {op.id: op for op in first}
    changed = {**RUNNING, "percentComplete": 50}
    running, succeeded, _ = decode_operations([changed, SUCCEEDED, FAILED], previous)
    assert running is not first[0]
    assert running.percent_complete == 50.0
    assert running.raw == changed
    assert succeeded is first[1]


def test_previous_with_unhashable_ids() -> None:
    previous = {op.id: op for op in decode_operations(DEFAULT_DOCUMENT)}
    document = [{"id": ["x"]}, {"id": {"a": 1}}, RUNNING]
    assert decode_operations(document, previous) == [previous[RUNNING["id"]]]


# -- parse_body -----------------------------------------------------------------------------


def test_parse_body() -> None:
    assert parse_body(orjson.dumps(DEFAULT_DOCUMENT)) == DEFAULT_DOCUMENT


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'[{"id": "',
        b"<html>502 Bad Gateway</html>",
        b"\xff\xfe\x00",
        b"[" * 5000,
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
    ],
)
def test_parse_body_refuses(body: bytes) -> None:
    with pytest.raises(InvalidResponseError) as info:
        parse_body(body)
    assert info.value.__cause__ is not None


# -- properties -----------------------------------------------------------------------------

KEYS = st.sampled_from(
    [
        "id",
        "state",
        "status",
        "percentComplete",
        "progress",
        "percentage",
        "result",
        "createdResourceIds",
        "error",
        "errorMessage",
        "errors",
        "code",
        "message",
        "details",
        "asyncOperations",
        "items",
        "value",
        "data",
    ]
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | KEYS, children, max_size=6)
    ),
    max_leaves=40,
)


def check_decoded(document: Any, previous: Mapping[str, AsyncOperation] | None) -> None:
    try:
        operations = decode_operations(document, previous)
    except InvalidResponseError:
        return
    assert isinstance(operations, list)
    for operation in operations:
        assert isinstance(operation, AsyncOperation)
        assert isinstance(operation.id, str)
        assert operation.id
        assert isinstance(operation.state, OperationState)
        assert operation.percent_complete is None or 0.0 <= operation.percent_complete <= 100.0
        assert all(isinstance(i, str) for i in operation.created_resource_ids)
        assert operation.error is None or isinstance(operation.error.message, str)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_json_value_decodes_or_raises_invalid_response(document: Any) -> None:
    check_decoded(document, None)


SMALL_JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(KEYS | st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(KEYS, SMALL_JSON, max_size=6), max_size=3))
def test_operation_like_entries_decode_or_raise(document: list[dict[str, Any]]) -> None:
    check_decoded(document, None)
    # And again with previous models, as the Poller decodes.
    try:
        previous = {op.id: op for op in decode_operations(document)}
    except InvalidResponseError:
        previous = {}
    check_decoded(document, previous)
    check_decoded(document, {"x": one({"id": "x"})})


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_any_body_parses_or_raises_invalid_response(body: bytes) -> None:
    try:
        value = parse_body(body)
    except InvalidResponseError:
        return
    # What parses is plain JSON data: it serialises back to an equal value.
    assert orjson.loads(orjson.dumps(value)) == value


@settings(max_examples=100, deadline=None)
@given(JSON)
def test_any_serialised_json_round_trips_through_parse_and_decode(document: Any) -> None:
    try:
        body = orjson.dumps(document)
    except (TypeError, orjson.JSONEncodeError):
        return  # integers beyond 64 bits: not something a server could send through orjson
    check_decoded(parse_body(body), None)


# -- the Endpoint hook ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_custom_endpoint_with_a_session() -> None:
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        document = {
            "payload": {
                "jobs": [
                    {"id": "j1", "status": "DONE_OK", "progress": "100"},
                    {"id": "j 2", "status": "running", "progress": "10"},
                ]
            }
        }
        return Response(200, {"content-type": "application/json"}, orjson.dumps(document))

    def decode(
        document: Any, previous: Mapping[str, AsyncOperation] | None
    ) -> list[AsyncOperation]:
        jobs = [
            {**job, "status": "Succeeded" if job["status"] == "DONE_OK" else job["status"]}
            for job in document["payload"]["jobs"]
        ]
        return asyncpoll.decode_operations(jobs, previous)

    endpoint = Endpoint(path="/v3/spaces/{space_id}/jobs", ids_param="jobId", decode=decode)
    transport = MockTransport(handler)
    async with Session(
        "https://jobs.example.com/api/",
        token="tok",
        space_id="space_123",
        endpoint=endpoint,
        transport=transport,
    ) as session:
        operations = await session.get_operations(["j1", "j 2"])

    assert [(op.id, op.state, op.percent_complete) for op in operations] == [
        ("j1", S.SUCCEEDED, 100.0),
        ("j 2", S.RUNNING, 10.0),
    ]
    assert [r.url for r in seen] == [
        "https://jobs.example.com/api/v3/spaces/space_123/jobs?jobId=j1&jobId=j%202"
    ]
    assert seen[0].headers["Authorization"] == "Bearer tok"
    assert transport.closed


@pytest.mark.anyio
async def test_custom_decoder_errors_are_retried_as_invalid_responses() -> None:
    def decode(document: Any, previous: Mapping[str, AsyncOperation] | None) -> list[Any]:
        raise InvalidResponseError("not my shape")

    transport = MockTransport(lambda request: Response(200, body=b"{}"))
    async with Session(
        "https://example.com",
        token="tok",
        endpoint=Endpoint(decode=decode),
        transport=transport,
        retry=asyncpoll.RetryPolicy(attempts=3, initial=0.001, maximum=0.01),
    ) as session:
        with pytest.raises(InvalidResponseError, match="not my shape"):
            await session.get_operations(["a"])
    assert len(transport.requests) == 3


def test_endpoint_path_must_contain_space_id() -> None:
    with pytest.raises(ValueError, match="space_id"):
        Session(token="t", endpoint=Endpoint(path="/v3/jobs"))


@pytest.mark.anyio
async def test_a_broken_custom_decoder_is_an_invalid_response_caused_by_its_error() -> None:
    def decode(document: Any, previous: Mapping[str, AsyncOperation] | None) -> list[Any]:
        raise KeyError("payload")

    transport = MockTransport(lambda request: Response(200, body=b"{}"))
    async with Session(
        "https://example.com",
        token="tok",
        endpoint=Endpoint(decode=decode),
        transport=transport,
        max_batch_size=1,
        retry=asyncpoll.RetryPolicy(attempts=2, initial=0.001, maximum=0.01),
    ) as session:
        with pytest.raises(InvalidResponseError, match="decoder raised KeyError") as caught:
            await session.get_operations(["a", "b", "c"])
    assert isinstance(caught.value.__cause__, KeyError)


@pytest.mark.parametrize("empty", [None, "", {}, [], False])
def test_empty_error_values_mean_no_error(empty: object) -> None:
    assert one({"id": "a", "state": "Running", "error": empty}).error is None


# -- the Poller's light records ------------------------------------------------------------

_STATES = st.sampled_from(["Running", "NotStarted", "Succeeded", "Not Started", "weird", ""])
_PERCENTS = st.one_of(
    st.none(), st.integers(-5, 105), st.floats(allow_nan=True), st.text(max_size=4)
)


@given(
    st.lists(
        st.fixed_dictionaries(
            {"id": st.text(min_size=1, max_size=8), "state": _STATES},
            optional={
                "percentComplete": _PERCENTS,
                "extra": st.integers(),
                "result": st.none()
                | st.just({"createdResourceIds": ["r"]})
                | st.just({"createdResourceIds": ["r", 7]})
                | st.just({"createdResourceIds": "r"})
                | st.just({"createdResourceIds": None, "other": 1})
                | st.just({"createdResourceIds": []})
                | st.just({})
                | st.just(["r"]),
                "error": st.none() | st.just("") | st.just("boom"),
            },
        ),
        max_size=5,
    )
)
@settings(max_examples=300, deadline=None)
def test_light_records_read_as_the_converter_reads(entries: list[dict[str, Any]]) -> None:
    statuses = decode_statuses(entries)
    assert len(statuses) == len(entries)
    for entry, status in zip(entries, statuses, strict=True):
        expected = _structure(entry)
        assert expected is not None
        model = status.model() if isinstance(status, Light) else status
        assert model == expected
        assert model.percent_complete == expected.percent_complete  # NaN-free: clamped or None
        assert model.raw is entry
        if isinstance(status, Light):  # packed for the Poller's memory, rebuilt the same
            rebuilt = unpack(status.pack())
            assert rebuilt == expected
            assert rebuilt.created_resource_ids == expected.created_resource_ids
            # By their JSON text: NaN (which no body parses to, but the strategy draws) is
            # never equal to itself, and a rebuilt NaN is another float.
            assert json.dumps(rebuilt.raw) == json.dumps(entry)


@pytest.mark.parametrize(
    "value", [math.inf, -math.inf, 2**70, -(2**70), 0.1, "\u00e9\U0001f600", [{"a": [None]}]]
)
def test_a_packed_status_comes_back_exactly(value: Any) -> None:
    # What the standard library's parser (the fallback for 1e400) may hand over too.
    entry = {"id": "a", "state": "Succeeded", "percentComplete": 100, "other": value}
    [status] = decode_statuses([entry])
    assert isinstance(status, Light)
    rebuilt = unpack(status.pack())
    assert rebuilt.raw == entry
    assert type(rebuilt.raw["other"]) is type(value)


@pytest.mark.parametrize("key", _SLOW_KEYS)
def test_a_key_only_the_converter_reads_makes_a_model(key: str) -> None:
    # _light tests these keys one by one: each of them must send the entry to the converter.
    entry = {"id": "a", "state": "Running", "percentComplete": 10, key: "x"}
    [status] = decode_statuses([entry])
    assert isinstance(status, AsyncOperation)
    assert status == _structure(entry)


def test_entries_beyond_the_default_shape_are_models() -> None:
    entries = [
        {"id": "a", "state": "Running", "result": None, "error": None},
        {"id": "b", "state": "Succeeded", "result": {"createdResourceIds": ["x"]}},
        {"id": "c", "status": "Running"},
        {"id": 7, "state": "Running"},
        {"id": "d", "state": "Failed", "error": "boom"},
        {"id": "e", "state": "Succeeded", "result": {"createdResourceIds": [1]}},
    ]
    statuses = decode_statuses(entries)
    # The documented success (created IDs as strings) stays light; the rest are models.
    assert [type(s) for s in statuses] == [Light] * 2 + [AsyncOperation] * 4
    assert [s.id for s in statuses] == ["a", "b", "c", "7", "d", "e"]
    succeeded = statuses[1].model() if isinstance(statuses[1], Light) else statuses[1]
    assert succeeded.created_resource_ids == ("x",)
    assert succeeded == _structure(entries[1])
