"""The ``asyncpoll`` command (also ``python -m asyncpoll``).

Commands::

    asyncpoll demo  [--ops N] [--fail-rate R] [--seconds S] [--seed N] [--json]
                    [--fleet N]
    asyncpoll watch ID... --space S [--base-url URL] [--token-env VAR] [--json]
                    [--timeout SEC] [--outage-timeout SEC] [--not-found-grace SEC]
                    [--interval SEC] [--max-interval SEC] [--insecure-http]
                    [--fleet REDIS_URL] [--namespace NS]
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

{exit_codes}

``demo`` exits 0 once it has shown every simulated operation to its end: the failures it
shows are part of its script, not of the run (2, 3 and 130 keep their meaning).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .._errors import (
    APIError,
    AsyncpollError,
    AuthenticationError,
    PermissionDeniedError,
    SpaceNotFoundError,
)
from ._commands import COMMANDS, print_error
from ._exit import DOC_TABLE, ExitCode
from ._output import clean
from ._parser import PROG, UsageError, build_parser

if __doc__:  # None under python -OO
    __doc__ = __doc__.replace("{exit_codes}", DOC_TABLE)

__all__ = ["main"]

logger = logging.getLogger("asyncpoll")


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
            return ExitCode.INTERRUPTED, f"{PROG}: interrupted"
    for leaf in leaves:
        if isinstance(leaf, BrokenPipeError):
            return ExitCode.PIPE, None
    leaf = leaves[0]
    if isinstance(leaf, UsageError):
        return ExitCode.USAGE, str(leaf)
    if isinstance(leaf, AuthenticationError):
        hint = f" (the token comes from ${token_env})" if token_env else ""
        return ExitCode.USAGE, f"{leaf}{hint}"
    if isinstance(leaf, PermissionDeniedError | SpaceNotFoundError):
        return ExitCode.USAGE, str(leaf)
    if isinstance(leaf, APIError) and leaf.status == 400:
        return ExitCode.USAGE, str(leaf)
    if isinstance(leaf, TimeoutError):
        return ExitCode.UNKNOWN, "timed out"
    if isinstance(leaf, AsyncpollError):
        # Not found, or transport and server errors that outlasted the retries.
        return ExitCode.UNKNOWN, str(leaf)
    return ExitCode.INTERNAL, f"internal error: {type(leaf).__name__}: {leaf} (please report it)"


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
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print_error(str(exc))
        return ExitCode.USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED

    handler = _LogToStderr(logging.DEBUG if args.verbose else logging.WARNING)
    saved_level = logger.level
    logger.addHandler(handler)
    if args.verbose:
        logger.setLevel(logging.DEBUG)
    try:
        status: int = COMMANDS[args.command](args)
        return status
    except BaseException as exc:
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        code, message = _classify(exc, getattr(args, "token_env", None))
        if code == ExitCode.PIPE:
            _silence_stdout()
        elif code == ExitCode.INTERRUPTED:
            print(message, file=sys.stderr, flush=True)
        elif message is not None:
            print_error(message)
        if code == ExitCode.INTERNAL and args.verbose:
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
