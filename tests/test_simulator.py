"""Tests of asyncpoll.testing.SimulatedServer, through a plain synchronous httpx client."""

from __future__ import annotations

import email.utils
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncpoll.testing
from asyncpoll.testing import (
    Faults,
    LoggedRequest,
    ScriptedResponse,
    SimulatedServer,
    WireVariant,
)
from asyncpoll.testing._server import _ids_of

TOKEN = "test-token"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
THREAD_NAME = "asyncpoll-simulated-server"


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@pytest.fixture
def server() -> Iterator[SimulatedServer]:
    with SimulatedServer(seed=1234) as simulated:
        yield simulated
    assert not _server_threads()


@pytest.fixture
def client(server: SimulatedServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5.0
    ) as http:
        yield http


def path_for(ids: Sequence[str], space: str = "default") -> str:
    query = "&".join(f"asyncOperationIds={quote(i, safe='')}" for i in ids)
    return f"/programs/v2/spaces/{quote(space, safe='')}/asyncOperations?{query}"


def get(
    client: httpx.Client,
    ids: Sequence[str],
    space: str = "default",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.get(path_for(ids, space), headers=headers)


def entries(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    document = response.json()
    assert isinstance(document, list)
    return document


def poll_until(
    fetch: Callable[[], dict[str, Any] | None],
    done: Callable[[dict[str, Any] | None], bool],
    timeout: float = 3.0,
) -> list[dict[str, Any] | None]:
    """Poll every few milliseconds; return everything seen, ending with the first match."""
    seen: list[dict[str, Any] | None] = []
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        seen.append(value)
        if done(value):
            return seen
        assert time.monotonic() < deadline, f"condition not reached; last seen {value!r}"
        time.sleep(0.005)


def one(client: httpx.Client, operation_id: str, **kwargs: Any) -> dict[str, Any] | None:
    found = entries(get(client, [operation_id], **kwargs))
    return found[0] if found else None


# -- public surface ---------------------------------------------------------------------


def test_exported_names() -> None:
    assert asyncpoll.testing.__all__ == sorted(asyncpoll.testing.__all__)
    for name in asyncpoll.testing.__all__:
        obj = getattr(asyncpoll.testing, name)
        assert obj.__module__ == "asyncpoll.testing"
        assert obj.__doc__


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="state_style"):
        WireVariant(state_style="camel")
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=1.5)
    faults = Faults()
    with pytest.raises(ValueError, match="disconnect_rate"):
        faults.disconnect_rate = -0.1
    simulated = SimulatedServer()
    with pytest.raises(ValueError, match="space"):
        simulated.add_space("no")
    with pytest.raises(ValueError, match="outcome"):
        simulated.add_operation(outcome="exploded")
    with pytest.raises(ValueError, match="operation_id"):
        simulated.add_operation("")
    assert simulated.add_operation(operation_id="by-keyword") == "by-keyword"
    with pytest.raises(KeyError):
        simulated.set_operation("unknown", state="Running")
    with pytest.raises(RuntimeError, match="not running"):
        _ = simulated.url


# -- lifecycle --------------------------------------------------------------------------


def test_start_stop_leaves_no_thread() -> None:
    simulated = SimulatedServer()
    simulated.start()
    simulated.start()  # idempotent
    assert len(_server_threads()) == 1
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", simulated.url)
    simulated.stop()
    simulated.stop()
    assert not _server_threads()
    with simulated:  # restartable
        response = httpx.get(
            simulated.url + path_for(["x"]), headers={"Authorization": "Bearer " + TOKEN}
        )
        assert response.status_code == 200
    assert not _server_threads()


def test_stop_does_not_wait_for_hanging_requests() -> None:
    simulated = SimulatedServer()
    simulated.start()
    simulated.script(ScriptedResponse(delay=3600))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.get(simulated.url + path_for(["x"]), timeout=30)
        except httpx.TransportError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    poll_until(lambda: None, lambda _: not simulated._state._scripts)  # the request took it
    simulated.stop()
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert not _server_threads()
    assert len(errors) == 1
    assert [r.status for r in simulated.requests] == [0]


def test_start_fails_on_a_taken_port(server: SimulatedServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="in use"):
        SimulatedServer(port=port).start()
    assert len(_server_threads()) == 1


# -- the default shape and scripts ------------------------------------------------------


def test_default_shape(server: SimulatedServer, client: httpx.Client) -> None:
    done = server.add_operation("op-ok", duration=0.0)
    failed = server.add_operation(
        "op-failed",
        duration=0.0,
        outcome="failed",
        error_code="TemplateNotFound",
        error_message="Program template 'x' was deleted",
    )
    running = server.add_operation("op-running", duration=float("inf"))
    response = get(client, [done, failed, running, "unknown"])
    assert response.headers["content-type"] == "application/json"
    found = entries(response)
    assert [e["id"] for e in found] == [done, failed, running]
    for entry in found:
        assert list(entry) == [
            "id",
            "state",
            "percentComplete",
            "result",
            "error",
            "createdAt",
            "lastUpdatedAt",
        ]
        assert ISO.fullmatch(entry["createdAt"])
        assert ISO.fullmatch(entry["lastUpdatedAt"])
    ok, bad, run = found
    assert ok["state"] == "Succeeded"
    assert ok["percentComplete"] == 100
    assert ok["result"] == {"createdResourceIds": ["prog_1", "task_1"]}
    assert ok["error"] is None
    assert bad["state"] == "Failed"
    assert bad["result"] is None
    assert bad["error"] == {
        "code": "TemplateNotFound",
        "message": "Program template 'x' was deleted",
        "details": [],
    }
    assert run["state"] == "Running"
    assert run["percentComplete"] == 0
    assert server.operation_json(done) == ok
    assert server.completion_time(running) is None


def test_script_progression(server: SimulatedServer, client: httpx.Client) -> None:
    operation_id = server.add_operation(
        start_after=0.1, duration=0.1, progress_step=25, created_resource_ids=["p1"]
    )
    assert server.operation_json(operation_id)["state"] == "NotStarted"
    assert len(operation_id) == 22
    assert operation_id.isalnum()
    completion = server.completion_time(operation_id)
    assert completion is not None
    seen = poll_until(
        lambda: one(client, operation_id), lambda e: e is not None and e["state"] == "Succeeded"
    )
    found = [e for e in seen if e is not None]
    order = ["NotStarted", "Running", "Succeeded"]
    ranks = [order.index(e["state"]) for e in found]
    assert ranks == sorted(ranks)
    assert 1 in ranks  # seen Running
    percents = [e["percentComplete"] for e in found]
    assert percents == sorted(percents)
    assert set(percents) <= {0, 25, 50, 75, 100}
    assert found[-1]["result"] == {"createdResourceIds": ["p1"]}
    assert time.monotonic() >= completion


@pytest.mark.parametrize("outcome", ["failed", "canceled"])
def test_unsuccessful_outcomes(server: SimulatedServer, client: httpx.Client, outcome: str) -> None:
    operation_id = server.add_operation(duration=0.05, outcome=outcome, progress_step=10)
    seen = poll_until(
        lambda: one(client, operation_id), lambda e: e is not None and e["state"] != "Running"
    )
    last = seen[-1]
    assert last is not None
    assert last["state"] == outcome.capitalize()
    assert last["percentComplete"] == 90  # the last progress, not 100
    assert last["result"] is None
    assert (last["error"] is None) == (outcome == "canceled")


def test_eventual_consistency(server: SimulatedServer, client: httpx.Client) -> None:
    operation_id = server.add_operation(visible_after=0.05)
    assert entries(get(client, [operation_id])) == []
    poll_until(lambda: one(client, operation_id), lambda e: e is not None)


def test_set_operation_freezes(server: SimulatedServer, client: httpx.Client) -> None:
    operation_id = server.add_operation(duration=float("inf"), visible_after=3600)
    server.set_operation(operation_id, percent_complete=42.5)
    entry = one(client, operation_id)
    assert entry is not None  # freezing makes it visible
    assert (entry["state"], entry["percentComplete"]) == ("Running", 42.5)
    assert server.completion_time(operation_id) is None

    server.set_operation(
        operation_id, state="Paused", extra={"owner": "bob", "percentComplete": "n/a"}
    )
    entry = one(client, operation_id)
    assert entry is not None
    assert entry["state"] == "Paused"
    assert entry["percentComplete"] == "n/a"
    assert entry["owner"] == "bob"

    before = time.monotonic()
    server.set_operation(operation_id, state="Succeeded")
    entry = one(client, operation_id)
    assert entry is not None
    assert entry["state"] == "Succeeded"
    assert entry["percentComplete"] == "n/a"  # the extra still overrides
    assert entry["result"] == {"createdResourceIds": ["prog_1", "task_1"]}
    completion = server.completion_time(operation_id)
    assert completion is not None
    assert completion >= before

    server.set_operation(operation_id, state="Failed", error="boom")
    entry = one(client, operation_id)
    assert entry is not None
    assert entry["error"] == {"code": "OperationFailed", "message": "boom", "details": []}
    assert entry["result"] is None

    server.set_operation(operation_id, result={"createdResourceIds": []}, error={"code": "X"})
    assert server.operation_json(operation_id)["error"] == {"code": "X"}

    server.remove_operation(operation_id)
    assert entries(get(client, [operation_id])) == []


def test_add_operations(server: SimulatedServer, client: httpx.Client) -> None:
    started = time.monotonic()
    ids = server.add_operations(500, window=0.1, fail_rate=0.5)
    assert len(set(ids)) == 500
    completions = [server.completion_time(i) for i in ids]
    assert all(c is not None and started <= c <= time.monotonic() + 0.1 for c in completions)
    time.sleep(0.12)
    found = entries(get(client, ids[:100]))
    assert len(found) == 100
    states = {e["state"] for e in found}
    assert states == {"Succeeded", "Failed"}
    # The same seed gives the same IDs.
    assert SimulatedServer(seed=1234).add_operations(3) == SimulatedServer(
        seed=1234
    ).add_operations(3)
    assert SimulatedServer().add_operations(0) == []


def test_add_operations_is_fast_for_large_n() -> None:
    ids = SimulatedServer(seed=5).add_operations(100_000, window=10)
    assert len(set(ids)) == 100_000


# -- variants ---------------------------------------------------------------------------


def _three(server: SimulatedServer) -> list[str]:
    return [
        server.add_operation("v-ok", duration=0.0, created_resource_ids=["r"]),
        server.add_operation("v-bad", duration=0.0, outcome="failed", error_message="nope"),
        server.add_operation("v-cancel", duration=0.0, outcome="canceled"),
        server.add_operation("v-wait", start_after=3600),
    ]


@pytest.mark.parametrize("wrapper", ["asyncOperations", "items", "value", "data"])
def test_variant_wrapper(server: SimulatedServer, client: httpx.Client, wrapper: str) -> None:
    ids = _three(server)
    server.variant = WireVariant(wrapper=wrapper)
    document = get(client, ids).json()
    assert list(document) == [wrapper]
    assert [e["id"] for e in document[wrapper]] == ids


@pytest.mark.parametrize(
    ("style", "spelling", "expected"),
    [
        ("pascal", "Canceled", ["Succeeded", "Failed", "Canceled", "NotStarted"]),
        ("spaced", "Cancelled", ["Succeeded", "Failed", "Cancelled", "Not Started"]),
        ("upper_snake", "Canceled", ["SUCCEEDED", "FAILED", "CANCELED", "NOT_STARTED"]),
        ("lower_snake", "Cancelled", ["succeeded", "failed", "cancelled", "not_started"]),
    ],
)
def test_variant_states(
    server: SimulatedServer,
    client: httpx.Client,
    style: str,
    spelling: str,
    expected: list[str],
) -> None:
    ids = _three(server)
    server.variant = WireVariant(state_key="status", state_style=style, canceled_spelling=spelling)
    found = entries(get(client, ids))
    assert all("state" not in e for e in found)
    assert [e["status"] for e in found] == expected


@pytest.mark.parametrize("key", ["progress", "percentage", None])
@pytest.mark.parametrize("as_string", [False, True])
def test_variant_percent(
    server: SimulatedServer, client: httpx.Client, key: str | None, as_string: bool
) -> None:
    operation_id = server.add_operation(duration=float("inf"))
    server.set_operation(operation_id, percent_complete=42.5)
    server.variant = WireVariant(percent_key=key, percent_as_string=as_string)
    (entry,) = entries(get(client, [operation_id]))
    assert "percentComplete" not in entry
    if key is None:
        assert not {"progress", "percentage"} & set(entry)
    else:
        assert entry[key] == ("42.5" if as_string else 42.5)


@pytest.mark.parametrize(
    ("style", "failed", "succeeded"),
    [
        (
            "object",
            {"error": {"code": "OperationFailed", "message": "nope", "details": []}},
            {"error": None},
        ),
        ("string", {"error": "nope"}, {"error": None}),
        ("errorMessage", {"errorMessage": "nope"}, {"errorMessage": None}),
        (
            "errors",
            {"errors": [{"code": "OperationFailed", "message": "nope", "details": []}]},
            {"errors": []},
        ),
    ],
)
def test_variant_errors(
    server: SimulatedServer,
    client: httpx.Client,
    style: str,
    failed: dict[str, Any],
    succeeded: dict[str, Any],
) -> None:
    ids = _three(server)
    server.variant = WireVariant(error_style=style)
    ok, bad, *_ = entries(get(client, ids))
    for entry, expected in ((bad, failed), (ok, succeeded)):
        assert {k: entry[k] for k in expected} == expected
        if style != "object":
            assert "error" not in entry or style == "string"


# -- other responses --------------------------------------------------------------------


def test_authorization(server: SimulatedServer, client: httpx.Client) -> None:
    anonymous = httpx.get(server.url + path_for(["x"]))
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert get(client, ["x"], headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert get(client, ["x"], headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401

    server.add_token("no-scope", user="carol", scopes=("admin",))
    assert get(client, ["x"], headers={"Authorization": "Bearer no-scope"}).status_code == 403
    server.add_token("viewer", user="carol")
    assert get(client, ["x"], headers={"Authorization": "Bearer viewer"}).status_code == 200
    server.revoke_token("viewer")
    assert get(client, ["x"], headers={"Authorization": "Bearer viewer"}).status_code == 401
    assert SimulatedServer(token=None).token is None


def test_spaces_and_ids(server: SimulatedServer, client: httpx.Client) -> None:
    assert get(client, ["x"], space="short").status_code == 400
    assert get(client, ["x"], space="a/bcdefgh").status_code == 400
    assert get(client, ["x"], space="abcdefg").status_code == 404
    server.add_space("abcdefg")
    assert get(client, ["x"], space="abcdefg").status_code == 200
    no_ids = client.get("/programs/v2/spaces/default/asyncOperations")
    assert no_ids.status_code == 400
    assert client.get("/programs/v2/spaces/default/other?asyncOperationIds=x").status_code == 404
    assert client.post(path_for(["x"])).status_code == 405
    # A space ID is decoded from the raw path.
    operation_id = server.add_operation(space_id="rkr83lap-KkyC_JuLLWq", duration=0)
    encoded = "/programs/v2/spaces/rkr83lap%2DKkyC%5FJuLLWq/asyncOperations"
    found = entries(client.get(f"{encoded}?asyncOperationIds={operation_id}"))
    assert [e["id"] for e in found] == [operation_id]
    # Operations of another space are absent.
    assert entries(get(client, [operation_id])) == []


def test_max_ids_per_request(server: SimulatedServer, client: httpx.Client) -> None:
    server.faults.max_ids_per_request = 2
    assert get(client, ["a", "b"]).status_code == 200
    assert get(client, ["a", "b", "c"]).status_code == 414


def test_per_user_visibility(server: SimulatedServer, client: httpx.Client) -> None:
    mine = server.add_operation("mine-1", duration=0)
    theirs = server.add_operation("theirs-1", user="bob", duration=0)
    server.add_token("bob-token", user="bob", scopes=("manage",))
    assert [e["id"] for e in entries(get(client, [theirs, mine, mine]))] == [mine]
    bob = {"Authorization": "Bearer bob-token"}
    assert [e["id"] for e in entries(get(client, [mine, theirs], headers=bob))] == [theirs]


def test_special_character_ids(server: SimulatedServer, client: httpx.Client) -> None:
    weird = ["a&b=c", "x#y", "p/q", "100%", "what?", "sp ace", "plus+sign", "héllo ✓", "="]
    for operation_id in weird:
        server.add_operation(operation_id, duration=0)
    found = entries(get(client, weird))
    assert [e["id"] for e in found] == weird
    assert server.requests[-1].ids == tuple(weird)


@given(st.lists(st.text(min_size=0, max_size=8), max_size=5), st.text(max_size=10))
def test_id_decoding_matches_parse_qsl(ids: list[str], other: str) -> None:
    query = "&".join(
        [f"{quote(other, safe='')}=1"] + [f"asyncOperationIds={quote(i, safe='')}" for i in ids]
    )
    expected = [
        v
        for k, v in parse_qsl(query, keep_blank_values=True, errors="replace")
        if k == "asyncOperationIds"
    ]
    assert _ids_of(query) == expected


# -- faults and scripted responses ------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_fault_errors(server: SimulatedServer, client: httpx.Client, status: int) -> None:
    server.faults = Faults(error_rate=1.0, error_status=status)
    response = get(client, ["x"], headers={"Authorization": "Bearer nobody"})
    assert response.status_code == status  # faults come before authorization
    server.faults.error_rate = 0.0
    assert get(client, ["x"]).status_code == 200


def test_fault_rate_limit(server: SimulatedServer, client: httpx.Client) -> None:
    server.faults = Faults(rate_limit_rate=1.0, retry_after=2)
    response = get(client, ["x"])
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    server.faults.retry_after = 0.25
    assert get(client, ["x"]).headers["retry-after"] == "0.25"
    server.faults.retry_after_http_date = True
    server.faults.retry_after = 30
    when = email.utils.parsedate_to_datetime(get(client, ["x"]).headers["retry-after"])
    assert 25 < when.timestamp() - time.time() <= 31


def test_fault_malformed_and_success_retry_after(
    server: SimulatedServer, client: httpx.Client
) -> None:
    server.faults.malformed_rate = 1.0
    response = get(client, ["x"])
    assert response.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)
    server.faults = Faults(success_retry_after=1.5)
    response = get(client, ["x"])
    assert response.headers["retry-after"] == "1.5"


def test_fault_disconnect(server: SimulatedServer, client: httpx.Client) -> None:
    server.faults.disconnect_rate = 1.0
    with pytest.raises(httpx.RemoteProtocolError):
        get(client, ["x"])
    server.faults.disconnect_rate = 0.0
    assert get(client, ["x"]).status_code == 200
    assert [r.status for r in server.requests] == [0, 200]


def test_fault_latency(server: SimulatedServer, client: httpx.Client) -> None:
    server.faults.latency = (0.03, 0.03)
    before = time.monotonic()
    assert get(client, ["x"]).status_code == 200
    assert time.monotonic() - before >= 0.03


def test_faults_are_seeded() -> None:
    def statuses(seed: int) -> list[int]:
        with SimulatedServer(seed=seed) as simulated, httpx.Client(base_url=simulated.url) as http:
            simulated.faults = Faults(error_rate=0.5)
            return [
                get(http, ["x"], headers={"Authorization": f"Bearer {TOKEN}"}).status_code
                for _ in range(20)
            ]

    first = statuses(7)
    assert set(first) == {200, 503}
    assert statuses(7) == first


def test_scripted_responses(server: SimulatedServer, client: httpx.Client) -> None:
    operation_id = server.add_operation(duration=0)
    server.script(
        ScriptedResponse(302, headers={"Location": "http://example.invalid/"}),
        ScriptedResponse(429, headers={"Retry-After": "2"}),
        ScriptedResponse(200, body=b"not json"),
        ScriptedResponse(200, headers={"Retry-After": "3"}),
        ScriptedResponse(401),
        ScriptedResponse(disconnect=True, delay=0.01),
    )
    anonymous = {"Authorization": "Bearer nobody"}
    redirect = get(client, [operation_id], headers=anonymous)  # scripts come before authorization
    assert redirect.status_code == 302
    assert redirect.headers["location"] == "http://example.invalid/"
    limited = get(client, [operation_id])
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
    assert "error" in limited.json()
    assert get(client, [operation_id]).content == b"not json"
    normal = get(client, [operation_id])
    assert normal.headers["retry-after"] == "3"
    assert [e["id"] for e in entries(normal)] == [operation_id]
    unauthorized = get(client, [operation_id])
    assert unauthorized.status_code == 401
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    with pytest.raises(httpx.RemoteProtocolError):
        get(client, [operation_id])
    assert get(client, [operation_id]).status_code == 200  # the queue is empty again
    assert [r.status for r in server.requests] == [302, 429, 200, 200, 401, 0, 200]


# -- request log ------------------------------------------------------------------------


def test_request_log(server: SimulatedServer, client: httpx.Client) -> None:
    server.add_token("secret-token-xyz", user="dave", scopes=("view",))
    before = time.monotonic()
    get(client, ["a b", "c"], headers={"Authorization": "Bearer secret-token-xyz"})
    get(client, ["z"], space="abcdefgh", headers={"Authorization": "Bearer other-secret"})
    first, second = server.requests
    assert first == LoggedRequest(
        time=first.time,
        method="GET",
        path="/programs/v2/spaces/default/asyncOperations",
        query="asyncOperationIds=a%20b&asyncOperationIds=c",
        space_id="default",
        ids=("a b", "c"),
        status=200,
        user="dave",
    )
    assert before <= first.time <= second.time
    assert (second.space_id, second.status, second.user) == ("abcdefgh", 401, None)
    text = repr(server.requests)
    for secret in (TOKEN, "secret-token-xyz", "other-secret"):
        assert secret not in text
    server.requests.clear()  # a copy
    assert len(server.requests) == 2
    server.clear_log()
    assert server.requests == []


def test_log_limit() -> None:
    with SimulatedServer(log_limit=2) as simulated, httpx.Client(base_url=simulated.url) as http:
        for operation_id in "abc":
            get(http, [operation_id])
        assert [r.ids for r in simulated.requests] == [("b",), ("c",)]


# -- command line -----------------------------------------------------------------------


def test_command_line(tmp_path: Any) -> None:
    ids_file = tmp_path / "ids.txt"
    command = [sys.executable, "-m", "asyncpoll.testing", "--port", "0", "--ops", "3"]
    command += ["--seed", "1", "--token", "cli-token", "--ids-file", str(ids_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        url_line = process.stdout.readline().strip()
        token_line = process.stdout.readline().strip()
        assert url_line.startswith("url=http://127.0.0.1:")
        assert token_line == "token=cli-token"
        ids = ids_file.read_text().split()
        assert len(ids) == 3
        response = httpx.get(
            url_line[4:] + path_for(ids), headers={"Authorization": "Bearer cli-token"}
        )
        assert len(entries(response)) == 3
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    finally:
        # Never leave the child behind, even when an assertion above failed.
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "Traceback" not in stderr
