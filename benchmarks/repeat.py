"""Min and median over several runs of ``benchmarks/run.py``, side by side.

Run ``run.py`` a few times with ``--json`` (same N, window and contenders), then::

    python benchmarks/repeat.py results/r1.json results/r2.json results/r3.json

prints, per N, a table of each contender's figures as ``min / median`` over the runs,
and issue 10's ratios (asyncpoll against the anchors), each computed within one run (the
contenders of a run share its machine state) and then summarised the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# (column, figure of one contender in one run's summary, format)
Figure = Callable[[dict[str, Any], dict[str, Any]], float | None]
COLUMNS: list[tuple[str, Figure, str]] = [
    ("CPU us/status", lambda c, s: c.get("cpu_per_status_us"), "{:.1f}"),
    ("x bound", lambda c, s: c["requests"] / s["bound"] if s.get("bound") else None, "{:.2f}"),
    ("p99 ms", lambda c, s: _ms(c.get("latency_p99")), "{:.0f}"),
    ("lag max ms", lambda c, s: _ms(c.get("loop_lag_max")), "{:.0f}"),
    ("RSS B/op", lambda c, s: c.get("rss_growth_per_op_bytes"), "{:.0f}"),
]

# Issue 10's ratios: (name, asyncpoll contender, the contender it is measured against)
RATIOS = [
    ("wait CPU vs anchor (target <= 1.25 at 10,000)", "asyncpoll", "anchor"),
    (
        "as_completed CPU vs anchor-bulk (target <= 1.25 at 100,000)",
        "asyncpoll-completed",
        "anchor-bulk",
    ),
    ("watch CPU vs anchor-bulk (target <= 1.25 at 100,000)", "asyncpoll-watch", "anchor-bulk"),
    ("wait CPU vs aiodataloader (target < 1)", "asyncpoll", "aiodataloader"),
    (
        "trio path (httpx) CPU vs asyncio path, as_completed (target <= 1.5)",
        "asyncpoll-trio",
        "asyncpoll-completed",
    ),
]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _spread(values: Sequence[float | None], fmt: str) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    low, middle = min(present), statistics.median(present)
    return f"{fmt.format(low)} / {fmt.format(middle)}"


def table(n: int, summaries: list[dict[str, Any]]) -> str:
    """The min/median table of one N over ``summaries`` (one per run)."""
    names: list[str] = []
    for summary in summaries:
        names += [name for name in summary["contenders"] if name not in names]
    lines = [
        f"N = {n:,}, {len(summaries)} runs, min / median:",
        "",
        "| contender | " + " | ".join(col for col, _, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name in names:
        cells = []
        for _, figure, fmt in COLUMNS:
            values = [
                figure(s["contenders"][name], s) if name in s["contenders"] else None
                for s in summaries
            ]
            cells.append(_spread(values, fmt))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = []
    for label, ours, anchor in RATIOS:
        found: list[float | None] = []
        for s in summaries:
            a, b = s["contenders"].get(ours), s["contenders"].get(anchor)
            if a and b and a.get("cpu_per_status_us") and b.get("cpu_per_status_us"):
                found.append(a["cpu_per_status_us"] / b["cpu_per_status_us"])
        if found:
            ratios.append(f"- {label}: {_spread(found, '{:.2f}')}x")
    if ratios:
        lines += ["", "Ratios, each within one run (min / median):", "", *ratios]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="run.py --json files")
    args = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.results]
    by_n: dict[int, list[dict[str, Any]]] = {}
    for report in reports:
        for summary in report["runs"]:
            by_n.setdefault(summary["n"], []).append(summary)
    machines = {json.dumps(r["machine"], sort_keys=True) for r in reports}
    for info in sorted(machines):
        machine = json.loads(info)
        print(
            f"machine: {machine['nproc']} cores, {machine['cpu']}, Python {machine['python']}; "
            f"asyncpoll at {machine['asyncpoll']}"
        )
    for n in sorted(by_n):
        print("\n" + table(n, by_n[n]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
