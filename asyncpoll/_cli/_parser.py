"""Building the parser of the ``asyncpoll`` command: its arguments, their types and checks.

A mistake in the arguments is a :class:`UsageError` (exit 2), not an exit of argparse's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from .._session import DEFAULT_BASE_URL
from ._exit import HELP_EPILOG

__all__ = ["PROG", "UsageError", "build_parser"]

PROG = "asyncpoll"
DEFAULT_TOKEN_ENV = "ASYNCPOLL_TOKEN"

_DEMO_EPILOG = """\
The demo needs no network and no credentials: it serves the operations from the
built-in simulator on 127.0.0.1. It exits 0 once every simulated operation has
reached its end, even the ones scripted to fail (--fail-rate); 130 on Ctrl-C."""

_TOKEN_HELP = (
    "environment variable holding the bearer token (default: %(default)s); the token is "
    "never taken from an argument"
)


class UsageError(Exception):
    """A mistake of the caller's: exit 2 with this message."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (exit 2), raised rather than exited."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


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


def build_parser() -> _Parser:
    """The parser of ``asyncpoll``; ``args.command`` is the key of the command to run."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description=(
            "Follow asynchronous operations of the Programs API: live progress bars on a "
            "terminal, JSON lines for scripts. Start with 'asyncpoll demo'."
        ),
        epilog=HELP_EPILOG,
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
        epilog=f"{_DEMO_EPILOG}\n\n{HELP_EPILOG}",
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
    demo.add_argument(
        "--fleet",
        type=_count,
        default=None,
        metavar="N",
        help="run N processes in a fleet (Redis) beside N on their own and show the "
        "requests each setup sent (needs redis-server on the PATH and asyncpoll[fleet])",
    )

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
        epilog=HELP_EPILOG,
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
        "--fleet",
        default=None,
        metavar="REDIS_URL",
        help="share polling with every process watching through this Redis "
        "(redis://, rediss://; needs asyncpoll[fleet])",
    )
    watch.add_argument(
        "--namespace",
        default="asyncpoll",
        metavar="NS",
        help="the fleet's namespace in Redis (default: %(default)s)",
    )
    watch.add_argument(
        "--max-interval",
        type=_positive_seconds,
        default=30.0,
        metavar="SEC",
        help="the interval of an operation that does not change grows up to this (default: 30)",
    )

    commands.add_parser(
        "get",
        parents=[common, remote],
        help="show the status of operations (one batched query)",
        description=(
            "Query the operations once, in one batched query, and print a table (a JSON "
            "list with --json). IDs the server does not return are shown as not found; new "
            "operations can take a moment to become visible."
        ),
        epilog=HELP_EPILOG,
        formatter_class=formatter,
    )
    return parser
