"""The terminal display of the commands, drawn with rich (the ``asyncpoll[cli]`` extra).

Imported only when a person is watching: ``import asyncpoll`` and the JSON output never
need rich.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._models import AsyncOperation, OperationState
from .._poller import PollerStatistics, ProgressEvent
from ._output import Tally, clean, describe, format_percent

__all__ = ["WatchDisplay", "print_operations"]

_STYLES = {
    OperationState.NOT_STARTED: "dim",
    OperationState.RUNNING: "cyan",
    OperationState.SUCCEEDED: "green",
    OperationState.FAILED: "red",
    OperationState.CANCELED: "yellow",
    OperationState.UNKNOWN: "magenta",
}
_ID_WIDTH = 32
_MAX_FAILURES_LISTED = 10


def _state_text(operation: AsyncOperation | None) -> Text:
    if operation is None:
        return Text("not found", style="red")
    return Text(operation.state.value, style=_STYLES[operation.state])


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class WatchDisplay:
    """A live view of watched operations: one overall bar, then a row per operation in
    flight (the ``max_rows`` most recently changed), then a summary.

    Use it as a context manager around the watching; feed it with :meth:`event` and
    redraw it with :meth:`refresh` (from the event loop, never from another thread).
    """

    live = True

    def __init__(self, console: Console, tally: Tally, *, title: str, max_rows: int = 12) -> None:
        self._console = console
        self._tally = tally
        self._title = title
        self._max_rows = max_rows
        self._changed: dict[str, float] = {}
        self._stats: PollerStatistics | None = None
        self._started = time.monotonic()
        self._live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> WatchDisplay:
        self._started = time.monotonic()
        self._live.update(self, refresh=False)
        self._live.start(refresh=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()

    def event(self, event: ProgressEvent) -> None:
        """Note that ``event``'s operation changed (the tally is updated by the caller)."""
        if event.is_terminal:
            self._changed.pop(event.operation_id, None)
        else:
            self._changed[event.operation_id] = time.monotonic()

    def refresh(self, stats: PollerStatistics) -> None:
        """Redraw with the Poller's latest ``stats``."""
        self._stats = stats
        self._live.refresh()

    @property
    def elapsed(self) -> float:
        """Seconds since the display started."""
        return time.monotonic() - self._started

    def __rich__(self) -> RenderableType:
        tally = self._tally
        total = len(tally.ids)
        done = len(tally.final)
        failed = tally.failed_count
        width = self._console.width
        id_width = min(_ID_WIDTH, max((len(i) for i in tally.ids), default=8), max(8, width // 3))
        bar_width = max(10, min(40, width - id_width - 24))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=max(id_width, 14), no_wrap=True)
        grid.add_column(width=bar_width, no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_row(
            Text("all operations", style="bold"),
            ProgressBar(total=max(total, 1), completed=done if total else 1, width=bar_width),
            Text(f"{done}/{total}", style="bold"),
            Text("done", style="bold"),
        )
        recent = heapq.nlargest(self._max_rows, self._changed.items(), key=lambda kv: kv[1])
        for op_id, _ in recent:
            operation = tally.latest.get(op_id)
            if operation is None:
                continue
            percent = operation.percent_complete
            if operation.state is OperationState.NOT_STARTED:
                percent = 0.0
            bar = ProgressBar(total=100.0 if percent is not None else None, width=bar_width)
            bar.completed = percent or 0.0
            grid.add_row(
                Text(clean(op_id, id_width)),
                bar,
                Text(format_percent(percent)),
                _state_text(operation),
            )
        counts = Text.assemble(
            (f"{tally.succeeded} succeeded", "green"),
            "  ",
            (f"{failed} failed", "red" if failed else "dim"),
            style="",
        )
        in_flight = len(self._changed)
        if in_flight:
            counts.append(f"  {in_flight} in flight", style="cyan")
        if self._stats is not None:
            counts.append(f"  {_plural(self._stats.requests, 'request')} sent", style="dim")
        counts.append(f"  {self.elapsed:.1f} s", style="dim")
        parts: list[RenderableType] = [Text(self._title, style="bold"), grid]
        if in_flight > len(recent):
            parts.append(Text(f"… and {in_flight - len(recent)} more in flight", style="dim"))
        parts.append(counts)
        return Group(*parts)

    def summary(self, stats: PollerStatistics) -> None:
        """Print the outcome below the (stopped) live view."""
        tally = self._tally
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column()
        total = len(tally.ids)
        grid.add_row(Text("Succeeded", style="green"), Text(f"{tally.succeeded} of {total}"))
        failed = tally.failed
        grid.add_row(Text("Failed", style="red" if failed else ""), Text(str(len(failed))))
        if tally.not_found:
            grid.add_row(Text("Not found", style="red"), Text(str(len(tally.not_found))))
        unfinished = tally.unfinished
        if unfinished:
            grid.add_row(Text("Unfinished", style="yellow"), Text(str(len(unfinished))))
        grid.add_row(
            Text("Requests"),
            Text(
                f"{_plural(stats.requests, 'request')} sent for "
                f"{_plural(total, 'operation')} watched"
            ),
        )
        if stats.fleet_members is not None:
            grid.add_row(Text("Fleet"), Text(_fleet_line(stats)))
        grid.add_row(Text("Elapsed"), Text(f"{self.elapsed:.1f} s"))
        self._console.print()
        self._console.print(grid)
        listed = failed[:_MAX_FAILURES_LISTED]
        for operation in listed:
            self._console.print(
                Text.assemble(
                    "  ",
                    (clean(operation.id, _ID_WIDTH), "bold"),
                    " ",
                    _state_text(operation),
                    ": ",
                    describe(operation) or "no error message",
                )
            )
        if len(failed) > len(listed):
            self._console.print(
                Text(f"  … and {len(failed) - len(listed)} more failed", style="dim")
            )


def print_operations(
    console: Console,
    ids: Sequence[str],
    found: dict[str, AsyncOperation],
) -> None:
    """Print ``get``'s table: one row per ID in input order, "not found" for the absent."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("Operation", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Progress", justify="right", no_wrap=True)
    table.add_column("Details")
    for op_id in ids:
        operation = found.get(op_id)
        percent = None if operation is None else operation.percent_complete
        table.add_row(
            Text(clean(op_id, 64)),
            _state_text(operation),
            Text(format_percent(percent)),
            Text(describe(operation) if operation is not None else ""),
        )
    console.print(table)


def _fleet_line(stats: PollerStatistics) -> str:
    if not stats.fleet_connected:
        return "Redis unreachable at the end: polled on our own"
    members = _plural(stats.fleet_members or 1, "member")
    led = ", ".join(clean(space) for space in stats.leading) or "no space"
    return f"{members}; this one polled {led} for the fleet"
