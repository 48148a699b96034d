"""The benchmark harness cannot rot: its smallest case runs and its figures are well formed.

Timings are not asserted here (they belong in ``benchmarks/``); only that every contender
saw every operation and that each figure is present, finite and non-negative.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="the harness reads /proc (Linux)"
)


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_run", BENCHMARKS / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Every contender but the baseline polls; the list is run.py's own, not a copy.
_RUN = _load_run()
POLLING = tuple(name for name in _RUN.ALL if name != _RUN.BASELINE)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "figures.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text()), completed.stdout


def _number(figures: dict[str, Any], key: str) -> float:
    value = figures[key]
    assert isinstance(value, int | float), (key, value)
    assert not isinstance(value, bool), (key, value)
    assert math.isfinite(value), (key, value)
    assert value >= 0, (key, value)
    return float(value)


def test_every_contender_sees_every_operation(smoke: tuple[dict[str, Any], str]) -> None:
    report, _ = smoke
    [run] = report["runs"]
    assert set(run["contenders"]) == {*POLLING, "idle-tasks"}
    for name, figures in run["contenders"].items():
        assert figures["finished"], (name, figures.get("note"))
        assert figures["observed"] == figures["operations"] == run["n"]


def test_figures_are_well_formed(smoke: tuple[dict[str, Any], str]) -> None:
    report, _ = smoke
    [run] = report["runs"]
    assert run["bound"] >= 1
    for name in POLLING:
        figures = run["contenders"][name]
        assert figures["requests"] >= 1
        # The client counted the requests the simulator received (no failures here).
        assert figures["client_requests"] == figures["requests"], name
        assert figures["statuses_observed"] >= run["n"]
        for key in (
            "cpu_seconds",
            "cpu_per_status_us",
            "latency_p50",
            "latency_p99",
            "rss_growth_kib",
            "rss_growth_per_op_bytes",
            "loop_lag_p99",
            "loop_lag_max",
            "server_cpu_seconds",
            "wall_seconds",
            "gc_seconds",
        ):
            _number(figures, key)
        assert figures["latency_p50"] <= figures["latency_p99"] <= figures["latency_max"]
    watch = run["contenders"]["asyncpoll-watch"]
    assert watch["terminal_events"] == run["n"]
    assert watch["events"] >= watch["terminal_events"]
    _number(run["contenders"]["idle-tasks"], "rss_growth_per_op_bytes")
    floor = run["floor"]
    assert floor["bodies"] == run["contenders"]["asyncpoll"]["server"]["statuses"]["200"]
    assert floor["entries"] == run["contenders"]["asyncpoll"]["statuses_observed"]
    _number(floor, "orjson_seconds")
    _number(floor, "per_status_us")
    # The rebuilt bodies are the ones the simulator served.
    assert floor["checked_entries"] > 0
    assert floor["mismatched_entries"] == 0


def test_targets_and_table_are_reported(smoke: tuple[dict[str, Any], str]) -> None:
    report, stdout = smoke
    [run] = report["runs"]
    names = [t["target"] for t in run["targets"]]
    assert "requests vs lower bound" in names
    assert "CPU per status vs orjson floor" in names
    issue10 = {(t["contender"], t["target"]) for t in run["targets"] if t["issue"] == 10}
    assert ("asyncpoll", "CPU per status vs anchor") in issue10
    assert ("asyncpoll", "CPU per status below aiodataloader") in issue10
    for name in ("asyncpoll-completed", "asyncpoll-watch"):
        assert (name, "CPU per status vs anchor-bulk") in issue10
        assert (name, "RSS growth per op") in issue10
    for name in ("asyncpoll", "asyncpoll-completed", "asyncpoll-watch"):
        assert (name, "keeps up: requests vs lower bound") in issue10
        assert (name, "start-up: loop lag max") in issue10
    assert all(isinstance(t["pass"], bool) and t["measured"] for t in run["targets"])
    assert "| contender | requests |" in stdout
    for name in POLLING:
        assert f"| {name} |" in stdout
    assert report["machine"]["nproc"] >= 1
    assert report["markdown"] in stdout


@pytest.mark.parametrize(
    ("completions", "interval", "batch", "expected"),
    [
        ([], 1.0, 100, 0),
        ([0.0], 1.0, 100, 1),
        # Rounds [0,1): 3 active -> 2 requests; [1,2): 2 -> 1; [2,3): 1 -> 1.
        ([0.5, 1.5, 2.5], 1.0, 2, 4),
        # An operation completing exactly at a round's start is still active in it.
        ([1.0, 1.0], 1.0, 1, 4),
        ([0.2] * 250, 0.5, 100, 3),
    ],
)
def test_lower_bound(completions: list[float], interval: float, batch: int, expected: int) -> None:
    assert _load_run().lower_bound(completions, interval, batch) == expected


def test_observing_bound_counts_the_poll_after_completion() -> None:
    run = _load_run()
    # Completing in [0, 1): polled at 0 (still running) and at 1 (seen done).
    assert run.observing_bound([0.5], 1.0, 100) == 2
    assert run.observing_bound([0.5, 1.5, 2.5], 1.0, 2) == 6
    assert run.observing_bound([], 1.0, 100) == 0


def test_repeat_reports_min_and_median_of_each_figure_and_ratio() -> None:
    spec = importlib.util.spec_from_file_location("benchmarks_repeat", BENCHMARKS / "repeat.py")
    assert spec is not None
    assert spec.loader is not None
    repeat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repeat)

    def run(ours: float, anchor: float) -> dict[str, Any]:
        figures = {"requests": 100, "latency_p99": 1.0, "loop_lag_max": 0.05}
        return {
            "n": 10,
            "bound": 100,
            "contenders": {
                "asyncpoll": {**figures, "cpu_per_status_us": ours},
                "anchor": {**figures, "cpu_per_status_us": anchor},
            },
        }

    text = repeat.table(10, [run(30.0, 10.0), run(20.0, 10.0), run(45.0, 15.0)])
    assert "| asyncpoll | 20.0 / 30.0 | 1.00 / 1.00 | 1000 / 1000 | 50 / 50 | - |" in text
    assert "| anchor | 10.0 / 10.0 |" in text
    # Ratios are taken within each run (3.0, 2.0, 3.0), then summarised.
    assert "wait CPU vs anchor (target <= 1.25 at 10,000): 2.00 / 3.00x" in text
