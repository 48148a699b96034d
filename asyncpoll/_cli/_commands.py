"""The commands of ``asyncpoll``: ``watch``, ``demo`` and ``get``, and what they share."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import anyio

from .._errors import AsyncpollError, is_transient
from .._fleet import RedisFleet
from .._models import AsyncOperation, OperationState
from .._poller import Poller, PollerStatistics, PollInterval, ProgressEvent
from .._retry import RetryPolicy
from .._session import Session
from .._validation import validate_operation_ids
from ._exit import ExitCode
from ._output import (
    Tally,
    clean,
    describe,
    format_percent,
    plain_table,
    record,
    write_json_line,
)
from ._parser import PROG, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from ._display import WatchDisplay

__all__ = ["COMMANDS", "print_error"]


# -- shared set-up --------------------------------------------------------------------------


@contextlib.contextmanager
def _outage(seconds: float) -> Iterator[None]:
    """Turn the transient error that ends a command into the one line of an outage: only
    ``--outage-timeout`` hands a command a transient error (exit 3, as any AsyncpollError)."""
    started = time.monotonic()
    try:
        yield
    except AsyncpollError as exc:
        if not is_transient(exc):
            raise
        raise AsyncpollError(
            f"no status request succeeded in {time.monotonic() - started:.1f} s of retries "
            f"(--outage-timeout {seconds:g} s); last error: {exc}"
        ) from None


def _stdout_is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty is not None and isatty())


def _make_console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(args.json) or not _stdout_is_terminal()


def _require_rich() -> None:
    try:
        importlib.import_module("rich")
    except ImportError:
        raise UsageError(
            "the terminal display needs rich: pip install 'asyncpoll[cli]' (or pass --json)"
        ) from None


def _check_backend(backend: str) -> None:
    if backend == "trio" and not all(
        importlib.util.find_spec(name) is not None for name in ("trio", "httpx")
    ):
        raise UsageError("--backend trio needs trio and httpx: pip install 'asyncpoll[trio]'")


def _session(args: argparse.Namespace, retry: RetryPolicy | None = None) -> Session:
    token = os.environ.get(args.token_env, "")
    if not token.strip():
        raise UsageError(
            f"no token: set the environment variable {args.token_env} "
            "(or name another one with --token-env)"
        )
    try:
        return Session(
            args.base_url,
            token=token.strip(),
            space_id=args.space,
            allow_insecure_http=args.insecure_http,
            retry=retry,
        )
    except ValueError as exc:
        # Session's messages never include the token.
        raise UsageError(str(exc)) from None


def _ids(args: argparse.Namespace) -> list[str]:
    try:
        return validate_operation_ids(args.ids)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def print_error(message: str) -> None:
    print(f"{PROG}: error: {clean(message, 500)}", file=sys.stderr, flush=True)


# -- watching (watch and demo) -------------------------------------------------------------


class _View(Protocol):
    """Where progress goes: JSON lines, or the rich display."""

    live: bool

    def __enter__(self) -> object: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def event(self, event: ProgressEvent) -> None: ...

    def refresh(self, stats: PollerStatistics) -> None: ...


class _JsonLines:
    """One JSON object per event per line on stdout."""

    live = False

    def __enter__(self) -> _JsonLines:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def event(self, event: ProgressEvent) -> None:
        write_json_line(
            sys.stdout,
            record(
                event.operation_id,
                event.space_id,
                event.operation,
                is_terminal=event.is_terminal,
            ),
        )

    def refresh(self, stats: PollerStatistics) -> None:
        return None


async def _tick(view: _View, poller: Poller) -> None:
    while True:
        view.refresh(poller.statistics())
        await anyio.sleep(0.1)


async def _follow(
    session: Session,
    tally: Tally,
    view: _View,
    *,
    interval: PollInterval,
    not_found_grace: float,
    timeout: float | None,
    outage_timeout: float,
    fleet: RedisFleet | None,
) -> PollerStatistics:
    """Watch ``tally.ids`` through one Poller, feeding ``tally`` and ``view``."""
    poller = Poller(
        session,
        interval=interval,
        not_found_grace=not_found_grace,
        outage_timeout=outage_timeout,
        fleet=fleet,
    )
    async with session, poller:
        with view:
            async with anyio.create_task_group() as tg:
                if view.live:
                    tg.start_soon(_tick, view, poller)
                try:
                    with _outage(outage_timeout):
                        async with poller.watch(tally.ids, timeout=timeout) as events:
                            async for event in events:
                                tally.add(event)
                                view.event(event)
                except TimeoutError:
                    tally.timed_out = True
                finally:
                    tg.cancel_scope.cancel()
            view.refresh(poller.statistics())
        return poller.statistics()


def _run_watch(
    args: argparse.Namespace,
    session: Session,
    ids: list[str],
    *,
    interval: PollInterval,
    not_found_grace: float,
    timeout: float | None,
    outage_timeout: float,
    title: str,
    fleet: RedisFleet | None = None,
) -> int:
    """Watch ``ids``, report on stdout, and return the exit status."""
    tally = Tally(ids)
    started = time.monotonic()
    view: _View
    display: WatchDisplay | None = None
    if _wants_json(args):
        view = _JsonLines()
    else:
        from ._display import WatchDisplay

        view = display = WatchDisplay(_make_console(), tally, title=title)
    follow = functools.partial(
        _follow,
        session,
        tally,
        view,
        interval=interval,
        not_found_grace=not_found_grace,
        timeout=timeout,
        outage_timeout=outage_timeout,
        fleet=fleet,
    )
    stats = anyio.run(follow, backend=args.backend)
    if display is not None:
        display.summary(stats)
    if tally.timed_out:
        print_error(
            f"timed out after {time.monotonic() - started:.1f} s with "
            f"{len(tally.unfinished)} of {len(tally.ids)} operations unfinished"
        )
    elif tally.not_found:
        missing = tally.not_found
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        print_error(
            f"{len(missing)} of {len(tally.ids)} operations not found in space "
            f"{session.space_id!r} after {not_found_grace:g} s: {', '.join(missing[:5])}{more}"
        )
    return tally.exit_code()


# -- commands ---------------------------------------------------------------------------


def _cmd_watch(args: argparse.Namespace) -> int:
    ids = _ids(args)
    if args.max_interval < args.interval:
        raise UsageError("--max-interval must be at least --interval")
    _check_backend(args.backend)
    if not _wants_json(args):
        _require_rich()
    # The Poller retries at every turn: the Session gives up early enough that the last
    # error is known when the outage timeout passes.
    session = _session(args, RetryPolicy(timeout=args.outage_timeout / 2))
    fleet = _fleet(args)
    return _run_watch(
        args,
        session,
        ids,
        interval=PollInterval(initial=args.interval, maximum=args.max_interval),
        not_found_grace=args.not_found_grace,
        timeout=args.timeout,
        outage_timeout=args.outage_timeout,
        title=f"Watching {len(ids)} operations in space {clean(args.space)} through one Poller"
        + (" in a fleet" if fleet is not None else ""),
        fleet=fleet,
    )


def _fleet(args: argparse.Namespace) -> RedisFleet | None:
    if args.fleet is None:
        return None
    if importlib.util.find_spec("coredis") is None:
        raise UsageError("--fleet needs coredis: pip install 'asyncpoll[fleet]'")
    try:
        return RedisFleet(args.fleet, namespace=args.namespace)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    _check_backend(args.backend)
    if args.fleet is not None:
        return _demo_fleet(args)
    if not _wants_json(args):
        _require_rich()
    from ..testing import SimulatedServer

    with SimulatedServer(seed=args.seed, log_limit=0) as server:
        token = server.token
        assert token is not None
        ids = server.add_operations(args.ops, window=args.seconds, fail_rate=args.fail_rate)
        session = Session(server.url, token=token)
        code = _run_watch(
            args,
            session,
            ids,
            interval=PollInterval(initial=0.25, maximum=1.0),
            not_found_grace=30.0,
            timeout=None,
            outage_timeout=60.0,
            title=(
                f"Demo: {args.ops} simulated operations ({args.fail_rate:.0%} set to fail) "
                f"on {server.url}, watched through one Poller"
            ),
        )
    # Scripted failures are the demo working as designed, not a failed run.
    return ExitCode.OK if code == ExitCode.FAILED else code


def _demo_fleet(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("coredis") is None:
        raise UsageError("demo --fleet needs coredis: pip install 'asyncpoll[fleet]'")
    from ..testing._redis import RedisUnavailable
    from ._fleet_demo import run_demo

    try:
        result = run_demo(args.fleet, args.ops, args.seconds, args.seed, args.backend)
    except RedisUnavailable as exc:
        raise UsageError(f"demo --fleet: {exc}") from None
    if _wants_json(args):
        write_json_line(sys.stdout, result)
        return ExitCode.OK
    print(
        f"{args.fleet} processes, each waiting for the same {args.ops} simulated operations "
        f"(finishing within {args.seconds:g} s):"
    )
    for name, setup in (
        ("in one fleet (Redis)", result["fleet"]),
        ("each on its own", result["alone"]),
    ):
        each = ", ".join(str(n) for n in setup["per_process"])
        print(f"  {name:<22} {setup['requests']:>6} requests   (per process: {each})")
    return ExitCode.OK


async def _get(
    session: Session, ids: list[str], timeout: float | None, outage_timeout: float
) -> list[AsyncOperation]:
    async with session:
        with anyio.fail_after(timeout), _outage(outage_timeout):
            return await session.get_operations(ids)


def _cmd_get(args: argparse.Namespace) -> int:
    ids = _ids(args)
    _check_backend(args.backend)
    # Retry transient failures until --outage-timeout, however many tries that takes.
    session = _session(args, RetryPolicy(attempts=1_000_000, timeout=args.outage_timeout))
    operations = anyio.run(
        _get, session, ids, args.timeout, args.outage_timeout, backend=args.backend
    )
    found = {op.id: op for op in operations}
    space = session.space_id
    if args.json:
        document = [record(op_id, space, found.get(op_id)) for op_id in ids]
        sys.stdout.write(_json_list(document))
        sys.stdout.flush()
    elif _stdout_is_terminal() and importlib.util.find_spec("rich") is not None:
        from ._display import print_operations

        print_operations(_make_console(), ids, found)
    else:
        rows = []
        for op_id in ids:
            operation = found.get(op_id)
            state = operation.state.value if operation is not None else "not found"
            percent = operation.percent_complete if operation is not None else None
            details = describe(operation) if operation is not None else ""
            rows.append([clean(op_id, 64), state, format_percent(percent), details])
        sys.stdout.write(plain_table(["OPERATION", "STATE", "PROGRESS", "DETAILS"], rows))
        sys.stdout.flush()
    missing = [op_id for op_id in ids if op_id not in found]
    if missing:
        print_error(f"{len(missing)} of {len(ids)} operations not found in space {space!r}")
        return ExitCode.UNKNOWN
    if any(op.state in (OperationState.FAILED, OperationState.CANCELED) for op in operations):
        return ExitCode.FAILED
    return ExitCode.OK


def _json_list(document: list[dict[str, object]]) -> str:
    import json

    return json.dumps(document, indent=2) + "\n"


#: Each command's function, by the name ``build_parser`` gives it: it returns the status.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _cmd_demo,
    "watch": _cmd_watch,
    "get": _cmd_get,
}
