"""The asyncpoll command against the simulator: JSON output, tables, display, exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile import closed_port
from rich.console import Console

from asyncpoll import _cli
from asyncpoll._cli import _commands
from asyncpoll._cli._exit import ExitCode
from asyncpoll.testing import SimulatedServer

SECRET = "test-token"
FAST = ["--interval", "0.05", "--max-interval", "0.2"]
RECORD_KEYS = {
    "operation_id",
    "space_id",
    "state",
    "percent_complete",
    "is_terminal",
    "not_found",
    "error",
    "created_resource_ids",
}


@pytest.fixture
def env(server: SimulatedServer, monkeypatch: pytest.MonkeyPatch) -> SimulatedServer:
    """The simulator, with its token in ASYNCPOLL_TOKEN."""
    monkeypatch.setenv("ASYNCPOLL_TOKEN", SECRET)
    return server


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = _cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def watch(server: SimulatedServer, *ids: str, space: str = "default") -> list[str]:
    return ["watch", *ids, "--space", space, "--base-url", server.url, *FAST]


def get(server: SimulatedServer, *ids: str) -> list[str]:
    return ["get", *ids, "--space", "default", "--base-url", server.url]


def json_lines(out: str) -> list[dict[str, Any]]:
    """Every line of ``out`` is one JSON object with the documented keys."""
    lines = out.splitlines()
    assert lines, "no output"
    records = [json.loads(line) for line in lines]
    for item in records:
        assert set(item) == RECORD_KEYS
    return records


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("asyncpoll: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert SECRET not in err
    assert "Traceback" not in err


# -- watch ------------------------------------------------------------------------------


def test_watch_json_ends_with_one_terminal_event_per_id(
    env: SimulatedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [
        env.add_operation(duration=0.3, created_resource_ids=["prog_a"]),
        env.add_operation(duration=0.1),
        env.add_operation(start_after=0.1, duration=0.2),
    ]
    code, out, err = run(capsys, *watch(env, *ids, ids[0]), "--json")
    assert (code, err) == (0, "")
    records = json_lines(out)
    assert {r["operation_id"] for r in records} == set(ids)
    for op_id in ids:
        mine = [r for r in records if r["operation_id"] == op_id]
        assert [r["is_terminal"] for r in mine] == [False] * (len(mine) - 1) + [True]
        percents = [r["percent_complete"] for r in mine]
        assert percents == sorted(percents)
        last = mine[-1]
        assert last["state"] == "Succeeded"
        assert last["percent_complete"] == 100
        assert last["space_id"] == "default"
        assert not last["not_found"]
    assert records[-1]["is_terminal"]
    first = [r for r in records if r["operation_id"] == ids[0]][-1]
    assert first["created_resource_ids"] == ["prog_a"]


@pytest.mark.parametrize("outcome", ["failed", "canceled"])
def test_watch_failed_or_canceled_exits_1(
    env: SimulatedServer, capsys: pytest.CaptureFixture[str], outcome: str
) -> None:
    good = env.add_operation(duration=0.05)
    bad = env.add_operation(
        duration=0.1, outcome=outcome, error_message="disk full", error_code="Quota"
    )
    code, out, err = run(capsys, *watch(env, good, bad), "--json")
    assert (code, err) == (1, "")
    final = {r["operation_id"]: r for r in json_lines(out) if r["is_terminal"]}
    assert final[good]["state"] == "Succeeded"
    assert final[bad]["state"] == outcome.capitalize()
    if outcome == "failed":
        assert final[bad]["error"] == {"code": "Quota", "message": "disk full"}


def test_watch_revoked_token_exits_2(
    env: SimulatedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    op_id = env.add_operation(duration=5)
    env.revoke_token(SECRET)
    code, out, err = run(capsys, *watch(env, op_id))
    assert (code, out) == (2, "")
    assert_one_error_line(err, "401", "ASYNCPOLL_TOKEN")


def test_watch_permission_denied_exits_2(
    env: SimulatedServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env.add_token("no-scopes", scopes=())
    monkeypatch.setenv("OTHER_TOKEN", "no-scopes")
    code, out, err = run(capsys, *watch(env, "some-op"), "--token-env", "OTHER_TOKEN")
    assert (code, out) == (2, "")
    assert_one_error_line(err, "403")
    assert "no-scopes" not in err


def test_watch_unknown_space_exits_2(
    env: SimulatedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *watch(env, "some-op", space="nosuchspace"))
    assert (code, out) == (2, "")
    assert_one_error_line(err, "404", "nosuchspace")


def test_watch_timeout_exits_3(env: SimulatedServer, capsys: pytest.CaptureFixture[str]) -> None:
    done = env.add_operation(duration=0.0)
    endless = env.add_operation(duration=float("inf"))
    code, out, err = run(capsys, *watch(env, done, endless), "--timeout", "0.4")
    assert code == 3
    records = json_lines(out)
    assert [r["operation_id"] for r in records if r["is_terminal"]] == [done]
    assert any(r["operation_id"] == endless and r["state"] == "Running" for r in records)
    assert_one_error_line(err, "timed out", "1 of 2 operations unfinished")


def test_watch_not_found_exits_3(env: SimulatedServer, capsys: pytest.CaptureFixture[str]) -> None:
    found = env.add_operation(duration=0.0)
    code, out, err = run(capsys, *watch(env, found, "no-such-op"), "--not-found-grace", "0.2")
    assert code == 3
    final = {r["operation_id"]: r for r in json_lines(out) if r["is_terminal"]}
    assert final["no-such-op"]["not_found"] is True
    assert final["no-such-op"]["state"] is None
    assert final[found]["state"] == "Succeeded"
    assert_one_error_line(err, "not found", "no-such-op")


def test_watch_on_trio(env: SimulatedServer, capsys: pytest.CaptureFixture[str]) -> None:
    op_id = env.add_operation(duration=0.1)
    code, out, err = run(capsys, *watch(env, op_id), "--backend", "trio")
    assert (code, err) == (0, "")
    assert json_lines(out)[-1]["state"] == "Succeeded"


# -- usage errors -----------------------------------------------------------------------


def test_missing_token_exits_2(
    server: SimulatedServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASYNCPOLL_TOKEN", raising=False)
    code, out, err = run(capsys, *watch(server, "op"))
    assert (code, out) == (2, "")
    assert_one_error_line(err, "ASYNCPOLL_TOKEN", "--token-env")
    assert server.requests == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["watch", "op"],
        ["watch", "op", "--space", "x"],
        ["watch", "", "--space", "default"],
        ["get", "op", "--space", "default", "--base-url", "http://example.com"],
        ["demo", "--fail-rate", "2"],
        ["demo", "--ops", "0"],
        ["watch", "op", "--space", "default", "--timeout", "soon"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setenv("ASYNCPOLL_TOKEN", SECRET)
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert_one_error_line(err)


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--help")
    assert code == 0
    for line in ("exit codes:", "  3    outcome unknown", "  130  interrupted", "(--fail-rate)"):
        assert line in out


def test_readme_lists_the_exit_codes_of_the_table() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "\nExit codes: " in readme
    paragraph = " ".join(readme.split("\nExit codes: ", 1)[1].split("\n\n", 1)[0].split())
    listed = [int(code) for code in re.findall(r"(?:^|; )(\d+) ", paragraph)]
    assert listed == [int(code) for code in ExitCode if not code.accident]


# -- get --------------------------------------------------------------------------------


def test_get_json_lists_ids_in_input_order(
    env: SimulatedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    done = env.add_operation(duration=0.0, created_resource_ids=["prog_9"])
    running = env.add_operation(duration=float("inf"))
    code, out, err = run(capsys, *get(env, running, "no-such-op", done), "--json")
    assert code == 3
    assert_one_error_line(err, "1 of 3 operations not found")
    document = json.loads(out)
    assert [r["operation_id"] for r in document] == [running, "no-such-op", done]
    assert all(set(r) == RECORD_KEYS for r in document)
    assert document[0]["state"] == "Running"
    assert document[0]["is_terminal"] is False
    assert document[1]["not_found"] is True
    assert document[2]["created_resource_ids"] == ["prog_9"]
    assert len(env.requests) == 1


def test_get_plain_table(env: SimulatedServer, capsys: pytest.CaptureFixture[str]) -> None:
    done = env.add_operation(duration=0.0, created_resource_ids=["prog_1", "task_1"])
    failed = env.add_operation(duration=0.0, outcome="failed", error_message="boom")
    code, out, err = run(capsys, *get(env, done, failed))
    assert (code, err) == (1, "")
    header, first, second = out.splitlines()
    assert header.split() == ["OPERATION", "STATE", "PROGRESS", "DETAILS"]
    assert first.split() == [done, "Succeeded", "100%", "prog_1,", "task_1"]
    assert second.startswith(failed)
    assert "Failed" in second
    assert "boom (OperationFailed)" in second
    assert header.index("STATE") == first.index("Succeeded") == second.index("Failed")


def test_get_all_found_exits_0(env: SimulatedServer, capsys: pytest.CaptureFixture[str]) -> None:
    running = env.add_operation(duration=float("inf"))
    code, out, _ = run(capsys, *get(env, running))
    assert code == 0
    assert "Running" in out


def test_get_unreachable_server_times_out_with_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCPOLL_TOKEN", SECRET)
    argv = ["get", "op", "--space", "default", "--base-url", "http://127.0.0.1:9"]
    code, out, err = run(capsys, *argv, "--timeout", "0.3")
    assert (code, out) == (3, "")
    assert_one_error_line(err, "timed out")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("command", ["watch", "get"])
def test_a_dead_server_exits_3_after_the_outage_timeout(
    command: str, backend: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCPOLL_TOKEN", SECRET)
    url = f"http://127.0.0.1:{closed_port()}"
    argv = [command, "op", "--space", "default", "--base-url", url, "--json"]
    started = time.monotonic()
    code, out, err = run(capsys, *argv, "--outage-timeout", "1", "--backend", backend)
    elapsed = time.monotonic() - started
    assert (code, out) == (3, "")
    # watch gives up when the timeout passes; get when its next retry would end after it.
    assert (1 if command == "watch" else 0) <= elapsed < 10
    # At most one warning while it retries, then one line saying why it gave up.
    *warnings, last = err.splitlines()
    assert len(warnings) <= 1
    assert all(line.startswith("asyncpoll: warning: ") for line in warnings)
    assert_one_error_line(last, "no status request succeeded in ", "(--outage-timeout 1 s)")
    assert "connect" in last.lower()


# -- demo and the terminal display ------------------------------------------------------


def test_demo_json_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo", "--ops", "20", "--seconds", "1", "--fail-rate", "0")
    assert (code, err) == (0, "")
    final = [r for r in json_lines(out) if r["is_terminal"]]
    assert len(final) == len({r["operation_id"] for r in final}) == 20
    assert {r["state"] for r in final} == {"Succeeded"}


def test_demo_with_scripted_failures_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--ops", "5", "--seconds", "0.2", "--fail-rate", "1", "--json"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    final = [r for r in json_lines(out) if r["is_terminal"]]
    assert [r["state"] for r in final] == ["Failed"] * 5


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    """Make the command believe stdout is a terminal and draw on a recording console."""
    console = Console(record=True, force_terminal=True, width=110, file=open(os.devnull, "w"))  # noqa: SIM115
    monkeypatch.setattr(_commands, "_stdout_is_terminal", lambda: True)
    monkeypatch.setattr(_commands, "_make_console", lambda: console)
    try:
        yield console
    finally:
        console.file.close()


def test_demo_display_and_summary(terminal: Console, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--ops", "12", "--seconds", "0.5", "--fail-rate", "0.5", "--seed", "3"]
    code, _, err = run(capsys, *argv)
    text = terminal.export_text()
    assert code == 0
    assert err == ""
    assert "Demo: 12 simulated operations" in text
    assert "all operations" in text
    assert "12/12" in text
    assert "━" in text  # a progress bar was drawn
    summary = text[text.rindex("Succeeded") :]
    assert "requests sent for 12 operations watched" in summary
    assert "Failed" in summary
    assert "Operation failed (OperationFailed)" in summary
    assert "Elapsed" in summary


def test_get_rich_table(
    env: SimulatedServer, terminal: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    done = env.add_operation(duration=0.0, created_resource_ids=["prog_7"])
    code, out, _ = run(capsys, *get(env, done))
    text = terminal.export_text()
    assert (code, out) == (0, "")
    assert "Operation" in text
    assert done in text
    assert "prog_7" in text


def test_terminal_display_needs_rich_but_json_does_not(
    env: SimulatedServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    op_id = env.add_operation(duration=0.0)
    code, out, err = run(capsys, *watch(env, op_id), "--json")
    assert code == 0
    assert json_lines(out)[-1]["is_terminal"]
    monkeypatch.setattr(_commands, "_stdout_is_terminal", lambda: True)
    code, out, err = run(capsys, *watch(env, op_id))
    assert (code, out) == (2, "")
    assert_one_error_line(err, "asyncpoll[cli]")
    code, out, err = run(capsys, *get(env, op_id))
    assert (code, err) == (0, "")
    assert "Succeeded" in out


# -- as a real process ------------------------------------------------------------------


def python_m(*argv: str) -> list[str]:
    return [sys.executable, "-m", "asyncpoll", *argv]


def test_importing_asyncpoll_does_not_import_rich() -> None:
    code = "import sys, asyncpoll, asyncpoll._cli; assert 'rich' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_process_writes_only_json_lines(env: SimulatedServer) -> None:
    ok = env.add_operation(duration=0.1)
    bad = env.add_operation(duration=0.1, outcome="failed")
    process = subprocess.run(
        python_m(*watch(env, ok, bad)), capture_output=True, text=True, timeout=20
    )
    assert process.returncode == 1
    assert process.stderr == ""
    assert len([r for r in json_lines(process.stdout) if r["is_terminal"]]) == 2


def test_process_auth_error_is_one_line_without_token(env: SimulatedServer) -> None:
    env.revoke_token(SECRET)
    process = subprocess.run(python_m(*get(env, "op")), capture_output=True, text=True, timeout=20)
    assert process.returncode == 2
    assert process.stdout == ""
    assert_one_error_line(process.stderr, "401")


def test_ctrl_c_exits_130_without_traceback() -> None:
    process = subprocess.Popen(
        python_m("demo", "--seconds", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        json.loads(process.stdout.readline())
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130
    assert "Traceback" not in err
    assert err == "asyncpoll: interrupted\n"


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_real_terminal_gets_progress_bars() -> None:
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100", "LINES": "30"}
    process = subprocess.Popen(
        python_m("demo", "--ops", "8", "--seconds", "0.3", "--fail-rate", "0"),
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
        os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode())
    assert "━" in text
    assert "8/8" in text
    assert "Succeeded  8 of 8" in text
    assert "{" not in text


# -- fleet mode (issue 12) ------------------------------------------------------------------


def test_demo_fleet_json_shows_the_fleet_sends_fewer_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``demo --fleet 2``: two member processes share polling through a real Redis; two
    independent ones poll alone. The simulators count the requests of each setup."""
    argv = ["demo", "--fleet", "2", "--ops", "60", "--seconds", "1", "--seed", "4", "--json"]
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    (line,) = out.splitlines()
    result = json.loads(line)
    fleet, alone = result["fleet"], result["alone"]
    assert len(fleet["per_process"]) == len(alone["per_process"]) == 2
    # What the processes say they sent is what the servers received.
    assert sum(fleet["per_process"]) == fleet["requests"]
    assert sum(alone["per_process"]) == alone["requests"]
    # Two processes alone send about twice what one fleet sends.
    assert fleet["requests"] * 1.5 <= alone["requests"]


def test_demo_fleet_text(terminal: Console, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--fleet", "2", "--ops", "20", "--seconds", "0.5", "--seed", "4"]
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    assert "2 processes, each waiting for the same 20 simulated operations" in out
    assert re.search(r"in one fleet \(Redis\) +\d+ requests +\(per process: \d+, \d+\)", out)
    assert re.search(r"each on its own +\d+ requests", out)


def test_watch_in_a_fleet(
    env: SimulatedServer, redis_url: str, terminal: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [env.add_operation(duration=0.2) for _ in range(3)]
    argv = [*watch(env, *ids), "--fleet", redis_url, "--namespace", "cli-watch"]
    code, _, err = run(capsys, *argv)
    text = terminal.export_text()
    assert (code, err) == (0, "")
    assert "through one Poller in a fleet" in text
    assert "1 member; this one polled default for the fleet" in text


def test_watch_fleet_bad_url_exits_2(
    env: SimulatedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *watch(env, "op1"), "--fleet", "http://127.0.0.1:6379")
    assert code == 2
    assert out == ""
    assert "redis must be a redis://, rediss:// or unix:// URL" in err
    assert len(err.strip().splitlines()) == 1
