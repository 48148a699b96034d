"""The ``asyncpoll`` command (also ``python -m asyncpoll``).

Commands::

    asyncpoll demo  [--ops N] [--fail-rate R] [--seconds S] [--seed N] [--json]
    asyncpoll watch ID... --space S [--base-url URL] [--token-env VAR] [--json]
                    [--timeout SEC] [--outage-timeout SEC] [--not-found-grace SEC]
                    [--interval SEC] [--max-interval SEC] [--insecure-http]
    asyncpoll get   ID... --space S [--base-url URL] [--token-env VAR] [--json]
                    [--timeout SEC] [--outage-timeout SEC] [--insecure-http]

Every command also takes ``--backend {asyncio,trio}`` and ``-v``. The token is read from
an environment variable (``ASYNCPOLL_TOKEN``, or the one ``--token-env`` names), never
from an argument. ``watch`` and ``demo`` draw live progress bars (rich, the
``asyncpoll[cli]`` extra) when stdout is a terminal; with ``--json``, or when stdout is
not a terminal, they write one JSON object per progress event per line and nothing else
on stdout. ``get`` prints a table, or a JSON list with ``--json``. Errors are one line on
stderr, never a traceback, never the token.

Exit codes (the same text is in ``asyncpoll --help``):

===  ========================================================================
0    every operation succeeded (``get``: none failed, even if some still run)
1    some operation failed or was canceled
2    usage error, missing token, or the server refused access: authentication
     (401), permission (403), an unknown space (404) or a refused ID (400)
3    outcome unknown: ``--timeout`` passed, an operation was not found, or no
     status request succeeded for ``--outage-timeout`` seconds (default 60: the
     server was unreachable or unusable)
130  interrupted (Ctrl-C)
===  ========================================================================

When several apply, the larger code wins (3 over 1). Two codes mark accidents rather
than outcomes: 141 when stdout was closed early (a broken pipe), 70 for an internal
error (a bug in asyncpoll: please report it). ``demo`` exits 0 once it has shown every
simulated operation to its end: the failures it shows are part of its script, not of
the run (2, 3 and 130 keep their meaning).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Protocol

import anyio

from .._errors import (
    APIError,
    AsyncpollError,
    AuthenticationError,
    PermissionDeniedError,
    SpaceNotFoundError,
    is_transient,
)
from .._models import AsyncOperation, OperationState
from .._poller import Poller, PollerStatistics, PollInterval, ProgressEvent
from .._retry import RetryPolicy
from .._session import DEFAULT_BASE_URL, Session
from .._validation import validate_operation_ids
from ._output import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    Tally,
    clean,
    describe,
    format_percent,
    plain_table,
    record,
    write_json_line,
)

if TYPE_CHECKING:
    from rich.console import Console

    from ._display import WatchDisplay

__all__ = ["main"]

logger = logging.getLogger("asyncpoll")

PROG = "asyncpoll"
DEFAULT_TOKEN_ENV = "ASYNCPOLL_TOKEN"

EXIT_CODES = """\
exit codes:
  0    every operation succeeded (get: none failed, even if some still run)
  1    some operation failed or was canceled
  2    usage error, missing token, or the server refused access: authentication
       (401), permission (403), an unknown space (404) or a refused ID (400)
  3    outcome unknown: --timeout passed, an operation was not found, or no
       status request succeeded for --outage-timeout seconds (default 60: the
       server was unreachable or unusable)
  130  interrupted (Ctrl-C)
When several apply, the larger code wins (3 over 1). 141: stdout was closed
early (broken pipe); 70: internal error (a bug: please report it)."""

_DEMO_EPILOG = """\
The demo needs no network and no credentials: it serves the operations from the
built-in simulator on 127.0.0.1. It exits 0 once every simulated operation has
reached its end, even the ones scripted to fail (--fail-rate); 130 on Ctrl-C."""

_TOKEN_HELP = (
    "environment variable holding the bearer token (default: %(default)s); the token is "
    "never taken from an argument"
)


class _UsageError(Exception):
    """A mistake of the caller's: exit 2 with this message."""


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


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (exit 2), raised rather than exited."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _bounded(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number within ``low`` and ``high`` (NaN refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


_seconds = _bounded(0.0, 1e9)
_rate = _bounded(0.0, 1.0)


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100000, got {text}")
    return value


def _parser() -> _Parser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description=(
            "Follow asynchronous operations of the Programs API: live progress bars on a "
            "terminal, JSON lines for scripts. Start with 'asyncpoll demo'."
        ),
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"asyncpoll {__version__}")

    common = _Parser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        help="write JSON (the default when stdout is not a terminal)",
    )
    common.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop to run on (default: %(default)s; trio needs asyncpoll[trio])",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log every request on stderr")

    remote = _Parser(add_help=False)
    remote.add_argument("ids", nargs="+", metavar="ID", help="operation IDs")
    remote.add_argument("--space", required=True, help="space ID ('default' or 7-22 characters)")
    remote.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help="API base URL (default: %(default)s)"
    )
    remote.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, metavar="VAR", help=_TOKEN_HELP)
    remote.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=None,
        metavar="SEC",
        help="give up after SEC seconds and exit 3 (default: no limit)",
    )
    remote.add_argument(
        "--outage-timeout",
        type=_positive_seconds,
        default=60.0,
        metavar="SEC",
        help="exit 3 when no status request has succeeded for SEC seconds, retrying "
        "until then (default: %(default)g)",
    )
    remote.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain http:// to a host that is not loopback (sends the token "
        "unencrypted; loopback http needs no flag)",
    )

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="watch simulated operations on a built-in server (no network, no token)",
        description=(
            "Start the built-in simulator on loopback with N operations finishing at random "
            "times within S seconds, and watch them all through one Poller."
        ),
        epilog=f"{_DEMO_EPILOG}\n\n{EXIT_CODES}",
        formatter_class=formatter,
    )
    demo.add_argument(
        "--ops", type=_count, default=200, metavar="N", help="operations (default: 200)"
    )
    demo.add_argument(
        "--fail-rate",
        type=_rate,
        default=0.1,
        metavar="R",
        help="fraction of them that fail, 0 to 1 (default: 0.1)",
    )
    demo.add_argument(
        "--seconds",
        type=_positive_seconds,
        default=10.0,
        metavar="S",
        help="they finish within S seconds (default: 10)",
    )
    demo.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    demo.set_defaults(handler=_cmd_demo)

    watch = commands.add_parser(
        "watch",
        parents=[common, remote],
        help="follow operations until every one has ended",
        description=(
            "Poll the operations (in batched requests, through one Poller) until every one "
            "has ended. On a terminal: progress bars, then a summary. Otherwise, or with "
            "--json: one JSON object per progress event per line, and nothing else on "
            'stdout; the last line of each ID has "is_terminal": true.'
        ),
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    watch.add_argument(
        "--not-found-grace",
        type=_seconds,
        default=30.0,
        metavar="SEC",
        help="report an ID not found after it stays absent this long (default: 30)",
    )
    watch.add_argument(
        "--interval",
        type=_positive_seconds,
        default=1.0,
        metavar="SEC",
        help="first polling interval of each operation (default: 1)",
    )
    watch.add_argument(
        "--max-interval",
        type=_positive_seconds,
        default=30.0,
        metavar="SEC",
        help="the interval of an operation that does not change grows up to this (default: 30)",
    )
    watch.set_defaults(handler=_cmd_watch)

    get = commands.add_parser(
        "get",
        parents=[common, remote],
        help="show the status of operations (one batched query)",
        description=(
            "Query the operations once, in one batched query, and print a table (a JSON "
            "list with --json). IDs the server does not return are shown as not found; new "
            "operations can take a moment to become visible."
        ),
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    get.set_defaults(handler=_cmd_get)
    return parser


# -- shared set-up --------------------------------------------------------------------------


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
        raise _UsageError(
            "the terminal display needs rich: pip install 'asyncpoll[cli]' (or pass --json)"
        ) from None


def _check_backend(backend: str) -> None:
    if backend == "trio" and not all(
        importlib.util.find_spec(name) is not None for name in ("trio", "httpx")
    ):
        raise _UsageError("--backend trio needs trio and httpx: pip install 'asyncpoll[trio]'")


def _session(args: argparse.Namespace, retry: RetryPolicy | None = None) -> Session:
    token = os.environ.get(args.token_env, "")
    if not token.strip():
        raise _UsageError(
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
        raise _UsageError(str(exc)) from None


def _ids(args: argparse.Namespace) -> list[str]:
    try:
        return validate_operation_ids(args.ids)
    except (TypeError, ValueError) as exc:
        raise _UsageError(str(exc)) from None


def _error(message: str) -> None:
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
) -> PollerStatistics:
    """Watch ``tally.ids`` through one Poller, feeding ``tally`` and ``view``."""
    poller = Poller(
        session,
        interval=interval,
        not_found_grace=not_found_grace,
        outage_timeout=outage_timeout,
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
    )
    stats = anyio.run(follow, backend=args.backend)
    if display is not None:
        display.summary(stats)
    if tally.timed_out:
        _error(
            f"timed out after {time.monotonic() - started:.1f} s with "
            f"{len(tally.unfinished)} of {len(tally.ids)} operations unfinished"
        )
    elif tally.not_found:
        missing = tally.not_found
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        _error(
            f"{len(missing)} of {len(tally.ids)} operations not found in space "
            f"{session.space_id!r} after {not_found_grace:g} s: {', '.join(missing[:5])}{more}"
        )
    return tally.exit_code()


# -- commands ---------------------------------------------------------------------------


def _cmd_watch(args: argparse.Namespace) -> int:
    ids = _ids(args)
    if args.max_interval < args.interval:
        raise _UsageError("--max-interval must be at least --interval")
    _check_backend(args.backend)
    if not _wants_json(args):
        _require_rich()
    # The Poller retries at every turn: the Session gives up early enough that the last
    # error is known when the outage timeout passes.
    session = _session(args, RetryPolicy(timeout=args.outage_timeout / 2))
    return _run_watch(
        args,
        session,
        ids,
        interval=PollInterval(initial=args.interval, maximum=args.max_interval),
        not_found_grace=args.not_found_grace,
        timeout=args.timeout,
        outage_timeout=args.outage_timeout,
        title=f"Watching {len(ids)} operations in space {clean(args.space)} through one Poller",
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    _check_backend(args.backend)
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
    return EXIT_OK if code == EXIT_FAILED else code


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
        _error(f"{len(missing)} of {len(ids)} operations not found in space {space!r}")
        return EXIT_UNKNOWN
    if any(op.state in (OperationState.FAILED, OperationState.CANCELED) for op in operations):
        return EXIT_FAILED
    return EXIT_OK


def _json_list(document: list[dict[str, object]]) -> str:
    import json

    return json.dumps(document, indent=2) + "\n"


# -- errors and the entry point ----------------------------------------------------------


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _classify(exc: BaseException, token_env: str | None) -> tuple[int, str | None]:
    """The exit status and the message of the one line to print (``None``: print nothing)
    for an exception that ended a command."""
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return EXIT_INTERRUPTED, f"{PROG}: interrupted"
    for leaf in leaves:
        if isinstance(leaf, BrokenPipeError):
            return EXIT_PIPE, None
    leaf = leaves[0]
    if isinstance(leaf, _UsageError):
        return EXIT_USAGE, str(leaf)
    if isinstance(leaf, AuthenticationError):
        hint = f" (the token comes from ${token_env})" if token_env else ""
        return EXIT_USAGE, f"{leaf}{hint}"
    if isinstance(leaf, PermissionDeniedError | SpaceNotFoundError):
        return EXIT_USAGE, str(leaf)
    if isinstance(leaf, APIError) and leaf.status == 400:
        return EXIT_USAGE, str(leaf)
    if isinstance(leaf, TimeoutError):
        return EXIT_UNKNOWN, "timed out"
    if isinstance(leaf, AsyncpollError):
        # Not found, or transport and server errors that outlasted the retries.
        return EXIT_UNKNOWN, str(leaf)
    return EXIT_INTERNAL, f"internal error: {type(leaf).__name__}: {leaf} (please report it)"


class _LogToStderr(logging.Handler):
    """Library log records as ``asyncpoll: warning: ...`` lines on (the current) stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = clean(self.format(record), 500)
            print(f"{PROG}: {record.levelname.lower()}: {message}", file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asyncpoll`` command with ``argv`` (default: ``sys.argv[1:]``) and return
    its exit status (see the module docstring for the codes). It does not raise: an error
    becomes one line on stderr and a status; ``--help`` and ``--version`` return 0.

    The console script and ``python -m asyncpoll`` pass the status to :func:`sys.exit`.
    """
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

    handler = _LogToStderr(logging.DEBUG if args.verbose else logging.WARNING)
    saved_level = logger.level
    logger.addHandler(handler)
    if args.verbose:
        logger.setLevel(logging.DEBUG)
    try:
        status: int = args.handler(args)
        return status
    except BaseException as exc:
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        code, message = _classify(exc, getattr(args, "token_env", None))
        if code == EXIT_PIPE:
            _silence_stdout()
        elif code == EXIT_INTERRUPTED:
            print(message, file=sys.stderr, flush=True)
        elif message is not None:
            _error(message)
        if code == EXIT_INTERNAL and args.verbose:
            import traceback

            traceback.print_exception(exc)
        return code
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at devnull so the final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
