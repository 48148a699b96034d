"""The exit statuses of the ``asyncpoll`` command, written once: :class:`ExitCode` holds
each code with what it means, and the two texts that list them are made from it, the
table of the package docstring (:data:`DOC_TABLE`) and the end of ``--help``
(:data:`HELP_EPILOG`).
"""

from __future__ import annotations

import enum
import textwrap
from collections.abc import Callable
from typing import Literal

__all__ = ["DOC_TABLE", "HELP_EPILOG", "ExitCode"]


class ExitCode(enum.IntEnum):
    """An exit status of ``asyncpoll``, with what it means.

    ``meaning`` is the lines of the meaning as both texts wrap it, ``double backticks``
    marking literal text (``--help`` shows it bare). An outcome is what a command found;
    an accident (a broken pipe, a bug) is not, and the texts name it after the table.
    """

    meaning: tuple[str, ...]
    accident: bool

    def __new__(cls, code: int, kind: Literal["outcome", "accident"], *meaning: str) -> ExitCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.accident = kind == "accident"
        member.meaning = meaning
        return member

    OK = 0, "outcome", "every operation succeeded (``get``: none failed, even if some still run)"
    FAILED = 1, "outcome", "some operation failed or was canceled"
    USAGE = (
        2,
        "outcome",
        "usage error, missing token, or the server refused access: authentication",
        "(401), permission (403), an unknown space (404) or a refused ID (400)",
    )
    UNKNOWN = (
        3,
        "outcome",
        "outcome unknown: ``--timeout`` passed, an operation was not found, or no",
        "status request succeeded for ``--outage-timeout`` seconds (default 60: the",
        "server was unreachable or unusable)",
    )
    INTERRUPTED = 130, "outcome", "interrupted (Ctrl-C)"
    PIPE = 141, "accident", "stdout was closed early (broken pipe)"
    INTERNAL = 70, "accident", "internal error (a bug: please report it)"


def _bare(text: str) -> str:
    return text.replace("``", "")


def _notes(width: int) -> list[str]:
    """What follows the table, wrapped to ``width``: which code wins, then the accidents."""
    wins = f"({ExitCode.UNKNOWN.value} over {ExitCode.FAILED.value})"
    accidents = "; ".join(
        f"{code.value}: {_bare(' '.join(code.meaning))}" for code in ExitCode if code.accident
    )
    return textwrap.wrap(f"When several apply, the larger code wins {wins}. {accidents}.", width)


def _rows(indent: str, show: Callable[[str], str]) -> list[str]:
    """The outcomes as lines: each code beside the first line of its meaning (each line
    passed through ``show``), the other lines under it."""
    rows = []
    for code in ExitCode:
        if not code.accident:
            first, *more = map(show, code.meaning)
            rows.append(f"{indent}{code.value:<5}{first}")
            rows.extend(f"{indent}{' ' * 5}{line}" for line in more)
    return rows


def _doc_table() -> str:
    width = max(len(line) for code in ExitCode if not code.accident for line in code.meaning)
    rule = f"===  {'=' * width}"
    return "\n".join([rule, *_rows("", str), rule, "", *_notes(88)])


#: The table of codes as the package docstring shows it (reStructuredText), and the notes.
DOC_TABLE = _doc_table()

#: The list of codes at the end of ``asyncpoll --help`` and of each command's.
HELP_EPILOG = "\n".join(["exit codes:", *_rows("  ", _bare), *_notes(79)])
